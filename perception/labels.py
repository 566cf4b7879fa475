"""Affordance labels from geometry: what opening a tweezer needs for an object.

For a tool with tip-gap law ``g(theta) = g0 + 2 L sin(theta)`` and full opening
``max_gap``, and an object pinched across a width ``w`` (all in m):

* contact opening: ``w`` (the gap at which both tips touch the object);
* approach opening: ``min(w + APPROACH_MARGIN, max_gap)`` (open a little wider to descend);
* graspable: ``w + GRASP_CLEARANCE <= max_gap`` (the tool opens wide enough to pass around it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from sim.tool import TweezerParams

APPROACH_MARGIN = 0.008
"""Extra opening beyond the object's width when approaching, m (the expert uses the same)."""
GRASP_CLEARANCE = 0.003
"""Minimum opening beyond the width for an object to count as graspable, m."""


@dataclass(frozen=True)
class AffordanceLabels:
    """Exact labels of one (tool state, object) pair. Lengths in m, angles in rad."""

    tip_gap: float
    opening_angle: float
    max_gap: float
    object_width: float
    approach_opening: float
    contact_opening: float
    graspable: bool

    def as_dict(self) -> dict[str, float | bool]:
        return asdict(self)


def affordance_labels(tool: TweezerParams, theta: float, object_width: float) -> AffordanceLabels:
    """Labels for a tool at half-opening ``theta`` (rad) and an object of pinch width ``object_width`` (m)."""
    return AffordanceLabels(
        tip_gap=tool.tip_gap(theta),
        opening_angle=theta,
        max_gap=tool.max_gap,
        object_width=object_width,
        approach_opening=min(object_width + APPROACH_MARGIN, tool.max_gap),
        contact_opening=object_width,
        graspable=object_width + GRASP_CLEARANCE <= tool.max_gap,
    )


def tool_variant(length_scale: float, width_scale: float, base: TweezerParams | None = None) -> TweezerParams:
    """A tweezer scaled in arm length and width; the spring's rest angle is kept, so the full
    opening scales with the length (``max_gap = g0 + 2 L sin(theta_open)``)."""
    b = base or TweezerParams()
    length = b.arm_length * length_scale
    return TweezerParams(
        arm_length=length,
        arm_width=b.arm_width * width_scale,
        arm_thickness=b.arm_thickness,
        gap_at_zero=b.gap_at_zero,
        max_gap=b.tip_gap_for(length, b.theta_open),
        stiffness=b.stiffness,
        grip_pad_depth=b.grip_pad_depth * length_scale,
    )
