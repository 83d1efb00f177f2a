"""CPU smoke tests of gs-bench: the command end to end on the reference, and the GPU path's plumbing with
stand-ins for the CUDA probe and for gsplat (so that none of it can rot where there is no GPU)."""

import csv
import json
import math
import types

import cv2
import pytest
import torch

from cuda_rasterizer import rasterize_gaussians_reference
from cuda_rasterizer.lane_profile import NUM_BINS, lane_histogram_reference
from gs_trainer.bench import cli as bench, plot as bench_plot, report as bench_report
from gs_trainer.bench.gsplat import compare_with_gsplat
from gs_trainer.bench.policies import FLOOR, Policy, PolicyBench, add_ratios, expand_policies
from gs_trainer.bench.scene import (SYNTH_MIN_OPACITY, SYNTH_OUT_OF_VIEW, synthetic_cloud)
from cuda_rasterizer.reference import project_gaussians

#: Share of a 20k synthetic cloud whose centre projects inside the image, against the designed
#: 1 - SYNTH_OUT_OF_VIEW: binomial noise at n = 20,000 is ~0.3%, so 2% is a loose but meaningful bound.
IN_VIEW_TOL = 0.02

SMOKE_ARGS = ["--device", "cpu", "--synthetic", "150", "--width", "40", "--height", "32", "--warmup", "0",
              "--repeats", "2", "-q"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    assert bench.main(SMOKE_ARGS + ["--out", str(out)]) == 0
    return out, json.loads((out / "results.json").read_text())


def test_smoke_writes_json_csv_and_plots(smoke):
    out, result = smoke
    cpu, row = result["rows"]      # the C++ CPU backend, then the reference, timed in one run
    assert cpu["policy"] == "cpu" and row["policy"] == "reference"
    for r in (cpu, row):
        assert not r.get("errors")
        for key in ("forward_ms", "backward_ms", "train_iter_ms"):
            assert r[key] > 0
            assert r[key.replace("_ms", "_timing")]["repeats"] == 2
        assert r["process_peak_rss_mib"] > 0
    assert cpu["speedup_train_iter"] == pytest.approx(row["train_iter_ms"] / cpu["train_iter_ms"])
    assert result["scene"]["num_gaussians"] == 150 and result["scene"]["width"] == 40
    assert result["environment"]["device"] == "cpu" and result["environment"]["date_utc"]
    assert result["gsplat"]["skipped"]
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["policy"] for r in rows] == ["cpu", "reference"] and float(rows[1]["backward_ms"]) > 0
    for name in ("policies.png", "lane_histogram.png"):
        img = cv2.imread(str(out / name))
        assert img is not None and img.shape[0] > 50 and img.shape[1] > 200


def test_smoke_lane_histogram_is_the_reference_on_the_same_input(smoke):
    _out, result = smoke
    scene = synthetic_cloud(150, 40, 32, seed=0, device="cpu")
    means, scales, rots, opac, shs = scene.activated()
    expected = lane_histogram_reference(means, scales, rots, opac, shs, None, scene.settings)
    lane = result["lane_histogram"]
    assert lane["reference"] == expected.tolist() and len(lane["reference"]) == NUM_BINS
    assert lane["summary"]["active_steps"] == sum(lane["reference"][1:]) > 0
    assert "cuda" not in lane                               # no counting kernel on the CPU


def test_synthetic_cloud_is_deterministic_and_trained_scene_like():
    a = synthetic_cloud(20_000, 320, 180, seed=5)
    b = synthetic_cloud(20_000, 320, 180, seed=5)
    for name, t in a.params.items():
        assert torch.equal(t, b.params[name]), name
    assert not torch.equal(a.params["means"], synthetic_cloud(20_000, 320, 180, seed=6).params["means"])
    means, scales, rots, opac, shs = a.activated()
    assert shs.shape == (20_000, 16, 3) and torch.all(means[:, 2] > 0)
    assert float(opac.min()) >= SYNTH_MIN_OPACITY * (1 - 1e-6)
    # Bimodal opacity: many nearly transparent and many nearly opaque Gaussians.
    assert float((opac < 0.1).float().mean()) > 0.25 and float((opac > 0.9).float().mean()) > 0.25
    proj = project_gaussians(means, scales, rots, opac, shs, None, a.settings)
    x, y = proj.means2d[:, 0], proj.means2d[:, 1]
    inside = (proj.radii > 0) & (x >= 0) & (x < 320) & (y >= 0) & (y < 180)
    assert abs(float(inside.float().mean()) - (1 - SYNTH_OUT_OF_VIEW)) < IN_VIEW_TOL
    # Screen radii (3 sigma) around the designed median sigma of 2 px, with a long tail of large splats.
    radii = proj.radii[inside].float()
    assert 2 <= float(radii.median()) <= 16 and float(radii.max()) > 3 * float(radii.median())


