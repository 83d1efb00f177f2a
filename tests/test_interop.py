"""The original trainer's tools and ours read each other's run folders: cfg_args, input.ply, absolute
paths, the original's PLY layout, results.json / per_view.json shapes, its TensorBoard tags, its
gs-render flags; and the pruning rule that keeps a Gaussian larger than the scene out of every preset."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from gs_trainer.cfg_args import config_from_cfg_args, format_cfg_args, parse_cfg_args
from gs_trainer.config import ConfigError, TrainConfig, load_config
from gs_trainer.evaluate import main as metrics_main
from gs_trainer.render import main as render_main
from gs_trainer.train import main as train_main

ROOT = Path(__file__).resolve().parents[1]
SCENE = ROOT / "data" / "tabletop"
NUM_VIEWS = 36         # data/tabletop
NUM_TEST_VIEWS = 5     # --eval holds out every 8th
ORIGINAL_ITERATION = 7000
SH_DEGREE = 3


@pytest.fixture(scope="module", autouse=True)
def _restore_threads():
    """The CLI sets torch's thread count (--cpu_threads 1); give other test modules theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _need_scene():
    if not SCENE.is_dir():
        pytest.skip("data/tabletop is missing")


# -- cfg_args ------------------------------------------------------------------------------------------
def test_cfg_args_round_trip(tmp_path):
    cfg = TrainConfig()
    cfg.model.source_path, cfg.model.model_path = "data/tabletop", "runs/x"
    cfg.model.images, cfg.model.resolution, cfg.model.white_background, cfg.model.eval = "imgs", 4, True, True
    cfg.model.sh_degree, cfg.run.device = 2, "cpu"
    text = format_cfg_args(cfg)
    assert text.startswith("Namespace(sh_degree=2, source_path=")
    values = parse_cfg_args(text)
    assert values == {"sh_degree": 2, "source_path": os.path.abspath("data/tabletop"),
                      "model_path": os.path.abspath("runs/x"), "images": "imgs", "depths": "", "resolution": 4,
                      "white_background": True, "train_test_exp": False, "data_device": "cpu", "eval": True}
    # the original reads it with eval(): our text must mean the same there
    from argparse import Namespace
    assert vars(eval(text, {"Namespace": Namespace})) == values   # noqa: S307 - checking the original's reader
    (tmp_path / "cfg_args").write_text(text)
    back = config_from_cfg_args(tmp_path / "cfg_args")
    assert (back.model.source_path, back.model.images, back.model.resolution, back.model.white_background,
            back.model.eval, back.model.sh_degree) == (os.path.abspath("data/tabletop"), "imgs", 4, True, True, 2)


@pytest.mark.parametrize("text", [
    "Namespace(source_path=__import__('os').system('touch PWNED'))",
    "__import__('os').system('touch PWNED')",
    "Namespace(**{'source_path': 'x'})",
    "Namespace('x')",
    "Namespace(source_path='x'",
    "Other(source_path='x')",
])
def test_cfg_args_is_parsed_never_evaluated(text, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="cfg_args"):
        parse_cfg_args(text, "RUN/cfg_args")
    assert not (tmp_path / "PWNED").exists()


# -- a run folder of the original trainer --------------------------------------------------------------
def _write_original_ply(path: Path, n: int, seed: int = 0) -> dict:
    """A PLY in the original's attribute order and SH layout (f_rest channel-major), written with plyfile
    directly; returns the arrays in our parameter layout."""
    from plyfile import PlyData, PlyElement
    rng = np.random.default_rng(seed)
    k1 = (SH_DEGREE + 1) ** 2 - 1
    xyz = rng.uniform(-1, 1, (n, 3)).astype(np.float32)
    dc = rng.normal(0, 0.5, (n, 1, 3)).astype(np.float32)          # [N, 1, 3] (coefficient, channel)
    rest = rng.normal(0, 0.05, (n, k1, 3)).astype(np.float32)      # [N, 15, 3]
    opacity = rng.normal(0, 1, (n, 1)).astype(np.float32)
    scale = np.log(rng.uniform(0.01, 0.05, (n, 3))).astype(np.float32)
    rot = rng.normal(0, 1, (n, 4)).astype(np.float32)
    names = (["x", "y", "z", "nx", "ny", "nz"] + [f"f_dc_{i}" for i in range(3)]
             + [f"f_rest_{i}" for i in range(3 * k1)] + ["opacity"] + [f"scale_{i}" for i in range(3)]
             + [f"rot_{i}" for i in range(4)])
    columns = np.concatenate([xyz, np.zeros_like(xyz), dc.transpose(0, 2, 1).reshape(n, -1),
                              rest.transpose(0, 2, 1).reshape(n, -1), opacity, scale, rot], axis=1)
    vertex = np.empty(n, dtype=[(name, "f4") for name in names])
    for i, name in enumerate(names):
        vertex[name] = columns[:, i]
    path.parent.mkdir(parents=True, exist_ok=True)
    PlyData([PlyElement.describe(vertex, "vertex")]).write(str(path))
    return {"means": xyz, "sh_dc": dc, "sh_rest": rest, "opacity_logits": opacity, "log_scales": scale,
            "quats": rot}


