"""GaussianModel: initialisation, activations, SH schedule, PLY layout and round trip."""

import numpy as np
import pytest
import torch

from cuda_rasterizer.sh import sh_to_rgb
from gs_trainer.data.cameras import Camera
from gs_trainer.model import GaussianModel, PlyError, mean_sq_knn_distance, ply_attribute_names
from gs_trainer.renderer import render
from gs_trainer.utils_synthetic import look_at

INIT_TOL = 1e-6   # float32 arithmetic on values of order 1


def _cloud(n=50, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (n, 3)).astype(np.float32), rng.uniform(0, 1, (n, 3)).astype(np.float32)


def _camera(w=32, h=24):
    rot, t = look_at(np.array([0.0, -4.0, 0.5]), np.zeros(3))
    return Camera(0, "c", w, h, 30.0, 30.0, w / 2, h / 2, rot, t)


def _brute_knn(points, k=3):
    d2 = ((points[:, None] - points[None]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    return np.sort(d2, axis=1)[:, :k].mean(1)


def test_from_points_initialisation():
    pts, cols = _cloud()
    m = GaussianModel.from_points(pts, cols, sh_degree=3)
    assert m.means.shape == (50, 3) and m.sh_dc.shape == (50, 1, 3) and m.sh_rest.shape == (50, 15, 3)
    assert m.log_scales.shape == (50, 3) and m.quats.shape == (50, 4) and m.opacity_logits.shape == (50, 1)
    expected = np.sqrt(_brute_knn(pts.astype(np.float64)))
    assert np.allclose(m.scales[:, 0].detach().numpy(), expected, rtol=1e-5)
    assert torch.equal(m.scales[:, 0], m.scales[:, 1]) and torch.equal(m.scales[:, 0], m.scales[:, 2])
    assert torch.allclose(m.opacities, torch.full((50, 1), 0.1), atol=INIT_TOL)
    assert torch.equal(m.rotations, torch.tensor([[1.0, 0, 0, 0]]).expand(50, 4))
    assert torch.allclose(sh_to_rgb(m.sh_dc[:, 0]), torch.from_numpy(cols), atol=INIT_TOL)
    assert torch.count_nonzero(m.sh_rest) == 0
    assert m.shs.shape == (50, 16, 3)


def test_knn_kd_tree_matches_brute_force(monkeypatch):
    """The KD-tree search equals the brute force, across query chunks, with duplicate points (distance 0)
    and on clouds with fewer than k + 1 points."""
    import gs_trainer.model as model_mod
    pts, _ = _cloud(300, seed=1)
    pts[7] = pts[3]                                        # a duplicate: its nearest distance is 0
    monkeypatch.setattr(model_mod, "KNN_CHUNK", 64)       # several query chunks, the last one partial
    got = mean_sq_knn_distance(torch.from_numpy(pts)).numpy()
    assert np.allclose(got, _brute_knn(pts.astype(np.float64)), rtol=1e-5, atol=1e-12)
    assert got[7] == got[3]                               # each is the other's nearest, at distance 0
    small = pts[:3]
    assert np.allclose(mean_sq_knn_distance(torch.from_numpy(small)).numpy(),
                       _brute_knn(small.astype(np.float64), k=2), rtol=1e-5)
    assert mean_sq_knn_distance(torch.from_numpy(pts[:1])).tolist() == [1.0]


def test_sh_degree_schedule():
    m = GaussianModel.from_points(*_cloud(10), sh_degree=2)
    seen = []
    for it in (1, 999, 1000, 1999, 2000, 5000):
        m.update_sh_degree(it, 1000)
        seen.append(m.active_sh_degree)
    assert seen == [0, 0, 1, 1, 2, 2]


def test_ply_layout_matches_original():
    names = ply_attribute_names(3)
    assert names[:9] == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    assert names[9:54] == [f"f_rest_{i}" for i in range(45)]
    assert names[54:] == ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]


def _random_model(n=40, degree=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    pts, cols = _cloud(n, seed)
    m = GaussianModel.from_points(pts, cols, sh_degree=degree)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    m.active_sh_degree = degree
    return m


def test_ply_round_trip_and_render(tmp_path):
    from plyfile import PlyData
    m = _random_model()
    path = m.save_ply(tmp_path / "point_cloud.ply")
    assert [p.name for p in PlyData.read(str(path))["vertex"].properties] == ply_attribute_names(3)
    loaded = GaussianModel.load_ply(path)
    for name, p in m.param_dict().items():
        assert torch.equal(p, getattr(loaded, name)), name
    assert loaded.max_sh_degree == 3 and loaded.active_sh_degree == 3
    cam, bg = _camera(), torch.tensor([0.1, 0.2, 0.3])
    with torch.no_grad():
        assert torch.equal(render(m, cam, bg).image, render(loaded, cam, bg).image)
    assert not list(tmp_path.glob(".*tmp"))   # no temporary file left behind


def test_ply_channel_major_f_rest(tmp_path):
    """The original stores f_rest as all red coefficients, then green, then blue."""
    from plyfile import PlyData
    m = _random_model(n=3, degree=1)
    v = PlyData.read(str(m.save_ply(tmp_path / "a.ply")))["vertex"]
    assert np.float32(v["f_rest_0"][1]) == m.sh_rest[1, 0, 0].item()    # coeff 1, red
    assert np.float32(v["f_rest_1"][1]) == m.sh_rest[1, 1, 0].item()    # coeff 2, red
    assert np.float32(v["f_rest_3"][1]) == m.sh_rest[1, 0, 1].item()    # coeff 1, green


def _rewrite(path, out, drop=None, nan_in=None):
    from plyfile import PlyData, PlyElement
    v = PlyData.read(str(path))["vertex"].data
    names = [n for n in v.dtype.names if n != drop]
    arr = np.empty(len(v), dtype=[(n, "f4") for n in names])
    for n in names:
        arr[n] = v[n]
    if nan_in:
        arr[nan_in][2] = np.nan
    PlyData([PlyElement.describe(arr, "vertex")]).write(str(out))


def test_load_ply_errors_name_the_file(tmp_path):
    path = _random_model(n=5).save_ply(tmp_path / "good.ply")
    _rewrite(path, tmp_path / "missing.ply", drop="scale_1")
    with pytest.raises(PlyError, match=r"missing\.ply.*scale_1"):
        GaussianModel.load_ply(tmp_path / "missing.ply")
    _rewrite(path, tmp_path / "nan.ply", nan_in="opacity")
    with pytest.raises(PlyError, match=r"nan\.ply.*NaN.*opacity.*vertex 2"):
        GaussianModel.load_ply(tmp_path / "nan.ply")
    with pytest.raises(PlyError, match="absent.ply: file not found"):
        GaussianModel.load_ply(tmp_path / "absent.ply")
    (tmp_path / "junk.ply").write_bytes(b"not a ply")
    with pytest.raises(PlyError, match="junk.ply"):
        GaussianModel.load_ply(tmp_path / "junk.ply")


def _gaussian_noise_model(n: int, seed: int = 3) -> GaussianModel:
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return GaussianModel(r(n, 3), r(n, 1, 3), r(n, 3, 3), r(n, 3) - 2.0, r(n, 4), 4.0 * r(n, 1), max_sh_degree=1)


@pytest.mark.parametrize("threads", [1, 2])
def test_activations_of_a_row_do_not_depend_on_the_other_rows(threads):
    """A shard of the model (distributed training) must get bitwise the activations and activation gradients
    its rows get in the whole model.  torch's CPU sigmoid alone rounds differently in its SIMD loop and its
    scalar remainder (tens of the 1000 opacities here moved by 1 ulp when computed row by row)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        n = 1000
        full = _gaussian_noise_model(n)
        weights = {name: torch.randn(getattr(full, name).shape, generator=torch.Generator().manual_seed(9))
                   for name in ("scales", "rotations", "opacities")}

        def activations_and_grads(model, a=0, b=n):
            acts = {name: getattr(model, name) for name in weights}
            sum((acts[k] * weights[k][a:b]).sum() for k in weights).backward()
            return ({k: v.detach() for k, v in acts.items()},
                    {k: getattr(model, k).grad for k in ("log_scales", "quats", "opacity_logits")})

        want_acts, want_grads = activations_and_grads(full)
        for bounds in ([0, 333, 700, n], [0, 1, 61, 500, 999, n]):
            got_grads = {k: [] for k in want_grads}
            for a, b in zip(bounds[:-1], bounds[1:]):
                part = GaussianModel(**{k: v.detach()[a:b] for k, v in full.param_dict().items()}, max_sh_degree=1)
                acts, grads = activations_and_grads(part, a, b)
                for k in grads:
                    got_grads[k].append(grads[k])
                for k in acts:
                    assert torch.equal(acts[k], want_acts[k][a:b]), (k, bounds, a, b)
            for k in want_grads:
                assert torch.equal(torch.cat(got_grads[k]), want_grads[k]), (k, bounds)
    finally:
        torch.set_num_threads(previous)
