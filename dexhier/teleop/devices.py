"""Teleop input devices behind one interface: ``poll(now) -> DeviceCommand``.

Devices: ``KeyboardDevice`` (a plain terminal, no X), ``SpaceMouseDevice`` (pyspacemouse),
``GamepadDevice`` (evdev), ``HandPoseDevice`` (hand keypoints pushed by a tracker callback),
``ReplayDevice`` (a recorded or scripted JSON Lines stream) and ``CompositeDevice`` (arm from one
device, hand keypoints from another). ``make_device(kind, **kwargs)`` builds one by name.

The hardware libraries (pyspacemouse, evdev) are imported only when a real device is opened; the
decoding of their readings (``decode_spacemouse``, ``GamepadState``) is pure and tested with
recorded readings. Times are in seconds; see ``commands.DeviceCommand`` for units and frames.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import errno
import json
import math
import os
import select
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from dexhier.teleop.commands import DeviceCommand, DeviceDisconnectedError, TeleopEvent

Clock = Callable[[], float]
"""A monotonic clock returning seconds."""


@runtime_checkable
class TeleopDevice(Protocol):
    """What the teleop session polls once per control tick."""

    name: str

    def poll(self, now: float) -> DeviceCommand:
        """The latest command; ``now`` is the session time (s). Raises DeviceDisconnectedError when gone."""
        ...

    def close(self) -> None:
        """Release the device (idempotent)."""
        ...


def _frozen(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


# --------------------------------------------------------------------------------------------------
# Replay


REPLAY_END_HOLD = 0.5
"""Seconds the last replay record is held before the replay ends."""

_REPLAY_KEYS = frozenset({"t", "linear", "angular", "grip", "clutch", "events", "hand_keypoints"})


def _is_number(v: object) -> bool:
    # JSON true/false must not pass as 1/0.
    return isinstance(v, int | float) and not isinstance(v, bool)


def _vector(value: object, n: int, what: str, where: str) -> np.ndarray:
    if not (isinstance(value, list | tuple) and len(value) == n and all(_is_number(v) for v in value)):
        raise ValueError(f"{where}: {what} must be a list of {n} numbers, got {value!r}")
    return _frozen(np.array(value, dtype=np.float64))


def _parse_record(obj: object, where: str) -> tuple[float, DeviceCommand]:
    """One replay record -> (t, command without stamp). Shapes and types are checked here; values are
    not (NaN, out of range): the session checks ``DeviceCommand.problems()``."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"{where}: a record must be a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - _REPLAY_KEYS)
    if unknown:  # a typo such as "lineal" would otherwise replay as silent zeros
        raise ValueError(f"{where}: unknown keys {unknown}; valid: {sorted(_REPLAY_KEYS)}")
    t = obj.get("t")
    if not _is_number(t) or not math.isfinite(t):
        raise ValueError(f"{where}: 't' must be a finite number of seconds, got {t!r}")
    kw: dict[str, Any] = {}
    for name in ("linear", "angular"):
        if name in obj:
            kw[name] = _vector(obj[name], 3, name, where)
    if "grip" in obj:
        if not _is_number(obj["grip"]):
            raise ValueError(f"{where}: 'grip' must be a number, got {obj['grip']!r}")
        kw["grip"] = float(obj["grip"])
    if "clutch" in obj:
        if not isinstance(obj["clutch"], bool):
            raise ValueError(f"{where}: 'clutch' must be true or false, got {obj['clutch']!r}")
        kw["clutch"] = obj["clutch"]
    events = obj.get("events", [])
    if not isinstance(events, list | tuple):
        raise ValueError(f"{where}: 'events' must be a list of event names, got {events!r}")
    try:
        kw["events"] = tuple(TeleopEvent(e) for e in events)
    except ValueError:
        valid = [e.value for e in TeleopEvent]
        raise ValueError(f"{where}: unknown event in {list(events)}; valid: {valid}") from None
    kp = obj.get("hand_keypoints")
    if kp is not None:
        if not (isinstance(kp, list | tuple) and len(kp) == 21):
            raise ValueError(f"{where}: 'hand_keypoints' must be 21 [x, y, z] points or null")
        kw["hand_keypoints"] = _frozen(np.stack([_vector(p, 3, "a hand keypoint", where) for p in kp]))
    return float(t), DeviceCommand(**kw)


def _parse_records(items: Iterable[tuple[str, object]], source: str) -> list[tuple[float, DeviceCommand]]:
    """Records from ``(where, object)`` pairs; ``where`` locates errors, ``source`` names the whole."""
    out: list[tuple[float, DeviceCommand]] = []
    for where, obj in items:
        t, cmd = _parse_record(obj, where)
        if out and not t > out[-1][0]:
            raise ValueError(f"{where}: t={t} is not after the previous record's t={out[-1][0]}")
        out.append((t, cmd))
    if not out:
        raise ValueError(f"{source}: no records")
    return out


