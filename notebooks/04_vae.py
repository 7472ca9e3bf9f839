# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown] slideshow={"slide_type": "slide"}
# # 04 · Variational autoencoders: the ELBO done right
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/mmgen-course/mmgen-course/blob/main/notebooks/04_vae.ipynb)
#
# The article's §3.2.2 introduces the variational autoencoder (VAE) with two training objectives, eqs. (5) and (6).
# Both are wrong in ways that are easy to copy. This chapter derives the correct objective, shows with numbers what
# the article's versions do, and fits a VAE whose held-out likelihood beats the best model of chapter 01.
#
# By the end of this notebook you will
# - derive the evidence lower bound (ELBO) from $\log p(x)$ and name its gap, $\mathrm{KL}(q(z\mid x)\,\|\,p(z\mid x))$;
# - know why the reparameterisation trick is used, having measured its gradient variance against REINFORCE;
# - compute $\mathrm{KL}(q\,\|\,\mathcal N(0, I))$ in closed form and check it two other ways;
# - see eq. (5) collapse to $\mathbb E_q[\log p(x\mid z)]$ and eq. (6) reward reconstruction *error*, and use the
#   correct objectives instead;
# - fit a VAE to the 17-level digits with a proper discrete likelihood and report test ELBO and importance-weighted
#   bounds in nats per image;
# - trade rate against distortion with $\beta$, and walk through a 2D latent space with sliders.

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
# ## 1 · Preprocess: 17 grey levels, kept discrete
#
# The images are the real UCI handwritten digits: 8×8 pixels, each the count of inked cells in a 4×4 block, so a
# grey level in $\{0, 1, \dots, 16\}$. The data module stores them as level / 16 in $[0, 1]$; the likelihood works
# on the integer levels. We use the data module's fixed splits: the model is fitted on `train`, its size was chosen
# on `val`, and every number we report is on `test`.

# %%
from mmlib.data import load_multimodal_digits

ds = load_multimodal_digits(device=device)
train_images, test_images = ds.train["image"], ds.test["image"]  # (N, 1, 8, 8), grey level / 16
train_levels = (train_images.flatten(1) * 16).round().long()      # (N, 64) integers 0..16
print(f"train {tuple(train_images.shape)}, val {len(ds.val)}, test {tuple(test_images.shape)} images")

# %% [markdown] slideshow={"slide_type": "subslide"}
# Which likelihood for a pixel? A Gaussian density on $[0,1]$ is not a probability of the 17 values the data can
# take (chapter 01 showed how that inflates the score). The histogram below shows that the levels pile up at
# **both ends**, 0 (paper) and 16 (full ink): the distribution of a pixel is U-shaped, which a binomial with
# $n = 16$ (unimodal for any parameter) cannot express.

# %%
counts = torch.bincount(train_levels.flatten(), minlength=17).cpu()
fig, ax = plt.subplots(figsize=(7, 3.5))
ax.bar(range(17), (counts / counts.sum()).numpy())
ax.set(xlabel="grey level", ylabel="fraction of training pixels", title="Pixel values of the digits: U-shaped",
       xticks=range(0, 17, 2))
plt.show()

# %%
assert set(counts.argsort(descending=True)[:2].tolist()) == {0, 16}, "levels 0 and 16 are the two most frequent values"

# %% [markdown] slideshow={"slide_type": "subslide"}
# So the decoder gives each pixel its own **categorical distribution over the 17 levels** (17 logits per pixel):
#
# $$p_\theta(x\mid z) = \prod_{p=1}^{64} \mathrm{Cat}\big(x_p;\ \mathrm{softmax}(\ell_p(z))\big),$$
#
# the most flexible choice per pixel, and exactly the pixel model of chapter 01's best baseline (a mixture of
# per-pixel categoricals). The VAE replaces that finite mixture by a *continuous* one over $z$ — a fair contest.

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 2 · Build: a latent-variable model and its lower bound
#
# A VAE generates $z \sim p(z) = \mathcal N(0, I)$, then $x \sim p_\theta(x\mid z)$. Its likelihood
# $p_\theta(x) = \int p(z)\, p_\theta(x\mid z)\, dz$ is an integral over all codes: for a neural decoder there is no
# closed form, and the posterior $p_\theta(z\mid x) = p(z)p_\theta(x\mid z)/p_\theta(x)$ is just as intractable.
# An **encoder** $q_\phi(z\mid x) = \mathcal N(\mu_\phi(x), \mathrm{diag}\,\sigma^2_\phi(x))$ approximates it. For
# any $q$, since $\log p(x)$ does not depend on $z$,
#
# $$\begin{aligned}
# \log p_\theta(x) &= \mathbb E_{q(z\mid x)}\left[\log \frac{p_\theta(x, z)}{p_\theta(z\mid x)}\right]
#   = \mathbb E_{q}\left[\log \frac{p_\theta(x, z)}{q(z\mid x)}\right]
#   + \mathbb E_{q}\left[\log \frac{q(z\mid x)}{p_\theta(z\mid x)}\right] \\
# &= \underbrace{\mathbb E_{q}[\log p_\theta(x\mid z)] - \mathrm{KL}\big(q(z\mid x)\,\|\,p(z)\big)}_{\text{ELBO}(x)}
#   \;+\; \underbrace{\mathrm{KL}\big(q(z\mid x)\,\|\,p_\theta(z\mid x)\big)}_{\text{gap} \,\ge\, 0}.
# \end{aligned}$$
#
# The ELBO is a lower bound on $\log p(x)$, tight exactly when $q$ is the true posterior. Maximising it over
# $(\theta, \phi)$ raises the likelihood *and* pulls $q$ towards the posterior.

