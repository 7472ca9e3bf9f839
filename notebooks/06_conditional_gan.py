# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown] slideshow={"slide_type": "slide"}
# # 06 · Conditional GANs across modalities
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/mmgen-course/mmgen-course/blob/main/notebooks/06_conditional_gan.ipynb)
#
# The article (§3.2.2) ends its list of generators with the **conditional GAN**, "whose condition usually comes from
# another modality". In chapter 03 the generator turned noise into samples; here it turns *noise and a sample of
# another modality* into a sample: a caption becomes a handwritten digit, or a sound.
#
# By the end of this notebook you will
# - know how a whole sample (a caption), not just a label, conditions both players of a GAN through a small
#   condition encoder, and why we use a *projection* discriminator;
# - have written one training step — non-saturating losses, mismatched pairs, R1 penalty, mode seeking — and checked
#   it against `mmlib.cgan`;
# - measure a conditional generator the way the course does: conditional accuracy with the evaluation classifiers,
#   several samples per condition, and the Fréchet distance per digit against its real-versus-real baseline;
# - see (and hear) why a generator that ignores its noise can score a perfect accuracy and still fail.

# %% tags=["setup"] slideshow={"slide_type": "skip"}
# Setup — identical in every notebook. On Colab it fetches the course (code + data) once; elsewhere it only imports.
import os
import subprocess
import sys
from pathlib import Path

try:
    import google.colab  # noqa: F401  (only importable on Colab)

    ON_COLAB = True
except ImportError:
    ON_COLAB = False
COURSE_SOURCE = os.environ.get("MMLIB_SOURCE", "https://github.com/mmgen-course/mmgen-course")
if ON_COLAB:
    course_dir = Path.cwd() / "mmgen-course"
    if not course_dir.exists():
        subprocess.run(["git", "clone", "--quiet", "--depth", "1", COURSE_SOURCE, str(course_dir)], check=True)
    # Put the course's mmlib first on the path; Colab's own torch, numpy and ipywidgets stay untouched.
    if str(course_dir) not in sys.path:
        sys.path.insert(0, str(course_dir))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(course_dir), os.environ.get("PYTHONPATH", "")])

import matplotlib.pyplot as plt
import numpy as np
import torch

import mmlib
from mmlib.device import describe_device, get_device
from mmlib.plot import use_course_style
from mmlib.seed import seed_everything

seed_everything(0)
device = get_device()
use_course_style()
print(f"mmlib {mmlib.__version__} · torch {torch.__version__} · device: {describe_device(device)}")

# %% [markdown] slideshow={"slide_type": "slide"}
# ## The idea
#
# A conditional generator draws from $p(x \mid c)$ instead of $p(x)$:
#
# $$\tilde x = G(z, c), \qquad z \sim \mathcal N(0, I),$$
#
# and its discriminator $D(x, c)$ judges **pairs**: is $x$ a real sample, *and does it go with* $c$? Mirza & Osindero
# (2014) fed a class label as $c$. The article's point is that $c$ can be a sample of *another modality*: here a
# caption ("die Ziffer 7", "TRES", "number nine") conditions
#
# | pair | condition $c$ | target $x$ |
# |---|---|---|
# | caption → image | 16 character tokens | an 8×8 handwritten digit |
# | caption → sound | 16 character tokens | a 28×32 spectrogram of a two-note motif |
#
# The modalities of the course's data share only the digit; everything else (handwriting, language, pitch, tempo)
# is each modality's own style. So a good $G$ must get the digit from the caption *and* draw the style from its
# noise — many different images for one caption.

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 1 · Preprocess
#
# We load the paired data onto the device, and the evaluation classifiers that will judge the results.

# %%
from mmlib.classifiers import load_classifiers
from mmlib.data import SAMPLE_RATE, decode_text, load_multimodal_digits

ds = load_multimodal_digits(device)
classifiers = load_classifiers(device)
print({name: len(ds.split(name)) for name in ("train", "val", "test")}, "pairs per split")

