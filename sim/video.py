"""MP4 video writing for rollouts (imageio with the ffmpeg binary shipped by imageio-ffmpeg)."""

from __future__ import annotations

from pathlib import Path

import imageio.v2 as imageio
import numpy as np


class VideoWriter:
    """Write uint8 (H, W, 3) frames to an H.264 MP4 file at ``fps`` frames per second."""

    def __init__(self, path: str | Path, fps: float = 20.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = imageio.get_writer(
            str(self.path), fps=fps, codec="libx264", quality=7, macro_block_size=8, ffmpeg_log_level="error"
        )
        self.frames = 0

    def append(self, frame: np.ndarray) -> None:
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"video frames must be uint8 (H, W, 3), got {frame.dtype} {frame.shape}")
        self._writer.append_data(frame)
        self.frames += 1

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
