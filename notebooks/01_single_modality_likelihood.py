# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown] slideshow={"slide_type": "slide"}
# # 01 · Single-modality likelihood
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/mmgen-course/mmgen-course/blob/main/notebooks/01_single_modality_likelihood.ipynb)
#
# **How do we fit one distribution to one kind of data, and score it honestly?**
#
# By the end of this notebook you will
# - write the likelihood of the article's eq. (1) for a 64-dimensional Gaussian and maximise it twice: in closed form
#   and by gradient ascent with autograd;
# - know why a probability *density* is not a probability on discrete data, and two ways to fix that
#   (discretisation and dequantisation);
# - score 17-level digit images with a proper discrete likelihood, in nats per image and bits per pixel, and see why
#   binary cross-entropy on grey levels is not one;
# - fit a mixture model by EM, watch its objective climb, and choose its size by held-out likelihood, with
#   over-fitting measured rather than assumed;
# - explore a likelihood surface with sliders.

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
# ## Eq. (1): the likelihood of one modality
#
# The article (§3.1) writes the likelihood of $m$ independent samples $S = \{x_i\}_{i=1}^m$ under a model
# $p_\theta$ as
#
# $$L(\theta \mid S) = \prod_{i=1}^{m} p_\theta(x_i) \tag{1}$$
#
# and estimates $\hat\theta = \arg\max_\theta L(\theta\mid S)$. We always work with the **average log-likelihood**
# $\ell(\theta) = \frac1m\sum_i \log p_\theta(x_i)$: same maximiser, no underflow, and in *nats per sample* it
# can be compared across data sets of different sizes.
#
# Eq. (1) is correct, but it hides a condition: $p_\theta$ must be a **normalised** distribution *of the kind of data
# we have*. The article says $x_i \in \mathbb R^d$; our digits are not. That condition is this chapter's thread.

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 1 · Preprocess: digits as grey levels
#
# The UCI handwritten digits are 8×8 images whose pixels count the ink in 4×4 blocks of a 32×32 bitmap: each pixel
# takes one of **17 levels**, $0,1,\dots,16$. We keep them as integers, with `mmlib.data`'s train / validation /
# test split (the same split every later chapter uses).

# %%
import math

import torch.nn.functional as F

from mmlib.data import NUM_LEVELS, load_digit_images
from mmlib.likelihood import to_levels

levels = {split: to_levels(load_digit_images(split, device=device)[0]) for split in ("train", "val", "test")}
train, val, test = levels["train"], levels["val"], levels["test"]
m, P = train.shape
print(f"train {tuple(train.shape)}, val {tuple(val.shape)}, test {tuple(test.shape)}; levels 0..{NUM_LEVELS - 1}")

# %%
assert torch.equal(torch.unique(train).cpu(), torch.arange(NUM_LEVELS)), "every pixel value is one of 17 integer levels"
constant = (train == train[0]).all(0)
assert int(constant.sum()) > 0, "some pixels never change in the training set"
print(f"{int(constant.sum())} pixels are constant (always {train[0, constant].tolist()}) in all {m} training images")

# %% slideshow={"slide_type": "subslide"}
from mmlib.plot import image_grid

fig = image_grid(train[:20].reshape(-1, 8, 8).float() / 16, nrow=10, title="Training digits (grey level / 16)")
plt.show()
fig, ax = plt.subplots(figsize=(8, 3.8))
ax.bar(range(NUM_LEVELS), torch.bincount(train.flatten(), minlength=NUM_LEVELS).cpu().numpy())
ax.set(yscale="log", xlabel="grey level", ylabel="pixel count (log scale)",
       title="All training pixels: 17 discrete levels, mostly 0 or 16")
ax.set_xticks(range(NUM_LEVELS))
plt.show()

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 2 · A density is not a probability
#
# A Gaussian $\mathcal N(x;\mu,\sigma^2)$ is a *density*: it integrates to one over $\mathbb R$, and its value at a
# point can be any positive number. Put it on discrete data and eq. (1) breaks. The top-left pixel is 0 in every
# training image; its Gaussian MLE is $\hat\mu = 0$, $\hat\sigma = 0$, and as $\sigma\to 0$ the "log-likelihood"
# $\log\mathcal N(0;0,\sigma^2) = -\log\sigma - \tfrac12\log 2\pi$ grows **without bound**:

# %%
from torch.distributions import Normal

f64 = torch.float64
corner = train[:, 0].to(f64)
sigmas = torch.tensor([1.0, 0.1, 0.01, 0.001], dtype=f64, device=device)
corner_loglik = Normal(torch.zeros_like(sigmas), sigmas).log_prob(corner[:, None]).mean(0)

# %%
# NBVAL_CHECK_OUTPUT
for s, ll in zip(sigmas.tolist(), corner_loglik.tolist()):
    print(f"sigma = {s:<6}: average log density of the corner pixel = {ll:+.3f} nats")

# %%
assert bool((corner_loglik.diff() > 0).all()) and float(corner_loglik[-1]) > 0, (
    "a Gaussian density on a constant discrete pixel has no maximum: its log-likelihood grows as sigma -> 0"
)

# %% [markdown] slideshow={"slide_type": "subslide"}
# Another symptom: add up the density at the 17 levels. For a probability over the levels the sum would be 1.

