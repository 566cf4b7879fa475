"""Conversion between numpy point arrays and ``sensor_msgs/PointCloud2``-shaped messages.

No ROS import here: messages are read by duck typing (attributes ``height``, ``width``, ``fields``
with ``name``, ``offset``, ``datatype``, ``count``, ``is_bigendian``, ``point_step``, ``row_step``,
``data``, ``is_dense``; a mapping with these keys works too), and written either as a plain dict
of fields, a ``types.SimpleNamespace`` or, when the caller passes the ROS classes, a real message.

Written clouds are unorganized (height 1), little endian, with fields x, y, z (FLOAT32, m) at
offsets 0, 4, 8 and, when labels are given, ``label`` (INT32, holds any segmentation label value)
at offset 12; point_step is 12 without labels and 16 with them.
"""

from __future__ import annotations

import array
import types
from collections.abc import Mapping

import numpy as np

# sensor_msgs/PointField datatype constants.
INT8 = 1
UINT8 = 2
INT16 = 3
UINT16 = 4
INT32 = 5
UINT32 = 6
FLOAT32 = 7
FLOAT64 = 8

_NUMPY_TYPES: dict[int, str] = {
    INT8: "i1",
    UINT8: "u1",
    INT16: "i2",
    UINT16: "u2",
    INT32: "i4",
    UINT32: "u4",
    FLOAT32: "f4",
    FLOAT64: "f8",
}
_FLOAT_TYPES = (FLOAT32, FLOAT64)
_INT_TYPES = (INT8, UINT8, INT16, UINT16, INT32, UINT32)
LABEL_FIELD = "label"


def _get(obj, name: str):
    """Attribute ``name`` of a message object, or item ``name`` of a mapping."""
    if isinstance(obj, Mapping):
        if name not in obj:
            raise ValueError(f"PointCloud2 message has no {name!r}")
        return obj[name]
    if not hasattr(obj, name):
        raise ValueError(f"PointCloud2 message has no {name!r}")
    return getattr(obj, name)


def points_to_cloud_fields(points: np.ndarray, labels: np.ndarray | None = None) -> dict:
    """The PointCloud2 fields of an unorganized cloud, as a dict (no header).

    Args:
        points: float (N, 3), m; stored as FLOAT32 (float64 input is rounded). NaN/inf allowed.
        labels: optional integer (N,); stored as INT32 in a ``label`` field.

    Returns:
        dict with ``height`` 1, ``width`` N, ``fields`` (list of dicts with name, offset, datatype,
        count), ``is_bigendian`` False, ``point_step``, ``row_step``, ``data`` (bytes) and
        ``is_dense`` (True only if every point is finite).

    Raises:
        ValueError: wrong shape or dtype, or labels outside the INT32 range.
    """
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] != 3 or not np.issubdtype(points.dtype, np.floating):
        raise ValueError(f"points must be a float array of shape (N, 3), got {points.dtype} {points.shape}")
    n = len(points)
    names = ["x", "y", "z"]
    formats = ["<f4", "<f4", "<f4"]
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"labels must be an integer array of shape ({n},), got {labels.dtype} {labels.shape}"
            )
        info = np.iinfo(np.int32)
        if n and (labels.min() < info.min or labels.max() > info.max):
            raise ValueError("labels must fit in INT32")
        names.append(LABEL_FIELD)
        formats.append("<i4")
    dtype = np.dtype({"names": names, "formats": formats, "offsets": [4 * i for i in range(len(names))]})
    buf = np.empty(n, dtype=dtype)
    for i, name in enumerate("xyz"):
        buf[name] = points[:, i]
    if labels is not None:
        buf[LABEL_FIELD] = labels
    fields = [
        {"name": name, "offset": 4 * i, "datatype": FLOAT32 if i < 3 else INT32, "count": 1}
        for i, name in enumerate(names)
    ]
    return {
        "height": 1,
        "width": n,
        "fields": fields,
        "is_bigendian": False,
        "point_step": dtype.itemsize,
        "row_step": dtype.itemsize * n,
        "data": buf.tobytes(),
        "is_dense": bool(np.isfinite(points).all()),
    }


