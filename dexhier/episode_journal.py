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
_CHUNK_RE = re.compile(r"chunk_(\d{6})\.npz")
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

    OSError from the disk (full, read-only) propagates from `add_step` / `commit`; the journal
    then still holds every step flushed before, for `recover`.
    """

    def __init__(
        self, writer: EpisodeWriter, index: int, meta: Mapping[str, Any], flush_every: int = 20
    ) -> None:
        if flush_every < 1:
            raise ValueError(f"flush_every must be >= 1, got {flush_every}")
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
        if self._rec.num_steps - self._flushed >= self.flush_every:
            self.flush()

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
    """What `recover` did with one journal. ``action``: "committed", "removed" or "kept"."""

    index: int
    action: str
    steps: int
    message: str


INCOMPLETE_REASON = "the recorder stopped before the episode ended; recovered from its journal"


def _load_chunks(path: Path) -> tuple[dict[str, np.ndarray], int]:
    chunks = sorted(p for p in path.iterdir() if _CHUNK_RE.fullmatch(p.name))
    parts: dict[str, list[np.ndarray]] = {}
    for chunk in chunks:
        with np.load(chunk, allow_pickle=False) as npz:
            for key in npz.files:
                parts.setdefault(key, []).append(npz[key])
    arrays = {k: np.concatenate(v) for k, v in parts.items()}
    lengths = {len(a) for a in arrays.values()}
    if len(lengths) > 1:
        raise ValueError(f"chunks of {path} disagree on the number of steps: {sorted(lengths)}")
    return arrays, (lengths.pop() if lengths else 0)


def recover(
    writer: EpisodeWriter, extra_meta: Callable[[int], dict[str, Any]] | None = None
) -> list[Recovery]:
    """Turn every journal left in the dataset into a committed episode marked incomplete.

    A journal with no flushed step is removed. A journal that cannot be read (a damaged chunk) is
    kept where it is and reported, so no data is deleted that a person might still rescue.
    ``extra_meta(index)`` adds to a recovered episode's meta (the bag it left, say). Must not run
    while another process records into the same dataset (hold `DatasetLock`).
    """
    results: list[Recovery] = []
    for index in inflight_indices(writer.root):
        path = journal_path(writer.root, index)
        if not any(_CHUNK_RE.fullmatch(p.name) for p in path.iterdir()):
            shutil.rmtree(path, ignore_errors=True)
            results.append(Recovery(index, "removed", 0, f"episode {index}: no step was flushed"))
            continue
        try:
            doc = json.loads((path / JOURNAL_FILE).read_text(encoding="utf-8"))
            arrays, steps = _load_chunks(path)
        except (OSError, ValueError, KeyError) as err:
            results.append(Recovery(index, "kept", 0, f"journal {path} is unreadable ({err}); left in place"))
            continue
        if writer.episode_path(index).exists():
            # Committed, then killed before the journal was deleted: the episode is whole.
            shutil.rmtree(path, ignore_errors=True)
            results.append(Recovery(index, "removed", steps, f"episode {index} was already committed"))
            continue
        rec = writer.begin(index, doc.get("meta", {}))
        for t in range(steps):
            rec.add_step({k: a[t] for k, a in arrays.items()})
        rec.commit(
            success=False,
            meta={
                "incomplete": True,
                "end_reason": INCOMPLETE_REASON,
                "recovered_steps": steps,
                **(extra_meta(index) if extra_meta is not None else {}),
            },  # fmt: skip
        )
        shutil.rmtree(path, ignore_errors=True)
        results.append(
            Recovery(
                index, "committed", steps, f"episode {index}: {steps} steps recovered, marked incomplete"
            )
        )
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
        """Take the lock; RuntimeError naming the holder's pid if another process has it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
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
