"""Conditional GAN across modalities (notebook 06): generate one modality from a sample of another.

The article (§3.2.2) closes its list of generators with the *conditional GAN, whose condition usually comes from
another modality*. Here the condition ``c`` is a whole sample of a source modality (a caption), not a label: a small
**condition encoder** ``e(c)`` turns it into a vector that both players see.

- Generator: ``x̃ = G(z, c) = sigmoid(MLP([z, e_G(c)]))``, ``z ~ N(0, I)``.
- Projection discriminator (Miyato & Koyama, 2018): ``D(x, c) = ψ(φ(x)) + ⟨e_D(c), φ(x)⟩`` — the condition enters
  as an inner product with the features of ``x``, so ``D`` must judge *whether x fits c*, not only whether x looks real.
- Chapter 03's non-saturating losses (:func:`discriminator_loss`, :func:`generator_loss`):
  ``L_D = E[softplus(−D(x, c))] + E[softplus(D(x̃, c))]``, ``L_G = E[softplus(−D(x̃, c))]``.
- Matching-aware negatives (Reed et al., 2016): real samples paired with the *wrong* condition count as fakes too,
  so ``D`` learns from real data which targets go with which conditions.
- Mode seeking (Mao et al., 2019): ``L_G += λ / mean_i(mean|G(z₁, c_i) − G(z₂, c_i)| / mean|z₁ − z₂|)`` (the means
  inside over coordinates; :func:`mode_seeking_loss`) keeps the generator from ignoring its noise (a conditional
  generator's favourite shortcut).
- Stabiliser: the R1 penalty (Mescheder et al., 2018) ``(γ/2) E_data ‖∇_x D(x, c)‖²`` added to ``L_D``; samples are
  drawn from an exponential moving average of the generator's weights (Karras et al., 2018; Yazıcı et al., 2019).

Evaluation (:func:`evaluate_cgan`): conditional accuracy (the target modality's classifier agrees with the condition's
digit), the within-condition variance of several samples per condition, and the Fréchet distance per digit in
classifier features against its real-versus-real baseline — the last two catch a generator that ignores its noise
or draws one sample per digit. ``python -m mmlib run cgan`` trains caption → image and caption → sound.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from mmlib.checks import (
    check_betas,
    check_bool,
    check_choice,
    check_generator,
    check_indices,
    check_int,
    check_positive,
    check_probability,
    check_real,
    check_tensor,
)
from mmlib.data import AUDIO_BINS, AUDIO_FRAMES, MODALITIES, MODALITY_SHAPES, TEXT_LENGTH, TEXT_VOCAB
from mmlib.device import one_cpu_thread, resolve_device
from mmlib.exercises import exercise
from mmlib.experiments import Result, TrainedResult, register
from mmlib.train import History, make_optimizer, train

__all__ = [
    "PAIRS",
    "TARGETS",
    "MODALITY_SHAPES",
    "modality_dim",
    "to_vector",
    "mlp",
    "TokenLinear",
    "ConditionEncoder",
    "ConditionalGenerator",
    "ProjectionDiscriminator",
    "build_cgan",
    "discriminator_loss",
    "generator_loss",
    "r1_penalty",
    "mode_seeking_loss",
    "cgan_step",
    "GameConfig",
    "CGANConfig",
    "RECIPE",
    "FittedCGAN",
    "fit_cgan",
    "generate",
    "one_per_digit",
    "conditional_accuracy",
    "within_condition_variance",
    "real_within_digit_variance",
    "class_frechet_distances",
    "CGANEvaluation",
    "evaluate_cgan",
    "run_cgan",
    "cgan_experiment",
]

#: The (source, target) pairs notebook 06 trains: caption → image and caption → sound.
PAIRS: tuple[tuple[str, str], ...] = (("text", "image"), ("text", "audio"))
#: Modalities a conditional generator can produce (continuous values in [0, 1]).
TARGETS: tuple[str, ...] = ("image", "audio")

#: A condition is a modality's name, or the width ``d`` of plain float vectors ``(N, d)`` (chapter 08 conditions on
#: a VAE's latent code).
Source = str | int


# ---------------------------------------------------------------------------------------------------------------------
# Preprocess: every modality as a flat vector
# ---------------------------------------------------------------------------------------------------------------------


def modality_dim(modality: str) -> int:
    """Length of :func:`to_vector`'s rows: 64 for images, 896 for spectrograms, ``TEXT_LENGTH·|V|`` for text."""
    modality = check_choice(modality, "modality", MODALITIES)
    if modality == "text":
        return TEXT_LENGTH * len(TEXT_VOCAB)
    return int(np.prod(MODALITY_SHAPES[modality]))


def _check_source(source: object, name: str = "source") -> Source:
    if isinstance(source, str):
        return check_choice(source, name, MODALITIES)
    if isinstance(source, bool) or not isinstance(source, int):
        raise TypeError(f"{name}: expected a modality name {list(MODALITIES)} or a vector width (int), "
                        f"got {type(source).__name__}")
    return check_int(source, name, low=1)


def _check_batch(x: object, source: Source, name: str, *, values: bool = True) -> torch.Tensor:
    """Validate a batch of ``source`` (a modality, or vectors of width ``source``).

    ``values=True`` also checks the values (finite; token ids in the vocabulary), which costs a host synchronisation:
    the networks' ``forward`` skips it, so that a training step never waits for the device.
    """
    if isinstance(source, int):
        x = check_tensor(x, name, ndim=2, finite=False)
        if x.shape[1] != source:
            raise ValueError(f"{name}: expected vectors of the source's width {source}, got shape {tuple(x.shape)}")
        return check_tensor(x, name, floating=True, finite=values)
    shape = (None, *MODALITY_SHAPES[source])
    if source == "text":
        x = check_tensor(x, name, shape=shape, integer=True, finite=False)
        if values and (int(x.min()) < 0 or int(x.max()) >= len(TEXT_VOCAB)):
            raise ValueError(f"{name}: expected token ids in 0..{len(TEXT_VOCAB) - 1}, "
                             f"got {int(x.min())}..{int(x.max())}")
        return x
    return check_tensor(x, name, shape=shape, floating=True, finite=values)


