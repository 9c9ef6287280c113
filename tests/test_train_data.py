"""Training data: readers on real files, the chat / generation templates, and the mixed multi-task stream."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from harmon.prompts import CFG_PROMPT, INSTRUCTION, generation_text, preprocess_image
from harmon.shapesworld import ShapesWorld, ShapesWorldConfig, describe_scene, questions_for_scene
from harmon.tiny import TINY_CORPUS
from harmon.tokenizer import build_tiny_tokenizer
from harmon.train.batch import IGNORE_INDEX, IMAGE_TOKEN_INDEX, Batch, Shard
from harmon.train.data import (
    MixedStream,
    batches,
    encode_conversation,
    encode_generation,
    encode_text,
    generation_pixels,
)
from harmon.train.readers import (
    BadRow,
    ConversationReader,
    ShapesWorldCaptions,
    ShapesWorldQuestions,
    Text2ImageReader,
    TextReader,
)


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer(TINY_CORPUS)


def image_file(path: Path, size: tuple[int, int] = (12, 8), color: tuple[int, int, int] = (200, 30, 30)) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path.name


def dump(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def decode(tok, ids) -> str:
    return tok.decode(list(ids), clean_up_tokenization_spaces=False)


def supervised(tok, ids, labels) -> list[str]:
    """The decoded runs of consecutive supervised positions (labels equal ids there)."""
    runs, run = [], []
    for i, label in zip(ids, labels, strict=True):
        if label != IGNORE_INDEX:
            assert label == i
            run.append(label)
        elif run:
            runs, run = runs + [decode(tok, run)], []
    return runs + ([decode(tok, run)] if run else [])


def test_text2image_official_layout_with_annotation_files(tmp_path):
    for k in range(3):
        image_file(tmp_path / "images" / f"{k}.png", color=(10 * k, 0, 0))
    dump(tmp_path / "caps" / "0.json", {"caption": "  a red cube ", "short": "cube"})
    dump(tmp_path / "caps" / "1.json", {"caption": " "})
    rows = [{"image": "0.png", "annotation": "0.json"}, {"image": "1.png", "annotation": "1.json"},
            {"image": "2.png", "annotation": "missing.json"}, {"image": "2.png"}, {"annotation": "0.json"}, 7]
    info = dump(tmp_path / "data_info.json", rows)
    reader = Text2ImageReader(info, image_root=tmp_path / "images", caption_root=tmp_path / "caps")
    assert len(reader) == 3 and reader.skipped == {"missing fields": 3}
    first = reader.load(0)
    assert first["caption"] == "a red cube" and first["image"].mode == "RGB"
    assert first["image"].getpixel((0, 0)) == (0, 0, 0) and first["image"].size == (12, 8)
    for index, reason in ((1, "empty caption"), (2, "missing annotation file")):
        with pytest.raises(BadRow) as err:
            reader.load(index)
        assert err.value.reason == reason
    short = Text2ImageReader(info, image_root=tmp_path / "images", caption_key="short",
                             caption_root=tmp_path / "caps")
    assert short.load(0)["caption"] == "cube"


def test_text2image_jsonl_folder_and_bad_files(tmp_path):
    absolute = tmp_path / "elsewhere" / "abs.png"
    image_file(absolute, size=(5, 9))
    image_file(tmp_path / "ok.png")
    (tmp_path / "corrupt.png").write_bytes(b"not a png at all")
    (tmp_path / "cut.png").write_bytes((tmp_path / "ok.png").read_bytes()[:40])
    lines = [json.dumps({"image": str(absolute), "caption": "far"}), "{broken", "",
             json.dumps({"image": "ok.png", "caption": ""}), json.dumps({"image": "gone.png", "caption": "x"}),
             json.dumps({"image": "corrupt.png", "caption": "y"}),
             json.dumps({"image": "cut.png", "caption": "z"})]
    (tmp_path / "rows.jsonl").write_text("\n".join(lines))
    reader = Text2ImageReader(tmp_path / "rows.jsonl")
    assert len(reader) == 4 and reader.skipped == {"malformed line": 1, "empty caption": 1}
    assert reader.load(0)["image"].size == (5, 9)
    for index, reason in ((1, "missing image file"), (2, "corrupt image"), (3, "corrupt image")):
        with pytest.raises(BadRow) as err:
            reader.load(index)
        assert err.value.reason == reason
    dump(tmp_path / "folder" / "b.json", [{"image": str(absolute), "caption": "second"}])
    dump(tmp_path / "folder" / "a.json", [{"image": str(absolute), "caption": "first"}])
    folder = Text2ImageReader(tmp_path / "folder")
    assert [folder.load(i)["caption"] for i in range(len(folder))] == ["first", "second"]


def test_missing_path_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere\.json.*\.jsonl"):
        TextReader(tmp_path / "nowhere.json")


def test_conversation_and_text_readers(tmp_path):
    image_file(tmp_path / "im" / "a.png")
    talk = [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A cube."},
            {"from": "human", "value": "Colour? \n<image>"}, {"from": "gpt", "value": "Red."}]
    rows = [{"image": "a.png", "conversations": talk},
            {"conversations": talk[:2]},
            {"image": "a.png", "conversations": talk[:3]},
            {"image": "a.png", "conversations": [talk[1], talk[0]]},
            {"image": "a.png", "conversations": [talk[0], {"from": "gpt", "value": "  "}]},
            {"image": "a.png"}]
    path = dump(tmp_path / "llava.json", rows)
    reader = ConversationReader(path, image_root=tmp_path / "im")
    assert len(reader) == 1
    assert reader.skipped == {"no image": 1, "bad conversation": 3, "empty answer": 1}
    row = reader.load(0)
    assert row["turns"] == [("What is it?", "A cube."), ("Colour?", "Red.")] and row["image"].size == (12, 8)
    loose = ConversationReader(path, image_root=tmp_path / "im", require_image=False)
    assert len(loose) == 2 and loose.load(1) == {"image": None, "turns": [("What is it?", "A cube.")]}
    lines = [{"text": "plain words"}, {"text": ""}, {"conversations": talk[:2]},
             {"image": "a.png", "conversations": talk}]
    (tmp_path / "text.jsonl").write_text("\n".join(json.dumps(r) for r in lines))
    text = TextReader(tmp_path / "text.jsonl")
    assert [text.load(i) for i in range(len(text))] == [{"text": "plain words"},
                                                         {"turns": [("What is it?", "A cube.")]}]
    assert text.skipped == {"empty text": 1, "image in text data": 1}


def test_shapesworld_readers_are_functions_of_seed_and_index():
    config = ShapesWorldConfig(image_size=32, max_objects=2)
    captions = ShapesWorldCaptions(config, seed=3, length=5)
    world = ShapesWorld(config, 3, 5)
    assert len(captions) == 5
    row = captions.load(2)
    assert row["caption"] == describe_scene(world.scene(2), world.rng(2, "caption")).text
    assert row["image"].tobytes() == world[2].image.tobytes() and row["image"].mode == "RGB"
    questions = ShapesWorldQuestions(config, 3, 5, kinds=("color", "existence"))
    (question, answer), = questions.load(4)["turns"]
    pairs = questions_for_scene(world.scene(4), world.rng(4, "questions"), config)
    kinds = {(q.question, q.answer): q.kind for q in pairs}
    assert kinds[(question, answer)] in ("color", "existence")
    assert questions.load(4)["turns"] == [(question, answer)]
    with pytest.raises(ValueError, match="unknown question kind"):
        ShapesWorldQuestions(config, 3, 5, kinds=("size",))


def test_shapesworld_in_a_stream(tok):
    config = ShapesWorldConfig(image_size=32, max_objects=1)
    sources = {"i2t": [ShapesWorldQuestions(config, 0, 3, kinds=("position",))],
               "t2i": [ShapesWorldCaptions(config, 0, 3)]}
    mixed = MixedStream(sources, tok, (0, 1, 1), 2, Shard.whole(2), image_size=16, max_length=64, caption_drop=0.0)
    assert mixed.batch(1).pixels.shape == (2, 3, 16, 16)
    with pytest.raises(RuntimeError, match=r"ShapesWorldQuestions.*no question of the kinds"):
        mixed.batch(0)


def test_understanding_template_and_labels(tok):
    example = encode_conversation(tok, [("What is it?", "A cube."), ("And?", "Red.")], 200, image=True)
    assert example.ids.count(IMAGE_TOKEN_INDEX) == 1
    slot = example.ids.index(IMAGE_TOKEN_INDEX)
    assert decode(tok, example.ids[:slot]) == "<|im_start|>user\n"
    assert decode(tok, example.ids[slot + 1:]) == (
        "\nWhat is it?<|im_end|>\n<|im_start|>assistant\nA cube.<|im_end|>\n"
        "<|im_start|>user\nAnd?<|im_end|>\n<|im_start|>assistant\nRed.<|im_end|>\n")
    assert supervised(tok, example.ids, example.labels) == ["A cube.<|im_end|>", "Red.<|im_end|>"]
    text_chat = encode_conversation(tok, [("Hi", "Yo")], 200)
    assert decode(tok, text_chat.ids) == INSTRUCTION.format(input="Hi") + "Yo<|im_end|>\n"
    assert supervised(tok, text_chat.ids, text_chat.labels) == ["Yo<|im_end|>"]
    plain = encode_text(tok, "some words", 200)
    assert decode(tok, plain.ids) == "some words<|endoftext|>" and plain.labels == plain.ids


def test_truncation_keeps_the_slot_and_skips_rows_without_supervision(tok):
    prompt_len = len(encode_conversation(tok, [("Q", "")], 200, image=True).ids) - 2  # minus <|im_end|>, \n
    cut = encode_conversation(tok, [("Q", "a long answer indeed")], prompt_len + 3, image=True)
    assert len(cut.ids) == prompt_len + 3 and IMAGE_TOKEN_INDEX in cut.ids
    assert sum(label != IGNORE_INDEX for label in cut.labels) == 3
    with pytest.raises(BadRow) as err:
        encode_conversation(tok, [("Q", "answer")], prompt_len, image=True)
    assert err.value.reason == "too long"


def test_generation_prompt_and_pixels(tok):
    assert decode(tok, encode_generation(tok, "a cube", 64).ids) == INSTRUCTION.format(
        input=generation_text("a cube"))
    dropped = encode_generation(tok, "a cube", 64, drop=True)
    assert decode(tok, dropped.ids) == INSTRUCTION.format(input=CFG_PROMPT)
    long = encode_generation(tok, "a cube " * 50, 40)
    assert len(long.ids) == 40 and decode(tok, long.ids).endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert long.labels is None
    image = Image.new("RGB", (80, 40), (255, 0, 0))
    image.paste((0, 255, 0), (20, 0, 60, 40))
    pixels = generation_pixels(image, 16)
    assert pixels.shape == (3, 16, 16)
    assert torch.allclose(pixels[:, :, 2:-2], torch.tensor([-1.0, 1.0, -1.0])[:, None, None], atol=0.02)


@pytest.fixture
def sources(tmp_path):
    """Readers for all three tasks, each with one row that only fails when it is loaded."""
    for k in range(6):
        image_file(tmp_path / "im" / f"{k}.png", size=(12 + k, 10), color=(40 * k, 100, 0))
    (tmp_path / "im" / "5.png").write_bytes(b"broken")
    texts = [json.dumps({"text": f"words {k}" * (k + 1)}) for k in range(6)]
    (tmp_path / "text.jsonl").write_text("\n".join(texts))
    talk = [{"image": f"{k}.png", "conversations": [{"from": "human", "value": f"<image>\nq{k}"},
                                                      {"from": "gpt", "value": f"answer {k}"}]} for k in range(6)]
    talk[1]["image"] = "absent.png"
    captions = [{"image": f"{k}.png", "caption": f"caption {k}"} for k in range(6)]
    return {"text": [TextReader(tmp_path / "text.jsonl")],
            "i2t": [ConversationReader(dump(tmp_path / "talk.json", talk), image_root=tmp_path / "im")],
            "t2i": [Text2ImageReader(dump(tmp_path / "cap.json", captions[:3]), image_root=tmp_path / "im"),
                    Text2ImageReader(dump(tmp_path / "cap2.json", captions[3:]), image_root=tmp_path / "im")]}


def stream(sources, tok, shard=Shard.whole(4), ratio=(1, 1, 1), **kw) -> MixedStream:
    return MixedStream(sources, tok, ratio, shard.global_size, shard, image_size=16, max_length=64, **kw)


def rows(batch: Batch) -> list[tuple]:
    """Per row: unpadded ids and labels, pixels and sample id (padding width depends on the rows present)."""
    out = []
    for r in range(len(batch)):
        mask = batch.attention_mask[r]
        labels = None if batch.labels is None else batch.labels[r][mask].tolist()
        pixels = None if batch.pixels is None else batch.pixels[r]
        out.append((batch.task, batch.input_ids[r][mask].tolist(), labels, pixels, int(batch.sample_ids[r])))
    return out


def same(a: list[tuple], b: list[tuple]) -> bool:
    def equal(x: tuple, y: tuple) -> bool:
        pixels = x[3] is y[3] is None or (x[3] is not None and y[3] is not None and torch.equal(x[3], y[3]))
        return x[:3] == y[:3] and x[4] == y[4] and pixels

    return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b, strict=True))


def test_cycle_and_ratio_errors(sources, tok):
    assert stream(sources, tok, ratio=(0, 1, 2)).cycle == ["i2t", "t2i", "t2i"]
    assert stream(sources, tok, ratio=(1, 3, 8)).cycle == ["text"] + ["i2t"] * 3 + ["t2i"] * 8
    assert stream({"t2i": sources["t2i"]}, tok, ratio=(0, 0, 1)).task(5) == "t2i"
    with pytest.raises(ValueError, match="sums to zero"):
        stream(sources, tok, ratio=(0, 0, 0))
    with pytest.raises(ValueError, match="'i2t'"):
        stream({"t2i": sources["t2i"], "text": sources["text"]}, tok, ratio=(1, 1, 1))
    with pytest.raises(ValueError, match="non-negative"):
        stream(sources, tok, ratio=(1, -1, 1))


def test_batches_follow_the_template_and_walk_a_permutation(sources, tok):
    mixed = stream(sources, tok, ratio=(1, 1, 1), caption_drop=0.0)
    text0, i2t0, t2i0, text1 = (mixed.batch(i) for i in range(4))
    assert [b.task for b in (text0, i2t0, t2i0, text1)] == ["text", "i2t", "t2i", "text"]
    assert text1.sample_ids.tolist() == [4, 5, 6, 7] and text0.pixels is None
    text2 = mixed.batch(6)
    seen = [decode(tok, ids).removesuffix("<|endoftext|>") for b in (text0, text1, text2) for _, ids, *_ in rows(b)]
    epochs = seen[:6], seen[6:]
    assert all(sorted(epoch) == [f"words {k}" * (k + 1) for k in range(6)] for epoch in epochs)
    assert epochs[0] != epochs[1] and epochs[0] != sorted(epochs[0])
    assert (text0.input_ids[~text0.attention_mask] == tok.convert_tokens_to_ids("<|endoftext|>")).all()
    assert (text0.labels[~text0.attention_mask] == IGNORE_INDEX).all()
    assert (i2t0.input_ids == IMAGE_TOKEN_INDEX).sum(1).tolist() == [1] * 4
    for _, ids, labels, pixels, _ in rows(i2t0):
        (answer,) = supervised(tok, ids, labels)
        k = int(answer.removeprefix("answer ").removesuffix("<|im_end|>"))
        assert decode(tok, ids[ids.index(IMAGE_TOKEN_INDEX) + 1:]).startswith(f"\nq{k}<|im_end|>")
        expected = preprocess_image(Image.open(sources["i2t"][0].image_root / f"{k}.png"), 16)
        assert torch.equal(pixels, expected)
    assert t2i0.labels is None and t2i0.pixels.shape == (4, 3, 16, 16)
    prompt = "<|im_start|>user\nGenerate an image: caption "
    assert all(decode(tok, ids).startswith(prompt) for _, ids, *_ in rows(t2i0))


def test_shards_workers_and_resume_reproduce_the_whole_batch(sources, tok):
    whole = stream(sources, tok, caption_drop=0.5)
    halves = [stream(sources, tok, shard, caption_drop=0.5) for shard in (Shard(0, 2, 4), Shard(2, 2, 4))]
    full = list(batches(whole, 0, 9))
    for iteration, batch in enumerate(full):
        assert same(rows(batch), rows(halves[0].batch(iteration)) + rows(halves[1].batch(iteration)))
    assert whole.skipped["missing image file"] >= 1 and whole.skipped["corrupt image"] >= 1
    assert whole.skipped == halves[0].skipped + halves[1].skipped
    unconditional = INSTRUCTION.format(input=CFG_PROMPT)
    dropped = [decode(tok, ids) == unconditional for b in full[2::3] for _, ids, *_ in rows(b)]
    assert any(dropped) and not all(dropped)
    workers = stream(sources, tok, caption_drop=0.5)
    parallel = list(batches(workers, 0, 9, num_workers=2))
    assert all(same(rows(a), rows(b)) for a, b in zip(full, parallel, strict=True))
    assert workers.skipped == whole.skipped
    resumed = list(batches(stream(sources, tok, caption_drop=0.5), 4, 9))
    assert all(same(rows(a), rows(b)) for a, b in zip(full[4:], resumed, strict=True))


def test_caption_drop_rate_does_not_depend_on_the_shard(tmp_path, tok):
    image_file(tmp_path / "a.png", size=(4, 4))
    reader = Text2ImageReader(dump(tmp_path / "cap.json", [{"image": "a.png", "caption": "a cube"}]))
    unconditional = encode_generation(tok, "", 64, drop=True).ids

    def drops(shard: Shard, start: int = 0) -> list[bool]:
        s = MixedStream({"t2i": [reader]}, tok, (0, 0, 1), 100, shard, image_size=8, max_length=64, seed=7)
        return [ids == unconditional for b in batches(s, start, 20) for _, ids, *_ in rows(b)]

    whole = drops(Shard.whole(100))
    assert 0.07 < sum(whole) / len(whole) < 0.13
    first, second = drops(Shard(0, 40, 100)), drops(Shard(40, 60, 100))
    assert [x for k in range(20) for x in first[40 * k:40 * k + 40] + second[60 * k:60 * k + 60]] == whole


def test_all_bad_rows_raise_naming_the_source(tmp_path, tok):
    talk = [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]
    reader = ConversationReader(dump(tmp_path / "talk.json", [{"image": "gone.png", "conversations": talk}] * 3))
    mixed = MixedStream({"i2t": [reader]}, tok, (0, 1, 0), 2, Shard.whole(2), image_size=16, max_length=64)
    with pytest.raises(RuntimeError, match=r"talk\.json.*missing image file"):
        mixed.batch(0)
