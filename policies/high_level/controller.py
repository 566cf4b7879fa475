"""The hierarchy: the subgoal planner (high level) and the controller that drives the low level with it.

:class:`SubgoalPlanner` is the high level on its own (what the ROS high-level node wraps): from the
current scene image and the affordance estimate it tracks the grasp stage (``stages``), and every
``replan_every`` control steps, when the stage changes or when the current subgoal is reached, it
samples N candidate subgoals with the generator and keeps the one the selection prefers. Its output
is ``{subgoal image, tool goal opening}``.

:class:`HierarchicalController` runs the whole stack in one process, on what a cell measures: the
scene and wrist images, the wrist cloud and the joint states. It estimates the tool state with the
affordance encoder (the tool-mount pose by forward kinematics of the joint states), asks the planner
for the goal and the low-level policy for joint targets. Fallbacks: an invalid cloud keeps the last
valid tool state; until one has been seen, or while the tool goal is unknown, it holds the joints.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from dexhier import vocabulary as V
from perception.encoder import AffordanceEncoder, AffordanceEstimate
from policies.high_level.generator import SubgoalGenerator, images_to_model, model_to_images, resize_image
from policies.high_level.progress import ProgressClassifier
from policies.high_level.reachability import ReachabilityEstimator
from policies.high_level.stages import STAGES, StageConfig, StageTracker, tip_in_base

SELECTIONS = ("progress", "value", "first")
"""How a subgoal is chosen among the candidates: the progress classifier's argmax (GHIL-Glue), the
reachability estimate's rule (HECRL-style value selection, ``reachability.py``), or the first one
(with ``candidates=1`` this is the generator alone, the 'filter off' ablation)."""


@dataclass(frozen=True)
class PlannerConfig:
    """High-level settings. ``replan_every`` in control steps; ``reached_mse`` in the generator's
    [-1, 1] image units (mean squared difference between the current image and the subgoal)."""

    task: str
    candidates: int = 4
    selection: str = "progress"
    replan_every: int = 10
    reached_mse: float = 0.002
    seed: int = 0
    stages: StageConfig = field(default_factory=StageConfig)

    def __post_init__(self) -> None:
        if self.selection not in SELECTIONS:
            raise ValueError(f"unknown selection {self.selection!r}; valid: {', '.join(SELECTIONS)}")
        if self.candidates < 1 or self.replan_every < 1 or self.reached_mse < 0:
            raise ValueError("candidates and replan_every must be >= 1, reached_mse >= 0")


@dataclass(frozen=True)
class Subgoal:
    """One high-level decision. Images uint8 RGB at the generator's resolution (S, S, 3)."""

    image: np.ndarray | None
    """The chosen subgoal; None when the planner has no generator (goal images come from elsewhere)."""
    tool_goal: float
    """Tip gap the tool must reach, m; NaN until the tool has been seen."""
    stage: str
    retries: int
    chosen_at: int
    """Control step at which the image was chosen."""
    candidates: np.ndarray | None = None
    scores: np.ndarray | None = None
    """Per candidate: progress logits (``progress``) or normalized distances (``value``)."""


