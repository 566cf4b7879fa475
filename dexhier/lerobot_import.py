"""Import a LeRobot v3 dataset (arm + hand joint state and action) as a dexhier episode dataset.

With our sidecar ``meta/dexhier.json`` (datasets that ``dexhier dataset export`` wrote) every exported
step key, the dataset meta and each episode's index, success and meta come back as they were; images
come back through the video codec (H.264, lossy). Without it (a dataset recorded with LeRobot) the
mapping is generic:

* ``observation.state`` (D,) -> ``arm/qpos`` (first ``arm_dof`` elements) and ``hand/qpos`` (the rest);
* ``observation.velocity`` (D,), if present -> ``arm/qvel`` / ``hand/qvel``;
* ``action`` (D,) -> ``action`` (float64); its per-element min/max over the dataset become the
  ``action_lower`` / ``action_upper`` the trainers need (LeRobot stores no joint limits);
* ``observation.tool_tip_gap`` -> ``tool/tip_gap``, else zeros (m): LeRobot robots have no tweezers;
* ``observation.images.<cam>`` (video or image) -> ``rgb/<camera_map.get(cam, cam)>``, optionally
  resized to ``image_size`` x ``image_size`` (the low-level policy uses square 64 px images);
* ``time`` = ``timestamp``; success is assumed (LeRobot keeps no outcome; re-recorded takes are dropped
  by its recorder).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dexhier import lerobot_format as F
from dexhier.episodes import EpisodeWriter

Error = F.LeRobotFormatError


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise Error(f"{path}: {what} is missing; is this a LeRobot v3 dataset?") from None
    except (OSError, ValueError) as err:
        raise Error(f"{path}: cannot read {what}: {F.one_line(err)}") from err
    if not isinstance(doc, dict):
        raise Error(f"{path}: {what} does not hold a JSON object")
    return doc


def _read_parquet(path: Path, what: str, columns: list[str] | None = None) -> pa.Table:
    if not path.is_file():
        raise Error(f"{path}: {what} is missing")
    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError, ValueError) as err:
        raise Error(f"{path}: damaged or unreadable {what}: {F.one_line(err)}") from err


def load_info(src: Path) -> dict[str, Any]:
    """meta/info.json, checked: codebase_version v3.0, a positive fps, features with dtype and shape."""
    path = src / F.INFO_PATH
    info = _read_json(path, "meta/info.json")
    version = info.get("codebase_version")
    if version != F.CODEBASE_VERSION:
        raise Error(
            f"{path}: codebase_version {version!r} is not supported; this reader reads "
            f"{F.CODEBASE_VERSION!r} (convert older datasets with LeRobot's v2.1 -> v3.0 converter first)"
        )
    fps = info.get("fps")
    if not isinstance(fps, int | float) or fps <= 0:
        raise Error(f"{path}: fps {fps!r} is not a positive number")
    feats = info.get("features")
    if not isinstance(feats, dict) or not feats:
        raise Error(f"{path}: 'features' is missing or empty")
    for name, ft in feats.items():
        shape = ft.get("shape") if isinstance(ft, dict) else None
        if not isinstance(shape, list) or not all(isinstance(n, int) and n > 0 for n in shape):
            raise Error(f"{path}: feature {name!r} has no valid shape ({shape!r})")
        if not isinstance(ft.get("dtype"), str):
            raise Error(f"{path}: feature {name!r} has no dtype")
    for key in ("data_path", "total_episodes"):
        if key not in info:
            raise Error(f"{path}: {key!r} is missing")
    return info


def _episodes(src: Path) -> list[dict[str, Any]]:
    paths = sorted((src / F.EPISODES_DIR).glob("chunk-*/file-*.parquet"))
    if not paths:
        raise Error(f"{src / F.EPISODES_DIR}: no episode metadata (chunk-*/file-*.parquet) found")
    rows: list[dict[str, Any]] = []
    for path in paths:
        table = _read_parquet(path, "episode metadata")
        keep = [c for c in table.column_names if not c.startswith("stats/")]
        rows.extend(table.select(keep).to_pylist())
    need = ("episode_index", "length", "data/chunk_index", "data/file_index")
    for row in rows[:1]:
        missing = [k for k in need if k not in row]
        if missing:
            raise Error(f"{src / F.EPISODES_DIR}: episode rows lack {missing}")
    return sorted(rows, key=lambda r: r["episode_index"])


def _tasks(src: Path) -> dict[int, str]:
    table = _read_parquet(src / F.TASKS_PATH, "meta/tasks.parquet")
    names = [c for c in ("task", "__index_level_0__") if c in table.column_names]
    if "task_index" not in table.column_names or not names:
        raise Error(f"{src / F.TASKS_PATH}: needs a 'task_index' column and the task strings")
    return dict(zip(table["task_index"].to_pylist(), table[names[0]].to_pylist(), strict=True))


def _column(table: pa.Table, name: str, shape: list[int], path: Path) -> np.ndarray:
    """Column ``name`` as an array (N, *shape); Error if it is absent or its elements have another size."""
    if name not in table.column_names:
        raise Error(f"{path}: column {name!r} of meta/info.json's features is missing")
    col = table[name].combine_chunks()
    size = int(np.prod(shape))
    if (
        pa.types.is_list(col.type)
        or pa.types.is_fixed_size_list(col.type)
        or pa.types.is_large_list(col.type)
    ):
        lengths = np.asarray(col.value_lengths()) if not pa.types.is_fixed_size_list(col.type) else None
        width = col.type.list_size if lengths is None else (int(lengths[0]) if len(lengths) else size)
        if width != size or (lengths is not None and (lengths != size).any()):
            raise Error(f"{path}: column {name!r} has elements of size {width}, meta/info.json says {shape}")
        values = col.flatten().to_numpy(zero_copy_only=False)
    elif size == 1:
        values = col.to_numpy(zero_copy_only=False)
    else:
        raise Error(f"{path}: column {name!r} holds scalars, meta/info.json says shape {shape}")
    return values.reshape(len(col), *shape)


class _Frames:
    """Frames of video files, read forwards; reopens a file only to go back."""

    def __init__(self, src: Path, info: dict[str, Any], key: str) -> None:
        self.src, self.info, self.key = src, info, key
        self.path: Path | None = None
        self._reader = None
        self._pos = 0

    def read(self, row: dict[str, Any], fps: float, length: int) -> np.ndarray:
        import imageio.v2 as imageio

        p = f"videos/{self.key}/"
        try:
            rel = self.info["video_path"].format(
                video_key=self.key, chunk_index=row[p + "chunk_index"], file_index=row[p + "file_index"]
            )
            start = int(round(float(row[p + "from_timestamp"]) * fps))
        except (KeyError, TypeError, AttributeError) as err:
            raise Error(
                f"{self.src}: episode {row['episode_index']} has no video span for {self.key}"
            ) from err
        path = self.src / rel
        if path != self.path or start < self._pos:
            self.close()
            if not path.is_file():
                raise Error(f"{path}: video file is missing")
            try:
                self._reader = imageio.get_reader(str(path), format="ffmpeg")
            except Exception as err:  # imageio raises assorted types for bad files
                raise Error(f"{path}: cannot open video: {F.one_line(err)}") from err
            self.path, self._pos, self._iter = path, 0, iter(self._reader)
        frames = []
        try:
            while self._pos < start + length:
                frame = next(self._iter)
                if self._pos >= start:
                    frames.append(np.asarray(frame)[..., :3])
                self._pos += 1
        except StopIteration:
            raise Error(
                f"{path}: video ends at frame {self._pos}; episode {row['episode_index']} needs frames "
                f"{start}..{start + length - 1}"
            ) from None
        except Exception as err:
            raise Error(f"{path}: cannot decode video: {F.one_line(err)}") from err
        return np.stack(frames)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None


def _decode_images(col: pa.ChunkedArray, path: Path) -> np.ndarray:
    """An ``image`` feature column (structs with PNG/JPEG ``bytes``) as uint8 (N, H, W, 3)."""
    import imageio.v3 as iio

    try:
        return np.stack([np.asarray(iio.imread(d["bytes"]))[..., :3] for d in col.to_pylist()])
    except Exception as err:
        raise Error(f"{path}: cannot decode image column: {F.one_line(err)}") from err


def _resize(frames: np.ndarray, size: int | None) -> np.ndarray:
    if size is None or frames.shape[1:3] == (size, size):
        return frames
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.BILINEAR)) for f in frames])


def _split(names: list[str] | None, d: int, arm_dof: int, what: str) -> tuple[list[str], list[str]]:
    if not 0 < arm_dof < d:
        raise Error(
            f"{what} has {d} elements; --arm-dof {arm_dof} leaves no hand joints (need 0 < arm-dof < {d})"
        )
    names = names or [f"joint_{i}" for i in range(d)]
    return names[:arm_dof], names[arm_dof:]


def import_lerobot(
    src: str | Path,
    out: str | Path,
    *,
    arm_dof: int = 6,
    camera_map: dict[str, str] | None = None,
    image_size: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Convert the LeRobot v3 dataset ``src`` into a new dexhier dataset ``out`` (see the module doc).

    ``arm_dof``: how many leading elements of the state/action are arm joints (generic mapping only).
    ``camera_map``: LeRobot camera name -> dexhier camera name. ``image_size``: resize images to square.
    Checks the metadata before writing; writes into a temporary directory renamed at the end, so on any
    error (`LeRobotFormatError`, one line) nothing is left. Returns a summary.
    """
    from tqdm import tqdm

    src = Path(src)
    if not src.is_dir():
        raise Error(f"{src}: no such dataset directory")
    info = load_info(src)
    tasks = _tasks(src)
    rows = _episodes(src)
    fps = float(info["fps"])
    feats = info["features"]
    sidecar = _read_json(src / F.SIDECAR_PATH, "sidecar") if (src / F.SIDECAR_PATH).exists() else None
    videos = [k for k, ft in feats.items() if k.startswith(F.IMAGE_PREFIX) and ft["dtype"] == "video"]
    images = [k for k, ft in feats.items() if k.startswith(F.IMAGE_PREFIX) and ft["dtype"] == "image"]
    numeric = {k: ft for k, ft in feats.items() if ft["dtype"] not in ("video", "image", "string")}
    camera_map = dict(camera_map or {})
    cam_key = {
        k: "rgb/" + camera_map.get(k[len(F.IMAGE_PREFIX) :], k[len(F.IMAGE_PREFIX) :])
        for k in videos + images
    }
    if videos and not info.get("video_path"):
        raise Error(f"{src / F.INFO_PATH}: video features but no 'video_path'")

    def data_file(row: dict[str, Any]) -> Path:
        return src / info["data_path"].format(
            chunk_index=row["data/chunk_index"], file_index=row["data/file_index"]
        )

    if sidecar is not None:
        meta, mapping = _sidecar_plan(sidecar, feats, src)
    else:
        for need in (F.STATE, F.ACTION):
            if need not in numeric or len(numeric[need]["shape"]) != 1:
                raise Error(
                    f"{src / F.INFO_PATH}: no 1-D {need!r} feature; "
                    "the trainers need joint states and actions"
                )
        d = numeric[F.STATE]["shape"][0]
        if numeric[F.ACTION]["shape"][0] != d:
            raise Error(
                f"{src / F.INFO_PATH}: 'action' has {numeric[F.ACTION]['shape'][0]} elements and "
                f"'observation.state' {d}; dexhier needs joint-position actions for the same joints"
            )
        arm, hand = _split(F.feature_names(numeric[F.STATE], d), d, arm_dof, "observation.state")
        lower, upper = _action_range(src, rows, data_file, d)
        meta = {
            "source": "lerobot",
            "task": None,
            "arm_joints": arm,
            "hand_joints": hand,
            "action_names": F.feature_names(numeric[F.ACTION], d) or arm + hand,
            "action_lower": lower,
            "action_upper": upper,
            "cameras": sorted(v[len("rgb/") :] for v in cam_key.values()),
            "control_hz": fps,
            "lerobot": {"robot_type": info.get("robot_type"), "source": str(src)},
        }
        mapping = _generic_plan(arm_dof, d, fps)
        meta["tool_tip_gap"] = "from observation.tool_tip_gap" if F.TIP_GAP in numeric else "absent: zeros"
    if image_size is not None and cam_key:
        meta["image_size"] = [image_size, image_size]
    elif cam_key and "image_size" not in meta:
        h, w = feats[(videos + images)[0]]["shape"][:2]
        meta["image_size"] = [w, h]

    cursors = {k: _Frames(src, info, k) for k in videos}
    table: pa.Table | None = None
    table_path: Path | None = None
    total = 0
    with F.staged_output(Path(out)) as tmp:
        writer = EpisodeWriter(tmp, meta)
        try:
            for n, row in enumerate(
                tqdm(rows, desc="import lerobot", unit="ep", file=sys.stderr, disable=not progress or None)
            ):
                path = data_file(row)
                if path != table_path:
                    table, table_path = _read_parquet(path, "data file"), path
                    ep_idx = _column(table, "episode_index", [1], path)[:, 0]
                e = row["episode_index"]
                sel = np.flatnonzero(ep_idx == e)
                T = int(row["length"])
                if len(sel) != T:
                    raise Error(f"{path}: episode {e} has {len(sel)} frames, meta/episodes says {T}")
                part = table.take(pa.array(sel))
                order = np.argsort(_column(part, "frame_index", [1], path)[:, 0], kind="stable")
                cols = {name: _column(part, name, ft["shape"], path)[order] for name, ft in numeric.items()}
                steps = mapping(cols, T)
                for k in videos:
                    frames = cursors[k].read(row, fps, T)
                    if frames.shape[1:] != tuple(feats[k]["shape"]):
                        raise Error(
                            f"{cursors[k].path}: frames are {frames.shape[1:]}, "
                            f"meta/info.json says {feats[k]['shape']}"
                        )
                    steps[cam_key[k]] = _resize(frames, image_size)
                for k in images:
                    steps[cam_key[k]] = _resize(
                        _decode_images(part[k].take(pa.array(order)), path), image_size
                    )
                if sidecar is not None:
                    ep_doc = sidecar["episodes"][n]
                    index, success, ep_meta = ep_doc["index"], ep_doc["success"], ep_doc["meta"]
                else:
                    task = tasks.get(int(cols["task_index"][0, 0]), "") if "task_index" in cols else ""
                    index, success = e, True
                    ep_meta = {
                        "task": None,
                        "instruction": task,
                        "lerobot_episode_index": e,
                        "success_assumed": True,
                    }
                with writer.begin(index, ep_meta) as rec:
                    for t in range(T):
                        rec.add_step({k: v[t] for k, v in steps.items()})
                    rec.commit(success=bool(success))
                total += T
        finally:
            for c in cursors.values():
                c.close()
    return {
        "out": str(out),
        "episodes": len(rows),
        "frames": total,
        "sidecar": sidecar is not None,
        "cameras": sorted(cam_key.values()),
    }