def _read_replay_file(path: Path) -> list[tuple[float, DeviceCommand]]:
    def lines() -> Iterable[tuple[str, object]]:
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                where = f"{path}, line {lineno}"
                try:
                    obj = json.loads(line)  # accepts the NaN / Infinity literals that json.dumps writes
                except json.JSONDecodeError as e:
                    raise ValueError(f"{where}: bad JSON: {e.msg} (column {e.colno})") from None
                yield where, obj

    return _parse_records(lines(), str(path))


def command_to_record(t: float, command: DeviceCommand) -> dict[str, Any]:
    """A replay record (JSON-ready dict) for ``command`` at session time ``t`` (s)."""
    rec: dict[str, Any] = {
        "t": float(t),
        "linear": np.asarray(command.linear, dtype=np.float64).tolist(),
        "angular": np.asarray(command.angular, dtype=np.float64).tolist(),
        "grip": float(command.grip),
        "clutch": bool(command.clutch),
        "events": [e.value for e in command.events],
    }
    if command.hand_keypoints is not None:
        rec["hand_keypoints"] = np.asarray(command.hand_keypoints, dtype=np.float64).tolist()
    return rec


def write_replay(path: str | os.PathLike[str], records: Iterable[Mapping[str, Any]]) -> None:
    """Write ``records`` (dicts in the replay format) as JSON Lines to ``path``.

    Records are validated first (ValueError naming ``records[i]``), then written with every key filled
    in, so the file always loads back. NaN / Infinity are written as JSON literals and load unchanged.
    """
    parsed = _parse_records(((f"records[{i}]", r) for i, r in enumerate(records)), "records")
    text = "".join(json.dumps(command_to_record(t, cmd)) + "\n" for t, cmd in parsed)
    Path(path).write_text(text, encoding="utf-8")


class ReplayDevice:
    """Plays a recorded or scripted command stream (JSON Lines, one record per line).

    Record: ``{"t": s since session start, "linear": [3], "angular": [3], "grip": float,
    "clutch": bool, "events": ["start", ...], "hand_keypoints": [[x, y, z]] * 21 (optional)}``;
    missing keys take the ``DeviceCommand`` defaults; ``t`` must increase strictly. Bad files raise
    ValueError naming the file and line. Non-finite or out-of-range values load as they are.

    ``poll(now)`` returns the motion of the latest record with ``t <= now`` (zero-order hold; before
    the first record: motionless). Each record's events are delivered once, by the first poll with
    ``now >= t``; a poll that passes over several records delivers all their events in order. The
    replay does not rewind if ``now`` goes back. ``REPLAY_END_HOLD`` s after the last record:
    ``at_end="quit"`` delivers one QUIT event, then motionless commands; ``at_end="disconnect"``
    raises DeviceDisconnectedError (after any events still due have been delivered).
    """

    name = "replay"

    def __init__(
        self,
        path_or_records: str | os.PathLike[str] | Sequence[Mapping[str, Any]],
        *,
        at_end: Literal["quit", "disconnect"] = "quit",
    ) -> None:
        if at_end not in ("quit", "disconnect"):
            raise ValueError(f"at_end must be 'quit' or 'disconnect', got {at_end!r}")
        if isinstance(path_or_records, str | os.PathLike):
            self.source = str(path_or_records)
            self._records = _read_replay_file(Path(path_or_records))
        else:
            self.source = "records"
            items = ((f"records[{i}]", r) for i, r in enumerate(path_or_records))
            self._records = _parse_records(items, "records")
        self.at_end = at_end
        self.end_time = self._records[-1][0] + REPLAY_END_HOLD
        """Session time (s) at which the replay ends."""
        self._next = 0  # index of the first record whose events are not delivered yet
        self._ended = False  # the end was reached and reported (QUIT sent, or events flushed)
        self._closed = False

    @classmethod
    def from_records(
        cls, records: Sequence[Mapping[str, Any]], *, at_end: Literal["quit", "disconnect"] = "quit"
    ) -> ReplayDevice:
        """A replay of in-memory records (dicts in the file format); errors name ``records[i]``."""
        return cls(records, at_end=at_end)

    def __len__(self) -> int:
        return len(self._records)

    def poll(self, now: float) -> DeviceCommand:
        if self._closed:
            raise DeviceDisconnectedError("replay device is closed")
        events: list[TeleopEvent] = []
        while self._next < len(self._records) and self._records[self._next][0] <= now:
            events.extend(self._records[self._next][1].events)
            self._next += 1
        if now >= self.end_time:
            if self.at_end == "quit":
                if not self._ended:
                    events.append(TeleopEvent.QUIT)
                    self._ended = True
                return DeviceCommand(events=tuple(events), stamp=now)
            if self._ended or not events:
                self._ended = True
                raise DeviceDisconnectedError(f"replay {self.source} ended at t={self.end_time:.3f} s")
            self._ended = True  # deliver the events still due now, disconnect on the next poll
            return DeviceCommand(events=tuple(events), stamp=now)
        if self._next == 0:
            return DeviceCommand(stamp=now)
        held = self._records[self._next - 1][1]
        return DeviceCommand(
            linear=held.linear,
            angular=held.angular,
            grip=held.grip,
            clutch=held.clutch,
            events=tuple(events),
            hand_keypoints=held.hand_keypoints,
            stamp=now,
        )

    def close(self) -> None:
        self._closed = True


