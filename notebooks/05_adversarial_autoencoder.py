# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown] slideshow={"slide_type": "slide"}
# # 05 · A discriminator on the latent code: adversarial autoencoders
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/mmgen-course/mmgen-course/blob/main/notebooks/05_adversarial_autoencoder.ipynb)
#
# The article (§3.2.2) says a *discriminator* can "judge whether the latent variable $z$ is plausible" and so help
# generate samples. This chapter makes that sentence precise: an **adversarial autoencoder** (AAE; Makhzani et al.,
# 2015) trains a discriminator to tell draws of the prior $p(z)$ from the encoder's codes, and trains the encoder to
# fool it. We compare it with chapter 04's tool for the same job, the VAE's KL term.
#
# By the end of this notebook you will
# - know why a prior such as a ring of Gaussians is awkward for a VAE (its KL has no closed form, and the KL acts on
#   each image separately), and what the AAE's discriminator matches instead: the *aggregate* posterior;
# - have written the AAE's reconstruction and regularisation phases and checked them against `mmlib`;
# - measure how well codes match a prior with a two-sample statistic (MMD) and a permutation test;
# - generate digits by sampling the prior, score them with the course's image classifier, and put each digit in its
#   own mixture component by showing the discriminator the label.

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
# ## 1 · Preprocess: the digits, and a prior with ten modes
#
# The data are chapter 04's: the 17-level handwritten digits, fitted on `train` and evaluated on `test`, with the same
# per-pixel categorical decoder. The latent space is 2D so that we can look at it. The prior is a **ring of ten
# Gaussians**: $p(z) = \frac1{10}\sum_{k=0}^{9} \mathcal N(z; m_k, s^2 I)$ with $m_k = 4(\cos\frac{2\pi k}{10},
# \sin\frac{2\pi k}{10})$ and $s = 0.5$ — ten well-separated modes, one per digit if we want.

# %%
from mmlib.aae import RingPrior
from mmlib.data import load_multimodal_digits

ds = load_multimodal_digits(device=device)
train_images, test_images = ds.train["image"], ds.test["image"]
prior = RingPrior(device=device)
prior_sample, prior_component = prior.sample(2000, generator=torch.Generator(device=device).manual_seed(0))

fig, ax = plt.subplots(figsize=(5.5, 5.5))
ax.scatter(*prior_sample.cpu().T, c=prior_component.cpu(), cmap="tab10", s=5, alpha=0.6)
ax.scatter(*prior.means.cpu().T, marker="x", c="k", s=60, label="component means")
ax.set(xlabel="z₁", ylabel="z₂", title="The prior: a ring of ten Gaussians")
ax.set_aspect("equal")
ax.legend(loc="center")
plt.show()

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 2 · Build: what a VAE would have to do
#
# A VAE with this prior minimises $-\mathbb E_q[\log p(x\mid z)] + \mathrm{KL}(q(z\mid x)\,\|\,p(z))$. Chapter 04's
# closed form was for $p = \mathcal N(0, I)$; for a Gaussian $q$ and a **mixture** $p$ the KL has no closed form (the
# log of a sum does not simplify). It can still be estimated by Monte Carlo, $\frac1S\sum_s [\log q(z_s) - \log
# p(z_s)]$ with $z_s \sim q$, which is what `mmlib.aae.mixture_vae_loss` does with $S = 1$ per image. A self-check
# against numerical integration on a fine grid:

# %%
from torch.distributions import Independent, Normal

q = Independent(Normal(torch.tensor([3.5, 1.0], device=device), torch.tensor([0.4, 0.4], device=device)), 1)
axis = torch.linspace(-8, 8, 801, device=device)
grid_z = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), dim=-1).reshape(-1, 2)
cell = float(axis[1] - axis[0]) ** 2
log_q_grid = q.log_prob(grid_z)
kl_quadrature = float((log_q_grid.exp() * (log_q_grid - prior.log_prob(grid_z))).sum() * cell)
torch.manual_seed(1)
z_q = q.sample((20_000,))
log_ratio = q.log_prob(z_q) - prior.log_prob(z_q)
kl_mc, kl_se = float(log_ratio.mean()), float(log_ratio.std() / 20_000**0.5)

