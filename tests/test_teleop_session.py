"""The teleop loop in the twin: recording, episode control, safety, bad input and crashes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dexhier import vocabulary as V
from dexhier.dataset_review import dataset_info, episode_detail, recover_dataset
from dexhier.episode_journal import inflight_indices
from dexhier.episodes import EpisodeDataset
from dexhier.teleop.bag import is_complete, read_bag_summary
from dexhier.teleop.commands import DeviceCommand
from dexhier.teleop.control import TeleopConfig
from dexhier.teleop.devices import ReplayDevice, write_replay
from dexhier.teleop.scripted import expert_stream
from dexhier.teleop.session import SessionConfig, TeleopSession

pytestmark = pytest.mark.sim

TASK = "tool_open_to"  # the shortest task: episodes of about one second


def _run(tmp_path: Path, records: list[dict], at_end: str = "quit", **kw) -> tuple:
    logs: list[str] = []
    kw.setdefault("task", TASK)
    kw.setdefault("realtime", False)
    cfg = SessionConfig(out=tmp_path / "data", **kw)
    summary = TeleopSession(cfg, ReplayDevice.from_records(records, at_end=at_end), log=logs.append).run()
    return summary, logs, cfg


def _motion(t0: float, t1: float, dt: float = 0.05, **kw) -> list[dict]:
    """Records every ``dt`` from ``t0`` up to, not including, ``t1`` (s)."""
    n = round((t1 - t0) / dt)
    return [{"t": round(t0 + i * dt, 6), "clutch": True, **kw} for i in range(n)]


def test_scripted_teleop_records_episodes_with_request_sent_and_bags(tmp_path):
    records = list(expert_stream(TASK, seed=0, episodes=2))
    summary, logs, cfg = _run(tmp_path, records)
    assert summary.kept == 2 and summary.stop_reason == "quit", logs  # the stream ends with QUIT
    ds = EpisodeDataset(cfg.out)
    assert ds.meta["source"] == "teleop" and ds.indices == [0, 1]
    limits_lo = np.array(ds.meta["action_lower"])
    limits_hi = np.array(ds.meta["action_upper"])
    vmax = TeleopConfig().max_joint_velocity
    for ep in ds:
        assert ep.success and ep.meta["source"] == "teleop" and ep.meta["end_reason"] == "task success (twin)"
        assert ep.meta["seed"] == ep.index  # episode i is laid out with seed SEED + i
        sent, req = ep[V.ACTION], ep[V.ACTION_REQUEST]
        assert sent.shape == req.shape == (len(ep), 22)
        assert np.all(sent >= limits_lo - 1e-12) and np.all(sent <= limits_hi + 1e-12)
        # The supervisor's rate limit: no joint moves more than max_velocity * dt per step.
        assert np.max(np.abs(np.diff(sent, axis=0))) <= vmax * 0.05 + 1e-9
        assert ep[V.TELEOP_VALID].all() and ep[V.TELEOP_CLUTCH].all()
        for key in (
            V.rgb_key("scene"),
            V.rgb_key("wrist"),
            V.OBS_ARM_QPOS,
            V.OBS_TOOL_TIP_GAP,
            V.STEP_WALL_TIME,
        ):
            assert key in ep.keys
        bag = cfg.out / ep.meta["bag"]
        assert is_complete(bag)
        counts = {topic: v["count"] for topic, v in read_bag_summary(bag).items()}  # read with rosbags
        assert counts["/joint_states"] == len(ep)
        assert counts[V.controller_topic("arm")] == counts[V.controller_topic("hand")] == len(ep)
        assert counts[V.camera_topic("scene")] == len(ep)
    info = dataset_info(cfg.out)
    assert info["episodes"] == 2 and info["successes"] == 2 and info["inflight_journals"] == []


def test_scripted_pick_through_teleop_succeeds(tmp_path):
    summary, logs, cfg = _run(
        tmp_path, list(expert_stream("tweezer_pick", 3, 1)), task="tweezer_pick", seed=3
    )
    assert [e.outcome for e in summary.episodes] == ["saved"], logs
    assert EpisodeDataset(cfg.out).episode(0).meta["end_reason"] == "task success (twin)"


def test_fail_discard_and_rerecord(tmp_path):
    records = [
        {"t": 0.0, "events": ["start"]},
        *_motion(0.05, 0.5, linear=[0, 0, 0.3]),
        {"t": 0.5, "events": ["discard"]},
        {"t": 0.6, "events": ["start"]},
        *_motion(0.65, 1.0, linear=[0.2, 0, 0]),
        {"t": 1.0, "events": ["rerecord"]},
        *_motion(1.05, 1.5, linear=[0, 0.2, 0]),
        {"t": 1.5, "events": ["fail"]},
    ]
    summary, logs, cfg = _run(tmp_path, records)
    assert [e.outcome for e in summary.episodes] == ["discarded", "discarded", "failed"], logs
    ds = EpisodeDataset(cfg.out)
    assert ds.indices == [0]  # discarded episodes leave no trace and no index gap
    ep = ds.episode(0)
    assert not ep.success and ep.meta["end_reason"] == "operator: fail" and ep.meta["incomplete"] is False
    assert len(ep) == 10  # the re-recorded episode starts on the RERECORD tick
    assert sorted(p.name for p in (cfg.out / "bags").iterdir()) == ["episode_000000.mcap"]


def test_nan_device_values_hold_the_robot_and_are_flagged(tmp_path):
    nan = float("nan")
    records = [
        {"t": 0.0, "events": ["start"]},
        *_motion(0.05, 0.5, linear=[0, 0, 1.0]),
        *_motion(0.5, 1.0, linear=[nan, 0, 0], grip=nan),
        {"t": 1.0, "events": ["save"]},
    ]
    summary, logs, cfg = _run(tmp_path, records)
    assert summary.invalid_commands == 10 and any("invalid device command" in m for m in logs)
    ep = EpisodeDataset(cfg.out).episode(0)
    valid = ep[V.TELEOP_VALID]
    assert valid[:10].all() and not valid[10:].any()
    assert np.all(np.isnan(ep[V.ACTION_REQUEST][10:]))  # no request was made from garbage
    assert np.isfinite(ep[V.ACTION]).all()
    # Holding: the command stays where it was when the input went bad; once that is stale
    # (0.25 s) the supervisor holds at the measured position, and the arm stops there.
    sent = ep[V.ACTION]
    assert np.abs(sent[10:14] - sent[9]).max() == 0.0
    assert np.ptp(sent[14:], axis=0).max() == 0.0 and np.abs(sent[14] - sent[9]).max() > 0.0
    assert ep[V.SAFETY_HELD][10:].all()
    arm = ep[V.OBS_ARM_QPOS]
    assert np.abs(arm[-1] - arm[16]).max() < 0.003
    assert ep.meta["invalid_device_commands"] == 10
    assert episode_detail(cfg.out, 0)["steps_without_request"] == 10


def test_estop_latches_until_reset(tmp_path):
    records = [
        {"t": 0.0, "events": ["start"]},
        *_motion(0.05, 0.5, linear=[0, 0.5, 0]),
        {"t": 0.5, "clutch": True, "linear": [0, 0.5, 0], "events": ["estop"]},
        *_motion(0.55, 1.5, linear=[0, 0.5, 0]),
        {"t": 1.5, "clutch": True, "linear": [0, 0.5, 0], "events": ["reset_estop"]},
        *_motion(1.55, 2.0, linear=[0, 0.5, 0]),
        {"t": 2.0, "events": ["save"]},
    ]
    summary, logs, cfg = _run(tmp_path, records)
    assert any("e-stop latched" in m for m in logs) and any("e-stop released" in m for m in logs)
    ep = EpisodeDataset(cfg.out).episode(0)
    held, sent = ep[V.SAFETY_HELD], ep[V.ACTION]
    assert not held[:10].any() and held[10:30].all() and not held[31:].any()
    # While latched, nothing new is forwarded: the command stays constant ...
    assert np.ptp(sent[10:30], axis=0).max() == 0.0
    # ... and the arm settles instead of following the device upwards.
    arm = ep[V.OBS_ARM_QPOS]
    assert np.abs(arm[29] - arm[20]).max() < 0.01
    assert np.abs(sent[-1] - sent[30]).max() > 0.02  # after the reset, motion resumes


def test_device_disconnect_mid_episode_keeps_the_episode_marked_incomplete(tmp_path):
    records = [{"t": 0.0, "events": ["start"]}, *_motion(0.05, 0.6, linear=[0.3, 0, 0])]
    summary, logs, cfg = _run(tmp_path, records, at_end="disconnect")
    assert summary.stop_reason == "device disconnected"
    ep = EpisodeDataset(cfg.out).episode(0)
    assert ep.meta["incomplete"] is True and not ep.success
    assert ep.meta["end_reason"].startswith("device disconnected")
    assert len(ep) >= 11


def test_quit_keeps_the_episode_in_flight_and_resume_appends(tmp_path):
    records = [
        {"t": 0.0, "events": ["start"]},
        *_motion(0.05, 0.4, linear=[0.3, 0, 0]),
        {"t": 0.4, "events": ["quit"]},
    ]
    _run(tmp_path, records)
    summary, _logs, cfg = _run(tmp_path, list(expert_stream(TASK, seed=1, episodes=1)), seed=0)
    ds = EpisodeDataset(cfg.out)
    assert ds.indices == [0, 1]
    assert ds.episode(0).meta["incomplete"] is True and ds.episode(1).success
    assert ds.episode(1).meta["seed"] == 1  # resumed: the next index gets the next seed


def test_a_slow_loop_marks_the_episode(tmp_path):
    class SlowReplay(ReplayDevice):
        def poll(self, now: float) -> DeviceCommand:
            time.sleep(0.09)  # the loop cannot keep 20 Hz
            return super().poll(now)

    records = [
        {"t": 0.0, "events": ["start"]},
        *_motion(0.05, 0.5, linear=[0.1, 0, 0]),
        {"t": 0.5, "events": ["save"]},
    ]
    logs: list[str] = []
    cfg = SessionConfig(task=TASK, out=tmp_path / "data", realtime=True)
    TeleopSession(cfg, SlowReplay.from_records(records), log=logs.append).run()
    ep = EpisodeDataset(cfg.out).episode(0)
    assert ep.meta["rate_ok"] is False and ep.meta["loop_rate_hz"] < 18.0
    assert any("marked rate_ok=false" in m for m in logs)


def test_a_realtime_loop_keeps_its_rate(tmp_path):
    records = [
        {"t": 0.0, "events": ["start"]},
        *_motion(0.05, 1.0, linear=[0.1, 0, 0]),
        {"t": 1.0, "events": ["save"]},
    ]
    _summary, _logs, cfg = _run(tmp_path, records, realtime=True)
    ep = EpisodeDataset(cfg.out).episode(0)
    assert ep.meta["rate_ok"] is True and 18.0 < ep.meta["loop_rate_hz"] < 21.0
    wall = ep[V.STEP_WALL_TIME]
    assert 0.9 < wall[-1] - wall[0] < 1.3  # real timestamps, not frame_index / fps


# --- crashes ----------------------------------------------------------------------------------


def _teleop_cmd(out: Path, stream: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "dexhier.cli", "teleop", "--device", "replay", "--replay", str(stream),
            "--task", TASK, "--out", str(out), "--no-realtime", *extra]  # fmt: skip


def _slow_stream(path: Path, episodes: int) -> None:
    """Episodes of 4 s each (80 steps), so a kill lands inside one."""
    records, t = [], 0.0
    for _ in range(episodes):
        records += [{"t": t, "events": ["start"]}, *_motion(t + 0.05, t + 4.0, linear=[0, 0, 0.05])]
        records.append({"t": t + 4.0, "events": ["save"]})
        t += 4.2
    write_replay(path, records)


def test_sigkill_mid_episode_loses_no_saved_episode_and_recording_resumes(tmp_path):
    out, stream = tmp_path / "data", tmp_path / "stream.jsonl"
    _slow_stream(stream, episodes=5)
    env = {**os.environ, "MUJOCO_GL": "egl"}
    proc = subprocess.Popen(_teleop_cmd(out, stream), env=env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        # One episode saved and the next one flushed a chunk. The journal must be episode 1's: episode
        # 0's lingers for a moment after its commit (recovery handles that case; it is not this test).
        second = out / "episodes" / ".inflight-episode_000001" / "chunk_000001.npz"
        while time.monotonic() < deadline:
            if second.exists() and (out / "episodes" / "episode_000000").exists():
                break
            time.sleep(0.05)
        else:
            pytest.fail("the recorder never reached the second episode")
        saved_before = {p.name: (p / "steps.npz").read_bytes() for p in (out / "episodes").glob("episode_*")}
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    # Every episode saved before the kill is byte-identical and readable.
    for name, data in saved_before.items():
        assert (out / "episodes" / name / "steps.npz").read_bytes() == data
    ds = EpisodeDataset(out)
    assert all(len(ep) == 80 and ep.success for ep in ds)
    assert inflight_indices(out) == [len(saved_before)]
    journal = out / "episodes" / f".inflight-episode_{len(saved_before):06d}"
    flushed = sum(len(np.load(c)["time"]) for c in journal.glob("chunk_*.npz"))  # by 20 steps or 0.5 s
    # Resume: recording into the same dataset recovers the episode in flight first.
    _slow_stream(stream, episodes=1)
    res = subprocess.run(
        _teleop_cmd(out, stream, "--json"), env=env, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr
    assert "recovered: episode" in res.stderr
    ds = EpisodeDataset(out)
    n = len(saved_before)
    assert ds.indices == list(range(n + 2))
    crashed = ds.episode(n)
    assert crashed.meta["incomplete"] is True and not crashed.success and 2 <= len(crashed) == flushed < 80
    assert ds.episode(n + 1).success and len(ds.episode(n + 1)) == 80
    # The crashed episode's bag had no footer: the resumed session rewrote it into a valid MCAP of
    # what was flushed and linked it.
    assert "no footer" in res.stderr
    assert crashed.meta["bag"] == f"bags/episode_{n:06d}.incomplete.mcap"
    assert is_complete(out / crashed.meta["bag"])
    assert read_bag_summary(out / crashed.meta["bag"])["/joint_states"]["count"] >= 1
    assert recover_dataset(out) == []  # nothing left to recover


@pytest.fixture
def tiny_disk(tmp_path):
    """A 10 MB tmpfs (room for two or three 4 s episodes with their bags); needs root to mount."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    cmd = ["mount", "-t", "tmpfs", "-o", "size=10m", "tmpfs", str(mnt)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_gives_a_clear_error_and_keeps_saved_episodes(tmp_path, tiny_disk):
    out, stream = tiny_disk / "data", tmp_path / "stream.jsonl"
    _slow_stream(stream, episodes=20)
    env = {**os.environ, "MUJOCO_GL": "egl"}
    res = subprocess.run(_teleop_cmd(out, stream), env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("dexhier: error:") and "No space left on device" in last, last
    assert "Traceback" not in res.stderr
    assert "dataset recover" in last
    ds = EpisodeDataset(out)
    saved = len(ds)
    assert saved >= 1 and all(ep.success for ep in ds)  # what fitted was saved ...
    for ep in ds:  # ... and stays whole and readable
        assert ep[V.ACTION].shape == (len(ep), 22) and ep[V.rgb_key("scene")].shape[0] == len(ep)
    # The episode in flight kept its flushed steps; with space again, `dataset recover` commits them.
    assert inflight_indices(out) == [saved]
    subprocess.run(["mount", "-o", "remount,size=64m", str(tiny_disk)], check=True)
    res = subprocess.run([sys.executable, "-m", "dexhier.cli", "dataset", "recover", str(out)], env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert res.returncode == 0, res.stderr
    ds = EpisodeDataset(out)
    assert ds.indices == list(range(saved + 1)) and inflight_indices(out) == []
    last_ep = ds.episode(saved)
    assert last_ep.meta["incomplete"] is True and len(last_ep) >= 20


# --- from recording to policy -------------------------------------------------------------------


def test_train_lowlevel_and_subgoal_from_a_teleop_dataset(tmp_path):
    from dexhier.vocabulary import GOAL_RGB, GOAL_TOOL_TIP_GAP
    from policies.low_level.policy import LowLevelPolicy

    _summary, _logs, cfg = _run(tmp_path, list(expert_stream(TASK, seed=0, episodes=3)))
    out = tmp_path / "ckpt"
    cmd = [sys.executable, "-m", "dexhier.cli", "train", "lowlevel", "--data", str(cfg.out),
           "--out", str(out), "--steps", "2", "--batch-size", "4", "--checkpoint-every", "2",
           "--threads", "1", "--json"]  # fmt: skip
    env = {**os.environ, "MUJOCO_GL": "egl", "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    policy = LowLevelPolicy.load(out)
    ep = EpisodeDataset(cfg.out).episode(0)
    keys = (V.OBS_ARM_QPOS, V.OBS_HAND_QPOS, V.OBS_TOOL_TIP_GAP, *map(V.rgb_key, V.DEFAULT_CAMERAS))
    obs = {k: ep[k][0] for k in keys}
    goal = {GOAL_RGB: ep[V.rgb_key("scene")][-1], GOAL_TOOL_TIP_GAP: ep[V.OBS_TOOL_TIP_GAP][-1]}
    chunk = policy.predict_chunk(obs, goal)
    meta = EpisodeDataset(cfg.out).meta
    lo, hi = np.array(meta["action_lower"]), np.array(meta["action_upper"])
    assert chunk.shape[1] == 22 and np.isfinite(chunk).all()
    assert np.all(chunk >= lo - 1e-9) and np.all(chunk <= hi + 1e-9)
    # The subgoal generator trains from the same recording.
    from policies.high_level.generator import SubgoalGenerator

    cmd = [sys.executable, "-m", "dexhier.cli", "train", "subgoal", "--data", str(cfg.out),
           "--out", str(tmp_path / "subgoal"), "--steps", "2", "--batch-size", "4", "--checkpoint-every", "2",
           "--threads", "1", "--json"]  # fmt: skip
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert SubgoalGenerator.load(tmp_path / "subgoal").config.tasks == (TASK,)


def test_hand_keypoints_are_retargeted_onto_the_hand(tmp_path):
    from dexhier.teleop.retarget import HandRetargeter, keypoints_from_robot

    rt = HandRetargeter()
    q_target = rt.lower + 0.4 * (rt.upper - rt.lower)  # a half-closed hand, inside every limit
    kp = keypoints_from_robot(q_target, rt).tolist()
    records = [
        {"t": 0.0, "events": ["start"]},
        *_motion(0.05, 1.0, hand_keypoints=kp),
        {"t": 1.0, "events": ["save"]},
    ]
    _summary, logs, cfg = _run(tmp_path, records)
    ep = EpisodeDataset(cfg.out).episode(0)
    names = EpisodeDataset(cfg.out).meta["action_names"][6:]
    order = [names.index(n) for n in rt.joint_names]  # joints matched by name
    hand_request = ep[V.ACTION_REQUEST][:, 6:][:, order]
    # A finger has four joints for a 3-D fingertip, so compare fingertips, not joints (m).
    tips = rt.fingertip_vectors(q_target)
    assert np.abs(rt.fingertip_vectors(hand_request[-1]) - tips).max() < 0.003, logs
    assert np.abs(rt.fingertip_vectors(hand_request[1]) - tips).max() > 0.01  # low-pass: not at once


def test_estop_survives_a_new_scene(tmp_path):
    records = [
        {"t": 0.0, "events": ["start"]},
        *_motion(0.05, 0.3, linear=[0, 0.5, 0]),
        {"t": 0.3, "events": ["estop"]},
        {"t": 0.35, "events": ["save"]},  # a new scene is laid out: the latch must hold
        {"t": 0.5, "events": ["start"]},
        {"t": 0.6, "events": ["reset_estop"]},
        {"t": 0.7, "events": ["start"]},
        *_motion(0.75, 1.0, linear=[0, 0.5, 0]),
        {"t": 1.0, "events": ["save"]},
    ]
    summary, logs, cfg = _run(tmp_path, records)
    assert any("cannot start while the e-stop is latched" in m for m in logs), logs
    assert [e.outcome for e in summary.episodes] == ["saved", "saved"]
    held = EpisodeDataset(cfg.out).episode(0)[V.SAFETY_HELD]
    assert held[-1] and not EpisodeDataset(cfg.out).episode(1)[V.SAFETY_HELD][1:].any()


def test_the_twin_does_not_end_a_late_episode(tmp_path):
    # tool_open_to's own limit is 5 s from the scene's reset; START comes at 6 s.
    records = [
        {"t": 6.0, "events": ["start"]},
        *_motion(6.05, 7.0, linear=[0, 0.2, 0]),
        {"t": 7.0, "events": ["fail"]},
    ]
    summary, logs, cfg = _run(tmp_path, records, episode_time=60.0)
    assert [(e.outcome, e.end_reason) for e in summary.episodes] == [("failed", "operator: fail")], logs
    assert len(EpisodeDataset(cfg.out).episode(0)) == 20


def test_episode_time_ends_an_episode(tmp_path):
    records = [{"t": 0.0, "events": ["start"]}, *_motion(0.05, 2.0, linear=[0, 0.2, 0])]
    summary, _logs, _cfg = _run(tmp_path, records, episode_time=1.0)
    assert [(e.outcome, e.end_reason, e.steps) for e in summary.episodes][0] == (
        "failed",
        "episode time limit",
        20,
    )


def test_one_recorder_per_dataset(tmp_path):
    from dexhier.dataset_review import recover_dataset, remove_episodes
    from dexhier.episode_journal import DatasetLock

    _run(tmp_path, [{"t": 0.0, "events": ["start"]}, *_motion(0.05, 0.3), {"t": 0.3, "events": ["save"]}])
    out = tmp_path / "data"
    with DatasetLock(out):  # another process is recording
        with pytest.raises(RuntimeError, match="in use by another recording process"):
            _run(tmp_path, [{"t": 0.0, "events": ["quit"]}])
        with pytest.raises(RuntimeError, match="in use"):
            recover_dataset(out)
        with pytest.raises(RuntimeError, match="in use"):
            remove_episodes(out, [0])
    with pytest.raises(KeyError):
        remove_episodes(out, [0, 7])  # every index is checked before anything is deleted
    assert EpisodeDataset(out).indices == [0]
    remove_episodes(out, [0])
    assert EpisodeDataset(out).indices == [] and not list((out / "bags").glob("*.mcap"))
