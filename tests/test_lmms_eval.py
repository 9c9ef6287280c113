"""Harmon as an lmms-eval model, offline on a tiny random Harmon: real `Instance` requests, a tiny local task run
through lmms-eval's own evaluator and results writer, and that results file read back into Table 5's columns."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from rich.console import Console

pytest.importorskip("lmms_eval", reason="lmms-eval is the `eval` extra: pip install 'harmon-toolkit[eval]'")

from lmms_eval.api.instance import Instance  # noqa: E402
from lmms_eval.models import get_model  # noqa: E402

from experiments.ablations.config import LmmsColumn, LmmsEvalSection, Table5Config, load_ablation  # noqa: E402
from experiments.ablations.lmms_table import (  # noqa: E402
    check_tasks,
    lmms_command,
    lmms_scores,
    read_lmms_results,
    results_file,
)
from experiments.ablations.table5 import with_lmms  # noqa: E402
from harmon.prompts import INSTRUCTION  # noqa: E402
from harmon.tiny import TinyBundle, tiny_harmon  # noqa: E402
from harmon.utils.strict_yaml import ConfigError  # noqa: E402
from harmon.vae import save_kl16_safetensors  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HARMON = str(Path(sys.executable).with_name("harmon"))
TASK, SPLIT = "tiny_local", "test"
QUESTIONS = ["What color is the object?", "Is there a cube?", "How many objects are there?", "What shape is it?",
             "Where is the ball?"]


def images(count: int) -> list[Image.Image]:
    return [Image.new("RGB", (40 + 8 * i, 32), (60 * i % 256, 200 - 30 * i, 90)) for i in range(count)]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A tiny random Harmon in the official file layout. Its LLM blocks and image projector are drawn wide
    (std 0.5): at the default init the blocks barely move the residual stream, so the tied head answers every
    prompt with its last token ("\n") whatever the image."""
    folder = tmp_path_factory.mktemp("tiny-harmon")
    model = tiny_harmon(seed=0)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if weight.ndim == 2 and (".layers." in name or name.startswith("proj_in.")):
                weight.copy_(torch.randn(weight.shape, generator=generator) * 0.5)
    llm = folder / "llm"
    model.config.llm.save_pretrained(str(llm))
    model.tokenizer.save_pretrained(str(llm))
    torch.save(model.official_state_dict(), folder / "harmon_tiny.pth")
    return TinyBundle(folder / "harmon_tiny.pth", llm, save_kl16_safetensors(model.vae, folder / "kl16.safetensors"))


def build_lm(bundle):
    """The Harmon model as lmms-eval builds it from `--model harmon --model_args ...` (its entry point)."""
    model_args = f"checkpoint={bundle.checkpoint},llm={bundle.llm},vae={bundle.vae},image_size=64"
    return get_model("harmon").create_from_arg_string(model_args, {"batch_size": 2, "device": "cpu"})


@pytest.fixture(scope="module")
def lm(bundle):
    return build_lm(bundle)


def request(kind: str, arguments: tuple, doc_id: int) -> Instance:
    return Instance(request_type=kind, arguments=arguments, idx=0,
                    metadata={"task": TASK, "doc_id": doc_id, "repeats": 1})


def doc_to_visual(doc: dict) -> list[Image.Image]:
    return [doc["image"]] if doc["image"] is not None else []


@torch.no_grad()
def greedy_text_only(model, question: str, steps: int) -> str:
    """Greedy decoding from token ids (no image), the plain way: the whole sequence through the LLM each step."""
    ids = model.tokenizer.encode(INSTRUCTION.format(input="\n" + question), add_special_tokens=False)
    stop = model.tokenizer.convert_tokens_to_ids("<|im_end|>")
    out = []
    for _ in range(steps):
        token = int(model.llm(input_ids=torch.tensor([ids + out])).logits[0, -1].argmax())
        if token == stop:
            break
        out.append(token)
    return model.tokenizer.decode(out, skip_special_tokens=True)