def to_vector(x: torch.Tensor, modality: str) -> torch.Tensor:
    """A batch of ``modality`` as float rows ``(N, modality_dim)``: pixels or spectrogram cells in [0, 1] flattened;
    text one-hot per position, ``onehot(t_1) ‖ … ‖ onehot(t_L)``."""
    modality = check_choice(modality, "modality", MODALITIES)
    x = _check_batch(x, modality, "x")
    if modality == "text":
        return F.one_hot(x, len(TEXT_VOCAB)).float().flatten(1)
    return x.flatten(1).float()


# ---------------------------------------------------------------------------------------------------------------------
# Build: condition encoder, generator, projection discriminator
# ---------------------------------------------------------------------------------------------------------------------


def mlp(sizes: list[int], *, slope: float = 0.2) -> nn.Sequential:
    """Linear layers of the given widths with LeakyReLU(``slope``) between them (none after the last)."""
    if not isinstance(sizes, (list, tuple)):
        raise TypeError(f"sizes: expected a list of layer widths, got {type(sizes).__name__}")
    if len(sizes) < 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes):
        raise ValueError(f"sizes: expected at least two positive ints (input, ..., output), got {sizes!r}")
    slope = check_real(slope, "slope")
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.LeakyReLU(slope))
    return nn.Sequential(*layers)


