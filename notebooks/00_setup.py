# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown] slideshow={"slide_type": "slide"}
# # 00 · Setup and a tour of the course
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/mmgen-course/mmgen-course/blob/main/notebooks/00_setup.ipynb)
#
# **Multimodal generative learning, from likelihoods to multimodal GANs.**
#
# By the end of this notebook you will
# - have a working environment and know which device (GPU or CPU) the course computes on;
# - have seen, and heard, the data the course learns from: handwritten digits, their captions and their sounds;
# - know how a chapter is built: the four-step workflow, self-checks, and exercises with automatic feedback;
# - have fitted your first model by maximum likelihood, twice: in closed form and by gradient ascent.

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
# ## The course at a glance
#
# The course grows from a short article on GANs for multimodal learning. It walks from the likelihood of one
# modality to models that generate several modalities together — and it corrects the article where its equations
# (2)–(6) are wrong, showing with numbers why the wrong forms fail.
#
# | nb | chapter | the question it answers |
# |---|---|---|
# | 00 | Setup and tour | What are we learning from, and how does a chapter work? |
# | 01 | Single-modality likelihood | How do we fit one distribution to one kind of data — eq. (1)? |
# | 02 | Multimodal likelihood | What is the joint likelihood of several modalities — eqs. (2)–(3) done right? |
# | 03 | GANs | How does the generator–discriminator game learn without a likelihood — eq. (4) corrected? |
# | 04 | VAEs | How does a latent-variable model bound its likelihood — eqs. (5)–(6) corrected? |
# | 05 | Discriminator on the latent | Can a discriminator replace the VAE's KL term? |
# | 06 | Conditional GAN across modalities | How do we generate one modality from another? |
# | 07 | Multimodal VAE | How do experts fuse modalities into one shared latent space? |
# | 08 | Multimodal GAN | How do we generate paired modalities from one noise vector? |

# %% [markdown] slideshow={"slide_type": "slide"}
# ## The setup cell
#
# Every notebook starts with the same cell (a test checks they are identical):
#
# 1. **On Colab** it clones the course once into `mmgen-course/` and puts its `mmlib` on the path. It never
#    reinstalls Colab's own `torch`, `numpy` or `ipywidgets`.
# 2. **Everywhere** it imports the usual libraries and `mmlib`, seeds every random generator once
#    (`seed_everything(0)`), picks the device and switches on large, legible figures.
#
# The device is chosen in the order CUDA → Apple MPS → CPU. To force one, set the environment variable
# `MMLIB_DEVICE` (for example `MMLIB_DEVICE=cpu`) before starting Jupyter.

# %% slideshow={"slide_type": "subslide"}
import platform

import matplotlib
import scipy

report = {
    "python": platform.python_version(),
    "torch": torch.__version__,
    "numpy": np.__version__,
    "scipy": scipy.__version__,
    "matplotlib": matplotlib.__version__,
    "device": describe_device(device),
    "CUDA available": torch.cuda.is_available(),
}
for key, value in report.items():
    print(f"{key:>15}: {value}")

# %% [markdown]
# Every computation below follows `device`: models and data are created there, and nothing in `mmlib` calls
# `.cuda()` by itself. The same notebook therefore runs on a laptop CPU and on a Colab GPU.

# %% slideshow={"slide_type": "skip"}
assert torch.zeros(1, device=device).device.type == device.type, "tensors are created on the chosen device"

# %% [markdown] slideshow={"slide_type": "slide"}
# ## How every chapter is built
#
# The article organises multimodal learning in four steps (§3.2.1); every chapter follows them visibly:
#
# 1. **Preprocess** — load the data, put it on the device, in the representation the model needs;
# 2. **Build** — write the model, and the objective it optimises;
# 3. **Estimate** — fit the parameters (in closed form where one exists, by gradient steps otherwise);
# 4. **Evaluate** — measure the result on held-out data and look at it.
#
# After each result comes a **self-check**: an `assert` that states the claim in words. If a change you make breaks
# a claim, the notebook stops there and tells you which claim failed.

# %% [markdown] slideshow={"slide_type": "slide"}
# ## The data: digits seen, read and heard
#
# From chapter 02 on, the course learns from **multimodal digits**: every sample is one digit (0–9) shown in three
# *modalities*, paired by that digit (the datasheet is `data/README.md`):
#
# - **image** — a real handwritten digit from the UCI collection: 8×8 pixels, 17 grey levels;
# - **text** — a short caption naming the digit, in English, French, German or Spanish, in several wordings and cases;
# - **audio** — a two-note motif whose *interval* encodes the digit, with its own pitch, tempo, loudness and noise.
#
# Each modality draws its *style* independently. Only the digit links them, which is exactly the cross-modal link a
# multimodal model must discover.

