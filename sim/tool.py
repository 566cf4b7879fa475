"""The tweezer tool: geometry, its tip-gap law, and its MJCF.

Two straight arms pivot on a common base about parallel hinges (axis x of the tool frame),
hanging along +z of the tool frame. Each hinge has a linear spring (``stiffness``) whose
rest angle ``springref`` is the fully open angle, so the tool rests open and the fingers
close it by pressing the outer grip pads; a joint equality keeps the arms symmetric. The
closed stop (tips touching, gap 0) is the hinges' lower limit; the arms do not collide
with each other, so they cannot lock together after an impact.

Tip-gap law (exact for this model): ``g(theta) = g0 + 2 L sin(theta)`` with ``theta`` the
half-opening angle of each arm (rad), ``L`` the hinge-to-tip-pad distance (m) and ``g0`` the
gap at ``theta = 0`` (m).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dexhier.vocabulary import TOOL_JOINTS

BASE_BODY = "tweezer_base"
ARM_BODIES = ("tweezer_arm_a", "tweezer_arm_b")
TIP_SITES = ("tweezer_tip_a", "tweezer_tip_b")
TIP_CENTER_SITE = "tweezer_tip_center"


@dataclass(frozen=True)
class TweezerParams:
    """Dimensions of the tweezer, metres and radians.

    Attributes:
        arm_length: hinge to the middle of the tip pad, L (m).
        arm_width: width of each arm across the hinge axis direction (m).
        arm_thickness: plate thickness of each arm (m).
        gap_at_zero: tip gap g0 at theta = 0 (m).
        max_gap: rest (fully open) tip gap (m); the spring's rest angle gives it.
        stiffness: hinge spring stiffness per arm (N m / rad).
        grip_pad_depth: distance from the hinge to the centre of the outer grip pads (m).
    """

    arm_length: float = 0.14
    arm_width: float = 0.01
    arm_thickness: float = 0.002
    gap_at_zero: float = 0.002
    max_gap: float = 0.032
    stiffness: float = 0.4
    grip_pad_depth: float = 0.10

    def __post_init__(self) -> None:
        if not 0.03 <= self.arm_length <= 0.3:
            raise ValueError(f"arm_length must be in [0.03, 0.3] m, got {self.arm_length}")
        if not 0.0 < self.gap_at_zero < self.max_gap:
            raise ValueError("need 0 < gap_at_zero < max_gap")
        if self.max_gap >= 2 * self.arm_length:
            raise ValueError("max_gap must be below 2 * arm_length")
        if self.stiffness <= 0:
            raise ValueError(f"stiffness must be positive, got {self.stiffness}")

    def tip_gap(self, theta: float) -> float:
        """Tip gap (m) at half-opening angle ``theta`` (rad)."""
        return self.tip_gap_for(self.arm_length, theta)

    def tip_gap_for(self, arm_length: float, theta: float) -> float:
        """Tip gap (m) of a tool like this one but with another ``arm_length`` (m), at ``theta`` (rad)."""
        return self.gap_at_zero + 2.0 * arm_length * math.sin(theta)

    def theta_for_gap(self, gap: float) -> float:
        """Half-opening angle (rad) that gives tip gap ``gap`` (m); inverse of :meth:`tip_gap`."""
        s = (gap - self.gap_at_zero) / (2.0 * self.arm_length)
        return math.asin(max(-1.0, min(1.0, s)))

    @property
    def theta_open(self) -> float:
        """Rest (fully open) half-angle, rad."""
        return self.theta_for_gap(self.max_gap)

    @property
    def theta_closed(self) -> float:
        """Half-angle at which the tips touch (gap 0), rad."""
        return self.theta_for_gap(0.0)


def tweezer_body_mjcf(p: TweezerParams, pos: str = "0 0 0.5") -> str:
    """MJCF ``<body>`` of the free-floating tool (it is held by a weld to the hand)."""
    t, w, L = p.arm_thickness, p.arm_width, p.arm_length
    pad_in = 0.002  # the tip pads protrude this far inward from the plate
    hinge_y = p.gap_at_zero / 2 + pad_in + t / 2
    lo, hi = p.theta_closed, p.theta_open + 0.02
    arms = []
    for side, (body, joint, tip_site) in enumerate(zip(ARM_BODIES, TOOL_JOINTS, TIP_SITES, strict=True)):
        sgn = 1.0 if side == 0 else -1.0
        axis = f"{-sgn} 0 0"  # positive angle swings each tip outward
        # Inner tip pad faces the other arm; the outer grip pad faces the fingers.
        arms.append(f"""
      <body name="{body}" pos="0 {sgn * hinge_y:.5f} 0">
        <joint name="{joint}" type="hinge" axis="{axis}" range="{lo:.5f} {hi:.5f}"
               stiffness="{p.stiffness}" springref="{p.theta_open:.5f}" damping="0.002"
               armature="0.0001" solreflimit="0.004 1" solimplimit="0.95 0.99 0.001"/>
        <geom type="box" size="{w / 2} {t / 2} {L / 2 + 0.004}" pos="0 0 {L / 2 + 0.002}"
              class="tool"/>
        <geom name="{body}_tip_pad" type="box" size="{w / 2} {pad_in / 2} 0.004"
              pos="0 {-sgn * (t / 2 + pad_in / 2):.5f} {L}" class="tool" friction="1.0"
              rgba="0.3 0.3 0.35 1"/>
        <geom name="{body}_grip_pad" type="box" size="0.016 0.002 0.022" density="1200"
              pos="0 {sgn * (t / 2 + 0.002):.5f} {p.grip_pad_depth}" class="tool" rgba="0.2 0.45 0.8 1"/>
        <site name="{tip_site}" pos="0 {-sgn * (t / 2 + pad_in):.5f} {L}" size="0.002"/>
      </body>""")
    return f"""
    <body name="{BASE_BODY}" pos="{pos}">
      <freejoint name="tweezer_free"/>
      <geom type="box" size="{w / 2 + 0.002} {hinge_y + t} 0.03" pos="0 0 -0.026" class="tool"/>
      <site name="{TIP_CENTER_SITE}" pos="0 0 {L}" size="0.002"/>
      {"".join(arms)}
    </body>"""


def tool_default_class() -> str:
    """MJCF default class used by the tool's geoms."""
    return """
    <default class="tool">
      <geom density="2700" rgba="0.75 0.75 0.78 1" contype="4" conaffinity="11" condim="4"
            friction="0.8" solref="0.004 1" solimp="0.95 0.99 0.0005"/>
    </default>"""


def tool_equality_mjcf() -> str:
    """Joint equality that keeps the two arms symmetric."""
    a, b = TOOL_JOINTS
    return f'<joint name="tweezer_symmetry" joint1="{a}" joint2="{b}" polycoef="0 1 0 0 0"/>'