def _close_source(source: Any, closed: bool) -> bool:
    """Close a wrapped hardware source once (if it has ``close``); returns the new closed flag."""
    if not closed:
        close = getattr(source, "close", None)
        if close is not None:
            close()
    return True


# --------------------------------------------------------------------------------------------------
# Keyboard


KEY_HELP = """\
keyboard teleop (hold a key: motion lasts 0.15 s per key press, autorepeat keeps it going)
  w / s   +x / -x (forward / back)     a / d   +y / -y (left / right)
  r / f   +z / -z (up / down)          q / e   +yaw / -yaw
  o / c   open / close the tool        space   clutch on/off (starts on)
  g       hand mode (pinch <-> power)  + / -   speed up / down (also = / _)
  Enter   start episode                y       save (success)
  n       fail (keep, marked failed)   x       discard
  b       re-record                    h       home (reset the scene)
  !       E-STOP                       #       reset e-stop
  Ctrl-C  quit (an episode in flight is kept, marked incomplete)
  (no capital letters are used, so Caps Lock cannot turn a motion key into quit or reset)"""
"""Key map of ``KeyboardDevice``, for the CLI."""

# byte -> (axis index into [x, y, z, yaw, grip], value)
_KEY_MOTION: dict[int, tuple[int, float]] = {
    ord("w"): (0, 1.0),
    ord("s"): (0, -1.0),
    ord("a"): (1, 1.0),
    ord("d"): (1, -1.0),
    ord("r"): (2, 1.0),
    ord("f"): (2, -1.0),
    ord("q"): (3, 1.0),
    ord("e"): (3, -1.0),
    ord("o"): (4, 1.0),
    ord("c"): (4, -1.0),
}
_KEY_EVENTS: dict[int, TeleopEvent] = {
    ord("g"): TeleopEvent.HAND_MODE,
    ord("+"): TeleopEvent.SPEED_UP,
    ord("="): TeleopEvent.SPEED_UP,
    ord("-"): TeleopEvent.SPEED_DOWN,
    ord("_"): TeleopEvent.SPEED_DOWN,
    ord("\r"): TeleopEvent.START,
    ord("\n"): TeleopEvent.START,
    ord("y"): TeleopEvent.SAVE,
    ord("n"): TeleopEvent.FAIL,
    ord("x"): TeleopEvent.DISCARD,
    ord("b"): TeleopEvent.RERECORD,
    ord("h"): TeleopEvent.HOME,
    ord("!"): TeleopEvent.ESTOP,
    ord("#"): TeleopEvent.RESET_ESTOP,
    0x03: TeleopEvent.QUIT,  # Ctrl-C: a byte here because the device disables the tty's VINTR
}
_KEY_CLUTCH = ord(" ")
_ESC = 0x1B
_ESC_TIMEOUT = 0.05  # s: an Esc not followed by a sequence within this time was a lone Esc key


