"""Optimisation numbers against independent sources: each parameter's learning rate and weight decay in every
training preset (the paper's Table 1, the preset files read as plain YAML, the release's no-decay rule), the
schedule under gradient accumulation and the EMA against their closed forms, and the 0.1 gradient scale on the
understanding visual features as the trainer applies it."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from torch import nn

import experiments
from experiments.ablations import figure6, table5
from experiments.ablations.config import Figure6Config, Table5Config, load_ablation
from harmon.checkpoints import read_torch
from harmon.model import Harmon
from harmon.tiny import tiny_harmon
from harmon.train.config import PRESETS, ModelConfig, TrainConfig, list_presets, load_config
from harmon.train.objectives import module_groups
from harmon.train.run_log import read_metrics
from harmon.train.trainer import EMA, Trainer, build_optimizer, lr_factor, set_trainable
from harmon.utils.schedules import warmup_cosine
from harmon.utils.strict_yaml import ConfigError

# The paper's Table 1: learning rates per stage (the LLM is frozen in stage I).
TABLE1 = {
    1: {"mar_decoder": 1e-4, "mar_encoder": 1e-5},
    2: {"mar_decoder": 1e-4, "mar_encoder": 1e-5, "llm": 1e-5},
    3: {"mar_decoder": 2e-5, "mar_encoder": 2e-6, "llm": 2e-6},
}
# MAR's parameter names on either side (the released state-dict layout).
MAR_ENCODER = {"fake_latent", "class_emb", "z_proj", "z_proj_ln", "encoder_pos_embed_learned", "encoder_blocks",
               "encoder_norm"}
MAR_DECODER = {"mask_token", "decoder_embed", "decoder_pos_embed_learned", "decoder_blocks", "decoder_norm",
               "diffusion_pos_embed_learned", "diffloss"}


class PatchEncoder(nn.Module):
    """A small real understanding encoder: a 16x16 patch embedding."""

    embed_dim = 12

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, self.embed_dim, 16, stride=16)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.conv(pixels).flatten(2).transpose(1, 2)


@pytest.fixture(scope="module")
def models() -> dict[bool, Harmon]:
    """Tiny Harmons with the released parameter names, without and with a plugged understanding encoder."""
    plain = tiny_harmon()
    return {False: plain, True: Harmon(plain.config, plain.tokenizer, understanding_encoder=PatchEncoder())}


def part_of(name: str) -> str:
    """Module group of a parameter, read off its name."""
    head, _, rest = name.partition(".")
    if head == "mar":
        top = rest.partition(".")[0]
        return "mar_encoder" if top in MAR_ENCODER else "mar_decoder" if top in MAR_DECODER else "?"
    return head


def decays(name: str, param: nn.Parameter) -> bool:
    """The release's rule: no weight decay for 1-D tensors, biases and the diffusion head."""
    return not (param.ndim == 1 or name.endswith(".bias") or "diffloss" in name)


def check_groups(model: Harmon, config: TrainConfig, lrs: dict[str, float], weight_decay: float,
                 trainable: list[str]) -> None:
    """Every trainable parameter sits in exactly one group with its part's rate and the rule's decay; frozen ones
    are in none and have no gradient."""
    optimizer, _ = build_optimizer(set_trainable(model, config.trainable), config)
    assert optimizer.defaults["betas"] == (0.9, 0.95)
    where: dict[int, list[dict]] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            where.setdefault(id(p), []).append(group)
    seen = 0
    for name, param in model.named_parameters():
        if name.startswith("vae."):
            assert id(param) not in where and not param.requires_grad
            continue
        part = part_of(name)
        if part not in trainable:
            assert id(param) not in where and not param.requires_grad, name
            continue
        (group,) = where[id(param)]
        seen += 1
        assert param.requires_grad, name
        assert group["lr"] == lrs[part], (name, group["lr"], lrs[part])
        assert group["weight_decay"] == (weight_decay if decays(name, param) else 0.0), name
    assert seen == len(where)