# %% [markdown] slideshow={"slide_type": "subslide"}
# **Self-check on a model where everything is known.** With $z \sim \mathcal N(0,1)$ and
# $x \mid z \sim \mathcal N(a z, s^2)$, we have $p(x) = \mathcal N(0, a^2 + s^2)$ and
# $p(z \mid x) = \mathcal N\big(\tfrac{a x}{a^2+s^2}, \tfrac{s^2}{a^2+s^2}\big)$. For any Gaussian
# $q = \mathcal N(m, v)$, $\mathbb E_q[\log p(x\mid z)] = \log\mathcal N(x; a m, s^2) - a^2 v / (2 s^2)$, so the
# ELBO is exact, and ELBO + gap must equal $\log p(x)$ for every $m$.

# %%
from torch.distributions import Normal, kl_divergence

a, s, x_obs = 2.0, 0.5, torch.tensor(1.2, dtype=torch.float64)
post_mean, post_var = a * x_obs / (a**2 + s**2), s**2 / (a**2 + s**2)
log_px = Normal(0.0, (a**2 + s**2) ** 0.5).log_prob(x_obs)
m = torch.linspace(-0.5, 1.5, 201, dtype=torch.float64)
v = torch.full_like(m, post_var)
q, prior, posterior = Normal(m, v.sqrt()), Normal(0.0, 1.0), Normal(post_mean, post_var**0.5)
elbo_toy = Normal(a * m, s).log_prob(x_obs) - a**2 * v / (2 * s**2) - kl_divergence(q, prior)
gap = kl_divergence(q, posterior)

fig, ax = plt.subplots(figsize=(7, 4))
ax.plot(m, elbo_toy, lw=2, label="ELBO (q = N(m, v*))")
ax.axhline(float(log_px), color="k", ls="--", label="log p(x)")
ax.axvline(float(post_mean), color="gray", ls=":", label="posterior mean")
ax.set(xlabel="mean m of q", ylabel="nats", title="The ELBO touches log p(x) where q is the posterior")
ax.legend()
plt.show()

# %%
assert torch.allclose(elbo_toy + gap, log_px.expand_as(m), atol=1e-12), "ELBO + KL(q || p(z|x)) = log p(x) for every q"
elbo_at_posterior = (Normal(a * post_mean, s).log_prob(x_obs) - a**2 * post_var / (2 * s**2)
                     - kl_divergence(posterior, prior))
assert (elbo_toy <= log_px + 1e-12).all() and torch.allclose(elbo_at_posterior, log_px, atol=1e-12), (
    "the ELBO never exceeds log p(x), and equals it when q is the posterior"
)

# %% [markdown] slideshow={"slide_type": "slide"}
# ### The reparameterisation trick
#
# Training needs $\nabla_\phi\, \mathbb E_{q_\phi(z\mid x)}[f(z)]$, a gradient of an expectation over a distribution
# that itself depends on $\phi$. Two unbiased one-sample estimators:
#
# - **score function (REINFORCE):** $f(z)\,\nabla_\phi \log q_\phi(z)$ with $z \sim q_\phi$ — needs only values of $f$;
# - **reparameterisation:** write $z = \mu + \sigma\varepsilon$ with $\varepsilon \sim \mathcal N(0, 1)$ (a noise that
#   does not depend on $\phi$), then $\nabla_\phi f(\mu + \sigma\varepsilon)$ — differentiates *through* $f$.
#
# A toy problem with a known answer: $\frac{d}{d\mu}\mathbb E_{z\sim\mathcal N(\mu, \sigma^2)}[z^2] = 2\mu$. With
# $\mu = 2$, $\sigma = 1$ the reparameterised estimate $2z$ has variance $4\sigma^2 = 4$; the score-function estimate
# $z^2 (z - \mu)/\sigma^2$ has variance $\mathbb E[(2+\varepsilon)^4\varepsilon^2] - 16 = 87$.

# %%
from mmlib.seed import make_generator
from mmlib.vae import reparameterised_gradients, score_function_gradients

mu_toy, sigma_toy, n_draws = 2.0, 1.0, 20_000
grads = {
    "reparameterised": reparameterised_gradients(lambda z: z**2, mu_toy, sigma_toy, n_draws, generator=make_generator(1)),
    "score function": score_function_gradients(lambda z: z**2, mu_toy, sigma_toy, n_draws, generator=make_generator(2)),
}
fig, ax = plt.subplots(figsize=(7, 4))
for name, g in grads.items():
    ax.hist(g.numpy(), bins=150, range=(-15, 40), density=True, alpha=0.6, label=f"{name} (var {g.var():.1f})")
ax.axvline(2 * mu_toy, color="k", ls="--", label="true gradient 2μ = 4")
ax.set(xlabel="one-sample gradient estimate", ylabel="density", title="Same mean, very different spread")
ax.legend()
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
for name, g in grads.items():
    print(f"{name:>16}: mean {g.mean():.2f} ± {g.std() / n_draws**0.5:.2f}, variance {g.var():.0f}")
