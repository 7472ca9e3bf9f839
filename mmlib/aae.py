"""Adversarial autoencoders: a discriminator on the latent code (taught in notebook ``05_adversarial_autoencoder``).

The article's §3.2.2 says a discriminator can "judge whether z is plausible". An adversarial autoencoder (Makhzani et
al. 2015, arXiv:1511.05644) makes this precise. A deterministic encoder ``z = E(x)``, a decoder ``p(x | z)`` and a
discriminator ``D(z)`` are trained on every minibatch in two phases:

1. **regularisation**: ``D`` learns to tell prior samples ``z ~ p(z)`` from codes ``E(x)``
   (``-log D(z_prior) - log(1 - D(E(x)))``), and the encoder learns to fool it (``-log D(E(x))``);
2. **reconstruction**: encoder and decoder minimise ``-log p(x | E(x))``.

The paper alternates SGD steps for the phases; :func:`aae_step` takes the discriminator's step, then one Adam step of
the autoencoder on ``reconstruction + ADVERSARIAL_WEIGHT * (-log D(E(x)))``: the same game. (Separate Adam steps for the
encoder's two losses were unstable in our runs — some seeds collapsed the codes — plausibly because Adam gives every
step a similar size, so the small, noisy adversarial gradients moved the encoder as much as the reconstruction ones.)

At the game's equilibrium the *aggregate posterior* ``q(z) = E_data[delta(z - E(x))]`` equals the prior, for any prior
one can sample from — a VAE needs ``log p(z)`` inside its KL, and for a mixture prior there is no closed form.

Here the prior is a ring of 10 Gaussians in 2D. The module compares the AAE with a plain autoencoder and with a VAE that
uses the same prior (Monte Carlo KL), by the maximum mean discrepancy (MMD) between codes and prior samples, and
evaluates generation (decoded prior samples) with the course's image classifier. With the digit label shown to the
discriminator (the paper's §2.3), mixture component ``k`` holds digit ``k``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from mmlib.checks import check_generator, check_indices, check_int, check_positive, check_tensor
from mmlib.device import one_cpu_thread, resolve_device
from mmlib.exercises import exercise
from mmlib.experiments import TrainedResult, register
from mmlib.train import History, make_optimizer, train
from mmlib.vae import (
    NUM_LEVELS,
    NUM_PIXELS,
    CategoricalDecoder,
    GaussianEncoder,
    _categorical_log_likelihood,
    _check_batch,
    _levels,
    image_levels,
    reparameterise,
    seeded,
)

__all__ = [
    "PRIOR_COMPONENTS",
    "PRIOR_RADIUS",
    "PRIOR_STD",
    "LATENT_DIM",
    "RingPrior",
    "Autoencoder",
    "AdversarialAutoencoder",
    "MixturePriorVAE",
    "Discriminator",
    "build_model",
    "reconstruction_nll",
    "discriminator_loss",
    "encoder_adversarial_loss",
    "ADVERSARIAL_WEIGHT",
    "Optimisers",
    "make_optimisers",
    "aae_step",
    "mixture_vae_loss",
    "fit_model",
    "latent_codes",
    "decode_expected",
    "generate",
    "mmd2",
    "mmd_permutation_test",
    "MMDTest",
    "aae_digits",
]

#: The prior: 10 equal-weight Gaussians on a circle of radius 4 in 2D, each with standard deviation 0.5.
PRIOR_COMPONENTS = 10
PRIOR_RADIUS = 4.0
PRIOR_STD = 0.5
LATENT_DIM = 2
HIDDEN = 128
DROPOUT = 0.2
STEPS = 2000
BATCH_SIZE = 128
LR = 2e-3
#: Gaussian-kernel bandwidth of the MMD, in latent units (the prior's components have std 0.5, radius 4).
MMD_BANDWIDTH = 1.0
KINDS: tuple[str, ...] = ("ae", "vae", "aae", "aae-labels")


# ---------------------------------------------------------------------------------------------------------------------
# The prior: a ring of Gaussians
# ---------------------------------------------------------------------------------------------------------------------


class RingPrior:
    """``p(z) = (1/K) sum_k N(z; m_k, s^2 I)`` with ``m_k = r (cos 2 pi k / K, sin 2 pi k / K)`` (2D).

    ``log_prob`` exists (``MixtureSameFamily``) but ``KL(N(mu, sigma^2) || p)`` has no closed form."""

    def __init__(self, components: int = PRIOR_COMPONENTS, radius: float = PRIOR_RADIUS, std: float = PRIOR_STD,
                 device: torch.device | str | None = None) -> None:
        self.components = check_int(components, "components", low=1)
        self.radius = check_positive(radius, "radius")
        self.std = check_positive(std, "std")
        self.device = resolve_device(device)
        angles = 2 * math.pi * torch.arange(self.components, dtype=torch.float32) / self.components
        self.means = (self.radius * torch.stack([angles.cos(), angles.sin()], dim=1)).to(self.device)  # (K, 2)

    @property
    def distribution(self) -> MixtureSameFamily:
        """The mixture; it does not validate samples (a host synchronisation): NaN codes give a NaN ``log_prob``."""
        weights = torch.full((self.components,), 1.0 / self.components, device=self.device)
        normal = Normal(self.means, torch.full_like(self.means, self.std), validate_args=False)
        return MixtureSameFamily(Categorical(probs=weights, validate_args=False), Independent(normal, 1),
                                 validate_args=False)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """``log p(z)`` for ``z (..., 2)`` -> ``(...)`` (no host checks: used inside training steps)."""
        z = check_tensor(z, "z", floating=True, finite=False)
        if z.ndim < 1 or z.shape[-1] != 2:
            raise ValueError(f"z: expected points of shape (..., 2), got {tuple(z.shape)}")
        return self.distribution.log_prob(z)

    def sample(self, n: int, *, generator: torch.Generator | None = None,
               components: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` draws ``(z (n, 2), component (n,))``; ``components`` fixes each draw's component (else uniform)."""
        n = check_int(n, "n", low=1)
        generator = check_generator(generator, "generator")
        if components is None:
            components = torch.randint(self.components, (n,), generator=generator, device=self.device)
        else:
            components = check_indices(components, "components", self.components, shape=(n,))
        noise = torch.randn(n, 2, generator=generator, device=self.device)
        return self.means[components] + self.std * noise, components


