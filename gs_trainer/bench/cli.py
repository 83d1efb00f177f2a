"""gs-bench: the backward pass per gradient-accumulation policy, against the no-atomics floor and gsplat.

    gs-bench                                     # GPU: 1M synthetic Gaussians at 1920x1080, every policy
    gs-bench --quick                             # GPU: 200k Gaussians at 960x540, few repeats (gpu_check.sh)
    gs-bench --ply runs/x/point_cloud.ply --scene data/tabletop --view 0
    gs-bench --device cpu --synthetic 2000 --width 128 --height 96    # CPU: the C++ backend vs the reference
    gs-bench --device cpu --scene data/tabletop --backend cpu reference
    gs-bench --static                            # no GPU: registers, occupancy, SASS paths, modelled issues

Writes ``results.json``, ``results.csv`` and PNG charts (``policies.png``, ``threshold_sweep.png``,
``lane_histogram.png``) into ``--out`` and prints a table.  See docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from cuda_rasterizer import ATOMICS_MODES

from . import plot as bench_plot, report as bench_report
from .policies import FLOOR, Policy, PolicyBench, add_ratios, expand_policies
from .scene import BenchScene, scene_from_files, synthetic_cloud
from .timing import process_peak_rss_mib

log = logging.getLogger("gs_trainer.bench")

#: Defaults per device: (Gaussians, width, height, warm-up, repeats).  The GPU default is the issue's
#: target input (1M Gaussians, 1080p); the CPU default is what the reference renders in seconds.
GPU_DEFAULTS = (1_000_000, 1920, 1080, 10, 50)
QUICK_DEFAULTS = (200_000, 960, 540, 3, 10)
CPU_DEFAULTS = (3_000, 160, 120, 1, 3)
#: --static: the scene whose exact lane counts weight the SASS paths (computed on the CPU by the reference).
STATIC_DEFAULTS = (30_000, 640, 360, 0, 0)
DEFAULT_THRESHOLDS = (1, 2, 4, 8, 12, 16, 24, 32)
QUICK_THRESHOLDS = (8,)
#: The lane histograms of the counting kernel and of the reference must be identical; on large inputs a
#: handful of (pixel, Gaussian) pairs can sit exactly on the alpha >= 1/255 or T >= 1e-4 boundary, where
#: the kernel's float math (__expf, fused multiply-adds) and torch's differ in the last bit.  This is the
#: share of steps allowed to land in another bin before the two are declared to disagree.
LANE_HIST_MAX_MOVED_FRACTION = 1e-5


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="gs-bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("input (default: a synthetic cloud)")
    src.add_argument("--ply", help="trained 3DGS PLY (needs --scene for the camera)")
    src.add_argument("--scene", "-s", help="scene folder (COLMAP or Blender) giving the camera; without --ply "
                                           "its SfM points are used as training initialises them")
    src.add_argument("--view", type=int, default=0, help="camera index in the split (default 0)")
    src.add_argument("--split", choices=("train", "test"), default="train")
    src.add_argument("--synthetic", type=int, metavar="N", help="synthetic cloud of N Gaussians")
    src.add_argument("--width", type=int, help="image width (synthetic: default per device; scene: rescale)")
    src.add_argument("--height", type=int, help="image height")
    src.add_argument("--sh-degree", type=int, default=3, help="SH degree of the synthetic cloud (default 3)")
    src.add_argument("--seed", type=int, default=0)
    pol = p.add_argument_group("policies")
    pol.add_argument("--atomics", nargs="+", choices=ATOMICS_MODES, default=list(ATOMICS_MODES))
    pol.add_argument("--thresholds", nargs="+", type=int, help="distwar balance thresholds to sweep "
                                                               f"(default {' '.join(map(str, DEFAULT_THRESHOLDS))})")
    pol.add_argument("--no-floor", action="store_true", help="skip the no-atomics floor")
    run = p.add_argument_group("run")
    run.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    run.add_argument("--backend", nargs="+", choices=("cuda", "cpu", "reference"),
                     help="rasterizer backends to time (default: cuda on a GPU; cpu and reference on the CPU, "
                          "one row each, speed-ups over the reference)")
    run.add_argument("--quick", action="store_true", help="small input, few repeats: a quick GPU check")
    run.add_argument("--warmup", type=int)
    run.add_argument("--repeats", type=int)
    run.add_argument("--train-repeats", type=int, help="repeats of the training iteration (default --repeats)")
    run.add_argument("--lane-histogram", choices=("on", "off"), default="on",
                     help="on (default): the reference's exact histogram (on the run's device) and, on CUDA, the "
                          "counting kernel's, with whether they agree")
    run.add_argument("--lanes-only", action="store_true",
                     help="only the lane histogram(s): no timings, no gsplat (the exact CPU profile of a large input)")
    run.add_argument("--gsplat", choices=("auto", "on", "off"), default="auto",
                     help="compare with gsplat where it imports: auto = yes, except under --quick (gsplat "
                          "compiles its CUDA code on first use, minutes); on = also under --quick")
    run.add_argument("--no-plots", action="store_true")
    st = p.add_argument_group("static analysis (no GPU needed)")
    st.add_argument("--static", action="store_true",
                    help="build the backward kernel with the project's nvcc flags, read ptxas's resource use, "
                         "disassemble it and print per policy the per-Gaussian loop's instruction counts per path, "
                         "weighted by the scene's exact lane counts (static analysis, not timing)")
    st.add_argument("--static-archs", nargs="+", default=["90", "89"], metavar="SM",
                    help="architectures for --static (default 90 89)")
    st.add_argument("--static-csrc", metavar="DIR", help="--static: kernel sources to analyse (default: the package's)")
    st.add_argument("--static-threshold", type=int, default=8, help="--static: distwar/tile threshold (default 8)")
    st.add_argument("--static-flags", default="", help="--static: extra nvcc flags, e.g. \"-maxrregcount=48\"")
    run.add_argument("--out", default="bench_out", help="output folder (default bench_out/)")
    run.add_argument("-q", "--quiet", action="store_true")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.ply and not args.scene:
        p.error("--ply needs --scene for the camera")
    for t in args.thresholds or ():
        if not 1 <= t <= 33:
            p.error(f"--thresholds: {t} is outside 1..33")
    if not 1 <= args.static_threshold <= 33:
        p.error(f"--static-threshold: {args.static_threshold} is outside 1..33")
    for a in args.static_archs:
        if not re.fullmatch(r"\d{2,3}", a):
            p.error(f"--static-archs: {a!r} is not an SM number such as 90")
    if args.static_csrc and not (Path(args.static_csrc) / "render_backward.cu").is_file():
        p.error(f"--static-csrc: {args.static_csrc} holds no render_backward.cu")
    return args


def _device(choice: str) -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise SystemExit("gs-bench: --device cuda but torch sees no CUDA GPU")
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _check_extension(device: torch.device) -> None:
    """On CUDA the policies must run the extension: a silent fallback to the reference would time the wrong code."""
    if device.type != "cuda":
        return
    try:
        from cuda_rasterizer._backend import load_extension
        load_extension()
    except Exception as err:  # noqa: BLE001 - CudaBackendUnavailable or an import error, shown as is
        raise SystemExit(f"gs-bench: the CUDA rasterizer extension is unavailable: {err}") from None


def build_scene(args, device: torch.device, defaults) -> BenchScene:
    n, width, height = defaults[:3]
    if args.scene:
        return scene_from_files(args.scene, args.ply, view=args.view, split=args.split, width=args.width,
                                height=args.height, device=device)
    return synthetic_cloud(args.synthetic or n, args.width or width, args.height or height, seed=args.seed,
                           sh_degree=args.sh_degree, device=device)


def lane_histograms(scene: BenchScene, bench: PolicyBench, mode: str) -> dict:
    """Reference histogram (any device) and, on CUDA, the counting kernel's; whether they agree."""
    from cuda_rasterizer.lane_profile import lane_histogram_reference, lane_summary
    if mode == "off":
        return {"skipped": "--lane-histogram off"}
    out = {}
    means, scales, rots, opac, shs = (t.detach() for t in bench.inputs)
    t0 = time.perf_counter()
    ref = lane_histogram_reference(means, scales, rots, opac, shs, None, scene.settings)
    out["reference"] = ref.tolist()
    out["reference_seconds"] = round(time.perf_counter() - t0, 3)
    out["reference_device"] = str(scene.device)
    if scene.device.type == "cuda":
        try:
            cuda = bench.lane_histogram_cuda()
        except Exception as err:  # noqa: BLE001 - reported, the reference still stands
            log.exception("counting kernel failed")
            cuda, out["cuda_error"] = None, f"{type(err).__name__}: {err}"
        if cuda is not None:
            out["cuda"] = cuda.tolist()
            moved = int((cuda - ref).abs().sum()) // 2
            total = max(int(ref.sum()), 1)
            out["cuda_vs_reference_moved_steps"] = moved
            out["agree"] = moved <= LANE_HIST_MAX_MOVED_FRACTION * total and int(cuda.sum()) == int(ref.sum())
            out["exact"] = bool(torch.equal(cuda, ref))
        elif "cuda_error" not in out:
            out["cuda_note"] = bench.probe_note
    thresholds = sorted({1, 2, 4, 8, 12, 16, 24, 32, 33})
    out["summary"] = lane_summary(ref, thresholds)
    return out


