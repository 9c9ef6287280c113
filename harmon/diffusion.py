"""Gaussian diffusion over per-token latents, as used by MAR's diffusion head.

Cosine noise schedule over 1000 steps, epsilon prediction with a learned-range variance, MSE + VLB training loss
and ancestral (DDPM) sampling on a respaced chain. Coefficients are computed in float64 and used as float32, so
the numbers match the improved-DDPM formulation the official release builds on. Sampling reads each step's
coefficients from tables kept on the device, so its loop makes no host-to-device copy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

NUM_TRAIN_STEPS = 1000

ModelFn = Callable[..., torch.Tensor]
StepFn = Callable[[torch.Tensor, int], torch.Tensor]


@dataclass(frozen=True)
class StepCoefficients:
    """What one reverse step reads from the schedule (float32, 0-d or one per row): x_0 from epsilon, the
    posterior mean, and the two ends of the learned log-variance range."""

    sqrt_recip: torch.Tensor
    sqrt_recipm1: torch.Tensor
    coef1: torch.Tensor
    coef2: torch.Tensor
    min_log: torch.Tensor
    log_beta: torch.Tensor


def cosine_betas(num_steps: int = NUM_TRAIN_STEPS, max_beta: float = 0.999) -> np.ndarray:
    """Betas of the cosine schedule: alpha_bar(t) = cos^2(((t/T) + 0.008) / 1.008 * pi/2)."""

    def alpha_bar(s: float) -> float:
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [
        min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), max_beta) for i in range(num_steps)
    ]
    return np.array(betas, dtype=np.float64)


def space_timesteps(num_steps: int, spacing: str | int) -> set[int]:
    """The kept steps for a respacing string: comma-separated section counts ("100", "10,20") or "ddimN"."""
    spacing = str(spacing).strip()
    if spacing == "":
        return set(range(num_steps))
    if spacing.startswith("ddim"):
        wanted = int(spacing[len("ddim") :])
        for stride in range(1, num_steps):
            if len(range(0, num_steps, stride)) == wanted:
                return set(range(0, num_steps, stride))
        raise ValueError(f"cannot take exactly {wanted} steps out of {num_steps} with an integer stride")
    try:
        counts = [int(part) for part in spacing.split(",")]
    except ValueError as err:
        raise ValueError(
            f"num_sampling_steps={spacing!r} is not a step count; use e.g. '100', '50,50' or 'ddim25'"
        ) from err
    size_per, extra = divmod(num_steps, len(counts))
    start, kept = 0, []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if not 1 <= count <= size:
            raise ValueError(f"num_sampling_steps={spacing!r}: section {i} asks for {count} of {size} steps")
        stride = 1.0 if count == 1 else (size - 1) / (count - 1)
        position = 0.0
        for _ in range(count):
            kept.append(start + round(position))
            position += stride
        start += size
    return set(kept)


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """Log-likelihood of x under a Gaussian discretised into 8-bit bins over [-1, 1]."""
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def reverse_step(output: torch.Tensor, x_t: torch.Tensor, k: StepCoefficients) -> dict[str, torch.Tensor]:
    """A network output [eps | v] at x_t -> the reverse step's mean, learned-range log-variance and predicted x_0,
    with the step's coefficients `k` (0-d, or gathered per row as (N, 1))."""
    channels = x_t.shape[1]
    eps, v = output[:, :channels], output[:, channels:]
    frac = (v + 1) / 2
    log_variance = frac * k.log_beta + (1 - frac) * k.min_log
    pred_xstart = k.sqrt_recip * x_t - k.sqrt_recipm1 * eps
    mean = k.coef1 * pred_xstart + k.coef2 * x_t
    return {"mean": mean, "log_variance": log_variance, "pred_xstart": pred_xstart}


def _mean_flat(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=list(range(1, x.ndim)))


