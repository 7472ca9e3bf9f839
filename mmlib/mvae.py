"""Multimodal VAEs: one shared latent for image, text and audio, the modalities' experts fused (notebook 07).

The generative model is the joint likelihood that eq. (2) of the article should have been (chapter 02): a shared
latent ``z ~ N(0, I)`` and one decoder per modality, ``p(X, z) = p(z) prod_m p(x_m | z)``. Each modality has an encoder
— an *expert* ``q_m(z | x_m)`` — and :mod:`mmlib.fusion` fuses the experts of the observed modalities ``O`` into one
posterior ``q(z | X_O)``. The model is fitted by maximising an evidence lower bound (chapter 04)::

    ELBO(X_O) = E_{q(z | X_O)}[ sum_{m in O} log p(x_m | z) + log p(z) - log q(z | X_O) ]  <=  log p(X_O).

Three fusions, each trained with the objective of the paper that introduced it (our own code):

- ``"poe"``: product of experts, MVAE (Wu & Goodman, 2018) — the joint ELBO plus the ELBO of each single modality
  plus the ELBO of one random other subset per step ("sub-sampled" ELBO terms); each term reconstructs the
  modalities of its subset only (:func:`mvae_loss`).
- ``"moe"``: mixture of experts, MMVAE (Shi et al., 2019) — the ELBO of the mixture posterior, estimated with one draw
  from every expert (stratified); each draw reconstructs *all* modalities (:func:`mmvae_loss`).
- ``"mopoe"``: mixture of products of experts, MoPoE (Sutter, Daunhawer & Vogt, 2021) — the reconstruction of all
  modalities from the mixture over subsets, minus the average of the subsets' KL terms (:func:`mopoe_loss`); a lower
  bound of the mixture's ELBO, because the KL of a mixture is at most the mixture of the KLs.

:func:`evaluate_generation` (coherence with the evaluation classifiers, Fréchet distances) is shared with chapter 08.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.distributions import Binomial, Independent

from mmlib.checks import check_choice, check_generator, check_indices, check_int, check_positive, check_tensor
from mmlib.classifiers import Classifier
from mmlib.data import MultimodalDigits, Split
from mmlib.device import one_cpu_thread, resolve_device
from mmlib.exercises import exercise
from mmlib.experiments import Result, TrainedResult, register
from mmlib.fusion import (
    _mixture_log_prob,
    _mixture_of_experts,
    _mixture_of_products,
    _mixture_sample,
    _product_of_experts,
    nonempty_subsets,
    subset_masks,
)
from mmlib.vae import kl_to_standard_normal, reparameterise

__all__ = [
    "FUSIONS",
    "NUM_JOINT_SAMPLES",
    "MVAEConfig",
    "BinomialLevels",
    "AutoregressiveTokens",
    "GaussianSpectrogram",
    "MixturePrior",
    "Modality",
    "MultimodalVAE",
    "build_modality",
    "build_mvae",
    "subset_elbo",
    "mvae_loss",
    "mmvae_loss",
    "mopoe_loss",
    "fusion_loss",
    "elbo",
    "fit_prior",
    "train_mvae",
    "generate_joint",
    "generate_cross",
    "posterior_means",
    "latent_probe_accuracy",
    "precision_at_k",
    "retrieval_precision",
    "evaluate_generation",
    "evaluate_mvae",
    "run_mvae",
]

#: The three fusions and the paper whose objective each one is trained with.
FUSIONS: dict[str, str] = {
    "poe": "product of experts, MVAE objective (Wu & Goodman, 2018)",
    "moe": "mixture of experts, MMVAE objective (Shi et al., 2019)",
    "mopoe": "mixture of products of experts, MoPoE objective (Sutter et al., 2021)",
}
#: Joint (prior) samples drawn by :func:`evaluate_mvae` for the joint coherence and the Fréchet distances.
NUM_JOINT_SAMPLES: int = 1000


# ---------------------------------------------------------------------------------------------------------------------
# Likelihoods: log p(x | z) per example from the decoder's output, and the decoder's typical x
# ---------------------------------------------------------------------------------------------------------------------


def _check_shape(shape: object, name: str = "shape") -> tuple[int, ...]:
    """The shape of one example: a non-empty tuple of positive ints."""
    if not isinstance(shape, (tuple, list, torch.Size)) or not shape:
        raise TypeError(f"{name}: expected a non-empty tuple of sizes, for example (1, 8, 8), got {shape!r}")
    return tuple(check_int(s, name, low=1) for s in shape)


class BinomialLevels(nn.Module):
    """Image likelihood: a pixel's grey level ``k = 16 x`` in ``0..16`` is ``Binomial(16, sigmoid(logit))``.

    The 8x8 digits count ink in blocks of 16 cells, so a level is a count out of 16 — the binomial is the Bernoulli of
    grey levels. ``log p(x | z) = sum_pixels log Binomial(k; 16, p)``. The typical image is the mean level rounded to
    a grey level, divided by 16 (the data's representation).
    """

    def __init__(self, shape: Sequence[int] = (1, 8, 8), levels: int = 16) -> None:
        super().__init__()
        self.shape = _check_shape(shape)
        self.levels = check_int(levels, "levels", low=1)
        self.out_features = math.prod(self.shape)
        # the count as a tensor that follows the module's device: a Python number would be copied to it every step
        self.register_buffer("total_count", torch.tensor(float(self.levels)), persistent=False)

    def distribution(self, out: torch.Tensor) -> Independent:
        base = Binomial(total_count=self.total_count, logits=out.reshape(-1, *self.shape), validate_args=False)
        return Independent(base, len(self.shape), validate_args=False)

    def log_prob(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.distribution(out).log_prob(torch.round(x * self.levels))

    def mode(self, out: torch.Tensor) -> torch.Tensor:
        return torch.round(torch.sigmoid(out.reshape(-1, *self.shape)) * self.levels) / self.levels


class AutoregressiveTokens(nn.Module):
    """Text likelihood: the caption's tokens one after the other, each given ``z`` *and the tokens before it*::

        log p(x | z) = sum_t log p(x_t | x_<t, z),   p(x_t | x_<t, z) = softmax(V_t silu(c_t(z) + A_t e(x_<t))).

    ``out`` (the decoder's output, ``(N, length * hidden)``) is a context ``c_t(z)`` per position; ``e`` embeds the
    tokens; ``A_t`` is a linear map that only sees positions before ``t`` (a masked layer, as in MADE, Germain et al.
    2015), so one pass scores every position (teacher forcing). Why not independent tokens given ``z``: a digit has 36
    captions (4 languages x 3 templates x 3 cases); tokens drawn independently per position mix them ("Nrmero",
    "Lie ziff"). Conditioned on the tokens before, the model commits to one caption. The typical caption is decoded
    greedily: the most likely token at each position given the ones already chosen."""

    def __init__(self, length: int, vocab_size: int, hidden: int = 32, embed_dim: int = 16) -> None:
        super().__init__()
        self.length = check_int(length, "length", low=1)
        self.vocab_size = check_int(vocab_size, "vocab_size", low=2)
        self.hidden = check_int(hidden, "hidden", low=1)
        embed_dim = check_int(embed_dim, "embed_dim", low=1)
        self.out_features = self.length * self.hidden
        self.embed = nn.Embedding(self.vocab_size, embed_dim)
        self.previous = nn.Linear(self.length * embed_dim, self.out_features)  # A: masked below
        position_out = torch.arange(self.length).repeat_interleave(self.hidden)
        position_in = torch.arange(self.length).repeat_interleave(embed_dim)
        self.register_buffer("mask", (position_in.unsqueeze(0) < position_out.unsqueeze(1)).float(), persistent=False)
        self.head = nn.Parameter(torch.randn(self.length, self.hidden, self.vocab_size) / math.sqrt(self.hidden))
        self.head_bias = nn.Parameter(torch.zeros(self.length, self.vocab_size))

    def logits(self, out: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """``(N, length, vocab)`` logits of every position given the context ``out`` and the previous ``tokens``."""
        previous = nn.functional.linear(self.embed(tokens).flatten(1), self.previous.weight * self.mask,
                                        self.previous.bias)
        h = nn.functional.silu(out.reshape(-1, self.out_features) + previous).reshape(-1, self.length, self.hidden)
        return torch.einsum("nth,thv->ntv", h, self.head) + self.head_bias

    def log_prob(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        logits = self.logits(out, x)
        return logits.log_softmax(-1).gather(-1, x.unsqueeze(-1)).squeeze(-1).sum(-1)

    @torch.no_grad()
    def mode(self, out: torch.Tensor) -> torch.Tensor:
        tokens = torch.zeros(out.shape[0], self.length, dtype=torch.long, device=out.device)
        for t in range(self.length):  # greedy: position t given the tokens already chosen
            tokens[:, t] = self.logits(out, tokens)[:, t].argmax(-1)
        return tokens


class GaussianSpectrogram(nn.Module):
    """Audio likelihood: each spectrogram cell is ``N(mean, s^2)`` with one learned scale ``s >= min_scale``:
    ``log p(x | z) = sum_cells [-log(sqrt(2 pi) s) - (x - mean)^2 / 2 s^2]`` (a density: it can exceed 0 nats). The
    typical spectrogram is the mean, clipped to the data's range [0, 1].

    Why not a Laplace (robust, median) likelihood: the two notes fill about 5 % of the cells, and what the decoder
    cannot predict of them (pitch, tempo) makes them a minority at each cell — the median there is the background,
    and the notes that carry the digit vanish from the typical spectrogram. The mean keeps them, blurred."""

    def __init__(self, shape: Sequence[int], min_scale: float = 0.02) -> None:
        super().__init__()
        self.shape = _check_shape(shape)
        self.out_features = math.prod(self.shape)
        self.min_scale = check_positive(min_scale, "min_scale")
        self.log_scale = nn.Parameter(torch.tensor(math.log(0.1)))

    def scale(self) -> torch.Tensor:
        return self.min_scale + torch.exp(self.log_scale)

    def log_prob(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        s = self.scale()
        diff = (x.reshape(x.shape[0], -1) - out.reshape(out.shape[0], -1)) / s
        return (-0.5 * math.log(2 * math.pi) - torch.log(s) - 0.5 * diff**2).sum(-1)

    def mode(self, out: torch.Tensor) -> torch.Tensor:
        return out.reshape(-1, *self.shape).clamp(0.0, 1.0)


class MixturePrior(nn.Module):
    """A learned prior over the shared latent: ``p(z) = sum_k pi_k N(z; m_k, diag s_k^2)`` (VampPrior-like in spirit,
    Tomczak & Welling 2018; a plain Gaussian mixture here). ``components = 0`` gives the fixed ``N(0, I)``.

    Why: with ``N(0, I)`` the codes of the ten digits form clusters that do not fill the Gaussian, so a prior sample
    often lands between them and decodes to no digit in particular ("prior holes"). A mixture learns where the codes
    are; sampling the *model's* prior then gives codes like the data's. Its parameters are fitted with the rest by the
    ELBO, whose ``E_q[log p(z)]`` term is the likelihood of the codes under the prior. Trained that way (one-draw KL
    estimates) it still leaves holes: :func:`train_mvae` then refits it to the codes by EM (:func:`fit_prior`), which
    raised MoE's joint coherence from 0.56 to 0.92 in notebook 07."""

    def __init__(self, components: int, latent_dim: int) -> None:
        super().__init__()
        self.components = check_int(components, "components", low=0)
        self.latent_dim = check_int(latent_dim, "latent_dim", low=1)
        if self.components:
            self.means = nn.Parameter(torch.randn(self.components, self.latent_dim))
            self.log_vars = nn.Parameter(torch.zeros(self.components, self.latent_dim))
            self.logits = nn.Parameter(torch.zeros(self.components))

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """``log p(z)`` over the last dimension, shape ``z.shape[:-1]``."""
        if not self.components:
            return -0.5 * (z**2 + math.log(2 * math.pi)).sum(-1)
        zc = z.unsqueeze(-2)  # (..., 1, D) against (K, D)
        log_normal = -0.5 * (math.log(2 * math.pi) + self.log_vars + (zc - self.means) ** 2 * torch.exp(-self.log_vars))
        return torch.logsumexp(log_normal.sum(-1) + self.logits.log_softmax(-1), dim=-1)

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` draws ``(n, D)``: a component ``k ~ pi``, then ``z ~ N(m_k, s_k^2)``."""
        n = check_int(n, "n", low=1)
        generator = check_generator(generator, "generator")
        device = self.means.device if self.components else torch.device("cpu")
        if generator is not None:
            device = generator.device
        eps = torch.randn((n, self.latent_dim), generator=generator, device=device)
        if not self.components:
            return eps
        k = torch.multinomial(self.logits.softmax(-1).to(device), n, replacement=True, generator=generator)
        return self.means[k] + torch.exp(0.5 * self.log_vars[k]) * eps


# ---------------------------------------------------------------------------------------------------------------------
# One modality: an encoder (the expert), a decoder and a likelihood
# ---------------------------------------------------------------------------------------------------------------------


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers of the given widths with SiLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class Modality(nn.Module):
    """One modality of a multimodal VAE: its ``name``, ``encoder`` (``x -> (N, 2 D)``: the expert's mean and
    log-variance side by side), ``decoder`` (``z -> `` the likelihood's parameters) and ``likelihood`` (a module with
    ``log_prob(out, x) -> (N,)`` and ``mode(out) -> x``)."""

    def __init__(self, name: str, encoder: nn.Module, decoder: nn.Module, likelihood: nn.Module) -> None:
        super().__init__()
        if not isinstance(name, str) or not name:
            raise TypeError(f"name: expected a non-empty string, got {name!r}")
        for arg, value in (("encoder", encoder), ("decoder", decoder), ("likelihood", likelihood)):
            if not isinstance(value, nn.Module):
                raise TypeError(f"{arg}: expected a torch.nn.Module, got {type(value).__name__}")
        if not (callable(getattr(likelihood, "log_prob", None)) and callable(getattr(likelihood, "mode", None))):
            raise TypeError("likelihood: expected a module with log_prob(out, x) and mode(out)")
        self.name = name
        self.encoder = encoder
        self.decoder = decoder
        self.likelihood = likelihood

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The expert ``q_m(z | x_m) = N(mean, diag exp(log_var))``: ``(mean, log_var)``, each ``(N, D)``."""
        mean, log_var = self.encoder(x).chunk(2, dim=-1)
        return mean, log_var

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``log p(x | z)`` per example, ``(N,)`` (``z`` and ``x`` row-aligned)."""
        return self.likelihood.log_prob(self.decoder(z), x)

    @torch.no_grad()
    def generate(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's typical ``x`` for each row of ``z``, in the data's representation."""
        return self.likelihood.mode(self.decoder(z))


class _TokenEncoder(nn.Module):
    """Token ids ``(N, L)`` -> an embedding per position, flattened ``(N, L E)``, then an MLP."""

    def __init__(self, vocab_size: int, length: int, embed_dim: int, sizes: Sequence[int]) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.mlp = _mlp([length * embed_dim, *sizes])

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.embed(tokens).flatten(1))


@dataclass(frozen=True)
class MVAEConfig:
    """Sizes and training hyper-parameters of notebook 07's multimodal VAEs (chosen to fit its time budget).

    ``latent_dim``: the shared latent (the modalities share only the digit, so a small one suffices);
    ``prior_components``: components of the learned mixture prior (:class:`MixturePrior`; 0 = ``N(0, I)``);
    ``text_hidden``: units per position of the autoregressive caption likelihood (:class:`AutoregressiveTokens`);
    ``kl_warmup``: the KL weight grows linearly from 0 to 1 over the first ``kl_warmup`` steps (Bowman et al., 2016);
    after it, the objective is the paper's;
    ``audio_min_scale``: the floor of the spectrogram likelihood's noise scale (:class:`GaussianSpectrogram`); 0.1
    rather than 0.02 keeps the audio's likelihood from dwarfing the others, so its codes do not spread over the
    latent with the audio's style (pitch, tempo) — with the conv encoder below it raised MoE's image -> audio
    coherence from 0.82 to 0.88 (seed 0);
    ``refit_prior``: after training, refit the mixture prior by EM to the posterior means of the training triples,
    with this many components (:func:`fit_prior`: ex-post density estimation, Ghosh et al. 2020); 0 keeps the prior
    learned with the ELBO. 80 was chosen on the validation split (MoE, seed 0: joint coherence 0.86, 0.90, 0.91 with
    20, 40, 80 components; the codes of one digit vary with its style, so a digit needs several components);
    ``image_encoder``: ``"conv"`` (two 3x3 convolutions, then the MLP) or ``"mlp"`` (the MLP on the 64 pixels) — the
    MLP expert generalised poorly from the 1,259 training images (MoE, seed 0: image -> audio coherence 0.84 on the
    training split, 0.81 on the test split), the convolutions share weights across positions;
    ``weight_decay``: the L2 penalty of Adam (:func:`mmlib.train.make_optimizer`) on every parameter, against the
    conv expert's overfitting (image -> audio 0.97 on the training split, 0.82 on the test split without it).
    """

    latent_dim: int = 8
    hidden: int = 128
    text_embed: int = 8
    text_hidden: int = 32
    prior_components: int = 20
    steps: int = 1000
    batch_size: int = 128
    lr: float = 2e-3
    kl_warmup: int = 100
    audio_min_scale: float = 0.1
    refit_prior: int = 80
    image_encoder: str = "conv"
    weight_decay: float = 1e-3

    def __post_init__(self) -> None:
        for name in ("latent_dim", "hidden", "text_embed", "text_hidden", "steps", "batch_size"):
            check_int(getattr(self, name), f"config.{name}", low=1)
        check_int(self.prior_components, "config.prior_components", low=0)
        check_int(self.kl_warmup, "config.kl_warmup", low=0)
        check_int(self.refit_prior, "config.refit_prior", low=0)
        check_positive(self.lr, "config.lr")
        check_positive(self.audio_min_scale, "config.audio_min_scale")
        check_choice(self.image_encoder, "config.image_encoder", ("mlp", "conv"))
        check_positive(self.weight_decay, "config.weight_decay", allow_zero=True)


def build_modality(
    name: str,
    latent_dim: int,
    hidden: int = 128,
    text_embed: int = 8,
    text_hidden: int = 32,
    audio_min_scale: float = 0.1,
    image_encoder: str = "conv",
) -> Modality:
    """The :class:`Modality` of the multimodal digits called ``name`` ('image', 'text' or 'audio'): an MLP encoder and
    an MLP decoder with two hidden layers of width ``hidden`` (the image's encoder: two 3x3 convolutions, 32 channels,
    the second with stride 2, before its MLP when ``image_encoder`` is ``"conv"``); likelihoods
    :class:`BinomialLevels` (image), :class:`AutoregressiveTokens` (text, ``text_hidden`` units per position) and
    :class:`GaussianSpectrogram` (audio, noise scale at least ``audio_min_scale``). Built on the CPU."""
    from mmlib.data import AUDIO_BINS, AUDIO_FRAMES, MODALITIES, TEXT_LENGTH, TEXT_VOCAB

    name = check_choice(name, "name", MODALITIES)
    latent_dim = check_int(latent_dim, "latent_dim", low=1)
    hidden = check_int(hidden, "hidden", low=1)
    text_embed = check_int(text_embed, "text_embed", low=1)
    text_hidden = check_int(text_hidden, "text_hidden", low=1)
    image_encoder = check_choice(image_encoder, "image_encoder", ("mlp", "conv"))
    head = [hidden, hidden, 2 * latent_dim]
    if name == "image":
        likelihood: nn.Module = BinomialLevels((1, 8, 8), 16)
        if image_encoder == "conv":  # (N, 1, 8, 8) -> (N, 32, 8, 8) -> (N, 32, 4, 4) -> (N, 2D)
            encoder: nn.Module = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.SiLU(),
                                               nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.SiLU(),
                                               nn.Flatten(), _mlp([32 * 4 * 4, *head]))
        else:
            encoder = nn.Sequential(nn.Flatten(), _mlp([64, *head]))  # (N, 1, 8, 8) -> (N, 2D)
    elif name == "text":
        likelihood = AutoregressiveTokens(TEXT_LENGTH, len(TEXT_VOCAB), text_hidden)
        encoder = _TokenEncoder(len(TEXT_VOCAB), TEXT_LENGTH, text_embed, head)  # (N, L) -> (N, 2D)
    else:
        min_scale = check_positive(audio_min_scale, "audio_min_scale")
        likelihood = GaussianSpectrogram((AUDIO_BINS, AUDIO_FRAMES), min_scale)
        encoder = nn.Sequential(nn.Flatten(), _mlp([AUDIO_BINS * AUDIO_FRAMES, *head]))  # (N, F, T) -> (N, 2D)
    decoder = _mlp([latent_dim, hidden, hidden, likelihood.out_features])
    return Modality(name, encoder, decoder, likelihood)


# ---------------------------------------------------------------------------------------------------------------------
# The model: modalities + a fusion
# ---------------------------------------------------------------------------------------------------------------------

#: A posterior as a Gaussian mixture: ``(means (C, N, D), log_vars (C, N, D), weights (C, N))``.
Mixture = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class MultimodalVAE(nn.Module):
    """Modalities sharing one latent of size ``latent_dim``, their experts fused by ``fusion`` ('poe', 'moe' or
    'mopoe'), and a ``prior`` over it (:class:`MixturePrior` with ``prior_components`` Gaussians; 0 = ``N(0, I)``).
    Inputs are dicts ``{modality name: batch}``; any non-empty subset of the modalities may be given, and the missing
    ones are simply left out of the fusion.

    The fusions' product keeps ``N(0, I)`` as its one fixed extra expert (:func:`mmlib.fusion.product_of_experts`):
    it is part of the *posterior*'s family — it keeps the product proper when few experts are observed — while the
    *model*'s prior ``p(z)`` is ``self.prior``. Every ELBO here uses ``self.prior``."""

    def __init__(self, modalities: Sequence[Modality], latent_dim: int, fusion: str, prior_components: int = 0) -> None:
        super().__init__()
        if not isinstance(modalities, Sequence) or not modalities or not all(isinstance(m, Modality)
                                                                             for m in modalities):
            raise TypeError("modalities: expected a non-empty list of Modality objects")
        names = [m.name for m in modalities]
        if len(set(names)) != len(names):
            raise ValueError(f"modalities: expected distinct names, got {names}")
        self.modalities = nn.ModuleDict({m.name: m for m in modalities})
        self.latent_dim = check_int(latent_dim, "latent_dim", low=1)
        self.fusion = check_choice(fusion, "fusion", tuple(FUSIONS))
        self.prior = MixturePrior(check_int(prior_components, "prior_components", low=0), self.latent_dim)
        # which modalities each non-empty subset holds (mmlib.fusion.subset_masks), kept on the model's device so
        # that a training step builds no tensor from host data
        self.register_buffer("subset_members", subset_masks(len(names)), persistent=False)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.modalities)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def check_inputs(self, x: object, name: str = "x") -> dict[str, torch.Tensor]:
        """A dict of observed modalities: known names, at least one, tensors with the same number of rows.
        (No NaN scan here: it would synchronise with the GPU at every training step; the trainer checks once.)"""
        if not isinstance(x, Mapping) or not x:
            raise TypeError(f"{name}: expected a non-empty dict {{modality: batch}} with keys among {self.names}")
        unknown = [k for k in x if k not in self.modalities]
        if unknown:
            raise ValueError(f"{name}: unknown modalities {unknown}; this model has {list(self.names)}")
        from mmlib.data import MODALITY_SHAPES, TEXT_VOCAB

        out = {}
        for k, v in x.items():
            shape = (None, *MODALITY_SHAPES[k])
            if k == "text":
                out[k] = check_indices(v, f"{name}[{k!r}]", len(TEXT_VOCAB), shape=shape)
            else:
                out[k] = check_tensor(v, f"{name}[{k!r}]", shape=shape, floating=True, finite=False)
        rows = {k: int(v.shape[0]) for k, v in out.items()}
        if len(set(rows.values())) > 1:
            raise ValueError(f"{name}: expected the same number of rows for every modality, got {rows}")
        return out

    def encode(self, x: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The experts of all modalities stacked: ``means``, ``log_vars`` ``(K, N, D)`` and the observation ``mask``
        ``(K, N)``; a missing modality's expert is a placeholder (zeros) with mask False."""
        x = self.check_inputs(x)
        n = next(iter(x.values())).shape[0]
        dev = self.device
        means, log_vars, mask = [], [], []
        for name, modality in self.modalities.items():
            if name in x:
                mu, log_var = modality.encode(x[name])
            else:
                mu = log_var = torch.zeros(n, self.latent_dim, device=dev)
            means.append(mu)
            log_vars.append(log_var)
            mask.append(torch.full((n,), name in x, dtype=torch.bool, device=dev))
        return torch.stack(means), torch.stack(log_vars), torch.stack(mask)

    def fuse(self, means: torch.Tensor, log_vars: torch.Tensor, mask: torch.Tensor) -> Mixture:
        """The fused posterior as a mixture: one component for 'poe' (:func:`mmlib.fusion.product_of_experts`), one
        per modality for 'moe' (:func:`~mmlib.fusion.mixture_of_experts`), one per non-empty subset for 'mopoe'
        (:func:`~mmlib.fusion.mixture_of_products`)."""
        if self.fusion == "poe":
            mu, log_var = _product_of_experts(means, log_vars, mask)
            return mu.unsqueeze(0), log_var.unsqueeze(0), torch.ones_like(mu[:, 0]).unsqueeze(0)
        if self.fusion == "moe":
            return _mixture_of_experts(means, log_vars, mask)
        return _mixture_of_products(means, log_vars, mask, members=self.subset_members)

    def subset_index(self, subset: Sequence[str]) -> int:
        """The row of ``subset`` (modality names) in :attr:`subset_members` (:func:`mmlib.fusion.nonempty_subsets`)."""
        return nonempty_subsets(len(self.names)).index(tuple(sorted(self.names.index(m) for m in subset)))

    def posterior(self, x: Mapping[str, torch.Tensor]) -> Mixture:
        """``q(z | X_O)`` for the observed modalities ``O = x.keys()``."""
        return self.fuse(*self.encode(x))

    def log_likelihood(self, x: Mapping[str, torch.Tensor], z: torch.Tensor) -> torch.Tensor:
        """``sum_{m in x} log p(x_m | z)`` per row; ``z`` is ``(N, D)``, or ``(R, N, D)`` for R draws per example
        (the result is then ``(R, N)``)."""
        lead = z.shape[:-1]
        flat = z.reshape(-1, z.shape[-1])
        total = torch.zeros(flat.shape[0], device=flat.device, dtype=flat.dtype)
        for name, value in x.items():
            if z.ndim == 3:
                value = value.expand(lead[0], *value.shape).reshape(-1, *value.shape[1:])
            total = total + self.modalities[name].log_likelihood(value, flat)
        return total.reshape(lead)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """The typical sample of each modality in ``names`` (default: all) for each row of ``z``."""
        z = check_tensor(z, "z", shape=(None, self.latent_dim), floating=True)
        names = self.names if names is None else tuple(names)
        for name in names:
            check_choice(name, "names", self.names)
        return {name: self.modalities[name].generate(z) for name in names}


def build_mvae(
    fusion: str, config: MVAEConfig | None = None, *, seed: int = 0, device: torch.device | str | None = None
) -> MultimodalVAE:
    """A freshly initialised multimodal VAE for the digits' three modalities with ``fusion``. The initial weights
    depend only on ``seed`` (drawn with the global generator forked: the caller's random state is untouched), so the
    three fusions start from the same networks."""
    from mmlib.data import MODALITIES

    fusion = check_choice(fusion, "fusion", tuple(FUSIONS))
    config = MVAEConfig() if config is None else config
    if not isinstance(config, MVAEConfig):
        raise TypeError(f"config: expected an MVAEConfig, got {type(config).__name__}")
    seed = check_int(seed, "seed", low=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        modalities = [build_modality(m, config.latent_dim, config.hidden, config.text_embed, config.text_hidden,
                                     config.audio_min_scale, config.image_encoder) for m in MODALITIES]
        model = MultimodalVAE(modalities, config.latent_dim, fusion, config.prior_components)
    return model.to(resolve_device(device))


def _check_model(model: object) -> MultimodalVAE:
    if not isinstance(model, MultimodalVAE):
        raise TypeError(f"model: expected a MultimodalVAE, got {type(model).__name__}")
    return model


def _check_dataset(ds: object, name: str = "ds") -> MultimodalDigits:
    if not isinstance(ds, MultimodalDigits):
        raise TypeError(f"{name}: expected the multimodal digits, mmlib.data.load_multimodal_digits(device), "
                        f"got {type(ds).__name__}")
    return ds


def _check_split(split: object, name: str = "split") -> Split:
    if not isinstance(split, Split):
        raise TypeError(f"{name}: expected one split of the multimodal digits (for example ds.test), "
                        f"got {type(split).__name__}")
    return split


def _check_modalities(names: object, name: str, known: Sequence[str]) -> tuple[str, ...]:
    """A non-empty list of distinct modality names out of ``known``."""
    if isinstance(names, str) or not isinstance(names, Sequence) or len(names) == 0:
        raise TypeError(f"{name}: expected a non-empty list of modality names out of {list(known)}, got {names!r}")
    for m in names:
        check_choice(m, name, known)
    if len(set(names)) != len(names):
        raise ValueError(f"{name}: expected distinct modality names, got {list(names)}")
    return tuple(names)


# ---------------------------------------------------------------------------------------------------------------------
# Objectives (negated, averaged over the batch: nats per example)
# ---------------------------------------------------------------------------------------------------------------------


def _check_beta_generator(beta: object, generator: object) -> tuple[float, torch.Generator | None]:
    """The KL weight ``beta`` (a number >= 0) and the private random ``generator`` (or None) of the objectives."""
    return check_positive(beta, "beta", allow_zero=True), check_generator(generator, "generator")


def _log_normal(z: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """``log N(z; mean, diag exp(log_var))`` summed over the last dimension."""
    return -0.5 * (math.log(2 * math.pi) + log_var + (z - mean) ** 2 * torch.exp(-log_var)).sum(-1)


def _kl_term(model: MultimodalVAE, z: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """The KL term of one Gaussian posterior ``N(mean, exp(log_var))`` against the model's prior: in closed form
    (:func:`mmlib.vae.kl_to_standard_normal`) for ``N(0, I)``, else the one-draw estimate ``log q(z) - log p(z)``
    at the draw ``z`` (a mixture prior has no closed-form KL)."""
    if not model.prior.components:
        return kl_to_standard_normal(mean, log_var)
    return _log_normal(z, mean, log_var) - model.prior.log_prob(z)


def _subset_posterior(
    model: MultimodalVAE, experts: tuple[torch.Tensor, torch.Tensor, torch.Tensor], subset: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``q_PoE(z | X_S)``: the product of the experts (``model.encode``'s output) of the modalities in ``subset``."""
    means, log_vars, mask = experts
    in_subset = model.subset_members[model.subset_index(subset)]  # (K,)
    return _product_of_experts(means, log_vars, mask & in_subset.unsqueeze(1))


def subset_elbo(
    model: MultimodalVAE,
    x: Mapping[str, torch.Tensor],
    subset: Sequence[str],
    *,
    experts: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    beta: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One MVAE term per example ``(N,)``, for the modalities ``S = subset`` (one reparameterised draw)::

        ELBO(X_S) = E_{q_PoE(z | X_S)}[ sum_{m in S} log p(x_m | z) ] - beta KL(q_PoE(z | X_S) || p(z)),

    the KL in closed form for ``p = N(0, I)``, else estimated at the draw (``log q(z) - log p(z)``).
    ``experts`` (the output of ``model.encode(x)``) saves encoding again when several subsets are scored."""
    beta, generator = _check_beta_generator(beta, generator)
    model = _check_model(model)
    x = model.check_inputs(x)
    if (isinstance(subset, str) or not isinstance(subset, Sequence) or not subset
            or any(not isinstance(m, str) or m not in x for m in subset)):
        raise ValueError(f"subset: expected a non-empty list of the given modalities {list(x)}, got {subset!r}")
    mu, log_var = _subset_posterior(model, model.encode(x) if experts is None else experts, subset)
    z = reparameterise(mu, log_var, generator=generator)
    return model.log_likelihood({m: x[m] for m in subset}, z) - beta * _kl_term(model, z, mu, log_var)


def mvae_loss(
    model: MultimodalVAE, x: Mapping[str, torch.Tensor], *, beta: float = 1.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """MVAE's sub-sampled objective (Wu & Goodman, 2018), negated::

        -[ ELBO(X) + sum_m ELBO(x_m) + ELBO(X_S) ],

    each term a :func:`subset_elbo` with the product of its modalities' experts, ``S`` one random subset of size
    between 2 and M - 1 (drawn with ``generator``; none with two modalities).

    The terms are the ones :func:`subset_elbo` computes, with the same draws, but evaluated together: each modality's
    decoder runs once, on the draws of every subset that contains it stacked, instead of once per subset (3 decoder
    calls a step instead of 8 with three modalities; the same numbers up to rounding).

    Where the host cannot read the drawn subset for free (a GPU: it would wait for the device every step), the
    subset stays on the device: every modality's decoder also scores the draw of ``X_S`` and that term is weighted
    by the modality's membership (0 or 1) — one extra decoder block for the modality left out, no synchronisation,
    and the same value as the CPU's way of selecting the rows (tested)."""
    beta, generator = _check_beta_generator(beta, generator)
    model = _check_model(model)
    x = model.check_inputs(x)
    experts = model.encode(x)
    names = list(x)
    subsets: list[list[str]] = [names] + [[name] for name in names]
    middle = [s for s in nonempty_subsets(len(names)) if 1 < len(s) < len(names)]
    chosen = None  # the drawn subset's membership (K,), when it stays on the device
    if middle:
        device = generator.device if generator is not None else experts[0].device
        pick = torch.randint(len(middle), (1,), generator=generator, device=device)
        if _host_reads_are_free(device):
            subsets.append([names[i] for i in middle[int(pick)]])
        else:
            table = torch.stack([model.subset_members[model.subset_index([names[i] for i in m])] for m in middle])
            chosen = table.index_select(0, pick.to(table.device))[0]
    # q_PoE(z | X_S) per subset, the drawn one last, and one draw from each: (N, D) each
    posteriors = [_subset_posterior(model, experts, subset) for subset in subsets]
    if chosen is not None:
        means, log_vars, mask = experts
        posteriors.append(_product_of_experts(means, log_vars, mask & chosen.unsqueeze(1)))
    z = torch.stack([reparameterise(mu, log_var, generator=generator) for mu, log_var in posteriors])  # (S, N, D)
    mus, lvs = (torch.stack(part) for part in zip(*posteriors))
    total = -beta * _kl_term(model, z, mus, lvs).sum(0)  # (S, N) -> (N,)
    for name in names:  # one decoder call per modality, on the draws of the subsets that contain it
        rows = [i for i, subset in enumerate(subsets) if name in subset]
        if chosen is not None:
            rows.append(len(subsets))  # the drawn subset's draw, weighted by membership below
        value = x[name].expand(len(rows), *x[name].shape).reshape(-1, *x[name].shape[1:])
        log_lik = model.modalities[name].log_likelihood(value, torch.cat([z[i] for i in rows]))
        log_lik = log_lik.reshape(len(rows), -1)
        if chosen is not None:  # the drawn subset's term counts for its members only
            log_lik = torch.cat([log_lik[:-1], log_lik[-1:] * chosen[model.names.index(name)]])
        total = total + log_lik.sum(0)
    return -total.mean()


def _host_reads_are_free(device: torch.device) -> bool:
    """Whether reading a number of a tensor on ``device`` costs nothing: on the CPU it is already computed; on an
    accelerator the host would wait for the device to finish everything queued before it."""
    return device.type == "cpu"


def mmvae_loss(
    model: MultimodalVAE, x: Mapping[str, torch.Tensor], *, beta: float = 1.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """MMVAE's objective (Shi et al., 2019) with one draw from every expert (stratified sampling), negated::

        -(1/M) sum_m [ log p(X | z_m) - beta (log q_MoE(z_m | X) - log p(z_m)) ],   z_m ~ q_m(z | x_m):

    every expert's draw must reconstruct *all* modalities; ``q_MoE`` is the mixture's density."""
    beta, generator = _check_beta_generator(beta, generator)
    model = _check_model(model)
    x = model.check_inputs(x)
    means, log_vars, weights = model.posterior(x)
    z = reparameterise(means, log_vars, generator=generator)  # (M, N, D): one draw per expert
    log_ratio = _mixture_log_prob(z, means, log_vars, weights) - model.prior.log_prob(z)
    terms = model.log_likelihood(x, z) - beta * log_ratio  # (M, N)
    return -(weights * terms).sum(0).mean()


def mopoe_loss(
    model: MultimodalVAE, x: Mapping[str, torch.Tensor], *, beta: float = 1.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """MoPoE's objective (Sutter et al., 2021), negated::

        -( E_{z ~ q_MoPoE(z | X)}[ log p(X | z) ] - beta (1/|P|) sum_{S in P} KL(q_S(z | X_S) || p(z)) ),

    estimated as in the paper's code: one subset ``S`` per example (drawn from the mixture's weights), one draw
    ``z ~ q_S``, which reconstructs all modalities; the subsets' average KL is then estimated by ``KL(q_S || p)``
    of that subset (closed form for ``N(0, I)``, else ``log q_S(z) - log p(z)``) — unbiased, since ``S`` is drawn
    with the mixture's weights."""
    beta, generator = _check_beta_generator(beta, generator)
    model = _check_model(model)
    x = model.check_inputs(x)
    means, log_vars, weights = model.posterior(x)
    z, component = _mixture_sample(means, log_vars, weights, generator)
    rows = torch.arange(z.shape[0], device=z.device)
    kl = _kl_term(model, z, means[component, rows], log_vars[component, rows])
    return -(model.log_likelihood(x, z) - beta * kl).mean()


_LOSSES: dict[str, Callable[..., torch.Tensor]] = {"poe": mvae_loss, "moe": mmvae_loss, "mopoe": mopoe_loss}


def fusion_loss(
    model: MultimodalVAE, x: Mapping[str, torch.Tensor], *, beta: float = 1.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The training loss of ``model``'s fusion: :func:`mvae_loss`, :func:`mmvae_loss` or :func:`mopoe_loss`, with
    the KL terms weighted by ``beta`` (1 = the paper's objective)."""
    beta, generator = _check_beta_generator(beta, generator)
    model = _check_model(model)
    beta = check_positive(beta, "beta", allow_zero=True)
    return _LOSSES[model.fusion](model, x, beta=beta, generator=generator)


@torch.no_grad()
def elbo(
    model: MultimodalVAE,
    x: Mapping[str, torch.Tensor],
    *,
    num_samples: int = 8,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The ELBO of the fused posterior, per example ``(N,)`` in nats — the same bound for every fusion::

        ELBO(X_O) = sum_c w_c E_{z ~ q_c}[ log p(X_O | z) + log p(z) - log q(z | X_O) ],

    estimated with ``num_samples`` draws from each mixture component ``c`` (stratified), with the mixture's exact
    density in ``log q``. Evaluated in eval mode."""
    generator = check_generator(generator, "generator")
    model = _check_model(model)
    num_samples = check_int(num_samples, "num_samples", low=1)
    x = model.check_inputs(x)
    was_training = model.training
    model.eval()
    try:
        means, log_vars, weights = model.posterior(x)
        c, n, d = means.shape
        z = reparameterise(means, log_vars, n_samples=num_samples, generator=generator)  # (R, C, N, D)
        flat = z.reshape(num_samples * c, n, d)
        log_lik = model.log_likelihood(x, flat).reshape(num_samples, c, n)
        log_q = _mixture_log_prob(flat, means, log_vars, weights).reshape(num_samples, c, n)
        terms = (log_lik + model.prior.log_prob(z) - log_q).mean(0)  # (C, N)
        return (weights * terms).sum(0)
    finally:
        model.train(was_training)


# ---------------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def fit_prior(
    model: MultimodalVAE,
    x: Mapping[str, torch.Tensor],
    components: int,
    *,
    iters: int = 100,
    min_var: float = 1e-3,
    generator: torch.Generator | None = None,
) -> MixturePrior:
    """Refit ``model.prior`` to the codes of the examples ``x``: a Gaussian mixture with ``components`` diagonal
    components, fitted by EM (``iters`` steps, variances at least ``min_var``) to the posterior means
    (:func:`posterior_means`, all the given modalities). The fitted mixture replaces ``model.prior`` (and is
    returned): it *is* the model's prior from then on — sampling it and decoding is joint generation; the prior the
    model was trained against stays available as ``model.elbo_prior`` (set by the first refit). This is ex-post
    density estimation (Ghosh et al., 2020, "From variational to deterministic autoencoders"): a second stage after
    the ELBO, which puts the prior's mass where the fused codes of real triples are, and so fixes the "prior holes"
    that the prior learned with the ELBO leaves between them.

    EM alternates the responsibilities ``r_nk = pi_k N(z_n; m_k, s_k^2) / sum_j pi_j N(z_n; m_j, s_j^2)`` and the
    weighted moments ``pi_k = mean_n r_nk``, ``m_k = sum_n r_nk z_n / sum_n r_nk``, ``s_k^2 = sum_n r_nk (z_n - m_k)^2
    / sum_n r_nk + min_var``; it starts from ``components`` codes picked apart from each other (k-means++, Arthur &
    Vassilvitskii 2007) with ``generator``."""
    generator = check_generator(generator, "generator")
    model = _check_model(model)
    components = check_int(components, "components", low=1)
    iters = check_int(iters, "iters", low=0)
    min_var = check_positive(min_var, "min_var")
    z = posterior_means(model, x)  # (N, D)
    if z.shape[0] < components:
        raise ValueError(f"components: expected at most {z.shape[0]} (the number of codes), got {components}")
    device = generator.device if generator is not None else z.device
    first = int(torch.randint(z.shape[0], (1,), generator=generator, device=device))
    picked = [first]
    nearest = ((z - z[first]) ** 2).sum(-1)
    for _ in range(components - 1):  # k-means++: the next centre with probability ~ squared distance to the nearest
        k = int(torch.multinomial((nearest / nearest.sum()).to(device), 1, generator=generator))
        picked.append(k)
        nearest = torch.minimum(nearest, ((z - z[k]) ** 2).sum(-1))
    mean = z[picked].clone()  # (K, D)
    var = z.var(0).expand(components, -1).clone()
    log_pi = torch.full((components,), -math.log(components), device=z.device)
    for _ in range(iters):
        log_r = log_pi + _log_normal(z.unsqueeze(1), mean, var.log())  # (Nz, K)
        r = log_r.softmax(-1)
        total = r.sum(0) + 1e-10
        mean = (r.T @ z) / total.unsqueeze(-1)
        var = (r.T @ z**2) / total.unsqueeze(-1) - mean**2 + min_var
        log_pi = torch.log(total / z.shape[0])
    prior = MixturePrior(components, model.latent_dim).to(z.device)
    prior.means.copy_(mean)
    prior.log_vars.copy_(var.log())
    prior.logits.copy_(log_pi)
    if not hasattr(model, "elbo_prior"):
        model.elbo_prior = model.prior
    model.prior = prior
    return prior



def train_mvae(
    fusion: str,
    *,
    config: MVAEConfig | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = True,
):
    """Build (:func:`build_mvae`) and train a multimodal VAE with ``fusion`` on the training split of the multimodal
    digits, all three modalities observed: Adam (L2 penalty ``config.weight_decay``) on minibatches with
    :func:`mmlib.train.train`, the KL weight warmed up over ``config.kl_warmup`` steps; then, if
    ``config.refit_prior``, the prior is refitted to the training codes (:func:`fit_prior`). Every random draw
    (weights, minibatches, reparameterisation, MVAE's subsets, the refit) comes from ``seed``. Returns
    ``(model, history)``, the model in eval mode."""
    from mmlib.data import load_multimodal_digits
    from mmlib.seed import make_generator
    from mmlib.train import make_optimizer, train

    config = MVAEConfig() if config is None else config
    seed = check_int(seed, "seed", low=0)
    dev = resolve_device(device)
    ds = load_multimodal_digits(dev)
    model = build_mvae(fusion, config, seed=seed, device=dev)
    optimizer = make_optimizer(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    generator = make_generator(seed + 1, dev)
    names = model.names
    done = 0

    def step(*batch: torch.Tensor) -> dict[str, torch.Tensor]:
        nonlocal done
        done += 1
        beta = min(1.0, done / config.kl_warmup) if config.kl_warmup else 1.0
        optimizer.zero_grad(set_to_none=True)
        loss = fusion_loss(model, dict(zip(names, batch)), beta=beta, generator=generator)
        loss.backward()
        optimizer.step()
        return {"loss": loss.detach()}

    model.train()
    with one_cpu_thread(dev):  # small networks: one CPU thread is faster (and the numbers do not depend on the count)
        history = train(step, [ds.train[name] for name in names], steps=config.steps, batch_size=config.batch_size,
                        log_every=50, seed=seed, desc=f"MVAE ({fusion})", progress=progress)
        model.eval()
        if config.refit_prior:
            fit_prior(model, ds.train.x, config.refit_prior, generator=generator)
    return model, history


# ---------------------------------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def generate_joint(
    model: MultimodalVAE, n: int, *, generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """Joint generation: ``z ~ p(z)`` (the model's prior, :class:`MixturePrior`), then every modality's typical
    sample; rows aligned across modalities."""
    model = _check_model(model)
    n = check_int(n, "n", low=1)
    return model.decode(model.prior.sample(n, generator=generator).to(model.device))


@torch.no_grad()
def generate_cross(
    model: MultimodalVAE,
    x: Mapping[str, torch.Tensor],
    *,
    targets: Sequence[str] | None = None,
    generator: torch.Generator | None = None,
) -> dict[tuple[str, str], torch.Tensor]:
    """Cross-modal generation from each single source: for every source ``s`` in ``x`` and target ``t != s``
    (``targets``, default all), draw ``z ~ q(z | x_s)`` (the fused posterior given ``s`` alone) and decode ``t``.
    Returns ``{(s, t): samples}``, row ``i`` generated from ``x[s][i]``."""
    generator = check_generator(generator, "generator")
    model = _check_model(model)
    x = model.check_inputs(x)
    if targets is not None and (isinstance(targets, str) or not isinstance(targets, (list, tuple))):
        raise TypeError(f"targets: expected a list of modality names or None, got {targets!r}")
    targets = model.names if targets is None else tuple(check_choice(t, "targets", model.names) for t in targets)
    was_training = model.training
    model.eval()
    try:
        out: dict[tuple[str, str], torch.Tensor] = {}
        for source in x:
            z, _ = _mixture_sample(*model.posterior({source: x[source]}), generator)
            for target, value in model.decode(z, [t for t in targets if t != source]).items():
                out[(source, target)] = value
        return out
    finally:
        model.train(was_training)


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation of the latent space
# ---------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def posterior_means(model: MultimodalVAE, x: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """``E_q[z | X_O] = sum_c w_c mu_c``, ``(N, D)``, in eval mode: each example's point in the shared latent space."""
    model = _check_model(model)
    was_training = model.training
    model.eval()
    try:
        means, _, weights = model.posterior(x)
        return (weights.unsqueeze(-1) * means).sum(0)
    finally:
        model.train(was_training)


def latent_probe_accuracy(model: MultimodalVAE, ds, *, source: Sequence[str] | None = None) -> float:
    """Test accuracy of a linear classifier of the digit (:func:`mmlib.metrics.linear_probe_accuracy`) fitted to the
    posterior means of the training split given the modalities ``source`` (default: all)."""
    from mmlib.metrics import linear_probe_accuracy as probe

    model = _check_model(model)
    ds = _check_dataset(ds)
    names = model.names if source is None else _check_modalities(source, "source", model.names)
    z_train = posterior_means(model, {m: ds.train[m] for m in names})
    z_test = posterior_means(model, {m: ds.test[m] for m in names})
    return probe(z_train, ds.train.label, z_test, ds.test.label)


def precision_at_k(
    query: torch.Tensor, gallery: torch.Tensor, query_labels: torch.Tensor, gallery_labels: torch.Tensor, k: int
) -> float:
    """Retrieval precision at ``k``: for each query row, the fraction of its ``k`` nearest gallery rows (Euclidean
    distance) that share its label, averaged over the queries. Ties in distance go to the earlier gallery row."""
    query = check_tensor(query, "query", ndim=2, floating=True)
    gallery = check_tensor(gallery, "gallery", ndim=2, floating=True)
    query_labels = check_tensor(query_labels, "query_labels", shape=(query.shape[0],), integer=True)
    gallery_labels = check_tensor(gallery_labels, "gallery_labels", shape=(gallery.shape[0],), integer=True)
    if query.shape[1] != gallery.shape[1]:
        raise ValueError(f"gallery: expected rows of dimension {query.shape[1]} like query, got {gallery.shape[1]}")
    k = check_int(k, "k", low=1, high=gallery.shape[0])
    distance = torch.cdist(query.double(), gallery.double())  # (Q, G)
    order = torch.sort(distance, dim=1, stable=True).indices[:, :k]  # (Q, k), ties in gallery order
    hits = gallery_labels.to(query_labels.device)[order] == query_labels.unsqueeze(1)
    return float(hits.double().mean())


def retrieval_precision(
    model: MultimodalVAE, split, source: str, target: str, ks: Sequence[int] = (1, 10)
) -> dict[int, float]:
    """Cross-modal retrieval in the shared latent space: every ``source`` sample of ``split``, encoded alone
    (posterior mean), queries the ``target`` samples of ``split``, encoded alone; precision at each ``k`` for the
    digit (:func:`precision_at_k`)."""
    model = _check_model(model)
    split = _check_split(split)
    source = check_choice(source, "source", model.names)
    target = check_choice(target, "target", model.names)
    if isinstance(ks, (str, bytes)) or not isinstance(ks, Sequence) or len(ks) == 0:
        raise TypeError(f"ks: expected a non-empty list of ranks k, got {ks!r}")
    ks = [check_int(k, "ks", low=1, high=len(split)) for k in ks]
    query = posterior_means(model, {source: split[source]})
    gallery = posterior_means(model, {target: split[target]})
    return {k: precision_at_k(query, gallery, split.label, split.label, k) for k in ks}


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation of generation (shared with chapter 08)
# ---------------------------------------------------------------------------------------------------------------------


def evaluate_generation(
    joint_samples: Mapping[str, torch.Tensor],
    cross_samples: Mapping[tuple[str, str], torch.Tensor] | None,
    ds,
    classifiers: Mapping[str, torch.nn.Module],
    *,
    split: str = "test",
) -> dict[str, float]:
    """The generation metrics of chapters 07 and 08, measured by the course's evaluation classifiers.

    Parameters
    ----------
    joint_samples: ``{modality: samples}``, rows aligned: row ``i`` of every modality comes from the same latent or
        noise draw (joint, unconditional generation). Each in the data's representation — images ``(N, 1, 8, 8)`` in
        [0, 1], token ids ``(N, TEXT_LENGTH)``, spectrograms ``(N, AUDIO_BINS, AUDIO_FRAMES)`` — with at least two
        modalities and at least ``ceil(n / 2)`` rows, ``n`` the size of ``split`` (135 for the test split).
    cross_samples: ``{(source, target): samples}`` or ``None``. Row ``i`` of ``samples`` is a ``target`` sample
        generated from row ``i`` of ``ds.<split>[source]``, so it should show the digit ``ds.<split>.label[i]``.
    ds: the multimodal digits, ``mmlib.data.load_multimodal_digits(device)``.
    classifiers: ``mmlib.classifiers.load_classifiers(device)``.
    split: where the real reference and the cross-generation sources come from (default ``"test"``).

    Returns a flat dict of floats (the names of COURSE.md's ``metrics.json``):

    - ``joint_coherence``: the fraction of rows whose predicted digits agree across *all* modalities of
      ``joint_samples`` (:func:`mmlib.metrics.joint_coherence`); about ``10^-(M-1)`` when the modalities ignore
      each other;
    - ``fd_<modality>``: the Fréchet distance (:func:`mmlib.metrics.frechet_distance`) between the classifier
      features of the first ``ceil(n / 2)`` joint samples and those of the odd rows of ``split``;
      ``fd_baseline_<modality>``: the same distance between the even and the odd rows of ``split``
      (= :func:`mmlib.metrics.frechet_baseline`), what a perfect generator scores at the same sample sizes. Lower is
      better; ``fd`` near ``fd_baseline`` means as close to the data as the data is to itself;
    - ``cross_coherence_<source>_to_<target>`` (when ``cross_samples`` is given): the fraction of generated targets
      whose predicted digit is the source's label (:func:`mmlib.metrics.cross_coherence`).

    Chapter 08 calls it with its own joint samples (and ``cross_samples=None`` when it has no conditional path).
    """
    from mmlib.metrics import cross_coherence, frechet_distance, joint_coherence

    split = check_choice(split, "split", ("train", "val", "test"))
    ds = _check_dataset(ds)
    if not isinstance(joint_samples, Mapping) or len(joint_samples) < 2:
        raise TypeError("joint_samples: expected a dict {modality: samples} with at least two modalities")
    if not isinstance(classifiers, Mapping):
        raise TypeError(f"classifiers: expected the dict of load_classifiers(), got {type(classifiers).__name__}")
    missing = [m for m in joint_samples if m not in classifiers]
    if missing:
        raise ValueError(f"classifiers: no classifier for the modalities {missing}")
    for m, classifier in classifiers.items():
        if not isinstance(classifier, Classifier):
            raise TypeError(f"classifiers[{m!r}]: expected an mmlib.classifiers.Classifier, "
                            f"got {type(classifier).__name__}")
    reference = ds.split(split)
    half = (len(reference) + 1) // 2
    for m, samples in joint_samples.items():
        check_tensor(samples, f"joint_samples[{m!r}]")
    rows = {m: int(v.shape[0]) for m, v in joint_samples.items()}
    if len(set(rows.values())) > 1 or min(rows.values()) < half:
        raise ValueError(f"joint_samples: expected row-aligned samples with at least {half} rows each (half the "
                         f"{split} split, for the Fréchet distances), got {rows}")
    metrics: dict[str, float] = {"joint_coherence": float(joint_coherence(classifiers, dict(joint_samples)))}
    for m, samples in joint_samples.items():
        real_even = classifiers[m].features(reference[m][0::2])
        real_odd = classifiers[m].features(reference[m][1::2])
        metrics[f"fd_{m}"] = frechet_distance(classifiers[m].features(samples[:half]), real_odd)
        metrics[f"fd_baseline_{m}"] = frechet_distance(real_even, real_odd)
    if cross_samples is not None:
        if not isinstance(cross_samples, Mapping):
            raise TypeError("cross_samples: expected a dict {(source, target): samples} or None")
        for key, samples in cross_samples.items():
            if not (isinstance(key, tuple) and len(key) == 2 and key[0] in reference.x and key[1] in classifiers):
                raise ValueError(f"cross_samples: expected (source, target) keys naming modalities, got {key!r}")
            check_tensor(samples, f"cross_samples[{key!r}]")
            if samples.shape[0] != len(reference):
                raise ValueError(f"cross_samples[{key!r}]: expected {len(reference)} rows (one per {split} sample), "
                                 f"got {samples.shape[0]}")
            source, target = key
            metrics[f"cross_coherence_{source}_to_{target}"] = float(
                cross_coherence(classifiers[target], samples, reference.label)
            )
    return metrics


# ---------------------------------------------------------------------------------------------------------------------
# The whole evaluation of a trained model, and the registered experiments
# ---------------------------------------------------------------------------------------------------------------------


def evaluate_mvae(
    model: MultimodalVAE, ds, classifiers: Mapping[str, torch.nn.Module], *, seed: int = 0
) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """Every figure of notebook 07 for a trained ``model``, on the test split, and the arrays behind them.

    Metrics: ``test_elbo`` (nats per example, :func:`elbo` given all modalities); :func:`evaluate_generation`'s
    ``joint_coherence``, ``fd_<m>``, ``fd_baseline_<m>`` and ``cross_coherence_<s>_to_<t>`` (``NUM_JOINT_SAMPLES``
    prior draws; one posterior draw per test example and source); ``latent_probe_acc``
    (:func:`latent_probe_accuracy`, all modalities); ``retrieval_p1_<s>_to_<t>`` and ``retrieval_p10_<s>_to_<t>``
    (:func:`retrieval_precision`). Arrays (COURSE.md's names): ``gen_<m>`` (joint samples, rows aligned),
    ``gen_<t>__from_<s>`` and ``label__from_<s>`` (cross-generation from the test split). Random draws come from
    ``seed`` only.
    """
    from mmlib.seed import make_generator

    model = _check_model(model)
    ds = _check_dataset(ds)
    seed = check_int(seed, "seed", low=0)
    generator = make_generator(seed, model.device)
    test = ds.test
    model.eval()
    metrics: dict[str, float] = {"test_elbo": float(elbo(model, test.x, generator=generator).mean())}
    joint = generate_joint(model, NUM_JOINT_SAMPLES, generator=generator)
    cross = generate_cross(model, test.x, generator=generator)
    metrics.update(evaluate_generation(joint, cross, ds, classifiers))
    metrics["latent_probe_acc"] = latent_probe_accuracy(model, ds)
    for source in model.names:
        for target in model.names:
            if source != target:
                precision = retrieval_precision(model, test, source, target, ks=(1, 10))
                metrics[f"retrieval_p1_{source}_to_{target}"] = precision[1]
                metrics[f"retrieval_p10_{source}_to_{target}"] = precision[10]
    arrays: dict[str, torch.Tensor] = {f"gen_{m}": v for m, v in joint.items()}
    for (source, target), value in cross.items():
        arrays[f"gen_{target}__from_{source}"] = value
        arrays[f"label__from_{source}"] = test.label
    return metrics, arrays


def run_mvae(
    fusion: str,
    *,
    seed: int = 0,
    config: MVAEConfig | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
):
    """Train the multimodal VAE with ``fusion`` (:func:`train_mvae`) and evaluate it (:func:`evaluate_mvae`).

    Returns ``(model, history, result)``; ``result`` is what experiment ``mvae-<fusion>`` writes. Notebook 07 calls
    this, so the notebook and ``python -m mmlib run mvae-<fusion> --seed S`` report the same numbers.
    """
    from mmlib.classifiers import load_classifiers
    from mmlib.data import load_multimodal_digits

    dev = resolve_device(device)
    model, history = train_mvae(fusion, config=config, seed=seed, device=dev, progress=progress)
    metrics, arrays = evaluate_mvae(model, load_multimodal_digits(dev), load_classifiers(dev), seed=seed + 2)
    metrics["final_train_loss"] = history.last("loss")
    return model, history, Result(metrics=metrics, arrays=arrays)


def mvae_experiment(fusion: str, seed: int = 0, device: torch.device | None = None) -> TrainedResult:
    """Experiment ``mvae-<fusion>``: :func:`run_mvae` with the default :class:`MVAEConfig`. For the notebook (not
    written): ``models["mvae"]``, the trained model, and ``details["history"]``, its training history."""
    model, history, result = run_mvae(fusion, seed=seed, device=device, progress=False)
    return TrainedResult(metrics=result.metrics, arrays=result.arrays, models={"mvae": model},
                         details={"history": history})


@register("mvae-poe", "Chapter 07: multimodal VAE, product of experts (MVAE); coherence, FD, probe, retrieval")
def mvae_poe_experiment(seed: int = 0, device: torch.device | None = None) -> TrainedResult:
    """Experiment ``mvae-poe``: :func:`mvae_experiment` with the product of experts."""
    return mvae_experiment("poe", seed, device)


@register("mvae-moe", "Chapter 07: multimodal VAE, mixture of experts (MMVAE); coherence, FD, probe, retrieval")
def mvae_moe_experiment(seed: int = 0, device: torch.device | None = None) -> TrainedResult:
    """Experiment ``mvae-moe``: :func:`mvae_experiment` with the mixture of experts."""
    return mvae_experiment("moe", seed, device)


@register("mvae-mopoe", "Chapter 07: multimodal VAE, mixture of products of experts (MoPoE); coherence, FD, probe, "
          "retrieval")
def mvae_mopoe_experiment(seed: int = 0, device: torch.device | None = None) -> TrainedResult:
    """Experiment ``mvae-mopoe``: :func:`mvae_experiment` with the mixture of products of experts."""
    return mvae_experiment("mopoe", seed, device)


# ---------------------------------------------------------------------------------------------------------------------
# Exercise checker
# ---------------------------------------------------------------------------------------------------------------------


@exercise("07.2")
def _check_precision_at_k(fn: Callable) -> str:
    """Exercise 07.2: retrieval precision at k in a latent space."""
    query = torch.tensor([[0.0, 0.0], [5.0, 5.0]])
    gallery = torch.tensor([[0.1, 0.0], [4.0, 4.0], [0.0, 0.3], [5.0, 5.2], [9.0, 9.0]])
    query_labels = torch.tensor([1, 2])
    gallery_labels = torch.tensor([1, 2, 3, 2, 2])
    cases = {1: 1.0, 2: 0.75, 3: 2 / 3}  # by hand: nearest of query 0 are rows 0, 2, 1; of query 1 rows 3, 1, 4
    for k, want in cases.items():
        got = float(fn(query, gallery, query_labels, gallery_labels, k))
        assert abs(got - want) < 1e-9, (
            f"for the 2-query example in the checker with k = {k} expected {want:.4f}, got {got:.4f}. Rank the "
            "gallery by Euclidean distance to each query, keep the k nearest, count those with the query's label, "
            "divide by k, and average over the queries."
        )
    gen = torch.Generator().manual_seed(7)
    query, gallery = torch.randn(30, 4, generator=gen), torch.randn(50, 4, generator=gen)
    query_labels, gallery_labels = torch.randint(3, (30,), generator=gen), torch.randint(3, (50,), generator=gen)
    for k in (1, 5, 50):
        want = precision_at_k(query, gallery, query_labels, gallery_labels, k)
        got = float(fn(query, gallery, query_labels, gallery_labels, k))
        assert abs(got - want) < 1e-9, f"on random data with k = {k} expected {want:.4f}, got {got:.4f}."
    return "P@k is the share of same-digit items among the k nearest neighbours of each query, averaged."
