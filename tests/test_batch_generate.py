"""`harmon generate --prompts`: GenEval's layout and the flat FID layout, exact images, resuming, two processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harmon.generation import generate_images
from harmon.images import to_uint8
from harmon.model import Harmon

ROOT = Path(__file__).parents[1]
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
RECORDS = [
    {"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a photo of a dog"},
    {"tag": "counting", "include": [{"class": "cat", "count": 2}], "exclude": [{"class": "cat", "count": 3}],
     "prompt": "a photo of two cats"},
]
SAMPLING = ["--steps", "2", "--image-size", "64", "--seed", "3", "--device", "cpu"]


@pytest.fixture(scope="module")
def bundle_args(bundle) -> list[str]:
    return ["--checkpoint", str(bundle.checkpoint), "--llm", str(bundle.llm), "--tokenizer", str(bundle.llm),
            "--vae", str(bundle.vae)]


def _run(*args: str, launcher: tuple[str, ...] = (sys.executable, "-m")) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([*launcher, "experiments.cli", "generate", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=240)


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _expected(model: Harmon, prompts: list[str], seed: int) -> np.ndarray:
    return to_uint8(generate_images(model, prompts, steps=2, seed=seed, image_size=64), rounding="harmon")


def test_geneval_layout_is_exact_and_resumes(loaded, bundle_args, tmp_path, capsys):
    from experiments.cli import app

    metadata = tmp_path / "evaluation_metadata.jsonl"
    metadata.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    out = tmp_path / "images"
    result = _run("--prompts", str(metadata), "--out", str(out), "--per-prompt", "2", *SAMPLING, *bundle_args)
    assert result.returncode == 0, result.stderr
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == ["00000/metadata.jsonl", "00000/samples/00000.png", "00000/samples/00001.png",
                     "00001/metadata.jsonl", "00001/samples/00000.png", "00001/samples/00001.png"]
    for i, record in enumerate(RECORDS):
        assert json.loads((out / f"{i:05d}" / "metadata.jsonl").read_text()) == record
        want = _expected(loaded, [record["prompt"]] * 2, seed=3 + i)  # one call per prompt, seed + prompt index
        for s in range(2):
            assert np.array_equal(_pixels(out / f"{i:05d}" / "samples" / f"{s:05d}.png"), want[s])

    lost = out / "00001" / "samples" / "00001.png"
    kept = out / "00000" / "samples" / "00000.png"
    before, stamp = lost.read_bytes(), kept.stat().st_mtime_ns
    lost.unlink()
    with pytest.raises(SystemExit) as stop, pytest.warns(UserWarning, match="head counts"):  # rerun in-process
        app(["generate", "--prompts", str(metadata), "--out", str(out), "--per-prompt", "2", *SAMPLING,
             *bundle_args], prog_name="harmon")
    assert stop.value.code == 0 and "wrote 1 image(s), 3 already there" in capsys.readouterr().err
    assert lost.read_bytes() == before and kept.stat().st_mtime_ns == stamp


def test_two_processes_split_the_captions_of_a_flat_folder(loaded, bundle_args, tmp_path):
    captions = tmp_path / "captions.txt"
    texts = ["a red cube", "a blue ball", "a green cone"]
    captions.write_text("\n".join(texts) + "\n")
    out = tmp_path / "flat"
    result = _run("--prompts", str(captions), "--out", str(out), "--batch-size", "1", *SAMPLING, *bundle_args,
                  launcher=(TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank 0/2: wrote 2 image(s)" in result.stderr and "rank 1/2: wrote 1 image(s)" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["00000.png", "00001.png", "00002.png"]
    for u, text in enumerate(texts):  # unit u = caption u here (batch size 1), seed + unit index
        assert np.array_equal(_pixels(out / f"{u:05d}.png"), _expected(loaded, [text], seed=3 + u)[0])


def test_caption_files_of_each_format(tmp_path):
    from experiments.evaluation.prompt_files import read_prompt_file

    mjhq = tmp_path / "meta_data.json"
    mjhq.write_text(json.dumps({"b2": {"category": "people", "prompt": "a woman"}, "a1": {"prompt": "a cat"}}))
    coco = tmp_path / "captions_val2014.json"
    coco.write_text(json.dumps({"annotations": [{"image_id": 9, "caption": "two dogs "}, {"image_id": 3, "caption":
                                "a bus"}, {"image_id": 9, "caption": "dogs again"}]}))
    plain = tmp_path / "captions.txt"
    plain.write_text("a red cube\n\n a blue ball\n")
    assert read_prompt_file(mjhq).texts == ("a cat", "a woman")  # by id
    assert read_prompt_file(coco).texts == ("a bus", "two dogs")  # first caption of each image, by image id
    assert read_prompt_file(plain).texts == ("a red cube", "a blue ball")
    assert {read_prompt_file(p).layout for p in (mjhq, coco, plain)} == {"flat"}
    geneval = tmp_path / "evaluation_metadata.jsonl"
    geneval.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    prompts = read_prompt_file(geneval)
    assert prompts.layout == "geneval" and prompts.texts == ("a photo of a dog", "a photo of two cats")


def test_bad_prompt_files_and_arguments_are_one_line_errors(bundle_args, tmp_path, capsys):
    from experiments.cli import app

    def generate(*args: str) -> tuple[int, str]:
        with pytest.raises(SystemExit) as stop:  # the `harmon` app as the console script runs it
            app(["generate", *args, *SAMPLING, *bundle_args], prog_name="harmon")
        return stop.value.code, capsys.readouterr().err

    wrong = tmp_path / "meta.jsonl"
    wrong.write_text(json.dumps({"caption": "a dog"}) + "\n")
    code, err = generate("--prompts", str(wrong), "--out", str(tmp_path / "o"))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"error: {wrong} line 1 lacks tag, include, prompt")
    code, err = generate("--prompts", str(tmp_path / "none.txt"), "--out", str(tmp_path / "o"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "prompt file" in err and "does not exist" in err
    code, err = generate("a dog", "--prompts", str(wrong))
    assert code == 2 and "exactly one" in err