ratio = float(grads["score function"].var() / grads["reparameterised"].var())
print(f"variance ratio: {ratio:.0f}")

# %%
for name, g in grads.items():
    assert abs(float(g.mean()) - 2 * mu_toy) < 4 * float(g.std()) / n_draws**0.5, f"the {name} estimator is unbiased"
assert abs(float(grads["reparameterised"].var()) - 4.0) < 0.4, "reparameterised variance ≈ 4σ² = 4"
assert abs(float(grads["score function"].var()) - 87.0) < 12.0, "score-function variance ≈ 87"
assert ratio > 10, "the reparameterised gradient has far (>10x) smaller variance than REINFORCE"

# %% [markdown] slideshow={"slide_type": "slide"}
# ### The KL term, three ways
#
# For $q = \mathcal N(\mu, \mathrm{diag}\,\sigma^2)$ and $p(z) = \mathcal N(0, I)$ in $d$ dimensions the KL has a
# closed form,
#
# $$\mathrm{KL}(q\,\|\,p) = \tfrac12 \sum_{j=1}^d \big(\sigma_j^2 + \mu_j^2 - 1 - \log\sigma_j^2\big),$$
#
# which we check against a Monte Carlo average of $\log q(z) - \log p(z)$ over $z \sim q$ and against
# `torch.distributions.kl_divergence`. The encoder outputs $\log\sigma^2$ (called `log_var`), so
# $\sigma^2 = e^{\texttt{log\_var}}$ is positive whatever the network says.

# %%
from torch.distributions import Independent

from mmlib.vae import kl_monte_carlo, kl_to_standard_normal

gen = make_generator(3)
mu_q, log_var_q = torch.randn(4, 16, generator=gen, dtype=torch.float64), torch.randn(4, 16, generator=gen, dtype=torch.float64)
kl_closed = kl_to_standard_normal(mu_q, log_var_q)
kl_mc, kl_mc_se = kl_monte_carlo(mu_q, log_var_q, 50_000, generator=gen)
q_lib = Independent(Normal(mu_q, (0.5 * log_var_q).exp()), 1)
p_lib = Independent(Normal(torch.zeros_like(mu_q), torch.ones_like(mu_q)), 1)
kl_torch = kl_divergence(q_lib, p_lib)

# %%
# NBVAL_CHECK_OUTPUT
print("closed form :", [f"{v:.3f}" for v in kl_closed.tolist()])
print("torch       :", [f"{v:.3f}" for v in kl_torch.tolist()])
print("Monte Carlo :", [f"{v:.2f} ± {e:.2f}" for v, e in zip(kl_mc.tolist(), kl_mc_se.tolist())])

# %%
assert torch.allclose(kl_closed, kl_torch, atol=1e-10), "closed form = torch.distributions.kl_divergence"
assert ((kl_closed - kl_mc).abs() < 4 * kl_mc_se).all(), "Monte Carlo agrees with the closed form within 4 standard errors"

# %% [markdown] slideshow={"slide_type": "slide"}
# ### The loss, written out
#
# The training loss is the negative ELBO, estimated with one reparameterised draw $z$ per image:
#
# $$\mathcal L(\theta, \phi) = \frac1B \sum_{i=1}^B \Big[-\log p_\theta(x_i \mid z_i)
#   + \mathrm{KL}\big(q_\phi(z\mid x_i)\,\|\,\mathcal N(0, I)\big)\Big], \qquad z_i = \mu_\phi(x_i) + \sigma_\phi(x_i)\odot\varepsilon_i.$$
#
# **Reductions, stated once:** $\log p(x\mid z)$ sums over the 64 pixels, the KL over the latent dimensions, and the
# loss averages over the batch. So the loss is in **nats per image**, and comparable with chapter 01.

# %%
from mmlib.vae import build_vae


def negative_elbo_inline(model, images):
    """Mean over the batch of −log p(x | z) + KL(q(z | x) || N(0, I)), with one reparameterised z per image."""
    levels = (images.flatten(1) * 16).round().long()                              # (B, 64) levels 0..16
    mu, log_var = model.encoder(images)                                           # (B, d) each
    z = mu + torch.exp(0.5 * log_var) * torch.randn_like(mu)                      # reparameterisation
    log_probs = model.decoder(z).log_softmax(dim=-1)                              # (B, 64, 17)
    log_lik = log_probs.gather(-1, levels.unsqueeze(-1)).squeeze(-1).sum(dim=1)   # sum over pixels -> (B,)
    kl = 0.5 * (log_var.exp() + mu**2 - 1 - log_var).sum(dim=1)                   # sum over latent dims -> (B,)
    return (-log_lik + kl).mean()                                                 # mean over the batch


vae = build_vae(latent_dim=16, seed=0, device=device)  # encoder and decoder: two-hidden-layer MLPs
print(vae)

# %% [markdown] slideshow={"slide_type": "subslide"}
# `mmlib.vae.negative_elbo` is the same computation (it also validates its input). Same weights, same seed → the
# same number, and the same gradients.

# %%
from mmlib.vae import negative_elbo

