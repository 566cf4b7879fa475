"""The versioned on-disk episode format of dexhier: writer and reader.

Layout of a dataset (``FORMAT_VERSION = 1``; the full description is in ``docs/episode_format.md``)::

    ROOT/dataset.json                         format_version, created_at, meta (joint names, cameras, ...)
    ROOT/episodes/episode_000000/steps.npz    one array per step key, shape (T, *per_step_shape)
    ROOT/episodes/episode_000000/episode.json format_version, index, num_steps, success, keys, meta
    ROOT/episodes/.tmp-*                      an episode being committed (or left by a crash); never read

Conventions:

* An episode is a sequence of ``T`` steps. Every step has the same keys, and each key has the same
  per-step shape and dtype in every step; on disk, key ``k`` is one array of shape ``(T, *shape)``.
* Arrays are stored exactly: what is read back is bit-identical to what was added, with the same dtype
  (no casting, no compression loss). Python scalars become 0-d arrays (``float`` -> float64,
  ``int`` -> int64, ``bool`` -> bool), so they read back with shape ``(T,)``.
* Units are SI (metres, radians, seconds); time is in seconds. The standard keys and their units are
  listed in ``dexhier.vocabulary`` and ``docs/episode_format.md``.
* Keys are ``/``-separated names made of letters, digits, ``_`` and ``-`` (``"rgb/scene"``,
  ``"action/request"``). Inside ``steps.npz`` key ``k`` is the zip member ``k + ".npy"``; ``/`` round-trips
  through ``np.load`` unchanged, so no encoding is applied.
* A committed episode is written to a ``.tmp-*`` directory, fsynced and then renamed to its final name, so
  a crash loses at most the episode in flight and a directory under a final name is always complete.

This module depends only on numpy and the standard library.
"""

from __future__ import annotations

import json
import operator
import os
import re
import shutil
import uuid
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TypeAlias

import numpy as np

FORMAT_VERSION = 1
"""Version of the on-disk format written by this module; readers reject any other version."""

DATASET_FILE = "dataset.json"
EPISODES_DIR = "episodes"
BAGS_DIR = "bags"
"""Teleop recordings: one MCAP file of raw topics per episode (see ``docs/episode_format.md``)."""
STEPS_FILE = "steps.npz"
EPISODE_FILE = "episode.json"
TMP_PREFIX = ".tmp-"
"""Prefix of directories holding an episode that is not (yet) committed."""

StepValue: TypeAlias = "np.ndarray | float | int | bool"

_KEY_RE = re.compile(r"[A-Za-z0-9_-]+(?:/[A-Za-z0-9_-]+)*")
_EPISODE_DIR_RE = re.compile(r"episode_(\d{6,})")


class EpisodeFormatError(ValueError):
    """A dataset or episode on disk is missing, malformed, or of an unsupported format version."""


def episode_dirname(index: int) -> str:
    """Directory name of episode ``index``: ``episode_000042``."""
    return f"episode_{index:06d}"


# --- helpers -------------------------------------------------------------------------------


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic | np.ndarray):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _dumps(doc: Any) -> str:
    return json.dumps(doc, indent=2, allow_nan=False, default=_json_default) + "\n"


def _json_meta(meta: Mapping[str, Any] | None, what: str) -> dict[str, Any]:
    """Return ``meta`` as it will read back from JSON; raise ValueError early if it cannot be stored."""
    if meta is None:
        return {}
    if not isinstance(meta, Mapping):
        raise TypeError(f"{what} must be a dict, got {type(meta).__name__}")
    try:
        return json.loads(_dumps(dict(meta)))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what} must be JSON serialisable (finite numbers, str keys): {err}") from err


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EpisodeFormatError(f"{path}: {what} file is missing") from None
    except (OSError, ValueError) as err:
        raise EpisodeFormatError(f"{path}: cannot read {what} file: {err}") from err
    if not isinstance(doc, dict):
        raise EpisodeFormatError(f"{path}: {what} file does not hold a JSON object")
    return doc