# ---------------------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------------------


class _Encoder(nn.Module):
    """Deterministic encoder ``z = E(x)``: images ``(N, 1, 8, 8)`` -> codes ``(N, d)``."""

    def __init__(self, latent_dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(NUM_PIXELS, hidden), nn.SiLU(),
            nn.Linear(hidden, hidden), nn.SiLU(),
            nn.Linear(hidden, latent_dim),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(_check_batch(images))


class Discriminator(nn.Module):
    """``D(z) = sigmoid(logit(z))``: the probability that ``z`` came from the prior, not from the encoder.

    With ``n_classes > 0`` it also sees a one-hot label (the component of a prior draw, the digit of a code), so it
    judges "is z plausible *for this digit*" (Makhzani et al., §2.3). Returns logits ``(N,)``."""

    def __init__(self, latent_dim: int = LATENT_DIM, hidden: int = 64, n_classes: int = 0) -> None:
        super().__init__()
        self.latent_dim = check_int(latent_dim, "latent_dim", low=1)
        self.n_classes = check_int(n_classes, "n_classes", low=0)
        hidden = check_int(hidden, "hidden", low=1)
        self.net = nn.Sequential(
            nn.Linear(latent_dim + n_classes, hidden), nn.LeakyReLU(0.2),
            nn.Linear(hidden, hidden), nn.LeakyReLU(0.2),
            nn.Linear(hidden, 1),
        )

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        z = check_tensor(z, "z", shape=(None, self.latent_dim), floating=True, finite=False)
        if self.n_classes:
            if labels is None:
                raise ValueError("labels: this discriminator is conditioned on labels; pass them")
            labels = check_indices(labels, "labels", self.n_classes)
            if labels.shape != (z.shape[0],):
                raise ValueError(f"z, labels: expected one label per row of z, got {z.shape[0]} rows and labels of "
                                 f"shape {tuple(labels.shape)}")
            z = torch.cat([z, F.one_hot(labels, self.n_classes).to(z.dtype)], dim=-1)
        return self.net(z).squeeze(-1)


class Autoencoder(nn.Module):
    """A plain autoencoder: ``z = E(x)``, ``p(x | z)`` a 17-level categorical per pixel (as in notebook 04)."""

    def __init__(self, latent_dim: int = LATENT_DIM, hidden: int = HIDDEN, dropout: float = DROPOUT) -> None:
        super().__init__()
        self.latent_dim = check_int(latent_dim, "latent_dim", low=1)
        self.encoder = _Encoder(self.latent_dim, check_int(hidden, "hidden", low=1))
        self.decoder = CategoricalDecoder(self.latent_dim, hidden, dropout=dropout)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images)


