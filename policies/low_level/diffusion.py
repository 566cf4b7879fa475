"""The two diffusion objectives over one network: EDM (BESO, the product) and DDPM (the peer).

Both expose ``loss(net, cond, clean)`` for training and ``sample(net, cond, shape, ...)`` for
inference, so the network, data and training loop are the same for both and only the noise
process differs. The DDPM peer uses diffusers' ``DDPMScheduler`` with Diffusion Policy's and
LeRobot's settings: 100 steps, squared-cosine betas, epsilon prediction, clipping to [-1, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from policies.low_level import edm
from policies.low_level.config import PolicyConfig
from policies.low_level.network import LowLevelNet


def guided(net: LowLevelNet, cond: torch.Tensor, cfg_lambda: float):
    """Network output function ``f(x_in, noise_feature)`` with classifier-free guidance.

    ``uncond + lambda (cond - uncond)`` on the network outputs; lambda = 1 is one pass, lambda = 0
    the goal-free policy (one pass with the null goal), anything else two passes in one batch.
    """
    if cfg_lambda == 1.0:
        return lambda x, f: net.denoise(cond, x, f)
    uncond = net.drop_goal(cond)
    if cfg_lambda == 0.0:
        return lambda x, f: net.denoise(uncond, x, f)
    both = torch.cat([cond, uncond])

    def fn(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        out_c, out_u = net.denoise(both, torch.cat([x, x]), torch.cat([f, f])).chunk(2)
        return out_u + cfg_lambda * (out_c - out_u)

    return fn


class EDMDiffusion:
    """BESO: EDM preconditioning, sigma from the configured density, few-step ODE samplers."""

    def __init__(self, cfg: PolicyConfig) -> None:
        self.cfg = cfg
        self.edm = cfg.edm

    def loss(self, net: LowLevelNet, cond: torch.Tensor, clean: torch.Tensor, generator=None) -> torch.Tensor:
        sigma = edm.sample_training_sigma(self.edm, clean.shape[0], generator)
        noise = torch.randn(clean.shape, generator=generator)
        x_in, feat, target = edm.training_target(clean, noise, sigma, self.edm.sigma_data)
        return F.mse_loss(net.denoise(cond, x_in, feat), target)

    def sample(
        self,
        net: LowLevelNet,
        cond: torch.Tensor,
        shape: tuple[int, ...],
        steps: int,
        cfg_lambda: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        f = guided(net, cond, cfg_lambda)
        sd = self.edm.sigma_data

        def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            c_skip, c_out, c_in, c_noise = edm.preconditioning(sigma.view(-1, 1, 1), sd)
            return c_skip * x + c_out * f(c_in * x, c_noise.view(-1))

        return edm.sample(denoise, shape, self.edm, steps, self.cfg.sampler, generator)


class DDPMDiffusion:
    """The peer: diffusers DDPMScheduler, epsilon prediction, ancestral sampling over ``steps``."""

    def __init__(self, cfg: PolicyConfig) -> None:
        from diffusers import DDPMScheduler

        self.cfg = cfg
        self.n_train = cfg.ddpm_train_steps
        self.scheduler = DDPMScheduler(
            num_train_timesteps=self.n_train,
            beta_schedule="squaredcos_cap_v2",
            prediction_type="epsilon",
            clip_sample=True,
            clip_sample_range=1.0,
        )

    def _feature(self, t: torch.Tensor) -> torch.Tensor:
        return t.float() / self.n_train

    def loss(self, net: LowLevelNet, cond: torch.Tensor, clean: torch.Tensor, generator=None) -> torch.Tensor:
        b = clean.shape[0]
        t = torch.randint(0, self.n_train, (b,), generator=generator)
        noise = torch.randn(clean.shape, generator=generator)
        noisy = self.scheduler.add_noise(clean, noise, t)
        return F.mse_loss(net.denoise(cond, noisy, self._feature(t)), noise)

    def sample(
        self,
        net: LowLevelNet,
        cond: torch.Tensor,
        shape: tuple[int, ...],
        steps: int,
        cfg_lambda: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        f = guided(net, cond, cfg_lambda)
        self.scheduler.set_timesteps(steps)
        x = torch.randn(shape, generator=generator)
        for t in self.scheduler.timesteps:
            tt = torch.full((shape[0],), int(t), dtype=torch.long)
            eps = f(x, self._feature(tt))
            x = self.scheduler.step(eps, t, x, generator=generator).prev_sample
        return x


def make_diffusion(cfg: PolicyConfig) -> EDMDiffusion | DDPMDiffusion:
    return EDMDiffusion(cfg) if cfg.diffusion == "edm" else DDPMDiffusion(cfg)