class KeyboardDevice:
    """Keys of a plain terminal (or any readable file descriptor) as teleop commands.

    Key map (also in ``KEY_HELP``): w/s = +x/-x, a/d = +y/-y, r/f = +z/-z, q/e = +yaw/-yaw,
    o/c = open/close the tool (grip +1/-1 while held), space = clutch toggle (starts engaged),
    g = HAND_MODE, + or = / - or _ = SPEED_UP / SPEED_DOWN, Enter = START, y = SAVE, n = FAIL,
    x = DISCARD, b = RERECORD, h = HOME, ! = ESTOP, # = RESET_ESTOP, Ctrl-C = QUIT (no capital
    letters, so Caps Lock cannot turn a motion key into one of those). Other bytes are ignored,
    and so are escape sequences (arrows, F-keys, Alt+key): F2 / F3 send ``ESC O Q`` / ``ESC O R``.

    A terminal reports key presses but no releases, so a motion key sets its axis to +-1 for
    ``hold`` s (device clock) and the terminal's autorepeat keeps it alive while the key is held
    (expect a stutter before autorepeat starts). Motion values are fractions of the session speeds.

    ``stream``: a file descriptor or an object with ``fileno()`` (default: stdin); it is not closed
    by ``close()``. If it is a TTY it is put in non-canonical, no-echo mode with VINTR disabled (so
    Ctrl-C arrives as a QUIT key and the session can stop cleanly; Ctrl-\\ still kills the process),
    and restored by ``close()`` or at interpreter exit. EOF on the stream raises DeviceDisconnectedError.
    """

    name = "keyboard"

    def __init__(
        self, stream: int | Any | None = None, *, hold: float = 0.15, clock: Clock = time.monotonic
    ) -> None:
        if not hold > 0:
            raise ValueError(f"hold must be > 0 s, got {hold}")
        if stream is None:
            stream = sys.stdin
        self._fd: int = stream if isinstance(stream, int) else stream.fileno()
        self.hold = hold
        self._clock = clock
        self._held: dict[int, tuple[float, float]] = {}  # axis -> (value, expiry time on clock)
        self.clutch = True
        self._esc_state: str | None = None  # None, "esc", "csi" or "ss3"
        self._esc_since = 0.0
        self._eof = False
        self._closed = False
        self._saved_mode: list[Any] | None = None
        if os.isatty(self._fd):
            self._saved_mode = termios.tcgetattr(self._fd)
            mode = termios.tcgetattr(self._fd)  # a second copy: the cc list is mutated below
            mode[3] &= ~(termios.ICANON | termios.ECHO)
            mode[6][termios.VMIN] = 1
            mode[6][termios.VTIME] = 0
            mode[6][termios.VINTR] = _vdisable(self._fd)
            termios.tcsetattr(self._fd, termios.TCSANOW, mode)
            atexit.register(self._restore_tty)

    def _restore_tty(self) -> None:
        if self._saved_mode is None:
            return
        with contextlib.suppress(termios.error):  # the terminal is gone: nothing left to restore
            termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved_mode)
        self._saved_mode = None

    def _read_available(self) -> bytes:
        """All bytes readable now, without blocking; sets ``_eof`` on end of stream."""
        chunks: list[bytes] = []
        for _ in range(64):  # bounded: a flooding writer must not stall the control loop
            ready, _, _ = select.select([self._fd], [], [], 0)
            if not ready:
                break
            try:
                chunk = os.read(self._fd, 1024)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                if e.errno != errno.EIO:  # EIO: the pty's other side closed, i.e. end of stream
                    raise DeviceDisconnectedError(f"keyboard read failed: {e}") from e
                chunk = b""
            if not chunk:
                self._eof = True
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def _decode(self, data: bytes, t: float, events: list[TeleopEvent]) -> None:
        if self._esc_state is not None and t - self._esc_since > _ESC_TIMEOUT:
            self._esc_state = None
        for b in data:
            if b < 0x20 and b != _ESC:
                self._esc_state = None  # control keys (Enter, Ctrl-C) end a sequence and are never skipped
            if self._esc_state is not None:
                self._esc_state = _escape_step(self._esc_state, b)
                if self._esc_state == "esc":
                    self._esc_since = t
                continue
            if b == _ESC:
                self._esc_state, self._esc_since = "esc", t
            elif b in _KEY_MOTION:
                axis, value = _KEY_MOTION[b]
                self._held[axis] = (value, t + self.hold)
            elif b == _KEY_CLUTCH:
                self.clutch = not self.clutch
            elif b in _KEY_EVENTS:
                events.append(_KEY_EVENTS[b])

    def poll(self, now: float) -> DeviceCommand:
        """``now`` is ignored: key holds run on the device clock."""
        if self._closed:
            raise DeviceDisconnectedError("keyboard device is closed")
        if self._eof:
            raise DeviceDisconnectedError("keyboard stream closed (EOF)")
        t = self._clock()
        data = self._read_available()
        events: list[TeleopEvent] = []
        self._decode(data, t, events)
        if self._eof:
            if not events:
                raise DeviceDisconnectedError("keyboard stream closed (EOF)")
            return DeviceCommand(events=tuple(events), stamp=t)  # deliver them; raise on the next poll
        axes = np.zeros(5)
        for axis, (value, expiry) in self._held.items():
            if t < expiry:
                axes[axis] = value
        return DeviceCommand(
            linear=axes[:3].copy(),
            angular=np.array([0.0, 0.0, axes[3]]),
            grip=float(axes[4]),
            clutch=self.clutch,
            events=tuple(events),
            stamp=t,
        )

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._restore_tty()
        atexit.unregister(self._restore_tty)


def _vdisable(fd: int) -> int:
    """The value that disables a terminal control character (0 on Linux, 0xff on macOS)."""
    try:
        v = os.fpathconf(fd, "PC_VDISABLE")
    except (OSError, ValueError):
        v = -1
    return v if 0 <= v <= 255 else 0


