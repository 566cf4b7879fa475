"""Reviewing an episode dataset: summaries for ``dexhier dataset info|ls|show|rm|recover``.

Works on any dataset in the episode format (expert or teleop); reads only ``dataset.json`` and the
``episode.json`` files unless asked for frames.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from dexhier import vocabulary as V
from dexhier.episode_journal import (
    JOURNAL_PREFIX,
    QUARANTINE_DIR,
    DatasetLock,
    inflight_indices,
    journal_path,
    quarantine,
    recover,
)
from dexhier.episodes import (
    BAGS_DIR,
    EPISODE_FILE,
    TMP_PREFIX,
    Episode,
    EpisodeDataset,
    EpisodeFormatError,
    EpisodeWriter,
    episode_dirname,
)


def _dir_bytes(path: Path) -> int:
    total = 0
    for base, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):  # a file removed meanwhile
                total += os.path.getsize(os.path.join(base, name))
    return total


def _duration(ep: Episode) -> float:
    hz = ep.meta.get("control_hz")
    if V.STEP_TIME in ep.keys and ep.num_steps > 1:
        t = ep[V.STEP_TIME]
        return float(t[-1] - t[0]) + float(t[1] - t[0])
    return ep.num_steps / float(hz) if hz else float("nan")


def episode_row(ep: Episode) -> dict[str, Any]:
    """One line of ``dataset ls``: index, steps, duration (s), outcome and flags."""
    meta = ep.meta
    flags = []
    if meta.get("incomplete"):
        flags.append("incomplete")
    if meta.get("rate_ok") is False:
        flags.append("slow-loop")
    if meta.get("invalid_device_commands"):
        flags.append(f"invalid-input:{meta['invalid_device_commands']}")
    return {
        "index": ep.index,
        "steps": ep.num_steps,
        "duration_s": round(_duration(ep), 3),
        "success": ep.success,
        "task": meta.get("task", ""),
        "instruction": meta.get("instruction", ""),
        "source": meta.get("source", ""),
        "end_reason": meta.get("end_reason", ""),
        "flags": flags,
    }


def episode_rows(root: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """``episode_row`` of every episode; a damaged one gives ``{"index", "error"}`` (the error names the
    file) instead of stopping the listing."""
    ds = EpisodeDataset(root)
    rows: list[dict[str, Any]] = []
    for index in ds.indices:
        try:
            rows.append(episode_row(ds.episode(index)))
        except KeyError:  # removed since the listing
            continue
        except EpisodeFormatError as err:
            rows.append({"index": index, "error": str(err)})
    return rows


def dataset_info(root: str | os.PathLike[str]) -> dict[str, Any]:
    """Dataset summary: source, task, joints, cameras, rate; episode, success and step counts; size.

    ``episodes`` counts intact episodes; ``damaged`` maps a damaged one's index to its error."""
    ds = EpisodeDataset(root)
    all_rows = episode_rows(root)
    rows = [r for r in all_rows if "error" not in r]
    quarantined = Path(root) / QUARANTINE_DIR
    meta = ds.meta
    return {
        "root": str(ds.root),
        "format_version": ds.info.get("format_version"),
        "created_at": ds.info.get("created_at"),
        "source": meta.get("source", ""),
        "task": meta.get("task", ""),
        "control_hz": meta.get("control_hz"),
        "cameras": meta.get("cameras", []),
        "image_size": meta.get("image_size"),
        "action_names": meta.get("action_names", []),
        "episodes": len(rows),
        "successes": sum(r["success"] for r in rows),
        "incomplete": sum("incomplete" in r["flags"] for r in rows),
        "slow_loop": sum("slow-loop" in r["flags"] for r in rows),
        "steps": sum(r["steps"] for r in rows),
        "duration_s": round(sum(r["duration_s"] for r in rows), 3),
        "damaged": {r["index"]: r["error"] for r in all_rows if "error" in r},
        "quarantined": sorted(p.name for p in quarantined.iterdir()) if quarantined.is_dir() else [],
        "inflight_journals": inflight_indices(root),
        "bags": sorted(p.name for p in (Path(root) / BAGS_DIR).glob("episode_*.mcap")),
        "size_mb": round(_dir_bytes(Path(root)) / 1e6, 3),
    }