def preset_file(name: str) -> dict:
    return yaml.safe_load((PRESETS / f"{name}.yaml").read_text())


@pytest.mark.parametrize("name", list_presets())
def test_every_training_preset_gives_each_parameter_its_rate_and_decay(models, name):
    """The preset file, read as plain YAML, against the optimiser built from the loaded preset."""
    raw = preset_file(name)
    check_groups(models[False], load_config(name), raw["optim"]["lr"], raw["optim"].get("weight_decay", 0.02),
                 raw["trainable"])


@pytest.mark.parametrize("variant", ["0.5b", "1.5b"])
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_paper_presets_give_table1_rates_to_every_parameter(models, variant, stage):
    """Every MAR decoder, MAR encoder and LLM parameter gets its stage's Table 1 rate; decay is 0.02 or 0."""
    config = load_config(f"harmon-{variant}-stage{stage}")
    optimizer, _ = build_optimizer(set_trainable(models[False], config.trainable), config)
    rates: dict[str, set[float]] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            name = next(n for n, q in models[False].named_parameters() if q is p)
            rates.setdefault(part_of(name), set()).add(group["lr"])
    for part, rate in TABLE1[stage].items():
        assert rates[part] == {rate}, part
    assert ("llm" in rates) == (stage > 1)  # stage I trains only the MAR side
    decays_of = {g["weight_decay"] for g in optimizer.param_groups}
    assert decays_of == {0.0, 0.02}


ABLATIONS = Path(experiments.__file__).parent / "presets"
ABLATION_KINDS = {"table5": (Table5Config, table5), "figure6": (Figure6Config, figure6)}


@pytest.mark.parametrize("preset", ["micro", "mini", "paper"])
@pytest.mark.parametrize("kind", ["table5", "figure6"])
def test_every_ablation_run_gives_each_parameter_its_rate_and_decay(models, tmp_path, kind, preset):
    """Each planned Table 5 / Figure 6 run against its preset file read as plain YAML."""
    raw = yaml.safe_load((ABLATIONS / f"{kind}-{preset}.yaml").read_text())["training"]
    cls, module = ABLATION_KINDS[kind]
    config = load_ablation(cls, kind, preset)
    runs = module.plan(config, ModelConfig(architecture="tiny"), tmp_path)
    assert runs
    for run in runs:
        train = run.train
        check_groups(models["understanding" in train.trainable], train, raw["lr"], raw.get("weight_decay", 0.02),
                     train.trainable)


@pytest.mark.parametrize("kind", ["table5", "figure6"])
def test_ablation_paper_runs_use_stage2_rates(models, tmp_path, kind):
    """At the paper's scale the ablations take stage II's rates; a plugged encoder learns at the MAR encoder's."""
    stage2 = {**TABLE1[2], "proj_in": 1e-5, "proj_out": 1e-4, "understanding": 1e-5}
    cls, module = ABLATION_KINDS[kind]
    for run in module.plan(load_ablation(cls, kind, "paper"), ModelConfig(architecture="tiny"), tmp_path):
        check_groups(models["understanding" in run.train.trainable], run.train, stage2, 0.02, run.train.trainable)


