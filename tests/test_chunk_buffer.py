"""ChunkBuffer: chunks anchored at their observation's step, for inference beside a control loop."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from dexhier import vocabulary as V
from policies.low_level import ChunkBuffer, LowLevelPolicy

ROOT = Path(__file__).resolve().parents[1]
H, A = 6, 3


def chunk(k: int, horizon: int = H) -> np.ndarray:
    """Chunk k: action i of it is (k, i, k + i), so every served action names its source."""
    i = np.arange(horizon, dtype=np.float64)
    return np.stack([np.full(horizon, k), i, k + i], axis=1)


def test_newest_chunk_from_the_current_step_matches_the_queue_of_select_action():
    buf = ChunkBuffer(exec_steps=3)
    served, k = [], 0
    for _ in range(7):
        if buf.remaining() == 0:
            buf.add(chunk(k), buf.step)
            k += 1
        served.append(tuple(buf.pop()[:2]))
    assert served == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0)]


def test_a_late_chunk_is_used_from_the_current_step_not_replayed():
    buf = ChunkBuffer(exec_steps=4)
    buf.add(chunk(0), 0)
    assert [buf.pop()[1] for _ in range(3)] == [0, 1, 2]
    assert buf.remaining() == 1
    start = buf.step  # inference starts from the observation of step 3 ...
    buf.pop()  # ... and takes two control periods: steps 3 and 4 still run on chunk 0
    buf.pop()
    assert buf.add(chunk(1), start) == 3
    assert tuple(buf.pop()[:2]) == (1, 2)  # step 5 = chunk 1's action 2
    assert buf.remaining() == 4 - 3
    assert buf.covered() == H - 3


def test_a_chunk_outlives_exec_steps_up_to_its_horizon_then_the_loop_starves():
    buf = ChunkBuffer(exec_steps=2)
    buf.add(chunk(0), 0)
    assert [buf.pop()[1] for _ in range(H)] == list(range(H))
    assert buf.remaining() == buf.covered() == 0
    assert buf.pop() is None


def test_a_starved_loop_anchors_the_next_chunk_at_the_current_step():
    """No action served since the observation: the robot held still, so nothing is skipped."""
    buf = ChunkBuffer(exec_steps=4)
    assert buf.pop() is None and buf.pop() is None
    assert buf.add(chunk(0), 0) == 2
    assert buf.pop()[1] == 0
    buf.clear()  # inputs went stale: plans dropped, steps keep counting
    assert buf.pop() is None
    start = buf.step
    buf.pop()
    assert buf.add(chunk(1), start) == 5
    assert tuple(buf.pop()[:2]) == (1, 0)


def test_temporal_ensemble_weights_newer_chunks_more():
    buf = ChunkBuffer(exec_steps=1, temporal_ensemble=True, ensemble_decay=0.5)
    buf.add(chunk(0), 0)
    assert np.allclose(buf.pop(), chunk(0)[0])
    buf.add(chunk(4), 1)
    w = np.exp(-0.5 * np.array([1.0, 0.0]))
    expected = (w[0] * chunk(0)[1] + w[1] * chunk(4)[0]) / w.sum()
    assert np.allclose(buf.pop(), expected)


def test_reset_and_bad_chunks():
    buf = ChunkBuffer(exec_steps=2)
    buf.add(chunk(0), 0)
    buf.pop()
    buf.reset()
    assert buf.step == 0 and buf.remaining() == 0 and buf.pop() is None
    with pytest.raises(ValueError, match="after the current step"):
        buf.add(chunk(0), 5)
    bad = chunk(0)
    bad[1, 1] = np.nan
    for c in (bad, np.zeros((0, A)), np.zeros(A)):
        with pytest.raises(ValueError, match="finite"):
            buf.add(c, 0)
    with pytest.raises(ValueError, match="exec_steps"):
        ChunkBuffer(exec_steps=0)


def test_concurrent_pop_and_add_serve_one_action_per_step():
    buf = ChunkBuffer(exec_steps=4, temporal_ensemble=False)
    served: list[tuple[int, np.ndarray | None]] = []
    stop = threading.Event()

    def control() -> None:
        for _ in range(1000):
            t = buf.step
            served.append((t, buf.pop()))
            time.sleep(0.0002)
        stop.set()

    def inference() -> None:
        k = 0
        while not stop.is_set():
            if buf.remaining() <= 1:
                buf.add(chunk(k, horizon=16), buf.step)
                k += 1
            time.sleep(0.0001)

    threads = [threading.Thread(target=control), threading.Thread(target=inference)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    steps = [t for t, _ in served]
    assert steps == list(range(1000))  # each step popped exactly once, in order
    actions = [a for _, a in served if a is not None]
    assert len(actions) > 900  # the refill keeps up
    assert all(a.shape == (3,) and a[2] == a[0] + a[1] for a in actions)


# ------------------------------------------------------------------ the same actions as select_action
def observation() -> dict[str, np.ndarray]:
    obs = {V.OBS_ARM_QPOS: np.zeros(6), V.OBS_HAND_QPOS: np.zeros(16), V.OBS_TOOL_TIP_GAP: np.array([0.01])}
    for cam in V.DEFAULT_CAMERAS:
        obs[V.rgb_key(cam)] = np.zeros((64, 64, 3), np.uint8)
    return obs


@pytest.mark.parametrize("ensemble", [False, True])
def test_used_synchronously_it_serves_exactly_what_select_action_does(monkeypatch, ensemble):
    policy = LowLevelPolicy.load(ROOT / "checkpoints" / "lowlevel", temporal_ensemble=ensemble)
    lower, upper = policy._lower, policy._upper
    rng = np.random.default_rng(0)
    chunks = [rng.uniform(lower, upper, (policy.config.horizon, len(lower))) for _ in range(40)]
    calls = iter(chunks)
    monkeypatch.setattr(policy, "_chunk", lambda *args: next(calls))
    obs, goal = observation(), None
    expected = [policy.select_action(obs, goal) for _ in range(20)]

    cfg = policy.config
    buf = ChunkBuffer(cfg.exec_steps, cfg.temporal_ensemble, cfg.ensemble_decay)
    calls = iter(chunks)
    got = []
    for _ in range(20):
        if ensemble or buf.remaining() == 0:
            buf.add(next(calls), buf.step)
        got.append(buf.pop())
    np.testing.assert_allclose(np.stack(got), np.stack(expected), rtol=0, atol=1e-12)