def episode_detail(root: str | os.PathLike[str], index: int) -> dict[str, Any]:
    """``dataset show``: the episode meta, each key's shape and dtype, and the action range."""
    ep = EpisodeDataset(root).episode(index)
    keys = {k: {"shape": list(ep[k].shape), "dtype": str(ep[k].dtype)} for k in ep.keys}
    out: dict[str, Any] = {**episode_row(ep), "meta": ep.meta, "keys": keys, "path": str(ep.path)}
    if V.ACTION in ep.keys and V.ACTION_REQUEST in ep.keys:
        sent, req = ep[V.ACTION], ep[V.ACTION_REQUEST]
        finite = np.isfinite(req).all(axis=1)
        diff = np.abs(sent[finite] - req[finite])
        out["steps_modified_by_safety"] = int(np.sum(diff.max(axis=1) > 1e-9)) if diff.size else 0
        out["steps_without_request"] = int(np.sum(~finite))
    return out


def contact_sheet(root: str | os.PathLike[str], index: int, camera: str, frames: int = 8) -> np.ndarray:
    """``frames`` evenly spaced colour images of ``camera`` side by side: uint8 (H, frames * W, 3)."""
    ep = EpisodeDataset(root).episode(index)
    key = V.rgb_key(camera)
    if key not in ep.keys:
        cams = [k.split("/", 1)[1] for k in ep.keys if k.startswith("rgb/")]
        raise KeyError(f"episode {index} has no camera {camera!r}; cameras: {cams}")
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    images = ep[key]
    picks = np.linspace(0, len(images) - 1, min(frames, len(images))).round().astype(int)
    return np.concatenate([images[i] for i in picks], axis=1)


def _meta_bag(episode_dir: Path) -> str | None:
    """The ``bag`` an episode's meta names, or None (no bag, or an unreadable ``episode.json``)."""
    try:
        bag = json.loads((episode_dir / EPISODE_FILE).read_text(encoding="utf-8"))["meta"].get("bag")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return bag if isinstance(bag, str) and bag else None


def _bags_of(root: Path, index: int, episode_dir: Path) -> list[Path]:
    """The bag files of an episode: the one its meta names, else those named after its index."""
    named = _meta_bag(episode_dir)
    stem = root / BAGS_DIR / episode_dirname(index)
    candidates = (
        [root / named] if named else [stem.with_suffix(".mcap"), stem.with_suffix(".incomplete.mcap")]
    )
    return [p for p in candidates if p.is_file()]


def remove_episodes(root: str | os.PathLike[str], indices: list[int]) -> list[Path]:
    """Delete committed episodes (damaged ones too) and their bags; returns the removed paths.

    EpisodeFormatError if ``root`` is not a dataset (nothing is created there). Every index is checked
    before anything is deleted (KeyError names the first missing one). An episode is renamed out of
    the readers' sight first, so an interrupted removal never leaves a half-deleted episode under its
    final name.
    """
    root = Path(root)
    ds = EpisodeDataset(root)  # a mistyped path fails here, before the lock touches anything
    with DatasetLock(root):
        paths = [ds.episodes_dir / episode_dirname(i) for i in indices]
        for index, path in zip(indices, paths, strict=True):
            if not path.is_dir():  # KeyError before any deletion
                raise KeyError(f"no committed episode {index} in {root}")
        removed: list[Path] = []
        for index, path in zip(indices, paths, strict=True):
            bags = _bags_of(root, index, path)
            hidden = path.with_name(f"{TMP_PREFIX}rm-{path.name}")
            path.replace(hidden)
            shutil.rmtree(hidden)
            removed.append(path)
            for bag in bags:
                bag.unlink(missing_ok=True)
                removed.append(bag)
        return removed