class FakeProbe:
    """Stands in for cuda_rasterizer.profiling.BackwardRenderProbe: same calls, reference figures."""

    def __init__(self, scene):
        self.n = scene.num_gaussians
        self.scene = scene
        self.calls = []

    def backward_render(self, grad_image, atomics, balance_threshold=8):
        self.calls.append((atomics, balance_threshold))
        g = torch.Generator().manual_seed(0)
        grads = {"means2d": torch.randn(self.n, 2, generator=g), "conics": torch.randn(self.n, 3, generator=g),
                 "opacities": torch.randn(self.n, generator=g), "colors": torch.randn(self.n, 3, generator=g)}
        if atomics == "warp":
            grads["means2d"] = grads["means2d"] * (1 + 1e-6)
        return grads

    def lane_histogram(self):
        means, scales, rots, opac, shs = self.scene.activated()
        return lane_histogram_reference(means, scales, rots, opac, shs, None, self.scene.settings)


def test_policy_rows_ratios_floor_and_lane_agreement_with_a_stand_in_probe(tmp_path):
    scene = synthetic_cloud(100, 24, 20, seed=1)
    pb = PolicyBench(scene, warmup=0, repeats=1, with_probe=False)
    pb.probe = FakeProbe(scene)
    policies = expand_policies(["baseline", "warp", "distwar"], [4, 8])
    assert [p.name for p in policies] == ["baseline", "warp", "distwar@4", "distwar@8"]
    rows = [pb.measure(p) for p in policies] + [pb.measure(Policy(FLOOR, FLOOR), kernel_only=True)]
    add_ratios(rows)
    by = {r["policy"]: r for r in rows}
    assert all(not r.get("errors") for r in rows), [r.get("errors") for r in rows]
    assert ("distwar", 4) in pb.probe.calls and ("floor", 8) in pb.probe.calls
    assert by["warp"]["grad_rel_diff_vs_baseline"] == pytest.approx(1e-6, rel=0.1)
    assert by["distwar@8"]["grad_rel_diff_vs_baseline"] == 0.0
    assert by["baseline"]["speedup_kernel"] == 1.0 and by["floor"]["kernel_vs_floor"] == 1.0
    assert by["distwar@4"]["speedup_train_iter"] > 0 and "train_iter_ms" not in by["floor"]
    assert by["distwar@8"]["balance_threshold"] == 8 and by["warp"]["balance_threshold"] is None
    lane = bench.lane_histograms(scene, pb, "auto")
    assert "cuda" not in lane                               # CPU scene: the kernel histogram is not asked for
    cuda_scene = types.SimpleNamespace(device=torch.device("cuda"), settings=scene.settings)
    lane = bench.lane_histograms(cuda_scene, pb, "auto")
    assert lane["agree"] and lane["exact"] and lane["cuda"] == lane["reference"]
    # Outputs and plots of a multi-policy run.
    result = {"rows": rows, "lane_histogram": lane, "gsplat": {"skipped": "test"}, "notes": [],
              "environment": {"gpu": "stand-in"}, "scene": {"num_gaussians": 100, "width": 24, "height": 20}}
    result["targets"] = bench_report.evaluate_targets(result)
    assert result["targets"]["input_qualifies"] is False
    assert result["targets"]["kernel_speedup"]["met"] in (True, False)
    files = bench.write_outputs(result, tmp_path)
    assert {p.split("/")[-1] for p in files} == {"results.json", "results.csv", "policies.png",
                                                 "threshold_sweep.png", "lane_histogram.png"}
    text = bench_report.table(rows)
    assert "distwar@4" in text and "floor" in text


def test_targets_are_read_from_the_default_distwar_row():
    rows = [{"policy": "baseline", "atomics": "baseline", "kernel_ms": 10.0, "train_iter_ms": 30.0},
            {"policy": "distwar@8", "atomics": "distwar", "balance_threshold": 8, "kernel_ms": 4.0,
             "train_iter_ms": 25.0},
            {"policy": "floor", "atomics": "floor", "kernel_ms": 3.5}]
    add_ratios(rows)
    t = bench_report.evaluate_targets({"rows": rows, "scene": {"num_gaussians": 1_000_000, "width": 1920,
                                                                "height": 1080},
                                       "gsplat": {"speedup_vs_gsplat": 1.2}})
    assert t["input_qualifies"]
    assert t["kernel_speedup"] == {"value": 2.5, "goal": 2.5, "met": True}
    assert t["kernel_vs_floor"]["value"] == pytest.approx(1.143, abs=1e-3) and t["kernel_vs_floor"]["met"]
    assert t["train_iter_speedup"]["met"] is False
    assert t["faster_than_gsplat"]["met"] is True


