"""Unit tests of mmlib.fusion: products and mixtures of Gaussian experts against independent computations."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from mmlib.fusion import (
    mixture_log_prob,
    mixture_mean,
    mixture_of_experts,
    mixture_of_products,
    mixture_sample,
    nonempty_subsets,
    product_of_experts,
    subset_masks,
)


def _experts(k: int = 3, n: int = 5, d: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(k, n, d, generator=gen, dtype=torch.float64) * 2
    log_vars = torch.randn(k, n, d, generator=gen, dtype=torch.float64)
    return means, log_vars


# --- product of experts ---------------------------------------------------------------------------------------------
def test_poe_matches_numerical_product_of_densities():
    """Normalise prod_k N(z; mu_k, s_k^2) (prior included) on a fine 1D grid and read off its mean and variance."""
    means, log_vars = _experts(k=3, n=4, d=2)
    mu, log_var = product_of_experts(means, log_vars)
    grid = torch.linspace(-12, 12, 24_001, dtype=torch.float64)
    step = grid[1] - grid[0]
    for i in range(4):
        for j in range(2):
            log_density = Normal(0.0, 1.0).log_prob(grid)  # the prior expert, once
            for k in range(3):
                log_density = log_density + Normal(means[k, i, j], (0.5 * log_vars[k, i, j]).exp()).log_prob(grid)
            weights = torch.softmax(log_density, dim=0)
            mean = (weights * grid).sum()
            var = (weights * (grid - mean) ** 2).sum()
            assert abs(float(mean - mu[i, j])) < 1e-6, "PoE mean = mean of the normalised product"
            assert abs(float(var - log_var[i, j].exp())) < 1e-6 + float(step), "PoE variance = its variance"


def test_poe_known_formula_two_experts_without_prior():
    """N(a, s^2) N(b, t^2) ∝ N((a t^2 + b s^2)/(s^2 + t^2), s^2 t^2/(s^2 + t^2))."""
    means = torch.tensor([[[1.0]], [[3.0]]], dtype=torch.float64)
    variances = torch.tensor([[[4.0]], [[1.0]]], dtype=torch.float64)
    mu, log_var = product_of_experts(means, variances.log(), prior=False)
    assert torch.allclose(mu, torch.tensor([[(1 * 1 + 3 * 4) / 5.0]], dtype=torch.float64))
    assert torch.allclose(log_var.exp(), torch.tensor([[4.0 / 5.0]], dtype=torch.float64))


def test_poe_mask_equals_dropping_the_expert_and_empty_gives_prior():
    means, log_vars = _experts()
    mask = torch.tensor([[True] * 5, [False] * 5, [True] * 5])
    masked = product_of_experts(means, log_vars, mask)
    dropped = product_of_experts(means[[0, 2]], log_vars[[0, 2]])
    assert torch.allclose(masked[0], dropped[0]) and torch.allclose(masked[1], dropped[1])
    none = torch.zeros(3, 5, dtype=torch.bool)
    mu, log_var = product_of_experts(means, log_vars, none)
    assert torch.equal(mu, torch.zeros_like(mu)) and torch.equal(log_var, torch.zeros_like(log_var)), "prior"
    with pytest.raises(ValueError, match="mask"):
        product_of_experts(means, log_vars, none, prior=False)


def test_poe_precision_adds_up():
    means, log_vars = _experts()
    _, log_var = product_of_experts(means, log_vars)
    assert torch.allclose((-log_var).exp(), 1 + (-log_vars).exp().sum(0)), "precisions add (prior precision 1)"


# --- mixtures -------------------------------------------------------------------------------------------------------
def test_moe_log_prob_matches_torch_mixture():
    means, log_vars = _experts(k=3, n=6, d=2)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[1, :3] = False
    m, lv, w = mixture_of_experts(means, log_vars, mask)
    assert torch.allclose(w.sum(0), torch.ones(6, dtype=torch.float64))
    z = torch.randn(6, 2, dtype=torch.float64)
    ours = mixture_log_prob(z, m, lv, w)
    for i in range(6):
        present = mask[:, i]
        comp = Independent(Normal(means[present, i], (0.5 * log_vars[present, i]).exp()), 1)
        mix = MixtureSameFamily(Categorical(probs=torch.ones(int(present.sum()), dtype=torch.float64)), comp)
        assert abs(float(mix.log_prob(z[i]) - ours[i])) < 1e-10, "log q_MoE = log of the average expert density"


def test_mixture_log_prob_integrates_to_one_in_1d():
    means = torch.tensor([[[-2.0]], [[1.0]], [[3.0]]], dtype=torch.float64)
    log_vars = torch.tensor([[[0.0]], [[-1.0]], [[0.5]]], dtype=torch.float64)
    _, _, w = mixture_of_experts(means, log_vars)
    grid = torch.linspace(-15, 15, 30_001, dtype=torch.float64)
    density = mixture_log_prob(grid.reshape(-1, 1, 1), means, log_vars, w).exp()[:, 0]
    assert abs(float(torch.trapezoid(density, grid)) - 1.0) < 1e-6


def test_moe_sampling_frequencies_and_moments():
    n = 20_000
    means = torch.tensor([[-3.0], [0.0], [4.0]], dtype=torch.float64).reshape(3, 1, 1).expand(3, n, 1).contiguous()
    log_vars = torch.full((3, n, 1), math.log(0.25), dtype=torch.float64)
    mask = torch.ones(3, n, dtype=torch.bool)
    mask[1] = False  # the middle expert is missing everywhere
    m, lv, w = mixture_of_experts(means, log_vars, mask)
    gen = torch.Generator().manual_seed(0)
    z, component = mixture_sample(m, lv, w, generator=gen)
    counts = torch.bincount(component, minlength=3).double() / n
    assert counts[1] == 0, "a missing expert is never chosen"
    assert abs(float(counts[0]) - 0.5) < 0.015 and abs(float(counts[2]) - 0.5) < 0.015, "observed experts 1/2 each"
    assert abs(float(z.mean()) - 0.5) < 0.1, "sample mean = mixture mean (-3 + 4)/2 (4 standard errors)"
    expected_var = 0.25 + 0.5 * (9 + 16) - 0.25  # E[var] + E[mu^2] - (E mu)^2
    assert abs(float(z.var()) - expected_var) < 0.25
    assert torch.allclose(mixture_mean(m, lv, w), torch.full((n, 1), 0.5, dtype=torch.float64))


def test_moe_needs_an_observed_expert():
    means, log_vars = _experts()
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[:, 2] = False
    with pytest.raises(ValueError, match="at least one observed"):
        mixture_of_experts(means, log_vars, mask)


# --- mixture of products --------------------------------------------------------------------------------------------
def test_subsets():
    assert nonempty_subsets(3) == [(0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]
    assert len(nonempty_subsets(5)) == 31
    assert subset_masks(2, device="cpu").tolist() == [[True, False], [False, True], [True, True]]


def test_mopoe_components_are_subset_products():
    means, log_vars = _experts()
    m, lv, w = mixture_of_products(means, log_vars)
    for c, subset in enumerate(nonempty_subsets(3)):
        mu, log_var = product_of_experts(means[list(subset)], log_vars[list(subset)])
        assert torch.allclose(m[c], mu) and torch.allclose(lv[c], log_var)
    assert torch.allclose(w, torch.full_like(w, 1 / 7))


def test_mopoe_missing_modality_keeps_only_observed_subsets():
    means, log_vars = _experts()
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[2, 0] = False  # example 0 lacks expert 2: subsets (0,), (1,), (0, 1) remain
    _, _, w = mixture_of_products(means, log_vars, mask)
    expected = torch.tensor([1 / 3, 1 / 3, 0, 1 / 3, 0, 0, 0], dtype=torch.float64)
    assert torch.allclose(w[:, 0], expected)
    assert torch.allclose(w[:, 1], torch.full((7,), 1 / 7, dtype=torch.float64))


# --- bad input ------------------------------------------------------------------------------------------------------
def test_bad_inputs_name_the_argument():
    means, log_vars = _experts()
    with pytest.raises(ValueError, match="log_vars"):
        product_of_experts(means, log_vars[:, :3])
    with pytest.raises(ValueError, match="means"):
        product_of_experts(means[0], log_vars[0])
    with pytest.raises(TypeError, match="means"):
        product_of_experts(means.numpy(), log_vars)
    with pytest.raises(ValueError, match="NaN"):
        product_of_experts(means * float("nan"), log_vars)
    with pytest.raises(ValueError, match="mask"):
        mixture_of_experts(means, log_vars, torch.ones(3, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask"):
        mixture_of_experts(means, log_vars, torch.full((3, 5), 0.5))
    m, lv, w = mixture_of_experts(means, log_vars)
    with pytest.raises(ValueError, match="weights"):
        mixture_log_prob(torch.zeros(5, 4, dtype=torch.float64), m, lv, w * 2)
    with pytest.raises(ValueError, match="z"):
        mixture_log_prob(torch.zeros(5, 3, dtype=torch.float64), m, lv, w)
    with pytest.raises(ValueError, match="num_experts"):
        nonempty_subsets(0)