class TokenLinear(nn.Module):
    """A linear layer on one-hot tokens, ``W·[onehot(t_1) ‖ … ‖ onehot(t_L)] + b = Σ_l W_l[:, t_l] + b``, computed
    by looking up one column per position instead of multiplying by a mostly-zero vector (the same function, far
    cheaper). Initialised so that the sum of the ``L`` looked-up columns has unit-order scale."""

    def __init__(self, length: int, vocab: int, out_features: int) -> None:
        super().__init__()
        self.length = check_int(length, "length", low=1)
        self.vocab = check_int(vocab, "vocab", low=1)
        self.table = nn.Embedding(length * vocab, check_int(out_features, "out_features", low=1))
        self.bias = nn.Parameter(torch.zeros(out_features))
        bound = 1.0 / float(np.sqrt(length))
        nn.init.uniform_(self.table.weight, -bound, bound)
        self.register_buffer("offsets", torch.arange(length) * vocab, persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = check_indices(tokens, "tokens", self.vocab, shape=(None, self.length))
        return self.table(tokens + self.offsets).sum(dim=1) + self.bias

    def as_matrix(self) -> torch.Tensor:
        """The equivalent ``(out_features, length·vocab)`` weight of a ``Linear`` on the flattened one-hot tokens."""
        return self.table.weight.T


class ConditionEncoder(nn.Module):
    """``e(c)``: a condition (a sample of the source modality, or a vector) → ``(N, embed_dim)``, one hidden layer."""

    def __init__(self, source: Source, embed_dim: int, hidden: int) -> None:
        super().__init__()
        self.source = _check_source(source)
        hidden = check_int(hidden, "hidden", low=1)
        if self.source == "text":
            first: nn.Module = TokenLinear(TEXT_LENGTH, len(TEXT_VOCAB), hidden)
        else:
            width = self.source if isinstance(self.source, int) else modality_dim(self.source)
            first = nn.Sequential(nn.Flatten(), nn.Linear(width, hidden))
        self.net = nn.Sequential(first, nn.LeakyReLU(0.2), nn.Linear(hidden, check_int(embed_dim, "embed_dim", low=1)))

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        c = _check_batch(c, self.source, "c", values=False)
        if self.source == "text":  # token ids index an embedding (checked where that costs no synchronisation)
            check_indices(c, "c", len(TEXT_VOCAB))
        return self.net(c)


class ConditionalGenerator(nn.Module):
    """``G(z, c) = sigmoid(MLP([z, e_G(c)]))`` reshaped to the target modality (values in [0, 1], like the data)."""

    def __init__(self, source: Source, target: str, *, noise_dim: int = 16, embed_dim: int = 32, hidden: int = 256):
        super().__init__()
        self.source = _check_source(source)
        self.target = check_choice(target, "target", TARGETS)
        self.noise_dim = check_int(noise_dim, "noise_dim", low=1)
        embed_dim = check_int(embed_dim, "embed_dim", low=1)
        hidden = check_int(hidden, "hidden", low=1)
        self.encoder = ConditionEncoder(self.source, embed_dim, hidden)
        self.net = mlp([noise_dim + embed_dim, hidden, hidden, modality_dim(target)])

    def forward(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        z = check_tensor(z, "z", shape=(None, self.noise_dim), floating=True, finite=False)
        c = _check_batch(c, self.source, "c", values=False)
        if z.shape[0] != c.shape[0]:
            raise ValueError(f"z, c: expected one noise row per condition, got {z.shape[0]} and {c.shape[0]} rows")
        logits = self.net(torch.cat([z, self.encoder(c)], dim=1))
        return torch.sigmoid(logits).reshape(-1, *MODALITY_SHAPES[self.target])


class ProjectionDiscriminator(nn.Module):
    """``D(x, c) = ψ(φ(x)) + ⟨e_D(c), φ(x)⟩``: a logit per row; high = "x is a real sample that fits c"."""

    def __init__(self, source: Source, target: str, *, hidden: int = 256):
        super().__init__()
        self.source = _check_source(source)
        self.target = check_choice(target, "target", TARGETS)
        hidden = check_int(hidden, "hidden", low=1)
        self.phi = nn.Sequential(mlp([modality_dim(target), hidden, hidden]), nn.LeakyReLU(0.2))  # φ(x)
        self.psi = nn.Linear(hidden, 1)  # ψ: "does x look real at all?"
        self.encoder = ConditionEncoder(self.source, hidden, hidden)  # e_D(c), as wide as φ(x)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        x = _check_batch(x, self.target, "x", values=False)
        c = _check_batch(c, self.source, "c", values=False)
        if x.shape[0] != c.shape[0]:
            raise ValueError(f"x, c: expected one condition per sample, got {x.shape[0]} and {c.shape[0]} rows")
        return self.score(x, self.encoder(c))

    def score(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        """``D`` from a precomputed condition embedding ``e_D(c)`` (a training step scores real, generated and
        mismatched samples of the same conditions, so it encodes them once)."""
        x = _check_batch(x, self.target, "x", values=False)
        embedding = check_tensor(embedding, "embedding", shape=(None, self.psi.in_features), floating=True,
                                 finite=False)
        if x.shape[0] != embedding.shape[0]:
            raise ValueError(f"x, embedding: expected one embedding per sample, got {x.shape[0]} and "
                             f"{embedding.shape[0]} rows")
        return self.project(self.phi(x.flatten(1)), embedding)

    def project(self, h: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        """``D`` from the features ``h = φ(x)`` ``(N, hidden)`` and the embeddings ``e_D(c)``: ``ψ(h) + ⟨e_D(c), h⟩``.
        A training step scores the real samples twice, with their own conditions and with mismatched ones, and
        computes ``φ`` of them once."""
        return self.psi(h).squeeze(1) + (embedding * h).sum(dim=1)


def build_cgan(
    source: Source, target: str, *, noise_dim: int = 16, embed_dim: int = 32, hidden: int = 256,
    seed: int = 0, device: torch.device | str | None = None,
) -> tuple[ConditionalGenerator, ProjectionDiscriminator]:
    """A fresh generator and discriminator for ``source → target``; the initial weights depend only on ``seed``
    (drawn with the global generator forked, so the caller's random state is untouched)."""
    seed = check_int(seed, "seed", low=0)
    source = _check_source(source)
    if source == target:
        raise ValueError(f"source, target: expected two different modalities, got {source!r} twice")
    dev = resolve_device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator = ConditionalGenerator(source, target, noise_dim=noise_dim, embed_dim=embed_dim, hidden=hidden)
        discriminator = ProjectionDiscriminator(source, target, hidden=hidden)
    return generator.to(dev), discriminator.to(dev)


# ---------------------------------------------------------------------------------------------------------------------
# Estimate: R1, mode seeking, one training step
# ---------------------------------------------------------------------------------------------------------------------


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Chapter 03's discriminator loss from logits, ``L_D = E[softplus(−D_real)] + E[softplus(D_fake)]``
    ``= −E log σ(D_real) − E log(1 − σ(D_fake))`` (the corrected eq. (4)), never taking log 0."""
    real_logits = check_tensor(real_logits, "real_logits", ndim=1, floating=True, finite=False)
    fake_logits = check_tensor(fake_logits, "fake_logits", ndim=1, floating=True, finite=False)
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Chapter 03's non-saturating generator loss ``L_G = E[softplus(−D_fake)] = −E log σ(D_fake)``."""
    fake_logits = check_tensor(fake_logits, "fake_logits", ndim=1, floating=True, finite=False)
    return F.softplus(-fake_logits).mean()


def r1_penalty(real_logits: torch.Tensor, real_inputs: torch.Tensor) -> torch.Tensor:
    """``½ E_data ‖∇_x D(x, c)‖²`` (Mescheder et al., 2018) from the logits ``D(x, c)`` of real pairs and the inputs
    ``x`` they were computed from (which must require gradients); differentiable in D's parameters."""
    real_logits = check_tensor(real_logits, "real_logits", ndim=1, floating=True, finite=False)
    if not isinstance(real_inputs, torch.Tensor) or not real_inputs.requires_grad:
        raise ValueError("real_inputs: expected the tensor D was applied to, with requires_grad=True "
                         "(x = x.detach().requires_grad_(True) before computing D(x, c))")
    if real_inputs.shape[0] != real_logits.shape[0]:
        raise ValueError(f"real_logits, real_inputs: expected one logit per input row, got {real_logits.shape[0]} "
                         f"logits and {real_inputs.shape[0]} rows")
    grad = None
    if real_logits.requires_grad:
        (grad,) = torch.autograd.grad(real_logits.sum(), real_inputs, create_graph=True, allow_unused=True)
    if grad is None:
        raise ValueError("real_logits, real_inputs: the logits were not computed from real_inputs (pass the very "
                         "tensor D was applied to)")
    return 0.5 * grad.pow(2).flatten(1).sum(dim=1).mean()


def mode_seeking_loss(fake_a: torch.Tensor, fake_b: torch.Tensor, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
    """Mode seeking (Mao et al., 2019) for pairs of samples of the same conditions from different noise:
    ``1 / (r + 1e-5)`` with ``r = mean_i (mean|x_a,i − x_b,i| / mean|z_a,i − z_b,i|)``. Small when the output moves
    with the noise; large (and pushing) when the generator ignores its noise."""
    fake_a = check_tensor(fake_a, "fake_a", floating=True, finite=False)
    fake_b = check_tensor(fake_b, "fake_b", floating=True, finite=False)
    z_a = check_tensor(z_a, "z_a", ndim=2, floating=True, finite=False)
    z_b = check_tensor(z_b, "z_b", ndim=2, floating=True, finite=False)
    if fake_a.shape != fake_b.shape or z_a.shape != z_b.shape or fake_a.shape[0] != z_a.shape[0]:
        shapes = ", ".join(str(tuple(t.shape)) for t in (fake_a, fake_b, z_a, z_b))
        raise ValueError(f"fake_a, fake_b, z_a, z_b: expected two batches of samples and their noise with matching "
                         f"shapes, got {shapes}")
    ratio = (fake_a - fake_b).abs().flatten(1).mean(1) / (z_a - z_b).abs().mean(1)
    return 1.0 / (ratio.mean() + 1e-5)


def cgan_step(
    generator: ConditionalGenerator,
    discriminator: ProjectionDiscriminator,
    g_optimizer: torch.optim.Optimizer,
    d_optimizer: torch.optim.Optimizer,
    *,
    r1_weight: float = 1.0,
    mismatch: bool = True,
    mode_seeking: float = 0.02,
    noise: torch.Generator | None = None,
    ema: ConditionalGenerator | None = None,
    ema_decay: float = 0.99,
    r1_every: int = 1,
) -> Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]:
    """The training step ``step(c, x)`` on a minibatch of ``n`` pairs (condition ``c``, target ``x``):

    1. draw ``z ~ N(0, I)`` (from ``noise``) and ``x̃ = G(z, c̃)``; with ``mode_seeking > 0`` the fakes come in pairs:
       ``c̃`` repeats the first ``n/2`` conditions twice, so rows ``i`` and ``i + n/2`` share a condition;
    2. one update of D on ``L_D + γ·R1``: real pairs against the (detached) fakes and, with ``mismatch``, against the
       real targets paired with the previous row's condition (``c`` rolled by one; their ``φ(x)`` is the real pairs',
       computed once: the same gradients as a separate pass, one pass fewer). R1 is *lazy* (Karras et al., 2020):
       computed on every ``r1_every``-th step only, with weight ``γ · r1_every``, which keeps its average pull and saves
       most of its cost (a second backward pass through D);
    3. one update of G on the non-saturating ``L_G`` of the same ``x̃`` under the updated D, plus ``λ`` times the
       mode-seeking loss of the pairs;
    4. with ``ema``, ``θ_ema ← β θ_ema + (1 − β) θ_G`` (``β = ema_decay``).

    Returns detached ``d_loss`` (without R1), ``g_loss`` (without mode seeking) and ``r1`` (its latest value).
    """
    if not isinstance(generator, ConditionalGenerator) or not isinstance(discriminator, ProjectionDiscriminator):
        raise TypeError("generator, discriminator: expected a ConditionalGenerator and a ProjectionDiscriminator")
    for name, optimizer in (("g_optimizer", g_optimizer), ("d_optimizer", d_optimizer)):
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"{name}: expected a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if ema is not None and not isinstance(ema, ConditionalGenerator):
        raise TypeError(f"ema: expected a ConditionalGenerator (a copy of generator) or None, got {type(ema).__name__}")
    noise = check_generator(noise, "noise")
    r1_weight = check_positive(r1_weight, "r1_weight", allow_zero=True)
    mode_seeking = check_positive(mode_seeking, "mode_seeking", allow_zero=True)
    ema_decay = check_probability(ema_decay, "ema_decay")
    g_params = list(generator.parameters())
    ema_params = list(ema.parameters()) if ema is not None else []
    r1_every = check_int(r1_every, "r1_every", low=1)
    mismatch = check_bool(mismatch, "mismatch")
    done = 0
    last_r1: list[torch.Tensor | None] = [None]  # the latest R1 value, reported on the steps that skip it

    def step(c: torch.Tensor, x: torch.Tensor) -> dict[str, torch.Tensor]:
        nonlocal done
        c = _check_batch(c, generator.source, "c", values=False)
        x = _check_batch(x, generator.target, "x", values=False)
        if c.shape[0] != x.shape[0]:
            raise ValueError(f"c, x: expected paired rows, got {c.shape[0]} conditions and {x.shape[0]} targets")
        with_r1 = r1_weight > 0 and done % r1_every == 0
        done += 1
        n = x.shape[0]
        half = n // 2
        paired = mode_seeking > 0 and half > 0

        def fake_rows(t: torch.Tensor) -> torch.Tensor:  # rows i and i + n/2 share row i's condition
            return torch.cat([t[:half], t[:half], t[2 * half:]]) if paired else t

        z = torch.randn(n, generator.noise_dim, device=x.device, generator=noise)
        fake = generator(z, fake_rows(c))

        d_optimizer.zero_grad(set_to_none=True)
        x = x.detach().requires_grad_(with_r1)
        embedding = discriminator.encoder(c)  # e_D(c), shared by real, generated and mismatched samples
        h_real = discriminator.phi(x.flatten(1))  # φ(x), shared by the real and the mismatched pairs
        real_logits = discriminator.project(h_real, embedding)
        fake_logits = discriminator.score(fake.detach(), fake_rows(embedding))
        if mismatch:
            fake_logits = torch.cat([fake_logits, discriminator.project(h_real, embedding.roll(1, dims=0))])
        d_loss = discriminator_loss(real_logits, fake_logits)
        if with_r1:
            r1 = r1_penalty(real_logits, x)
            last_r1[0] = r1.detach()
            (d_loss + r1_weight * r1_every * r1).backward()
        else:
            d_loss.backward()
        d_optimizer.step()

        g_optimizer.zero_grad(set_to_none=True)
        g_loss = generator_loss(discriminator(fake, fake_rows(c)))
        total = g_loss
        if paired:
            pair_b = slice(half, 2 * half)
            total = total + mode_seeking * mode_seeking_loss(fake[:half], fake[pair_b], z[:half], z[pair_b])
        total.backward()
        g_optimizer.step()
        if ema is not None:
            with torch.no_grad():
                torch._foreach_lerp_(ema_params, g_params, 1.0 - ema_decay)
        r1 = last_r1[0] if last_r1[0] is not None else torch.zeros((), device=x.device)
        return {"d_loss": d_loss.detach(), "g_loss": g_loss.detach(), "r1": r1}

    return step


@dataclass(frozen=True)
class GameConfig:
    """The training settings chapters 06 and 08 share: ``steps`` of ``batch_size`` pairs, Adam (``lr``, ``betas``)
    for both players, the R1 weight and how often it is computed (:func:`cgan_step`), mismatched real pairs as
    negatives, and the decay of the generator's weight average (0 = no average)."""

    steps: int = 1500
    batch_size: int = 128
    lr: float = 1e-3
    betas: tuple[float, float] = (0.5, 0.99)
    r1_weight: float = 1.0
    r1_every: int = 4
    mismatch: bool = True
    ema_decay: float = 0.99

    def __post_init__(self) -> None:
        check_int(self.steps, "steps", low=1)
        check_int(self.batch_size, "batch_size", low=2)
        check_positive(self.lr, "lr")
        check_betas(self.betas)
        check_positive(self.r1_weight, "r1_weight", allow_zero=True)
        check_int(self.r1_every, "r1_every", low=1)
        check_bool(self.mismatch, "mismatch")
        check_probability(self.ema_decay, "ema_decay")


@dataclass(frozen=True)
class CGANConfig(GameConfig):
    """Hyper-parameters of one conditional GAN (:data:`RECIPE` holds the chapter's): :class:`GameConfig` plus the
    mode-seeking weight and the networks' sizes."""

    mode_seeking: float = 0.02
    noise_dim: int = 16
    embed_dim: int = 32
    hidden: int = 256

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self.mode_seeking, "mode_seeking", allow_zero=True)
        for name in ("noise_dim", "embed_dim", "hidden"):
            check_int(getattr(self, name), name, low=1)


#: The chapter's recipe, used for both pairs.
RECIPE: CGANConfig = CGANConfig()


@dataclass
class FittedCGAN:
    """A trained conditional GAN: the (EMA) generator that samples, the discriminator, and the training curves."""

    source: Source
    target: str
    generator: ConditionalGenerator
    discriminator: ProjectionDiscriminator
    history: History


def fit_cgan(
    source: Source,
    target: str,
    conditions: torch.Tensor,
    targets: torch.Tensor,
    *,
    config: CGANConfig | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> FittedCGAN:
    """Train ``G(z, c)`` for ``source → target`` on the paired rows ``(conditions[i], targets[i])``.

    Everything random (initial weights, minibatch order, noise) follows ``seed``; the data must already be on
    ``device``. Adam for both players, one D and one G update per step (:func:`cgan_step`); the returned generator is
    the exponential moving average of G's weights (when ``config.ema_decay > 0``).
    """
    config = RECIPE if config is None else config
    if not isinstance(config, CGANConfig):
        raise TypeError(f"config: expected a CGANConfig, got {type(config).__name__}")
    source = _check_source(source)
    target = check_choice(target, "target", TARGETS)
    conditions = _check_batch(conditions, source, "conditions")
    targets = _check_batch(targets, target, "targets")
    if conditions.shape[0] != targets.shape[0]:
        raise ValueError(f"conditions, targets: expected paired rows, got {conditions.shape[0]} and {targets.shape[0]}")
    seed = check_int(seed, "seed", low=0)
    dev = resolve_device(device)
    if conditions.device != dev or targets.device != dev:
        raise ValueError(f"conditions, targets: expected tensors on {dev}, "
                         f"got {conditions.device} and {targets.device}")
    G, D = build_cgan(source, target, noise_dim=config.noise_dim, embed_dim=config.embed_dim, hidden=config.hidden,
                      seed=seed, device=dev)
    g_opt = make_optimizer(G.parameters(), lr=config.lr, betas=config.betas)
    d_opt = make_optimizer(D.parameters(), lr=config.lr, betas=config.betas)
    noise = torch.Generator(device=dev)
    noise.manual_seed(seed + 1)
    ema = copy.deepcopy(G).requires_grad_(False) if config.ema_decay > 0 else None
    step = cgan_step(G, D, g_opt, d_opt, r1_weight=config.r1_weight, mismatch=config.mismatch,
                     mode_seeking=config.mode_seeking, noise=noise, ema=ema, ema_decay=config.ema_decay,
                     r1_every=config.r1_every)
    name = source if isinstance(source, str) else f"vector[{source}]"
    with one_cpu_thread(dev):  # tiny networks: a second CPU thread costs more than it saves
        history = train(step, (conditions, targets), steps=config.steps, batch_size=config.batch_size, log_every=50,
                        seed=seed + 2, desc=f"cGAN {name}→{target}", progress=progress)
    sampler = ema if ema is not None else G
    sampler.eval()
    D.eval()
    return FittedCGAN(source, target, sampler, D, history)


# ---------------------------------------------------------------------------------------------------------------------
# Evaluate
# ---------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def generate(
    generator: ConditionalGenerator, conditions: torch.Tensor, *, n_per_condition: int = 1, seed: int = 0,
    noise_scale: float = 1.0,
) -> torch.Tensor:
    """``n_per_condition`` samples per condition: ``(N, K, *target shape)``, sample ``[i, k] = G(z_ik, c_i)``.

    ``noise_scale = 0`` feeds ``z = 0`` everywhere: the generator then ignores its noise (a *collapsed* generator,
    one output per condition) — the course uses it to show what the diversity checks catch.
    """
    if not isinstance(generator, ConditionalGenerator):
        raise TypeError(f"generator: expected a ConditionalGenerator, got {type(generator).__name__}")
    conditions = _check_batch(conditions, generator.source, "conditions")
    k = check_int(n_per_condition, "n_per_condition", low=1)
    noise_scale = check_positive(noise_scale, "noise_scale", allow_zero=True)
    seed = check_int(seed, "seed", low=0)
    n = conditions.shape[0]
    dev = next(generator.parameters()).device
    gen = torch.Generator(device=dev)
    gen.manual_seed(seed)
    z = noise_scale * torch.randn(n * k, generator.noise_dim, device=dev, generator=gen)
    c = conditions.to(dev).repeat_interleave(k, dim=0)
    return generator(z, c).reshape(n, k, *MODALITY_SHAPES[generator.target])


def one_per_digit(samples: torch.Tensor, labels: torch.Tensor, predicted: torch.Tensor | None = None) -> torch.Tensor:
    """A generator collapsed to one output per digit: every sample of ``samples`` ``(N, K, ...)`` replaced by one
    sample of its condition's digit (``labels`` ``(N,)``) — the first one the classifier recognises as that digit
    when its ``predicted`` digits ``(N, K)`` are given, else the first one. Perfectly "accurate", no variety at all."""
    samples = check_tensor(samples, "samples", floating=True)
    if samples.ndim < 3:
        raise ValueError(f"samples: expected shape (N, K, ...), got {tuple(samples.shape)}")
    labels = _check_labels(labels, "labels", samples, "samples")
    n, k = samples.shape[:2]
    if predicted is not None:
        predicted = check_tensor(predicted, "predicted", shape=(n, k), integer=True)
    flat = samples.reshape(n * k, *samples.shape[2:])
    label_rows = labels.repeat_interleave(k)
    chosen = {}
    for digit in labels.unique().tolist():
        hits = label_rows == digit
        if predicted is not None and bool((hits & (predicted.flatten() == digit)).any()):
            hits = hits & (predicted.flatten() == digit)
        chosen[digit] = int(torch.nonzero(hits)[0])
    index = torch.tensor([chosen[d] for d in label_rows.tolist()], device=samples.device)
    return flat[index].reshape(samples.shape)


def _check_labels(labels: object, name: str, rows: torch.Tensor, rows_name: str) -> torch.Tensor:
    """Integer labels, one per row of ``rows``."""
    labels = check_tensor(labels, name, ndim=1, integer=True)
    if labels.shape[0] != rows.shape[0]:
        raise ValueError(f"{rows_name}, {name}: expected one label per row, got {rows.shape[0]} rows and "
                         f"{labels.shape[0]} labels")
    return labels


def _check_every_digit(labels: torch.Tensor, name: str) -> None:
    """Digits 0..9, each at least twice (a per-digit Fréchet distance needs two rows)."""
    if int(labels.min()) < 0 or int(labels.max()) > 9:
        raise ValueError(f"{name}: expected digits 0..9, got {int(labels.min())}..{int(labels.max())}")
    counts = torch.bincount(labels, minlength=10)
    if int(counts.min()) < 2:
        raise ValueError(f"{name}: expected at least two rows of every digit, got counts {counts.tolist()}")


def conditional_accuracy(predicted: torch.Tensor, condition_labels: torch.Tensor) -> float:
    """Fraction of generated samples whose predicted digit equals the digit of their condition."""
    from mmlib.metrics import coherence

    predicted = check_tensor(predicted, "predicted", ndim=1, integer=True)
    condition_labels = check_tensor(condition_labels, "condition_labels", ndim=1, integer=True)
    if predicted.shape != condition_labels.shape:
        raise ValueError(f"predicted, condition_labels: expected the same length, got {predicted.shape[0]} and "
                         f"{condition_labels.shape[0]}")
    return coherence(predicted, condition_labels)


def within_condition_variance(samples: torch.Tensor) -> float:
    """Mean over conditions and coordinates of the variance across the ``K`` samples of each condition:
    ``(1/N) Σ_i mean_d Var_k[x_ikd]`` for ``samples`` of shape ``(N, K, ...)``. Zero for a collapsed generator."""
    samples = check_tensor(samples, "samples", floating=True)
    if samples.ndim < 3 or samples.shape[1] < 2:
        raise ValueError(f"samples: expected shape (N, K, ...) with K >= 2 samples per condition, "
                         f"got {tuple(samples.shape)}")
    return float(samples.flatten(2).var(dim=1, unbiased=True).mean())


def real_within_digit_variance(x: torch.Tensor, labels: torch.Tensor) -> float:
    """The same statistic for real data: the mean over digits of the per-coordinate variance of that digit's samples
    (the conditions carry only the digit, so a faithful generator's within-condition variance is close to it)."""
    x = check_tensor(x, "x", floating=True)
    labels = _check_labels(labels, "labels", x, "x")
    flat = x.flatten(1)
    digits = labels.unique().tolist()
    if any(int((labels == d).sum()) < 2 for d in digits):
        raise ValueError("labels: expected at least two samples of every digit present")
    return float(np.mean([float(flat[labels == d].var(dim=0, unbiased=True).mean()) for d in digits]))


def class_frechet_distances(
    features: torch.Tensor, labels: torch.Tensor, reference: torch.Tensor, reference_labels: torch.Tensor,
    frechet: Callable[[torch.Tensor, torch.Tensor], float] | None = None,
) -> np.ndarray:
    """Per digit ``k``: ``FD(features[labels == k], reference[reference_labels == k])`` — an array of 10 distances.

    ``frechet`` defaults to :func:`mmlib.metrics.frechet_distance`.
    """
    features = check_tensor(features, "features", ndim=2, floating=True)
    reference = check_tensor(reference, "reference", ndim=2, floating=True)
    labels = _check_labels(labels, "labels", features, "features")
    reference_labels = _check_labels(reference_labels, "reference_labels", reference, "reference")
    if features.shape[1] != reference.shape[1]:
        raise ValueError(f"features, reference: expected the same feature width, got {features.shape[1]} and "
                         f"{reference.shape[1]}")
    if frechet is None:
        from mmlib.metrics import frechet_distance as frechet
    out = np.zeros(10)
    for k in range(10):
        a, b = features[labels == k], reference[reference_labels == k]
        if a.shape[0] < 2 or b.shape[0] < 2:
            raise ValueError(f"labels, reference_labels: digit {k} needs at least two rows on each side, "
                             f"got {a.shape[0]} and {b.shape[0]}")
        out[k] = float(frechet(a, b))
    return out


@dataclass
class CGANEvaluation:
    """The figures of one conditional GAN on held-out conditions (see :func:`evaluate_cgan`)."""

    cond_acc: float
    within_var: float
    real_within_var: float
    fd_per_class: np.ndarray
    fd_baseline_per_class: np.ndarray
    samples: torch.Tensor  # (N, K, *target shape)
    condition_labels: torch.Tensor  # (N,)

    @property
    def fd_mean(self) -> float:
        return float(np.mean(self.fd_per_class))

    @property
    def fd_baseline_mean(self) -> float:
        return float(np.mean(self.fd_baseline_per_class))

    @property
    def fd_ratio(self) -> float:
        """Mean per-digit FD over mean real-versus-real FD (1 = as close as a fresh real sample of the same size)."""
        return self.fd_mean / self.fd_baseline_mean

    @property
    def variance_ratio(self) -> float:
        """Within-condition variance of the samples over the real within-digit variance (0 = noise ignored)."""
        return self.within_var / self.real_within_var


def frechet_per_digit(
    samples: torch.Tensor, condition_labels: torch.Tensor, reference: torch.Tensor, reference_labels: torch.Tensor,
    classifier: nn.Module,
) -> np.ndarray:
    """Per-digit FD of samples ``(N, K, ...)`` to ``reference``: sample ``k`` of every condition forms one generated
    set (as many rows per digit as there are conditions of that digit); its per-digit FD in classifier features is
    averaged over the ``K`` sets."""
    n, k = samples.shape[:2]
    ref_features = classifier.features(reference)
    gen_features = classifier.features(samples.reshape(n * k, *samples.shape[2:])).reshape(n, k, -1)
    return np.mean([class_frechet_distances(gen_features[:, j], condition_labels, ref_features, reference_labels)
                    for j in range(k)], axis=0)


def evaluate_cgan(
    samples: torch.Tensor,
    condition_labels: torch.Tensor,
    real_test: torch.Tensor,
    real_train: torch.Tensor,
    train_labels: torch.Tensor,
    classifier: nn.Module,
) -> CGANEvaluation:
    """Evaluate ``samples`` ``(N, K, *target shape)``: ``K`` samples for each of ``N`` held-out conditions, whose digits
    are ``condition_labels``.

    - ``cond_acc``: over all ``N·K`` samples, the fraction the target's classifier assigns the condition's digit;
    - ``within_var``: :func:`within_condition_variance`, next to :func:`real_within_digit_variance` of ``real_train``;
    - FD per digit (:func:`frechet_per_digit`) to ``real_train``; the baseline is the FD of ``real_test`` (the real
      targets paired with the conditions: the same number of rows per digit) to the same reference — what a perfect
      generator would score.
    """
    samples = check_tensor(samples, "samples", floating=True)
    target = next((m for m in TARGETS if tuple(samples.shape[2:]) == MODALITY_SHAPES[m]), None)
    if samples.ndim < 3 or target is None:
        raise ValueError(f"samples: expected (N, K, 1, 8, 8) images or (N, K, {AUDIO_BINS}, {AUDIO_FRAMES}) "
                         f"spectrograms, got {tuple(samples.shape)}")
    n, k = samples.shape[:2]
    condition_labels = _check_labels(condition_labels, "condition_labels", samples, "samples")
    real_test = _check_batch(real_test, target, "real_test")
    real_train = _check_batch(real_train, target, "real_train")
    train_labels = _check_labels(train_labels, "train_labels", real_train, "real_train")
    _check_every_digit(condition_labels, "condition_labels")
    _check_every_digit(train_labels, "train_labels")
    if real_test.shape[0] != n:
        raise ValueError(f"real_test: expected the {n} real targets paired with the conditions, "
                         f"got {real_test.shape[0]}")
    if not callable(getattr(classifier, "features", None)) or not callable(getattr(classifier, "predict", None)):
        raise TypeError(f"classifier: expected a Classifier with .predict and .features, "
                        f"got {type(classifier).__name__}")
    flat = samples.reshape(n * k, *samples.shape[2:])
    cond_acc = conditional_accuracy(classifier.predict(flat), condition_labels.repeat_interleave(k))
    fd = frechet_per_digit(samples, condition_labels, real_train, train_labels, classifier)
    baseline = class_frechet_distances(classifier.features(real_test), condition_labels,
                                       classifier.features(real_train), train_labels)
    return CGANEvaluation(
        cond_acc=cond_acc,
        within_var=within_condition_variance(samples),
        real_within_var=real_within_digit_variance(real_train, train_labels),
        fd_per_class=fd,
        fd_baseline_per_class=baseline,
        samples=samples,
        condition_labels=condition_labels,
    )


#: Samples drawn per held-out condition for the evaluation.
SAMPLES_PER_CONDITION: int = 8


def run_cgan(
    *, seed: int = 0, device: torch.device | str | None = None, progress: bool = True,
    pairs: tuple[tuple[str, str], ...] = PAIRS, config: CGANConfig | None = None,
) -> tuple[dict[tuple[str, str], FittedCGAN], dict[tuple[str, str], CGANEvaluation], Result]:
    """Train a conditional GAN for each ``(source, target)`` of ``pairs`` on the training split and evaluate it on the
    test split's conditions. Returns the fitted models, their evaluations and the experiment's :class:`Result`.

    Metrics, per pair (``<t>__from_<s>``): ``cond_acc_…``, ``fd_…_mean`` and ``fd_…_baseline`` (means over digits of
    the per-digit FD and of its real-versus-real baseline), ``fd_ratio_…``, ``within_var_…`` and ``real_within_var_…``;
    and the two collapsed generators: noise ignored (``z = 0``: ``noise_ignored_cond_acc_…``,
    ``noise_ignored_within_var_…``, ``noise_ignored_fd_ratio_…``) and one sample per digit
    (``one_per_digit_cond_acc_…``, ``one_per_digit_fd_ratio_…``). Arrays: ``gen_<t>__from_<s>`` (``N·K`` samples,
    condition-major), ``label__from_<s>`` (their conditions' digits) and ``condition_<s>`` (the conditions,
    row-aligned).
    """
    seed = check_int(seed, "seed", low=0)
    dev = resolve_device(device)
    with one_cpu_thread(dev):  # tiny networks: one thread is faster, and the numbers do not depend on the count
        return _run_cgan(seed, dev, progress, pairs, config)


def _run_cgan(
    seed: int, dev: torch.device, progress: bool, pairs: tuple[tuple[str, str], ...], config: CGANConfig | None
) -> tuple[dict[tuple[str, str], FittedCGAN], dict[tuple[str, str], CGANEvaluation], Result]:
    from mmlib.classifiers import load_classifiers
    from mmlib.data import load_multimodal_digits
    from mmlib.parallel import run_jobs

    ds = load_multimodal_digits(dev)
    classifiers = load_classifiers(dev)
    fits: dict[tuple[str, str], FittedCGAN] = {}
    evals: dict[tuple[str, str], CGANEvaluation] = {}
    metrics: dict[str, float] = {}
    arrays: dict[str, torch.Tensor] = {}
    k = SAMPLES_PER_CONDITION
    # the pairs' GANs do not depend on each other: they train side by side, one per CPU core (mmlib.parallel; the
    # same numbers as one after the other)
    trained = run_jobs([(fit_cgan, {"source": source, "target": target, "conditions": ds.train[source],
                                    "targets": ds.train[target], "config": config, "seed": seed, "device": dev,
                                    "progress": False}) for source, target in pairs],
                       device=dev, progress=progress, desc="conditional GANs")
    for (source, target), fit in zip(pairs, trained):
        key = f"{target}__from_{source}"
        fits[(source, target)] = fit
        conditions, labels = ds.test[source], ds.test.label
        real = (ds.test[target], ds.train[target], ds.train.label, classifiers[target])
        samples = generate(fit.generator, conditions, n_per_condition=k, seed=seed + 3)
        ev = evaluate_cgan(samples, labels, *real)
        evals[(source, target)] = ev
        ignored = evaluate_cgan(generate(fit.generator, conditions, n_per_condition=k, noise_scale=0.0), labels, *real)
        flat = samples.reshape(-1, *MODALITY_SHAPES[target])
        predicted = classifiers[target].predict(flat).reshape(samples.shape[:2])
        single = evaluate_cgan(one_per_digit(samples, labels, predicted), labels, *real)
        metrics.update({
            f"cond_acc_{key}": ev.cond_acc,
            f"fd_{key}_mean": ev.fd_mean,
            f"fd_{key}_baseline": ev.fd_baseline_mean,
            f"fd_ratio_{key}": ev.fd_ratio,
            f"within_var_{key}": ev.within_var,
            f"real_within_var_{key}": ev.real_within_var,
            f"noise_ignored_cond_acc_{key}": ignored.cond_acc,
            f"noise_ignored_within_var_{key}": ignored.within_var,
            f"noise_ignored_fd_ratio_{key}": ignored.fd_ratio,
            f"one_per_digit_cond_acc_{key}": single.cond_acc,
            f"one_per_digit_fd_ratio_{key}": single.fd_ratio,
        })
        arrays[f"gen_{key}"] = samples.reshape(-1, *MODALITY_SHAPES[target])
        arrays[f"label__from_{source}"] = labels.repeat_interleave(k)
        arrays[f"condition_{source}"] = conditions.repeat_interleave(k, dim=0)
    return fits, evals, Result(metrics=metrics, arrays=arrays)


@register("cgan", "Chapter 06: conditional GANs caption → image and caption → sound; accuracy, diversity, FD per digit")
def cgan_experiment(seed: int = 0, device: torch.device | None = None) -> TrainedResult:
    """Experiment ``cgan``: :func:`run_cgan` with the chapter's pairs and recipe. For the notebook (not written):
    ``details["fits"]`` and ``details["evals"]``, :func:`run_cgan`'s fitted GANs and evaluations by (source, target)."""
    from mmlib.seed import seed_everything

    seed_everything(seed)
    fits, evals, result = run_cgan(seed=seed, device=device, progress=False)
    return TrainedResult(metrics=result.metrics, arrays=result.arrays, details={"fits": fits, "evals": evals})


# ---------------------------------------------------------------------------------------------------------------------
# Exercises
# ---------------------------------------------------------------------------------------------------------------------


@exercise("06.1")
def _check_r1(fn: Callable) -> str:
    """Exercise 06.1: the R1 penalty ½ E‖∇_x D(x)‖² from the logits of real samples and the inputs."""
    w = torch.tensor([0.5, -2.0, 1.0, 3.0], dtype=torch.float64)
    x = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    got = fn(x @ w, x)
    assert isinstance(got, torch.Tensor) and got.ndim == 0, "return a scalar tensor (the mean over the batch)."
    got = got.detach()
    want = 0.5 * float(w @ w)
    assert abs(float(got) - want) < 1e-9, (
        f"for the linear critic D(x) = w·x with w = {w.tolist()} the gradient is w for every x, so R1 = ½‖w‖² = "
        f"{want}; got {float(got):.6g}. Differentiate the *sum* of the logits with respect to x, square, sum over "
        "the coordinates, average over the batch, halve."
    )
    x2 = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    scale = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    logits = torch.tanh(scale * x2).sum(1)
    got2 = fn(logits, x2)
    want2 = float(r1_penalty(torch.tanh(scale * x2).sum(1), x2).detach())
    assert isinstance(got2, torch.Tensor) and got2.ndim == 0, "return a scalar tensor (the mean over the batch)."
    got2_value = float(got2.detach())
    assert abs(got2_value - want2) < 1e-9, f"for D(x) = Σ tanh(2x) expected {want2:.6g}, got {got2_value:.6g}."
    assert got2.requires_grad, (
        "the penalty must stay differentiable in D's parameters (it is minimised by D): pass create_graph=True to "
        "torch.autograd.grad."
    )
    return "R1 penalises D's slope on the real data, so D cannot build a cliff that sends G's gradients flying."
