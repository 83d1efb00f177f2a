"""GaussianViewer: one viser server showing Gaussians rendered by the project's rasterizer.

Each browser gets its own camera.  A render thread answers camera changes progressively: while the
camera moves it renders at ``preview_resolution`` (longer side, pixels), and once the camera has been
still for STILL_S it renders at ``max_resolution`` (capped by the browser's canvas).  Frames go to the
browser as JPEG background images.  Training and test cameras are drawn as frustums; clicking one (or
picking it in the "view" list) moves the browser's camera there and shows the render of that view next
to its ground-truth image in the side panel.

The model comes from a *source* with ``get() -> (model, version)`` and ``idle()``: a fixed model for a
finished run (``StaticSource``), or the trainer's snapshots (``live.LiveSource``).  A new version is
rendered for every connected browser; ``idle()`` tells the source that all browsers are up to date.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from .camera import camera_from_viser, fit_resolution, scene_up, viser_pose

log = logging.getLogger("gs_trainer")

STILL_S = 0.2              # a camera unchanged for this long is "still": render at full resolution
POLL_S = 0.05              # the render thread's wake-up period while a browser is connected
IDLE_S = 5.0               # ... and while none is (a connection wakes it at once)
JPEG_QUALITY = 90
DEFAULT_MAX_RESOLUTION = 1024
DEFAULT_PREVIEW_RESOLUTION = 256
TRAIN_COLOR = (40, 110, 220)
TEST_COLOR = (220, 60, 40)
SELECTED_COLOR = (250, 200, 0)


class StaticSource:
    """A model that does not change (gs-view of a saved iteration)."""

    def __init__(self, model) -> None:
        self.model = model

    def get(self):
        return self.model, 0

    def idle(self) -> None:
        pass


@dataclass
class Frame:
    """The last frame sent to one browser (kept for tests and the frame-time figures)."""

    camera: object
    image: np.ndarray          # [H, W, 3] uint8
    full: bool
    key: tuple
    render_ms: float


@dataclass
class _ClientState:
    camera_version: int = 0
    last_move: float = 0.0
    preview_key: Optional[tuple] = None
    full_key: Optional[tuple] = None
    compare: Optional[tuple] = None          # (split, index) waiting to be rendered
    initialised: bool = False
    last_frame: Optional[Frame] = None
    stats: object = None                     # GUI markdown handle
    compare_image: object = None
    frame_times: list = field(default_factory=list)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """[3, H, W] float in [0, 1] -> [H, W, 3] uint8."""
    return (image.detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)


class GaussianViewer:
    def __init__(self, source, train_cameras, test_cameras, bg: torch.Tensor, *, host: str = "127.0.0.1",
                 port: int = 8080, max_resolution: int = DEFAULT_MAX_RESOLUTION,
                 preview_resolution: int = DEFAULT_PREVIEW_RESOLUTION, atomics: str = "distwar",
                 balance_threshold: int = 8, title: str = "distwar-gs") -> None:
        import viser

        self.source = source
        self.views = {"train": list(train_cameras), "test": list(test_cameras)}
        self.bg = bg
        self.max_resolution = int(max_resolution)
        self.preview_resolution = int(preview_resolution)
        self.atomics, self.balance_threshold = atomics, balance_threshold
        self._states: dict[int, _ClientState] = {}
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._stop = threading.Event()
        self.num_clients = 0
        self.frames_sent = 0

        self.server = viser.ViserServer(host=host, port=port, label=title, verbose=False)
        all_cams = self.views["train"] + self.views["test"]
        self.up = scene_up(all_cams) if all_cams else np.array([0.0, 0.0, 1.0])
        self.server.scene.set_up_direction(tuple(float(v) for v in self.up))
        self._add_frustums()
        self.server.on_client_connect(self._connect)
        self.server.on_client_disconnect(self._disconnect)
        self._thread = threading.Thread(target=self._loop, name="gs-viewer-render", daemon=True)
        self._thread.start()

    # -- where it listens ------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self.server.get_port()

    @property
    def url(self) -> str:
        host = self.server.get_host()
        shown = "127.0.0.1" if host in ("127.0.0.1", "localhost") else host
        if ":" in shown:
            shown = f"[{shown}]"
        return f"http://{shown}:{self.port}"

    def close(self) -> None:
        self._stop.set()
        with self._wake:
            self._wake.notify_all()
        self._thread.join(timeout=10)
        self.server.stop()

    # -- scene ------------------------------------------------------------------------------------
    def _add_frustums(self) -> None:
        cams = self.views["train"] + self.views["test"]
        if not cams:
            return
        centers = np.stack([c.camera_center_np for c in cams])
        spread = float(np.median(np.linalg.norm(centers - centers.mean(0), axis=1))) if len(cams) > 1 else 1.0
        scale = max(0.05 * spread, 1e-3)
        self.frustum_scale = scale
        for split, color in (("train", TRAIN_COLOR), ("test", TEST_COLOR)):
            for index, cam in enumerate(self.views[split]):
                wxyz, pos, fov = viser_pose(cam)
                handle = self.server.scene.add_camera_frustum(
                    f"/cameras/{split}/{index:04d}", fov=fov, aspect=cam.width / cam.height, scale=scale,
                    color=color, wxyz=wxyz, position=pos, thickness=0.15 * scale)
                handle.on_click(lambda event, s=split, i=index: self.select_view(event.client, s, i))

    def view_names(self) -> list[str]:
        return [f"{s} {i}: {c.image_name}" for s in ("train", "test") for i, c in enumerate(self.views[s])]

    # -- clients ----------------------------------------------------------------------------------
    def _connect(self, client) -> None:
        state = _ClientState()
        gui = client.gui
        state.stats = gui.add_markdown("waiting for the first frame")
        names = ["(free camera)"] + self.view_names()
        pick = gui.add_dropdown("view", tuple(names), initial_value=names[0])

        @pick.on_update
        def _(event) -> None:
            if pick.value == names[0]:
                return
            split, rest = pick.value.split(" ", 1)
            self.select_view(client, split, int(rest.split(":", 1)[0]))

        state.compare_image = gui.add_image(np.zeros((8, 16, 3), np.uint8), label="render | ground truth",
                                            format="jpeg", visible=False)
        with self._wake:
            self._states[client.client_id] = state
            self.num_clients = len(self._states)

        @client.camera.on_update
        def _(camera) -> None:
            self._moved(client)

    def _disconnect(self, client) -> None:
        with self._wake:
            self._states.pop(client.client_id, None)
            self.num_clients = len(self._states)

    def _moved(self, client) -> None:
        with self._wake:
            state = self._states.get(client.client_id)
            if state is None:
                return
            first = not state.initialised
            state.initialised = True
        if first and self.views["train"]:
            self.select_view(client, "train", 0, compare=False)   # start where the first photo was taken
            return
        with self._wake:
            state.camera_version += 1
            state.last_move = time.monotonic()
            self._wake.notify_all()

    def select_view(self, client, split: str, index: int, compare: bool = True) -> None:
        """Move ``client``'s camera to a training/test view and (``compare``) show it beside its photo."""
        cam = self.views[split][index]
        wxyz, pos, fov = viser_pose(cam)
        with client.atomic():
            client.camera.wxyz = wxyz
            client.camera.position = pos
            client.camera.fov = fov
        with self._wake:
            state = self._states.get(client.client_id)
            if state is not None:
                state.camera_version += 1
                state.last_move = time.monotonic()
                if compare:
                    state.compare = (split, index)
                self._wake.notify_all()

    # -- rendering --------------------------------------------------------------------------------
    @torch.no_grad()
    def render_camera(self, model, camera) -> np.ndarray:
        from ..renderer import render

        bg = self.bg.to(model.means.device)
        return to_uint8(render(model, camera, bg, atomics=self.atomics, balance_threshold=self.balance_threshold).image)

    def _next_job(self):
        model, version = self.source.get()
        now = time.monotonic()
        waiting = False
        with self._wake:
            for cid, st in self._states.items():
                if st.compare is not None:
                    job = ("compare", cid, st.compare)
                    st.compare = None
                    return model, job
                if st.camera_version == 0:
                    continue
                waiting = True
                key = (st.camera_version, version)
                if now - st.last_move >= STILL_S:
                    if st.full_key != key:
                        return model, ("full", cid, key)
                elif st.preview_key != key and st.full_key != key:
                    return model, ("preview", cid, key)
        if waiting:
            self.source.idle()
        return model, None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                model, job = self._next_job()
                if job is None:
                    with self._wake:   # nobody connected: sleep until a browser connects (or close)
                        self._wake.wait(POLL_S if self._states else IDLE_S)
                    continue
                kind, cid, arg = job
                client = self.server.get_clients().get(cid)
                if client is None:
                    continue
                if kind == "compare":
                    self._send_compare(model, client, *arg)
                else:
                    self._send_frame(model, client, kind == "full", arg)
            except Exception:   # a viewer error must never take training down; say it and go on
                log.exception("viewer: rendering a frame failed")
                time.sleep(0.5)

    def _send_frame(self, model, client, full: bool, key: tuple) -> None:
        cam = client.camera
        side = self.max_resolution if full else self.preview_resolution
        width, height = fit_resolution(cam.image_width, cam.image_height, side)
        camera = camera_from_viser(cam.wxyz, cam.position, cam.fov, width, height)
        start = time.perf_counter()
        image = self.render_camera(model, camera)
        ms = 1000.0 * (time.perf_counter() - start)
        client.scene.set_background_image(image, format="jpeg", jpeg_quality=JPEG_QUALITY)
        with self._wake:
            st = self._states.get(client.client_id)
            if st is None:
                return
            if full:
                st.full_key = key
            else:
                st.preview_key = key
            st.last_frame = Frame(camera, image, full, key, ms)
            st.frame_times.append((full, width, height, ms))
            self.frames_sent += 1
            stats = st.stats
        n = getattr(model, "num_gaussians", int(model.means.shape[0]))
        stats.content = (f"{'full' if full else 'preview'} {width}x{height}: {ms:.0f} ms, "
                         f"{n:,} Gaussians")

    def _send_compare(self, model, client, split: str, index: int) -> None:
        from ..metrics import image_metrics

        view = self.views[split][index]
        width, height = fit_resolution(view.width, view.height, self.max_resolution)
        camera = view if (width, height) == (view.width, view.height) else view.scaled(width, height)
        image = self.render_camera(model, camera)
        panel = image
        text = f"{split} view {index} ({view.image_name}): no ground-truth image loaded"
        if view.image is not None:
            gt = to_uint8(view.image if (width, height) == (view.width, view.height) else
                          torch.nn.functional.interpolate(view.image[None], (height, width), mode="area")[0])
            psnr = image_metrics(torch.from_numpy(image).permute(2, 0, 1).float() / 255,
                                 torch.from_numpy(gt).permute(2, 0, 1).float() / 255)["PSNR"]
            panel = np.concatenate([image, gt], axis=1)
            text = f"{split} view {index} ({view.image_name}): render | ground truth, PSNR {float(psnr):.2f} dB"
        with self._wake:
            st = self._states.get(client.client_id)
        if st is None:
            return
        st.compare_image.image = panel
        st.compare_image.label = text
        st.compare_image.visible = True

    # -- for tests and benchmarks -----------------------------------------------------------------
    def last_frame(self, client_id: Optional[int] = None) -> Optional[Frame]:
        with self._wake:
            if client_id is None:
                client_id = next(iter(self._states), None)
            st = self._states.get(client_id)
            return None if st is None else st.last_frame

    def frame_times(self) -> list:
        with self._wake:
            return [t for st in self._states.values() for t in st.frame_times]