def _original_run(root: Path, source: str) -> Path:
    """cfg_args + point_cloud/iteration_7000/point_cloud.ply + cameras.json, as the original leaves them
    (its own spelling of cfg_args: keys in its order, its data_device)."""
    run = root / "original_run"
    run.mkdir(parents=True)
    (run / "cfg_args").write_text(
        f"Namespace(sh_degree={SH_DEGREE}, source_path={source!r}, model_path='./output/5a1b2c3d-4', "
        f"images='images', resolution=8, white_background=False, data_device='cuda', eval=True)")
    from gs_trainer.data.dataset import Scene
    from gs_trainer.model import GaussianModel
    scene = Scene(SCENE, resolution=8, eval=True, cache_dir=root / "cache")
    # Gaussians from the scene's own points (something that renders the scene), stored in the original layout
    model = GaussianModel.from_points(scene.points, scene.colors, SH_DEGREE)
    _save_as_original(model, run / "point_cloud" / f"iteration_{ORIGINAL_ITERATION}" / "point_cloud.ply")
    cams = [{"id": i, "img_name": f"{i:05d}", "width": 25, "height": 19, "position": [0, 0, 0],
             "rotation": [[1, 0, 0], [0, 1, 0], [0, 0, 1]], "fx": 20.0, "fy": 20.0} for i in range(NUM_VIEWS)]
    (run / "cameras.json").write_text(json.dumps(cams))
    return run


def _save_as_original(model, path: Path) -> None:
    from plyfile import PlyData, PlyElement
    n = model.num_gaussians
    with torch.no_grad():
        cols = {"xyz": model.means.numpy(), "dc": model.sh_dc.transpose(1, 2).reshape(n, -1).numpy(),
                "rest": model.sh_rest.transpose(1, 2).reshape(n, -1).numpy(), "op": model.opacity_logits.numpy(),
                "scale": model.log_scales.numpy(), "rot": model.quats.numpy()}
    k1 = cols["rest"].shape[1]
    names = (["x", "y", "z", "nx", "ny", "nz"] + [f"f_dc_{i}" for i in range(3)] + [f"f_rest_{i}" for i in range(k1)]
             + ["opacity"] + [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)])
    data = np.concatenate([cols["xyz"], np.zeros((n, 3), np.float32), cols["dc"], cols["rest"], cols["op"],
                           cols["scale"], cols["rot"]], axis=1)
    vertex = np.empty(n, dtype=[(name, "f4") for name in names])
    for i, name in enumerate(names):
        vertex[name] = data[:, i]
    path.parent.mkdir(parents=True, exist_ok=True)
    PlyData([PlyElement.describe(vertex, "vertex")]).write(str(path))


def test_original_ply_layout_loads_exactly(tmp_path):
    from gs_trainer.model import GaussianModel
    expected = _write_original_ply(tmp_path / "p.ply", 7)
    model = GaussianModel.load_ply(tmp_path / "p.ply")
    assert model.max_sh_degree == SH_DEGREE
    for name, value in expected.items():
        assert np.array_equal(getattr(model, name).detach().numpy(), value), name


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    _need_scene()
    root = tmp_path_factory.mktemp("original")
    return _original_run(root, "/data/scenes/moved_away/tabletop")   # the scene has moved since training