# %%
# NBVAL_CHECK_OUTPUT
print(f"KL(q || ring prior): quadrature {kl_quadrature:.3f}, Monte Carlo {kl_mc:.3f} ± {kl_se:.3f} nats")

# %%
assert abs(kl_mc - kl_quadrature) < 4 * kl_se, "the Monte Carlo KL agrees with numerical integration (4 s.e.)"

# %% [markdown] slideshow={"slide_type": "subslide"}
# The deeper issue: the KL regularises **each** $q(z\mid x)$ separately. What generation needs is that the codes of
# all images together — the **aggregate posterior** $q(z) = \frac1N \sum_i q(z\mid x_i)$ — look like $p(z)$, because
# we will decode draws of $p(z)$. With well-separated components, an image's KL is about the same whichever
# component its $q(z\mid x)$ sits in, so the KL is indifferent to whether the codes use all ten components or crowd
# into a few. The same quadrature, for a $q$ centred on each component's mean in turn:

# %%
prior_log_grid = prior.log_prob(grid_z)


def kl_by_quadrature(mean: torch.Tensor, std: float = 0.4) -> float:
    """KL(N(mean, std² I) || ring prior) on the grid above."""
    log_q = Independent(Normal(mean, torch.full_like(mean, std)), 1).log_prob(grid_z)
    return float((log_q.exp() * (log_q - prior_log_grid)).sum() * cell)


kl_per_component = [kl_by_quadrature(mean) for mean in prior.means]
assert max(kl_per_component) - min(kl_per_component) < 0.01, "the KL is the same (to 0.01 nats) on every component"
print(f"KL of q centred on each of the 10 components: {min(kl_per_component):.3f} to {max(kl_per_component):.3f} nats")

# %% [markdown] slideshow={"slide_type": "slide"}
# ### The adversarial autoencoder
#
# A deterministic encoder $z = E(x)$, the categorical decoder $p(x\mid z)$ and a discriminator
# $D(z) \in (0, 1)$, "the probability that $z$ came from the prior". Each minibatch has two phases:
#
# - **regularisation phase** — the GAN game of chapter 03 played *on the codes*: the discriminator minimises
#   $-\mathbb E_{z\sim p(z)}[\log D(z)] - \mathbb E_x[\log(1 - D(E(x)))]$; the encoder, the generator of codes,
#   minimises $-\mathbb E_x[\log D(E(x))]$ (the non-saturating loss);
# - **reconstruction phase** — encoder and decoder minimise $-\mathbb E_x[\log p(x\mid E(x))]$, nats per image.
#
# For a fixed encoder the best discriminator is $D^*(z) = \frac{p(z)}{p(z) + q(z)}$, and the encoder wins when the
# aggregate posterior $q(z)$ equals $p(z)$. The prior only needs to be **sampled**: no density, no KL formula.
#
# Makhzani et al. alternate SGD steps for the two phases. We take one Adam step of the autoencoder on the weighted sum
# $\text{reconstruction} + \lambda\cdot\text{encoder's adversarial loss}$ with $\lambda = 5$: the same game. (With
# separate Adam steps for the two losses, some of our runs collapsed the codes; Adam gives every step a similar size,
# so the small, noisy adversarial gradients push the encoder as hard as the reconstruction gradients.)

# %%
import torch.nn.functional as F

from mmlib.aae import build_model, make_optimisers

WEIGHT = 5.0  # lambda


def aae_step_inline(model, optimisers, images):
    """One AAE update: the discriminator's step, then one autoencoder step on reconstruction + λ · adversarial."""
    z_codes = model.encoder(images)                                        # E(x): (B, 2)
    z_prior, _ = prior.sample(images.shape[0])                             # z ~ p(z): (B, 2)
    # regularisation phase, discriminator: prior draws are "real" (target 1), codes are "fake" (target 0)
    optimisers.discriminator.zero_grad(set_to_none=True)
    d_real, d_fake = model.discriminator(z_prior), model.discriminator(z_codes.detach())
    d_loss = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()       # −log D(z_p) − log(1 − D(E(x)))
    d_loss.backward()
    optimisers.discriminator.step()
    # reconstruction phase + the encoder's half of the regularisation phase
    optimisers.autoencoder.zero_grad(set_to_none=True)
    levels = (images.flatten(1) * 16).round().long()                      # (B, 64) levels 0..16
    log_probs = model.decoder(z_codes).log_softmax(dim=-1)                # (B, 64, 17)
    rec = -log_probs.gather(-1, levels.unsqueeze(-1)).squeeze(-1).sum(dim=1).mean()  # nats per image
    adv = F.softplus(-model.discriminator(z_codes)).mean()                 # −log D(E(x)): fool the discriminator
    (rec + WEIGHT * adv).backward()
    optimisers.autoencoder.step()
    return {"reconstruction": rec.detach(), "discriminator": d_loss.detach(), "encoder": adv.detach()}