class AdversarialAutoencoder(Autoencoder):
    """An :class:`Autoencoder` plus a latent :class:`Discriminator` (``n_classes > 0``: label-conditioned)."""

    def __init__(self, latent_dim: int = LATENT_DIM, hidden: int = HIDDEN, dropout: float = DROPOUT,
                 n_classes: int = 0) -> None:
        super().__init__(latent_dim, hidden, dropout)
        self.discriminator = Discriminator(self.latent_dim, 64, check_int(n_classes, "n_classes", low=0))


class MixturePriorVAE(nn.Module):
    """A VAE whose prior is the ring mixture: ``q(z | x)`` Gaussian, ``p(x | z)`` categorical; its KL to the mixture
    has no closed form, so the loss uses the one-sample estimate ``log q(z | x) - log p(z)``."""

    def __init__(self, latent_dim: int = LATENT_DIM, hidden: int = HIDDEN, dropout: float = DROPOUT) -> None:
        super().__init__()
        self.latent_dim = check_int(latent_dim, "latent_dim", low=1)
        self.encoder = GaussianEncoder(self.latent_dim, hidden)
        self.decoder = CategoricalDecoder(self.latent_dim, hidden, dropout=dropout)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """The posterior mean (used as "the code" for plots; :func:`latent_codes` samples ``q`` instead)."""
        return self.encoder(images)[0]


Model = Autoencoder | MixturePriorVAE


def build_model(kind: str, *, seed: int = 0, device: torch.device | str | None = None, **kwargs) -> nn.Module:
    """A fresh model of ``kind`` (``"ae"``, ``"vae"``, ``"aae"`` or ``"aae-labels"``) on ``device``; its weights
    depend only on ``seed`` (initialised on the CPU)."""
    if kind not in KINDS:
        raise ValueError(f"kind: unknown model kind {kind!r}; expected one of {list(KINDS)}")
    dev = resolve_device(device)
    with seeded(seed, "cpu"):
        if kind == "ae":
            model: nn.Module = Autoencoder(**kwargs)
        elif kind == "vae":
            model = MixturePriorVAE(**kwargs)
        else:
            model = AdversarialAutoencoder(**kwargs, n_classes=10 if kind == "aae-labels" else 0)
    return model.to(dev)


# ---------------------------------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------------------------------


def reconstruction_nll(model: Autoencoder, images: torch.Tensor) -> torch.Tensor:
    """Reconstruction phase: ``mean_batch[-log p(x | z = E(x))]`` (sum over pixels), nats per image."""
    if not isinstance(model, Autoencoder):
        raise TypeError(f"model: expected an mmlib.aae.Autoencoder, got {type(model).__name__}")
    images = _check_batch(images)
    return -_categorical_log_likelihood(model.decoder(model.encoder(images)), _levels(images)).mean()


def _check_discriminator(discriminator: object) -> Discriminator:
    if not isinstance(discriminator, Discriminator):
        raise TypeError(f"discriminator: expected an mmlib.aae.Discriminator, got {type(discriminator).__name__}")
    return discriminator


def _check_labels(discriminator: Discriminator, z: torch.Tensor, labels: object, z_name: str, name: str) -> None:
    """The labels a label-conditioned discriminator needs beside ``z``: one class index per row."""
    if not discriminator.n_classes:
        return
    labels = check_indices(labels, name, discriminator.n_classes)
    if labels.shape != (z.shape[0],):
        raise ValueError(f"{z_name}, {name}: expected one label per code, got {z.shape[0]} codes and labels of shape "
                         f"{tuple(labels.shape)}")


def discriminator_loss(
    discriminator: Discriminator,
    z_prior: torch.Tensor,
    z_codes: torch.Tensor,
    *,
    labels_prior: torch.Tensor | None = None,
    labels_codes: torch.Tensor | None = None,
) -> torch.Tensor:
    """Regularisation phase, discriminator: ``-mean log D(z_prior) - mean log(1 - D(z_codes))`` (prior = "real").

    Written with logits: ``softplus(-l) = -log sigmoid(l)`` and ``softplus(l) = -log(1 - sigmoid(l))``."""
    _check_discriminator(discriminator)
    check_tensor(z_prior, "z_prior", ndim=2, floating=True, finite=False)
    check_tensor(z_codes, "z_codes", ndim=2, floating=True, finite=False)
    if z_prior.shape[1] != z_codes.shape[1]:
        raise ValueError(f"z_prior, z_codes: expected the same latent size, got {z_prior.shape[1]} and "
                         f"{z_codes.shape[1]}")
    _check_labels(discriminator, z_prior, labels_prior, "z_prior", "labels_prior")
    _check_labels(discriminator, z_codes, labels_codes, "z_codes", "labels_codes")
    real = discriminator(z_prior, labels_prior)
    fake = discriminator(z_codes, labels_codes)
    return F.softplus(-real).mean() + F.softplus(fake).mean()