batch = train_images[:128]
torch.manual_seed(5)
loss_inline = negative_elbo_inline(vae, batch)
grad_inline = torch.autograd.grad(loss_inline, list(vae.parameters()))
torch.manual_seed(5)
loss_mmlib = negative_elbo(vae, batch)
grad_mmlib = torch.autograd.grad(loss_mmlib, list(vae.parameters()))

# %%
# NBVAL_CHECK_OUTPUT
print(f"inline: {loss_inline:.3f} nats per image · mmlib: {loss_mmlib:.3f} nats per image")

# %%
assert torch.equal(loss_inline, loss_mmlib), "the inline loss and mmlib's negative_elbo are identical"
assert all(torch.allclose(g1, g2) for g1, g2 in zip(grad_inline, grad_mmlib)), "... and so are their gradients"

# %% [markdown] slideshow={"slide_type": "subslide"}
# Training with either loss from the same start and seed gives the same run, step for step (200 steps each, with
# the course's trainer). From here on we use `mmlib`.

# %%
from mmlib.train import loss_step, make_optimizer, train


def short_run(loss_fn, steps=200):
    model = build_vae(latent_dim=16, seed=0, device=device)
    optimizer = make_optimizer(model.parameters(), lr=2e-3)
    torch.manual_seed(7)
    history = train(loss_step(lambda x: loss_fn(model, x), optimizer), train_images, steps=steps, batch_size=128,
                    seed=7, log_every=20, desc="negative ELBO")
    return history


history_inline = short_run(negative_elbo_inline)
history_mmlib = short_run(negative_elbo)
assert history_inline["loss"] == history_mmlib["loss"], "inline and mmlib training runs are identical"

# %% [markdown] slideshow={"slide_type": "slide"}
# ### The article's eq. (5), computed
#
# The article trains with
#
# $$\mathrm{KL}(q_\phi(z\mid x)\,\|\,p(z)) + \mathbb E_{q_\phi(z\mid x)}\big[\log p_\theta(x\mid z) - D_{\mathrm{KL}}(q_\phi(z\mid x)\,\|\,p(z))\big]. \tag{5}$$
#
# The KL does not depend on $z$, so it leaves the expectation, and the two KL terms **cancel**: eq. (5) is just
# $\mathbb E_q[\log p_\theta(x\mid z)]$, the reconstruction log-likelihood. Numerically (same draw of $z$):

# %%
from mmlib.vae import article_eq5, elbo_terms

torch.manual_seed(11)
eq5_value = article_eq5(vae, batch)
torch.manual_seed(11)
log_lik, kl = elbo_terms(vae, batch)

# %%
# NBVAL_CHECK_OUTPUT
print(f"eq. (5) = {eq5_value:.3f};  E_q[log p(x|z)] = {log_lik.mean():.3f};  KL = {kl.mean():.3f} nats per image")

# %%
assert torch.allclose(eq5_value, log_lik.mean(), atol=1e-4), "eq. (5) equals E_q[log p(x|z)]: its KL terms cancel"

# %% [markdown] slideshow={"slide_type": "subslide"}
# As a *loss* (the article minimises), eq. (5) asks to make the reconstruction log-likelihood as **small** as
# possible, with no prior term at all — and it has no minimum: the decoder can always make the observed level less
# likely. The correct objective is its opposite plus the KL:
#
# $$\mathcal L = -\mathbb E_{q_\phi(z\mid x)}[\log p_\theta(x\mid z)] + \mathrm{KL}\big(q_\phi(z\mid x)\,\|\,p(z)\big).$$
#
# Thirty steps of each, from the same initial weights, tracking the reconstruction log-likelihood:

# %%
from mmlib.vae import rate_distortion


