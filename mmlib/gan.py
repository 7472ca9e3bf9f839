"""Generative adversarial networks from scratch (taught in notebook ``03_gan``).

The game (Goodfellow et al., 2014). A generator ``G`` turns noise ``z ~ N(0, I)`` into samples ``x' = G(z)``; a
discriminator ``D`` outputs the probability ``D(x) = sigmoid(logit(x))`` that ``x`` is real. ``D`` minimises the
binary cross-entropy of telling real from generated samples, the correct form of the article's eq. (4)::

    L_D = -E_data[log D(y)] - E_z[log(1 - D(G(z)))]

and ``G`` plays against it, either with the *minimax* loss ``E_z[log(1 - D(G(z)))]`` (which it minimises) or with
the *non-saturating* loss ``-E_z[log D(G(z))]`` that keeps its gradient when ``D`` confidently rejects the fakes.
For a fixed generator the best discriminator is ``D*(x) = p_data(x) / (p_data(x) + p_g(x))``.

Everything is computed from logits with ``softplus`` (``-log sigmoid(a) = softplus(-a)``,
``-log(1 - sigmoid(a)) = softplus(a)``), which never takes the log of 0.

Mode collapse and its cure on PacGAN's 2D mixtures (Lin et al., 2018): :func:`fit_mixture` trains the plain GAN or the
course's recipe (:data:`RECIPES`) on the ring or the grid of ``mmlib.data`` and scores the samples with
``mmlib.metrics.mode_metrics``. The experiments ``gan-ring`` and ``gan-grid`` run both; ``python -m mmlib.gan table``
runs them for three seeds and writes ``data/results/gan_2d.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from mmlib.checks import (
    check_betas,
    check_bool,
    check_choice,
    check_generator,
    check_int,
    check_positive,
    check_probability,
    check_tensor,
)
from mmlib.device import one_cpu_thread, resolve_device
from mmlib.exercises import exercise
from mmlib.experiments import TrainedResult, register
from mmlib.train import History, make_optimizer, train

__all__ = [
    "Generator",
    "Discriminator",
    "pack_samples",
    "init_through_data",
    "discriminator_loss",
    "generator_loss",
    "GENERATOR_LOSSES",
    "optimal_discriminator",
    "article_eq4_loss",
    "draw_noise",
    "gan_step",
    "generator_gradient_norms",
    "train_discriminator",
    "GANConfig",
    "PLAIN_GAN",
    "RECIPES",
    "TrainedGAN",
    "train_gan",
    "sample",
    "mixture",
    "fit_mixture",
    "mixture_experiment",
    "results_table",
    "load_results",
    "environment",
    "SAME_RUNS_KEYS",
    "N_EVAL",
    "TABLE_METRICS",
    "RESULTS_FILE",
]

#: The generator losses :func:`generator_loss` knows.
GENERATOR_LOSSES: tuple[str, ...] = ("non-saturating", "minimax")


# ---------------------------------------------------------------------------------------------------------------------
# Build: the two players
# ---------------------------------------------------------------------------------------------------------------------


def _mlp(in_dim: int, hidden: int, layers: int, out_dim: int, activation: Callable[[], nn.Module]) -> nn.Sequential:
    modules: list[nn.Module] = []
    width = in_dim
    for _ in range(layers):
        modules += [nn.Linear(width, hidden), activation()]
        width = hidden
    modules.append(nn.Linear(width, out_dim))
    return nn.Sequential(*modules)


class Generator(nn.Module):
    """``G(z)``: an MLP with ReLU hidden layers from latents ``(N, latent_dim)`` to samples ``(N, data_dim)``.

    The latent is ``noise_dim`` Gaussian coordinates followed, when ``categories = k > 0``, by a scaled one-hot of
    one of ``k`` categories (:func:`draw_noise`), so ``latent_dim = noise_dim + categories``.
    """

    def __init__(self, noise_dim: int = 2, data_dim: int = 2, hidden: int = 128, layers: int = 2,
                 categories: int = 0):
        super().__init__()
        self.noise_dim = check_int(noise_dim, "noise_dim", low=1)
        self.data_dim = check_int(data_dim, "data_dim", low=1)
        self.categories = check_int(categories, "categories", low=0)
        self.net = _mlp(self.latent_dim, check_int(hidden, "hidden", low=1), check_int(layers, "layers", low=0),
                        data_dim, nn.ReLU)

    @property
    def latent_dim(self) -> int:
        """The width of ``z``: ``noise_dim`` Gaussian coordinates plus ``categories`` one-hot ones."""
        return self.noise_dim + self.categories

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # (N, latent_dim) -> (N, data_dim)
        return self.net(check_tensor(z, "z", shape=(None, self.latent_dim), floating=True, finite=False))


class Discriminator(nn.Module):
    """The logit of ``D``: an MLP with LeakyReLU(0.2) hidden layers on *packs* of ``pack`` samples.

    ``forward(x)`` takes ``(N, data_dim)`` samples with ``N`` divisible by ``pack``, concatenates each run of ``pack``
    consecutive rows (:func:`pack_samples`) and returns ``(N / pack,)`` logits; ``D = sigmoid(logit)``. With
    ``pack = 1`` this is the ordinary discriminator. It reads its input in multiples of ``unit``: a small unit gives
    its first layer steep slopes from the start, so it can resolve fine structure (notebook 03, the recipe).
    """

    def __init__(self, data_dim: int = 2, hidden: int = 128, layers: int = 2, pack: int = 1, unit: float = 1.0):
        super().__init__()
        self.data_dim = check_int(data_dim, "data_dim", low=1)
        self.pack = check_int(pack, "pack", low=1)
        self.unit = check_positive(unit, "unit")
        self.net = _mlp(data_dim * pack, check_int(hidden, "hidden", low=1), check_int(layers, "layers", low=0), 1,
                        lambda: nn.LeakyReLU(0.2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, data_dim) -> (N / pack,)
        x = check_tensor(x, "x", shape=(None, self.data_dim), floating=True, finite=False)
        return self.net(pack_samples(x, self.pack) / self.unit).squeeze(-1)


def pack_samples(x: torch.Tensor, pack: int) -> torch.Tensor:
    """PacGAN's packing: ``(N, d)`` → ``(N / pack, pack * d)``, each row holding ``pack`` consecutive samples.

    The discriminator then judges ``pack`` samples *jointly*, all real or all generated, which exposes a generator
    whose samples are too alike (Lin et al., 2018).
    """
    check_tensor(x, "x", ndim=2, floating=True, finite=False)
    pack = check_int(pack, "pack", low=1)
    if x.shape[0] % pack:
        raise ValueError(f"x: expected a number of rows divisible by pack={pack}, got {x.shape[0]}")
    return x.reshape(x.shape[0] // pack, pack * x.shape[1])


@torch.no_grad()
def init_through_data(discriminator: Discriminator, real: torch.Tensor) -> Discriminator:
    """Re-set the biases of ``D``'s first layer so that each unit's hyperplane passes through a real (packed) sample.

    A ReLU-type unit bends where ``w · x + b = 0``. With PyTorch's default initialisation those bends lie close to the
    origin, in units of ``D``'s input; setting ``b_i = -w_i · x_i`` for real samples ``x_i`` puts them where the data
    are, so that ``D`` can resolve every part of the data from the first step (a data-dependent initialisation in the
    spirit of Krähenbühl et al., 2016). ``real`` needs at least ``hidden * pack`` rows. Returns ``discriminator``.
    """
    if not isinstance(discriminator, Discriminator):
        raise TypeError(f"discriminator: expected an mmlib.gan.Discriminator, got {type(discriminator).__name__}")
    first = discriminator.net[0]
    need = first.out_features * discriminator.pack
    real = check_tensor(real, "real", ndim=2, floating=True)
    if real.shape[0] < need or real.shape[1] != discriminator.data_dim:
        raise ValueError(f"real: expected at least {need} rows of {discriminator.data_dim} columns, "
                         f"got {tuple(real.shape)}")
    points = pack_samples(real[:need].to(first.weight), discriminator.pack) / discriminator.unit
    first.bias.copy_(-(first.weight * points).sum(dim=1))
    return discriminator


# ---------------------------------------------------------------------------------------------------------------------
# The objectives
# ---------------------------------------------------------------------------------------------------------------------


def _check_logits(logits: object, name: str) -> torch.Tensor:
    return check_tensor(logits, name, ndim=1, floating=True, finite=False)


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """``L_D = -E_data[log D(y)] - E_z[log(1 - D(G(z)))]`` from logits: ``mean softplus(-real) + mean softplus(fake)``.

    This is the correct discriminator loss that replaces the article's eq. (4) (notebook 03).
    """
    real_logits = _check_logits(real_logits, "real_logits")
    fake_logits = _check_logits(fake_logits, "fake_logits")
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def generator_loss(fake_logits: torch.Tensor, kind: str = "non-saturating") -> torch.Tensor:
    """The generator's loss from the logits of ``D(G(z))`` (notebook 03).

    - ``"minimax"``: ``E_z[log(1 - D(G(z)))] = -mean softplus(fake)`` — the game's own value; its gradient vanishes
      when ``D`` confidently rejects the fakes (``D(G(z)) → 0``).
    - ``"non-saturating"``: ``-E_z[log D(G(z))] = mean softplus(-fake)`` — same fixed point, strong early gradient.
    """
    fake_logits = _check_logits(fake_logits, "fake_logits")
    kind = check_choice(kind, "kind", GENERATOR_LOSSES)
    if kind == "minimax":
        return -F.softplus(fake_logits).mean()
    return F.softplus(-fake_logits).mean()


def optimal_discriminator(p_data: torch.Tensor, p_model: torch.Tensor) -> torch.Tensor:
    """``D*(x) = p_data(x) / (p_data(x) + p_g(x))``, the best discriminator against a fixed generator (notebook 03).

    Takes the two densities evaluated at the same points (same shape, non-negative, not both zero).
    """
    p_data = check_tensor(p_data, "p_data", floating=True)
    p_model = check_tensor(p_model, "p_model", floating=True)
    if p_data.shape != p_model.shape:
        raise ValueError(f"p_model: expected the shape of p_data {tuple(p_data.shape)}, got {tuple(p_model.shape)}")
    if bool((p_data < 0).any()) or bool((p_model < 0).any()):
        raise ValueError("p_data, p_model: densities must be non-negative")
    total = p_data + p_model
    if bool((total == 0).any()):
        raise ValueError("p_data, p_model: D* is undefined where both densities are 0")
    return p_data / total


def article_eq4_loss(log_q_generated: torch.Tensor, log_q_real: torch.Tensor) -> torch.Tensor:
    """The article's eq. (4), ``-log q(y') / q(y)``, averaged over pairs — kept only to show why it is wrong.

    ``log_q_generated`` and ``log_q_real`` are log-densities *of the generator* ``q`` at generated points ``y'`` and
    at real points ``y``. Nothing in it belongs to a discriminator, so it cannot train one; it needs an explicit
    generator density, which a GAN's generator does not have; and it compares one density at two points instead of
    two densities (data and model) at the same point. Notebook 03 shows this with numbers.
    """
    log_q_generated = check_tensor(log_q_generated, "log_q_generated", ndim=1, floating=True, finite=False)
    log_q_real = check_tensor(log_q_real, "log_q_real", ndim=1, floating=True, finite=False)
    if log_q_generated.shape != log_q_real.shape:
        raise ValueError(
            f"log_q_real: expected {log_q_generated.shape[0]} values like log_q_generated, got {log_q_real.shape[0]}"
        )
    return -(log_q_generated - log_q_real).mean()


# ---------------------------------------------------------------------------------------------------------------------
# Estimate: one step of the game, and the trainer around it
# ---------------------------------------------------------------------------------------------------------------------


def draw_noise(n: int, noise_dim: int, generator: torch.Generator | None = None,
               device: torch.device | str | None = None, categories: int = 0) -> torch.Tensor:
    """``z ~ N(0, I)`` of shape ``(n, noise_dim)`` on ``device``, from the private ``generator`` when given.

    With ``categories = k > 0`` each row also gets a category ``c ~ Uniform{0, ..., k-1}`` as the one-hot
    ``√k · e_c`` (shape ``(n, noise_dim + k)``): scaled by ``√k`` so that each one-hot coordinate has mean square 1,
    like a Gaussian one (notebook 03, the recipe). ``k = 0`` draws exactly what it drew before categories existed.
    """
    n = check_int(n, "n", low=1)
    noise_dim = check_int(noise_dim, "noise_dim", low=1)
    categories = check_int(categories, "categories", low=0)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator or None, got {type(generator).__name__}")
    device = generator.device if generator is not None and device is None else resolve_device(device)
    return _latent(n, noise_dim, categories, generator, device)


def _latent(n: int, noise_dim: int, categories: int, generator: torch.Generator | None,
            device: torch.device) -> torch.Tensor:
    """:func:`draw_noise` without the checks (called every training step)."""
    z = torch.randn(n, noise_dim, generator=generator, device=device)
    if not categories:
        return z
    c = torch.randint(categories, (n,), generator=generator, device=device)
    return torch.cat([z, F.one_hot(c, categories).to(z.dtype) * math.sqrt(categories)], dim=1)


def gan_step(
    generator: Generator,
    discriminator: Discriminator,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    *,
    noise: torch.Generator | None = None,
    loss: str = "non-saturating",
    lr_drop_at: int | None = None,
    lr_drop: float = 0.1,
    d_lr_drop: float | None = None,
    ema: Generator | None = None,
    ema_decay: float = 0.999,
) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    """One round of the game for :func:`mmlib.train.train`: a discriminator update, then a generator update.

    ``step(real)`` draws as many latents as real samples (:func:`draw_noise`, from the private ``noise`` generator,
    with the generator's ``categories``), takes one
    Adam step on :func:`discriminator_loss` and one on :func:`generator_loss` (``loss``), and returns the detached
    losses ``{"d_loss", "g_loss"}``. After ``lr_drop_at`` steps the generator's learning rate is multiplied by
    ``lr_drop`` and the discriminator's by ``d_lr_drop`` (default: ``lr_drop`` too). With ``ema`` (a copy of the
    generator), every step ends with ``θ_ema ← β θ_ema + (1 − β) θ_G``, ``β = ema_decay``: an exponential moving
    average of the generator's weights (Yazıcı et al., 2019), which smooths out the last steps' jitter.
    """
    if not isinstance(generator, Generator) or not isinstance(discriminator, Discriminator):
        raise TypeError("generator, discriminator: expected mmlib.gan.Generator and mmlib.gan.Discriminator")
    for name, optimizer in (("opt_g", opt_g), ("opt_d", opt_d)):
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"{name}: expected a torch.optim.Optimizer, got {type(optimizer).__name__}")
    noise = check_generator(noise, "noise")
    loss = check_choice(loss, "loss", GENERATOR_LOSSES)
    if lr_drop_at is not None:
        lr_drop_at = check_int(lr_drop_at, "lr_drop_at", low=0)
    lr_drop = check_probability(lr_drop, "lr_drop")
    d_lr_drop = lr_drop if d_lr_drop is None else check_probability(d_lr_drop, "d_lr_drop")
    if ema is not None and not isinstance(ema, Generator):
        raise TypeError(f"ema: expected an mmlib.gan.Generator (a copy of the generator) or None, "
                        f"got {type(ema).__name__}")
    ema_decay = check_probability(ema_decay, "ema_decay")
    g_params = list(generator.parameters())
    ema_params = list(ema.parameters()) if ema is not None else []
    done = 0

    def step(real: torch.Tensor) -> dict[str, torch.Tensor]:
        nonlocal done
        real = check_tensor(real, "real", shape=(None, discriminator.data_dim), floating=True, finite=False)
        if real.shape[0] % discriminator.pack:
            raise ValueError(f"real: expected a number of rows divisible by the discriminator's pack="
                             f"{discriminator.pack}, got {real.shape[0]}")
        if done == lr_drop_at:
            for optimizer, factor in ((opt_g, lr_drop), (opt_d, d_lr_drop)):
                for group in optimizer.param_groups:
                    group["lr"] *= factor
        done += 1
        z = _latent(real.shape[0], generator.noise_dim, generator.categories, noise, real.device)
        fake = generator(z)
        d_loss = discriminator_loss(discriminator(real), discriminator(fake.detach()))
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        g_loss = generator_loss(discriminator(fake), loss)
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        if ema is not None:
            with torch.no_grad():
                torch._foreach_lerp_(ema_params, g_params, 1.0 - ema_decay)
        return {"d_loss": d_loss.detach(), "g_loss": g_loss.detach()}

    return step


def generator_gradient_norms(generator: Generator, discriminator: Discriminator, z: torch.Tensor) -> dict[str, float]:
    """The norm of the gradient of each generator loss with respect to the generator's parameters, at noise ``z``.

    Used in notebook 03 to show the minimax loss saturating when ``D`` confidently rejects the fakes.
    """
    if not isinstance(generator, Generator):
        raise TypeError(f"generator: expected an mmlib.gan.Generator, got {type(generator).__name__}")
    if not isinstance(discriminator, Discriminator):
        raise TypeError(f"discriminator: expected an mmlib.gan.Discriminator, got {type(discriminator).__name__}")
    check_tensor(z, "z", ndim=2, floating=True)
    if z.shape[1] != generator.latent_dim:
        raise ValueError(f"z: expected {generator.latent_dim} columns (the generator's latent_dim), got {z.shape[1]}")
    if z.shape[0] % discriminator.pack:
        raise ValueError(f"z: expected a number of rows divisible by the discriminator's pack={discriminator.pack}, "
                         f"got {z.shape[0]}")
    params = [p for p in generator.parameters() if p.requires_grad]
    norms = {}
    for kind in GENERATOR_LOSSES:
        grads = torch.autograd.grad(generator_loss(discriminator(generator(z)), kind), params)
        norms[kind] = float(torch.sqrt(sum((g**2).sum() for g in grads)))
    return norms


def train_discriminator(
    real: torch.Tensor,
    fake: torch.Tensor,
    *,
    hidden: int = 64,
    layers: int = 2,
    steps: int = 600,
    batch_size: int | None = 1024,
    lr: float = 3e-3,
    final_fraction: float = 0.3,
    lr_drop: float = 0.1,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> tuple[Discriminator, History]:
    """Train a discriminator alone against a *fixed* generator, given its samples ``fake`` (notebook 03, ``D*``).

    ``real`` and ``fake`` are ``(N, d)`` samples with the same ``N``; each step minimises :func:`discriminator_loss`
    on a minibatch of both, the last ``final_fraction`` of the steps at ``lr * lr_drop`` (so that ``D`` settles
    instead of jittering by Adam's step size). Returns the discriminator (whose ``sigmoid(logit)`` approaches ``D*``)
    and its history.
    """
    device = resolve_device(device)
    real = check_tensor(real, "real", ndim=2, floating=True).to(device)
    fake = check_tensor(fake, "fake", ndim=2, floating=True).to(device)
    if real.shape != fake.shape:
        raise ValueError(f"fake: expected the shape of real {tuple(real.shape)}, got {tuple(fake.shape)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(check_int(seed, "seed", low=0))
        disc = Discriminator(real.shape[1], hidden, layers).to(device)
    optimizer = make_optimizer(disc.parameters(), lr=lr)
    steps = check_int(steps, "steps", low=1)
    progress = check_bool(progress, "progress")
    drop_at = steps - round(check_probability(final_fraction, "final_fraction") * steps)
    lr_drop = check_probability(lr_drop, "lr_drop")
    done = 0

    def step(real_batch: torch.Tensor, fake_batch: torch.Tensor) -> dict[str, torch.Tensor]:
        nonlocal done
        if done == drop_at:
            for group in optimizer.param_groups:
                group["lr"] *= lr_drop
        done += 1
        loss = discriminator_loss(disc(real_batch), disc(fake_batch))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return {"d_loss": loss.detach()}

    with one_cpu_thread(device):
        history = train(step, (real, fake), steps=steps, batch_size=batch_size, seed=seed, log_every=50,
                        desc="discriminator vs a fixed generator", progress=progress)
    return disc, history


@dataclass(frozen=True)
class GANConfig:
    """Everything that defines a GAN run on a 2D mixture (see :data:`PLAIN_GAN` and :data:`RECIPES`).

    Networks: ``hidden`` units per layer, ``g_layers`` and ``d_layers`` hidden layers, ``noise_dim``; the
    discriminator judges packs of ``pack`` samples, reads its input in multiples of ``d_unit``, and with
    ``init_through_data`` starts with its first-layer hyperplanes through real samples (:func:`init_through_data`).
    Optimisation: Adam with ``lr``/``betas`` for ``steps`` steps of ``batch_size`` real and as many generated
    samples, the last ``final_fraction`` of them at ``lr * lr_drop`` for ``G`` and ``lr * d_lr_drop`` for ``D``;
    ``loss`` is the generator's loss. ``n_train`` points are drawn once from the mixture. With ``ema_decay > 0`` the
    samples come from an exponential moving average of the generator's weights (:func:`gan_step`). With
    ``noise_categories = k > 0`` the generator's latent is ``noise_dim`` Gaussian coordinates and the one-hot of one
    of ``k`` equally likely categories, scaled by ``√k`` (:func:`draw_noise`): a mixture of ``k`` generators that
    share their weights, so that no continuous path of noise has to join two modes; ``0`` is the plain Gaussian
    latent.
    """

    hidden: int = 128
    g_layers: int = 2
    d_layers: int = 2
    noise_dim: int = 2
    pack: int = 1
    d_unit: float = 1.0
    init_through_data: bool = False
    steps: int = 2000
    batch_size: int = 512
    lr: float = 1e-3
    betas: tuple[float, float] = (0.5, 0.9)
    final_fraction: float = 0.0
    lr_drop: float = 0.1
    d_lr_drop: float = 0.1
    loss: str = "non-saturating"
    n_train: int = 100_000
    ema_decay: float = 0.0
    noise_categories: int = 0

    def __post_init__(self) -> None:
        check_int(self.hidden, "hidden", low=1)
        check_int(self.g_layers, "g_layers", low=0)
        check_int(self.d_layers, "d_layers", low=0)
        check_int(self.noise_dim, "noise_dim", low=1)
        check_int(self.noise_categories, "noise_categories", low=0)
        check_int(self.pack, "pack", low=1)
        check_positive(self.d_unit, "d_unit")
        check_bool(self.init_through_data, "init_through_data")
        check_int(self.steps, "steps", low=1)
        check_int(self.batch_size, "batch_size", low=1)
        if self.batch_size % self.pack:
            raise ValueError(f"batch_size: expected a multiple of pack={self.pack}, got {self.batch_size}")
        check_positive(self.lr, "lr")
        check_betas(self.betas)
        check_probability(self.final_fraction, "final_fraction")
        check_probability(self.lr_drop, "lr_drop")
        check_probability(self.d_lr_drop, "d_lr_drop")
        check_choice(self.loss, "loss", GENERATOR_LOSSES)
        if check_probability(self.ema_decay, "ema_decay") == 1.0:
            raise ValueError("ema_decay: expected a number in [0, 1), got 1.0 (the average would never move)")
        check_int(self.n_train, "n_train", low=max(self.batch_size, self.hidden * self.pack))


#: The plain GAN: the usual small MLPs, non-saturating loss, Adam — no packing, default initialisation.
PLAIN_GAN: GANConfig = GANConfig()

#: The course's recipe, per mixture (notebook 03 explains each ingredient).
RECIPES: dict[str, GANConfig] = {
    "ring": GANConfig(g_layers=3, pack=2, d_unit=0.1, init_through_data=True, steps=8000, batch_size=256,
                      final_fraction=0.4, ema_decay=0.999),
    "grid": GANConfig(g_layers=3, pack=2, d_unit=0.25, init_through_data=True, steps=14000, batch_size=256,
                      final_fraction=0.25, ema_decay=0.999, noise_categories=25),
}


@dataclass
class TrainedGAN:
    """A trained pair with the config and seed that made it and the logged losses; ``ema`` is the moving average of
    the generator's weights when ``config.ema_decay > 0`` (else ``None``), and :attr:`sampler` the one to sample."""

    generator: Generator
    discriminator: Discriminator
    history: History
    config: GANConfig
    seed: int
    ema: Generator | None = None

    @property
    def sampler(self) -> Generator:
        """The generator whose samples are scored: the weight average when there is one."""
        return self.ema if self.ema is not None else self.generator


def train_gan(
    data: torch.Tensor,
    config: GANConfig = PLAIN_GAN,
    *,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = True,
    desc: str = "GAN",
) -> TrainedGAN:
    """Train a GAN on ``data`` ``(N, d)`` with ``config``; the same ``seed`` gives the same networks, bit for bit.

    The networks are initialised from ``seed`` (without touching torch's global random state), the noise comes from
    a private generator seeded ``seed + 1`` and the minibatches from ``seed + 2``. Training runs through
    :func:`mmlib.train.train`, which stops with :class:`mmlib.train.TrainingDiverged` if a loss turns NaN/inf.
    """
    device = resolve_device(device)
    data = check_tensor(data, "data", ndim=2, floating=True).to(device)
    if not isinstance(config, GANConfig):
        raise TypeError(f"config: expected a GANConfig, got {type(config).__name__}")
    seed = check_int(seed, "seed", low=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gen = Generator(config.noise_dim, data.shape[1], config.hidden, config.g_layers, config.noise_categories)
        disc = Discriminator(data.shape[1], config.hidden, config.d_layers, config.pack, config.d_unit)
    gen, disc = gen.to(device), disc.to(device)
    if config.init_through_data:
        init_through_data(disc, data)
    opt_g = make_optimizer(gen.parameters(), lr=config.lr, betas=config.betas)
    opt_d = make_optimizer(disc.parameters(), lr=config.lr, betas=config.betas)
    noise = torch.Generator(device=device)
    noise.manual_seed(seed + 1)
    drop_at = config.steps - round(config.final_fraction * config.steps) if config.final_fraction > 0 else None
    ema = copy.deepcopy(gen).requires_grad_(False) if config.ema_decay > 0 else None
    step = gan_step(gen, disc, opt_g, opt_d, noise=noise, loss=config.loss, lr_drop_at=drop_at,
                    lr_drop=config.lr_drop, d_lr_drop=config.d_lr_drop, ema=ema, ema_decay=config.ema_decay)
    with one_cpu_thread(device):
        history = train(step, data, steps=config.steps, batch_size=config.batch_size, seed=seed + 2, log_every=100,
                        desc=desc, progress=progress)
    return TrainedGAN(gen, disc, history, config, seed, ema)


@torch.no_grad()
def sample(generator: Generator, n: int, *, seed: int = 0) -> torch.Tensor:
    """``n`` samples ``G(z)`` on the generator's device, with latents (:func:`draw_noise`, with the generator's
    ``categories``) from a private generator seeded ``seed``."""
    if not isinstance(generator, Generator):
        raise TypeError(f"generator: expected an mmlib.gan.Generator, got {type(generator).__name__}")
    device = next(generator.parameters()).device
    noise = torch.Generator(device=device)
    noise.manual_seed(check_int(seed, "seed", low=0))
    return generator(draw_noise(n, generator.noise_dim, noise, device, generator.categories))


# ---------------------------------------------------------------------------------------------------------------------
# Evaluate: mode collapse on PacGAN's 2D mixtures
# ---------------------------------------------------------------------------------------------------------------------

#: Number of generated samples scored per run, as in VEEGAN and PacGAN.
N_EVAL: int = 2500
#: Where ``python -m mmlib.gan table`` writes the course's 3-seed table.
RESULTS_FILE: Path = Path(__file__).resolve().parent.parent / "data" / "results" / "gan_2d.json"
SETTINGS: tuple[str, ...] = ("plain", "recipe")


def mixture(name: str) -> tuple[Callable[..., torch.Tensor], torch.Tensor, float]:
    """``(draw, modes, std)`` of PacGAN's ``"ring"`` or ``"grid"`` from :mod:`mmlib.data`."""
    from mmlib import data

    name = check_choice(name, "name", ("ring", "grid"))
    if name == "ring":
        return data.ring_mixture, data.RING_MODES, data.RING_STD
    return data.grid_mixture, data.GRID_MODES, data.GRID_STD


def fit_mixture(
    name: str,
    setting: str = "recipe",
    *,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = True,
    config: GANConfig | None = None,
) -> tuple[dict[str, float], torch.Tensor, TrainedGAN]:
    """Train the plain GAN or the recipe on the ``"ring"``/``"grid"`` and score :data:`N_EVAL` samples.

    Returns ``(metrics, samples, trained)``: ``metrics`` from ``mmlib.metrics.mode_metrics`` (``modes_covered``,
    ``hq_fraction``, ``reverse_kl``) plus ``seconds`` of training. ``config`` overrides the setting's config.
    """
    from mmlib.metrics import mode_metrics

    draw, modes, std = mixture(name)
    setting = check_choice(setting, "setting", SETTINGS)
    if config is not None and not isinstance(config, GANConfig):
        raise TypeError(f"config: expected a GANConfig or None, got {type(config).__name__}")
    config = config if config is not None else (PLAIN_GAN if setting == "plain" else RECIPES[name])
    seed = check_int(seed, "seed", low=0)
    device = resolve_device(device)
    data = draw(config.n_train, seed=seed, device=device)
    start = time.perf_counter()
    trained = train_gan(data, config, seed=seed, device=device, progress=progress, desc=f"{setting} GAN on the {name}")
    seconds = time.perf_counter() - start
    samples = sample(trained.sampler, N_EVAL, seed=seed + 3)
    metrics = {k: float(v) for k, v in mode_metrics(samples, modes.to(samples.device), std).items()}
    metrics["seconds"] = round(seconds, 2)
    return metrics, samples, trained


def mixture_experiments(names: Sequence[str], seed: int = 0, device: torch.device | str | None = None,
                        progress: bool = True) -> list[TrainedResult]:
    """Experiments ``gan-<name>`` for each mixture in ``names``, their fits side by side.

    Each experiment is the plain GAN and the recipe on one mixture (:func:`fit_mixture`): the recipe's figures under
    the COURSE names (``modes_covered``, ``hq_fraction``, ``reverse_kl``), the plain GAN's prefixed ``plain_``,
    training times ``plain_seconds`` and ``recipe_seconds`` (wall time, longer when fits share a core); arrays
    ``gen_xy`` (recipe) and ``plain_gen_xy``, :data:`N_EVAL` samples each. For the notebook (not written):
    ``details[setting]``, the ``(metrics, samples, trained GAN)`` of :func:`fit_mixture`.

    The fits do not depend on each other, so all of them — two per mixture — run as separate jobs of
    :func:`mmlib.parallel.run_jobs`, the recipes (the longer ones) first, in the order of ``names``; every fit is
    seeded by its arguments, so the figures are those of the fits run one after the other."""
    from mmlib.parallel import run_jobs
    from mmlib.seed import seed_everything

    if isinstance(names, str) or not isinstance(names, Sequence) or not names:
        raise TypeError(f"names: expected a non-empty list of mixture names ('ring', 'grid'), got {names!r}")
    names = [check_choice(name, "names", tuple(RECIPES)) for name in names]
    seed_everything(check_int(seed, "seed", low=0))
    device = resolve_device(device)
    order = [(name, setting) for setting in ("recipe", "plain") for name in names]
    fits = run_jobs([(fit_mixture, {"name": name, "setting": setting, "seed": seed, "device": device,
                                    "progress": False}) for name, setting in order],
                    device=device, progress=progress, desc=f"plain GAN and recipe on the {' and the '.join(names)}")
    by_key = dict(zip(order, fits))
    results = []
    for name in names:
        result = TrainedResult(metrics={})
        for setting in SETTINGS:
            fit = m, samples, _ = by_key[name, setting]
            prefix = "plain_" if setting == "plain" else ""
            result.metrics.update({f"{prefix}{k}": m[k] for k in TABLE_METRICS})
            result.metrics[f"{setting}_seconds"] = m["seconds"]
            result.arrays[f"{prefix}gen_xy"] = samples.cpu()
            result.details[setting] = fit
        result.metrics["modes_covered"] = int(result.metrics["modes_covered"])
        result.metrics["plain_modes_covered"] = int(result.metrics["plain_modes_covered"])
        results.append(result)
    return results


def mixture_experiment(name: str, seed: int = 0, device: torch.device | str | None = None,
                       progress: bool = True) -> TrainedResult:
    """Experiment ``gan-<name>``: the plain GAN and the recipe on one mixture (:func:`mixture_experiments`)."""
    return mixture_experiments([name], seed, device, progress)[0]


@register("gan-ring", "Chapter 03: plain GAN vs the course's recipe on PacGAN's ring of 8 Gaussians")
def gan_ring(seed: int = 0, device: torch.device | None = None) -> TrainedResult:
    return mixture_experiment("ring", seed, device, progress=False)


@register("gan-grid", "Chapter 03: plain GAN vs the course's recipe on PacGAN's grid of 25 Gaussians")
def gan_grid(seed: int = 0, device: torch.device | None = None) -> TrainedResult:
    return mixture_experiment("grid", seed, device, progress=False)


# ---------------------------------------------------------------------------------------------------------------------
# The 3-seed table: python -m mmlib.gan table --out data/results/gan_2d.json
# ---------------------------------------------------------------------------------------------------------------------

TABLE_METRICS: tuple[str, ...] = ("modes_covered", "hq_fraction", "reverse_kl")


def environment() -> dict[str, object]:
    """The library versions, processor and thread count a run depends on (stored beside the results).

    :data:`SAME_RUNS_KEYS` name the entries that decide whether a run repeats a stored one bit for bit: the torch and
    numpy versions, the processor (``cpu``) and the vector instructions torch's kernels use (``cpu_capability``).
    The operating system's version (in ``platform``) does not change the arithmetic."""
    import mmlib

    capability = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", lambda: "unknown")()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "mmlib": mmlib.__version__,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_capability": capability,
    }


#: The entries of :func:`environment` under which two runs of the same code and seed agree bit for bit.
SAME_RUNS_KEYS: tuple[str, ...] = ("torch", "numpy", "cpu", "cpu_capability")


def _cpu_name() -> str:
    """The processor's model name (Linux: /proc/cpuinfo), else what :func:`platform.processor` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def results_table(seeds: Sequence[int] = (0, 1, 2), device: torch.device | str | None = None,
                  progress: bool = False) -> dict[str, object]:
    """Run ``gan-ring`` and ``gan-grid`` for every seed; return the per-seed metrics and their mean ± std."""
    from mmlib.experiments import run_experiment

    seeds = [check_int(s, "seeds", low=0) for s in seeds]
    if not seeds:
        raise ValueError("seeds: expected at least one seed")
    runs: dict[str, list[dict[str, object]]] = {}
    summary: dict[str, dict[str, dict[str, list[float]]]] = {}
    for name in ("ring", "grid"):
        runs[name] = []
        for seed in seeds:
            result = run_experiment(f"gan-{name}", seed=seed, device=device)
            runs[name].append({"seed": seed, "metrics": result.metrics})
        summary[name] = {}
        for setting in SETTINGS:
            prefix = "plain_" if setting == "plain" else ""
            summary[name][setting] = {}
            for metric in (*TABLE_METRICS, "seconds"):
                key = f"{setting}_seconds" if metric == "seconds" else f"{prefix}{metric}"
                values = np.array([float(r["metrics"][key]) for r in runs[name]])
                summary[name][setting][metric] = [float(values.mean()), float(values.std())]
    return {
        "description": "Chapter 03: plain GAN and the course's recipe on PacGAN's 2D ring and grid, "
        f"{N_EVAL} samples scored per run with mmlib.metrics.mode_metrics; summary = [mean, std over seeds] "
        "(population std, ddof=0)",
        "command": "python -m mmlib.gan table --out data/results/gan_2d.json",
        "seeds": seeds,
        "environment": environment(),
        "configs": {"plain": asdict(PLAIN_GAN), **{f"recipe_{k}": asdict(v) for k, v in RECIPES.items()}},
        "runs": runs,
        "summary": summary,
    }


def load_results(path: str | Path = RESULTS_FILE) -> dict[str, object]:
    """Read the stored table written by ``python -m mmlib.gan table``."""
    if not isinstance(path, (str, Path)):
        raise TypeError(f"path: expected a file path (str or Path), got {type(path).__name__}")
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"path: no results file at {path.name}; make it with: python -m mmlib.gan table")
    try:
        return json.loads(path.read_text())
    except ValueError as err:  # not UTF-8, or not JSON
        raise ValueError(f"path: {path.name} is not a results table written by python -m mmlib.gan table") from err


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mmlib.gan table [--seeds 0 1 2] [--out FILE]``."""
    parser = argparse.ArgumentParser(prog="python -m mmlib.gan", description="Chapter 03's results table.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("table", help="run gan-ring and gan-grid for each seed and write the table as JSON")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default=str(RESULTS_FILE))
    p.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    table = results_table(args.seeds, device=args.device)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(table, indent=2) + "\n")
    for name, settings in table["summary"].items():
        for setting, metrics in settings.items():
            cells = ", ".join(f"{k} {m:.3f} ± {s:.3f}" for k, (m, s) in metrics.items())
            print(f"{name:4s} {setting:6s}: {cells}")
    print(f"wrote {out}")
    return 0


# ---------------------------------------------------------------------------------------------------------------------
# Exercises
# ---------------------------------------------------------------------------------------------------------------------


@exercise("03.1")
def _check_non_saturating_loss(fn: Callable) -> str:
    """Exercise 03.1: the non-saturating generator loss -E[log D(G(z))] from logits, stable for any logit."""
    logits = torch.tensor([-800.0, -30.0, -2.0, 0.0, 3.0, 40.0], dtype=torch.float64)
    got = fn(logits)
    assert isinstance(got, torch.Tensor) and got.ndim == 0, "return a scalar tensor (the mean over the batch)."
    assert bool(torch.isfinite(got)), (
        "your loss is not finite for a logit of -800: log(sigmoid(-800)) underflows to log(0). "
        "Use -log sigmoid(a) = softplus(-a)."
    )
    want = float(F.softplus(-logits).mean())
    assert abs(float(got) - want) < 1e-9 * max(1.0, abs(want)), (
        f"for logits {logits.tolist()} expected {want:.6g}, got {float(got):.6g}. "
        "The loss is -mean(log D) with D = sigmoid(logit)."
    )
    one = fn(torch.tensor([0.0], dtype=torch.float64))
    assert abs(float(one) - math.log(2)) < 1e-12, "at logit 0 (D = 1/2) the loss is log 2."
    return "softplus(-a) is -log sigmoid(a) without ever taking log(0): large negative logits give a loss ≈ -a."


if __name__ == "__main__":
    from mmlib.gan import main as _main

    sys.exit(_main())
