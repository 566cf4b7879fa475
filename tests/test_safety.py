"""Unit tests of the safety supervisor (dexhier.safety): limits, staleness, e-stop, name mapping."""

import numpy as np
import pytest

from dexhier.safety import SafetyDecision, SafetyLimits, SafetySupervisor, Verdict
from dexhier.vocabulary import ARM_JOINTS, HAND_JOINTS
from sim.backend import ActionSpec

NAMES = ARM_JOINTS + HAND_JOINTS[:4]
N = len(NAMES)
LOWER = np.linspace(-3.0, -0.5, N)
UPPER = np.linspace(0.5, 3.0, N)
VMAX = np.linspace(0.5, 3.0, N)
MARGIN = 0.05
STALE = 0.1
LO, HI = LOWER + MARGIN, UPPER - MARGIN
MID = (LOWER + UPPER) / 2


def make_limits(**kw) -> SafetyLimits:
    args = {"names": NAMES, "lower": LOWER, "upper": UPPER, "max_velocity": VMAX}
    return SafetyLimits(**(args | {"margin": MARGIN, "stale_after": STALE} | kw))


def make_supervisor(q0: np.ndarray = MID, t: float = 0.0) -> SafetySupervisor:
    sup = SafetySupervisor(make_limits())
    sup.update_state(NAMES, q0, t)
    return sup


def assert_within_rate(command: np.ndarray, base: np.ndarray, dt: float) -> None:
    step = VMAX * float(np.clip(dt, 0.0, STALE))
    assert np.all(np.abs(command - base) <= step + 1e-12)


# --- Limits --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        {"lower": LOWER[:-1]},
        {"upper": np.where(np.arange(N) == 2, LOWER[2], UPPER)},
        {"max_velocity": np.where(np.arange(N) == 0, 0.0, VMAX)},
        {"lower": np.where(np.arange(N) == 1, np.nan, LOWER)},
        {"upper": np.full(N, np.inf)},
        {"names": NAMES[:-1] + NAMES[:1]},
        {"margin": -0.1},
        {"margin": 2.0},
        {"stale_after": 0.0},
    ],
)
def test_limits_reject_inconsistent_values(kw):
    with pytest.raises(ValueError):
        make_limits(**kw)


def test_limits_from_action_spec():
    spec = ActionSpec(names=NAMES, lower=LOWER, upper=UPPER)
    limits = SafetyLimits.from_action_spec(spec, 1.5, margin=0.01)
    assert limits.names == NAMES and limits.margin == 0.01 and limits.stale_after == STALE
    np.testing.assert_array_equal(limits.max_velocity, np.full(N, 1.5))
    np.testing.assert_array_equal(SafetyLimits.from_action_spec(spec, VMAX).max_velocity, VMAX)
    with pytest.raises(ValueError):
        SafetyLimits.from_action_spec(spec, np.ones(N - 1))


# --- Clamping and rate limiting ------------------------------------------------------------------


