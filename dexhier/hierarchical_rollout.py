"""Running the whole hierarchy in the twin (the rollout adapter of ``--policy hierarchical``).

The twin gives what a cell measures: scene and wrist images at the low level's size, the wrist
camera's cloud with segmentation labels, and the joint states. Nothing privileged reaches the
controller; the oracle-subgoal ablation (``subgoals="oracle"``) swaps only the goal *image* for the
expert's frame, the tool goal and the tool state still come from perception; ``oracle_lowres`` gives
the expert's frame at the generator's resolution (blurred by the same down- and up-sampling), to
separate what the generator's resolution costs from what its samples cost.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from dexhier import vocabulary as V
from sim.twin import TwinConfig, TwinEnv

SUBGOAL_SOURCES = ("generated", "oracle", "oracle_lowres")
DEFAULT_LOWLEVEL = "checkpoints/lowlevel_pick"
"""The low level trained on pick data only: 36 % on tweezer_pick with oracle goals, against 4 % for
``checkpoints/lowlevel`` (which also knows tool_open_to)."""
TASK_LOWLEVEL = {"tweezer_pick_place": "checkpoints/lowlevel_pick_place"}
"""Tasks with a low level of their own (fine-tuned from ``lowlevel_pick`` on pick-and-place data)."""


def default_lowlevel(task: str) -> str:
    """The low-level checkpoint the hierarchy uses for ``task`` by default."""
    return TASK_LOWLEVEL.get(task, DEFAULT_LOWLEVEL)


BEST_LOWLEVEL = {
    "tool_open_to": "checkpoints/lowlevel",
    "tweezer_pick": DEFAULT_LOWLEVEL,
    "tweezer_pick_place": "checkpoints/lowlevel_pick_place",
}
"""The best shipped low level per task with oracle goals (docs/benchmarks.md): what
``dexhier eval rollout --policy lowlevel`` runs without ``--checkpoint``."""


def best_lowlevel(task: str) -> str:
    return BEST_LOWLEVEL.get(task, "checkpoints/lowlevel")


DEFAULT_GENERATOR = "checkpoints/subgoal"
DEFAULT_FILTER = "checkpoints/subgoal_filter"
DEFAULT_VALUE = "checkpoints/subgoal_value"
DEFAULT_AFFORDANCE = "checkpoints/affordance"
POINTS_CAMERA = "wrist"
POINTS_SIZE = (160, 120)
"""Wrist depth for the cloud, px: at 64 x 64 small objects fall below perception's point minimum."""


@dataclass(frozen=True)
class HierarchicalOptions:
    """Evaluation settings of the hierarchy (paths are checkpoint directories)."""

    checkpoint: str = DEFAULT_LOWLEVEL
    generator: str = DEFAULT_GENERATOR
    filter: str = DEFAULT_FILTER
    value: str = DEFAULT_VALUE
    affordance: str = DEFAULT_AFFORDANCE
    candidates: int = 4
    selection: str = "progress"
    subgoals: str = "generated"
    replan_every: int = 10
    exec_steps: int | None = None
    temporal_ensemble: bool | None = None
    threads: int = 1

    def __post_init__(self) -> None:
        from policies.high_level.controller import SELECTIONS

        if self.subgoals not in SUBGOAL_SOURCES:
            raise ValueError(f"unknown subgoal source {self.subgoals!r}; valid: {', '.join(SUBGOAL_SOURCES)}")
        if self.selection not in SELECTIONS:
            raise ValueError(f"unknown selection {self.selection!r}; valid: {', '.join(SELECTIONS)}")
        if self.candidates < 1 or self.replan_every < 1 or self.threads < 1:
            raise ValueError("candidates, replan_every and threads must be >= 1")
        needed = [self.checkpoint, self.affordance]
        if self.subgoals == "oracle_lowres":
            needed.append(self.generator)  # for its resolution
        if self.subgoals == "generated":
            needed.append(self.generator)
            if self.selection != "first" and self.candidates > 1:
                needed.append(self.filter if self.selection == "progress" else self.value)
        for path in needed:
            if not (Path(path) / "config.json").is_file():
                raise FileNotFoundError(f"no checkpoint at {path} (config.json missing)")


def env_config(task: str, options: HierarchicalOptions) -> TwinConfig:
    """The low level's cameras at its image size, plus the wrist cloud for perception."""
    from dexhier.goal_rollout import LowLevelOptions
    from dexhier.goal_rollout import env_config as lowlevel_env

    cfg = lowlevel_env(task, LowLevelOptions(checkpoint=options.checkpoint))
    cams = tuple(dict.fromkeys([*cfg.cameras, POINTS_CAMERA]))
    return replace(cfg, cameras=cams, points=True, points_camera=POINTS_CAMERA, points_size=POINTS_SIZE)


def build_controller(env: TwinEnv, options: HierarchicalOptions) -> Any:
    """The controller for ``env``'s task from the option's checkpoints."""
    import torch

    from dexhier.oracle_goals import OracleGoals
    from perception.encoder import AffordanceEncoder
    from policies.high_level.controller import HierarchicalController, load_planner
    from policies.low_level.policy import LowLevelPolicy

    torch.set_num_threads(options.threads)
    lowlevel = LowLevelPolicy.load(
        options.checkpoint, exec_steps=options.exec_steps, temporal_ensemble=options.temporal_ensemble
    )
    generated = options.subgoals == "generated"
    selector = {"progress": options.filter, "value": options.value}.get(options.selection)
    planner = load_planner(env.config.task, options.generator if generated else None, selector,
                           options.candidates, options.selection, options.replan_every)  # fmt: skip
    goal_images = None
    if options.subgoals.startswith("oracle"):
        oracle = OracleGoals(replace(env.config, time_limit=None, points=False), lowlevel.config.goal_camera)
        lowres = None
        if options.subgoals == "oracle_lowres":
            from dexhier.checkpoints import read_config
            from policies.high_level.generator import CHECKPOINT_TYPE as GEN_TYPE

            lowres = int(read_config(options.generator, GEN_TYPE)["config"]["generator"]["image_size"])
        goal_images = _OracleImages(oracle, lowres)
    controller = HierarchicalController(
        planner,
        lowlevel,
        AffordanceEncoder.load(options.affordance),
        lowlevel.config.goal_camera,
        goal_images,
    )
    return _EpisodeAdapter(env, controller, goal_images)


class _OracleImages:
    """Goal images from the expert's rollout of the episode's seed (``obs -> uint8 image``)."""

    def __init__(self, oracle: Any, lowres: int | None = None) -> None:
        self.oracle, self.lowres = oracle, lowres

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        image = self.oracle.goal(obs)[V.GOAL_RGB]
        if self.lowres is None:
            return image
        from policies.high_level.generator import resize_image

        return resize_image(resize_image(image, self.lowres), image.shape[0])


class _EpisodeAdapter:
    """Seeds the controller (and the oracle, in that ablation) from the env's episode."""

    def __init__(self, env: TwinEnv, controller: Any, oracle: _OracleImages | None) -> None:
        self.env, self.controller, self.oracle = env, controller, oracle

    def reset(self) -> None:
        seed = self.env.episode_metadata()["seed"]
        if seed is None:
            raise RuntimeError("reset the env (env.reset(seed)) before the policy")
        if self.oracle is not None:
            self.oracle.oracle.prepare(int(seed))
        self.controller.reset(int(seed))

    def select_action(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        return self.controller.select_action(obs)

    def video_inset(self) -> np.ndarray | None:
        return self.controller.video_inset()

    def episode_info(self) -> dict[str, Any]:
        return self.controller.episode_info()
