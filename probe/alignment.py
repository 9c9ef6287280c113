"""Representation alignment between feature matrices of the same n images (rows paired, [n, d] each).

- `mutual_knn` (Huh et al. 2024): mean overlap of the cosine k-NN sets of every image.
- `cknna`: centred kernel nearest-neighbour alignment, in the reference implementation's form (default) or the
  paper's form.
- `unbiased_hsic` (Song et al. 2012) on kernel matrices and `debiased_cka` on features.
- `alignment_matrix` / `against_reference`: every metric for every pair of encoders.
Biased linear CKA is `probe.cka` (exact, or streaming with O((d1 + d2)^2) memory); it is reused here.

Costs. The k-NN metrics find each row's neighbours in row chunks, so memory is O(chunk * n + n * k) and time
O(n^2 * d); the masked kernels are kept sparse (n * k entries). `MAX_KNN_IMAGES` bounds n for them.
`debiased_cka` works in feature space: O(chunk * n + n * (d1 + d2)) memory, O(n^2 * (d1 + d2)) time.
`unbiased_hsic` takes dense n x n kernels: O(n^2) memory. Everything is computed in float64, on the device of
torch inputs (CPU for numpy inputs).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from probe.cka import Features, _as_float64, streaming_linear_cka
from probe.knn import nearest_neighbours

MAX_KNN_IMAGES = 20000
CKNNA_FORMS = ("reference", "paper")
DEFAULT_CKNNA_FORM = "reference"
METRICS = ("mutual_knn", "cknna", "debiased_cka", "linear_cka")
KNN_METRICS = ("mutual_knn", "cknna")
ROW_CHUNK = 1024


def check_knn_size(n: int, k: int, max_images: int = MAX_KNN_IMAGES) -> None:
    """Refuse n > max_images (O(n^2 d) neighbour search) and k outside [1, n - 1] (self is never a neighbour)."""
    if n > max_images:
        raise ValueError(f"{n} images exceed {max_images} for the k-NN metrics (O(n^2 d) time); "
                         f"pass --max-images {max_images} or fewer")
    if not 1 <= k <= n - 1:
        raise ValueError(f"--k {k} is out of range for {n} images: k must be between 1 and n - 1 = {n - 1} "
                         "(an image is not its own neighbour); lower --k or use more images")


def _pair(x: Features, y: Features, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    x64 = _as_float64(x, "x", device)
    y64 = _as_float64(y, "y", x64.device)
    if x64.shape[0] != y64.shape[0]:
        raise ValueError(f"x has {x64.shape[0]} rows but y has {y64.shape[0]}; pass features of the same images")
    return x64, y64


# ------------------------------------------------------------------------------------------ neighbourhoods


@dataclass
class Neighbourhood:
    """The k nearest other rows of every row (cosine): `keys` = i * n + j sorted, `values` = K_ij at those keys,
    `row_means` = (1/n) sum_l K_il, with K = X Xᵀ on L2-normalised rows."""

    n: int
    k: int
    keys: torch.Tensor
    values: torch.Tensor
    row_means: torch.Tensor


def neighbourhood(x: Features, k: int, chunk: int = ROW_CHUNK) -> Neighbourhood:
    """Cosine k-NN of every row of x [n, d], self excluded; O(chunk * n) memory, O(n^2 d) time."""
    unit = F.normalize(_as_float64(x, "x"), dim=1)
    n = unit.shape[0]
    check_knn_size(n, k)
    rows = torch.arange(n, device=unit.device)
    found_keys, found_values = [], []
    for start in range(0, n, chunk):
        sims, idx = nearest_neighbours(unit[start : start + chunk], unit, k + 1, chunk)
        own = idx == rows[start : start + len(idx), None]
        # drop the row itself (or, when duplicates outrank it, the (k+1)-th neighbour)
        drop = torch.where(own.any(1), own.long().argmax(1), k)
        keep = torch.ones_like(own)
        keep[torch.arange(len(idx), device=idx.device), drop] = False
        found_keys.append((rows[start : start + len(idx), None] * n + idx)[keep])
        found_values.append(sims[keep])
    keys, order = torch.cat(found_keys).sort()
    return Neighbourhood(n, k, keys, torch.cat(found_values)[order], unit @ unit.mean(0))


def _restrict(hood: Neighbourhood, keys: torch.Tensor) -> torch.Tensor:
    """K_ij of `hood` at `keys` (sorted, all among hood.keys)."""
    return hood.values[torch.searchsorted(hood.keys, keys)]


def _sparse_hsic(n: int, keys: torch.Tensor, a: torch.Tensor, b_keys: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Unbiased HSIC of two zero-diagonal n x n matrices given by sorted keys i * n + j and values."""
    transposed = (b_keys % n) * n + b_keys // n
    t_keys, order = transposed.sort()
    pos = torch.searchsorted(t_keys, keys).clamp(max=len(t_keys) - 1)
    hit = t_keys[pos] == keys if len(t_keys) else torch.zeros_like(keys, dtype=torch.bool)
    trace = (a[hit] * b[order][pos[hit]]).sum()  # tr(A B) = sum_ij A_ij B_ji
    col_a = torch.zeros(n, dtype=a.dtype, device=a.device).index_add_(0, keys % n, a)
    row_b = torch.zeros(n, dtype=b.dtype, device=b.device).index_add_(0, b_keys // n, b)
    return (trace + a.sum() * b.sum() / ((n - 1) * (n - 2)) - 2 * (col_a @ row_b) / (n - 2)) / (n * (n - 3))


def _ratio(cross: torch.Tensor, self_x: torch.Tensor, self_y: torch.Tensor) -> float:
    product = self_x * self_y
    return float(cross / torch.sqrt(product)) if product > 0 else float("nan")


def _mutual_knn(hx: Neighbourhood, hy: Neighbourhood) -> float:
    return float(torch.isin(hx.keys, hy.keys).sum()) / (hx.n * hx.k)


def _cknna(hx: Neighbourhood, hy: Neighbourhood, form: str) -> float:
    shared = hx.keys[torch.isin(hx.keys, hy.keys)]  # mutual neighbours (i, j), sorted
    kx, ly = _restrict(hx, shared), _restrict(hy, shared)
    if form == "reference":
        n = hx.n
        if n < 4:
            raise ValueError(f"x and y have {n} rows; unbiased HSIC needs at least 4 (use more images)")
        return _ratio(_sparse_hsic(n, shared, kx, shared, ly),
                      _sparse_hsic(n, hx.keys, hx.values, hx.keys, hx.values),
                      _sparse_hsic(n, hy.keys, hy.values, hy.keys, hy.values))

    def centred(hood: Neighbourhood, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        return values - hood.row_means[keys // hood.n]

    cx, cy = centred(hx, shared, kx), centred(hy, shared, ly)
    return _ratio((cx * cy).sum(), (centred(hx, hx.keys, hx.values) ** 2).sum(),
                  (centred(hy, hy.keys, hy.values) ** 2).sum())


def _check_form(form: str) -> None:
    if form not in CKNNA_FORMS:
        raise ValueError(f"form={form!r} is not a CKNNA form; use one of {', '.join(CKNNA_FORMS)}")


def mutual_knn(x: Features, y: Features, k: int = 10) -> float:
    """m_NN = (1/n) Σ_i |N_X(i) ∩ N_Y(i)| / k, N = the k most cosine-similar other rows; chance ≈ k/(n − 1).

    O(n^2 (d1 + d2)) time, O(chunk * n + n * k) memory."""
    x64, y64 = _pair(x, y)
    return _mutual_knn(neighbourhood(x64, k), neighbourhood(y64, k))


def cknna(x: Features, y: Features, k: int = 10, form: str = DEFAULT_CKNNA_FORM) -> float:
    """CKNNA on K = X Xᵀ, L = Y Yᵀ of L2-normalised rows, α(i, j) = [i ≠ j, j ∈ N_X(i) ∩ N_Y(i)].

    form "reference" (default; the form of the authors' `metrics.py`, hence of published numbers):
      HSIC₁(α⊙K, α⊙L) / sqrt(HSIC₁(α_K⊙K, α_K⊙K) · HSIC₁(α_L⊙L, α_L⊙L)), α_K / α_L the one-sided k-NN masks,
      HSIC₁ = `unbiased_hsic`; needs n >= 4; with k = n − 1 it equals `debiased_cka` of the normalised rows.
    form "paper": Align(K, L) / sqrt(Align(K, K) · Align(L, L)),
      Align(K, L) = Σ_ij α(i, j) (K_ij − (1/n) Σ_l K_il)(L_ij − (1/n) Σ_l L_il).
    NaN when a self-term is not positive (the masked estimate is undefined). Cost as `mutual_knn`."""
    _check_form(form)
    x64, y64 = _pair(x, y)
    return _cknna(neighbourhood(x64, k), neighbourhood(y64, k), form)


# ------------------------------------------------------------------------------------------ debiased CKA


def unbiased_hsic(k: Features, l: Features) -> float:  # noqa: E741 - the kernel's usual name
    """HSIC₁(K, L) = [tr(K̃ L̃) + (1ᵀK̃1)(1ᵀL̃1) / ((n−1)(n−2)) − (2/(n−2)) 1ᵀK̃L̃1] / (n(n−3)), K̃, L̃ with zeroed
    diagonals (Song et al. 2012); kernels [n, n], n >= 4. O(n^2) memory, O(n^2) time."""
    kk, ll = _as_float64(k, "k"), _as_float64(l, "l")
    ll = ll.to(kk.device)
    n = kk.shape[0]
    if kk.shape != (n, n) or ll.shape != (n, n):
        raise ValueError(f"k and l must be square kernels of the same size, got {tuple(kk.shape)} and {tuple(ll.shape)}")
    if n < 4:
        raise ValueError(f"k and l are {n} x {n}; unbiased HSIC needs n >= 4 samples")
    kt, lt = kk.clone().fill_diagonal_(0), ll.clone().fill_diagonal_(0)
    value = ((kt * lt.T).sum() + kt.sum() * lt.sum() / ((n - 1) * (n - 2))
             - 2 * (kt.sum(0) @ lt.sum(1)) / (n - 2)) / (n * (n - 3))
    return float(value)


def _linear_hsic_terms(x: torch.Tensor, y: torch.Tensor, chunk: int) -> tuple[torch.Tensor, ...]:
    """tr(K̃ L̃), 1ᵀK̃1, 1ᵀL̃1, 1ᵀK̃L̃1 for K = X Xᵀ, L = Y Yᵀ without forming K or L whole."""
    diag_k, diag_l = (x * x).sum(1), (y * y).sum(1)
    trace = torch.zeros((), dtype=x.dtype, device=x.device)
    for start in range(0, len(x), chunk):
        trace += ((x[start : start + chunk] @ x.T) * (y[start : start + chunk] @ y.T)).sum()
    trace -= (diag_k * diag_l).sum()
    row_k, row_l = x @ x.sum(0) - diag_k, y @ y.sum(0) - diag_l  # K̃1, L̃1
    return trace, row_k.sum(), row_l.sum(), row_k @ row_l


def _linear_unbiased_hsic(x: torch.Tensor, y: torch.Tensor, chunk: int = ROW_CHUNK) -> torch.Tensor:
    n = len(x)
    trace, sum_k, sum_l, cross = _linear_hsic_terms(x, y, chunk)
    return (trace + sum_k * sum_l / ((n - 1) * (n - 2)) - 2 * cross / (n - 2)) / (n * (n - 3))


def debiased_cka(x: Features, y: Features) -> float:
    """HSIC₁(K, L) / sqrt(HSIC₁(K, K) HSIC₁(L, L)) with linear kernels K = X Xᵀ, L = Y Yᵀ (n >= 4).

    Computed from the features (columns centred first, which HSIC₁ ignores): no n x n matrix is kept,
    O(chunk * n + n * (d1 + d2)) memory, O(n^2 (d1 + d2)) time."""
    x64, y64 = _pair(x, y)
    if len(x64) < 4:
        raise ValueError(f"x and y have {len(x64)} rows; debiased CKA (unbiased HSIC) needs at least 4")
    x64, y64 = x64 - x64.mean(0), y64 - y64.mean(0)
    self_x, self_y = _linear_unbiased_hsic(x64, x64), _linear_unbiased_hsic(y64, y64)
    if self_x <= 0 or self_y <= 0:
        raise ValueError("debiased CKA is undefined when either feature matrix is constant over the samples")
    return float(_linear_unbiased_hsic(x64, y64) / torch.sqrt(self_x * self_y))


def _linear_cka(x: Features, y: Features, batch: int = 4096) -> float:
    """Biased linear CKA (Kornblith et al. 2019) through `probe.cka.streaming_linear_cka`; O((d1 + d2)^2) memory."""
    x64, y64 = _pair(x, y)
    return streaming_linear_cka((x64[s : s + batch], y64[s : s + batch]) for s in range(0, len(x64), batch))


# ------------------------------------------------------------------------------------------ many encoders


def _scorers(k: int, form: str, hoods: Mapping[str, Neighbourhood],
             tensors: Mapping[str, torch.Tensor]) -> dict[str, Callable[[str, str], float]]:
    return {
        "mutual_knn": lambda a, b: _mutual_knn(hoods[a], hoods[b]),
        "cknna": lambda a, b: _cknna(hoods[a], hoods[b], form),
        "debiased_cka": lambda a, b: debiased_cka(tensors[a], tensors[b]),
        "linear_cka": lambda a, b: _linear_cka(tensors[a], tensors[b]),
    }


def _prepare(features: Mapping[str, Features], metrics: Sequence[str], k: int, form: str):
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {', '.join(METRICS)}")
    _check_form(form)
    if not features:
        raise ValueError("no features given; pass at least one encoder")
    tensors = {name: _as_float64(value, name) for name, value in features.items()}
    sizes = {name: t.shape[0] for name, t in tensors.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"encoders have features of different numbers of images {sizes}; use the same images")
    hoods = {name: neighbourhood(t, k) for name, t in tensors.items()} if set(metrics) & set(KNN_METRICS) else {}
    return tensors, _scorers(k, form, hoods, tensors), next(iter(sizes.values()))


def _describe(metric: str, n: int, k: int, form: str) -> dict[str, object]:
    info: dict[str, object] = {"n": n}
    if metric in KNN_METRICS:
        info["k"] = k
    if metric == "cknna":
        info["form"] = form
    return info


def alignment_matrix(features: Mapping[str, Features], metrics: Sequence[str] = METRICS, k: int = 10,
                     form: str = DEFAULT_CKNNA_FORM) -> dict[str, dict[str, object]]:
    """{metric: {"names", "matrix" (matrix[i][j] = metric(names[i], names[j])), "n", "k" (k-NN metrics),
    "form" (cknna)}} over every ordered pair of encoders (the reference CKNNA is not exactly symmetric).
    Neighbours are found once per encoder."""
    tensors, scorers, n = _prepare(features, metrics, k, form)
    names = list(tensors)
    return {metric: {"names": names, "matrix": [[scorers[metric](a, b) for b in names] for a in names],
                     **_describe(metric, n, k, form)} for metric in metrics}


def against_reference(features: Mapping[str, Features], reference: str, metrics: Sequence[str] = METRICS,
                      k: int = 10, form: str = DEFAULT_CKNNA_FORM) -> dict[str, dict[str, object]]:
    """{metric: {"reference", "values": {name: metric(name, reference)}, "n", ...}} for every other encoder."""
    if reference not in features:
        raise ValueError(f"--reference {reference!r} is not among the encoders {list(features)}; pass one of them")
    tensors, scorers, n = _prepare(features, metrics, k, form)
    return {metric: {"reference": reference,
                     "values": {name: scorers[metric](name, reference) for name in tensors if name != reference},
                     **_describe(metric, n, k, form)} for metric in metrics}