# %%
k = torch.arange(NUM_LEVELS, dtype=f64, device=device)
mass_sigmas = [0.1, 0.3, 1.0, 3.0]
density_sums = torch.stack([Normal(8.0, s).log_prob(k).exp().sum() for s in mass_sigmas])

# %%
# NBVAL_CHECK_OUTPUT
for s, total in zip(mass_sigmas, density_sums.tolist()):
    print(f"N(8, {s}^2): sum over the 17 levels of the density = {total:.4f}")

# %%
assert float(density_sums[0]) > 1.5 and float(density_sums[-1]) < 1, (
    "the density summed over the levels is not a probability: above 1 when narrow, below 1 when mass leaks out"
)

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Two fixes
#
# **Discretise.** Give level $k$ the mass of the density on $[k-\tfrac12, k+\tfrac12)$ and put the two tails on the
# end levels: $P(k) = \Phi\big(\tfrac{k+1/2-\mu}{\sigma}\big) - \Phi\big(\tfrac{k-1/2-\mu}{\sigma}\big)$. These
# are probabilities: they sum to one and never exceed one, so the log-likelihood is at most 0.
#
# **Dequantise.** Add noise $u\sim\mathcal U[0,1)$ to each value and fit a density to $x = k + u$. The density then
# defines $P(k) = \int_k^{k+1} p(x)\,dx$, and by Jensen's inequality
# $\log P(k) \ge \mathbb E_u[\log p(k+u)]$: the average log-density of dequantised data is a **lower bound** on a
# proper discrete log-likelihood, in the same nats (Theis, van den Oord & Bethge, 2016).
#
# We use discretisation for one pixel (the likelihood surface at the end) and dequantisation for the
# 64-dimensional Gaussian, whose discretisation would need 64-dimensional box integrals.

# %%
from mmlib.likelihood import dequantize, discretized_gaussian_log_prob

levels_k = torch.arange(NUM_LEVELS, device=device)
discrete_sums = torch.stack([discretized_gaussian_log_prob(levels_k, 8.0, s).exp().sum() for s in mass_sigmas])
corner_discrete = torch.stack([discretized_gaussian_log_prob(train[:, 0], 0.0, s).mean() for s in sigmas.tolist()])
assert torch.allclose(discrete_sums, torch.ones_like(discrete_sums), atol=1e-12), "discretised probabilities sum to 1"
assert bool((corner_discrete <= 0).all()), "a discrete log-likelihood is never positive: no more +infinity"

# the dequantisation bound for N(8, 2^2), with E_u[(k + u - mu)^2] = (k + 1/2 - mu)^2 + 1/12 computed exactly
mu_d, sigma_d = 8.0, 2.0
normal_d = Normal(torch.tensor(mu_d, dtype=f64, device=device), torch.tensor(sigma_d, dtype=f64, device=device))
exact_log_p = (normal_d.cdf(k + 1) - normal_d.cdf(k)).log()
bound = -0.5 * math.log(2 * math.pi * sigma_d**2) - ((k + 0.5 - mu_d) ** 2 + 1 / 12) / (2 * sigma_d**2)
assert bool((bound <= exact_log_p).all()), "E_u[log p(k + u)] <= log P(k) at every level (Jensen)"
gen_check = torch.Generator(device=device).manual_seed(1)
mc_bound = normal_d.log_prob(torch.stack([dequantize(levels_k, generator=gen_check) for _ in range(4000)])).mean(0)
assert torch.allclose(mc_bound, bound, atol=0.05), "dequantize + Monte Carlo estimates the same bound"
print(f"largest gap log P(k) - bound over the 17 levels: {float((exact_log_p - bound).max()):.4f} nats")

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 3 · Eq. (1) for a 64-dimensional Gaussian
#
# **Preprocess.** Dequantise every pixel once (a fixed draw, seeded), so the data are continuous.
#
# **Build.** $p_\theta(x) = \mathcal N(x;\mu,\Sigma)$ with $\mu\in\mathbb R^{64}$ and a full covariance
# $\Sigma$ (64 + 2,080 parameters). Its log-density, written with a Cholesky factor $\Sigma = LL^\top$, is
#
# $$\log\mathcal N(x;\mu,\Sigma) = -\tfrac12\Big[D\log 2\pi + \underbrace{2\textstyle\sum_i\log L_{ii}}_{\log\det\Sigma}
#   + \big\|L^{-1}(x-\mu)\big\|^2\Big].$$

# %%
from scipy import stats
from torch.distributions import MultivariateNormal

gen = torch.Generator(device=device).manual_seed(0)
x = {split: dequantize(lv, generator=gen) for split, lv in levels.items()}  # k + u, u ~ U[0, 1)