def _escape_step(state: str, b: int) -> str | None:
    """Next state of the escape-sequence skipper after byte ``b`` (None: sequence over)."""
    if state == "esc":
        if b == _ESC:
            return "esc"
        if b == ord("["):
            return "csi"
        if b == ord("O"):
            return "ss3"
        return None  # Alt+key: drop the key
    if state == "csi":
        return None if 0x40 <= b <= 0x7E else "csi"  # parameters until the final byte
    return None  # ss3: one final byte


# --------------------------------------------------------------------------------------------------
# SpaceMouse


def _apply_deadband(v: np.ndarray, deadband: float) -> np.ndarray:
    """Zero inside ``deadband``, then rescaled so the output is continuous and reaches +-1; NaN stays NaN."""
    mag = np.clip((np.abs(v) - deadband) / (1.0 - deadband), 0.0, 1.0)
    return np.where(np.isnan(v), np.nan, np.sign(v) * mag)


def _check_deadband(deadband: float) -> None:
    if not 0.0 <= deadband < 1.0:
        raise ValueError(f"deadband must be in [0, 1), got {deadband}")


def _button(buttons: Sequence[int], i: int) -> bool:
    return i < len(buttons) and bool(buttons[i])


def decode_spacemouse(state: Any, prev_buttons: Sequence[int], deadband: float = 0.05) -> DeviceCommand:
    """One SpaceMouse reading as a command.

    ``state``: attributes ``x, y, z, roll, pitch, yaw`` (floats in [-1, 1], device axes taken as the
    base frame), ``buttons`` (sequence of 0/1) and ``t`` (s, used as stamp). ``prev_buttons``: the
    buttons of the previous reading, for edge detection.

    Mapping: x, y, z -> linear, roll, pitch, yaw -> angular, each with ``deadband`` removed (and the
    rest rescaled to [0, 1]) and clipped to [-1, 1]. Left button (0) held = grip -1 (close), right
    button (1) held = grip +1 (open); both pressed together = one HAND_MODE on the press that
    completes the pair (and no grip while both are down). The clutch is engaged whenever any axis is
    outside the deadband: the cap springs back to centre when released, so it is its own deadman.
    """
    _check_deadband(deadband)
    raw = np.array([state.x, state.y, state.z, state.roll, state.pitch, state.yaw], dtype=np.float64)
    axes = _apply_deadband(raw, deadband)
    buttons = list(state.buttons)
    left, right = _button(buttons, 0), _button(buttons, 1)
    both_before = _button(prev_buttons, 0) and _button(prev_buttons, 1)
    both = left and right
    grip = 0.0 if both else -1.0 if left else 1.0 if right else 0.0
    return DeviceCommand(
        linear=axes[:3].copy(),
        angular=axes[3:].copy(),
        grip=grip,
        clutch=bool(np.any(np.abs(raw) > deadband)),
        events=(TeleopEvent.HAND_MODE,) if both and not both_before else (),
        stamp=float(state.t),
    )


def _open_pyspacemouse() -> Any:
    try:
        import pyspacemouse
    except ImportError as e:
        raise RuntimeError("the spacemouse device needs pyspacemouse: pip install pyspacemouse") from e
    if not pyspacemouse.open():
        raise RuntimeError("no SpaceMouse found (check the USB connection and hidraw permissions)")
    return pyspacemouse


class SpaceMouseDevice:
    """A 3Dconnexion SpaceMouse; see ``decode_spacemouse`` for the mapping.

    ``source``: anything whose ``read()`` returns the latest state (see ``decode_spacemouse``);
    default: the ``pyspacemouse`` module, opened here. ``read()`` returning None or raising means
    the device is gone: DeviceDisconnectedError. ``close()`` calls ``source.close()`` if it has one.
    """

    name = "spacemouse"

    def __init__(self, source: Any | None = None, *, deadband: float = 0.05) -> None:
        _check_deadband(deadband)
        self._source = _open_pyspacemouse() if source is None else source
        self.deadband = deadband
        self._prev_buttons: list[int] = []
        self._closed = False

    @classmethod
    def open(cls, *, deadband: float = 0.05) -> SpaceMouseDevice:
        """The first SpaceMouse found by pyspacemouse."""
        return cls(None, deadband=deadband)

    def poll(self, now: float) -> DeviceCommand:
        """``now`` is ignored; the stamp is the state's ``t``."""
        if self._closed:
            raise DeviceDisconnectedError("spacemouse device is closed")
        try:
            state = self._source.read()
        except Exception as e:  # any read failure: the HID device is unusable, stop the session
            raise DeviceDisconnectedError(f"spacemouse read failed: {e!r}") from e
        if state is None:
            raise DeviceDisconnectedError("spacemouse returned no state")
        cmd = decode_spacemouse(state, self._prev_buttons, self.deadband)
        self._prev_buttons = list(state.buttons)
        return cmd

    def close(self) -> None:
        self._closed = _close_source(self._source, self._closed)


# --------------------------------------------------------------------------------------------------
# Gamepad

