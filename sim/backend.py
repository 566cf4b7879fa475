"""The robot-backend contract shared by the MuJoCo twin and a real cell.

Lifecycle: construct → ``reset(seed)`` → ``step(action)`` … → ``close()``. The observation
and action specs are available before the first reset and are the same for the twin and for
a real cell with the same robot, so policies can be moved between them.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ArraySpec:
    """Shape (``-1`` = variable length), dtype and unit of one observation entry."""

    shape: tuple[int, ...]
    dtype: str
    unit: str = ""
    description: str = ""

    def check(self, key: str, value: np.ndarray) -> None:
        """Raise ValueError if ``value`` does not match this spec."""
        if np.dtype(value.dtype) != np.dtype(self.dtype):
            raise ValueError(f"{key}: dtype {value.dtype}, spec says {self.dtype}")
        if len(value.shape) != len(self.shape) or any(
            s != -1 and s != v for s, v in zip(self.shape, value.shape, strict=True)
        ):
            raise ValueError(f"{key}: shape {value.shape}, spec says {self.shape}")


@dataclass(frozen=True)
class ActionSpec:
    """Absolute joint position targets, one per named joint (rad), with their limits."""

    names: tuple[str, ...]
    lower: np.ndarray
    upper: np.ndarray

    @property
    def size(self) -> int:
        return len(self.names)


StepResult = tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]


class Backend(ABC):
    """A robot cell that takes joint-position actions and returns named observations."""

    name: str = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if inspect.isabstract(cls):
            return
        if not cls.name:
            raise TypeError(f"{cls.__name__} must set a non-empty class attribute 'name'")

    @property
    @abstractmethod
    def observation_spec(self) -> dict[str, ArraySpec]:
        """Spec of every observation key."""

    @property
    @abstractmethod
    def action_spec(self) -> ActionSpec:
        """Joint names and limits of the action."""

    @abstractmethod
    def reset(self, seed: int) -> dict[str, np.ndarray]:
        """Start an episode; returns the first observation."""

    @abstractmethod
    def step(self, action: np.ndarray) -> StepResult:
        """Apply one action; returns (observation, reward, terminated, truncated, info).

        Raises ValueError (leaving the state unchanged) for a non-finite or wrongly shaped
        action. ``info["action_sent"]`` holds the command actually applied after clamping.
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (renderers, connections)."""
