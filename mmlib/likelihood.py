"""Single-modality likelihoods: the article's eq. (1), continuous and discrete (taught in notebook 01).

Eq. (1) is the likelihood of ``m`` independent samples, ``L(theta) = prod_i p_theta(x_i)``; we always work with the
average log-likelihood ``l(theta) = (1/m) sum_i log p_theta(x_i)`` (nats per sample). This module holds the pieces
notebook 01 teaches and later chapters reuse:

- a Gaussian: :func:`gaussian_log_density` (written by hand), :func:`fit_gaussian` (closed-form MLE) and
  :func:`fit_gaussian_gradient` (gradient ascent with autograd);
- densities versus probabilities on discrete data: :func:`dequantize`, :func:`discretized_gaussian_log_prob`,
  :func:`bce_total_mass`;
- proper discrete likelihoods of the 17-level digit images: :func:`fit_categorical` (independent pixels, add-alpha
  smoothing), :func:`categorical_log_likelihood`, and the mixture :class:`CategoricalMixture` fitted by EM
  (:func:`fit_categorical_mixture`);
- the held-out sweep over the number of components, experiment ``likelihood-digits``, whose best model is the
  non-latent baseline chapter 04's VAE must beat: :func:`baseline_test_log_likelihood`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch

from mmlib.checks import check_generator, check_int, check_positive, check_tensor
from mmlib.device import resolve_device
from mmlib.exercises import exercise
from mmlib.experiments import Result, register
from mmlib.seed import seed_everything
from mmlib.train import History, loss_step, make_optimizer, train

__all__ = [
    "NUM_LEVELS",
    "DEFAULT_ALPHA",
    "DEFAULT_COMPONENTS",
    "compute_dtype",
    "to_levels",
    "bits_per_pixel",
    "gaussian_log_density",
    "fit_gaussian",
    "gaussian_average_log_likelihood",
    "fit_gaussian_gradient",
    "dequantize",
    "discretized_gaussian_log_prob",
    "bce_log_score",
    "bce_total_mass",
    "fit_categorical",
    "categorical_log_likelihood",
    "CategoricalMixture",
    "fit_categorical_mixture",
    "MixtureSweep",
    "categorical_mixture_sweep",
    "baseline_test_log_likelihood",
    "likelihood_digits",
]

#: Grey levels of the digit images (0..16).
NUM_LEVELS: int = 17
#: Add-alpha pseudo-count of the categorical models (alpha = 1/2: the Krichevsky-Trofimov / Jeffreys choice).
DEFAULT_ALPHA: float = 0.5
#: Numbers of mixture components swept by experiment ``likelihood-digits``.
DEFAULT_COMPONENTS: tuple[int, ...] = (1, 2, 5, 10, 20, 50, 100)


def compute_dtype(device: torch.device) -> torch.dtype:
    """float64 where the device supports it (CPU, CUDA), float32 on Apple's MPS (which has no float64)."""
    device = resolve_device(device)
    return torch.float32 if device.type == "mps" else torch.float64


# ---------------------------------------------------------------------------------------------------------------------
# Data representation
# ---------------------------------------------------------------------------------------------------------------------


def to_levels(images: torch.Tensor, num_levels: int = NUM_LEVELS) -> torch.Tensor:
    """Flatten images to integer grey levels ``(N, P)`` in ``0..num_levels-1``.

    Accepts integer levels of any shape ``(N, ...)`` or float images in [0, 1] (``level / (num_levels - 1)``, the
    representation of ``load_multimodal_digits``), which are rounded back to their levels.
    """
    num_levels = check_int(num_levels, "num_levels", low=2)
    images = check_tensor(images, "images", ndim=(2, 3, 4))
    if images.is_floating_point():
        if bool((images < 0).any()) or bool((images > 1).any()):
            raise ValueError("images: float images must lie in [0, 1] (grey level / (num_levels - 1))")
        levels = (images * (num_levels - 1)).round().long()
    elif images.dtype in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        levels = images.long()
        if bool((levels < 0).any()) or bool((levels >= num_levels).any()):
            raise ValueError(f"images: integer levels must lie in 0..{num_levels - 1}")
    else:
        raise TypeError(f"images: expected float images in [0, 1] or integer levels, got dtype {images.dtype}")
    return levels.reshape(levels.shape[0], -1)