def test_random_commands_stay_in_band_and_under_max_velocity():
    rng = np.random.default_rng(0)
    sup = make_supervisor(t=0.0)
    sup.tick(0.0)  # the initial hold: the first command is rate-limited from the measured position
    t, base, base_t = 0.0, MID.copy(), 0.0
    verdicts = set()
    for _ in range(400):
        t += rng.choice([rng.uniform(0.0, 0.06), rng.uniform(0.06, 0.3)], p=[0.85, 0.15])
        measured = rng.uniform(LO, HI)
        sup.update_state(NAMES, measured, t)
        hold = sup.tick(t)
        if hold is not None:  # a hold is a command like any other: in band, within the rate of the last
            assert hold.verdict is Verdict.HELD_STALE and hold.request is None
            assert np.all(hold.command >= LO) and np.all(hold.command <= HI)
            assert_within_rate(hold.command, base, t - base_t)
            step = VMAX * STALE  # a stale hold comes more than STALE after the last send
            np.testing.assert_allclose(hold.command, np.clip(measured, base - step, base + step))
            base, base_t = hold.command, t
        order = rng.permutation(N)
        raw = rng.uniform(LOWER - 1.0, UPPER + 1.0)
        if rng.random() < 0.3:  # sometimes a reachable request
            raw = np.clip(base + rng.uniform(-0.01, 0.01, N), LO, HI)
        t_cmd = t + rng.uniform(0.0, 0.01)
        d = sup.submit([NAMES[i] for i in order], raw[order], t_cmd)
        verdicts.add(d.verdict)
        np.testing.assert_array_equal(d.request, raw)
        assert d.verdict in (Verdict.FORWARDED, Verdict.CLAMPED)
        assert np.all(d.command >= LO) and np.all(d.command <= HI)
        assert_within_rate(d.command, base, t_cmd - base_t)
        np.testing.assert_array_equal(d.clamped, d.command != raw)
        assert (d.verdict is Verdict.CLAMPED) == bool(d.clamped.any()) == bool(d.reasons)
        for i in np.flatnonzero(d.clamped):
            assert any(r.endswith(f": {NAMES[i]}") for r in d.reasons)
        base, base_t, t = d.command, t_cmd, t_cmd
    assert verdicts == {Verdict.FORWARDED, Verdict.CLAMPED}


def test_reasons_distinguish_position_and_rate_limits():
    sup = make_supervisor()
    sup.submit(NAMES, MID, 0.0)
    raw = MID.copy()
    raw[0] = UPPER[0] + 1.0  # beyond the limit, and far
    raw[2] = MID[2] + 0.01 + VMAX[2] * 0.05  # inside the limits, too fast for dt = 0.05
    d = sup.submit(NAMES, raw, 0.05)
    assert d.verdict is Verdict.CLAMPED
    assert d.reasons == (f"position limit: {NAMES[0]}", f"rate limit: {NAMES[0]}", f"rate limit: {NAMES[2]}")
    np.testing.assert_array_equal(np.flatnonzero(d.clamped), [0, 2])
    assert d.command[2] == pytest.approx(MID[2] + VMAX[2] * 0.05)


def test_position_limits_win_when_measured_position_is_outside_the_band():
    q0 = MID.copy()
    q0[1] = UPPER[1] - MARGIN / 4  # inside the hard limit, outside the margin band
    sup = make_supervisor(q0)
    d = sup.submit(NAMES, q0, 0.0)
    assert d.command[1] == HI[1] and f"position limit: {NAMES[1]}" in d.reasons
    np.testing.assert_array_equal(np.delete(d.command, 1), np.delete(q0, 1))


# --- Staleness -----------------------------------------------------------------------------------


def test_stale_command_gives_one_hold_at_the_measured_position():
    sup = make_supervisor()
    assert sup.submit(NAMES, MID, 1.0).verdict is Verdict.FORWARDED
    measured = MID + 0.01
    sup.update_state(NAMES, measured, 1.02)
    holds = []
    for k in range(1, 40):  # 5 ms ticks over 0.195 s
        now = 1.0 + 0.005 * k
        d = sup.tick(now)
        if d is not None:
            holds.append((now, d))
    assert len(holds) == 1
    now, hold = holds[0]
    assert STALE < now - 1.0 <= STALE + 0.005 + 1e-9  # within one stale period, at the first tick after
    assert hold.verdict is Verdict.HELD_STALE and hold.reasons[0].startswith("stale: last command")
    np.testing.assert_array_equal(hold.command, measured)
    assert hold.request is None and not hold.clamped.any() and sup.holding

    # A fresh command re-arms the watchdog; it is rate-limited from the measured position.
    t1 = now + 0.05
    d = sup.submit(NAMES, UPPER, t1)
    assert not sup.holding and d.verdict is Verdict.CLAMPED
    assert_within_rate(d.command, measured, t1 - now)
    np.testing.assert_allclose(d.command, np.minimum(measured + VMAX * (t1 - now), HI))
    assert sup.tick(t1 + 0.05) is None
    again = sup.tick(t1 + 0.11)
    assert again is not None and again.verdict is Verdict.HELD_STALE


