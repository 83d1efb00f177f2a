"""gs-bench --static: a static performance report of the backward render kernel, without a GPU.

What it does, per architecture (sm_90 and sm_89 by default):

1. compiles ``csrc/render_backward.cu`` to a cubin with the project's own nvcc flags
   (``cuda_rasterizer._backend.NVCC_FLAGS``) and reads ptxas's resource usage per kernel (registers, spill
   bytes, shared memory), from which it derives the occupancy of a 256-thread block;
2. disassembles the cubin (``nvdisasm``, on PyPI as nvidia-cuda-nvdisasm), rebuilds each
   ``render_backward_kernel<policy>``'s control-flow graph, and finds the per-Gaussian loop: the smallest
   natural loop holding the ``MUFU.EX2`` of ``gaussian_alpha``;
3. enumerates the loop body's acyclic paths (the IEEE division's slow path, a ``CALL``, excluded) and
   classifies them by what they execute: ``MUFU.EX2`` (alpha), ``MUFU.RCP`` (the backward step),
   shuffles, votes, global and shared atomics.  A warp issues the union of the blocks its lanes take, so
   the warp-level path of each case is the union of a contributing lane's path and a non-contributing
   lane's:

   - ``skip``: a position at or past the warp's last contributor, walked without work (0 when the kernel
     starts each warp's loop at its first useful position, see ``LOOP_START_MARKER``);
   - ``none``: a walked position where no lane contributes (every lane fails the alpha test);
   - ``own``: 1 <= lanes < threshold (the contributing lanes issue their own atomics; baseline always);
   - ``reduce``: lanes >= threshold (the warp reduces, lanes 0..8 issue the atomics; warp always);
4. weights the paths by the exact per-(warp, Gaussian) lane counts of a scene, computed on the CPU with
   the reference rasterizer (``cuda_rasterizer.lane_profile.lane_counts_of_tile``), into a modelled issue
   count per policy, printed relative to the ``floor`` (no atomics).

This is static analysis, not timing: instruction counts on paths, not cycles.  Memory latency, atomic
throughput, bank conflicts and occupancy effects are not modelled; only a GPU measures them (gs-bench).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

POLICIES = ("baseline", "warp", "distwar", "tile", "floor")
MODE_INDEX = {name: i for i, name in enumerate(POLICIES)}
DEFAULT_ARCHS = ("90", "89")
#: A comment in render_backward_kernel.cuh saying that the per-Gaussian loop of a warp starts at its first
#: useful position (positions at or past the warp's last contributor are never walked): the model then
#: charges them nothing instead of the ``skip`` path.
LOOP_START_MARKER = "static-report: the loop starts at the warp's first useful position"
#: Per-SM limits for a block of 256 threads: (registers, max warps, max blocks, shared bytes, shared bytes
#: reserved per block).
SM_LIMITS = {"90": (65536, 64, 32, 228 * 1024, 1024), "89": (65536, 48, 24, 100 * 1024, 1024),
             "80": (65536, 64, 32, 164 * 1024, 1024), "86": (65536, 48, 16, 100 * 1024, 1024)}
BLOCK_THREADS = 256
#: The cases each policy has (the others are infeasible there: a feature-matched path may exist in the
#: graph, e.g. a contributing lane past warp's "no lane contributes" test, but no warp takes it).
USED_CASES = {"baseline": ("skip", "none", "own"), "warp": ("skip", "none", "reduce"),
              "distwar": ("skip", "none", "own", "reduce"), "tile": ("skip", "none", "own", "reduce"),
              "floor": ("skip", "none", "own")}
MAX_PATHS = 200_000


class StaticReportUnavailable(RuntimeError):
    """A tool the report needs (nvcc, nvdisasm) is missing; the message says which and how to get it."""


# ------------------------------------------------------------------------------------------------------
# tools

def _pip_cuda_bins():
    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations or []) if spec else []:
        for sub in sorted(Path(root).glob("cu*/bin")) + sorted(Path(root).glob("cuda_*/bin")):
            yield sub


def find_tool(name: str) -> Optional[str]:
    """``name`` on PATH, in the CUDA toolkit, or in a pip wheel (nvidia-cuda-nvdisasm / -cuobjdump)."""
    found = shutil.which(name)
    if found:
        return found
    try:
        from cuda_rasterizer._backend import find_cuda_home
        cand = Path(find_cuda_home()) / "bin" / name
        if cand.exists():
            return str(cand)
    except Exception:  # noqa: BLE001 - no toolkit: look in the wheels
        pass
    for d in _pip_cuda_bins():
        if (d / name).exists():
            return str(d / name)
    return None


def tools() -> dict:
    nvcc, nvdisasm = find_tool("nvcc"), find_tool("nvdisasm")
    if not nvcc:
        raise StaticReportUnavailable("gs-bench --static needs nvcc (the CUDA toolkit): none found on PATH, "
                                      "CUDA_HOME or /usr/local/cuda")
    if not nvdisasm:
        raise StaticReportUnavailable("gs-bench --static needs nvdisasm: pip install 'distwar-gs[static]' "
                                      "(nvidia-cuda-nvdisasm) or put the CUDA toolkit's bin/ on PATH")
    return {"nvcc": nvcc, "nvdisasm": nvdisasm}


def nvcc_flags() -> list:
    from cuda_rasterizer._backend import NVCC_FLAGS
    return list(NVCC_FLAGS) + os.environ.get("CUDA_RASTERIZER_NVCC_FLAGS", "").split()


# ------------------------------------------------------------------------------------------------------
# compile, resources

def compile_cubin(nvcc: str, csrc: Path, arch: str, out: Path, extra_flags=()) -> str:
    """Compile render_backward.cu for sm_<arch>; returns ptxas's -v output."""
    cmd = [nvcc, "-cubin", *nvcc_flags(), *extra_flags, f"-arch=sm_{arch}", "-Xptxas", "-v", f"-I{csrc}",
           str(csrc / "render_backward.cu"), "-o", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"nvcc failed for sm_{arch}:\n{res.stderr[-4000:]}")
    return res.stdout + res.stderr