def to_pointcloud2(points, labels=None, msg_cls=None, field_cls=None, header=None):
    """A PointCloud2 message of ``points`` (and ``labels``), see ``points_to_cloud_fields``.

    Args:
        points, labels: as in ``points_to_cloud_fields``.
        msg_cls, field_cls: the message classes, e.g. ``sensor_msgs.msg.PointCloud2`` and
            ``sensor_msgs.msg.PointField``; both or neither. Without them the message and its
            fields are ``types.SimpleNamespace`` objects.
        header: optional header (e.g. ``std_msgs.msg.Header`` with stamp and frame_id).

    Returns:
        ``msg_cls`` instance, or a ``types.SimpleNamespace`` with the same attributes
        (``header`` is None when not given).
    """
    if (msg_cls is None) != (field_cls is None):
        raise ValueError("pass both msg_cls and field_cls, or neither")
    fields = points_to_cloud_fields(points, labels)
    if msg_cls is None:
        fields["fields"] = [types.SimpleNamespace(**f) for f in fields["fields"]]
        return types.SimpleNamespace(header=header, **fields)
    fields["fields"] = [field_cls(**f) for f in fields["fields"]]
    # An array.array('B') skips the per-byte validation of the generated message setter.
    fields["data"] = array.array("B", fields["data"])
    if header is not None:
        fields["header"] = header
    return msg_cls(**fields)


def _as_bytes(data) -> np.ndarray:
    """The message's ``data`` as a uint8 array without copying when it supports the buffer protocol."""
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8) if data.dtype.itemsize == 1 else data.astype(np.uint8)
    try:
        return np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
    except TypeError:
        return np.asarray(list(data), dtype=np.uint8)  # e.g. a list of ints


def pointcloud2_to_points(msg) -> tuple[np.ndarray, np.ndarray | None]:
    """Points (and labels) of a PointCloud2 message.

    Reads x, y, z (FLOAT32 or FLOAT64) and an optional ``label`` field of any integer type; other
    fields are ignored. Handles point padding (point_step larger than the fields), organized clouds
    (height > 1, rows flattened in order, row_step padding) and big-endian data. NaN points are kept.

    Returns:
        points (N, 3), N = height * width, float32 if x, y and z are all FLOAT32 else float64, m;
        labels (N,) in the field's integer type (native byte order), or None without a label field.

    Raises:
        ValueError: a malformed message (missing x/y/z, unsupported datatype, count != 1, a field
            outside the point, point_step * width > row_step, data shorter than height * row_step).
    """
    height, width = int(_get(msg, "height")), int(_get(msg, "width"))
    point_step, row_step = int(_get(msg, "point_step")), int(_get(msg, "row_step"))
    if min(height, width, point_step, row_step) < 0:
        raise ValueError("height, width, point_step and row_step must be >= 0")
    endian = ">" if bool(_get(msg, "is_bigendian")) else "<"
    by_name = {}
    for f in _get(msg, "fields"):
        by_name[str(_get(f, "name"))] = f
    missing = [name for name in "xyz" if name not in by_name]
    if missing:
        raise ValueError(f"PointCloud2 has no field {', '.join(missing)} (fields: {sorted(by_name)})")

    names, formats, offsets = [], [], []
    for name in ("x", "y", "z", LABEL_FIELD):
        if name not in by_name:
            continue
        f = by_name[name]
        datatype, offset, count = int(_get(f, "datatype")), int(_get(f, "offset")), int(_get(f, "count"))
        allowed = _FLOAT_TYPES if name != LABEL_FIELD else _INT_TYPES
        if datatype not in allowed:
            kinds = "FLOAT32 or FLOAT64" if name != LABEL_FIELD else "an integer type"
            raise ValueError(f"field {name!r} has datatype {datatype}; expected {kinds}")
        if count != 1:
            raise ValueError(f"field {name!r} has count {count}; only count 1 is supported")
        fmt = endian + _NUMPY_TYPES[datatype]
        if offset < 0 or offset + np.dtype(fmt).itemsize > point_step:
            raise ValueError(f"field {name!r} at offset {offset} does not fit in point_step {point_step}")
        names.append(name)
        formats.append(fmt)
        offsets.append(offset)

    has_labels = LABEL_FIELD in names
    n = height * width
    out_dtype = np.float32 if all(fmt.endswith("f4") for fmt in formats[:3]) else np.float64
    if n == 0:
        return np.zeros((0, 3), dtype=out_dtype), (np.zeros(0, dtype=formats[3][1:]) if has_labels else None)
    if point_step * width > row_step:
        raise ValueError(f"row_step {row_step} is smaller than point_step * width = {point_step * width}")
    data = _as_bytes(_get(msg, "data"))
    if len(data) < height * row_step:
        raise ValueError(f"data has {len(data)} bytes, expected height * row_step = {height * row_step}")

    dtype = np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": point_step})
    cloud = np.ndarray(shape=(height, width), dtype=dtype, buffer=data, strides=(row_step, point_step))
    points = np.empty((n, 3), dtype=out_dtype)
    for i, name in enumerate("xyz"):
        points[:, i] = cloud[name].reshape(n)
    labels = cloud[LABEL_FIELD].reshape(n).astype(formats[3][1:]) if has_labels else None
    return points, labels
