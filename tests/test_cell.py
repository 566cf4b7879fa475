"""The cell model: default robots, the tweezer mechanism, bring-your-own-robot and bad input."""

import mujoco
import numpy as np
import pytest

from dexhier import vocabulary as V
from sim.cell import CellBuildError, CellConfig, ObjectParams, build_cell
from sim.twin import TwinConfig, TwinEnv

pytestmark = pytest.mark.sim


def test_default_cell_uses_the_vocabulary_and_leap_ranges():
    model, robot = build_cell(CellConfig(), ObjectParams())
    assert robot.arm_joints == V.ARM_JOINTS
    assert robot.hand_joints == V.HAND_JOINTS
    i = robot.joint_names.index("if_mcp")
    assert (robot.lower[i], robot.upper[i]) == pytest.approx((-0.314, 2.23))
    i = robot.joint_names.index("elbow_joint")
    assert (robot.lower[i], robot.upper[i]) == pytest.approx((-3.1415, 3.1415))
    assert model.opt.timestep == pytest.approx(1 / 500)
    assert model.opt.cone == mujoco.mjtCone.mjCONE_ELLIPTIC


def _settle(env, hand_q, seconds=0.6):
    q = np.concatenate([env.data.qpos[env.robot.qpos_adr[: env.robot.n_arm]], hand_q])
    for _ in range(round(seconds * env.config.control_hz)):
        env.step(q)


def test_tweezer_rests_open_and_the_fingers_close_it_through_contact():
    env = TwinEnv(TwinConfig(task="tool_open_to", render=False, points=False))
    env.reset(0)
    n = env.robot.n_arm
    names = env.robot.hand_joints
    open_q = env.robot.home[n:].copy()
    for j, v in {"mf_mcp": -0.15, "th_mcp": -0.15}.items():
        open_q[names.index(j)] = v
    _settle(env, open_q)
    rest = env.tip_gap()
    assert 0.028 < rest <= env.tool.max_gap + 1e-4  # spring holds it open (a little gravity sag)
    tips = env.privileged_state()
    assert np.linalg.norm(tips.tip_a - tips.tip_b) == pytest.approx(
        rest, abs=0.0015
    )  # the law matches the sim
    closed_q = open_q.copy()
    for j, v in {"mf_mcp": 0.4, "mf_pip": 0.3, "th_mcp": 0.4, "th_ipl": 0.3}.items():
        closed_q[names.index(j)] = v
    _settle(env, closed_q)
    assert env.tip_gap() < 0.004
    # The closing force comes from finger contacts on the grip pads, not from an actuator on the tool.
    m, d = env.model, env.data
    pairs = {(m.geom(c.geom1).name, m.geom(c.geom2).name) for c in d.contact[: d.ncon]}
    assert any("grip_pad" in a + b for a, b in pairs)
    tool_joint_ids = {m.joint(j).id for j in V.TOOL_JOINTS}
    assert all(int(m.actuator_trnid[a, 0]) not in tool_joint_ids for a in range(m.nu))
    _settle(env, open_q)
    assert env.tip_gap() > 0.028  # and the spring reopens it


_ARM_XML = """
<mujoco model="test_arm">
  <compiler angle="radian"/>
  <worldbody>
    <body name="link0">
      <geom type="cylinder" size="0.05 0.05"/>
      <body name="link1" pos="0 0 0.1">
        <joint name="j1" axis="0 0 1" range="-1.5 1.5"/>
        <geom type="capsule" fromto="0 0 0 0 0 0.3" size="0.04"/>
        <body name="link2" pos="0 0 0.3">
          <joint name="j2" axis="0 1 0" range="-2 2"/>
          <geom type="capsule" fromto="0 0 0 0.3 0 0" size="0.03"/>
          <site name="tool_flange" pos="0.3 0 0" quat="0.7071068 0 0.7071068 0"/>
        </body>
      </body>
    </body>
  </worldbody>
  <actuator>
    <position joint="j1" kp="500"/>
    <position joint="j2" kp="500"/>
  </actuator>
  <keyframe><key name="home" qpos="0.3 -0.2"/></keyframe>
</mujoco>
"""