# %% [markdown] slideshow={"slide_type": "subslide"}
# `mmlib.aae.aae_step` is the same update. From the same weights and seed, 100 steps of each give identical runs;
# from here on we use `mmlib`.

# %%
from mmlib.aae import aae_step
from mmlib.train import train


def short_aae_run(step_fn, steps=100):
    model = build_model("aae", seed=0, device=device)
    optimisers = make_optimisers(model, lr=2e-3)
    torch.manual_seed(3)
    return train(lambda x: step_fn(model, optimisers, x), train_images, steps=steps, batch_size=128, seed=3,
                 log_every=10, desc="AAE")


history_inline = short_aae_run(aae_step_inline)
history_mmlib = short_aae_run(lambda model, optimisers, x: aae_step(model, optimisers, prior, x))

# %%
# NBVAL_CHECK_OUTPUT
for name in ("reconstruction", "discriminator", "encoder"):
    print(f"{name:>14}: inline {history_inline[name][-1]:.3f} · mmlib {history_mmlib[name][-1]:.3f}")

# %%
assert all(history_inline[k] == history_mmlib[k] for k in history_inline.keys()), (
    "the inline AAE step and mmlib.aae.aae_step give identical training runs"
)

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 3 · Estimate: four models, one prior
#
# Experiment `aae-digits` (also `python -m mmlib run aae-digits --out DIR`) fits, with the same architecture, seed
# and 2,000 steps each, side by side, one per CPU core (`mmlib.parallel.run_jobs`; the same numbers as one after the
# other):
#
# - **AE** — a plain autoencoder: reconstruction only, nothing shapes the codes;
# - **VAE** — the ring prior with the Monte Carlo KL above;
# - **AAE** — the adversarial autoencoder just written;
# - **AAE + labels** — the same, but the discriminator also sees the digit (end of section 4).

# %%
from mmlib.experiments import run_experiment

result = run_experiment("aae-digits", seed=0, device=device)
metrics, arrays = result.metrics, result.arrays

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 4 · Evaluate: do the codes follow the prior?
#
# Each panel shows the test images' codes (coloured by digit, which no model saw here) over draws of the prior
# (grey). For the VAE a code is a draw $z \sim q(z\mid x)$, one per image: a draw of its aggregate posterior.

# %%
names = {"ae": "plain autoencoder", "vae": "VAE (Monte Carlo KL)", "aae": "adversarial autoencoder"}
labels = arrays["test_label"].cpu()
fig, axes = plt.subplots(1, 3, figsize=(15, 5.2))
for ax, (key, title) in zip(axes, names.items()):
    codes = arrays[f"codes_{key}"].cpu()
    ax.scatter(*arrays["prior_z"].cpu().T, c="lightgrey", s=6, label="prior draws")
    ax.scatter(*codes.T, c=labels, cmap="tab10", s=8, vmin=-0.5, vmax=9.5)
    ax.set(title=title, xlabel="z₁", ylabel="z₂", xlim=(-8, 8), ylim=(-8, 8))
    ax.set_aspect("equal")
fig.suptitle("Test codes (coloured by digit) against the ring prior (grey)")
fig.tight_layout()
plt.show()

# %% [markdown] slideshow={"slide_type": "subslide"}
# Chapter 03's mode-coverage count answers "which components receive codes?": each test code counts for its nearest
# component mean, and a component is covered when at least one of its codes lies within 3 standard deviations
# (1.5) of that mean.

# %%
# NBVAL_CHECK_OUTPUT
for key, title in names.items():
    print(f"{title:>24}: {metrics[f'components_covered_{key}']} of 10 components covered")

# %%
assert metrics["components_covered_aae"] == 10, "the AAE's codes reach all ten components"
assert metrics["components_covered_vae"] < 10, "the VAE's codes leave some components empty"

