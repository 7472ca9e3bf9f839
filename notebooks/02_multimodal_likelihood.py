# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown] slideshow={"slide_type": "slide"}
# # 02 · Multimodal likelihood
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/mmgen-course/mmgen-course/blob/main/notebooks/02_multimodal_likelihood.ipynb)
#
# **What is the likelihood of several modalities observed together, and what does it buy us?**
#
# By the end of this notebook you will
# - take the article's eq. (2) apart with numbers: what its $n_j/m$ factor, its powers $\alpha_j$ and its product
#   over modalities do, and what they fail to do;
# - write the joint likelihood of several modalities through a **shared latent**, and marginalise a missing
#   modality;
# - correct the article's eq. (3) to the shared-latent linear-Gaussian model (probabilistic CCA), and fit it three
#   ways (closed form, EM, gradient ascent) to the same maximum;
# - predict one modality from another and impute a missing one, better than models that treat modalities as
#   independent;
# - apply the model to digit images and their sounds, and see where a linear link stops.

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
# ## 1 · Preprocess: two views with known parameters
#
# To check a fit we need the truth. `mmlib.data.linear_gaussian_views` draws paired samples of two views,
# $y_1\in\mathbb R^5$ and $y_2\in\mathbb R^4$, from a shared 2-dimensional latent with known parameters (its
# model is the one we build in section 3). We keep 2,000 pairs to fit and 1,000 to test.

# %%
import math

from torch.distributions import MultivariateNormal

from mmlib.data import linear_gaussian_views

f64 = torch.float64
n_train, k = 2000, 2
views, true = linear_gaussian_views(3000, latent_dim=k, view_dims=[5, 4], seed=2, dtype=f64, device=device)
train_views = [v[:n_train] for v in views]
test_views = [v[n_train:] for v in views]
y1, y2 = train_views
d1, d2 = y1.shape[1], y2.shape[1]
D = d1 + d2
print(f"y1 {tuple(y1.shape)}, y2 {tuple(y2.shape)} (train); {len(test_views[0])} test pairs; true latent dimension {k}")

# %% slideshow={"slide_type": "subslide"}
y = torch.cat(train_views, dim=1)
mean = y.mean(0)
S = (y - mean).T @ (y - mean) / n_train  # the ML covariance of the stacked views
correlation = S / torch.outer(S.diagonal().sqrt(), S.diagonal().sqrt())
fig, ax = plt.subplots(figsize=(6.5, 5.5))
image = ax.imshow(correlation.cpu(), cmap="RdBu_r", vmin=-1, vmax=1)
ax.axhline(d1 - 0.5, color="k", lw=2)
ax.axvline(d1 - 0.5, color="k", lw=2)
ax.set(title="Sample correlations of [y1; y2]", xticks=range(D), yticks=range(D),
       xticklabels=[f"y1[{i}]" for i in range(d1)] + [f"y2[{i}]" for i in range(d2)],
       yticklabels=[f"y1[{i}]" for i in range(d1)] + [f"y2[{i}]" for i in range(d2)])
ax.tick_params(axis="x", rotation=90)
ax.grid(False)
ax.text(d1 + d2 / 2 - 0.5, d1 / 2 - 0.5, "cross-modal\nblock", ha="center", va="center", fontsize=12)
fig.colorbar(image, ax=ax)
plt.show()

# %% [markdown]
# The off-diagonal blocks, the correlations between $y_1$ and $y_2$, are far from zero: the views are linked. A multimodal likelihood
# has to see that link.

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 2 · The article's eq. (2), taken apart
#
# The article proposes, for $J$ modalities with $n_j$ samples each out of $m$,
#
# $$L(\theta\mid M) = \prod_{j=1}^J\Big[\frac{n_j}{m}\prod_{i=1}^{n_j} p_\theta(y_{ij})\Big]^{\alpha_j},\qquad
#   \log L = \sum_j \alpha_j\log\frac{n_j}{m} + \sum_j\alpha_j\sum_i \log p_\theta(y_{ij}). \tag{2}$$
#
# Three things are wrong with it as a likelihood. We check each with numbers.
#
# **(a) The factor $n_j/m$ does not depend on $\theta$.** It adds the constant $\sum_j\alpha_j\log(n_j/m)$ to
# $\log L$: it changes the value, never the maximiser. Here view 2 is missing for a quarter of the samples
# ($n_1 = 2000$, $n_2 = 1500$), the model is a Gaussian per view, and we scan its covariance scale $s$.

# %%
n_obs = [n_train, 1500]
scales = torch.linspace(0.6, 1.6, 101, dtype=f64, device=device)


def per_view_log_lik(scale: torch.Tensor, j: int) -> torch.Tensor:
    """sum_i log N(y_ij; mean_j, scale * S_jj) over the n_j observed samples of view j."""
    yj = train_views[j][: n_obs[j]]
    block = slice(0, d1) if j == 0 else slice(d1, D)
    return MultivariateNormal(mean[block], covariance_matrix=scale * S[block, block]).log_prob(yj).sum()


log_lik_views = torch.stack([torch.stack([per_view_log_lik(s, j) for j in range(2)]) for s in scales])  # (101, 2)
without_factor = log_lik_views.sum(1)
with_factor = without_factor + sum(math.log(n / n_train) for n in n_obs)

# %%
offset = with_factor - without_factor
assert torch.allclose(offset, offset[0].expand_as(offset)), "the n_j/m factor shifts log L by a constant"
assert int(with_factor.argmax()) == int(without_factor.argmax()), "... so the maximiser does not move"
print(f"argmax scale with and without n_j/m: {float(scales[with_factor.argmax()]):.2f}; constant shift {float(offset[0]):.3f} nats")

