"""EDM (Karras et al. 2022) score diffusion in BESO's form: preconditioning, noise, samplers.

Variance-exploding: a noisy action chunk is ``x = a + sigma * n`` with ``n ~ N(0, I)``. A network
``F`` is wrapped into the denoiser

    D(x; sigma) = c_skip(sigma) * x + c_out(sigma) * F(c_in(sigma) * x, c_noise(sigma), cond)

and trained with the MSE in F-space (EDM's loss weight ``1 / c_out^2``). Sampling integrates the
probability-flow ODE (or its ancestral SDE) from ``sigma_max`` down to 0 in a few steps.
All tensors are (B, H, A) action chunks in normalized units; sigmas are (B,) or scalars.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``D(x (B, H, A), sigma (B,)) -> denoised x (B, H, A)``: the preconditioned model, conditioning bound."""

NOISE_DISTRIBUTIONS = ("loglogistic", "lognormal")
SCHEDULES = ("exponential", "linear", "karras")


@dataclass(frozen=True)
class EDMConfig:
    """EDM hyperparameters. Defaults are BESO's (Kitchen): sigma_data 0.5, sigma in [0.005, 1].

    Attributes:
        sigma_data: assumed std of the (normalized) data.
        sigma_min, sigma_max: noise range for training and sampling.
        noise_distribution: training sigma density, ``loglogistic`` (BESO, truncated to the range,
            loc = ln sigma_data, scale 0.5) or ``lognormal`` (EDM, mean ``p_mean``, std ``p_std``).
        schedule: sampling sigma schedule; ``rho`` is used by ``karras`` only.
    """

    sigma_data: float = 0.5
    sigma_min: float = 0.005
    sigma_max: float = 1.0
    noise_distribution: str = "loglogistic"
    loglogistic_scale: float = 0.5
    p_mean: float = -1.2
    p_std: float = 1.2
    schedule: str = "exponential"
    rho: float = 7.0

    def __post_init__(self) -> None:
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")
        if self.sigma_data <= 0:
            raise ValueError("sigma_data must be > 0")
        if self.noise_distribution not in NOISE_DISTRIBUTIONS:
            valid = ", ".join(NOISE_DISTRIBUTIONS)
            raise ValueError(f"unknown noise_distribution {self.noise_distribution!r}; valid: {valid}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; valid: {', '.join(SCHEDULES)}")

    def to_json(self) -> dict:
        return asdict(self)


def preconditioning(sigma: torch.Tensor, sigma_data: float) -> tuple[torch.Tensor, ...]:
    """(c_skip, c_out, c_in, c_noise) for noise levels ``sigma`` (any shape)."""
    s2, d2 = sigma**2, sigma_data**2
    c_skip = d2 / (s2 + d2)
    c_out = sigma * sigma_data / torch.sqrt(s2 + d2)
    c_in = 1.0 / torch.sqrt(s2 + d2)
    c_noise = torch.log(sigma) / 4.0
    return c_skip, c_out, c_in, c_noise


