"""Variational autoencoders: the ELBO done right (taught in notebook ``04_vae``).

A latent-variable model ``p_theta(x) = ∫ p(z) p_theta(x | z) dz`` with ``p(z) = N(0, I)`` has an intractable
log-likelihood. An encoder ``q_phi(z | x) = N(mu_phi(x), diag sigma_phi^2(x))`` gives the evidence lower bound

    log p(x) = E_q[log p(x|z)] - KL(q(z|x) || p(z)) + KL(q(z|x) || p(z|x))  >=  ELBO(x),

and the training loss is its negative, ``-E_q[log p(x|z)] + KL(q(z|x) || p(z))`` (the corrected form of the article's
eq. (5)). Every loss here is **per example**: a sum over pixels and latent dimensions, a mean over the batch, in nats.

The digits have 17 grey levels, so the decoder is a proper discrete likelihood: an independent categorical over the
17 levels for each of the 64 pixels (the VAE is then a *continuous* mixture of the per-pixel categoricals that
chapter 01 mixes discretely). Held-out log-likelihoods are estimated with the importance-weighted bound
``IWAE_K = E[log (1/K) sum_k p(x, z_k) / q(z_k | x)]`` (Burda, Grosse & Salakhutdinov 2016), which rises with K
towards ``log p(x)``.

Also here: the reparameterisation trick and the score-function estimator it replaces, the closed-form KL and its Monte
Carlo estimate, the article's eqs. (5) and (6) as written (to show numerically why they fail), a Gaussian decoder for
``E_q[gamma ||x - f(z)||^2] + beta KL`` with ``gamma = 1 / (2 sigma^2)``, the beta sweep, and experiment ``vae-digits``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.distributions import Normal

from mmlib.checks import check_choice, check_generator, check_int, check_positive, check_probability, check_tensor
from mmlib.device import one_cpu_thread, resolve_device
from mmlib.exercises import exercise
from mmlib.experiments import TrainedResult, register
from mmlib.train import History, loss_step, make_optimizer, train

__all__ = [
    "NUM_LEVELS",
    "NUM_PIXELS",
    "LIKELIHOODS",
    "TrainedResult",
    "GaussianEncoder",
    "CategoricalDecoder",
    "GaussianDecoder",
    "VAE",
    "build_vae",
    "seeded",
    "image_levels",
    "reparameterise",
    "reparameterised_gradients",
    "score_function_gradients",
    "kl_to_standard_normal",
    "kl_monte_carlo",
    "categorical_log_likelihood",
    "gaussian_log_likelihood",
    "elbo_terms",
    "negative_elbo",
    "article_eq5",
    "gaussian_elbo_terms",
    "gaussian_negative_elbo",
    "article_eq6",
    "fit_vae",
    "encode_mean",
    "decode_mean",
    "reconstruct",
    "reconstruction_error",
    "sample_images",
    "rate_distortion",
    "log_importance_weights",
    "iwae_estimates",
    "Bound",
    "importance_weighted_bounds",
    "beta_sweep",
    "vae_digits",
]

#: Grey levels of the digit images (0..16) and pixels per image (8 x 8).
NUM_LEVELS: int = 17
NUM_PIXELS: int = 64
#: Decoder likelihoods: a categorical over the 17 grey levels (the course's choice), or a Gaussian with fixed sigma.
LIKELIHOODS: tuple[str, ...] = ("categorical", "gaussian")

# The digits VAE of experiment ``vae-digits`` (chosen on the validation split; see notebook 04).
LATENT_DIM = 16
HIDDEN = 128
DROPOUT = 0.2
STEPS = 1500
BATCH_SIZE = 128
LR = 2e-3
#: Importance samples per test image and the bounds reported (ELBO = K 1; each K averaged over n/K repeats).
EVAL_SAMPLES = 2000
EVAL_KS: tuple[int, ...] = (1, 10, 100, 1000)


# ---------------------------------------------------------------------------------------------------------------------
# Randomness and data representation
# ---------------------------------------------------------------------------------------------------------------------


@contextmanager
def seeded(seed: int, device: torch.device | str | None = None) -> Iterator[None]:
    """Run the block with torch's global generators seeded by ``seed``, restoring them afterwards.

    Model initialisation, dropout and ``randn_like`` inside the block depend on ``seed`` only, and the caller's random
    stream is left untouched (a notebook can call a fitting function twice and get the same model twice).
    """
    seed = check_int(seed, "seed", low=0, high=2**63 - 1)
    dev = resolve_device(device)
    if dev.type in ("cuda", "mps"):
        context = torch.random.fork_rng(device_type=dev.type)
    else:
        context = torch.random.fork_rng(devices=[])
    with context:
        torch.manual_seed(seed)
        yield


def image_levels(images: torch.Tensor) -> torch.Tensor:
    """Images ``(N, 1, 8, 8)`` in [0, 1] (grey level / 16) -> integer levels ``(N, 64)`` in ``0..16``.

    Validates shape, dtype, finiteness and range (one host check); use it outside training loops.
    """
    return _levels(_check_images(images))


def _check_images(images: object, name: str = "images") -> torch.Tensor:
    """:func:`image_levels`' full validation, with the argument's name in the messages."""
    images = check_tensor(images, name, ndim=(2, 3, 4), floating=True)
    if images[0].numel() != NUM_PIXELS:
        raise ValueError(f"{name}: expected {NUM_PIXELS} pixels per image (8 x 8), got shape {tuple(images.shape)}")
    if bool(((images < 0) | (images > 1)).any()):
        raise ValueError(f"{name}: expected grey levels / 16 in [0, 1] (the representation of load_multimodal_digits)")
    return images


def _levels(images: torch.Tensor) -> torch.Tensor:
    """The levels of images, without a host synchronisation (for training steps). Values are not checked: levels are
    clamped to ``0..16`` so that bad pixels never index out of range (NaN pixels make the encoder's codes, and so the
    loss, NaN, which :func:`mmlib.train.train` reports)."""
    return (images.reshape(images.shape[0], -1) * (NUM_LEVELS - 1)).round().long().clamp(0, NUM_LEVELS - 1)


def _check_batch(images: object, name: str = "images", n_pixels: int = NUM_PIXELS) -> torch.Tensor:
    """Shape and dtype checks only (no host synchronisation): what a loss evaluated every step can afford."""
    images = check_tensor(images, name, ndim=(2, 3, 4), floating=True, finite=False)
    if images[0].numel() != n_pixels:
        raise ValueError(f"{name}: expected {n_pixels} pixels per image (8 x 8 for the digits), "
                         f"got shape {tuple(images.shape)}")
    return images


def _check_dropout(dropout: object) -> float:
    dropout = check_probability(dropout, "dropout")
    if dropout == 1.0:
        raise ValueError("dropout: expected a probability in [0, 1), got 1.0")
    return dropout


def _check_latent(z: object, latent_dim: int) -> torch.Tensor:
    """Codes ``(..., latent_dim)`` for a decoder (shape and dtype only: no host synchronisation)."""
    z = check_tensor(z, "z", floating=True, finite=False)
    if z.ndim < 1 or z.shape[-1] != latent_dim:
        raise ValueError(f"z: expected codes of shape (..., {latent_dim}), got {tuple(z.shape)}")
    return z


def _check_model(model: object, likelihood: str | None = None) -> VAE:
    if not isinstance(model, VAE):
        raise TypeError(f"model: expected an mmlib.vae.VAE, got {type(model).__name__}")
    if likelihood is not None and model.likelihood != likelihood:
        raise ValueError(f"model: expected a VAE with a {likelihood} decoder, got a {model.likelihood} one")
    return model


# ---------------------------------------------------------------------------------------------------------------------
# Reparameterisation, and the score-function estimator it replaces
# ---------------------------------------------------------------------------------------------------------------------


def reparameterise(
    mu: torch.Tensor, log_var: torch.Tensor, *, n_samples: int | None = None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``z = mu + sigma * eps`` with ``sigma = exp(log_var / 2)`` and ``eps ~ N(0, I)``.

    The randomness sits in ``eps``, which does not depend on ``(mu, log_var)``: gradients flow through ``z`` to the
    encoder. Shape ``mu.shape``, or ``(n_samples, *mu.shape)`` when ``n_samples`` is given.
    """
    mu = check_tensor(mu, "mu", floating=True, finite=False)
    log_var = check_tensor(log_var, "log_var", floating=True, finite=False)
    generator = check_generator(generator, "generator")
    if mu.shape != log_var.shape:
        raise ValueError(f"mu, log_var: expected the same shape, got {tuple(mu.shape)} and {tuple(log_var.shape)}")
    shape = mu.shape if n_samples is None else (check_int(n_samples, "n_samples", low=1), *mu.shape)
    eps = torch.randn(shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + (0.5 * log_var).exp() * eps


def _gradient_setup(
    f: object, mu: float, sigma: float, n_samples: int, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    if not callable(f):
        raise TypeError(f"f: expected an elementwise function of a tensor, got {type(f).__name__}")
    if isinstance(mu, bool) or not isinstance(mu, (int, float)) or not math.isfinite(mu):
        raise TypeError(f"mu: expected a finite number, got {mu!r}")
    check_positive(sigma, "sigma")
    n_samples = check_int(n_samples, "n_samples", low=2)
    generator = check_generator(generator)
    device = generator.device if generator is not None else torch.device("cpu")
    eps = torch.randn(n_samples, generator=generator, device=device, dtype=torch.float64)
    mus = torch.full((n_samples,), float(mu), device=device, dtype=torch.float64, requires_grad=True)
    return eps, mus


def _apply(f: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor) -> torch.Tensor:
    out = f(z)
    if not isinstance(out, torch.Tensor) or out.shape != z.shape:
        raise ValueError(f"f: expected an elementwise function (output shape {tuple(z.shape)}), got "
                         f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
    return out


def reparameterised_gradients(
    f: Callable[[torch.Tensor], torch.Tensor],
    mu: float,
    sigma: float,
    n_samples: int,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``n_samples`` one-sample estimates of ``d/dmu E_{z ~ N(mu, sigma^2)}[f(z)]`` by reparameterisation:
    ``f'(mu + sigma eps)`` with ``eps ~ N(0, 1)`` (autograd differentiates ``f``). float64 ``(n_samples,)``."""
    eps, mus = _gradient_setup(f, mu, sigma, n_samples, generator)
    values = _apply(f, mus + sigma * eps)
    (grads,) = torch.autograd.grad(values.sum(), mus)
    return grads.detach()


def score_function_gradients(
    f: Callable[[torch.Tensor], torch.Tensor],
    mu: float,
    sigma: float,
    n_samples: int,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``n_samples`` one-sample score-function (REINFORCE) estimates of ``d/dmu E_{z ~ N(mu, sigma^2)}[f(z)]``:
    ``f(z) d/dmu log N(z; mu, sigma^2) = f(z) (z - mu) / sigma^2``, which needs only values of ``f``. float64."""
    eps, mus = _gradient_setup(f, mu, sigma, n_samples, generator)
    z = (mus + sigma * eps).detach()
    (score,) = torch.autograd.grad(Normal(mus, sigma).log_prob(z).sum(), mus)
    with torch.no_grad():
        return _apply(f, z) * score


# ---------------------------------------------------------------------------------------------------------------------
# KL(q || p(z)): closed form and Monte Carlo
# ---------------------------------------------------------------------------------------------------------------------


def kl_to_standard_normal(mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu, diag sigma^2) || N(0, I)) = 1/2 sum_j (sigma_j^2 + mu_j^2 - 1 - log sigma_j^2)`` per row ``(N,)``."""
    mu = check_tensor(mu, "mu", floating=True, finite=False)
    log_var = check_tensor(log_var, "log_var", floating=True, finite=False)
    if mu.shape != log_var.shape:
        raise ValueError(f"mu, log_var: expected the same shape, got {tuple(mu.shape)} and {tuple(log_var.shape)}")
    return 0.5 * (log_var.exp() + mu.pow(2) - 1.0 - log_var).sum(dim=-1)


def kl_monte_carlo(
    mu: torch.Tensor, log_var: torch.Tensor, n_samples: int, *, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Monte Carlo ``KL(q || N(0, I)) ≈ (1/S) sum_s [log q(z_s) - log p(z_s)]``, ``z_s ~ q``, per row.

    Returns ``(estimate, standard_error)``, each ``(N,)``; the standard error is the sample standard deviation of
    ``log q - log p`` over the ``S`` draws divided by ``sqrt(S)``.
    """
    mu = check_tensor(mu, "mu", floating=True)
    log_var = check_tensor(log_var, "log_var", floating=True)
    n_samples = check_int(n_samples, "n_samples", low=2)
    z = reparameterise(mu, log_var, n_samples=n_samples, generator=generator)
    q = Normal(mu, (0.5 * log_var).exp())
    p = Normal(torch.zeros_like(mu), torch.ones_like(mu))
    log_ratio = (q.log_prob(z) - p.log_prob(z)).sum(dim=-1)  # (S, N)
    return log_ratio.mean(dim=0), log_ratio.std(dim=0) / math.sqrt(n_samples)


# ---------------------------------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------------------------------


class GaussianEncoder(nn.Module):
    """``q_phi(z | x) = N(z; mu_phi(x), diag exp(log_var_phi(x)))``: images ``(N, 1, 8, 8)`` -> ``(mu, log_var)``,
    each ``(N, latent_dim)``. A two-hidden-layer MLP on the 64 grey values in [0, 1]."""

    def __init__(self, latent_dim: int, hidden: int, n_pixels: int = NUM_PIXELS) -> None:
        super().__init__()
        latent_dim, hidden = check_int(latent_dim, "latent_dim", low=1), check_int(hidden, "hidden", low=1)
        self.n_pixels = check_int(n_pixels, "n_pixels", low=1)
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(n_pixels, hidden), nn.SiLU(),
            nn.Linear(hidden, hidden), nn.SiLU(),
            nn.Linear(hidden, 2 * latent_dim),
        )

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = _check_batch(images, n_pixels=self.n_pixels)
        mu, log_var = self.net(images).chunk(2, dim=-1)  # (N, d), (N, d)
        return mu, log_var


class CategoricalDecoder(nn.Module):
    """``p_theta(x | z) = prod_p Cat(x_p; softmax(logits_p(z)))``: ``z (..., d)`` -> logits ``(..., P, L)``.

    ``dropout`` on the hidden layers keeps the 1,088 outputs from memorising the 1,259 training images."""

    def __init__(self, latent_dim: int, hidden: int, n_pixels: int = NUM_PIXELS, num_levels: int = NUM_LEVELS,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.latent_dim, hidden = check_int(latent_dim, "latent_dim", low=1), check_int(hidden, "hidden", low=1)
        self.n_pixels = check_int(n_pixels, "n_pixels", low=1)
        self.num_levels = check_int(num_levels, "num_levels", low=1)
        dropout = _check_dropout(dropout)
        self.net = nn.Sequential(
            nn.Linear(latent_dim, hidden), nn.SiLU(), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.SiLU(), nn.Dropout(dropout),
            nn.Linear(hidden, n_pixels * num_levels),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = _check_latent(z, self.latent_dim)
        return self.net(z).unflatten(-1, (self.n_pixels, self.num_levels))  # (..., P, L)


class GaussianDecoder(nn.Module):
    """``p_theta(x | z) = N(x; f(z), sigma^2 I)`` with mean ``f(z) = sigmoid(MLP(z))`` in [0, 1]^P: ``z (..., d)`` ->
    ``f(z) (..., P)``. Used for the article's eq. (6), whose ``||x - f(z)||^2`` is this model's log-likelihood."""

    def __init__(self, latent_dim: int, hidden: int, n_pixels: int = NUM_PIXELS, dropout: float = 0.0) -> None:
        super().__init__()
        self.latent_dim, hidden = check_int(latent_dim, "latent_dim", low=1), check_int(hidden, "hidden", low=1)
        n_pixels, dropout = check_int(n_pixels, "n_pixels", low=1), _check_dropout(dropout)
        self.net = nn.Sequential(
            nn.Linear(latent_dim, hidden), nn.SiLU(), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.SiLU(), nn.Dropout(dropout),
            nn.Linear(hidden, n_pixels),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = _check_latent(z, self.latent_dim)
        return torch.sigmoid(self.net(z))  # (..., P)


class VAE(nn.Module):
    """Encoder ``q_phi(z | x)``, decoder ``p_theta(x | z)`` and the prior ``p(z) = N(0, I)`` (notebook 04).

    ``likelihood="categorical"``: 17-level categorical pixels (the digits' proper discrete likelihood);
    ``likelihood="gaussian"``: ``N(x; f(z), sigma^2 I)`` on the grey values in [0, 1] (eq. (6)'s squared error).
    """

    def __init__(self, latent_dim: int = LATENT_DIM, hidden: int = HIDDEN, *, likelihood: str = "categorical",
                 dropout: float = DROPOUT, sigma: float = 0.1) -> None:
        super().__init__()
        self.latent_dim = check_int(latent_dim, "latent_dim", low=1)
        hidden = check_int(hidden, "hidden", low=1)
        self.likelihood = check_choice(likelihood, "likelihood", LIKELIHOODS)
        dropout = _check_dropout(dropout)
        self.sigma = check_positive(sigma, "sigma")
        self.encoder = GaussianEncoder(self.latent_dim, hidden)
        if self.likelihood == "categorical":
            self.decoder: nn.Module = CategoricalDecoder(self.latent_dim, hidden, dropout=dropout)
        else:
            self.decoder = GaussianDecoder(self.latent_dim, hidden, dropout=dropout)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def log_likelihood(self, images: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``log p_theta(x | z)`` per image, summed over pixels: ``z (..., N, d)`` -> ``(..., N)``.

        Shapes and dtypes are checked, values are not (no host synchronisation: fit for a training step)."""
        images = _check_batch(images)
        z = check_tensor(z, "z", floating=True, finite=False)
        if z.ndim < 2 or tuple(z.shape[-2:]) != (images.shape[0], self.latent_dim):
            raise ValueError(f"z: expected codes of shape (..., {images.shape[0]}, {self.latent_dim}) for "
                             f"{images.shape[0]} images, got {tuple(z.shape)}")
        if self.likelihood == "categorical":
            return _categorical_log_likelihood(self.decoder(z), _levels(images))
        return _gaussian_log_likelihood(self.decoder(z), images.reshape(images.shape[0], -1), self.sigma)


def build_vae(
    latent_dim: int = LATENT_DIM,
    hidden: int = HIDDEN,
    *,
    likelihood: str = "categorical",
    dropout: float = DROPOUT,
    sigma: float = 0.1,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> VAE:
    """A freshly initialised :class:`VAE` on ``device``; its weights depend only on ``seed`` (drawn on the CPU)."""
    dev = resolve_device(device)
    with seeded(seed, "cpu"):
        model = VAE(latent_dim, hidden, likelihood=likelihood, dropout=dropout, sigma=sigma)
    return model.to(dev)


# ---------------------------------------------------------------------------------------------------------------------
# Likelihoods and the ELBO
# ---------------------------------------------------------------------------------------------------------------------


def _categorical_log_likelihood(logits: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    log_probs = logits.log_softmax(dim=-1)  # (..., N, P, L)
    index = levels.expand(*log_probs.shape[:-1]).unsqueeze(-1)
    return log_probs.gather(-1, index).squeeze(-1).sum(dim=-1)


def categorical_log_likelihood(logits: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """``log p(x | z) = sum_p log softmax(logits_p)[x_p]``: logits ``(..., N, P, L)``, levels ``(N, P)`` -> ``(..., N)``

    Equals ``Categorical(logits=logits).log_prob(levels).sum(-1)`` (tested)."""
    logits = check_tensor(logits, "logits", floating=True, finite=False)
    levels = check_tensor(levels, "levels", ndim=2, integer=True)
    if logits.ndim < 3 or tuple(logits.shape[-3:-1]) != tuple(levels.shape):
        raise ValueError(f"logits, levels: expected logits (..., N, P, L) with (N, P) = levels.shape "
                         f"{tuple(levels.shape)}, got {tuple(logits.shape)}")
    if bool((levels < 0).any()) or bool((levels >= logits.shape[-1]).any()):
        raise ValueError(f"levels: expected integers in 0..{logits.shape[-1] - 1} (logits has {logits.shape[-1]} "
                         "levels in its last dimension)")
    return _categorical_log_likelihood(logits, levels.long())


def _gaussian_log_likelihood(mean: torch.Tensor, x: torch.Tensor, sigma: float) -> torch.Tensor:
    gamma = 1.0 / (2.0 * sigma**2)
    n_pixels = x.shape[-1]
    return -gamma * (x - mean).pow(2).sum(dim=-1) - 0.5 * n_pixels * math.log(2 * math.pi * sigma**2)


def gaussian_log_likelihood(mean: torch.Tensor, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """``log N(x; f, sigma^2 I) = -gamma ||x - f||^2 - (P/2) log(2 pi sigma^2)`` with ``gamma = 1 / (2 sigma^2)``:
    mean ``(..., N, P)``, x ``(N, P)`` -> ``(..., N)``. Maximising it is minimising ``gamma ||x - f||^2``."""
    mean = check_tensor(mean, "mean", floating=True, finite=False)
    x = check_tensor(x, "x", ndim=2, floating=True)
    if mean.ndim < 2 or tuple(mean.shape[-2:]) != tuple(x.shape):
        raise ValueError(f"mean, x: expected mean (..., N, P) with (N, P) = {tuple(x.shape)}, got {tuple(mean.shape)}")
    return _gaussian_log_likelihood(mean, x, check_positive(sigma, "sigma"))


def elbo_terms(
    model: VAE, images: torch.Tensor, *, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One-sample ``(log p(x | z), KL(q(z | x) || p(z)))`` per image, ``z ~ q(z | x)`` reparameterised; ``(N,)`` each.

    ``ELBO(x) = E_q[log p(x | z)] - KL(q(z | x) || p(z))``: the reconstruction term is estimated with one draw, the KL
    is exact (closed form). Only shapes are checked (no host synchronisation): fit for a training step.
    """
    model = _check_model(model)
    images = _check_batch(images)
    mu, log_var = model.encoder(images)
    z = reparameterise(mu, log_var, generator=generator)
    return model.log_likelihood(images, z), kl_to_standard_normal(mu, log_var)


def negative_elbo(
    model: VAE, images: torch.Tensor, *, beta: float = 1.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The VAE loss (corrected eq. (5)): ``mean_batch[-log p(x | z) + beta KL(q(z | x) || p(z))]``, nats per image.

    ``beta = 1`` is the negative ELBO; ``beta != 1`` is the beta-VAE objective (Higgins et al. 2017)."""
    beta = check_positive(beta, "beta", allow_zero=True)
    log_lik, kl = elbo_terms(model, images, generator=generator)
    return (-log_lik + beta * kl).mean()


def article_eq5(model: VAE, images: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """The article's eq. (5) as written, ``KL + E_q[log p(x | z) - KL]``, averaged over the batch.

    The KL does not depend on ``z``, so ``E_q[log p - KL] = E_q[log p] - KL`` and the two KLs cancel: what is left is
    ``E_q[log p(x | z)]``. *Minimising* it pushes the reconstruction log-likelihood down (notebook 04 shows it)."""
    log_lik, kl = elbo_terms(model, images, generator=generator)
    return (kl + (log_lik - kl)).mean()


def gaussian_elbo_terms(
    model: VAE, images: torch.Tensor, *, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """For a Gaussian-decoder VAE: one-sample ``(||x - f(z)||^2, KL(q(z | x) || p(z)))`` per image, ``(N,)`` each,
    ``z ~ q(z | x)`` reparameterised (shape checks only: fit for a training step)."""
    model = _check_model(model, "gaussian")
    images = _check_batch(images)
    mu, log_var = model.encoder(images)
    z = reparameterise(mu, log_var, generator=generator)
    squared_error = (images.reshape(images.shape[0], -1) - model.decoder(z)).pow(2).sum(dim=-1)
    return squared_error, kl_to_standard_normal(mu, log_var)


def gaussian_negative_elbo(model: VAE, images: torch.Tensor, *, beta: float = 1.0, gamma: float | None = None,
                           generator: torch.Generator | None = None) -> torch.Tensor:
    """Corrected eq. (6): ``mean_batch[gamma ||x - f(z)||^2 + beta KL]``, ``z ~ q(z | x)`` (one draw).

    With ``gamma = 1 / (2 sigma^2)`` (the default, from the model's ``sigma``) and ``beta = 1`` this is the negative
    ELBO of the Gaussian decoder up to the constant ``(P/2) log(2 pi sigma^2)``."""
    beta = check_positive(beta, "beta", allow_zero=True)
    gamma = 1.0 / (2.0 * _check_model(model).sigma ** 2) if gamma is None else check_positive(gamma, "gamma")
    squared_error, kl = gaussian_elbo_terms(model, images, generator=generator)
    return (gamma * squared_error + beta * kl).mean()


def article_eq6(model: VAE, images: torch.Tensor, *, beta: float = 1.0, gamma: float | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """The computable part of the article's eq. (6), ``mean_batch[beta KL - gamma ||x - f(z)||^2]``.

    Its first term, ``-log p(x)``, is intractable (the very reason for the ELBO), so anyone training with eq. (6)
    must drop it; what remains *rewards* reconstruction error (its sign is wrong)."""
    beta = check_positive(beta, "beta", allow_zero=True)
    gamma = 1.0 / (2.0 * _check_model(model).sigma ** 2) if gamma is None else check_positive(gamma, "gamma")
    squared_error, kl = gaussian_elbo_terms(model, images, generator=generator)
    return (beta * kl - gamma * squared_error).mean()


# ---------------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------------


def fit_vae(
    images: torch.Tensor,
    *,
    latent_dim: int = LATENT_DIM,
    hidden: int = HIDDEN,
    dropout: float = DROPOUT,
    beta: float = 1.0,
    steps: int = STEPS,
    batch_size: int | None = BATCH_SIZE,
    lr: float = LR,
    seed: int = 0,
    progress: bool = True,
    desc: str = "VAE",
) -> tuple[VAE, History]:
    """Fit a categorical-decoder VAE to ``images`` (on their device) by minimising :func:`negative_elbo` with Adam.

    Initialisation, minibatches, ``eps`` and dropout all depend on ``seed`` only. Returns the model (in eval mode)
    and the :class:`~mmlib.train.History` of the loss (nats per image).
    """
    image_levels(images)  # full validation once, outside the loop
    beta = check_positive(beta, "beta", allow_zero=True)
    seed = check_int(seed, "seed", low=0)
    model = build_vae(latent_dim, hidden, dropout=dropout, seed=seed, device=images.device)
    model.train()
    optimizer = make_optimizer(model.parameters(), lr=lr)
    with seeded(seed + 1, images.device), one_cpu_thread(images.device):  # small MLPs: one thread is faster
        history = train(loss_step(lambda x: negative_elbo(model, x, beta=beta), optimizer), images, steps=steps,
                        batch_size=batch_size, seed=seed, desc=desc, progress=progress)
    return model.eval(), history


# ---------------------------------------------------------------------------------------------------------------------
# Using the model: codes, reconstructions, samples
# ---------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def encode_mean(model: VAE, images: torch.Tensor) -> torch.Tensor:
    """The posterior means ``mu_phi(x)`` ``(N, d)`` (eval mode, no gradients)."""
    model = _check_model(model)
    image_levels(images)
    was_training = model.training
    model.eval()
    mu, _ = model.encoder(images)
    model.train(was_training)
    return mu


@torch.no_grad()
def decode_mean(model: VAE, z: torch.Tensor) -> torch.Tensor:
    """The expected image ``E[x | z]`` ``(N, 1, 8, 8)`` in [0, 1]: ``sum_l softmax(logits)_l * l / 16`` per pixel for
    the categorical decoder, ``f(z)`` for the Gaussian one (eval mode, no gradients)."""
    model = _check_model(model)
    z = check_tensor(z, "z", ndim=2, floating=True)
    if z.shape[1] != model.latent_dim:
        raise ValueError(f"z: expected {model.latent_dim} latent dimensions, got shape {tuple(z.shape)}")
    was_training = model.training
    model.eval()
    out = model.decoder(z.to(model.device))
    model.train(was_training)
    if model.likelihood == "categorical":
        grey = torch.arange(NUM_LEVELS, device=out.device, dtype=out.dtype) / (NUM_LEVELS - 1)
        out = (out.softmax(dim=-1) * grey).sum(dim=-1)
    return out.reshape(-1, 1, 8, 8)


def reconstruct(model: VAE, images: torch.Tensor) -> torch.Tensor:
    """``E[x | z = mu_phi(x)]``: the expected image decoded from the posterior mean, ``(N, 1, 8, 8)``."""
    return decode_mean(model, encode_mean(model, images))


def reconstruction_error(model: VAE, images: torch.Tensor) -> float:
    """Mean over images of ``||x - E[x | mu_phi(x)]||^2`` (sum over the 64 pixels, grey values in [0, 1])."""
    recon = reconstruct(model, images)
    return float((recon - images).pow(2).flatten(1).sum(dim=1).mean())


@torch.no_grad()
def sample_images(model: VAE, n: int, *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Ancestral samples: ``z ~ N(0, I)``, then every pixel ``x_p ~ Cat(softmax(logits_p(z)))``.

    Returns ``(images (n, 1, 8, 8) = level / 16, z (n, d))``, drawn with a private generator seeded by ``seed``."""
    model = _check_model(model, "categorical")
    n = check_int(n, "n", low=1)
    gen = torch.Generator(device=model.device).manual_seed(check_int(seed, "seed", low=0))
    was_training = model.training
    model.eval()
    z = torch.randn(n, model.latent_dim, generator=gen, device=model.device)
    probs = model.decoder(z).softmax(dim=-1).reshape(-1, NUM_LEVELS)
    levels = torch.multinomial(probs, 1, generator=gen).reshape(n, 1, 8, 8)
    model.train(was_training)
    return levels.float() / (NUM_LEVELS - 1), z


@torch.no_grad()
def rate_distortion(model: VAE, images: torch.Tensor, *, seed: int = 0) -> tuple[float, float]:
    """``(rate, distortion)`` on ``images`` in nats per image: rate ``= mean KL(q(z | x) || p(z))``, distortion
    ``= -mean E_q[log p(x | z)]`` (one draw per image). Their sum is the negative ELBO (eval mode)."""
    model = _check_model(model)
    image_levels(images)
    gen = torch.Generator(device=images.device).manual_seed(check_int(seed, "seed", low=0))
    was_training = model.training
    model.eval()
    log_lik, kl = elbo_terms(model, images, generator=gen)
    model.train(was_training)
    return float(kl.mean()), float(-log_lik.mean())


# ---------------------------------------------------------------------------------------------------------------------
# Held-out likelihood: importance-weighted bounds
# ---------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def log_importance_weights(
    model: VAE, images: torch.Tensor, n_samples: int, *, seed: int = 0, chunk_size: int | None = None
) -> torch.Tensor:
    """``log w_s = log p(x | z_s) + log p(z_s) - log q(z_s | x)`` for ``z_s ~ q(z | x)``, ``(n_samples, N)``.

    ``E_q[w] = p(x)``: their log-mean-exp estimates ``log p(x)``. Eval mode, drawn in chunks with a private generator
    seeded by ``seed`` (the same numbers on every call)."""
    model = _check_model(model)
    levels = image_levels(images)
    n_samples = check_int(n_samples, "n_samples", low=1)
    n = images.shape[0]
    if chunk_size is None:
        chunk_size = max(1, 16384 // n)
    chunk_size = check_int(chunk_size, "chunk_size", low=1)
    gen = torch.Generator(device=images.device).manual_seed(check_int(seed, "seed", low=0))
    was_training = model.training
    model.eval()
    mu, log_var = model.encoder(images)
    q = Normal(mu, (0.5 * log_var).exp())
    out = []
    for start in range(0, n_samples, chunk_size):
        s = min(chunk_size, n_samples - start)
        z = reparameterise(mu, log_var, n_samples=s, generator=gen)  # (s, N, d)
        log_prior = Normal(0.0, 1.0).log_prob(z).sum(dim=-1)
        if model.likelihood == "categorical":
            log_lik = _categorical_log_likelihood(model.decoder(z), levels)
        else:
            log_lik = _gaussian_log_likelihood(model.decoder(z), images.reshape(n, -1), model.sigma)
        out.append(log_lik + log_prior - q.log_prob(z).sum(dim=-1))
    model.train(was_training)
    return torch.cat(out)


def iwae_estimates(log_weights: torch.Tensor, k: int) -> torch.Tensor:
    """Split ``S`` log-weights per image into ``S // k`` groups of ``k`` and return each group's
    ``IWAE_k = log (1/k) sum_j w_j`` (a log-sum-exp minus ``log k``): ``(S, N)`` -> ``(S // k, N)``.

    ``k = 1`` gives one-sample ELBO estimates; ``E[IWAE_k]`` increases with ``k`` towards ``log p(x)``."""
    log_weights = check_tensor(log_weights, "log_weights", ndim=2, floating=True)
    k = check_int(k, "k", low=1, high=log_weights.shape[0])
    groups = log_weights.shape[0] // k
    grouped = log_weights[: groups * k].reshape(groups, k, -1)
    return torch.logsumexp(grouped, dim=1) - math.log(k)


@dataclass(frozen=True)
class Bound:
    """A test-set bound in nats per image: the mean over images of ``repeats`` independent estimates each, and the
    Monte Carlo standard error of that mean, ``sqrt(sum_i var_i / repeats) / N`` (``var_i``: the variance of image
    ``i``'s estimates)."""

    k: int
    value: float
    standard_error: float
    repeats: int


def importance_weighted_bounds(
    model: VAE, images: torch.Tensor, ks: Sequence[int] = EVAL_KS, *, n_samples: int = EVAL_SAMPLES, seed: int = 0
) -> dict[int, Bound]:
    """``{k: Bound}`` for each ``k`` in ``ks`` from the same ``n_samples`` importance weights per image.

    Each ``k`` uses ``n_samples // k`` (at least 2) disjoint groups; ``k = 1`` is the ELBO. The standard error measures
    only the Monte Carlo noise (the test images are fixed)."""
    if isinstance(ks, (str, bytes)) or not isinstance(ks, Sequence) or not ks:
        raise TypeError(f"ks: expected a non-empty sequence of ints, got {ks!r}")
    n_samples = check_int(n_samples, "n_samples", low=2)
    ks = [check_int(k, f"ks[{i}]", low=1, high=n_samples // 2) for i, k in enumerate(ks)]
    log_w = log_importance_weights(model, images, n_samples, seed=seed)
    bounds = {}
    for k in ks:
        est = iwae_estimates(log_w, k).double()  # (G, N)
        g, n = est.shape
        se = math.sqrt(float(est.var(dim=0).sum()) / g) / n
        bounds[k] = Bound(k=k, value=float(est.mean()), standard_error=se, repeats=g)
    return bounds


# ---------------------------------------------------------------------------------------------------------------------
# beta: rate against distortion
# ---------------------------------------------------------------------------------------------------------------------


def beta_sweep(
    train_images: torch.Tensor,
    test_images: torch.Tensor,
    betas: Sequence[float],
    *,
    steps: int = 1000,
    latent_dim: int = LATENT_DIM,
    seed: int = 0,
    progress: bool = True,
) -> list[dict[str, float]]:
    """Fit one VAE per ``beta`` (same seed, ``steps`` each) and measure its test ``rate`` and ``distortion``.

    The fits do not depend on each other, so they run side by side, one per CPU core (:func:`mmlib.parallel.run_jobs`,
    the same numbers as one after the other). Returns ``[{"beta", "rate", "distortion", "elbo"}]`` in nats per image,
    one row per beta, in the given order."""
    from mmlib.parallel import run_jobs

    if isinstance(betas, (str, bytes)) or not isinstance(betas, Sequence) or not betas:
        raise TypeError(f"betas: expected a non-empty sequence of numbers, got {betas!r}")
    betas = [check_positive(b, f"betas[{i}]") for i, b in enumerate(betas)]
    _check_images(train_images, "train_images")
    _check_images(test_images, "test_images")
    steps = check_int(steps, "steps", low=1)
    seed = check_int(seed, "seed", low=0)
    job = {"train_images": train_images, "test_images": test_images, "steps": steps, "latent_dim": latent_dim,
           "seed": seed}
    return run_jobs([(_sweep_point, dict(job, beta=b)) for b in betas], device=train_images.device,
                    progress=progress, desc="β sweep")


def _sweep_point(
    train_images: torch.Tensor, test_images: torch.Tensor, beta: float, steps: int, latent_dim: int, seed: int
) -> dict[str, float]:
    """One row of :func:`beta_sweep`: fit a VAE with ``beta``, then its test rate and distortion."""
    model, _ = fit_vae(train_images, beta=beta, steps=steps, latent_dim=latent_dim, seed=seed, progress=False)
    rate, distortion = rate_distortion(model, test_images, seed=seed)
    return {"beta": beta, "rate": rate, "distortion": distortion, "elbo": -(rate + distortion)}


# ---------------------------------------------------------------------------------------------------------------------
# Experiment
# ---------------------------------------------------------------------------------------------------------------------


@register("vae-digits", "Chapter 04: VAE on the 17-level digits; test ELBO and IWAE bounds vs chapter 01's baseline")
def vae_digits(seed: int = 0, device: torch.device | None = None) -> TrainedResult:
    """Experiment ``vae-digits``: a categorical-decoder VAE (latent 16) fitted to the training images.

    Metrics, in nats per image on the test split: ``test_elbo``, ``test_iwae_10``, ``test_iwae_100``,
    ``test_iwae_1000`` (the best estimate), each with ``<name>_se`` (Monte Carlo standard error) from
    ``EVAL_SAMPLES`` importance samples per image; ``baseline_nats`` (chapter 01's best mixture of per-pixel
    categoricals); ``test_rate`` and ``test_distortion``; ``train_loss`` (last logged). Arrays: ``gen_image``
    (500 samples from the prior, level / 16), ``gen_z`` (their codes), ``recon_image`` (reconstructions of the test
    images, expected grey level), ``test_z`` (posterior means) and ``test_label``, ``loss`` and ``loss_step``
    (the training curve).
    """
    from mmlib.data import load_multimodal_digits
    from mmlib.likelihood import baseline_test_log_likelihood
    from mmlib.seed import seed_everything

    seed_everything(seed)
    dev = resolve_device(device)
    ds = load_multimodal_digits(device=dev)
    test = ds.test["image"]
    model, history = fit_vae(ds.train["image"], seed=seed, desc="VAE on the digits")
    bounds = importance_weighted_bounds(model, test, EVAL_KS, n_samples=EVAL_SAMPLES, seed=seed)
    rate, distortion = rate_distortion(model, test, seed=seed)
    baseline = baseline_test_log_likelihood(seed=seed, device=dev)
    gen, gen_z = sample_images(model, 500, seed=seed)
    metrics: dict[str, float | int] = {}
    for k, b in bounds.items():
        name = "test_elbo" if k == 1 else f"test_iwae_{k}"
        metrics[name] = round(b.value, 4)
        metrics[f"{name}_se"] = round(b.standard_error, 5)
    metrics.update(
        baseline_nats=round(baseline, 4),
        test_rate=round(rate, 4),
        test_distortion=round(distortion, 4),
        train_loss=round(history.last("loss"), 4),
        latent_dim=model.latent_dim,
        eval_samples=EVAL_SAMPLES,
    )
    arrays = {
        "gen_image": gen,
        "gen_z": gen_z,
        "recon_image": reconstruct(model, test),
        "test_z": encode_mean(model, test),
        "test_label": ds.test.label,
        "loss": torch.tensor(history["loss"]),
        "loss_step": torch.tensor(history.steps),
    }
    return TrainedResult(metrics=metrics, arrays=arrays, models={"vae": model})


# ---------------------------------------------------------------------------------------------------------------------
# Exercises of notebook 04
# ---------------------------------------------------------------------------------------------------------------------


@exercise("04.2")
def _check_kl_diagonal(fn: Callable) -> str:
    """Exercise 04.2: KL between two diagonal Gaussians given by means and log-variances, summed over dimensions."""
    from torch.distributions import Independent, kl_divergence

    gen = torch.Generator().manual_seed(4)
    mu_q, lv_q, mu_p, lv_p = (torch.randn(5, 3, generator=gen, dtype=torch.float64) for _ in range(4))
    got = fn(mu_q, lv_q, mu_p, lv_p)
    assert isinstance(got, torch.Tensor), f"return a tensor, got {type(got).__name__}"
    assert got.shape == (5,), (
        f"for 5 rows of 3 dimensions return one KL per row, shape (5,), got {tuple(got.shape)}: sum over the last "
        "dimension"
    )
    q = Independent(Normal(mu_q, (0.5 * lv_q).exp()), 1)
    p = Independent(Normal(mu_p, (0.5 * lv_p).exp()), 1)
    want = kl_divergence(q, p)
    assert torch.allclose(got.double(), want, atol=1e-6), (
        "your KL differs from torch.distributions.kl_divergence. Per dimension it is "
        "1/2 [log(var_p / var_q) + (var_q + (mu_q - mu_p)^2) / var_p - 1]; remember var = exp(log_var)."
    )
    zero = fn(mu_q, lv_q, mu_q, lv_q)
    assert torch.allclose(zero.double(), torch.zeros(5, dtype=torch.float64), atol=1e-9), "KL(q || q) must be 0"
    return "It matches torch.distributions; with mu_p = 0, log_var_p = 0 it is the closed form used by the VAE."


@exercise("04.3")
def _check_iwae(fn: Callable) -> str:
    """Exercise 04.3: the importance-weighted bound from a (K, N) tensor of log-weights."""
    log_w = torch.tensor([[-1000.0, 0.0], [-1001.0, math.log(3.0)]], dtype=torch.float64)
    got = fn(log_w)
    assert isinstance(got, torch.Tensor) and got.shape == (2,), (
        f"for log-weights of shape (K, N) = (2, 2) return one bound per image, shape (2,), got "
        f"{tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__}"
    )
    want = torch.tensor([-1000.0 + math.log((1 + math.exp(-1)) / 2), math.log(2.0)], dtype=torch.float64)
    assert torch.isfinite(got).all(), (
        "your bound is -inf for log-weights near -1000: exp(-1000) underflows to 0. Use torch.logsumexp."
    )
    assert torch.allclose(got.double(), want, atol=1e-9), (
        "IWAE_K = logsumexp_k(log w_k) - log K per image (average the weights, not the log-weights)."
    )
    return "A log-mean-exp: for K = 1 it is the ELBO, and it rises with K towards log p(x)."
