"""A LEAP-like 16-DoF four-finger right hand as MJCF text.

Joint names and ranges follow the LEAP hand (four joints per finger: ``mcp, rot, pip, dip``
for index / middle / ring, ``cmc, axl, mcp, ipl`` for the thumb; LEAP ranges). Link lengths
match LEAP's (MCP to fingertip 0.137 m, finger spacing 0.0454 m). The layout is
simplified for a pinch grip on a hanging tool: the three fingers sit on the +y edge of the
palm and flex towards -y, the thumb sits on the -y edge and flexes towards +y, so a
middle-finger / thumb pinch squeezes whatever hangs below the palm.

Contacts: only the fingertip (distal) links touch the tool (contact group 8); the other
links touch the table and objects only (group 64), which keeps the collision work small.

Frame: the root body ``palm`` has its origin on the arm flange, +z pointing out of the
flange (towards the table in a top-down pose). The tool mounts at the site ``tool_mount``.
"""

from __future__ import annotations

ROOT_BODY = "palm"
TOOL_MOUNT_SITE = "tool_mount"

FINGER_X = {"if": -0.0454, "mf": 0.0, "rf": 0.0454}
"""Lateral position (m) of each finger's base on the palm's +y edge."""

# (proximal, middle, distal) link lengths in m: MCP->PIP, PIP->DIP, DIP->tip (LEAP-like).
_FINGER_LINKS = (0.057, 0.036, 0.045)
_THUMB_LINKS = (0.02, 0.022, 0.047, 0.06)
_RADIUS = 0.0095


def _finger(name: str, x: float) -> str:
    prox, mid, dist = _FINGER_LINKS
    return f"""
      <body name="{name}_mcp_link" pos="{x} 0.036 0.03" gravcomp="1">
        <joint name="{name}_mcp" axis="1 0 0" range="-0.314 2.23"/>
        <geom size="{_RADIUS}" fromto="0 0 0 0 0 0.012"/>
        <body name="{name}_rot_link" pos="0 0 0.012" gravcomp="1">
          <joint name="{name}_rot" axis="0 1 0" range="-1.047 1.047"/>
          <geom size="{_RADIUS}" fromto="0 0 0 0 0 {prox - 0.012}"/>
          <body name="{name}_pip_link" pos="0 0 {prox - 0.012}" gravcomp="1">
            <joint name="{name}_pip" axis="1 0 0" range="-0.506 1.885"/>
            <geom size="{_RADIUS}" fromto="0 0 0 0 0 {mid}"/>
            <body name="{name}_dip_link" pos="0 0 {mid}" gravcomp="1">
              <joint name="{name}_dip" axis="1 0 0" range="-0.366 2.042"/>
              <geom size="{_RADIUS}" fromto="0 0 0 0 0 {dist - _RADIUS}" class="fingertip"/>
              <site name="{name}_tip" pos="0 0 {dist}" size="0.004"/>
            </body>
          </body>
        </body>
      </body>"""


def _thumb() -> str:
    cmc, axl, prox, dist = _THUMB_LINKS
    return f"""
      <body name="th_cmc_link" pos="0 -0.036 0.03" gravcomp="1">
        <joint name="th_cmc" axis="0 0 1" range="-0.349 2.094"/>
        <geom size="{_RADIUS}" fromto="0 0 0 0 0 {cmc}"/>
        <body name="th_axl_link" pos="0 0 {cmc}" gravcomp="1">
          <joint name="th_axl" axis="0 1 0" range="-0.349 2.094"/>
          <geom size="{_RADIUS}" fromto="0 0 0 0 0 {axl}"/>
          <body name="th_mcp_link" pos="0 0 {axl}" gravcomp="1">
            <joint name="th_mcp" axis="-1 0 0" range="-0.47 2.443"/>
            <geom size="{_RADIUS}" fromto="0 0 0 0 0 {prox}"/>
            <body name="th_ipl_link" pos="0 0 {prox}" gravcomp="1">
              <joint name="th_ipl" axis="-1 0 0" range="-1.34 1.88"/>
              <geom size="{_RADIUS}" fromto="0 0 0 0 0 {dist - _RADIUS}" class="fingertip"/>
              <site name="th_tip" pos="0 0 {dist}" size="0.004"/>
            </body>
          </body>
        </body>
      </body>"""


def hand_mjcf() -> str:
    """Return the hand's MJCF as a string (a standalone model with actuators)."""
    from dexhier.vocabulary import HAND_JOINTS

    fingers = "".join(_finger(n, x) for n, x in FINGER_X.items())
    actuators = "\n    ".join(f'<position name="{j}" joint="{j}" class="hand"/>' for j in HAND_JOINTS)
    return f"""
<mujoco model="leap_like_hand">
  <compiler angle="radian" autolimits="true"/>
  <default>
    <default class="hand">
      <joint damping="0.05" armature="0.002" frictionloss="0.001"/>
      <geom type="capsule" density="2500" friction="0.8" rgba="0.15 0.15 0.17 1"
            contype="64" conaffinity="3" condim="4" solref="0.004 1" solimp="0.95 0.99 0.0005"/>
      <position kp="4" kv="0.08" forcerange="-0.7 0.7"/>
      <default class="fingertip">
        <geom friction="1.0" rgba="0.85 0.85 0.8 1" contype="8"/>
      </default>
    </default>
  </default>
  <worldbody>
    <body name="{ROOT_BODY}" childclass="hand" gravcomp="1">
      <geom type="box" size="0.06 0.04 0.015" pos="0 0 0.015" density="800"/>
      <site name="{TOOL_MOUNT_SITE}" pos="0 0 0.06"/>
      {fingers}
      {_thumb()}
    </body>
  </worldbody>
  <actuator>
    {actuators}
  </actuator>
</mujoco>
"""
