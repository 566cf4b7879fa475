"""Pinhole camera geometry: intrinsics of MuJoCo cameras and depth-to-cloud conversion.

Conventions: images are (H, W) row-major, pixel (u, v) = (column, row); the optical frame
is the ROS / OpenCV one (x right, y down, z forward); depth is metres along the optical
axis, 0 where there is no return.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mujoco
import numpy as np

# MuJoCo cameras look along their -z with y up; the optical frame looks along +z with y down.
_MJ_FROM_OPTICAL = np.diag([1.0, -1.0, -1.0])


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics in pixels for an image of ``width`` x ``height``."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    @classmethod
    def from_fovy(cls, fovy_deg: float, width: int, height: int) -> Intrinsics:
        """Intrinsics of a camera with vertical field of view ``fovy_deg`` (degrees), square pixels."""
        f = 0.5 * height / math.tan(math.radians(fovy_deg) / 2.0)
        return cls(fx=f, fy=f, cx=(width - 1) / 2.0, cy=(height - 1) / 2.0, width=width, height=height)

    def matrix(self) -> np.ndarray:
        """The 3x3 camera matrix K."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])


def camera_intrinsics(model: mujoco.MjModel, camera: str, width: int, height: int) -> Intrinsics:
    """Intrinsics of a named MuJoCo camera rendered at ``width`` x ``height``."""
    return Intrinsics.from_fovy(float(model.cam_fovy[model.camera(camera).id]), width, height)


def camera_pose(data: mujoco.MjData, camera: str) -> tuple[np.ndarray, np.ndarray]:
    """Pose of the camera's *optical* frame in the world: (R (3, 3), t (3,))."""
    cam = data.camera(camera)
    rot = cam.xmat.reshape(3, 3) @ _MJ_FROM_OPTICAL
    return rot, cam.xpos.copy()


def camera_pose_matrix(data: mujoco.MjData, camera: str) -> np.ndarray:
    """The same pose as a (4, 4) homogeneous transform."""
    rot, pos = camera_pose(data, camera)
    pose = np.eye(4)
    pose[:3, :3], pose[:3, 3] = rot, pos
    return pose


def depth_to_points(
    depth: np.ndarray,
    intrinsics: Intrinsics,
    rotation: np.ndarray | None = None,
    translation: np.ndarray | None = None,
    labels: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Back-project a depth image to a point cloud.

    Args:
        depth: float (H, W) depth in metres; 0 or non-finite pixels are dropped.
        intrinsics: the camera's intrinsics (size must match ``depth``).
        rotation, translation: optical-frame pose in the target frame; identity if None.
        labels: optional (H, W) per-pixel labels, returned for the kept points.

    Returns:
        points float32 (N, 3) in the target frame, and labels (N,) or None.
    """
    if depth.ndim != 2 or depth.shape != (intrinsics.height, intrinsics.width):
        raise ValueError(
            f"depth shape {depth.shape} does not match intrinsics {intrinsics.height}x{intrinsics.width}"
        )
    v, u = np.nonzero(np.isfinite(depth) & (depth > 0))
    z = depth[v, u].astype(np.float64)
    pts = np.stack(
        [(u - intrinsics.cx) * z / intrinsics.fx, (v - intrinsics.cy) * z / intrinsics.fy, z], axis=1
    )
    if rotation is not None:
        pts = pts @ np.asarray(rotation).T
    if translation is not None:
        pts = pts + np.asarray(translation)
    return pts.astype(np.float32), (labels[v, u] if labels is not None else None)
