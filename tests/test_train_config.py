"""Training configs: the paper presets equal Table 1, and bad configs are refused naming the key."""

from __future__ import annotations

import pytest
import yaml

from harmon.train.config import TrainConfig, list_presets, load_config
from harmon.utils.strict_yaml import ConfigError, diff, from_dict, to_dict

# The paper's Table 1: per-stage learning rates, image size, batch size, text : i2t : t2i ratio, steps.
TABLE1 = {
    1: {"decoder": 1e-4, "encoder": 1e-5, "llm": None, "size": 256, "batch": 4096, "ratio": (0, 1, 2)},
    2: {"decoder": 1e-4, "encoder": 1e-5, "llm": 1e-5, "size": 256, "batch": 4096, "ratio": (1, 3, 8)},
    3: {"decoder": 2e-5, "encoder": 2e-6, "llm": 2e-6, "size": 512, "batch": 1024, "ratio": (1, 3, 16)},
}


@pytest.mark.parametrize("variant", ["0.5b", "1.5b"])
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_paper_presets_equal_table1(variant, stage):
    config = load_config(f"harmon-{variant}-stage{stage}")
    row = TABLE1[stage]
    assert config.model.architecture == f"harmon-{variant}"
    assert config.steps == 50_000 and config.accumulate == 1
    assert config.data.image_size == row["size"]
    assert config.data.batch_size == row["batch"]
    assert config.data.ratio == row["ratio"]
    assert config.data.caption_drop == 0.1 and config.grad_scale == 0.1
    assert config.optim.lr["mar_decoder"] == row["decoder"]
    assert config.optim.lr["mar_encoder"] == row["encoder"]
    assert config.optim.betas == (0.9, 0.95) and config.optim.weight_decay == 0.02 and config.optim.grad_clip == 1.0
    if row["llm"] is None:  # stage I: only the MAR encoder/decoder (and the projectors between them) train
        assert "llm" not in config.trainable
    else:
        assert config.optim.lr["llm"] == row["llm"] and "llm" in config.trainable
    assert {"mar_encoder", "mar_decoder"} <= set(config.trainable)
    assert config.distributed == ("fsdp" if variant == "1.5b" else "ddp")
    assert (config.model.init is None) == (stage == 1)


def test_every_preset_round_trips_through_yaml():
    for name in list_presets():
        config = load_config(name)
        again = from_dict(TrainConfig, yaml.safe_load(yaml.safe_dump(to_dict(config))))
        assert diff(to_dict(config), to_dict(again)) == []


@pytest.mark.parametrize(("override", "message"), [
    ("optim.lrr=1", r"optim.lrr: unknown key \(did you mean 'lr'\?\)"),
    ("data.batch_size=1.5", "data.batch_size: expected an integer, got float 1.5"),
    ("steps=many", "steps: expected an integer, got str 'many'"),
    ("optim.betas=[0.9]", r"optim.betas: expected 2 items"),
    ("model.architecture=huge", r"model.architecture: 'huge' is not one of"),
    ("data.ratio=[0, 0, 0]", "data.ratio sums to zero"),
    ("data.ratio=[1, 1, 1]", "gives the text task 1 iterations per cycle but no data.sources entry"),
    ("trainable=[llm, eyes]", "trainable: unknown module group 'eyes'"),
    ("optim.lr={llm: 1.0e-5}", "trainable lists 'mar_encoder' but optim.lr has no learning rate"),
    ("data.sources=[{task: t2i, format: shapesworld, shapesworld: {colour: [red]}}]",
     r"data.sources\[0\].shapesworld.colour: unknown key \(did you mean 'colors'\?\)"),
    ("data.sources=[{task: t2i, format: t2i-json}]", "needs a path"),
    ("loss_weights={t2i: yes}", "loss_weights.t2i: expected a number"),
    ("save_every=5", None),
])
def test_bad_values_are_refused_naming_the_key(override, message):
    if message is None:  # 5 is fine with accumulate 1, not with accumulate 2
        load_config("tiny-shapesworld", [override])
        with pytest.raises(ConfigError, match="multiples of accumulate"):
            load_config("tiny-shapesworld", [override, "accumulate=2"])
        return
    with pytest.raises(ConfigError, match=message):
        load_config("tiny-shapesworld", [override])


def test_unknown_preset_and_malformed_override_are_explained(tmp_path):
    with pytest.raises(ConfigError, match="neither a YAML file nor a preset"):
        load_config("harmon-7b-stage1")
    with pytest.raises(ConfigError, match="key.subkey=value"):
        load_config("tiny-shapesworld", ["steps"])
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_config(tmp_path / "missing.yaml")
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping at the top level"):
        load_config(path)


def test_overrides_reach_list_items_and_take_exponent_numbers():
    config = load_config("harmon-0.5b-stage1", ["data.sources.0.path=/data/densecap.json", "optim.lr.proj_in=3e-5",
                                                "data.ratio.1=4"])
    assert config.data.sources[0].path == "/data/densecap.json"
    assert config.optim.lr["proj_in"] == 3e-5 and config.data.ratio == (0, 4, 2)
    with pytest.raises(ConfigError, match="data.sources.7 does not exist"):
        load_config("harmon-0.5b-stage1", ["data.sources.7.path=x"])
    with pytest.raises(ConfigError, match="a list needs an item number"):
        load_config("harmon-0.5b-stage1", ["data.sources.path=x"])
    with pytest.raises(ConfigError, match="steps: expected an integer, got str '1e3'"):
        load_config("tiny-shapesworld", ["steps=1e3"])
