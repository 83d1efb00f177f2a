"""Videos that browsers play: H.264 in MP4 (yuv420p), else VP9 in WebM, through imageio-ffmpeg.

imageio-ffmpeg's wheel carries a static ffmpeg build with libx264 and libvpx, so no system ffmpeg is
needed.  yuv420p (what browsers and phones decode) halves the chroma resolution, so both sides of a
frame must be even: ``even_size`` gives the size to render at.  The file is written under a temporary
name and renamed, so an interrupted write leaves no half video.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

log = logging.getLogger("gs_trainer")

# (suffix, ffmpeg codec, extra output parameters), in order of preference
CODECS = (
    (".mp4", "libx264", ["-preset", "medium", "-crf", "18", "-movflags", "+faststart"]),
    (".webm", "libvpx-vp9", ["-b:v", "0", "-crf", "32", "-row-mt", "1"]),
)


def even_size(width: int, height: int) -> tuple[int, int]:
    """The largest even size not above (width, height) (at least 2x2)."""
    return max(2, width - width % 2), max(2, height - height % 2)


def write_video(frames: Iterable[np.ndarray], stem: Path, fps: int = 30,
                codecs=CODECS) -> Optional[Path]:
    """Encode [H, W, 3] uint8 frames (even sides) to ``stem`` + .mp4 (H.264), or .webm (VP9) when the
    H.264 encoder fails.  Returns the written path, or None (with a warning) when no encoder works."""
    frames = list(frames)
    if not frames:
        return None
    h, w = frames[0].shape[:2]
    if h % 2 or w % 2:
        raise ValueError(f"write_video: frames must have even sides for yuv420p, got {w}x{h}")
    try:
        import imageio.v2 as imageio
    except ImportError as err:
        log.warning("no video written (%s): pip install imageio imageio-ffmpeg", err)
        return None
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    for suffix, codec, params in codecs:
        path = stem.with_suffix(suffix)
        tmp = path.with_name(f".{path.stem}.tmp{suffix}")
        try:
            writer = imageio.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, codec=codec,
                                        pixelformat="yuv420p", macro_block_size=1, output_params=params,
                                        ffmpeg_log_level="error")
            with writer:
                for frame in frames:
                    writer.append_data(np.ascontiguousarray(frame))
            os.replace(tmp, path)
            return path
        except Exception as err:   # an encoder missing from this ffmpeg build: try the next one
            log.warning("video: %s failed (%s)%s", codec, str(err).splitlines()[0] if str(err) else type(err).__name__,
                        "" if codec == codecs[-1][1] else "; trying the next codec")
            try:
                tmp.unlink()
            except OSError:
                pass
    return None


def read_video(path: Path) -> tuple[list[np.ndarray], dict]:
    """Decode every frame ([H, W, 3] uint8) and the stream's metadata (codec, fps, size)."""
    import imageio.v2 as imageio

    reader = imageio.get_reader(path, format="FFMPEG")
    try:
        meta = dict(reader.get_meta_data())
        frames = [np.asarray(f) for f in reader]
    finally:
        reader.close()
    return frames, meta