def _check_version(doc: Mapping[str, Any], path: Path) -> None:
    version = doc.get("format_version")
    if version != FORMAT_VERSION:
        raise EpisodeFormatError(
            f"{path}: format_version {version!r} is not supported; this dexhier reads format_version "
            f"{FORMAT_VERSION} only. Use the dexhier release that wrote the data, or convert it with the "
            "converter shipped with the format change."
        )


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, data: bytes) -> None:
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_npz(path: Path, arrays: Mapping[str, np.ndarray], compress: bool = True) -> None:
    """Write an ``np.load``-compatible compressed npz (as ``np.savez_compressed`` does) and fsync it.

    The zip is written here rather than with ``np.savez_compressed(f, **arrays)`` because that call
    would take keys such as ``"file"`` or ``"allow_pickle"`` for its own keyword arguments.
    """
    with open(path, "xb") as f:
        method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
        with zipfile.ZipFile(f, mode="w", compression=method) as zf:
            for key, array in arrays.items():
                with zf.open(key + ".npy", mode="w", force_zip64=True) as member:
                    np.lib.format.write_array(member, array, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())


def _as_step_arrays(step: Mapping[str, StepValue]) -> dict[str, np.ndarray]:
    """Validate keys and values of one step; return private copies as arrays."""
    if not isinstance(step, Mapping):
        raise TypeError(f"a step must be a dict of key -> array, got {type(step).__name__}")
    arrays: dict[str, np.ndarray] = {}
    for key, value in step.items():
        if not isinstance(key, str):
            raise TypeError(f"step keys must be str, got {key!r} ({type(key).__name__})")
        if not _KEY_RE.fullmatch(key):
            raise ValueError(
                f"invalid step key {key!r}: use '/'-separated names of letters, digits, '_' and '-'"
            )
        try:
            array = np.array(value, copy=True)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"step key {key!r}: cannot convert {type(value).__name__} to an array: {err}"
            ) from err
        if array.dtype.hasobject or array.dtype.kind == "V":
            raise ValueError(
                f"step key {key!r}: dtype {array.dtype} cannot be stored (object and structured dtypes are "
                f"not supported; got {type(value).__name__})"
            )
        arrays[key] = array
    if not arrays:
        raise ValueError("a step must have at least one key")
    return arrays


# --- writing -------------------------------------------------------------------------------


class EpisodeWriter:
    """Writes episodes into the dataset at ``root``.

    Creates ``root`` and ``root/dataset.json`` if absent. If ``dataset.json`` exists it must have
    ``FORMAT_VERSION`` (else `EpisodeFormatError`) and the same ``meta`` as ``dataset_meta`` (else
    ValueError: episodes of one dataset must share joint names, cameras, rates, ...).

    Writers in several processes may share a dataset as long as they use distinct episode indices.
    """

    def __init__(self, root: str | os.PathLike[str], dataset_meta: Mapping[str, Any]) -> None:
        self.root = Path(root)
        self.episodes_dir = self.root / EPISODES_DIR
        meta = _json_meta(dataset_meta, "dataset_meta")
        path = self.root / DATASET_FILE
        if path.exists():
            doc = _read_json(path, "dataset")
            _check_version(doc, path)
            if doc.get("meta") != meta:
                raise ValueError(
                    f"{path}: dataset_meta differs from the meta stored in the existing dataset "
                    f"(stored {doc.get('meta')!r}, given {meta!r}); write to another root"
                )
        else:
            self.root.mkdir(parents=True, exist_ok=True)
            created_at = datetime.now(UTC).isoformat(timespec="seconds")
            doc = {"format_version": FORMAT_VERSION, "created_at": created_at, "meta": meta}
            tmp = self.root / f"{TMP_PREFIX}{DATASET_FILE}-{uuid.uuid4().hex[:12]}"
            write_durably(tmp, _dumps(doc).encode("utf-8"))
            os.replace(tmp, path)
            fsync_dir(self.root)
        self.episodes_dir.mkdir(exist_ok=True)
        self.meta: dict[str, Any] = doc["meta"]
        """The dataset meta as stored in ``dataset.json``."""

    def episode_path(self, index: int) -> Path:
        """Final directory of episode ``index``."""
        return self.episodes_dir / episode_dirname(index)

    def begin(self, index: int, meta: Mapping[str, Any]) -> EpisodeRecorder:
        """Start recording episode ``index`` with its free ``meta`` (task, instruction, seed, ...).

        Raises FileExistsError if that episode is already committed, ValueError if ``index < 0`` or
        ``meta`` is not JSON serialisable.
        """
        index = operator.index(index)
        if index < 0:
            raise ValueError(f"episode index must be >= 0, got {index}")
        path = self.episode_path(index)
        if path.exists():
            raise FileExistsError(f"episode {index} already exists at {path}; use another index")
        return EpisodeRecorder(path, index, _json_meta(meta, "episode meta"))


