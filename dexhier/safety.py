"""Safety supervisor between a policy and the robot's joint-position controllers.

Pure library code (numpy and the standard library only): a ROS node wraps it, feeding it joint
states (``update_state``), policy commands (``submit``), a control-rate timer (``tick``) and e-stop
events (``estop`` / ``reset_estop``), and sends every ``SafetyDecision.command`` that is not ``None``
to the controllers as a one-point joint trajectory.

What it enforces, per joint, in the order of ``SafetyLimits.names``:

* commands must name every joint exactly once, with finite values and a finite, in-order stamp;
  anything else is ``REJECTED`` and nothing is sent;
* accepted targets are clamped to ``[lower + margin, upper - margin]`` and rate-limited so that no
  joint moves more than ``max_velocity * dt`` from the previously sent position, where ``dt`` is the
  time since that send clipped to ``[0, stale_after]``;
* if no command was accepted for more than ``stale_after`` seconds, ``tick`` sends one hold at the
  measured position (the ros2_control way to stop);
* the e-stop latches: only ``reset_estop`` releases it.

After any hold (stale, e-stop, reset) the next command is rate-limited from the measured position.
Time is in seconds on the caller's clock (sim time in the twin); positions in rad; velocities in rad/s.
This is a software stop, not a safety function: the controller's hardware e-stop stays in the loop.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from sim.backend import ActionSpec


def _frozen(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


@dataclass(frozen=True, eq=False)
class SafetyLimits:
    """Per-joint limits; every array has shape ``(len(names),)`` in the order of ``names``.

    ``lower`` / ``upper``: position limits (rad); ``max_velocity``: rad/s, > 0; ``margin``: distance
    (rad) kept inside the position limits; ``stale_after``: seconds without an accepted command before
    holding. Raises ValueError on mismatched shapes, duplicate names or non-finite / inconsistent values.
    """

    names: tuple[str, ...]
    lower: np.ndarray
    upper: np.ndarray
    max_velocity: np.ndarray
    margin: float = 0.0
    stale_after: float = 0.1

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(self.names))
        n = len(self.names)
        if n == 0 or len(set(self.names)) != n:
            raise ValueError(f"joint names must be non-empty and unique: {self.names}")
        for field in ("lower", "upper", "max_velocity"):
            a = np.array(getattr(self, field), dtype=np.float64)
            if a.shape != (n,) or not np.all(np.isfinite(a)):
                raise ValueError(f"{field}: need {n} finite values, got shape {a.shape}")
            object.__setattr__(self, field, _frozen(a))
        if not np.all(self.lower < self.upper):
            raise ValueError("lower must be < upper for every joint")
        if not np.all(self.max_velocity > 0):
            raise ValueError("max_velocity must be > 0 for every joint")
        margin_ok = np.isfinite(self.margin) and self.margin >= 0
        if not (margin_ok and np.all(2 * self.margin < self.upper - self.lower)):
            raise ValueError(f"margin {self.margin}: need 0 <= margin < half of every joint's range")
        if not (np.isfinite(self.stale_after) and self.stale_after > 0):
            raise ValueError(f"stale_after {self.stale_after}: need a finite value > 0")

    @classmethod
    def from_action_spec(
        cls, spec: ActionSpec, max_velocity: float | np.ndarray, **kw: float
    ) -> SafetyLimits:
        """Limits from a backend's ``ActionSpec``; ``max_velocity`` (rad/s) is a scalar or one per joint."""
        v = np.broadcast_to(np.asarray(max_velocity, dtype=np.float64), (len(spec.names),))
        return cls(names=tuple(spec.names), lower=spec.lower, upper=spec.upper, max_velocity=v.copy(), **kw)


class Verdict(enum.StrEnum):
    """What the supervisor did with a command or a timer tick."""

    FORWARDED = "forwarded"  # sent unchanged
    CLAMPED = "clamped"  # sent after position and/or rate clamping (see ``clamped``)
    HELD_STALE = "held_stale"  # no fresh command: hold at the measured position
    HELD_ESTOP = "held_estop"  # e-stop latched: hold at latch time, nothing sent afterwards
    REJECTED = "rejected"  # invalid command: nothing sent


