"""Training samples for the low-level policy from episode datasets, with hindsight goals.

Every step of every episode is a sample: the proprio history ending at ``t``, the current images,
the chunk of actions actually sent from ``t`` on (padded with the episode's last action), and a
goal: the goal-camera image and tip gap of a future frame ``t + U{min_offset..max_offset}`` of the
same episode (clipped to its last frame, so a goal always exists). Episodes of several datasets
(expert or teleop) are concatenated in memory; images stay uint8.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dexhier import vocabulary as V
from dexhier.episodes import EpisodeDataset
from policies.low_level.config import PolicyConfig, RobotLayout

_AUX_OBJECT = "privileged/object_pos"
_AUX_TIP = "privileged/tip_center"


def _cameras(cfg: PolicyConfig) -> list[str]:
    return sorted(set(cfg.cameras) | {cfg.goal_camera})


def _load_episode(cfg: PolicyConfig, ep, root) -> dict[str, np.ndarray]:
    """One episode's proprio (T, P), actions sent (T, A) and camera images (T, S, S, 3)."""
    s = cfg.image_size
    out = {}
    try:
        out["proprio"] = np.concatenate(
            [ep[V.OBS_ARM_QPOS], ep[V.OBS_HAND_QPOS], ep[V.OBS_TOOL_TIP_GAP].reshape(len(ep), 1)], axis=1
        )
        out["action"] = np.asarray(ep[V.ACTION])
        # Optional ground truth of the twin for the auxiliary localization losses (absent in teleop data).
        # A step's record is taken after its action: the state an image shows is the previous record's.
        if _AUX_OBJECT in ep.keys and _AUX_TIP in ep.keys:
            prev = np.maximum(np.arange(len(ep)) - 1, 0)
            out["aux"] = np.concatenate([ep[_AUX_OBJECT][prev], ep[_AUX_TIP][prev]], axis=1)
        else:
            out["aux"] = np.full((len(ep), 6), np.nan)
        for cam in _cameras(cfg):
            img = ep[V.rgb_key(cam)]
            if img.shape[1:] != (s, s, 3):
                raise ValueError(
                    f"{root}: {V.rgb_key(cam)} images are {img.shape[1:]}, the policy uses {s}x{s}"
                )
            out[cam] = img
    except KeyError as err:
        raise ValueError(f"{root}: episode {ep.index} lacks a key the policy needs: {err}") from err
    return out


@dataclass(frozen=True)
class GoalSampling:
    """Hindsight goal offsets, in control steps after the sample's step."""

    min_offset: int = 1
    max_offset: int = 40

    def __post_init__(self) -> None:
        if not 1 <= self.min_offset <= self.max_offset:
            raise ValueError("need 1 <= min_offset <= max_offset")