def _recover_bag_file(root: Path, index: int, bag: Path, journaled: bool) -> tuple[str, Path | None]:
    """Give one in-flight bag its place: (message, where it is now if its episode can point at it).

    A committed episode's bag goes to the name its meta gives (killed between the commit and the
    rename); a journaled episode's to ``episode_N.incomplete.mcap``. A bag without a footer is
    rewritten (`recover_bag`); its unreadable tail, or the whole file if a chunk inside was damaged,
    goes to quarantine. A bag whose episode exists nowhere is quarantined.
    """
    from dexhier.teleop.bag import is_complete, recover_bag

    episode_dir = root / "episodes" / episode_dirname(index)
    named = _meta_bag(episode_dir) if episode_dir.is_dir() else None
    target = root / named if named else bag.with_name(f"{episode_dirname(index)}.incomplete.mcap")
    if is_complete(bag):  # closed, then killed before its rename
        os.replace(bag, target)
        message = f"bag {bag.name} was complete: renamed {target.name}"
    else:
        result = recover_bag(bag, target)
        message = (
            f"bag {bag.name} was left by a crash (no footer): {result.messages} messages of "
            f"{len(result.counts)} topics rewritten as a valid MCAP, {target.name}"
        )
        size = bag.stat().st_size
        name = f"bag-{episode_dirname(index)}"
        if result.damaged_chunks:
            dest = quarantine(root, [bag], name, f"{result.damaged_chunks} damaged chunks; {result.stopped}")
            message += f"; {result.damaged_chunks} damaged chunks, original moved to {dest.relative_to(root)}"
        elif result.intact_bytes < size:
            tail = bag.with_name(f"{bag.name}.tail")
            with open(bag, "rb") as src, open(tail, "wb") as dst:
                src.seek(result.intact_bytes)
                shutil.copyfileobj(src, dst)
            dest = quarantine(
                root, [tail], name, f"unreadable tail at byte {result.intact_bytes}: {result.stopped}"
            )
            bag.unlink()
            message += (
                f"; its unreadable last {size - result.intact_bytes} bytes moved to {dest.relative_to(root)}"
            )
        else:
            bag.unlink()
    if episode_dir.is_dir() or journaled:
        return message, target
    dest = quarantine(root, [target], f"bag-{episode_dirname(index)}", "a bag without an episode or journal")
    return f"{message}; no episode {index}: moved to {dest.relative_to(root)}", None


def recover_dataset(root: str | os.PathLike[str], take_lock: bool = True) -> list[str]:
    """Recover what a crash or a damaged file left, one episode at a time (one failure never stops
    the others, nor a recorder starting up); returns one message per thing done.

    * a committed episode that no longer opens (cut ``episode.json``, truncated ``steps.npz``) is
      moved, with its bag, to ``ROOT/quarantine/`` (never deleted);
    * an in-flight bag is rewritten into a valid, indexed MCAP of everything flushed (see
      `_recover_bag_file`);
    * journals become episodes marked incomplete (`dexhier.episode_journal.recover`: every intact
      chunk kept, damaged ones quarantined) whose meta ``bag`` points at the rewritten bag.

    EpisodeFormatError if ``root`` is not a dataset (nothing is created there). Takes the dataset's
    lock (RuntimeError if a recorder is running on it) unless ``take_lock`` is False because the
    caller, a recorder starting up, holds it already.
    """
    root = Path(root)
    ds = EpisodeDataset(root)  # a mistyped path fails here, before the lock touches anything
    if take_lock:
        with DatasetLock(root):
            return recover_dataset(root, take_lock=False)
    messages: list[str] = []
    for index in ds.indices:
        try:
            ds.episode(index)
        except KeyError:
            continue
        except EpisodeFormatError as err:
            path = ds.episodes_dir / episode_dirname(index)
            try:
                dest = quarantine(
                    root, [path, *_bags_of(root, index, path)], episode_dirname(index), str(err)
                )
                messages.append(f"episode {index} is damaged ({err}): moved to {dest.relative_to(root)}")
            except OSError as qerr:
                messages.append(f"episode {index} is damaged ({err}) and could not be moved aside ({qerr})")
    journals = set(inflight_indices(root))
    bags: dict[int, str] = {}
    for bag in sorted((root / BAGS_DIR).glob(f"{JOURNAL_PREFIX}episode_*.mcap")):
        index = int(bag.name.removeprefix(f"{JOURNAL_PREFIX}episode_").removesuffix(".mcap"))
        try:
            message, target = _recover_bag_file(root, index, bag, index in journals)
        except Exception as err:  # report and go on: the bag stays where it is for a later try
            messages.append(
                f"bag {bag.name} could not be recovered ({type(err).__name__}: {err}); left in place"
            )
            continue
        messages.append(message)
        if target is not None and index in journals:
            bags[index] = str(target.relative_to(root))
    results = recover(EpisodeWriter(root, ds.meta), lambda i: {"bag": bags[i]} if i in bags else {})
    messages = [r.message for r in results] + messages
    for r in results:
        bag_path = root / bags[r.index] if r.index in bags else None
        if (
            bag_path is not None
            and bag_path.exists()
            and not (ds.episodes_dir / episode_dirname(r.index)).is_dir()
        ):
            try:  # the journal gave no episode: its bag is all that is left of it
                dest = quarantine(root, [bag_path], f"bag-{episode_dirname(r.index)}", r.message)
                messages.append(f"episode {r.index}: its bag moved to {dest.relative_to(root)}")
            except OSError as err:
                messages.append(
                    f"episode {r.index}: its bag {bag_path.name} could not be moved aside ({err})"
                )
    for index in sorted(journals):
        if journal_path(root, index).exists():
            messages.append(f"episode {index}: journal kept in place (see above)")
    return messages