def _sidecar_plan(sidecar: dict[str, Any], feats: dict[str, Any], src: Path):
    """Dataset meta and a (cols, T) -> steps function restoring the exported dexhier keys."""
    if sidecar.get("version") != F.SIDECAR_VERSION or not isinstance(sidecar.get("keys"), dict):
        raise Error(f"{src / F.SIDECAR_PATH}: unknown sidecar version {sidecar.get('version')!r}")
    keys = sidecar["keys"]
    for key, k in keys.items():
        ft = feats.get(k["feature"])
        if ft is None or int(np.prod(ft["shape"])) < k["stop"]:
            raise Error(
                f"{src / F.SIDECAR_PATH}: key {key!r} maps to a feature meta/info.json lacks or is too small"
            )

    def steps(cols: dict[str, np.ndarray], T: int) -> dict[str, np.ndarray]:
        return {
            key: cols[k["feature"]]
            .reshape(T, -1)[:, k["start"] : k["stop"]]
            .reshape(T, *k["shape"])
            .astype(k["dtype"], copy=False)
            for key, k in keys.items()
        }

    return dict(sidecar["dataset_meta"]), steps


def _generic_plan(arm_dof: int, d: int, fps: float):
    def steps(cols: dict[str, np.ndarray], T: int) -> dict[str, np.ndarray]:
        state = cols[F.STATE].astype(np.float64)
        out = {
            "time": cols["timestamp"][:, 0].astype(np.float64) if "timestamp" in cols else np.arange(T) / fps,
            "arm/qpos": state[:, :arm_dof],
            "hand/qpos": state[:, arm_dof:],
            "action": cols[F.ACTION].astype(np.float64),
        }
        if F.VELOCITY in cols and cols[F.VELOCITY].shape[1:] == (d,):
            vel = cols[F.VELOCITY].astype(np.float64)
            out["arm/qvel"], out["hand/qvel"] = vel[:, :arm_dof], vel[:, arm_dof:]
        gap = cols.get(F.TIP_GAP)
        out["tool/tip_gap"] = gap.reshape(T, 1).astype(np.float64) if gap is not None else np.zeros((T, 1))
        return out

    return steps


def _action_range(
    src: Path, rows: list[dict[str, Any]], data_file, d: int
) -> tuple[list[float], list[float]]:
    """Per-element min and max of ``action`` over all data files (the trainers need joint limits)."""
    lo, hi = np.full(d, np.inf), np.full(d, -np.inf)
    for path in sorted({data_file(r) for r in rows}):
        a = _column(_read_parquet(path, "data file", columns=[F.ACTION]), F.ACTION, [d], path).astype(
            np.float64
        )
        with np.errstate(invalid="ignore"):
            lo, hi = (
                np.fmin(lo, np.nanmin(a, 0) if len(a) else lo),
                np.fmax(hi, np.nanmax(a, 0) if len(a) else hi),
            )
    if not np.isfinite(lo).all() or not np.isfinite(hi).all():
        raise Error(f"{src}: some action element has no finite value; cannot derive its limits")
    return lo.tolist(), hi.tolist()
