"""Adam set-up, learning-rate schedule and row surgery."""

import math

import pytest
import torch

from gs_trainer.config import OptimConfig
from gs_trainer.model import GaussianModel
from gs_trainer.optim import (append_rows, check_aligned, exponential_lr, keep_rows, learning_rates,
                              load_optimizer_state, make_optimizer, position_lr_schedule)

REL_TOL = 1e-9   # float64 arithmetic in the schedule


def test_position_schedule_log_linear_with_extent():
    cfg = OptimConfig()
    f = position_lr_schedule(cfg, spatial_lr_scale=2.0)
    assert math.isclose(f(0), 1.6e-4 * 2, rel_tol=REL_TOL)
    assert math.isclose(f(30_000), 1.6e-6 * 2, rel_tol=REL_TOL)
    assert math.isclose(f(15_000), math.sqrt(1.6e-4 * 1.6e-6) * 2, rel_tol=REL_TOL)
    assert math.isclose(f(60_000), f(30_000), rel_tol=REL_TOL)   # held after max_steps


def test_delay_warms_up():
    f = exponential_lr(1.0, 1.0, delay_steps=100, delay_mult=0.01, max_steps=1000)
    assert math.isclose(f(0), 0.01, rel_tol=REL_TOL) and math.isclose(f(100), 1.0, rel_tol=REL_TOL)


def test_groups_and_rates():
    m = GaussianModel.from_points(torch.rand(8, 3), torch.rand(8, 3), sh_degree=3)
    opt = make_optimizer(m, OptimConfig(), spatial_lr_scale=3.0)
    rates = {g["name"]: g["lr"] for g in opt.param_groups}
    assert rates == learning_rates(OptimConfig(), 3.0)
    assert math.isclose(rates["sh_rest"], 0.0025 / 20) and rates["opacity_logits"] == 0.025
    assert rates["log_scales"] == 0.005 and rates["quats"] == 0.001 and math.isclose(rates["means"], 4.8e-4)
    assert opt.defaults["eps"] == 1e-15


def test_append_and_keep_rows_follow_state():
    m = GaussianModel.from_points(torch.rand(5, 3), torch.rand(5, 3), sh_degree=0)
    opt = make_optimizer(m, OptimConfig(), 1.0)
    (m.means.square().sum() + m.log_scales.sum()).backward()
    opt.step()
    avg = opt.state[m.means]["exp_avg"].clone()
    append_rows(opt, m, {k: torch.zeros((2,) + v.shape[1:]) for k, v in m.param_dict().items()})
    check_aligned(opt, m)
    assert torch.equal(opt.state[m.means]["exp_avg"][:5], avg)
    keep = torch.tensor([True, False, True, False, True, True, False])
    keep_rows(opt, m, keep)
    check_aligned(opt, m)
    assert torch.equal(opt.state[m.means]["exp_avg"], torch.cat([avg, torch.zeros(2, 3)])[keep])
    m.means.sum().backward()
    opt.step()   # still a working optimizer


CPU_FUSED_ADAM = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 4)   # torch 2.4 added it


@pytest.mark.skipif(not CPU_FUSED_ADAM, reason="fused Adam runs on the CPU from torch 2.4")
def test_resume_keeps_fused_adam_and_casts_its_steps():
    """A checkpoint written by non-fused Adam (an older run) and loaded into fused Adam keeps fused on,
    with the step counters cast as fused Adam needs them (float32 on the parameter's device).  Fused Adam
    runs on the CPU too (torch >= 2.4), which lets this test stand in for the GPU."""
    m = GaussianModel.from_points(torch.rand(5, 3), torch.rand(5, 3), sh_degree=0)
    assert all(g["fused"] for g in make_optimizer(m, OptimConfig(), 1.0).param_groups)   # fused on the CPU too
    made = make_optimizer(m, OptimConfig(), 1.0)
    plain = torch.optim.Adam([{"params": g["params"], "lr": g["lr"], "name": g["name"]} for g in made.param_groups],
                             lr=0.0, eps=1e-15)   # as a checkpoint of an older run or another device has it
    m.means.square().sum().backward()
    plain.step()
    saved = plain.state_dict()
    assert not any(g.get("fused") for g in saved["param_groups"])
    groups = [{"params": [g["params"][0]], "lr": g["lr"], "name": g["name"]} for g in plain.param_groups]
    fused = torch.optim.Adam(groups, lr=0.0, eps=1e-15, fused=True)
    load_optimizer_state(fused, saved)
    assert all(g["fused"] for g in fused.param_groups)
    step = fused.state[m.means]["step"]
    assert step.dtype == torch.float32 and step.device == m.means.device and float(step) == 1.0
    assert torch.equal(fused.state[m.means]["exp_avg"], plain.state[m.means]["exp_avg"])
    m.means.grad = torch.ones_like(m.means)
    fused.step()   # a working fused optimizer
