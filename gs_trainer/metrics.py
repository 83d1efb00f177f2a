"""Image-quality metrics for evaluation: PSNR and SSIM (LPIPS needs network weights we do not ship)."""

from __future__ import annotations

import torch

from .losses import ssim


@torch.no_grad()
def psnr(image: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of images in [0, 1], MSE over all pixels and channels (the original's per-image PSNR)."""
    mse = (image.float() - gt.float()).square().mean()
    return -10.0 * torch.log10(mse.clamp_min(1e-20))


@torch.no_grad()
def image_metrics(image: torch.Tensor, gt: torch.Tensor) -> dict[str, float]:
    """PSNR and SSIM of one [3, H, W] image against its ground truth, as floats."""
    image = image.clamp(0.0, 1.0)
    # fused=False: the torch SSIM (ssim_map's mean), as gs-metrics has always reported, on every device.
    return {"PSNR": float(psnr(image, gt)), "SSIM": float(ssim(image, gt, fused=False))}
