"""Episodes on a real cell, where a person starts them and says how they ended.

The twin knows when a task succeeded; a cell does not. Here the operator starts an episode (after
setting up the scene), then marks it a success or a failure; an episode left unmarked for
``timeout`` seconds ends as a time-out, and a stopped one as aborted. Each ended episode gives one
result record with the same keys as a twin episode's (``seed``, ``success``, ``sim_time``,
``steps``, ``task``, ``object_width``, ``wall_time``, ``aborted``; the twin-only ones are None),
plus ``episode`` (1, 2, ...), ``source`` ("operator") and ``outcome``.

The ROS adapter is ``dexhier_ros.episode_coordinator`` with ``source:=operator``; this class only
keeps the state, so it runs (and is tested) without ROS. Times are seconds on any monotonic clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


class EpisodeStateError(RuntimeError):
    """The request does not fit the current state (start while running, mark while idle)."""


@dataclass
class OperatorEpisodes:
    """Operator-marked episodes: ``start`` -> ``mark`` | ``stop`` | ``expire``."""

    task: str
    timeout: float = 300.0  # s an episode may run unmarked
    episode: int = 0  # number of the running or last episode
    started_at: float | None = field(default=None, init=False)  # None = no episode running

    def __post_init__(self) -> None:
        if not self.task:
            raise ValueError("task must be named")
        if not (self.timeout > 0 and math.isfinite(self.timeout)):
            raise ValueError(f"timeout must be a positive number of seconds, got {self.timeout!r}")

    @property
    def running(self) -> bool:
        return self.started_at is not None

    def start(self, now: float) -> int:
        """Begin the next episode; returns its number."""
        if self.running:
            raise EpisodeStateError(f"episode {self.episode} is running: mark or stop it first")
        self.episode += 1
        self.started_at = now
        return self.episode

    def mark(self, success: bool, now: float) -> dict[str, Any]:
        """End the running episode with the operator's verdict."""
        if not self.running:
            raise EpisodeStateError("no episode is running: start one first")
        return self._end("success" if success else "failure", now)

    def stop(self, now: float) -> dict[str, Any] | None:
        """End the running episode without a verdict (aborted); None if none was running."""
        return self._end("stopped", now) if self.running else None

    def expire(self, now: float) -> dict[str, Any] | None:
        """End the running episode as a time-out if it has run ``timeout`` s; else None."""
        if self.running and now - self.started_at >= self.timeout:
            return self._end("timeout", now)
        return None

    def _end(self, outcome: str, now: float) -> dict[str, Any]:
        wall = now - self.started_at
        self.started_at = None
        return {
            "seed": None, "success": outcome == "success", "sim_time": None, "steps": None,
            "task": self.task, "object_width": None, "wall_time": wall,
            "aborted": outcome in ("timeout", "stopped"),
            "episode": self.episode, "source": "operator", "outcome": outcome,
        }  # fmt: skip
