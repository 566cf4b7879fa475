"""Headless rendering of the cell's cameras: colour, depth and segmentation.

Uses MuJoCo's offscreen renderer; set ``MUJOCO_GL=egl`` for headless machines (the
command line does this by default).
"""

from __future__ import annotations

import mujoco
import numpy as np


class CameraRenderer:
    """Renders named cameras of one model at a fixed image size.

    Args:
        model: the compiled model.
        width, height: image size in pixels.
    """

    def __init__(self, model: mujoco.MjModel, width: int, height: int) -> None:
        if (
            width < 8
            or height < 8
            or width > model.vis.global_.offwidth
            or height > model.vis.global_.offheight
        ):
            raise ValueError(
                f"image size {width}x{height} outside [8, {model.vis.global_.offwidth}]x"
                f"[8, {model.vis.global_.offheight}]"
            )
        self.width, self.height = width, height
        # max_geom bounds the scene buffer; the default (10000) makes segmentation renders ~20x slower.
        self._renderer = mujoco.Renderer(
            model, height=height, width=width, max_geom=max(500, 4 * model.ngeom)
        )
        self._model = model

    def rgb(self, data: mujoco.MjData, camera: str) -> np.ndarray:
        """Colour image, uint8 (H, W, 3)."""
        self._renderer.disable_depth_rendering()
        self._renderer.disable_segmentation_rendering()
        self._renderer.update_scene(data, camera)
        return self._renderer.render().copy()

    def depth(self, data: mujoco.MjData, camera: str) -> np.ndarray:
        """Depth along the optical axis in metres, float32 (H, W); 0 where nothing was hit."""
        self._renderer.disable_segmentation_rendering()
        self._renderer.enable_depth_rendering()
        self._renderer.update_scene(data, camera)
        depth = self._renderer.render().astype(np.float32)
        self._renderer.disable_depth_rendering()
        far = self._model.vis.map.zfar * self._model.stat.extent
        depth[depth >= 0.999 * far] = 0.0
        return depth

    def geom_ids(self, data: mujoco.MjData, camera: str) -> np.ndarray:
        """Geom id per pixel, int32 (H, W); -1 for background."""
        self._renderer.disable_depth_rendering()
        self._renderer.enable_segmentation_rendering()
        self._renderer.update_scene(data, camera)
        seg = self._renderer.render()
        self._renderer.disable_segmentation_rendering()
        ids = seg[..., 0].astype(np.int32)
        ids[seg[..., 1] != int(mujoco.mjtObj.mjOBJ_GEOM)] = -1  # int(): an enum compares per element
        return ids

    def close(self) -> None:
        self._renderer.close()
