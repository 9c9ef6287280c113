"""Harmon as an lmms-eval model (`python -m lmms_eval --model harmon --model_args ...`).

Model arguments (`--model_args key=value,...`):
- `checkpoint`: a Harmon checkpoint name (`harmon-0.5b`, `harmon-1.5b`, `harmon-1.5b-o`) or an official-layout
  file, with `llm`, `tokenizer` and `vae` as `harmon ask` takes them; or
- `run`: a `harmon table5` run folder (`runs/<encoder>-seed<N>`), Harmon with its plugged understanding encoder;
- `device` (`auto`: this process's GPU, else the CPU), `dtype` (`auto`: bf16 on a GPU, fp32 on the CPU; or
  fp32 / bf16 / fp16), `batch_size`, `image_size` (default: the model's), `max_new_tokens` (a cap on every
  request's).

Requests are answered in batches of `batch_size` (sorted by prompt length, grouped by generation arguments), each
question after its first image as `harmon ask` asks it, greedily unless a task asks for sampling; the answer is cut
at the task's `until` strings. Under `accelerate launch` every process holds the model on its own GPU; lmms-eval's
evaluator sets each process's rank and accelerator and gives it its share of the documents. `loglikelihood`
scores a continuation's tokens after the answer prompt (multiple-choice tasks); multi-round generation is refused
with an error naming the task.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from lmms_eval import utils as lmms_utils
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from PIL import Image

from harmon.model import Harmon
from harmon.tokenizer import IM_END, PAD_TOKEN
from harmon.understanding import build_understanding_inputs, generate_ids
from harmon.utils.runtime import resolve_device

MODEL_ARGS = ("checkpoint", "run", "llm", "tokenizer", "vae", "device", "dtype", "batch_size", "image_size",
              "max_new_tokens")
IGNORED_ARGS = ("max_batch_size",)  # lmms-eval passes it to every model
DEFAULT_MAX_NEW_TOKENS = 128


def check_model_args(given: Sequence[str]) -> None:
    """A ValueError naming every `--model_args` key the Harmon model does not take, and the keys it does."""
    unknown = [key for key in given if key not in MODEL_ARGS + IGNORED_ARGS]
    if unknown:
        raise ValueError(f"harmon model_args: unknown key(s) {', '.join(unknown)}; the Harmon model takes "
                         f"{', '.join(MODEL_ARGS)}")


def load_model(checkpoint: str | None, run: str | None, llm: str | None, tokenizer: str | None, vae: str,
               device: torch.device, dtype: torch.dtype) -> Harmon:
    """A released / official-layout Harmon (`checkpoint`) or a Table 5 run folder (`run`), in eval mode."""
    if run is not None:
        if checkpoint is not None or llm is not None or tokenizer is not None:
            raise ValueError("harmon model_args: run= takes the model from the run folder; drop checkpoint=, llm= "
                             "and tokenizer=")
        from experiments.ablations.run_model import load_run

        return load_run(run, device=device, dtype=dtype)
    from harmon.harmon_loading import load_harmon

    return load_harmon(checkpoint or "harmon-1.5b", llm=llm, tokenizer=tokenizer, vae=vae, device=device,
                       dtype=dtype)


def flat_visuals(visuals: Any) -> list[Any]:
    """What a task's `doc_to_visual` returned as a flat list (None and empty lists dropped)."""
    if visuals is None:
        return []
    if isinstance(visuals, (list, tuple)):
        return [item for entry in visuals for item in flat_visuals(entry)]
    return [visuals]


def first_image(visuals: list[Any], task: str) -> Image.Image | None:
    """The first of a document's visuals (None when it has none); anything but a PIL image is refused."""
    if not visuals:
        return None
    if not isinstance(visuals[0], Image.Image):
        raise ValueError(f"task {task}: the Harmon model reads images only, got {type(visuals[0]).__name__} from "
                         "doc_to_visual")
    return visuals[0]


def cut_at(text: str, until: Sequence[str]) -> str:
    """`text` up to the first of the `until` strings."""
    for stop in until:
        if stop and stop in text:
            text = text.split(stop, 1)[0]
    return text


