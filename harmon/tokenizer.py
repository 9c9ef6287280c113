"""Tokenizers for Harmon: the Qwen2.5 tokenizer from the hub or a folder, and an offline tiny byte-level BPE.

Special tokens and their roles follow Qwen2.5: `<|endoftext|>` pads, `<|im_end|>` ends a turn (eos),
`<|im_start|>` opens one. No BOS token is used.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from harmon.checkpoints import CheckpointError, offline

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (PAD_TOKEN, IM_START, IM_END)

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def load_tokenizer(name_or_path: str | os.PathLike) -> PreTrainedTokenizerBase:
    """AutoTokenizer from a local folder or a hub id (cache only when HF_HUB_OFFLINE=1)."""
    from transformers import AutoTokenizer

    source = str(name_or_path)
    local = Path(source).expanduser()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(local) if local.is_dir() else source,
                                                  local_files_only=offline())
    except OSError as err:
        raise CheckpointError(
            f"tokenizer {source!r} is neither a folder with tokenizer files nor a hub id in the local cache "
            f"(HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}). Download it on a connected machine with "
            f"`huggingface-cli download {source}`, or pass a local tokenizer folder."
        ) from err
    return check_special_tokens(tokenizer, source)


def check_special_tokens(tokenizer: PreTrainedTokenizerBase, what: str) -> PreTrainedTokenizerBase:
    """Require the Qwen chat tokens; set pad = `<|endoftext|>` and eos = `<|im_end|>` as Qwen2.5-Instruct does."""
    vocab = tokenizer.get_vocab()
    absent = [t for t in SPECIAL_TOKENS if t not in vocab]
    if absent:
        raise CheckpointError(f"tokenizer {what!r} lacks the Qwen chat tokens {absent}; use a Qwen2/2.5 tokenizer")
    tokenizer.pad_token = PAD_TOKEN
    tokenizer.eos_token = IM_END
    return tokenizer


def build_tiny_tokenizer(
    texts: Iterable[str], vocab_size: int = 384, save_dir: str | os.PathLike | None = None,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `texts` with the Qwen special tokens and chat template (no download needed).

    Every byte is in the alphabet, so any text encodes. With `save_dir` it is also written with `save_pretrained`.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    minimum = 256 + len(SPECIAL_TOKENS)
    if vocab_size < minimum:
        raise ValueError(f"vocab_size={vocab_size} must be at least {minimum} (256 bytes + special tokens)")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(list(texts), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token=PAD_TOKEN, eos_token=IM_END, unk_token=None,
        additional_special_tokens=[IM_START], padding_side="right",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    if save_dir is not None:
        tokenizer.save_pretrained(str(save_dir))
    return tokenizer