# %% slideshow={"slide_type": "subslide"}
show = torch.stack([torch.nonzero(ds.train.label == d)[0, 0] for d in (1, 4, 7, 9)])
fig, axes = plt.subplots(2, 4, figsize=(11, 5.2))
for j, i in enumerate(show.tolist()):
    axes[0, j].imshow(ds.train["image"][i, 0].cpu(), cmap="gray_r", vmin=0, vmax=1)
    axes[0, j].set_title(f"“{decode_text(ds.train['text'][i])[0]}”", fontsize=12)
    axes[1, j].imshow(ds.train["audio"][i].cpu(), origin="lower", aspect="auto", cmap="magma", vmin=0, vmax=1)
    for ax in axes[:, j]:
        ax.set_xticks([])
        ax.set_yticks([])
axes[0, 0].set_ylabel("image")
axes[1, 0].set_ylabel("spectrogram\n(frequency ↑, time →)")
fig.suptitle("Conditions (captions) and the targets paired with them")
fig.tight_layout()
plt.show()

# %% [markdown] slideshow={"slide_type": "subslide"}
# **Representations.** Images and spectrograms are already numbers in $[0, 1]$; the networks read them flattened.
# A caption is 16 token ids; the condition encoder reads it one-hot, $\mathrm{onehot}(t_1) \,\|\, \dots \,\|\,
# \mathrm{onehot}(t_{16})$ (1,168 numbers). A linear layer on that vector just adds up one column of its weight per
# position, $W\,\mathrm{onehot}(t) = \sum_l W_l[:, t_l]$, so `mmlib.cgan.TokenLinear` looks those columns up instead
# of multiplying by a vector of zeros. A self-check confirms the two agree.

# %%
from mmlib.cgan import TokenLinear, to_vector
from mmlib.data import TEXT_LENGTH, TEXT_VOCAB

layer = TokenLinear(TEXT_LENGTH, len(TEXT_VOCAB), 8).to(device)
tokens = ds.train["text"][:100]
by_lookup = layer(tokens)
by_matmul = to_vector(tokens, "text") @ layer.as_matrix().T + layer.bias
assert torch.allclose(by_lookup, by_matmul, atol=1e-5), "looking up columns = a linear layer on the one-hot caption"

# %% [markdown] slideshow={"slide_type": "subslide"}
# **What "held-out" means here.** We train on the training pairs and evaluate on the conditions of the test split.
# The captions come from a small grammar (4 languages × 3 templates × 3 letter cases × 10 digits: 360 combinations,
# 357 distinct, since "six" is English and French), so nearly every test caption also occurs in training: for
# captions, "held out" means new noise and new pairings, not new words. (Exercise 06.3 asks what it would take to
# test the generator on captions it has never read.)

# %%
train_captions = set(map(tuple, ds.train["text"].tolist()))
seen = float(np.mean([tuple(t) in train_captions for t in ds.test["text"].tolist()]))
print(f"{seen:.1%} of the test captions also occur in the training split")
assert seen > 0.9, "nearly every test caption also occurs in training"

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 2 · Build
#
# **Condition encoder.** $e(c)$ is a one-hidden-layer MLP from the caption to a vector. Each player has its own:
# the generator's $e_G$ learns what it needs to *draw*, the discriminator's $e_D$ what it needs to *check*.
#
# **Generator.** An MLP on the concatenation of noise and condition code, squashed into $[0, 1]$ like the data:
#
# $$G(z, c) = \sigma\big(\mathrm{MLP}([z,\; e_G(c)])\big), \qquad z \in \mathbb R^{16}.$$
#
# **Projection discriminator** (Miyato & Koyama, 2018). With features $\phi(x) \in \mathbb R^{256}$ of the target,
#
# $$D(x, c) = \underbrace{\psi(\phi(x))}_{\text{does } x \text{ look real?}}
#   + \underbrace{\langle e_D(c),\, \phi(x)\rangle}_{\text{does } x \text{ fit } c\,?}.$$

# %% [markdown] slideshow={"slide_type": "subslide"}
# **Why projection rather than concatenation?** Feeding $[\phi(x), e_D(c)]$ into an MLP also works in principle, but
# the network may learn to judge realism and mostly ignore $c$. The optimal discriminator's logit is
# $\log \frac{p_{\text{data}}(x \mid c)}{p_G(x \mid c)}
#  = \log \frac{p_{\text{data}}(x)}{p_G(x)} + \log \frac{p_{\text{data}}(c \mid x)}{p_G(c \mid x)}$: a term for $x$
# alone plus a term for how well $c$ fits $x$. The projection discriminator has exactly these two terms, and makes
# the second one an inner product — the condition *must* interact with every feature of $x$ (Miyato & Koyama show
# it is exact when $p(c \mid x)$ is log-linear in the features).