def encoder_adversarial_loss(
    discriminator: Discriminator, z_codes: torch.Tensor, *, labels: torch.Tensor | None = None
) -> torch.Tensor:
    """Regularisation phase, encoder (the generator of codes): ``-mean log D(E(x))`` (the non-saturating loss)."""
    _check_discriminator(discriminator)
    check_tensor(z_codes, "z_codes", shape=(None, discriminator.latent_dim), floating=True, finite=False)
    _check_labels(discriminator, z_codes, labels, "z_codes", "labels")
    return F.softplus(-discriminator(z_codes, labels)).mean()


def _check_prior(prior: object) -> RingPrior:
    if not isinstance(prior, RingPrior):
        raise TypeError(f"prior: expected an mmlib.aae.RingPrior, got {type(prior).__name__}")
    return prior


def mixture_vae_loss(model: MixturePriorVAE, images: torch.Tensor, prior: RingPrior) -> torch.Tensor:
    """``mean_batch[-log p(x | z) + log q(z | x) - log p(z)]`` with one ``z ~ q(z | x)``: the negative ELBO with a
    one-sample Monte Carlo KL (the ring prior has no closed-form KL)."""
    if not isinstance(model, MixturePriorVAE):
        raise TypeError(f"model: expected an mmlib.aae.MixturePriorVAE, got {type(model).__name__}")
    images = _check_batch(images)
    _check_prior(prior)
    mu, log_var = model.encoder(images)
    z = reparameterise(mu, log_var)
    # no validation of the arguments (a host synchronisation): NaN images make the loss NaN, which train() reports
    log_q = Normal(mu, (0.5 * log_var).exp(), validate_args=False).log_prob(z).sum(dim=-1)
    log_lik = _categorical_log_likelihood(model.decoder(z), _levels(images))
    return (-log_lik + log_q - prior.log_prob(z)).mean()


# ---------------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------------


#: Weight of the regularisation phase's encoder loss against the reconstruction loss (nats per image).
ADVERSARIAL_WEIGHT = 5.0


@dataclass
class Optimisers:
    """The optimisers of a model: Adam over encoder + decoder (``autoencoder``) and, for an AAE, Adam over the
    discriminator (``discriminator``, betas (0.5, 0.999) as usual for adversarial games)."""

    autoencoder: torch.optim.Optimizer
    discriminator: torch.optim.Optimizer | None = None