# %%
from mmlib.data import MODALITIES, SAMPLE_RATE, decode_text, load_multimodal_digits

digits = load_multimodal_digits(device=device)
train = digits.train
for modality in MODALITIES:
    print(f"{modality:>6}: {tuple(train[modality].shape)} {train[modality].dtype}")

# %%
# NBVAL_CHECK_OUTPUT
print("samples per split:", digits.sizes())

# %%
assert sum(digits.sizes().values()) == 1797, "every one of the 1,797 UCI digits appears in exactly one split"
assert set(MODALITIES) == {"image", "text", "audio"}, "three modalities: image, text and audio"
assert train["image"].device.type == device.type, "the data comes on the chosen device"

# %% [markdown] slideshow={"slide_type": "subslide"}
# **Seen and read.** The first ten training samples: each image is titled with its paired caption.

# %%
from mmlib.plot import image_grid

first = slice(0, 10)
captions = decode_text(train["text"][first])
image_grid(train["image"][first], titles=captions, nrow=10, scale=1.3, title="image + text: one digit, two modalities")
plt.show()

# %% [markdown] slideshow={"slide_type": "subslide"}
# **Heard.** Models see sounds as *spectrograms* (time left to right, pitch bottom to top). The second note sits
# $3(d-5)$ semitones from the first, so the digit is the *jump* between the two notes, whatever the pitch.

# %%
image_grid(train["audio"][first], titles=[str(int(d)) for d in train.label[first]], nrow=10, scale=1.3,
           cmap="magma", title="audio spectrograms of the same ten samples")
plt.show()

# %%
from IPython.display import Audio, display

print(f"digit {int(train.label[3])}, caption {decode_text(train['text'][3:4])[0]!r}")
display(Audio(digits.waveform("train", 3), rate=SAMPLE_RATE))

# %% [markdown] slideshow={"slide_type": "subslide"}
# **Browse.** Move the slider to see any training sample in all three modalities (run the notebook to use it).

# %%
from mmlib.widgets import slider_plot


def show_sample(index: int) -> None:
    fig, (ax_img, ax_spec) = plt.subplots(1, 2, figsize=(8, 3.2))
    ax_img.imshow(train["image"][index, 0].cpu(), cmap="gray_r", vmin=0, vmax=1)
    ax_img.set_title(f"digit {int(train.label[index])}: {decode_text(train['text'][index:index + 1])[0]!r}")
    ax_spec.imshow(train["audio"][index].cpu(), origin="lower", aspect="auto", cmap="magma")
    ax_spec.set_title("its sound (spectrogram)")
    for ax in (ax_img, ax_spec):
        ax.axis("off")


slider_plot(show_sample, index=(0, len(train) - 1, 1, 0))

# %% [markdown] slideshow={"slide_type": "slide"}
# ## A first result: maximum likelihood for a Gaussian
#
# **Preprocess.** We draw $m = 500$ numbers from a Gaussian whose parameters we pretend not to know.

# %%
true_mu, true_sigma = 1.5, 0.7
x = true_mu + true_sigma * torch.randn(500, device=device, dtype=torch.float64)
print(f"m = {x.numel()} samples, sample mean {x.mean():.3f}")

# %% [markdown] slideshow={"slide_type": "subslide"}
# **Build.** The model is $p_\theta(x) = \mathcal N(x;\mu,\sigma^2)$ with $\theta = (\mu, \sigma)$, and the article's
# eq. (1) is its likelihood $L(\theta) = \prod_{i=1}^m p_\theta(x_i)$. We maximise the average log-likelihood
#
# $$\ell(\theta) = \frac1m \sum_{i=1}^m \log \mathcal N(x_i;\mu,\sigma^2)
#   = -\log\sigma - \tfrac12\log 2\pi - \frac{1}{2m\sigma^2}\sum_{i=1}^m (x_i-\mu)^2 .$$
#
# **Estimate, way 1: closed form.** Setting the derivatives to zero gives
# $\hat\mu = \frac1m\sum_i x_i$ and $\hat\sigma^2 = \frac1m\sum_i (x_i-\hat\mu)^2$ (dividing by $m$, not $m-1$).

# %%
mu_closed = x.mean()
sigma_closed = ((x - mu_closed) ** 2).mean().sqrt()