def test_hold_before_any_command_and_nothing_without_state():
    sup = SafetySupervisor(make_limits())
    assert sup.tick(0.0) is None
    d = sup.submit(NAMES, MID, 0.0)
    assert d.verdict is Verdict.REJECTED and d.reasons == ("no joint state yet",) and d.command is None
    sup.update_state(NAMES, MID, 0.0)
    hold = sup.tick(0.01)
    assert hold is not None and hold.reasons == ("stale: no command yet",)
    np.testing.assert_array_equal(hold.command, MID)
    assert sup.tick(0.02) is None


def test_rejected_commands_do_not_refresh_the_watchdog():
    sup = make_supervisor()
    sup.submit(NAMES, MID, 0.0)
    bad = MID.copy()
    bad[3] = np.nan
    for k in range(1, 30):
        assert sup.submit(NAMES, bad, 0.01 * k).verdict is Verdict.REJECTED
    assert sup.tick(0.3) is not None


# --- E-stop --------------------------------------------------------------------------------------


def test_estop_latches_until_reset():
    sup = make_supervisor()
    sup.submit(NAMES, MID, 0.0)
    measured = MID - 0.005  # within the rate of the last command (>= 0.5 rad/s * 0.02 s)
    sup.update_state(NAMES, measured, 0.01)
    hold = sup.estop(True, 0.02)
    assert hold is not None and hold.verdict is Verdict.HELD_ESTOP and hold.reasons == ("e-stop latched",)
    np.testing.assert_array_equal(hold.command, measured)
    assert sup.estopped and sup.holding

    target = MID + 0.001
    d = sup.submit(NAMES, target, 0.03)
    assert d.verdict is Verdict.HELD_ESTOP and d.command is None
    np.testing.assert_array_equal(d.request, target)
    assert sup.tick(0.5) is None
    assert sup.estop(False, 0.6) is None and sup.estopped
    assert sup.estop(True, 0.7) is None  # already latched: the hold was sent at latch time
    assert sup.submit(NAMES, target, 0.8).command is None

    current = MID + 0.3
    sup.update_state(NAMES, current, 0.9)
    assert sup.reset_estop(1.0) is True and not sup.estopped
    assert sup.reset_estop(1.0) is False
    assert sup.tick(1.5) is None  # still holding from the e-stop: no second hold
    # The release does not re-anchor on the measured state: the rate limit starts at the hold.
    d = sup.submit(NAMES, LOWER, 1.55)
    assert d.verdict is Verdict.CLAMPED
    np.testing.assert_allclose(d.command, np.maximum(measured - VMAX * STALE, LO))


def test_estop_without_state_and_non_finite_time():
    sup = SafetySupervisor(make_limits())
    hold = sup.estop(True, 0.0)
    assert hold.command is None and "no joint state to hold at" in hold.reasons
    with pytest.raises(ValueError):
        sup.tick(float("nan"))
    with pytest.raises(ValueError):
        sup.reset_estop(float("inf"))


# --- Name mapping and validation -----------------------------------------------------------------


def test_name_order_does_not_matter():
    rng = np.random.default_rng(0)
    a, b = make_supervisor(), make_supervisor()
    for k in range(20):
        raw = rng.uniform(LOWER - 0.5, UPPER + 0.5)
        order = rng.permutation(N)
        da = a.submit(NAMES, raw, 0.05 * k)
        db = b.submit([NAMES[i] for i in order], raw[order], 0.05 * k)
        assert da.verdict is db.verdict and da.reasons == db.reasons
        np.testing.assert_array_equal(da.command, db.command)
        np.testing.assert_array_equal(da.request, db.request)


