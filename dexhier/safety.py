"""Safety supervisor between a policy and the robot's joint-position controllers.

Pure library code (numpy and the standard library only): a ROS node wraps it, feeding it joint
states (``update_state``), policy commands (``submit``), a control-rate timer (``tick``), e-stop
events (``estop`` / ``reset_estop``) and episode resets (``rebase``), and sends every
``SafetyDecision.command`` that is not ``None`` to the controllers as a one-point joint trajectory.

What it enforces, per joint, in the order of ``SafetyLimits.names``:

* commands must name every joint exactly once (at most ``MAX_NAMES`` names), with finite values and
  a finite, in-order stamp; anything else is ``REJECTED`` and nothing is sent;
* **every** command sent, holds included, is clamped to ``[lower + margin, upper - margin]`` and
  rate-limited so that no joint moves more than ``max_velocity * dt`` from the previously sent
  command, where ``dt`` is the time since that send clipped to ``[0, stale_after]``;
* the rate limit is anchored on the measured position only when nothing was sent yet and after
  ``rebase`` (an episode reset the caller announces), and then on the first complete state measured
  after it: a measured jump never re-anchors it;
* a measured position that is non-finite or more than ``fault_margin`` beyond a limit is a fault:
  it is ignored (reported in ``last_state_error``, counted in ``state_faults``) and never a target;
* if no command was accepted for more than ``stale_after`` seconds, ``tick`` sends one hold at the
  measured position (the ros2_control way to stop), itself clamped and rate-limited;
* the clock may jump: a ``tick`` earlier than the newest time seen by more than ``stale_after``
  re-times the supervisor (and holds) instead of rejecting every later command as out of order;
* the e-stop latches: only ``reset_estop`` releases it.

Time is in seconds on the caller's clock (sim time in the twin); positions in rad; velocities in rad/s.
This is a software stop, not a safety function: the controller's hardware e-stop stays in the loop.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from sim.backend import ActionSpec

MAX_NAMES = 256
"""Most joint names a command or state may carry: a bigger message is rejected before any work."""
MAX_NAME_LENGTH = 256
"""Longest joint name accepted (characters)."""


def _frozen(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


def _oversized(names: Sequence[str], values: Sequence[float]) -> str | None:
    """Why a message is too big to look at, or None. Cheap: lengths only, then one pass."""
    if len(names) > MAX_NAMES or len(values) > MAX_NAMES:
        return f"oversized: {len(names)} names, {len(values)} values (at most {MAX_NAMES})"
    if any(len(n) > MAX_NAME_LENGTH for n in names):
        return f"oversized: a joint name longer than {MAX_NAME_LENGTH} characters"
    return None


@dataclass(frozen=True, eq=False)
class SafetyLimits:
    """Per-joint limits; every array has shape ``(len(names),)`` in the order of ``names``.

    ``lower`` / ``upper``: position limits (rad); ``max_velocity``: rad/s, > 0; ``margin``: distance
    (rad) kept inside the position limits; ``stale_after``: seconds without an accepted command before
    holding; ``fault_margin``: how far (rad) past a limit a measured position may be before it is a
    fault. Raises ValueError on mismatched shapes, duplicate names or non-finite / inconsistent values.
    """

    names: tuple[str, ...]
    lower: np.ndarray
    upper: np.ndarray
    max_velocity: np.ndarray
    margin: float = 0.0
    stale_after: float = 0.1
    fault_margin: float = 0.25

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(self.names))
        n = len(self.names)
        if n == 0 or len(set(self.names)) != n or n > MAX_NAMES:
            raise ValueError(f"joint names must be non-empty, unique and at most {MAX_NAMES}: {self.names}")
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
        if not (np.isfinite(self.fault_margin) and self.fault_margin >= 0):
            raise ValueError(f"fault_margin {self.fault_margin}: need a finite value >= 0")

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
        self._lo, self._hi = limits.lower + limits.margin, limits.upper - limits.margin
        self._state = np.full(n, np.nan)  # measured positions, NaN until first seen
        self._base: np.ndarray | None = None  # last sent command; None = anchor on a fresh state
        self._fresh = False  # a complete state was measured since the last (re)anchoring request
        self._base_stamp: float | None = None  # time of the last send (or anchoring)
        self._last_accept: float | None = None  # stamp of the last accepted command
        self._clock: float | None = None  # newest time seen (ticks and accepted commands)
        self._holding = False
        self._estop = False
        self.state_faults = 0
        """Measured positions rejected as faults (non-finite or beyond a limit by > fault_margin)."""
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

        Unknown names are ignored; joints not named keep their previous value; NaN/inf entries, entries
        more than ``fault_margin`` beyond a limit, and malformed or oversized messages are ignored and
        described in ``last_state_error``.
        """
        too_big = _oversized(names, positions)
        if too_big:
            self.last_state_error = f"malformed state: {too_big}"
            return
        q = np.asarray(positions, dtype=np.float64).reshape(-1)
        if len(q) != len(names) or not np.isfinite(stamp):
            self.last_state_error = f"malformed state: {len(names)} names, {len(q)} positions, stamp {stamp}"
            return
        lim, seen, bad = self.limits, set(), []
        for name, value in zip(names, q, strict=True):
            i = self._index.get(name)
            if i is None:
                continue
            if not np.isfinite(value) or not (
                lim.lower[i] - lim.fault_margin <= value <= lim.upper[i] + lim.fault_margin
            ):
                bad.append(f"{name}={value:.6g}")
                continue
            self._state[i] = value
            seen.add(i)
        self.state_faults += len(bad)
        self.last_state_error = (
            f"state fault (non-finite or past a limit), ignored: {', '.join(bad)}" if bad else None
        )
        if len(seen) == len(lim.names):
            self._fresh = True
            if self._base_stamp is None:
                self._base_stamp = float(stamp)

    def _anchor(self) -> np.ndarray | None:
        """Where the rate limit starts: the last sent command, else a fresh measured state (in band)."""
        if self._base is not None:
            return self._base
        if self._fresh and self.state is not None:
            return np.clip(self.state, self._lo, self._hi)
        return None

    def _limited(self, target: np.ndarray, now: float) -> np.ndarray | None:
        """``target`` clamped into the band and within ``max_velocity * dt`` of the anchor (None: none)."""
        base = self._anchor()
        if base is None:
            return None
        target = np.clip(target, self._lo, self._hi)
        since = 0.0 if self._base_stamp is None else now - self._base_stamp
        step = self.limits.max_velocity * float(np.clip(since, 0.0, self.limits.stale_after))
        return np.clip(target, base - step, base + step)

    def submit(self, names: Sequence[str], targets: np.ndarray, stamp: float) -> SafetyDecision:
        """Check, clamp and rate-limit a policy command: ``targets`` (rad) for ``names`` at ``stamp`` (s).

        ``names`` must list every joint once, in any order. Returns ``HELD_ESTOP`` (nothing sent) while
        latched; ``REJECTED`` (nothing sent, every problem in ``reasons``) for unknown, duplicate or missing
        names, NaN/inf targets, an oversized message, a non-finite stamp, a stamp more than ``stale_after``
        older than the last accepted one, or no usable joint state yet; else ``FORWARDED`` / ``CLAMPED``
        with the command to send.
        """
        lim = self.limits
        too_big = _oversized(names, targets)
        if too_big:
            return self._decision(None, None, Verdict.REJECTED, [f"malformed command: {too_big}"], stamp)
        request, reasons = self._map_request(list(names), np.asarray(targets, dtype=np.float64).reshape(-1))
        if self._estop:
            return self._decision(None, request, Verdict.HELD_ESTOP, ["e-stop latched"], stamp)
        if not np.isfinite(stamp):
            reasons.append(f"non-finite stamp: {stamp}")
        elif self._last_accept is not None and stamp < self._last_accept - lim.stale_after:
            reasons.append(f"out of order: stamp {stamp:.3f} s, last command at {self._last_accept:.3f} s")
        if self._anchor() is None:
            reasons.append("no joint state yet" if self._base_stamp is None or self.state is None
                           else "waiting for the joint state after a reset")  # fmt: skip
        if reasons:
            return self._decision(None, request, Verdict.REJECTED, reasons, stamp)
        assert request is not None
        target = np.clip(request, self._lo, self._hi)
        command = self._limited(request, stamp)
        assert command is not None
        reasons = [f"position limit: {lim.names[i]}" for i in np.flatnonzero(target != request)]
        reasons += [f"rate limit: {lim.names[i]}" for i in np.flatnonzero(command != target)]
        self._sent(command, stamp)
        self._holding = False
        self._last_accept = float(stamp) if self._last_accept is None else max(self._last_accept, stamp)
        verdict = Verdict.CLAMPED if reasons else Verdict.FORWARDED
        return self._decision(command.copy(), request, verdict, reasons, stamp)

    def _map_request(self, names: list[str], q: np.ndarray) -> tuple[np.ndarray | None, list[str]]:
        """Targets in joint order (NaN where not named; None if unmappable) and what is wrong with them.

        Linear in the number of names (dict and set lookups only)."""
        if len(q) != len(names):
            return None, [f"malformed command: {len(names)} names, {len(q)} targets"]
        request = np.full(len(self.limits.names), np.nan)
        unknown, nan, inf = [], [], []
        for name, value in zip(names, q, strict=True):
            i = self._index.get(name)
            if i is None:
                unknown.append(name)
            else:
                request[i] = value
            if np.isnan(value):
                nan.append(name)
            elif np.isinf(value):
                inf.append(name)
        named = set(names)
        problems = {
            "unknown joints": unknown,
            "duplicate joints": sorted(n for n, k in Counter(names).items() if k > 1),
            "missing joints": [name for name in self.limits.names if name not in named],
            "NaN in request": nan,
            "inf in request": inf,
        }
        return request, [f"{label}: {', '.join(bad)}" for label, bad in problems.items() if bad]

    def tick(self, now: float) -> SafetyDecision | None:
        """Stale-command watchdog, called at the control rate with the current time ``now`` (s).

        Returns a ``HELD_STALE`` decision at the measured position (clamped and rate-limited) when no
        command has been accepted for more than ``stale_after`` (or none ever was), once per stale
        episode, or when the clock jumped back by more than ``stale_after``; otherwise None. Also None
        while the e-stop is latched or before the joint state is known.
        """
        if not np.isfinite(now):
            raise ValueError(f"non-finite time: {now}")
        jumped = self._clock is not None and now < self._clock - self.limits.stale_after
        if jumped:  # re-time everything: stamps of the old time base mean nothing now
            why = f"stale: clock jumped back from {self._clock:.3f} s to {now:.3f} s"
            self._clock, self._last_accept = now, None
            self._base_stamp = now if self._base_stamp is not None else None
        elif self._last_accept is None:
            why = "stale: no command yet"
        elif now - self._last_accept > self.limits.stale_after:
            why = f"stale: last command {now - self._last_accept:.3f} s ago"
        else:
            why = None
        self._clock = now if self._clock is None else max(self._clock, now)
        if why is None or self._estop or (self._holding and not jumped) or self._anchor() is None:
            return None
        return self._hold(now, Verdict.HELD_STALE, [why])

    def estop(self, engaged: bool, now: float) -> SafetyDecision | None:
        """Latch the e-stop when ``engaged``; returns the hold at the measured position when it latches.

        ``engaged=False`` and repeated ``engaged=True`` return None and change nothing: only
        ``reset_estop`` releases the latch. Without a usable joint state the hold has ``command=None``.
        """
        if not engaged or self._estop:
            return None
        if not np.isfinite(now):
            raise ValueError(f"non-finite time: {now}")
        self._estop = True
        return self._hold(now, Verdict.HELD_ESTOP, ["e-stop latched"])

    def reset_estop(self, now: float) -> bool:
        """Release the e-stop latch at ``now`` (s); returns True if it was latched.

        The robot stays held until the next accepted command, which is rate-limited from the hold
        (the e-stop does not re-anchor on the measured state; ``rebase`` does).
        """
        if not np.isfinite(now):
            raise ValueError(f"non-finite time: {now}")
        if not self._estop:
            return False
        self._estop = False
        return True

    def rebase(self, now: float) -> None:
        """An episode reset: the robot was moved by other means (a simulator reset, a manual jog) and
        the last command no longer describes where it is. The next command is rate-limited from the
        first complete measured state after this call, with ``dt`` counted from ``now`` (s); until that
        state arrives commands are rejected and holds send nothing."""
        if not np.isfinite(now):
            raise ValueError(f"non-finite time: {now}")
        self._base, self._fresh, self._base_stamp = None, False, float(now)

    def _sent(self, command: np.ndarray, now: float) -> None:
        self._base = command
        stamp = float(now) if self._base_stamp is None else max(self._base_stamp, float(now))
        self._base_stamp = stamp
        self._clock = stamp if self._clock is None else max(self._clock, stamp)

    def _hold(self, now: float, verdict: Verdict, reasons: list[str]) -> SafetyDecision:
        """A hold at the measured position (the last command where no good state is known), clamped
        into the band and rate-limited like any command."""
        self._holding = True
        state = self.state
        target = state if state is not None else self._base
        command = None if target is None else self._limited(target, now)
        if command is None:
            reasons = [*reasons, "no joint state to hold at"]
        else:
            self._sent(command, now)
            if state is not None and np.any(command != state):
                reasons = [*reasons, "hold clamped to the limits and the rate"]
        return self._decision(command, None, verdict, reasons, now)

    def _decision(self, command, request, verdict, reasons, stamp) -> SafetyDecision:
        n = len(self.limits.names)
        clamped = np.zeros(n, dtype=bool)
        if command is not None and request is not None:
            clamped = command != request
        return SafetyDecision(
            command=None if command is None else _frozen(command.copy()),
            request=None if request is None else _frozen(request),
            verdict=verdict,
            reasons=tuple(reasons),
            clamped=_frozen(clamped),
            stamp=float(stamp),
        )