class GaussianDiffusion:
    """A (possibly respaced) diffusion chain with learned-range variance and epsilon prediction.

    `timestep_map[i]` is the original 0..999 step of chain index i; the network always sees original steps.
    """

    def __init__(self, spacing: str | int = "", base_betas: np.ndarray | None = None):
        base_betas = cosine_betas() if base_betas is None else base_betas
        base_alphas_cumprod = np.cumprod(1.0 - base_betas)
        kept = space_timesteps(len(base_betas), spacing)
        betas, timestep_map, last = [], [], 1.0
        for i, alpha_cumprod in enumerate(base_alphas_cumprod):
            if i in kept:
                betas.append(1.0 - alpha_cumprod / last)
                last = alpha_cumprod
                timestep_map.append(i)
        self.betas = np.array(betas, dtype=np.float64)
        self.timestep_map = torch.tensor(timestep_map, dtype=torch.long, device="cpu")
        self.num_timesteps = len(betas)

        alphas = 1.0 - self.betas
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)
        self.posterior_variance = self.betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        variance_tail = self.posterior_variance[1:] if self.num_timesteps > 1 else self.betas
        self.posterior_log_variance_clipped = np.log(np.append(variance_tail[0], variance_tail))
        self.posterior_mean_coef1 = self.betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)
        self.log_betas = np.log(self.betas)
        self._coefficients: dict[torch.device, list[StepCoefficients]] = {}

    @staticmethod
    def _gather(values: np.ndarray, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        out = torch.from_numpy(values).to(device=t.device)[t].float()
        return out.reshape(out.shape + (1,) * (like.ndim - 1))

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Sample x_t ~ q(x_t | x_0)."""
        return (
            self._gather(self.sqrt_alphas_cumprod, t, x_start) * x_start
            + self._gather(self.sqrt_one_minus_alphas_cumprod, t, x_start) * noise
        )

    def q_posterior(self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
        mean = (
            self._gather(self.posterior_mean_coef1, t, x_t) * x_start
            + self._gather(self.posterior_mean_coef2, t, x_t) * x_t
        )
        return mean, self._gather(self.posterior_log_variance_clipped, t, x_t)

    def p_mean_variance(self, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
        """Turn a network output [eps | v] into the reverse-step mean and log-variance."""
        def g(values: np.ndarray) -> torch.Tensor:
            return self._gather(values, t, x_t)

        k = StepCoefficients(g(self.sqrt_recip_alphas_cumprod), g(self.sqrt_recipm1_alphas_cumprod),
                             g(self.posterior_mean_coef1), g(self.posterior_mean_coef2),
                             g(self.posterior_log_variance_clipped), g(self.log_betas))
        return reverse_step(output, x_t, k)

    def _call(self, model: ModelFn, x: torch.Tensor, t: torch.Tensor, kwargs: dict) -> torch.Tensor:
        return model(x, self.timestep_map.to(t.device)[t], **kwargs)

    def training_losses(
        self, model: ModelFn, x_start: torch.Tensor, t: torch.Tensor, model_kwargs: dict | None = None,
        noise: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-row MSE on epsilon plus the variational bound term (in bits) for the variance channels."""
        noise = torch.randn_like(x_start) if noise is None else noise
        x_t = self.q_sample(x_start, t, noise)
        output = self._call(model, x_t, t, model_kwargs or {})
        channels = x_start.shape[1]
        eps = output[:, :channels]
        frozen = torch.cat([eps.detach(), output[:, channels:]], dim=1)
        vb = self._vb_bits(frozen, x_start, x_t, t)
        mse = _mean_flat((noise - eps) ** 2)
        return {"loss": mse + vb, "mse": mse, "vb": vb}

    def _vb_bits(self, output: torch.Tensor, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        true_mean, true_log_variance = self.q_posterior(x_start, x_t, t)
        pred = self.p_mean_variance(output, x_t, t)
        kl = _mean_flat(normal_kl(true_mean, true_log_variance, pred["mean"], pred["log_variance"])) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x_start, pred["mean"], 0.5 * pred["log_variance"])
        nll = _mean_flat(nll) / math.log(2.0)
        return torch.where(t == 0, nll, kl)

    def step_coefficients(self, device: torch.device | str) -> list[StepCoefficients]:
        """Per chain index, the float32 coefficients of one reverse step as 0-d tensors on `device` (built once per
        device: indexing them in the loop needs no host-to-device copy)."""
        device = torch.device(device)
        if device not in self._coefficients:
            def table(values: np.ndarray) -> torch.Tensor:
                return torch.from_numpy(values).to(device=device).float()

            columns = [table(v) for v in (self.sqrt_recip_alphas_cumprod, self.sqrt_recipm1_alphas_cumprod,
                                          self.posterior_mean_coef1, self.posterior_mean_coef2,
                                          self.posterior_log_variance_clipped, self.log_betas)]
            self._coefficients[device] = [StepCoefficients(*(c[i] for c in columns))
                                          for i in range(self.num_timesteps)]
        return self._coefficients[device]

    @torch.no_grad()
    def p_sample_loop(
        self, model: StepFn, noise: torch.Tensor, temperature: float = 1.0, generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Ancestral sampling from x_T = noise down to x_0; `model(x, i)` predicts [eps | v] at chain index i;
        temperature scales only the per-step noise.

        Same arithmetic as `p_mean_variance` (`reverse_step`), with the step's coefficients looked up once.
        """
        x = noise
        for i, k in reversed(list(enumerate(self.step_coefficients(x.device)))):
            pred = reverse_step(model(x, i).to(x.dtype), x, k)
            mean, log_variance = pred["mean"], pred["log_variance"]
            step_noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float32)
            x = mean + torch.exp(0.5 * log_variance) * step_noise * temperature if i > 0 else mean
        return x
