"""LeRobot dataset v3 layout: paths, feature mapping and helpers shared by the exporter and importer.

LeRobot (``huggingface/lerobot``, ``CODEBASE_VERSION = "v3.0"``) stores a dataset as::

    meta/info.json                                   codebase_version, fps, features, counters, path templates
    meta/stats.json                                  per-feature min/max/mean/std/count (+ quantiles)
    meta/tasks.parquet                               task strings (the pandas index "task") -> task_index
    meta/episodes/chunk-000/file-000.parquet         one row per episode: length, file indices, video spans
    data/chunk-000/file-000.parquet                  one row per frame, many episodes per file
    videos/<video_key>/chunk-000/file-000.mp4        one video per camera, many episodes per file

LeRobot itself is not a dependency (it pins an older torch than dexhier); this module and its two users
only need pyarrow and the ffmpeg of imageio-ffmpeg. ``meta/dexhier.json`` is our sidecar: the dexhier
dataset meta, each episode's index, success and meta, and how each dexhier step key maps onto the
features, so an export imports back to the same arrays. LeRobot ignores files it does not know.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

CODEBASE_VERSION = "v3.0"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
EPISODES_DIR = "meta/episodes"
SIDECAR_PATH = "meta/dexhier.json"
SIDECAR_VERSION = 1
CHUNK_FILE = "chunk-{chunk_index:03d}/file-{file_index:03d}"
DATA_PATH = "data/" + CHUNK_FILE + ".parquet"
VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE + ".mp4"
EPISODES_PATH = EPISODES_DIR + "/" + CHUNK_FILE + ".parquet"
CHUNKS_SIZE = 1000
"""Files per chunk directory (LeRobot's default)."""
DATA_FILE_MB = 100
VIDEO_FILE_MB = 200

FRAME_COLUMNS = {
    "timestamp": "float32",
    "frame_index": "int64",
    "episode_index": "int64",
    "index": "int64",
    "task_index": "int64",
}
"""Columns every frame of a LeRobot dataset has, with their dtypes (all of shape [1])."""

IMAGE_PREFIX = "observation.images."
STATE = "observation.state"
VELOCITY = "observation.velocity"
TIP_GAP = "observation.tool_tip_gap"
ACTION = "action"
EXTRA_PREFIX = "dexhier."
"""Prefix of features carrying the other dexhier step keys; LeRobot policies only use keys that start
with ``observation`` or ``action``, so these travel along without being fed to a policy."""


class LeRobotFormatError(ValueError):
    """A LeRobot dataset (or a dexhier dataset to export) that cannot be converted; one-line message."""


def one_line(text: object) -> str:
    """``text`` on one line (pyarrow and ffmpeg errors span several)."""
    return " ".join(str(text).split())


def extra_feature(key: str) -> str:
    """LeRobot feature name of a dexhier step key that has no standard feature (``/`` is not allowed)."""
    return EXTRA_PREFIX + key.replace("/", ".")


def chunk_file(counter: int) -> tuple[int, int]:
    """(chunk_index, file_index) of the ``counter``-th file of one kind."""
    return counter // CHUNKS_SIZE, counter % CHUNKS_SIZE


def feature_names(feature: dict[str, Any], size: int) -> list[str] | None:
    """The per-element names of a 1-D feature, if it lists ``size`` of them.

    LeRobot writes ``names`` as a list, older datasets as ``{"motors": [...]}``.
    """
    names = feature.get("names")
    if isinstance(names, dict) and len(names) == 1:
        names = next(iter(names.values()))
    if isinstance(names, list) and len(names) == size and all(isinstance(n, str) for n in names):
        return list(names)
    return None


class StatsAccumulator:
    """Running min / max / mean / std / count of one feature over frames, ignoring NaN (teleop requests).

    ``add`` takes an episode's values of shape (T, *shape); for video features pass ``image=True`` and
    uint8 (T, H, W, 3) frames: stats are then per channel in [0, 1] with shape (3, 1, 1), as LeRobot keeps
    them. ``keep`` also keeps the values, for quantiles (numeric features only; they are small). A value
    with no finite sample is NaN here and ``null`` in JSON.
    """

    def __init__(self, image: bool = False, keep: bool = False) -> None:
        self.image = image
        self.frames = 0
        self._acc: list[np.ndarray] | None = None  # n, sum, sum of squares, min, max (per element)
        self._kept: list[np.ndarray] | None = [] if keep and not image else None

    def _reduce(self, values: np.ndarray) -> list[np.ndarray]:
        x = values.reshape(values.shape[0], -1).astype(np.float64)
        if self.image:
            x = x.reshape(-1, 3) / 255.0
        ok = np.isfinite(x)
        z = np.where(ok, x, 0.0)
        return [
            ok.sum(0).astype(np.float64),
            z.sum(0),
            np.square(z).sum(0),
            np.where(ok, x, np.inf).min(0),
            np.where(ok, x, -np.inf).max(0),
        ]

    def add(self, values: np.ndarray) -> dict[str, Any]:
        """Accumulate ``values`` (T, *shape) and return their own stats (the episode's, for meta/episodes)."""
        part = self._reduce(values)
        if self._kept is not None:
            self._kept.append(values.reshape(values.shape[0], -1).astype(np.float64))
        if self._acc is None:
            self._acc = part
        else:
            a = self._acc
            self._acc = [
                a[0] + part[0],
                a[1] + part[1],
                a[2] + part[2],
                np.minimum(a[3], part[3]),
                np.maximum(a[4], part[4]),
            ]
        self.frames += values.shape[0]
        return self._pack(part, values.shape[0], values.shape[1:])

    def _pack(self, acc: list[np.ndarray], frames: int, shape: tuple[int, ...]) -> dict[str, Any]:
        n, s, sq, lo, hi = acc
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = s / n
            std = np.sqrt(np.maximum(sq / n - mean**2, 0.0))
        lo, hi = np.where(n > 0, lo, np.nan), np.where(n > 0, hi, np.nan)
        shape = (3, 1, 1) if self.image else (shape or (1,))
        pairs = (("min", lo), ("max", hi), ("mean", mean), ("std", std))
        out = {k: v.reshape(shape).tolist() for k, v in pairs}
        out["count"] = [int(frames)]
        return out

    def result(self, shape: tuple[int, ...]) -> dict[str, Any]:
        """The stats of everything added; ``shape`` is the per-frame shape of the feature."""
        out = self._pack(self._acc, self.frames, shape)
        if self._kept:
            allv = np.concatenate(self._kept)
            for q in (1, 10, 50, 90, 99):
                with warnings.catch_warnings():  # an all-NaN element gives NaN, which is what we want
                    warnings.simplefilter("ignore", RuntimeWarning)
                    qv = np.nanquantile(allv, q / 100.0, axis=0)
                out[f"q{q:02d}"] = qv.reshape(shape or (1,)).tolist()
        return out


def finite_or_null(doc: Any) -> Any:
    """``doc`` with every NaN / infinity replaced by None, so it is strict JSON."""
    if isinstance(doc, float):
        return doc if np.isfinite(doc) else None
    if isinstance(doc, dict):
        return {k: finite_or_null(v) for k, v in doc.items()}
    if isinstance(doc, list | tuple):
        return [finite_or_null(v) for v in doc]
    return doc


def json_bytes(doc: Any) -> bytes:
    return (json.dumps(doc, indent=2, allow_nan=False, default=_json_default) + "\n").encode("utf-8")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


@contextmanager
def staged_output(out: Path) -> Iterator[Path]:
    """A fresh temporary directory beside ``out`` that becomes ``out`` when the block ends normally.

    ``out`` must not exist. On any exception the temporary directory is deleted, so a failed export or
    import leaves nothing behind; the final rename is atomic within one file system.
    """
    out = Path(out)
    if out.exists():
        raise LeRobotFormatError(f"{out} already exists; give a new --out directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".tmp-{out.name}-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        yield tmp
        if out.exists():
            raise LeRobotFormatError(f"{out} appeared while writing; the result is not moved there")
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
