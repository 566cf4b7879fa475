"""Label-free perception of the tool and the object from one RGB-D cloud and the joint states.

What a real camera gives: points with no segmentation labels. The pipeline (``LabelFreePerception``):

1. drop non-finite points, move them to ``base_link`` (``transform``) and crop the workspace box;
2. fit the table plane (open3d ``segment_plane`` on a subsample) and drop points within
   ``plane_margin`` of it;
3. mask the arm, the hand, the tool's base and the fixtures by forward kinematics of the measured
   joints in the configured cell (``CellGeometry``), with a ``robot_margin``;
4. fit the tweezer's half-opening ``theta`` to the remaining points near the tool: the arms' geoms
   at ``theta`` minimise a truncated squared distance (coarse grid, then a finer one); the tip gap
   follows from the tool's law ``g = g0 + 2 L sin(theta)``; points within ``tool_margin`` of the
   fitted arms are the tool's;
5. cluster what is left (open3d DBSCAN) and take the cluster nearest the tips as the object, or,
   given ``prior`` = (the last estimate's centre, a radius), the cluster nearest it within the radius;
6. measure the object: its top from the highest points, centre (x, y) from the top cap (the part
   of a convex object every elevated camera sees), height above the plane, yaw of the top cap's
   minimum-area rectangle, and width across the object's faces from its points' extent about the
   centre (objects are centrally symmetric; the half the camera sees gives the whole).

Bad input never raises: it gives ``valid=False`` with a reason. Documented choices: with two
objects, the one nearest the tips (or the prior) is taken (``clusters`` counts the candidates); an
object touching the tool keeps the points farther than ``tool_margin`` from the fitted arms, and a
cluster that mostly hugs the arms outside the gap between the tip pads is tool, not object.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import fpsample
import numpy as np
import open3d as o3d

from perception.cell_geometry import CellGeometry
from sim.camera import Intrinsics
from sim.cell import CellConfig

Vec3 = tuple[float, float, float]


@dataclass(frozen=True, kw_only=True)
class PerceptionConfig:
    """Parameters of ``LabelFreePerception``; lengths in m.

    Attributes:
        crop_min, crop_max: workspace box in ``base_link``.
        plane_margin: points this close to the fitted table plane are the table.
        plane_samples: points subsampled for the RANSAC plane fit.
        robot_margin: points this close to the robot, tool base or fixtures are theirs.
        tool_margin: points this close to the fitted tool arms are the tool's.
        fit_truncation: the tool fit's squared distances are truncated at this distance.
        theta_steps: coarse grid size of the tool fit (a fine grid of the same size follows).
        fit_points: the tool fit uses at most this many points (a seeded random subset).
        cluster_eps, cluster_min_points: DBSCAN parameters of the object clustering.
        min_tool_points: fewer tool points and the tool state is invalid.
        min_object_points: fewer object points and no object is reported.
        max_object_extent: a cluster wider than this is not an object.
        cap_depth: points within this of the object's top form its top cap.
        object_region: the object must lie in this (x, y) box (the task's table patch plus margin
            and where a carried object goes); outside it, ``object_valid`` is False.
        n_points: size of each farthest-point-sampled point set (tool, object) for the policy.
        tool_camera_stride: ``perceive_depth`` takes every this-many pixels of the tool camera.
    """

    crop_min: Vec3 = (0.20, -0.25, -0.02)
    crop_max: Vec3 = (0.80, 0.45, 0.40)
    plane_margin: float = 0.003
    plane_samples: int = 4000
    robot_margin: float = 0.004
    tool_margin: float = 0.0035
    fit_truncation: float = 0.003
    theta_steps: int = 16
    fit_points: int = 200
    cluster_eps: float = 0.005
    cluster_min_points: int = 6
    min_tool_points: int = 30
    min_object_points: int = 12
    max_object_extent: float = 0.09
    cap_depth: float = 0.001
    object_region: tuple[float, float, float, float] = (0.30, 0.70, -0.20, 0.42)
    n_points: int = 64
    tool_camera_stride: int = 2

    def __post_init__(self) -> None:
        lo, hi = np.asarray(self.crop_min, float), np.asarray(self.crop_max, float)
        if lo.shape != (3,) or hi.shape != (3,) or not np.all(lo < hi):
            raise ValueError(
                f"crop_min must be < crop_max on every axis, got {self.crop_min}, {self.crop_max}"
            )
        for name in ("plane_margin", "robot_margin", "tool_margin", "fit_truncation", "cluster_eps",
                     "max_object_extent", "cap_depth"):  # fmt: skip
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive length in m, got {v!r}")
        for name in ("plane_samples", "theta_steps", "cluster_min_points", "min_tool_points",
                     "min_object_points", "n_points", "fit_points"):  # fmt: skip
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 3):
                raise ValueError(f"{name} must be an int >= 3, got {v!r}")
        if not (isinstance(self.tool_camera_stride, int) and 1 <= self.tool_camera_stride <= 8):
            raise ValueError(f"tool_camera_stride must be an int in [1, 8], got {self.tool_camera_stride!r}")


@dataclass(frozen=True, eq=False)
class Perceived:
    """One frame's estimate. Lengths in m, angles in rad, points in ``base_link``.

    ``valid`` covers the tool state (tip gap, opening angle); ``object_valid`` the object fields,
    which are NaN otherwise. ``reason`` / ``object_reason`` say why not.
    """

    valid: bool
    reason: str
    tip_gap: float = math.nan
    opening_angle: float = math.nan
    tip_center: np.ndarray = field(default_factory=lambda: np.full(3, np.nan))
    object_valid: bool = False
    object_reason: str = "no tool state"
    object_center: np.ndarray = field(default_factory=lambda: np.full(3, np.nan))
    object_width: float = math.nan
    object_height: float = math.nan
    object_yaw: float = math.nan
    tool_points: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.float32))
    object_points: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.float32))
    clusters: int = 0
    counts: dict[str, int] = field(default_factory=dict)


def farthest_points(points: np.ndarray, n: int) -> np.ndarray:
    """``n`` points of ``points`` (M, 3) by farthest-point sampling (fpsample, deterministic start
    at index 0 of the input order); fewer points are cycled. float32 (n, 3); zeros when empty."""
    if len(points) == 0:
        return np.zeros((n, 3), np.float32)
    pts = np.ascontiguousarray(points, dtype=np.float32)
    k = min(n, len(pts))
    idx = fpsample.fps_sampling(pts, k, start_idx=0) if k > 1 else np.zeros(1, np.int64)
    return pts[np.resize(np.asarray(idx, np.int64), n)]


def backproject(depth: np.ndarray, intr: Intrinsics, pose: np.ndarray, stride: int = 1) -> np.ndarray:
    """float32 (N, 3) points in the pose's frame from a depth image (float (H, W) m, 0 or
    non-finite = no return) taken every ``stride`` pixels; pose is the optical frame's (4, 4)."""
    if depth.shape != (intr.height, intr.width):
        raise ValueError(
            f"depth shape {depth.shape} does not match the intrinsics {intr.height}x{intr.width}"
        )
    d = np.asarray(depth, np.float32)[::stride, ::stride]
    v, u = np.nonzero(np.isfinite(d) & (d > 0))
    z = d[v, u]
    u, v = u * stride, v * stride
    cam = np.empty((len(z), 3), np.float32)
    cam[:, 0] = (u - intr.cx) * z / intr.fx
    cam[:, 1] = (v - intr.cy) * z / intr.fy
    cam[:, 2] = z
    return cam @ pose[:3, :3].T.astype(np.float32) + pose[:3, 3].astype(np.float32)


