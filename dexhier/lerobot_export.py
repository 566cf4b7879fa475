"""Export a dexhier episode dataset to the LeRobot v3 layout (see ``dexhier.lerobot_format``).

Feature mapping (dexhier step key -> LeRobot feature):

* ``arm/qpos`` + ``hand/qpos`` -> ``observation.state`` (rad), names = arm then hand joints;
* ``arm/qvel`` + ``hand/qvel`` -> ``observation.velocity`` (rad/s);
* ``tool/tip_gap`` -> ``observation.tool_tip_gap`` (m, shape [1]);
* ``action`` -> ``action`` (rad), names = the dataset's ``action_names``;
* ``rgb/<camera>`` -> ``observation.images.<camera>``, an H.264 MP4 per camera (``sim.video.VideoWriter``);
* every other key of at most 2 dimensions per step -> ``dexhier.<key with / as .>`` (flattened, e.g.
  ``dexhier.camera_pose.scene`` has 16 elements, row-major); ``depth/*`` is not exported.

Numbers keep their dtype (float64 stays float64), so joint states and actions round-trip exactly.
LeRobot's ``timestamp`` is ``frame_index / fps`` as LeRobot writes it; the recorded clock is in
``dexhier.time``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dexhier import lerobot_format as F
from dexhier.episodes import Episode, EpisodeDataset
from sim.video import VideoWriter

_STANDARD = (
    (F.STATE, ("arm/qpos", "hand/qpos")),
    (F.VELOCITY, ("arm/qvel", "hand/qvel")),
    (F.TIP_GAP, ("tool/tip_gap",)),
    (F.ACTION, ("action",)),
)
_ROWS_PER_GROUP = 20_000
"""Rows buffered before a parquet row group is written (LeRobot readers scan row groups)."""


@dataclass
class _Group:
    """One numeric feature made of the flattened, concatenated arrays of ``keys``."""

    name: str
    keys: list[str]
    sizes: list[int]
    dtype: np.dtype
    names: list[str] | None = None
    stats: F.StatsAccumulator = field(default_factory=lambda: F.StatsAccumulator(keep=True))

    @property
    def size(self) -> int:
        return sum(self.sizes)

    def values(self, ep: Episode) -> np.ndarray:
        """(T, size) values of one episode."""
        T = ep.num_steps
        return np.concatenate([np.asarray(ep[k]).reshape(T, -1) for k in self.keys], axis=1)

    def arrow(self, values: np.ndarray) -> pa.Array:
        # Shape [1] is a plain column and longer vectors a fixed-size list, as LeRobot's HF features
        # (Value / Sequence(length=n)) expect.
        if self.size == 1:
            return pa.array(values[:, 0])
        return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), self.size)

    def arrow_type(self) -> pa.DataType:
        item = pa.from_numpy_dtype(self.dtype)
        return item if self.size == 1 else pa.list_(item, self.size)


def _plan(meta: dict[str, Any], spec: dict[str, dict[str, Any]]) -> tuple[list[_Group], list[str], list[str]]:
    """Numeric feature groups, camera names and skipped keys for an episode key ``spec``."""
    shapes = {k: (tuple(v["shape"]), np.dtype(v["dtype"])) for k, v in spec.items()}
    cameras = [
        k.split("/", 1)[1]
        for k, (shape, dt) in shapes.items()
        if k.startswith("rgb/") and len(shape) == 3 and shape[2] == 3 and dt == np.uint8
    ]
    used = {f"rgb/{c}" for c in cameras}
    groups: list[_Group] = []
    joints = list(meta.get("arm_joints", [])) + list(meta.get("hand_joints", []))
    names_of = {
        F.STATE: joints,
        F.VELOCITY: joints,
        F.TIP_GAP: ["tip_gap"],
        F.ACTION: list(meta.get("action_names", [])),
    }
    for name, keys in _STANDARD:
        present = [k for k in keys if k in shapes and len(shapes[k][0]) <= 1]
        if not present or len({shapes[k][1] for k in present}) != 1:
            continue
        sizes = [int(np.prod(shapes[k][0])) for k in present]
        names = names_of[name] if len(names_of[name]) == sum(sizes) else None
        groups.append(_Group(name, present, sizes, shapes[present[0]][1], names))
        used.update(present)
    skipped = []
    for k, (shape, dt) in shapes.items():
        if k in used:
            continue
        if k.startswith("depth/") or len(shape) > 2 or dt.kind not in "biuf":
            skipped.append(k)
            continue
        groups.append(_Group(F.extra_feature(k), [k], [int(np.prod(shape))], dt))
    return groups, cameras, skipped


class _DataFiles:
    """Frame rows into data/chunk-*/file-*.parquet, starting a new file past ``DATA_FILE_MB``."""

    def __init__(self, root: Path, schema: pa.Schema) -> None:
        self.root, self.schema = root, schema
        self.counter, self.bytes = 0, 0
        self._writer: pq.ParquetWriter | None = None
        self._pending: list[pa.Table] = []
        self._rows = 0

    def add(self, table: pa.Table) -> tuple[int, int]:
        """Buffer one episode's rows; returns the (chunk, file) that holds them."""
        if self.bytes > F.DATA_FILE_MB * 2**20:
            self.close()
            self.counter += 1
            self.bytes = 0
        self._pending.append(table)
        self._rows += table.num_rows
        self.bytes += table.nbytes
        if self._rows >= _ROWS_PER_GROUP:
            self._flush()
        return F.chunk_file(self.counter)

    def _flush(self) -> None:
        if not self._pending:
            return
        if self._writer is None:
            chunk, file = F.chunk_file(self.counter)
            path = self.root / F.DATA_PATH.format(chunk_index=chunk, file_index=file)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(path, self.schema, compression="snappy")
        self._writer.write_table(pa.concat_tables(self._pending))
        self._pending, self._rows = [], 0

    def close(self) -> None:
        self._flush()
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class _Videos:
    """One MP4 per camera holding consecutive episodes; a new file past ``VIDEO_FILE_MB``."""

    def __init__(self, root: Path, key: str, fps: float) -> None:
        self.root, self.key, self.fps = root, key, fps
        self.counter, self.frames = 0, 0
        self._writer: VideoWriter | None = None
        self.stats = F.StatsAccumulator(image=True)

    def add(self, frames: np.ndarray) -> dict[str, Any]:
        """Append an episode's uint8 (T, H, W, 3) frames; returns its episode-row columns."""
        # ffmpeg creates and grows the file on its own schedule: the size is a lower bound.
        path = None if self._writer is None else self._writer.path
        if path is not None and path.exists() and path.stat().st_size > F.VIDEO_FILE_MB * 2**20:
            self.close()
            self.counter += 1
        chunk, file = F.chunk_file(self.counter)
        if self._writer is None:
            path = self.root / F.VIDEO_PATH.format(video_key=self.key, chunk_index=chunk, file_index=file)
            self._writer = VideoWriter(path, fps=self.fps)
            self.frames = 0
        start = self.frames
        for frame in frames:
            self._writer.append(frame)
        self.frames += len(frames)
        p = f"videos/{self.key}/"
        return {
            p + "chunk_index": chunk,
            p + "file_index": file,
            p + "from_timestamp": start / self.fps,
            p + "to_timestamp": self.frames / self.fps,
        }

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _task_of(ep: Episode, meta: dict[str, Any]) -> str:
    return str(ep.meta.get("instruction") or ep.meta.get("task") or meta.get("task") or "")


