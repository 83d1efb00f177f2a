"""Peer comparison with gsplat (nerfstudio), used only when it is importable on a CUDA machine.

gsplat is never a dependency of this project.  Its camera convention matches ours once written as
matrices: ``viewmats`` is the world-to-camera matrix (OpenCV axes), ``Ks`` the pixel intrinsics, and its
pixel ``i`` has its centre at ``i + 0.5`` while a point lands at ``fx X / Z + cx``; ours puts the centre
at ``i`` and the point at ``fx X / Z + cx - 0.5``: the same image.  Its SH evaluation adds 0.5 and clamps
at 0 like ours; it low-passes the 2D covariance by ``eps2d = 0.3`` like ours.
"""

from __future__ import annotations

import logging

import torch

from cuda_rasterizer import DEFAULT_ATOMICS, DEFAULT_BALANCE_THRESHOLD, rasterize_gaussians
from cuda_rasterizer.settings import NEAR_PLANE

from .scene import BenchScene
from .timing import time_op

log = logging.getLogger(__name__)

#: Mean absolute difference per channel under which the two images count as "the same render".
#: Known, deliberate differences remain: gsplat clamps alpha at 0.999 where the original (and we) clamp
#: at 0.99, and it stops a pixel at T <= 1e-4 where we stop at T < 1e-4; both only move pixels behind
#: nearly opaque splats, by at most a few percent there, so the mean over the image stays small.
GSPLAT_MEAN_ABS_TOL = 5e-3
#: Fraction of pixels allowed to differ by more than 1/255 in some channel, for the same reasons.
GSPLAT_PIXEL_FRACTION_TOL = 0.05


def gsplat_available():
    """(module, None) when gsplat imports, else (None, reason)."""
    try:
        import gsplat  # noqa: F401 - optional peer, only for this comparison
    except Exception as err:  # noqa: BLE001 - ImportError, or a broken install raising anything
        return None, f"gsplat is not importable here ({type(err).__name__}: {err})"
    return gsplat, None


def _camera_matrices(scene: BenchScene):
    s = scene.settings
    device = scene.device
    viewmat = s.viewmatrix.to(device=device, dtype=torch.float32)[None]
    K = torch.tensor([[s.fx, 0.0, s.cx], [0.0, s.fy, s.cy], [0.0, 0.0, 1.0]], device=device)[None]
    return viewmat, K


def compare_with_gsplat(scene: BenchScene, *, warmup: int, repeats: int, grad_image: torch.Tensor,
                        gsplat_module=None, backend: str = "cuda") -> dict:
    """Check gsplat's image against ours, then time both forwards and backwards on the same inputs.

    gsplat_module and backend are for tests (a stand-in module on the CPU reference); the benchmark
    leaves them alone and needs a CUDA device.
    """
    gsplat = gsplat_module
    if gsplat is None:
        if scene.device.type != "cuda":
            return {"skipped": "gsplat comparison needs a CUDA device"}
        gsplat, reason = gsplat_available()
        if gsplat is None:
            return {"skipped": reason}
    s = scene.settings
    viewmat, K = _camera_matrices(scene)
    bg = s.bg.to(scene.device).reshape(1, 3)
    means, scales, rots, opac, shs = scene.activated(requires_grad=True)
    leaves = (means, scales, rots, opac, shs)

    def ours():
        return rasterize_gaussians(means, scales, rots, opac, shs, settings=s, atomics=DEFAULT_ATOMICS,
                                   balance_threshold=DEFAULT_BALANCE_THRESHOLD, backend=backend).image

    def theirs(packed: bool):
        colors, _alphas, _meta = gsplat.rasterization(
            means, rots, scales, opac.reshape(-1), shs, viewmat, K, s.image_width, s.image_height,
            near_plane=NEAR_PLANE, eps2d=0.3, sh_degree=s.sh_degree, packed=packed, tile_size=16,
            backgrounds=bg, rasterize_mode="classic")
        return colors[0].permute(2, 0, 1)                        # [3, H, W]

    result = {"gsplat_version": getattr(gsplat, "__version__", "unknown"),
              "ours": f"{DEFAULT_ATOMICS}@{DEFAULT_BALANCE_THRESHOLD}"}
    with torch.no_grad():
        a, b = ours(), theirs(False)
        diff = (a - b).abs()
    result.update({
        "image_max_abs_diff": float(diff.max()),
        "image_mean_abs_diff": float(diff.mean()),
        "pixels_off_by_more_than_1_255": float((diff.amax(0) > 1.0 / 255.0).float().mean()),
    })
    result["images_match"] = (result["image_mean_abs_diff"] <= GSPLAT_MEAN_ABS_TOL
                              and result["pixels_off_by_more_than_1_255"] <= GSPLAT_PIXEL_FRACTION_TOL)
    result["tolerances"] = {"mean_abs": GSPLAT_MEAN_ABS_TOL, "pixel_fraction": GSPLAT_PIXEL_FRACTION_TOL}

    def clear():
        for t in leaves:
            t.grad = None

    def timings(render) -> dict:
        fwd = time_op(lambda _: render(), scene.device, warmup=warmup, repeats=repeats)

        def setup():
            clear()
            return render()

        bwd = time_op(lambda img: torch.autograd.backward(img, grad_image), scene.device,
                      warmup=warmup, repeats=repeats, setup=setup)
        clear()
        return {"forward_ms": fwd.median_ms, "backward_ms": bwd.median_ms,
                "forward_backward_ms": fwd.median_ms + bwd.median_ms}

    result["ours_timing"] = timings(ours)
    for packed in (False, True):
        try:
            result[f"gsplat_packed_{str(packed).lower()}"] = timings(lambda: theirs(packed))
        except Exception as err:  # noqa: BLE001 - report it, keep the other figures
            log.exception("gsplat timing failed (packed=%s)", packed)
            result[f"gsplat_packed_{str(packed).lower()}"] = {"error": f"{type(err).__name__}: {err}"}
    best = [v["forward_backward_ms"] for k, v in result.items()
            if k.startswith("gsplat_packed_") and "forward_backward_ms" in v]
    if best:
        result["gsplat_best_forward_backward_ms"] = min(best)
        result["speedup_vs_gsplat"] = min(best) / result["ours_timing"]["forward_backward_ms"]
    return result