def _check_cloud(points, name: str) -> str:
    if not isinstance(points, np.ndarray) or points.ndim != 2 or points.shape[1:] != (3,):
        return f"{name} must be a float array of shape (N, 3)"
    if points.dtype.kind != "f":
        return f"{name} must be float, got {points.dtype}"
    return ""


def _min_area_yaw(xy: np.ndarray, steps: int = 30) -> float:
    """Yaw in [-pi/4, pi/4) of the minimum-area rectangle around ``xy`` (K, 2)."""
    best, best_area = 0.0, math.inf
    for a in np.linspace(-math.pi / 4, math.pi / 4, steps, endpoint=False):
        c, s = math.cos(a), math.sin(a)
        u = xy @ np.array([[c, -s], [s, c]])
        area = float(np.ptp(u[:, 0]) * np.ptp(u[:, 1]))
        if area < best_area:
            best, best_area = float(a), area
    return best


class LabelFreePerception:
    """Tool state and object from an unlabelled cloud plus joint states, in a configured cell.

    Lifecycle: build once per cell; call :meth:`perceive` per frame. Not thread-safe.
    """

    def __init__(self, cell: CellConfig | None = None, config: PerceptionConfig | None = None) -> None:
        self.config = config or PerceptionConfig()
        self.geometry = CellGeometry(cell)
        self.tool = self.geometry.cell.tool
        self._rng = np.random.default_rng(0)
        self._rays: dict = {}  # (intrinsics, stride) -> per-pixel ray slopes, cached

    def perceive_depth(
        self,
        depths: Mapping[str, np.ndarray],
        intrinsics: Mapping[str, Intrinsics],
        joint_names: Sequence[str],
        joint_positions: Sequence[float],
        tool_camera: str | None = "wrist",
        prior: np.ndarray | None = None,
    ) -> Perceived:
        """Estimate from depth images (camera name -> float (H, W) m, 0 = no return) of the cell's
        cameras in ``base_link``: a fixed camera by its calibrated pose, a hand camera by forward
        kinematics of the measured joints. ``tool_camera``'s cloud (if given and present) is used
        for the tool's opening, the others for the object (and the tool mask)."""
        cfg, counts = self.config, {}
        try:
            self.geometry.set_joints(joint_names, joint_positions)
            views = []
            for cam, depth in depths.items():
                depth = np.asarray(depth)
                if depth.ndim != 2 or depth.shape != (intrinsics[cam].height, intrinsics[cam].width):
                    raise ValueError(f"{cam} depth shape {depth.shape} does not match its intrinsics")
                views.append((cam, depth, intrinsics[cam], self.geometry.camera_pose(cam)))
        except (ValueError, TypeError, KeyError) as err:
            return Perceived(False, f"unusable input: {err}")
        tool_view = [v for v in views if v[0] == tool_camera and len(views) > 1]
        main = [v for v in views if v not in tool_view]
        # The table plane from a sparse grid of the object cameras' pixels, then only the pixels
        # above it are back-projected (most of a workspace camera's image is table).
        sample = self._crop(np.concatenate([backproject(d, k, pose, 4) for _, d, k, pose in main]))
        counts["cropped"] = len(sample)
        plane = self._fit_plane(sample) if len(sample) >= 3 * cfg.min_tool_points else None
        if plane is None:
            return Perceived(False, "no table plane in the cloud", counts=counts)
        pts = self._crop(np.concatenate([self._above(d, k, pose, plane, 1) for _, d, k, pose in main]))
        tool_cloud = None
        if tool_view:
            _, d, k, pose = tool_view[0]
            tool_cloud = self._crop(self._above(d, k, pose, plane, cfg.tool_camera_stride))
        return self._segment(pts, plane, tool_cloud, counts, prior)

    def _above(self, depth: np.ndarray, intr: Intrinsics, pose: np.ndarray, plane: np.ndarray, stride: int):
        """float32 (N, 3) base-frame points of the pixels (every ``stride``) above the table plane
        by more than ``plane_margin``; the plane test runs per pixel before any back-projection."""
        key = (intr, stride)
        rays = self._rays.get(key)
        if rays is None:
            v, u = np.mgrid[0 : intr.height : stride, 0 : intr.width : stride].astype(np.float32)
            rays = self._rays[key] = ((u - intr.cx) / intr.fx, (v - intr.cy) / intr.fy)
        rx, ry = rays
        d = np.asarray(depth, np.float32)[::stride, ::stride]
        rot, t = pose[:3, :3], pose[:3, 3]
        n_cam = rot.T @ plane[:3]  # the plane in the optical frame: n_cam . p + d_cam = height
        d_cam = float(plane[:3] @ t + plane[3])
        with np.errstate(invalid="ignore"):
            height = d * (n_cam[0] * rx + n_cam[1] * ry + n_cam[2]) + d_cam
            keep = np.isfinite(d) & (d > 0) & (height > self.config.plane_margin)
        v, u = np.nonzero(keep)
        z = d[v, u]
        cam = np.stack([rx[v, u] * z, ry[v, u] * z, z], axis=1)
        return cam @ rot.T.astype(np.float32) + t.astype(np.float32)

    def perceive(
        self,
        points: np.ndarray,
        joint_names: Sequence[str],
        joint_positions: Sequence[float],
        transform: np.ndarray | None = None,
        tool_cloud: np.ndarray | None = None,
        prior: np.ndarray | None = None,
    ) -> Perceived:
        """Estimate from ``points`` (N, 3) float (in ``base_link``, or in a camera frame with the
        camera's (4, 4) pose ``transform``) and the measured joints (matched by name).
        ``tool_cloud`` (M, 3) in ``base_link``, from a camera that sees the tool closely, is used for
        the tool's opening instead of ``points``."""
        cfg, counts = self.config, {}
        why = _check_cloud(points, "points") or (
            tool_cloud is not None and _check_cloud(tool_cloud, "tool_cloud")
        )
        if why:
            return Perceived(False, why)
        try:
            self.geometry.set_joints(joint_names, joint_positions)
        except (ValueError, TypeError) as err:
            return Perceived(False, f"joint states unusable: {err}")
        if transform is not None:
            T = np.asarray(transform, dtype=np.float64)
            if T.shape != (4, 4) or not np.all(np.isfinite(T)):
                return Perceived(False, "transform must be a finite (4, 4) matrix", counts=counts)
            points = points @ T[:3, :3].T + T[:3, 3]
        pts = self._crop(points)
        counts["cropped"] = len(pts)
        if len(pts) < 3 * cfg.min_tool_points:
            return Perceived(False, f"only {len(pts)} points in the workspace", counts=counts)
        plane = self._fit_plane(pts)
        if plane is None:
            return Perceived(False, "no table plane in the cloud", counts=counts)
        tool_cloud = None if tool_cloud is None else self._crop(tool_cloud)
        return self._segment(pts, plane, tool_cloud, counts, prior)

    def _segment(self, pts, plane, tool_cloud, counts, prior=None) -> Perceived:
        """Robot mask, tool fit and object from cropped base-frame points and the table plane."""
        cfg = self.config
        pts, height = self._clean(pts, plane)
        counts["unmasked"] = len(pts)
        if tool_cloud is not None:
            fit_pts = tool_cloud
            reach = self.tool.arm_length + 0.03
            fit_pts = fit_pts[np.linalg.norm(fit_pts - self.geometry.mount_pose()[:3, 3], axis=1) <= reach]
            fit_pts, _ = self._clean(fit_pts, plane)
            theta, fit_mask = self._fit_tool(fit_pts)
            tool_pts = fit_pts[fit_mask]
            # A pinched object lies between the tip pads: those points stay object candidates.
            tool_mask = (
                self.geometry.distance(pts, self.geometry.tool_arm_geoms) <= cfg.tool_margin
            ) & ~self._between_tips(pts)
        else:
            theta, tool_mask = self._fit_tool(pts)
            tool_pts = pts[tool_mask]
        counts["tool"] = len(tool_pts)
        tips = self.geometry.tip_center()
        if counts["tool"] >= cfg.min_tool_points:
            base = {
                "valid": True,
                "reason": "",
                "tip_gap": self.tool.tip_gap(theta),
                "opening_angle": theta,
                "tip_center": tips,
                "tool_points": farthest_points(tool_pts, cfg.n_points),
            }
        else:  # the tool is out of view or hidden; the object may still be seen
            base = {"valid": False, "reason": f"tool not found ({counts['tool']} points near the arms)"}
        base["counts"] = counts
        rest, rest_h = pts[~tool_mask], height[~tool_mask]
        obj, clusters, why = self._object_cluster(rest, tips, prior)
        if obj is None:
            return Perceived(**base, object_reason=why, clusters=clusters)
        return self._measure_object(rest[obj], rest_h[obj], plane, base, clusters)

    def _crop(self, points: np.ndarray) -> np.ndarray:
        """float64 (K, 3): the points inside the workspace box; NaN and inf fail every comparison,
        so non-finite points go too."""
        lo, hi = self.config.crop_min, self.config.crop_max
        inside = (points[:, 0] >= lo[0]) & (points[:, 0] <= hi[0])
        for axis in (1, 2):
            inside &= (points[:, axis] >= lo[axis]) & (points[:, axis] <= hi[axis])
        return points[inside].astype(np.float64)

    def _clean(self, pts: np.ndarray, plane: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Points above the table and away from the robot, tool base and fixtures, with their
        heights above the plane (m)."""
        cfg = self.config
        height = pts @ plane[:3] + plane[3]
        up = height > cfg.plane_margin
        pts, height = pts[up], height[up]
        keep = ~self.geometry.near_geoms(pts, self.geometry.static_geoms, cfg.robot_margin)
        return pts[keep], height[keep]

    # ----------------------------------------------------------------- stages
    def _fit_plane(self, pts: np.ndarray) -> np.ndarray | None:
        """(4,) unit-normal plane (n, d) with n pointing up, or None."""
        cfg = self.config
        sample = (
            pts
            if len(pts) <= cfg.plane_samples
            else pts[self._rng.choice(len(pts), cfg.plane_samples, False)]
        )
        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(sample))
        try:
            model, inliers = pcd.segment_plane(distance_threshold=0.0015, ransac_n=3, num_iterations=80)
        except RuntimeError:
            return None
        plane = np.asarray(model, dtype=np.float64)
        norm = np.linalg.norm(plane[:3])
        if len(inliers) < 0.2 * len(sample) or norm == 0 or abs(plane[2]) / norm < 0.9:
            return None  # no dominant, roughly horizontal plane: not a table
        plane /= norm
        return plane if plane[2] > 0 else -plane

    def _fit_tool(self, pts: np.ndarray) -> tuple[float, np.ndarray]:
        cfg, geo = self.config, self.geometry
        lo, hi = geo.theta_range
        # Only points within reach of the arms take part (a sphere around the mount).
        mount = geo.mount_pose()[:3, 3]
        near = np.linalg.norm(pts - mount, axis=1) <= self.tool.arm_length + 0.03
        cand = pts[near]
        if len(cand) < cfg.min_tool_points:
            geo.set_theta((lo + hi) / 2)
            return (lo + hi) / 2, np.zeros(len(pts), bool)
        sample = (
            cand if len(cand) <= cfg.fit_points else cand[self._rng.choice(len(cand), cfg.fit_points, False)]
        )
        trunc = cfg.fit_truncation**2

        def best(thetas: np.ndarray, per_arm: bool = False):
            d = geo.tool_arm_distance_grid(sample, thetas, per_arm=per_arm)
            return thetas[np.argmin(np.minimum(d**2, trunc).sum(-1), axis=-1)]

        grid = np.linspace(lo, hi, cfg.theta_steps)
        step = grid[1] - grid[0]
        t0 = float(best(grid))
        t1 = float(best(np.linspace(max(lo, t0 - step), min(hi, t0 + step), cfg.theta_steps)))
        # Each arm on its own near the symmetric fit: the tool sits a few mm off its nominal pose in
        # the hand (the weld is compliant), which a shared angle would absorb as a wrong opening;
        # a shift along the pinch axis opens one arm as much as it closes the other.
        theta_a, theta_b = best(
            np.linspace(max(lo, t1 - 2 * step), min(hi, t1 + 2 * step), cfg.theta_steps), True
        )
        geo.set_theta(float(theta_a), float(theta_b))
        theta = float(np.arcsin((np.sin(theta_a) + np.sin(theta_b)) / 2))
        mask = np.zeros(len(pts), bool)
        mask[near] = geo.distance(cand, geo.tool_arm_geoms) <= cfg.tool_margin
        return theta, mask

    def _between_tips(self, pts: np.ndarray) -> np.ndarray:
        """Boolean (N,): points in the gap between the tip pads (inside their inner faces, within
        2 cm of the tips along the tool), at the tool's current fitted pose."""
        geo = self.geometry
        origin, axes = geo.data.xpos[geo._base_body], geo.data.xmat[geo._base_body].reshape(3, 3)
        tip_y = [(geo.data.site_xpos[s] - origin) @ axes[:, 1] for s in geo.tip_sites]
        mid_y, half_gap = (tip_y[0] + tip_y[1]) / 2, abs(tip_y[0] - tip_y[1]) / 2
        local = (pts - origin) @ axes
        return (np.abs(local[:, 1] - mid_y) < half_gap - 0.0005) & (local[:, 2] > self.tool.arm_length - 0.02)

    def _object_cluster(
        self, pts: np.ndarray, tips: np.ndarray, prior=None
    ) -> tuple[np.ndarray | None, int, str]:
        cfg = self.config
        if len(pts) < cfg.min_object_points:
            return None, 0, f"no object: {len(pts)} unexplained points"
        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts))
        labels = np.asarray(pcd.cluster_dbscan(eps=cfg.cluster_eps, min_points=cfg.cluster_min_points))
        best, best_d, n = None, math.inf, 0
        geo = self.geometry
        # The tool's frame (its arms open along y, hang along z) and its tip pads' inner faces.
        for lab in range(labels.max() + 1 if len(labels) else 0):
            idx = np.nonzero(labels == lab)[0]
            if len(idx) < cfg.min_object_points or np.ptp(pts[idx], axis=0).max() > cfg.max_object_extent:
                continue
            # Leftovers of the tool's surface (the tool sits a few mm off its nominal pose in the
            # hand) hug its arms; a pinched object's points lie between the tip pads instead.
            between = self._between_tips(pts[idx])
            hugging = geo.distance(pts[idx], geo.tool_arm_geoms) <= 2 * cfg.tool_margin
            if np.mean(hugging & ~between) > 0.5:
                continue
            n += 1
            d = float(np.linalg.norm(pts[idx].mean(0) - (tips if prior is None else prior[0])))
            if prior is not None and d > prior[1]:
                continue
            if d < best_d:
                best, best_d = idx, d
        if best is None:
            near = "near the tips" if prior is None else f"within {prior[1]:.3f} m of the last estimate"
            return None, n, f"no object-sized cluster {near}"
        return best, n, ""

    def _measure_object(self, pts, height, plane, base: dict, clusters: int) -> Perceived:  # noqa: PLR0914
        cfg = self.config
        top = float(height.max())
        cap = pts[height >= top - cfg.cap_depth]
        centre_xy = cap[:, :2].mean(0)
        # Resting on the table, the object spans from the plane to its top; lifted, from its
        # lowest visible point (the tips may hide its bottom: a lower bound on the height).
        bottom = float(height.min())
        bottom = 0.0 if bottom <= 2.5 * cfg.plane_margin else bottom
        size_z = top - bottom
        n, d = plane[:3], plane[3]
        foot = np.array([*centre_xy, -(d + n[0] * centre_xy[0] + n[1] * centre_xy[1]) / n[2]])
        centre = foot + n * (bottom + size_z / 2)
        yaw = _min_area_yaw(cap[:, :2] - centre_xy) if len(cap) >= 4 else 0.0
        c, s = math.cos(yaw), math.sin(yaw)
        rel = pts[:, :2] - centre_xy
        # Each axis' extent about the centre: the visible side's extreme mirrors the hidden one.
        # The larger of the two, since tips pinching the object hide its ends on one axis.
        half = [np.abs(rel @ np.array(axis)).max() for axis in ((c, s), (-s, c))]
        width = 2.0 * float(max(half))
        x, y = centre[0], centre[1]
        r = cfg.object_region
        ok = r[0] <= x <= r[1] and r[2] <= y <= r[3]
        return Perceived(
            **base,
            object_valid=ok,
            object_reason="" if ok else f"object at ({x:.3f}, {y:.3f}) m is outside the workspace",
            object_center=centre,
            object_width=width,
            object_height=size_z,
            object_yaw=yaw,
            object_points=farthest_points(pts, cfg.n_points),
            clusters=clusters,
        )