def export_lerobot(src: str | Path, out: str | Path, progress: bool = True) -> dict[str, Any]:
    """Write the dexhier dataset ``src`` as a LeRobot v3 dataset in the new directory ``out``.

    Everything is written to a temporary directory beside ``out`` and renamed at the end, so a failure
    leaves nothing. Raises `LeRobotFormatError` (one line) for data that cannot be exported. Returns a
    summary: episodes, frames, cameras, skipped keys, ``out``.
    """
    from tqdm import tqdm

    ds = EpisodeDataset(src)
    indices = ds.indices
    if not indices:
        raise F.LeRobotFormatError(f"{src}: the dataset has no committed episodes to export")
    hz = float(ds.meta.get("control_hz", 0) or 0)
    if hz <= 0 or abs(hz - round(hz)) > 1e-9:
        raise F.LeRobotFormatError(
            f"{src}: control_hz {hz!r} is not a positive integer; LeRobot's fps is one"
        )
    fps = int(round(hz))
    first = ds.episode(indices[0])
    spec = first.info["keys"]
    groups, cameras, skipped = _plan(ds.meta, spec)
    if not any(g.name == F.ACTION for g in groups):
        raise F.LeRobotFormatError(f"{src}: episodes have no 'action' key; LeRobot datasets need one")
    columns = [pa.field(name, pa.from_numpy_dtype(np.dtype(dt))) for name, dt in F.FRAME_COLUMNS.items()]
    schema = pa.schema([*(pa.field(g.name, g.arrow_type()) for g in groups), *columns])
    frame_stats = {name: F.StatsAccumulator(keep=True) for name in F.FRAME_COLUMNS}
    tasks: dict[str, int] = {}
    rows: list[dict[str, Any]] = []
    sidecar_eps: list[dict[str, Any]] = []
    total = 0
    with F.staged_output(Path(out)) as tmp:
        data = _DataFiles(tmp, schema)
        videos = {cam: _Videos(tmp, F.IMAGE_PREFIX + cam, fps) for cam in cameras}
        try:
            bar = tqdm(
                indices, desc="export lerobot", unit="ep", file=sys.stderr, disable=not progress or None
            )
            for e, index in enumerate(bar):
                ep = first if index == indices[0] else ds.episode(index)
                if ep.info["keys"] != spec:
                    raise F.LeRobotFormatError(
                        f"{src}: episode {index} has other keys, shapes or dtypes than episode {indices[0]}; "
                        "a LeRobot dataset has one feature set"
                    )
                T = ep.num_steps
                task = _task_of(ep, ds.meta)
                task_index = tasks.setdefault(task, len(tasks))
                frame = {
                    "timestamp": (np.arange(T) / fps).astype(np.float32),
                    "frame_index": np.arange(T, dtype=np.int64),
                    "episode_index": np.full(T, e, np.int64),
                    "index": np.arange(total, total + T, dtype=np.int64),
                    "task_index": np.full(T, task_index, np.int64),
                }
                row: dict[str, Any] = {"episode_index": e, "tasks": [task], "length": T}
                arrays = {}
                for g in groups:
                    values = g.values(ep)
                    arrays[g.name] = g.arrow(values)
                    row.update({f"stats/{g.name}/{k}": v for k, v in g.stats.add(values).items()})
                for name, values in frame.items():
                    arrays[name] = pa.array(values)
                    row.update({f"stats/{name}/{k}": v for k, v in frame_stats[name].add(values).items()})
                chunk, file = data.add(pa.Table.from_arrays(list(arrays.values()), schema=schema))
                row.update(
                    {
                        "data/chunk_index": chunk,
                        "data/file_index": file,
                        "dataset_from_index": total,
                        "dataset_to_index": total + T,
                    }
                )
                for cam, video in videos.items():
                    frames = np.asarray(ep[f"rgb/{cam}"])
                    row.update(video.add(frames))
                    row.update({f"stats/{video.key}/{k}": v for k, v in video.stats.add(frames).items()})
                row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
                rows.append(F.finite_or_null(row))
                sidecar_eps.append({"index": ep.index, "success": ep.success, "meta": ep.meta})
                total += T
        finally:
            data.close()
            for video in videos.values():
                video.close()
        features = _features(groups, cameras, spec, fps)
        stats = {g.name: g.stats.result((g.size,)) for g in groups}
        stats.update({name: acc.result((1,)) for name, acc in frame_stats.items()})
        stats.update({v.key: v.stats.result((3, 1, 1)) for v in videos.values()})
        info = {
            "codebase_version": F.CODEBASE_VERSION,
            "robot_type": ds.meta.get("robot_type") or "dexhier",
            "total_episodes": len(indices),
            "total_frames": total,
            "total_tasks": len(tasks),
            "chunks_size": F.CHUNKS_SIZE,
            "data_files_size_in_mb": F.DATA_FILE_MB,
            "video_files_size_in_mb": F.VIDEO_FILE_MB,
            "fps": fps,
            "splits": {"train": f"0:{len(indices)}"},
            "data_path": F.DATA_PATH,
            "video_path": F.VIDEO_PATH if cameras else None,
            "features": features,
        }
        sidecar = {
            "format": "dexhier-lerobot-sidecar",
            "version": F.SIDECAR_VERSION,
            "dataset_meta": ds.meta,
            "keys": {
                k: {
                    "feature": g.name,
                    "start": int(start),
                    "stop": int(start + size),
                    "shape": spec[k]["shape"],
                    "dtype": spec[k]["dtype"],
                }
                for g in groups
                for k, size, start in zip(g.keys, g.sizes, np.cumsum([0, *g.sizes[:-1]]), strict=True)
            },
            "cameras": {cam: f"rgb/{cam}" for cam in cameras},
            "skipped_keys": skipped,
            "episodes": sidecar_eps,
        }
        (tmp / "meta").mkdir(exist_ok=True)
        (tmp / F.INFO_PATH).write_bytes(F.json_bytes(info))
        (tmp / F.STATS_PATH).write_bytes(F.json_bytes(F.finite_or_null(stats)))
        (tmp / F.SIDECAR_PATH).write_bytes(F.json_bytes(sidecar))
        _write_tasks(tmp / F.TASKS_PATH, list(tasks))
        episodes_path = tmp / F.EPISODES_PATH.format(chunk_index=0, file_index=0)
        episodes_path.parent.mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rows), episodes_path, compression="snappy")
    return {
        "out": str(out),
        "episodes": len(indices),
        "frames": total,
        "tasks": len(tasks),
        "cameras": cameras,
        "skipped_keys": skipped,
        "fps": fps,
    }