def run_objective(objective, terms, model, steps, desc="training"):
    """Minimise objective(reconstruction, kl) for `steps` steps; log the reconstruction term per step."""
    optimizer = make_optimizer(model.parameters(), lr=2e-3)

    def step(x):
        optimizer.zero_grad(set_to_none=True)
        reconstruction, kl = terms(model, x)
        loss = objective(reconstruction, kl)
        loss.backward()
        optimizer.step()
        return {"loss": loss.detach(), "reconstruction": reconstruction.mean().detach()}

    history = train(step, train_images, steps=steps, batch_size=128, seed=0, log_every=max(1, steps // 30), desc=desc)
    return model.eval(), history


objectives_5 = {
    "article's eq. (5)": lambda log_lik, kl: (kl + (log_lik - kl)).mean(),
    "correct: −E_q[log p(x|z)] + KL": lambda log_lik, kl: (-log_lik + kl).mean(),
}
start_5 = build_vae(seed=1, device=device).eval()
distortion_5 = {"initial weights": rate_distortion(start_5, test_images)[1]}
runs_5 = {}
for name, objective in objectives_5.items():
    model, runs_5[name] = run_objective(objective, elbo_terms, build_vae(seed=1, device=device), 30, desc=name)
    distortion_5[name] = rate_distortion(model, test_images)[1]

fig, ax = plt.subplots(figsize=(7, 4.5))
for name, history in runs_5.items():
    ax.plot(history.steps, history["reconstruction"], lw=2, label=name)
ax.set(xlabel="step", ylabel="E_q[log p(x|z)] (nats per image)", yscale="symlog",
       title="Minimising eq. (5) destroys reconstruction")
ax.legend()
plt.show()

# %%
for name, value in distortion_5.items():
    print(f"{name:>32}: test reconstruction log-likelihood {-value:,.0f} nats per image")

# %%
assert distortion_5["article's eq. (5)"] > 10 * distortion_5["initial weights"], (
    "training with eq. (5) makes the test reconstruction log-likelihood far worse than the untrained model's"
)
assert distortion_5["correct: −E_q[log p(x|z)] + KL"] < distortion_5["initial weights"], (
    "the correct objective improves reconstruction"
)

# %% [markdown] slideshow={"slide_type": "subslide"}
# A few dozen more steps and the numbers overflow: the course's trainer stops the run and says so.

# %%
from mmlib.train import TrainingDiverged

try:
    run_objective(objectives_5["article's eq. (5)"], elbo_terms, build_vae(seed=1, device=device), 300, desc="eq. (5)")
    diverged = False
except TrainingDiverged as err:
    diverged = True
    print(f"{type(err).__name__}: {err}")

# %%
assert diverged, "minimising eq. (5) diverges: the objective is unbounded below"

# %% [markdown] slideshow={"slide_type": "slide"}
# ### The article's eq. (6), computed
#
# $$\min_{\theta, \phi}\ \Big[-\log p_\theta(x) + \beta\, D_{\mathrm{KL}}(q_\phi(z\mid x)\,\|\,p(z)) - \gamma\,\|x - f_\psi(z)\|_2^2\Big] \tag{6}$$
#
# has two faults.
#
# 1. $\log p_\theta(x)$ is the intractable integral the ELBO exists to bound. Nobody can evaluate it inside a training
#    loop, so in practice it must be dropped.
# 2. The squared error enters with a **minus** sign: minimising eq. (6) *rewards* reconstruction error.
#
# The correct form comes from a Gaussian decoder $p(x\mid z) = \mathcal N(x; f(z), \sigma^2 I)$, whose
# log-likelihood is $-\gamma\|x - f(z)\|^2$ up to a constant, with $\gamma = 1/(2\sigma^2)$:
#
# $$\mathcal L_\beta = \mathbb E_{q_\phi(z\mid x)}\big[\gamma\,\|x - f(z)\|^2\big] + \beta\,\mathrm{KL}\big(q_\phi(z\mid x)\,\|\,p(z)\big),$$
#
# the negative ELBO (up to that constant) when $\beta = 1$. A self-check of the constant:

# %%
from mmlib.vae import gaussian_log_likelihood

sigma_dec = 0.1
gamma = 1 / (2 * sigma_dec**2)
f_z = torch.rand(128, 64, generator=make_generator(4)).to(device)  # any decoder mean
x_flat = batch.flatten(1)
by_formula = -gamma * ((x_flat - f_z) ** 2).sum(dim=1) - 32 * np.log(2 * np.pi * sigma_dec**2)
assert torch.allclose(gaussian_log_likelihood(f_z, x_flat, sigma_dec), by_formula, atol=1e-3) and torch.allclose(
    Normal(f_z, sigma_dec).log_prob(x_flat).sum(dim=1), by_formula, atol=1e-3
), "log N(x; f, σ²I) = −γ||x − f||² − (P/2) log(2πσ²) with γ = 1/(2σ²)"

# %% [markdown] slideshow={"slide_type": "subslide"}
# Now train a Gaussian-decoder VAE ($\sigma = 0.1$, so $\gamma = 50$; $\beta = 1$) with the computable part of
# eq. (6), $\beta\,\mathrm{KL} - \gamma\|x - f(z)\|^2$, and with the corrected form, 300 steps each from the same
# weights. The decoder's mean is a sigmoid, so the error stays bounded: at worst it paints the negative of each digit.

# %%
from mmlib.vae import article_eq6, gaussian_elbo_terms, gaussian_negative_elbo, reconstruction_error

objectives_6 = {
    "article's eq. (6) without log p(x)": lambda sq_err, kl: (kl - gamma * sq_err).mean(),
    "correct: E_q[γ||x − f(z)||²] + β KL": lambda sq_err, kl: (gamma * sq_err + kl).mean(),
}
start_6 = build_vae(likelihood="gaussian", sigma=sigma_dec, dropout=0.0, seed=2, device=device).eval()
error_6 = {"initial weights": reconstruction_error(start_6, test_images)}
runs_6 = {}
for name, objective in objectives_6.items():
    model = build_vae(likelihood="gaussian", sigma=sigma_dec, dropout=0.0, seed=2, device=device)
    model, runs_6[name] = run_objective(objective, gaussian_elbo_terms, model, 300, desc=name)
    error_6[name] = reconstruction_error(model, test_images)

fig, ax = plt.subplots(figsize=(7, 4.5))
for name, history in runs_6.items():
    ax.plot(history.steps, history["reconstruction"], lw=2, label=name)
ax.set(xlabel="step", ylabel="||x − f(z)||² (per image)", title="Eq. (6) trains the decoder to be wrong")
ax.legend()
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
for name, value in error_6.items():
    print(f"{name:>36}: test squared error {value:.0f} per image")

# %%
torch.manual_seed(12)
eq6_lib = article_eq6(start_6, batch)
torch.manual_seed(12)
sq_err, kl_6 = gaussian_elbo_terms(start_6, batch)
assert torch.allclose(eq6_lib, (kl_6 - gamma * sq_err).mean()), "mmlib's article_eq6 is the formula trained above"
torch.manual_seed(12)
assert torch.allclose(gaussian_negative_elbo(start_6, batch), (gamma * sq_err + kl_6).mean()), (
    "mmlib's gaussian_negative_elbo is the corrected formula trained above"
)
assert error_6["article's eq. (6) without log p(x)"] > 2 * error_6["initial weights"], (
    "training with eq. (6) raises the reconstruction error well above the untrained model's"
)
assert error_6["correct: E_q[γ||x − f(z)||²] + β KL"] < 0.5 * error_6["initial weights"], (
    "the corrected objective lowers the reconstruction error"
)

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 3 · Estimate: a VAE on the digits
#
# Experiment `vae-digits` (the same function runs headless: `python -m mmlib run vae-digits --out DIR`) fits the
# categorical-decoder VAE: a 16-dimensional latent code, encoder and decoder MLPs with two hidden layers of 128 units,
# Adam (learning rate 2·10⁻³, batches of 128) for 1,500 steps, and dropout 0.2 in the decoder. Why dropout: 1,088
# output logits per image against 1,259 training images overfit quickly; the number of steps and the dropout rate
# were chosen on the validation split (exercise 04.1 asks what happens without them).

# %%
from mmlib.experiments import run_experiment

result = run_experiment("vae-digits", seed=0, device=device)
vae = result.models["vae"]
metrics = result.metrics

from mmlib.vae import BATCH_SIZE, DROPOUT, LR, STEPS

widths = {part: [layer.out_features for layer in getattr(vae, part).modules() if isinstance(layer, torch.nn.Linear)]
          for part in ("encoder", "decoder")}
assert widths == {"encoder": [128, 128, 2 * 16], "decoder": [128, 128, 1088]}, (
    "a 16-dimensional code (mean and log-variance), two hidden layers of 128 units each way, 1,088 logits"
)
assert (STEPS, BATCH_SIZE, LR, DROPOUT) == (1500, 128, 2e-3, 0.2), "1,500 steps of 128, learning rate 2e-3, dropout 0.2"
assert len(result.arrays["loss_step"]) and int(result.arrays["loss_step"][-1]) == STEPS, "trained for all its steps"

# %%
from mmlib.plot import loss_curves

loss_curves({"negative ELBO (training batches)": result.arrays["loss"].tolist()},
            steps=result.arrays["loss_step"].tolist(), title="Fitting the VAE", ylabel="nats per image")
plt.show()

# %% [markdown]
# This curve is measured on training batches, with dropout on: it says the optimisation worked, not how well the
# model generalises. Held-out numbers come next.

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 4 · Evaluate: held-out likelihood
#
# The ELBO is only a bound. The **importance-weighted bound** (Burda, Grosse & Salakhutdinov, 2016) uses $K$ draws
# from $q$:
#
# $$\mathrm{IWAE}_K(x) = \log \frac1K \sum_{k=1}^K \frac{p_\theta(x, z_k)}{q_\phi(z_k\mid x)},\qquad z_k \sim q_\phi(z\mid x).$$
#
# By Jensen's inequality $\mathbb E[\mathrm{IWAE}_K] \le \log p(x)$, it equals the ELBO for $K = 1$, never decreases
# with $K$ in expectation, and tends to $\log p(x)$. We draw 2,000 samples per test image and cut them into groups of
# $K$: each group is one estimate, and the spread between groups gives the **Monte Carlo standard error** of the
# test average (the test images are fixed; only the draws are random).

# %%
# NBVAL_CHECK_OUTPUT
rows = [("ELBO", "test_elbo"), ("IWAE K=10", "test_iwae_10"), ("IWAE K=100", "test_iwae_100"),
        ("IWAE K=1000", "test_iwae_1000")]
for label, key in rows:
    print(f"{label:>12}: {metrics[key]:8.1f} nats per image  (Monte Carlo s.e. {metrics[key + '_se']:.2f})")
print(f"{'baseline':>12}: {metrics['baseline_nats']:8.1f} nats per image  (chapter 01: best mixture of categoricals)")

# %%
def within_noise(lower, upper):
    """lower <= upper, up to 3 combined standard errors (conservative: the estimates share draws)."""
    se = (metrics[lower + "_se"] ** 2 + metrics[upper + "_se"] ** 2) ** 0.5
    return metrics[lower] <= metrics[upper] + 3 * se


assert within_noise("test_elbo", "test_iwae_10") and within_noise("test_iwae_10", "test_iwae_100"), (
    "ELBO <= IWAE(K=10) <= IWAE(K=100), up to Monte Carlo error"
)
assert metrics["test_iwae_1000"] - 3 * metrics["test_iwae_1000_se"] > metrics["baseline_nats"], (
    "the VAE's held-out log-likelihood (IWAE, K=1000) beats chapter 01's best non-latent model"
)

# %%
ks = [1, 10, 100, 1000]
values = [metrics[key] for _, key in rows]
errors = [3 * metrics[key + "_se"] for _, key in rows]
fig, ax = plt.subplots(figsize=(7, 4.5))
ax.errorbar(ks, values, yerr=errors, marker="o", lw=2, capsize=4, label="VAE: IWAE_K (±3 s.e.)")
ax.axhline(metrics["baseline_nats"], color="k", ls="--", label="chapter 01: mixture of categoricals")
ax.set(xscale="log", xlabel="K (importance samples)", ylabel="test log-likelihood (nats per image)",
       title="Tighter bounds with more samples")
ax.legend()
plt.show()

# %% [markdown] slideshow={"slide_type": "slide"}
# ### Reconstructions and samples
#
# Top: test images; below them their reconstructions $\mathbb E[x\mid z = \mu_\phi(x)]$ (expected grey level).
# Then samples from the model: $z \sim \mathcal N(0, I)$ and every pixel drawn from its categorical. The pixels are
# independent *given* $z$, so samples look grainier than means.

# %%
from mmlib.plot import image_grid

shown = torch.cat([test_images[:10].cpu(), result.arrays["recon_image"][:10].cpu(),
                   result.arrays["gen_image"][:20].cpu()])
image_grid(shown, nrow=10, title="test images · reconstructions · samples from the prior (2 rows)")
plt.show()

# %%
recon_error = float((result.arrays["recon_image"] - test_images).pow(2).flatten(1).sum(1).mean())
mean_image_error = float((test_images - train_images.mean(0)).pow(2).flatten(1).sum(1).mean())
assert recon_error < 0.5 * mean_image_error, "reconstructions are far closer to their inputs than the mean image is"

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 5 · β: trading rate against distortion
#
# Split the negative ELBO into **rate** $R = \mathbb E_x\,\mathrm{KL}(q(z\mid x)\,\|\,p(z))$ (nats the code carries
# about each image) and **distortion** $D = -\mathbb E_x\mathbb E_q[\log p(x\mid z)]$. A β-VAE (Higgins et al.,
# 2017) minimises $D + \beta R$: $\beta > 1$ buys a cheaper code with worse reconstructions, $\beta < 1$ the reverse
# (Alemi et al., 2018). Four short runs (800 steps each, so the β = 1 point is not section 3's longer-trained model),
# side by side, one per CPU core (`mmlib.parallel.run_jobs`; the same numbers as one after the other):

# %%
from mmlib.vae import beta_sweep

betas = [0.5, 1.0, 2.0, 4.0]
sweep = beta_sweep(train_images, test_images, betas, steps=800, seed=0)

fig, ax = plt.subplots(figsize=(6.5, 4.5))
ax.plot([r["rate"] for r in sweep], [r["distortion"] for r in sweep], "o-", lw=2)
for r in sweep:
    ax.annotate(f"β = {r['beta']:g}", (r["rate"], r["distortion"]), textcoords="offset points", xytext=(6, 4))
ax.set(xlabel="rate R (nats per image)", ylabel="distortion D (nats per image)", title="Rate–distortion on test images")
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
for r in sweep:
    print(f"beta = {r['beta']:<4g} rate {r['rate']:5.1f}   distortion {r['distortion']:6.1f}   nats per image")

# %%
rates, distortions = [r["rate"] for r in sweep], [r["distortion"] for r in sweep]
assert all(r1 > r2 for r1, r2 in zip(rates, rates[1:])), "a larger β gives a smaller rate"
assert all(d1 < d2 for d1, d2 in zip(distortions, distortions[1:])), "a larger β gives a larger distortion"

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 6 · A latent space you can look at
#
# With a 2D code we can draw the whole latent space. Each test image is placed at its posterior mean
# $\mu_\phi(x)$ and coloured by its digit (the VAE never saw the labels).

# %%
from mmlib.metrics import linear_probe_accuracy
from mmlib.vae import decode_mean, encode_mean, fit_vae

vae_2d, _ = fit_vae(train_images, latent_dim=2, steps=1000, seed=0, desc="VAE, 2D latent")
z_test = encode_mean(vae_2d, test_images).cpu()
probe = linear_probe_accuracy(encode_mean(vae_2d, train_images), ds.train.label, z_test, ds.test.label)

fig, ax = plt.subplots(figsize=(6.5, 6))
points = ax.scatter(z_test[:, 0], z_test[:, 1], c=ds.test.label.cpu(), cmap="tab10", s=14, vmin=-0.5, vmax=9.5)
fig.colorbar(points, ax=ax, ticks=range(10), label="digit")
ax.set(xlabel="z₁", ylabel="z₂", title="Posterior means of the test digits")
ax.set_aspect("equal")
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
print(f"linear probe on the 2D codes: test accuracy {probe:.1f} (chance: 0.1)")

# %%
assert probe > 0.5, "a linear probe reads most digits from the 2D code: accuracy above 0.5, against 0.1 by chance"

# %% [markdown] slideshow={"slide_type": "subslide"}
# **Latent traversal.** Move the sliders to decode any point $z = (z_1, z_2)$ (run the notebook to use them).

# %%
from mmlib.widgets import slider_plot


def draw_decoded(z1, z2):
    image = decode_mean(vae_2d, torch.tensor([[z1, z2]], device=device))[0, 0].cpu()
    fig, ax = plt.subplots(figsize=(3, 3))
    ax.imshow(image, cmap="gray_r", vmin=0, vmax=1)
    ax.set_title(f"E[x | z = ({z1:.1f}, {z2:.1f})]")
    ax.axis("off")


slider_plot(draw_decoded, z1=(-3.0, 3.0, 0.1, 0.0), z2=(-3.0, 3.0, 0.1, 0.0))

# %% [markdown] slideshow={"slide_type": "subslide"}
# The same decoder on a fixed grid: $z_1$ and $z_2$ at the 5 %, 15 %, …, 95 % quantiles of $\mathcal N(0, 1)$, so
# that each cell covers an equal share of the prior's mass.

# %%
quantiles = Normal(0.0, 1.0).icdf(torch.linspace(0.05, 0.95, 10))
grid = torch.stack(torch.meshgrid(quantiles, quantiles.flip(0), indexing="xy"), dim=-1).reshape(-1, 2)
image_grid(decode_mean(vae_2d, grid.to(device)), nrow=10, title="Decoded grid: z₁ left → right, z₂ bottom → top")
plt.show()

# %% [markdown] slideshow={"slide_type": "slide"}
# ## Summary
#
# - $\log p(x) = \mathrm{ELBO}(x) + \mathrm{KL}(q(z\mid x)\,\|\,p(z\mid x))$: the ELBO is a lower bound whose gap is
#   the encoder's error. Train with $-\mathbb E_q[\log p(x\mid z)] + \mathrm{KL}(q(z\mid x)\,\|\,p(z))$, summed over
#   pixels and latent dimensions, averaged over the batch.
# - The reparameterisation $z = \mu + \sigma\varepsilon$ gives low-variance gradients (here over 10× lower than REINFORCE);
#   the KL to $\mathcal N(0, I)$ has a closed form.
# - The article's eq. (5) reduces to $\mathbb E_q[\log p(x\mid z)]$ and, minimised, wrecks reconstruction; eq. (6)
#   needs the intractable $\log p(x)$ and rewards reconstruction error. The correct Gaussian form is
#   $\mathbb E_q[\gamma\|x - f(z)\|^2] + \beta\,\mathrm{KL}$ with $\gamma = 1/(2\sigma^2)$.
# - With a proper 17-level likelihood, the VAE's importance-weighted test log-likelihood beats chapter 01's best
#   mixture; ELBO ≤ IWAE₁₀ ≤ IWAE₁₀₀ as theory says.
# - β trades rate against distortion. Chapter 05 replaces the KL by a discriminator on $z$, which can match priors
#   with no closed-form KL.

# %% [markdown] slideshow={"slide_type": "slide"}
# ## Exercises
#
# **04.1 (predict, then run).** In `mmlib.vae` the digits VAE trains for 1,500 steps with decoder dropout 0.2. Call
# `fit_vae(train_images, dropout=0.0, steps=4000)` and evaluate it with `importance_weighted_bounds`. Before you run
# it: will the *training* loss be lower or higher than in section 3? And the test IWAE bound? Would the self-check
# "beats chapter 01's baseline" still pass?
#
# **04.2 (implement).** Write the KL divergence between two diagonal Gaussians $q = \mathcal N(\mu_q,
# \mathrm{diag}\,e^{\texttt{lv}_q})$ and $p = \mathcal N(\mu_p, \mathrm{diag}\,e^{\texttt{lv}_p})$, one value per row
# (sum over the last dimension). With $\mu_p = 0$, $\texttt{lv}_p = 0$ it must reduce to the VAE's closed form.

# %% tags=["solution"]
def kl_diagonal_gaussians(mu_q, log_var_q, mu_p, log_var_p):
    """KL(N(mu_q, diag exp(log_var_q)) || N(mu_p, diag exp(log_var_p))), summed over the last dimension."""
    var_ratio = (log_var_q - log_var_p).exp()
    return 0.5 * (var_ratio + (mu_q - mu_p) ** 2 / log_var_p.exp() - 1 - (log_var_q - log_var_p)).sum(dim=-1)


# %%
# NBVAL_CHECK_OUTPUT
from mmlib.exercises import check

check("04.2", kl_diagonal_gaussians)

# %% [markdown]
# **04.3 (implement).** Given log-weights $\log w_{k,i}$ of shape `(K, N)` (K draws for each of N images), return the
# importance-weighted bound $\log \frac1K\sum_k w_{k,i}$ for every image. Mind the floating point: the log-weights of
# a digit are around −100.

# %% tags=["solution"]
def iwae_bound(log_weights):
    """log (1/K) sum_k exp(log_weights[k, i]) for every column i, computed stably."""
    return torch.logsumexp(log_weights, dim=0) - np.log(log_weights.shape[0])


# %%
# NBVAL_CHECK_OUTPUT
check("04.3", iwae_bound)

# %% [markdown]
# **04.4 (open question).** The importance-weighted bound is tighter than the ELBO, so why not *train* with
# $\mathrm{IWAE}_K$ instead? Try it (replace the loss by the negative of a $K = 10$ bound) and compare the test
# bounds and the rate. Rainforth et al. (2018), "Tighter variational bounds are not necessarily better", is a good
# companion: what happens to the encoder's gradient signal as $K$ grows?
