# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown] slideshow={"slide_type": "slide"}
# # 08 · A multimodal GAN: image, caption and sound from one noise vector
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/mmgen-course/mmgen-course/blob/main/notebooks/08_multimodal_gan.ipynb)
#
# Chapter 06 generated one modality *from* another. This chapter generates all three *together*: one noise vector
# becomes a handwritten digit, a caption and a sound that belong together. Then we put the GAN next to chapter 07's
# multimodal VAE, measured with exactly the same metrics, and close the article's loop — "通过组合这些生成模型",
# *by combining these generative models* — by combining the two families.
#
# By the end of this notebook you will
# - build a joint generator with a shared trunk and one head per modality (the weight sharing of coupled GANs) and a
#   discriminator that judges the three modalities together;
# - pass discrete captions through a GAN with the straight-through estimator;
# - show that the trained discriminator rejects mismatched triples;
# - compare the GAN and the VAE on joint coherence and Fréchet distances, and say what each family does better;
# - decode the VAE's latent space with an adversarially trained decoder and measure what the combination gains and
#   loses against its parts.

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
# A joint generator draws whole triples $(x_{\text{image}}, x_{\text{text}}, x_{\text{audio}}) = G(z)$ from one noise
# vector. Two design choices make the parts belong together:
#
# - **Sharing in the generator** (coupled GANs, Liu & Tuzel, 2016). A *trunk* shared by all modalities turns the
#   noise into a code $h$ that decides *what* is shown; one *head* per modality decides *how* that modality shows
#   it: $x_m = \mathrm{head}_m(\mathrm{trunk}(z))$.
# - **A discriminator that sees everything at once.** A discriminator per modality would accept a perfect "3" next to
#   a perfect "seven". Ours scores the triple, so it can reject parts that do not belong together.
#
# The multimodal VAE of chapter 07 shares a latent too, but learns it by *encoding* data; the GAN never encodes, it
# only generates — which decides what each family is good at, as we will measure.

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 1 · Preprocess
#
# The training split holds 1,259 triples of the same digit. Images and spectrograms are numbers in $[0, 1]$; the
# caption is 16 tokens, which the discriminator reads one-hot ($16 \times 73$ numbers).

# %%
from mmlib.classifiers import load_classifiers
from mmlib.data import MODALITIES, SAMPLE_RATE, decode_text, load_multimodal_digits

ds = load_multimodal_digits(device)
classifiers = load_classifiers(device)
print(f"{len(ds.train)} training triples: " + ", ".join(f"{m} {tuple(ds.train[m].shape[1:])}" for m in MODALITIES))

# %% [markdown] slideshow={"slide_type": "subslide"}
# **A discrete modality in a GAN.** The generator's text head outputs, per position, scores over the 73 tokens; the
# caption is their argmax. But an argmax has no gradient, and the generator learns only through $D$'s gradient. The
# **straight-through estimator** (Bengio et al., 2013) uses the one-hot argmax going forward and pretends it was the
# softmax going back:
#
# $$y = \mathrm{onehot}(\arg\max p) - \mathrm{sg}(p) + p, \qquad p = \mathrm{softmax}(\ell),$$
#
# where $\mathrm{sg}$ stops the gradient. The value of $y$ is exactly one-hot — real and generated captions look
# alike to $D$ — while $\partial y / \partial \ell = \partial p / \partial \ell$.

# %%
import torch.nn.functional as F

from mmlib.mmgan import straight_through_argmax

logits = torch.randn(4, 73, generator=torch.Generator().manual_seed(0), requires_grad=True)
weights = torch.randn(4, 73, generator=torch.Generator().manual_seed(1))
p = torch.softmax(logits, dim=1)
y_inline = F.one_hot(p.argmax(1), 73).float() - p.detach() + p
(grad_inline,) = torch.autograd.grad((y_inline * weights).sum(), logits)
y_mmlib = straight_through_argmax(logits)
(grad_mmlib,) = torch.autograd.grad((y_mmlib * weights).sum(), logits)
(grad_softmax,) = torch.autograd.grad((torch.softmax(logits, 1) * weights).sum(), logits)

