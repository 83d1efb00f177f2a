"""Adaptive density control: the right rows are cloned, split and pruned, and Adam state follows them."""

import math

import numpy as np
import pytest
import torch

from cuda_rasterizer import RasterOutput
from gs_trainer.config import DensifyConfig, OptimConfig
from gs_trainer.densify import DensifyStrategy
from gs_trainer.model import GaussianModel, inverse_sigmoid
from gs_trainer.optim import check_aligned, make_optimizer

EXTENT = 10.0          # percent_dense 0.01 -> clone/split boundary at world size 0.1
EXACT = 0.0            # copies and masks move values without arithmetic
FLOAT_TOL = 1e-6       # one float32 rounding on values of order 1


def _model():
    """Six Gaussians with hand-set sizes and opacities (size limit 0.1, min opacity 0.005)."""
    n = 6
    means = torch.arange(n * 3, dtype=torch.float32).reshape(n, 3)
    sizes = torch.tensor([0.05, 0.05, 0.5, 0.5, 0.05, 0.05])
    opac = torch.tensor([0.5, 0.5, 0.5, 0.5, 0.001, 0.5])
    quats = torch.nn.functional.normalize(torch.randn(n, 4, generator=torch.Generator().manual_seed(0)), dim=-1)
    return GaussianModel(means, torch.rand(n, 1, 3), torch.rand(n, 3, 3), torch.log(sizes)[:, None].repeat(1, 3),
                         quats, inverse_sigmoid(opac)[:, None], max_sh_degree=1)


def _adam_stepped(model, fused=False):
    """Adam after one step; ``fused=True`` builds the fused Adam that CUDA training uses (torch runs it on
    the CPU too), whose step counters are tensors that the row surgery must carry along."""
    opt = make_optimizer(model, OptimConfig(), EXTENT)
    if fused:
        groups = [{"params": g["params"], "lr": g["lr"], "name": g["name"]} for g in opt.param_groups]
        opt = torch.optim.Adam(groups, lr=0.0, eps=opt.defaults["eps"], fused=True)
    loss = sum((p * (i + 1)).square().sum() for i, p in enumerate(model.parameters()))
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return opt


CPU_FUSED_ADAM = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 4)   # torch 2.4 added it


@pytest.mark.parametrize("fused", [False, pytest.param(True, marks=pytest.mark.skipif(
    not CPU_FUSED_ADAM, reason="fused Adam runs on the CPU from torch 2.4"))], ids=["adam", "fused_adam"])
def test_clone_split_prune_rows_and_adam_state(fused):
    model = _model()
    opt = _adam_stepped(model, fused)
    before = {k: v.detach().clone() for k, v in model.param_dict().items()}
    moments = {g["name"]: opt.state[g["params"][0]]["exp_avg"].clone() for g in opt.param_groups}
    strat = DensifyStrategy(DensifyConfig(), EXTENT)
    strat.reset_stats(6, "cpu")
    # rows 0 and 2 have a high mean gradient (small -> clone, large -> split); row 4 is transparent;
    # row 1's gradient sum is high but spread over many visible iterations (mean below threshold).
    strat.grad_accum = torch.tensor([0.001, 0.001, 0.001, 0.0001, 0.0, 0.0])
    strat.denom = torch.tensor([1.0, 10.0, 1.0, 1.0, 0.0, 1.0])
    events = strat.densify_and_prune(model, opt, prune_big=False, generator=torch.Generator().manual_seed(0))
    assert events == {"cloned": 1, "split": 1, "pruned": 1}
    # layout: survivors 0, 1, 3, 5 in order, then the clone of 0, then the 2 children of 2
    assert model.num_gaussians == 4 + 1 + 2
    survivors = [0, 1, 3, 5]
    for name, old in before.items():
        new = getattr(model, name).detach()
        assert torch.equal(new[:4], old[survivors]), name
        assert torch.equal(new[4], old[0]), name
        m = opt.state[getattr(model, name)]["exp_avg"]
        assert torch.equal(m[:4], moments[name][survivors]), name
        assert torch.count_nonzero(m[4:]) == 0, name
    children = model.param_dict()
    assert torch.allclose(children["log_scales"][5:], before["log_scales"][2].expand(2, 3) - math.log(1.6), atol=FLOAT_TOL)
    for name in ("sh_dc", "sh_rest", "quats", "opacity_logits"):
        assert torch.equal(children[name][5:].detach(), before[name][2].expand_as(children[name][5:])), name
    offsets = (children["means"][5:] - before["means"][2]).detach()
    assert torch.all(offsets.norm(dim=1) < 6 * 0.5) and torch.count_nonzero(offsets) > 0
    check_aligned(opt, model)
    assert torch.count_nonzero(strat.grad_accum) == 0 and strat.grad_accum.shape == (7,)
    for group in opt.param_groups:   # the step counters survive the surgery, as fused Adam needs them
        step = opt.state[group["params"][0]]["step"]
        assert float(step) == 1.0 and step.device == model.device, group["name"]
    # the optimizer keeps working on the new rows
    model.means.sum().backward()
    opt.step()


