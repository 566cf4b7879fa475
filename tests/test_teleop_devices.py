"""Teleop devices without hardware: replay files, keyboard over a pipe and a pty, recorded SpaceMouse
states and gamepad event streams, hand pose staleness, disconnect paths and the factory."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import sys
import termios
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from dexhier.teleop import devices as dev
from dexhier.teleop.commands import DeviceCommand, DeviceDisconnectedError, TeleopEvent
from dexhier.teleop.devices import (
    ABS_HAT0X,
    ABS_HAT0Y,
    ABS_RX,
    ABS_RY,
    ABS_RZ,
    ABS_X,
    ABS_Y,
    ABS_Z,
    BTN_EAST,
    BTN_MODE,
    BTN_NORTH,
    BTN_SELECT,
    BTN_SOUTH,
    BTN_START,
    BTN_TL,
    BTN_TR,
    BTN_WEST,
    DEVICE_KINDS,
    EV_ABS,
    EV_KEY,
    EV_SYN,
    KEY_HELP,
    SYN_DROPPED,
    SYN_REPORT,
    CompositeDevice,
    GamepadDevice,
    GamepadState,
    HandPoseDevice,
    KeyboardDevice,
    ReplayDevice,
    SpaceMouseDevice,
    TeleopDevice,
    decode_spacemouse,
    make_device,
    write_replay,
)

E = TeleopEvent


class FakeClock:
    """A settable clock, s."""

    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _keypoints(offset: float = 0.0) -> np.ndarray:
    return np.arange(63, dtype=np.float64).reshape(21, 3) * 0.01 + offset


# --------------------------------------------------------------------------------------------------
# Replay

SCRIPT = [
    {"t": 0.0, "linear": [1.0, 0.0, 0.0], "clutch": True, "events": ["start"]},
    {"t": 1.0, "linear": [0.0, 0.5, 0.0], "grip": -1.0, "clutch": True, "events": ["speed_up"]},
    {"t": 2.0, "angular": [0.0, 0.0, 0.25], "events": ["hand_mode", "save"]},
]


def _write_lines(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "replay.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_replay_zero_order_hold_and_events_once(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    write_replay(path, SCRIPT)
    d = ReplayDevice(path)
    assert len(d) == 3 and d.end_time == pytest.approx(2.5)

    before = d.poll(-0.1)  # before the first record: motionless, no events
    assert not before.clutch and before.events == () and np.all(before.linear == 0)

    c = d.poll(0.0)
    assert c.events == (E.START,) and c.clutch and c.linear.tolist() == [1.0, 0.0, 0.0]
    assert c.stamp == 0.0
    c = d.poll(0.7)  # held, event not repeated
    assert c.events == () and c.linear.tolist() == [1.0, 0.0, 0.0] and c.grip == 0.0
    c = d.poll(1.0)
    assert c.events == (E.SPEED_UP,) and c.linear.tolist() == [0.0, 0.5, 0.0] and c.grip == -1.0
    c = d.poll(1.9)
    assert c.events == () and c.grip == -1.0
    c = d.poll(2.2)  # missing keys take the defaults: no clutch, no grip
    assert c.events == (E.HAND_MODE, E.SAVE) and not c.clutch and c.grip == 0.0
    assert c.angular.tolist() == [0.0, 0.0, 0.25] and c.linear.tolist() == [0.0, 0.0, 0.0]
    assert d.poll(0.5).events == ()  # time going back does not rewind


def test_replay_jump_over_records_delivers_all_events_in_order() -> None:
    d = ReplayDevice.from_records(SCRIPT)
    c = d.poll(2.0)
    assert c.events == (E.START, E.SPEED_UP, E.HAND_MODE, E.SAVE)
    assert c.angular.tolist() == [0.0, 0.0, 0.25] and not c.clutch  # motion of the latest record
    assert d.poll(2.1).events == ()


def test_replay_at_end_quit_once_then_motionless() -> None:
    d = ReplayDevice.from_records([{"t": 0.0, "linear": [0.5, 0.0, 0.0], "clutch": True}])
    assert d.poll(0.49).linear[0] == 0.5  # held for REPLAY_END_HOLD
    c = d.poll(0.5)
    assert c.events == (E.QUIT,) and not c.clutch and np.all(c.linear == 0)
    for t in (0.6, 5.0):
        c = d.poll(t)
        assert c.events == () and not c.clutch and np.all(c.linear == 0)


def test_replay_at_end_disconnect_after_delivering_due_events() -> None:
    d = ReplayDevice.from_records(SCRIPT, at_end="disconnect")
    assert d.poll(2.49).events == (E.START, E.SPEED_UP, E.HAND_MODE, E.SAVE)
    with pytest.raises(DeviceDisconnectedError):
        d.poll(2.5)
    with pytest.raises(DeviceDisconnectedError):
        d.poll(2.6)

    # A poll that jumps past the end still delivers the events first, then disconnects.
    d = ReplayDevice.from_records(SCRIPT, at_end="disconnect")
    c = d.poll(10.0)
    assert c.events == (E.START, E.SPEED_UP, E.HAND_MODE, E.SAVE) and not c.clutch
    with pytest.raises(DeviceDisconnectedError):
        d.poll(10.1)


def test_replay_close_then_poll_disconnects() -> None:
    d = ReplayDevice.from_records(SCRIPT)
    d.close()
    with pytest.raises(DeviceDisconnectedError):
        d.poll(0.0)


def test_replay_nan_passes_through_and_problems_report_it(tmp_path: Path) -> None:
    kp = _keypoints().tolist()
    kp[3][1] = float("nan")
    path = tmp_path / "nan.jsonl"
    write_replay(path, [{"t": 0.0, "linear": [float("nan"), 0.0, 0.0], "grip": 2.0, "hand_keypoints": kp}])
    assert "NaN" in path.read_text()  # python's json writes the literal and reads it back
    c = ReplayDevice(path).poll(0.1)
    assert math.isnan(c.linear[0]) and c.grip == 2.0 and math.isnan(c.hand_keypoints[3, 1])
    problems = c.problems()
    assert len(problems) == 3
    assert problems[0].startswith("linear is not finite")
    assert problems[1].startswith("grip outside [-1, 1]")
    assert problems[2] == "hand_keypoints are not finite"


def test_replay_hand_keypoints_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "kp.jsonl"
    write_replay(path, [{"t": 0.5, "hand_keypoints": _keypoints(1.0).tolist()}, {"t": 1.0}])
    d = ReplayDevice(path)
    assert d.poll(0.0).hand_keypoints is None
    assert np.array_equal(d.poll(0.7).hand_keypoints, _keypoints(1.0))
    assert d.poll(1.0).hand_keypoints is None
    assert d.poll(1.0).problems() == []


@pytest.mark.parametrize(
    ("lines", "line_no", "needle"),
    [
        (['{"t": 0.0}', '{"t": 1.0, "linear": [1, 0, 0]', '{"t": 2.0}'], 2, "bad JSON"),
        (['{"t": 0.0}', '{"t": 0.5, "events": ["start", "jump"]}'], 2, "unknown event"),
        (['{"t": 0.0}', "", '{"t": 1.0}', '{"t": 1.0}'], 4, "not after"),
        (['{"t": 0.0}', '{"t": 1.0}', '{"t": 0.5}'], 3, "not after"),
        (['{"t": 0.0, "linear": [1, 0]}'], 1, "linear must be a list of 3 numbers"),
        (['{"t": 0.0}', '{"linear": [0, 0, 0]}'], 2, "'t' must be a finite number"),
        (['{"t": NaN}'], 1, "'t' must be a finite number"),
        (['{"t": 0.0, "clutch": 1}'], 1, "'clutch' must be true or false"),
        (['{"t": 0.0, "lineal": [1, 0, 0]}'], 1, "unknown keys ['lineal']"),
        (["[0.0, 1.0]"], 1, "must be a JSON object"),
        (['{"t": 0.0, "hand_keypoints": [[0, 0, 0]]}'], 1, "hand_keypoints"),
    ],
)
def test_replay_bad_file_names_file_and_line(
    tmp_path: Path, lines: list[str], line_no: int, needle: str
) -> None:
    path = _write_lines(tmp_path, lines)
    with pytest.raises(ValueError) as info:
        ReplayDevice(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}, line {line_no}: "), msg
    assert needle in msg


def test_replay_empty_file_and_bad_records(tmp_path: Path) -> None:
    path = _write_lines(tmp_path, ["", "  "])
    with pytest.raises(ValueError, match=r"replay\.jsonl: no records"):
        ReplayDevice(path)
    with pytest.raises(ValueError, match=r"^records\[1\]: unknown event"):
        ReplayDevice.from_records([{"t": 0.0}, {"t": 1.0, "events": ["explode"]}])
    with pytest.raises(ValueError, match=r"^records\[0\]: 'grip' must be a number"):
        write_replay(tmp_path / "w.jsonl", [{"t": 0.0, "grip": "open"}])
    assert not (tmp_path / "w.jsonl").exists()  # nothing written when a record is bad
    with pytest.raises(ValueError, match="at_end"):
        ReplayDevice.from_records(SCRIPT, at_end="loop")  # type: ignore[arg-type]


def test_write_replay_fills_every_key(tmp_path: Path) -> None:
    path = tmp_path / "full.jsonl"
    write_replay(path, [{"t": 0.25, "events": ["estop"]}])
    rec = json.loads(path.read_text().splitlines()[0])
    assert rec == {
        "t": 0.25,
        "linear": [0.0, 0.0, 0.0],
        "angular": [0.0, 0.0, 0.0],
        "grip": 0.0,
        "clutch": False,
        "events": ["estop"],
    }


# --------------------------------------------------------------------------------------------------
# Keyboard


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    yield r, w
    for fd in (r, w):
        with contextlib.suppress(OSError):  # the test may have closed it already
            os.close(fd)


def _poll_until(
    device: TeleopDevice, done: Callable[[DeviceCommand], bool], timeout: float = 2.0
) -> DeviceCommand:
    """Poll until ``done``: bytes written to a pty master reach the slave asynchronously."""
    deadline = time.monotonic() + timeout
    while True:
        c = device.poll(0.0)
        if done(c) or time.monotonic() > deadline:
            return c
        time.sleep(0.005)


def test_keyboard_pipe_key_map(pipe: tuple[int, int]) -> None:
    r, w = pipe
    clock = FakeClock()
    kb = KeyboardDevice(r, clock=clock)
    c = kb.poll(0.0)
    assert c.clutch and c.events == () and np.all(c.linear == 0) and c.stamp == 100.0  # starts engaged

    os.write(w, b"w")
    assert kb.poll(0.0).linear.tolist() == [1.0, 0.0, 0.0]
    os.write(w, b"sdrq")  # within one read: the last key of an axis wins
    c = kb.poll(0.0)
    assert c.linear.tolist() == [-1.0, -1.0, 1.0] and c.angular.tolist() == [0.0, 0.0, 1.0]
    os.write(w, b"fec")
    c = kb.poll(0.0)
    assert c.linear[2] == -1.0 and c.angular[2] == -1.0 and c.grip == -1.0
    os.write(w, b"o")
    assert kb.poll(0.0).grip == 1.0

    os.write(w, b"g+=-_\ry\nnxbh!#RQ\x03")  # capital R and Q do nothing (Caps Lock)
    assert kb.poll(0.0).events == (
        E.HAND_MODE,
        E.SPEED_UP,
        E.SPEED_UP,
        E.SPEED_DOWN,
        E.SPEED_DOWN,
        E.START,
        E.SAVE,
        E.START,
        E.FAIL,
        E.DISCARD,
        E.RERECORD,
        E.HOME,
        E.ESTOP,
        E.RESET_ESTOP,
        E.QUIT,
    )
    assert kb.poll(0.0).events == ()  # delivered once

    os.write(w, b" ")
    assert not kb.poll(0.0).clutch
    os.write(w, b"  ")
    assert not kb.poll(0.0).clutch  # two toggles
    os.write(w, b" ")
    assert kb.poll(0.0).clutch

    os.write(w, "zZ?\t\x7fé".encode())  # unmapped bytes, including UTF-8
    c = kb.poll(0.0)
    assert c.events == () and c.clutch
    kb.close()


def test_keyboard_skips_escape_sequences(pipe: tuple[int, int]) -> None:
    r, w = pipe
    clock = FakeClock()
    kb = KeyboardDevice(r, clock=clock)
    # F2, F3 (SS3), an arrow and F5 (CSI), Alt+w: none may act, least of all QUIT / RESET_ESTOP.
    os.write(w, b"\x1bOQ\x1bOR\x1b[A\x1b[15~\x1bw")
    c = kb.poll(0.0)
    assert c.events == () and np.all(c.linear == 0)
    os.write(w, b"\x1b[1;5Cy")  # the key after a sequence counts
    assert kb.poll(0.0).events == (E.SAVE,)
    os.write(w, b"\x1b\x03")  # Ctrl-C is never swallowed by a pending Esc
    assert kb.poll(0.0).events == (E.QUIT,)

    os.write(w, b"\x1b")  # a lone Esc key ...
    assert kb.poll(0.0).events == ()
    clock.t += 0.2
    os.write(w, b"h")  # ... does not eat the next key pressed later
    assert kb.poll(0.0).events == (E.HOME,)
    kb.close()


def test_keyboard_hold_expiry_and_autorepeat(pipe: tuple[int, int]) -> None:
    r, w = pipe
    clock = FakeClock(10.0)
    kb = KeyboardDevice(r, clock=clock)
    os.write(w, b"a")
    assert kb.poll(0.0).linear[1] == 1.0
    clock.t = 10.1
    assert kb.poll(0.0).linear[1] == 1.0
    os.write(w, b"a")  # autorepeat, read at 10.14: the hold now ends at 10.29
    clock.t = 10.14
    assert kb.poll(0.0).linear[1] == 1.0
    clock.t = 10.28
    assert kb.poll(0.0).linear[1] == 1.0
    clock.t = 10.30
    c = kb.poll(0.0)
    assert c.linear[1] == 0.0 and c.stamp == 10.30
    os.write(w, b"o")
    clock.t = 10.46  # not polled in time: the press still counts once read, from the read time
    assert kb.poll(0.0).grip == 1.0
    clock.t = 10.62
    assert kb.poll(0.0).grip == 0.0
    kb.close()


def test_keyboard_eof_disconnects_after_delivering_last_keys(pipe: tuple[int, int]) -> None:
    r, w = pipe
    kb = KeyboardDevice(r, clock=FakeClock())
    os.write(w, b"x")
    os.close(w)
    c = kb.poll(0.0)
    assert c.events == (E.DISCARD,) and not c.clutch
    with pytest.raises(DeviceDisconnectedError, match="EOF"):
        kb.poll(0.0)

    r2, w2 = os.pipe()
    kb2 = KeyboardDevice(r2)
    os.close(w2)
    try:
        with pytest.raises(DeviceDisconnectedError):
            kb2.poll(0.0)
    finally:
        os.close(r2)


def test_keyboard_pty_sets_and_restores_termios(monkeypatch: pytest.MonkeyPatch) -> None:
    registered: list[Callable[[], None]] = []
    unregistered: list[Callable[[], None]] = []
    monkeypatch.setattr(dev.atexit, "register", registered.append)
    monkeypatch.setattr(dev.atexit, "unregister", unregistered.append)
    master, slave = os.openpty()
    try:
        before = termios.tcgetattr(slave)
        assert before[3] & termios.ICANON and before[3] & termios.ECHO  # a fresh pty is cooked
        kb = KeyboardDevice(slave)
        mode = termios.tcgetattr(slave)
        assert not mode[3] & termios.ICANON and not mode[3] & termios.ECHO
        assert mode[6][termios.VINTR] in (b"\x00", 0)
        assert len(registered) == 1

        # Ctrl-C reaches the device as a byte only because VINTR is disabled; \r arrives as \n (ICRNL).
        os.write(master, b"w\x03")
        c = _poll_until(kb, lambda c: bool(c.events))
        assert c.events == (E.QUIT,) and c.linear[0] == 1.0
        os.write(master, b"\r")
        assert _poll_until(kb, lambda c: bool(c.events)).events == (E.START,)

        kb.close()
        assert termios.tcgetattr(slave) == before
        assert unregistered == registered  # the atexit hook goes once restored
        kb.close()  # idempotent
        with pytest.raises(DeviceDisconnectedError):
            kb.poll(0.0)
    finally:
        os.close(master)
        os.close(slave)


def test_keyboard_pty_master_closed_disconnects() -> None:
    master, slave = os.openpty()
    kb = KeyboardDevice(slave)
    try:
        os.close(master)
        with pytest.raises(DeviceDisconnectedError):
            _poll_until(kb, lambda c: False, timeout=1.0)
    finally:
        kb.close()
        os.close(slave)


def test_keyboard_help_names_every_command_key() -> None:
    for key in ("w / s", "a / d", "r / f", "q / e", "o / c", "space", "Enter", "Ctrl-C", "#", "!"):
        assert key in KEY_HELP, key


def test_keyboard_rejects_bad_hold(pipe: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="hold"):
        KeyboardDevice(pipe[0], hold=0.0)


# --------------------------------------------------------------------------------------------------
# SpaceMouse


def _sm(t: float, x=0.0, y=0.0, z=0.0, roll=0.0, pitch=0.0, yaw=0.0, buttons=(0, 0)) -> SimpleNamespace:
    return SimpleNamespace(t=t, x=x, y=y, z=z, roll=roll, pitch=pitch, yaw=yaw, buttons=list(buttons))


def test_decode_spacemouse_axes_and_deadband() -> None:
    c = decode_spacemouse(_sm(1.5, x=0.04, y=-0.03, yaw=0.05), [0, 0])
    assert np.all(c.linear == 0) and np.all(c.angular == 0) and not c.clutch and c.stamp == 1.5

    c = decode_spacemouse(_sm(2.0, x=0.525, y=-1.0, z=1.3, roll=-0.1, pitch=0.0, yaw=0.905), [0, 0])
    assert c.clutch
    # (|v| - 0.05) / 0.95, clipped to [-1, 1]
    np.testing.assert_allclose(c.linear, [0.5, -1.0, 1.0])
    np.testing.assert_allclose(c.angular, [-0.05 / 0.95, 0.0, 0.9])
    assert c.problems() == []

    c = decode_spacemouse(_sm(0.0, z=0.3), [], deadband=0.2)
    np.testing.assert_allclose(c.linear, [0.0, 0.0, 0.125])
    with pytest.raises(ValueError, match="deadband"):
        decode_spacemouse(_sm(0.0), [], deadband=1.0)


def test_spacemouse_device_buttons_from_recorded_states() -> None:
    recorded = [
        _sm(0.00),
        _sm(0.01, buttons=(1, 0)),  # left: close
        _sm(0.02, buttons=(1, 1)),  # right joins: HAND_MODE, no grip
        _sm(0.03, buttons=(1, 1)),  # still both: no repeat
        _sm(0.04, buttons=(0, 1)),  # right only: open
        _sm(0.05, buttons=(1, 1)),  # both again: a second HAND_MODE
        _sm(0.06, x=0.5, buttons=(0, 0)),
        _sm(0.07, buttons=(1,)),  # a one-button model
    ]
    source = SimpleNamespace(read=iter(recorded).__next__, closed=0)
    source.close = lambda: setattr(source, "closed", source.closed + 1)
    d = SpaceMouseDevice(source)
    out = [d.poll(0.0) for _ in recorded]
    assert [c.grip for c in out] == [0.0, -1.0, 0.0, 0.0, 1.0, 0.0, 0.0, -1.0]
    assert [c.events for c in out] == [(), (), (E.HAND_MODE,), (), (), (E.HAND_MODE,), (), ()]
    assert [c.clutch for c in out] == [False] * 6 + [True, False]
    assert [c.stamp for c in out] == [s.t for s in recorded]
    d.close()
    d.close()
    assert source.closed == 1
    with pytest.raises(DeviceDisconnectedError):
        d.poll(0.0)


def test_spacemouse_disconnects() -> None:
    d = SpaceMouseDevice(SimpleNamespace(read=lambda: None))
    with pytest.raises(DeviceDisconnectedError, match="no state"):
        d.poll(0.0)

    def broken() -> Any:
        raise OSError(errno.ENODEV, "No such device")

    d = SpaceMouseDevice(SimpleNamespace(read=broken))
    with pytest.raises(DeviceDisconnectedError, match="No such device") as info:
        d.poll(0.0)
    assert isinstance(info.value.__cause__, OSError)


def test_spacemouse_without_pyspacemouse_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyspacemouse", None)  # makes the import fail
    with pytest.raises(RuntimeError, match="pip install pyspacemouse"):
        SpaceMouseDevice()
    with pytest.raises(RuntimeError, match="pip install pyspacemouse"):
        make_device("spacemouse")


# --------------------------------------------------------------------------------------------------
# Gamepad


def test_gamepad_state_axis_scaling_and_deadband() -> None:
    g = GamepadState()
    c = g.command(1.0)
    assert np.all(c.linear == 0) and np.all(c.angular == 0) and c.grip == 0.0 and not c.clutch
    g.feed([(EV_ABS, ABS_X, 0), (EV_ABS, ABS_Y, 2000), (EV_SYN, SYN_REPORT, 0)])  # centre, noise
    assert np.all(g.command(1.0).linear == 0)

    g.feed(
        [
            (EV_ABS, ABS_Y, -32768),  # left stick fully up: +x
            (EV_ABS, ABS_X, 16384),  # half right: -y
            (EV_ABS, ABS_RY, -32768),  # right stick up: +z
            (EV_ABS, ABS_RX, 32767),  # right stick right: -yaw
            (EV_ABS, ABS_HAT0X, 1),  # hat right: +roll
            (EV_ABS, ABS_HAT0Y, -1),  # hat up: +pitch
            (EV_SYN, SYN_REPORT, 0),
        ]
    )
    c = g.command(2.0)
    half = (2 * (16384 + 32768) / 65535 - 1 - 0.08) / 0.92
    np.testing.assert_allclose(c.linear, [1.0, -half, 1.0])
    np.testing.assert_allclose(c.angular, [1.0, 1.0, -1.0])
    assert c.stamp == 2.0 and c.problems() == []

    g.feed([(EV_ABS, ABS_Z, 255), (EV_ABS, ABS_RZ, 64)])  # triggers: open 1, close ~0.25
    assert g.command(3.0).grip == pytest.approx(1.0 - (64 / 255 - 0.08) / 0.92)
    g.feed([(EV_ABS, ABS_Z, 0), (EV_ABS, ABS_RZ, 255)])
    assert g.command(3.0).grip == -1.0
    g.feed([(EV_ABS, ABS_RZ, 10)])  # resting trigger noise is inside the deadband
    assert g.command(3.0).grip == 0.0


def test_gamepad_state_custom_ranges_and_unknown_codes() -> None:
    g = GamepadState({ABS_Z: (0, 1023), ABS_X: (0, 255)})
    g.feed([(EV_ABS, ABS_Z, 1023), (EV_ABS, ABS_X, 0), (EV_ABS, 40, 99), (EV_KEY, 999, 1), (2, 0, 5)])
    c = g.command(0.0)
    assert c.grip == 1.0 and c.linear.tolist() == [0.0, 1.0, 0.0] and c.events == ()
    with pytest.raises(ValueError, match="max > min"):
        GamepadState({ABS_X: (5, 5)})


def test_gamepad_buttons_events_once_on_press_and_clutch() -> None:
    g = GamepadState()
    presses = [BTN_TR, BTN_START, BTN_SOUTH, BTN_EAST, BTN_WEST, BTN_NORTH, BTN_SELECT, BTN_MODE, 317, 318]
    g.feed([(EV_KEY, code, 1) for code in presses] + [(EV_SYN, SYN_REPORT, 0)])
    c = g.command(0.0)
    assert c.events == (E.HAND_MODE, E.START, E.SAVE, E.FAIL, E.DISCARD, E.RERECORD, E.ESTOP, E.RESET_ESTOP,
                        E.SPEED_DOWN, E.SPEED_UP)  # fmt: skip
    g.feed([(EV_KEY, BTN_SOUTH, 2), (EV_KEY, BTN_SOUTH, 1)])  # autorepeat / repeated press while held
    assert g.command(0.0).events == ()
    g.feed([(EV_KEY, BTN_SOUTH, 0), (EV_KEY, BTN_SOUTH, 1), (EV_KEY, BTN_SOUTH, 0)])  # a new press
    assert g.command(0.0).events == (E.SAVE,)

    g.feed([(EV_KEY, BTN_TL, 1)])
    c = g.command(0.0)
    assert c.clutch and c.events == ()  # the deadman gives no event
    g.feed([(EV_KEY, BTN_TL, 0)])
    assert not g.command(0.0).clutch


def test_gamepad_syn_dropped_resets_to_rest() -> None:
    g = GamepadState()
    g.feed([(EV_ABS, ABS_Y, -32768), (EV_KEY, BTN_TL, 1), (EV_SYN, SYN_REPORT, 0)])
    assert g.command(0.0).clutch
    g.feed([(EV_SYN, SYN_DROPPED, 0), (EV_KEY, BTN_START, 1), (EV_ABS, ABS_X, 32767)])
    c = g.command(0.0)
    assert not c.clutch and np.all(c.linear == 0) and c.events == ()  # ignored until SYN_REPORT
    g.feed([(EV_SYN, SYN_REPORT, 0), (EV_ABS, ABS_X, 32767)])
    assert g.command(0.0).linear[1] == -1.0


class FakeEvdev:
    """Yields recorded batches like evdev's InputDevice.read(): a generator that raises
    BlockingIOError when iterated with nothing queued, and OSError(ENODEV) once unplugged."""

    def __init__(self, batches: list[list[Any]]) -> None:
        self.batches = batches
        self.unplugged = False
        self.closed = 0

    def read(self) -> Iterator[Any]:
        if self.unplugged:
            raise OSError(errno.ENODEV, "No such device")
        if not self.batches:
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        yield from self.batches.pop(0)

    def close(self) -> None:
        self.closed += 1


def test_gamepad_device_drains_batches_and_disconnects() -> None:
    ev = SimpleNamespace  # evdev InputEvent-like objects are accepted as well as tuples
    source = FakeEvdev(
        [
            [ev(type=EV_KEY, code=BTN_START, value=1), ev(type=EV_SYN, code=SYN_REPORT, value=0)],
            [(EV_ABS, ABS_Y, -32768), (EV_KEY, BTN_TL, 1), (EV_SYN, SYN_REPORT, 0)],
        ]
    )
    clock = FakeClock(7.0)
    d = GamepadDevice(source, clock=clock)
    c = d.poll(0.0)  # both batches read in one poll
    assert c.events == (E.START,) and c.clutch and c.linear[0] == 1.0 and c.stamp == 7.0
    c = d.poll(0.0)  # nothing queued: state held, no events
    assert c.events == () and c.clutch and c.linear[0] == 1.0

    source.unplugged = True
    with pytest.raises(DeviceDisconnectedError, match="No such device"):
        d.poll(0.0)
    d.close()
    d.close()
    assert source.closed == 1


def test_gamepad_open_picks_a_gamepad_with_device_ranges(monkeypatch: pytest.MonkeyPatch) -> None:
    info = SimpleNamespace

    class InputDevice(FakeEvdev):
        caps = {
            "/dev/input/event0": {EV_KEY: [30, 31]},  # a keyboard
            "/dev/input/event1": {EV_ABS: [ABS_X, ABS_Y]},  # a touchpad: axes, no gamepad button
            "/dev/input/event2": {EV_ABS: [ABS_X, ABS_Y, ABS_Z], EV_KEY: [BTN_SOUTH, BTN_TL]},
        }
        opened: list[InputDevice] = []

        def __init__(self, path: str) -> None:
            super().__init__([[(EV_ABS, ABS_Z, 1023)]])
            self.path = path
            InputDevice.opened.append(self)

        def capabilities(self, absinfo: bool = True) -> dict[int, list[Any]]:
            caps = self.caps[self.path]
            if not absinfo:
                return caps
            ranges = {ABS_X: info(min=0, max=255), ABS_Y: info(min=0, max=255), ABS_Z: info(min=0, max=1023)}
            return {**caps, EV_ABS: [(code, ranges[code]) for code in caps.get(EV_ABS, [])]}

    fake = SimpleNamespace(list_devices=lambda: sorted(InputDevice.caps), InputDevice=InputDevice)
    monkeypatch.setitem(sys.modules, "evdev", fake)
    d = GamepadDevice.open()
    assert InputDevice.opened[-1].path == "/dev/input/event2"
    assert [x.closed for x in InputDevice.opened] == [1, 1, 0]  # the others are closed again
    assert d.state.axis_ranges[ABS_Z] == (0, 1023) and d.state.axis_ranges[ABS_X] == (0, 255)
    assert d.poll(0.0).grip == 1.0  # full trigger on the device's own range

    del InputDevice.caps["/dev/input/event2"]
    with pytest.raises(RuntimeError, match="no gamepad found"):
        GamepadDevice.open()


def test_gamepad_without_evdev_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "evdev", None)
    with pytest.raises(RuntimeError, match="pip install evdev"):
        GamepadDevice.open()
    with pytest.raises(RuntimeError, match="pip install evdev"):
        make_device("gamepad", path="/dev/input/event0")


# --------------------------------------------------------------------------------------------------
# Hand pose, composite, factory


def test_handpose_latest_and_stale() -> None:
    clock = FakeClock(50.0)
    h = HandPoseDevice(clock=clock)
    c = h.poll(0.0)
    assert c.hand_keypoints is None and np.all(c.linear == 0) and not c.clutch and c.stamp == 50.0
    h.feed(_keypoints(0.0), stamp=3.0)
    h.feed(_keypoints(1.0), stamp=3.1)
    c = h.poll(0.0)
    assert np.array_equal(c.hand_keypoints, _keypoints(1.0)) and c.stamp == 3.1
    assert c.problems() == [] and np.all(c.linear == 0) and not c.clutch
    clock.t = 50.5
    assert h.poll(0.0).hand_keypoints is not None
    clock.t = 50.51
    assert h.poll(0.0).hand_keypoints is None  # stale: the session holds the hand
    h.feed(_keypoints(2.0), stamp=9.0)
    assert np.array_equal(h.poll(0.0).hand_keypoints, _keypoints(2.0))

    bad = _keypoints()
    bad[0, 0] = np.inf
    h.feed(bad, stamp=9.1)  # kept: the session reports it
    assert h.poll(0.0).problems() == ["hand_keypoints are not finite"]
    with pytest.raises(ValueError, match=r"\(21, 3\)"):
        h.feed(np.zeros((20, 3)), stamp=9.2)
    h.close()
    with pytest.raises(DeviceDisconnectedError):
        h.poll(0.0)


def test_composite_takes_arm_from_first_and_hand_from_second() -> None:
    arm = ReplayDevice.from_records(
        [{"t": 0.0, "linear": [0.0, 0.0, 1.0], "grip": 0.5, "clutch": True, "events": ["start"]}],
        at_end="disconnect",
    )
    hand = ReplayDevice.from_records(
        [{"t": 0.0, "hand_keypoints": _keypoints().tolist(), "events": ["quit"]}]
    )
    d = CompositeDevice(arm, hand)
    assert d.name == "replay+replay"
    c = d.poll(0.1)
    assert c.linear.tolist() == [0.0, 0.0, 1.0] and c.grip == 0.5 and c.clutch
    assert c.events == (E.START,)  # the hand's events are not taken
    assert np.array_equal(c.hand_keypoints, _keypoints())
    with pytest.raises(DeviceDisconnectedError):
        d.poll(1.0)  # the arm's end disconnects the composite
    d.close()
    with pytest.raises(DeviceDisconnectedError):
        hand.poll(0.2)  # closed with it


def test_make_device_kinds_and_errors(tmp_path: Path, pipe: tuple[int, int]) -> None:
    assert DEVICE_KINDS == ("keyboard", "spacemouse", "gamepad", "handpose", "replay")
    with pytest.raises(ValueError, match="unknown device kind 'joystick'") as info:
        make_device("joystick")
    for kind in DEVICE_KINDS:
        assert kind in str(info.value)

    path = tmp_path / "r.jsonl"
    write_replay(path, SCRIPT)
    replay = make_device("replay", path=path, at_end="disconnect")
    assert isinstance(replay, ReplayDevice) and replay.at_end == "disconnect"
    assert replay.poll(0.0).events == (E.START,)

    kb = make_device("keyboard", stream=pipe[0], hold=0.3)
    assert isinstance(kb, KeyboardDevice) and kb.hold == 0.3
    kb.close()
    hand = make_device("handpose", stale_after=1.0)
    assert isinstance(hand, HandPoseDevice) and hand.stale_after == 1.0
    for d in (replay, kb, hand):
        assert isinstance(d, TeleopDevice)
    with pytest.raises(TypeError):
        make_device("handpose", bogus=1)
