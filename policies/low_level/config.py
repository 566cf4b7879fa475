"""Typed configuration of the low-level policy, checked when built and stored in checkpoints."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from dexhier import vocabulary as V
from policies.low_level.edm import SAMPLERS, EDMConfig
from policies.low_level.network import NetConfig

DIFFUSION_KINDS = ("edm", "ddpm")


@dataclass(frozen=True)
class PolicyConfig:
    """What the policy sees, predicts and how it samples.

    Attributes:
        cameras: observation cameras (images at the current step only).
        goal_camera: camera of the goal image.
        image_size: square image side, pixels.
        obs_horizon: T_o, proprio history length (steps). 1 by default: with 2, the policy learned
            to continue its own motion from the joint history and ignored the images entirely
            (swapping observation or goal images did not change its chunk; it picked 0 of 8).
        horizon: H, predicted chunk length (steps).
        exec_steps: k, actions executed from each chunk before replanning (1 <= k <= H).
        temporal_ensemble: replan every step and average the overlapping chunks' predictions
            for the current step with weights ``exp(-ensemble_decay * age)``.
        diffusion: ``edm`` (BESO, the product) or ``ddpm`` (the DDPM epsilon peer baseline).
        steps: sampling steps (EDM: 3 by default; DDPM: its inference steps).
        sampler: EDM sampler name (see ``edm.SAMPLERS``).
        cfg_lambda: classifier-free guidance weight; 1 = plain conditional (one pass per step),
            0 = goal-free, other values take two passes per step.
        goal_dropout: probability of dropping the whole goal of a training sample.
        ddpm_train_steps: number of DDPM training timesteps (the peer).
    """

    cameras: tuple[str, ...] = ("scene", "wrist")
    goal_camera: str = "scene"
    image_size: int = 64
    obs_horizon: int = 1
    horizon: int = 16
    exec_steps: int = 8
    temporal_ensemble: bool = False
    ensemble_decay: float = 0.1
    diffusion: str = "edm"
    steps: int = 3
    sampler: str = "ddim"
    cfg_lambda: float = 1.0
    goal_dropout: float = 0.1
    ddpm_train_steps: int = 100
    edm: EDMConfig = field(default_factory=lambda: EDMConfig(sigma_max=20.0, loglogistic_scale=1.0))
    """BESO's sigma_max = 1 leaves the action visible in every training input (SNR >= 0.25), so the net
    learned to read the answer from x instead of the goal and images, and samples from pure noise
    regressed to the mean (measured: half the expert's response to the goal gap). 20 with a wider
    log-logistic (scale 1) trains the first step from (nearly) pure noise; 3 steps: 20, 0.32, 0.005."""
    net: NetConfig = field(default_factory=NetConfig)

    def __post_init__(self) -> None:
        unknown = set(self.cameras) | {self.goal_camera}
        unknown -= set(V.CAMERAS)
        if unknown or not self.cameras:
            raise ValueError(f"unknown or no cameras {sorted(unknown)}; valid: {', '.join(V.CAMERAS)}")
        if self.diffusion not in DIFFUSION_KINDS:
            raise ValueError(f"unknown diffusion {self.diffusion!r}; valid: {', '.join(DIFFUSION_KINDS)}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; valid: {', '.join(SAMPLERS)}")
        if not 1 <= self.exec_steps <= self.horizon:
            raise ValueError(f"exec_steps must be in [1, horizon={self.horizon}], got {self.exec_steps}")
        if self.obs_horizon < 1 or self.steps < 1 or self.image_size < 16:
            raise ValueError("obs_horizon and steps must be >= 1, image_size >= 16")
        if not 0.0 <= self.goal_dropout < 1.0:
            raise ValueError("goal_dropout must be in [0, 1)")
        if self.diffusion == "ddpm" and self.steps > self.ddpm_train_steps:
            raise ValueError(
                f"DDPM steps ({self.steps}) cannot exceed ddpm_train_steps ({self.ddpm_train_steps})"
            )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> PolicyConfig:
        known = {f.name for f in fields(cls)}
        extra = set(doc) - known
        if extra:
            raise ValueError(f"unknown policy config keys {sorted(extra)}")
        doc = dict(doc)
        doc["edm"] = EDMConfig(**doc.get("edm", {}))
        net = dict(doc.get("net", {}))
        if "image_channels" in net:
            net["image_channels"] = tuple(net["image_channels"])
        doc["net"] = NetConfig(**net)
        doc["cameras"] = tuple(doc.get("cameras", cls.cameras))
        return cls(**doc)

    def with_overrides(self, **kw: Any) -> PolicyConfig:
        """A copy with sampling-time settings changed (None values are ignored)."""
        return replace(self, **{k: v for k, v in kw.items() if v is not None})


@dataclass(frozen=True)
class RobotLayout:
    """Joint names and limits the policy was trained for (rad); actions are arm then hand."""

    arm_joints: tuple[str, ...]
    hand_joints: tuple[str, ...]
    lower: tuple[float, ...]
    upper: tuple[float, ...]

    def __post_init__(self) -> None:
        n = len(self.arm_joints) + len(self.hand_joints)
        if len(self.lower) != n or len(self.upper) != n:
            raise ValueError(f"joint limits must have {n} entries")
        if any(lo > hi for lo, hi in zip(self.lower, self.upper, strict=True)):
            raise ValueError("a lower joint limit is above its upper limit")

    @property
    def action_dim(self) -> int:
        return len(self.arm_joints) + len(self.hand_joints)

    @property
    def proprio_dim(self) -> int:
        return self.action_dim + 1  # + the tool's tip gap

    @classmethod
    def from_dataset_meta(cls, meta: dict[str, Any]) -> RobotLayout:
        try:
            return cls(
                tuple(meta["arm_joints"]),
                tuple(meta["hand_joints"]),
                tuple(meta["action_lower"]),
                tuple(meta["action_upper"]),
            )
        except KeyError as err:
            raise ValueError(f"dataset meta lacks {err}; it needs joint names and action limits") from err

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> RobotLayout:
        return cls(**{k: tuple(v) for k, v in doc.items()})