def log_density_by_hand(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, cov) for each row of x, from the Cholesky factor of cov."""
    chol = torch.linalg.cholesky(cov)
    solved = torch.linalg.solve_triangular(chol, (x - mean).T, upper=False)  # L^{-1}(x - mu), one column per row
    return -0.5 * (x.shape[1] * math.log(2 * math.pi) + 2 * chol.diagonal().log().sum() + (solved**2).sum(0))


# %% [markdown] slideshow={"slide_type": "subslide"}
# **Estimate, way 1: closed form.** Setting the gradient of $\ell$ to zero gives the sample mean and the sample
# covariance divided by $m$: $\hat\mu = \frac1m\sum_i x_i$, $\hat\Sigma = \frac1m\sum_i (x_i-\hat\mu)(x_i-\hat\mu)^\top$.
# Before trusting our log-density we check it against two libraries.

# %%
mean_closed = x["train"].mean(0)
cov_closed = (x["train"] - mean_closed).T @ (x["train"] - mean_closed) / m

by_hand = log_density_by_hand(x["test"], mean_closed, cov_closed)
by_torch = MultivariateNormal(mean_closed, covariance_matrix=cov_closed).log_prob(x["test"])
by_scipy = stats.multivariate_normal(mean_closed.cpu().numpy(), cov_closed.cpu().numpy()).logpdf(x["test"].cpu().numpy())
assert torch.allclose(by_hand, by_torch, atol=1e-8), "our log-density equals torch.distributions.MultivariateNormal"
assert np.allclose(by_hand.cpu().numpy(), by_scipy, atol=1e-8), "our log-density equals scipy.stats.multivariate_normal"
n_cov = cov_closed.shape[0] * (cov_closed.shape[0] + 1) // 2  # a symmetric matrix: the diagonal and one triangle
assert (mean_closed.numel(), n_cov) == (64, 2080), "the full Gaussian has 64 + 2,080 free parameters"

# %% [markdown]
# `mmlib.likelihood` holds the same two functions; from here on we use them.

# %%
from mmlib.likelihood import fit_gaussian, gaussian_log_density

mean_lib, cov_lib = fit_gaussian(x["train"])
assert torch.allclose(mean_lib, mean_closed) and torch.allclose(cov_lib, cov_closed), "mmlib.fit_gaussian is the closed form"
assert torch.allclose(gaussian_log_density(x["test"], mean_lib, cov_lib), by_hand), "mmlib's log-density is ours"

# %% [markdown] slideshow={"slide_type": "subslide"}
# **Estimate, way 2: gradient ascent with autograd.** We parametrise $\Sigma = LL^\top$ by a lower-triangular $L$
# whose diagonal is $\exp$ of a free parameter, so every step keeps $\Sigma$ positive definite, start from
# $\mu = 0$ and $L$ = the data's overall spread times $I$, and climb $\ell$ with Adam (learning rate decayed to 0
# by a cosine schedule), full batch, through the course's trainer.
#
# One saving first: averaged over the data, the Gaussian log-likelihood depends on the data only through the
# sample mean $\bar x$ and covariance $S$ (its *sufficient statistics*),
#
# $$\ell(\mu,\Sigma) = -\tfrac12\Big[D\log2\pi + \log\det\Sigma + \mathrm{tr}(\Sigma^{-1}S)
#   + (\bar x-\mu)^\top\Sigma^{-1}(\bar x-\mu)\Big],$$
#
# so each step costs one 64×64 computation instead of 1,259 log-densities. Same function, checked:

# %%
from mmlib.train import loss_step, make_optimizer
from mmlib.train import train as train_loop

D = x["train"].shape[1]


def average_log_likelihood(mean: torch.Tensor, tril: torch.Tensor, x_mean: torch.Tensor, x_cov: torch.Tensor) -> torch.Tensor:
    """l(mean, L L^T) from the data's mean and covariance (divided by m)."""
    diff = (x_mean - mean)[:, None]
    trace = torch.cholesky_solve(x_cov, tril).diagonal().sum()  # tr(Sigma^{-1} S)
    quad = (diff * torch.cholesky_solve(diff, tril)).sum()  # (xbar - mu)^T Sigma^{-1} (xbar - mu)
    return -0.5 * (D * math.log(2 * math.pi) + 2 * tril.diagonal().log().sum() + trace + quad)


some_mean, some_tril = torch.full((D,), 5.0, dtype=f64, device=device), 3 * torch.eye(D, dtype=f64, device=device)
assert torch.allclose(average_log_likelihood(some_mean, some_tril, mean_closed, cov_closed),
                      MultivariateNormal(some_mean, scale_tril=some_tril).log_prob(x["train"]).mean()), (
    "the sufficient-statistics form is the average of the m log-densities"
)