EV_SYN, EV_KEY, EV_ABS = 0, 1, 3
SYN_REPORT, SYN_DROPPED = 0, 3
ABS_X, ABS_Y, ABS_Z, ABS_RX, ABS_RY, ABS_RZ = 0, 1, 2, 3, 4, 5
ABS_HAT0X, ABS_HAT0Y = 16, 17
BTN_SOUTH, BTN_EAST, BTN_NORTH, BTN_WEST = 304, 305, 307, 308
BTN_TL, BTN_TR, BTN_SELECT, BTN_START, BTN_MODE = 310, 311, 314, 315, 316
BTN_THUMBL, BTN_THUMBR = 317, 318

_STICKS = (ABS_X, ABS_Y, ABS_RX, ABS_RY)
_TRIGGERS = (ABS_Z, ABS_RZ)
_HATS = (ABS_HAT0X, ABS_HAT0Y)
DEFAULT_AXIS_RANGES: dict[int, tuple[int, int]] = {
    **dict.fromkeys(_STICKS, (-32768, 32767)),
    **dict.fromkeys(_TRIGGERS, (0, 255)),
    **dict.fromkeys(_HATS, (-1, 1)),
}
"""Raw (min, max) of each used axis when the device does not tell (evdev's absinfo does)."""

_GAMEPAD_EVENTS: dict[int, TeleopEvent] = {
    BTN_TR: TeleopEvent.HAND_MODE,
    BTN_START: TeleopEvent.START,
    BTN_SOUTH: TeleopEvent.SAVE,
    BTN_EAST: TeleopEvent.FAIL,
    BTN_WEST: TeleopEvent.DISCARD,
    BTN_NORTH: TeleopEvent.RERECORD,
    BTN_SELECT: TeleopEvent.ESTOP,
    BTN_MODE: TeleopEvent.RESET_ESTOP,
    BTN_THUMBL: TeleopEvent.SPEED_DOWN,
    BTN_THUMBR: TeleopEvent.SPEED_UP,
}


def _event_triple(ev: Any) -> tuple[int, int, int]:
    """(type, code, value) of an evdev InputEvent or of a plain tuple."""
    if hasattr(ev, "type"):
        return int(ev.type), int(ev.code), int(ev.value)
    ev_type, code, value = ev
    return int(ev_type), int(code), int(value)


class GamepadState:
    """Decodes a stream of evdev events ``(type, code, value)`` into commands.

    Mapping (Linux gamepad codes; "up"/"left" on a stick are its negative raw values):
    left stick up/left -> linear +x/+y; right stick up -> linear +z; right stick left -> +yaw;
    hat right -> +roll, hat up -> +pitch (tilt forward); left trigger (ABS_Z) -> grip open (+),
    right trigger (ABS_RZ) -> grip close (-), the two add up; TL held = clutch (deadman).
    Presses (value 1, not autorepeat 2) give events: TR = HAND_MODE, START = START, SOUTH = SAVE,
    EAST = FAIL, WEST = DISCARD, NORTH = RERECORD, SELECT = ESTOP, MODE = RESET_ESTOP, stick
    clicks THUMBL / THUMBR = SPEED_DOWN / SPEED_UP. Quit and HOME come from the terminal's keys.

    Sticks map their raw (min, max) to [-1, 1], triggers to [0, 1]; both then lose ``deadband``
    (rescaled, see ``decode_spacemouse``). ``axis_ranges`` overrides ``DEFAULT_AXIS_RANGES`` per axis.
    After SYN_DROPPED (the kernel buffer overflowed) events are ignored up to the next SYN_REPORT and
    the state falls back to centred axes and released buttons: motion stops until the pad reports again.
    """

    def __init__(self, axis_ranges: Mapping[int, tuple[int, int]] | None = None, deadband: float = 0.08):
        _check_deadband(deadband)
        self.axis_ranges = {**DEFAULT_AXIS_RANGES, **(axis_ranges or {})}
        for code, (lo, hi) in self.axis_ranges.items():
            if not hi > lo:
                raise ValueError(f"axis {code}: range ({lo}, {hi}) needs max > min")
        self.deadband = deadband
        self._axes: dict[int, float] = {}  # normalised values, missing = rest (0)
        self._held: set[int] = set()
        self._events: list[TeleopEvent] = []
        self._dropping = False

    def update(self, ev_type: int, code: int, value: int) -> None:
        """Consume one event."""
        if ev_type == EV_SYN:
            if code == SYN_DROPPED:
                self._dropping = True
                self._axes.clear()
                self._held.clear()
            elif code == SYN_REPORT:
                self._dropping = False
            return
        if self._dropping:
            return
        if ev_type == EV_ABS and code in self.axis_ranges:
            lo, hi = self.axis_ranges[code]
            frac = (value - lo) / (hi - lo)
            scaled = frac if code in _TRIGGERS else 2.0 * frac - 1.0  # triggers rest at 0, sticks at 0.5
            self._axes[code] = float(np.clip(scaled, 0.0 if code in _TRIGGERS else -1.0, 1.0))
        elif ev_type == EV_KEY:
            if value == 1:
                if code not in self._held and code in _GAMEPAD_EVENTS:
                    self._events.append(_GAMEPAD_EVENTS[code])
                self._held.add(code)
            elif value == 0:
                self._held.discard(code)

    def feed(self, events: Iterable[Any]) -> None:
        """Consume events in order (tuples or evdev InputEvents)."""
        for ev in events:
            self.update(*_event_triple(ev))

    def command(self, stamp: float) -> DeviceCommand:
        """The command for the current state, with the events pressed since the previous call."""
        a = {code: self._axes.get(code, 0.0) for code in self.axis_ranges}
        sticks = _apply_deadband(np.array([a[ABS_X], a[ABS_Y], a[ABS_RX], a[ABS_RY]]), self.deadband)
        x, y, rx, ry = sticks
        left, right = _apply_deadband(np.array([a[ABS_Z], a[ABS_RZ]]), self.deadband)
        events, self._events = tuple(self._events), []
        return DeviceCommand(
            linear=np.array([-y, -x, -ry]) + 0.0,  # + 0.0 turns -0.0 into 0.0
            angular=np.array([a[ABS_HAT0X], -a[ABS_HAT0Y], -rx]) + 0.0,
            grip=float(np.clip(left - right, -1.0, 1.0)),
            clutch=BTN_TL in self._held,
            events=events,
            stamp=stamp,
        )


