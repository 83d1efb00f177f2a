"""The 3DGS training loss: (1 - lambda) L1 + lambda (1 - SSIM), SSIM over an 11x11 Gaussian window."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_C1 = 0.01 ** 2   # (K1 L)^2 with K1 = 0.01, dynamic range L = 1
SSIM_C2 = 0.03 ** 2   # (K2 L)^2 with K2 = 0.03


def l1_loss(image: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    return (image - gt).abs().mean()


@functools.lru_cache(maxsize=8)
def _window(channels: int, size: int, sigma: float, device: str, dtype: torch.dtype) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-x * x / (2 * sigma * sigma))
    g = g / g.sum()
    w = (g[:, None] * g[None, :]).to(device=device, dtype=dtype)
    return w.expand(channels, 1, size, size).contiguous()


def ssim_map(image: torch.Tensor, gt: torch.Tensor, window_size: int = SSIM_WINDOW) -> torch.Tensor:
    """Per-pixel SSIM of [C, H, W] or [B, C, H, W] images, Gaussian window, zero padding (as the original)."""
    if image.dim() == 3:
        image, gt = image[None], gt[None]
    c = image.shape[1]
    w = _window(c, window_size, SSIM_SIGMA, str(image.device), image.dtype)
    pad = window_size // 2

    def blur(x):
        return F.conv2d(x, w, padding=pad, groups=c)

    mu1, mu2 = blur(image), blur(gt)
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    sigma1 = blur(image * image) - mu1_sq
    sigma2 = blur(gt * gt) - mu2_sq
    sigma12 = blur(image * gt) - mu12
    return ((2 * mu12 + SSIM_C1) * (2 * sigma12 + SSIM_C2)) / ((mu1_sq + mu2_sq + SSIM_C1) * (sigma1 + sigma2 + SSIM_C2))


def ssim(image: torch.Tensor, gt: torch.Tensor, window_size: int = SSIM_WINDOW) -> torch.Tensor:
    """Mean SSIM (a scalar tensor, differentiable)."""
    return ssim_map(image, gt, window_size).mean()


def gaussian_splatting_loss(image: torch.Tensor, gt: torch.Tensor, lambda_dssim: float = 0.2):
    """(1 - lambda) L1 + lambda (1 - SSIM).  Returns (loss, l1) as tensors, no host sync."""
    l1 = l1_loss(image, gt)
    if lambda_dssim == 0.0:
        return l1, l1
    return (1.0 - lambda_dssim) * l1 + lambda_dssim * (1.0 - ssim(image, gt)), l1