# %% slideshow={"slide_type": "subslide"}
def gradient_ascent(data: torch.Tensor, steps: int, lr: float = 0.1, progress: bool = True):
    """Maximise l by Adam on (mu, L); returns the estimate (mean, covariance) and the logged history."""
    x_mean, x_cov = data.mean(0), (data - data.mean(0)).T @ (data - data.mean(0)) / len(data)
    mean = torch.zeros(D, dtype=f64, device=device, requires_grad=True)
    raw = torch.diag(torch.full((D,), float(data.std().log()), dtype=f64, device=device)).requires_grad_(True)
    lower = torch.ones(D, D, dtype=f64, device=device).tril(-1)  # mask of the strictly lower triangle

    def scale_tril() -> torch.Tensor:
        return raw * lower + torch.diag_embed(raw.diagonal().exp())  # L: lower triangular, positive diagonal

    def negative_log_likelihood(batch: torch.Tensor) -> torch.Tensor:  # full batch: its statistics are above
        return -average_log_likelihood(mean, scale_tril(), x_mean, x_cov)

    optimizer = make_optimizer([mean, raw], lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    update = loss_step(negative_log_likelihood, optimizer)

    def step(batch: torch.Tensor) -> dict[str, torch.Tensor]:
        losses = update(batch)
        schedule.step()
        return losses

    history = train_loop(step, data, steps=steps, batch_size=None, log_every=50, desc="Gaussian MLE (gradient)",
                         progress=progress)
    with torch.no_grad():
        return mean.detach(), scale_tril() @ scale_tril().T, history


mean_grad, cov_grad, history = gradient_ascent(x["train"], steps=1200)

# %% [markdown] slideshow={"slide_type": "subslide"}
# **Evaluate.** Both ways should reach the same maximum of $\ell$.

# %%
from mmlib.plot import loss_curves

loglik_closed = float(gaussian_log_density(x["train"], mean_closed, cov_closed).mean())
loglik_grad = float(gaussian_log_density(x["train"], mean_grad, cov_grad).mean())
gap = [max(loss + loglik_closed, 1e-5) for loss in history["loss"]]  # logged losses are float32: ~1e-5 resolution
ax = loss_curves({"−ℓ(θ) − (−ℓ(θ̂)), gradient ascent": gap}, steps=history.steps, logy=True,
                 title="Gradient ascent closes the gap to the closed form", ylabel="nats per image above optimum")
ax.axhline(1e-3, color="k", ls="--", label="1e-3 nats (the self-check)")
ax.legend()
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
print(f"closed form: l = {loglik_closed:.3f} nats per image")
print(f"gradient   : l = {loglik_grad:.3f} nats per image")

# %%
assert abs(loglik_closed - loglik_grad) < 1e-3, "closed form and gradient ascent reach the same likelihood, to 1e-3 nats"
assert torch.allclose(mean_grad, mean_closed, atol=0.01), "... and the same mean"
assert torch.allclose(cov_grad, cov_closed, atol=0.05), "... and the same covariance"

# %% [markdown]
# The same gradient ascent is `mmlib.likelihood.fit_gaussian_gradient`: same start, same steps, same numbers (checked
# on a short run of 50 steps).

# %%
from mmlib.likelihood import fit_gaussian_gradient

short_inline = gradient_ascent(x["train"], steps=50, progress=False)
short_lib = fit_gaussian_gradient(x["train"], steps=50, lr=0.1, progress=False)
assert torch.allclose(short_lib[0], short_inline[0], atol=1e-10) and torch.allclose(short_lib[1], short_inline[1], atol=1e-10), (
    "mmlib.fit_gaussian_gradient reproduces the inline gradient ascent"
)

# %% [markdown] slideshow={"slide_type": "subslide"}
# **Held-out.** For an image $k$, Jensen's inequality gives $\mathbb E_u[\log p(k+u)] \le \log P(k)$, the
# log-probability of the Gaussian's *discrete* model $P(k)=\int_{k+[0,1)^{64}} p$. The average log-density at one
# noise draw per image, on validation and test images, is an unbiased estimate of the bound averaged over the
# images. Averaging the density over $S$ draws *inside* the
# log, $\log\frac1S\sum_s p(k+u_s)$, estimates a tighter bound (Jensen again): how loose was the one-draw bound?

# %%
gaussian = {split: float(gaussian_log_density(x[split], mean_closed, cov_closed).mean()) for split in x}
S = 64
gen_s = torch.Generator(device=device).manual_seed(2)
draws = torch.stack([gaussian_log_density(dequantize(test, generator=gen_s), mean_closed, cov_closed) for _ in range(S)])
one_draw = float(draws.mean())
tighter = float((torch.logsumexp(draws, 0) - math.log(S)).mean())

# %%
# NBVAL_CHECK_OUTPUT
print("Gaussian, nats per image (estimated lower bounds): " + ", ".join(f"{s} {v:.2f}" for s, v in gaussian.items()))
print(f"test, one draw: {one_draw:.2f}; log-mean-exp of {S} draws: {tighter:.2f}")

# %%
assert tighter - one_draw > 1.0, "the one-draw bound is loose: the log-mean-exp of 64 draws is more than 1 nat higher"
assert gaussian["train"] > gaussian["val"] and gaussian["train"] > gaussian["test"], "held-out images are less likely"

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 4 · A proper discrete likelihood
#
# **Build.** Treat each pixel $p$ as a categorical variable over the 17 levels with its own probabilities
# $\theta_{p,0..16}$, pixels independent:
# $p_\theta(x) = \prod_{p=1}^{64} \theta_{p, x_p}$. This is a probability of the image itself:
# summed over all $17^{64}$ images it gives one, and $-\log_2 p_\theta(x)/64$ is the number of **bits per pixel** a
# code built on it would use.
#
# **Estimate.** The MLE is the frequency: $\hat\theta_{pl} = n_{pl}/m$ with $n_{pl}$ the number of training
# images whose pixel $p$ has level $l$.

# %%
counts = F.one_hot(train, NUM_LEVELS).sum(0).to(f64)  # (P, L): n_pl
unseen = (counts[torch.arange(P, device=device)[None, :], test] == 0).any(1)  # a (pixel, level) pair never seen
log_theta_ml = (counts / m).log()
test_ml = log_theta_ml.gather(1, test.T).sum(0)

# %%
# NBVAL_CHECK_OUTPUT
print(f"{int(unseen.sum())} of {len(test)} test images show a pixel level never seen for that pixel in training")
print(f"their ML log-likelihood: {test_ml[unseen].unique().tolist()}")

# %%
assert int(unseen.sum()) > 0 and bool(torch.isneginf(test_ml[unseen]).all()), (
    "the pure ML estimate gives probability 0, log-likelihood -inf, to test images with an unseen level"
)

# %% [markdown] slideshow={"slide_type": "subslide"}
# **Smoothing.** Add a pseudo-count $\alpha$ to every level:
# $\hat\theta_{pl} = (n_{pl}+\alpha)/(m + 17\alpha)$. This is the posterior mean under a symmetric
# Dirichlet($\alpha$) prior; $\alpha = \tfrac12$ (the Jeffreys prior, Krichevsky–Trofimov estimator) is our default.
# A quick scan on the **validation** split shows the choice matters little here.

# %%
from torch.distributions import Categorical

alpha = 0.5


def smoothed_log_theta(lv: torch.Tensor, alpha: float) -> torch.Tensor:
    """log of (n_pl + alpha) / (m + L alpha), shape (P, L)."""
    n = F.one_hot(lv, NUM_LEVELS).sum(0).to(f64)
    return ((n + alpha) / (len(lv) + NUM_LEVELS * alpha)).log()


def independent_log_lik(lv: torch.Tensor, log_theta: torch.Tensor) -> torch.Tensor:
    """sum_p log theta_{p, x_p} for each image."""
    return log_theta.gather(1, lv.T).sum(0)


log_theta = smoothed_log_theta(train, alpha)
assert torch.allclose(independent_log_lik(test, log_theta), Categorical(logits=log_theta).log_prob(test).sum(1)), (
    "our log-likelihood equals torch.distributions.Categorical's"
)
alphas = [0.01, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0]
val_by_alpha = [float(independent_log_lik(val, smoothed_log_theta(train, a)).mean()) for a in alphas]

# %%
# NBVAL_CHECK_OUTPUT
print("validation nats per image by alpha: " + ", ".join(f"{a}: {v:.2f}" for a, v in zip(alphas, val_by_alpha)))

# %%
assert max(val_by_alpha) - val_by_alpha[alphas.index(alpha)] < 0.1, "alpha = 1/2 is within 0.1 nats of the best alpha on validation"

# %% [markdown]
# `mmlib.likelihood.fit_categorical` and `categorical_log_likelihood` are these two functions:

# %%
from mmlib.likelihood import bits_per_pixel, categorical_log_likelihood, fit_categorical

assert torch.allclose(fit_categorical(train, alpha), log_theta), "mmlib.fit_categorical is the smoothed estimate"
independent = {s: float(categorical_log_likelihood(lv, log_theta).mean()) for s, lv in levels.items()}

# %%
# NBVAL_CHECK_OUTPUT
for s, v in independent.items():
    print(f"independent categoricals, {s:>5}: {v:8.2f} nats per image = {bits_per_pixel(v, P):.3f} bits per pixel")
print(f"(storing the raw levels takes log2(17) = {math.log2(17):.3f} bits per pixel)")

# %%
assert independent["test"] > tighter, "on test images the proper discrete model beats the Gaussian's (tighter) bound"
assert bits_per_pixel(independent["test"], P) < math.log2(NUM_LEVELS), "the model compresses: fewer bits than log2(17)"

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Binary cross-entropy is not a likelihood of grey levels
#
# A common shortcut scales the levels to $t = k/16\in[0,1]$ and uses the binary cross-entropy
# $\mathrm{BCE}(t;p) = -[t\log p + (1-t)\log(1-p)]$ as "negative log-likelihood". For $t\in\{0,1\}$ it is one. For
# 17 levels, $\exp(-\mathrm{BCE})$ summed over the levels is not 1: the end levels alone give $(1-p)+p = 1$, and
# the 15 levels in between add more. We take $p$ = each pixel's mean grey level (what BCE training converges to).

# %%
from mmlib.likelihood import bce_log_score, bce_total_mass

p_bce = (train.to(f64) / (NUM_LEVELS - 1)).mean(0).clamp(1e-3, 1 - 1e-3)
total_mass = bce_total_mass(p_bce)  # one number per pixel; 1 for a normalised likelihood
bce_test = float(bce_log_score(test, p_bce).mean())
bce_normalised = bce_test - float(total_mass.log().sum())  # divide by the normaliser: now a probability of the levels

# %%
# NBVAL_CHECK_OUTPUT
print(f"sum over 17 levels of exp(-BCE): from {float(total_mass.min()):.2f} to {float(total_mass.max()):.2f} across pixels")
print(f"test '-BCE' = {bce_test:.2f} 'nats' per image;  normalised: {bce_normalised:.2f};  categoricals: {independent['test']:.2f}")

# %%
assert bool((total_mass > 1).all()), "exp(-BCE) sums to more than 1 over the 17 levels at every pixel: not normalised"
assert bce_test > independent["test"] > bce_normalised, (
    "BCE looks far better than the categoricals only because it is not normalised; normalised, it is worse"
)

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 5 · More capacity: a mixture of categoricals, fitted by EM
#
# **Build.** Independent pixels cannot say "if this pixel is ink, that one is too". A mixture of $K$ prototypes can:
#
# $$p_\theta(x) = \sum_{k=1}^K \pi_k \prod_{p=1}^{64}\theta_{k,p,x_p}.$$
#
# **Estimate.** The log of a sum has no closed-form maximiser. Expectation–maximisation (Dempster, Laird & Rubin,
# 1977) alternates two closed forms:
# - **E-step**: responsibilities $r_{nk} = \pi_k p(x_n\mid k) / \sum_j \pi_j p(x_n\mid j)$;
# - **M-step**: $\pi_k = \frac{N_k}{m}$ with $N_k=\sum_n r_{nk}$, and
#   $\theta_{kpl} = \big(\sum_n r_{nk}[x_{np}=l] + \alpha\big)/\big(N_k + 17\alpha\big)$.
#
# Each iteration cannot decrease $\ell(\theta) + \frac{\alpha}{m}\sum_{kpl}\log\theta_{kpl}$: the log-likelihood
# plus the log of the Dirichlet prior whose MAP estimate is add-$\alpha$ smoothing. With $\alpha = 0$ it is the
# log-likelihood itself.

# %%
K, iterations = 10, 100
onehot = F.one_hot(train, NUM_LEVELS).to(f64).reshape(m, -1)  # (m, P*L): sums over pixels become one product
gen_em = torch.Generator().manual_seed(0)
start = torch.randperm(m, generator=gen_em)[:K].to(device)  # K training images as seeds of the prototypes
marginal = (onehot.sum(0) + alpha) / (m + NUM_LEVELS * alpha)
log_theta_k = (0.5 * onehot[start] + 0.5 * marginal).log()  # (K, P*L)
log_pi = torch.full((K,), -math.log(K), dtype=f64, device=device)
objective, loglik_em = [], []
for it in range(iterations + 1):
    log_joint = onehot @ log_theta_k.T + log_pi  # (m, K): log pi_k + log p(x_n | k)
    log_lik = torch.logsumexp(log_joint, dim=1)
    loglik_em.append(log_lik.mean())
    objective.append(log_lik.mean() + alpha * log_theta_k.sum() / m)
    if it == iterations:
        break
    resp = torch.softmax(log_joint, dim=1)  # E-step
    n_k = resp.sum(0)  # M-step
    log_theta_k = ((resp.T @ onehot + alpha) / (n_k[:, None] + NUM_LEVELS * alpha)).log()
    log_pi = (n_k / m).log()
objective, loglik_em = torch.stack(objective), torch.stack(loglik_em)

# %%
assert float(objective.diff().min()) > -1e-9, "EM never decreases its objective (to float64 rounding, 1e-9 nats)"

# %% [markdown]
# `mmlib.likelihood.fit_categorical_mixture` is the same loop (same start, same iterations). With $\alpha=0$, the
# pure maximum-likelihood EM, the log-likelihood itself never decreases; with $\alpha>0$ it may dip slightly,
# because EM climbs the log-posterior, not the log-likelihood.

# %%
from mmlib.likelihood import fit_categorical_mixture

mixture_lib, history_lib = fit_categorical_mixture(train, K, alpha=alpha, iterations=iterations, seed=0)
assert torch.allclose(history_lib["objective"], objective, atol=1e-10), "mmlib's EM retraces the inline EM"
assert torch.allclose(mixture_lib.log_probs.reshape(K, -1), log_theta_k, atol=1e-10), "... to the same parameters"
_, history_ml = fit_categorical_mixture(train, K, alpha=0.0, iterations=iterations, seed=0)
assert float(history_ml["log_likelihood"].diff().min()) > -1e-9, "with alpha = 0, EM never decreases the log-likelihood"

# %%
# NBVAL_CHECK_OUTPUT
print(f"K = {K}: objective {float(objective[0]):.2f} -> {float(objective[-1]):.2f} nats per image in {iterations} EM steps")
print(f"largest one-step dip of the log-likelihood itself: alpha = 1/2: {max(0.0, -float(loglik_em.diff().min())):.1e};"
      f" alpha = 0: {max(0.0, -float(history_ml['log_likelihood'].diff().min())):.1e} nats")

# %% slideshow={"slide_type": "subslide"}
fig, ax = plt.subplots(figsize=(8, 4.5))
ax.plot(objective.cpu(), lw=2, label="EM objective (log-lik + log-prior), α = ½")
ax.plot(loglik_em.cpu(), lw=2, ls="--", label="training log-likelihood, α = ½")
ax.plot(history_ml["log_likelihood"].cpu(), lw=2, ls=":", label="training log-likelihood, α = 0")
ax.set(xlabel="EM iteration", ylabel="nats per image", title=f"EM for a mixture of K = {K} categorical images",
       ylim=(float(objective[1]) - 3, float(history_ml["log_likelihood"][-1]) + 1))
ax.legend()
plt.show()

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 6 · Held-out likelihood: how many components?
#
# More components always fit the training images better. Do they fit *new* images better? The registered experiment
# `likelihood-digits` fits $K\in\{1,2,5,10,20,50,100\}$ (α = ½, at most 100 EM steps each; every 10 steps it
# stops if the objective gained less than $10^{-6}$ nats per step on average over the last 10), scores train,
# validation and test, and chooses $K$ on **validation**; the test split is only reported. Run it from a shell with
# `python -m mmlib run likelihood-digits --seed 0 --out results/likelihood`.

# %%
from mmlib.likelihood import baseline_test_log_likelihood, likelihood_digits

result = likelihood_digits(seed=0, device=device)
metrics = result.metrics
ks = result.arrays["components"].tolist()
curves = {s: result.arrays[f"{s}_loglik"].tolist() for s in ("train", "val", "test")}
best_k = metrics["best_components"]

# %% slideshow={"slide_type": "subslide"}
fig, ax = plt.subplots(figsize=(8, 5))
for s, style in zip(curves, ("-o", "-s", "-^")):
    ax.plot(ks, curves[s], style, lw=2, label=s)
ax.axvline(best_k, color="k", ls=":", label=f"chosen on validation: K = {best_k}")
ax.set(xscale="log", xlabel="number of components K", ylabel="log-likelihood (nats per image)",
       title="Mixture of categoricals: training keeps improving, held-out peaks")
ax.set_xticks(ks, [str(k) for k in ks])
ax.legend()
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
for i, kk in enumerate(ks):
    print(f"K = {kk:>3}: train {curves['train'][i]:8.2f}  val {curves['val'][i]:8.2f}  test {curves['test'][i]:8.2f}")
print(f"chosen K = {best_k}: test {metrics['test_loglik']:.2f} nats per image = {metrics['test_bits_per_pixel']:.3f} bits per pixel")

# %%
assert all(b > a for a, b in zip(curves["train"], curves["train"][1:])), "training likelihood grows with every K"
assert best_k < max(ks), "the validation likelihood peaks before the largest K"
after_peak = curves["val"][ks.index(best_k):]
assert all(b < a for a, b in zip(after_peak, after_peak[1:])), "after its peak, validation falls with every larger K"
assert max(curves["val"]) - curves["val"][-1] > 1.0, "at the largest K, validation is more than 1 nat below its peak: over-fitting"
assert curves["test"][ks.index(best_k)] > curves["test"][-1], "the test split agrees: the chosen K beats the largest"
assert metrics["test_loglik"] > independent["test"], "the mixture beats independent pixels on test images"
assert abs(metrics["independent_test_loglik"] - independent["test"]) < 1e-3, "K = 1 is the independent model"
assert abs(metrics["gaussian_test_loglik_bound"] - gaussian["test"]) < 1e-3, "the experiment's Gaussian is ours"

# %% [markdown] slideshow={"slide_type": "subslide"}
# This best held-out model is the **non-latent baseline** of the course: chapter 04's VAE is scored with the same
# 17-level discrete likelihood on the same test images, and must beat it.
# `mmlib.likelihood.baseline_test_log_likelihood()` returns it.

# %%
assert abs(baseline_test_log_likelihood(seed=0, device=device) - metrics["test_loglik"]) < 1e-3, (
    "baseline_test_log_likelihood() is the chosen mixture's test log-likelihood"
)

# %% [markdown] slideshow={"slide_type": "subslide"}
# What the models have learnt, seen as images: real test digits, samples from the 64-dimensional Gaussian (rounded
# to levels), and samples from the chosen mixture.

# %%
from mmlib.likelihood import CategoricalMixture

best = CategoricalMixture(result.arrays["best_log_weights"], result.arrays["best_log_probs"])
gen_show = torch.Generator(device=device).manual_seed(3)
gauss_samples = MultivariateNormal(mean_closed, covariance_matrix=cov_closed).sample((10,)).floor().clamp(0, 16)
rows = torch.cat([test[:10].to(f64), gauss_samples, best.sample(10, generator=gen_show).to(f64)]) / 16
fig = image_grid(rows.reshape(-1, 8, 8), nrow=10, ax_size=1.0,
                 title=f"Top: test digits · middle: Gaussian samples · bottom: mixture (K = {best_k}) samples")
plt.show()

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 7 · A likelihood surface to explore
#
# One pixel (row 1, column 3), modelled by a discretised Gaussian with two parameters $(\mu,\sigma)$: the fixed
# sample is that pixel's 1,259 training values. The surface $\ell(\mu,\sigma)$ is computed on a grid from the level
# counts, $\ell = \sum_k \frac{n_k}{m}\log P_{\mu,\sigma}(k)$, and its maximum found by gradient ascent.

# %%
pixel = 1 * 8 + 3
pixel_values = train[:, pixel]
pixel_freq = torch.bincount(pixel_values, minlength=NUM_LEVELS).to(f64) / m
mu_grid = torch.linspace(-4, 24, 113, dtype=f64, device=device)
sigma_grid = torch.logspace(math.log10(0.5), math.log10(30), 100, dtype=f64, device=device)
surface = (discretized_gaussian_log_prob(levels_k, mu_grid[None, :, None], sigma_grid[:, None, None]) * pixel_freq).sum(-1)

mu_s = torch.tensor(8.0, dtype=f64, device=device, requires_grad=True)
log_sigma_s = torch.tensor(1.0, dtype=f64, device=device, requires_grad=True)
surface_optimizer = make_optimizer([mu_s, log_sigma_s], lr=0.05)
surface_history = train_loop(
    loss_step(lambda v: -discretized_gaussian_log_prob(v, mu_s, log_sigma_s.exp()).mean(), surface_optimizer),
    pixel_values, steps=600, batch_size=None, log_every=50, desc="pixel MLE",
)
mu_hat, sigma_hat = float(mu_s.detach()), float(log_sigma_s.detach().exp())
loglik_hat = float(discretized_gaussian_log_prob(pixel_values, mu_hat, sigma_hat).mean())

# %%
# NBVAL_CHECK_OUTPUT
print(f"MLE: mu = {mu_hat:.2f}, sigma = {sigma_hat:.2f}, l = {loglik_hat:.4f} nats; best grid point {float(surface.max()):.4f}")

# %%
assert loglik_hat >= float(surface.max()) - 1e-9, "gradient ascent reaches at least the best point of the grid"


# %%
def draw_surface(mu: float, sigma: float) -> None:
    """Left: the pixel's level frequencies and the model's probabilities. Right: l(mu, sigma) with the current point."""
    probs = discretized_gaussian_log_prob(levels_k, mu, sigma).exp().cpu()
    loglik = float((discretized_gaussian_log_prob(levels_k, mu, sigma) * pixel_freq).sum())
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    left.bar(range(NUM_LEVELS), pixel_freq.cpu(), color="lightgray", label="data (fixed sample)")
    left.plot(range(NUM_LEVELS), probs, "o-", color="C3", lw=2, label="model P(k)")
    left.set(xlabel="grey level k", ylabel="probability", title=f"μ = {mu:.2f}, σ = {sigma:.2f}: ℓ = {loglik:.3f} nats")
    left.legend(loc="upper left")
    levels_plot = np.append(float(surface.max()) - np.logspace(1.3, -1.5, 12), float(surface.max()) + 1e-9)
    contour = right.contourf(mu_grid.cpu(), sigma_grid.cpu(), surface.cpu().clamp_min(levels_plot[0]), levels=levels_plot,
                             cmap="viridis", extend="min")
    fig.colorbar(contour, ax=right, label="ℓ(μ, σ) (nats)")
    right.plot(mu_hat, sigma_hat, "*", color="white", ms=16, mec="k", label="MLE")
    right.plot(mu, sigma, "o", color="C3", ms=10, mec="k", label="current")
    right.set(yscale="log", xlabel="μ", ylabel="σ (log scale)", title="Likelihood surface of one pixel")
    right.legend(loc="upper left")
    fig.tight_layout()


draw_surface(mu_hat, sigma_hat)
plt.show()

# %% [markdown] slideshow={"slide_type": "subslide"}
# Move the sliders (the figure redraws when you release them). Where is the surface flat, and where steep? Which
# parameter is better determined by the data?

# %%
from mmlib.widgets import slider_plot

slider_plot(draw_surface, mu=(-4.0, 24.0, 0.25, 8.0), sigma=(0.5, 30.0, 0.25, 2.0))

# %% [markdown] slideshow={"slide_type": "slide"}
# ## Summary
#
# - Eq. (1) needs $p_\theta$ to be a normalised distribution **of the data's kind**. A Gaussian density on discrete
#   levels is not one: its "likelihood" can grow without bound. Discretise it, or dequantise the data (a lower bound
#   in the same nats).
# - For a Gaussian, the closed-form MLE and gradient ascent with autograd reach the same maximum.
# - The digits' 17 levels get a proper discrete likelihood (independent categoricals, add-½ smoothing), reported in
#   nats per image and bits per pixel; binary cross-entropy on grey levels is not normalised, so its "nats" mean
#   nothing.
# - A mixture fitted by EM climbs its objective at every step; training likelihood grows with $K$, held-out
#   likelihood peaks and then falls: choose $K$ on validation, report test. The chosen mixture is the baseline
#   chapter 04's VAE must beat (`baseline_test_log_likelihood()`).

# %% [markdown] slideshow={"slide_type": "slide"}
# ## Exercises
#
# **01.1 (predict, then run).** In section 6 the smoothing is α = ½. Predict what happens to the held-out curve if
# you set α = 0.01, and then α = 5, in `categorical_mixture_sweep` (call it with `alpha=...` on `train`, `val`,
# `test`): which K wins, and does the peak get higher or lower? Explain with the number of parameters per
# component (64 × 16) and the images per component.
#
# **01.2 (implement).** Write `smoothed_categorical(values, alpha, num_levels)`: the add-α estimate of the
# probability of each level from the observed values (a 1D integer tensor) of one pixel.

# %% tags=["solution"]
def smoothed_categorical(values: torch.Tensor, alpha: float, num_levels: int) -> torch.Tensor:
    """(n_l + alpha) / (m + L alpha) for every level l = 0..num_levels-1."""
    counts = torch.bincount(values, minlength=num_levels).to(torch.float64)
    return (counts + alpha) / (values.numel() + num_levels * alpha)


# %%
# NBVAL_CHECK_OUTPUT
from mmlib.exercises import check

check("01.2", smoothed_categorical)

# %% [markdown]
# **01.3 (implement).** Write the E-step, `responsibilities(log_weights, log_lik)`: from $\log\pi_k$ (shape
# `(K,)`) and $\log p(x_n\mid k)$ (shape `(N, K)`) return $r_{nk}$. Make it work when every $\log p(x_n\mid k)$ is
# around −1000, as it is for real images.

# %% tags=["solution"]
def responsibilities(log_weights: torch.Tensor, log_lik: torch.Tensor) -> torch.Tensor:
    """r_nk = pi_k p(x_n | k) / sum_j pi_j p(x_n | j), computed in log space."""
    return torch.softmax(log_weights + log_lik, dim=1)


# %%
# NBVAL_CHECK_OUTPUT
check("01.3", responsibilities)

# %% [markdown]
# **01.4 (open question).** We chose $K$ by validation likelihood. The Bayesian information criterion chooses it on
# the training set alone, $\ell_{\text{train}}\cdot m - \tfrac12(\#\text{parameters})\log m$. Which $K$ would BIC
# choose from the curves of section 6 (count the parameters of a mixture), and why might it differ from
# validation? When would you trust one over the other?