assert torch.equal(y_inline.detach(), F.one_hot(logits.detach().argmax(1), 73).float()), "forward: exactly one-hot"
assert torch.allclose(grad_inline, grad_softmax, atol=1e-7), "backward: the softmax's gradient"
assert torch.equal(y_inline, y_mmlib) and torch.allclose(grad_inline, grad_mmlib), "inline = mmlib's version"

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 2 · Build
#
# **Generator.** The trunk is an MLP on the noise, the heads are small MLPs; images and spectrograms are squashed
# into $[0, 1]$, the caption goes through the straight-through argmax. The text head emits a 32-number code per
# position that one shared layer turns into token scores, so every position spells with the same "alphabet".
#
# **The noise carries the digit.** Our noise is $(y, z)$: a digit $y \sim \mathrm{Uniform}\{0..9\}$ and
# $z \sim \mathcal N(0, I_{22})$; the trunk reads $[\mathrm{onehot}(y), z]$. Sampling needs nothing else — one
# noise vector per triple — but **training uses the digits of the real triples**: the discriminator checks that
# every part shows $y$. Within the minute of training we allow, a generator whose noise is only Gaussian learns each
# modality but rarely makes the three agree (exercise 08.3 asks how one could do without labels). The multimodal VAE
# never sees the labels, so keep this in mind when we compare the two.

# %% [markdown] slideshow={"slide_type": "subslide"}
# **Discriminator.** Chapter 06's projection discriminator, for three modalities and a digit. With features
# $\phi_m(x_m)$ of each modality,
#
# $$D(x, y) = \sum_m \underbrace{\psi_m(\phi_m(x_m))}_{\text{real?}}
#   + \sum_m \underbrace{\langle E_m[y], \phi_m(x_m) \rangle}_{\text{shows digit } y\,?}
#   + \sum_{m < m'} \underbrace{\langle A_{mm'} \phi_m(x_m), \phi_{m'}(x_{m'}) \rangle}_{\text{do } m \text{ and } m'
#   \text{ belong together?}}$$
#
# The last sum is what "sees all modalities together" means: a bilinear compatibility score for each pair.
# We check it against `mmlib`'s discriminator, term by term.

# %%
from mmlib.mmgan import MMGANConfig, as_discriminator_input, build_mmgan

config = MMGANConfig()
G, D = build_mmgan(noise_dim=config.noise_dim, hidden=config.hidden, head_hidden=config.head_hidden,
                   text_hidden=config.text_hidden, char_dim=config.char_dim, branch=config.branch, seed=0,
                   device=device)
for name, net in (("generator", G), ("discriminator", D)):
    print(f"{name:>13}: {sum(p.numel() for p in net.parameters()):,} parameters")

batch = ds.train.take(slice(0, 6))
x, y = as_discriminator_input(batch.x), batch.label
h = D.features(x)
by_hand = sum(D.psi[m](h[m]).squeeze(1) + (D.embed[m](y) * h[m]).sum(1) for m in MODALITIES)
for a, b in (("image", "text"), ("image", "audio"), ("text", "audio")):
    by_hand = by_hand + (D.compat[f"{a}-{b}"](h[a]) * h[b]).sum(1)
assert torch.allclose(D(x, y), by_hand, atol=1e-5), "D = realism + digit + pairwise compatibility terms"

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 3 · Estimate
#
# The training step is chapter 06's, for triples: chapter 03's non-saturating losses, the R1 penalty on the real
# triples (its squared gradient summed over the three inputs), an average of the generator's weights for sampling,
# and **mismatched real triples as negatives** — a real triple with one modality (image, caption or sound, in turn)
# taken from the previous row (the batch rolled by one). Those teach the pairwise terms what belongs together, from
# real data. We write the step out and check it against `mmlib.mmgan.mmgan_step` over a few steps.
#
# The inline step below runs the discriminator on the mismatched triples as on any input. `mmgan_step` saves that
# pass: $D$ reads each modality on its own before combining the features, so the features of a triple with one
# modality rolled are the real triple's features with that modality's rolled. It computes $\varphi_m(x_m)$ once and
# rolls the features. The gradients are the same, but their sums run in another order, so the two agree to rounding,
# not bit for bit.

# %%
import copy

