"""Stage tracking for tweezer grasps, from perception only: what the tool must do next.

The low level takes a goal image *and* a tool goal opening. The image comes from the subgoal
generator; the opening follows the stage of the grasp, which this tracker infers from the
affordance encoder's output (tool state + where the object sits relative to the tips, both from the
wrist cloud in the tool-mount frame) — no privileged state:

    approach  open to the encoder's approach opening (object width + margin) and get the object
              between the tips;                                  -> close when it is there
    close     close to the contact opening (the object width);   -> lift after ``close_steps``
    lift      hold the contact opening while the arm lifts (and carries);  -> approach again (a
              retry) when the object is no longer between the tips for ``lost_steps``
              observations; -> place when a place point is configured and the tips have been
              over it for ``place_steps`` observations
    place     open fully to release the object (the last stage)

A retry re-opens the tool and starts over instead of marching on with an empty grasp. The place
point is a fixture of the cell (the bin), given in the base frame like a calibration; the tips'
position comes from the joint states by forward kinematics, so no privileged state either.
Lengths in m.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from perception.encoder import AffordanceEstimate

STAGES = ("approach", "close", "lift", "place")


@dataclass(frozen=True)
class StageConfig:
    """Thresholds of the tracker.

    ``tip_in_mount`` is the tip centre in the tool-mount frame (m): the tool's calibration, like a
    robot's TCP offset (the twin's tweezers: 0.14 m along the mount's z axis).
    """

    tip_in_mount: tuple[float, float, float] = (0.0, 0.0, 0.14)
    close_distance: float = 0.009
    lost_distance: float = 0.02
    close_steps: int = 10
    lost_steps: int = 5
    max_retries: int = 3
    trust_distance: float = 0.06
    """Openings are estimated only from clouds with the object at most this far from the tips."""
    opening_window: int = 15
    """The approach opening is the median of the last this-many trusted estimates."""
    place_xy: tuple[float, float] | None = None
    """Where to release the object, base frame (m); None: no place stage (a pick task)."""
    place_radius: float = 0.03
    """Release once the tip centre is within this horizontal distance of ``place_xy``..."""
    place_height: float = 0.10
    """...and at most this high (m above the base): lowered into the bin, as the demonstrations
    release at 7.5 cm after carrying at 12 cm (a drop from the carry height can bounce out)."""
    place_steps: int = 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "tip_in_mount", tuple(float(v) for v in self.tip_in_mount))
        if len(self.tip_in_mount) != 3 or not np.all(np.isfinite(self.tip_in_mount)):
            raise ValueError(f"tip_in_mount must be 3 finite numbers, got {self.tip_in_mount}")
        if not 0 < self.close_distance < self.lost_distance:
            raise ValueError("need 0 < close_distance < lost_distance")
        if min(self.close_steps, self.lost_steps, self.opening_window) < 1 or self.max_retries < 0:
            raise ValueError("close_steps, lost_steps and opening_window must be >= 1, max_retries >= 0")
        if self.trust_distance <= 0:
            raise ValueError("trust_distance must be > 0")
        if self.place_xy is not None:
            object.__setattr__(self, "place_xy", tuple(float(v) for v in self.place_xy))
            if len(self.place_xy) != 2 or not np.all(np.isfinite(self.place_xy)):
                raise ValueError(f"place_xy must be 2 finite numbers or None, got {self.place_xy}")
        if self.place_radius <= 0 or self.place_steps < 1:
            raise ValueError("place_radius must be > 0 and place_steps >= 1")


def tip_in_base(mount_pose: np.ndarray, tip_in_mount: tuple[float, float, float]) -> np.ndarray:
    """The tip centre in the base frame (3,), m, from the tool mount's (4, 4) pose in that frame."""
    pose = np.asarray(mount_pose, dtype=float)
    return pose[:3, :3] @ np.asarray(tip_in_mount) + pose[:3, 3]


@dataclass(frozen=True)
class StageDecision:
    """The tracker's output for one observation. ``tool_goal`` in m; NaN until the tool is seen."""

    stage: str
    tool_goal: float
    retries: int
    changed: bool
    object_distance: float
    """Object centre to tip centre (m); NaN when the object is not in the cloud."""


class StageTracker:
    """Feed one :class:`AffordanceEstimate` per control step to :meth:`update`; ``reset`` per episode."""

    def __init__(self, config: StageConfig | None = None) -> None:
        self.config = config or StageConfig()
        self._tip = np.asarray(self.config.tip_in_mount)
        self.reset()

    def reset(self) -> None:
        self.stage = "approach"
        self.retries = 0
        self._in_stage = 0
        self._lost = 0
        self._openings: list[tuple[float, float]] = []  # trusted (approach, contact) estimates
        self._max_gap: float | None = None
        self._over_place = 0

    def _goal(self) -> float:
        if self._openings and self.stage != "place":  # place: open fully, as before the tool is seen
            approach, contact = np.median(np.asarray(self._openings), axis=0)
            return float(approach if self.stage == "approach" else contact)
        return float("nan") if self._max_gap is None else float(self._max_gap)

    def update(self, est: AffordanceEstimate | None, tip_position: np.ndarray | None = None) -> StageDecision:
        """Advance on one estimate; an invalid or missing one holds the stage (and counts as unseen).

        ``tip_position``: the tip centre in the base frame (3,), m, from forward kinematics; needed
        only to enter ``place`` (without it a pick-and-place stays in ``lift``).
        """
        cfg = self.config
        if tip_position is not None:
            tip_position = np.asarray(tip_position, dtype=float)
            if tip_position.shape != (3,) or not np.all(np.isfinite(tip_position)):
                raise ValueError(f"tip_position must be 3 finite numbers, got {tip_position}")
        before = self.stage
        dist = float("nan")
        if est is not None and est.valid:
            self._max_gap = est.max_gap if np.isfinite(est.max_gap) else self._max_gap
            if est.object_valid and np.all(np.isfinite(est.object_center)):
                dist = float(np.linalg.norm(np.asarray(est.object_center) - self._tip))
                # Openings are estimated while approaching and frozen once the tips close on the object.
                if (
                    self.stage == "approach"
                    and dist < cfg.trust_distance
                    and np.isfinite(est.approach_opening)
                ):
                    self._openings.append((float(est.approach_opening), float(est.contact_opening)))
                    del self._openings[: -cfg.opening_window]
        self._in_stage += 1
        seen = np.isfinite(dist)
        if self.stage == "approach":
            if seen and dist < cfg.close_distance and self._openings:
                self._enter("close")
        elif self.stage == "close":
            if self._in_stage >= cfg.close_steps:
                self._enter("lift")
        elif self.stage == "lift":
            self._lost = 0 if seen and dist < cfg.lost_distance else self._lost + 1
            if self._lost >= cfg.lost_steps and self.retries < cfg.max_retries:
                self.retries += 1
                self._enter("approach")
            elif self._over(tip_position):
                self._over_place += 1
                if self._over_place >= cfg.place_steps:
                    self._enter("place")
            else:
                self._over_place = 0
        return StageDecision(self.stage, self._goal(), self.retries, self.stage != before, dist)

    def _over(self, tip: np.ndarray | None) -> bool:
        cfg = self.config
        if cfg.place_xy is None or tip is None:
            return False
        return bool(np.hypot(*(tip[:2] - cfg.place_xy)) <= cfg.place_radius and tip[2] <= cfg.place_height)

    def _enter(self, stage: str) -> None:
        self.stage, self._in_stage, self._lost, self._over_place = stage, 0, 0, 0
