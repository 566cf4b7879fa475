"""Scripted teleop input: the expert's motion written as a device stream for the replay device.

The privileged expert is run in a twin; at every control step its tool-tip target velocity, its
yaw rate and its pinch posture are converted into what a device would send (fractions of the
teleop speeds, at speed scale 1). Replayed through `TeleopSession`, the stream drives the whole
teleop path (IK, synergy, safety, recorder) the way an operator would, reproducibly: it is the
input of the tests and of the README's first recording, where no physical device exists.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

from dexhier import vocabulary as V
from dexhier.teleop.commands import TeleopEvent
from dexhier.teleop.control import TeleopConfig
from sim.expert import ExpertPolicy
from sim.ik import ArmIK, tool_down_rotation
from sim.twin import TwinConfig, TwinEnv, tcp_in_flange

IDLE_GAP = 0.25
"""Seconds of idle input between two scripted episodes, s."""
SETTLE = 1.0
"""Seconds of holding still after the expert's last step before FAIL, s: through the ROS graph the
twin's success arrives a few control periods after the command that earned it."""


def _record(t: float, **kw: Any) -> dict[str, Any]:
    return {"t": round(t, 6), **kw}


def expert_episode_stream(
    env: TwinEnv, seed: int, config: TeleopConfig, t0: float = 0.0
) -> tuple[list[dict[str, Any]], bool]:
    """Records (replay format) of one expert episode in ``env`` starting at session time ``t0``.

    The first record carries HOME and START, the last FAIL after `SETTLE` s of holding still: if
    the replay reaches the task's success before, the episode is saved already and FAIL is ignored.
    Returns (records, whether the expert itself succeeded).
    """
    dt = config.dt
    scale = config.speed_scales[-1]
    vmax, wmax = config.max_linear_speed * scale, config.max_angular_speed * scale
    expert = ExpertPolicy(env)
    obs = env.reset(seed)
    expert.reset()
    # Track the pose the teleop controller will hold (it starts at the forward kinematics of the
    # measured arm), so every command steers that pose onto the expert's, without drift.
    tcp_pos, tcp_rot = tcp_in_flange(env)
    ik = ArmIK(env.config.cell, env.robot.arm_joints, tcp_pos, tcp_rot, dt=dt)
    ik.reset(obs[V.OBS_ARM_QPOS])
    pos, rot = ik.tcp_pose()
    lo, hi = np.asarray(config.workspace_lower), np.asarray(config.workspace_upper)
    records: list[dict[str, Any]] = []
    s_teleop = 0.0
    k = 0
    success = False
    while True:
        action = expert.select_action()
        goal_pos, goal_yaw = expert.tip_target
        linear = np.clip((goal_pos - pos) / (vmax * dt), -1.0, 1.0)
        pos = np.clip(pos + linear * vmax * dt, lo, hi)
        rotvec = Rotation.from_matrix(tool_down_rotation(goal_yaw) @ rot.T).as_rotvec()
        angular = np.clip(rotvec / (wmax * dt), -1.0, 1.0)
        rot = Rotation.from_rotvec(angular * wmax * dt).as_matrix() @ rot
        # The synergy integrates grip; steer it onto the expert's posture without overshoot.
        grip = float(np.clip(-(expert.posture - s_teleop) / (config.synergy_speed * dt), -1.0, 1.0))
        s_teleop = float(np.clip(s_teleop - grip * config.synergy_speed * dt, 0.0, 1.0))
        events = [TeleopEvent.HOME.value, TeleopEvent.START.value] if k == 0 else []
        records.append(
            _record(
                t0 + k * dt,
                linear=linear.tolist(),
                angular=angular.tolist(),
                grip=grip,
                clutch=True,
                events=events,
            )
        )
        _obs, _r, terminated, truncated, info = env.step(action)
        k += 1
        if terminated or truncated:
            success = bool(info["success"])
            break
    # Hold still (clutch released, grip 0 keeps the hand) so a late success still counts.
    records.append(_record(t0 + k * dt))
    records.append(_record(t0 + k * dt + SETTLE, events=[TeleopEvent.FAIL.value]))
    return records, success


def expert_stream(task: str, seed: int, episodes: int, config: TeleopConfig | None = None) -> Iterator[dict]:
    """Replay records for ``episodes`` expert episodes with seeds ``seed, seed + 1, ...``.

    Matches a `TeleopSession` with the same ``seed`` recording into a new dataset (episode ``i``
    of the session is laid out with seed ``seed + i``). Speed goes to its top step first, then
    the episodes follow back to back with `IDLE_GAP` s of idle input between them.
    """
    config = config or TeleopConfig()
    env = TwinEnv(TwinConfig(task=task, render=False, points=False, control_hz=config.control_hz))
    try:
        ups = len(config.speed_scales) - 1 - config.initial_speed
        yield _record(0.0, events=[TeleopEvent.SPEED_UP.value] * ups)
        t = config.dt
        for i in range(episodes):
            records, _ = expert_episode_stream(env, seed + i, config, t0=t)
            yield from records
            t = records[-1]["t"] + IDLE_GAP
    finally:
        env.close()