from mmlib.cgan import discriminator_loss, generator_loss
from mmlib.mmgan import mmgan_step, shuffle_modality
from mmlib.train import make_optimizer


def inline_step(G, D, G_ema, g_opt, d_opt, real, label, noise, t, gamma=1.0, beta=0.99):
    """One D update and one G update on real triples (captions as token ids) with their digits."""
    z, y = G.draw_noise(label.shape[0], noise)
    fake = G(z, y)
    d_opt.zero_grad()
    real = {m: v.detach().requires_grad_(True) for m, v in as_discriminator_input(real).items()}
    real_logits = D(real, label)
    wrong = shuffle_modality({m: v.detach() for m, v in real.items()}, MODALITIES[t % 3])
    fake_logits = torch.cat([D({m: v.detach() for m, v in fake.items()}, y), D(wrong, label)])
    grads = torch.autograd.grad(real_logits.sum(), list(real.values()), create_graph=True)
    r1 = 0.5 * sum(g.pow(2).flatten(1).sum(1) for g in grads).mean()
    (discriminator_loss(real_logits, fake_logits) + gamma * r1).backward()
    d_opt.step()
    g_opt.zero_grad()
    generator_loss(D(fake, y)).backward()
    g_opt.step()
    with torch.no_grad():
        for p_ema, p in zip(G_ema.parameters(), G.parameters()):
            p_ema.lerp_(p, 1 - beta)


def fresh_players():
    G, D = build_mmgan(seed=0, device=device)
    return (G, D, copy.deepcopy(G).requires_grad_(False), make_optimizer(G.parameters(), lr=1e-3, betas=(0.5, 0.99)),
            make_optimizer(D.parameters(), lr=1e-3, betas=(0.5, 0.99)))


batches = [ds.train.take(slice(i, i + 32)) for i in range(0, 128, 32)]
G1, D1, E1, g1, d1 = fresh_players()
noise = torch.Generator(device=device).manual_seed(5)
for t, b in enumerate(batches):
    inline_step(G1, D1, E1, g1, d1, b.x, b.label, noise, t)
G2, D2, E2, g2, d2 = fresh_players()
step = mmgan_step(G2, D2, g2, d2, noise=torch.Generator(device=device).manual_seed(5), ema=E2, ema_decay=0.99)
for b in batches:
    step(b["image"], b["text"], b["audio"], b.label)
gap = max(float((a - b).abs().max()) for a, b in zip(E1.parameters(), E2.parameters()))
print(f"largest difference between the two EMA generators after {len(batches)} steps: {gap:.1e}")
assert gap < 1e-5, "the inline step and mmlib.mmgan.mmgan_step train the same networks"

# %% [markdown] slideshow={"slide_type": "slide"}
# **Training and the comparison.** `mmlib.mmgan.run_mmgan` trains the GAN (1,500 steps of 128 triples) and, beside
# it, chapter 07's best multimodal VAE, the mixture of experts with its refitted prior (`mmlib.mvae.run_mvae("moe")`,
# the function behind `python -m mmlib run mvae-moe`), followed by the combination of section 5; then it evaluates all
# of them. The cell runs it as the registered experiment `mmgan` — the same call as
# `python -m mmlib run mmgan --seed 0 --out DIR` — so the numbers below are the experiment's.
#
# The GAN and the VAE do not depend on each other, so they train at the same time, one per CPU core
# (`mmlib.parallel.run_jobs`: each run on one thread, the GAN here and the VAE in a worker process; on a GPU or a
# single core, one after the other). Each run is seeded by its own arguments, so the numbers are the same either way — only the wait is shorter.

# %%
from mmlib.experiments import run_experiment

result = run_experiment("mmgan", seed=0, device=device)
gan, vae, decoder = (result.models[k] for k in ("gan", "vae", "decoder"))
metrics = result.metrics

# %%
from mmlib.plot import loss_curves

ax = loss_curves({"L_D (without R1)": gan.history["d_loss"], "L_G": gan.history["g_loss"]},
                 steps=gan.history.steps, title="the joint GAN's game")