# %%
from mmlib.cgan import RECIPE, build_cgan

G, D = build_cgan("text", "image", noise_dim=RECIPE.noise_dim, embed_dim=RECIPE.embed_dim, hidden=RECIPE.hidden,
                  seed=0, device=device)
for name, net in (("generator", G), ("discriminator", D)):
    print(f"{name:>13}: {sum(p.numel() for p in net.parameters()):,} parameters")

c, x = ds.train["text"][:5], ds.train["image"][:5]
h = D.phi(x.flatten(1))
by_hand = D.psi(h).squeeze(1) + (D.encoder(c) * h).sum(1)
assert torch.allclose(D(x, c), by_hand, atol=1e-5), "D(x, c) = ψ(φ(x)) + ⟨e_D(c), φ(x)⟩"

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 3 · Estimate
#
# **Losses** — chapter 03's non-saturating game, now on pairs (`mmlib.cgan.discriminator_loss` and
# `generator_loss`, the same functions as chapter 03's), with $D$ giving logits and $\mathrm{softplus}(t) = \log(1 + e^t)$:
#
# $$L_D = \mathbb E\big[\mathrm{softplus}(-D(x, c))\big] + \mathbb E\big[\mathrm{softplus}(D(\tilde x, c))\big],
# \qquad L_G = \mathbb E\big[\mathrm{softplus}(-D(\tilde x, c))\big].$$
#
# Three additions help the game along on only 1,259 training pairs:
#
# 1. **Mismatched pairs** (Reed et al., 2016). A real target with the *wrong* caption is a fake too: $D$ also sees
#    $(x_i, c_{i-1})$ and must reject it. Without this, $D$ learns what fits a caption only through $G$'s (poor)
#    early samples; with it, the real data teach it directly. Neighbouring rows of a random minibatch show the same
#    digit about one time in ten, so about a tenth of these pairs match by chance: a little label noise.
# 2. **R1 penalty** (Mescheder et al., 2018): $\frac{\gamma}{2}\,\mathbb E_{\text{data}}\|\nabla_x D(x, c)\|^2$
#    added to $L_D$ ($\gamma = 1$). It keeps $D$ flat on the real data, so $D$ cannot build a cliff that sends $G$'s
#    gradients flying (exercise 06.2 asks what happens without it). It costs a second backward pass through $D$, so
#    the full runs compute it *lazily* (Karras et al., 2020): on every 4th step only, with weight $4\gamma$ — the same
#    average pull for a quarter of the cost.
# 3. **Mode seeking** (Mao et al., 2019). A conditional generator can ignore its noise — the caption alone already
#    gives it something plausible to draw. For two noises $z_1, z_2$ with the same caption,
#    $L_G \mathrel{+}= \lambda \Big/ \mathbb E_c\Big[\frac{\overline{|G(z_1, c) - G(z_2, c)|}}{\overline{|z_1 - z_2|}}\Big]$
#    ($\lambda = 0.02$; a bar is the mean over coordinates) grows when the samples stop moving with the noise.
#
# Finally we **sample from an exponential moving average** of $G$'s weights,
# $\theta_{\text{EMA}} \leftarrow 0.99\,\theta_{\text{EMA}} + 0.01\,\theta_G$ after each step (Karras et al., 2018):
# it smooths the last few hundred steps of the game's oscillation.

# %%
digit_share = torch.bincount(ds.train.label, minlength=10).double() / len(ds.train.label)
assert 0.09 < float((digit_share**2).sum()) < 0.11, "two random training pairs show the same digit about 1 time in 10"

# %% [markdown] slideshow={"slide_type": "subslide"}
# **One training step, written out.** We write the whole step here, then check it against `mmlib.cgan.cgan_step`
# over a few steps from the same start. One difference: the inline step computes $\varphi(x)$ of the real targets
# twice, once with their captions and once with the rolled ones, as the loss reads; `cgan_step` computes it once and
# uses it for both scores: one pass through $\varphi$ fewer per step. The gradients are the same, but their sums run
# in another order, so the two agree to rounding, not bit for bit.

# %%
import copy

from mmlib.cgan import discriminator_loss, generator_loss
from mmlib.train import make_optimizer