@dataclass(frozen=True, eq=False)
class SafetyDecision:
    """One decision. Arrays are read-only, shape ``(n_joints,)``, in ``SafetyLimits.names`` order.

    ``command``: joint targets to send (rad), ``None`` = send nothing. ``request``: the raw request
    after name mapping (NaN for joints it did not name), ``None`` for holds and unmappable commands.
    ``reasons``: human-readable causes. ``clamped``: bool per joint, True where ``command`` differs
    from ``request``. ``stamp``: time of the command or tick (s).
    """

    command: np.ndarray | None
    request: np.ndarray | None
    verdict: Verdict
    reasons: tuple[str, ...]
    clamped: np.ndarray
    stamp: float

    @property
    def sent(self) -> bool:
        """True when ``command`` must be sent to the controllers."""
        return self.command is not None


class SafetySupervisor:
    """Stateful supervisor; not thread-safe (the wrapping node serialises its callbacks)."""

    def __init__(self, limits: SafetyLimits) -> None:
        self.limits = limits
        self._index = {name: i for i, name in enumerate(limits.names)}
        n = len(limits.names)
        self._state = np.full(n, np.nan)  # measured positions, NaN until first seen
        self._base: np.ndarray | None = None  # last forwarded command; None = rate-limit from state
        self._base_stamp: float | None = None  # time of the last send (command, hold or reset)
        self._last_accept: float | None = None  # stamp of the last accepted command
        self._holding = False
        self._estop = False
        self.last_state_error: str | None = None
        """Why (part of) the latest ``update_state`` was ignored, or None if it was used entirely."""

    @property
    def estopped(self) -> bool:
        """True while the e-stop is latched."""
        return self._estop

    @property
    def holding(self) -> bool:
        """True after a hold (stale or e-stop) was sent and no command has been accepted since."""
        return self._holding

    @property
    def state(self) -> np.ndarray | None:
        """Copy of the measured positions (rad), or None until every joint has been measured."""
        return self._state.copy() if np.all(np.isfinite(self._state)) else None

    def update_state(self, names: Sequence[str], positions: np.ndarray, stamp: float) -> None:
        """Record measured positions (rad) at ``stamp`` (s), matched by name.

        Unknown names are ignored; joints not named keep their previous value; NaN/inf entries (or a
        malformed message) are ignored and described in ``last_state_error``.
        """
        q = np.asarray(positions, dtype=np.float64).reshape(-1)
        if len(q) != len(names) or not np.isfinite(stamp):
            self.last_state_error = f"malformed state: {len(names)} names, {len(q)} positions, stamp {stamp}"
            return
        had_state = self.state is not None
        bad = [n for n, v in zip(names, q, strict=True) if n in self._index and not np.isfinite(v)]
        for name, value in zip(names, q, strict=True):
            if name in self._index and np.isfinite(value):
                self._state[self._index[name]] = value
        self.last_state_error = f"non-finite state ignored: {', '.join(bad)}" if bad else None
        if not had_state and self.state is not None and self._base_stamp is None:
            self._base_stamp = float(stamp)

    def submit(self, names: Sequence[str], targets: np.ndarray, stamp: float) -> SafetyDecision:
        """Check, clamp and rate-limit a policy command: ``targets`` (rad) for ``names`` at ``stamp`` (s).

        ``names`` must list every joint once, in any order. Returns ``HELD_ESTOP`` (nothing sent) while
        latched; ``REJECTED`` (nothing sent, every problem in ``reasons``) for unknown, duplicate or missing
        names, NaN/inf targets, a non-finite stamp, a stamp more than ``stale_after`` older than the last
        accepted one, or no joint state yet; else ``FORWARDED`` / ``CLAMPED`` with the command to send.
        """
        lim = self.limits
        request, reasons = self._map_request(list(names), np.asarray(targets, dtype=np.float64).reshape(-1))
        if self._estop:
            return self._decision(None, request, Verdict.HELD_ESTOP, ["e-stop latched"], stamp)
        if not np.isfinite(stamp):
            reasons.append(f"non-finite stamp: {stamp}")
        elif self._last_accept is not None and stamp < self._last_accept - lim.stale_after:
            reasons.append(f"out of order: stamp {stamp:.3f} s, last command at {self._last_accept:.3f} s")
        state = self.state
        if state is None:
            reasons.append("no joint state yet")
        if reasons:
            return self._decision(None, request, Verdict.REJECTED, reasons, stamp)
        assert request is not None and state is not None and self._base_stamp is not None
        lo, hi = lim.lower + lim.margin, lim.upper - lim.margin
        target = np.clip(request, lo, hi)
        # Rate-limit from the last send (or the measured position after a hold), pulled into the band
        # first, so both the band and the step bound hold relative to it: position limits win.
        base = np.clip(state if self._base is None else self._base, lo, hi)
        dt = float(np.clip(stamp - self._base_stamp, 0.0, lim.stale_after))
        step = lim.max_velocity * dt
        command = np.clip(target, base - step, base + step)
        reasons = [f"position limit: {lim.names[i]}" for i in np.flatnonzero(target != request)]
        reasons += [f"rate limit: {lim.names[i]}" for i in np.flatnonzero(command != target)]
        self._base, self._holding = command, False
        self._base_stamp = max(self._base_stamp, float(stamp))
        self._last_accept = float(stamp) if self._last_accept is None else max(self._last_accept, stamp)
        verdict = Verdict.CLAMPED if reasons else Verdict.FORWARDED
        return self._decision(command.copy(), request, verdict, reasons, stamp)

    def _map_request(self, names: list[str], q: np.ndarray) -> tuple[np.ndarray | None, list[str]]:
        """Targets in joint order (NaN where not named; None if unmappable) and what is wrong with them."""
        if len(q) != len(names):
            return None, [f"malformed command: {len(names)} names, {len(q)} targets"]
        request = np.full(len(self.limits.names), np.nan)
        for name, value in zip(names, q, strict=True):
            if name in self._index:
                request[self._index[name]] = value
        problems = {
            "unknown joints": [name for name in names if name not in self._index],
            "duplicate joints": sorted({name for name in names if names.count(name) > 1}),
            "missing joints": [name for name in self.limits.names if name not in names],
            "NaN in request": [name for name, v in zip(names, q, strict=True) if np.isnan(v)],
            "inf in request": [name for name, v in zip(names, q, strict=True) if np.isinf(v)],
        }
        return request, [f"{label}: {', '.join(bad)}" for label, bad in problems.items() if bad]

    def tick(self, now: float) -> SafetyDecision | None:
        """Stale-command watchdog, called at the control rate with the current time ``now`` (s).

        Returns a ``HELD_STALE`` decision at the measured position when no command has been accepted
        for more than ``stale_after`` (or none ever was), once per stale episode; otherwise None. Also
        None while the e-stop is latched or before the joint state is known.
        """
        if not np.isfinite(now):
            raise ValueError(f"non-finite time: {now}")
        state = self.state
        if self._estop or self._holding or state is None:
            return None
        if self._last_accept is None:
            why = "stale: no command yet"
        elif now - self._last_accept > self.limits.stale_after:
            why = f"stale: last command {now - self._last_accept:.3f} s ago"
        else:
            return None
        self._hold(now)
        return self._decision(state, None, Verdict.HELD_STALE, [why], now)

    def estop(self, engaged: bool, now: float) -> SafetyDecision | None:
        """Latch the e-stop when ``engaged``; returns the hold at the measured position when it latches.

        ``engaged=False`` and repeated ``engaged=True`` return None and change nothing: only
        ``reset_estop`` releases the latch. Without a known joint state the hold has ``command=None``.
        """
        if not engaged or self._estop:
            return None
        self._estop = True
        self._hold(now)
        state = self.state
        reasons = ["e-stop latched"] + ([] if state is not None else ["no joint state to hold at"])
        return self._decision(state, None, Verdict.HELD_ESTOP, reasons, now)

    def reset_estop(self, now: float) -> bool:
        """Release the e-stop latch at ``now`` (s); returns True if it was latched.

        The robot stays held until the next accepted command, which is rate-limited from the measured
        position with ``dt`` counted from ``now``.
        """
        if not self._estop:
            return False
        self._estop = False
        self._hold(now)
        return True

    def rebase(self, now: float) -> None:
        """Forget the last forwarded command: the next accepted one is rate-limited from the measured
        position, with ``dt`` counted from ``now`` (s). For when the robot moved by other means (a
        simulator reset, a manual jog) and the last command no longer describes where it is."""
        if not np.isfinite(now):
            raise ValueError(f"non-finite time: {now}")
        self._base, self._base_stamp = None, float(now)

    def _hold(self, now: float) -> None:
        if not np.isfinite(now):
            raise ValueError(f"non-finite time: {now}")
        self._holding, self._base, self._base_stamp = True, None, float(now)

    def _decision(self, command, request, verdict, reasons, stamp) -> SafetyDecision:
        n = len(self.limits.names)
        clamped = np.zeros(n, dtype=bool)
        if command is not None and request is not None:
            clamped = command != request
        return SafetyDecision(
            command=None if command is None else _frozen(command),
            request=None if request is None else _frozen(request),
            verdict=verdict,
            reasons=tuple(reasons),
            clamped=_frozen(clamped),
            stamp=float(stamp),
        )