ax.axhline(2 * np.log(2), color="k", ls=":", label="L_D at D = ½ everywhere")
ax.legend()
plt.show()
assert max(gan.history["d_loss"]) < 2 * np.log(2), "neither player wins outright: L_D stays below chance at every log"
g_losses = gan.history["g_loss"]
assert all(np.isfinite(g_losses)) and max(g_losses) < 2.0 and g_losses[-1] < 1.0, (
    "...and G is not crushed: L_G stays finite and under 2, and settles under 1 (log 2 = 0.69 at D = 1/2)")

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 4 · Evaluate
#
# ### Joint samples
#
# One column per noise vector (we show one digit code per column): the image, the caption (decoded from its tokens)
# and the spectrogram come from the same draw.

# %%
gen = {m: torch.as_tensor(result.arrays[f"gen_{m}"]) for m in MODALITIES}
gen_label = torch.as_tensor(result.arrays["gen_label"])
cols = [int(torch.nonzero(gen_label == d)[0, 0]) for d in range(10)]
captions = decode_text(gen["text"][cols])
fig, axes = plt.subplots(2, 10, figsize=(15, 4.2))
for j, i in enumerate(cols):
    axes[0, j].imshow(gen["image"][i, 0].cpu(), cmap="gray_r", vmin=0, vmax=1)
    axes[0, j].set_title(f"“{captions[j]}”", fontsize=10)
    axes[1, j].imshow(gen["audio"][i].cpu(), origin="lower", aspect="auto", cmap="magma", vmin=0, vmax=1)
    for ax in axes[:, j]:
        ax.set_xticks([])
        ax.set_yticks([])
fig.suptitle("Ten joint samples of the multimodal GAN: image, caption (title) and spectrogram from one noise vector")
fig.tight_layout()
plt.show()

# %% [markdown]
# The captions are the weak spot: a GAN spells character by character, and most captions come out misspelt
# (a letter dropped, doubled or swapped). How many are exactly one of the captions the data can hold?

# %%
# NBVAL_CHECK_OUTPUT
from mmlib.data import TEXT_CASES, TEXT_LANGUAGES, TEXT_TEMPLATES, caption

valid = {caption(d, lang, tmpl, case) for d in range(10) for lang in TEXT_LANGUAGES for tmpl in TEXT_TEMPLATES
         for case in TEXT_CASES}
exact = float(np.mean([c in valid for c in decode_text(gen["text"])]))
text_ok = float((classifiers["text"].predict(gen["text"]) == gen_label).double().mean())
print(f"{len(valid)} possible captions; {exact:.0%} of the generated ones are exactly one of them, "
      f"{text_ok:.0%} are read as the digit of their noise")

# %%
assert exact < 0.5 < text_ok, "most generated captions are misspelt, yet most are still read as the intended digit"

# %% slideshow={"slide_type": "subslide"}
i = cols[7]
print(f"caption: “{decode_text(gen['text'][i])[0]}”")
from IPython.display import Audio, display

from mmlib.data import spectrogram_to_audio

display(Audio(spectrogram_to_audio(gen["audio"][i]).cpu().numpy(), rate=SAMPLE_RATE))

# %% [markdown] slideshow={"slide_type": "slide"}
# ### Does the discriminator reject mismatched triples?
#
# We score the real **test** triples with the trained discriminator, first as they are, then with one modality taken
# from the previous row (so the parts show different digits, except by chance). A discriminator that sees the modalities
# together should prefer the matched triples.

# %%
from mmlib.mmgan import discriminator_scores

test = dict(ds.test.x)
matched = discriminator_scores(gan.discriminator, test, ds.test.label)
fig, axes = plt.subplots(1, 3, figsize=(14, 3.8), sharey=True)
for ax, m in zip(axes, MODALITIES):
    wrong = discriminator_scores(gan.discriminator, shuffle_modality(test, m), ds.test.label)
    bins = np.linspace(float(min(matched.min(), wrong.min())), float(max(matched.max(), wrong.max())), 30)
    ax.hist(matched.cpu().numpy(), bins=bins, alpha=0.6, label="matched")
    ax.hist(wrong.cpu().numpy(), bins=bins, alpha=0.6, label=f"{m} from another row")
    ax.set_xlabel("D(x, y) (logit)")
    ax.set_title(f"{m} mismatched")
    ax.legend(fontsize=9)
