"""Min-max normalization of vectors to [-1, 1], with statistics stored as JSON beside the weights.

Diffusion policies normalize actions and proprio per dimension to [-1, 1] (Diffusion Policy's
"limits" mode). A dimension whose range is tiny (constant in the data) is only shifted, so it maps
to 0 instead of blowing noise up.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

_MIN_RANGE = 1e-4


@dataclass
class MinMaxNormalizer:
    """Per-key, per-dimension ``x -> 2 (x - lo) / (hi - lo) - 1``; ``lo``/``hi`` are float64 arrays."""

    lo: dict[str, np.ndarray]
    hi: dict[str, np.ndarray]

    @classmethod
    def fit(cls, data: Mapping[str, np.ndarray]) -> MinMaxNormalizer:
        """Statistics of ``data[key]`` of shape (N, D) each."""
        lo, hi = {}, {}
        for key, arr in data.items():
            a = np.asarray(arr, dtype=np.float64).reshape(len(arr), -1)
            if not np.all(np.isfinite(a)):
                raise ValueError(f"normalization data for {key!r} has non-finite values")
            lo[key], hi[key] = a.min(0), a.max(0)
        return cls(lo, hi)

    def union(self, other: MinMaxNormalizer) -> MinMaxNormalizer:
        """Statistics that cover both ranges (fine-tuning on data outside the start's range)."""
        if set(self.lo) != set(other.lo):
            raise ValueError(f"normalizers of other keys: {sorted(self.lo)} vs {sorted(other.lo)}")
        lo = {k: np.minimum(self.lo[k], other.lo[k]) for k in self.lo}
        return MinMaxNormalizer(lo, {k: np.maximum(self.hi[k], other.hi[k]) for k in self.hi})

    def _scale(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        if key not in self.lo:
            raise KeyError(f"no normalization statistics for {key!r}; have {sorted(self.lo)}")
        lo, hi = self.lo[key], self.hi[key]
        half = np.maximum((hi - lo) / 2, _MIN_RANGE)
        return (lo + hi) / 2, half

    def normalize(self, key: str, x: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        mid, half = self._scale(key)
        if isinstance(x, torch.Tensor):
            return (x - torch.as_tensor(mid, dtype=x.dtype)) / torch.as_tensor(half, dtype=x.dtype)
        return (np.asarray(x) - mid) / half

    def denormalize(self, key: str, x: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        mid, half = self._scale(key)
        if isinstance(x, torch.Tensor):
            return x * torch.as_tensor(half, dtype=x.dtype) + torch.as_tensor(mid, dtype=x.dtype)
        return np.asarray(x) * half + mid

    def to_json(self) -> dict:
        return {k: {"min": self.lo[k].tolist(), "max": self.hi[k].tolist()} for k in self.lo}

    @classmethod
    def from_json(cls, doc: Mapping[str, Mapping[str, list]]) -> MinMaxNormalizer:
        try:
            lo = {k: np.asarray(v["min"], dtype=np.float64) for k, v in doc.items()}
            hi = {k: np.asarray(v["max"], dtype=np.float64) for k, v in doc.items()}
        except (KeyError, TypeError) as err:
            raise ValueError(f"malformed normalization statistics: {err!r}") from err
        return cls(lo, hi)