def test_generate_until_answers_each_request_as_harmon_answers_it_alone(lm):
    docs = [{"image": image} for image in images(5)] + [{"image": None}]
    lm.task_dict = {TASK: {SPLIT: docs}}
    kwargs = [{"max_new_tokens": 5}, {"max_new_tokens": 3, "temperature": 0, "do_sample": False}]
    questions = QUESTIONS + ["Say something."]
    requests = [request("generate_until", (q, dict(kwargs[i % 2]), doc_to_visual, i, TASK, SPLIT), i)
                for i, q in enumerate(questions)]
    answers = lm.generate_until(requests)
    expected = [lm.model.answer(doc["image"], q, max_new_tokens=kwargs[i % 2]["max_new_tokens"], image_size=64)[0]
                for i, (doc, q) in enumerate(zip(docs[:5], QUESTIONS, strict=True))]
    assert answers[:5] == expected
    assert answers[5] == greedy_text_only(lm.model, questions[5], kwargs[1]["max_new_tokens"])


def test_until_cuts_the_answer_at_the_first_stop_string(lm):
    lm.task_dict = {TASK: {SPLIT: [{"image": image} for image in images(1)]}}
    full = lm.model.answer(images(1)[0], QUESTIONS[0], max_new_tokens=6, image_size=64)[0]
    assert len(full) >= 2, "the tiny model answers at least two characters"
    stop = full[1]
    answer = lm.generate_until([request("generate_until", (QUESTIONS[0], {"max_new_tokens": 6, "until": [stop]},
                                                           doc_to_visual, 0, TASK, SPLIT), 0)])
    assert answer == [full[:full.index(stop)]]


@torch.no_grad()
def test_loglikelihood_is_the_sum_of_the_continuation_token_log_probabilities(lm):
    model, question = lm.model, "Is there a cube?"
    lm.task_dict = {TASK: {SPLIT: [{"image": None}, {"image": images(1)[0]}]}}
    prompt = model.tokenizer.encode(INSTRUCTION.format(input="\n" + question), add_special_tokens=False)
    logits = model.llm(input_ids=torch.tensor([prompt])).logits[0, -1]
    greedy, other = int(logits.argmax()), int(logits.argmin())
    pair = [model.tokenizer.decode([greedy, other]), model.tokenizer.decode([other])]
    assert [model.tokenizer.encode(text, add_special_tokens=False) for text in pair] == [[greedy, other], [other]]
    scores = lm.loglikelihood([request("loglikelihood", (question, text, doc_to_visual, 0, TASK, SPLIT), 0)
                               for text in pair])
    full = torch.log_softmax(model.llm(input_ids=torch.tensor([prompt + [greedy, other]])).logits[0].float(), -1)
    expected = float(full[len(prompt) - 1, greedy] + full[len(prompt), other])
    assert scores[0][0] == pytest.approx(expected, abs=1e-4) and scores[0][1] is (int(full[len(prompt)].argmax())
                                                                                  == other)
    assert scores[1] == (pytest.approx(float(full[len(prompt) - 1, other]), abs=1e-4), False)
    with_image = lm.loglikelihood([request("loglikelihood", (question, pair[1], doc_to_visual, 1, TASK, SPLIT), 1)])
    assert with_image[0][0] < 0 and with_image[0][0] != pytest.approx(scores[1][0], abs=1e-6)


def test_bad_model_args_and_multi_round_requests_are_refused_by_name(bundle, lm):
    with pytest.raises(ValueError, match=r"unknown key\(s\) temprature; the Harmon model takes checkpoint, run"):
        get_model("harmon").create_from_arg_string(f"checkpoint={bundle.checkpoint},temprature=0")
    with pytest.raises(ValueError, match="run= takes the model from the run folder"):
        get_model("harmon").create_from_arg_string(f"checkpoint={bundle.checkpoint},run={bundle.llm}")
    with pytest.raises(ValueError, match="batch_size=0"):
        get_model("harmon").create_from_arg_string(f"checkpoint={bundle.checkpoint}", {"batch_size": 0})
    multi = Instance("generate_until_multi_round", ("q", {}, doc_to_visual, None, 0, TASK, SPLIT), 0,
                     {"task": TASK, "doc_id": 0, "repeats": 1})
    with pytest.raises(NotImplementedError, match="tiny_local ask for multi-round generation"):
        lm.generate_until_multi_round([multi])


def own_answers(lm) -> list[str]:
    """Harmon's own answers (`Harmon.answer`) to the local task's three documents."""
    return [lm.model.answer(image, q, max_new_tokens=4, image_size=64)[0]
            for image, q in zip(images(3), QUESTIONS[:3], strict=True)]


