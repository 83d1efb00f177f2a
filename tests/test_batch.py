"""Batched training on one process (--batch_size B): B views per step, losses averaged, Grendel-GS's
learning-rate rule, densification statistics accumulated as over B single steps."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from gs_trainer.config import TrainConfig
from gs_trainer.densify import DensifyStrategy
from gs_trainer.losses import gaussian_splatting_loss
from gs_trainer.optim import ADAM_BETAS, batch_scaling, learning_rates
from gs_trainer.trainer import Trainer
from gs_trainer.utils_run import RunFolder, configure_torch
from gs_trainer.utils_synthetic import make_synthetic_scene

#: The batch's per-view gradients are those of loss / B, scaled back by B: equal to the single-step
#: gradients up to float32 rounding of the two multiplications.
STAT_RTOL = 1e-5
#: Parameter gradient of the mean loss vs the mean of B single-view gradients (summation order differs).
GRAD_ATOL = 1e-7


@pytest.fixture(scope="module")
def scene():
    threads = torch.get_num_threads()
    run = TrainConfig().run
    run.cpu_threads = 1
    configure_torch(run)
    yield make_synthetic_scene(num_gaussians=120, num_views=10, width=40, height=30, seed=5)
    torch.set_num_threads(threads)


def config(batch_size, iterations=20):
    cfg = TrainConfig()
    cfg.optim.iterations = iterations
    cfg.optim.batch_size = batch_size
    cfg.model.sh_degree = 1
    cfg.run.test_iterations, cfg.run.save_iterations, cfg.run.quiet, cfg.run.tensorboard = [], [], True, False
    d = cfg.densify
    d.densify_from_iter, d.densify_until_iter, d.densification_interval = 5, 15, 5
    return cfg.validate()


def test_batch_scaling_is_grendels_rule():
    assert batch_scaling(1) == (1.0, ADAM_BETAS)
    lr, betas = batch_scaling(4)
    assert lr == 2.0 and betas == pytest.approx((0.9 ** 4, 0.999 ** 4))
    with pytest.raises(ValueError, match="batch_size"):
        batch_scaling(0)


def test_learning_rates_and_betas_follow_the_batch(scene, tmp_path):
    trainer = Trainer(config(3), scene, RunFolder(tmp_path, tensorboard=False))
    want = learning_rates(trainer.cfg.optim, trainer.extent)
    for group in trainer.optimizer.param_groups:
        assert group["lr"] == pytest.approx(want[group["name"]] * math.sqrt(3))
        assert group["betas"] == pytest.approx((0.9 ** 3, 0.999 ** 3))
    trainer.step(1)   # the position schedule is scaled too
    means = next(g for g in trainer.optimizer.param_groups if g["name"] == "means")
    assert means["lr"] == pytest.approx(trainer.position_lr(1) * math.sqrt(3))


def test_batch_gradients_and_statistics_equal_b_single_steps(scene, tmp_path):
    b = 3
    trainer = Trainer(config(b), scene, RunFolder(tmp_path, tensorboard=False))
    single = copy.deepcopy(trainer.model)
    views = [(trainer.next_camera(), trainer.background()) for _ in range(b)]
    loss, _, _, camera, outs = trainer.render_backward(views, 1)
    assert camera is views[0][0]
    trainer.strategy.post_backward_batch(1, trainer.model, trainer.optimizer, outs, grad_scale=b)

    strategy = DensifyStrategy(trainer.cfg.densify, trainer.extent)
    strategy.reset_stats(single.num_gaussians, single.device)
    sum_grads = {name: torch.zeros_like(p) for name, p in single.param_dict().items()}
    losses = []
    for cam, bg in views:
        for p in single.parameters():
            p.grad = None
        one = Trainer(config(1), scene, RunFolder(tmp_path / "one", tensorboard=False), model=single)
        out = one.render(cam, bg)
        view_loss, _ = gaussian_splatting_loss(out.image, cam.image, 0.2)
        strategy.pre_backward(out)
        view_loss.backward()
        strategy.add_stats(out, cam.width, cam.height)
        losses.append(float(view_loss.detach()))
        for name, p in single.param_dict().items():
            sum_grads[name] += p.grad
    assert float(loss) == pytest.approx(sum(losses) / b, rel=1e-6)
    torch.testing.assert_close(trainer.strategy.denom, strategy.denom, rtol=0, atol=0)
    torch.testing.assert_close(trainer.strategy.grad_accum, strategy.grad_accum, rtol=STAT_RTOL, atol=1e-12)
    torch.testing.assert_close(trainer.strategy.max_radii, strategy.max_radii, rtol=0, atol=0)
    assert trainer.strategy.denom.max() > 1   # some Gaussians were seen by several views of the batch
    for name, p in trainer.model.param_dict().items():
        torch.testing.assert_close(p.grad, sum_grads[name] / b, rtol=1e-5, atol=GRAD_ATOL)


def test_batched_training_runs_and_densifies(scene, tmp_path):
    trainer = Trainer(config(2), scene, RunFolder(tmp_path, tensorboard=False))
    trainer.train()
    assert trainer.iteration == 20 and trainer.model.num_gaussians != len(scene.points)
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