class SubgoalPlanner:
    """Current scene image + affordance estimate -> :class:`Subgoal`; ``reset(seed)`` per episode.

    Raises ValueError for a task the generator or the classifier does not know, for mismatched image
    sizes between them, and (in :meth:`update`) for images that are not uint8 RGB (H, W, 3).
    """

    def __init__(
        self,
        config: PlannerConfig,
        generator: SubgoalGenerator | None,
        selector: ProgressClassifier | ReachabilityEstimator | None = None,
    ) -> None:
        self.config, self.generator, self.selector = config, generator, selector
        self.tracker = StageTracker(config.stages)
        if generator is not None:
            self._task = generator.task_ids([config.task])
            self.size = generator.config.image_size
        if config.selection != "first" and generator is not None:
            kind = {"progress": ProgressClassifier, "value": ReachabilityEstimator}[config.selection]
            if not isinstance(selector, kind):
                raise ValueError(f"selection {config.selection!r} needs a {kind.__name__}")
            if config.task not in selector.config.tasks:
                raise ValueError(
                    f"unknown task {config.task!r}; the selector knows {list(selector.config.tasks)}"
                )
            if selector.config.image_size != self.size:
                raise ValueError(f"the selector's images are {selector.config.image_size} px, "
                                 f"the generator's {self.size}")  # fmt: skip
            self._sel_task = torch.tensor([selector.config.tasks.index(config.task)])
        self.reset(config.seed)

    def reset(self, seed: int = 0) -> None:
        self.tracker.reset()
        self.current: Subgoal | None = None
        self._goal_x: torch.Tensor | None = None  # the chosen subgoal as the generator sees it
        self._step = 0
        self._gen = torch.Generator().manual_seed(int(seed))

    def update(
        self, image: np.ndarray, estimate: AffordanceEstimate | None, tip_position: np.ndarray | None = None
    ) -> Subgoal:
        """One control step: track the stage and replan when due. ``image`` uint8 (H, W, 3);
        ``tip_position`` the tip centre in the base frame (3,), m (for the place stage)."""
        x = images_to_model(image, self.size) if self.generator is not None else None
        if x is not None and x.shape[0] != 1:
            raise ValueError(f"one image (H, W, 3) expected, got {np.shape(image)}")
        stage = self.tracker.update(estimate, tip_position)
        cur = self.current
        due = (
            cur is None
            or stage.changed
            or self._step - cur.chosen_at >= self.config.replan_every
            or (
                self._goal_x is not None and float(((x - self._goal_x) ** 2).mean()) < self.config.reached_mse
            )
        )
        if due:
            cands, scores, image_out = (None, None, None) if x is None else self._propose(x)
            cur = Subgoal(image_out, stage.tool_goal, stage.stage, stage.retries, self._step, cands, scores)
        else:
            cur = replace(cur, tool_goal=stage.tool_goal, stage=stage.stage, retries=stage.retries)
        self.current = cur
        self._step += 1
        return cur

    def _propose(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        cfg = self.config
        cands = self.generator.sample(x, self._task, candidates=cfg.candidates, gen=self._gen)  # (1, N, ...)
        scores, best = None, 0
        if cfg.selection == "progress" and cfg.candidates > 1:
            s = self.selector.scores(x, cands, self._sel_task)
            scores, best = s[0].numpy(), int(s[0].argmax())
        elif cfg.selection == "value" and cfg.candidates > 1:
            d = self.selector.distances(x, cands, self._sel_task)
            scores, best = d[0].numpy(), int(self.selector.pick(d)[0])
        self._goal_x = cands[0, best : best + 1]
        images = model_to_images(cands[0])
        return images, scores, images[best]


def load_planner(
    task: str,
    generator: str | None,
    selector: str | None,
    candidates: int = 4,
    selection: str = "progress",
    replan_every: int = 10,
    steps: int | None = None,
    place_xy: tuple[float, float] | None = None,
) -> SubgoalPlanner:
    """The planner from checkpoint directories (what the rollout and the ROS node both build).

    ``selector`` is the progress classifier (``selection="progress"``) or the reachability
    estimate (``"value"``); it is loaded only when it has something to choose (N > 1), else the
    selection is ``first``. ``generator=None`` gives a planner that tracks stages only. A task
    with a place point gets the place stage: ``place_xy`` (base frame, m; a cell's bin), by default
    the twin's (``sim.tasks``: the bin of ``tweezer_pick_place``).
    """
    from sim.tasks import TASKS

    place = TASKS[task].place_xy if task in TASKS else None
    if place is not None and place_xy is not None:
        place = place_xy
    gen = SubgoalGenerator.load(generator, steps=steps) if generator else None
    sel = None
    if gen is not None and selection != "first" and candidates > 1:
        if not selector:
            raise ValueError(f"selection {selection!r} needs a selector checkpoint")
        sel = (
            ProgressClassifier.load(selector)
            if selection == "progress"
            else ReachabilityEstimator.load(selector)
        )
    config = PlannerConfig(task=task, candidates=candidates, selection=selection if sel else "first",
                           replan_every=replan_every, stages=StageConfig(place_xy=place))  # fmt: skip
    return SubgoalPlanner(config, gen, sel)


class HierarchicalController:
    """Perception + planner + low level, as a ``reset()`` / ``select_action(obs)`` policy.

    ``obs`` holds the twin's (or a cell's) keys: arm and hand joint positions, the low level's camera
    images, and the wrist cloud (``V.OBS_POINTS``, optional ``V.OBS_POINTS_LABEL``) in the base frame.
    ``goal_images`` optionally replaces the generated subgoal image (the oracle ablation): a callable
    ``obs -> uint8 image``.
    """

    def __init__(self, planner: SubgoalPlanner, lowlevel: Any, encoder: AffordanceEncoder,
                 scene_camera: str = "scene", goal_images: Any = None) -> None:  # fmt: skip
        from sim.kinematics import ToolMountKinematics

        self.planner, self.lowlevel, self.encoder = planner, lowlevel, encoder
        self.scene_camera, self.goal_images = scene_camera, goal_images
        layout = lowlevel.layout
        self.joint_names = [*layout.arm_joints, *layout.hand_joints]
        self.kinematics = ToolMountKinematics()
        self.goal_size = lowlevel.config.image_size
        self.reset()

    def reset(self, seed: int = 0) -> None:
        self.planner.reset(seed)
        self.lowlevel.reset(seed)
        self.estimate: AffordanceEstimate | None = None
        self.last_valid: AffordanceEstimate | None = None
        self.subgoal: Subgoal | None = None
        self.goal_image: np.ndarray | None = None  # what the low level was last given
        self._goal_source: np.ndarray | None = None  # the image it was resized from
        self.held_steps = 0
        self.furthest = 0  # index in STAGES of the furthest stage reached this episode

    def _joints(self, obs: Mapping[str, Any]) -> np.ndarray:
        q = np.concatenate([np.asarray(obs[V.OBS_ARM_QPOS], float), np.asarray(obs[V.OBS_HAND_QPOS], float)])
        if q.shape != (len(self.joint_names),) or not np.all(np.isfinite(q)):
            raise ValueError(f"joint positions must be {len(self.joint_names)} finite values, got {q.shape}")
        return q

    def perceive(self, obs: Mapping[str, Any], pose: np.ndarray) -> AffordanceEstimate | None:
        """The affordance estimate of this step's cloud (``pose``: the tool mount's (4, 4) pose in the
        base frame), or None (with ``self.estimate``) if invalid."""
        points = obs.get(V.OBS_POINTS)
        if points is None:
            self.estimate = None
            return None
        est = self.encoder.encode(points, obs.get(V.OBS_POINTS_LABEL), pose)
        self.estimate = est
        if est.valid:
            self.last_valid = est
            return est
        return None

    def select_action(self, obs: Mapping[str, Any]) -> np.ndarray:
        """Joint targets (arm then hand, rad) for the next control step."""
        q = self._joints(obs)
        pose = self.kinematics.pose(self.joint_names, q)  # the tool mount, by forward kinematics
        est = self.perceive(obs, pose)
        tip = tip_in_base(pose, self.planner.config.stages.tip_in_mount)
        scene = obs[V.rgb_key(self.scene_camera)]
        self.subgoal = self.planner.update(scene, est, tip)
        self.furthest = max(self.furthest, STAGES.index(self.subgoal.stage))
        if self.last_valid is None or not np.isfinite(self.subgoal.tool_goal):
            self.held_steps += 1  # the tool state is unknown: hold rather than guess
            return q
        image = self.subgoal.image if self.goal_images is None else self.goal_images(obs)
        if image is not self._goal_source:  # resized once per chosen subgoal, not every step
            self._goal_source, self.goal_image = image, resize_image(image, self.goal_size)
        image = self.goal_image
        low_obs = dict(obs)
        low_obs[V.OBS_TOOL_TIP_GAP] = np.array([self.last_valid.tip_gap])
        goal = {V.GOAL_RGB: image, V.GOAL_TOOL_TIP_GAP: np.array([self.subgoal.tool_goal])}
        return self.lowlevel.select_action(low_obs, goal)

    def episode_info(self) -> dict[str, Any]:
        """The episode so far: the furthest stage reached, the retries, the steps held for want of
        a tool state."""
        retries = self.subgoal.retries if self.subgoal is not None else 0
        return {"furthest_stage": STAGES[self.furthest], "retries": retries, "held_steps": self.held_steps}

    def video_inset(self) -> np.ndarray | None:
        """The goal image last handed to the low level (uint8), for rollout videos; None before."""
        return self.goal_image
