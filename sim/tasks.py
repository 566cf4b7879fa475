"""Task registry: what the agent must do in the cell, and how success is judged.

A task samples an episode's instance (object and goal) from a seeded generator and judges
success from the twin's privileged state. Every registered task has a name, a language
instruction, a time limit and a success test, and passes the same spec tests.
"""

from __future__ import annotations

import colorsys
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from sim.cell import BIN_CENTER, BIN_INNER_HALF, BIN_WALL_HEIGHT, OBJECT_SHAPES, ObjectParams

_TABLE_HALF_X = (0.44, 0.54)
_TABLE_HALF_Y = (-0.08, 0.08)


@dataclass(frozen=True)
class PrivilegedState:
    """Ground truth of the twin at one instant (SI units, world = base frame).

    Only the expert, the success tests and ``info`` see this; policies never do.
    """

    time: float
    object_pos: np.ndarray  # (3,) m, object centre
    object_quat: np.ndarray  # (4,) w x y z
    object_linvel: np.ndarray  # (3,) m/s
    tip_a: np.ndarray  # (3,) m
    tip_b: np.ndarray  # (3,) m
    tip_center: np.ndarray  # (3,) m
    tip_gap: float  # m, from the hinge angles
    object_touches_tool: bool
    object_pinched: bool  # both tip pads touch the object


@dataclass(frozen=True)
class TaskInstance:
    """One sampled episode: the object on the table and the goal."""

    task: str
    object: ObjectParams
    instruction: str
    target_gap: float | None = None  # m, tool_open_to only
    extras: dict = field(default_factory=dict)


def sample_object(
    rng: np.random.Generator, width_range: tuple[float, float], shapes: tuple[str, ...] = OBJECT_SHAPES
) -> ObjectParams:
    """Sample an object: shape (one of ``shapes``), size, mass, friction, colour and pose on the table."""
    shape = shapes[int(rng.integers(len(shapes)))]
    lo, hi = width_range
    if shape == "sphere":
        lo = max(lo, 0.010)  # smaller spheres sit below the tip pads
    width = float(rng.uniform(lo, hi))
    height = width if shape == "sphere" else float(rng.uniform(0.012, 0.03))
    if shape == "capsule":
        height = max(height, width + 0.002)  # an upright capsule is at least its diameter tall
    hue = float(rng.uniform(0.0, 1.0))
    rgb = colorsys.hsv_to_rgb(hue, float(rng.uniform(0.6, 0.9)), float(rng.uniform(0.7, 0.95)))
    return ObjectParams(
        shape=shape,
        width=width,
        height=height,
        mass=float(rng.uniform(0.005, 0.03)),
        friction=float(rng.uniform(0.6, 1.0)),
        rgba=(*rgb, 1.0),
        xy=(float(rng.uniform(*_TABLE_HALF_X)), float(rng.uniform(*_TABLE_HALF_Y))),
        yaw=float(rng.uniform(-math.pi, math.pi)),
    )


class Task(ABC):
    """Base class of the tasks; subclasses are registered by their ``name``."""

    name: ClassVar[str]
    time_limit: ClassVar[float]
    """Episode time limit, s."""
    width_range: ClassVar[tuple[float, float]] = (0.004, 0.025)
    """Object widths this task samples, m (widths up to 0.03 m exist, but need the full opening)."""
    place_xy: ClassVar[tuple[float, float] | None] = None
    """Where the object must be released, base frame (m): a fixture of the cell; None for no place."""

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if not getattr(cls, "name", None) or not getattr(cls, "time_limit", None):
            raise TypeError(f"task class {cls.__name__} must set 'name' and 'time_limit'")
        if cls.name in TASKS:
            raise TypeError(f"task {cls.name!r} registered twice")
        TASKS[cls.name] = cls

    def __init__(self) -> None:
        self._held = 0.0

    def sample(self, rng: np.random.Generator, shapes: tuple[str, ...] = OBJECT_SHAPES) -> TaskInstance:
        obj = sample_object(rng, self.width_range, shapes)
        return TaskInstance(task=self.name, object=obj, instruction=self.instruction_for(obj, None))

    @abstractmethod
    def instruction_for(self, obj: ObjectParams, target_gap: float | None) -> str:
        """The language instruction of an instance."""

    def reset(self) -> None:
        self._held = 0.0

    def update(self, state: PrivilegedState, inst: TaskInstance, dt: float) -> bool:
        """Advance the success test by one control period ``dt`` (s); True once succeeded."""
        self._held = self._held + dt if self.condition(state, inst) else 0.0
        return self._held >= self.hold_time - 1e-9

    hold_time: ClassVar[float] = 0.0
    """How long (s) the success condition must hold without a break."""

    @abstractmethod
    def condition(self, state: PrivilegedState, inst: TaskInstance) -> bool:
        """The instantaneous success condition."""


TASKS: dict[str, type[Task]] = {}


def make_task(name: str) -> Task:
    """Instantiate a registered task; unknown names list the valid ones."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]()


class ToolOpenTo(Task):
    """Open (or close) the tweezers to a target tip gap and hold it."""

    name = "tool_open_to"
    time_limit = 5.0
    hold_time = 0.5
    tolerance = 0.001
    gap_range = (0.004, 0.028)

    def sample(self, rng: np.random.Generator, shapes: tuple[str, ...] = OBJECT_SHAPES) -> TaskInstance:
        obj = sample_object(rng, self.width_range, shapes)
        gap = float(rng.uniform(*self.gap_range))
        return TaskInstance(
            task=self.name, object=obj, target_gap=gap, instruction=self.instruction_for(obj, gap)
        )

    def instruction_for(self, obj: ObjectParams, target_gap: float | None) -> str:
        return f"open the tweezers to a tip gap of {1000 * (target_gap or 0):.0f} mm"

    def condition(self, state: PrivilegedState, inst: TaskInstance) -> bool:
        return abs(state.tip_gap - inst.target_gap) <= self.tolerance


class TweezerPick(Task):
    """Pick the object with the tweezers and hold it at least 3 cm above the table."""

    name = "tweezer_pick"
    time_limit = 10.0
    hold_time = 1.0
    lift_height = 0.03

    def instruction_for(self, obj: ObjectParams, target_gap: float | None) -> str:
        return f"pick up the {obj.shape} with the tweezers"

    def condition(self, state: PrivilegedState, inst: TaskInstance) -> bool:
        bottom = state.object_pos[2] - inst.object.height / 2
        return bool(bottom >= self.lift_height and state.object_touches_tool)


class TweezerPickPlace(Task):
    """Pick the object with the tweezers, carry it and release it into the bin."""

    name = "tweezer_pick_place"
    time_limit = 14.0
    place_xy = BIN_CENTER
    hold_time = 0.25

    def instruction_for(self, obj: ObjectParams, target_gap: float | None) -> str:
        return f"put the {obj.shape} in the bin with the tweezers"

    def condition(self, state: PrivilegedState, inst: TaskInstance) -> bool:
        x, y, z = state.object_pos
        inside = abs(x - BIN_CENTER[0]) < BIN_INNER_HALF and abs(y - BIN_CENTER[1]) < BIN_INNER_HALF
        return bool(
            inside
            and z < BIN_WALL_HEIGHT
            and not state.object_touches_tool
            and float(np.linalg.norm(state.object_linvel)) < 0.05
        )