_HAND_XML = """
<mujoco model="test_hand">
  <compiler angle="radian"/>
  <worldbody>
    <body name="hand_root">
      <geom type="box" size="0.03 0.03 0.01"/>
      <site name="mount" pos="0 0 0.05"/>
      <body name="f1" pos="0 0.03 0.01">
        <joint name="f1_base" axis="1 0 0" range="-0.5 1.0"/>
        <geom type="capsule" fromto="0 0 0 0 0 0.05" size="0.008"/>
      </body>
      <body name="f2" pos="0 -0.03 0.01">
        <joint name="f2_base" axis="-1 0 0" range="-0.4 1.1"/>
        <geom type="capsule" fromto="0 0 0 0 0 0.05" size="0.008"/>
      </body>
    </body>
  </worldbody>
  <actuator>
    <position joint="f1_base" kp="2"/>
    <position joint="f2_base" kp="2"/>
  </actuator>
</mujoco>
"""


def _byo_config(tmp_path, arm_xml=_ARM_XML, hand_xml=_HAND_XML) -> CellConfig:
    arm, hand = tmp_path / "arm.xml", tmp_path / "hand.xml"
    arm.write_text(arm_xml)
    hand.write_text(hand_xml)
    return CellConfig(
        arm=str(arm), arm_flange_site="tool_flange", hand=str(hand), hand_root_body="hand_root",
        tool_mount_site="mount",
    )  # fmt: skip


def test_bring_your_own_robot_takes_names_limits_and_home_from_the_files(tmp_path):
    cfg = _byo_config(tmp_path)
    env = TwinEnv(TwinConfig(task="tool_open_to", cell=cfg, render=False, points=False))
    assert env.action_spec.names == ("j1", "j2", "f1_base", "f2_base")
    np.testing.assert_allclose(env.action_spec.lower, [-1.5, -2.0, -0.5, -0.4])
    np.testing.assert_allclose(env.action_spec.upper, [1.5, 2.0, 1.0, 1.1])
    obs = env.reset(3)
    assert obs[V.OBS_ARM_QPOS].shape == (2,) and obs[V.OBS_HAND_QPOS].shape == (2,)
    np.testing.assert_allclose(obs[V.OBS_ARM_QPOS], [0.3, -0.2], atol=0.03)  # the file's home keyframe
    # The hand hangs on the arm's flange and the tool on the hand's mount.
    d = env.data
    np.testing.assert_allclose(d.body("hand_root").xpos, d.site("tool_flange").xpos, atol=2e-3)
    np.testing.assert_allclose(d.body("tweezer_base").xpos, d.site("mount").xpos, atol=3e-3)
    obs, *_ = env.step(np.array([0.5, 0.1, 0.2, 0.2]))
    assert np.all(np.isfinite(obs[V.OBS_ARM_QPOS]))
    env.close()


def test_malformed_user_mjcf_names_the_file_and_the_mujoco_error(tmp_path):
    bad = tmp_path / "broken_arm.xml"
    bad.write_text(
        "<mujoco><worldbody><body name='a'><joint type='hinge'/><geom size='0.1'/></body></worldbody>"
    )
    with pytest.raises(CellBuildError) as err:
        build_cell(CellConfig(arm=str(bad)), ObjectParams())
    assert "broken_arm.xml" in str(err.value)
    assert "XML" in str(err.value) or "Error" in str(err.value)


def test_unknown_robot_names_list_the_valid_ones():
    with pytest.raises(CellBuildError, match="ur5e_like"):
        CellConfig(arm="ur10_imaginary")
    with pytest.raises(CellBuildError, match="leap_like"):
        CellConfig(hand="shadow_imaginary")


def test_missing_flange_site_is_reported(tmp_path):
    cfg = _byo_config(tmp_path)
    cfg = CellConfig(arm=cfg.arm, arm_flange_site="nope", hand=cfg.hand, hand_root_body="hand_root",
                     tool_mount_site="mount")  # fmt: skip
    with pytest.raises(CellBuildError, match="tool_flange"):
        build_cell(cfg, ObjectParams())


def test_bad_object_params_raise():
    with pytest.raises(CellBuildError, match="box, cylinder, sphere"):
        ObjectParams(shape="torus")
    with pytest.raises(CellBuildError):
        ObjectParams(width=0.5)
