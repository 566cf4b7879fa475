"""The subgoal-image generator: config checks, inputs, sampling, checkpoints and training."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from dexhier import vocabulary as V
from dexhier.checkpoints import CheckpointError
from dexhier.episodes import EpisodeWriter
from policies.high_level.generator import GeneratorConfig, SubgoalGenerator, images_to_model, model_to_images
from policies.high_level.training import SubgoalPairs, SubgoalTrainConfig, SubgoalTrainer, train_subgoal

TINY = {"image_size": 16, "channels": (16, 16), "norm_groups": 8, "steps": 2, "candidates": 3}


def _moving_square(t: int, size: int = 32) -> np.ndarray:
    """A white square moving right one pixel per step: the future is predictable from the present."""
    img = np.zeros((size, size, 3), np.uint8)
    x = 2 + t  # t < 22 keeps it inside
    img[10:16, x : x + 6] = 255
    return img


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("subgoal_data")
    w = EpisodeWriter(root, {"cameras": ["scene"]})
    for e in range(6):
        task = "slide_a" if e % 2 else "slide_b"
        with w.begin(e, {"task": task}) as rec:
            for t in range(16):
                rec.add_step({V.rgb_key("scene"): _moving_square(t + e), V.STEP_TIME: 0.05 * t})
            rec.commit(True)
    return root


def test_config_is_checked():
    with pytest.raises(ValueError, match="tasks"):
        GeneratorConfig(tasks=())
    with pytest.raises(ValueError, match="divisible"):
        GeneratorConfig(tasks=("a",), image_size=30, channels=(16, 16, 16), norm_groups=8)
    with pytest.raises(ValueError, match="multiples of norm_groups"):
        GeneratorConfig(tasks=("a",), channels=(20, 32))
    with pytest.raises(ValueError, match="offsets"):
        GeneratorConfig(tasks=("a",), offsets=(5, 2))
    with pytest.raises(ValueError, match="cannot override"):
        GeneratorConfig(tasks=("a",)).with_overrides(image_size=64)


def test_images_are_checked_and_converted():
    img = np.full((2, 32, 32, 3), 255, np.uint8)
    x = images_to_model(img, 16)
    assert x.shape == (2, 3, 16, 16) and torch.allclose(x, torch.ones_like(x))
    assert model_to_images(x, 32).shape == (2, 32, 32, 3)
    with pytest.raises(ValueError, match="uint8"):
        images_to_model(img.astype(np.float32), 16)
    with pytest.raises(ValueError, match="RGB last"):
        images_to_model(np.zeros((2, 3, 32, 32), np.uint8), 16)  # channels first
    with pytest.raises(ValueError, match="RGB last"):
        images_to_model(np.zeros((32, 32, 4), np.uint8), 16)  # RGBA / BGRA


def test_sampling_shapes_determinism_and_bad_input():
    torch.manual_seed(0)
    gen = SubgoalGenerator(GeneratorConfig(tasks=("a", "b"), **TINY))
    cur = images_to_model(np.stack([_moving_square(0), _moving_square(5)]), 16)
    ids = gen.task_ids(["a", "b"])
    x1 = gen.sample(cur, ids, gen=torch.Generator().manual_seed(1))
    x2 = gen.sample(cur, ids, gen=torch.Generator().manual_seed(1))
    assert x1.shape == (2, 3, 3, 16, 16) and torch.isfinite(x1).all() and x1.abs().max() <= 1
    assert torch.equal(x1, x2)
    assert not torch.equal(x1[:, 0], x1[:, 1])  # candidates are different draws
    with pytest.raises(ValueError, match="knows"):
        gen.task_ids(["c"])
    with pytest.raises(ValueError, match="current must be"):
        gen.sample(torch.zeros(1, 3, 32, 32), ids[:1])


def test_checkpoint_round_trip_and_type_check(tmp_path):
    torch.manual_seed(0)
    gen = SubgoalGenerator(GeneratorConfig(tasks=("a",), **TINY))
    gen.save(tmp_path / "g")
    back = SubgoalGenerator.load(tmp_path / "g", steps=1)
    assert back.config.steps == 1 and back.config.channels == (16, 16)
    cur = torch.zeros(1, 3, 16, 16)
    a = gen.sample(cur, gen.task_ids(["a"]), steps=1, gen=torch.Generator().manual_seed(0))
    b = back.sample(cur, back.task_ids(["a"]), gen=torch.Generator().manual_seed(0))
    assert torch.allclose(a, b)
    (tmp_path / "g" / "config.json").write_text((tmp_path / "g" / "config.json").read_text().replace(
        "dexhier.subgoal_generator", "dexhier.lowlevel_policy"))  # fmt: skip
    with pytest.raises(CheckpointError, match="expected 'dexhier.subgoal_generator'"):
        SubgoalGenerator.load(tmp_path / "g")


def test_pairs_follow_the_offsets(data_dir):
    pairs = SubgoalPairs([data_dir], "scene", 32, min_steps=2)
    assert pairs.tasks == ("slide_a", "slide_b") and len(pairs) == 6
    cur, fut, ids = pairs.sample(64, (3, 3), pairs.tasks, np.random.default_rng(0))
    # The square moves 1 px per step: the future frame is the current one shifted by k = 3 px,
    # except where the episode's last frame clipped the offset.
    col = lambda x: (x[:, 0, 12] > 0).float().argmax(-1)  # noqa: E731  first lit column of row 12
    shift = col(fut) - col(cur)
    assert (shift == 3).float().mean() > 0.6 and set(shift.tolist()) <= {1, 2, 3}
    assert set(ids.tolist()) == {0, 1}


def test_training_learns_resumes_and_refuses_another_recipe(tmp_path, data_dir):
    cfg = SubgoalTrainConfig(steps=60, batch_size=16, checkpoint_every=30, val_episodes=0.2, image_size=16,
                             channels=(16, 32), offsets=(2, 4), lr=2e-3, warmup=5)  # fmt: skip
    trainer = SubgoalTrainer([data_dir], tmp_path / "ck", cfg)
    trainer.gen_cfg = GeneratorConfig(**{**trainer.gen_cfg.to_json(), "norm_groups": 8})
    first = [trainer.train_step() for _ in range(5)]
    assert all(np.isfinite(first))
    metrics = train_subgoal([data_dir], tmp_path / "ck2", cfg, log=lambda m: None)
    assert metrics["step"] == 60
    assert metrics["train_loss"] < 0.5 * np.mean(first)  # it learns (v-prediction MSE)
    more = SubgoalTrainConfig(**{**cfg.__dict__, "steps": 62})
    metrics = train_subgoal([data_dir], tmp_path / "ck2", more, log=lambda m: None)
    assert metrics["step"] == 62  # resumed from 60, not restarted
    with pytest.raises(ValueError, match="another recipe"):
        train_subgoal([data_dir], tmp_path / "ck2", SubgoalTrainConfig(**{**more.__dict__, "lr": 1e-4}))
    gen = SubgoalGenerator.load(tmp_path / "ck2")
    assert gen.config.tasks == ("slide_a", "slide_b")


def test_init_from_maps_task_embeddings_by_name(tmp_path, data_dir):
    cfg = SubgoalTrainConfig(steps=2, batch_size=4, checkpoint_every=2, val_episodes=0.0, image_size=16,
                             channels=(16, 32), offsets=(2, 4), warmup=1)  # fmt: skip
    train_subgoal([data_dir], tmp_path / "start", cfg, log=lambda m: None)
    start = SubgoalGenerator.load(tmp_path / "start")
    more = tmp_path / "more"  # a third task, sorted between the two known ones
    w = EpisodeWriter(more, {"cameras": ["scene"]})
    with w.begin(0, {"task": "slide_ab"}) as rec:
        for t in range(16):
            rec.add_step({V.rgb_key("scene"): _moving_square(t), V.STEP_TIME: 0.05 * t})
        rec.commit(True)
    tuned = SubgoalTrainConfig(**{**cfg.__dict__, "init_from": str(tmp_path / "start")})
    trainer = SubgoalTrainer([data_dir, more], tmp_path / "tuned", tuned)
    assert trainer.gen_cfg.tasks == ("slide_a", "slide_ab", "slide_b")
    old = start.unet.state_dict()
    new = trainer.model.unet.state_dict()
    rows_old, rows_new = old["class_embedding.weight"], new["class_embedding.weight"]
    for i, j in ((0, 0), (2, 1), (1, 2), (3, 2)):  # new row <- old row: a, ab (null), b, null
        assert torch.equal(rows_new[i], rows_old[j])
    assert all(torch.equal(new[k], old[k]) for k in old if k != "class_embedding.weight")
    assert torch.equal(trainer.ema.state_dict()["class_embedding.weight"], rows_new)
    with pytest.raises(ValueError, match="another network"):
        SubgoalTrainer([data_dir], tmp_path / "x", SubgoalTrainConfig(**{**tuned.__dict__, "image_size": 32}))
    with pytest.raises(FileNotFoundError, match="init-from"):
        SubgoalTrainConfig(init_from=str(tmp_path / "missing"))


# --- the subgoal filter --------------------------------------------------------------------------


def test_progress_batches_follow_the_mix(data_dir):
    from policies.high_level.progress import progress_batch

    pairs = SubgoalPairs([data_dir], "scene", 32, min_steps=2)
    ids = [pairs.tasks.index(t) for t in pairs.task_names]
    cur, cand, task, label, kinds = progress_batch(
        pairs.frames, ids, 2000, (3, 3), 2, (0.5, 0.2, 0.2, 0.1), np.random.default_rng(0)
    )
    share = np.bincount(kinds, minlength=4) / 2000
    assert np.allclose(share, (0.5, 0.2, 0.2, 0.1), atol=0.03)
    assert torch.equal(label, torch.as_tensor(kinds == 0, dtype=torch.float32))
    col = lambda x: (x[:, 0, 12] > 0).float().argmax(-1)  # noqa: E731
    shift = (col(cand) - col(cur)).numpy()
    assert (shift[kinds == 0] > 0).all() and (shift[kinds == 2] < 0).all()  # forward vs reversed
    # With one task there is no wrong task: those pairs become reversed ones.
    _, _, _, _, kinds1 = progress_batch(pairs.frames, [0] * len(ids), 2000, (3, 3), 1, (0.5, 0.2, 0.2, 0.1),
                                        np.random.default_rng(0))  # fmt: skip
    assert not (kinds1 == 1).any() and abs((kinds1 == 2).mean() - 0.4) < 0.03


def test_progress_classifier_learns_direction_and_selects(tmp_path, data_dir):
    from policies.high_level.progress import ProgressClassifier
    from policies.high_level.training import ProgressTrainConfig, train_progress

    cfg = ProgressTrainConfig(steps=150, batch_size=64, checkpoint_every=150, image_size=16, offsets=(2, 4),
                              lr=3e-3, warmup=10, val_episodes=0.34)  # fmt: skip
    metrics = train_progress([data_dir], tmp_path / "pc", cfg, log=lambda m: None)
    assert metrics["step"] == 150
    assert metrics["val_acc_reversed"] > 0.8 and metrics["val_acc_positive"] > 0.8, metrics
    clf = ProgressClassifier.load(tmp_path / "pc")
    cur = images_to_model(_moving_square(5), 16)
    # Candidates: the past, the present and the future (3 px ahead): the future must win.
    cands = images_to_model(np.stack([_moving_square(2), _moving_square(5), _moving_square(8)]), 16)[None]
    assert int(clf.select(cur, cands, torch.tensor([0]))[0]) == 2
    with pytest.raises(ValueError, match="images must be"):
        clf.scores(torch.zeros(1, 3, 32, 32), cands, torch.tensor([0]))


def test_distance_batches_label_forward_reversed_and_foreign_pairs(data_dir):
    from policies.high_level.reachability import MIX, distance_batch

    pairs = SubgoalPairs([data_dir], "scene", 32, min_steps=2)
    ids = [pairs.tasks.index(t) for t in pairs.task_names]
    cur, goal, task, target, kinds = distance_batch(pairs.frames, ids, 3000, 8, np.random.default_rng(0))
    assert np.allclose(np.bincount(kinds, minlength=3) / 3000, MIX, atol=0.03)
    col = lambda x: (x[:, 0, 12] > 0).float().argmax(-1)  # noqa: E731
    shift = (col(goal) - col(cur)).numpy()
    fwd = kinds == 0
    # Forward pairs: the label is the step offset / horizon (the square moves 1 px per step).
    assert np.allclose(shift[fwd] / 8, target.numpy()[fwd])
    assert (target.numpy()[kinds == 2] == 1).all() and (shift[(kinds == 1) & (target.numpy() == 1)] < 0).all()


def test_reachability_learns_distances_selects_and_round_trips(tmp_path, data_dir):
    from policies.high_level.reachability import ReachabilityConfig, ReachabilityEstimator
    from policies.high_level.training import ReachabilityTrainConfig, train_reachability

    with pytest.raises(ValueError):
        ReachabilityConfig(tasks=("a",), target=0.7, reach=0.6)
    cfg = ReachabilityTrainConfig(
        steps=200, batch_size=64, checkpoint_every=200, image_size=16, offsets=(2, 4), horizon=8, lr=3e-3,
        warmup=10, val_episodes=0.34,
    )  # fmt: skip
    metrics = train_reachability([data_dir], tmp_path / "rv", cfg, log=lambda m: None)
    assert metrics["step"] == 200
    assert metrics["val_distance_mae_steps"] < 2.0 and metrics["val_unreachable_recall"] > 0.7, metrics
    est = ReachabilityEstimator.load(tmp_path / "rv")
    assert est.config.target == pytest.approx(3 / 8)
    cur = images_to_model(_moving_square(5), 16)
    # The past is unreachable, the present makes no progress, 3 px ahead is the target distance.
    cands = images_to_model(np.stack([_moving_square(1), _moving_square(5), _moving_square(8)]), 16)[None]
    d = est.distances(cur, cands, torch.tensor([0]))[0]
    assert d[0] > d[2] > d[1], d
    assert int(est.select(cur, cands, torch.tensor([0]))[0]) == 2
    with pytest.raises(CheckpointError):
        ReachabilityEstimator.load(tmp_path / "missing")


def test_bench_subgoal_reports_latency_keys(tmp_path):
    from policies.high_level.bench import bench_subgoal

    torch.manual_seed(0)
    SubgoalGenerator(GeneratorConfig(tasks=("a",), **TINY)).save(tmp_path / "g")
    result = bench_subgoal(tmp_path / "g", None, candidates=2, steps=1, repeats=2)
    assert result["p50_ms"] > 0 and result["p99_ms"] >= result["p50_ms"] and result["trained_weights"]
    assert result["image_size"] == 16 and result["candidates"] == 2


def test_guided_sampling_uses_the_extra_passes():
    torch.manual_seed(0)
    plain = SubgoalGenerator(GeneratorConfig(tasks=("a", "b"), **TINY))
    guided = SubgoalGenerator(plain.config.with_overrides(image_guidance=1.5, task_guidance=2.0), plain.unet)
    cur = torch.rand(1, 3, 16, 16) * 2 - 1
    ids = plain.task_ids(["b"])
    a = plain.sample(cur, ids, gen=torch.Generator().manual_seed(3))
    b = guided.sample(cur, ids, gen=torch.Generator().manual_seed(3))
    assert a.shape == b.shape and torch.isfinite(b).all()
    assert not torch.allclose(a, b)  # guidance changed the result: the other passes ran


def test_subgoal_samples_grid_and_metrics(tmp_path, data_dir):
    from policies.high_level.samples import subgoal_samples

    torch.manual_seed(0)
    gen = SubgoalGenerator(GeneratorConfig(tasks=("slide_a", "slide_b"), offsets=(2, 4), **TINY))
    grid, m = subgoal_samples(gen, [data_dir], rows=3, candidates=2, seed=0, cell=32)
    assert grid.shape == (3 * 32, 4 * 32, 3) and grid.dtype == np.uint8
    assert m["mse_copy_current"] > 0  # the moving square moved
    for r in range(3):  # column 2 is the real future: the square has moved from column 1
        now, future = grid[32 * r : 32 * (r + 1), :32], grid[32 * r : 32 * (r + 1), 32:64]
        assert not np.array_equal(now, future)
        assert np.array_equal(now[::2, ::2], now[1::2, 1::2])  # 16 px frames, nearest-upscaled to 32
    other = SubgoalGenerator(GeneratorConfig(tasks=("slide_a",), **TINY))
    with pytest.raises(ValueError, match="slide_b"):
        subgoal_samples(other, [data_dir])
    cmd = [sys.executable, "-m", "dexhier.cli", "eval", "subgoal", "--data", str(tmp_path / "none")]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode != 0 and "no dataset.json" in out.stderr