def inline_step(G, D, G_ema, g_opt, d_opt, c, x, noise, gamma=1.0, lam=0.02, beta=0.99):
    """One D update and one G update on a minibatch of pairs (c, x)."""
    n, half = x.shape[0], x.shape[0] // 2
    z = torch.randn(n, G.noise_dim, device=x.device, generator=noise)
    c_fake = torch.cat([c[:half], c[:half]])  # rows i and i + n/2 share a caption (for mode seeking)
    fake = G(z, c_fake)
    # discriminator: real pairs vs generated pairs and mismatched real pairs, + R1 on the real pairs
    d_opt.zero_grad()
    x = x.detach().requires_grad_(True)
    e = D.encoder(c)
    real_logits = D.score(x, e)
    fake_logits = torch.cat([D.score(fake.detach(), torch.cat([e[:half], e[:half]])),
                             D.score(x.detach(), e.roll(1, dims=0))])
    (grad,) = torch.autograd.grad(real_logits.sum(), x, create_graph=True)
    r1 = 0.5 * grad.pow(2).flatten(1).sum(1).mean()
    (discriminator_loss(real_logits, fake_logits) + gamma * r1).backward()
    d_opt.step()
    # generator: fool the updated D, and move with the noise
    g_opt.zero_grad()
    ratio = (fake[:half] - fake[half:]).abs().flatten(1).mean(1) / (z[:half] - z[half:]).abs().mean(1)
    (generator_loss(D(fake, c_fake)) + lam / (ratio.mean() + 1e-5)).backward()
    g_opt.step()
    with torch.no_grad():
        for p_ema, p in zip(G_ema.parameters(), G.parameters()):
            p_ema.lerp_(p, 1 - beta)


# %% slideshow={"slide_type": "subslide"}
from mmlib.cgan import cgan_step


def fresh_players():
    G, D = build_cgan("text", "image", seed=0, device=device)
    return G, D, copy.deepcopy(G).requires_grad_(False), make_optimizer(G.parameters(), lr=1e-3, betas=(0.5, 0.99)), \
        make_optimizer(D.parameters(), lr=1e-3, betas=(0.5, 0.99))


batches = [(ds.train["text"][i : i + 64], ds.train["image"][i : i + 64]) for i in range(0, 320, 64)]
G1, D1, E1, g1, d1 = fresh_players()
noise = torch.Generator(device=device).manual_seed(7)
for c, x in batches:
    inline_step(G1, D1, E1, g1, d1, c, x, noise)
G2, D2, E2, g2, d2 = fresh_players()
step = cgan_step(G2, D2, g2, d2, r1_weight=1.0, mismatch=True, mode_seeking=0.02,
                 noise=torch.Generator(device=device).manual_seed(7), ema=E2, ema_decay=0.99)
for c, x in batches:
    step(c, x)
gap = max(float((a - b).abs().max()) for a, b in zip(E1.parameters(), E2.parameters()))
print(f"largest difference between the two EMA generators after {len(batches)} steps: {gap:.1e}")
assert gap < 1e-5, "the inline step and mmlib.cgan.cgan_step train the same networks"

# %% [markdown] slideshow={"slide_type": "slide"}
# **Training.** `mmlib.cgan.run_cgan` trains both pairs with this step (1,500 steps of 128 pairs, Adam with
# $\beta_1 = 0.5$, lazy R1) and evaluates them. The cell runs it as the registered experiment `cgan` — the same call
# as `python -m mmlib run cgan --seed 0 --out DIR` — so the numbers below are the experiment's. The two pairs' GANs do not depend on each other, so they train at the same time, one per CPU
# core (`mmlib.parallel.run_jobs`; on a GPU or a single core, one after the other) — with the same numbers either way,
# since each run is seeded by its own arguments.

# %%
from mmlib.cgan import PAIRS
from mmlib.experiments import run_experiment

result = run_experiment("cgan", seed=0, device=device)
fits, evals, metrics = result.details["fits"], result.details["evals"], result.metrics

# %%
from mmlib.plot import loss_curves

fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
for ax, (pair, fit) in zip(axes, fits.items()):
    loss_curves({"L_D (without R1)": fit.history["d_loss"], "L_G": fit.history["g_loss"]}, steps=fit.history.steps,
                ax=ax, title=f"{pair[0]} → {pair[1]}")
    ax.axhline(2 * np.log(2), color="k", ls=":", label="L_D at D = ½ everywhere")
    ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# Neither player wins: $L_D$ stays below its chance value $2\log 2$ (it rejects mismatched pairs and some fakes),
