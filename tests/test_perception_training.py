"""A tiny affordance training run: progress, checkpoints, and resuming where it stopped."""

from dataclasses import replace

import pytest

from dexhier.checkpoints import load_train_state
from perception.encoder import AffordanceEncoder
from perception.synthetic import SyntheticConfig
from perception.training import TrainConfig, train

pytestmark = pytest.mark.sim


def test_tiny_training_run_checkpoints_and_resumes(tmp_path):
    syn = replace(SyntheticConfig(), samples_per_tool=32)
    cfg = TrainConfig(
        n_train=32, n_val=16, steps=6, batch_size=8, checkpoint_every=3, workers=1, synthetic=syn
    )
    logs: list[str] = []
    first = train(tmp_path, cfg, log=logs.append)
    assert first["samples"] == 16 and first["tip_gap_mae_mm"] >= 0
    assert load_train_state(tmp_path)[1]["step"] == 6
    assert AffordanceEncoder.load(tmp_path).net_config == cfg.net
    logs.clear()
    train(tmp_path, replace(cfg, steps=9), log=logs.append)
    assert any("resuming at step 6" in m for m in logs)
    assert load_train_state(tmp_path)[1]["step"] == 9


def test_bad_recipe_raises():
    with pytest.raises(ValueError):
        TrainConfig(steps=0)
