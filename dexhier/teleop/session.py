"""The teleop loop in the twin: device -> IK and synergies -> safety supervisor -> twin -> recorder.

One `TeleopSession` drives the MuJoCo twin at the control rate from a `TeleopDevice` and records
demonstrations into an episode dataset (the format the trainers read) plus, per episode, an MCAP
file of the raw topics. Every step stores the raw device request, the joint request made from it
and the command the supervisor actually forwarded.

Episode life cycle: START begins recording; SAVE (or the twin's task success) commits it as a
success, FAIL commits it as a failure, DISCARD drops it, RERECORD drops it and starts again; the
episode time limit ends it as a failure. A device that disconnects, QUIT, or an error mid-episode
commits what was recorded, marked ``incomplete``: a demonstration is never dropped without the
operator asking. The journal (`dexhier.episode_journal`) covers ``kill -9``.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dexhier import vocabulary as V
from dexhier.collection import dataset_meta
from dexhier.dataset_review import recover_dataset
from dexhier.episode_journal import DatasetLock, JournaledRecorder, next_index
from dexhier.episodes import BAGS_DIR, EpisodeWriter, episode_dirname
from dexhier.safety import SafetyLimits, SafetySupervisor, Verdict
from dexhier.teleop.commands import DeviceCommand, DeviceDisconnectedError, TeleopEvent
from dexhier.teleop.control import HandMode, TeleopConfig, TeleopController
from dexhier.teleop.devices import TeleopDevice
from dexhier.teleop.episode_bag import EpisodeBag
from sim.twin import TwinConfig, TwinEnv

TWIN_TIME_LIMIT = 24 * 3600.0
"""The twin's own episode limit in a teleop session, s: in effect none."""


@dataclass(frozen=True)
class SessionConfig:
    """A teleop recording session in the twin.

    ``episodes``: stop after this many saved episodes (None: until QUIT or the device ends).
    ``episode_time``: an episode still running after this many seconds ends as a failure.
    ``realtime``: pace the loop at the control rate (a human is in the loop); False runs as fast
    as possible (replayed streams in tests). ``bag``: also write each episode's raw topics to MCAP.
    ``flush_every``: steps between journal flushes (the most a crash can lose).
    """

    task: str
    out: Path
    seed: int = 0
    episodes: int | None = None
    instruction: str | None = None
    episode_time: float = 60.0
    image_size: tuple[int, int] = (64, 64)
    realtime: bool = True
    bag: bool = True
    flush_every: int = 20
    teleop: TeleopConfig = field(default_factory=TeleopConfig)

    def __post_init__(self) -> None:
        TwinConfig(task=self.task)  # raises on an unknown task, naming the valid ones
        if self.episodes is not None and self.episodes < 1:
            raise ValueError(f"episodes must be >= 1 or None, got {self.episodes}")
        if not self.episode_time > 0:
            raise ValueError(f"episode_time must be > 0 s, got {self.episode_time}")
        if self.flush_every < 1:
            raise ValueError(f"flush_every must be >= 1, got {self.flush_every}")


@dataclass
class EpisodeSummary:
    """What happened to one recorded episode."""

    index: int
    outcome: str  # "saved", "failed", "discarded", "incomplete"
    steps: int
    duration: float
    rate_hz: float | None
    rate_ok: bool
    end_reason: str
    path: str | None = None


@dataclass
class SessionSummary:
    """The result of `TeleopSession.run`."""

    episodes: list[EpisodeSummary] = field(default_factory=list)
    recovered: list[str] = field(default_factory=list)
    stop_reason: str = ""
    invalid_commands: int = 0

    @property
    def kept(self) -> int:
        """Episodes committed to the dataset: saved, failed or incomplete (not discarded)."""
        return sum(e.outcome in ("saved", "failed", "incomplete") for e in self.episodes)

    def to_json(self) -> dict[str, Any]:
        return {
            "kept": self.kept,
            "episodes": [vars(e) for e in self.episodes],
            "recovered": self.recovered,
            "stop_reason": self.stop_reason,
            "invalid_commands": self.invalid_commands,
        }


Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class _Recording:
    """The episode in flight: its journaled recorder, its bag and its loop-rate statistics."""

    def __init__(self, rec: JournaledRecorder, bag: EpisodeBag | None, start_wall: float) -> None:
        self.rec = rec
        self.bag = bag
        self.start_wall = start_wall
        self.periods: list[float] = []
        self.invalid = 0


