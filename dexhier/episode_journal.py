"""Crash-safe recording of long episodes: a journal on disk while the episode runs.

`EpisodeRecorder` keeps an episode in memory until it commits, which is right for the expert
collector (an episode is seconds of simulation) but not for a human demonstration: a crash would
lose minutes of an operator's work. `JournaledRecorder` writes the steps to a journal directory
every ``flush_every`` steps while recording::

    ROOT/episodes/.inflight-episode_000007/journal.json        index, meta, started_at
    ROOT/episodes/.inflight-episode_000007/chunk_000000.npz    steps 0 .. n-1 (fsynced, then renamed)
    ROOT/episodes/.inflight-episode_000007/chunk_000001.npz    ...

Saving commits the episode atomically as usual and then deletes its journal; discarding deletes the
journal. If the process dies (``kill -9``, power loss, a full disk), the journal stays; `recover`
turns it into a committed episode marked ``incomplete`` (success false) with every flushed step,
so nothing already flushed is lost and a reader can tell the episode did not end normally.
Readers of the dataset never look at journals (their names start with a dot).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from dexhier.episodes import (
    EPISODES_DIR,
    EpisodeDataset,
    EpisodeRecorder,
    EpisodeWriter,
    StepValue,
    episode_dirname,
    fsync_dir,
    write_durably,
    write_npz,
)

JOURNAL_PREFIX = ".inflight-"
"""Prefix of a journal directory, and of a teleop bag being written."""
JOURNAL_FILE = "journal.json"
LOCK_FILE = ".lock"
QUARANTINE_DIR = "quarantine"
"""``ROOT/quarantine/``: damaged files moved aside by recovery, never deleted (readers ignore it)."""
_CHUNK_RE = re.compile(r"chunk_(\d{6})\.npz")
# A chunk written but not yet renamed when the process died: as complete as a renamed one if it loads.
_TMP_CHUNK_RE = re.compile(r"\.chunk_(\d{6})\.npz-[0-9a-f]+")
_JOURNAL_RE = re.compile(re.escape(JOURNAL_PREFIX) + r"episode_(\d{6,})")


def journal_path(root: str | os.PathLike[str], index: int) -> Path:
    """Journal directory of episode ``index`` in the dataset at ``root``."""
    return Path(root) / EPISODES_DIR / f"{JOURNAL_PREFIX}{episode_dirname(index)}"


def inflight_indices(root: str | os.PathLike[str]) -> list[int]:
    """Indices of the episodes that have a journal (in flight now, or left by a crash)."""
    try:
        names = os.listdir(Path(root) / EPISODES_DIR)
    except FileNotFoundError:
        return []
    return sorted(int(m.group(1)) for m in map(_JOURNAL_RE.fullmatch, names) if m)


def next_index(root: str | os.PathLike[str]) -> int:
    """The first index after every committed or journaled episode: where recording resumes."""
    used = list(EpisodeDataset(root).indices) + inflight_indices(root)
    return max(used) + 1 if used else 0


class JournaledRecorder:
    """Records one episode with a journal on disk; same step rules as `EpisodeRecorder`.

    Args:
        writer: the dataset's writer.
        index: the episode index (must be free: neither committed nor journaled).
        meta: the free episode meta (task, instruction, ...), JSON-able.
        flush_every: steps buffered before a chunk is written to the journal (at 20 Hz, 20 = 1 s).
        flush_interval: s (monotonic clock): no step stays out of the journal longer (checked when a
            step is added, and by `flush_if_due` for ticks without steps), so a slow loop loses no
            more; None: by steps only.

    OSError from the disk (full, read-only) propagates from `add_step` / `commit`; the journal
    then still holds every step flushed before, for `recover`.
    """

    def __init__(
        self,
        writer: EpisodeWriter,
        index: int,
        meta: Mapping[str, Any],
        flush_every: int = 20,
        flush_interval: float | None = 0.5,
    ) -> None:
        if flush_every < 1:
            raise ValueError(f"flush_every must be >= 1, got {flush_every}")
        if flush_interval is not None and not flush_interval > 0:
            raise ValueError(f"flush_interval must be > 0 s or None, got {flush_interval}")
        self.flush_interval = flush_interval
        self._pending_since: float | None = None  # monotonic time of the oldest step not in the journal
        self.path = journal_path(writer.root, index)
        if self.path.exists():
            raise FileExistsError(f"episode {index} has a journal at {self.path}; recover it first")
        self._rec: EpisodeRecorder = writer.begin(index, meta)
        self.index = index
        self.flush_every = flush_every
        self._flushed = 0
        self._chunks = 0
        doc = {
            "index": index,
            "meta": dict(meta),
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        self.path.mkdir()
        try:
            write_durably(self.path / JOURNAL_FILE, json.dumps(doc, indent=2).encode("utf-8"))
            fsync_dir(self.path.parent)
        except BaseException:  # a journal without its description would block the index forever
            shutil.rmtree(self.path, ignore_errors=True)
            raise

    @property
    def num_steps(self) -> int:
        return self._rec.num_steps

    @property
    def flushed_steps(self) -> int:
        """Steps already safe in the journal."""
        return self._flushed

    @property
    def closed(self) -> bool:
        return self._rec.closed

    def add_step(self, step: Mapping[str, StepValue]) -> None:
        """Append one step (validated as `EpisodeRecorder.add_step`); flushes a chunk when due."""
        self._rec.add_step(step)
        if self._pending_since is None:
            self._pending_since = time.monotonic()
        if self._rec.num_steps - self._flushed >= self.flush_every:
            self.flush()
        else:
            self.flush_if_due()

    def flush_if_due(self) -> bool:
        """Flush if the oldest step not yet in the journal was added ``flush_interval`` s ago or more."""
        since = self._pending_since
        if self.flush_interval is None or since is None or time.monotonic() - since < self.flush_interval:
            return False
        if self._rec.closed or self._rec.num_steps == self._flushed:
            return False
        self.flush()
        return True

    def flush(self) -> None:
        """Write the steps not yet in the journal as one chunk (fsynced, then renamed into place)."""
        if self._rec.closed or self._rec.num_steps == self._flushed:
            return
        arrays = self._rec.stacked(self._flushed)
        final = self.path / f"chunk_{self._chunks:06d}.npz"
        tmp = self.path / f".{final.name}-{uuid.uuid4().hex[:8]}"
        try:
            write_npz(tmp, arrays, compress=False)  # stored: deflating stalls the control loop
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(self.path)
        self._flushed = self._rec.num_steps
        self._chunks += 1
        self._pending_since = None

    def commit(self, success: bool, meta: Mapping[str, Any] | None = None) -> Path:
        """Commit the episode atomically, then delete its journal; returns the episode directory."""
        path = self._rec.commit(success, meta)
        shutil.rmtree(self.path, ignore_errors=True)
        return path

    def discard(self) -> None:
        """Drop the episode and its journal."""
        self._rec.discard()
        shutil.rmtree(self.path, ignore_errors=True)


@dataclass(frozen=True)
class Recovery:
    """What `recover` did with one journal.

    ``action``: "committed", "removed" (nothing flushed, or already committed), "quarantined" (no
    intact chunk: the journal was moved to ``ROOT/quarantine/``) or "kept" (recovery itself failed,
    e.g. a disk error: the journal is left in place). ``quarantined``: paths moved aside.
    """

    index: int
    action: str
    steps: int
    message: str
    quarantined: tuple[str, ...] = ()


INCOMPLETE_REASON = "the recorder stopped before the episode ended; recovered from its journal"


def quarantine(root: str | os.PathLike[str], paths: list[Path], name: str, reason: str) -> Path:
    """Move ``paths`` (inside the dataset) to ``ROOT/quarantine/<name>-<UTC time>-<id>/`` with a
    ``reason.txt``; returns that directory. Nothing is deleted: a person may still rescue the data."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    dest = Path(root) / QUARANTINE_DIR / f"{name}-{stamp}-{uuid.uuid4().hex[:6]}"
    dest.mkdir(parents=True)
    write_durably(dest / "reason.txt", (reason.rstrip() + "\n").encode("utf-8"))
    for path in paths:
        os.replace(path, dest / path.name)  # same file system: a rename, never a copy and delete
        fsync_dir(path.parent)
    fsync_dir(dest)
    fsync_dir(dest.parent)
    return dest


