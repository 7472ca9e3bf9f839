"""Fusing the experts of several modalities into one posterior over the shared latent (notebook 07).

Each modality ``m`` has an encoder — an *expert* — that proposes a diagonal Gaussian ``q_m(z | x_m) = N(mu_m, diag
sigma_m^2)``. A multimodal VAE needs one posterior ``q(z | X_O)`` for whatever subset ``O`` of modalities is observed.
Three ways to fuse, each a small pure function on stacked expert parameters:

- :func:`product_of_experts` (MVAE, Wu & Goodman 2018): ``q(z | X_O) ∝ p(z) prod_{m in O} q_m(z | x_m)`` — a
  Gaussian again, with summed precisions and a precision-weighted mean; the prior ``N(0, I)`` is one expert, counted
  once.
- :func:`mixture_of_experts` (MMVAE, Shi et al. 2019): ``q(z | X_O) = (1/|O|) sum_{m in O} q_m(z | x_m)``.
- :func:`mixture_of_products` (MoPoE, Sutter et al. 2021): a uniform mixture, over every non-empty subset ``S`` of
  ``O``, of the products ``p(z) prod_{m in S} q_m(z | x_m)``.

A mixture is described by three tensors ``(means, log_vars, weights)`` of shapes ``(C, N, D)``, ``(C, N, D)`` and
``(C, N)``: ``C`` components for each of ``N`` examples, with weights summing to one per example.
:func:`mixture_log_prob` and :func:`mixture_sample` evaluate and sample any of them.

Conventions: experts are stacked along the first dimension — ``means`` and ``log_vars`` ``(K, N, D)`` for ``K``
modalities — and ``mask`` ``(K, N)`` (bool) says which modality is observed for which example (``None``: all).
Variances are always carried as log-variances, named ``log_var``.
"""

from __future__ import annotations

import itertools
import math

import torch

from mmlib.checks import check_generator, check_int, check_tensor

__all__ = [
    "product_of_experts",
    "mixture_of_experts",
    "mixture_of_products",
    "nonempty_subsets",
    "subset_masks",
    "mixture_log_prob",
    "mixture_sample",
    "mixture_mean",
]