def test_prune_big_on_screen_and_in_world():
    model = _model()
    opt = _adam_stepped(model)
    strat = DensifyStrategy(DensifyConfig(max_world_size=0.04), EXTENT)   # world limit 0.4: rows 2, 3 too big
    strat.reset_stats(6, "cpu")
    strat.max_radii = torch.tensor([0.0, 25.0, 0.0, 0.0, 0.0, 0.0])       # row 1 too big on screen
    before = model.means.detach().clone()
    strat.densify_and_prune(model, opt, prune_big=True)
    assert model.num_gaussians == 2   # rows 0 and 5 survive; 4 is transparent
    assert torch.equal(model.means.detach(), before[[0, 5]])
    check_aligned(opt, model)


def test_stats_in_ndc_units_only_where_visible():
    strat = DensifyStrategy(DensifyConfig(), EXTENT)
    strat.reset_stats(3, "cpu")
    means2d = torch.zeros(3, 2, requires_grad=True)
    (means2d * torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])).sum().backward()
    out = RasterOutput(None, torch.tensor([3, 0, 1], dtype=torch.int32), means2d, None, None, None)
    strat.add_stats(out, width=100, height=50)
    expected = torch.tensor([math.hypot(1 * 50, 2 * 25), 0.0, math.hypot(5 * 50, 6 * 25)])
    assert torch.allclose(strat.grad_accum, expected, rtol=FLOAT_TOL)
    assert torch.equal(strat.denom, torch.tensor([1.0, 0.0, 1.0]))
    assert torch.equal(strat.max_radii, torch.tensor([3.0, 0.0, 1.0]))


def test_opacity_reset_caps_and_zeroes_moments():
    model = _model()
    opt = _adam_stepped(model)
    before = model.opacities.detach().clone()
    DensifyStrategy(DensifyConfig(), EXTENT).reset_opacity(model, opt)
    assert torch.allclose(model.opacities.detach(), before.clamp_max(0.01), atol=FLOAT_TOL)
    assert float(before.min()) < 0.005 and float(before.max()) > 0.4   # both sides of the cap tested
    st = opt.state[model.opacity_logits]
    assert torch.count_nonzero(st["exp_avg"]) == 0 and torch.count_nonzero(st["exp_avg_sq"]) == 0
    check_aligned(opt, model)


def test_schedule_of_post_backward():
    """Densify only after densify_from_iter on the interval, and never at/after densify_until_iter."""
    cfg = DensifyConfig(densify_from_iter=2, densify_until_iter=9, densification_interval=2,
                        opacity_reset_interval=6)
    model = _model()
    opt = _adam_stepped(model)
    strat = DensifyStrategy(cfg, EXTENT)

    def out():
        means2d = torch.zeros(model.num_gaussians, 2, requires_grad=True)
        means2d.sum().backward()
        return RasterOutput(None, torch.ones(model.num_gaussians, dtype=torch.int32), means2d, None, None, None)

    seen = {it: sorted(strat.post_backward(it, model, opt, out(), 10, 10)) for it in range(1, 13)}
    assert [it for it, ev in seen.items() if "pruned" in ev] == [4, 6, 8]
    assert [it for it, ev in seen.items() if "opacity_reset" in ev] == [6]
    assert np.isclose(float(strat.denom[0]), 0.0)   # stats stop at densify_until_iter (last reset at 8)