class HarmonLMMS(lmms):
    """Harmon behind lmms-eval's model interface (see the module docstring for the arguments)."""

    def __init__(self, checkpoint: str | None = None, run: str | None = None, llm: str | None = None,
                 tokenizer: str | None = None, vae: str = "kl16", device: str | None = "auto",
                 dtype: str = "auto", batch_size: int | str = 1, image_size: int | None = None,
                 max_new_tokens: int | None = None, **unknown: Any) -> None:
        super().__init__()
        from harmon.utils.runtime import dtype_by_name

        check_model_args([key for key in unknown if key not in IGNORED_ARGS])
        self._device = resolve_device(device or "auto")
        self._dtype = (torch.bfloat16 if self._device.type == "cuda" else torch.float32) if dtype == "auto" \
            else dtype_by_name(str(dtype))
        if str(batch_size) == "auto" or int(batch_size) < 1:
            raise ValueError(f"harmon model_args: batch_size={batch_size}; give a whole number >= 1")
        self.batch_size = int(batch_size)
        self.model = load_model(checkpoint, run, llm, tokenizer, vae, self._device, self._dtype)
        self.image_size = int(image_size or self.model.config.image_size)
        self.model.grid(self.image_size)
        self.max_new_tokens = max_new_tokens
        self._warned_images = False

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def tokenizer(self):
        return self.model.tokenizer

    # ----- requests --------------------------------------------------------------------------------------------
    def _doc(self, task: str, split: str, doc_id: int) -> Any:
        return self.task_dict[task][split][doc_id]

    def _image(self, doc_to_visual: Any, task: str, split: str, doc_id: int) -> Image.Image | None:
        visuals = flat_visuals(doc_to_visual(self._doc(task, split, doc_id)) if doc_to_visual is not None else None)
        if len(visuals) > 1 and not self._warned_images:
            warnings.warn(f"task {task}: a document has several images; Harmon answers about the first one",
                          stacklevel=2)
            self._warned_images = True
        return first_image(visuals, task)

    def _features(self, images: Sequence[Image.Image | None]) -> torch.Tensor:
        """Visual features (B, N, H) of a batch with images, or (B, 0, H) for a batch without."""
        from harmon.prompts import preprocess_image

        if images[0] is None:
            return torch.zeros(len(images), 0, self.model.config.llm.hidden_size, device=self.device,
                               dtype=self.model.dtype)
        pixels = torch.stack([preprocess_image(image, self.image_size) for image in images])
        return self.model.visual_features(pixels)

    @torch.no_grad()
    def _answer(self, images: Sequence[Image.Image | None], questions: Sequence[str], gen_kwargs: dict[str, Any]
                ) -> list[str]:
        tokens = int(gen_kwargs.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS)
        tokens = min(tokens, self.max_new_tokens) if self.max_new_tokens else tokens
        temperature = float(gen_kwargs.get("temperature") or 0.0)
        sample = bool(gen_kwargs.get("do_sample", False)) and temperature > 0
        embeds, mask = build_understanding_inputs(self.model, self._features(images), questions)
        stops = [self.tokenizer.convert_tokens_to_ids(t) for t in (IM_END, PAD_TOKEN)]
        ids = generate_ids(self.model.llm, embeds, mask, tokens, stops, do_sample=sample,
                           temperature=temperature if sample else 1.0, top_p=float(gen_kwargs.get("top_p") or 1.0))
        return [self.tokenizer.decode(row, skip_special_tokens=True) for row in ids]

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Greedy (or the task's sampling) answers, in batches of `batch_size`, cut at the task's `until`."""
        def length(args: tuple) -> tuple[int, str]:
            return -len(self.tokenizer.encode(args[0], add_special_tokens=False)), args[0]

        order = lmms_utils.Collator([r.args for r in requests], length, grouping=True)
        answers: list[str] = []
        for chunk in order.get_batched(n=self.batch_size):
            contexts, all_kwargs, visuals, doc_ids, tasks, splits = zip(*chunk, strict=True)
            gen_kwargs = dict(all_kwargs[0] or {})
            until = gen_kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            images = [self._image(v, t, s, d) for v, t, s, d in zip(visuals, tasks, splits, doc_ids, strict=True)]
            replies: dict[int, str] = {}
            for with_image in (True, False):
                rows = [i for i, image in enumerate(images) if (image is not None) == with_image]
                if rows:
                    texts = self._answer([images[i] for i in rows], [contexts[i] for i in rows], gen_kwargs)
                    replies |= dict(zip(rows, texts, strict=True))
            for i in range(len(contexts)):
                answers.append(cut_at(replies[i], until))
                self.cache_hook.add_partial("generate_until", (contexts[i], all_kwargs[i]), answers[-1])
        return order.get_original(answers)

    @torch.no_grad()
    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """(sum of the continuation tokens' log-probabilities, whether greedy decoding gives exactly them)."""
        scores = []
        for context, target, doc_to_visual, doc_id, task, split in (r.args for r in requests):
            continuation = target if isinstance(target, str) else str(target(self._doc(task, split, doc_id)))
            image = self._image(doc_to_visual, task, split, doc_id)
            scores.append(self.continuation_logprob(image, context, continuation))
        return scores

    def continuation_logprob(self, image: Image.Image | None, context: str, continuation: str
                             ) -> tuple[float, bool]:
        """Log-probability of `continuation` as the answer to `context` (about `image`), and its greediness."""
        prompt, _ = build_understanding_inputs(self.model, self._features([image]), [context])
        ids = torch.tensor(self.tokenizer.encode(continuation, add_special_tokens=False), device=self.device)
        if ids.numel() == 0:
            raise ValueError(f"loglikelihood: the continuation {continuation!r} has no tokens")
        embeds = torch.cat([prompt[0], self.model.embed(ids)])[None]
        logits = self.model.llm(inputs_embeds=embeds, use_cache=False).logits[0, prompt.shape[1] - 1:-1].float()
        logprobs = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, None]).squeeze(-1)
        return float(logprobs.sum()), bool((logits.argmax(-1) == ids).all())

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        tasks = sorted({r.task_name for r in requests})
        raise NotImplementedError(f"the Harmon model answers single-turn questions; task(s) {', '.join(tasks)} ask "
                                  "for multi-round generation")
