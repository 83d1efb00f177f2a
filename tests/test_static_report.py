"""gs-bench --static (gs_trainer/bench/static.py): the SASS analysis without a GPU.

The parser and the model run everywhere, on hand-made inputs; the report itself needs nvcc and nvdisasm
(pip install 'distwar-gs[static]') and is skipped with its reason without them.
"""

from __future__ import annotations

import json

import pytest

from gs_trainer.bench import cli as bench, static
from gs_trainer.bench.scene import synthetic_cloud

#: A loop: header 0 -> (alpha test with EX2) -> either the backward step (RCP) with its atomics or nothing,
#: then the latch branching back; the IEEE division's slow path (a CALL) hangs off the step.
TOY_SASS = """
.text._ZN3gsr22render_backward_kernelILi0EEEvNS_6CameraENS_12RenderParamsEi:
        /*0000*/                   MOV R1, c[0x0][0x28] ;
.L_x_1:
        /*0010*/                   ISETP.GE.AND P0, PT, R2, R3, PT ;
        /*0020*/               @P0 BRA `(.L_x_2) ;
        /*0030*/                   MUFU.EX2 R4, R5 ;
        /*0040*/                   FSETP.GEU.AND P1, PT, R4, 0.5, PT ;
        /*0050*/               @!P1 BRA `(.L_x_2) ;
        /*0060*/                   MUFU.RCP R6, R7 ;
        /*0070*/               @P2 BRA `(.L_x_3) ;
        /*0080*/                   CALL.REL.NOINC `($slowpath) ;
.L_x_3:
        /*0090*/                   RED.E.ADD.F32.FTZ.RN.STRONG.GPU [R8.64], R6 ;
        /*00a0*/                   RED.E.ADD.F32.FTZ.RN.STRONG.GPU [R8.64+0x4], R6 ;
.L_x_2:
        /*00b0*/                   IADD3 R2, R2, 0x1, RZ ;
        /*00c0*/                   ISETP.LT.AND P0, PT, R2, R9, PT ;
        /*00d0*/               @P0 BRA `(.L_x_1) ;
        /*00e0*/                   EXIT ;
        /*00f0*/                   NOP ;
"""


def test_cfg_loop_and_paths_of_a_toy_kernel():
    (lines,) = static.split_functions(TOY_SASS).values()
    blocks = static.build_cfg(lines)
    header, body = static.find_gaussian_loop(blocks)
    assert blocks[header].label == ".L_x_1"
    paths = static.loop_paths(blocks, header, body)
    counts = sorted((static.path_counts(blocks, p) for p in paths), key=lambda c: c["n"])
    # skip (2 + 3), alpha fails (2 + 3 + 3), contributes (2 + 3 + 2 + 2 + 3); the CALL path is left out
    assert [c["n"] for c in counts] == [5, 8, 12]
    assert counts[-1]["atom_global"] == 2 and counts[-1]["rcp"] == 1 and counts[0]["ex2"] == 0
    cases = static.classify(blocks, paths)
    assert cases["skip"]["n"] == 5 and cases["none"]["n"] == 8 and cases["own"]["n"] == 12
    assert cases["reduce"] is None


def test_ptxas_parsing_and_occupancy():
    text = """ptxas info    : Compiling entry function '_ZN3gsr22render_backward_kernelILi2EEEvNS_6CameraENS_12RenderParamsEi' for 'sm_90'
ptxas info    : Function properties for _ZN3gsr22render_backward_kernelILi2EEEvNS_6CameraENS_12RenderParamsEi
    0 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 64 registers, used 1 barriers, 10244 bytes smem, 932 bytes cmem[0]
"""
    r = static.parse_ptxas(text)["distwar"]
    assert r == {"stack": 0, "spill_stores": 8, "spill_loads": 4, "registers": 64, "smem": 10244}
    # sm_90, 256 threads: 64 registers -> 4 blocks (50%), 48 -> 5 (62.5%), 32 -> 8 (100%)
    assert static.occupancy("90", 64, 10244)["blocks_per_sm"] == 4
    assert static.occupancy("90", 48, 10244)["occupancy"] == pytest.approx(0.625)
    assert static.occupancy("90", 32, 0)["occupancy"] == 1.0
    # shared memory limits too: 100 KiB on sm_89 hold 4 blocks of 20 KiB (+1 KiB reserved each)
    assert static.occupancy("89", 32, 20484) == {"blocks_per_sm": 4, "occupancy": 4 * 8 / 48,
                                                 "limited_by": "shared memory"}