def _import_evdev() -> Any:
    try:
        import evdev
    except ImportError as e:
        raise RuntimeError("the gamepad device needs evdev: pip install evdev") from e
    return evdev


def _find_gamepad(evdev: Any) -> Any:
    """The first input device with sticks (ABS_X) and a gamepad button (BTN_SOUTH): touchpads and the
    motion-sensor nodes of some pads also have absolute axes but no such button."""
    for path in evdev.list_devices():
        try:
            dev = evdev.InputDevice(path)
        except OSError:
            continue  # no permission (not in the input group) or gone
        caps = dev.capabilities(absinfo=False)
        if ABS_X in caps.get(EV_ABS, []) and BTN_SOUTH in caps.get(EV_KEY, []):
            return dev
        dev.close()
    raise RuntimeError("no gamepad found under /dev/input (plugged in? is the user in the input group?)")


class GamepadDevice:
    """A Linux gamepad read through evdev; see ``GamepadState`` for the mapping.

    ``events_source``: ``read()`` returns (or lazily yields) the events available now and raises
    BlockingIOError when there are none, like ``evdev.InputDevice.read()``; any other OSError
    (ENODEV: unplugged) raises DeviceDisconnectedError. ``close()`` calls ``events_source.close()``.
    """

    name = "gamepad"

    def __init__(
        self,
        events_source: Any,
        *,
        axis_ranges: Mapping[int, tuple[int, int]] | None = None,
        deadband: float = 0.08,
        clock: Clock = time.monotonic,
    ) -> None:
        self._source = events_source
        self.state = GamepadState(axis_ranges, deadband)
        self._clock = clock
        self._closed = False

    @classmethod
    def open(
        cls, path: str | None = None, *, deadband: float = 0.08, clock: Clock = time.monotonic
    ) -> GamepadDevice:
        """Open ``path`` (e.g. /dev/input/event5) or the first gamepad found; axis ranges from the device."""
        evdev = _import_evdev()
        dev = _find_gamepad(evdev) if path is None else evdev.InputDevice(path)
        ranges = {
            code: (int(info.min), int(info.max))
            for code, info in dev.capabilities(absinfo=True).get(EV_ABS, [])
            if code in DEFAULT_AXIS_RANGES and info.max > info.min
        }
        return cls(dev, axis_ranges=ranges, deadband=deadband, clock=clock)

    def poll(self, now: float) -> DeviceCommand:
        """``now`` is ignored; the stamp is on the device clock."""
        if self._closed:
            raise DeviceDisconnectedError("gamepad device is closed")
        for _ in range(64):  # bounded: drain what is queued, never wait
            try:
                batch = list(self._source.read())  # evdev's read() is a generator: errors come here
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                raise DeviceDisconnectedError(f"gamepad read failed: {e}") from e
            if not batch:
                break
            self.state.feed(batch)
        return self.state.command(self._clock())

    def close(self) -> None:
        self._closed = _close_source(self._source, self._closed)


# --------------------------------------------------------------------------------------------------
# Hand pose and composition


