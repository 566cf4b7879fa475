"""Checkpoint directories: safetensors + JSON, optimizer state without pickle, the MANIFEST."""

import json

import pytest
import torch

from dexhier.checkpoints import (
    CheckpointError,
    file_sha256,
    load_checkpoint,
    optimizer_from_tensors,
    optimizer_to_tensors,
    save_checkpoint,
    update_manifest,
)


def test_round_trip_and_version_check(tmp_path):
    w = {"layer.weight": torch.randn(3, 4), "layer.bias": torch.zeros(3)}
    save_checkpoint(tmp_path / "ck", "toy", {"width": 4}, w, {"mean": [1.0, 2.0]}, {"mae": 0.5})
    doc, weights, stats = load_checkpoint(tmp_path / "ck", "toy")
    assert doc["config"] == {"width": 4} and doc["metrics"] == {"mae": 0.5} and stats == {"mean": [1.0, 2.0]}
    assert all(torch.equal(weights[k], w[k]) for k in w)
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    cfg["format_version"] = 99
    (tmp_path / "ck" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="format version 99"):
        load_checkpoint(tmp_path / "ck", "toy")


def test_optimizer_state_round_trip():
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    net(torch.randn(5, 3)).sum().backward()
    opt.step()
    tensors, meta = optimizer_to_tensors(opt)
    json.dumps(meta)  # metadata is plain JSON
    opt2 = torch.optim.AdamW(net.parameters(), lr=1e-2)
    optimizer_from_tensors(opt2, tensors, meta)
    for a, b in zip(opt.state.values(), opt2.state.values(), strict=True):
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])


def test_manifest_line_is_replaced_not_duplicated(tmp_path):
    (tmp_path / "MANIFEST").write_text("# header\n")
    save_checkpoint(tmp_path / "enc", "toy", {}, {"w": torch.ones(2)}, {})
    assert update_manifest(tmp_path / "enc", "dexhier train toy", 3, {"mae": 1.0}) == tmp_path / "MANIFEST"
    save_checkpoint(tmp_path / "enc", "toy", {}, {"w": torch.zeros(2)}, {})
    update_manifest(tmp_path / "enc", "dexhier train toy --again", 4, {"mae": 0.5})
    lines = (tmp_path / "MANIFEST").read_text().splitlines()
    assert lines[0] == "# header" and len(lines) == 2
    name, type_, sha, seed, metrics, command = lines[1].split("\t")
    assert (name, type_, seed, command) == ("enc", "toy", "4", "dexhier train toy --again")
    assert sha == file_sha256(tmp_path / "enc" / "model.safetensors") and json.loads(metrics) == {"mae": 0.5}
    assert update_manifest(tmp_path / "enc", "x", 0, {}) is not None
    assert update_manifest(tmp_path / "nowhere" / "enc", "x", 0, {}) is None
