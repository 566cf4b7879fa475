"""Pure-math tests of the low-level policy's EDM core, classifier-free guidance and normalization."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from policies.low_level import edm
from policies.low_level.config import PolicyConfig
from policies.low_level.diffusion import guided
from policies.low_level.edm import SAMPLERS, EDMConfig
from policies.normalization import MinMaxNormalizer

SIGMAS = (0.005, 0.1, 0.5, 1.0, 20.0)


# ----------------------------------------------------------------------------- preconditioning
@pytest.mark.parametrize("sigma_data", [0.5, 1.0])
@pytest.mark.parametrize("s", SIGMAS)
def test_preconditioning_matches_edm_formulas(s: float, sigma_data: float) -> None:
    c_skip, c_out, c_in, c_noise = edm.preconditioning(torch.tensor([s], dtype=torch.float64), sigma_data)
    sd = sigma_data
    assert c_skip.item() == pytest.approx(sd**2 / (s**2 + sd**2), rel=1e-12)
    assert c_out.item() == pytest.approx(s * sd / math.sqrt(s**2 + sd**2), rel=1e-12)
    assert c_in.item() == pytest.approx(1 / math.sqrt(s**2 + sd**2), rel=1e-12)
    assert c_noise.item() == pytest.approx(math.log(s) / 4, rel=1e-12, abs=1e-15)


def test_preconditioning_keeps_shape() -> None:
    sig = torch.full((3, 1, 1), 0.3)
    for c in edm.preconditioning(sig, 0.5):
        assert c.shape == (3, 1, 1)


def test_training_target_reconstructs_the_clean_chunk() -> None:
    """If F outputs the F-space target, the denoiser D = c_skip x + c_out F returns the clean chunk."""
    g = torch.Generator().manual_seed(0)
    clean = torch.randn(6, 4, 3, generator=g, dtype=torch.float64)
    noise = torch.randn(6, 4, 3, generator=g, dtype=torch.float64)
    sigma = torch.tensor([0.005, 0.05, 0.3, 0.5, 1.0, 10.0], dtype=torch.float64)
    x_in, feat, target = edm.training_target(clean, noise, sigma, 0.5)
    s = sigma.view(-1, 1, 1)
    noisy = clean + s * noise
    c_skip, c_out, c_in, c_noise = edm.preconditioning(s, 0.5)
    torch.testing.assert_close(x_in, c_in * noisy)
    torch.testing.assert_close(feat, c_noise.view(-1))
    assert feat.shape == (6,)
    torch.testing.assert_close(c_skip * noisy + c_out * target, clean, rtol=1e-10, atol=1e-10)
    # and the target is not trivially the clean chunk or the noise
    assert not torch.allclose(target, clean) and not torch.allclose(target, noise)


# ----------------------------------------------------------------------------- training sigma
@pytest.mark.parametrize("dist", ["loglogistic", "lognormal"])
def test_training_sigma_in_range(dist: str) -> None:
    cfg = EDMConfig(noise_distribution=dist)
    s = edm.sample_training_sigma(cfg, 20000, torch.Generator().manual_seed(0))
    assert s.shape == (20000,)
    assert torch.isfinite(s).all()
    assert s.min() >= cfg.sigma_min * (1 - 1e-6) and s.max() <= cfg.sigma_max * (1 + 1e-6)
    assert len(torch.unique(s)) > 1000  # a density, not a constant


def test_training_sigma_is_seeded() -> None:
    cfg = EDMConfig()
    a = edm.sample_training_sigma(cfg, 100, torch.Generator().manual_seed(1))
    b = edm.sample_training_sigma(cfg, 100, torch.Generator().manual_seed(1))
    c = edm.sample_training_sigma(cfg, 100, torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_loglogistic_median_near_sigma_data() -> None:
    """Untruncated (sigma_max far above sigma_data) the log-logistic median is sigma_data."""
    cfg = EDMConfig(sigma_min=1e-4, sigma_max=1e3)
    s = edm.sample_training_sigma(cfg, 20000, torch.Generator().manual_seed(0))
    assert s.median().item() == pytest.approx(cfg.sigma_data, rel=0.05)


def test_loglogistic_median_with_beso_truncation() -> None:
    """BESO's range [0.005, 1] cuts the upper tail: the median is the truncated one (~0.41), below 0.5."""
    cfg = EDMConfig()
    loc, scale = math.log(cfg.sigma_data), cfg.loglogistic_scale
    cdf = lambda s: 1 / (1 + math.exp(-(math.log(s) - loc) / scale))  # noqa: E731
    u = (cdf(cfg.sigma_min) + cdf(cfg.sigma_max)) / 2
    expected = math.exp(loc + scale * math.log(u / (1 - u)))
    s = edm.sample_training_sigma(cfg, 20000, torch.Generator().manual_seed(0))
    assert s.median().item() == pytest.approx(expected, rel=0.05)
    assert 0.3 < s.median().item() < 0.5


