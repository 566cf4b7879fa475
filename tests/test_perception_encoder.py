"""Affordance labels, synthetic clouds, the encoder's contract, checkpoints and the shipped model."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from dexhier.checkpoints import CheckpointError
from perception.encoder import AffordanceEncoder, AffordanceNet, EncoderConfig, Normalizer
from perception.labels import GRASP_CLEARANCE, affordance_labels, tool_variant
from perception.synthetic import SyntheticConfig, default_cloud_config, generate
from sim.tool import TweezerParams

SHIPPED = Path(__file__).resolve().parents[1] / "checkpoints" / "affordance"


def test_labels_follow_the_geometry():
    tool = TweezerParams()
    lab = affordance_labels(tool, tool.theta_for_gap(0.01), 0.012)
    assert lab.tip_gap == pytest.approx(0.01)
    assert lab.contact_opening == 0.012 and lab.approach_opening == pytest.approx(0.020)
    assert lab.graspable
    wide = affordance_labels(tool, 0.0, tool.max_gap - GRASP_CLEARANCE + 1e-4)
    assert not wide.graspable and wide.approach_opening == pytest.approx(tool.max_gap)


def test_tool_variants_scale_the_full_opening_with_the_arm_length():
    base = TweezerParams()
    long, short = tool_variant(1.1, 1.0), tool_variant(0.9, 1.1)
    assert long.max_gap > base.max_gap > short.max_gap
    assert long.theta_open == pytest.approx(base.theta_open)
    assert short.arm_width == pytest.approx(1.1 * base.arm_width)


@pytest.fixture(scope="module")
def clean_samples():
    cfg = replace(
        SyntheticConfig(), samples_per_tool=24, depth_noise=(0.0, 0.0), dropout=(0.0, 0.0),
        in_hand_translation=0.0, in_hand_rotation=0.0, length_scale=(1.0, 1.0), tilt=0.0,
    )  # fmt: skip
    return generate(24, seed=3, config=cfg)


@pytest.mark.sim
def test_a_cloud_of_a_known_opening_shows_that_gap(clean_samples):
    """The tip pads in the (noise-free) tool cloud are as far apart as the label says."""
    L = TweezerParams().arm_length
    checked = 0
    for tool, gap in zip(clean_samples["tool"], clean_samples["tip_gap"], strict=True):
        tips = tool[np.abs(tool[:, 2] - L) < 0.003]
        a, b = tips[tips[:, 1] > 0], tips[tips[:, 1] < 0]
        if len(a) < 5 or len(b) < 5 or gap < 0.004:
            continue  # a tip hidden behind a finger, or tips too close to split by side
        measured = a[:, 1].min() - b[:, 1].max()
        assert measured == pytest.approx(gap, abs=0.0025)
        checked += 1
    assert checked >= 5


@pytest.mark.sim
def test_synthetic_samples_have_fixed_sizes_and_exact_labels(clean_samples):
    cfg = default_cloud_config()
    n = len(clean_samples["tool"])
    assert clean_samples["tool"].shape == (n, cfg.n_tool_points, 3)
    assert clean_samples["object"].shape == (n, cfg.n_object_points, 3)
    tool = TweezerParams()
    for theta, gap in zip(clean_samples["opening_angle"], clean_samples["tip_gap"], strict=True):
        assert gap == pytest.approx(tool.tip_gap(float(theta)), abs=1e-6)
    assert np.all(np.isfinite(clean_samples["tool"]))


def _random_encoder(seed=0) -> AffordanceEncoder:
    torch.manual_seed(seed)
    cfg = EncoderConfig()
    norm = Normalizer(tool_mean=[0.0, 0.0, 0.07], tool_scale=0.04, object_scale=0.01,
                      target_mean=dict.fromkeys(("tip_gap", "opening_angle", "max_gap", "approach_opening",
                                                 "contact_opening"), 0.0),
                      target_std=dict.fromkeys(("tip_gap", "opening_angle", "max_gap", "approach_opening",
                                                "contact_opening"), 1.0))  # fmt: skip
    return AffordanceEncoder(AffordanceNet(cfg), norm, cfg, default_cloud_config())


def test_predictions_do_not_depend_on_point_order():
    enc = _random_encoder()
    rng = np.random.default_rng(0)
    tool = rng.normal(0, 0.02, (2, 512, 3)).astype(np.float32)
    obj = rng.normal(0, 0.01, (2, 128, 3)).astype(np.float32)
    a = enc.predict_batch(tool, obj)
    b = enc.predict_batch(tool[:, rng.permutation(512)], obj[:, rng.permutation(128)])
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_save_load_round_trip_without_pickle(tmp_path):
    enc = _random_encoder(1)
    enc.save(tmp_path / "ck")
    files = sorted(p.name for p in (tmp_path / "ck").iterdir())
    assert files == ["config.json", "model.safetensors", "normalization.json"]
    back = AffordanceEncoder.load(tmp_path / "ck")
    rng = np.random.default_rng(2)
    tool, obj = rng.normal(0, 0.02, (1, 512, 3)), rng.normal(0, 0.01, (1, 128, 3))
    a, b = enc.predict_batch(tool, obj), back.predict_batch(tool, obj)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_loading_another_checkpoint_type_fails_clearly(tmp_path):
    enc = _random_encoder()
    enc.save(tmp_path / "ck")
    cfg = (tmp_path / "ck" / "config.json").read_text().replace('"affordance_encoder"', '"lowlevel_policy"')
    (tmp_path / "ck" / "config.json").write_text(cfg)
    with pytest.raises(CheckpointError, match="lowlevel_policy"):
        AffordanceEncoder.load(tmp_path / "ck")
    with pytest.raises(CheckpointError, match="missing"):
        AffordanceEncoder.load(tmp_path / "nowhere")


@pytest.mark.parametrize(
    "cloud",
    [np.zeros((0, 3)), np.full((100, 3), np.nan), np.zeros((10, 3), np.int64), np.zeros((50, 2))],
    ids=["empty", "all-nan", "int", "wrong-shape"],
)
def test_bad_clouds_give_an_invalid_estimate_with_a_reason(cloud):
    est = _random_encoder().encode(cloud)
    assert not est.valid and est.reason
    assert np.isnan(est.tip_gap) and np.all(np.isnan(est.latent))


@pytest.mark.sim
def test_shipped_checkpoint_meets_a_floor_on_fresh_synthetic_clouds():
    from perception.evaluation import evaluate_synthetic

    m = evaluate_synthetic(AffordanceEncoder.load(SHIPPED), n=96, seed=424242)
    assert m["tip_gap_mae_mm"] < 1.5
    assert m["graspable_accuracy"] > 0.85
