"""Reconstruction quality of an autoencoder: PSNR, SSIM (torchmetrics) and LPIPS (torchmetrics' LPIPS network with
its bundled linear layers; the AlexNet backbone downloaded like our checkpoints, through `harmon.checkpoints`).

Images are (B, 3, H, W) floats in [0, 1]. PSNR and SSIM use data range 1 (SSIM: 11 x 11 Gaussian window, sigma 1.5,
k1 0.01, k2 0.03); LPIPS takes [0, 1] images (normalised to [-1, 1] inside). Every score is per image.
"""

from __future__ import annotations

import torch
from torch import nn

# torchvision's AlexNet weights (AlexNet_Weights.IMAGENET1K_V1), the LPIPS "alex" backbone
ALEXNET_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"


def _check(images: torch.Tensor, reference: torch.Tensor) -> None:
    if images.shape != reference.shape or images.ndim != 4:
        raise ValueError(f"images {tuple(images.shape)} and references {tuple(reference.shape)} must both be "
                         "(B, C, H, W) of the same shape")


def psnr(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB (data range 1): 10 log10(1 / MSE)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    _check(images, reference)
    return peak_signal_noise_ratio(images.float(), reference.float(), data_range=1.0, reduction="none",
                                   dim=(1, 2, 3))


def ssim(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM (data range 1, Gaussian window 11, sigma 1.5)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    _check(images, reference)
    return structural_similarity_index_measure(images.float(), reference.float(), data_range=1.0, reduction="none")


def lpips_network(backbone: nn.Module | None = None) -> nn.Module:
    """torchmetrics' LPIPS ("alex") in eval mode. backbone: a torchvision `alexnet` whose features are used; None
    loads the ImageNet weights from `ALEXNET_URL` (cached in $HARMON_CACHE/urls; offline or unreachable: one
    CheckpointError naming the file and how to fetch it)."""
    import torchvision
    from torchmetrics.functional.image.lpips import _LPIPS

    if backbone is None:
        from harmon.checkpoints import load_file, resolve

        backbone = torchvision.models.alexnet()
        backbone.load_state_dict(load_file(resolve(ALEXNET_URL)), strict=True)
    net = _LPIPS(pretrained=True, net="alex", pnet_rand=True)  # bundled linear layers; backbone filled below
    for stage in (net.net.slice1, net.net.slice2, net.net.slice3, net.net.slice4, net.net.slice5):
        for index, module in stage.named_children():
            module.load_state_dict(backbone.features[int(index)].state_dict())
    return net.eval().requires_grad_(False)


@torch.no_grad()
def lpips(images: torch.Tensor, reference: torch.Tensor, network: nn.Module) -> torch.Tensor:
    """Per-image LPIPS distance (lower is closer) with a network from `lpips_network`."""
    _check(images, reference)
    return network(images.float(), reference.float(), normalize=True).flatten()
