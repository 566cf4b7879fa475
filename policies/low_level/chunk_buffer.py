"""Action chunks on a timeline of control steps, for running inference beside a fixed-rate control loop.

:meth:`LowLevelPolicy.select_action` predicts and executes in one call, so a slow prediction
stretches that control step. A robot loop instead pops one action per control period and lets
inference run elsewhere; a chunk then arrives a few steps after the observation it was predicted
from. :class:`ChunkBuffer` keeps each chunk anchored at the step of its observation (``chunk[i]`` is
the target of step ``start + i``), so a late chunk is used from the current step on, never
replayed from its beginning. Used synchronously (one ``add`` at the current step whenever
:meth:`remaining` is 0, or every step when ensembling, then one ``pop``) it gives exactly the actions
of ``select_action``.

Thread-safe: the control loop and the inference thread may call any method concurrently.
"""

from __future__ import annotations

import threading

import numpy as np


class ChunkBuffer:
    """Predicted chunks (H, A) of absolute joint targets (rad), indexed by control step.

    Args:
        exec_steps: actions executed per chunk before the next one is due (:meth:`remaining`).
            A chunk stays usable up to its horizon, so a late successor delays replanning instead
            of starving the loop.
        temporal_ensemble: average the overlapping chunks at every step, weights
            ``exp(-ensemble_decay * age)`` with age in steps since the chunk's observation (newest
            weighted most), as ``LowLevelPolicy.select_action`` does; else the newest chunk wins.
        ensemble_decay: decay of the ensemble weights, 1/step.
    """

    def __init__(self, exec_steps: int, temporal_ensemble: bool = False, ensemble_decay: float = 0.1) -> None:
        if exec_steps < 1 or ensemble_decay < 0:
            raise ValueError("exec_steps must be >= 1 and ensemble_decay >= 0")
        self.exec_steps = exec_steps
        self.temporal_ensemble = temporal_ensemble
        self.ensemble_decay = ensemble_decay
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Forget every chunk and restart the step count at 0 (a new episode)."""
        with self._lock:
            self._step = 0
            self._chunks: list[tuple[int, np.ndarray]] = []
            self._last_served = -1

    def clear(self) -> None:
        """Drop the chunks but keep counting steps (inputs went stale: the old plans are void)."""
        with self._lock:
            self._chunks = []

    @property
    def step(self) -> int:
        """Index of the next control step (how many times :meth:`pop` was called since reset)."""
        with self._lock:
            return self._step

    def add(self, chunk: np.ndarray, start_step: int) -> int:
        """Add a chunk predicted from the observation taken when :attr:`step` was ``start_step``.

        If no action was served since that observation, the robot has been holding still, so the
        chunk starts at the current step instead (its first actions are not skipped). Returns the
        step the chunk is anchored at.
        """
        chunk = np.asarray(chunk, dtype=np.float64)
        if chunk.ndim != 2 or len(chunk) == 0 or not np.all(np.isfinite(chunk)):
            raise ValueError(f"a chunk must be a finite (H, A) array, got shape {chunk.shape}")
        with self._lock:
            if start_step > self._step:
                raise ValueError(f"chunk starts at step {start_step}, after the current step {self._step}")
            start = self._step if self._last_served < start_step else start_step
            if self.temporal_ensemble:
                self._chunks = [(s, c) for s, c in self._chunks if self._step - s < len(c)]
                self._chunks.append((start, chunk))
            else:
                self._chunks = [(start, chunk)]
            return start

    def remaining(self) -> int:
        """Steps left, from the current one, in the newest chunk's first ``exec_steps`` (0 if none)."""
        with self._lock:
            if not self._chunks:
                return 0
            return max(0, self._chunks[-1][0] + self.exec_steps - self._step)

    def covered(self) -> int:
        """Steps, from the current one, that the newest chunk still covers up to its horizon (0 if none)."""
        with self._lock:
            if not self._chunks:
                return 0
            start, chunk = self._chunks[-1]
            return max(0, start + len(chunk) - self._step)

    def pop(self) -> np.ndarray | None:
        """The action (A,) of the current step, then advance one step; None if no chunk covers it."""
        with self._lock:
            t = self._step
            self._step += 1
            live = [(s, c) for s, c in self._chunks if 0 <= t - s < len(c)]
            if not live:
                return None
            self._last_served = t
            if not self.temporal_ensemble:
                s, c = live[-1]
                return c[t - s].copy()
            ages = np.array([t - s for s, _ in live], dtype=np.float64)
            w = np.exp(-self.ensemble_decay * ages)
            preds = np.stack([c[t - s] for s, c in live])
            return (w[:, None] * preds).sum(0) / w.sum()