# ----- the schedule and gradient accumulation ----------------------------------------------------------------
def test_lr_factor_counts_optimiser_updates_not_iterations():
    """50,000 iterations at accumulate 5 are 10,000 updates: 1 % warm-up = 100 updates from 1e-5, then cosine."""
    config = load_config("harmon-0.5b-stage1", ["accumulate=5"])
    assert lr_factor(0, config) == pytest.approx(1e-5)
    assert lr_factor(50, config) == pytest.approx(1e-5 + (1 - 1e-5) * 0.5)
    assert lr_factor(100, config) == pytest.approx(1.0)
    assert lr_factor(100 + 9900 // 2, config) == pytest.approx(0.5)
    assert lr_factor(100 + 9900 // 4, config) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_factor(10_000, config) == pytest.approx(0.0, abs=1e-12)


def test_warmup_cosine_by_hand():
    """Linear from `start` to `peak` over `warmup`, half-cycle cosine to `floor` at `total`, held there after."""
    assert [warmup_cosine(s, 10, 2) for s in (0, 1, 2, 6, 10, 12)] == pytest.approx([0, 0.5, 1, 0.5, 0, 0], abs=1e-12)
    assert warmup_cosine(1, 10, 2, peak=2.0, start=0.5, floor=0.2) == pytest.approx(1.25)  # 0.5 + 1.5 / 2
    assert warmup_cosine(6, 10, 2, peak=2.0, start=0.5, floor=0.2) == pytest.approx(1.1)  # 0.2 + 1.8 / 2
    assert warmup_cosine(20, 10, 2, peak=2.0, floor=0.2) == pytest.approx(0.2)
    assert warmup_cosine(2.5, 3, 2) == pytest.approx(0.5)  # one update of decay: half way at half an update
    assert warmup_cosine(3, 3, 2) == pytest.approx(0.0, abs=1e-12)


def test_lr_factor_decays_to_the_floor_ratio():
    config = load_config("harmon-0.5b-stage1", ["optim.min_lr_ratio=0.1"])
    assert lr_factor(500 + 49_500 // 2, config) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(50_000, config) == pytest.approx(0.1)


def test_unknown_or_stray_groups_are_refused_by_name(models):
    with pytest.raises(ConfigError, match=r"\['understanding'\] but this model has no such module group \(it has "
                                          r"llm, mar_encoder, mar_decoder, proj_in, proj_out\)"):
        set_trainable(models[False], ["llm", "understanding"])
    stray = Harmon(models[False].config, models[False].tokenizer)
    stray.register_parameter("stray", nn.Parameter(torch.zeros(1)))
    with pytest.raises(ValueError, match="stray"):
        module_groups(stray)


def _tiny(tmp_path: Path, *overrides: str) -> TrainConfig:
    return load_config("tiny-shapesworld", [f"out_dir={tmp_path / 'run'}", *overrides])


def test_scheduler_steps_once_per_accumulated_update(tmp_path):
    """8 iterations at accumulate 2: 4 updates, warm-up 2 updates from 1e-5, cosine to 0 at update 4."""
    config = _tiny(tmp_path, "steps=8", "accumulate=2", "save_every=8", "optim.warmup_ratio=0.5", "log_every=1")
    Trainer(config, progress=False).fit()
    rows = read_metrics(tmp_path / "run")
    assert [int(r["iteration"]) for r in rows] == list(range(8))
    factor = {0: 1e-5, 1: 1e-5 + (1 - 1e-5) / 2, 2: 1.0, 3: 0.5, 4: 0.0}
    for r in rows:
        done = int(r["iteration"]) + 1
        assert int(r["update"]) == done // 2
        assert float(r["lr_mar_decoder"]) == pytest.approx(1e-3 * factor[done // 2], rel=1e-9, abs=1e-15), r
        assert (r["grad_norm"] != "") == (done % 2 == 0), r  # clipped and stepped only on update iterations
    state = read_torch(tmp_path / "run" / "checkpoints" / "iter_00000008" / "optimizer.pt")["state"]
    assert state and {float(s["step"]) for s in state.values()} == {4.0}


# ----- EMA ---------------------------------------------------------------------------------------------------
def test_ema_update_is_the_closed_form():
    """s_n = d s_(n-1) + (1 - d) p_n: from 0 with d = 0.9 and p = 1, 2, 3: 0.1, 0.29, 0.561."""
    p = nn.Parameter(torch.zeros(2))
    ema = EMA({"w": p}, 0.9)
    shadows = []
    for value in (1.0, 2.0, 3.0):
        with torch.no_grad():
            p.fill_(value)
        ema.update()
        shadows.append(ema.shadow["w"].tolist())
    assert shadows == [pytest.approx([v, v]) for v in (0.1, 0.29, 0.561)]
    assert ema.shadow["w"].dtype == torch.float32 and ema.shadow["w"].data_ptr() != p.data_ptr()


def test_trainer_ema_is_the_closed_form_over_the_updates(tmp_path):
    """After n updates with decay d, EMA = d^n w_0 + (1 - d) sum_k d^(n-k) w_k (w_k: weights after update k)."""
    decay, n = 0.75, 3
    config = _tiny(tmp_path, f"steps={n}", "save_every=1", f"keep_last={n}", f"ema_decay={decay}")
    trainer = Trainer(config, progress=False)
    start = {k: v.detach().clone().double() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    run = tmp_path / "run"
    after = [load_file(str(run / "checkpoints" / f"iter_{k:08d}" / "model.safetensors")) for k in range(1, n + 1)]
    ema = load_file(str(run / "final" / "model_ema.safetensors"))
    trainable = [k for k in after[-1] if not torch.equal(after[-1][k], start[k].float())]
    assert "proj_in.0.weight" in trainable and "mar.diffloss.net.input_proj.weight" in trainable
    for key in trainable:
        expected = decay**n * start[key] + sum((1 - decay) * decay ** (n - k) * after[k - 1][key].double()
                                               for k in range(1, n + 1))
        torch.testing.assert_close(ema[key].double(), expected, rtol=0, atol=1e-6, msg=key)


def test_resumed_run_continues_the_ema(tmp_path):
    """A run resumed from its middle checkpoint ends with the EMA of the run that was never interrupted."""
    def run(name: str):
        return _tiny(tmp_path / name, "steps=4", "save_every=2", "keep_last=2", "ema_decay=0.75")

    Trainer(run("whole"), progress=False).fit()
    resumed = tmp_path / "resumed" / "run"
    Trainer(run("resumed"), progress=False).fit()
    for stale in ("checkpoints/iter_00000004", "final"):
        for f in sorted((resumed / stale).iterdir()):
            f.unlink()
        (resumed / stale).rmdir()
    Trainer(run("resumed"), progress=False).fit()
    assert not list((resumed / "checkpoints").glob("corrupt-*"))  # it resumed from iteration 2, not from scratch
    whole = load_file(str(tmp_path / "whole" / "run" / "final" / "model_ema.safetensors"))
    again = load_file(str(resumed / "final" / "model_ema.safetensors"))
    assert whole.keys() == again.keys()
    for key in whole:
        torch.testing.assert_close(again[key], whole[key], rtol=0, atol=1e-6, msg=key)


# ----- the gradient scale on the understanding visual features -----------------------------------------------
def _first_grad_norm(tmp_path: Path, name: str, *overrides: str) -> float:
    """The gradient norm of one image-to-text update (clipping reports the norm before it clips)."""
    config = load_config("tiny-shapesworld", [f"out_dir={tmp_path / name}", "steps=1", "save_every=1",
                                              "data.ratio=[0, 1, 0]", *overrides])
    Trainer(config, progress=False).fit()
    return float(read_metrics(tmp_path / name)[0]["grad_norm"])


def test_trainer_scales_the_visual_feature_gradient_by_0_1(tmp_path):
    """The LLM's gradient does not depend on the scale s, the visual path's is s times the unscaled one, so
    |g(s)|^2 = |g(0)|^2 + s^2 (|g(1)|^2 - |g(0)|^2); the default must be s = 0.1."""
    zero, one = _first_grad_norm(tmp_path, "zero", "grad_scale=0.0"), _first_grad_norm(tmp_path, "one", "grad_scale=1.0")
    default = _first_grad_norm(tmp_path, "default")
    assert one > zero * 1.01  # the visual path carries a visible share of the gradient
    assert default**2 == pytest.approx(zero**2 + 0.01 * (one**2 - zero**2), rel=2e-4)
