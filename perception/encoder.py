"""The point-cloud affordance encoder: a DP3-style PointNet over the tool cloud, plus heads.

Network (``AffordanceNet``):

* tool branch: per-point MLP 3→32→64→128 (Linear + LayerNorm + ReLU), max-pool over points,
  Linear→64 + LayerNorm: the **tool-state latent** (64-D), the goal space of the low level;
* tool head: latent → (tip gap, opening angle, full opening of this tool);
* object branch: a smaller PointNet on the object's points, centred on their mean → 32-D;
* pair head: (tool latent, object latent) → (approach opening, contact opening, graspable logit).

No BatchNorm, no T-Net (DP3's choices). Inputs and outputs are normalized with statistics
that ship with the weights. ``AffordanceEncoder`` wraps the network with the pipeline:
``encode(cloud, labels, tool_pose) -> AffordanceEstimate``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dexhier.checkpoints import load_checkpoint, save_checkpoint
from perception.cloud import CloudConfig, process_cloud

CHECKPOINT_TYPE = "affordance_encoder"
TOOL_TARGETS = ("tip_gap", "opening_angle", "max_gap")
PAIR_TARGETS = ("approach_opening", "contact_opening")


@dataclass(frozen=True)
class EncoderConfig:
    """Sizes of the network. ``tool_widths`` / ``object_widths`` are the per-point MLP widths."""

    tool_widths: tuple[int, ...] = (32, 64, 128)
    latent_dim: int = 64
    object_widths: tuple[int, ...] = (32, 64)
    object_latent_dim: int = 32
    head_width: int = 128

    def __post_init__(self) -> None:
        if min(self.tool_widths + self.object_widths) < 1 or self.latent_dim < 1 or self.head_width < 1:
            raise ValueError("network widths must be positive")


class PointNet(nn.Module):
    """Shared per-point MLP, max-pool, projection with LayerNorm. (B, N, 3) → (B, out_dim)."""

    def __init__(self, widths: tuple[int, ...], out_dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = 3
        for w in widths:
            layers += [nn.Linear(prev, w), nn.LayerNorm(w), nn.ReLU()]
            prev = w
        self.mlp = nn.Sequential(*layers)
        self.proj = nn.Sequential(nn.Linear(prev, out_dim), nn.LayerNorm(out_dim))

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        return self.proj(self.mlp(points).max(dim=1).values)


def _head(inp: int, width: int, out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(inp, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, out)
    )


class AffordanceNet(nn.Module):
    """Tool cloud (B, N, 3) and object cloud (B, M, 3), normalized → latent and normalized outputs."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.tool = PointNet(cfg.tool_widths, cfg.latent_dim)
        self.tool_head = _head(cfg.latent_dim, cfg.head_width, len(TOOL_TARGETS))
        self.object = PointNet(cfg.object_widths, cfg.object_latent_dim)
        self.pair_head = _head(cfg.latent_dim + cfg.object_latent_dim, cfg.head_width, len(PAIR_TARGETS) + 1)

    def forward(self, tool: torch.Tensor, obj: torch.Tensor) -> dict[str, torch.Tensor]:
        latent = self.tool(tool)
        pair = self.pair_head(torch.cat([latent, self.object(obj)], dim=-1))
        return {
            "latent": latent,
            "tool": self.tool_head(latent),
            "pair": pair[:, :-1],
            "graspable_logit": pair[:, -1],
        }