# %% [markdown] slideshow={"slide_type": "slide"}
# ### A two-sample statistic: the maximum mean discrepancy
#
# Are the codes $\{x_i\}_{i=1}^n$ and prior draws $\{y_j\}_{j=1}^m$ samples of the same distribution? The squared
# MMD (Gretton et al., 2012) with a kernel $k$ compares their average similarities:
#
# $$\widehat{\mathrm{MMD}}^2 = \frac{1}{n(n-1)}\sum_{i\ne i'} k(x_i, x_{i'}) + \frac{1}{m(m-1)}\sum_{j\ne j'} k(y_j, y_{j'})
#   - \frac{2}{nm}\sum_{i,j} k(x_i, y_j),$$
#
# unbiased, so about 0 (possibly slightly negative) when the distributions agree. We use a Gaussian kernel
# $k(a, b) = \exp(-\|a - b\|^2 / 2h^2)$ with bandwidth $h = 1$ (twice the components' standard deviation), $n = m$ =
# the 269 test images. Two references: **real vs real**, the MMD² between two independent prior samples of the same
# size; and a **permutation test**, which reshuffles the pooled points 200 times to see how large MMD² gets when
# both groups truly come from one distribution (p-value: one plus the number of shuffles at least as large as
# observed, over one plus 200, so the smallest possible value is 1/201 ≈ 0.005).

# %%
# NBVAL_CHECK_OUTPUT
print(f"{'real vs real':>24}: MMD² = {metrics['mmd_real_vs_real']:.4f}")
for key, title in names.items():
    print(f"{title:>24}: MMD² = {metrics[f'mmd_{key}']:.4f}   permutation p = {metrics[f'mmd_p_{key}']:.3f}")

# %%
fig, ax = plt.subplots(figsize=(7, 4.2))
ax.bar(["AE", "VAE", "AAE"], [metrics[f"mmd_{k}"] for k in names], color=["tab:gray", "tab:orange", "tab:blue"])
ax.axhline(metrics["mmd_null95_aae"], color="k", ls="--", label="95 % of MMD² under 'same distribution'")
ax.set(yscale="log", ylim=(1e-4, 1.0), ylabel="MMD² to the prior (log scale)",
       title="How far the codes are from the prior")
ax.legend(loc="upper right", fontsize=10)
plt.show()

# %%
assert metrics["mmd_aae"] < metrics["mmd_vae"] and metrics["mmd_aae"] < metrics["mmd_ae"], (
    "the AAE's aggregate posterior is closer to the prior (smaller MMD²) than the VAE's and the plain AE's"
)
assert metrics["mmd_p_ae"] < 0.05 and metrics["mmd_p_vae"] < 0.05, (
    "the permutation test tells the AE's and the VAE's codes from the prior (p < 0.05)"
)
assert abs(metrics["mmd_real_vs_real"]) < metrics["mmd_aae"], "two prior samples are closer still: the noise floor"

# %% [markdown]
# For this seed the AAE's MMD² is about a fifth of the plain autoencoder's and a seventh of the VAE's — and yet the
# permutation test still tells its codes from prior draws at the 5 % level: closer, not indistinguishable. How much
# of this is luck? One adversarial run is one draw of a noisy game. Rerun the experiment with other seeds
# (`python -m mmlib run aae-digits --seed 1 --out runs/aae1`, then `--seed 2`): does the AAE stay
# ahead of both, by how much, and does the test ever accept its codes?

# %%
assert metrics["mmd_aae"] < metrics["mmd_ae"] / 4 and metrics["mmd_aae"] < metrics["mmd_vae"] / 4, (
    "for this seed the AAE's MMD² is more than four times smaller than the AE's and the VAE's"
)
assert 4 < metrics["mmd_ae"] / metrics["mmd_aae"] < 6 and 6 < metrics["mmd_vae"] / metrics["mmd_aae"] < 8, (
    "about a fifth of the plain autoencoder's and a seventh of the VAE's"
)
assert metrics["mmd_p_aae"] < 0.05 and metrics["mmd_aae"] > metrics["mmd_null95_aae"], (
    "for this seed the permutation test still tells the AAE's codes from the prior: closer is not the same"
)