# ----------------------------------------------------------------------------- schedules
@pytest.mark.parametrize("schedule", edm.SCHEDULES)
@pytest.mark.parametrize("steps", [1, 2, 3, 10])
def test_sigma_schedule_shape_and_order(schedule: str, steps: int) -> None:
    cfg = EDMConfig(schedule=schedule)
    sig = edm.sigma_schedule(cfg, steps)
    assert sig.shape == (steps + 1,)
    assert sig[0].item() == pytest.approx(cfg.sigma_max)
    assert sig[-1].item() == 0.0
    assert (sig[1:] < sig[:-1]).all()
    if steps > 1:
        assert sig[-2].item() == pytest.approx(cfg.sigma_min, rel=1e-5)


def test_exponential_schedule_beso_kitchen_values() -> None:
    sig = edm.sigma_schedule(EDMConfig(sigma_min=0.005, sigma_max=1.0, schedule="exponential"), 3)
    np.testing.assert_allclose(sig.numpy(), [1.0, math.sqrt(0.005), 0.005, 0.0], rtol=1e-5, atol=1e-7)
    assert sig[1].item() == pytest.approx(0.0707, abs=1e-4)


def test_sigma_schedule_rejects_zero_steps() -> None:
    with pytest.raises(ValueError, match="steps"):
        edm.sigma_schedule(EDMConfig(), 0)


# ----------------------------------------------------------------------------- samplers
@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
@pytest.mark.parametrize("steps", [1, 3, 10])
def test_samplers_return_the_point_mass(sampler: str, steps: int) -> None:
    """Data = one chunk a: the ideal denoiser is D(x; s) = a, and every sampler must end at a."""
    a = torch.linspace(-0.9, 0.9, 5 * 3).view(1, 5, 3)
    calls = []

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        assert sigma.shape == (x.shape[0],) and (sigma > 0).all()
        calls.append(sigma[0].item())
        return a.expand_as(x).clone()

    cfg = EDMConfig()
    out = edm.sample(denoise, (8, 5, 3), cfg, steps, sampler, torch.Generator().manual_seed(0))
    assert out.shape == (8, 5, 3)
    torch.testing.assert_close(out, a.expand(8, 5, 3), rtol=0, atol=1e-6)
    assert calls[0] == pytest.approx(cfg.sigma_max)
    n = {"heun": 2 * steps - 1}.get(sampler, steps)
    assert len(calls) == n, f"{sampler} made {len(calls)} denoiser calls in {steps} steps"


def _gaussian_denoiser(sd: float):
    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = sigma.view(-1, 1, 1)
        return x * sd**2 / (sd**2 + s**2)

    return denoise


# First-order samplers (ddim = Euler, euler_ancestral) converge slowly over sigma in [0.002, 20]: ddim has
# std 0.85 sd at 15 steps, 0.97 sd at 60; the 2nd-order ones converge faster (heun: 1.07 sd at 15 steps,
# 1.02 at 30; dpmpp_2m: 1.03 at 15, 1.02 at 20).
GAUSSIAN_STEPS = {
    "heun": (30, 0.03),
    "dpmpp_2m": (20, 0.03),
    "ddim": (60, 0.1),
    "euler_ancestral": (100, 0.1),
}


@pytest.mark.parametrize("sampler", sorted(GAUSSIAN_STEPS))
@pytest.mark.parametrize("sd", [0.5, 0.2])
def test_samplers_match_gaussian_data_std(sampler: str, sd: float) -> None:
    """Data ~ N(0, sd^2): with the closed-form denoiser the samples must have std sd."""
    cfg = EDMConfig(sigma_max=20.0, sigma_min=0.002, schedule="exponential")
    steps, tol = GAUSSIAN_STEPS[sampler]
    out = edm.sample(
        _gaussian_denoiser(sd), (4000, 2, 2), cfg, steps, sampler, torch.Generator().manual_seed(0)
    )
    assert torch.isfinite(out).all()
    assert out.std().item() == pytest.approx(sd, rel=tol)
    assert abs(out.mean().item()) < 0.05 * sd