def run(args) -> dict:
    device = _device(args.device)
    on_gpu = device.type == "cuda"
    defaults = (QUICK_DEFAULTS if args.quick else GPU_DEFAULTS) if on_gpu else CPU_DEFAULTS
    warmup = args.warmup if args.warmup is not None else defaults[3]
    repeats = args.repeats if args.repeats is not None else defaults[4]
    thresholds = args.thresholds or (QUICK_THRESHOLDS if args.quick else DEFAULT_THRESHOLDS)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_extension(device)

    t0 = time.perf_counter()
    scene = build_scene(args, device, defaults)
    s = scene.settings
    log.info("input: %s, %d Gaussians, %dx%d, on %s (%.1f s)", scene.source.get("kind"), scene.num_gaussians,
             s.image_width, s.image_height, device, time.perf_counter() - t0)
    bench = PolicyBench(scene, warmup=warmup, repeats=repeats, train_repeats=args.train_repeats, seed=args.seed)
    if bench.probe_note and on_gpu:
        log.warning("%s", bench.probe_note)

    result = {"environment": bench_report.environment(device, args.argv),
              "scene": dict(scene.source, width=s.image_width, height=s.image_height, fx=s.fx, fy=s.fy),
              "timing": {"warmup": warmup, "repeats": repeats, "train_repeats": args.train_repeats or repeats},
              "notes": []}
    backends = args.backend or (["cuda"] if on_gpu else ["cpu", "reference"])
    wrong = [b for b in backends if (b == "cuda") != on_gpu]
    if wrong:
        raise SystemExit(f"gs-bench: --backend {' '.join(wrong)} does not run on {device} (use --device)")
    if not on_gpu:
        result["notes"].append(f"CPU run, {torch.get_num_threads()} threads: backends {', '.join(backends)} (no "
                               "atomics policies, no kernels); x base = speed-up over the reference in this run; "
                               "process_peak_rss_mib is the process's peak after each row (monotonic)")
    if bench.probe_note:
        result["notes"].append(bench.probe_note)

    policies = (expand_policies(args.atomics, thresholds) if on_gpu
                else [Policy(b, b, backend=b) for b in backends])
    if args.lanes_only:
        policies = []
        result["notes"].append("--lanes-only: no timings taken")
    rows = []
    for policy in policies:
        log.info("measuring %s", policy.name)
        rows.append(bench.measure(policy))
    if on_gpu and not args.no_floor and not args.lanes_only and bench.probe is not None:
        log.info("measuring the no-atomics floor (gradient writes dropped; results wrong, timing only)")
        rows.append(bench.measure(Policy(FLOOR, FLOOR), kernel_only=True))
    add_ratios(rows)
    result["rows"] = rows

    lane_mode = "on" if args.lanes_only else args.lane_histogram
    log.info("lane histogram (%s)", lane_mode)
    try:
        result["lane_histogram"] = lane_histograms(scene, bench, lane_mode)
    except Exception as err:  # noqa: BLE001 - keep the timings already taken; report why
        log.exception("lane histogram failed")
        result["lane_histogram"] = {"error": f"{type(err).__name__}: {err}"}

    gsplat_off = args.gsplat == "off" or (args.gsplat == "auto" and args.quick)
    if gsplat_off or args.lanes_only:
        result["gsplat"] = {"skipped": "--lanes-only" if args.lanes_only else
                            f"--gsplat {args.gsplat}" + (" with --quick" if args.quick else "")}
    else:
        from .gsplat import compare_with_gsplat
        log.info("gsplat comparison")
        try:
            result["gsplat"] = compare_with_gsplat(scene, warmup=warmup, repeats=repeats, grad_image=bench.grad_image)
        except Exception as err:  # noqa: BLE001 - the peer is optional; report why it failed
            log.exception("gsplat comparison failed")
            result["gsplat"] = {"error": f"{type(err).__name__}: {err}"}
    result["targets"] = bench_report.evaluate_targets(result)
    if not on_gpu:
        result["environment"]["peak_rss_mib"] = round(process_peak_rss_mib(), 1)

    result["files"] = write_outputs(result, out_dir, plots=not args.no_plots)
    return result