# %% [markdown] slideshow={"slide_type": "slide"}
# ### Generation: decode draws of the prior
#
# To generate, draw $z \sim p(z)$ and then every pixel from the decoder's categorical. This only works if the decoder
# has seen codes where the prior puts its mass. Rows below: 12 samples of each model.

# %%
from mmlib.plot import image_grid

rows = torch.cat([arrays[f"gen_image_{key}"][:12].cpu() for key in names])
image_grid(rows, nrow=12, title="Samples from the prior: AE (top), VAE (middle), AAE (bottom)")
plt.show()

# %% [markdown] slideshow={"slide_type": "subslide"}
# We score 1,000 samples per model with the course's image classifier (`mmlib.classifiers`):
#
# - the **digit distribution** of the samples: total variation $\frac12\sum_d |\hat p_d - \frac1{10}|$ from the uniform
#   distribution of the data (0 = every digit equally often);
# - the **Fréchet distance** (FD) between Gaussians fitted to the classifier's features of samples and of test images;
#   its reference is 1,000 *real* training images against the same test images — a perfect generator's score.

# %%
from mmlib.classifiers import load_classifiers

classifier = load_classifiers(device)["image"]
shares = {key: torch.bincount(classifier.predict(arrays[f"gen_image_{key}"]), minlength=10).cpu() / 1000
          for key in names}

fig, ax = plt.subplots(figsize=(8, 4))
for i, (key, title) in enumerate(names.items()):
    ax.bar(np.arange(10) + (i - 1) * 0.27, shares[key].numpy(), width=0.27, label=title)
ax.axhline(0.1, color="k", ls="--", label="uniform")
ax.set(xlabel="digit predicted by the classifier", ylabel="share of samples", xticks=range(10),
       title="Which digits does each model generate?")
ax.legend(fontsize=9)
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
print(f"{'real training images':>24}: FD {metrics['fd_real_baseline']:6.0f}")
for key, title in names.items():
    print(f"{title:>24}: FD {metrics[f'fd_{key}']:6.0f}   digit TV from uniform {metrics[f'digit_tv_{key}']:.2f}")

# %%
assert metrics["fd_aae"] < metrics["fd_ae"] and metrics["fd_aae"] < metrics["fd_vae"], (
    "decoded prior samples of the AAE are closer to the data (FD) than those of the AE and the VAE"
)
assert metrics["digit_tv_aae"] < metrics["digit_tv_vae"] and metrics["digit_tv_aae"] < metrics["digit_tv_ae"], (
    "the AAE's samples spread over the digits more evenly than the AE's and the VAE's"
)
assert metrics["fd_real_baseline"] < metrics["fd_aae"], "real images remain closer to the test set than any model"

# %% [markdown] slideshow={"slide_type": "slide"}
# ### Telling the discriminator the digit
#
# The unsupervised AAE fills the ring, but which component holds which digit is up to it. Makhzani et al. (§2.3)
# also feed the discriminator a one-hot label: a prior draw comes with its component $k$, a code with its image's
# digit. "Is $z$ plausible?" becomes "is $z$ plausible **for digit $k$**?", so the codes of digit $k$ must fill
# component $k$. Then sampling component $k$ should generate digit $k$ — the *coherence*, the share of samples that
# the classifier reads as the intended digit (chance: 0.1).

# %%
codes = arrays["codes_aae_labels"].cpu()
fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), gridspec_kw={"width_ratios": [1, 1.1]})
axes[0].scatter(*arrays["prior_z"].cpu().T, c="lightgrey", s=6)
axes[0].scatter(*codes.T, c=labels, cmap="tab10", s=8, vmin=-0.5, vmax=9.5)
for k, (x, y) in enumerate(prior.means.cpu().tolist()):
    axes[0].annotate(str(k), (1.35 * x, 1.35 * y), ha="center", va="center", fontsize=14)
axes[0].set(title="Codes with a label-aware discriminator", xlabel="z₁", ylabel="z₂", xlim=(-7, 7), ylim=(-7, 7))
axes[0].set_aspect("equal")
per_component = torch.stack([arrays["gen_image"][arrays["gen_label"] == k][:8, 0].cpu() for k in range(10)])
mosaic = F.pad(per_component, (1, 1, 1, 1)).permute(0, 2, 1, 3).reshape(100, 80)  # 10 rows of 8 padded images
axes[1].imshow(mosaic, cmap="gray_r", vmin=0, vmax=1)
axes[1].set(title="Samples of component k (row k)", yticks=[5 + 10 * k for k in range(10)], yticklabels=range(10),
            xticks=[])