axes[0].set_ylabel("test triples")
fig.tight_layout()
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
print(f"mean logit of matched test triples: {metrics['d_matched']:.2f}")
for m in MODALITIES:
    print(f"  {m:>5} from another row: mean logit {metrics[f'd_mismatched_{m}']:.2f}; matched scores higher in "
          f"{metrics[f'd_prefers_matched_{m}']:.0%} of the rows")

# %%
for m in MODALITIES:
    assert metrics["d_matched"] > metrics[f"d_mismatched_{m}"], f"D scores matched triples above {m}-mismatched ones"
    assert metrics[f"d_prefers_matched_{m}"] >= 0.7, f"...row by row, at least 7 times in 10 ({m} mismatched)"

# %% [markdown]
# The caption is the part whose mismatch $D$ notices least: captions vary a lot (four languages, three templates),
# and $D$ reads them through a small embedding.

# %%
assert metrics["d_prefers_matched_text"] < min(metrics["d_prefers_matched_image"], metrics["d_prefers_matched_audio"]), (
    "a mismatched caption is the hardest mismatch for D to notice")

# %% [markdown] slideshow={"slide_type": "slide"}
# ### GAN and VAE, measured alike
#
# Both families are scored by chapter 07's function, `mmlib.mvae.evaluate_generation`, on 1,000 joint samples:
#
# - **joint coherence** — the fraction of the 1,000 samples whose three parts the evaluation classifiers read as
#   one digit (about 1 % by chance);
# - **Fréchet distance** per modality between classifier features of the first 135 samples and of the odd rows of
#   the real test split, next to its **baseline**, the same distance between the even and the odd test rows: what
#   a perfect generator would score at these sample sizes (lower is better for both).

# %%
# NBVAL_CHECK_OUTPUT
COHERENCE_TARGET = 0.9
print(f"{'':>22}{'GAN':>9}{'VAE':>9}{'VAE + adv. decoder':>20}")
print(f"{'joint coherence':>22}" + "".join(f"{metrics[f'{k}_joint_coherence']:>{w}.2f}"
                                           for k, w in (("gan", 9), ("vae", 9), ("combined", 20))))
for m in MODALITIES:
    row = "".join(f"{metrics[f'{k}_fd_{m}']:>{w}.0f}" for k, w in (("gan", 9), ("vae", 9), ("combined", 20)))
    head = f"FD {m} (baseline {metrics['gan_fd_baseline_' + m]:.0f})"
    print(f"{head:>22}{row}")

# %%
assert metrics["gan_joint_coherence"] >= COHERENCE_TARGET, "at least 90 % of the GAN's triples agree on the digit"
for m in MODALITIES:
    assert metrics[f"gan_fd_{m}"] < metrics[f"vae_fd_{m}"], f"the GAN's {m} samples are closer to the data (FD)"
    assert metrics[f"gan_fd_{m}"] <= 2 * metrics[f"gan_fd_baseline_{m}"], f"GAN {m}: FD within 2× its baseline"
assert metrics["vae_fd_audio"] > 3 * metrics["vae_fd_baseline_audio"], "the VAE's sounds are far from the data"
assert metrics["vae_joint_coherence"] >= COHERENCE_TARGET, "the VAE's prior samples reach 90 % coherence too"
assert abs(metrics["vae_joint_coherence"] - metrics["gan_joint_coherence"]) < 0.05, (
    "coherence is a draw: the two families' joint samples agree on the digit within 5 points of each other"
)

# %% [markdown]
# (The combination's captions and sounds come from the VAE's own decoders, on other draws of $z$; only its images
# come from the adversarial decoder of section 5.)

# %% slideshow={"slide_type": "subslide"}
fig, ax = plt.subplots(figsize=(8, 4.2))
names = {"gan": "GAN", "vae": "VAE", "combined": "VAE + adversarial image decoder"}
for k, (key, label) in enumerate(names.items()):
    ratios = [metrics[f"{key}_fd_{m}"] / metrics[f"{key}_fd_baseline_{m}"] for m in MODALITIES]
    ax.bar(np.arange(3) + 0.27 * (k - 1), ratios, width=0.27, label=label)
