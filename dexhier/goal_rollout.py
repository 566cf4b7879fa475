"""Running the learned low-level policy in the twin with a goal source (the rollout adapter).

:class:`GoalConditionedPolicy` gives the rollout loop the ``reset()`` / ``select_action(obs)``
interface: at every reset it prepares the goal source for the episode's seed, and at every step it
asks the source for the current goal and the low-level policy for the next joint targets.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from dexhier import vocabulary as V
from dexhier.oracle_goals import OracleConfig, OracleGoals
from sim.twin import TwinConfig, TwinEnv

GOAL_SOURCES = ("oracle",)
"""Where goals come from: ``oracle`` = frames of the expert's rollout of the same seed."""


@dataclass(frozen=True)
class LowLevelOptions:
    """Evaluation settings of the low-level policy; None keeps the checkpoint's value.

    ``tool_noise`` is the std (m) of Gaussian noise added to the measured tip gap, to mimic
    perception; 0 gives the policy the twin's measurement.
    """

    checkpoint: str = "checkpoints/lowlevel"
    goal_source: str = "oracle"
    steps: int | None = None
    sampler: str | None = None
    cfg_lambda: float | None = None
    exec_steps: int | None = None
    temporal_ensemble: bool | None = None
    lookahead: int = OracleConfig.lookahead
    tool_noise: float = 0.0
    threads: int = 1

    def __post_init__(self) -> None:
        if self.goal_source not in GOAL_SOURCES:
            raise ValueError(f"unknown goal source {self.goal_source!r}; valid: {', '.join(GOAL_SOURCES)}")
        if not (Path(self.checkpoint) / "config.json").is_file():
            raise FileNotFoundError(f"no low-level checkpoint at {self.checkpoint} (config.json missing)")
        if self.tool_noise < 0 or self.threads < 1 or self.lookahead < 0:
            raise ValueError("tool_noise and lookahead must be >= 0, threads >= 1")
        from dexhier.checkpoints import read_config
        from policies.low_level.config import PolicyConfig
        from policies.low_level.policy import CHECKPOINT_TYPE

        # Bad sampling overrides (e.g. exec_steps > horizon) fail here, before any worker starts.
        if is_object_centric(self.checkpoint):
            from policies.low_level.object_centric import OCConfig
            from policies.low_level.oc_policy import CHECKPOINT_TYPE as OC_TYPE

            doc = read_config(self.checkpoint, OC_TYPE)
            OCConfig.from_json({**doc["config"]["policy"], **self.oc_overrides()})
            return
        doc = read_config(self.checkpoint, CHECKPOINT_TYPE)
        PolicyConfig.from_json(doc["config"]["policy"]).with_overrides(**self.overrides())

    def oc_overrides(self) -> dict[str, Any]:
        """The overrides the object-centric low level has (None values dropped)."""
        kw = {"steps": self.steps, "sampler": self.sampler, "exec_steps": self.exec_steps,
              "cfg_lambda": self.cfg_lambda}  # fmt: skip
        return {k: v for k, v in kw.items() if v is not None}

    def overrides(self) -> dict[str, Any]:
        return {"steps": self.steps, "sampler": self.sampler, "cfg_lambda": self.cfg_lambda,
                "exec_steps": self.exec_steps, "temporal_ensemble": self.temporal_ensemble}  # fmt: skip


def is_object_centric(checkpoint: str | Path) -> bool:
    """True for an object-centric low-level checkpoint (by its config's type)."""
    import json

    try:
        doc = json.loads((Path(checkpoint) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    from policies.low_level.oc_policy import CHECKPOINT_TYPE as OC_TYPE

    return isinstance(doc, dict) and doc.get("type") == OC_TYPE


def env_config(task: str, options: LowLevelOptions) -> TwinConfig:
    """The twin config the policy needs: its cameras at its image size, no point cloud; for the
    object-centric low level, perception's depth images and the goal camera."""
    if is_object_centric(options.checkpoint):
        from perception.observer import CAMERAS

        return TwinConfig(task=task, render=True, points=False, cameras=("workspace",), image_width=64,
                          image_height=64, perception_cameras=CAMERAS)  # fmt: skip
    from dexhier.checkpoints import read_config
    from policies.low_level.policy import CHECKPOINT_TYPE

    pol = read_config(options.checkpoint, CHECKPOINT_TYPE)["config"]["policy"]
    cams = tuple(dict.fromkeys([*pol["cameras"], pol["goal_camera"]]))
    s = int(pol["image_size"])
    return TwinConfig(task=task, render=True, points=False, cameras=cams, image_width=s, image_height=s)


def make_goal_policy(env: TwinEnv, options: LowLevelOptions):
    """The rollout policy of a low-level checkpoint of either kind."""
    if is_object_centric(options.checkpoint):
        from dexhier.oc_rollout import ObjectCentricRollout

        return ObjectCentricRollout(env, options)
    return GoalConditionedPolicy(env, options)


class GoalConditionedPolicy:
    """Low-level policy + goal source, as a rollout policy for ``sim.rollout.run_episode``."""

    def __init__(self, env: TwinEnv, options: LowLevelOptions) -> None:
        import torch

        from policies.low_level.policy import LowLevelPolicy

        torch.set_num_threads(options.threads)
        self.env, self.options = env, options
        self.policy = LowLevelPolicy.load(options.checkpoint, **options.overrides())
        oracle_cfg = replace(env.config, time_limit=None)
        self.goals = OracleGoals(
            oracle_cfg, self.policy.config.goal_camera, OracleConfig(lookahead=options.lookahead)
        )
        self._rng = np.random.default_rng(0)

    def reset(self) -> None:
        seed = self.env.episode_metadata()["seed"]
        if seed is None:
            raise RuntimeError("reset the env (env.reset(seed)) before the policy: the oracle needs the seed")
        seed = int(seed)
        self.goals.prepare(seed)
        self.policy.reset(seed)
        self._rng = np.random.default_rng(seed)

    def select_action(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        if self.options.tool_noise > 0:
            obs = dict(obs)
            obs[V.OBS_TOOL_TIP_GAP] = obs[V.OBS_TOOL_TIP_GAP] + self._rng.normal(
                0, self.options.tool_noise, 1
            )
        return self.policy.select_action(obs, self.goals.goal(obs))