def make_optimisers(model: nn.Module, lr: float = LR) -> Optimisers:
    """:class:`Optimisers` for ``model`` with learning rate ``lr``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an mmlib.aae model, got {type(model).__name__}")
    if isinstance(model, AdversarialAutoencoder):
        autoencoder = list(model.encoder.parameters()) + list(model.decoder.parameters())
        return Optimisers(make_optimizer(autoencoder, lr=lr),
                          make_optimizer(model.discriminator.parameters(), lr=lr, betas=(0.5, 0.999)))
    return Optimisers(make_optimizer(model.parameters(), lr=lr))


def aae_step(
    model: AdversarialAutoencoder,
    optimisers: Optimisers,
    prior: RingPrior,
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    weight: float = ADVERSARIAL_WEIGHT,
) -> dict[str, torch.Tensor]:
    """One AAE update on a minibatch.

    1. regularisation phase, discriminator: one step on :func:`discriminator_loss` (prior draws vs the current codes);
    2. reconstruction phase + regularisation phase, autoencoder: one step on
       ``reconstruction_nll + weight * encoder_adversarial_loss`` (the decoder only feels the first term).

    ``labels`` (the digits) are used only by a label-conditioned discriminator: prior draws then come from component
    ``label``, so digit ``k`` is pushed into component ``k``. Returns the detached losses."""
    if not isinstance(model, AdversarialAutoencoder):
        raise TypeError(f"model: expected an mmlib.aae.AdversarialAutoencoder, got {type(model).__name__}")
    if not isinstance(optimisers, Optimisers) or optimisers.discriminator is None:
        raise TypeError("optimisers: expected make_optimisers(model) of an adversarial autoencoder")
    _check_prior(prior)
    images = _check_batch(images)
    weight = check_positive(weight, "weight", allow_zero=True)
    conditioned = model.discriminator.n_classes > 0
    if conditioned:
        if labels is None:
            raise ValueError("labels: a label-conditioned AAE needs the digit of every image")
        # a label picks the prior's component and the discriminator's class
        labels = check_indices(labels, "labels", min(prior.components, model.discriminator.n_classes))
        if labels.shape != (images.shape[0],):
            raise ValueError(f"images, labels: expected one digit per image, got {images.shape[0]} images and labels "
                             f"of shape {tuple(labels.shape)}")
    lab = labels if conditioned else None
    z_codes = model.encoder(images)
    z_prior, comp = prior.sample(images.shape[0], components=lab)
    # regularisation phase: the discriminator tells prior draws (target 1) from codes (target 0)
    optimisers.discriminator.zero_grad(set_to_none=True)
    d_loss = discriminator_loss(model.discriminator, z_prior, z_codes.detach(),
                                labels_prior=comp if conditioned else None, labels_codes=lab)
    d_loss.backward()
    optimisers.discriminator.step()
    # reconstruction phase, plus the encoder's half of the regularisation phase: make codes look like prior draws
    optimisers.autoencoder.zero_grad(set_to_none=True)
    rec = -_categorical_log_likelihood(model.decoder(z_codes), _levels(images)).mean()
    adv = encoder_adversarial_loss(model.discriminator, z_codes, labels=lab)
    (rec + weight * adv).backward()
    optimisers.autoencoder.step()
    return {"reconstruction": rec.detach(), "discriminator": d_loss.detach(), "encoder": adv.detach()}


def fit_model(
    kind: str,
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    prior: RingPrior | None = None,
    steps: int = STEPS,
    batch_size: int = BATCH_SIZE,
    lr: float = LR,
    seed: int = 0,
    progress: bool = True,
) -> tuple[nn.Module, History]:
    """Fit a model of ``kind`` to ``images`` (on their device): ``"ae"`` (reconstruction only), ``"vae"`` (negative
    ELBO with the ring prior, Monte Carlo KL), ``"aae"`` (both AAE phases) or ``"aae-labels"`` (the AAE with a
    label-conditioned discriminator; needs ``labels``). Everything random depends on ``seed`` only.

    Returns the model (eval mode) and its :class:`~mmlib.train.History`."""
    image_levels(images)
    seed = check_int(seed, "seed", low=0)
    prior = RingPrior(device=images.device) if prior is None else _check_prior(prior)
    model = build_model(kind, seed=seed, device=images.device)
    if kind == "aae-labels":
        if labels is None:
            raise ValueError("labels: kind 'aae-labels' needs the digit of every image")
        labels = check_tensor(labels, "labels", ndim=1, integer=True)
        if labels.shape[0] != images.shape[0]:
            raise ValueError(f"images, labels: expected one digit per image, got {images.shape[0]} images and "
                             f"{labels.shape[0]} labels")
        if bool((labels < 0).any()) or bool((labels >= prior.components).any()):
            raise ValueError(f"labels: expected digits in 0..{prior.components - 1}")
    optimisers = make_optimisers(model, lr)
    model.train()

    if kind in ("aae", "aae-labels"):
        tensors = (images, labels) if kind == "aae-labels" else (images,)

        def step(x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
            return aae_step(model, optimisers, prior, x, y)
    else:
        tensors = (images,)
        loss_fn: Callable[[torch.Tensor], torch.Tensor] = (
            (lambda x: reconstruction_nll(model, x)) if kind == "ae" else (lambda x: mixture_vae_loss(model, x, prior))
        )

        def step(x: torch.Tensor) -> dict[str, torch.Tensor]:
            optimisers.autoencoder.zero_grad(set_to_none=True)
            loss = loss_fn(x)
            loss.backward()
            optimisers.autoencoder.step()
            return {"loss": loss.detach()}

    with seeded(seed + 1, images.device), one_cpu_thread(images.device):  # small MLPs: one thread is faster
        history = train(step, tensors, steps=steps, batch_size=batch_size, seed=seed, desc=kind.upper(),
                        progress=progress)
    return model.eval(), history


# ---------------------------------------------------------------------------------------------------------------------
# Codes, generation
# ---------------------------------------------------------------------------------------------------------------------


def _check_model(model: object) -> Model:
    if not isinstance(model, (Autoencoder, MixturePriorVAE)):
        raise TypeError(f"model: expected an mmlib.aae Autoencoder or MixturePriorVAE, got {type(model).__name__}")
    return model


@torch.no_grad()
def latent_codes(model: Model, images: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
    """Draws from the aggregate posterior, one per image ``(N, d)``: ``E(x)`` for (adversarial) autoencoders,
    ``z ~ q(z | x)`` for the VAE (its aggregate posterior is the mixture of the ``q(z | x)``)."""
    model = _check_model(model)
    image_levels(images)
    was_training = model.training
    model.eval()
    if isinstance(model, MixturePriorVAE):
        gen = torch.Generator(device=images.device).manual_seed(check_int(seed, "seed", low=0))
        mu, log_var = model.encoder(images)
        codes = reparameterise(mu, log_var, generator=gen)
    else:
        codes = model.encoder(images)
    model.train(was_training)
    return codes


@torch.no_grad()
def decode_expected(model: Model, z: torch.Tensor) -> torch.Tensor:
    """The expected image ``E[x | z]`` ``(N, 1, 8, 8)`` in [0, 1] (eval mode, no gradients)."""
    model = _check_model(model)
    z = check_tensor(z, "z", shape=(None, model.latent_dim), floating=True)
    was_training = model.training
    model.eval()
    probs = model.decoder(z).softmax(dim=-1)
    model.train(was_training)
    grey = torch.arange(NUM_LEVELS, device=z.device, dtype=probs.dtype) / (NUM_LEVELS - 1)
    return (probs * grey).sum(dim=-1).reshape(-1, 1, 8, 8)


@torch.no_grad()
def generate(model: Model, prior: RingPrior, n: int, *, seed: int = 0,
             components: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Generation: ``z ~ p(z)`` (the ring prior), then each pixel ``x_p ~ p(x_p | z)``.

    Returns ``(images (n, 1, 8, 8) = level / 16, z (n, 2), component (n,))``; ``components`` fixes the component of
    every draw. A private generator seeded by ``seed`` makes the draws repeatable."""
    model = _check_model(model)
    gen = torch.Generator(device=_check_prior(prior).device).manual_seed(check_int(seed, "seed", low=0))
    z, comp = prior.sample(n, generator=gen, components=components)
    was_training = model.training
    model.eval()
    probs = model.decoder(z).softmax(dim=-1).reshape(-1, NUM_LEVELS)
    model.train(was_training)
    levels = torch.multinomial(probs, 1, generator=gen).reshape(n, 1, 8, 8)
    return levels.float() / (NUM_LEVELS - 1), z, comp


