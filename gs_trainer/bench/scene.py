"""The inputs of gs-bench: a synthetic cloud shaped like a trained scene, or a trained PLY with a scene's camera.

Both give a ``BenchScene``: the raw (pre-activation) parameters of a ``GaussianModel``, one camera and its
``RasterSettings``.  The synthetic cloud is generated on the target device with a seeded generator, fully
vectorised, so several million Gaussians take well under a second on a GPU.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from cuda_rasterizer import RasterSettings
from cuda_rasterizer.sh import num_sh_bases

from ..data.cameras import Camera

log = logging.getLogger(__name__)

# --- the synthetic cloud's distributions (chosen to resemble a trained 3DGS scene) -------------------
#: Horizontal field of view of the synthetic camera (degrees): a common phone/DSLR capture.
SYNTH_FOV_X_DEG = 60.0
#: Fraction of the cloud placed outside the view frustum (trained scenes hold many Gaussians out of view).
SYNTH_OUT_OF_VIEW = 0.25
#: Depths are log-normal: median and log-std (scene units), clamped to [near, far].
SYNTH_DEPTH_MEDIAN, SYNTH_DEPTH_LOG_STD, SYNTH_DEPTH_MIN, SYNTH_DEPTH_MAX = 4.0, 0.6, 0.5, 60.0
#: Median screen-space standard deviation (pixels) of a Gaussian before the per-axis jitter, and the
#: log-std of its spread: trained scenes mix many small splats with a tail of large ones.  Kept in pixels,
#: whatever the resolution, so that the warp-level workload depends on N / pixels and not on the size.
SYNTH_SIGMA_PX, SYNTH_SIZE_LOG_STD = 2.0, 0.8
#: Per-axis log-scale jitter, and how much thinner one random axis is (trained splats are often flat).
SYNTH_AXIS_LOG_STD, SYNTH_FLAT_LOG = 0.4, 1.5
#: Opacity logits: a mixture of a transparent mode and an opaque mode, as trained scenes' histograms show.
SYNTH_OPAQUE_FRACTION = 0.55
SYNTH_LOGIT_TRANSPARENT, SYNTH_LOGIT_OPAQUE, SYNTH_LOGIT_STD = -3.0, 3.5, 1.2
#: Opacity floor of the original's pruning (Gaussians below it do not survive training).
SYNTH_MIN_OPACITY = 0.005
#: SH: DC colour spread and the (small) higher-band energy of trained scenes.
SYNTH_DC_STD, SYNTH_REST_STD = 0.6, 0.05

PARAM_NAMES = ("means", "sh_dc", "sh_rest", "log_scales", "quats", "opacity_logits")


@dataclass
class BenchScene:
    """What every measurement of gs-bench renders.

    params: raw parameters by name (as GaussianModel holds them): means [N, 3], sh_dc [N, 1, 3],
        sh_rest [N, K-1, 3], log_scales [N, 3], quats [N, 4], opacity_logits [N, 1].
    camera: the view (gs_trainer.data.cameras.Camera); settings: its RasterSettings on the device.
    """

    params: dict
    sh_degree: int
    camera: Camera
    settings: RasterSettings
    source: dict = field(default_factory=dict)

    @property
    def num_gaussians(self) -> int:
        return int(self.params["means"].shape[0])

    @property
    def device(self) -> torch.device:
        return self.params["means"].device

    def activated(self, requires_grad: bool = False):
        """(means, scales, rotations, opacities [N, 1], shs) as fresh leaf tensors."""
        p = self.params
        out = (p["means"], torch.exp(p["log_scales"]), torch.nn.functional.normalize(p["quats"], dim=-1),
               torch.sigmoid(p["opacity_logits"]), torch.cat([p["sh_dc"], p["sh_rest"]], dim=1))
        return tuple(t.detach().clone().contiguous().requires_grad_(requires_grad) for t in out)

    def model(self):
        """A fresh GaussianModel holding copies of the parameters (all SH bands active)."""
        from ..model import GaussianModel
        p = {k: v.detach().clone() for k, v in self.params.items()}
        return GaussianModel(p["means"], p["sh_dc"], p["sh_rest"], p["log_scales"], p["quats"],
                             p["opacity_logits"], self.sh_degree, active_sh_degree=self.sh_degree)


def synthetic_camera(width: int, height: int) -> Camera:
    """A centred pinhole camera at the origin looking down +z (identity world-to-camera)."""
    fx = width / (2.0 * math.tan(math.radians(SYNTH_FOV_X_DEG) / 2.0))
    return Camera(0, "synthetic", width, height, fx, fx, width / 2.0, height / 2.0, np.eye(3), np.zeros(3))


def background(device) -> torch.Tensor:
    return torch.zeros(3, dtype=torch.float32, device=device)


def synthetic_cloud(n: int, width: int, height: int, *, seed: int = 0, sh_degree: int = 3,
                    device="cpu") -> BenchScene:
    """N Gaussians in front of a ``width`` x ``height`` camera with trained-scene-like statistics.

    Depth log-normal; positions uniform in screen space (a share outside the frustum); scales log-normal
    and proportional to depth, so that the screen-space sizes (in pixels) follow one log-normal law at
    every depth and resolution; one flat axis; a bimodal opacity; random rotations; SH of degree ``sh_degree``.
    """
    if n <= 0:
        raise ValueError(f"synthetic_cloud: n must be positive, got {n}")
    device = torch.device(device)
    g = torch.Generator(device=device).manual_seed(int(seed))

    def randn(*shape):
        return torch.randn(*shape, generator=g, device=device)

    def rand(*shape):
        return torch.rand(*shape, generator=g, device=device)

    camera = synthetic_camera(width, height)
    fx, fy = camera.fx, camera.fy
    depth = torch.exp(math.log(SYNTH_DEPTH_MEDIAN) + SYNTH_DEPTH_LOG_STD * randn(n))
    depth = depth.clamp(SYNTH_DEPTH_MIN, SYNTH_DEPTH_MAX)
    # Screen position: uniform over the image, widened so that SYNTH_OUT_OF_VIEW of the area lies outside.
    widen = 1.0 / math.sqrt(1.0 - SYNTH_OUT_OF_VIEW)
    u = (rand(n) - 0.5) * widen * width
    v = (rand(n) - 0.5) * widen * height
    means = torch.stack([u / fx * depth, v / fy * depth, depth], -1)

    base = torch.log(SYNTH_SIGMA_PX * depth / fx) + SYNTH_SIZE_LOG_STD * randn(n)
    log_scales = base[:, None] + SYNTH_AXIS_LOG_STD * randn(n, 3)
    flat_axis = torch.randint(0, 3, (n,), generator=g, device=device)
    log_scales = log_scales - SYNTH_FLAT_LOG * torch.nn.functional.one_hot(flat_axis, 3).to(log_scales.dtype)

    quats = torch.nn.functional.normalize(randn(n, 4), dim=-1)
    opaque = rand(n) < SYNTH_OPAQUE_FRACTION
    logits = torch.where(opaque, torch.full((n,), SYNTH_LOGIT_OPAQUE, device=device),
                         torch.full((n,), SYNTH_LOGIT_TRANSPARENT, device=device)) + SYNTH_LOGIT_STD * randn(n)
    min_logit = math.log(SYNTH_MIN_OPACITY / (1.0 - SYNTH_MIN_OPACITY))
    opacity_logits = logits.clamp_min(min_logit)[:, None]

    k = num_sh_bases(sh_degree)
    sh_dc = SYNTH_DC_STD * randn(n, 1, 3)
    sh_rest = SYNTH_REST_STD * randn(n, k - 1, 3)
    params = dict(means=means, sh_dc=sh_dc, sh_rest=sh_rest, log_scales=log_scales, quats=quats,
                  opacity_logits=opacity_logits)
    params = {name: params[name].float().contiguous() for name in PARAM_NAMES}
    settings = camera.raster_settings(background(device), sh_degree=sh_degree)
    source = {"kind": "synthetic", "num_gaussians": n, "seed": int(seed), "sh_degree": sh_degree}
    return BenchScene(params, sh_degree, camera, settings, source)


def _load_scene(scene_path: str, device):
    """gs_trainer.data.dataset.Scene (COLMAP or Blender folder) with its cameras and initial points."""
    try:
        from ..data.dataset import Scene
    except ImportError as err:
        raise RuntimeError(f"gs-bench: reading the scene {scene_path} needs gs_trainer.data.dataset ({err})") from None
    return Scene(scene_path, device=device)


def scene_from_files(scene_path: str, ply: Optional[str], *, view: int = 0, split: str = "train",
                     width: Optional[int] = None, height: Optional[int] = None, device="cpu") -> BenchScene:
    """A trained PLY (or, without one, the scene's SfM points as training initialises them) and one camera.

    width/height: render at this size (intrinsics scaled); by default the camera's own size, or
    ``width`` alone with the aspect kept.
    """
    from ..model import GaussianModel
    scene = _load_scene(scene_path, device)
    cams = (scene.train_cameras if split == "train" else scene.test_cameras) or scene.cameras
    if not 0 <= view < len(cams):
        raise ValueError(f"gs-bench: --view {view} is out of range: {scene_path} has {len(cams)} {split} cameras")
    cam = cams[view]
    if width and not height:
        height = max(1, round(cam.height * width / cam.width))
    if width and height:
        cam = cam.scaled(int(width), int(height))
    if ply:
        model = GaussianModel.load_ply(ply, device=device)
        source = {"kind": "ply", "ply": str(ply)}
    else:
        model = GaussianModel.from_points(scene.points, scene.colors, 3, device=device)
        source = {"kind": "sfm-init", "note": "the scene's SfM points as training initialises them"}
    params = {name: getattr(model, name).detach().contiguous() for name in PARAM_NAMES}
    settings = cam.raster_settings(background(device), sh_degree=model.max_sh_degree)
    source.update({"scene": str(scene_path), "split": split, "view": int(view), "image": cam.image_name,
                   "scene_extent": float(scene.extent),
                   "num_gaussians": int(params["means"].shape[0]), "sh_degree": model.max_sh_degree})
    return BenchScene(params, model.max_sh_degree, cam, settings, source)
