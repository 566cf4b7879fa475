"""The hierarchy: stage tracking from perception, the subgoal planner, the controller, its rollout.

Planner tests use tiny untrained diffusers models the tests build; the rollout test runs the shipped
checkpoints in the twin for a short episode.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from dexhier import vocabulary as V
from perception.encoder import AffordanceEstimate
from policies.high_level.controller import HierarchicalController, PlannerConfig, SubgoalPlanner
from policies.high_level.generator import GeneratorConfig, SubgoalGenerator
from policies.high_level.progress import ProgressClassifier, ProgressConfig
from policies.high_level.stages import StageConfig, StageTracker

ROOT = Path(__file__).resolve().parents[1]
TIP = np.array(StageConfig().tip_in_mount)
TINY = {"image_size": 16, "channels": (16, 16), "norm_groups": 8, "steps": 2}


def estimate(object_offset: float | None, approach: float = 0.02, contact: float = 0.012,
             valid: bool = True) -> AffordanceEstimate:  # fmt: skip
    """An estimate with the object ``object_offset`` m from the tips (None: object not in the cloud)."""
    nan = float("nan")
    seen = object_offset is not None
    center = TIP + np.array([object_offset, 0.0, 0.0]) if seen else np.full(3, nan)
    return AffordanceEstimate(
        valid=valid, reason="" if valid else "empty cloud", latent=np.zeros(4, np.float32),
        tip_gap=0.02, opening_angle=0.1, max_gap=0.03, object_valid=seen,
        approach_opening=approach if seen else nan, contact_opening=contact if seen else nan,
        graspable=seen, graspable_prob=1.0 if seen else nan, object_center=center,
    )  # fmt: skip


# ----------------------------------------------------------------------------- stages
def test_stage_config_is_checked() -> None:
    with pytest.raises(ValueError):
        StageConfig(close_distance=0.03, lost_distance=0.02)
    with pytest.raises(ValueError):
        StageConfig(tip_in_mount=(0.0, float("nan"), 0.1))
    with pytest.raises(ValueError):
        StageConfig(close_steps=0)


def test_stages_approach_close_lift_and_retry_when_the_object_is_lost() -> None:
    cfg = StageConfig(close_steps=3, lost_steps=2, max_retries=1)
    tr = StageTracker(cfg)
    first = tr.update(estimate(None))
    assert first.stage == "approach" and first.tool_goal == pytest.approx(0.03)  # max gap until seen
    d = tr.update(estimate(0.05, approach=0.022))
    assert d.stage == "approach" and d.tool_goal == pytest.approx(0.022)
    d = tr.update(estimate(0.005))
    assert d.stage == "close" and d.changed and d.tool_goal == pytest.approx(0.012)
    stages = [tr.update(estimate(0.006)).stage for _ in range(3)]
    assert stages[-1] == "lift"
    assert tr.update(estimate(0.05)).stage == "lift"  # one lost observation is not enough
    d = tr.update(estimate(None))
    assert d.stage == "approach" and d.retries == 1 and d.changed
    # Out of retries: the tracker stays in lift rather than looping forever.
    tr.update(estimate(0.005))
    for _ in range(3):
        tr.update(estimate(0.006))
    for _ in range(4):
        d = tr.update(estimate(None))
    assert d.stage == "lift" and d.retries == 1


def test_place_stage_releases_over_the_place_point_only() -> None:
    cfg = StageConfig(close_steps=1, lost_steps=2, place_xy=(0.4, 0.3), place_steps=2)
    tr = StageTracker(cfg)
    tr.update(estimate(0.05))
    tr.update(estimate(0.005))
    assert tr.update(estimate(0.006)).stage == "lift"
    far, over, high = np.array([0.2, 0.0, 0.08]), np.array([0.41, 0.31, 0.08]), np.array([0.4, 0.3, 0.12])
    for tip in (far, over, high, far, None, over):  # never twice in a row over the point
        d = tr.update(estimate(0.006), tip)
        assert d.stage == "lift" and d.tool_goal == pytest.approx(0.012)  # still squeezing
    d = tr.update(estimate(0.006), over)
    assert d.stage == "place" and d.changed and d.tool_goal == pytest.approx(0.03)  # open fully
    for _ in range(5):  # the released object leaves the cloud: no retry after a place
        d = tr.update(estimate(None), far)
    assert d.stage == "place" and d.retries == 0
    with pytest.raises(ValueError, match="tip_position"):
        StageTracker(cfg).update(estimate(0.006), np.array([0.4, np.nan, 0.1]))
    pick = StageTracker(replace(cfg, place_xy=None))  # a pick task never places
    for _ in range(4):
        pick.update(estimate(0.005), over)
    assert pick.stage == "lift"
    with pytest.raises(ValueError, match="place_xy"):
        StageConfig(place_xy=(0.4,))


def test_invalid_estimates_hold_the_stage_and_openings_use_a_median() -> None:
    tr = StageTracker(StageConfig())
    assert np.isnan(tr.update(None).tool_goal)  # nothing seen yet: no goal, the controller holds
    for a in (0.020, 0.021, 0.5, 0.019):  # one wild estimate does not move the median much
        d = tr.update(estimate(0.03, approach=a))
    assert d.tool_goal == pytest.approx(0.0205)
    assert tr.update(estimate(0.03, valid=False)).stage == "approach"
    far = tr.update(estimate(0.5, approach=0.9))  # object too far from the tips: not trusted
    assert far.tool_goal == pytest.approx(0.0205)


# ----------------------------------------------------------------------------- planner
def tiny_models(tasks=("tweezer_pick",)) -> tuple[SubgoalGenerator, ProgressClassifier]:
    torch.manual_seed(0)
    gen = SubgoalGenerator(GeneratorConfig(tasks=tasks, **TINY))
    clf = ProgressClassifier(ProgressConfig(tasks=tasks, image_size=16, channels=(8, 8), hidden=16))
    return gen, clf


def frame(value: int, size: int = 64) -> np.ndarray:
    return np.full((size, size, 3), value, np.uint8)


def test_planner_checks_task_sizes_and_images() -> None:
    gen, clf = tiny_models()
    with pytest.raises(ValueError, match="unknown task"):
        SubgoalPlanner(PlannerConfig(task="stack_blocks"), gen, clf)
    with pytest.raises(ValueError, match="needs a ProgressClassifier"):
        SubgoalPlanner(PlannerConfig(task="tweezer_pick"), gen, None)
    with pytest.raises(ValueError, match="needs a ReachabilityEstimator"):
        SubgoalPlanner(PlannerConfig(task="tweezer_pick", selection="value"), gen, clf)
    other = ProgressClassifier(
        ProgressConfig(tasks=("tweezer_pick",), image_size=32, channels=(8,), hidden=8)
    )
    with pytest.raises(ValueError, match="px"):
        SubgoalPlanner(PlannerConfig(task="tweezer_pick"), gen, other)
    with pytest.raises(ValueError):
        PlannerConfig(task="tweezer_pick", selection="best")
    planner = SubgoalPlanner(PlannerConfig(task="tweezer_pick"), gen, clf)
    with pytest.raises(ValueError, match="uint8"):
        planner.update(frame(0).astype(np.float32), None)
    with pytest.raises(ValueError, match="RGB"):
        planner.update(np.zeros((3, 64, 64), np.uint8), None)  # channels first
    with pytest.raises(ValueError, match="one image"):
        planner.update(np.zeros((2, 64, 64, 3), np.uint8), None)


def test_planner_replans_on_schedule_and_stage_change_and_selects_the_argmax() -> None:
    gen, clf = tiny_models()
    cfg = PlannerConfig(task="tweezer_pick", candidates=3, replan_every=4, reached_mse=0.0,
                        stages=StageConfig(close_steps=50))  # fmt: skip
    planner = SubgoalPlanner(cfg, gen, clf)
    chosen = [planner.update(frame(10 * t), estimate(0.05)).chosen_at for t in range(6)]
    assert chosen == [0, 0, 0, 0, 4, 4]
    sg = planner.current
    assert sg.candidates.shape == (3, 16, 16, 3) and sg.candidates.dtype == np.uint8
    assert np.array_equal(sg.image, sg.candidates[int(np.argmax(sg.scores))])
    assert planner.update(frame(70), estimate(0.004)).chosen_at == 6  # entering 'close' replans
    assert planner.current.stage == "close"
    # Same seed, same decisions; and N = 1 with 'first' needs no classifier.
    planner.reset(3)
    a = planner.update(frame(5), estimate(0.05)).image
    planner.reset(3)
    assert np.array_equal(a, planner.update(frame(5), estimate(0.05)).image)
    solo = SubgoalPlanner(replace(cfg, candidates=1, selection="first"), gen, None)
    assert solo.update(frame(5), None).scores is None


def test_planner_replans_when_the_subgoal_is_reached() -> None:
    gen, clf = tiny_models()
    planner = SubgoalPlanner(PlannerConfig(task="tweezer_pick", replan_every=100, reached_mse=10.0), gen, clf)
    planner.update(frame(0), None)
    assert planner.update(frame(0), None).chosen_at == 1  # any image is 'close enough' here


# ----------------------------------------------------------------------------- controller
class _RecordingLowLevel:
    """Stands in for the low-level policy to check what the controller hands it (shape-compatible)."""

    def __init__(self) -> None:
        from types import SimpleNamespace

        self.layout = SimpleNamespace(arm_joints=V.ARM_JOINTS, hand_joints=V.HAND_JOINTS)
        self.config = SimpleNamespace(image_size=64)
        self.calls: list[tuple[dict, dict]] = []

    def reset(self, seed=None) -> None:
        self.calls.clear()

    def select_action(self, obs, goal) -> np.ndarray:
        self.calls.append((obs, goal))
        return np.full(len(V.ARM_JOINTS) + len(V.HAND_JOINTS), 0.1)


class _ScriptedEncoder:
    """Returns queued estimates (the real encoder is tested in the perception tests)."""

    def __init__(self, estimates) -> None:
        self.estimates = list(estimates)

    def encode(self, points, labels, pose) -> AffordanceEstimate:
        assert pose.shape == (4, 4) and np.all(np.isfinite(pose))  # forward kinematics of the joints
        return self.estimates.pop(0)


def _obs(q: float = 0.0) -> dict:
    return {
        V.OBS_ARM_QPOS: np.full(len(V.ARM_JOINTS), q), V.OBS_HAND_QPOS: np.zeros(len(V.HAND_JOINTS)),
        V.OBS_TOOL_TIP_GAP: np.array([0.5]),  # the twin's measurement: must not reach the low level
        V.rgb_key("scene"): frame(20), V.rgb_key("wrist"): frame(40),
        V.OBS_POINTS: np.zeros((10, 3), np.float32), V.OBS_POINTS_LABEL: np.zeros(10, np.int8),
    }  # fmt: skip


def test_controller_holds_until_perception_is_valid_then_uses_perceived_state_and_goal() -> None:
    gen, clf = tiny_models()
    planner = SubgoalPlanner(PlannerConfig(task="tweezer_pick", candidates=2), gen, clf)
    low = _RecordingLowLevel()
    enc = _ScriptedEncoder([estimate(None, valid=False), estimate(0.05), estimate(None, valid=False)])
    ctl = HierarchicalController(planner, low, enc)
    held = ctl.select_action(_obs(0.3))
    assert np.allclose(held[: len(V.ARM_JOINTS)], 0.3) and not low.calls and ctl.held_steps == 1
    ctl.select_action(_obs())
    obs, goal = low.calls[-1]
    assert obs[V.OBS_TOOL_TIP_GAP][0] == pytest.approx(0.02)  # perceived, not the twin's 0.5
    assert goal[V.GOAL_RGB].shape == (64, 64, 3) and goal[V.GOAL_RGB].dtype == np.uint8
    assert goal[V.GOAL_TOOL_TIP_GAP][0] == pytest.approx(0.02)
    ctl.select_action(_obs())  # an invalid cloud keeps the last valid tool state
    assert low.calls[-1][0][V.OBS_TOOL_TIP_GAP][0] == pytest.approx(0.02)
    assert ctl.video_inset().shape == (64, 64, 3)
    assert ctl.episode_info() == {"furthest_stage": "approach", "retries": 0, "held_steps": 1}
    bad = _obs()
    bad[V.OBS_ARM_QPOS] = np.full(len(V.ARM_JOINTS), np.nan)
    with pytest.raises(ValueError, match="finite"):
        ctl.select_action(bad)


# ----------------------------------------------------------------------------- rollout
SHIPPED = all((ROOT / p / "config.json").is_file() for p in
              ("checkpoints/lowlevel_pick", "checkpoints/subgoal", "checkpoints/subgoal_filter"))  # fmt: skip


@pytest.mark.sim
@pytest.mark.skipif(not SHIPPED, reason="needs the shipped checkpoints")
def test_hierarchy_runs_in_the_twin_within_limits_and_records_the_subgoal_inset(tmp_path) -> None:
    from dexhier.hierarchical_rollout import HierarchicalOptions, build_controller, env_config
    from sim.rollout import run_episode
    from sim.twin import TwinEnv
    from sim.video import VideoWriter

    opts = HierarchicalOptions(checkpoint=str(ROOT / "checkpoints/lowlevel_pick"),
                               generator=str(ROOT / "checkpoints/subgoal"),
                               filter=str(ROOT / "checkpoints/subgoal_filter"),
                               affordance=str(ROOT / "checkpoints/affordance"))  # fmt: skip
    env = TwinEnv(replace(env_config("tweezer_pick", opts), time_limit=1.5))
    policy = build_controller(env, opts)
    spec = env.action_spec
    actions, stages = [], []

    def hook(obs, action, info):
        actions.append(action)
        stages.append(policy.controller.subgoal.stage)

    with VideoWriter(tmp_path / "h.mp4", fps=20) as video:
        result = run_episode(env, policy, 1000, video=video, video_size=(80, 60), on_step=hook)
    a = np.asarray(actions)
    assert len(a) == 30 and np.all(np.isfinite(a))
    assert np.all(a >= spec.lower - 1e-9) and np.all(a <= spec.upper + 1e-9)
    assert set(stages) <= {"approach", "close", "lift"}
    assert result.policy_info["furthest_stage"] in stages and result.to_json()["policy_info"]
    assert policy.controller.last_valid is not None  # perception saw the tool
    assert (tmp_path / "h.mp4").stat().st_size > 0
    env.close()


def test_eval_rollout_rejects_flags_of_another_policy() -> None:
    out = subprocess.run([sys.executable, "-m", "dexhier.cli", "eval", "rollout", "--policy", "lowlevel",
                          "--task", "tweezer_pick", "--candidates", "2"],
                         capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert out.returncode != 0 and "--candidates applies to --policy hierarchical only" in out.stderr
    out = subprocess.run([sys.executable, "-m", "dexhier.cli", "eval", "rollout", "--policy", "lowlevel",
                          "--task", "tweezer_pick", "--value", "v"],
                         capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert out.returncode != 0 and "--value applies to --policy hierarchical only" in out.stderr
    out = subprocess.run([sys.executable, "-m", "dexhier.cli", "eval", "rollout", "--policy", "hierarchical",
                          "--task", "tweezer_pick", "--generator", "/nonexistent", "--json"],
                         capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert out.returncode != 0 and "/nonexistent" in out.stderr


def test_hierarchy_report_tables_success_and_furthest_stage(tmp_path) -> None:
    from dexhier.hierarchy_report import write_hierarchy_report

    def summary(successes: int, furthest: dict) -> dict:
        bins = {"4-10": {"episodes": 2, "success_rate": successes / 2}, "10-16": {"episodes": 0,
                "success_rate": None}}  # fmt: skip
        return {"task": "tweezer_pick_place", "episodes": 2, "seed": 7, "options": {}, "successes": successes,
                "success_rate": successes / 2, "median_episode_wall_s": 1.0, "success_by_width_mm": bins,
                "furthest_stage": furthest}  # fmt: skip

    path = tmp_path / "r.md"
    write_hierarchy_report({"filter": summary(1, {"lift": 1, "place": 1}), "n1": summary(0, {"approach": 2})},
                           path, "dexhier eval hierarchy")  # fmt: skip
    text = path.read_text()
    assert "| filter | " in text and "1/2 (50.0%)" in text and "| 50% of 2 | - |" in text
    assert "| filter | 0 | 0 | 1 | 1 |" in text and "| n1 | 2 | 0 | 0 | 0 |" in text
    assert (tmp_path / "r_success.svg").read_text().startswith("<svg")