@dataclass
class Normalizer:
    """Affine normalization of the inputs and regression targets (m, rad)."""

    tool_mean: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    tool_scale: float = 1.0
    object_scale: float = 1.0
    target_mean: dict[str, float] = field(default_factory=dict)
    target_std: dict[str, float] = field(default_factory=dict)

    @classmethod
    def fit(cls, data: dict[str, np.ndarray]) -> Normalizer:
        tool = data["tool"].reshape(-1, 3)
        obj = data["object"][data["object_valid"].astype(bool)]
        obj = obj - obj.mean(axis=1, keepdims=True)
        keys = TOOL_TARGETS + PAIR_TARGETS
        return cls(
            tool_mean=tool.mean(0).astype(float).tolist(),
            tool_scale=float(tool.std(0).max()),
            object_scale=float(obj.reshape(-1, 3).std(0).max()) if len(obj) else 0.01,
            target_mean={k: float(data[k].mean()) for k in keys},
            target_std={k: float(max(data[k].std(), 1e-6)) for k in keys},
        )

    def inputs(
        self, tool: np.ndarray | torch.Tensor, obj: np.ndarray | torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """Normalized (tool, object) tensors from clouds in the tool-mount frame (m)."""
        tool_t = torch.as_tensor(tool, dtype=torch.float32)
        obj_t = torch.as_tensor(obj, dtype=torch.float32)
        tool_n = (tool_t - torch.tensor(self.tool_mean)) / self.tool_scale
        obj_n = (obj_t - obj_t.mean(dim=-2, keepdim=True)) / self.object_scale
        return tool_n, obj_n

    def targets(self, data: dict[str, Any], keys: tuple[str, ...]) -> torch.Tensor:
        cols = [
            (torch.as_tensor(data[k], dtype=torch.float32) - self.target_mean[k]) / self.target_std[k]
            for k in keys
        ]
        return torch.stack(cols, dim=-1)

    def denormalize(self, values: torch.Tensor, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
        v = values.detach().cpu().numpy()
        return {k: v[..., i] * self.target_std[k] + self.target_mean[k] for i, k in enumerate(keys)}


@dataclass(frozen=True)
class AffordanceEstimate:
    """What the encoder says about one cloud. Lengths in m, angles in rad.

    When ``valid`` is False, ``reason`` says why and every other field is meaningless (NaN).
    The object fields are meaningful only when ``object_valid``.
    """

    valid: bool
    reason: str
    latent: np.ndarray  # (latent_dim,) float32, the tool-state embedding
    tip_gap: float
    opening_angle: float
    max_gap: float
    object_valid: bool
    approach_opening: float
    contact_opening: float
    graspable: bool
    graspable_prob: float
    object_center: np.ndarray = field(default_factory=lambda: np.full(3, np.nan))
    """(3,) mean of the object's points in the tool-mount frame (m); NaN unless ``object_valid``.
    Where the object sits relative to the tips, without privileged state."""


class AffordanceEncoder:
    """Pipeline + network: raw cloud in, tool state and affordance out.

    Lifecycle: ``AffordanceEncoder.load(dir)`` (or build with a trained net), then
    ``encode(...)`` per cloud; ``predict_batch`` for already-processed clouds.
    """

    def __init__(
        self, net: AffordanceNet, normalizer: Normalizer, net_config: EncoderConfig, cloud_config: CloudConfig
    ) -> None:
        self.net = net.eval()
        self.normalizer = normalizer
        self.net_config = net_config
        self.cloud_config = cloud_config

    # ------------------------------------------------------------------ I/O
    def save(self, directory: str | Path, metrics: dict[str, Any] | None = None) -> Path:
        config = {"net": asdict(self.net_config), "cloud": asdict(self.cloud_config)}
        return save_checkpoint(
            directory, CHECKPOINT_TYPE, config, self.net.state_dict(), asdict(self.normalizer), metrics
        )

    @classmethod
    def load(cls, directory: str | Path) -> AffordanceEncoder:
        doc, weights, stats = load_checkpoint(directory, CHECKPOINT_TYPE)
        net_cfg = EncoderConfig(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in doc["config"]["net"].items()}
        )
        cloud_cfg = CloudConfig(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in doc["config"]["cloud"].items()}
        )
        net = AffordanceNet(net_cfg)
        net.load_state_dict(weights)
        return cls(net, Normalizer(**stats), net_cfg, cloud_cfg)

    # ------------------------------------------------------------ inference
    @torch.no_grad()
    def predict_batch(self, tool: np.ndarray, obj: np.ndarray) -> dict[str, np.ndarray]:
        """Outputs for processed clouds: tool (B, N, 3), object (B, M, 3) in the mount frame (m)."""
        tool_n, obj_n = self.normalizer.inputs(tool, obj)
        out = self.net(tool_n, obj_n)
        res = self.normalizer.denormalize(out["tool"], TOOL_TARGETS)
        res.update(self.normalizer.denormalize(out["pair"], PAIR_TARGETS))
        res["graspable_prob"] = torch.sigmoid(out["graspable_logit"]).numpy()
        res["latent"] = out["latent"].numpy()
        return res

    def encode(
        self, cloud: np.ndarray, labels: np.ndarray | None = None, tool_pose: np.ndarray | None = None
    ) -> AffordanceEstimate:
        """Estimate the tool state from a raw cloud.

        Args:
            cloud: (N, 3) points in the base frame (m), e.g. from a depth camera.
            labels: optional (N,) segmentation labels (``SEG_LABELS``); without them the tool and
                the object are split by the pipeline's geometric boxes.
            tool_pose: (4, 4) pose of the tool mount in the base frame (from the joint states by
                forward kinematics); None if ``cloud`` is already in the mount frame.
        """
        transform = None if tool_pose is None else _inverse_pose(np.asarray(tool_pose, float))
        proc = process_cloud(cloud, labels, transform, config=self.cloud_config)
        if not proc.valid:
            nan = float("nan")
            latent = np.full(self.net_config.latent_dim, np.nan, np.float32)
            return AffordanceEstimate(False, proc.reason, latent, nan, nan, nan, False, nan, nan, False, nan)
        obj = (
            proc.object if proc.object_valid else np.zeros((self.cloud_config.n_object_points, 3), np.float32)
        )
        out = self.predict_batch(proc.tool[None], obj[None])
        prob = float(out["graspable_prob"][0])
        return AffordanceEstimate(
            valid=True,
            reason="",
            latent=out["latent"][0],
            tip_gap=float(out["tip_gap"][0]),
            opening_angle=float(out["opening_angle"][0]),
            max_gap=float(out["max_gap"][0]),
            object_valid=proc.object_valid,
            approach_opening=float(out["approach_opening"][0]),
            contact_opening=float(out["contact_opening"][0]),
            graspable=proc.object_valid and prob >= 0.5,
            graspable_prob=prob,
            object_center=proc.object.mean(0).astype(np.float64) if proc.object_valid else np.full(3, np.nan),
        )


def _inverse_pose(pose: np.ndarray) -> np.ndarray:
    if pose.shape != (4, 4) or not np.all(np.isfinite(pose)):
        raise ValueError(f"tool_pose must be a finite (4, 4) transform, got shape {pose.shape}")
    inv = np.eye(4)
    inv[:3, :3] = pose[:3, :3].T
    inv[:3, 3] = -pose[:3, :3].T @ pose[:3, 3]
    return inv