class EpisodeRecorder:
    """Buffers the steps of one episode in memory and commits them atomically; made by `EpisodeWriter.begin`.

    Use as a context manager: leaving the ``with`` block on an exception discards the episode; leaving it
    normally without `commit` or `discard` discards it too, with a RuntimeWarning if steps were added.
    """

    def __init__(self, path: Path, index: int, meta: dict[str, Any]) -> None:
        self.path = path
        """The final directory of the episode (exists only after `commit`)."""
        self.index = index
        self._meta = meta
        self._spec: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        self._buffer: dict[str, list[np.ndarray]] = {}
        self._num_steps = 0
        self._closed = False

    @property
    def num_steps(self) -> int:
        """Number of steps added so far."""
        return self._num_steps

    @property
    def closed(self) -> bool:
        """True after `commit` or `discard`."""
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"the recorder of episode {self.index} is closed (committed or discarded)")

    def add_step(self, step: Mapping[str, StepValue]) -> None:
        """Append one step: a dict of key -> array or Python scalar; values are copied.

        The first step fixes the keys and each key's shape and dtype. A step that does not match them
        raises ValueError naming the key and is not stored; the recorder stays usable.
        """
        self._check_open()
        arrays = _as_step_arrays(step)
        if self._num_steps == 0:
            self._spec = {key: (a.shape, a.dtype) for key, a in arrays.items()}
            self._buffer = {key: [] for key in arrays}
        else:
            missing = [k for k in self._spec if k not in arrays]
            extra = [k for k in arrays if k not in self._spec]
            if missing or extra:
                raise ValueError(
                    f"step {self._num_steps} of episode {self.index}: keys differ from the first step "
                    f"(missing {missing}, extra {extra})"
                )
            for key, (shape, dtype) in self._spec.items():
                got = arrays[key]
                if got.shape != shape or got.dtype != dtype:
                    raise ValueError(
                        f"step {self._num_steps} of episode {self.index}: key {key!r} has shape {got.shape} "
                        f"dtype {got.dtype}, expected shape {shape} dtype {dtype}"
                    )
        for key in self._spec:
            self._buffer[key].append(arrays[key])
        self._num_steps += 1

    def stacked(self, start: int = 0) -> dict[str, np.ndarray]:
        """Steps ``start`` .. ``num_steps - 1`` as key -> array ``(num_steps - start, *shape)`` (copies)."""
        self._check_open()
        if not 0 <= start <= self._num_steps:
            raise IndexError(f"start {start} out of range for {self._num_steps} steps")
        return {
            key: np.stack(values[start:]) if start < self._num_steps else np.empty((0, *shape), dtype)
            for (key, values), (shape, dtype) in zip(self._buffer.items(), self._spec.values(), strict=True)
        }

    def commit(self, success: bool, meta: Mapping[str, Any] | None = None) -> Path:
        """Write the episode atomically and close the recorder; return its directory.

        ``meta`` is merged over the meta given to `EpisodeWriter.begin`. Raises ValueError if no step was
        added, FileExistsError if the episode was committed meanwhile. On any error nothing is left under
        the final name and the recorder stays open.
        """
        self._check_open()
        if not isinstance(success, bool | np.bool_):
            raise TypeError(f"success must be a bool, got {type(success).__name__}")
        if self._num_steps == 0:
            raise ValueError(f"cannot commit episode {self.index}: no steps were added")
        doc = {
            "format_version": FORMAT_VERSION,
            "index": self.index,
            "num_steps": self._num_steps,
            "success": bool(success),
            "keys": {
                k: {"shape": list(shape), "dtype": str(dtype)} for k, (shape, dtype) in self._spec.items()
            },
            "meta": {**self._meta, **_json_meta(meta, "episode meta")},
        }
        text = _dumps(doc)
        arrays = {key: np.stack(values) for key, values in self._buffer.items()}
        if self.path.exists():
            raise FileExistsError(f"episode {self.index} already exists at {self.path}")
        tmp = self.path.parent / f"{TMP_PREFIX}{self.path.name}-{uuid.uuid4().hex[:12]}"
        tmp.mkdir()
        try:
            write_npz(tmp / STEPS_FILE, arrays)
            write_durably(tmp / EPISODE_FILE, text.encode("utf-8"))
            fsync_dir(tmp)
            if self.path.exists():
                raise FileExistsError(f"episode {self.index} already exists at {self.path}")
            os.replace(tmp, self.path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        fsync_dir(self.path.parent)
        self.discard()
        return self.path

    def discard(self) -> None:
        """Drop the buffered steps and close the recorder. Does nothing if already closed."""
        self._buffer = {}
        self._num_steps = 0
        self._closed = True

    def __enter__(self) -> EpisodeRecorder:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._closed and exc_type is None and self._num_steps > 0:
            warnings.warn(
                f"episode {self.index}: leaving the with block without commit() discards "
                f"{self._num_steps} steps",
                RuntimeWarning,
                stacklevel=2,
            )
        self.discard()


# --- reading -------------------------------------------------------------------------------


class Episode:
    """A committed episode; step arrays are loaded lazily, one key at a time, and cached read-only.

    Attributes: ``index``, ``num_steps`` (T), ``success``, ``keys``, ``meta`` (the free episode meta:
    task, instruction, seed, ...), ``info`` (the whole ``episode.json`` document), ``path``.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        doc_path = self.path / EPISODE_FILE
        self.info: dict[str, Any] = _read_json(doc_path, "episode")
        _check_version(self.info, doc_path)
        try:
            self.index = int(self.info["index"])
            self.num_steps = int(self.info["num_steps"])
            self.success = bool(self.info["success"])
            self.meta: dict[str, Any] = dict(self.info.get("meta", {}))
            self._spec = {
                k: (tuple(int(n) for n in v["shape"]), np.dtype(v["dtype"]))
                for k, v in self.info["keys"].items()
            }
        except (KeyError, TypeError, ValueError) as err:
            raise EpisodeFormatError(f"{doc_path}: malformed episode file: {err!r}") from err
        steps = self.path / STEPS_FILE
        try:  # the zip directory is at the end: a truncated steps file fails here, not mid-training
            with zipfile.ZipFile(steps) as zf:
                missing = sorted({k + ".npy" for k in self._spec} - set(zf.namelist()))
        except Exception as err:
            raise EpisodeFormatError(f"{steps}: damaged steps file: {type(err).__name__}: {err}") from err
        if missing:
            raise EpisodeFormatError(f"{steps}: damaged steps file: no member {missing}")
        self.keys: tuple[str, ...] = tuple(self._spec)
        """The step keys, in the order of the first step."""
        self._cache: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return self.num_steps

    def __repr__(self) -> str:
        return f"Episode(index={self.index}, num_steps={self.num_steps}, success={self.success})"

    def __getitem__(self, key: str) -> np.ndarray:
        """The array of ``key`` over the episode, shape ``(T, *per_step_shape)``; read-only."""
        if key not in self._spec:
            raise KeyError(f"episode {self.index} has no key {key!r}; keys: {list(self.keys)}")
        if key not in self._cache:
            path = self.path / STEPS_FILE
            try:
                with np.load(path, allow_pickle=False) as npz:
                    array = npz[key]
            except Exception as err:  # BadZipFile, EOFError, zlib.error, ...: always name the file
                raise EpisodeFormatError(f"{path}: cannot read {key!r}: {type(err).__name__}: {err}") from err
            shape, dtype = self._spec[key]
            if array.shape != (self.num_steps, *shape) or array.dtype != dtype:
                raise EpisodeFormatError(
                    f"{path}: key {key!r} has shape {array.shape} dtype {array.dtype}, "
                    f"episode.json says {(self.num_steps, *shape)} {dtype}"
                )
            array.flags.writeable = False
            self._cache[key] = array
        return self._cache[key]

    def step(self, t: int) -> dict[str, np.ndarray]:
        """Step ``t`` (negative counts from the end) as a dict key -> array of the per-step shape."""
        t = operator.index(t)
        if not -self.num_steps <= t < self.num_steps:
            raise IndexError(f"step {t} out of range for episode {self.index} with {self.num_steps} steps")
        return {key: self[key][t, ...] for key in self.keys}


class EpisodeDataset:
    """Reads the dataset at ``root``: ``len(ds)``, ``ds.indices``, ``ds.episode(i)``, ``for ep in ds``.

    Raises `EpisodeFormatError` if ``dataset.json`` is missing or of an unsupported version. The list of
    episodes is read from disk on every access, so episodes committed meanwhile appear.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        path = self.root / DATASET_FILE
        if not path.is_file():
            raise EpisodeFormatError(
                f"{self.root} is not a dexhier episode dataset: {DATASET_FILE} is missing"
            )
        self.info: dict[str, Any] = _read_json(path, "dataset")
        """The whole ``dataset.json`` document."""
        _check_version(self.info, path)
        self.meta: dict[str, Any] = dict(self.info.get("meta", {}))
        """The dataset meta given by the writer (joint names, cameras, control_hz, ...)."""
        self.episodes_dir = self.root / EPISODES_DIR

    def _entries(self) -> list[os.DirEntry[str]]:
        try:
            with os.scandir(self.episodes_dir) as it:
                return [entry for entry in it if entry.is_dir()]
        except FileNotFoundError:
            return []

    @property
    def indices(self) -> list[int]:
        """Sorted indices of the committed episodes."""
        found = (_EPISODE_DIR_RE.fullmatch(entry.name) for entry in self._entries())
        return sorted(int(m.group(1)) for m in found if m)

    @property
    def incomplete(self) -> list[Path]:
        """``.tmp-*`` directories: episodes being committed now, or left by a crash (then safe to delete)."""
        return sorted(Path(e.path) for e in self._entries() if e.name.startswith(TMP_PREFIX))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[Episode]:
        """Episodes in index order; a damaged one is skipped with a warning naming its file."""
        for index in self.indices:
            try:
                yield self.episode(index)
            except EpisodeFormatError as err:  # one bad file must not stop a dataset's listing or training
                warnings.warn(f"skipped episode {index}: {err}", UserWarning, stacklevel=2)

    def episode(self, index: int) -> Episode:
        """The committed episode ``index``; KeyError if there is none."""
        path = self.episodes_dir / episode_dirname(operator.index(index))
        if not path.is_dir():
            raise KeyError(f"no committed episode {index} in {self.root}")
        return Episode(path)