# and nothing diverges.

# %%
for pair, fit in fits.items():
    assert max(fit.history["d_loss"]) < 2 * np.log(2), f"{pair}: L_D stays below its chance value at every log"
    assert all(np.isfinite(fit.history["g_loss"])) and max(fit.history["g_loss"]) < 1.5, (
        f"{pair}: nothing diverges: L_G stays finite and under 1.5 (about twice its value at D = 1/2, log 2)"
    )

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 4 · Evaluate
#
# ### Does the sample show the caption's digit?
#
# For every test caption we draw $K = 8$ samples and ask the target modality's evaluation classifier which digit
# each one shows. The **conditional accuracy** is the fraction that show the caption's digit. (For reference: the
# classifiers themselves get the real test images and sounds right this often.)

# %%
# NBVAL_CHECK_OUTPUT
ACCURACY_TARGET = 0.95
plural = {"image": "images", "audio": "sounds"}
for source, target in PAIRS:
    real_acc = classifiers[target].accuracy(ds.test[target], ds.test.label)
    print(f"{source} → {target}: conditional accuracy {metrics[f'cond_acc_{target}__from_{source}']:.3f} "
          f"(classifier on the real test {plural[target]}: {real_acc:.3f})")

# %%
for source, target in PAIRS:
    assert metrics[f"cond_acc_{target}__from_{source}"] >= ACCURACY_TARGET, (
        f"{source} → {target}: at least 95 % of the samples of held-out captions show the caption's digit")

# %% [markdown] slideshow={"slide_type": "slide"}
# ### Several samples per caption
#
# One row per test caption, eight draws of the noise each: the digit should stay, the handwriting should change.