def bits_per_pixel(log_likelihood: float | torch.Tensor, num_pixels: int) -> float | torch.Tensor:
    """Convert a log-likelihood in nats per image into bits per pixel: ``-l / (P ln 2)`` (lower is better)."""
    num_pixels = check_int(num_pixels, "num_pixels", low=1)
    if isinstance(log_likelihood, torch.Tensor):
        log_likelihood = check_tensor(log_likelihood, "log_likelihood", floating=True, nonempty=False)
    elif isinstance(log_likelihood, bool) or not isinstance(log_likelihood, (int, float)):
        raise TypeError(f"log_likelihood: expected a number or a tensor, got {type(log_likelihood).__name__}")
    elif not math.isfinite(log_likelihood):
        raise ValueError(f"log_likelihood: expected a finite number, got {log_likelihood}")
    return -log_likelihood / (num_pixels * math.log(2.0))


# ---------------------------------------------------------------------------------------------------------------------
# Gaussians: eq. (1) in closed form and by gradient ascent
# ---------------------------------------------------------------------------------------------------------------------


def gaussian_log_density(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """``log N(x; mean, cov) = -1/2 [D log 2 pi + log det cov + (x - mean)^T cov^{-1} (x - mean)]`` per row ``(N,)``.

    Written by hand with a Cholesky factor ``cov = L L^T`` (``log det cov = 2 sum log L_ii``; the quadratic form is
    ``|L^{-1}(x - mean)|^2``). Notebook 01 checks it against ``torch.distributions`` and ``scipy.stats``.
    """
    x = check_tensor(x, "x", ndim=2, floating=True)
    d = x.shape[1]
    mean = check_tensor(mean, "mean", shape=(d,), floating=True)
    cov = check_tensor(cov, "cov", shape=(d, d), floating=True)
    chol, info = torch.linalg.cholesky_ex(cov)
    if bool(info != 0):
        raise ValueError("cov: expected a symmetric positive-definite covariance matrix (its Cholesky failed)")
    diff = (x - mean).T  # (D, N)
    solved = torch.linalg.solve_triangular(chol, diff, upper=False)
    quad = (solved**2).sum(0)
    log_det = 2.0 * chol.diagonal().log().sum()
    return -0.5 * (d * math.log(2 * math.pi) + log_det + quad)


def fit_gaussian(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form maximum likelihood of ``N(mean, cov)``: ``mean = (1/m) sum x_i``,
    ``cov = (1/m) sum (x_i - mean)(x_i - mean)^T`` (divided by m, not m - 1)."""
    x = check_tensor(x, "x", ndim=2, floating=True)
    if x.shape[0] < 2:
        raise ValueError(f"x: expected at least 2 samples to estimate a covariance, got {x.shape[0]}")
    mean = x.mean(0)
    centred = x - mean
    return mean, centred.T @ centred / x.shape[0]


def gaussian_average_log_likelihood(
    mean: torch.Tensor, scale_tril: torch.Tensor, x_mean: torch.Tensor, x_cov: torch.Tensor
) -> torch.Tensor:
    """The average Gaussian log-likelihood of a data set from its sufficient statistics:

    ``(1/m) sum_i log N(x_i; mean, L L^T) = -1/2 [D log 2 pi + log det(L L^T) + tr(Sigma^{-1} S)
    + (xbar - mean)^T Sigma^{-1} (xbar - mean)]`` with ``xbar = x_mean`` and ``S = x_cov`` (divided by m).
    The data enter only through ``xbar`` and ``S``, so one evaluation costs a D x D computation, whatever m.
    It is the loss of every step of :func:`fit_gaussian_gradient`, so only shapes are checked here, not values (no
    host synchronisation); a NaN comes back as a NaN loss, which the trainer stops on.
    """
    scale_tril = check_tensor(scale_tril, "scale_tril", ndim=2, floating=True, finite=False)
    d = scale_tril.shape[0]
    if d == 0 or scale_tril.shape[1] != d:
        raise ValueError(f"scale_tril: expected a non-empty square matrix, got shape {tuple(scale_tril.shape)}")
    mean = check_tensor(mean, "mean", shape=(d,), floating=True, finite=False)
    x_mean = check_tensor(x_mean, "x_mean", shape=(d,), floating=True, finite=False)
    x_cov = check_tensor(x_cov, "x_cov", shape=(d, d), floating=True, finite=False)
    diff = (x_mean - mean)[:, None]
    trace = torch.cholesky_solve(x_cov, scale_tril).diagonal().sum()
    quad = (diff * torch.cholesky_solve(diff, scale_tril)).sum()
    return -0.5 * (d * math.log(2 * math.pi) + 2 * scale_tril.diagonal().log().sum() + trace + quad)


def fit_gaussian_gradient(
    x: torch.Tensor,
    *,
    steps: int = 1200,
    lr: float = 0.1,
    log_every: int = 50,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, History]:
    """Maximise the Gaussian average log-likelihood of ``x`` by gradient ascent (Adam, cosine-decayed rate).

    Full batch: the objective is :func:`gaussian_average_log_likelihood` of the sample mean and covariance of ``x``
    (computed once; the same function of the parameters as the mean of the ``m`` log-densities). The covariance is
    parametrised by its Cholesky factor ``L`` (lower triangular, positive diagonal through ``exp``), so every step
    keeps it positive definite. Starts from ``mean = 0``, ``L = I`` times the data's overall spread. Returns
    ``(mean, cov, history)`` with ``history["loss"]`` the negative log-likelihood in nats per sample.
    """
    x = check_tensor(x, "x", ndim=2, floating=True)
    steps = check_int(steps, "steps", low=1)
    lr = check_positive(lr, "lr")
    x_mean, x_cov = fit_gaussian(x)
    d = x.shape[1]
    scale = x.std().clamp_min(1e-3).detach()
    mean = torch.zeros(d, device=x.device, dtype=x.dtype, requires_grad=True)
    raw = torch.zeros(d, d, device=x.device, dtype=x.dtype)
    raw.diagonal().fill_(float(scale.log()))
    raw.requires_grad_(True)
    lower = torch.ones(d, d, device=x.device, dtype=x.dtype).tril(-1)  # strictly-lower mask

    def scale_tril() -> torch.Tensor:
        return raw * lower + torch.diag_embed(raw.diagonal().exp())

    def negative_log_likelihood(batch: torch.Tensor) -> torch.Tensor:
        # full batch: ``batch`` is ``x``, whose sufficient statistics were computed once above
        return -gaussian_average_log_likelihood(mean, scale_tril(), x_mean, x_cov)

    optimizer = make_optimizer([mean, raw], lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    step = loss_step(negative_log_likelihood, optimizer, scheduler=schedule)
    history = train(step, x, steps=steps, batch_size=None, log_every=log_every, desc="Gaussian MLE (gradient)",
                    progress=progress)
    with torch.no_grad():
        tril = scale_tril()
        return mean.detach().clone(), tril @ tril.T, history


# ---------------------------------------------------------------------------------------------------------------------
# Densities versus probabilities on discrete values
# ---------------------------------------------------------------------------------------------------------------------


def dequantize(levels: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform dequantisation ``x = k + u``, ``u ~ U[0, 1)`` per value: integer levels become continuous data.

    For any density ``p`` on the reals, ``P(k) = int_[k, k+1) p(x) dx`` is a probability of the level ``k`` and, by
    Jensen's inequality, ``log P(k) >= E_u[log p(k + u)]``: the average log-density of dequantised data is a lower
    bound on a proper discrete log-likelihood (in the same nats), so it can be compared with discrete models.
    """
    levels = check_tensor(levels, "levels", integer=True)
    generator = check_generator(generator, "generator")
    dtype = compute_dtype(levels.device)
    u = torch.rand(levels.shape, generator=generator, device=levels.device, dtype=dtype)
    return levels.to(dtype) + u


def discretized_gaussian_log_prob(
    levels: torch.Tensor, mean: torch.Tensor | float, std: torch.Tensor | float, num_levels: int = NUM_LEVELS
) -> torch.Tensor:
    """``log P(k)`` of the discretised Gaussian on ``0..num_levels-1``: the mass of ``N(mean, std^2)`` on
    ``[k - 1/2, k + 1/2)``, with the two tails added to the end levels so that the probabilities sum to one.

    ``P(k) = Phi((k + 1/2 - mean)/std) - Phi((k - 1/2 - mean)/std)`` (``Phi(-inf) = 0``, ``Phi(+inf) = 1`` at the
    ends). ``mean`` and ``std`` broadcast against ``levels``.
    """
    num_levels = check_int(num_levels, "num_levels", low=2)
    levels = check_tensor(levels, "levels", integer=True)
    if bool((levels < 0).any()) or bool((levels >= num_levels).any()):
        raise ValueError(f"levels: expected integers in 0..{num_levels - 1}")
    dtype = compute_dtype(levels.device)
    for value, name in ((mean, "mean"), (std, "std")):
        if isinstance(value, bool) or not isinstance(value, (torch.Tensor, int, float)):
            raise TypeError(f"{name}: expected a number or a tensor, got {type(value).__name__}")
    mean = torch.as_tensor(mean, device=levels.device, dtype=dtype)
    std = torch.as_tensor(std, device=levels.device, dtype=dtype)
    check_tensor(mean, "mean", floating=True)
    check_tensor(std, "std", floating=True)
    if bool((std <= 0).any()):
        raise ValueError("std: expected a positive standard deviation")
    k = levels.to(dtype)
    bottom, top = levels == 0, levels == num_levels - 1
    z_low, z_up = (k - 0.5 - mean) / std, (k + 0.5 - mean) / std  # finite edges: no inf in any gradient
    # Phi(z_up) - Phi(z_low), or the same difference of survival functions where both z are positive (in the right
    # tail the CDFs are both close to 1 and their difference would cancel); the end levels take the tails.
    cdf_up = torch.where(top, torch.ones_like(z_up), torch.special.ndtr(z_up))
    cdf_low = torch.where(bottom, torch.zeros_like(z_low), torch.special.ndtr(z_low))
    sf_low = torch.where(bottom, torch.ones_like(z_low), torch.special.ndtr(-z_low))
    sf_up = torch.where(top, torch.zeros_like(z_up), torch.special.ndtr(-z_up))
    mass = torch.where(z_low + z_up > 0, sf_low - sf_up, cdf_up - cdf_low)
    return mass.clamp_min(torch.finfo(dtype).tiny).log()


def bce_log_score(levels: torch.Tensor, p: torch.Tensor, num_levels: int = NUM_LEVELS) -> torch.Tensor:
    """``-BCE(t; p) = t log p + (1 - t) log(1 - p)`` with ``t = level / (num_levels - 1)``, summed over pixels.

    What a "Bernoulli likelihood on grey levels" computes. ``exp`` of it is *not* a probability of the level: see
    :func:`bce_total_mass`. ``levels`` ``(N, P)``, ``p`` ``(P,)`` in (0, 1); returns ``(N,)``.
    """
    num_levels = check_int(num_levels, "num_levels", low=2)
    levels = check_tensor(levels, "levels", ndim=2, integer=True)
    p = check_tensor(p, "p", ndim=1, floating=True)
    if p.shape[0] != levels.shape[1]:
        raise ValueError(f"levels, p: expected one Bernoulli mean per pixel of levels ({levels.shape[1]} pixels), "
                         f"got {p.shape[0]}")
    if bool((p <= 0).any()) or bool((p >= 1).any()):
        raise ValueError("p: expected Bernoulli means strictly inside (0, 1)")
    t = levels.to(p.dtype) / (num_levels - 1)
    return (t * p.log() + (1 - t) * (-p).log1p()).sum(1)


def bce_total_mass(p: torch.Tensor, num_levels: int = NUM_LEVELS) -> torch.Tensor:
    """``sum_{k=0}^{L-1} exp(-BCE(k/(L-1); p))`` for each ``p``: it would be 1 if BCE were a likelihood of the level.

    It is 1 only for binary data (``L = 2``). For 17 grey levels the end terms alone give ``(1 - p) + p = 1`` and the
    15 intermediate levels add more (8.5 in all at ``p = 1/2``), so "BCE nats" cannot be compared with a normalised
    likelihood.
    """
    num_levels = check_int(num_levels, "num_levels", low=2)
    p = check_tensor(p, "p", floating=True)
    if bool((p <= 0).any()) or bool((p >= 1).any()):
        raise ValueError("p: expected Bernoulli means strictly inside (0, 1)")
    t = torch.arange(num_levels, device=p.device, dtype=p.dtype) / (num_levels - 1)
    flat = p.reshape(-1, 1)
    score = t * flat.log() + (1 - t) * (-flat).log1p()
    return score.exp().sum(1).reshape(p.shape)


# ---------------------------------------------------------------------------------------------------------------------
# Proper discrete likelihoods: independent categoricals and their mixture
# ---------------------------------------------------------------------------------------------------------------------


def _check_levels(levels: object, name: str, num_levels: int) -> torch.Tensor:
    levels = check_tensor(levels, name, ndim=2, integer=True)
    if bool((levels < 0).any()) or bool((levels >= num_levels).any()):
        raise ValueError(f"{name}: expected integer levels in 0..{num_levels - 1} (use to_levels(images))")
    return levels.long()


def _one_hot(levels: torch.Tensor, num_levels: int, dtype: torch.dtype) -> torch.Tensor:
    """``(N, P)`` levels -> ``(N, P * L)`` one-hot rows (so that sums over pixels become one matrix product)."""
    return torch.nn.functional.one_hot(levels, num_levels).to(dtype).reshape(levels.shape[0], -1)


def fit_categorical(
    levels: torch.Tensor, alpha: float = DEFAULT_ALPHA, num_levels: int = NUM_LEVELS
) -> torch.Tensor:
    """Independent categorical per pixel with add-alpha smoothing: ``theta_pl = (n_pl + alpha) / (m + L alpha)``.

    ``n_pl`` counts the training images whose pixel ``p`` has level ``l``. ``alpha = 0`` is the maximum-likelihood
    estimate (a level never seen in training gets probability 0, so a test image showing it gets log-likelihood
    ``-inf``); ``alpha > 0`` is the posterior mean under a symmetric Dirichlet(alpha) prior. Returns the
    log-probabilities ``(P, L)``.
    """
    num_levels = check_int(num_levels, "num_levels", low=2)
    levels = _check_levels(levels, "levels", num_levels)
    alpha = check_positive(alpha, "alpha", allow_zero=True)
    dtype = compute_dtype(levels.device)
    counts = _one_hot(levels, num_levels, dtype).sum(0).reshape(levels.shape[1], num_levels)
    return ((counts + alpha) / (levels.shape[0] + num_levels * alpha)).log()


def categorical_log_likelihood(levels: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
    """``log p(x) = sum_p log theta_{p, x_p}`` per image ``(N,)``, in nats, for independent categorical pixels."""
    log_probs = check_tensor(log_probs, "log_probs", ndim=2, floating=True, finite=False)
    levels = _check_levels(levels, "levels", log_probs.shape[1])
    if levels.shape[1] != log_probs.shape[0]:
        raise ValueError(
            f"levels: expected {log_probs.shape[0]} pixels per image (like log_probs), got {levels.shape[1]}"
        )
    return log_probs.gather(1, levels.T).sum(0)


@dataclass
class CategoricalMixture:
    """``p(x) = sum_k pi_k prod_p theta_{k, p, x_p}``: K prototypes of independent categorical pixels.

    ``log_weights`` ``(K,)`` = ``log pi``; ``log_probs`` ``(K, P, L)`` = ``log theta``.
    """

    log_weights: torch.Tensor
    log_probs: torch.Tensor

    @property
    def components(self) -> int:
        return int(self.log_weights.shape[0])

    @property
    def num_levels(self) -> int:
        return int(self.log_probs.shape[2])

    def log_joint(self, levels: torch.Tensor) -> torch.Tensor:
        """``log pi_k + log p(x_n | k)`` for every image and component, ``(N, K)``."""
        levels = _check_levels(levels, "levels", self.num_levels)
        if levels.shape[1] != self.log_probs.shape[1]:
            raise ValueError(f"levels: expected {self.log_probs.shape[1]} pixels per image, got {levels.shape[1]}")
        onehot = _one_hot(levels, self.num_levels, self.log_probs.dtype)
        has_zeros = bool(torch.isneginf(self.log_probs).any())
        return _log_joint(onehot, self.log_probs, self.log_weights, has_zeros)

    def log_likelihood(self, levels: torch.Tensor) -> torch.Tensor:
        """``log p(x_n)`` per image ``(N,)`` in nats (a log-sum-exp over the components)."""
        return torch.logsumexp(self.log_joint(levels), dim=1)

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` images drawn from the mixture, as levels ``(n, P)``: a component, then every pixel independently."""
        n = check_int(n, "n", low=1)
        generator = check_generator(generator, "generator")
        k = torch.multinomial(self.log_weights.exp(), n, replacement=True, generator=generator)
        probs = self.log_probs.exp()[k]  # (n, P, L)
        flat = torch.multinomial(probs.reshape(-1, self.num_levels), 1, generator=generator)
        return flat.reshape(n, -1)


def _log_joint(
    onehot: torch.Tensor, log_probs: torch.Tensor, log_weights: torch.Tensor, has_zeros: bool
) -> torch.Tensor:
    """``log pi_k + sum_p log theta_{k, p, x_np}`` as one matrix product of the one-hot images ``(N, P * L)``.

    With zero probabilities (``alpha = 0``) a plain product would compute ``0 * (-inf) = NaN``: the zeros are then
    multiplied as 0 and the images that hit one get ``-inf`` explicitly.
    """
    flat = log_probs.reshape(log_probs.shape[0], -1)
    if not has_zeros:
        return onehot @ flat.T + log_weights
    zero = torch.isneginf(flat)
    out = onehot @ torch.where(zero, torch.zeros_like(flat), flat).T + log_weights
    return out.masked_fill((onehot @ zero.to(onehot.dtype).T) > 0, -math.inf)


def _em_objective(mixture: CategoricalMixture, log_lik: torch.Tensor, alpha: float) -> torch.Tensor:
    """The quantity EM climbs, per image: ``mean log p(x) + (alpha / m) sum log theta`` (log-posterior up to a
    constant, for the Dirichlet(1 + alpha) prior whose MAP estimate is add-alpha smoothing)."""
    prior = alpha * mixture.log_probs.sum() if alpha > 0 else log_lik.new_zeros(())
    return log_lik.mean() + prior / log_lik.shape[0]


def fit_categorical_mixture(
    levels: torch.Tensor,
    components: int,
    *,
    alpha: float = DEFAULT_ALPHA,
    iterations: int = 100,
    seed: int = 0,
    tol: float | None = None,
    num_levels: int = NUM_LEVELS,
) -> tuple[CategoricalMixture, dict[str, torch.Tensor]]:
    """Fit a mixture of independent categoricals by EM (Dempster, Laird & Rubin 1977).

    - **start**: ``K`` distinct training images drawn with ``seed``; component ``k`` is half the one-hot of image
      ``k`` and half the smoothed pixel marginals;
    - **E-step**: responsibilities ``r_nk = pi_k p(x_n | k) / sum_j pi_j p(x_n | j)`` (a softmax of ``log_joint``);
    - **M-step**: ``pi_k = N_k / m`` and ``theta_kpl = (sum_n r_nk [x_np = l] + alpha) / (N_k + L alpha)``.

    Each iteration cannot decrease the objective ``mean log p(x) + (alpha/m) sum log theta`` (with ``alpha = 0``:
    the log-likelihood itself). Runs ``iterations`` EM steps; with ``tol`` it stops earlier once the objective has
    gained less than ``tol`` nats per image per iteration over the last 10 (checked every 10 iterations, the only
    host synchronisation in the loop). Returns ``(mixture, history)`` with ``history["log_likelihood"]`` and
    ``history["objective"]`` (one entry per iteration run, plus one) in nats per image, the first entry at the start.
    """
    num_levels = check_int(num_levels, "num_levels", low=2)
    levels = _check_levels(levels, "levels", num_levels)
    m, pixels = levels.shape
    components = check_int(components, "components", low=1, high=m)
    alpha = check_positive(alpha, "alpha", allow_zero=True)
    iterations = check_int(iterations, "iterations", low=0)
    seed = check_int(seed, "seed", low=0)
    if tol is not None:
        tol = check_positive(tol, "tol")
    dtype = compute_dtype(levels.device)
    onehot = _one_hot(levels, num_levels, dtype)  # (m, P*L)

    gen = torch.Generator().manual_seed(seed)
    start = torch.randperm(m, generator=gen)[:components].to(levels.device)
    marginal = (onehot.sum(0) + max(alpha, DEFAULT_ALPHA)) / (m + num_levels * max(alpha, DEFAULT_ALPHA))
    probs = 0.5 * onehot[start] + 0.5 * marginal[None]
    mixture = CategoricalMixture(
        log_weights=torch.full((components,), -math.log(components), device=levels.device, dtype=dtype),
        log_probs=probs.log().reshape(components, pixels, num_levels),
    )
    lls, objectives = [], []
    for it in range(iterations + 1):
        log_joint = _log_joint(onehot, mixture.log_probs, mixture.log_weights, has_zeros=alpha == 0)
        log_lik = torch.logsumexp(log_joint, dim=1)
        lls.append(log_lik.mean())
        objectives.append(_em_objective(mixture, log_lik, alpha))
        if it == iterations:
            break
        if tol is not None and it >= 10 and it % 10 == 0 and float(objectives[-1] - objectives[-11]) < 10 * tol:
            break
        resp = torch.softmax(log_joint, dim=1)  # E-step
        n_k = resp.sum(0)  # M-step
        counts = (resp.T @ onehot).reshape(components, pixels, num_levels)
        theta = (counts + alpha) / (n_k[:, None, None] + num_levels * alpha)
        mixture = CategoricalMixture(log_weights=(n_k / m).log(), log_probs=theta.log())
    history = {"log_likelihood": torch.stack(lls), "objective": torch.stack(objectives)}
    return mixture, history


# ---------------------------------------------------------------------------------------------------------------------
# Held-out likelihood against model complexity: the experiment and the baseline of chapter 04
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class MixtureSweep:
    """Train / validation / test log-likelihoods (nats per image) of mixtures with each number of components."""

    components: list[int]
    train: list[float]
    val: list[float]
    test: list[float]
    mixtures: list[CategoricalMixture]
    histories: list[dict[str, torch.Tensor]]
    alpha: float

    @property
    def best_index(self) -> int:
        """Index of the model chosen on the *validation* split (the test split is only reported)."""
        return max(range(len(self.val)), key=lambda i: self.val[i])

    @property
    def best_components(self) -> int:
        return self.components[self.best_index]

    @property
    def best_test(self) -> float:
        return self.test[self.best_index]


def categorical_mixture_sweep(
    train_levels: torch.Tensor,
    val_levels: torch.Tensor,
    test_levels: torch.Tensor,
    components: Sequence[int] = DEFAULT_COMPONENTS,
    *,
    alpha: float = DEFAULT_ALPHA,
    iterations: int = 100,
    seed: int = 0,
    tol: float | None = 1e-6,
) -> MixtureSweep:
    """Fit :func:`fit_categorical_mixture` for each ``K`` in ``components`` on ``train_levels`` and score all three
    splits (at most ``iterations`` EM steps, stopping once converged to ``tol`` nats per image per iteration). The
    best model is chosen on validation; its test log-likelihood is the held-out figure to report."""
    if isinstance(components, (str, bytes)) or not isinstance(components, Sequence) or not components:
        raise TypeError(f"components: expected a non-empty sequence of ints, got {components!r}")
    ks = [check_int(k, f"components[{i}]", low=1) for i, k in enumerate(components)]
    train_levels = _check_levels(train_levels, "train_levels", NUM_LEVELS)
    val_levels = _check_levels(val_levels, "val_levels", NUM_LEVELS)
    test_levels = _check_levels(test_levels, "test_levels", NUM_LEVELS)
    for name, lv in (("val_levels", val_levels), ("test_levels", test_levels)):
        if lv.shape[1] != train_levels.shape[1]:
            raise ValueError(f"{name}: expected {train_levels.shape[1]} pixels per image like train_levels, "
                             f"got {lv.shape[1]}")
    sweep = MixtureSweep(ks, [], [], [], [], [], alpha)
    for k in ks:
        mixture, history = fit_categorical_mixture(train_levels, k, alpha=alpha, iterations=iterations, seed=seed,
                                                   tol=tol)
        scores = torch.stack([mixture.log_likelihood(lv).mean() for lv in (train_levels, val_levels, test_levels)])
        tr, va, te = scores.tolist()
        sweep.train.append(tr)
        sweep.val.append(va)
        sweep.test.append(te)
        sweep.mixtures.append(mixture)
        sweep.histories.append(history)
    return sweep


def _digit_levels(device: torch.device) -> dict[str, torch.Tensor]:
    from mmlib.data import load_digit_images

    return {s: to_levels(load_digit_images(s, device=device)[0]) for s in ("train", "val", "test")}


@lru_cache(maxsize=4)
def _cached_sweep(seed: int, device: str) -> MixtureSweep:
    levels = _digit_levels(torch.device(device))
    return categorical_mixture_sweep(levels["train"], levels["val"], levels["test"], seed=seed)


def baseline_test_log_likelihood(seed: int = 0, device: torch.device | str | None = None) -> float:
    """The best non-latent model of chapter 01 on the digits' test split: log-likelihood in nats per image.

    A mixture of independent 17-level categoricals (add-1/2 smoothing), its number of components chosen on the
    validation split among :data:`DEFAULT_COMPONENTS`; the splits are ``mmlib.data``'s, so chapter 04's VAE (same
    test images, same 17-level discrete likelihood) is compared on equal terms. Cached per process.
    """
    seed = check_int(seed, "seed", low=0)
    dev = resolve_device(device)
    return _cached_sweep(seed, str(dev)).best_test


@register("likelihood-digits", "Chapter 01: held-out likelihood of 17-level digit images vs mixture size (EM)")
def likelihood_digits(seed: int = 0, device: torch.device | None = None) -> Result:
    """Experiment ``likelihood-digits``: mixtures of independent categoricals with K in :data:`DEFAULT_COMPONENTS`.

    Metrics (log-likelihoods in nats per image, bits per pixel = -loglik / (64 ln 2)): ``<split>_loglik_K<K>`` for
    every K and split; ``best_components`` (chosen on validation), ``val_loglik``, ``test_loglik``,
    ``test_bits_per_pixel``; ``independent_test_loglik`` (K = 1) and ``gaussian_test_loglik_bound`` (full-covariance
    Gaussian on dequantised pixels: a lower bound on a discrete log-likelihood). Arrays: ``train_levels``,
    ``val_levels``, ``test_levels`` ``(N, 64)``; ``components``, ``train_loglik``, ``val_loglik``, ``test_loglik``
    (the curves); ``best_log_weights`` ``(K,)``, ``best_log_probs`` ``(K, 64, 17)``, ``best_em_objective``.
    """
    seed_everything(seed)
    dev = resolve_device(device)
    levels = _digit_levels(dev)
    sweep = _cached_sweep(seed, str(dev))  # the same sweep baseline_test_log_likelihood() reports
    gen = torch.Generator(device=dev).manual_seed(seed)
    deq = {s: dequantize(lv, generator=gen) for s, lv in levels.items()}
    mean, cov = fit_gaussian(deq["train"])
    gaussian_test = float(gaussian_log_density(deq["test"], mean, cov).mean())

    metrics: dict[str, float | int] = {"alpha": sweep.alpha}
    for k, tr, va, te in zip(sweep.components, sweep.train, sweep.val, sweep.test):
        metrics[f"train_loglik_K{k}"] = round(tr, 4)
        metrics[f"val_loglik_K{k}"] = round(va, 4)
        metrics[f"test_loglik_K{k}"] = round(te, 4)
    best = sweep.mixtures[sweep.best_index]
    metrics.update(
        best_components=sweep.best_components,
        val_loglik=round(sweep.val[sweep.best_index], 4),
        test_loglik=round(sweep.best_test, 4),
        test_bits_per_pixel=round(float(bits_per_pixel(sweep.best_test, levels["test"].shape[1])), 5),
        independent_test_loglik=round(sweep.test[sweep.components.index(1)], 4) if 1 in sweep.components else 0.0,
        gaussian_test_loglik_bound=round(gaussian_test, 4),
    )
    arrays = {
        "train_levels": levels["train"],
        "val_levels": levels["val"],
        "test_levels": levels["test"],
        "components": torch.tensor(sweep.components),
        "train_loglik": torch.tensor(sweep.train),
        "val_loglik": torch.tensor(sweep.val),
        "test_loglik": torch.tensor(sweep.test),
        "best_log_weights": best.log_weights,
        "best_log_probs": best.log_probs,
        "best_em_objective": sweep.histories[sweep.best_index]["objective"],
    }
    return Result(metrics=metrics, arrays=arrays)


# ---------------------------------------------------------------------------------------------------------------------
# Exercises of notebook 01
# ---------------------------------------------------------------------------------------------------------------------


@exercise("01.2")
def _check_smoothed_categorical(fn) -> str:
    """Exercise 01.2: add-alpha smoothed categorical probabilities of one pixel."""
    values = torch.tensor([0, 0, 2, 0, 1])
    got = torch.as_tensor(fn(values, 0.5, 4), dtype=torch.float64)
    want = torch.tensor([3.5, 1.5, 1.5, 0.5], dtype=torch.float64) / 7.0
    assert got.shape == (4,), f"expected one probability per level (shape (4,)), got shape {tuple(got.shape)}."
    assert abs(float(got.sum()) - 1) < 1e-9, f"the probabilities should sum to 1, they sum to {float(got.sum()):.4g}."
    assert torch.allclose(got, want, atol=1e-9), (
        f"for values [0, 0, 2, 0, 1], alpha = 0.5 and 4 levels expected {[round(v, 4) for v in want.tolist()]}, got "
        f"{[round(v, 4) for v in got.tolist()]}. Add alpha to every count and divide by m + L * alpha."
    )
    return "Every level, seen or not, keeps a probability of at least alpha / (m + L alpha)."


@exercise("01.3")
def _check_responsibilities(fn) -> str:
    """Exercise 01.3: the E-step — responsibilities from log-weights and per-component log-likelihoods."""
    log_weights = torch.tensor([math.log(0.25), math.log(0.75)], dtype=torch.float64)
    log_lik = torch.tensor([[-1000.0, -1001.0], [-3.0, -1.0]], dtype=torch.float64)
    got = torch.as_tensor(fn(log_weights, log_lik), dtype=torch.float64)
    assert got.shape == (2, 2), (
        f"expected one responsibility per image and component (shape (2, 2)), got {tuple(got.shape)}."
    )
    assert bool(torch.isfinite(got).all()), (
        "some responsibilities are NaN or infinite: log-likelihoods of -1000 underflow exp(). Subtract the row "
        "maximum first, or use torch.softmax / torch.logsumexp."
    )
    want = torch.softmax(log_weights + log_lik, dim=1)
    assert torch.allclose(got.sum(1), torch.ones(2, dtype=torch.float64), atol=1e-9), "each row should sum to 1."
    assert torch.allclose(got, want, atol=1e-9), (
        f"expected {want.numpy().round(4).tolist()}, got {got.numpy().round(4).tolist()}: r_nk is proportional to "
        "pi_k p(x_n | k), normalised over k."
    )
    return "The E-step is a softmax over components of log pi_k + log p(x_n | k)."