# %% [markdown] slideshow={"slide_type": "subslide"}
# **(b) The powers $\alpha_j$ turn it into a *pseudo*-likelihood.** Three symptoms:
#
# 1. $p^\alpha$ is not normalised: $\int \mathcal N(y;0,1)^{\alpha}dy = (2\pi)^{(1-\alpha)/2}\alpha^{-1/2}\neq 1$.
# 2. When the modalities share a parameter (eq. (2) uses one $p_\theta$ for all of them), the weights move the
#    maximiser away from the maximum-likelihood estimate.
# 3. The weights rescale the curvature: that of $\sum_j\alpha_j\log L_j$ is $\sum_j\alpha_j n_j/\sigma_j^2$ instead
#    of $\sum_j n_j/\sigma_j^2$, so uncertainty read from it is wrong; and unequal weights make the estimator
#    noisier than the MLE.
#
# A clean example: two sensors measure the same quantity $\theta$, sensor 1 with noise 1 ($n_1=50$), sensor 2 with
# noise 4 ($n_2=200$). The MLE weighs each mean by its precision $n_j/\sigma_j^2$; eq. (2) with
# $\alpha = (0.2, 0.8)$ weighs it by $\alpha_j n_j/\sigma_j^2$.

# %%
from scipy import integrate

alpha_1d = 0.5
normal_pdf = lambda v: math.exp(-0.5 * v * v) / math.sqrt(2 * math.pi)
mass, _ = integrate.quad(lambda v: normal_pdf(v) ** alpha_1d, -np.inf, np.inf)
assert abs(mass - (2 * math.pi) ** ((1 - alpha_1d) / 2) / math.sqrt(alpha_1d)) < 1e-8 and abs(mass - 1) > 0.5, (
    "N(y; 0, 1)^alpha integrates to (2 pi)^((1 - alpha)/2) / sqrt(alpha), not 1: not a density"
)

theta_true, sigma_s, n_s, alpha_s = 1.0, torch.tensor([1.0, 4.0], dtype=f64), torch.tensor([50, 200]), torch.tensor([0.2, 0.8], dtype=f64)
gen_s = torch.Generator().manual_seed(0)
repeats = 4000  # 4,000 repetitions of the experiment, to see the estimators' spread
sensor_means = theta_true + sigma_s / n_s.sqrt() * torch.randn(repeats, 2, generator=gen_s, dtype=f64)  # ybar_j


def weighted_estimate(weights: torch.Tensor) -> torch.Tensor:
    """argmax of sum_j w_j sum_i log N(y_ij; theta, sigma_j^2) = precision-weighted mean of the sensor means."""
    precision = weights * n_s / sigma_s**2
    return (sensor_means * precision).sum(1) / precision.sum()


mle, pseudo = weighted_estimate(torch.ones(2, dtype=f64)), weighted_estimate(alpha_s)
fisher = float((n_s / sigma_s**2).sum())  # curvature of the true log-likelihood
pseudo_curvature = float((alpha_s * n_s / sigma_s**2).sum())

# %%
# NBVAL_CHECK_OUTPUT
print(f"integral of N(y; 0, 1)^{alpha_1d} dy = {mass:.4f}")
print(f"first repetition: MLE {float(mle[0]):.4f}, alpha-weighted {float(pseudo[0]):.4f}")
print(f"variance over {repeats} repetitions: MLE {float(mle.var()):.5f} (1/Fisher = {1 / fisher:.5f}), "
      f"alpha-weighted {float(pseudo.var()):.5f} (1/its curvature = {1 / pseudo_curvature:.5f})")

# %%
assert abs(float(mle[0] - pseudo[0])) > 1e-3, "the alpha-weighted maximiser differs from the MLE"
assert float(pseudo.var()) > 1.2 * float(mle.var()), "the alpha-weighted estimator is noisier than the MLE"
assert abs(float(mle.var()) * fisher - 1) < 0.1, "the MLE's variance is 1/Fisher information"
assert abs(float(pseudo.var()) * pseudo_curvature - 1) > 0.3, "the pseudo-likelihood's curvature misreports its variance"

# %% [markdown] slideshow={"slide_type": "subslide"}
# **(c) A product of per-modality likelihoods ignores the cross-modal link.** Each factor $p(y_{ij})$ sees one
# view. Flip the sign of $y_2$'s loadings in a fitted joint model: every correlation between the views changes sign,
# each view's own distribution is untouched. Eq. (2) cannot tell the two models apart; the joint likelihood can.

# %%
from mmlib.pcca import PCCAParams, fit_pcca_closed_form, pcca_log_likelihood

fitted = fit_pcca_closed_form(train_views, k)  # section 4 derives it; here we only use it
flipped = PCCAParams([fitted.W[0], -fitted.W[1]], fitted.mu, fitted.Psi)  # y2's loadings with the opposite sign


def product_of_marginals(params: PCCAParams) -> float:
    """Eq. (2) with alpha = 1, per sample: mean log p(y1) + mean log p(y2), each view on its own."""
    return float(pcca_log_likelihood([y1, None], params).mean() + pcca_log_likelihood([None, y2], params).mean())


product = {"fitted": product_of_marginals(fitted), "flipped": product_of_marginals(flipped)}
joint = {"fitted": float(pcca_log_likelihood(train_views, fitted).mean()),
         "flipped": float(pcca_log_likelihood(train_views, flipped).mean())}

