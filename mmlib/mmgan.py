"""Multimodal GAN (notebook 08): image, caption and sound generated *jointly* from one noise vector.

Generator — a shared trunk and one head per modality (the weight sharing of coupled GANs, Liu & Tuzel, 2016: the
shared layers decide *what* is shown, the heads *how* each modality shows it)::

    h = trunk([onehot(y), z]),   y ~ Uniform{0..9},  z ~ N(0, I)
    image = sigmoid(head_image(h)),   sound = sigmoid(head_audio(h)),   caption = argmax(head_text(h)) per position

The noise vector carries a categorical part ``y``: within the minute of training the course allows, a generator whose
noise is only Gaussian learns each modality but rarely makes them agree (exercise 08.2). Captions are discrete; they
go to the discriminator as one-hot rows through the *straight-through* estimator (Bengio et al., 2013): exactly
one-hot going forward, the softmax's gradient going back.

Discriminator — chapter 06's projection discriminator for three modalities and a digit::

    D(x, y) = Σ_m ψ_m(φ_m(x_m)) + Σ_m ⟨E_m[y], φ_m(x_m)⟩ + Σ_{m<m'} ⟨A_{mm'} φ_m(x_m), φ_{m'}(x_{m'})⟩

a realism term per modality, a term for "shows digit y" per modality, and a compatibility term per pair: it sees all
modalities together, so it can reject a triple whose parts do not belong together. It also sees mismatched real
triples (one modality rolled by one row) as fakes. Training uses the digits of the real triples (the multimodal VAE of
chapter 07 does not). Losses: chapter 03's non-saturating game; stabiliser: R1 on the real triples; samples from an
exponential moving average of G.

Evaluation: exactly chapter 07's (:func:`mmlib.mvae.evaluate_generation`: joint coherence, Fréchet distance per
modality with its baseline), next to the multimodal VAE. Combination (the article's "combining generative models"):
the VAE's shared latent decoded by an adversarially trained image decoder — chapter 06's conditional GAN whose
condition is the latent code (:func:`fit_latent_decoder`) — for joint and for cross-modal generation.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from mmlib.cgan import (
    MODALITY_SHAPES,
    CGANConfig,
    FittedCGAN,
    GameConfig,
    discriminator_loss,
    fit_cgan,
    generate,
    generator_loss,
    mlp,
)
from mmlib.checks import (
    check_bool,
    check_choice,
    check_generator,
    check_indices,
    check_int,
    check_positive,
    check_probability,
    check_tensor,
)
from mmlib.data import MODALITIES, TEXT_LENGTH, TEXT_VOCAB
from mmlib.device import one_cpu_thread, resolve_device
from mmlib.exercises import exercise
from mmlib.experiments import Result, TrainedResult, register
from mmlib.train import History, make_optimizer, train

__all__ = [
    "NUM_DIGITS",
    "straight_through_argmax",
    "JointGenerator",
    "JointDiscriminator",
    "build_mmgan",
    "as_discriminator_input",
    "shuffle_modality",
    "mmgan_step",
    "MMGANConfig",
    "FittedMMGAN",
    "fit_mmgan",
    "generate_joint",
    "discriminator_scores",
    "LATENT_DECODER",
    "fit_latent_decoder",
    "generate_combined",
    "generate_combined_cross",
    "fit_vae_and_decoder",
    "run_mmgan",
    "mmgan_experiment",
]

_VOCAB = len(TEXT_VOCAB)
#: Categories of the noise's categorical part (the digits).
NUM_DIGITS: int = 10


def _check_triple(x: object, name: str, *, values: bool = True) -> dict[str, torch.Tensor]:
    """A dict with one row-aligned batch per modality; text as token ids ``(N, L)`` or one-hot rows ``(N, L, |V|)``."""
    if not isinstance(x, Mapping):
        raise TypeError(f"{name}: expected a dict {{modality: batch}} with keys {list(MODALITIES)}, "
                        f"got {type(x).__name__}")
    if set(x) != set(MODALITIES):
        raise ValueError(f"{name}: expected exactly the modalities {list(MODALITIES)}, got {sorted(x)}")
    out = {}
    for m in MODALITIES:
        if m == "text" and isinstance(x[m], torch.Tensor) and x[m].is_floating_point():
            out[m] = check_tensor(x[m], f"{name}['text']", shape=(None, TEXT_LENGTH, _VOCAB), finite=values)
        elif m == "text":
            t = check_tensor(x[m], f"{name}['text']", shape=(None, TEXT_LENGTH), integer=True, finite=False)
            if values and (int(t.min()) < 0 or int(t.max()) >= _VOCAB):
                raise ValueError(f"{name}['text']: expected token ids in 0..{_VOCAB - 1}")
            out[m] = t
        else:
            out[m] = check_tensor(x[m], f"{name}[{m!r}]", shape=(None, *MODALITY_SHAPES[m]), floating=True,
                                  finite=values)
    rows = {m: int(v.shape[0]) for m, v in out.items()}
    if len(set(rows.values())) != 1:
        raise ValueError(f"{name}: expected the same number of rows in every modality, got {rows}")
    return out


def _check_digits(y: object, n: int, name: str = "y") -> torch.Tensor:
    y = check_tensor(y, name, shape=(n,), integer=True)
    if int(y.min()) < 0 or int(y.max()) >= NUM_DIGITS:
        raise ValueError(f"{name}: expected digits in 0..{NUM_DIGITS - 1}, got {int(y.min())}..{int(y.max())}")
    return y


# ---------------------------------------------------------------------------------------------------------------------
# Build
# ---------------------------------------------------------------------------------------------------------------------


def straight_through_argmax(logits: torch.Tensor, *, tau: float = 1.0) -> torch.Tensor:
    """One-hot rows ``onehot(argmax logits)`` whose gradient is that of ``softmax(logits / tau)`` (the straight-through
    estimator, Bengio et al., 2013): ``y = onehot − stop_gradient(p) + p`` with ``p = softmax(logits / tau)``."""
    logits = check_tensor(logits, "logits", floating=True, finite=False)
    tau = check_positive(tau, "tau")
    soft = torch.softmax(logits / tau, dim=-1)
    hard = F.one_hot(soft.argmax(dim=-1), logits.shape[-1]).to(soft.dtype)
    return hard - soft.detach() + soft


class JointGenerator(nn.Module):
    """``[onehot(y), z] → trunk → {image, text, audio}``: a shared trunk and one head per modality (a hidden layer and
    an output layer). The text head emits a ``char_dim`` code per position, turned into token logits by one output
    layer shared by all positions. :meth:`forward` returns the discriminator's view: captions as one-hot rows."""

    def __init__(self, *, noise_dim: int = 22, hidden: int = 128, head_hidden: int = 128, text_hidden: int = 512,
                 char_dim: int = 32) -> None:
        super().__init__()
        self.noise_dim = check_int(noise_dim, "noise_dim", low=1)
        hidden = check_int(hidden, "hidden", low=1)
        self.char_dim = check_int(char_dim, "char_dim", low=1)
        widths = {"image": check_int(head_hidden, "head_hidden", low=1), "audio": head_hidden,
                  "text": check_int(text_hidden, "text_hidden", low=1)}
        sizes = {"image": 64, "text": TEXT_LENGTH * char_dim, "audio": int(np.prod(MODALITY_SHAPES["audio"]))}
        self.trunk = nn.Sequential(mlp([NUM_DIGITS + noise_dim, hidden, hidden]), nn.LeakyReLU(0.2))
        self.heads = nn.ModuleDict({m: mlp([hidden, widths[m], sizes[m]]) for m in MODALITIES})
        self.token_out = nn.Linear(char_dim, _VOCAB)

    @property
    def device(self) -> torch.device:
        return self.token_out.weight.device

    def draw_noise(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The noise of ``n`` samples: ``z ~ N(0, I)`` ``(n, noise_dim)`` and digits ``y ~ Uniform{0..9}`` ``(n,)``."""
        n = check_int(n, "n", low=1)
        z = torch.randn(n, self.noise_dim, device=self.device, generator=generator)
        y = torch.randint(0, NUM_DIGITS, (n,), device=self.device, generator=generator)
        return z, y

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        z = check_tensor(z, "z", shape=(None, self.noise_dim), floating=True, finite=False)
        if isinstance(y, torch.Tensor) and y.ndim == 1 and y.shape[0] != z.shape[0]:
            raise ValueError(f"z, y: expected one digit y per row of z, got {y.shape[0]} digits for {z.shape[0]} rows")
        y = check_indices(y, "y", NUM_DIGITS, shape=(z.shape[0],))  # range checked on the CPU only (no GPU sync)
        h = self.trunk(torch.cat([F.one_hot(y, NUM_DIGITS).to(z.dtype), z], dim=1))
        out = {m: torch.sigmoid(self.heads[m](h)).reshape(-1, *MODALITY_SHAPES[m]) for m in ("image", "audio")}
        codes = F.leaky_relu(self.heads["text"](h), 0.2).reshape(-1, TEXT_LENGTH, self.char_dim)
        out["text"] = straight_through_argmax(self.token_out(codes))
        return {m: out[m] for m in MODALITIES}


def as_discriminator_input(x: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A real or generated triple in the discriminator's view: captions as one-hot float rows ``(N, L, |V|)``."""
    x = _check_triple(x, "x")
    text = x["text"]
    if not text.is_floating_point():
        text = F.one_hot(text, _VOCAB).float()
    return {"image": x["image"], "text": text, "audio": x["audio"]}


class JointDiscriminator(nn.Module):
    """Chapter 06's projection discriminator for a triple and a digit:

        D(x, y) = Σ_m ψ_m(φ_m(x_m)) + Σ_m ⟨E_m[y], φ_m(x_m)⟩ + Σ_{m<m'} ⟨A_{mm'} φ_m(x_m), φ_{m'}(x_{m'})⟩.

    ``φ_text`` first embeds each position's (one-hot) token with one shared table."""

    def __init__(self, *, hidden: int = 128, branch: int = 64, char_dim: int = 32) -> None:
        super().__init__()
        hidden = check_int(hidden, "hidden", low=1)
        branch = check_int(branch, "branch", low=1)
        char_dim = check_int(char_dim, "char_dim", low=1)
        self.token_in = nn.Linear(_VOCAB, char_dim, bias=False)
        widths = {"image": 64, "text": TEXT_LENGTH * char_dim, "audio": int(np.prod(MODALITY_SHAPES["audio"]))}
        self.phi = nn.ModuleDict({m: nn.Sequential(mlp([widths[m], hidden, branch]), nn.LeakyReLU(0.2))
                                  for m in MODALITIES})
        self.psi = nn.ModuleDict({m: nn.Linear(branch, 1) for m in MODALITIES})
        self.embed = nn.ModuleDict({m: nn.Embedding(NUM_DIGITS, branch) for m in MODALITIES})
        self.pairs = [(a, b) for i, a in enumerate(MODALITIES) for b in MODALITIES[i + 1:]]
        self.compat = nn.ModuleDict({f"{a}-{b}": nn.Linear(branch, branch, bias=False) for a, b in self.pairs})

    def features(self, x: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``φ_m(x_m)`` for each modality of a triple in the discriminator's view."""
        inputs = {"image": x["image"].flatten(1), "text": self.token_in(x["text"]).flatten(1),
                  "audio": x["audio"].flatten(1)}
        return {m: self.phi[m](inputs[m]) for m in MODALITIES}

    def forward(self, x: Mapping[str, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        """Logits ``(N,)`` for triples ``x`` (in the discriminator's view, :func:`as_discriminator_input`) and
        digits ``y``."""
        return self.project(self.features(x), y)

    def project(self, h: Mapping[str, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        """Logits ``(N,)`` from the features ``h = {m: φ_m(x_m)}`` (:meth:`features`) and digits ``y``. A training
        step scores the real triples twice, as they are and with one modality rolled (:func:`shuffle_modality`), and
        computes ``φ`` of them once: the rolled triple's features are the rolled features."""
        logit = sum(self.psi[m](h[m]).squeeze(1) + (self.embed[m](y) * h[m]).sum(1) for m in MODALITIES)
        for a, b in self.pairs:
            logit = logit + (self.compat[f"{a}-{b}"](h[a]) * h[b]).sum(1)
        return logit


def build_mmgan(
    *, noise_dim: int = 22, hidden: int = 128, head_hidden: int = 128, text_hidden: int = 512, char_dim: int = 32,
    branch: int = 64, seed: int = 0, device: torch.device | str | None = None,
) -> tuple[JointGenerator, JointDiscriminator]:
    """A fresh joint generator and discriminator; the initial weights depend only on ``seed``."""
    seed = check_int(seed, "seed", low=0)
    dev = resolve_device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        G = JointGenerator(noise_dim=noise_dim, hidden=hidden, head_hidden=head_hidden, text_hidden=text_hidden,
                           char_dim=char_dim)
        D = JointDiscriminator(hidden=hidden, branch=branch, char_dim=char_dim)
    return G.to(dev), D.to(dev)


# ---------------------------------------------------------------------------------------------------------------------
# Estimate
# ---------------------------------------------------------------------------------------------------------------------


def shuffle_modality(x: Mapping[str, torch.Tensor], modality: str, shift: int = 1) -> dict[str, torch.Tensor]:
    """The triple with ``modality`` rolled by ``shift`` rows: every row now joins parts of two different samples (a
    *mismatched* triple, whose parts show the same digit only by chance)."""
    if not isinstance(x, Mapping):
        raise TypeError(f"x: expected a dict {{modality: batch}}, got {type(x).__name__}")
    modality = check_choice(modality, "modality", tuple(x))
    check_int(shift, "shift", low=1)
    checked = {m: check_tensor(v, f"x[{m!r}]", finite=False) for m, v in x.items()}
    rows = {m: int(v.shape[0]) if v.ndim else 0 for m, v in checked.items()}
    if len(set(rows.values())) != 1 or 0 in rows.values():
        raise ValueError(f"x: expected row-aligned non-empty batches, got {rows} rows")
    return {m: (v.roll(shift, dims=0) if m == modality else v) for m, v in x.items()}


def mmgan_step(
    generator: JointGenerator,
    discriminator: JointDiscriminator,
    g_optimizer: torch.optim.Optimizer,
    d_optimizer: torch.optim.Optimizer,
    *,
    r1_weight: float = 1.0,
    mismatch: bool = True,
    noise: torch.Generator | None = None,
    ema: JointGenerator | None = None,
    ema_decay: float = 0.99,
    r1_every: int = 1,
) -> Callable[..., dict[str, torch.Tensor]]:
    """The training step ``step(image, text, audio, label)`` on a minibatch of real triples and their digits:

    1. ``x̃ = G(z, y)`` with ``(z, y)`` drawn from ``noise``;
    2. one update of D on ``L_D + γ·R1``: real triples (with their digits) against generated ones (with theirs) and,
       with ``mismatch``, against real triples with one modality — a different one each step, in turn — rolled by one
       row (scored from the real triples' features ``φ_m``, that modality's rolled: no second pass); R1 sums the
       squared gradient over the three real inputs (the caption as one-hot floats), lazily as in chapter 06 (every
       ``r1_every``-th step, weight ``γ · r1_every``);
    3. one update of G on the non-saturating ``L_G``; 4. the EMA of G's weights.
    """
    if not isinstance(generator, JointGenerator) or not isinstance(discriminator, JointDiscriminator):
        raise TypeError("generator, discriminator: expected a JointGenerator and a JointDiscriminator")
    for opt, opt_name in ((g_optimizer, "g_optimizer"), (d_optimizer, "d_optimizer")):
        if not isinstance(opt, torch.optim.Optimizer):
            raise TypeError(f"{opt_name}: expected a torch.optim.Optimizer, got {type(opt).__name__}")
    if ema is not None and not isinstance(ema, JointGenerator):
        raise TypeError(f"ema: expected None or a JointGenerator (a copy of generator), got {type(ema).__name__}")
    noise = check_generator(noise, "noise")
    r1_weight = check_positive(r1_weight, "r1_weight", allow_zero=True)
    ema_decay = check_probability(ema_decay, "ema_decay")
    r1_every = check_int(r1_every, "r1_every", low=1)
    mismatch = check_bool(mismatch, "mismatch")
    g_params = list(generator.parameters())
    ema_params = list(ema.parameters()) if ema is not None else []
    counter: dict[str, object] = {"step": 0, "r1": None}  # steps taken; the latest R1 (reported when skipped)

    def step(
        image: torch.Tensor, text: torch.Tensor, audio: torch.Tensor, label: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        # shapes and dtypes every step; the id ranges only on the CPU (check_indices), no host sync on a GPU
        batch = _check_triple({"image": image, "text": text, "audio": audio}, "batch", values=False)
        image, text, audio = batch["image"], batch["text"], batch["audio"]
        if text.is_floating_point():
            raise TypeError("batch['text']: expected token ids (N, TEXT_LENGTH), got floats")
        check_indices(text, "batch['text']", _VOCAB)
        label = check_indices(label, "label", NUM_DIGITS, shape=(image.shape[0],))
        with_r1 = r1_weight > 0 and counter["step"] % r1_every == 0
        z, y = generator.draw_noise(image.shape[0], noise)
        fake = generator(z, y)
        d_optimizer.zero_grad(set_to_none=True)
        real = {"image": image, "text": F.one_hot(text, _VOCAB).float(), "audio": audio}
        real = {m: v.detach().requires_grad_(with_r1) for m, v in real.items()}
        h_real = discriminator.features(real)  # φ of the real triples, shared by the mismatched ones
        real_logits = discriminator.project(h_real, label)
        fake_logits = discriminator({m: v.detach() for m, v in fake.items()}, y)
        if mismatch:
            rolled = MODALITIES[counter["step"] % len(MODALITIES)]
            wrong = shuffle_modality(h_real, rolled)  # φ(rolled triple) = the real features, one of them rolled
            fake_logits = torch.cat([fake_logits, discriminator.project(wrong, label)])
        d_loss = discriminator_loss(real_logits, fake_logits)
        if with_r1:
            grads = torch.autograd.grad(real_logits.sum(), list(real.values()), create_graph=True)
            r1 = 0.5 * sum(g.pow(2).flatten(1).sum(1) for g in grads).mean()
            counter["r1"] = r1.detach()
            (d_loss + r1_weight * r1_every * r1).backward()
        else:
            d_loss.backward()
        d_optimizer.step()
        g_optimizer.zero_grad(set_to_none=True)
        g_loss = generator_loss(discriminator(fake, y))
        g_loss.backward()
        g_optimizer.step()
        if ema is not None:
            with torch.no_grad():
                torch._foreach_lerp_(ema_params, g_params, 1.0 - ema_decay)
        counter["step"] += 1
        r1 = counter["r1"] if counter["r1"] is not None else torch.zeros((), device=image.device)
        return {"d_loss": d_loss.detach(), "g_loss": g_loss.detach(), "r1": r1}

    return step


@dataclass(frozen=True)
class MMGANConfig(GameConfig):
    """Hyper-parameters of the joint GAN (the defaults are the chapter's): chapter 06's :class:`~mmlib.cgan.GameConfig`
    plus the networks' sizes. R1 is computed on every step here: lazily (every 4th step, as in chapter 06) the joint
    coherence of seed 0 fell from 0.91 to 0.87."""

    r1_every: int = 1
    noise_dim: int = 22
    hidden: int = 128
    head_hidden: int = 128
    text_hidden: int = 512
    char_dim: int = 32
    branch: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("noise_dim", "hidden", "head_hidden", "text_hidden", "char_dim", "branch"):
            check_int(getattr(self, name), name, low=1)


@dataclass
class FittedMMGAN:
    """A trained joint GAN: the (EMA) generator that samples, the discriminator and the training curves."""

    generator: JointGenerator
    discriminator: JointDiscriminator
    history: History


def fit_mmgan(
    data: Mapping[str, torch.Tensor], labels: torch.Tensor, *, config: MMGANConfig | None = None, seed: int = 0,
    device: torch.device | str | None = None, progress: bool = True,
) -> FittedMMGAN:
    """Train the joint GAN on the row-aligned real triples ``data`` (``{"image", "text", "audio"}``) and their digits
    ``labels``, all on ``device``. Everything random (weights, minibatches, noise) follows ``seed``."""
    config = MMGANConfig() if config is None else config
    if not isinstance(config, MMGANConfig):
        raise TypeError(f"config: expected an MMGANConfig, got {type(config).__name__}")
    data = _check_triple(data, "data")
    if data["text"].is_floating_point():
        raise TypeError("data['text']: expected token ids (int64), as in the dataset")
    labels = _check_digits(labels, int(data["image"].shape[0]), "labels")
    seed = check_int(seed, "seed", low=0)
    dev = resolve_device(device)
    if any(v.device != dev for v in data.values()) or labels.device != dev:
        raise ValueError(f"data, labels: expected tensors on {dev}")
    G, D = build_mmgan(noise_dim=config.noise_dim, hidden=config.hidden, head_hidden=config.head_hidden,
                       text_hidden=config.text_hidden, char_dim=config.char_dim, branch=config.branch, seed=seed,
                       device=dev)
    g_opt = make_optimizer(G.parameters(), lr=config.lr, betas=config.betas)
    d_opt = make_optimizer(D.parameters(), lr=config.lr, betas=config.betas)
    noise = torch.Generator(device=dev)
    noise.manual_seed(seed + 1)
    ema = copy.deepcopy(G).requires_grad_(False) if config.ema_decay > 0 else None
    step = mmgan_step(G, D, g_opt, d_opt, r1_weight=config.r1_weight, r1_every=config.r1_every,
                      mismatch=config.mismatch, noise=noise, ema=ema, ema_decay=config.ema_decay)
    with one_cpu_thread(dev):
        history = train(step, [data[m] for m in MODALITIES] + [labels], steps=config.steps,
                        batch_size=config.batch_size, log_every=50, seed=seed + 2, desc="multimodal GAN",
                        progress=progress)
    sampler = ema if ema is not None else G
    sampler.eval()
    D.eval()
    return FittedMMGAN(sampler, D, history)


# ---------------------------------------------------------------------------------------------------------------------
# Evaluate
# ---------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def generate_joint(generator: JointGenerator, n: int, *, seed: int = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``n`` joint samples in the data's representation (captions as token ids) and the digits ``y`` of their noise;
    row ``i`` of every modality comes from the same noise ``(z_i, y_i)``."""
    if not isinstance(generator, JointGenerator):
        raise TypeError(f"generator: expected a JointGenerator, got {type(generator).__name__}")
    n = check_int(n, "n", low=1)
    seed = check_int(seed, "seed", low=0)
    gen = torch.Generator(device=generator.device)
    gen.manual_seed(seed)
    z, y = generator.draw_noise(n, gen)
    out = generator(z, y)
    out["text"] = out["text"].argmax(dim=-1)
    return out, y


@torch.no_grad()
def discriminator_scores(discriminator: JointDiscriminator, x: Mapping[str, torch.Tensor],
                         y: torch.Tensor) -> torch.Tensor:
    """``D``'s logits ``(N,)`` for triples in the data's representation and their digits ``y``."""
    if not isinstance(discriminator, JointDiscriminator):
        raise TypeError(f"discriminator: expected a JointDiscriminator, got {type(discriminator).__name__}")
    view = as_discriminator_input(x)
    y = _check_digits(y, int(view["image"].shape[0]))
    return discriminator(view, y)


# ---------------------------------------------------------------------------------------------------------------------
# Combining generative models: the VAE's latent, decoded by an adversarially trained image decoder
# ---------------------------------------------------------------------------------------------------------------------

#: The recipe of the adversarial image decoder (chapter 06's conditional GAN, condition = the latent code).
LATENT_DECODER: CGANConfig = CGANConfig(steps=1000)


def fit_latent_decoder(
    vae: nn.Module, data: Mapping[str, torch.Tensor], *, target: str = "image", config: CGANConfig | None = None,
    seed: int = 0, progress: bool = True,
) -> FittedCGAN:
    """Train ``G(ε, z)``: a conditional GAN (:func:`mmlib.cgan.fit_cgan`) from the multimodal VAE's latent code ``z`` to
    ``target``. For every training triple ``X``, one draw ``z ~ q(z | X)`` from the VAE's fused posterior (the VAE
    stays frozen) is the condition and ``X[target]`` the sample to produce: a decoder trained by a discriminator
    instead of by a likelihood."""
    from mmlib.fusion import mixture_sample
    from mmlib.mvae import MultimodalVAE

    if not isinstance(vae, MultimodalVAE):
        raise TypeError(f"vae: expected a MultimodalVAE, got {type(vae).__name__}")
    data = _check_triple(data, "data")
    target = check_choice(target, "target", ("image", "audio"))
    seed = check_int(seed, "seed", low=0)
    gen = torch.Generator(device=vae.device)
    gen.manual_seed(seed + 11)
    with torch.no_grad():
        z, _ = mixture_sample(*vae.posterior(dict(data)), generator=gen)
    return fit_cgan(vae.latent_dim, target, z, data[target], config=LATENT_DECODER if config is None else config,
                    seed=seed, device=vae.device, progress=progress)


def _check_combination(vae: object, decoder: object) -> None:
    from mmlib.mvae import MultimodalVAE

    if not isinstance(vae, MultimodalVAE):
        raise TypeError(f"vae: expected an mmlib.mvae.MultimodalVAE, got {type(vae).__name__}")
    if not isinstance(decoder, FittedCGAN):
        raise TypeError(f"decoder: expected the FittedCGAN of fit_latent_decoder, got {type(decoder).__name__}")


@torch.no_grad()
def generate_combined(vae: nn.Module, decoder: FittedCGAN, n: int, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """Joint samples of the combination: ``z ~ p(z)``, the VAE's (learned) prior; the VAE's decoders give every
    modality but the decoder's target, which the adversarial decoder draws from ``z``. Rows aligned across
    modalities."""
    _check_combination(vae, decoder)
    n = check_int(n, "n", low=1)
    seed = check_int(seed, "seed", low=0)
    gen = torch.Generator(device=vae.device)
    gen.manual_seed(seed)
    z = vae.prior.sample(n, generator=gen).to(vae.device)
    out = vae.decode(z, [m for m in vae.names if m != decoder.target])
    out[decoder.target] = generate(decoder.generator, z, seed=seed + 1)[:, 0]
    return {m: out[m] for m in MODALITIES}


@torch.no_grad()
def generate_combined_cross(vae: nn.Module, decoder: FittedCGAN, source: str, x: torch.Tensor, *,
                            seed: int = 0) -> torch.Tensor:
    """Cross-modal generation by the combination: ``z ~ q(z | x_source)`` (the VAE's encoder), then the adversarial
    decoder draws its target from ``z``. Row ``i`` comes from ``x[i]``."""
    from mmlib.fusion import mixture_sample

    _check_combination(vae, decoder)
    source = check_choice(source, "source", MODALITIES)
    seed = check_int(seed, "seed", low=0)
    x = vae.check_inputs({source: check_tensor(x, "x", finite=False)}, "x")
    gen = torch.Generator(device=vae.device)
    gen.manual_seed(seed)
    z, _ = mixture_sample(*vae.posterior(x), generator=gen)
    return generate(decoder.generator, z, seed=seed + 1)[:, 0]


# ---------------------------------------------------------------------------------------------------------------------
# The experiment
# ---------------------------------------------------------------------------------------------------------------------

def fit_vae_and_decoder(fusion: str = "moe", *, seed: int = 0, device: torch.device | str | None = None):
    """Chapter 07's multimodal VAE (:func:`mmlib.mvae.run_mvae` with ``fusion``, evaluated) and then its adversarial
    image decoder (:func:`fit_latent_decoder`, trained on the training split); returns ``(vae, vae_result, decoder)``.
    The part of :func:`run_mmgan` that trains beside the GAN."""
    from mmlib.data import load_multimodal_digits
    from mmlib.mvae import run_mvae

    dev = resolve_device(device)
    with one_cpu_thread(dev):
        vae, _, vae_result = run_mvae(fusion, seed=seed, device=dev, progress=False)
        decoder = fit_latent_decoder(vae, load_multimodal_digits(dev).train.x, seed=seed, progress=False)
    return vae, vae_result, decoder


#: Sources of the cross-modal comparison between the VAE's image decoder and the adversarial one.
CROSS_SOURCES: tuple[str, ...] = ("text", "audio")


def run_mmgan(
    *, seed: int = 0, device: torch.device | str | None = None, progress: bool = True,
    config: MMGANConfig | None = None, vae_fusion: str = "moe",
) -> tuple[FittedMMGAN, object, FittedCGAN, Result]:
    """Train the joint GAN, the multimodal VAE (``vae_fusion``, chapter 07's :func:`mmlib.mvae.run_mvae`) and the
    adversarial latent decoder; evaluate them with chapter 07's :func:`mmlib.mvae.evaluate_generation`.

    Returns ``(gan, vae, decoder, result)``. Metrics — for the GAN (``gan_``), the VAE (``vae_``) and the combination
    (``combined_``: the VAE with the adversarial image decoder): ``joint_coherence``, ``fd_<modality>`` and
    ``fd_baseline_<modality>`` of joint samples; for cross-modal generation of images from ``s`` in
    :data:`CROSS_SOURCES`, ``vae_cross_coherence_<s>_to_image``, ``combined_cross_coherence_<s>_to_image`` and the
    FD of those images to the real test images, ``vae_cross_fd_<s>_to_image`` and ``combined_cross_fd_<s>_to_image``.
    The discriminator on real test triples: ``d_matched`` (mean logit), ``d_mismatched_<modality>`` (one modality
    rolled by one row) and ``d_prefers_matched_<modality>`` (fraction of rows scored higher when matched).
    Arrays: ``gen_<modality>`` and ``gen_label`` (the GAN's joint samples and the digits of their noise, rows
    aligned), ``vae_gen_<modality>`` and ``combined_gen_<modality>``.
    """
    from mmlib.classifiers import load_classifiers
    from mmlib.data import load_multimodal_digits
    from mmlib.metrics import cross_coherence, frechet_distance
    from mmlib.mvae import NUM_JOINT_SAMPLES, evaluate_generation
    from mmlib.parallel import run_jobs

    seed = check_int(seed, "seed", low=0)
    vae_fusion = check_choice(vae_fusion, "vae_fusion", ("poe", "moe", "mopoe"))
    dev = resolve_device(device)
    ds = load_multimodal_digits(dev)
    classifiers = load_classifiers(dev)
    metrics: dict[str, float] = {}
    arrays: dict[str, torch.Tensor] = {}
    # The GAN and the VAE (then its adversarial decoder) do not depend on each other: they train side by side, one
    # per CPU core (mmlib.parallel; the same numbers as one after the other).
    gan, (vae, vae_result, decoder) = run_jobs(
        [(fit_mmgan, {"data": ds.train.x, "labels": ds.train.label, "config": config, "seed": seed, "device": dev,
                      "progress": False}),
         (fit_vae_and_decoder, {"fusion": vae_fusion, "seed": seed, "device": dev})],
        device=dev, progress=progress, desc="GAN | VAE + decoder",
    )
    with one_cpu_thread(dev):
        joint, digits = generate_joint(gan.generator, NUM_JOINT_SAMPLES, seed=seed + 3)
        metrics.update({f"gan_{k}": v for k, v in evaluate_generation(joint, None, ds, classifiers).items()})
        arrays.update({f"gen_{m}": v for m, v in joint.items()})
        arrays["gen_label"] = digits

        test = dict(ds.test.x)
        matched = discriminator_scores(gan.discriminator, test, ds.test.label)
        metrics["d_matched"] = float(matched.mean())
        for m in MODALITIES:
            wrong = discriminator_scores(gan.discriminator, shuffle_modality(test, m), ds.test.label)
            metrics[f"d_mismatched_{m}"] = float(wrong.mean())
            metrics[f"d_prefers_matched_{m}"] = float((matched > wrong).double().mean())

        for k in ("joint_coherence", *[f"fd_{m}" for m in MODALITIES], *[f"fd_baseline_{m}" for m in MODALITIES]):
            metrics[f"vae_{k}"] = float(vae_result.metrics[k])
        arrays.update({f"vae_gen_{m}": torch.as_tensor(vae_result.arrays[f"gen_{m}"]) for m in MODALITIES})

        combined = generate_combined(vae, decoder, NUM_JOINT_SAMPLES, seed=seed + 4)
        metrics.update({f"combined_{k}": v for k, v in evaluate_generation(combined, None, ds, classifiers).items()})
        arrays.update({f"combined_gen_{m}": v for m, v in combined.items()})

        image_clf = classifiers["image"]
        real_features = image_clf.features(ds.test["image"])
        for s in CROSS_SOURCES:
            by_vae = torch.as_tensor(vae_result.arrays[f"gen_image__from_{s}"]).to(dev)
            by_combination = generate_combined_cross(vae, decoder, s, ds.test[s], seed=seed + 5)
            for name, images in (("vae", by_vae), ("combined", by_combination)):
                metrics[f"{name}_cross_coherence_{s}_to_image"] = cross_coherence(image_clf, images, ds.test.label)
                metrics[f"{name}_cross_fd_{s}_to_image"] = frechet_distance(image_clf.features(images), real_features)
    return gan, vae, decoder, Result(metrics=metrics, arrays=arrays)


@register("mmgan", "Chapter 08: joint GAN for image, caption and sound vs the multimodal VAE, and their combination")
def mmgan_experiment(seed: int = 0, device: torch.device | None = None) -> TrainedResult:
    """Experiment ``mmgan``: :func:`run_mmgan` with the chapter's settings. For the notebook (not written):
    ``models["gan"]``, ``models["vae"]`` and ``models["decoder"]``, what :func:`run_mmgan` trained."""
    from mmlib.seed import seed_everything

    seed_everything(seed)
    gan, vae, decoder, result = run_mmgan(seed=seed, device=device, progress=False)
    return TrainedResult(metrics=result.metrics, arrays=result.arrays,
                         models={"gan": gan, "vae": vae, "decoder": decoder})


# ---------------------------------------------------------------------------------------------------------------------
# Exercises
# ---------------------------------------------------------------------------------------------------------------------


@exercise("08.1")
def _check_shuffle(fn: Callable) -> str:
    """Exercise 08.1: mismatched triples — roll one modality by one row, keep the others."""
    x = {"image": torch.arange(4.0).reshape(4, 1, 1, 1), "text": torch.arange(4).reshape(4, 1),
         "audio": torch.arange(4.0).reshape(4, 1, 1) * 10}
    got = fn(x, "text")
    assert isinstance(got, dict) and set(got) == set(x), "return a dict with the same three modalities."
    assert torch.equal(got["text"].flatten(), torch.tensor([3, 0, 1, 2])), (
        f"the text rows should be rolled by one (row i gets row i−1's caption: [3, 0, 1, 2]), got "
        f"{got['text'].flatten().tolist()}. torch.roll(t, 1, dims=0) does it."
    )
    assert torch.equal(got["image"], x["image"]) and torch.equal(got["audio"], x["audio"]), (
        "only the chosen modality moves: the other two keep their rows."
    )
    assert torch.equal(x["text"].flatten(), torch.arange(4)), "do not modify the input dict or its tensors in place."
    return "every row now joins parts of two different samples — the negatives that teach D what belongs together."