def _stand_in_gsplat():
    """A module with gsplat's rasterization() signature, implemented with our reference, so the comparison's
    conversion of cameras and shapes can be exercised on the CPU."""
    from cuda_rasterizer import RasterSettings

    def rasterization(means, quats, scales, opacities, colors, viewmats, Ks, width, height, *, near_plane,
                      eps2d, sh_degree, packed, tile_size, backgrounds, rasterize_mode):
        assert viewmats.shape == (1, 4, 4) and Ks.shape == (1, 3, 3) and opacities.dim() == 1
        assert eps2d == 0.3 and tile_size == 16 and rasterize_mode == "classic"
        k = Ks[0]
        settings = RasterSettings(height, width, float(k[0, 0]), float(k[1, 1]), float(k[0, 2]), float(k[1, 2]),
                                  viewmats[0], backgrounds[0], sh_degree=sh_degree)
        out = rasterize_gaussians_reference(means, scales, quats, opacities, colors, settings=settings)
        return out.image.permute(1, 2, 0)[None], out.final_T[None, ..., None], {}

    return types.SimpleNamespace(rasterization=rasterization, __version__="stand-in")


def test_gsplat_comparison_plumbing_with_a_stand_in():
    scene = synthetic_cloud(100, 24, 20, seed=2)
    grad = torch.randn(3, 20, 24)
    res = compare_with_gsplat(scene, warmup=0, repeats=1, grad_image=grad, gsplat_module=_stand_in_gsplat(),
                              backend="reference")
    assert res["images_match"] and res["image_max_abs_diff"] == 0.0
    assert res["gsplat_packed_false"]["forward_backward_ms"] > 0 and "forward_ms" in res["gsplat_packed_true"]
    assert math.isfinite(res["speedup_vs_gsplat"])
    assert compare_with_gsplat(scene, warmup=0, repeats=1, grad_image=grad)["skipped"]


def test_plots_skip_what_has_no_data(tmp_path):
    assert bench_plot.plot_threshold_sweep([{"policy": "reference", "atomics": "reference", "backward_ms": 1.0}],
                                           tmp_path / "s.png", "t") is None
    assert bench_plot.plot_lane_histogram([5] + [0] * 32, tmp_path / "h.png", "t") is None


def test_bad_arguments_are_refused():
    with pytest.raises(SystemExit):
        bench.parse_args(["--ply", "x.ply"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--thresholds", "0"])


def test_lanes_only_on_the_default_scene(tmp_path):
    from pathlib import Path
    scene_dir = Path(__file__).resolve().parents[1] / "data" / "tabletop"
    if not scene_dir.is_dir():
        pytest.skip(f"default scene not found at {scene_dir}")
    assert bench.main(["--device", "cpu", "--scene", str(scene_dir), "--lanes-only", "-q", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["rows"] == [] and result["scene"]["kind"] == "sfm-init"
    assert result["lane_histogram"]["summary"]["active_steps"] > 0
    assert (tmp_path / "lane_histogram.png").is_file() and not (tmp_path / "policies.png").exists()


def test_plot_script_redraws_from_results_json(smoke, tmp_path):
    import importlib.util
    from pathlib import Path
    out, _result = smoke
    script = Path(__file__).resolve().parents[1] / "scripts" / "plot_bench.py"
    spec = importlib.util.spec_from_file_location("plot_bench", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main([str(out / "results.json"), "--out", str(tmp_path), "--prefix", "cpu_"]) == 0
    assert (tmp_path / "cpu_policies.png").is_file() and (tmp_path / "cpu_lane_histogram.png").is_file()


def test_lane_disagreement_is_reported():
    scene = synthetic_cloud(100, 24, 20, seed=1)
    pb = PolicyBench(scene, warmup=0, repeats=1, with_probe=False)
    pb.probe = FakeProbe(scene)
    good = pb.probe.lane_histogram()
    bad = good.clone()
    bad[1] -= 5
    bad[2] += 5                                             # 5 steps moved to another bin
    pb.probe.lane_histogram = lambda: bad
    cuda_scene = types.SimpleNamespace(device=torch.device("cuda"), settings=scene.settings)
    lane = bench.lane_histograms(cuda_scene, pb, "auto")
    assert lane["cuda_vs_reference_moved_steps"] == 5 and lane["agree"] is False and lane["exact"] is False


def test_module_entry_point_answers_help():
    import subprocess
    import sys
    from pathlib import Path
    done = subprocess.run([sys.executable, "-m", "gs_trainer.bench", "--help"], capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0 and "--lanes-only" in done.stdout and "--quick" in done.stdout