class LogThrottle:
    """Per-reason log throttling with counts, so that a flood of bad input cannot flood the log.

    ``check(reason, now)`` says whether to log now: the first occurrence of a reason at once, later
    ones at most once per ``period`` seconds (``now`` on any monotonic clock). It returns None to stay
    quiet, else how many occurrences of that reason were suppressed since it last logged. ``counts``
    keeps every occurrence per reason. Reasons are short fixed keys; at most ``max_reasons`` are kept
    apart, the rest share one key.
    """

    def __init__(self, period: float = 1.0, max_reasons: int = 64) -> None:
        self.period, self.max_reasons = period, max_reasons
        self.counts: Counter[str] = Counter()
        self._last: dict[str, float] = {}
        self._quiet: Counter[str] = Counter()

    def check(self, reason: str, now: float) -> int | None:
        if reason not in self.counts and len(self.counts) >= self.max_reasons:
            reason = "other"
        self.counts[reason] += 1
        last = self._last.get(reason)
        if last is not None and now - last < self.period:
            self._quiet[reason] += 1
            return None
        self._last[reason] = now
        return self._quiet.pop(reason, 0)

    def message(self, reason: str, text: str, now: float) -> str | None:
        """``text`` to log now, with the suppressed count appended, or None to stay quiet."""
        quiet = self.check(reason, now)
        if quiet is None:
            return None
        return text + (f" (+{quiet} more since the last line, {self.counts[reason]} in all)" if quiet else "")
