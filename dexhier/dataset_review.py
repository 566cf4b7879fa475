"""Reviewing an episode dataset: summaries for ``dexhier dataset info|ls|show|rm|recover``.

Works on any dataset in the episode format (expert or teleop); reads only ``dataset.json`` and the
``episode.json`` files unless asked for frames.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from dexhier import vocabulary as V
from dexhier.episode_journal import JOURNAL_PREFIX, DatasetLock, inflight_indices, journal_path, recover
from dexhier.episodes import BAGS_DIR, TMP_PREFIX, Episode, EpisodeDataset, EpisodeWriter


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


def dataset_info(root: str | os.PathLike[str]) -> dict[str, Any]:
    """Dataset summary: source, task, joints, cameras, rate; episode, success and step counts; size."""
    ds = EpisodeDataset(root)
    rows = [episode_row(ep) for ep in ds]
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


def remove_episodes(root: str | os.PathLike[str], indices: list[int]) -> list[Path]:
    """Delete committed episodes and their bags; returns the removed paths.

    Every index is checked before anything is deleted (KeyError names the first missing one). An
    episode is renamed out of the readers' sight first, so an interrupted removal never leaves a
    half-deleted episode under its final name.
    """
    with DatasetLock(root):
        ds = EpisodeDataset(root)
        episodes = [ds.episode(i) for i in indices]  # KeyError before any deletion
        removed: list[Path] = []
        for ep in episodes:
            hidden = ep.path.with_name(f"{TMP_PREFIX}rm-{ep.path.name}")
            ep.path.replace(hidden)
            shutil.rmtree(hidden)
            removed.append(ep.path)
            bag = ep.meta.get("bag")
            if bag and (Path(root) / bag).exists():
                (Path(root) / bag).unlink()
                removed.append(Path(root) / bag)
        return removed


def recover_dataset(root: str | os.PathLike[str], take_lock: bool = True) -> list[str]:
    """Recover what a crashed recorder left: journals become episodes marked incomplete (see
    `dexhier.episode_journal.recover`), in-flight bags are renamed ``*.incomplete.mcap``.

    Takes the dataset's lock (RuntimeError if a recorder is running on it) unless ``take_lock`` is
    False because the caller, a recorder starting up, holds it already.
    """
    if take_lock:
        with DatasetLock(root):
            return recover_dataset(root, take_lock=False)
    ds = EpisodeDataset(root)
    messages: list[str] = []
    bags: dict[int, str] = {}
    for bag in sorted((Path(root) / BAGS_DIR).glob(f"{JOURNAL_PREFIX}episode_*.mcap")):
        name = bag.name.removeprefix(JOURNAL_PREFIX).removesuffix(".mcap")
        target = bag.with_name(f"{name}.incomplete.mcap")
        bag.replace(target)
        bags[int(name.removeprefix("episode_"))] = f"{BAGS_DIR}/{target.name}"
        messages.append(f"bag {bag.name} was left by a crash (no footer): renamed {target.name}")
    journals = set(inflight_indices(root))
    results = recover(EpisodeWriter(root, ds.meta), lambda i: {"bag": bags[i]} if i in bags else {})
    messages = [r.message for r in results] + messages
    for index in journals:
        if journal_path(root, index).exists():
            messages.append(f"episode {index}: journal kept in place (see above)")
    return messages