def write_local_task(folder: Path, answers: list[str]) -> Path:
    """A task YAML reading a local JSON-lines dataset (image paths, questions, answers) and its utils.py."""
    folder.mkdir(parents=True)
    rows = []
    for i, (image, question, answer) in enumerate(zip(images(3), QUESTIONS[:3], answers, strict=True)):
        image.save(folder / f"{i}.png")
        rows.append({"image": str(folder / f"{i}.png"), "question": question, "answer": answer})
    (folder / "data.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (folder / "tiny_utils.py").write_text(
        "from PIL import Image\n\n"
        "def doc_to_visual(doc):\n    return [Image.open(doc['image']).convert('RGB')]\n\n"
        "def doc_to_text(doc, lmms_eval_specific_kwargs=None):\n    return doc['question']\n\n"
        "def process_results(doc, results):\n    return {'tiny_acc': float(results[0].strip() == doc['answer'].strip())}\n")
    text = yaml.safe_dump({
        "task": TASK, "dataset_path": "json", "dataset_kwargs": {"data_files": {SPLIT: str(folder / "data.jsonl")}},
        "test_split": SPLIT, "output_type": "generate_until", "doc_to_target": "answer",
        "generation_kwargs": {"max_new_tokens": 4, "temperature": 0, "do_sample": False, "until": ["ZZZ"]},
        "metric_list": [{"metric": "tiny_acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 0.0}})
    text = (text.replace("doc_to_target: answer", "doc_to_target: answer\ndoc_to_visual: !function "
                         "tiny_utils.doc_to_visual\ndoc_to_text: !function tiny_utils.doc_to_text\nprocess_results: "
                         "!function tiny_utils.process_results"))
    (folder / "tiny_local.yaml").write_text(text)
    return folder


def test_a_local_task_through_lmms_eval_fills_the_table_column(lm, tmp_path):
    from lmms_eval import evaluator
    from lmms_eval.loggers import EvaluationTracker
    from lmms_eval.tasks import TaskManager

    own = own_answers(lm)
    folder = write_local_task(tmp_path / "task", [own[0], own[1], own[2] + " not this"])
    tracker = EvaluationTracker(output_path=str(tmp_path / "out"))
    results = evaluator.simple_evaluate(model=lm, tasks=[TASK], batch_size=2, evaluation_tracker=tracker,
                                        task_manager=TaskManager("ERROR", include_path=str(folder),
                                                                 include_defaults=False), log_samples=True)
    samples = results.pop("samples")
    assert [sample["resps"][0][0] for sample in sorted(samples[TASK], key=lambda x: x["doc_id"])] == own
    tracker.save_results_aggregated(results=results, samples=samples, datetime_str="2026-01-01T00")
    written = results_file(tmp_path / "out")
    assert written is not None and written.name == "2026-01-01T00_results.json"
    section = LmmsEvalSection(columns={"GQA": LmmsColumn(task=TASK, metric="tiny_acc", scale=100)})
    assert read_lmms_results(written, section) == {"GQA": pytest.approx(200 / 3)}
    wrong = LmmsEvalSection(columns={"GQA": LmmsColumn(task=TASK, metric="exact_match")})
    with pytest.raises(ValueError, match="no 'exact_match,none' for task 'tiny_local' \\(column GQA\\); it holds"):
        read_lmms_results(written, wrong)
    console = Console(record=True, width=400)
    run_dir = tmp_path / "runs" / "MAR-seed0"
    assert lmms_scores(section, run_dir, tmp_path / "out", "run", console) == {"GQA": pytest.approx(200 / 3)}
    more = LmmsEvalSection(columns={**section.columns, "MMMU": LmmsColumn(task="mmmu_val", metric="mmmu_acc")})
    assert lmms_scores(more, run_dir, tmp_path / "out", "print", console) == {}
    printed = console.export_text()
    assert f"--model_args run={run_dir},dtype=bf16 --tasks tiny_local,mmmu_val" in printed
    check_tasks([TASK], [str(folder)], include_defaults=False)
    with pytest.raises(ConfigError, match="lmms-eval knows no task 'popee'"):
        check_tasks([TASK, "popee"], [str(folder)], include_defaults=False)


def test_paper_preset_runs_the_seven_columns_and_merges_them_beside_the_file_scores(tmp_path):
    config = load_ablation(Table5Config, "table5", "paper")
    section = config.lmms_eval
    assert list(section.columns) == ["POPE", "MME-P", "MME-C", "MMB", "SEED", "GQA", "MMMU"]
    command = lmms_command(section, tmp_path / "runs" / "MAR-seed0", tmp_path / "lmms-eval" / "MAR-seed0")
    assert command[1:] == ["-m", "lmms_eval", "--model", "harmon", "--model_args",
                           f"run={tmp_path / 'runs' / 'MAR-seed0'},dtype=bf16", "--tasks",
                           "pope,mme,mmbench_en_dev_static,seedbench,gqa,mmmu_val", "--batch_size", "16",
                           "--output_path", str(tmp_path / "lmms-eval" / "MAR-seed0"), "--log_samples"]
    eight = load_ablation(Table5Config, "table5", "paper", ["lmms_eval.processes=8"]).lmms_eval
    assert lmms_command(eight, tmp_path, tmp_path)[1:5] == ["-m", "accelerate.commands.launch", "--num_processes",
                                                            "8"]
    # POPE from lmms-eval replaces the file-based value; the primary score is the mean on a 0-100 scale:
    # (80 + 1000 / 20 + 40) / 3 = 56.67
    row = with_lmms({"POPE": 70.0, "GQA": 40.0, "score": 55.0}, {"POPE": 80.0, "MME-P": 1000.0})
    assert row == {"POPE": 80.0, "GQA": 40.0, "MME-P": 1000.0, "score": pytest.approx(170 / 3)}
    with pytest.raises(ConfigError, match="lmms_eval.columns: unknown or no columns \\['Acc'\\]"):
        load_ablation(Table5Config, "table5", "paper", ["lmms_eval.columns.Acc.task=x",
                                                        "lmms_eval.columns.Acc.metric=y"])


@pytest.mark.slow
def test_table5_names_a_benchmark_lmms_eval_does_not_know_in_one_line(tmp_path):
    data = tmp_path / "data.json"
    data.write_text("[]")
    sets = [f"data.sources.{i}.{key}={data if key == 'path' else tmp_path}" for i in (0, 1)
            for key in ("path", "image_root")]
    done = subprocess.run([HARMON, "table5", "--preset", "paper", "--out", str(tmp_path / "t5"),
                           "--set", "lmms_eval.columns.POPE.task=popee", *[a for s in sets for a in ("--set", s)]],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 2, done.stdout + done.stderr
    errors = [line for line in done.stdout.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "lmms-eval knows no task 'popee'" in errors[0]


@pytest.mark.slow
def test_two_processes_under_accelerate_answer_every_document_once(bundle, tmp_path):
    """`accelerate launch --num_processes 2 -m lmms_eval --model harmon` as on a GPU node, here on two CPU
    processes: each answers its share, and the gathered samples hold every document once, answered as one process
    answers it alone."""
    alone = build_lm(bundle)  # lmms-eval's evaluator lets go of the model it ran, so not the module's `lm`
    own = own_answers(alone)
    folder = write_local_task(tmp_path / "task", [own[0], own[1] + " not this", own[2]])
    model_args = f"checkpoint={bundle.checkpoint},llm={bundle.llm},vae={bundle.vae},image_size=64,device=cpu"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "--cpu", "-m", "lmms_eval", "--model", "harmon",
         "--model_args", model_args, "--tasks", TASK, "--include_path", str(folder), "--batch_size", "1",
         "--output_path", str(tmp_path / "out"), "--log_samples"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    written = results_file(tmp_path / "out")
    assert written is not None
    section = LmmsEvalSection(columns={"GQA": LmmsColumn(task=TASK, metric="tiny_acc", scale=100)})
    assert read_lmms_results(written, section) == {"GQA": pytest.approx(200 / 3)}
    (samples,) = written.parent.glob(f"*_samples_{TASK}.jsonl")
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    assert sorted(row["doc_id"] for row in rows) == [0, 1, 2]
    assert [row["filtered_resps"] for row in sorted(rows, key=lambda row: row["doc_id"])] == own