# %%
# NBVAL_CHECK_OUTPUT
print(f"product of marginals (eq. 2, alpha = 1): fitted {product['fitted']:.4f}, flipped {product['flipped']:.4f}")
print(f"joint likelihood                       : fitted {joint['fitted']:.4f}, flipped {joint['flipped']:.4f}")

# %%
assert abs(product["fitted"] - product["flipped"]) < 1e-9, "eq. (2) gives the same value to opposite cross-modal links"
assert joint["fitted"] - joint["flipped"] > 1.0, "the joint likelihood prefers the right link by more than a nat per sample"

# %% [markdown]
# The gap between the joint and the product is the **mutual information** the model sees between the views. For
# Gaussians it is $-\tfrac12\sum_i\log(1-\rho_i^2)$ in the canonical correlations $\rho_i$ (section 4):

# %%
from mmlib.pcca import canonical_correlations

rho = canonical_correlations(y1, y2)
mutual_information = float(-0.5 * torch.log1p(-rho[:k] ** 2).sum())
assert abs((joint["fitted"] - product["fitted"]) - mutual_information) < 1e-9, (
    "joint minus product of marginals = the mutual information -1/2 sum log(1 - rho^2), nats per sample"
)
print(f"mutual information between the views under the fit: {mutual_information:.4f} nats per sample")

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 3 · The joint likelihood, through a shared latent
#
# The correct form of eq. (2): each sample $i$ has one latent $z_i$ that all its modalities share; the modalities it
# shows, $O_i$, are independent *given* $z_i$; the likelihood integrates $z_i$ out:
#
# $$L(\theta) = \prod_{i=1}^m \int p(z)\prod_{j\in O_i} p_\theta(y_{ij}\mid z)\,dz .$$
#
# A missing modality simply has no factor. No weights, no $n_j/m$: the data decide.
#
# **Build.** The linear-Gaussian version: $z\sim\mathcal N(0,I_k)$, $y_j = W_jz+\mu_j+\varepsilon_j$,
# $\varepsilon_j\sim\mathcal N(0,\Psi_j)$. The integral is Gaussian:
#
# $$\begin{bmatrix}y_1\\y_2\end{bmatrix}\sim\mathcal N\left(\begin{bmatrix}\mu_1\\\mu_2\end{bmatrix},
#   \begin{bmatrix}W_1W_1^\top+\Psi_1 & W_1W_2^\top\\ W_2W_1^\top & W_2W_2^\top+\Psi_2\end{bmatrix}\right),$$
#
# and a missing view is integrated out by **dropping its rows and columns**. We check both against a Monte Carlo
# estimate of the integral, $\log\frac1S\sum_s\prod_j p(y_j\mid z_s)$ with $z_s\sim p(z)$.

# %%
W_true = torch.cat(true.W)  # (D, k): [W1; W2]
C_true = W_true @ W_true.T + torch.block_diag(*true.Psi)  # the joint covariance
mu_true = torch.cat(true.mu)
pairs = torch.cat([test_views[0][:5], test_views[1][:5]], dim=1)  # 5 test pairs
closed_joint = MultivariateNormal(mu_true, C_true).log_prob(pairs)
closed_view1 = MultivariateNormal(mu_true[:d1], C_true[:d1, :d1]).log_prob(pairs[:, :d1])  # y2 missing

gen_mc = torch.Generator().manual_seed(0)
z = torch.randn(200_000, k, generator=gen_mc, dtype=f64).to(device)  # z_s ~ p(z)
noise = [MultivariateNormal(torch.zeros(len(p), dtype=f64, device=device), p) for p in true.Psi]
log_p1 = torch.stack([noise[0].log_prob(p[:d1] - z @ true.W[0].T - true.mu[0]) for p in pairs])  # log p(y1 | z_s)
log_p2 = torch.stack([noise[1].log_prob(p[d1:] - z @ true.W[1].T - true.mu[1]) for p in pairs])
mc_joint = torch.logsumexp(log_p1 + log_p2, dim=1) - math.log(len(z))
mc_view1 = torch.logsumexp(log_p1, dim=1) - math.log(len(z))

# %%
# NBVAL_CHECK_OUTPUT
print("both views, closed form:", [round(v, 2) for v in closed_joint.tolist()])
print("both views, Monte Carlo:", [round(v, 2) for v in mc_joint.tolist()])
print("y2 missing, closed form:", [round(v, 2) for v in closed_view1.tolist()])
print("y2 missing, Monte Carlo:", [round(v, 2) for v in mc_view1.tolist()])

# %%
assert torch.allclose(mc_joint, closed_joint, atol=0.05), "the Gaussian formula is the integral over the shared latent"
assert torch.allclose(mc_view1, closed_view1, atol=0.05), "dropping y2's rows and columns integrates y2 out"
assert torch.allclose(pcca_log_likelihood([test_views[0][:5], test_views[1][:5]], true), closed_joint), (
    "mmlib.pcca.pcca_log_likelihood is this joint log-likelihood"
)
assert torch.allclose(pcca_log_likelihood([test_views[0][:5], None], true), closed_view1), (
    "... and with None for a missing view it marginalises that view"
)

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 4 · The article's eq. (3), corrected
#
# The article writes each view as $p(y_j\mid\theta_j) = \mathcal N(y_j;\,W_j^\top\mu+\varepsilon_j,\;\Sigma_j)$
# with $\varepsilon_j\sim\mathcal N(0,I)$ and $\mu$ a fixed vector. Two problems:
# - the noise is counted twice (once as $\varepsilon_j$, once as $\Sigma_j$);
# - $\mu$ is a **constant**, not a random latent: nothing random is shared between the views, so
#   $\mathrm{Cov}(y_1,y_2)=0$ whatever the parameters.
#
# Sample from the article's form (with the true $W_j$ and $\Sigma_j = \Psi_j$) and measure the cross-covariance,
# in units of its sampling standard error $\sqrt{\mathrm{Var}(y_{1a})\mathrm{Var}(y_{2b})/n}$:

# %%
gen_a = torch.Generator().manual_seed(1)
mu_fixed = torch.randn(k, generator=gen_a, dtype=f64).to(device)
article = [w @ mu_fixed
           + torch.randn(n_train, w.shape[0], generator=gen_a, dtype=f64).to(device)  # epsilon_j ~ N(0, I)
           + torch.randn(n_train, w.shape[0], generator=gen_a, dtype=f64).to(device) @ torch.linalg.cholesky(p).T  # N(., Sigma_j)
           for w, p in zip(true.W, true.Psi)]


def cross_covariance_in_standard_errors(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|Cov(a_i, b_j)| / its standard error under independence, for every pair of coordinates."""
    a, b = a - a.mean(0), b - b.mean(0)
    cross = a.T @ b / len(a)
    return cross.abs() / (a.var(0)[:, None] * b.var(0)[None, :] / len(a)).sqrt()


z_article = cross_covariance_in_standard_errors(*article)
z_data = cross_covariance_in_standard_errors(y1, y2)

# %%
# NBVAL_CHECK_OUTPUT
print(f"largest |cross-covariance| in standard errors: article's eq. (3) {float(z_article.max()):.1f}, data {float(z_data.max()):.1f}")

# %%
assert float(z_article.max()) < 4, "the article's form has no cross-modal covariance (all 20 entries within 4 standard errors of 0)"
assert float(z_data.max()) > 10, "the data's cross-covariance is far from 0"

# %% [markdown] slideshow={"slide_type": "subslide"}
# **Corrected** (probabilistic CCA; Bach & Jordan, 2005):
#
# $$z\sim\mathcal N(0,I_k),\qquad y_j = W_j z + \mu_j + \varepsilon_j,\qquad \varepsilon_j\sim\mathcal N(0,\Psi_j),$$
#
# one noise term per view, a random latent shared by all views, and $\mathrm{Cov}(y_1,y_2) = W_1W_2^\top$.
#
# **Estimate, way 1: closed form.** Bach & Jordan (2005, Theorem 2) show the maximum-likelihood estimate is built
# from classical CCA. Whiten each view, take the SVD of the whitened cross-covariance
# $S_{11}^{-1/2}S_{12}S_{22}^{-1/2} = U\,\mathrm{diag}(\rho)\,V^\top$ (the $\rho_i$ are the canonical
# correlations), keep the first $k$ directions $U_{1k} = S_{11}^{-1/2}U_{:k}$, $U_{2k} = S_{22}^{-1/2}V_{:k}$, and set
#
# $$W_j = S_{jj}U_{jk}M_j,\quad \Psi_j = S_{jj}-W_jW_j^\top,\quad \mu_j = \bar y_j,\qquad M_1M_2^\top = \mathrm{diag}(\rho_{1..k})$$
#
# (we take $M_1 = M_2 = \mathrm{diag}(\rho)^{1/2}$; any other choice with $M_1M_2^\top = \mathrm{diag}(\rho)$ and
# spectral norms below 1 splits each $S_{jj}$ differently between $W_jW_j^\top$ and $\Psi_j$, but leaves the joint
# covariance, hence the likelihood, unchanged).

# %%
def inverse_sqrt(A: torch.Tensor) -> torch.Tensor:
    """A^{-1/2} of a symmetric positive-definite matrix, from its eigendecomposition."""
    values, vectors = torch.linalg.eigh(A)
    return vectors @ torch.diag(values.rsqrt()) @ vectors.T


S11, S12, S22 = S[:d1, :d1], S[:d1, d1:], S[d1:, d1:]
U, rho_svd, Vh = torch.linalg.svd(inverse_sqrt(S11) @ S12 @ inverse_sqrt(S22))
U1k, U2k = inverse_sqrt(S11) @ U[:, :k], inverse_sqrt(S22) @ Vh.T[:, :k]  # canonical directions
M = torch.diag(rho_svd[:k].sqrt())
W1, W2 = S11 @ U1k @ M, S22 @ U2k @ M
Psi1, Psi2 = S11 - W1 @ W1.T, S22 - W2 @ W2.T
closed = PCCAParams([W1, W2], [mean[:d1], mean[d1:]], [Psi1, Psi2])

# %%
assert torch.allclose(closed.covariance(), fitted.covariance(), atol=1e-10), "mmlib.fit_pcca_closed_form is this closed form"
assert all(float(torch.linalg.eigvalsh(p).min()) > 0 for p in (Psi1, Psi2)), "the noise covariances are positive definite"

# %% [markdown] slideshow={"slide_type": "subslide"}
# **Estimate, way 2: EM.** Treat $z$ as missing data. With $C = WW^\top+\Psi$ and $B = W^\top C^{-1}$, the posterior
# mean is $\mathbb E[z\mid y] = B(y-\mu)$ and, averaged over the data, $\mathbb E[zz^\top] = I - BW + BSB^\top$.
# - **E-step**: compute $B$ and $\mathbb E[zz^\top]$;
# - **M-step**: $W \leftarrow SB^\top\,\mathbb E[zz^\top]^{-1}$, and $\Psi \leftarrow$ the diagonal *blocks* of
#   $S - WBS$ (each view keeps a full noise covariance; the views' noises are independent).
#
# The average log-likelihood needs only $S$: $\ell = -\tfrac12\big[D\log2\pi + \log\det C + \mathrm{tr}(C^{-1}S)\big]$.

# %%
def average_log_likelihood(C: torch.Tensor) -> torch.Tensor:
    """-1/2 [D log 2 pi + log det C + tr(C^{-1} S)]: nats per sample when mu is the sample mean."""
    return -0.5 * (D * math.log(2 * math.pi) + torch.logdet(C) + torch.linalg.solve(C, S).diagonal().sum())


def symmetric(A: torch.Tensor) -> torch.Tensor:
    return (A + A.T) / 2


iterations = 300
W = torch.randn(D, k, generator=torch.Generator().manual_seed(0), dtype=f64).to(device)  # random start
Psi = torch.block_diag(S11, S22)
eye_k = torch.eye(k, dtype=f64, device=device)
em_loglik = []
for it in range(iterations + 1):
    C = W @ W.T + Psi
    em_loglik.append(average_log_likelihood(C))
    if it == iterations:
        break
    B = torch.linalg.solve(C, W).T  # E-step: W^T C^{-1}
    Ezz = eye_k - B @ W + B @ S @ B.T
    W = torch.linalg.solve(Ezz, (S @ B.T).T).T  # M-step
    R = S - W @ B @ S
    Psi = torch.block_diag(symmetric(R[:d1, :d1]), symmetric(R[d1:, d1:]))
em_loglik = torch.stack(em_loglik)

# %%
from mmlib.pcca import fit_pcca_em

em_params, em_history = fit_pcca_em(train_views, k, iterations=iterations, seed=0)
assert float(em_loglik.diff().min()) > -1e-10, "EM never decreases the log-likelihood"
assert torch.allclose(em_history, em_loglik, atol=1e-10), "mmlib.pcca.fit_pcca_em retraces the inline EM"
assert torch.allclose(em_params.covariance(), W @ W.T + Psi, atol=1e-10), "... to the same parameters"

# %% [markdown] slideshow={"slide_type": "subslide"}
# **Estimate, way 3: gradient ascent** on the marginal log-likelihood $\frac1n\sum_i\log\mathcal N(y_i;\mu,C)$ with
# autograd: every parameter free ($\mu$ too), each $\Psi_j = L_jL_j^\top$ through a lower-triangular $L_j$ with an
# $\exp$ diagonal, Adam with a cosine-decayed rate, full batch. As in chapter 01, the average Gaussian
# log-likelihood needs only the sufficient statistics $\bar y$ and $S$:
# $\ell = -\tfrac12\big[D\log2\pi+\log\det C+\mathrm{tr}(C^{-1}S)+(\bar y-\mu)^\top C^{-1}(\bar y-\mu)\big]$.

# %%
from mmlib.train import loss_step, make_optimizer
from mmlib.train import train as train_loop


def gradient_ascent(steps: int, lr: float = 0.1, seed: int = 0, progress: bool = True):
    """Maximise the marginal log-likelihood of the stacked training views; returns (PCCAParams, history)."""
    gen_g = torch.Generator().manual_seed(seed)
    mu_g = torch.zeros(D, dtype=f64, device=device, requires_grad=True)
    W_g = (0.1 * torch.randn(D, k, generator=gen_g, dtype=f64)).to(device).requires_grad_(True)
    raw_g = [torch.zeros(d, d, dtype=f64, device=device, requires_grad=True) for d in (d1, d2)]
    lower = [torch.ones(d, d, dtype=f64, device=device).tril(-1) for d in (d1, d2)]  # strictly-lower masks

    def noise_covariance() -> torch.Tensor:
        trils = [r * low + torch.diag_embed(r.diagonal().exp()) for r, low in zip(raw_g, lower)]
        return torch.block_diag(*[t @ t.T for t in trils])

    def negative_log_likelihood(batch: torch.Tensor) -> torch.Tensor:  # full batch: its statistics are mean, S
        C = W_g @ W_g.T + noise_covariance()
        diff = (mean - mu_g)[:, None]
        solved = torch.linalg.solve(C, torch.cat([S, diff], dim=1))  # C^{-1} [S, ybar - mu]
        trace = solved[:, :-1].diagonal().sum()
        quad = (diff[:, 0] * solved[:, -1]).sum()
        return 0.5 * (D * math.log(2 * math.pi) + torch.logdet(C) + trace + quad)

    optimizer = make_optimizer([mu_g, W_g, *raw_g], lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    update = loss_step(negative_log_likelihood, optimizer)

    def step(batch: torch.Tensor) -> dict[str, torch.Tensor]:
        losses = update(batch)
        schedule.step()
        return losses

    history = train_loop(step, y, steps=steps, batch_size=None, log_every=25, desc="PCCA (gradient)", progress=progress)
    with torch.no_grad():
        psi = noise_covariance()
        fit = PCCAParams([W_g[:d1].clone(), W_g[d1:].clone()], [mu_g[:d1].clone(), mu_g[d1:].clone()],
                         [psi[:d1, :d1], psi[d1:, d1:]])
    return fit, history


steps = 500
gradient, grad_history = gradient_ascent(steps)

# %% [markdown]
# `mmlib.pcca.fit_pcca_gradient` is the same gradient ascent (checked on a short run of 50 steps):

# %%
from mmlib.pcca import fit_pcca_gradient

short_lib, _ = fit_pcca_gradient(train_views, k, steps=50, lr=0.1, seed=0, progress=False)
short_inline, _ = gradient_ascent(50, progress=False)
assert torch.allclose(short_lib.covariance(), short_inline.covariance(), atol=1e-10), (
    "mmlib.pcca.fit_pcca_gradient reproduces the inline gradient ascent"
)

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 5 · Evaluate: one maximum, three roads
#
# The three estimates should reach the same maximum of the likelihood, and it has a formula (Bach & Jordan, 2005):
# $\ell^\star = -\tfrac12\big[D\log2\pi+\log\det S_{11}+\log\det S_{22}+\sum_{i\le k}\log(1-\rho_i^2)+D\big]$.

# %%
from mmlib.pcca import max_log_likelihood

fits = {"closed form": closed, "EM": em_params, "gradient": gradient}
loglik = {name: float(pcca_log_likelihood(train_views, p).mean()) for name, p in fits.items()}
loglik_formula = max_log_likelihood(train_views, k)
loglik_true = float(pcca_log_likelihood(train_views, true).mean())

# %%
# NBVAL_CHECK_OUTPUT
for name, value in loglik.items():
    print(f"{name:>11}: {value:.4f} nats per sample")
print(f"{'formula':>11}: {loglik_formula:.4f};  true parameters: {loglik_true:.4f}")

# %%
assert max(loglik.values()) - min(loglik.values()) < 1e-3, "closed form, EM and gradient ascent agree to 1e-3 nats per sample"
assert abs(loglik["closed form"] - loglik_formula) < 1e-9, "the closed form attains the formula's maximum"
assert loglik["closed form"] >= loglik_true, "the MLE fits the training data at least as well as the true parameters"

# %% slideshow={"slide_type": "subslide"}
fig, ax = plt.subplots(figsize=(8, 4.8))
em_gap = (loglik_formula - em_loglik).clamp_min(1e-12).cpu()
ax.plot(range(len(em_gap)), em_gap, lw=2, label="EM (iteration)")
grad_gap = [max(loss + loglik_formula, 1e-12) for loss in grad_history["loss"]]
ax.plot(grad_history.steps, grad_gap, lw=2, label="gradient ascent (step; float32 log)")
ax.axhline(1e-3, color="k", ls="--", label="1e-3 nats (the self-check)")
ax.set(xscale="log", yscale="log", xlabel="iteration / step", ylabel="nats per sample below the maximum",
       title="EM and gradient ascent converge to the closed-form maximum")
ax.legend()
plt.show()

# %% [markdown] slideshow={"slide_type": "subslide"}
# **The canonical correlations the fits imply** (from each fitted covariance) should match an independent CCA
# of the data, computed here with NumPy and SciPy only.

# %%
from scipy import linalg

from mmlib.pcca import implied_canonical_correlations

S_np = np.cov(torch.cat(train_views, 1).cpu().numpy().T, bias=True)
whiten1 = np.linalg.inv(linalg.sqrtm(S_np[:d1, :d1]).real)
whiten2 = np.linalg.inv(linalg.sqrtm(S_np[d1:, d1:]).real)
rho_numpy = np.linalg.svd(whiten1 @ S_np[:d1, d1:] @ whiten2, compute_uv=False)
implied = {name: implied_canonical_correlations(p).cpu().numpy() for name, p in fits.items()}

# %%
# NBVAL_CHECK_OUTPUT
print("numpy/scipy CCA  :", np.round(rho_numpy, 4))
for name, r in implied.items():
    print(f"implied by {name:>11}:", np.round(r, 4))

# %%
for name, r in implied.items():
    assert np.allclose(r[:k], rho_numpy[:k], atol=1e-4), f"{name}: its first k canonical correlations are the data's"
    assert np.abs(r[k:]).max() < 1e-6, f"{name}: a k = {k} model implies only {k} non-zero canonical correlations"

# %% [markdown] slideshow={"slide_type": "subslide"}
# The registered experiment `pcca` runs the same three fits on the same data; from a shell,
# `python -m mmlib run pcca --seed 0 --out results/pcca` prints them and writes `metrics.json` and `arrays.npz`.

# %%
from mmlib.pcca import pcca_experiment

experiment = pcca_experiment(seed=0, device=device)
assert torch.equal(torch.as_tensor(experiment.arrays["y1"]), y1), "the experiment fits the same data"
for key, name in (("loglik_closed_form", "closed form"), ("loglik_em", "EM"), ("loglik_gradient", "gradient")):
    assert abs(experiment.metrics[key] - loglik[name]) < 1e-9, f"experiment pcca reports the notebook's {name} fit"
assert torch.allclose(torch.as_tensor(experiment.arrays["gradient_W1"]), gradient.W[0], atol=1e-10), (
    "... with the same gradient-ascent parameters"
)

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 6 · Evaluate: held-out likelihood, prediction and imputation
#
# On the **test** pairs we compare three models: the fitted shared-latent model, the true parameters, and the
# *independent* baseline, a Gaussian per view fitted separately (the best the article's eq. (3) can do, since its
# views are independent).
#
# Under the joint Gaussian, a missing view is predicted by its conditional mean,
# $\mathbb E[y_2\mid y_1] = \mu_2 + C_{21}C_{11}^{-1}(y_1-\mu_1)$; the independent model can only predict $\mu_2$.

# %%
from mmlib.pcca import fit_independent_gaussians, predict_view

independent = fit_independent_gaussians(train_views)
test_loglik = {name: float(pcca_log_likelihood(test_views, p).mean())
               for name, p in (("shared latent", closed), ("true parameters", true), ("independent", independent))}

C_fit, mu_fit = closed.covariance(), closed.mean()
y1_test, y2_test = test_views
y2_from_y1 = mu_fit[d1:] + (y1_test - mu_fit[:d1]) @ torch.linalg.solve(C_fit[:d1, :d1], C_fit[:d1, d1:])
assert torch.allclose(predict_view(closed, [y1_test, None], target=1), y2_from_y1), "mmlib.pcca.predict_view is E[y2 | y1]"
mse = {
    "y2 from y1": float(((y2_from_y1 - y2_test) ** 2).mean()),
    "y2 mean": float(((predict_view(independent, [y1_test, None], target=1) - y2_test) ** 2).mean()),
    "y1 from y2": float(((predict_view(closed, [None, y2_test], target=0) - y1_test) ** 2).mean()),
    "y1 mean": float(((predict_view(independent, [None, y2_test], target=0) - y1_test) ** 2).mean()),
}

# %%
# NBVAL_CHECK_OUTPUT
print("test log-likelihood (nats per pair): " + ", ".join(f"{n} {v:.3f}" for n, v in test_loglik.items()))
print(f"test MSE of y2: from y1 {mse['y2 from y1']:.3f} vs mean {mse['y2 mean']:.3f};"
      f"  of y1: from y2 {mse['y1 from y2']:.3f} vs mean {mse['y1 mean']:.3f}")

# %%
assert test_loglik["shared latent"] > test_loglik["independent"], "held out, the shared latent beats independent views"
assert mse["y2 from y1"] < mse["y2 mean"] and mse["y1 from y2"] < mse["y1 mean"], (
    "cross-modal prediction beats the independent baseline's mean, in both directions"
)

# %% [markdown] slideshow={"slide_type": "subslide"}
# **Imputation.** Hide $y_2$ for a random 30 % of the test pairs. The joint model scores those pairs by the
# marginal of $y_1$ and fills $y_2$ in with $\mathbb E[y_2\mid y_1]$; the independent model fills in the mean.

# %%
gen_m = torch.Generator().manual_seed(3)
missing = (torch.rand(len(y1_test), generator=gen_m) < 0.3).to(device)
observed_loglik = torch.where(missing, pcca_log_likelihood([y1_test, None], closed),
                              pcca_log_likelihood(test_views, closed))  # each pair scored on what it shows
imputed = torch.where(missing[:, None], predict_view(closed, [y1_test, None], target=1), y2_test)
mean_filled = torch.where(missing[:, None], independent.mu[1].expand_as(y2_test), y2_test)
impute_mse = float(((imputed - y2_test)[missing] ** 2).mean())
mean_mse = float(((mean_filled - y2_test)[missing] ** 2).mean())

fig, ax = plt.subplots(figsize=(6.5, 6))
ax.scatter(y2_test[missing, 0].cpu(), imputed[missing, 0].cpu(), s=12, label=f"E[y2 | y1]: MSE {impute_mse:.2f}")
ax.scatter(y2_test[missing, 0].cpu(), mean_filled[missing, 0].cpu(), s=12, label=f"mean: MSE {mean_mse:.2f}")
lims = [float(y2_test[:, 0].min()), float(y2_test[:, 0].max())]
ax.plot(lims, lims, "k--", lw=1)
ax.set(xlabel="true y2[0] (hidden)", ylabel="imputed y2[0]", title=f"Imputing y2 for {int(missing.sum())} test pairs")
ax.legend()
plt.show()

# %%
assert impute_mse < mean_mse, "imputation by the shared latent beats mean imputation"
assert abs(float(missing.double().mean()) - 0.3) < 0.05, "about 30 % of the test pairs lose their y2"
alone = pcca_log_likelihood([y1_test, None], independent)
assert torch.allclose(observed_loglik[missing], alone[missing], atol=1e-8), (
    "a pair without y2 is scored by y1's marginal, N(mean, S11): the same as the independent model gives it"
)

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 7 · Images and sounds of digits
#
# **Preprocess.** The multimodal digits pair each 8×8 image (64 values) with a sound, a 28×32 log-spectrogram
# (896 values). With 1,259 training pairs a full covariance of 960 dimensions is hopeless, so each view is reduced
# to its first 20 principal components, fitted on the training split.
#
# **Build, estimate.** The shared-latent model between the two PCA views, in closed form; its latent dimension is
# chosen on the validation split. The registered experiment `pcca-digits` does it all.

# %%
from mmlib.pcca import digits_views, pcca_digits_experiment

digits = pcca_digits_experiment(seed=0, device=device)
dm = digits.metrics

# %%
# NBVAL_CHECK_OUTPUT
print(f"latent dimension chosen on validation: {dm['latent_dim']}")
print(f"test log-likelihood (nats per pair, PCA features): shared latent {dm['test_loglik_pcca']:.2f}, "
      f"independent {dm['test_loglik_independent']:.2f}")
print(f"image view alone: shared latent {dm['test_loglik_image_only_pcca']:.2f}, independent {dm['test_loglik_image_only_independent']:.2f}")
for target, source in (("audio", "image"), ("image", "audio")):
    ratio = dm[f"test_mse_{target}_from_{source}"] / dm[f"test_mse_{target}_mean"]
    print(f"test MSE of {target} from {source}: {dm[f'test_mse_{target}_from_{source}']:.4f} vs mean "
          f"{dm[f'test_mse_{target}_mean']:.4f} ({100 * (1 - ratio):.1f} % lower)")

# %%
assert dm["test_loglik_pcca"] > dm["test_loglik_independent"], "held out, the shared latent beats independent views"
assert abs(dm["test_loglik_image_only_pcca"] - dm["test_loglik_image_only_independent"]) < 1e-9, (
    "the image view alone is modelled identically: the gain in the joint likelihood is the cross-modal link"
)
assert dm["test_mse_audio_from_image"] < dm["test_mse_audio_mean"], "image -> audio prediction beats the mean"
assert dm["test_mse_image_from_audio"] < dm["test_mse_image_mean"], "audio -> image prediction beats the mean"
for target, source in (("audio", "image"), ("image", "audio")):
    gain = 1 - dm[f"test_mse_{target}_from_{source}"] / dm[f"test_mse_{target}_mean"]
    assert 0.03 < gain < 0.12, f"{source} -> {target}: the linear link removes between 3 and 12 % of the squared error"

# %% [markdown] slideshow={"slide_type": "subslide"}
# The link is real but **weak**: it removes about 5 % (image → audio) and 10 % (audio → image) of the squared
# error. Look at the predictions: each is an average over everything compatible with the other modality.

# %%
from mmlib.data import AUDIO_BINS, AUDIO_FRAMES
from mmlib.plot import image_grid

data = digits_views(device)
first = 8
images = torch.cat([data["raw"]["test"][0][:first], digits.arrays["pred_image__from_audio"][:first]])
image_grid(images.reshape(-1, 8, 8).clamp(0, 1), nrow=first, ax_size=1.4,
           title="Top: test images · bottom: predicted from their sounds")
plt.show()
spectra = torch.cat([data["raw"]["test"][1][:first], digits.arrays["pred_audio__from_image"][:first]])
image_grid(spectra.reshape(-1, AUDIO_BINS, AUDIO_FRAMES).clamp(0, 1), nrow=first, ax_size=1.3, cmap="magma",
           title="Top: test spectrograms · bottom: predicted from the images")
plt.show()

# %% [markdown]
# Why so little? In this data the digit sets the *interval* between two notes, while the starting pitch, tempo and
# loudness are random. Which frequency rows light up depends on the random pitch, so no linear map from pixels can
# place them; the best linear guess is a smear. A shared latent is the right idea; a *linear* one is too weak for
# this link. Chapter 04 makes the map from a latent to an image nonlinear (a VAE), and chapter 07 shares such a
# latent across image, caption and sound.

# %% [markdown] slideshow={"slide_type": "slide"}
# ## Summary
#
# - Eq. (2)'s $n_j/m$ is a constant (no effect on the estimate); its $\alpha_j$ make a pseudo-likelihood (not
#   normalised, a different and noisier maximiser, misleading curvature); its product over modalities cannot see
#   the link between them.
# - The joint likelihood integrates a shared latent: $\prod_i\int p(z)\prod_{j\in O_i}p(y_{ij}\mid z)\,dz$. A
#   missing modality is integrated out; for Gaussians, drop its rows and columns.
# - Eq. (3) corrected is probabilistic CCA, $y_j = W_jz+\mu_j+\varepsilon_j$. Its MLE has a closed form built on
#   CCA; EM and gradient ascent reach the same maximum; the fit implies the data's canonical correlations.
# - The shared latent predicts one modality from another and imputes missing ones; on the digits the linear link
#   helps, but little.

# %% [markdown] slideshow={"slide_type": "slide"}
# ## Exercises
#
# **02.1 (predict, then run).** Refit the known-parameter data with `fit_pcca_closed_form(train_views, 1)` and then
# with latent dimension 4. Before you run: how will the training log-likelihood change in each case (use the
# formula of section 5 and the printed canonical correlations), and how will the *test* log-likelihood change?
#
# **02.2 (implement).** The shared representation of a sample is its posterior mean
# $\mathbb E[z\mid y] = (I + W^\top\Psi^{-1}W)^{-1}W^\top\Psi^{-1}(y-\mu)$, a $k\times k$ solve instead of the
# $D\times D$ one of section 4. Write `posterior_mean(y, W, mu, Psi)` for stacked views `y` of shape `(N, D)`.

# %% tags=["solution"]
def posterior_mean(y: torch.Tensor, W: torch.Tensor, mu: torch.Tensor, Psi: torch.Tensor) -> torch.Tensor:
    """E[z | y] for each row of y, shape (N, k)."""
    psi_inv_w = torch.linalg.solve(Psi, W)  # Psi^{-1} W, (D, k)
    precision = torch.eye(W.shape[1], dtype=W.dtype, device=W.device) + W.T @ psi_inv_w  # I + W^T Psi^{-1} W
    return torch.linalg.solve(precision, psi_inv_w.T @ (y - mu).T).T


# %%
# NBVAL_CHECK_OUTPUT
from mmlib.exercises import check

check("02.2", posterior_mean)

# %% [markdown]
# **02.3 (open question).** Multimodal models are often trained with per-modality weights anyway, for example to stop
# a 784-pixel image from drowning a one-word label. Section 2 showed such an objective is not a likelihood. What may
# you still conclude from it, what should you report to compare models fairly, and how could a *model* (rather than
# a weight) let one modality matter more?