ax.axhline(1.0, color="k", ls=":", label="real vs real")
ax.set_yscale("log")
ax.set_yticks([0.5, 1, 2, 4], ["0.5", "1", "2", "4"])  # plain numbers on the log axis
ax.minorticks_off()
ax.set_xticks(np.arange(3))
ax.set_xticklabels(MODALITIES)
ax.set_ylabel("FD / baseline (log scale)")
ax.set_title("Joint samples: distance to the data, relative to real data")
ax.legend(fontsize=10)
plt.show()

# %% [markdown] slideshow={"slide_type": "subslide"}
# **What each family does better.**
#
# - **The GAN draws samples like the data.** Every modality's FD is within twice its real-versus-real baseline, and
#   its triples agree on the digit. Its sounds are crisp two-note motifs; the VAE's decoders, trained by likelihood,
#   produce the average of what is plausible — blurred digits and smeared spectrograms, whose FD for sounds is
#   several times the baseline. The GAN's discriminator only asks "could this be real?", and blur is not real.
# - **The VAE can infer.** It has encoders: it maps any subset of modalities to the shared latent and generates the
#   others from there (chapter 07's cross-modal generation and retrieval). Our GAN has no encoder at all: it cannot
#   say which noise produced a given caption, so it cannot translate one modality into another.
# - **Coherence is a draw.** With chapter 07's refitted prior — a mixture fitted to where the encoders put the
#   training data — the VAE's joint samples agree on the digit as often as the GAN's, and the VAE never saw a label;
#   the GAN was trained with the digits. (Without the refit, the VAE's samples agreed far less often: chapter 07.)
#
# The VAE's cross-modal generation, chapter 07's strength, is far above chance (10 %):

# %%
# NBVAL_CHECK_OUTPUT
for s in ("text", "audio"):
    print(f"VAE, {s} → image: cross-coherence {metrics[f'vae_cross_coherence_{s}_to_image']:.2f}")

# %%
for s in ("text", "audio"):
    assert metrics[f"vae_cross_coherence_{s}_to_image"] > 0.5, f"the VAE translates {s} into images of the same digit"

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 5 · Combining the two families
#
# The article closes with "by combining these generative models one obtains samples of different kinds". Here is one
# combination: keep the VAE's **encoders and latent space** (its strength) and replace its image decoder by an
# **adversarially trained** one (the GAN's strength). The new decoder is chapter 06's conditional GAN, with the
# VAE's latent code as the condition:
#
# $$\tilde x_{\text{image}} = G(\varepsilon, z), \qquad \text{trained on pairs } (z \sim q(z \mid X),\;
#   X_{\text{image}}) \text{ from the training triples, the VAE frozen.}$$
#
# We measure it against its parts: the VAE's own decoder on latent codes drawn the same way — for joint samples
# ($z \sim p(z)$, the refitted prior) and for cross-modal generation ($z \sim q(z \mid \text{caption})$ or
# $q(z \mid \text{sound})$, images scored against the real test images).

# %%
from mmlib.mmgan import generate_combined_cross
from mmlib.mvae import generate_cross

captions = ds.test["text"][:8]
by_vae = generate_cross(vae, {"text": captions}, targets=["image"], generator=torch.Generator(device=device).manual_seed(1))
by_vae = by_vae[("text", "image")]
by_combination = generate_combined_cross(vae, decoder, "text", captions, seed=1)
fig, axes = plt.subplots(2, 8, figsize=(12, 3.6))
for j in range(8):
    for r, images in enumerate((by_vae, by_combination)):
        axes[r, j].imshow(images[j, 0].cpu(), cmap="gray_r", vmin=0, vmax=1)
        axes[r, j].set_xticks([])
        axes[r, j].set_yticks([])
    axes[0, j].set_title(f"“{decode_text(captions[j])[0]}”", fontsize=9)
axes[0, 0].set_ylabel("VAE decoder")
axes[1, 0].set_ylabel("adversarial\ndecoder")
fig.suptitle("caption → latent (VAE encoder) → image")
fig.tight_layout()
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
for s in ("text", "audio"):
    print(f"{s} → image: cross-coherence VAE {metrics[f'vae_cross_coherence_{s}_to_image']:.2f} · combination "
          f"{metrics[f'combined_cross_coherence_{s}_to_image']:.2f}; FD VAE {metrics[f'vae_cross_fd_{s}_to_image']:.0f}"
          f" · combination {metrics[f'combined_cross_fd_{s}_to_image']:.0f}")
