"""A UR5e-like 6-DoF arm as MJCF text.

Kinematic offsets and joint limits follow the published UR5e numbers (shoulder height
0.163 m, upper arm 0.425 m, forearm 0.392 m, wrists 0.127 / 0.1 / 0.1 m; limits +-2 pi,
elbow +-pi). Link geometry is capsules: the twin needs the kinematics, inertia and
reach of the arm, not its cosmetics. Position servos with the gains of a UR5e model
(kp 2000 / 500 N m/rad) and gravity compensation routed through the actuators, as the
real controller compensates gravity internally.

The arm's root body is ``arm_base``; its tool flange is the site ``flange`` whose +z axis
points out of the flange.
"""

from __future__ import annotations

ROOT_BODY = "arm_base"
FLANGE_SITE = "flange"

# Home pose: elbow up, flange pointing down over the work area in front of the base.
HOME_QPOS: tuple[float, ...] = (0.0, -1.9, 1.9, -1.571, -1.571, 0.0)

_TWO_PI = 6.283185


def arm_mjcf() -> str:
    """Return the arm's MJCF as a string (a standalone model with actuators)."""
    big = 'kp="2000" kv="400" forcerange="-150 150"'
    small = 'kp="500" kv="100" forcerange="-28 28"'
    return f"""
<mujoco model="ur5e_like_arm">
  <compiler angle="radian" autolimits="true"/>
  <default>
    <default class="arm">
      <joint armature="0.1" damping="1" range="-{_TWO_PI} {_TWO_PI}" actuatorgravcomp="true"/>
      <geom type="capsule" rgba="0.7 0.72 0.75 1" contype="16" conaffinity="1"/>
    </default>
  </default>
  <worldbody>
    <body name="{ROOT_BODY}" childclass="arm" gravcomp="1">
      <geom type="cylinder" size="0.075 0.04" pos="0 0 0.04" rgba="0.2 0.2 0.22 1"/>
      <body name="shoulder_link" pos="0 0 0.163" gravcomp="1">
        <inertial pos="0 0 0" mass="3.761" diaginertia="0.0102675 0.0102675 0.00666"/>
        <joint name="shoulder_pan_joint" axis="0 0 1"/>
        <geom size="0.06 0.06" fromto="0 -0.07 0 0 0.07 0"/>
        <body name="upper_arm_link" pos="0 0.138 0" quat="0.7071068 0 0.7071068 0" gravcomp="1">
          <inertial pos="0 0 0.2125" mass="8.058" diaginertia="0.133886 0.133886 0.0151074"/>
          <joint name="shoulder_lift_joint" axis="0 1 0"/>
          <geom size="0.05" fromto="0 0 0 0 0 0.425"/>
          <body name="forearm_link" pos="0 -0.131 0.425" gravcomp="1">
            <inertial pos="0 0 0.196" mass="2.846" diaginertia="0.0311796 0.0311796 0.004095"/>
            <joint name="elbow_joint" axis="0 1 0" range="-3.1415 3.1415"/>
            <geom size="0.04" fromto="0 0 0 0 0 0.392"/>
            <body name="wrist_1_link" pos="0 0 0.392" quat="0.7071068 0 0.7071068 0" gravcomp="1">
              <inertial pos="0 0.127 0" mass="1.37" diaginertia="0.0025599 0.0025599 0.0021942"/>
              <joint name="wrist_1_joint" axis="0 1 0"/>
              <geom size="0.035" fromto="0 -0.03 0 0 0.1 0"/>
              <body name="wrist_2_link" pos="0 0.127 0" gravcomp="1">
                <inertial pos="0 0 0.1" mass="1.3" diaginertia="0.0025599 0.0025599 0.0021942"/>
                <joint name="wrist_2_joint" axis="0 0 1"/>
                <geom size="0.035" fromto="0 0 0 0 0 0.08"/>
                <body name="wrist_3_link" pos="0 0 0.1" gravcomp="1">
                  <inertial pos="0 0.0771 0" mass="0.365" diaginertia="0.000991 0.000991 0.000912"/>
                  <joint name="wrist_3_joint" axis="0 1 0"/>
                  <geom type="cylinder" size="0.035 0.02" pos="0 0.08 0" quat="0.7071068 -0.7071068 0 0"/>
                  <site name="{FLANGE_SITE}" pos="0 0.1 0" quat="-0.7071068 0.7071068 0 0"/>
                </body>
              </body>
            </body>
          </body>
        </body>
      </body>
    </body>
  </worldbody>
  <actuator>
    <position name="shoulder_pan" joint="shoulder_pan_joint" {big}/>
    <position name="shoulder_lift" joint="shoulder_lift_joint" {big}/>
    <position name="elbow" joint="elbow_joint" {big}/>
    <position name="wrist_1" joint="wrist_1_joint" {small}/>
    <position name="wrist_2" joint="wrist_2_joint" {small}/>
    <position name="wrist_3" joint="wrist_3_joint" {small}/>
  </actuator>
</mujoco>
"""
