"""L1, SSIM (11x11 Gaussian window), the combined loss, and PSNR."""

import math

import numpy as np
import torch

from gs_trainer.losses import _window, gaussian_splatting_loss, l1_loss, ssim
from gs_trainer.metrics import psnr

FLOAT_TOL = 1e-5   # float32 sums over a few thousand pixels


def _ssim_numpy(a, b):
    """Independent SSIM: direct 11x11 weighted sums with zero padding (slow, tiny images only)."""
    x = np.arange(11) - 5
    g = np.exp(-x ** 2 / (2 * 1.5 ** 2))
    w = np.outer(g, g) / g.sum() ** 2
    c, h, wd = a.shape
    pa, pb = (np.pad(t, ((0, 0), (5, 5), (5, 5))) for t in (a, b))
    out = np.zeros((c, h, wd))
    for i in range(h):
        for j in range(wd):
            A, B = pa[:, i:i + 11, j:j + 11], pb[:, i:i + 11, j:j + 11]
            mu1, mu2 = (A * w).sum((1, 2)), (B * w).sum((1, 2))
            s1 = (A * A * w).sum((1, 2)) - mu1 ** 2
            s2 = (B * B * w).sum((1, 2)) - mu2 ** 2
            s12 = (A * B * w).sum((1, 2)) - mu1 * mu2
            out[:, i, j] = ((2 * mu1 * mu2 + 1e-4) * (2 * s12 + 9e-4)) / ((mu1 ** 2 + mu2 ** 2 + 1e-4) * (s1 + s2 + 9e-4))
    return out.mean()


def test_window_is_normalised_11x11():
    w = _window(3, 11, 1.5, "cpu", torch.float32)
    assert w.shape == (3, 1, 11, 11) and abs(float(w[0].sum()) - 1.0) < FLOAT_TOL


def test_ssim_matches_direct_computation():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 16, 20, generator=g)
    b = (a + 0.2 * torch.randn(3, 16, 20, generator=g)).clamp(0, 1)
    assert abs(float(ssim(a, b)) - _ssim_numpy(a.double().numpy(), b.double().numpy())) < FLOAT_TOL
    assert abs(float(ssim(a, a)) - 1.0) < FLOAT_TOL


def test_combined_loss_and_psnr():
    a = torch.zeros(3, 8, 8)
    b = torch.full((3, 8, 8), 0.1)
    loss, l1 = gaussian_splatting_loss(a, b, 0.2)
    assert math.isclose(float(l1), 0.1, rel_tol=1e-6)
    assert math.isclose(float(loss), 0.8 * 0.1 + 0.2 * (1 - float(ssim(a, b))), rel_tol=1e-6)
    assert math.isclose(float(psnr(a, b)), 20.0, rel_tol=1e-5)
    assert float(l1_loss(a, a)) == 0.0