class HandPoseDevice:
    """Hand keypoints pushed by a tracker (a ROS callback or a test) through ``feed``.

    ``poll`` returns no arm motion and ``hand_keypoints`` = the latest (21, 3) keypoints (m, wrist
    frame), or None when nothing was fed for ``stale_after`` s on ``clock`` (the session then holds
    the hand). Staleness uses arrival time, since tracker stamps may be on another clock. Thread-safe:
    ``feed`` may run on another thread than ``poll``.
    """

    name = "handpose"

    def __init__(self, *, stale_after: float = 0.5, clock: Clock = time.monotonic) -> None:
        if not stale_after > 0:
            raise ValueError(f"stale_after must be > 0 s, got {stale_after}")
        self.stale_after = stale_after
        self._clock = clock
        self._lock = threading.Lock()
        self._latest: tuple[np.ndarray, float, float] | None = None  # keypoints, stamp, arrival
        self._closed = False

    def feed(self, keypoints: np.ndarray, stamp: float) -> None:
        """New (21, 3) keypoints (m) stamped ``stamp`` (s). Non-finite values are kept (the session
        reports them); a wrong shape is a caller bug: ValueError. Ignored after ``close()``."""
        k = np.array(keypoints, dtype=np.float64)
        if k.shape != (21, 3):
            raise ValueError(f"hand keypoints must have shape (21, 3), got {k.shape}")
        with self._lock:
            if not self._closed:
                self._latest = (_frozen(k), float(stamp), self._clock())

    def poll(self, now: float) -> DeviceCommand:
        """``now`` is ignored; staleness runs on the device clock."""
        t = self._clock()
        with self._lock:
            if self._closed:
                raise DeviceDisconnectedError("handpose device is closed")
            latest = self._latest
        if latest is None or t - latest[2] > self.stale_after:
            return DeviceCommand(stamp=t)
        return DeviceCommand(hand_keypoints=latest[0], stamp=latest[1])

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._latest = None


class CompositeDevice:
    """Arm motion, clutch, grip, events and stamp from ``arm``; hand keypoints from ``hand``.

    Events of ``hand`` are dropped. Either device disconnecting disconnects the composite.
    """

    def __init__(self, arm: TeleopDevice, hand: TeleopDevice) -> None:
        self.arm = arm
        self.hand = hand
        self.name = f"{arm.name}+{hand.name}"

    def poll(self, now: float) -> DeviceCommand:
        return dataclasses.replace(self.arm.poll(now), hand_keypoints=self.hand.poll(now).hand_keypoints)

    def close(self) -> None:
        try:
            self.arm.close()
        finally:
            self.hand.close()


# --------------------------------------------------------------------------------------------------
# Factory


def _open_replay(path: str | os.PathLike[str], **kwargs: Any) -> ReplayDevice:
    return ReplayDevice(path, **kwargs)


_FACTORIES: dict[str, Callable[..., TeleopDevice]] = {
    "keyboard": KeyboardDevice,
    "spacemouse": SpaceMouseDevice,
    "gamepad": GamepadDevice.open,
    "handpose": HandPoseDevice,
    "replay": _open_replay,
}
DEVICE_KINDS: tuple[str, ...] = tuple(_FACTORIES)
"""Valid ``kind`` values of ``make_device``."""


def make_device(kind: str, **kwargs: Any) -> TeleopDevice:
    """Build a device by kind; ``kwargs`` go to its constructor (``replay`` takes ``path=``,
    ``gamepad`` goes through ``GamepadDevice.open(path=None, ...)``)."""
    try:
        factory = _FACTORIES[kind]
    except KeyError:
        raise ValueError(f"unknown device kind {kind!r}; valid kinds: {', '.join(DEVICE_KINDS)}") from None
    return factory(**kwargs)


class EventMerge:
    """``device``'s motion, clutch, grip and keypoints, with the events of both ``device`` and ``events``.

    Lets a terminal's keys (START, SAVE, E-STOP, QUIT, ...) drive the episodes of a device that has
    too few buttons, such as a SpaceMouse. Either device disconnecting disconnects the merge.
    """

    def __init__(self, device: TeleopDevice, events: TeleopDevice) -> None:
        self.device = device
        self.events = events
        self.name = f"{device.name}+{events.name}-events"

    def poll(self, now: float) -> DeviceCommand:
        c = self.device.poll(now)
        extra = self.events.poll(now).events
        return dataclasses.replace(c, events=c.events + extra) if extra else c

    def close(self) -> None:
        try:
            self.device.close()
        finally:
            self.events.close()


def keypoints_from_poses(positions: Sequence[tuple[float, float, float]]) -> np.ndarray:
    """(21, 3) keypoints from the 21 pose positions of a ``geometry_msgs/PoseArray`` (m, wrist frame).

    ValueError for another number of poses. Non-finite values are kept: the session reports them.
    """
    k = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    if k.shape != (21, 3):
        raise ValueError(f"hand keypoints need 21 poses, got {len(k)}")
    return k