class ChunkDataset:
    """All steps of the given datasets, sampled into batches of numpy arrays.

    Raises ``ValueError`` when datasets disagree on joint names, or lack a key the policy needs.
    """

    def __init__(self, roots: Sequence[str | Path], cfg: PolicyConfig, episodes: Sequence[int] | None = None):
        layout, chunks = self._load(roots, cfg)
        if episodes is not None:
            chunks = [chunks[i] for i in episodes]
        self._build(cfg, layout, chunks)

    @classmethod
    def split(
        cls, roots: Sequence[str | Path], cfg: PolicyConfig, val_fraction: float, seed: int
    ) -> tuple[ChunkDataset, ChunkDataset | None]:
        """(train, validation) sets from one read of the data; episodes are assigned at random."""
        layout, chunks = cls._load(roots, cfg)
        n_val = int(round(val_fraction * len(chunks)))
        order = np.random.default_rng(seed).permutation(len(chunks))

        def make(idx: np.ndarray) -> ChunkDataset:
            ds = cls.__new__(cls)
            ds._build(cfg, layout, [chunks[i] for i in sorted(idx)])
            return ds

        return make(order[n_val:]), (make(order[:n_val]) if n_val else None)

    @staticmethod
    def _load(roots: Sequence[str | Path], cfg: PolicyConfig) -> tuple[RobotLayout, list[dict]]:
        if not roots:
            raise ValueError("no dataset given")
        layouts, chunks = [], []
        for source, root in enumerate(roots):
            ds = EpisodeDataset(root)
            layouts.append(RobotLayout.from_dataset_meta(ds.meta))
            for ep in ds:
                if len(ep) < 2:
                    continue
                chunks.append({**_load_episode(cfg, ep, root), "source": source})
        if not chunks:
            raise ValueError(f"no episodes with >= 2 steps in {list(map(str, roots))}")
        names = {(lay.arm_joints, lay.hand_joints) for lay in layouts}
        if len(names) != 1:
            raise ValueError(f"datasets have different joint names: {sorted(names)}")
        lower = np.max([lay.lower for lay in layouts], axis=0)  # the limits every dataset respects
        upper = np.min([lay.upper for lay in layouts], axis=0)
        return RobotLayout(layouts[0].arm_joints, layouts[0].hand_joints, tuple(lower), tuple(upper)), chunks

    def _build(self, cfg: PolicyConfig, layout: RobotLayout, chunks: list[dict]) -> None:
        self.cfg, self.layout = cfg, layout
        self.num_episodes = len(chunks)
        self.proprio = np.concatenate([c["proprio"] for c in chunks]).astype(np.float32)
        self.actions = np.concatenate([c["action"] for c in chunks]).astype(np.float32)
        self.aux = np.concatenate([c["aux"] for c in chunks]).astype(np.float32)
        """(N, 6) object position and tool-tip centre (m) that each step's images show; NaN if unknown."""
        self.images = {cam: np.concatenate([c[cam] for c in chunks]) for cam in _cameras(cfg)}
        lengths = np.array([len(c["proprio"]) for c in chunks])
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        self.ep_start = np.repeat(starts, lengths)
        self.ep_end = np.repeat(starts + lengths - 1, lengths)
        source = np.repeat([c["source"] for c in chunks], lengths)
        # Sampling weights that give every dataset the same share of a batch (``balanced``).
        counts = np.bincount(source)
        self._balanced_p = 1.0 / (counts[source] * len(np.unique(source)))

    def __len__(self) -> int:
        return len(self.proprio)

    def sample(
        self, batch: int, rng: np.random.Generator, goals: GoalSampling, balanced: bool = False
    ) -> dict[str, np.ndarray]:
        """A batch: proprio (B, T_o, P), images (B, C, S, S, 3), goal_image (B, S, S, 3),
        goal_gap (B, 1), actions (B, H, A); indices are clipped inside each sample's episode.
        ``balanced`` draws every dataset (``roots`` entry) equally often instead of every step."""
        cfg = self.cfg
        if balanced:
            idx = rng.choice(len(self), batch, p=self._balanced_p)
        else:
            idx = rng.integers(0, len(self), batch)
        start, end = self.ep_start[idx, None], self.ep_end[idx, None]
        hist = np.clip(idx[:, None] + np.arange(-cfg.obs_horizon + 1, 1), start, None)
        chunk = np.minimum(idx[:, None] + np.arange(cfg.horizon), end)
        offset = rng.integers(goals.min_offset, goals.max_offset + 1, batch)
        goal = np.minimum(idx + offset, end[:, 0])
        return {
            "proprio": self.proprio[hist],
            "images": np.stack([self.images[c][idx] for c in cfg.cameras], axis=1),
            "goal_image": self.images[cfg.goal_camera][goal],
            "goal_gap": self.proprio[goal, -1:],
            "actions": self.actions[chunk],
            "aux_object": self.aux[idx, :3],
            "aux_goal_tip": self.aux[goal, 3:],
        }


def augment_images(
    images: torch.Tensor, shift: int, jitter: float, generator: torch.Generator
) -> torch.Tensor:
    """Random shift by up to ``shift`` px (edge padding) and brightness / contrast / colour jitter.

    ``images``: float (N, 3, S, S) in [0, 1]; each image gets its own draw.
    """
    n, _, s, _ = images.shape
    if shift > 0:
        padded = F.pad(images, (shift,) * 4, mode="replicate")
        dx = torch.randint(0, 2 * shift + 1, (n,), generator=generator)
        dy = torch.randint(0, 2 * shift + 1, (n,), generator=generator)
        rows = (dy[:, None] + torch.arange(s))[:, None, :, None].expand(n, 3, s, s + 2 * shift)
        images = padded.gather(2, rows)
        cols = (dx[:, None] + torch.arange(s))[:, None, None, :].expand(n, 3, s, s)
        images = images.gather(3, cols)
    if jitter > 0:
        u = lambda *shape: (torch.rand(shape, generator=generator) * 2 - 1) * jitter  # noqa: E731
        mean = images.mean((1, 2, 3), keepdim=True)
        images = (images - mean) * (1 + u(n, 1, 1, 1)) + mean  # contrast
        images = images * (1 + u(n, 1, 1, 1)) * (1 + 0.25 * u(n, 3, 1, 1))  # brightness, colour
        images = images.clamp(0.0, 1.0)
    return images