# %% [markdown] slideshow={"slide_type": "subslide"}
# **Estimate, way 2: gradient ascent.** Most models of the course have no closed form, so we also climb $\ell$ with
# autograd. We optimise $\log\sigma$ rather than $\sigma$ so that $\sigma$ stays positive, and use the course's
# trainer, `mmlib.train.train`: it feeds a *step* function, shows a progress bar, logs the loss and stops with an
# explanation if the loss turns NaN.

# %%
from torch.distributions import Normal

from mmlib.train import loss_step, make_optimizer, train

mu = torch.zeros((), device=device, dtype=torch.float64, requires_grad=True)
log_sigma = torch.zeros((), device=device, dtype=torch.float64, requires_grad=True)


def negative_log_likelihood(batch: torch.Tensor) -> torch.Tensor:
    """−ℓ(θ): the average negative log-likelihood of the batch under N(μ, σ²)."""
    return -Normal(mu, log_sigma.exp()).log_prob(batch).mean()


optimizer = make_optimizer([mu, log_sigma], lr=0.05)
history = train(loss_step(negative_log_likelihood, optimizer), x, steps=600, batch_size=None, log_every=20,
                desc="Gaussian MLE")

# %% [markdown] slideshow={"slide_type": "subslide"}
# **Evaluate.** Both ways should land on the same estimate, and the loss curve should flatten at $-\ell(\hat\theta)$.

# %%
from mmlib.plot import loss_curves

ax = loss_curves({"−ℓ(θ) (nats per sample)": history["loss"]}, steps=history.steps, title="Gradient ascent on ℓ(θ)")
nll_closed = -Normal(mu_closed, sigma_closed).log_prob(x).mean()
ax.axhline(float(nll_closed), color="k", ls="--", label="closed-form optimum")
ax.legend()
plt.show()

# %% tags=["nbval-check"]
# NBVAL_CHECK_OUTPUT
print(f"closed form : mu = {mu_closed:.4f}, sigma = {sigma_closed:.4f}")
print(f"gradient    : mu = {mu.detach():.4f}, sigma = {log_sigma.detach().exp():.4f}")

# %%
assert torch.allclose(mu.detach(), mu_closed, atol=1e-4) and torch.allclose(
    log_sigma.detach().exp(), sigma_closed, atol=1e-4
), "closed form and gradient ascent agree to 1e-4"
assert abs(float(nll_closed) - history.last("loss")) < 1e-6, "the loss flattens at the closed-form optimum"

# %% [markdown] slideshow={"slide_type": "subslide"}
# Our log-density is `torch.distributions.Normal`'s; a self-check confirms it equals the formula above written by
# hand, so that we know exactly what the library computes.

# %%
by_hand = -torch.log(sigma_closed) - 0.5 * np.log(2 * np.pi) - ((x - mu_closed) ** 2).mean() / (2 * sigma_closed**2)
assert torch.allclose(by_hand, -nll_closed, atol=1e-12), "Normal.log_prob is the Gaussian log-density written by hand"

# %% [markdown] slideshow={"slide_type": "slide"}
# ## Summary
#
# - The setup cell is the same everywhere: it seeds once, picks the device, and on Colab fetches the course.
# - Each chapter runs the four steps preprocess → build → estimate → evaluate, with a self-check after each result.
# - Maximum likelihood for a Gaussian has a closed form; gradient ascent with autograd reaches the same point.
#   Chapter 01 takes this further: discrete data, mixtures, and over-fitting.

# %% [markdown] slideshow={"slide_type": "slide"}
# ## Exercises
#
# Each chapter ends with exercises of growing difficulty. Implementable ones come with a **check** that tells you
# whether your answer is right; the course's own solution is in the cell tagged `solution` (the student version of
# the notebooks replaces it with a stub for you to fill in).
#
# **00.1 (implement).** Write `gaussian_mle(x)` returning the maximum-likelihood mean and standard deviation of a
# 1D tensor, without `torch.std` (mind its default!).

# %% tags=["solution"]
def gaussian_mle(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Maximum-likelihood (μ̂, σ̂) of a 1D sample."""
    mu_hat = x.mean()
    return mu_hat, ((x - mu_hat) ** 2).mean().sqrt()


# %%
# NBVAL_CHECK_OUTPUT
from mmlib.exercises import check

check("00.1", gaussian_mle)

# %% [markdown]
# **00.2 (predict, then run).** Change the sample size from 500 to 20 in the *Preprocess* cell and rerun the
# notebook. Before you do: will the two estimates still agree with each other? Will they still be close to
# `true_mu` and `true_sigma`? Which self-check, if any, do you expect to fail?
#
# **00.3 (open question).** `torch.std(x)` divides by $m-1$. Why does maximum likelihood divide by $m$, and when
# would you prefer the other estimate?
