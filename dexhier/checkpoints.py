"""Checkpoint directories: safetensors weights + JSON config + normalization statistics.

Layout of a checkpoint directory::

    DIR/config.json          {"type": ..., "format_version": 1, "config": {...}, "metrics": {...}}
    DIR/model.safetensors    the weights (a flat name -> tensor mapping)
    DIR/normalization.json   statistics used to normalize inputs / outputs ({name: list | number})

Nothing is pickled: loading a checkpoint cannot run code. Resumable training state
(optimizer moments, step) is stored the same way in ``DIR/train_state.safetensors`` +
``DIR/train_state.json`` and is not needed for inference.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
STATS_FILE = "normalization.json"
TRAIN_STATE_FILE = "train_state.safetensors"
TRAIN_META_FILE = "train_state.json"


class CheckpointError(ValueError):
    """A checkpoint is missing, of another type, or of an unsupported format version."""


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _atomic_write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def save_checkpoint(
    directory: str | Path,
    type_: str,
    config: dict[str, Any],
    weights: dict[str, torch.Tensor],
    stats: dict[str, Any],
    metrics: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint directory (files replaced atomically one by one); returns its path."""
    d = Path(directory)
    _atomic_write_tensors(d / WEIGHTS_FILE, weights)
    _atomic_write_text(d / STATS_FILE, json.dumps(stats, indent=1))
    doc = {"type": type_, "format_version": FORMAT_VERSION, "config": config, "metrics": metrics or {}}
    _atomic_write_text(d / CONFIG_FILE, json.dumps(doc, indent=1))
    return d


def read_config(directory: str | Path, expected_type: str) -> dict[str, Any]:
    """The checkpoint's ``config.json`` document, checked for type and format version."""
    d = Path(directory)
    path = d / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{d} is not a checkpoint directory: {CONFIG_FILE} is missing")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}") from err
    if doc.get("type") != expected_type:
        raise CheckpointError(f"{d} holds a {doc.get('type')!r} checkpoint, expected {expected_type!r}")
    if doc.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{d} has checkpoint format version {doc.get('format_version')}; this code reads {FORMAT_VERSION}"
        )
    return doc


def load_checkpoint(
    directory: str | Path, expected_type: str
) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
    """Load (config document, weights, normalization stats) of a checkpoint of ``expected_type``."""
    d = Path(directory)
    doc = read_config(d, expected_type)
    for name in (WEIGHTS_FILE, STATS_FILE):
        if not (d / name).is_file():
            raise CheckpointError(f"{d} is incomplete: {name} is missing")
    weights = load_file(str(d / WEIGHTS_FILE))
    stats = json.loads((d / STATS_FILE).read_text())
    return doc, weights, stats


def save_train_state(directory: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Resumable training state (optimizer moments, EMA, ...) beside a checkpoint."""
    d = Path(directory)
    _atomic_write_tensors(d / TRAIN_STATE_FILE, tensors)
    _atomic_write_text(d / TRAIN_META_FILE, json.dumps(meta, indent=1))


def load_train_state(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The training state saved by :func:`save_train_state`, or None if there is none."""
    d = Path(directory)
    if not (d / TRAIN_STATE_FILE).is_file() or not (d / TRAIN_META_FILE).is_file():
        return None
    return load_file(str(d / TRAIN_STATE_FILE)), json.loads((d / TRAIN_META_FILE).read_text())


def optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Flatten an optimizer's state into tensors + JSON-able metadata (no pickle)."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt.{pid}.{k}"] = v
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Inverse of :func:`optimizer_to_tensors`."""
    state: dict[int, dict[str, Any]] = {}
    for name, v in tensors.items():
        if name.startswith("opt."):
            _, pid, k = name.split(".", 2)
            state.setdefault(int(pid), {})[k] = v
    for name, v in meta["scalars"].items():
        pid, k = name.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file (for the checkpoints MANIFEST)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


MANIFEST_FILE = "MANIFEST"


def update_manifest(
    directory: str | Path, command: str, data_seed: int, metrics: dict[str, Any]
) -> Path | None:
    """Record a checkpoint in the ``MANIFEST`` of its parent directory, if there is one.

    One tab-separated line per checkpoint directory: name, type, sha256 of the weights, data
    seed, metrics (JSON) and the command that made it. An existing line for the same
    directory is replaced. Returns the manifest's path, or None when the parent has none.
    """
    d = Path(directory)
    manifest = d.parent / MANIFEST_FILE
    if not manifest.is_file():
        return None
    doc = json.loads((d / CONFIG_FILE).read_text())
    sha = file_sha256(d / WEIGHTS_FILE)
    fields = [d.name, doc["type"], sha, str(data_seed), json.dumps(metrics), command]
    lines = [ln for ln in manifest.read_text().splitlines() if ln.split("\t", 1)[0] != d.name]
    lines.append("\t".join(fields))
    _atomic_write_text(manifest, "\n".join(lines) + "\n")
    return manifest