def write_outputs(result: dict, out_dir: Path, plots: bool = True) -> list:
    files = [bench_report.write_json(result, out_dir / "results.json"),
             bench_report.write_csv(result["rows"], out_dir / "results.csv")]
    if plots:
        env, sc = result["environment"], result["scene"]
        where = env.get("gpu") or f"CPU ({env.get('cpu', '?')})"
        title = f"{where}, {sc.get('num_gaussians', 0):,} Gaussians, {sc['width']}x{sc['height']}"
        try:
            files.append(bench_plot.plot_policies(result["rows"], out_dir / "policies.png", title))
            files.append(bench_plot.plot_threshold_sweep(result["rows"], out_dir / "threshold_sweep.png", title))
            lanes = result["lane_histogram"]
            hist = lanes.get("cuda") or lanes.get("reference")
            if hist:
                how = "counting kernel" if lanes.get("cuda") else "exact, reference rasterizer"
                files.append(bench_plot.plot_lane_histogram(
                    hist, out_dir / "lane_histogram.png", f"Contributing lanes per (warp, Gaussian) step ({how}): {title}"))
        except Exception:  # noqa: BLE001 - the figures are written; a plot failure is logged, not fatal
            log.exception("plotting failed (JSON and CSV are written)")
    return [str(f) for f in files if f]


