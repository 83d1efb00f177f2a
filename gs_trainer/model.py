"""The Gaussian model: parameters, activations, SH degree, and PLY files in the original 3DGS layout.

Parameters (raw, optimised) and their activations, as in the original:

============== ========== ==========================================================
name           shape      activation
============== ========== ==========================================================
means          [N, 3]     none
sh_dc          [N, 1, 3]  none (SH DC; colour = SH_C0 * dc + 0.5)
sh_rest        [N, K-1, 3] none (K = (max_sh_degree + 1)^2)
log_scales     [N, 3]     exp
quats          [N, 4]     normalise (w, x, y, z)
opacity_logits [N, 1]     sigmoid
============== ========== ==========================================================

On the CPU the activations are computed so that each row's result (and gradient) does not depend on the
other rows of the tensor (``rowwise``): a shard of the model computes what the whole model computes.

The model owns no optimizer and no densification: those live in optim.py and densify.py and change the
parameter set through ``set_params``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from cuda_rasterizer.sh import num_sh_bases, rgb_to_sh

from .utils_io import atomic_write

PARAM_NAMES = ("means", "sh_dc", "sh_rest", "log_scales", "quats", "opacity_logits")
INITIAL_OPACITY = 0.1
MIN_SQ_DISTANCE = 1e-7   # the original's clamp on the mean squared neighbour distance
KNN_NEIGHBOURS = 3
KNN_CHUNK = 65_536            # points per KD-tree query batch (one progress-bar step)
KNN_PROGRESS_DELAY_S = 3.0    # the bar shows only when the search takes longer than this


class PlyError(ValueError):
    """A PLY file that cannot be read as Gaussians; the message names the file and the problem."""


#: Rows per block of the CPU activations (``rowwise``): a multiple of every SIMD loop step of torch's CPU
#: elementwise kernels (two vectors of 16 floats at most), so no row falls into their scalar remainder.
ACTIVATION_BLOCK_ROWS = 64


def rowwise(fn, x: torch.Tensor) -> torch.Tensor:
    """``fn(x)`` for a row-wise ``fn``, each row's result independent of the other rows in ``x``.

    torch's CPU elementwise kernels run a SIMD loop over the tensor and a scalar loop over its last
    ``numel % (2 * vector width)`` elements, and the two round transcendental functions differently
    (``sigmoid``: SLEEF's vector exp vs libm's expf, 1 ulp apart).  So a row's activation depended on its
    position and on how many rows the tensor has: a shard of the model (gs_trainer/distributed/) got other
    opacities than the same rows in the whole model.  On the CPU the rows are padded with zeros to a
    multiple of ACTIVATION_BLOCK_ROWS, so that every row goes through the SIMD loop, and sliced back
    (differentiable; the backward kernels see the padded tensor too).  On other devices ``fn(x)``."""
    n = x.shape[0]
    pad = -n % ACTIVATION_BLOCK_ROWS
    if x.device.type != "cpu" or pad == 0:
        return fn(x)
    padded = torch.cat([x, x.new_zeros((pad,) + tuple(x.shape[1:]))])
    return fn(padded)[:n]


def inverse_sigmoid(x: torch.Tensor) -> torch.Tensor:
    return torch.log(x / (1.0 - x))


def mean_sq_knn_distance(points: torch.Tensor, k: int = KNN_NEIGHBOURS) -> torch.Tensor:
    """[P, 3] -> [P]: mean squared distance to the k nearest other points (the original's distCUDA2).

    Exact, with scipy's KD-tree (O(P log P): 100k points take well under a second); the queries run in
    chunks under a progress bar that appears only if they take more than a few seconds (millions of points).
    """
    from scipy.spatial import cKDTree
    from tqdm import tqdm

    n = points.shape[0]
    if n <= 1:
        return torch.ones(n, dtype=points.dtype, device=points.device)
    k_eff = min(k, n - 1)
    pts = points.detach().double().cpu().numpy()
    tree = cKDTree(pts)
    out = np.empty(n, dtype=np.float64)
    starts = range(0, n, KNN_CHUNK)
    for start in tqdm(starts, desc="initial scales (nearest neighbours)", unit="chunk", delay=KNN_PROGRESS_DELAY_S,
                      leave=False):
        dist, _ = tree.query(pts[start:start + KNN_CHUNK], k=k_eff + 1)   # the first hit is the point itself
        out[start:start + KNN_CHUNK] = (dist[:, 1:] ** 2).mean(axis=1)
    return torch.from_numpy(out).to(device=points.device, dtype=points.dtype)


def ply_attribute_names(max_sh_degree: int) -> list[str]:
    """The original 3DGS PLY vertex attributes, in order."""
    n_rest = 3 * (num_sh_bases(max_sh_degree) - 1)
    return (["x", "y", "z", "nx", "ny", "nz"] + [f"f_dc_{i}" for i in range(3)]
            + [f"f_rest_{i}" for i in range(n_rest)] + ["opacity"]
            + [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)])


class GaussianModel(nn.Module):
    """N Gaussians with SH colours up to ``max_sh_degree``; ``active_sh_degree`` grows during training."""

    def __init__(self, means: torch.Tensor, sh_dc: torch.Tensor, sh_rest: torch.Tensor,
                 log_scales: torch.Tensor, quats: torch.Tensor, opacity_logits: torch.Tensor,
                 max_sh_degree: int, active_sh_degree: int = 0) -> None:
        super().__init__()
        n = means.shape[0]
        k = num_sh_bases(max_sh_degree)
        expected = {"means": (n, 3), "sh_dc": (n, 1, 3), "sh_rest": (n, k - 1, 3), "log_scales": (n, 3),
                    "quats": (n, 4), "opacity_logits": (n, 1)}
        given = dict(means=means, sh_dc=sh_dc, sh_rest=sh_rest, log_scales=log_scales, quats=quats,
                     opacity_logits=opacity_logits)
        for name in PARAM_NAMES:
            if tuple(given[name].shape) != expected[name]:
                raise ValueError(f"GaussianModel: {name} must have shape {list(expected[name])}, "
                                 f"got {list(given[name].shape)}")
        self.max_sh_degree = int(max_sh_degree)
        self.active_sh_degree = int(active_sh_degree)
        self.set_params({name: given[name] for name in PARAM_NAMES})

    # -- parameters -------------------------------------------------------------------------------
    def set_params(self, tensors: dict[str, torch.Tensor]) -> dict[str, nn.Parameter]:
        """Replace parameters by name; plain tensors are wrapped as new leaf Parameters."""
        out = {}
        for name, t in tensors.items():
            if name not in PARAM_NAMES:
                raise KeyError(f"GaussianModel has no parameter {name!r}")
            p = t if isinstance(t, nn.Parameter) else nn.Parameter(t.detach().contiguous().float())
            setattr(self, name, p)
            out[name] = p
        return out

    def param_dict(self) -> dict[str, nn.Parameter]:
        return {name: getattr(self, name) for name in PARAM_NAMES}

    @property
    def num_gaussians(self) -> int:
        return self.means.shape[0]

    @property
    def device(self) -> torch.device:
        return self.means.device

    # -- activations ------------------------------------------------------------------------------
    @property
    def scales(self) -> torch.Tensor:
        return rowwise(torch.exp, self.log_scales)

    @property
    def rotations(self) -> torch.Tensor:
        return rowwise(lambda q: nn.functional.normalize(q, dim=-1), self.quats)

    @property
    def opacities(self) -> torch.Tensor:
        return rowwise(torch.sigmoid, self.opacity_logits)

    @property
    def shs(self) -> torch.Tensor:
        return torch.cat([self.sh_dc, self.sh_rest], dim=1)

    def update_sh_degree(self, iteration: int, interval: int = 1000) -> None:
        """One more SH band every ``interval`` iterations (band b from iteration b * interval), up to
        max_sh_degree; stateless, so a resumed run gets the same degree."""
        self.active_sh_degree = min(self.max_sh_degree, max(0, iteration // interval))

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def from_points(cls, points, colors, sh_degree: int, device="cpu") -> "GaussianModel":
        """Initialise from a point cloud: DC from colour, isotropic scale from the 3 nearest neighbours,
        identity rotation, opacity 0.1.  points [P, 3], colors [P, 3] in [0, 1] (numpy or torch)."""
        pts = torch.as_tensor(np.asarray(points), dtype=torch.float32).to(device)
        cols = torch.as_tensor(np.asarray(colors), dtype=torch.float32).to(device)
        if pts.ndim != 2 or pts.shape[1] != 3 or pts.shape[0] == 0:
            raise ValueError(f"GaussianModel.from_points: points must be a non-empty [P, 3] array, "
                             f"got {list(pts.shape)}")
        if cols.shape != pts.shape:
            raise ValueError(f"GaussianModel.from_points: colors must be {list(pts.shape)}, got {list(cols.shape)}")
        n = pts.shape[0]
        dist2 = mean_sq_knn_distance(pts).clamp_min(MIN_SQ_DISTANCE)
        log_scales = torch.log(torch.sqrt(dist2))[:, None].repeat(1, 3)
        quats = torch.zeros(n, 4, device=device)
        quats[:, 0] = 1.0
        opacity_logits = inverse_sigmoid(torch.full((n, 1), INITIAL_OPACITY, device=device))
        sh_dc = rgb_to_sh(cols)[:, None, :]
        sh_rest = torch.zeros(n, num_sh_bases(sh_degree) - 1, 3, device=device)
        return cls(pts, sh_dc, sh_rest, log_scales, quats, opacity_logits, sh_degree)

    # -- checkpoint state (tensors only) ------------------------------------------------------------
    def state(self) -> dict:
        return {"params": {k: v.detach().clone() for k, v in self.param_dict().items()},
                "max_sh_degree": self.max_sh_degree, "active_sh_degree": self.active_sh_degree}

    @classmethod
    def from_state(cls, state: dict, device="cpu") -> "GaussianModel":
        p = {k: v.to(device) for k, v in state["params"].items()}
        return cls(**p, max_sh_degree=state["max_sh_degree"], active_sh_degree=state["active_sh_degree"])

    # -- PLY --------------------------------------------------------------------------------------
    def save_ply(self, path: str | Path) -> Path:
        """Write the original 3DGS PLY layout (binary little-endian float32), atomically."""
        from plyfile import PlyData, PlyElement

        n = self.num_gaussians
        with torch.no_grad():
            columns = [
                self.means.cpu().numpy(),
                np.zeros((n, 3), dtype=np.float32),
                self.sh_dc.transpose(1, 2).reshape(n, -1).cpu().numpy(),
                self.sh_rest.transpose(1, 2).reshape(n, -1).cpu().numpy(),   # channel-major, as the original
                self.opacity_logits.cpu().numpy(),
                self.log_scales.cpu().numpy(),
                self.quats.cpu().numpy(),
            ]
        data = np.concatenate(columns, axis=1).astype(np.float32)
        names = ply_attribute_names(self.max_sh_degree)
        assert data.shape[1] == len(names)
        vertex = np.empty(n, dtype=[(name, "f4") for name in names])
        for i, name in enumerate(names):
            vertex[name] = data[:, i]
        ply = PlyData([PlyElement.describe(vertex, "vertex")])
        return atomic_write(path, ply.write)

    @classmethod
    def load_ply(cls, path: str | Path, device="cpu") -> "GaussianModel":
        """Read a 3DGS PLY (ours or another trainer's).  The SH degree follows from the f_rest count;
        all bands are active.  Raises PlyError naming the file for a missing attribute or NaN values."""
        from plyfile import PlyData

        path = Path(path)
        if not path.is_file():
            raise PlyError(f"{path}: file not found")
        try:
            ply = PlyData.read(str(path))
            vertex = ply["vertex"]
        except Exception as err:  # noqa: BLE001 - plyfile raises many types for broken files
            raise PlyError(f"{path}: not a readable PLY with a vertex element ({err})") from None
        present = {p.name for p in vertex.properties}
        n_rest = sum(1 for name in present if name.startswith("f_rest_"))
        degree = {0: 0, 9: 1, 24: 2, 45: 3}.get(n_rest)
        if degree is None:
            raise PlyError(f"{path}: {n_rest} f_rest_* attributes; expected 0, 9, 24 or 45")
        names = ply_attribute_names(degree)
        missing = [name for name in names if name not in present and name not in ("nx", "ny", "nz")]
        if missing:
            raise PlyError(f"{path}: missing vertex attribute(s) {', '.join(missing)}")

        n = len(vertex.data)

        def cols(names_):
            if not names_:   # SH degree 0 has no f_rest_* columns
                return np.zeros((n, 0), dtype=np.float32)
            return np.stack([np.asarray(vertex[name], dtype=np.float32) for name in names_], axis=1)

        means = cols(["x", "y", "z"])
        dc = cols([f"f_dc_{i}" for i in range(3)]).reshape(n, 3, 1)
        k1 = num_sh_bases(degree) - 1
        rest = cols([f"f_rest_{i}" for i in range(3 * k1)]).reshape(n, 3, k1)
        opacity = cols(["opacity"])
        scales = cols([f"scale_{i}" for i in range(3)])
        quats = cols([f"rot_{i}" for i in range(4)])
        for label, arr in (("position", means), ("f_dc", dc), ("f_rest", rest), ("opacity", opacity),
                           ("scale", scales), ("rot", quats)):
            bad = ~np.isfinite(arr)
            if bad.any():
                rows = np.nonzero(bad.reshape(n, -1).any(axis=1))[0]
                raise PlyError(f"{path}: {len(rows)} vertices have NaN/Inf {label} values (first: vertex {rows[0]})")

        def t(a):
            return torch.from_numpy(np.ascontiguousarray(a)).to(device)

        return cls(t(means), t(dc.transpose(0, 2, 1)), t(rest.transpose(0, 2, 1)), t(scales), t(quats),
                   t(opacity), max_sh_degree=degree, active_sh_degree=degree)


def build_rotation(quats: torch.Tensor) -> torch.Tensor:
    """[N, 4] (w, x, y, z), normalised here -> [N, 3, 3] rotation matrices."""
    from cuda_rasterizer.reference import quaternion_to_rotation
    return quaternion_to_rotation(nn.functional.normalize(quats, dim=-1))


__all__ = ["GaussianModel", "PlyError", "PARAM_NAMES", "build_rotation", "inverse_sigmoid",
           "mean_sq_knn_distance", "ply_attribute_names"]