def _read_chunk(path: Path) -> dict[str, np.ndarray]:
    """The arrays of one journal chunk; ValueError naming the file if it is damaged in any way."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except Exception as err:  # BadZipFile, EOFError, zlib.error, OSError, ...
        raise ValueError(f"{path.name}: {type(err).__name__}: {err}") from err
    lengths = {len(a) if a.ndim else -1 for a in arrays.values()}
    if not arrays or len(lengths) != 1 or min(lengths) < 1:
        raise ValueError(f"{path.name}: keys disagree on the number of steps ({sorted(lengths)})")
    return arrays


def _load_chunks(path: Path) -> tuple[dict[str, np.ndarray], int, list[tuple[Path, str]], list[int]]:
    """(arrays, steps, damaged chunks with why, step indices after which a damaged chunk is missing).

    Every chunk that loads and matches the first intact one (keys, per-step shape and dtype) is kept,
    in chunk order; the others are returned as damaged.
    """
    found: dict[int, Path] = {}
    for p in sorted(path.iterdir()):
        m = _CHUNK_RE.fullmatch(p.name) or _TMP_CHUNK_RE.fullmatch(p.name)
        if m and (int(m.group(1)) not in found or not p.name.startswith(".")):
            found[int(m.group(1))] = p
    good: list[dict[str, np.ndarray]] = []
    damaged: list[tuple[Path, str]] = []
    gaps: list[int] = []
    spec: dict[str, tuple[tuple[int, ...], np.dtype]] | None = None
    steps = 0
    for number in sorted(found):
        chunk = found[number]
        try:
            arrays = _read_chunk(chunk)
            got = {k: (a.shape[1:], a.dtype) for k, a in arrays.items()}
            spec = got if spec is None else spec
            if got != spec:
                raise ValueError(f"{chunk.name}: keys, shapes or dtypes differ from the other chunks")
        except ValueError as err:
            damaged.append((chunk, str(err)))
            gaps.append(steps)
            continue
        good.append(arrays)
        steps += len(next(iter(arrays.values())))
    arrays = {k: np.concatenate([g[k] for g in good]) for k in spec} if good and spec else {}
    gaps = sorted({g for g in gaps if 0 < g < steps})  # a lost head or tail is not a gap between steps
    return arrays, steps, damaged, gaps


def _recover_one(
    writer: EpisodeWriter, index: int, extra_meta: Callable[[int], dict[str, Any]] | None
) -> Recovery:
    path = journal_path(writer.root, index)
    root = Path(writer.root)
    if not any(_CHUNK_RE.fullmatch(p.name) or _TMP_CHUNK_RE.fullmatch(p.name) for p in path.iterdir()):
        shutil.rmtree(path)
        return Recovery(index, "removed", 0, f"episode {index}: no step was flushed")
    if writer.episode_path(index).exists():
        # Committed, then killed before the journal was deleted: the episode is whole.
        shutil.rmtree(path)
        return Recovery(index, "removed", 0, f"episode {index} was already committed")
    arrays, steps, damaged, gaps = _load_chunks(path)
    problems = [why for _, why in damaged]
    try:
        doc = json.loads((path / JOURNAL_FILE).read_text(encoding="utf-8"))
        meta = doc.get("meta", {}) if isinstance(doc, dict) else None
        if not isinstance(meta, dict):
            raise ValueError("no meta object")
    except (OSError, ValueError) as err:  # the steps are still worth keeping without their meta
        meta = {}
        problems.append(f"{JOURNAL_FILE}: {err}")
        if (path / JOURNAL_FILE).exists():
            damaged.append((path / JOURNAL_FILE, str(err)))
    name = f"{episode_dirname(index)}-journal"
    if steps == 0:  # nothing intact: move the whole journal aside (it no longer blocks its index)
        dest = quarantine(root, [path], name, "no intact journal chunk:\n" + "\n".join(problems))
        moved = (str((dest / path.name).relative_to(root)),)
        return Recovery(index, "quarantined", 0, f"episode {index}: no intact journal chunk "
                        f"({'; '.join(problems)}); journal moved to {moved[0]}", moved)  # fmt: skip
    moved: tuple[str, ...] = ()
    if damaged:  # moved aside before the commit: a later run never finds them in a removed journal
        dest = quarantine(root, [p for p, _ in damaged], name, "\n".join(problems))
        moved = tuple(str((dest / p.name).relative_to(root)) for p, _ in damaged)
    rec = writer.begin(index, meta)
    for t in range(steps):
        rec.add_step({k: a[t] for k, a in arrays.items()})
    extra = (
        {"quarantined": list(moved), "recovery_gaps": gaps, "recovery_problems": problems} if damaged else {}
    )
    rec.commit(
        success=False,
        meta={
            "incomplete": True,
            "end_reason": INCOMPLETE_REASON,
            "recovered_steps": steps,
            **extra,
            **(extra_meta(index) if extra_meta is not None else {}),
        },  # fmt: skip
    )
    shutil.rmtree(path)
    note = f"; damaged, moved aside: {', '.join(moved)}" if moved else ""
    message = f"episode {index}: {steps} steps recovered, marked incomplete{note}"
    return Recovery(index, "committed", steps, message, moved)


def recover(
    writer: EpisodeWriter, extra_meta: Callable[[int], dict[str, Any]] | None = None
) -> list[Recovery]:
    """Turn every journal left in the dataset into a committed episode marked incomplete.

    Every intact chunk is kept, in order (``meta.recovery_gaps``: step indices where a damaged chunk
    is missing); damaged chunks and an unreadable ``journal.json`` are moved to ``ROOT/quarantine/``
    (``meta.quarantined``), never deleted. A journal with no flushed step is removed; one with no
    intact chunk is quarantined whole. One journal's failure is reported and never stops the others.
    ``extra_meta(index)`` adds to a recovered episode's meta (the bag it left, say). Must not run
    while another process records into the same dataset (hold `DatasetLock`).
    """
    results: list[Recovery] = []
    for index in inflight_indices(writer.root):
        try:
            results.append(_recover_one(writer, index, extra_meta))
        except Exception as err:  # a disk error, say: report it, leave the journal, go on
            path = journal_path(writer.root, index)
            results.append(Recovery(index, "kept", 0, f"journal {path} could not be recovered "
                                    f"({type(err).__name__}: {err}); left in place"))  # fmt: skip
    return results


class DatasetLock:
    """An exclusive lock on a dataset (``ROOT/.lock``, ``fcntl.flock``) for one recording process.

    Recorders hold it while they run, and ``dataset recover`` / ``rm`` take it, so they never touch
    the journal of an episode another process is writing. The kernel drops it when the holder dies
    (even by ``kill -9``), so a crash never leaves the dataset locked.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.path = Path(root) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> DatasetLock:
        """Take the lock; RuntimeError naming the holder's pid if another process has it,
        FileNotFoundError if the dataset directory does not exist (it is never created here)."""
        if not self.path.parent.is_dir():
            raise FileNotFoundError(f"{self.path.parent} does not exist (no dataset there)")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RuntimeError(
                f"{self.path.parent} is in use by another recording process (pid {holder}); "
                "stop it first, or record into another directory"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> DatasetLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