def policy_of(symbol: str) -> Optional[str]:
    m = re.search(r"render_backward_kernelILi(\d)E", symbol)
    return POLICIES[int(m.group(1))] if m else None


def parse_ptxas(text: str) -> dict:
    """{policy: {registers, spill_stores, spill_loads, stack, smem}} from ptxas -v."""
    out, current = {}, None
    for line in text.splitlines():
        m = re.search(r"(?:Compiling entry function|Function properties for) '?(_Z\w+)'?", line)
        if m:
            current = policy_of(m.group(1))
            if current:
                out.setdefault(current, {})
            continue
        if not current:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            out[current].update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            out[current]["registers"] = int(m.group(1))
            s = re.search(r"(\d+) bytes smem", line)
            out[current]["smem"] = int(s.group(1)) if s else 0
    return out


def occupancy(arch: str, registers: int, smem: int, threads: int = BLOCK_THREADS) -> dict:
    """Blocks of ``threads`` per SM and the share of the SM's warp slots they fill."""
    regs_sm, max_warps, max_blocks, smem_sm, smem_reserved = SM_LIMITS.get(arch, SM_LIMITS["90"])
    warps = threads // 32
    regs_per_warp = ((max(registers, 1) * 32 + 255) // 256) * 256  # allocated per warp in units of 256
    by_regs = (regs_sm // regs_per_warp) // warps
    by_smem = smem_sm // (smem + smem_reserved) if smem + smem_reserved > 0 else max_blocks
    blocks = min(by_regs, by_smem, max_warps // warps, max_blocks)
    return {"blocks_per_sm": blocks, "occupancy": blocks * warps / max_warps,
            "limited_by": "registers" if blocks == by_regs else ("shared memory" if blocks == by_smem else "warps")}


# ------------------------------------------------------------------------------------------------------
# SASS: control-flow graph, the per-Gaussian loop, its paths

@dataclass
class Block:
    index: int
    label: Optional[str]
    ops: list = field(default_factory=list)     # opcodes (first mnemonic, predicate stripped), NOPs dropped
    text: list = field(default_factory=list)
    succ: list = field(default_factory=list)
    calls: bool = False                         # an unpredicated CALL: a slow path (division, divergent shuffle)


_INSTR = re.compile(r"^\s*/\*[0-9a-f]+\*/\s+(.*?)\s*;\s*(?:/\*.*\*/)?\s*$")
_LABEL = re.compile(r"^(\.L_x_\d+):")


def split_functions(sass: str) -> dict:
    """{symbol: [lines]} of nvdisasm -c output."""
    funcs, cur = {}, None
    for line in sass.splitlines():
        m = re.match(r"^\.text\.(\S+):", line)
        if m:
            cur = m.group(1)
            funcs[cur] = []
            continue
        if cur is not None:
            funcs[cur].append(line)
    return funcs


def _opcode(instr: str) -> tuple:
    predicated = instr.startswith("@")
    body = instr.split(None, 1)[1] if predicated else instr
    return predicated, body.split()[0] if body.split() else ""


def build_cfg(lines: list) -> list:
    """Basic blocks with successors from one function's SASS lines."""
    items = []  # ("label", name) or ("ins", text)
    for line in lines:
        m = _LABEL.match(line.strip())
        if m:
            items.append(("label", m.group(1)))
            continue
        m = _INSTR.match(line)
        if m:
            items.append(("ins", m.group(1)))
    blocks, by_label, cur, pending = [], {}, None, []

    def new_block(label=None):
        b = Block(len(blocks), label)
        blocks.append(b)
        return b

    for kind, val in items:
        if kind == "label":
            pending.append(val)
            cur = None
            continue
        if cur is None:
            cur = new_block(pending[0] if pending else None)
            for lab in pending:
                by_label[lab] = cur.index
            pending = []
        predicated, op = _opcode(val)
        if op == "NOP":
            continue
        cur.text.append(val)
        cur.ops.append(op)  # the full opcode, with its modifiers
        if op.startswith("CALL") and not predicated:
            cur.calls = True
        if op.split(".")[0] in ("BRA", "EXIT", "RET", "BRX", "JMP", "BPT", "KILL"):
            cur = None
    # successors
    for i, b in enumerate(blocks):
        if not b.text:
            continue
        last = b.text[-1]
        predicated, op = _opcode(last)
        base = op.split(".")[0]
        if base == "BRA":
            m = re.search(r"`\((\.L_x_\d+)\)", last)
            if m and m.group(1) in by_label:
                b.succ.append(by_label[m.group(1)])
            # BRA.DIV branches when the warp is diverged (to the shuffles' slow path): conditional too
            if (predicated or ".DIV" in op) and i + 1 < len(blocks):
                b.succ.append(i + 1)
        elif base in ("EXIT", "RET", "BPT", "KILL", "BRX", "JMP"):
            if predicated and i + 1 < len(blocks):
                b.succ.append(i + 1)
        elif i + 1 < len(blocks):
            b.succ.append(i + 1)
    return blocks


def natural_loops(blocks: list) -> dict:
    """{header: set of blocks} merging the natural loops of every back edge to the same header."""
    n = len(blocks)
    preds = [[] for _ in range(n)]
    for b in blocks:
        for s in b.succ:
            preds[s].append(b.index)
    # dominators (iterative; the entry is block 0)
    reach = set()
    stack = [0]
    while stack:
        v = stack.pop()
        if v in reach:
            continue
        reach.add(v)
        stack.extend(blocks[v].succ)
    dom = {v: set(reach) for v in reach}
    dom[0] = {0}
    changed = True
    while changed:
        changed = False
        for v in sorted(reach):
            if v == 0:
                continue
            ps = [dom[p] for p in preds[v] if p in reach]
            new = set.intersection(*ps) | {v} if ps else {v}
            if new != dom[v]:
                dom[v], changed = new, True
    loops = {}
    for u in reach:
        for h in blocks[u].succ:
            if h in dom[u]:  # back edge u -> h
                body = {h, u}
                work = [u]
                while work:
                    x = work.pop()
                    if x == h:
                        continue
                    for p in preds[x]:
                        if p in reach and p not in body:
                            body.add(p)
                            work.append(p)
                loops.setdefault(h, set()).update(body)
    return loops


def has_op(block: Block, prefix: str) -> bool:
    return any(op.startswith(prefix) for op in block.ops)


def find_gaussian_loop(blocks: list) -> tuple:
    """(header, body) of the smallest loop holding MUFU.EX2 (gaussian_alpha's exp)."""
    best = None
    for h, body in natural_loops(blocks).items():
        if any(has_op(blocks[b], "MUFU.EX2") for b in body):
            if best is None or len(body) < len(best[1]):
                best = (h, body)
    if best is None:
        raise RuntimeError("no loop with MUFU.EX2 found in the backward kernel")
    return best


def _counts(ops) -> dict:
    c = {"n": 0, "ex2": 0, "rcp": 0, "shfl": 0, "vote": 0, "atom_global": 0, "atom_shared": 0, "cas": 0,
         "call": 0}
    for op in ops:
        c["n"] += 1
        base = op.split(".")[0]
        if op.startswith("MUFU.EX2"):
            c["ex2"] += 1
        elif op.startswith("MUFU.RCP"):
            c["rcp"] += 1
        elif base == "SHFL":
            c["shfl"] += 1
        elif base == "VOTE":
            c["vote"] += 1
        elif base in ("RED", "ATOM", "ATOMG", "REDG"):
            c["atom_global"] += 1
        elif base == "ATOMS":
            c["atom_shared"] += 1
            if ".CAS" in op:
                c["cas"] += 1
        elif base in ("CALL",):
            c["call"] += 1
        if ".CAS" in op and base != "ATOMS":
            c["cas"] += 1
    return c


def loop_paths(blocks: list, header: int, body: set) -> list:
    """Acyclic paths header -> a latch (a block with an edge back to the header), as frozensets of blocks.

    Paths are simple (no block twice), so an inner loop (a compare-and-swap retry) counts its body once.
    Paths through a block with an unpredicated CALL (the IEEE division's slow path, the shuffles' path for
    a diverged warp) are left out; a predicated CALL.REL.NOINC is how ptxas leaves the loop.
    """
    paths = []

    def succ(v):
        for s in blocks[v].succ:
            if s in body and s != header:
                yield s

    stack = [(header, (header,))]
    while stack:
        v, path = stack.pop()
        if header in blocks[v].succ:
            paths.append(frozenset(path))
        for s in succ(v):
            if s in path or blocks[s].calls:
                continue
            stack.append((s, path + (s,)))
            if len(paths) + len(stack) > MAX_PATHS:
                raise RuntimeError("too many paths in the loop body")
    return paths


def path_counts(blocks: list, path) -> dict:
    return _counts(op for b in sorted(path) for op in blocks[b].ops)


def classify(blocks: list, paths: list) -> dict:
    """The warp-level path of each case (see the module docstring), as {case: counts or None}."""
    info = [(p, path_counts(blocks, p)) for p in paths]
    work = lambda c: c["ex2"] or c["rcp"] or c["shfl"] or c["vote"] or c["atom_global"] or c["atom_shared"]  # noqa: E731
    no_work = [x for x in info if not work(x[1])]
    skip = min(no_work, key=lambda x: x[1]["n"]) if no_work else None
    # a lane that tests alpha and fails: EX2, no backward step
    failing = [x for x in info if x[1]["ex2"] and not x[1]["rcp"]]
    quiet = [x for x in failing if not x[1]["atom_global"] and not x[1]["atom_shared"] and not x[1]["shfl"]]
    none = min(quiet or failing, key=lambda x: x[1]["n"]) if (quiet or failing) else None
    contributing = [x for x in info if x[1]["rcp"]]
    own = [x for x in contributing if not x[1]["shfl"]]
    red = [x for x in contributing if x[1]["shfl"]]
    failing_red = [x for x in failing if x[1]["shfl"]]

    def union(a, b):
        if a is None:
            return None
        s = set(a[0]) | (set(b[0]) if b else set())
        return frozenset(s), path_counts(blocks, s)

    own_w = union(max(own, key=lambda x: x[1]["n"]), none) if own else None
    red_w = (union(max(red, key=lambda x: x[1]["n"]),
                   max(failing_red, key=lambda x: x[1]["n"]) if failing_red else none) if red else None)
    return {"skip": skip[1] if skip else None, "none": none[1] if none else None,
            "own": own_w[1] if own_w else None, "reduce": red_w[1] if red_w else None}


def used_cases(policy: str, cases: dict) -> dict:
    """``cases`` with the ones ``policy`` cannot take set to None."""
    return {c: (v if c in USED_CASES.get(policy, cases) else None) for c, v in cases.items()}


def analyse_sass(sass: str) -> dict:
    """{policy: {"paths": {case: counts}, "loop_blocks": k, "loop_instructions": n}}."""
    out = {}
    for sym, lines in split_functions(sass).items():
        pol = policy_of(sym)
        if not pol:
            continue
        blocks = build_cfg(lines)
        header, body = find_gaussian_loop(blocks)
        paths = loop_paths(blocks, header, body)
        out[pol] = {"paths": used_cases(pol, classify(blocks, paths)), "loop_blocks": len(body), "loop_paths": len(paths),
                    "loop_instructions": sum(len(blocks[b].ops) for b in body),
                    "kernel_instructions": sum(len(b.ops) for b in blocks)}
    return out


# ------------------------------------------------------------------------------------------------------
# the scene's steps

def step_classes(scene, threshold: int = 8) -> dict:
    """Exact counts of the backward kernel's (warp, Gaussian) steps by kind, from the reference.

    Returns {"hist": [33] lane histogram of the walked steps (positions below the warp's last contributor),
    "past_warp_last": steps at or past the warp's last contributor but before the block's (walked by a kernel
    that does not start each warp at its first useful position), "tile_gaussians": (tile, Gaussian) pairs
    with at least one contributing lane, "tile_reduced_gaussians": those where at least one warp has
    ``threshold`` lanes or more (tile's chunk flushes: one global atomic per value)}.
    """
    import torch
    from cuda_rasterizer.lane_profile import NUM_BINS, lane_counts_of_tile
    from cuda_rasterizer.reference import bin_gaussians, project_gaussians

    means, scales, rots, opac, shs = scene.activated()
    s = scene.settings
    hist = torch.zeros(NUM_BINS, dtype=torch.int64)
    past = 0
    tile_pairs = tile_reduced = 0
    with torch.no_grad():
        proj = project_gaussians(means, scales, rots, opac, shs, None, s)
        ids, ranges = bin_gaussians(proj, s)
        gx, gy = s.tile_grid
        r = ranges.tolist()
        for ty in range(gy):
            for tx in range(gx):
                t = ty * gx + tx
                start, end = r[t], r[t + 1]
                if end <= start:
                    continue
                counts = lane_counts_of_tile(proj, ids[start:end], tx, ty, s).cpu()  # [warps, K] front to back
                nz = counts > 0
                k = counts.shape[1]
                pos = torch.arange(k)
                warp_last = torch.where(nz, pos + 1, torch.zeros_like(pos)).max(dim=1).values  # [warps]
                block_last = int(warp_last.max()) if warp_last.numel() else 0
                walked = pos[None, :] < warp_last[:, None]
                hist += torch.bincount(counts[walked], minlength=NUM_BINS)
                past += int((block_last - warp_last).sum())
                tile_pairs += int(nz.any(dim=0).sum())
                tile_reduced += int((counts >= threshold).any(dim=0).sum())
    return {"hist": hist.tolist(), "past_warp_last": past, "tile_gaussians": tile_pairs,
            "tile_reduced_gaussians": tile_reduced, "threshold": threshold}


# ------------------------------------------------------------------------------------------------------
# the model

def model(analysis: dict, steps: dict, thresholds: dict, skips_walked: dict) -> dict:
    """Modelled issue counts per policy (instructions of the per-Gaussian loop, summed over the scene)."""
    hist = steps["hist"]
    out = {}
    for pol, a in analysis.items():
        p = a["paths"]
        thr = thresholds.get(pol, 8)

        def cost(case):
            c = p.get(case)
            return c["n"] if c else None

        case_of = []
        for k in range(len(hist)):
            if k == 0:
                case = "none"
            elif pol in ("baseline", "floor"):
                case = "own"
            elif pol == "warp":
                case = "reduce"
            else:
                case = "reduce" if k >= thr else "own"
            case_of.append(case)
        issues = 0
        missing = set()
        for k, n in enumerate(hist):
            c = cost(case_of[k])
            if c is None and n:
                missing.add(case_of[k])
                c = 0
            issues += n * (c or 0)
        skip_cost = cost("skip") if skips_walked.get(pol, True) else 0
        issues += steps["past_warp_last"] * (skip_cost or 0)
        # global atomic operations (lane-level) per walked step
        lanes = sum(k * n for k, n in enumerate(hist))
        if pol == "baseline":
            glob = 9 * lanes
        elif pol == "warp":
            glob = 9 * sum(n for k, n in enumerate(hist) if k >= 1)
        elif pol == "distwar":
            glob = sum(9 * (1 if k >= thr else k) * n for k, n in enumerate(hist) if k >= 1)
        elif pol == "tile":  # below the threshold as distwar; above it one flush per (Gaussian, tile)
            glob = (sum(9 * k * n for k, n in enumerate(hist) if 1 <= k < thr)
                    + 9 * steps.get("tile_reduced_gaussians", 0))
        else:
            glob = 0
        active = sum(n for k, n in enumerate(hist) if k >= 1)
        out[pol] = {"threshold": thr if pol in ("distwar", "tile") else None, "issues": issues,
                    "skip_walked": bool(skips_walked.get(pol, True)),
                    "global_atomics": glob, "global_atomics_per_active_step": glob / max(active, 1),
                    "missing_paths": sorted(missing)}
    floor = out.get("floor", {}).get("issues")
    for pol in out:
        out[pol]["vs_floor"] = out[pol]["issues"] / floor if floor else None
    return out


# ------------------------------------------------------------------------------------------------------
# the whole report

def loop_start_skips(csrc: Path) -> bool:
    """Whether the kernel walks positions past the warp's last contributor (no LOOP_START_MARKER)."""
    return LOOP_START_MARKER not in (csrc / "render_backward_kernel.cuh").read_text()


def static_report(scene=None, archs=DEFAULT_ARCHS, csrc: Optional[Path] = None, threshold: int = 8,
                  extra_flags=(), keep: Optional[Path] = None) -> dict:
    """Build, disassemble, analyse and (with a scene) model.  Raises StaticReportUnavailable without tools."""
    from cuda_rasterizer._backend import CSRC
    tl = tools()
    csrc = Path(csrc or CSRC)
    result = {"csrc": str(csrc), "nvcc_flags": nvcc_flags() + list(extra_flags), "archs": {},
              "tools": tl, "nvcc_version": _version(tl["nvcc"])}
    walks = loop_start_skips(csrc)
    with tempfile.TemporaryDirectory(prefix="gs_static_") as tmp:
        work = Path(keep) if keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for arch in archs:
            cubin = work / f"render_backward_sm{arch}.cubin"
            ptxas = compile_cubin(tl["nvcc"], csrc, arch, cubin, extra_flags)
            res = parse_ptxas(ptxas)
            sass = subprocess.run([tl["nvdisasm"], "-c", str(cubin)], capture_output=True, text=True, check=True).stdout
            if keep:
                (work / f"render_backward_sm{arch}.sass").write_text(sass)
            analysis = analyse_sass(sass)
            per = {}
            for pol in POLICIES:
                r = dict(res.get(pol, {}))
                if r:
                    r.update(occupancy(arch, r["registers"], r["smem"]))
                per[pol] = {"resources": r, **analysis.get(pol, {})}
            result["archs"][arch] = per
    if scene is not None:
        steps = step_classes(scene, threshold)
        result["steps"] = steps
        thr = {"distwar": threshold, "tile": threshold}
        for arch, per in result["archs"].items():
            m = model({p: v for p, v in per.items() if "paths" in v}, steps, thr, {p: walks for p in POLICIES})
            for pol, v in m.items():
                per[pol]["model"] = v
    result["skip_positions_walked"] = walks
    return result


def _version(nvcc: str) -> str:
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
        m = re.search(r"release ([\d.]+), (V[\d.]+)", out)
        return m.group(2) if m else out.strip().splitlines()[-1]
    except OSError:
        return "?"


def format_report(result: dict) -> str:
    lines = [f"static analysis, not timing (nvcc {result['nvcc_version']}, flags: {' '.join(result['nvcc_flags'])})"]
    steps = result.get("steps")
    if steps:
        h = steps["hist"]
        active = sum(h[1:])
        lines.append(f"scene: {sum(h):,} walked (warp, Gaussian) steps, {active:,} with a contributor "
                     f"(mean {sum(k * n for k, n in enumerate(h)) / max(active, 1):.2f} lanes), "
                     f"{steps['past_warp_last']:,} past the warp's last contributor "
                     f"({'walked' if result['skip_positions_walked'] else 'not walked'}), "
                     f"{steps['tile_gaussians']:,} (tile, Gaussian) pairs with a contributor, "
                     f"{steps.get('tile_reduced_gaussians', 0):,} with a warp of >= {steps.get('threshold', '?')} lanes")
    for arch, per in result["archs"].items():
        lines.append("")
        lines.append(f"sm_{arch}: per-Gaussian loop of render_backward_kernel<policy>, instructions per warp step")
        hdr = (f"{'policy':9} {'regs':>4} {'spill':>5} {'smem':>6} {'blk/SM':>6} {'occ':>6} | {'skip':>4} {'none':>4} "
               f"{'own':>4} {'reduce':>6} | {'shfl':>4} {'atomG':>5} {'atomS':>5} {'CAS':>3}")
        if steps:
            hdr += f" | {'modelled issues':>16} {'vs floor':>8} {'glob.atom/step':>14}"
        lines.append(hdr)
        for pol in POLICIES:
            v = per.get(pol)
            if not v or "paths" not in v:
                continue
            r, p = v["resources"], v["paths"]
            n = lambda c: f"{p[c]['n']}" if p.get(c) else "-"  # noqa: E731
            skip = n("skip") if result.get("skip_positions_walked", True) else "0"
            worst = p.get("reduce") or p.get("own") or {}
            spill = r.get("spill_stores", 0) + r.get("spill_loads", 0)
            row = (f"{pol:9} {r.get('registers', '?'):>4} {spill:>5} {r.get('smem', 0):>6} {r.get('blocks_per_sm', '?'):>6} "
                   f"{r.get('occupancy', 0):>6.1%} | {skip:>4} {n('none'):>4} {n('own'):>4} {n('reduce'):>6} | "
                   f"{worst.get('shfl', 0):>4} {max((p[c] or {}).get('atom_global', 0) for c in p):>5} "
                   f"{max((p[c] or {}).get('atom_shared', 0) for c in p):>5} {max((p[c] or {}).get('cas', 0) for c in p):>3}")
            m = v.get("model")
            if m:
                vs = f"{m['vs_floor']:.3f}x" if m["vs_floor"] else "-"
                row += f" | {m['issues']:>16,} {vs:>8} {m['global_atomics_per_active_step']:>14.2f}"
            lines.append(row)
    lines.append("")
    lines.append("paths: skip = a position past the warp's last contributor (0: not walked); none = no lane contributes; own = "
                 "contributing lanes issue their own atomics (baseline; distwar/tile below the threshold); "
                 "reduce = warp reduction then lanes 0..8 (warp; distwar/tile at or above it).  shfl/atomG/atomS/"
                 "CAS: SASS instructions on the longest of those paths.  glob.atom/step: lane-level global "
                 "atomics per (warp, Gaussian) step with a contributor (tile: its own-path atomics and its "
                 "flushes, one per (Gaussian, tile, value) that a warp reduced).  Modelled issues: the loop's "
                 "instructions summed over the scene's steps; atomics, latency and tile's per-chunk flush "
                 "(outside the loop) are not priced.")
    return "\n".join(lines)
