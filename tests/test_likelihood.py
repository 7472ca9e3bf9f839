"""Unit tests of mmlib.likelihood (chapter 01): hand-rolled densities against libraries, EM, discrete likelihoods."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch.distributions import Categorical, MultivariateNormal, Normal

from mmlib import exercises, likelihood
from mmlib.likelihood import (
    CategoricalMixture,
    bce_log_score,
    bce_total_mass,
    bits_per_pixel,
    categorical_log_likelihood,
    dequantize,
    discretized_gaussian_log_prob,
    fit_categorical,
    fit_categorical_mixture,
    fit_gaussian,
    fit_gaussian_gradient,
    gaussian_log_density,
    to_levels,
)

F64 = torch.float64


def _random_levels(n: int = 200, p: int = 6, levels: int = 17, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, levels, (n, p), generator=gen)


def _correlated_gaussian(n: int = 400, d: int = 3, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=gen, dtype=F64)
    return torch.randn(n, d, generator=gen, dtype=F64) @ a.T + torch.arange(d, dtype=F64)


# --- Gaussians --------------------------------------------------------------------------------------------------
def test_gaussian_log_density_matches_torch_and_scipy():
    x = _correlated_gaussian()
    mean, cov = fit_gaussian(x)
    mine = gaussian_log_density(x, mean, cov)
    lib = MultivariateNormal(mean, covariance_matrix=cov).log_prob(x)
    ref = stats.multivariate_normal(mean.numpy(), cov.numpy()).logpdf(x.numpy())
    assert torch.allclose(mine, lib, atol=1e-10)
    np.testing.assert_allclose(mine.numpy(), ref, atol=1e-10)


def test_fit_gaussian_is_the_mle():
    x = _correlated_gaussian()
    mean, cov = fit_gaussian(x)
    assert torch.allclose(mean, x.mean(0))
    assert torch.allclose(cov, torch.cov(x.T, correction=0))
    best = gaussian_log_density(x, mean, cov).mean()
    for shift in (0.05, -0.05):  # any perturbation lowers the likelihood
        assert gaussian_log_density(x, mean + shift, cov).mean() < best
        assert gaussian_log_density(x, mean, cov * (1 + shift)).mean() < best


def test_sufficient_statistics_give_the_average_log_likelihood():
    x = _correlated_gaussian()
    x_mean, x_cov = fit_gaussian(x)
    mean = torch.tensor([0.5, -1.0, 2.0], dtype=F64)
    tril = torch.tensor([[1.5, 0, 0], [0.3, 0.8, 0], [-0.2, 0.4, 2.0]], dtype=F64)
    direct = MultivariateNormal(mean, scale_tril=tril).log_prob(x).mean()
    assert torch.allclose(likelihood.gaussian_average_log_likelihood(mean, tril, x_mean, x_cov), direct, atol=1e-10)


def test_gradient_ascent_reaches_the_closed_form():
    x = _correlated_gaussian(n=300, d=3)
    mean, cov = fit_gaussian(x)
    g_mean, g_cov, history = fit_gaussian_gradient(x, progress=False)
    best = gaussian_log_density(x, mean, cov).mean()
    reached = gaussian_log_density(x, g_mean, g_cov).mean()
    assert float(best - reached) < 1e-4
    assert torch.allclose(g_mean, mean, atol=1e-2) and torch.allclose(g_cov, cov, atol=2e-2)
    assert history["loss"][-1] < history["loss"][0]


def test_gaussian_bad_input():
    x = _correlated_gaussian()
    mean, cov = fit_gaussian(x)
    with pytest.raises(ValueError, match="x"):
        gaussian_log_density(x[:, :2], mean, cov)
    with pytest.raises(ValueError, match="cov"):
        gaussian_log_density(x, mean, -cov)
    with pytest.raises(ValueError, match="x"):
        fit_gaussian(torch.full((4, 2), float("nan"), dtype=F64))
    with pytest.raises(ValueError, match="x"):
        fit_gaussian(x[:1])
    with pytest.raises(TypeError, match="x"):
        fit_gaussian(x.numpy())
    with pytest.raises(ValueError, match="steps"):
        fit_gaussian_gradient(x, steps=0)


# --- discrete versus continuous ------------------------------------------------------------------------------------
def test_discretized_gaussian_is_a_probability_and_matches_cdf_differences():
    levels = torch.arange(17)
    for mu, sigma in ((3.0, 0.3), (8.0, 4.0), (16.2, 0.05), (-5.0, 1.0), (40.0, 2.0)):
        log_p = discretized_gaussian_log_prob(levels, mu, sigma)
        assert abs(float(log_p.exp().sum()) - 1) < 1e-12, (mu, sigma)
    normal = Normal(torch.tensor(7.3, dtype=F64), torch.tensor(2.1, dtype=F64))
    inner = torch.arange(1, 16)
    want = (normal.cdf(inner.to(F64) + 0.5) - normal.cdf(inner.to(F64) - 0.5)).log()
    assert torch.allclose(discretized_gaussian_log_prob(inner, 7.3, 2.1), want, atol=1e-12)
    # far in a tail, the direct CDF difference cancels to 0 but ours stays finite
    far = discretized_gaussian_log_prob(torch.tensor([3]), 16.0, 0.5)
    assert torch.isfinite(far).all() and float(far) < -300


def test_discretized_gaussian_has_finite_gradients_at_the_end_levels():
    mu = torch.tensor(8.0, dtype=F64, requires_grad=True)
    log_sigma = torch.tensor(1.0, dtype=F64, requires_grad=True)
    discretized_gaussian_log_prob(torch.tensor([0, 16, 5, 11]), mu, log_sigma.exp()).sum().backward()
    assert torch.isfinite(mu.grad) and torch.isfinite(log_sigma.grad)


def test_dequantisation_is_a_lower_bound():
    gen = torch.Generator().manual_seed(0)
    levels = torch.tensor([2, 5, 9, 12])
    mu, sigma = 7.0, 3.0
    # P(k) = mass of N(mu, sigma^2) on [k, k+1): compare with the mean log density of k + u
    normal = Normal(torch.tensor(mu, dtype=F64), torch.tensor(sigma, dtype=F64))
    exact = (normal.cdf(levels + 1.0) - normal.cdf(levels.to(F64))).log()
    draws = torch.stack([dequantize(levels, generator=gen) for _ in range(4000)])
    bound = normal.log_prob(draws).mean(0)
    assert bool((bound <= exact + 1e-3).all())
    assert bool(((draws >= levels) & (draws < levels + 1)).all())
    # ... and uniform inside the bin: the offsets k + u - k pass a Kolmogorov-Smirnov test against U[0, 1)
    offsets = (draws - levels).flatten().double().numpy()
    assert stats.kstest(offsets, "uniform").pvalue > 0.01


def test_bce_is_not_normalised_except_for_binary_data():
    p = torch.tensor([0.01, 0.2, 0.5, 0.9], dtype=F64)
    mass = bce_total_mass(p)
    assert bool((mass > 1.5).all())
    assert abs(float(bce_total_mass(torch.tensor([0.5], dtype=F64))) - 8.5) < 1e-12  # 17 terms of exp(log 0.5)
    assert torch.allclose(bce_total_mass(p, num_levels=2), torch.ones_like(p))
    levels = _random_levels(5, 3)
    probs = torch.full((3,), 0.3, dtype=F64)
    t = levels.to(F64) / 16
    want = -torch.nn.functional.binary_cross_entropy(probs.expand(5, 3), t, reduction="none").sum(1)
    assert torch.allclose(bce_log_score(levels, probs), want)


def test_to_levels_and_bits_per_pixel():
    levels = _random_levels(4, 64).reshape(4, 1, 8, 8)
    assert torch.equal(to_levels(levels.float() / 16), levels.reshape(4, 64))
    assert torch.equal(to_levels(levels.reshape(4, 8, 8)), levels.reshape(4, 64))
    assert math.isclose(bits_per_pixel(-64 * math.log(2), 64), 1.0)
    with pytest.raises(ValueError, match="images"):
        to_levels(torch.full((2, 8, 8), 1.5))
    with pytest.raises(ValueError, match="images"):
        to_levels(torch.full((2, 8, 8), 17))
    with pytest.raises(ValueError, match="images"):
        to_levels(torch.full((2, 8, 8), float("nan")))


# --- categorical models -------------------------------------------------------------------------------------------
def test_categorical_fit_and_log_likelihood_match_torch():
    train, test = _random_levels(300, 5), _random_levels(50, 5, seed=1)
    log_probs = fit_categorical(train, alpha=0.5)
    assert torch.allclose(log_probs.exp().sum(1), torch.ones(5, dtype=F64))
    counts = torch.stack([torch.bincount(train[:, p], minlength=17) for p in range(5)]).to(F64)
    assert torch.allclose(log_probs.exp(), (counts + 0.5) / (300 + 17 * 0.5))
    lib = Categorical(logits=log_probs).log_prob(test).sum(1)
    assert torch.allclose(categorical_log_likelihood(test, log_probs), lib)


def test_unsmoothed_categorical_gives_minus_infinity_on_unseen_levels():
    train = torch.zeros(10, 2, dtype=torch.long)
    test = torch.tensor([[0, 0], [0, 3]])
    ll = categorical_log_likelihood(test, fit_categorical(train, alpha=0.0))
    assert float(ll[0]) == 0.0 and ll[1] == -math.inf
    assert torch.isfinite(categorical_log_likelihood(test, fit_categorical(train, alpha=0.5))).all()


def test_mixture_with_one_component_is_the_independent_model():
    train = _random_levels(200, 6)
    mixture, _ = fit_categorical_mixture(train, 1, alpha=0.5, iterations=3)
    assert torch.allclose(mixture.log_probs[0], fit_categorical(train, alpha=0.5))
    assert torch.allclose(mixture.log_likelihood(train), categorical_log_likelihood(train, mixture.log_probs[0]))


def test_mixture_log_likelihood_matches_torch_mixture():
    mixture, _ = fit_categorical_mixture(_random_levels(150, 4), 3, iterations=5)
    x = _random_levels(20, 4, seed=3)
    from torch.distributions import Independent, MixtureSameFamily

    lib = MixtureSameFamily(Categorical(logits=mixture.log_weights),
                            Independent(Categorical(logits=mixture.log_probs), 1))
    assert torch.allclose(mixture.log_likelihood(x), lib.log_prob(x))


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_em_never_decreases_its_objective(alpha: float):
    # structured data: two prototypes plus noise
    gen = torch.Generator().manual_seed(0)
    proto = torch.randint(0, 17, (2, 10), generator=gen)
    which = torch.randint(0, 2, (300,), generator=gen)
    noise = torch.rand(300, 10, generator=gen) < 0.3
    x = torch.where(noise, torch.randint(0, 17, (300, 10), generator=gen), proto[which])
    _, history = fit_categorical_mixture(x, 4, alpha=alpha, iterations=40)
    objective = history["objective"]
    assert float(objective.diff().min()) > -1e-9
    if alpha == 0:
        assert torch.equal(objective, history["log_likelihood"])
    assert objective[-1] > objective[0]


def test_em_tolerance_stops_early_at_the_same_answer():
    x = _random_levels(200, 6)
    full, h_full = fit_categorical_mixture(x, 3, iterations=200)
    early, h_early = fit_categorical_mixture(x, 3, iterations=200, tol=1e-4)
    assert len(h_early["objective"]) < len(h_full["objective"])
    assert 0 <= float(h_full["objective"][-1] - h_early["objective"][-1]) < 1e-2
    with pytest.raises(ValueError, match="tol"):
        fit_categorical_mixture(x, 3, tol=0.0)


def test_mixture_is_deterministic_and_samples_valid_levels():
    x = _random_levels(100, 8)
    a, _ = fit_categorical_mixture(x, 3, iterations=5, seed=4)
    b, _ = fit_categorical_mixture(x, 3, iterations=5, seed=4)
    assert torch.equal(a.log_probs, b.log_probs)
    samples = a.sample(7, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (7, 8) and int(samples.min()) >= 0 and int(samples.max()) <= 16
    assert isinstance(a, CategoricalMixture) and a.components == 3


def test_categorical_bad_input():
    x = _random_levels(20, 4)
    with pytest.raises(ValueError, match="components"):
        fit_categorical_mixture(x, 0)
    with pytest.raises(ValueError, match="components"):
        fit_categorical_mixture(x, 21)
    with pytest.raises(ValueError, match="alpha"):
        fit_categorical(x, alpha=-1.0)
    with pytest.raises(ValueError, match="levels"):
        fit_categorical(x + 17)
    with pytest.raises(TypeError, match="levels"):
        fit_categorical(x.float())
    mixture, _ = fit_categorical_mixture(x, 2, iterations=1)
    with pytest.raises(ValueError, match="levels"):
        mixture.log_likelihood(x[:, :3])
    with pytest.raises(ValueError, match="val_levels"):
        likelihood.categorical_mixture_sweep(x, x[:, :3], x, components=[1])
    with pytest.raises(ValueError, match="std"):
        discretized_gaussian_log_prob(torch.arange(3), 1.0, 0.0)
    with pytest.raises(ValueError, match="p"):
        bce_total_mass(torch.tensor([1.0]))


def test_sweep_selects_on_validation():
    train, val, test = _random_levels(120, 6), _random_levels(40, 6, seed=1), _random_levels(40, 6, seed=2)
    sweep = likelihood.categorical_mixture_sweep(train, val, test, components=[1, 3], iterations=5)
    assert sweep.components == [1, 3] and len(sweep.val) == 2
    assert sweep.best_components == sweep.components[int(np.argmax(sweep.val))]
    assert sweep.best_test == sweep.test[sweep.best_index]


# --- exercises ----------------------------------------------------------------------------------------------------
def test_exercise_checkers_pass_on_solutions_and_fail_on_wrong_answers():
    def smoothed(values, alpha, num_levels):
        counts = torch.bincount(values, minlength=num_levels).to(torch.float64)
        return (counts + alpha) / (values.numel() + num_levels * alpha)

    def unsmoothed(values, alpha, num_levels):
        counts = torch.bincount(values, minlength=num_levels).to(torch.float64)
        return counts / values.numel()

    exercises.check("01.2", smoothed)
    assert exercises.RESULTS["01.2"]
    exercises.check("01.2", unsmoothed)
    assert not exercises.RESULTS["01.2"]

    exercises.check("01.3", lambda lw, ll: torch.softmax(lw + ll, dim=1))
    assert exercises.RESULTS["01.3"]
    naive = lambda lw, ll: (lw + ll).exp() / (lw + ll).exp().sum(1, keepdim=True)
    exercises.check("01.3", naive)
    assert not exercises.RESULTS["01.3"]
    exercises.check("01.3", lambda lw, ll: torch.softmax(ll, dim=1))  # forgets the weights
    assert not exercises.RESULTS["01.3"]