# ---------------------------------------------------------------------------------------------------------------------
# Two-sample statistic: the maximum mean discrepancy
# ---------------------------------------------------------------------------------------------------------------------


def _gaussian_kernel(a: torch.Tensor, b: torch.Tensor, bandwidth: float) -> torch.Tensor:
    return torch.exp(-torch.cdist(a, b).pow(2) / (2 * bandwidth**2))


def _mmd2_from_kernel(k: torch.Tensor, n: int) -> torch.Tensor:
    """Unbiased MMD^2 from the pooled kernel matrix (first ``n`` rows: sample x); ``k`` may carry a batch dimension."""
    m = k.shape[-1] - n
    kxx, kyy, kxy = k[..., :n, :n], k[..., n:, n:], k[..., :n, n:]
    sum_xx = kxx.sum(dim=(-2, -1)) - kxx.diagonal(dim1=-2, dim2=-1).sum(-1)
    sum_yy = kyy.sum(dim=(-2, -1)) - kyy.diagonal(dim1=-2, dim2=-1).sum(-1)
    return sum_xx / (n * (n - 1)) + sum_yy / (m * (m - 1)) - 2 * kxy.sum(dim=(-2, -1)) / (n * m)


def _check_samples(x: object, y: object) -> tuple[torch.Tensor, torch.Tensor]:
    x = check_tensor(x, "x", ndim=2, floating=True)
    y = check_tensor(y, "y", ndim=2, floating=True)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x, y: expected the same dimension, got {x.shape[1]} and {y.shape[1]}")
    for name, t in (("x", x), ("y", y)):
        if t.shape[0] < 2:
            raise ValueError(f"{name}: expected at least 2 samples, got {t.shape[0]}")
    return x.detach().double(), y.detach().to(x.device).double()


def mmd2(x: torch.Tensor, y: torch.Tensor, *, bandwidth: float = MMD_BANDWIDTH) -> float:
    """Unbiased squared maximum mean discrepancy with the Gaussian kernel ``k(a, b) = exp(-||a - b||^2 / (2 h^2))``:

        MMD^2 = mean_{i != j} k(x_i, x_j) + mean_{i != j} k(y_i, y_j) - 2 mean_{i, j} k(x_i, y_j)

    (Gretton et al. 2012). Zero in expectation when ``x`` and ``y`` come from the same distribution (it can then be
    slightly negative); larger when they differ. float64."""
    x, y = _check_samples(x, y)
    bandwidth = check_positive(bandwidth, "bandwidth")
    pooled = torch.cat([x, y])
    return float(_mmd2_from_kernel(_gaussian_kernel(pooled, pooled, bandwidth), x.shape[0]))


