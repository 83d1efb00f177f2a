"""The viewer live during training: ``gs-train --viewer``.

The trainer calls ``LiveViewer.on_step(trainer, iteration, loss)`` after every iteration.  With nobody
connected that is one attribute test (plus the pause flag), so training pays nothing measurable.  With a
browser connected, the render thread asks for a new model when it has caught up (``LiveSource.idle``);
the next ``on_step`` then copies the Gaussians' activated tensors (a snapshot, at most every
MIN_REFRESH_S) so the render thread never reads tensors that Adam or densification are changing.  The
loss and the Gaussian count go to the page every STATS_S; the page's button pauses and resumes training.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import torch

log = logging.getLogger("gs_trainer")

MIN_REFRESH_S = 0.25   # at most four model snapshots a second
STATS_S = 0.5


@dataclass
class Snapshot:
    """What the renderer reads of a GaussianModel, copied at one iteration."""

    means: torch.Tensor
    scales: torch.Tensor
    rotations: torch.Tensor
    opacities: torch.Tensor
    shs: torch.Tensor
    active_sh_degree: int
    num_gaussians: int
    iteration: int


@torch.no_grad()
def snapshot(model, iteration: int) -> Snapshot:
    return Snapshot(model.means.detach().clone(), model.scales.detach().clone(),
                    model.rotations.detach().clone(), model.opacities.detach().clone(),
                    model.shs.detach().clone(), int(model.active_sh_degree), int(model.num_gaussians),
                    iteration)


class LiveSource:
    """The newest snapshot, and whether the render thread wants a newer one."""

    def __init__(self, model, iteration: int = 0) -> None:
        self._lock = threading.Lock()
        self._snap = snapshot(model, iteration)
        self._version = 0
        self.wanted = False
        self._taken = time.monotonic()

    def get(self):
        with self._lock:
            return self._snap, self._version

    def idle(self) -> None:
        self.wanted = True

    def offer(self, model, iteration: int) -> None:
        """Training thread: take a snapshot if one is wanted and the last is old enough."""
        now = time.monotonic()
        if not self.wanted or now - self._taken < MIN_REFRESH_S:
            return
        snap = snapshot(model, iteration)
        with self._lock:
            self._snap, self._version = snap, self._version + 1
        self.wanted = False
        self._taken = now


class LiveViewer:
    def __init__(self, trainer, *, host: str = "127.0.0.1", port: int = 8080, max_resolution: int = 1024,
                 preview_resolution: int = 256) -> None:
        from .server import GaussianViewer

        self.total = trainer.cfg.optim.iterations
        self.source = LiveSource(trainer.model, trainer.iteration)
        r = trainer.cfg.run
        self.viewer = GaussianViewer(self.source, trainer.scene.train_cameras, trainer.scene.test_cameras,
                                     trainer.bg, host=host, port=port, max_resolution=max_resolution,
                                     preview_resolution=preview_resolution, atomics=r.atomics,
                                     balance_threshold=r.balance_threshold, title="gs-train (live)")
        self.paused = False
        self._resume = threading.Event()
        self._stats_t = 0.0
        self._stats_it = (time.monotonic(), trainer.iteration)
        gui = self.viewer.server.gui
        self.stats = gui.add_markdown("training: starting")
        self.button = gui.add_button("Pause training")
        self.button.on_click(lambda _event: self.toggle_pause())

    @property
    def url(self) -> str:
        return self.viewer.url

    def toggle_pause(self) -> None:
        self.paused = not self.paused
        if self.paused:
            self._resume.clear()
            self.button.label = "Resume training"
            log.info("training paused from the viewer (%s); resume there", self.url)
        else:
            self.button.label = "Pause training"
            self._resume.set()
            log.info("training resumed from the viewer")

    def on_step(self, trainer, iteration: int, loss: torch.Tensor) -> None:
        if not self.viewer.num_clients and not self.paused:
            return
        self._publish(trainer, iteration, loss)
        while self.paused:
            self._resume.wait(MIN_REFRESH_S)
            self._publish(trainer, iteration, loss)

    def _publish(self, trainer, iteration: int, loss: torch.Tensor) -> None:
        self.source.offer(trainer.model, iteration)
        now = time.monotonic()
        if now - self._stats_t < STATS_S:
            return
        t0, it0 = self._stats_it
        rate = (iteration - it0) / (now - t0) if now > t0 else 0.0
        self._stats_t, self._stats_it = now, (now, iteration)
        state = "paused" if self.paused else f"{rate:.1f} it/s"
        self.stats.content = (f"**iteration {iteration:,} / {self.total:,}** ({state})  \n"
                              f"loss {float(loss):.4f}, {trainer.model.num_gaussians:,} Gaussians")

    def close(self) -> None:
        self.paused = False
        self._resume.set()
        self.viewer.close()
