"""Low level: a BESO-style goal-conditioned score-diffusion policy (and its DDPM peer)."""

from policies.low_level.chunk_buffer import ChunkBuffer
from policies.low_level.config import PolicyConfig, RobotLayout
from policies.low_level.policy import CHECKPOINT_TYPE, LowLevelPolicy

__all__ = ["CHECKPOINT_TYPE", "ChunkBuffer", "LowLevelPolicy", "PolicyConfig", "RobotLayout"]