@dataclass(frozen=True)
class MMDTest:
    """An MMD two-sample test: the statistic, its permutation p-value and the permutation (null) distribution."""

    mmd2: float
    p_value: float
    null: torch.Tensor


def mmd_permutation_test(
    x: torch.Tensor, y: torch.Tensor, *, bandwidth: float = MMD_BANDWIDTH, permutations: int = 200, seed: int = 0
) -> MMDTest:
    """Permutation test of ``x ~ y``: reshuffle the pooled sample into two groups of the original sizes
    ``permutations`` times; ``p = (1 + #{null >= observed}) / (1 + permutations)``."""
    x, y = _check_samples(x, y)
    bandwidth = check_positive(bandwidth, "bandwidth")
    permutations = check_int(permutations, "permutations", low=1)
    pooled = torch.cat([x, y])
    k = _gaussian_kernel(pooled, pooled, bandwidth)
    n, total = x.shape[0], pooled.shape[0]
    observed = float(_mmd2_from_kernel(k, n))
    gen = torch.Generator(device="cpu").manual_seed(check_int(seed, "seed", low=0))
    null = []
    for start in range(0, permutations, 16):
        b = min(16, permutations - start)
        order = torch.stack([torch.randperm(total, generator=gen) for _ in range(b)]).to(k.device)  # (b, total)
        kp = k[order[:, :, None], order[:, None, :]]
        null.append(_mmd2_from_kernel(kp, n))
    null_t = torch.cat(null).cpu()
    p_value = (1 + int((null_t >= observed).sum())) / (1 + permutations)
    return MMDTest(mmd2=observed, p_value=p_value, null=null_t)


# ---------------------------------------------------------------------------------------------------------------------
# Experiment
# ---------------------------------------------------------------------------------------------------------------------