axes[1].grid(False)
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
print(f"coherence (component k -> digit k): {metrics['coherence_aae_labels']:.2f}   (chance {metrics['coherence_chance']})")
print(f"FD {metrics['fd_aae_labels']:.0f} · MMD² to the prior {metrics['mmd_aae_labels']:.4f} · "
      f"{metrics['components_covered_aae_labels']} of 10 components covered")

# %%
assert metrics["coherence_aae_labels"] > 0.6, "sampling component k gives digit k far more often than chance (> 0.6)"
assert metrics["components_covered_aae_labels"] == 10, "all ten components receive codes"
nearest = torch.cdist(codes, prior.means.cpu()).argmin(1)
own = [float((nearest[labels == k] == k).double().mean()) for k in range(10)]
assert min(own) > 0.5, "every digit fills its own component: most of digit k's test codes lie nearest mean k"
print("share of digit k's test codes in component k: " + " ".join(f"{v:.2f}" for v in own))

# %% [markdown] slideshow={"slide_type": "slide"}
# ## Summary
#
# - The article's "discriminator that judges whether $z$ is plausible" is the adversarial autoencoder: a GAN played on
#   the latent codes, whose equilibrium makes the **aggregate posterior** equal the prior.
# - It needs only samples of the prior. A VAE needs $\log p(z)$ inside a KL that, for a mixture, has no closed form,
#   and its per-image KL left part of our ring prior empty.
# - Measured with MMD² (Gaussian kernel, $h = 1$), the AAE's codes were several times closer to the prior than the
#   VAE's and the plain autoencoder's, though a permutation test could still tell them from prior draws; decoding
#   prior draws then gave samples closer to the data (FD) with a more even mix of digits.
# - Given the label, the discriminator places each digit in its own component: sampling component $k$ generates
#   digit $k$. Chapter 06 conditions on another *modality* instead of a label.
# - What the AAE gives up: without a density model of $q$ there is no ELBO, so no likelihood to report — compare
#   chapter 04, whose VAE we could score in nats.

# %% [markdown] slideshow={"slide_type": "slide"}
# ## Exercises
#
# **05.1 (predict, then run).** The adversarial weight is $\lambda = 5$. Predict what the codes and the MMD² look like
# with $\lambda = 0$ and with $\lambda = 50$ (hint: run `fit_model("aae", train_images)` after changing
# `mmlib.aae.ADVERSARIAL_WEIGHT`, or pass `weight=` to `aae_step` in a loop of your own). Which of the two would
# reconstruct better, and which would match the prior better?
#
# **05.2 (implement).** Write the unbiased MMD² of section 4 for samples `x` of shape `(n, d)` and `y` of shape
# `(m, d)` with the Gaussian kernel of bandwidth `h` (tip: `torch.cdist`).

# %% tags=["solution"]
def mmd_squared(x, y, h):
    """Unbiased MMD^2 between samples x (n, d) and y (m, d), Gaussian kernel exp(-||a - b||^2 / (2 h^2))."""
    def kernel(a, b):
        return torch.exp(-torch.cdist(a, b) ** 2 / (2 * h**2))

    n, m = x.shape[0], y.shape[0]
    k_xx, k_yy = kernel(x, x), kernel(y, y)
    within_x = (k_xx.sum() - k_xx.diagonal().sum()) / (n * (n - 1))
    within_y = (k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
    return within_x + within_y - 2 * kernel(x, y).mean()


# %%
# NBVAL_CHECK_OUTPUT
from mmlib.exercises import check

check("05.2", mmd_squared)

# %% [markdown]
# **05.3 (open question).** The AAE matches the aggregate posterior with a discriminator; one could instead add
# $\mathrm{MMD}^2(\{E(x_i)\}, \{z_j \sim p\})$ to the reconstruction loss (a Wasserstein autoencoder, Tolstikhin et al.,
# 2018). What would you gain (no adversarial game) and lose (a kernel and bandwidth to choose, cost quadratic in the
# batch)? And why can neither model report a test log-likelihood the way chapter 04 did?