def _check_experts(
    means: object, log_vars: object, mask: object | None, *, names: tuple[str, str] = ("means", "log_vars")
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate stacked experts ``(K, N, D)`` and the observation mask ``(K, N)``; returns the mask as bool."""
    means = check_tensor(means, names[0], ndim=3, floating=True)
    log_vars = check_tensor(log_vars, names[1], ndim=3, floating=True)
    if log_vars.shape != means.shape:
        raise ValueError(
            f"{names[1]}: expected the shape of {names[0]} {tuple(means.shape)} (experts, examples, latent), "
            f"got {tuple(log_vars.shape)}"
        )
    if means.device != log_vars.device:
        raise ValueError(f"{names[1]}: on {log_vars.device}, but {names[0]} is on {means.device}")
    if mask is None:
        return means, log_vars, torch.ones(means.shape[:2], dtype=torch.bool, device=means.device)
    mask = check_tensor(mask, "mask", ndim=2)
    if tuple(mask.shape) != tuple(means.shape[:2]):
        raise ValueError(
            f"mask: expected shape (experts, examples) = {tuple(means.shape[:2])} like {names[0]}, "
            f"got {tuple(mask.shape)}"
        )
    if mask.dtype != torch.bool:
        if mask.is_floating_point() or not bool(((mask == 0) | (mask == 1)).all()):
            raise TypeError(f"mask: expected a bool (or 0/1 integer) tensor, got dtype {mask.dtype}")
        mask = mask.bool()
    return means, log_vars, mask.to(means.device)


def product_of_experts(
    means: torch.Tensor, log_vars: torch.Tensor, mask: torch.Tensor | None = None, *, prior: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Product of Gaussian experts: the Gaussian ``prod_k N(mu_k, sigma_k^2)`` (normalised), per example.

    With precisions ``T_k = 1 / sigma_k^2`` and the prior ``N(0, I)`` as one more expert (``prior=True``)::

        T = 1 + sum_{k observed} T_k,      mu = (sum_{k observed} T_k mu_k) / T,      sigma^2 = 1 / T.

    Unobserved experts (``mask`` False) contribute nothing, so an example with no observed modality gets the prior.
    ``means``, ``log_vars``: ``(K, N, D)``; ``mask``: ``(K, N)`` bool or ``None`` (all observed).
    Returns ``(mean, log_var)``, each ``(N, D)``. Notebook 07 derives it.
    """
    means, log_vars, mask = _check_experts(means, log_vars, mask)
    if not prior and not bool(mask.any(dim=0).all()):
        raise ValueError("mask: without the prior expert every example needs at least one observed expert")
    return _product_of_experts(means, log_vars, mask, prior)


def _product_of_experts(
    means: torch.Tensor, log_vars: torch.Tensor, mask: torch.Tensor | None, prior: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`product_of_experts` without validation (the models' hot path: no host synchronisation)."""
    precision = torch.exp(-log_vars)  # (K, N, D)
    if mask is not None:
        precision = precision * mask.unsqueeze(-1)  # zero for missing experts
    total = precision.sum(dim=0) + (1.0 if prior else 0.0)  # (N, D)
    mean = (precision * means).sum(dim=0) / total
    return mean, -torch.log(total)


def mixture_of_experts(
    means: torch.Tensor, log_vars: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mixture of experts: ``q(z | X_O) = (1/|O|) sum_{k in O} N(z; mu_k, sigma_k^2)``, per example.

    The components are the experts themselves; the weights are uniform over the observed experts (``1/|O|``, zero for
    missing ones). Returns the mixture ``(means (K, N, D), log_vars (K, N, D), weights (K, N))``.
    Raises ``ValueError`` if some example observes no modality (a mixture of nothing has no density).
    """
    means, log_vars, mask = _check_experts(means, log_vars, mask)
    if not bool(mask.any(dim=0).all()):
        raise ValueError("mask: every example needs at least one observed modality for a mixture of experts")
    return _mixture_of_experts(means, log_vars, mask)


def _mixture_of_experts(
    means: torch.Tensor, log_vars: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`mixture_of_experts` without validation."""
    weights = mask.to(means.dtype)
    return means, log_vars, weights / weights.sum(dim=0)


def nonempty_subsets(num_experts: int) -> list[tuple[int, ...]]:
    """Every non-empty subset of ``{0, ..., num_experts - 1}`` as a sorted tuple, smallest subsets first
    (``2^K - 1`` of them); for three modalities: (0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)."""
    num_experts = check_int(num_experts, "num_experts", low=1, high=16)
    return [s for r in range(1, num_experts + 1) for s in itertools.combinations(range(num_experts), r)]


def subset_masks(num_experts: int, *, device: torch.device | str | None = None) -> torch.Tensor:
    """The subsets of :func:`nonempty_subsets` as a bool membership matrix ``(2^K - 1, K)``."""
    from mmlib.device import resolve_device

    subsets = nonempty_subsets(num_experts)
    out = torch.zeros(len(subsets), num_experts, dtype=torch.bool)
    for i, subset in enumerate(subsets):
        out[i, list(subset)] = True
    return out.to(resolve_device(device))


def mixture_of_products(
    means: torch.Tensor, log_vars: torch.Tensor, mask: torch.Tensor | None = None, *, prior: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mixture of products of experts (MoPoE): a uniform mixture of the products of every non-empty subset.

    ``q(z | X_O) = (1 / |P(O)|) sum_{S in P(O)} PoE_S(z)`` with ``PoE_S = p(z) prod_{k in S} q_k``
    (:func:`product_of_experts`, with the prior expert when ``prior``), where ``P(O)`` holds the non-empty subsets
    of the observed experts. The components are all ``2^K - 1`` subsets in the order of :func:`nonempty_subsets`;
    a subset that contains a missing expert gets weight zero for that example.
    Returns ``(means (S, N, D), log_vars (S, N, D), weights (S, N))``.
    """
    means, log_vars, mask = _check_experts(means, log_vars, mask)
    if not bool(mask.any(dim=0).all()):
        raise ValueError("mask: every example needs at least one observed modality for a mixture of products")
    return _mixture_of_products(means, log_vars, mask, prior)


def _mixture_of_products(
    means: torch.Tensor, log_vars: torch.Tensor, mask: torch.Tensor, prior: bool = True,
    members: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`mixture_of_products` without validation. ``members``: :func:`subset_masks` already on the device (a
    model keeps it, so that a training step builds nothing from host data). Each product masks the experts outside
    its subset instead of selecting the members by a boolean index, whose size a GPU would first have to report
    back to the host; adding their exact zeros gives the same sums, bit for bit."""
    if members is None:
        members = subset_masks(means.shape[0], device=means.device)  # (S, K)
    products = [_product_of_experts(means, log_vars, row.unsqueeze(1), prior) for row in members]
    # subset S is available for example n when every member is observed: S ⊆ O_n
    available = (members.unsqueeze(-1) <= mask.unsqueeze(0)).all(dim=1).to(means.dtype)  # (S, N)
    weights = available / available.sum(dim=0)
    return torch.stack([m for m, _ in products]), torch.stack([lv for _, lv in products]), weights


def _check_mixture(means: object, log_vars: object, weights: object) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    means, log_vars, _ = _check_experts(means, log_vars, None)
    weights = check_tensor(weights, "weights", ndim=2, floating=True)
    if tuple(weights.shape) != tuple(means.shape[:2]):
        raise ValueError(f"weights: expected shape (components, examples) = {tuple(means.shape[:2])}, "
                         f"got {tuple(weights.shape)}")
    if bool((weights < 0).any()) or not torch.allclose(weights.sum(dim=0), torch.ones_like(weights[0]), atol=1e-5):
        raise ValueError("weights: expected non-negative mixture weights that sum to 1 for every example")
    return means, log_vars, weights


def mixture_log_prob(
    z: torch.Tensor, means: torch.Tensor, log_vars: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """``log q(z) = log sum_c w_c N(z; mu_c, diag sigma_c^2)`` for each example; ``z`` ``(N, D)`` or ``(R, N, D)``
    (``R`` draws per example). Computed with ``logsumexp``; components of weight 0 drop out. Returns ``(N,)`` or
    ``(R, N)``."""
    means, log_vars, weights = _check_mixture(means, log_vars, weights)
    z = check_tensor(z, "z", ndim=(2, 3), floating=True)
    if tuple(z.shape[-2:]) != tuple(means.shape[1:]):
        raise ValueError(f"z: expected (..., examples, latent) = (..., {means.shape[1]}, {means.shape[2]}), "
                         f"got {tuple(z.shape)}")
    return _mixture_log_prob(z, means, log_vars, weights)


def _mixture_log_prob(
    z: torch.Tensor, means: torch.Tensor, log_vars: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """:func:`mixture_log_prob` without validation."""
    zc = z.unsqueeze(-3)  # (..., 1, N, D) against (C, N, D)
    log_normal = -0.5 * (math.log(2 * math.pi) + log_vars + (zc - means) ** 2 * torch.exp(-log_vars)).sum(-1)
    return torch.logsumexp(log_normal + torch.log(weights), dim=-2)


def mixture_sample(
    means: torch.Tensor, log_vars: torch.Tensor, weights: torch.Tensor, *, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One draw per example from the mixture: ``c ~ Categorical(w)``, then ``z = mu_c + sigma_c * eps``.

    Returns ``(z (N, D), component (N,))``. The draw is reparameterised given ``c`` (gradients flow to ``mu_c`` and
    ``sigma_c``, not to the choice of ``c``).
    """
    generator = check_generator(generator, "generator")
    means, log_vars, weights = _check_mixture(means, log_vars, weights)
    return _mixture_sample(means, log_vars, weights, generator)


def _mixture_sample(
    means: torch.Tensor, log_vars: torch.Tensor, weights: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`mixture_sample` without validation."""
    component = torch.multinomial(weights.T, 1, generator=generator).squeeze(1)  # (N,)
    rows = torch.arange(means.shape[1], device=means.device)
    mu, log_var = means[component, rows], log_vars[component, rows]
    eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + torch.exp(0.5 * log_var) * eps, component


def mixture_mean(means: torch.Tensor, log_vars: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The mean of the mixture, ``E[z] = sum_c w_c mu_c``, ``(N, D)`` (a point summary for probes and retrieval)."""
    means, log_vars, weights = _check_mixture(means, log_vars, weights)
    return (weights.unsqueeze(-1) * means).sum(dim=0)