def sample_training_sigma(cfg: EDMConfig, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` training noise levels (n,) from the configured density, inside [sigma_min, sigma_max]."""
    if cfg.noise_distribution == "loglogistic":
        # Inverse CDF of a log-logistic truncated to the range: u ~ U(F(min), F(max)).
        loc, scale = math.log(cfg.sigma_data), cfg.loglogistic_scale

        def cdf(s: float) -> float:
            return 1.0 / (1.0 + math.exp(-(math.log(s) - loc) / scale))

        lo, hi = cdf(cfg.sigma_min), cdf(cfg.sigma_max)
        u = lo + (hi - lo) * torch.rand(n, generator=generator)
        return torch.exp(loc + scale * torch.logit(u))
    sigma = torch.exp(cfg.p_mean + cfg.p_std * torch.randn(n, generator=generator))
    return sigma.clamp(cfg.sigma_min, cfg.sigma_max)


def training_target(
    clean: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor, sigma_data: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Network input, noise feature and F-space target for clean chunks ``clean`` (B, H, A).

    Returns ``(c_in * x_noisy, c_noise (B,), target)`` with ``target = (clean - c_skip x_noisy) / c_out``.
    """
    s = sigma.view(-1, 1, 1)
    noisy = clean + s * noise
    c_skip, c_out, c_in, c_noise = preconditioning(s, sigma_data)
    return c_in * noisy, c_noise.view(-1), (clean - c_skip * noisy) / c_out


def sigma_schedule(cfg: EDMConfig, steps: int) -> torch.Tensor:
    """Sampling noise levels (steps + 1,): ``steps`` decreasing sigmas from sigma_max, then 0."""
    if steps < 1:
        raise ValueError("steps must be >= 1")
    if steps == 1:
        sig = torch.tensor([cfg.sigma_max])
    elif cfg.schedule == "exponential":
        sig = torch.exp(torch.linspace(math.log(cfg.sigma_max), math.log(cfg.sigma_min), steps))
    elif cfg.schedule == "linear":
        sig = torch.linspace(cfg.sigma_max, cfg.sigma_min, steps)
    else:
        ramp = torch.linspace(0, 1, steps)
        lo, hi = cfg.sigma_min ** (1 / cfg.rho), cfg.sigma_max ** (1 / cfg.rho)
        sig = (hi + ramp * (lo - hi)) ** cfg.rho
    return torch.cat([sig, sig.new_zeros(1)])


# ----------------------------------------------------------------------------- samplers
def _ones(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return s * x.new_ones(x.shape[0])


def sample_ddim(denoise: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, generator=None) -> torch.Tensor:
    """DDIM = deterministic Euler on the probability-flow ODE: one network pass per step."""
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        den = denoise(x, _ones(x, s))
        x = den + (s_next / s) * (x - den)  # = x + (s_next - s) * (x - den) / s
    return x


def sample_heun(denoise: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, generator=None) -> torch.Tensor:
    """Heun's 2nd-order method (EDM Alg. 1 without churn): 2 passes per step, 1 on the last."""
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        d = (x - denoise(x, _ones(x, s))) / s
        x_euler = x + (s_next - s) * d
        if s_next == 0:
            x = x_euler
            continue
        d2 = (x_euler - denoise(x_euler, _ones(x, s_next))) / s_next
        x = x + (s_next - s) * 0.5 * (d + d2)
    return x


def sample_euler_ancestral(
    denoise: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Euler ancestral: an Euler step down to sigma_down, then fresh noise up to sigma_next."""
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        den = denoise(x, _ones(x, s))
        sigma_up = torch.sqrt(torch.clamp(s_next**2 * (s**2 - s_next**2) / s**2, min=0.0))
        sigma_down = torch.sqrt(torch.clamp(s_next**2 - sigma_up**2, min=0.0))
        x = den + (sigma_down / s) * (x - den)
        if s_next > 0:
            x = x + sigma_up * torch.randn(x.shape, generator=generator, dtype=x.dtype)
    return x


def sample_dpmpp_2m(denoise: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, generator=None) -> torch.Tensor:
    """DPM-Solver++(2M): multistep 2nd order in log-sigma, one pass per step."""
    old_den, h_last = None, None
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        den = denoise(x, _ones(x, s))
        if s_next == 0:
            x = den
            break
        t, t_next = -torch.log(s), -torch.log(s_next)
        h = t_next - t
        if old_den is None:
            d = den
        else:
            r = h_last / h
            d = (1 + 1 / (2 * r)) * den - (1 / (2 * r)) * old_den
        x = (s_next / s) * x - torch.expm1(-h) * d
        old_den, h_last = den, h
    return x


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "ddim": sample_ddim,
    "heun": sample_heun,
    "euler_ancestral": sample_euler_ancestral,
    "dpmpp_2m": sample_dpmpp_2m,
}
"""Samplers by name; all take ``(denoise, x_init, sigmas, generator)``."""


def sample(
    denoise: Denoiser,
    shape: tuple[int, ...],
    cfg: EDMConfig,
    steps: int,
    sampler: str = "ddim",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw action chunks of ``shape`` (B, H, A): x ~ N(0, sigma_max^2 I), then ``steps`` steps."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; valid: {', '.join(SAMPLERS)}")
    sigmas = sigma_schedule(cfg, steps)
    x = torch.randn(shape, generator=generator) * sigmas[0]
    return SAMPLERS[sampler](denoise, x, sigmas, generator=generator)