def test_render_and_metrics_open_an_original_run(original, capsys):
    # the scene recorded in cfg_args is gone: one line that says to pass -s, nothing written
    assert render_main(["-m", str(original), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "pass -s" in err and "cfg_args" in err and len(err.strip().splitlines()) == 1
    assert not (original / "test").exists() and not (original / "train").exists()
    # the original's full_eval spelling: -s where the scene is now, --eval, --skip_train
    assert render_main(["-m", str(original), "-s", str(SCENE), "--eval", "--skip_train", "--quiet"]) == 0
    out = original / "test" / f"ours_{ORIGINAL_ITERATION}"
    assert sorted(p.name for p in (out / "renders").glob("*.png")) == [f"{i:05d}.png" for i in range(NUM_TEST_VIEWS)]
    assert len(list((out / "gt").glob("*.png"))) == NUM_TEST_VIEWS
    assert not (original / "train").exists()
    assert metrics_main(["-m", str(original)]) == 0
    results = json.loads((original / "results.json").read_text())
    assert list(results) == [f"ours_{ORIGINAL_ITERATION}"]
    r = results[f"ours_{ORIGINAL_ITERATION}"]
    assert set(r) == {"SSIM", "PSNR"} and all(isinstance(v, float) for v in r.values())
    assert 10.0 < r["PSNR"] < 60.0 and 0.0 < r["SSIM"] <= 1.0


def test_render_refuses_a_scene_with_other_views(original, tmp_path, capsys):
    cams = json.loads((original / "cameras.json").read_text())
    other = tmp_path / "run"
    other.mkdir()
    for name in ("cfg_args", "point_cloud"):
        os.symlink(original / name, other / name)
    (other / "cameras.json").write_text(json.dumps(cams[:10]))
    assert render_main(["-m", str(other), "-s", str(SCENE), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "cameras.json" in err and "10 views" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in other.iterdir()) == ["cameras.json", "cfg_args", "point_cloud"]


# -- our run folder, opened from elsewhere, and what it holds for the original's tools ------------------
@pytest.fixture(scope="module")
def ours(tmp_path_factory):
    _need_scene()
    run = tmp_path_factory.mktemp("ours") / "run"
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:   # a relative -s, as a user types it
        code = train_main(["-s", "data/tabletop", "-m", str(run), "--eval", "-r", "8", "--iterations", "20",
                           "--test_iterations", "20", "--save_iterations", "--cpu_threads", "1", "--quiet"])
    finally:
        os.chdir(cwd)
    assert code == 0
    return run


def test_run_folder_has_cfg_args_input_ply_and_absolute_paths(ours):
    from gs_trainer.data.dataset import Scene
    from plyfile import PlyData
    cfg = load_config(ours / "config.yaml")
    assert cfg.model.source_path == str(SCENE)
    values = parse_cfg_args((ours / "cfg_args").read_text())
    assert values["source_path"] == str(SCENE) and values["model_path"] == str(ours)
    assert (values["sh_degree"], values["resolution"], values["eval"], values["images"]) == (3, 8, True, "images")
    vertex = PlyData.read(str(ours / "input.ply"))["vertex"]
    assert [p.name for p in vertex.properties] == ["x", "y", "z", "nx", "ny", "nz", "red", "green", "blue"]
    assert vertex["red"].dtype == np.uint8
    scene = Scene(SCENE, resolution=8, eval=True, cache_dir=ours / "cache")
    xyz = np.stack([vertex[c] for c in "xyz"], axis=1)
    rgb = np.stack([vertex[c] for c in ("red", "green", "blue")], axis=1)
    assert np.array_equal(xyz, np.asarray(scene.points, dtype=np.float32))
    assert np.array_equal(rgb, np.round(np.asarray(scene.colors) * 255).astype(np.uint8))


def test_render_from_another_directory_both_splits_by_default(ours, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)           # data/tabletop is not reachable from here by a relative path
    assert render_main(["-m", str(ours), "--quiet"]) == 0
    assert len(list((ours / "test" / "ours_20" / "renders").glob("*.png"))) == NUM_TEST_VIEWS
    assert len(list((ours / "train" / "ours_20" / "renders").glob("*.png"))) == NUM_VIEWS - NUM_TEST_VIEWS


def test_metrics_shapes_and_train_split_in_its_own_files(ours):
    if not (ours / "train" / "ours_20").is_dir():
        assert render_main(["-m", str(ours), "--quiet"]) == 0
    assert metrics_main(["-m", str(ours)]) == 0
    results = json.loads((ours / "results.json").read_text())
    per_view = json.loads((ours / "per_view.json").read_text())
    assert set(results) == {"ours_20"} and set(results["ours_20"]) == {"SSIM", "PSNR"}
    assert all(isinstance(v, float) for v in results["ours_20"].values())
    assert set(per_view["ours_20"]) == {"SSIM", "PSNR"}
    assert sorted(per_view["ours_20"]["PSNR"]) == [f"{i:05d}.png" for i in range(NUM_TEST_VIEWS)]
    info = json.loads((ours / "results_info.json").read_text())
    assert info["ours_20"]["num_views"] == NUM_TEST_VIEWS and info["ours_20"]["split"] == "test"
    test_bytes = (ours / "results.json").read_bytes()
    assert metrics_main(["-m", str(ours), "--split", "train"]) == 0
    assert (ours / "results.json").read_bytes() == test_bytes          # the test results are kept
    train = json.loads((ours / "results_train.json").read_text())
    assert set(train["ours_20"]) == {"SSIM", "PSNR"}
    assert len(json.loads((ours / "per_view_train.json").read_text())["ours_20"]["PSNR"]) == NUM_VIEWS - NUM_TEST_VIEWS


def test_render_split_flags(ours, capsys):
    assert render_main(["-m", str(ours), "--skip_train", "--skip_test", "--quiet"]) == 2
    assert render_main(["-m", str(ours), "--split", "train", "--skip_train", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("nothing to render") == 2 and "Traceback" not in err


def test_tensorboard_has_the_originals_tags(ours):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    (events,) = ours.glob("events.out.tfevents.*")
    acc = EventAccumulator(str(events), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    for tag in ("train_loss_patches/l1_loss", "train_loss_patches/total_loss", "iter_time", "total_points",
                "test/loss_viewpoint - psnr", "train/loss", "train/num_gaussians"):
        assert tag in scalars, tag
    assert "scene/opacity_histogram" in acc.Tags()["histograms"]


# -- floaters ------------------------------------------------------------------------------------------
PRESETS = sorted((ROOT / "configs").glob("*.yaml"))
EXTENT = 2.0


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_no_preset_lets_a_gaussian_larger_than_the_scene_survive(preset):
    """A Gaussian 8x the scene extent at opacity 0.99, present from the start, and another that grows to
    that size after densification has stopped: both are pruned within one densification interval, in every
    preset's schedule (the CPU preset never reaches its first opacity reset)."""
    from cuda_rasterizer import RasterOutput
    from gs_trainer.densify import DensifyStrategy
    from gs_trainer.model import GaussianModel, inverse_sigmoid
    from gs_trainer.optim import check_aligned, make_optimizer

    cfg = load_config(preset)
    d = cfg.densify
    assert d.scene_size_limit > 0, f"{preset.name}: scene_size_limit must be on"
    n = 6
    log_scales = torch.log(torch.full((n, 3), 0.01))
    log_scales[0] = float(np.log(8.0 * EXTENT))
    model = GaussianModel(torch.randn(n, 3, generator=torch.Generator().manual_seed(0)), torch.zeros(n, 1, 3),
                          torch.zeros(n, 15, 3), log_scales, torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1),
                          inverse_sigmoid(torch.full((n, 1), 0.99)), max_sh_degree=3)
    model.means.data[0, 0] = 456.0        # markers: the Gaussian that is huge from the start,
    model.means.data[1, 0] = 123.0        # and the one that grows late
    opt = make_optimizer(model, cfg.optim, EXTENT)
    strat = DensifyStrategy(d, EXTENT)
    strat.reset_stats(n, "cpu")
    grow_at = d.densify_until_iter + 1
    pruned_at = {}

    def out():
        means2d = torch.zeros(model.num_gaussians, 2, requires_grad=True)
        (means2d * 0.0).sum().backward()      # zero gradients: nothing is cloned or split
        return RasterOutput(None, torch.ones(model.num_gaussians, dtype=torch.int32), means2d, None, None, None)

    for iteration in range(1, cfg.optim.iterations + 1):
        if iteration == grow_at:
            with torch.no_grad():
                row = int(torch.nonzero(model.means[:, 0] == 123.0)[0, 0])
                model.log_scales[row] = float(np.log(8.0 * EXTENT))
        strat.post_backward(iteration, model, opt, out(), 100, 100)
        if "first" not in pruned_at and not bool((model.means[:, 0] == 456.0).any()):
            pruned_at["first"] = iteration
        if iteration >= grow_at and "late" not in pruned_at and not bool((model.means[:, 0] == 123.0).any()):
            pruned_at["late"] = iteration
    assert not bool((model.scales.max(dim=1).values > EXTENT).any())
    assert pruned_at["first"] <= d.densification_interval
    assert pruned_at["late"] - grow_at < d.densification_interval
    assert model.num_gaussians == n - 2
    check_aligned(opt, model)
