"""The object-centric low level in the twin: label-free perception + oracle goals + the policy.

A rollout policy for ``sim.rollout.run_episode``. Each step, ``ObjectObserver`` turns the twin's
perception depth images and measured joints into the ``perception/*`` keys (nothing privileged);
the oracle gives the expert's future tips and tip gap as the goal (with ``lookahead`` past the end,
the final goal only: the flat baseline).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from dexhier.oracle_goals import OracleConfig, OracleGoals
from sim.twin import TwinEnv


class ObjectCentricRollout:
    """Observer + oracle goals + ``ObjectCentricPolicy`` for one twin env."""

    def __init__(self, env: TwinEnv, options: Any) -> None:
        import torch

        from perception.observer import ObjectObserver
        from policies.low_level.oc_policy import ObjectCentricPolicy

        torch.set_num_threads(options.threads)
        self.env, self.options = env, options
        self.policy = ObjectCentricPolicy.load(
            options.checkpoint, cell=env.config.cell, **options.oc_overrides()
        )
        self.observer = ObjectObserver(env.config.cell)
        cfg = replace(env.config, time_limit=None, perception_cameras=())
        self.goals = OracleGoals(cfg, "workspace", OracleConfig(lookahead=options.lookahead), tips=True)

    def reset(self) -> None:
        seed = self.env.episode_metadata()["seed"]
        if seed is None:
            raise RuntimeError("reset the env (env.reset(seed)) before the policy: the oracle needs the seed")
        self.goals.prepare(int(seed))
        self.policy.reset(int(seed))
        self.observer.reset()

    def select_action(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        full = {**obs, **self.observer.observe(obs, self.env.robot.joint_names)}
        return self.policy.select_action(full, self.goals.goal(full))

    def episode_info(self) -> dict[str, Any]:
        return {"holds": self.policy.holds}