def test_model_weights_paths_by_the_histogram():
    path = lambda n: {"n": n}  # noqa: E731
    analysis = {"baseline": {"paths": {"skip": path(10), "none": path(50), "own": path(150), "reduce": None}},
                "distwar": {"paths": {"skip": path(10), "none": path(40), "own": path(140), "reduce": path(200)}},
                "floor": {"paths": {"skip": path(10), "none": path(30), "own": path(100), "reduce": None}}}
    hist = [0] * 33
    hist[0], hist[1], hist[32] = 100, 10, 5
    steps = {"hist": hist, "past_warp_last": 7, "tile_gaussians": 3, "tile_reduced_gaussians": 2}
    m = static.model(analysis, steps, {"distwar": 8}, {"baseline": True, "distwar": False, "floor": True})
    assert m["baseline"]["issues"] == 100 * 50 + 15 * 150 + 7 * 10
    assert m["distwar"]["issues"] == 100 * 40 + 10 * 140 + 5 * 200  # skipped positions not walked
    assert m["floor"]["issues"] == 100 * 30 + 15 * 100 + 7 * 10
    assert m["floor"]["vs_floor"] == 1.0
    assert m["baseline"]["global_atomics"] == 9 * (10 + 5 * 32)
    assert m["distwar"]["global_atomics"] == 9 * 10 + 9 * 5
    analysis["tile"] = analysis["distwar"]
    m = static.model(analysis, steps, {"tile": 8}, {})
    assert m["tile"]["global_atomics"] == 9 * 10 + 9 * 2  # own path below 8 lanes, 2 flushed Gaussians


def _tools_or_skip():
    try:
        static.tools()
    except static.StaticReportUnavailable as err:
        pytest.skip(str(err))


@pytest.mark.slow
def test_static_report_of_the_kernels(tmp_path):
    _tools_or_skip()
    scene = synthetic_cloud(300, 64, 48, seed=1, sh_degree=1)
    result = static.static_report(scene, archs=("90",))
    per = result["archs"]["90"]
    assert set(per) == set(static.POLICIES)
    steps = result["steps"]
    assert sum(steps["hist"][1:]) > 0
    for pol, v in per.items():
        r = v["resources"]
        assert r["registers"] > 0 and 0 < r["occupancy"] <= 1, pol
        assert v["paths"]["none"] is not None, f"{pol}: no path without a contributor found"
        assert v["model"]["issues"] > 0
    paths = {pol: v["paths"] for pol, v in per.items()}
    assert all((c or {}).get("atom_global", 0) == 0 for c in paths["floor"].values())
    assert paths["baseline"]["own"]["atom_global"] == 9
    for pol in ("warp", "distwar", "tile"):
        red = paths[pol]["reduce"]
        assert red is not None and 0 < red["shfl"] <= 16, f"{pol}: reduce path {red}"
        assert red["n"] > paths[pol]["none"]["n"]
        assert all((c or {}).get("cas", 0) == 0 for c in paths[pol].values()), f"{pol}: compare-and-swap loop"
    assert per["floor"]["model"]["vs_floor"] == 1.0
    assert all(v["model"]["vs_floor"] >= 1.0 for v in per.values())
    text = static.format_report(result)
    assert "static analysis, not timing" in text and "sm_90" in text


@pytest.mark.slow
def test_gs_bench_static_writes_json(tmp_path, capsys):
    _tools_or_skip()
    rc = bench.main(["--static", "--static-archs", "90", "--synthetic", "200", "--width", "48", "--height", "32",
                     "--sh-degree", "0", "--out", str(tmp_path), "-q"])
    assert rc == 0
    data = json.loads((tmp_path / "static.json").read_text())
    assert set(data["archs"]["90"]) == set(static.POLICIES)
    assert "modelled issues" in capsys.readouterr().out


def test_gs_bench_static_bad_arguments_exit_2(tmp_path):
    for argv in (["--static", "--static-archs", "sm90"], ["--static", "--static-threshold", "0"],
                 ["--static", "--static-csrc", str(tmp_path)]):
        with pytest.raises(SystemExit) as e:
            bench.parse_args(argv)
        assert e.value.code == 2