@pytest.mark.parametrize(
    "edit, reason",
    [
        (lambda n, q: (n + ["pinky_mcp"], np.append(q, 0.0)), "unknown joints: pinky_mcp"),
        (lambda n, q: (n[:2] + n[4:], np.delete(q, [2, 3])), f"missing joints: {NAMES[2]}, {NAMES[3]}"),
        (lambda n, q: (n, np.where(np.arange(N) == 3, np.nan, q)), "NaN in request: wrist_1_joint"),
        (lambda n, q: (n, np.where(np.arange(N) == 6, np.inf, q)), f"inf in request: {NAMES[6]}"),
        (lambda n, q: (n[:-1] + n[:1], q), f"duplicate joints: {NAMES[0]}"),
        (lambda n, q: (n, q[:-1]), f"malformed command: {N} names, {N - 1} targets"),
    ],
)
def test_invalid_commands_are_rejected_with_the_joint_names(edit, reason):
    sup, ref = make_supervisor(), make_supervisor()
    names, q = edit(list(NAMES), MID + 0.3)
    d = sup.submit(names, q, 0.05)
    assert d.verdict is Verdict.REJECTED and d.command is None and reason in d.reasons
    assert not d.clamped.any()
    # Nothing changed: the next valid command behaves as if the rejected one never came.
    np.testing.assert_array_equal(
        sup.submit(NAMES, UPPER, 0.1).command, ref.submit(NAMES, UPPER, 0.1).command
    )


def test_rejected_request_is_recorded_in_joint_order():
    sup = make_supervisor()
    names = [NAMES[1], NAMES[0], "extra"]
    d = sup.submit(names, np.array([0.1, 0.2, 0.3]), 0.0)
    assert d.request[0] == 0.2 and d.request[1] == 0.1 and np.isnan(d.request[2:]).all()


# --- Joint state ---------------------------------------------------------------------------------


def test_state_update_by_name_ignores_nan_and_unknown_names():
    sup = SafetySupervisor(make_limits())
    sup.update_state(NAMES[:3], MID[:3], 0.0)
    assert sup.state is None
    assert sup.submit(NAMES, MID, 0.0).reasons == ("no joint state yet",)
    sup.update_state(("other_robot_joint",) + NAMES[3:], np.append(9.0, MID[3:]), 0.01)
    np.testing.assert_array_equal(sup.state, MID)
    assert sup.last_state_error is None

    q = MID + 0.1
    q[4] = np.nan
    sup.update_state(NAMES, q, 0.02)
    assert NAMES[4] in sup.last_state_error
    expected = MID + 0.1
    expected[4] = MID[4]
    np.testing.assert_array_equal(sup.state, expected)
    sup.update_state(NAMES[:2], MID[:2], 0.03)  # the others keep their previous value
    expected[:2] = MID[:2]
    np.testing.assert_array_equal(sup.state, expected)
    assert sup.last_state_error is None

    sup.update_state(NAMES, MID[:-1], 0.04)  # malformed: ignored entirely
    assert "malformed" in sup.last_state_error
    np.testing.assert_array_equal(sup.state, expected)


# --- Stamps --------------------------------------------------------------------------------------


def test_out_of_order_and_non_finite_stamps_are_rejected():
    sup = make_supervisor()
    first = sup.submit(NAMES, MID + 0.01, 1.0)
    assert first.verdict is Verdict.FORWARDED
    d = sup.submit(NAMES, MID, 1.0 - 1.5 * STALE)
    assert d.verdict is Verdict.REJECTED and d.reasons[0].startswith("out of order")
    np.testing.assert_array_equal(d.request, MID)
    late = sup.submit(NAMES, UPPER, 1.0 - STALE / 2)  # slightly late: accepted, but cannot move (dt = 0)
    assert late.verdict is Verdict.CLAMPED
    np.testing.assert_array_equal(late.command, first.command)
    for stamp in (float("nan"), float("inf")):
        bad = sup.submit(NAMES, MID, stamp)
        assert bad.verdict is Verdict.REJECTED and bad.reasons[0].startswith("non-finite stamp")


def test_decisions_are_immutable():
    d = make_supervisor().submit(NAMES, MID, 0.0)
    assert isinstance(d, SafetyDecision) and d.sent and d.verdict == "forwarded"
    for arr in (d.command, d.request, d.clamped):
        with pytest.raises(ValueError):
            arr[0] = 1.0
