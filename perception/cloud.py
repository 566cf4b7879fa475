"""Point-cloud preprocessing: from a raw depth-derived cloud to fixed-size tool and object clouds.

Pipeline (``process_cloud``), all lengths in metres:

1. validate the input: points a float32/float64 array (N, 3), labels ``None`` or an integer array (N,);
2. drop non-finite rows;
3. apply ``transform`` (4x4 homogeneous matrix, input frame -> working frame);
4. crop to the axis-aligned workspace box ``[crop_min, crop_max]`` of the working frame;
5. voxel downsampling (open3d ``voxel_down_sample``), done separately for the tool, object and rest
   parts so that every kept point has an exact label and a voxel never mixes parts;
6. statistical outlier removal (open3d ``remove_statistical_outlier``) on the voxelized tool and
   object points (after the grid and without the unused rest: the neighbour search is then about
   ten times cheaper on a 320x240 cloud);
7. split into tool / object / rest: by segmentation label (``SEG_LABELS``) when labels are given,
   otherwise by the geometric boxes of the config (decided before step 5, on the cropped points);
8. farthest-point sampling (``fpsample``) of the tool and object parts to their fixed sizes; a part
   with fewer points than its size but at least its minimum is filled up by cycling its points in
   FPS order.

Bad input never raises: it gives ``ProcessedCloud(valid=False, reason=...)``. Only a ``config`` that
is not a ``CloudConfig`` raises (``TypeError``).

Determinism: the cropped points are sorted lexicographically (x, y, z, part) before any open3d or
fpsample call, and every part is sorted again before FPS, so the output depends only on the set of
input points (and labels), not on their order. All arithmetic before the sort is element-wise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import fpsample
import numpy as np
import open3d as o3d

from dexhier.vocabulary import SEG_LABELS

Vec3 = tuple[float, float, float]

COUNT_KEYS: tuple[str, ...] = ("input", "finite", "cropped", "inliers", "voxel", "tool", "object", "rest")
"""Keys of ``ProcessedCloud.counts``: number of points after each stage. "voxel" counts all parts
after the grid; "tool" and "object" count their parts after outlier removal, "rest" after the grid
(it is not outlier-filtered); "inliers" is tool + object + rest, so it can be below "voxel"."""

_TOOL, _OBJECT, _REST = 0, 1, 2  # internal part ids
_PART_NAMES = ("tool", "object", "rest")
_SMALL_FPS = 64  # below this many points, vanilla FPS (exact start) is as fast as the bucket variant


def _vec3(name: str, value) -> Vec3:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be 3 numbers, got {value!r}") from None
    if arr.shape != (3,) or not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be 3 finite numbers, got {value!r}")
    return (float(arr[0]), float(arr[1]), float(arr[2]))


def _is_int(value) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


@dataclass(frozen=True, kw_only=True)
class CloudConfig:
    """Parameters of ``process_cloud``. Boxes are axis-aligned in the working frame, in m.

    Attributes:
        crop_min, crop_max: workspace box; points outside it are dropped.
        tool_box_min, tool_box_max: without labels, cropped points inside this box are the tool.
        object_box_min, object_box_max: without labels, cropped points inside this box (and not in
            the tool box) are the object.
        voxel_size: voxel edge, m; 0 disables voxel downsampling.
        outlier_neighbors: neighbours of the statistical outlier removal; 0 disables it. It is also
            skipped when the voxelized tool and object parts have no more points than this.
        outlier_std_ratio: a point whose mean neighbour distance exceeds the cloud's mean by more
            than this many standard deviations is an outlier.
        n_tool_points, n_object_points: output sizes of the two parts.
        min_tool_points: fewer tool points after filtering makes the result invalid.
        min_object_points: fewer object points marks the object part missing (result still valid).
    """

    crop_min: Vec3
    crop_max: Vec3
    tool_box_min: Vec3
    tool_box_max: Vec3
    object_box_min: Vec3
    object_box_max: Vec3
    voxel_size: float = 0.0015
    outlier_neighbors: int = 12
    outlier_std_ratio: float = 2.5
    n_tool_points: int = 512
    n_object_points: int = 128
    min_tool_points: int = 32
    min_object_points: int = 8

    def __post_init__(self) -> None:
        for box in ("crop", "tool_box", "object_box"):
            lo = _vec3(f"{box}_min", getattr(self, f"{box}_min"))
            hi = _vec3(f"{box}_max", getattr(self, f"{box}_max"))
            if not all(a < b for a, b in zip(lo, hi, strict=True)):
                raise ValueError(f"{box}_min must be < {box}_max on every axis, got {lo} and {hi}")
            object.__setattr__(self, f"{box}_min", lo)
            object.__setattr__(self, f"{box}_max", hi)
        for name in ("voxel_size", "outlier_std_ratio"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
                raise ValueError(f"{name} must be a number, got {value!r}")
            object.__setattr__(self, name, float(value))
        if not (math.isfinite(self.voxel_size) and self.voxel_size >= 0.0):
            raise ValueError(f"voxel_size must be finite and >= 0 (0 disables it), got {self.voxel_size}")
        extent = max(b - a for a, b in zip(self.crop_min, self.crop_max, strict=True))
        if self.voxel_size > 0.0 and extent / self.voxel_size > 1e9:
            raise ValueError(f"voxel_size {self.voxel_size} m is too small for a crop box of {extent} m")
        if not (math.isfinite(self.outlier_std_ratio) and self.outlier_std_ratio > 0.0):
            raise ValueError(f"outlier_std_ratio must be finite and > 0, got {self.outlier_std_ratio}")
        if not (_is_int(self.outlier_neighbors) and self.outlier_neighbors >= 0):
            raise ValueError(
                f"outlier_neighbors must be an int >= 0 (0 disables it), got {self.outlier_neighbors!r}"
            )
        for name in ("n_tool_points", "n_object_points", "min_tool_points", "min_object_points"):
            value = getattr(self, name)
            if not (_is_int(value) and value >= 1):
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
            object.__setattr__(self, name, int(value))
        object.__setattr__(self, "outlier_neighbors", int(self.outlier_neighbors))


@dataclass(frozen=True, eq=False)
class ProcessedCloud:
    """Result of ``process_cloud``; points in the working frame, m.

    Attributes:
        valid: False when the input was unusable; then ``tool`` and ``object`` are empty (0, 3).
        reason: "" when valid, else a short human-readable reason.
        tool: float32 (n_tool_points, 3), or (0, 3) when invalid.
        object: float32 (n_object_points, 3), or (0, 3) when the object part is missing.
        object_valid: True when the object part had at least ``min_object_points`` points.
        counts: number of points after each stage, keys ``COUNT_KEYS`` (0 for stages not reached).
    """

    valid: bool
    reason: str
    tool: np.ndarray
    object: np.ndarray
    object_valid: bool
    counts: dict[str, int]


def _empty() -> np.ndarray:
    return np.zeros((0, 3), dtype=np.float32)


def _invalid(reason: str, counts: dict[str, int]) -> ProcessedCloud:
    return ProcessedCloud(False, reason, _empty(), _empty(), False, counts)


def _check_points(points) -> str:
    if not isinstance(points, np.ndarray):
        return f"points must be a numpy array of shape (N, 3), got {type(points).__name__}"
    is_float = points.dtype.kind == "f" and points.dtype.itemsize in (4, 8)
    if not is_float or points.ndim != 2 or points.shape[1] != 3:
        return f"points must be a float array of shape (N, 3), got {points.dtype} {points.shape}"
    return ""


def _check_labels(labels, n: int) -> str:
    if labels is None:
        return ""
    if not isinstance(labels, np.ndarray) or not np.issubdtype(labels.dtype, np.integer):
        kind = labels.dtype if isinstance(labels, np.ndarray) else type(labels).__name__
        return f"labels must be an integer numpy array of shape (N,), got {kind}"
    if labels.shape != (n,):
        return f"labels must have shape ({n},) like the points, got {labels.shape}"
    return ""


def _check_transform(transform) -> tuple[np.ndarray | None, str]:
    if transform is None:
        return None, ""
    try:
        T = np.asarray(transform, dtype=np.float64)
    except (TypeError, ValueError):
        return None, f"transform must be a numeric 4x4 matrix, got {type(transform).__name__}"
    if T.shape != (4, 4):
        return None, f"transform must be a 4x4 matrix, got shape {T.shape}"
    if not np.all(np.isfinite(T)):
        return None, "transform has non-finite entries"
    if not np.allclose(T[3], (0.0, 0.0, 0.0, 1.0), rtol=0.0, atol=1e-9):
        return None, f"transform's last row must be [0, 0, 0, 1], got {T[3].tolist()}"
    return T, ""


def _inside(cols: np.ndarray, lo: Vec3, hi: Vec3) -> np.ndarray:
    """Boolean (N,) mask of the columns (3, N) inside the closed box [lo, hi]; NaN is outside."""
    mask = cols[0] >= lo[0]
    mask &= cols[0] <= hi[0]
    for axis in (1, 2):
        mask &= cols[axis] >= lo[axis]
        mask &= cols[axis] <= hi[axis]
    return mask


def _sort_rows(xyz: np.ndarray, *extra: np.ndarray) -> np.ndarray:
    """Indices sorting the rows of ``xyz`` lexicographically by x, y, z, then the ``extra`` keys."""
    order = np.argsort(xyz[:, 0])
    x = xyz[order, 0]
    if np.all(x[1:] != x[:-1]):  # distinct x (the usual case): the order is already unique
        return order
    return np.lexsort((*extra[::-1], xyz[:, 2], xyz[:, 1], xyz[:, 0]))


def _remove_outliers(xyz: np.ndarray, neighbors: int, std_ratio: float) -> np.ndarray:
    """Indices (ascending) of the inliers of ``xyz`` (float64 (M, 3)), open3d statistical outlier removal.

    open3d keeps a point when its mean distance to its ``neighbors`` nearest points (itself included)
    is > 0 and < mean + std_ratio * std over the cloud; so exact duplicates are dropped too.
    """
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz))
    _, kept = pcd.remove_statistical_outlier(nb_neighbors=neighbors, std_ratio=std_ratio)
    return np.asarray(kept, dtype=np.intp)


def _voxel_down(xyz: np.ndarray, voxel_size: float) -> np.ndarray:
    """Voxel centroids of ``xyz`` (float64 (M, 3)) by open3d, float64 (K, 3); open3d anchors the grid
    at the minimum corner of ``xyz`` (minus half a voxel)."""
    if voxel_size <= 0.0 or len(xyz) == 0:
        return xyz
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz))
    return np.asarray(pcd.voxel_down_sample(voxel_size).points)


def _fps_order(points: np.ndarray, k: int) -> np.ndarray:
    """Indices of ``k`` farthest-point samples of ``points`` (float32 (n, 3), k <= n), in FPS order.

    Deterministic for a given array: vanilla FPS from row 0 for small clouds, otherwise the exact
    bucket FPS (QuickFPS) of fpsample with the fixed ``start_idx=0``. (fpsample 1.0.2's bucket variant
    reads the start index in its internal tree order, so its first sample is not necessarily row 0;
    it is still a fixed function of the array.)
    """
    n = len(points)
    if n < _SMALL_FPS:
        return fpsample.fps_sampling(points, k, start_idx=0).astype(np.intp)
    # Bucket height: README of fpsample suggests 3-5 for a few thousand points, 7 for ~50k.
    h = int(min(9, max(3, int(math.log2(n)) // 2 - 1)))
    return fpsample.bucket_fps_kdline_sampling(points, k, h=h, start_idx=0).astype(np.intp)


def _sample_part(points: np.ndarray, k: int) -> np.ndarray:
    """``k`` points (float32 (k, 3)) of the part ``points`` (float32 (n, 3), n >= 1, sorted rows).

    n >= k: farthest-point sampling; n < k: all points in FPS order, cycled to length k.
    """
    n = len(points)
    order = _fps_order(points, min(n, k))
    if n < k:
        order = order[np.arange(k) % n]
    return np.ascontiguousarray(points[order])


def process_cloud(
    points: np.ndarray,
    labels: np.ndarray | None = None,
    transform: np.ndarray | None = None,
    *,
    config: CloudConfig,
) -> ProcessedCloud:
    """Preprocess one cloud into fixed-size tool and object clouds (see the module docstring).

    Args:
        points: float32 or float64 (N, 3), m, in the input frame (e.g. a camera optical frame);
            non-finite rows (no depth return) are allowed and dropped.
        labels: optional integer (N,) segmentation labels, values from ``SEG_LABELS``.
        transform: optional float (4, 4) homogeneous transform from the input frame to the working
            frame (e.g. the camera pose in ``base_link``); None means the identity.
        config: the pipeline parameters (keyword only).

    Returns:
        ``ProcessedCloud``; ``valid`` False with a ``reason`` for any unusable input.

    Raises:
        TypeError: only when ``config`` is not a ``CloudConfig``.
    """
    if not isinstance(config, CloudConfig):
        raise TypeError(f"config must be a CloudConfig, got {type(config).__name__}")
    counts = dict.fromkeys(COUNT_KEYS, 0)

    reason = _check_points(points)
    if reason:
        return _invalid(reason, counts)
    counts["input"] = n = len(points)
    reason = _check_labels(labels, n)
    if reason:
        return _invalid(reason, counts)
    T, reason = _check_transform(transform)
    if reason:
        return _invalid(reason, counts)
    if n == 0:
        return _invalid("empty cloud", counts)

    # Finite rows, transform and crop on the columns (3, N): element-wise, so a point's coordinates
    # do not depend on its position in the array. NaN rows fail every crop comparison.
    cols = np.ascontiguousarray(points.T)
    finite = np.isfinite(cols).all(axis=0)
    counts["finite"] = int(np.count_nonzero(finite))
    if counts["finite"] == 0:
        return _invalid("all points non-finite", counts)
    if T is not None:
        R, t = T[:3, :3].astype(cols.dtype), T[:3, 3].astype(cols.dtype)
        out = np.empty_like(cols)
        with np.errstate(invalid="ignore", over="ignore"):  # inf * 0 in dropped rows
            for i in range(3):
                np.multiply(cols[0], R[i, 0], out=out[i])
                out[i] += cols[1] * R[i, 1]
                out[i] += cols[2] * R[i, 2]
                out[i] += t[i]
        cols = out
    keep = _inside(cols, config.crop_min, config.crop_max)
    keep &= finite
    idx = np.flatnonzero(keep)
    counts["cropped"] = len(idx)
    if len(idx) == 0:
        return _invalid("no finite points inside the crop box", counts)
    xyz = np.ascontiguousarray(cols[:, idx].T, dtype=np.float64)  # (M, 3) for open3d

    # Parts: by label, else by the geometric boxes (tool box first).
    if labels is not None:
        lab = labels[idx]
        part = np.full(len(idx), _REST, dtype=np.int8)
        part[lab == SEG_LABELS["tool"]] = _TOOL
        part[lab == SEG_LABELS["object"]] = _OBJECT
    else:
        c = xyz.T
        in_tool = _inside(c, config.tool_box_min, config.tool_box_max)
        in_object = _inside(c, config.object_box_min, config.object_box_max) & ~in_tool
        part = np.where(in_tool, _TOOL, np.where(in_object, _OBJECT, _REST)).astype(np.int8)

    # Canonical order for open3d and fpsample: the result depends on the set of points only.
    order = _sort_rows(xyz, part)
    xyz, part = xyz[order], part[order]

    # Voxel grid first, then outliers, and outliers only among the tool and object points (the
    # rest is not used downstream): the neighbour search then runs on about a tenth of the
    # cropped points of a 320x240 cloud.
    voxels = [_voxel_down(xyz[part == p], config.voxel_size) for p in range(len(_PART_NAMES))]
    counts["voxel"] = sum(len(v) for v in voxels)
    counts["rest"] = len(voxels[_REST])
    xyz = np.concatenate([voxels[_TOOL], voxels[_OBJECT]])
    part = np.concatenate(
        [np.full(len(voxels[_TOOL]), _TOOL, np.int8), np.full(len(voxels[_OBJECT]), _OBJECT, np.int8)]
    )
    order = _sort_rows(xyz, part)
    xyz, part = xyz[order], part[order]
    if config.outlier_neighbors > 0 and len(xyz) > config.outlier_neighbors:
        kept = _remove_outliers(xyz, config.outlier_neighbors, config.outlier_std_ratio)
        xyz, part = xyz[kept], part[kept]
    counts["inliers"] = len(xyz) + counts["rest"]

    parts = []
    for p in (_TOOL, _OBJECT):
        sel = xyz[part == p].astype(np.float32)
        counts[_PART_NAMES[p]] = len(sel)
        parts.append(sel)
    parts.append(voxels[_REST].astype(np.float32))

    tool_pts, object_pts = parts[_TOOL], parts[_OBJECT]
    if len(tool_pts) < config.min_tool_points:
        return _invalid(
            f"too few tool points after cropping and filtering: {len(tool_pts)} < {config.min_tool_points}",
            counts,
        )
    tool = _sample_part(tool_pts, config.n_tool_points)
    object_valid = len(object_pts) >= config.min_object_points
    obj = _sample_part(object_pts, config.n_object_points) if object_valid else _empty()
    return ProcessedCloud(True, "", tool, obj, object_valid, counts)