@pytest.mark.parametrize("sampler", ["ddim", "heun", "dpmpp_2m"])
def test_sampler_error_shrinks_with_steps(sampler: str) -> None:
    cfg = EDMConfig(sigma_max=20.0, sigma_min=0.002)
    err = []
    for steps in (5, 15, 45):
        x = edm.sample(
            _gaussian_denoiser(0.5), (4000, 2, 2), cfg, steps, sampler, torch.Generator().manual_seed(0)
        )
        err.append(abs(x.std().item() - 0.5))
    assert err[0] > err[1] > err[2], err


def test_second_order_samplers_beat_euler() -> None:
    cfg = EDMConfig(sigma_max=20.0, sigma_min=0.002)
    err = {}
    for sampler in ("ddim", "heun", "dpmpp_2m"):
        x = edm.sample(
            _gaussian_denoiser(0.5), (4000, 2, 2), cfg, 10, sampler, torch.Generator().manual_seed(0)
        )
        err[sampler] = abs(x.std().item() - 0.5)
    assert err["heun"] < err["ddim"] and err["dpmpp_2m"] < err["ddim"], err


def test_gaussian_test_detects_a_wrong_denoiser() -> None:
    """The std check above can fail: a denoiser for the wrong data std gives the wrong sample std."""
    cfg = EDMConfig(sigma_max=20.0, sigma_min=0.002)
    out = edm.sample(_gaussian_denoiser(1.0), (4000, 2, 2), cfg, 15, "ddim", torch.Generator().manual_seed(0))
    assert out.std().item() != pytest.approx(0.5, rel=0.1)


def test_sample_is_reproducible_with_a_generator() -> None:
    cfg = EDMConfig()
    den = _gaussian_denoiser(0.5)
    a = edm.sample(den, (4, 3, 2), cfg, 3, "euler_ancestral", torch.Generator().manual_seed(3))
    b = edm.sample(den, (4, 3, 2), cfg, 3, "euler_ancestral", torch.Generator().manual_seed(3))
    c = edm.sample(den, (4, 3, 2), cfg, 3, "euler_ancestral", torch.Generator().manual_seed(4))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


# ----------------------------------------------------------------------------- names
def test_unknown_sampler_names_valid_ones() -> None:
    with pytest.raises(ValueError, match="unknown sampler 'rk45'.*ddim.*heun.*euler_ancestral.*dpmpp_2m"):
        edm.sample(_gaussian_denoiser(0.5), (1, 2, 2), EDMConfig(), 3, "rk45")
    with pytest.raises(ValueError, match="unknown sampler.*ddim"):
        PolicyConfig(sampler="rk45")


def test_unknown_schedule_names_valid_ones() -> None:
    with pytest.raises(ValueError, match="unknown schedule 'cosine'.*exponential.*linear.*karras"):
        EDMConfig(schedule="cosine")


def test_unknown_noise_distribution_names_valid_ones() -> None:
    with pytest.raises(ValueError, match="unknown noise_distribution 'uniform'.*loglogistic.*lognormal"):
        EDMConfig(noise_distribution="uniform")


def test_edm_config_rejects_bad_ranges() -> None:
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        EDMConfig(sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="sigma_data"):
        EDMConfig(sigma_data=0.0)


# ----------------------------------------------------------------------------- guidance
class StubNet:
    """``denoise`` is a different affine function of x, f and the conditioning; records its inputs."""

    def __init__(self) -> None:
        self.calls: list[torch.Tensor] = []

    def denoise(self, cond: torch.Tensor, x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        self.calls.append(cond.clone())
        return 2.0 * x + f.view(-1, 1, 1) + cond.sum((1, 2)).view(-1, 1, 1)

    def drop_goal(self, cond: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.full_like(cond[:, :2], -1.0), cond[:, 2:]], dim=1)


@pytest.fixture
def guidance_inputs():
    g = torch.Generator().manual_seed(0)
    cond = torch.rand(3, 4, 5, generator=g) + 1.0
    x = torch.randn(3, 6, 2, generator=g)
    f = torch.randn(3, generator=g)
    return cond, x, f


def _expected(net: StubNet, cond, x, f):
    return 2.0 * x + f.view(-1, 1, 1) + cond.sum((1, 2)).view(-1, 1, 1)


def test_guidance_lambda_one_uses_the_goal_only(guidance_inputs) -> None:
    cond, x, f = guidance_inputs
    net = StubNet()
    out = guided(net, cond, 1.0)(x, f)
    torch.testing.assert_close(out, _expected(net, cond, x, f))
    assert len(net.calls) == 1 and torch.equal(net.calls[0], cond)