def _features(groups: list[_Group], cameras: list[str], spec: dict[str, Any], fps: int) -> dict[str, Any]:
    feats: dict[str, Any] = {}
    for g in groups:
        feats[g.name] = {"dtype": str(g.dtype), "shape": [g.size], "names": g.names}
    for cam in cameras:
        h, w, c = spec[f"rgb/{cam}"]["shape"]
        feats[F.IMAGE_PREFIX + cam] = {
            "dtype": "video",
            "shape": [h, w, c],
            "names": ["height", "width", "channels"],
            "info": {
                "video.height": h,
                "video.width": w,
                "video.codec": "h264",
                "video.pix_fmt": "yuv420p",
                "video.is_depth_map": False,
                "video.fps": float(fps),
                "video.channels": c,
                "has_audio": False,
            },
        }
    for name, dt in F.FRAME_COLUMNS.items():
        feats[name] = {"dtype": dt, "shape": [1], "names": None}
    return feats


def _write_tasks(path: Path, tasks: list[str]) -> None:
    """meta/tasks.parquet as LeRobot writes it with pandas: column ``task_index``, index ``task``.

    The pandas metadata makes ``pd.read_parquet`` restore ``task`` as the index, which is how LeRobot
    looks tasks up (``tasks.loc[task].task_index``).
    """
    table = pa.table(
        {"task_index": pa.array(range(len(tasks)), pa.int64()), "task": pa.array(tasks, pa.string())}
    )
    pandas_meta = {
        "index_columns": ["task"],
        "column_indexes": [
            {
                "name": None,
                "field_name": None,
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": {"encoding": "UTF-8"},
            }
        ],
        "columns": [
            {
                "name": "task_index",
                "field_name": "task_index",
                "pandas_type": "int64",
                "numpy_type": "int64",
                "metadata": None,
            },
            {
                "name": "task",
                "field_name": "task",
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": None,
            },
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.3",
    }
    table = table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})
    pq.write_table(table, path)
