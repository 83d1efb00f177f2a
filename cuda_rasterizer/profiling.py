"""Kernel-level probes for benchmarks (gs-bench): the backward render kernel alone, per policy.

Not part of the training path; ``atomics="floor"`` (no atomics, wrong results) is reachable only here.
"""

from __future__ import annotations

from typing import Optional

import torch

from .autograd import MODE_IDS, CameraArgs, _as_f32
from ._backend import load_extension
from .settings import RasterSettings

#: Gradient values per Gaussian written by the backward render (csrc/rasterizer.h kGradValues).
GRAD_VALUES = 9


class BackwardRenderProbe:
    """Runs preprocess, binning and the forward render once and keeps every buffer, so that the backward
    render kernel can be launched on its own (and timed with CUDA events by the caller).

    Args: as ``rasterize_gaussians`` (CUDA tensors; shs or colors_precomp).
    Attributes: image [3, H, W], final_T [H, W], n_contrib [H, W], means2d [N, 2], conics [N, 3],
        colors [N, 3], opacities [N], radii [N], point_list [M], ranges [tiles, 2].
    """

    def __init__(self, means: torch.Tensor, scales: torch.Tensor, rotations: torch.Tensor,
                 opacities: torch.Tensor, shs: Optional[torch.Tensor], colors_precomp: Optional[torch.Tensor],
                 settings: RasterSettings):
        if (shs is None) == (colors_precomp is None):
            raise ValueError("BackwardRenderProbe: give exactly one of shs and colors_precomp")
        self.ext = load_extension()
        device = means.device
        self.settings = settings
        self.cam = CameraArgs.make(settings, device)
        with torch.no_grad():
            f = lambda t, name: _as_f32(t.detach() if t is not None else None, name, device)  # noqa: E731
            means2d, conics, colors, depths, radii, tiles, _ = self.ext.preprocess_forward(
                f(means, "means"), f(scales, "scales"), f(rotations, "rotations"), f(shs, "shs"),
                *self.cam.args())
            if colors_precomp is not None:
                colors = f(colors_precomp, "colors_precomp")
            self.means2d, self.conics, self.colors, self.radii = means2d, conics, colors, radii
            self.opacities = f(opacities, "opacities").reshape(-1).contiguous()
            self.point_list, self.ranges = self.ext.bin_gaussians(means2d, depths, radii, tiles, *self.cam.args())
            self.image, self.final_T, self.n_contrib, _ = self.ext.render_forward(
                self.means2d, self.conics, self.colors, self.opacities, depths, self.point_list, self.ranges,
                *self.cam.args())
        # the backward render's gradients (means2d 2N | conics 3N | colours 3N | opacities N), reused by
        # every backward_render call
        self._grads = torch.zeros(self.means2d.shape[0] * GRAD_VALUES, device=device, dtype=torch.float32)
        self._grads_clean = True

    def _render_inputs(self):
        return (self.means2d, self.conics, self.colors, self.opacities, self.point_list, self.ranges)

    def zero_grads(self) -> None:
        """Zero the probe's gradient buffers (one memset), so that the next ``backward_render`` launches the
        kernel alone.  Call it before the timed region: gs-bench passes it as ``time_op``'s setup."""
        self._grads.zero_()
        self._grads_clean = True

    def backward_render(self, grad_image: torch.Tensor, atomics: str, balance_threshold: int = 8) -> dict:
        """Launch the backward render kernel once with the given policy, into the probe's gradient buffers.

        The buffers are allocated once (in ``__init__``) and must be zero before the kernel adds to them:
        when ``zero_grads`` ran since the last launch, this call launches the kernel and nothing else (no
        allocation, no memset: a CUDA-event pair around it times the kernel); otherwise it zeroes them first.

        Args:
            grad_image: [3, H, W] dL/dimage on the probe's device (copied only if its dtype, device or
                layout differ).
            atomics: "baseline", "warp", "distwar", "tile", or "floor" (no atomics: results wrong).
            balance_threshold: 1..33 (distwar and tile).
        Returns: {"means2d": [N, 2], "conics": [N, 3], "opacities": [N], "colors": [N, 3]}: views of the
        probe's buffers, overwritten by the next call (clone them to keep them).
        """
        if atomics not in MODE_IDS:
            raise ValueError(f"backward_render: atomics must be one of {tuple(MODE_IDS)}, got {atomics!r}")
        grad_image = grad_image.to(device=self.means2d.device, dtype=torch.float32).contiguous()
        if not self._grads_clean:
            self.zero_grads()
        a = self.cam.args()
        g_m2d, g_con, g_col, g_op = self.ext.render_backward_into(
            self._grads, *self._render_inputs(), self.final_T, self.n_contrib, grad_image, None, *a[:5],
            MODE_IDS[atomics], int(balance_threshold), *a[5:])
        self._grads_clean = False
        return {"means2d": g_m2d, "conics": g_con, "opacities": g_op, "colors": g_col}

    def lane_histogram(self) -> torch.Tensor:
        """[33] int64: for each tile, each warp of the tile with a pixel in the image (warp w = rows 2w and
        2w + 1 of the tile) and each Gaussian of the tile's depth-sorted list, the number of the warp's
        in-image pixels that composite that Gaussian (power <= 0, alpha >= 1/255, position < n_contrib),
        binned 0..32.

        The definition is the one of ``cuda_rasterizer.lane_profile.lane_histogram_reference`` (the two
        must stay equal): every Gaussian of the tile's whole list counts one step per warp.  The backward
        kernel itself never steps through the list positions at or after the largest ``n_contrib`` of the
        warp (it skips them, warp-uniformly, before any atomic); those steps land in bin 0 here.  So bins
        1..32 are exactly the (warp, Gaussian) steps the backward does gradient work for, while bin 0 also
        counts steps the kernel skips: read bin 0 (and ``zero_step_fraction``) as an upper bound on the
        backward's empty steps, not as work done."""
        return self.ext.lane_histogram(*self._render_inputs(), self.n_contrib, *self.cam.args())