def test_guidance_lambda_zero_uses_the_null_goal_only(guidance_inputs) -> None:
    cond, x, f = guidance_inputs
    net = StubNet()
    uncond = net.drop_goal(cond)
    out = guided(net, cond, 0.0)(x, f)
    torch.testing.assert_close(out, _expected(net, uncond, x, f))
    assert len(net.calls) == 1 and torch.equal(net.calls[0], uncond)
    assert not torch.allclose(out, _expected(net, cond, x, f))


@pytest.mark.parametrize("lam", [2.0, 0.5, -1.0])
def test_guidance_mixes_conditional_and_unconditional(guidance_inputs, lam: float) -> None:
    cond, x, f = guidance_inputs
    net = StubNet()
    out_c = _expected(net, cond, x, f)
    out_u = _expected(net, net.drop_goal(cond), x, f)
    out = guided(net, cond, lam)(x, f)
    torch.testing.assert_close(out, out_u + lam * (out_c - out_u))
    assert len(net.calls) == 1 and net.calls[0].shape[0] == 2 * cond.shape[0]  # one batched pass


# ----------------------------------------------------------------------------- normalization
@pytest.fixture
def norm_data():
    rng = np.random.default_rng(0)
    a = rng.uniform(-2, 3, (50, 4))
    a[:, 2] = 0.7  # constant dimension
    return {"action": a, "proprio": rng.normal(0, 5, (50, 3))}


def test_minmax_round_trip_and_range(norm_data) -> None:
    n = MinMaxNormalizer.fit(norm_data)
    for key, a in norm_data.items():
        z = n.normalize(key, a)
        np.testing.assert_allclose(n.denormalize(key, z), a, atol=1e-12)
        varying = np.ptp(a, axis=0) > 0
        np.testing.assert_allclose(z[:, varying].min(0), -1.0, atol=1e-12)
        np.testing.assert_allclose(z[:, varying].max(0), 1.0, atol=1e-12)
    # torch tensors take the same path
    t = torch.as_tensor(norm_data["action"], dtype=torch.float32)
    zt = n.normalize("action", t)
    assert isinstance(zt, torch.Tensor) and zt.dtype == torch.float32
    np.testing.assert_allclose(zt.numpy(), n.normalize("action", norm_data["action"]), atol=1e-5)
    torch.testing.assert_close(n.denormalize("action", zt), t, atol=1e-5, rtol=0)


def test_minmax_constant_dimension_maps_to_zero(norm_data) -> None:
    n = MinMaxNormalizer.fit(norm_data)
    z = n.normalize("action", norm_data["action"])
    np.testing.assert_allclose(z[:, 2], 0.0)
    np.testing.assert_allclose(n.denormalize("action", np.zeros(4))[2], 0.7)
    # off the constant by 0.01: shifted, not divided by a vanishing range (bounded by 0.01 / 1e-4)
    off = n.normalize("action", norm_data["action"] + 0.01)[:, 2]
    assert np.all(np.abs(off) <= 100.0 + 1e-6)


def test_minmax_json_round_trip(norm_data) -> None:
    n = MinMaxNormalizer.fit(norm_data)
    m = MinMaxNormalizer.from_json(json.loads(json.dumps(n.to_json())))
    for key, a in norm_data.items():
        np.testing.assert_array_equal(m.normalize(key, a), n.normalize(key, a))
    with pytest.raises(ValueError, match="malformed"):
        MinMaxNormalizer.from_json({"action": {"min": [0.0]}})


def test_minmax_rejects_nan_and_unknown_keys(norm_data) -> None:
    bad = dict(norm_data)
    bad["proprio"] = bad["proprio"].copy()
    bad["proprio"][3, 1] = np.nan
    with pytest.raises(ValueError, match="proprio"):
        MinMaxNormalizer.fit(bad)
    n = MinMaxNormalizer.fit(norm_data)
    with pytest.raises(KeyError, match="goal_gap"):
        n.normalize("goal_gap", np.zeros(1))


def test_minmax_union_covers_both_ranges(norm_data) -> None:
    a = MinMaxNormalizer.fit(norm_data)
    shifted = {k: v + 10.0 for k, v in norm_data.items()}
    u = a.union(MinMaxNormalizer.fit(shifted))
    for key in norm_data:
        for data in (norm_data[key], shifted[key]):
            z = u.normalize(key, data)
            varying = np.ptp(norm_data[key], axis=0) > 0
            assert np.all(np.abs(z[:, varying]) <= 1.0 + 1e-12)
    with pytest.raises(ValueError, match="other keys"):
        a.union(MinMaxNormalizer.fit({"action": norm_data["action"]}))