class TeleopSession:
    """Teleoperate the twin with ``device`` and record episodes into ``config.out``.

    Call `run` once. Messages (warnings, episode ends) go to ``log``; the live status line goes
    to ``status`` (both stderr by default).
    """

    def __init__(
        self,
        config: SessionConfig,
        device: TeleopDevice,
        log: Log = _stderr,
        status: Log | None = None,
    ) -> None:
        self.config = config
        self.device = device
        self.log = log
        self.status = status
        w, h = config.image_size
        self.env = TwinEnv(
            TwinConfig(
                task=config.task,
                image_width=w,
                image_height=h,
                render=True,
                points=False,
                control_hz=config.teleop.control_hz,
                # The operator ends episodes (or `episode_time` does); the task's own limit would
                # end one early, counted from the scene's reset, and re-lay an idle scene.
                time_limit=TWIN_TIME_LIMIT,
            )
        )
        meta = {**dataset_meta(self.env), "source": "teleop"}
        self.writer = EpisodeWriter(config.out, meta)
        self.names = self.env.robot.joint_names
        self.n_arm = self.env.robot.n_arm
        spec = self.env.action_spec
        self.limits = SafetyLimits.from_action_spec(
            spec, config.teleop.max_joint_velocity, stale_after=config.teleop.stale_after
        )
        self.controller: TeleopController | None = None
        self.supervisor: SafetySupervisor | None = None
        self.summary = SessionSummary()

    # ------------------------------------------------------------------ scene
    def _reset_scene(self) -> dict[str, np.ndarray]:
        obs = self.env.reset(self._seed)
        self.controller = TeleopController.for_env(self.env, self.config.teleop, previous=self.controller)
        self.controller.reset(obs[V.OBS_ARM_QPOS])
        # A fresh supervisor (the twin's clock restarts at 0), but the e-stop latch carries over:
        # only RESET_ESTOP releases it, never a new scene.
        latched = self.supervisor is not None and self.supervisor.estopped
        self.supervisor = SafetySupervisor(self.limits)
        if latched:
            self.supervisor.estop(True, 0.0)
        self._last_sent = np.concatenate([obs[V.OBS_ARM_QPOS], obs[V.OBS_HAND_QPOS]])
        return obs

    # -------------------------------------------------------------- episodes
    def _start(self) -> _Recording:
        index = next_index(self.config.out)
        inst = self.env.instance
        meta = {
            **self.env.episode_metadata(),
            "instruction": self.config.instruction or inst.instruction,
            "source": "teleop",
            "device": getattr(self.device, "name", type(self.device).__name__),
            "control_hz": self.config.teleop.control_hz,
        }
        rec = JournaledRecorder(self.writer, index, meta, flush_every=self.config.flush_every)
        bag = None
        if self.config.bag:
            bag = EpisodeBag(
                Path(self.config.out) / BAGS_DIR,
                episode_dirname(index),
                self.names,
                self.env.config.cameras,
                n_arm=self.n_arm,
            )
        self.log(f"episode {index}: recording ({meta['instruction']})")
        return _Recording(rec, bag, time.perf_counter())

    def _finish(self, ep: _Recording, outcome: str, reason: str) -> EpisodeSummary:
        """End the episode in flight: commit (saved / failed / incomplete) or discard."""
        cfg = self.config
        periods = np.array(ep.periods[1:]) if len(ep.periods) > 1 else np.array([cfg.teleop.dt])
        rate = float(1.0 / np.median(periods)) if cfg.realtime else None
        # The achieved rate over the whole episode, so a few long stalls count too.
        mean_rate = float(len(periods) / periods.sum()) if cfg.realtime else None
        rate_ok = mean_rate is None or mean_rate >= cfg.teleop.min_rate_fraction * cfg.teleop.control_hz
        steps = ep.rec.num_steps
        duration = steps * cfg.teleop.dt
        path = None
        if outcome == "discarded" or ep.rec.num_steps == 0:
            ep.rec.discard()
            if ep.bag is not None:
                ep.bag.discard()
            outcome = "discarded"
        else:
            if not rate_ok:
                self.log(
                    f"warning: episode {ep.rec.index} ran at {mean_rate:.1f} Hz, below "
                    f"{cfg.teleop.min_rate_fraction:.0%} of {cfg.teleop.control_hz:g} Hz; "
                    "marked rate_ok=false"
                )
            bag_path = ep.bag.final if ep.bag is not None else None
            meta = {
                "end_reason": reason,
                "loop_rate_hz": mean_rate,
                "loop_rate_median_hz": rate,
                "rate_ok": rate_ok,
                "invalid_device_commands": ep.invalid,
                "incomplete": outcome == "incomplete",
                "bag": str(bag_path.relative_to(cfg.out)) if bag_path is not None else None,
            }
            path = str(ep.rec.commit(success=outcome == "saved", meta=meta))
            if ep.bag is not None:  # after the episode: a bag is never named final without its episode
                try:
                    ep.bag.save()
                except OSError as err:
                    self.log(f"warning: episode {ep.rec.index} is saved but its bag is not ({err})")
        summary = EpisodeSummary(ep.rec.index, outcome, steps, duration, mean_rate, rate_ok, reason, path)
        self.summary.episodes.append(summary)
        self.log(f"episode {ep.rec.index}: {outcome} ({reason}), {steps} steps, {duration:.1f} s")
        return summary

    def _abort(self, ep: _Recording | None, reason: str) -> None:
        """An unplanned end: keep what was recorded, marked incomplete; nothing is dropped."""
        if ep is None or ep.rec.closed:
            return
        try:
            self._finish(ep, "incomplete", reason)
        except OSError as err:
            if ep.bag is not None:
                ep.bag.close_quietly()
            self.log(
                f"error: could not commit episode {ep.rec.index} ({err}); its journal keeps "
                f"{ep.rec.flushed_steps} steps: run `dexhier dataset recover {self.config.out}` when fixed"
            )

    # ------------------------------------------------------------------ loop
    def run(self) -> SessionSummary:
        """Run until QUIT, the device ends, or ``config.episodes`` episodes are saved."""
        cfg = self.config
        lock = DatasetLock(cfg.out).acquire()  # RuntimeError if another recorder uses the dataset
        try:
            return self._run()
        finally:
            lock.release()

    def _run(self) -> SessionSummary:
        cfg = self.config
        self.summary.recovered = recover_dataset(cfg.out, take_lock=False)
        for message in self.summary.recovered:
            self.log(f"recovered: {message}")
        obs = self._next_scene()
        ep: _Recording | None = None
        k = 0
        last_wall = deadline = time.perf_counter()
        last_status = 0.0
        problems_logged = False
        try:
            while True:
                now = k * cfg.teleop.dt
                try:
                    cmd = self.device.poll(now)
                except DeviceDisconnectedError as err:
                    self.log(f"device disconnected: {err}; holding the robot")
                    self._abort(ep, f"device disconnected: {err}")
                    self.summary.stop_reason = "device disconnected"
                    break
                problems = cmd.problems()
                if problems:
                    self.summary.invalid_commands += 1
                    if ep is not None:
                        ep.invalid += 1
                    if not problems_logged:
                        self.log(f"warning: ignoring invalid device command ({'; '.join(problems)}); holding")
                        problems_logged = True
                    cmd = cmd.motionless()
                events = cmd.events
                if TeleopEvent.QUIT in events:
                    self._abort(ep, "session quit by the operator")
                    self.summary.stop_reason = "quit"
                    break
                ep, obs = self._handle_events(events, ep, obs)
                if ep is None and self._enough():
                    self.summary.stop_reason = f"{cfg.episodes} episodes saved"
                    break
                obs, ep, done = self._control_step(cmd, problems, obs, ep)
                if done and self._enough():
                    self.summary.stop_reason = f"{cfg.episodes} episodes saved"
                    break
                k += 1
                wall = time.perf_counter()
                if cfg.realtime:
                    # Absolute deadlines, so sleep overshoot does not accumulate; after an overrun
                    # of more than a period the schedule restarts instead of bursting to catch up.
                    deadline += cfg.teleop.dt
                    if deadline > wall:
                        time.sleep(deadline - wall)
                    elif wall - deadline > cfg.teleop.dt:
                        deadline = wall
                    wall = time.perf_counter()
                if ep is not None:
                    ep.periods.append(wall - last_wall)
                last_wall = wall
                if self.status is not None and wall - last_status > 0.5:
                    self.status(self._status_line(ep))
                    last_status = wall
        except BaseException as err:
            self._abort(ep, f"session stopped by {type(err).__name__}: {err}")
            self.summary.stop_reason = f"error: {type(err).__name__}: {err}"
            raise
        finally:
            self.device.close()
            self.env.close()
        return self.summary

    def _enough(self) -> bool:
        n = self.config.episodes
        return n is not None and self.summary.kept >= n

    def _handle_events(
        self, events: tuple[TeleopEvent, ...], ep: _Recording | None, obs: dict[str, np.ndarray]
    ) -> tuple[_Recording | None, dict[str, np.ndarray]]:
        t = float(self.env.data.time)
        self.controller.apply_events(events)
        for ev in events:
            if ev is TeleopEvent.ESTOP:
                self.supervisor.estop(True, t)
                self.log("e-stop latched: no command is forwarded until reset_estop")
            elif ev is TeleopEvent.RESET_ESTOP:
                if self.supervisor.reset_estop(t):
                    # Resume from where the arm is, not from where it was last asked to go.
                    self.controller.reanchor(obs[V.OBS_ARM_QPOS])
                    self.log("e-stop released")
            elif ev is TeleopEvent.START:
                if ep is None and not self.supervisor.estopped:
                    ep = self._start()
                elif ep is None:
                    self.log("cannot start while the e-stop is latched")
            elif ev in (TeleopEvent.SAVE, TeleopEvent.FAIL, TeleopEvent.DISCARD) and ep is not None:
                outcome = {TeleopEvent.SAVE: "saved", TeleopEvent.FAIL: "failed"}.get(ev, "discarded")
                self._finish(ep, outcome, f"operator: {ev.value}")
                ep, obs = None, self._next_scene()
            elif ev is TeleopEvent.RERECORD and ep is not None:
                self._finish(ep, "discarded", "operator: rerecord")
                obs = self._reset_scene()  # the same scene again
                ep = self._start()
            elif ev is TeleopEvent.HOME:
                if ep is None:
                    obs = self._next_scene()  # the arm back home, the scene laid out again
                else:
                    self.log("HOME ignored while recording: save, fail or discard first")
        return ep, obs

    def _next_scene(self) -> dict[str, np.ndarray]:
        """The scene of the next episode: seed ``config.seed + index`` of the episode to be recorded."""
        self._seed = self.config.seed + next_index(self.config.out)
        return self._reset_scene()

    def _control_step(
        self, cmd: DeviceCommand, problems: list[str], obs: dict[str, np.ndarray], ep: _Recording | None
    ) -> tuple[dict[str, np.ndarray], _Recording | None, bool]:
        """One control period; returns (next obs, episode in flight, whether an episode ended)."""
        env = self.env
        t = float(env.data.time)
        measured = np.concatenate([obs[V.OBS_ARM_QPOS], obs[V.OBS_HAND_QPOS]])
        self.supervisor.update_state(self.names, measured, t)
        request: np.ndarray | None = None
        decision = None
        if not problems:
            request = self.controller.request(cmd)
            decision = self.supervisor.submit(self.names, request, t)
        if decision is None or not decision.sent:
            decision = self.supervisor.tick(t) or decision
        if decision is not None and decision.sent:
            self._last_sent = np.array(decision.command)
        sent = self._last_sent  # a controller holds its last command until it gets another
        next_obs, _r, terminated, truncated, info = env.step(sent)
        ended = False
        if ep is not None:
            self._record(ep, obs, cmd, problems, request, sent, decision, info, t)
            elapsed = ep.rec.num_steps * self.config.teleop.dt
            if terminated:
                self._finish(ep, "saved", "task success (twin)")
                ep, ended = None, True
            elif truncated or elapsed >= self.config.episode_time:
                why = "physics diverged" if info["physics_diverged"] else "episode time limit"
                self._finish(ep, "failed", why)
                ep, ended = None, True
            if ended:
                next_obs = self._next_scene()
        elif terminated or truncated:
            next_obs = self._next_scene()  # the scene ended while not recording: a fresh one
        return next_obs, ep, ended

    def _record(
        self,
        ep: _Recording,
        obs: dict[str, np.ndarray],
        cmd: DeviceCommand,
        problems: list[str],
        request: np.ndarray | None,
        sent: np.ndarray,
        decision: Any,
        info: dict[str, Any],
        t: float,
    ) -> None:
        env = self.env
        req = request if request is not None else np.full(len(self.names), np.nan)
        valid = not problems
        step: dict[str, Any] = {V.STEP_TIME: t, V.STEP_WALL_TIME: time.time()}
        for key in (V.OBS_ARM_QPOS, V.OBS_ARM_QVEL, V.OBS_HAND_QPOS, V.OBS_HAND_QVEL, V.OBS_TOOL_TIP_GAP):
            step[key] = obs[key]
        for cam in env.config.cameras:
            step[V.rgb_key(cam)] = obs[V.rgb_key(cam)]
            step[V.depth_key(cam)] = obs[V.depth_key(cam)]
            step[V.camera_pose_key(cam)] = obs[V.camera_pose_key(cam)]
        step[V.ACTION] = sent
        step[V.ACTION_REQUEST] = req
        step[V.TELEOP_LINEAR] = np.asarray(cmd.linear, dtype=np.float64) if valid else np.zeros(3)
        step[V.TELEOP_ANGULAR] = np.asarray(cmd.angular, dtype=np.float64) if valid else np.zeros(3)
        step[V.TELEOP_GRIP] = float(cmd.grip) if valid else 0.0
        step[V.TELEOP_CLUTCH] = bool(cmd.clutch)
        step[V.TELEOP_VALID] = valid
        keypoints = (
            cmd.hand_keypoints if valid and cmd.hand_keypoints is not None else np.full((21, 3), np.nan)
        )
        step[V.TELEOP_HAND_KEYPOINTS] = np.asarray(keypoints, dtype=np.float64)
        step[V.TELEOP_SPEED_SCALE] = float(self.controller.speed.scale)
        step[V.TELEOP_POWER_GRASP] = self.controller.hand.mode is HandMode.POWER
        step[V.SAFETY_HELD] = decision is None or decision.verdict not in (Verdict.FORWARDED, Verdict.CLAMPED)
        st = info["privileged"]
        step["privileged/object_pos"] = st.object_pos
        step["privileged/tip_center"] = st.tip_center
        ep.rec.add_step(step)
        if ep.bag is not None:
            ep.bag.write_step(t, obs, cmd, req, sent, env.config.cameras)

    def _status_line(self, ep: _Recording | None) -> str:
        out = Path(self.config.out)
        free = shutil.disk_usage(out).free / 1e9
        hand, speed = self.controller.hand, self.controller.speed.scale
        mode = f"{hand.mode.value} s={hand.s:.2f}"
        estop = " E-STOP" if self.supervisor.estopped else ""
        if ep is None:
            return f"idle (START to record) | speed {speed:g} | {mode} | free {free:.1f} GB{estop}"
        periods = ep.periods[-20:]
        rate = len(periods) / sum(periods) if periods and sum(periods) > 0 else float("nan")
        bag_mb = ep.bag.nbytes / 1e6 if ep.bag is not None else 0.0
        cfg = self.config.teleop
        slow = " SLOW" if rate < cfg.min_rate_fraction * cfg.control_hz else ""  # live, not only at the end
        return (
            f"REC episode {ep.rec.index} | {ep.rec.num_steps * cfg.dt:5.1f} s | {rate:4.1f} Hz{slow}"
            f" | speed {speed:g} | {mode} | bag {bag_mb:.1f} MB | free {free:.1f} GB{estop}"
        )
