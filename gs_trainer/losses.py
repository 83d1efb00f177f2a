"""The 3DGS training loss: (1 - lambda) L1 + lambda (1 - SSIM), SSIM over an 11x11 Gaussian window.

ssim_map is the torch SSIM (any device, dtype, batch; the metrics' SSIM and the oracle).  ssim, and so the loss,
takes the CPU extension's fused C++ SSIM (csrc/cpu/cpu_ssim.h) for float32 CPU images, where it builds.
"""

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
def _window_1d(channels: int, size: int, sigma: float, device: str, dtype: torch.dtype) -> torch.Tensor:
    """The normalised 1D Gaussian of the window, as a [channels, 1, 1, size] depthwise kernel."""
    x = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-x * x / (2 * sigma * sigma))
    g = (g / g.sum()).to(device=device, dtype=dtype)
    return g.reshape(1, 1, 1, size).expand(channels, 1, 1, size).contiguous()


@functools.lru_cache(maxsize=8)
def _window(channels: int, size: int, sigma: float, device: str, dtype: torch.dtype) -> torch.Tensor:
    """The 2D window, [channels, 1, size, size]: the outer product of the 1D one (what ssim_map applies)."""
    g = _window_1d(1, size, sigma, "cpu", torch.float64).reshape(size)
    w = (g[:, None] * g[None, :]).to(device=device, dtype=dtype)
    return w.expand(channels, 1, size, size).contiguous()


def ssim_map(image: torch.Tensor, gt: torch.Tensor, window_size: int = SSIM_WINDOW) -> torch.Tensor:
    """Per-pixel SSIM of [C, H, W] or [B, C, H, W] images, Gaussian window, zero padding (as the original).

    The 2D Gaussian window is the outer product of a 1D one, so each blur is a horizontal then a vertical 1D
    pass (2 x 11 taps instead of 121; the same sums up to float rounding), and the five blurred maps
    (x, y, x^2, y^2, xy) go through one depthwise convolution.
    """
    if image.dim() == 3:
        image, gt = image[None], gt[None]
    c = image.shape[1]
    w = _window_1d(5 * c, window_size, SSIM_SIGMA, str(image.device), image.dtype)
    pad = window_size // 2
    stacked = torch.cat([image, gt, image * image, gt * gt, image * gt], dim=1)
    blurred = F.conv2d(stacked, w, padding=(0, pad), groups=5 * c)
    blurred = F.conv2d(blurred, w.transpose(2, 3), padding=(pad, 0), groups=5 * c)
    mu1, mu2, e11, e22, e12 = blurred.split(c, dim=1)
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    sigma1 = e11 - mu1_sq
    sigma2 = e22 - mu2_sq
    sigma12 = e12 - mu12
    return ((2 * mu12 + SSIM_C1) * (2 * sigma12 + SSIM_C2)) / ((mu1_sq + mu2_sq + SSIM_C1) * (sigma1 + sigma2 + SSIM_C2))


class _CpuSsim(torch.autograd.Function):
    """Mean SSIM of [C, H, W] float32 CPU images by the CPU extension (cpu_ssim.h): forward and dL/dimage."""

    @staticmethod
    def forward(ctx, ext, image, gt):
        need_grad = ctx.needs_input_grad[1]
        mean, maps = ext.ssim_forward(image, gt, need_grad)
        ctx.ext = ext
        if need_grad:
            ctx.save_for_backward(image, gt, maps)
        return mean

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        image, gt, maps = ctx.saved_tensors
        return None, ctx.ext.ssim_backward(image, gt, maps, grad), None


def _cpu_ssim_extension(image: torch.Tensor, gt: torch.Tensor, window_size: int):
    """The CPU extension when the fused SSIM applies (float32 CPU [C, H, W] images, the default window, no gradient
    wanted for gt, the extension loads), else None.  A build failure is not logged here: the rasterizer's own
    backend dispatch says why (and the extension remembers it, so this is one check per call)."""
    if (window_size != SSIM_WINDOW or image.dim() != 3 or gt.shape != image.shape or image.numel() == 0
            or image.device.type != "cpu" or gt.device.type != "cpu"
            or image.dtype != torch.float32 or gt.dtype != torch.float32
            or (gt.requires_grad and torch.is_grad_enabled())):
        return None
    from cuda_rasterizer._cpu_backend import CpuBackendUnavailable, load_cpu_extension
    try:
        return load_cpu_extension()
    except CpuBackendUnavailable:
        return None


def ssim(image: torch.Tensor, gt: torch.Tensor, window_size: int = SSIM_WINDOW, fused: bool = True) -> torch.Tensor:
    """Mean SSIM (a scalar tensor, differentiable in image; in gt too on the torch path).

    float32 CPU images of [C, H, W] (or [1, C, H, W]) with the default window go through the CPU extension's fused
    SSIM (forward and backward in C++, no gradient for gt; the same value as ssim_map's mean up to float rounding),
    when it builds and gt needs no gradient; everything else (CUDA, float64, batches, other windows), and
    fused=False, is ssim_map(...).mean().
    """
    if fused:
        img, tgt = image, gt
        if img.dim() == 4 and img.shape[0] == 1 and gt.dim() == 4 and gt.shape[0] == 1:
            img, tgt = img[0], tgt[0]
        ext = _cpu_ssim_extension(img, tgt, window_size)
        if ext is not None:
            return _CpuSsim.apply(ext, img.contiguous(), tgt.contiguous())
    return ssim_map(image, gt, window_size).mean()


def gaussian_splatting_loss(image: torch.Tensor, gt: torch.Tensor, lambda_dssim: float = 0.2):
    """(1 - lambda) L1 + lambda (1 - SSIM).  Returns (loss, l1) as tensors, no host sync."""
    l1 = l1_loss(image, gt)
    if lambda_dssim == 0.0:
        return l1, l1
    return (1.0 - lambda_dssim) * l1 + lambda_dssim * (1.0 - ssim(image, gt)), l1