# %%
ev_image = evals[("text", "image")]
rows = [int(torch.nonzero(ev_image.condition_labels == d)[0, 0]) for d in range(10)]
fig, axes = plt.subplots(10, 8, figsize=(8.5, 12))
for r, i in enumerate(rows):
    for k in range(8):
        ax = axes[r, k]
        ax.imshow(ev_image.samples[i, k, 0].cpu(), cmap="gray_r", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[r, 0].set_ylabel(f"“{decode_text(ds.test['text'][i])[0]}”", rotation=0, ha="right", va="center", fontsize=11)
fig.suptitle("caption → image: 8 samples for each of 10 test captions", y=0.995)
fig.tight_layout()
plt.show()

# %% slideshow={"slide_type": "subslide"}
ev_audio = evals[("text", "audio")]
rows = [int(torch.nonzero(ev_audio.condition_labels == d)[0, 0]) for d in (0, 3, 5, 9)]
fig, axes = plt.subplots(4, 5, figsize=(12, 8))
for r, i in enumerate(rows):
    for k in range(5):
        ax = axes[r, k]
        ax.imshow(ev_audio.samples[i, k].cpu(), origin="lower", aspect="auto", cmap="magma", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[r, 0].set_ylabel(f"“{decode_text(ds.test['text'][i])[0]}”", rotation=0, ha="right", va="center", fontsize=11)
fig.suptitle("caption → sound: 5 spectrograms for each of 4 test captions (the interval between the notes is the digit)")
fig.tight_layout()
plt.show()

# %% [markdown] slideshow={"slide_type": "subslide"}
# **Listen.** The spectrograms have no phase; `mmlib.data.spectrogram_to_audio` recovers one (Griffin–Lim), so we
# can hear two generated motifs for the same caption: same interval, different pitch and tempo.

# %%
from IPython.display import Audio, display

from mmlib.data import spectrogram_to_audio

i = rows[-1]
print(f"caption: “{decode_text(ds.test['text'][i])[0]}”")
for k in range(2):
    display(Audio(spectrogram_to_audio(ev_audio.samples[i, k]).cpu().numpy(), rate=SAMPLE_RATE))

# %% [markdown] slideshow={"slide_type": "slide"}
# ### Diversity: would a collapsed generator pass?
#
# Accuracy alone rewards a generator that draws one perfect "7" for every "seven". Two checks catch it:
#
# - **within-condition variance**: the variance across the $K$ samples of one caption, averaged over captions and
#   pixels, next to the real within-digit variance (the captions carry only the digit, so a faithful generator
#   should vary about as much as real data of one digit). A generator that ignores its noise scores exactly 0.
# - **Fréchet distance per digit** in the classifier's features (`mmlib.metrics.frechet_distance`): the samples of
#   all test captions of digit $d$ (one per caption) against the real training samples of $d$. Its baseline is the
#   same distance for the *real* test samples of $d$ — a perfect generator's score at this sample size, since the
#   FD is biased upward for small samples. We require the mean over digits within a factor 3 of the baseline.
#
# To see what the checks catch we score two collapsed generators made from ours: **noise ignored** ($z = 0$:
# one sample per caption) and **one per digit** (a lookup table: every sample replaced by the first of ours that
# the classifier reads as the caption's digit, so its accuracy is 1 by construction and its variance 0).

# %%
# NBVAL_CHECK_OUTPUT
VARIANCE_FLOOR, FD_FACTOR = 0.25, 3.0
for source, target in PAIRS:
    key = f"{target}__from_{source}"
    print(f"{source} → {target}")
    print(f"  trained GAN  : accuracy {metrics[f'cond_acc_{key}']:.2f} · variance / real "
          f"{metrics[f'within_var_{key}'] / metrics[f'real_within_var_{key}']:.2f} · FD / baseline "
          f"{metrics[f'fd_ratio_{key}']:.1f}")
    print(f"  noise ignored: accuracy {metrics[f'noise_ignored_cond_acc_{key}']:.2f} · variance / real "
          f"{metrics[f'noise_ignored_within_var_{key}'] / metrics[f'real_within_var_{key}']:.2f} · FD / baseline "
          f"{metrics[f'noise_ignored_fd_ratio_{key}']:.1f}")
    print(f"  one per digit: accuracy {metrics[f'one_per_digit_cond_acc_{key}']:.2f} · variance / real 0 (a lookup) · "
          f"FD / baseline {metrics[f'one_per_digit_fd_ratio_{key}']:.1f}")

# %%
for source, target in PAIRS:
    key = f"{target}__from_{source}"
    ratio = metrics[f"within_var_{key}"] / metrics[f"real_within_var_{key}"]
    assert ratio >= VARIANCE_FLOOR, f"{key}: the samples of one caption vary at least a quarter as much as real data"
    assert metrics[f"fd_ratio_{key}"] <= FD_FACTOR, f"{key}: mean per-digit FD within 3× its real-vs-real baseline"
    assert metrics[f"noise_ignored_within_var_{key}"] == 0.0, f"{key}: ignoring the noise gives zero variance"
    assert metrics[f"noise_ignored_cond_acc_{key}"] >= ACCURACY_TARGET, f"{key}: ...while its accuracy still passes"
    assert metrics[f"one_per_digit_fd_ratio_{key}"] > FD_FACTOR, f"{key}: one sample per digit fails the FD check"
    assert metrics[f"one_per_digit_cond_acc_{key}"] >= ACCURACY_TARGET, (
        f"{key}: ...while its accuracy (1 by construction) passes"
    )
    gap_to_gan = abs(metrics[f"noise_ignored_fd_ratio_{key}"] - metrics[f"fd_ratio_{key}"])
    gap_to_lookup = abs(metrics[f"one_per_digit_fd_ratio_{key}"] - metrics[f"noise_ignored_fd_ratio_{key}"])
    assert gap_to_gan < gap_to_lookup, f"{key}: the FD barely tells the noise-ignoring generator from the GAN"

# %% [markdown]
# Both collapsed generators pass the accuracy test. The FD barely tells the noise-ignoring one from the trained GAN
# (the captions differ in language and case, so its outputs still differ from caption to caption): the
# within-condition variance exposes it. The one-per-digit generator is caught by the FD. Neither gets through both
# checks; the trained GAN does.

# %% slideshow={"slide_type": "subslide"}
fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
for ax, (pair, ev) in zip(axes, evals.items()):
    digits = np.arange(10)
    ax.bar(digits - 0.2, ev.fd_per_class, width=0.4, label="generated (test captions)")
    ax.bar(digits + 0.2, ev.fd_baseline_per_class, width=0.4, label="real test samples (baseline)")
    ax.set_xticks(digits)
    ax.set_xlabel("digit")
    ax.set_ylabel("Fréchet distance to real training samples")
    ax.set_title(f"{pair[0]} → {pair[1]}")
    ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown] slideshow={"slide_type": "subslide"}
# **How large is "3× the baseline"?** The classifier's features react strongly to small changes of sharpness,
# above all for sounds. As a yardstick we score *real* test spectrograms after a light blur (each cell averaged with
# its two neighbours in frequency): the classifier still recognises every digit, yet the FD ratio jumps.

# %%
# NBVAL_CHECK_OUTPUT
import torch.nn.functional as F

from mmlib.cgan import class_frechet_distances

audio_clf = classifiers["audio"]
blurred = F.avg_pool2d(ds.test["audio"].unsqueeze(1), (3, 1), stride=1, padding=(1, 0),
                       count_include_pad=False).squeeze(1)
fd_blurred = class_frechet_distances(audio_clf.features(blurred), ds.test.label, audio_clf.features(ds.train["audio"]),
                                     ds.train.label).mean()
blurred_ratio = fd_blurred / metrics["fd_audio__from_text_baseline"]
blurred_acc = audio_clf.accuracy(blurred, ds.test.label)
print(f"real test sounds blurred over 3 frequency bins: accuracy {blurred_acc:.2f}, FD / baseline {blurred_ratio:.1f}")
print(f"the caption → sound GAN: FD / baseline {metrics['fd_ratio_audio__from_text']:.1f}")

# %%
assert blurred_acc == 1.0, "the classifier still recognises every blurred real sound"
assert blurred_ratio > FD_FACTOR > metrics["fd_ratio_audio__from_text"], (
    "a light blur of real sounds moves the FD further than our generator's samples are from the data")

# %% [markdown] slideshow={"slide_type": "slide"}
# ## Summary
#
# - A conditional GAN draws $\tilde x = G(z, c)$; here $c$ is a caption, read by a condition encoder in each player.
#   The projection discriminator $D(x, c) = \psi(\phi(x)) + \langle e_D(c), \phi(x)\rangle$ splits "is it real?" from
#   "does it fit the caption?".
# - The training step is chapter 03's non-saturating game on pairs, plus mismatched real pairs as negatives, the R1
#   penalty, mode seeking, and an average of the generator's weights.
# - Caption → image and caption → sound both reach at least 95 % conditional accuracy on the test captions, with
#   samples that vary within a caption and per-digit Fréchet distances within 3× the real-versus-real baseline.
# - Accuracy alone cannot tell a generator from a lookup table: a generator that ignores its noise, or draws one
#   sample per digit, scores as high. Always report diversity next to accuracy.
# - Chapter 08 generates all modalities *jointly* from one noise vector — and its discriminator, like ours, will
#   have to reject mismatched pairs.

# %% [markdown] slideshow={"slide_type": "slide"}
# ## Exercises
#
# **06.1 (implement).** Write `r1(real_logits, x)`: the R1 penalty $\frac12 \mathbb E\|\nabla_x D(x)\|^2$ from the
# logits $D(x)$ of a batch of real samples and the tensor `x` they were computed from (`x.requires_grad` is true).
# Sum the squared gradient over all coordinates of a sample, average over the batch. The penalty is minimised by
# $D$, so it must stay differentiable in $D$'s parameters.

# %% tags=["solution"]
def r1(real_logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """½ E ||∇_x D(x)||² over the batch, differentiable in D's parameters."""
    (grad,) = torch.autograd.grad(real_logits.sum(), x, create_graph=True)
    return 0.5 * grad.pow(2).flatten(1).sum(dim=1).mean()


# %%
# NBVAL_CHECK_OUTPUT
from mmlib.exercises import check

check("06.1", r1)

# %% [markdown]
# **06.2 (predict, then run).** Train caption → image without the R1 penalty:
# `run_cgan(pairs=(("text", "image"),), config=dataclasses.replace(RECIPE, r1_weight=0.0), device=device)`.
# Before you run it, predict what happens to the two loss curves, to the within-condition variance and to the
# conditional accuracy. Then do the same with `mismatch=False` instead: which of the three numbers moves most, and
# why?
#
# **06.3 (open question).** Nearly every test caption also occurs in training, so our held-out test says little about
# captions the generator has never read. Design a split that does (which captions would you hold out, and what could
# the condition encoder still get right?). A harder version of the same question: with an *image* as the condition
# (`pairs=(("image", "audio"),)`), every test condition is a new handwriting. Train it and compare its conditional
# accuracy with caption → sound. What makes the image a harder condition for the encoders, though the image
# classifier reads test digits almost perfectly?