def _print_summary(result: dict) -> None:
    print(bench_report.table(result["rows"]))
    lane = result.get("lane_histogram", {})
    if "summary" in lane:
        sm = lane["summary"]
        print(f"lane profile: {sm['active_steps']:,} active warp steps, mean {sm['mean_lanes_per_active_step']:.2f} "
              f"lanes, {sm['full_warp_step_fraction']:.1%} full warps"
              + (f"; CUDA vs reference: {'agree' if lane.get('agree') else 'DISAGREE'}" if "agree" in lane else ""))
    gs = result.get("gsplat", {})
    if "speedup_vs_gsplat" in gs:
        print(f"gsplat {gs['gsplat_version']}: image mean |diff| {gs['image_mean_abs_diff']:.2e} "
              f"(match: {gs['images_match']}); ours fwd+bwd {gs['ours_timing']['forward_backward_ms']:.3f} ms, "
              f"gsplat best {gs['gsplat_best_forward_backward_ms']:.3f} ms ({gs['speedup_vs_gsplat']:.2f}x)")
    else:
        print(f"gsplat: {gs.get('skipped') or gs.get('error') or 'n/a'}")
    for note in result.get("notes", []):
        print(f"note: {note}")
    print("written: " + ", ".join(result.get("files", [])))


def run_static(args) -> int:
    """gs-bench --static: the report of gs_trainer.bench.static on the CPU; writes static.json into --out."""
    import json
    from . import static
    scene = build_scene(args, torch.device("cpu"), STATIC_DEFAULTS)
    try:
        result = static.static_report(scene, archs=args.static_archs, csrc=args.static_csrc,
                                      threshold=args.static_threshold, extra_flags=args.static_flags.split())
    except static.StaticReportUnavailable as err:
        print(f"gs-bench: {err}", file=sys.stderr)
        return 2
    s = scene.settings
    result["scene"] = dict(scene.source, width=s.image_width, height=s.image_height)
    text = static.format_report(result)
    print(f"scene: {scene.source.get('kind')}, {scene.num_gaussians:,} Gaussians, {s.image_width}x{s.image_height}")
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result.pop("tools", None)
    path = out / "static.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1, default=str))
    tmp.replace(path)
    print(f"written: {path}")
    return 0


def main(argv: Optional[list] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.static:
        return run_static(args)
    result = run(args)
    _print_summary(result)
    errors = [r["policy"] for r in result["rows"] if r.get("errors")]
    lane = result.get("lane_histogram", {})
    if "error" in lane or "cuda_error" in lane or lane.get("agree") is False:
        errors.append("lane histogram (" + (lane.get("error") or lane.get("cuda_error")
                                            or "counting kernel and reference disagree") + ")")
    if errors:
        log.error("errors in: %s (see results.json)", ", ".join(errors))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
