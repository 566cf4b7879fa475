"""The object-centric low level: score diffusion (BESO: EDM, 3 steps) over what perception measures.

Observation (all from label-free perception and the joint encoders, nothing privileged):
proprio ``q`` (A,), the perceived tip gap, the object relative to the tips (centre offset, width,
height, yaw as ``cos 4 psi, sin 4 psi`` for a square's symmetry), how stale the object estimate is,
and two farthest-point-sampled point sets (tool, object) relative to the tips, each encoded
DP3-style (shared per-point MLP, max-pool, LayerNorm).

Goal (from the high level or the oracle): the goal tip gap and the goal tips' position *relative
to the perceived object*, so the same goal moves with the object. A dropped goal (classifier-free
guidance, training dropout) is a learned null embedding.

Action: a chunk of H joint-target offsets from the measured joints, ``a_k - q_t`` (rad), executed
``exec_steps`` at a time. Shapes: ``(B, H, A)``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import nn

from policies.low_level.edm import SAMPLERS, EDMConfig

OBS_DIM_EXTRA = 1 + 3 + 2 + 2 + 2  # gap, object offset, width/height, yaw (cos, sin), age, valid
GOAL_DIM = 4  # goal gap, goal tips minus object (3)
ACTION_SPACES = ("joint", "tip")
POINT_SCALE = 0.1
"""Point offsets from the tips are divided by this (m) before the point encoder."""


@dataclass(frozen=True)
class OCConfig:
    """Sizes and sampling of the object-centric low level.

    Attributes:
        horizon, exec_steps: chunk length H and steps executed per chunk.
        n_points: points per set (tool, object).
        width, blocks: residual MLP denoiser width and number of FiLM blocks.
        point_width: DP3 encoder width (per point MLP 3 -> w/2 -> w, max-pool, LayerNorm).
        steps, sampler: EDM sampling steps and sampler.
        goal_dropout: probability of a dropped goal in training.
        cfg_lambda: classifier-free guidance weight at sampling (1 = plain conditional, one pass).
        use_points: feed the two point sets (else only the object summary).
        hold_after: with no tool state measured for more than this many frames (or the object never
            seen), the policy holds.
        action_space: ``joint`` (joint-target offsets) or ``tip`` (tool-tip position and yaw
            offsets plus hand joint offsets, arm joints by the expert's IK; ``tip_actions.py``).
    """

    horizon: int = 16
    exec_steps: int = 8
    n_points: int = 64
    width: int = 256
    blocks: int = 3
    point_width: int = 64
    steps: int = 3
    sampler: str = "ddim"
    goal_dropout: float = 0.1
    cfg_lambda: float = 1.0
    use_points: bool = True
    hold_after: int = 40
    action_space: str = "joint"
    edm: EDMConfig = field(default_factory=lambda: EDMConfig(sigma_max=20.0, loglogistic_scale=1.0))

    def __post_init__(self) -> None:
        if not 1 <= self.exec_steps <= self.horizon:
            raise ValueError(f"exec_steps must be in [1, horizon={self.horizon}], got {self.exec_steps}")
        if min(self.n_points, self.width, self.blocks, self.point_width, self.steps, self.hold_after) < 1:
            raise ValueError("n_points, width, blocks, point_width, steps and hold_after must be >= 1")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; valid: {', '.join(SAMPLERS)}")
        if not (math.isfinite(self.cfg_lambda) and 0.0 <= self.cfg_lambda <= 10.0):
            raise ValueError(f"cfg_lambda must be in [0, 10], got {self.cfg_lambda}")
        if not 0.0 <= self.goal_dropout < 1.0:
            raise ValueError("goal_dropout must be in [0, 1)")
        if self.action_space not in ACTION_SPACES:
            raise ValueError(f"unknown action_space {self.action_space!r}; valid: {', '.join(ACTION_SPACES)}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> OCConfig:
        extra = set(doc) - {f.name for f in fields(cls)}
        if extra:
            raise ValueError(f"unknown object-centric config keys {sorted(extra)}")
        doc = dict(doc)
        doc["edm"] = EDMConfig(**doc.get("edm", {}))
        return cls(**doc)


class PointEncoder(nn.Module):
    """DP3-style: (B, P, 3) -> per-point MLP -> max over points -> LayerNorm -> (B, w)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(3, width // 2), nn.LayerNorm(width // 2), nn.ReLU(), nn.Linear(width // 2, width)
        )
        self.norm = nn.LayerNorm(width)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        return self.norm(self.mlp(points).max(dim=1).values)


class FiLMBlock(nn.Module):
    """Residual MLP block whose LayerNorm output is scaled and shifted by the conditioning."""

    def __init__(self, width: int, cond: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.film = nn.Linear(cond, 2 * width)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.SiLU(), nn.Linear(2 * width, width))
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(c).chunk(2, dim=-1)
        return x + self.mlp(self.norm(x) * (1 + scale) + shift)


class OCNet(nn.Module):
    """EDM denoiser F(c_in x, c_noise | obs, goal) over flattened action chunks."""

    def __init__(self, cfg: OCConfig, proprio_dim: int, action_dim: int) -> None:
        """``action_dim``: per-step action size (joints, or 4 + hand joints in the tip space)."""
        super().__init__()
        self.cfg, self.action_dim = cfg, action_dim
        w, pw = cfg.width, cfg.point_width
        self.points = PointEncoder(pw) if cfg.use_points else None
        obs_in = proprio_dim + OBS_DIM_EXTRA + (2 * pw if cfg.use_points else 0)
        self.obs = nn.Sequential(nn.Linear(obs_in, w), nn.SiLU(), nn.Linear(w, w))
        self.goal = nn.Sequential(nn.Linear(GOAL_DIM, w), nn.SiLU(), nn.Linear(w, w))
        self.null_goal = nn.Parameter(torch.zeros(w))
        self.sigma = nn.Sequential(nn.Linear(32, w), nn.SiLU(), nn.Linear(w, w))
        flat = cfg.horizon * action_dim
        self.inp = nn.Linear(flat, w)
        self.blocks = nn.ModuleList(FiLMBlock(w, w) for _ in range(cfg.blocks))
        self.out = nn.Sequential(nn.LayerNorm(w), nn.Linear(w, flat))
        nn.init.zeros_(self.out[1].weight)
        nn.init.zeros_(self.out[1].bias)

    def encode(
        self, obs: dict[str, torch.Tensor], goal: torch.Tensor | None, drop: torch.Tensor | None = None
    ):
        """Conditioning (B, w) from normalized inputs; ``goal`` None or ``drop`` True rows -> null goal."""
        parts = [obs["proprio"], obs["extra"]]
        if self.points is not None:
            parts += [self.points(obs["tool_points"]), self.points(obs["object_points"])]
        c = self.obs(torch.cat(parts, dim=-1))
        if goal is None:
            return c + self.null_goal
        g = self.goal(goal)
        if drop is not None:
            g = torch.where(drop[:, None], self.null_goal.expand_as(g), g)
        return c + g

    def denoise(self, x: torch.Tensor, c_noise: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x (B, H, A) scaled by c_in, c_noise (B,), cond (B, w) -> F (B, H, A)."""
        freqs = torch.exp(torch.linspace(0, math.log(1000.0), 16, device=x.device))
        ang = c_noise[:, None] * freqs
        c = cond + self.sigma(torch.cat([ang.sin(), ang.cos()], dim=-1))
        h = self.inp(x.flatten(1))
        for block in self.blocks:
            h = block(h, c)
        return self.out(h).view_as(x)