@register("aae-digits", "Chapter 05: adversarial autoencoder with a ring-of-10-Gaussians prior vs AE and VAE")
def aae_digits(seed: int = 0, device: torch.device | None = None) -> TrainedResult:
    """Experiment ``aae-digits``: AE, VAE (ring prior, Monte Carlo KL), AAE and label-conditioned AAE on the digits.

    Metrics: ``mmd_<kind>`` (unbiased MMD^2, Gaussian kernel, bandwidth ``MMD_BANDWIDTH``) between the test
    images' codes and as many prior draws, with ``mmd_p_<kind>`` (permutation p-value, 200 permutations) and
    ``mmd_null95_<kind>`` (the 95th percentile of the permutation distribution: what MMD^2 reaches 5 % of the time
    when both groups come from one distribution), and
    ``mmd_real_vs_real`` (two independent prior samples of that size: the noise floor); ``fd_<kind>``: Fréchet
    distance in image-classifier features between 1,000 generated images and the test images, beside
    ``fd_real_baseline`` (1,000 training images vs the test images: a perfect generator's score at these sizes);
    ``components_covered_<kind>``: prior components with at least one test code within 3 std of their mean;
    ``digit_tv_<kind>``: total variation between the classifier-predicted
    digit distribution of the generated images and the uniform one; ``coherence_aae_labels``: fraction of images
    generated from component ``k`` that the classifier reads as digit ``k``, and ``coherence_chance`` = 0.1;
    ``test_reconstruction_<kind>``: mean test ``-log p(x | z)`` at the code, nats per image.

    Arrays: ``gen_image`` and ``gen_label`` (1,000 images from the label-conditioned AAE, component = digit),
    ``gen_z``; ``gen_image_<kind>`` for every kind; ``codes_<kind>`` (test codes) and ``test_label``; ``prior_z``.
    """
    from mmlib.classifiers import load_classifiers
    from mmlib.data import load_multimodal_digits
    from mmlib.metrics import coherence, frechet_distance, mode_metrics
    from mmlib.parallel import run_jobs
    from mmlib.seed import seed_everything

    seed_everything(seed)
    dev = resolve_device(device)
    ds = load_multimodal_digits(device=dev)
    train_x, test_x = ds.train["image"], ds.test["image"]
    prior = RingPrior(device=dev)
    classifier = load_classifiers(dev)["image"]
    gen = torch.Generator(device=dev).manual_seed(seed)
    n_test = test_x.shape[0]
    prior_z, _ = prior.sample(2 * n_test, generator=gen)
    real_feats = classifier.features(test_x)
    n_gen = 1000
    real_subset = train_x[torch.randperm(train_x.shape[0], generator=gen, device=dev)[:n_gen]]

    metrics: dict[str, float] = {
        "mmd_real_vs_real": round(mmd2(prior_z[:n_test], prior_z[n_test:]), 6),
        "fd_real_baseline": round(frechet_distance(classifier.features(real_subset), real_feats), 4),
        "mmd_bandwidth": MMD_BANDWIDTH,
        "coherence_chance": 0.1,
    }
    arrays: dict[str, torch.Tensor] = {"prior_z": prior_z[:n_test], "test_label": ds.test.label}
    models: dict[str, nn.Module] = {}
    # The four fits do not depend on each other: they train side by side, one per CPU core (mmlib.parallel; the same
    # numbers as one after the other). The adversarial ones take longest, so they go first.
    order = sorted(KINDS, key=lambda kind: not kind.startswith("aae"))
    fits = run_jobs([(fit_model, {"kind": kind, "images": train_x, "prior": prior, "seed": seed, "progress": False,
                                  "labels": ds.train.label if kind == "aae-labels" else None}) for kind in order],
                    device=dev, progress=False)
    trained = {kind: model for kind, (model, _) in zip(order, fits)}
    for kind in KINDS:
        models[kind] = model = trained[kind]
        key = kind.replace("-", "_")
        codes = latent_codes(model, test_x, seed=seed)
        test = mmd_permutation_test(codes, prior_z[n_test:], seed=seed)
        components = torch.arange(n_gen, device=dev) % 10 if kind == "aae-labels" else None
        images, z, comp = generate(model, prior, n_gen, seed=seed, components=components)
        predicted = classifier.predict(images)
        share = torch.bincount(predicted, minlength=10).double() / predicted.shape[0]
        with torch.no_grad():
            z_rec = model.encoder(test_x)[0] if isinstance(model, MixturePriorVAE) else model.encoder(test_x)
            rec = -_categorical_log_likelihood(model.decoder(z_rec), _levels(test_x)).mean()
        metrics.update({
            f"mmd_{key}": round(test.mmd2, 6),
            f"mmd_p_{key}": round(test.p_value, 4),
            f"mmd_null95_{key}": round(float(torch.quantile(test.null, 0.95)), 6),
            f"fd_{key}": round(frechet_distance(classifier.features(images), real_feats), 4),
            f"digit_tv_{key}": round(0.5 * float((share - 0.1).abs().sum()), 4),
            f"test_reconstruction_{key}": round(float(rec), 4),
            f"components_covered_{key}": mode_metrics(codes, prior.means, prior.std)["modes_covered"],
        })
        arrays[f"codes_{key}"] = codes
        arrays[f"gen_image_{key}"] = images
        if kind == "aae-labels":
            metrics["coherence_aae_labels"] = round(coherence(predicted, comp), 4)
            arrays.update(gen_image=images, gen_label=comp, gen_z=z)
    return TrainedResult(metrics=metrics, arrays=arrays, models=models)


# ---------------------------------------------------------------------------------------------------------------------
# Exercises of notebook 05
# ---------------------------------------------------------------------------------------------------------------------


@exercise("05.2")
def _check_mmd(fn: Callable) -> str:
    """Exercise 05.2: the unbiased MMD^2 with a Gaussian kernel of bandwidth h."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(40, 2, generator=gen, dtype=torch.float64)
    y = torch.randn(30, 2, generator=gen, dtype=torch.float64) + torch.tensor([1.0, 0.0], dtype=torch.float64)
    got = fn(x, y, 1.0)
    got = float(got)
    want = mmd2(x, y, bandwidth=1.0)
    biased = float(_gaussian_kernel(x, x, 1.0).mean() + _gaussian_kernel(y, y, 1.0).mean()
                   - 2 * _gaussian_kernel(x, y, 1.0).mean())
    assert not math.isclose(got, biased, abs_tol=1e-9), (
        "you computed the biased (V-statistic) estimate: leave out the diagonal k(x_i, x_i) = 1 terms and divide the "
        "within-sample sums by n (n - 1)."
    )
    assert math.isclose(got, want, abs_tol=1e-9), (
        f"for the test samples expected MMD^2 = {want:.6f}, got {got:.6f}. Check the kernel "
        "exp(-||a - b||^2 / (2 h^2)) and the cross term -2 mean k(x_i, y_j)."
    )
    same = float(fn(x, x.clone() + 0.0, 1.0))
    assert same < 0.05, "MMD^2 of a sample against itself should be about 0"
    return "Unbiased: over many same-distribution pairs it averages to 0, so small negative values are normal."