print(f"joint samples: FD image VAE {metrics['vae_fd_image']:.0f} · combination {metrics['combined_fd_image']:.0f}")

# %%
for s in ("text", "audio"):
    assert metrics[f"combined_cross_fd_{s}_to_image"] < 0.6 * metrics[f"vae_cross_fd_{s}_to_image"], (
        f"{s} → image: the adversarial decoder's images are much closer to the data (FD at least 40 % lower)")
    assert metrics[f"combined_cross_coherence_{s}_to_image"] < metrics[f"vae_cross_coherence_{s}_to_image"], (
        f"{s} → image: ...at some cost in coherence")
    assert metrics[f"combined_cross_coherence_{s}_to_image"] > 0.5, f"{s} → image: ...but most still fit the source"
assert metrics["combined_fd_image"] < metrics["vae_fd_image"], "joint samples: sharper images from the same prior"

# %% [markdown]
# The combination keeps what the VAE can do — generate an image *from a caption or a sound* — and draws sharper
# images (lower FD), at a clear price in coherence: the adversarial decoder follows the latent code less faithfully
# than a decoder trained to reconstruct it, for codes inferred from a caption and from a sound alike. A
# discriminator rewards "looks real", and only the training pairs tie the image to the code. The same trade-off
# shows in the joint samples: sharper images, fewer triples that agree.

# %%
assert metrics["combined_joint_coherence"] < metrics["vae_joint_coherence"], (
    "joint samples: the adversarial image decoder agrees less often with the VAE's captions and sounds")

# %% [markdown] slideshow={"slide_type": "slide"}
# ## Summary
#
# - A joint GAN draws a whole triple from one noise vector: a shared trunk decides the content, one head per modality
#   renders it; captions cross the GAN through the straight-through estimator.
# - Its discriminator sees the three modalities together — realism, digit and pairwise compatibility terms — and,
#   trained on mismatched real triples as negatives, it scores matched test triples above mismatched ones.
# - Measured with chapter 07's metrics, the GAN's joint samples agree on the digit at least 90 % of the time and are
#   close to the data in every modality; the VAE's agree as often (with chapter 07's refitted prior) but are blurred
#   — and the VAE, trained without labels, can infer a latent code from data and translate between modalities,
#   which the GAN cannot.
# - Combining them — the VAE's encoders with an adversarially trained decoder — keeps cross-modal generation and
#   sharpens the images, at some cost in coherence.

# %% [markdown] slideshow={"slide_type": "slide"}
# ## Exercises
#
# **08.1 (implement).** Write `shuffle(x, modality)`: given a dict of row-aligned batches `{"image": …, "text": …,
# "audio": …}`, return a new dict in which only `modality` is rolled down by one row (row $i$ gets row $i-1$'s
# value, the last row wraps to the top) — the mismatched triples of the training step. Do not modify the input.

# %% tags=["solution"]
def shuffle(x: dict, modality: str) -> dict:
    """The triple with one modality taken from the previous row."""
    return {m: (torch.roll(v, 1, dims=0) if m == modality else v) for m, v in x.items()}


# %%
# NBVAL_CHECK_OUTPUT
from mmlib.exercises import check

check("08.1", shuffle)

# %% [markdown]
# **08.2 (predict, then run).** Train the GAN without mismatched negatives:
# `run_mmgan(config=dataclasses.replace(MMGANConfig(), mismatch=False), device=device)`. Before you run it, predict
# how `d_prefers_matched_text` and the joint coherence change. Which of the discriminator's three kinds of terms
# still tells a mismatched triple from a matched one?
#
# **08.3 (open question).** Our GAN uses the digits of the training triples; the VAE does not. How could a joint GAN
# learn agreeing modalities from pairing alone? Think of what the mismatched negatives already give the
# discriminator, of a categorical part of the noise without labels (InfoGAN, Chen et al., 2016), and of giving the
# GAN an encoder (BiGAN / ALI, Donahue et al. 2017; Dumoulin et al. 2017) — which would also let it translate
# between modalities, the VAE's strength.
