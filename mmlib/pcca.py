"""Multimodal likelihood through a shared latent: probabilistic CCA (taught in notebook 02).

The article's eq. (3) corrected: every view ``j`` of a sample is generated from one shared latent ``z``,

    z ~ N(0, I_k),   y_j = W_j z + mu_j + eps_j,   eps_j ~ N(0, Psi_j),

so the stacked views are Gaussian with mean ``mu = [mu_1; mu_2]`` and covariance ``C = W W^T + blockdiag(Psi_j)``
(``W = [W_1; W_2]``): the off-diagonal block ``W_1 W_2^T`` is the cross-modal link. The joint likelihood of eq. (2)
done right, ``prod_i int p(z) prod_{j in O_i} p(y_ij | z) dz``, is ``N(y_O; mu_O, C_OO)``: a missing view is
marginalised by dropping its rows and columns of ``C``.

The maximum-likelihood fit comes three ways, which reach the same maximum:
:func:`fit_pcca_closed_form` (Bach & Jordan 2005, "A probabilistic interpretation of canonical correlation
analysis", Theorem 2), :func:`fit_pcca_em` (expectation-maximisation) and :func:`fit_pcca_gradient` (gradient ascent
on the marginal likelihood). :func:`predict_view` gives ``E[y_target | observed views]`` (cross-modal prediction and
imputation); :func:`fit_independent_gaussians` is the baseline that ignores the link.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch.distributions import MultivariateNormal

from mmlib.checks import check_int, check_positive, check_tensor
from mmlib.data import LinearGaussianParams
from mmlib.device import resolve_device
from mmlib.exercises import exercise
from mmlib.experiments import Result, register
from mmlib.seed import seed_everything
from mmlib.train import History, loss_step, make_optimizer, train

__all__ = [
    "PCCAParams",
    "as_params",
    "sample_moments",
    "pcca_log_likelihood",
    "canonical_correlations",
    "implied_canonical_correlations",
    "max_log_likelihood",
    "fit_pcca_closed_form",
    "fit_pcca_em",
    "fit_pcca_gradient",
    "fit_independent_gaussians",
    "predict_view",
    "sample_pcca",
    "pca_basis",
    "pcca_experiment",
    "pcca_digits_experiment",
]


# ---------------------------------------------------------------------------------------------------------------------
# Parameters and input checks
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PCCAParams(LinearGaussianParams):
    """Parameters of the shared-latent linear-Gaussian model: per view ``W[j]`` ``(d_j, k)``, ``mu[j]`` ``(d_j,)``,
    ``Psi[j]`` ``(d_j, d_j)``. ``k = 0`` (``W[j]`` with no columns) is the model of independent Gaussian views.
    The fields, ``latent_dim``, ``view_dims``, the joint ``mean()`` and ``covariance()`` are those of the data
    generator's :class:`mmlib.data.LinearGaussianParams` — the model is the one that made the data."""

    def arrays(self, prefix: str) -> dict[str, torch.Tensor]:
        """``{prefix}W1``, ``{prefix}mu1``, ``{prefix}Psi1``, ... (views numbered from 1), for ``arrays.npz``."""
        out = {}
        for j, (w, m, p) in enumerate(zip(self.W, self.mu, self.Psi), start=1):
            out.update({f"{prefix}W{j}": w, f"{prefix}mu{j}": m, f"{prefix}Psi{j}": p})
        return out


def as_params(params: object, name: str = "params") -> PCCAParams:
    """A :class:`PCCAParams` from anything with ``W``, ``mu`` and ``Psi`` lists (e.g. ``LinearGaussianParams``)."""
    if isinstance(params, PCCAParams):
        out = params
    elif all(hasattr(params, a) for a in ("W", "mu", "Psi")):
        out = PCCAParams(list(params.W), list(params.mu), list(params.Psi))
    else:
        raise TypeError(f"{name}: expected PCCAParams (or an object with W, mu and Psi), got {type(params).__name__}")
    if not (len(out.W) == len(out.mu) == len(out.Psi)) or not out.W:
        raise ValueError(f"{name}: expected W, mu and Psi with one entry per view (at least one view)")
    k = int(out.W[0].shape[1]) if out.W[0].ndim == 2 else -1
    for j, (w, m, p) in enumerate(zip(out.W, out.mu, out.Psi)):
        check_tensor(w, f"{name}.W[{j}]", ndim=2, floating=True, nonempty=False)
        d = int(w.shape[0])
        check_tensor(m, f"{name}.mu[{j}]", shape=(d,), floating=True)
        check_tensor(p, f"{name}.Psi[{j}]", shape=(d, d), floating=True)
        if w.shape[1] != k:
            raise ValueError(f"{name}.W[{j}]: expected {k} latent columns like W[0], got {w.shape[1]}")
    return out


def _check_views(views: object, name: str = "views", *, allow_missing: bool = False) -> list[torch.Tensor | None]:
    """Views: a sequence of 2D float tensors with the same number of rows (``None`` marks a missing view)."""
    if isinstance(views, torch.Tensor) or not isinstance(views, Sequence) or len(views) == 0:
        raise TypeError(f"{name}: expected a non-empty list of tensors (N, d_j), one per view, got "
                        f"{type(views).__name__}")
    out: list[torch.Tensor | None] = []
    rows: int | None = None
    first = ""
    for j, v in enumerate(views):
        if v is None:
            if not allow_missing:
                raise ValueError(f"{name}[{j}]: is None, but every view must be observed here")
            out.append(None)
            continue
        v = check_tensor(v, f"{name}[{j}]", ndim=2, floating=True)
        if rows is None:
            rows, first = int(v.shape[0]), f"{name}[{j}]"
        elif v.shape[0] != rows:
            raise ValueError(f"{name}[{j}]: expected {rows} samples (rows) like {first}, got {v.shape[0]}; "
                             "the views of a sample must be paired row by row")
        out.append(v)
    if rows is None:
        raise ValueError(f"{name}: every view is None; at least one view must be observed")
    return out


def _check_latent_dim(latent_dim: object, dims: Sequence[int]) -> int:
    latent_dim = check_int(latent_dim, "latent_dim", low=1)
    if latent_dim > min(dims):
        raise ValueError(
            f"latent_dim: expected at most the smallest view dimension {min(dims)} (view dims {list(dims)}), "
            f"got {latent_dim}"
        )
    return latent_dim


def _dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def _stack(views: Sequence[torch.Tensor]) -> torch.Tensor:
    dtype = _dtype(views[0].device)
    return torch.cat([v.to(dtype) for v in views], dim=1)


def sample_moments(views: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample mean ``(D,)`` and maximum-likelihood covariance ``(D, D)`` (divided by N) of the stacked views."""
    views = _check_views(views)
    y = _stack(views)
    if y.shape[0] < 2:
        raise ValueError(f"views: expected at least 2 samples, got {y.shape[0]}")
    mean = y.mean(0)
    centred = y - mean
    return mean, centred.T @ centred / y.shape[0]


def _blocks(dims: Sequence[int]) -> list[slice]:
    out, start = [], 0
    for d in dims:
        out.append(slice(start, start + d))
        start += d
    return out


def _inverse_sqrt(sym: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(sym)
    if bool((values <= 0).any()):
        raise ValueError("views: a view's sample covariance is singular (constant or collinear features); "
                         "reduce its dimension (e.g. PCA) or use more samples")
    return vectors @ torch.diag(values.rsqrt()) @ vectors.T


# ---------------------------------------------------------------------------------------------------------------------
# Likelihood and canonical correlations
# ---------------------------------------------------------------------------------------------------------------------


def pcca_log_likelihood(views: Sequence[torch.Tensor | None], params: object) -> torch.Tensor:
    """``log p(y_O) = log N(y_O; mu_O, C_OO)`` per sample ``(N,)`` in nats, where ``O`` are the views not ``None``.

    This is eq. (2) done right for one sample: ``log int p(z) prod_{j in O} p(y_j | z) dz``. A missing view is
    integrated out by dropping its rows and columns of the joint covariance ``C = W W^T + blockdiag(Psi)``.
    """
    params = as_params(params)
    views = _check_views(views, allow_missing=True)
    if len(views) != len(params.W):
        raise ValueError(f"views: expected {len(params.W)} entries (one per view of params), got {len(views)}")
    blocks = _blocks(params.view_dims)
    keep = [j for j, v in enumerate(views) if v is not None]
    for j in keep:
        if views[j].shape[1] != params.view_dims[j]:
            raise ValueError(f"views[{j}]: expected {params.view_dims[j]} features, got {views[j].shape[1]}")
    idx = torch.cat([torch.arange(blocks[j].start, blocks[j].stop) for j in keep])
    mean, cov = params.mean(), params.covariance()
    y = torch.cat([views[j].to(mean.dtype) for j in keep], dim=1)
    idx = idx.to(mean.device)
    return MultivariateNormal(mean[idx], covariance_matrix=cov[idx][:, idx]).log_prob(y)


def _whitened_cross(cov: torch.Tensor, d1: int) -> torch.Tensor:
    s11, s12, s22 = cov[:d1, :d1], cov[:d1, d1:], cov[d1:, d1:]
    return _inverse_sqrt(s11) @ s12 @ _inverse_sqrt(s22)


def canonical_correlations(y1: torch.Tensor, y2: torch.Tensor) -> torch.Tensor:
    """The sample canonical correlations of two views, largest first, ``(min(d1, d2),)``: the singular values of
    ``S11^{-1/2} S12 S22^{-1/2}`` (Hotelling 1936)."""
    y1 = check_tensor(y1, "y1", ndim=2, floating=True)
    y2 = check_tensor(y2, "y2", ndim=2, floating=True)
    _check_views([y1, y2], "[y1, y2]")
    _, cov = sample_moments([y1, y2])
    return torch.linalg.svdvals(_whitened_cross(cov, y1.shape[1]))


def implied_canonical_correlations(params: object, pair: tuple[int, int] = (0, 1)) -> torch.Tensor:
    """The canonical correlations between views ``pair`` implied by the model covariance, largest first.

    A model with latent dimension ``k`` implies at most ``k`` non-zero ones (rank of ``W_1 W_2^T``)."""
    params = as_params(params)
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise TypeError(f"pair: expected two view indices (i, j), got {pair!r}")
    i, j = (check_int(p, "pair", low=0, high=len(params.W) - 1) for p in pair)
    if i == j:
        raise ValueError(f"pair: expected two different views, got {pair}")
    sub = PCCAParams([params.W[i], params.W[j]], [params.mu[i], params.mu[j]], [params.Psi[i], params.Psi[j]])
    return torch.linalg.svdvals(_whitened_cross(sub.covariance(), params.view_dims[i]))


def max_log_likelihood(views: Sequence[torch.Tensor], latent_dim: int) -> float:
    """The maximum of the average log-likelihood (nats per sample) over all PCCA models with ``latent_dim``:

    ``-1/2 [D log 2 pi + log det S11 + log det S22 + sum_{i <= k} log(1 - rho_i^2) + D]`` (Bach & Jordan 2005), with
    ``rho_i`` the sample canonical correlations. It follows from the closed-form solution.
    """
    views = _check_views(views)
    if len(views) != 2:
        raise ValueError(f"views: the closed form is for exactly two views, got {len(views)}")
    dims = [v.shape[1] for v in views]
    latent_dim = _check_latent_dim(latent_dim, dims)
    _, cov = sample_moments(views)
    d1 = dims[0]
    rho = torch.linalg.svdvals(_whitened_cross(cov, d1))[:latent_dim]
    total = sum(dims)
    value = -0.5 * (total * math.log(2 * math.pi) + torch.logdet(cov[:d1, :d1]) + torch.logdet(cov[d1:, d1:])
                    + torch.log1p(-(rho**2)).sum() + total)
    return float(value)


# ---------------------------------------------------------------------------------------------------------------------
# Three ways to the maximum-likelihood estimate
# ---------------------------------------------------------------------------------------------------------------------


def fit_pcca_closed_form(views: Sequence[torch.Tensor], latent_dim: int) -> PCCAParams:
    """Closed-form maximum likelihood (Bach & Jordan 2005, Theorem 2), for two views:

    ``W_j = S_jj U_jk M_j``, ``Psi_j = S_jj - W_j W_j^T``, ``mu_j`` = sample mean, where ``U_1k``, ``U_2k`` hold the
    first ``k`` canonical directions (``U_jk^T S_jj U_jk = I``) and ``M_1 M_2^T = P_k = diag(rho_1..rho_k)``; we take
    ``M_1 = M_2 = P_k^{1/2}``. Any other valid choice of ``M`` gives the same likelihood.
    """
    views = _check_views(views)
    if len(views) != 2:
        raise ValueError(f"views: the closed form is for exactly two views, got {len(views)}")
    dims = [v.shape[1] for v in views]
    latent_dim = _check_latent_dim(latent_dim, dims)
    mean, cov = sample_moments(views)
    d1 = dims[0]
    s11, s22 = cov[:d1, :d1], cov[d1:, d1:]
    i11, i22 = _inverse_sqrt(s11), _inverse_sqrt(s22)
    u, rho, vh = torch.linalg.svd(i11 @ cov[:d1, d1:] @ i22)
    m = torch.diag(rho[:latent_dim].sqrt())
    w1 = s11 @ (i11 @ u[:, :latent_dim]) @ m
    w2 = s22 @ (i22 @ vh.T[:, :latent_dim]) @ m
    psi1, psi2 = s11 - w1 @ w1.T, s22 - w2 @ w2.T
    return PCCAParams([w1, w2], [mean[:d1], mean[d1:]], [(psi1 + psi1.T) / 2, (psi2 + psi2.T) / 2])


def _average_log_likelihood(cov_model: torch.Tensor, sample_cov: torch.Tensor) -> torch.Tensor:
    """``-1/2 [D log 2 pi + log det C + tr(C^{-1} S)]``: the average log-likelihood when ``mu`` = sample mean."""
    d = cov_model.shape[0]
    trace = torch.linalg.solve(cov_model, sample_cov).diagonal().sum()
    return -0.5 * (d * math.log(2 * math.pi) + torch.logdet(cov_model) + trace)


def fit_pcca_em(
    views: Sequence[torch.Tensor],
    latent_dim: int,
    *,
    iterations: int = 300,
    seed: int = 0,
) -> tuple[PCCAParams, torch.Tensor]:
    """Expectation-maximisation for the shared-latent model (any number of views), on the sample moments.

    With ``C = W W^T + Psi`` and ``B = W^T C^{-1}`` (so ``E[z | y] = B (y - mu)``):

    - **E-step**: ``E[z z^T]`` averaged over the data is ``I - B W + B S B^T``;
    - **M-step**: ``W <- S B^T (I - B W + B S B^T)^{-1}``, ``Psi <- blockdiag_j (S - W B S)_jj``; ``mu`` = sample mean.

    Starts from ``W ~ N(0, 1)`` (drawn with ``seed``) and ``Psi_j = S_jj``. Returns ``(params, history)`` with
    ``history`` the average log-likelihood (nats per sample) before each iteration and after the last,
    ``(iterations + 1,)``; it never decreases.
    """
    views = _check_views(views)
    dims = [v.shape[1] for v in views]
    latent_dim = _check_latent_dim(latent_dim, dims)
    iterations = check_int(iterations, "iterations", low=0)
    seed = check_int(seed, "seed", low=0)
    mean, s = sample_moments(views)
    blocks = _blocks(dims)
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(sum(dims), latent_dim, generator=gen, dtype=s.dtype).to(s.device)
    psi = torch.block_diag(*[s[b, b] for b in blocks])
    eye = torch.eye(latent_dim, device=s.device, dtype=s.dtype)
    history = []
    for it in range(iterations + 1):
        cov = w @ w.T + psi
        history.append(_average_log_likelihood(cov, s))
        if it == iterations:
            break
        b = torch.linalg.solve(cov, w).T  # W^T C^{-1} (C symmetric)
        ezz = eye - b @ w + b @ s @ b.T
        w = torch.linalg.solve(ezz, (s @ b.T).T).T  # S B^T Ezz^{-1} (Ezz symmetric)
        residual = s - w @ b @ s
        psi = torch.block_diag(*[(residual[bl, bl] + residual[bl, bl].T) / 2 for bl in blocks])
    params = PCCAParams([w[bl] for bl in blocks], [mean[bl] for bl in blocks], [psi[bl, bl] for bl in blocks])
    return params, torch.stack(history)


def fit_pcca_gradient(
    views: Sequence[torch.Tensor],
    latent_dim: int,
    *,
    steps: int = 500,
    lr: float = 0.1,
    seed: int = 0,
    log_every: int = 25,
    progress: bool = True,
) -> tuple[PCCAParams, History]:
    """Gradient ascent (Adam, cosine-decayed rate) on the average marginal log-likelihood of the stacked views,
    ``(1/N) sum_i log N(y_i; mu, W W^T + blockdiag(L_j L_j^T))``, with autograd.

    Full batch, through the sufficient statistics (the same function of the parameters, a D x D computation):
    ``-1/2 [D log 2 pi + log det C + tr(C^{-1} S) + (ybar - mu)^T C^{-1} (ybar - mu)]``. Every parameter is learnt,
    ``mu`` included; each ``Psi_j = L_j L_j^T`` through a lower-triangular ``L_j`` with a positive (``exp``)
    diagonal. Starts from ``mu = 0``, small ``W`` drawn with ``seed`` and ``L_j = I``. Returns ``(params, history)``;
    ``history["loss"]`` is the negative log-likelihood in nats per sample.
    """
    views = _check_views(views)
    dims = [v.shape[1] for v in views]
    latent_dim = _check_latent_dim(latent_dim, dims)
    steps = check_int(steps, "steps", low=1)
    lr = check_positive(lr, "lr")
    seed = check_int(seed, "seed", low=0)
    y = _stack(views)
    y_mean, y_cov = sample_moments(views)
    dev, dtype = y.device, y.dtype
    gen = torch.Generator().manual_seed(seed)
    mu = torch.zeros(y.shape[1], device=dev, dtype=dtype, requires_grad=True)
    w = (0.1 * torch.randn(y.shape[1], latent_dim, generator=gen, dtype=dtype)).to(dev).requires_grad_(True)
    raws = [torch.zeros(d, d, device=dev, dtype=dtype, requires_grad=True) for d in dims]
    # strictly-lower-triangular masks (a product, not torch.tril: small tensors, no parallel region per step)
    lower = [torch.ones(d, d, device=dev, dtype=dtype).tril(-1) for d in dims]

    def noise_covariance() -> torch.Tensor:
        trils = [r * low + torch.diag_embed(r.diagonal().exp()) for r, low in zip(raws, lower)]
        return torch.block_diag(*[t @ t.T for t in trils])

    def negative_log_likelihood(batch: torch.Tensor) -> torch.Tensor:
        # full batch: ``batch`` is the stacked views, whose sufficient statistics were computed once above
        cov = w @ w.T + noise_covariance()
        diff = (y_mean - mu)[:, None]
        # C^{-1} [S, ybar - mu]; solve_ex skips solve's singularity check, a host synchronisation on a GPU (a
        # singular C gives NaN/inf here, which the trainer reports)
        solved = torch.linalg.solve_ex(cov, torch.cat([y_cov, diff], dim=1))[0]
        trace = solved[:, :-1].diagonal().sum()
        quad = (diff[:, 0] * solved[:, -1]).sum()
        return 0.5 * (y.shape[1] * math.log(2 * math.pi) + torch.logdet(cov) + trace + quad)

    optimizer = make_optimizer([mu, w, *raws], lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    step = loss_step(negative_log_likelihood, optimizer, scheduler=schedule)
    history = train(step, y, steps=steps, batch_size=None, log_every=log_every, desc="PCCA (gradient)",
                    progress=progress)
    blocks = _blocks(dims)
    with torch.no_grad():
        psi = noise_covariance()
        params = PCCAParams([w[b].clone() for b in blocks], [mu[b].clone() for b in blocks],
                            [psi[b, b].clone() for b in blocks])
    return params, history


def fit_independent_gaussians(views: Sequence[torch.Tensor]) -> PCCAParams:
    """The baseline that treats the views as independent: each view its own Gaussian (sample mean and covariance).

    It is the shared-latent model with ``k = 0`` (``W_j`` has no columns): the joint covariance is block diagonal,
    there is no cross-modal link, and :func:`predict_view` predicts the target view's mean whatever is observed.
    """
    views = _check_views(views)
    dims = [v.shape[1] for v in views]
    mean, cov = sample_moments(views)
    blocks = _blocks(dims)
    return PCCAParams([cov.new_zeros(d, 0) for d in dims], [mean[b] for b in blocks], [cov[b, b] for b in blocks])


# ---------------------------------------------------------------------------------------------------------------------
# Cross-modal prediction, imputation and sampling
# ---------------------------------------------------------------------------------------------------------------------


def predict_view(params: object, views: Sequence[torch.Tensor | None], target: int) -> torch.Tensor:
    """``E[y_target | y_O] = mu_t + C_tO C_OO^{-1} (y_O - mu_O)``: the target view predicted from the observed ones.

    ``views`` holds one entry per view, ``None`` where a view is missing (the target's entry is ignored). This is
    cross-modal prediction, and the imputation of a missing modality, under the joint Gaussian.
    """
    params = as_params(params)
    target = check_int(target, "target", low=0, high=len(params.W) - 1)
    if isinstance(views, Sequence) and len(views) != len(params.W):
        raise ValueError(f"views: expected {len(params.W)} entries (one per view of params), got {len(views)}")
    given = [None if j == target else v for j, v in enumerate(views)] if isinstance(views, Sequence) else views
    given = _check_views(given, allow_missing=True)
    keep = [j for j, v in enumerate(given) if v is not None]
    for j in keep:
        if given[j].shape[1] != params.view_dims[j]:
            raise ValueError(f"views[{j}]: expected {params.view_dims[j]} features, got {given[j].shape[1]}")
    blocks = _blocks(params.view_dims)
    mean, cov = params.mean(), params.covariance()
    obs = torch.cat([torch.arange(blocks[j].start, blocks[j].stop) for j in keep]).to(mean.device)
    tgt = torch.arange(blocks[target].start, blocks[target].stop, device=mean.device)
    y = torch.cat([given[j].to(mean.dtype) for j in keep], dim=1)
    gain = torch.linalg.solve(cov[obs][:, obs], cov[obs][:, tgt]).T  # C_tO C_OO^{-1}
    return mean[tgt] + (y - mean[obs]) @ gain.T


def sample_pcca(params: object, n: int, *, seed: int = 0) -> list[torch.Tensor]:
    """``n`` paired samples ``[y_1, y_2, ...]`` from the model: ``z ~ N(0, I)``, ``y_j = W_j z + mu_j + eps_j``."""
    params = as_params(params)
    n = check_int(n, "n", low=1)
    seed = check_int(seed, "seed", low=0)
    gen = torch.Generator().manual_seed(seed)
    dev, dtype = params.W[0].device, params.W[0].dtype
    z = torch.randn(n, params.latent_dim, generator=gen, dtype=dtype).to(dev)
    out = []
    for w, m, p in zip(params.W, params.mu, params.Psi):
        eps = torch.randn(n, w.shape[0], generator=gen, dtype=dtype).to(dev) @ torch.linalg.cholesky(p).T
        out.append(z @ w.T + m + eps)
    return out


def pca_basis(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean, basis)`` of the first ``dim`` principal components of the rows of ``x`` (``basis`` is ``(D, dim)``,
    orthonormal columns): features are ``(x - mean) @ basis``, reconstructions ``features @ basis.T + mean``."""
    x = check_tensor(x, "x", ndim=2, floating=True)
    dim = check_int(dim, "dim", low=1, high=min(x.shape))
    mean = x.mean(0)
    centred = x - mean
    _, vectors = torch.linalg.eigh(centred.T @ centred / x.shape[0])  # eigenvalues ascending
    return mean, vectors[:, -dim:].flip(1)


# ---------------------------------------------------------------------------------------------------------------------
# Experiments
# ---------------------------------------------------------------------------------------------------------------------

#: The known-parameter problem of experiment ``pcca``: sample sizes, latent and view dimensions, data seed.
PCCA_SETUP: dict[str, int | list[int]] = {"n_train": 2000, "n_test": 1000, "latent_dim": 2, "view_dims": [5, 4],
                                          "data_seed": 2}


def _pcca_data(device: torch.device) -> tuple[list[torch.Tensor], list[torch.Tensor], PCCAParams]:
    from mmlib.data import linear_gaussian_views

    n = int(PCCA_SETUP["n_train"]) + int(PCCA_SETUP["n_test"])
    views, true = linear_gaussian_views(n, latent_dim=int(PCCA_SETUP["latent_dim"]),
                                        view_dims=list(PCCA_SETUP["view_dims"]), seed=int(PCCA_SETUP["data_seed"]),
                                        dtype=_dtype(device), device=device)
    cut = int(PCCA_SETUP["n_train"])
    return [v[:cut] for v in views], [v[cut:] for v in views], as_params(true)


@register("pcca", "Chapter 02: probabilistic CCA on views with known parameters: closed form, EM and gradient agree")
def pcca_experiment(seed: int = 0, device: torch.device | None = None) -> Result:
    """Experiment ``pcca``: the three maximum-likelihood fits of the shared-latent model to ``linear_gaussian_views``.

    The data (2,000 training + 1,000 test samples, views of 5 and 4 dimensions, latent dimension 2) are fixed;
    ``seed`` drives the random starts of EM and gradient ascent. Metrics: ``latent_dim``; ``loglik_closed_form``,
    ``loglik_em``, ``loglik_gradient`` (training log-likelihood, nats per sample), ``loglik_true`` (the generating
    parameters), ``loglik_max`` (the formula of :func:`max_log_likelihood`), ``test_loglik_<method>``,
    ``test_loglik_independent``, ``canonical_correlation_<i>`` (data), ``max_canonical_correlation_gap`` (fits vs
    data), ``test_mse_y2_from_y1`` and ``test_mse_y2_mean_baseline``. Arrays: ``y1``, ``y2`` (training views),
    ``y1_test``, ``y2_test``, ``true_*``, ``closed_form_*``, ``em_*``, ``gradient_*`` (``W1``, ``mu1``, ``Psi1``, ...),
    ``em_history``, ``gradient_loss``.
    """
    seed_everything(seed)
    dev = resolve_device(device)
    train_views, test_views, true = _pcca_data(dev)
    k = int(PCCA_SETUP["latent_dim"])
    em_params, em_history = fit_pcca_em(train_views, k, seed=seed)
    grad_params, grad_history = fit_pcca_gradient(train_views, k, seed=seed, progress=False)
    fits = {"closed_form": fit_pcca_closed_form(train_views, k), "em": em_params, "gradient": grad_params}
    independent = fit_independent_gaussians(train_views)
    rho = canonical_correlations(*train_views)

    metrics: dict[str, float | int] = {"latent_dim": k}
    arrays: dict[str, torch.Tensor] = {"y1": train_views[0], "y2": train_views[1], "y1_test": test_views[0],
                                       "y2_test": test_views[1]}
    arrays.update(true.arrays("true_"))
    gap = 0.0
    for name, params in fits.items():
        metrics[f"loglik_{name}"] = float(pcca_log_likelihood(train_views, params).mean())
        metrics[f"test_loglik_{name}"] = float(pcca_log_likelihood(test_views, params).mean())
        gap = max(gap, float((implied_canonical_correlations(params)[:k] - rho[:k]).abs().max()))
        arrays.update(params.arrays(f"{name}_"))
    metrics["loglik_true"] = float(pcca_log_likelihood(train_views, true).mean())
    metrics["loglik_max"] = max_log_likelihood(train_views, k)
    metrics["test_loglik_independent"] = float(pcca_log_likelihood(test_views, independent).mean())
    for i, r in enumerate(rho.tolist(), start=1):
        metrics[f"canonical_correlation_{i}"] = r
    metrics["max_canonical_correlation_gap"] = gap
    pred = predict_view(fits["closed_form"], [test_views[0], None], target=1)
    base = predict_view(independent, [test_views[0], None], target=1)
    metrics["test_mse_y2_from_y1"] = float(((pred - test_views[1]) ** 2).mean())
    metrics["test_mse_y2_mean_baseline"] = float(((base - test_views[1]) ** 2).mean())
    arrays["em_history"] = em_history
    arrays["gradient_loss"] = torch.tensor(grad_history["loss"])
    return Result(metrics=metrics, arrays=arrays)


#: Settings of experiment ``pcca-digits``: PCA dimensions of the image and audio views, and the latent dimensions
#: among which the validation split chooses.
DIGITS_SETUP: dict[str, int | tuple[int, ...]] = {
    "image_dim": 20,
    "audio_dim": 20,
    "latent_dims": (1, 2, 3, 5, 9, 15, 20),
}


def digits_views(device: torch.device | str | None = None) -> dict[str, object]:
    """The image and audio views of the multimodal digits reduced by PCA (fitted on the training split only).

    Returns ``{"train": [image, audio], "val": [...], "test": [...], "pca": {"image": (mean, basis), "audio": ...},
    "raw": {split: [image (N, 64), audio (N, F*T)]}, "label": {split: labels}}``; features are
    ``(raw - mean) @ basis`` and ``features @ basis.T + mean`` maps them back. Computed once per device and process
    (the returned object is shared: treat it as read-only).
    """
    return _digits_views(str(resolve_device(device)))


@lru_cache(maxsize=4)
def _digits_views(device: str) -> dict[str, object]:
    from mmlib.data import load_multimodal_digits

    dev = torch.device(device)
    ds = load_multimodal_digits(device=dev)
    dtype = _dtype(dev)
    raw = {}
    for s in ("train", "val", "test"):
        split = ds.split(s)
        raw[s] = [split["image"].reshape(len(split), -1).to(dtype), split["audio"].reshape(len(split), -1).to(dtype)]
    pca = {"image": pca_basis(raw["train"][0], int(DIGITS_SETUP["image_dim"])),
           "audio": pca_basis(raw["train"][1], int(DIGITS_SETUP["audio_dim"]))}
    out: dict[str, object] = {"pca": pca, "raw": raw, "label": {s: ds.split(s).label for s in raw}}
    for s, (img, aud) in raw.items():
        out[s] = [(img - pca["image"][0]) @ pca["image"][1], (aud - pca["audio"][0]) @ pca["audio"][1]]
    return out


@register("pcca-digits", "Chapter 02: probabilistic CCA between digit images and their sounds (PCA features)")
def pcca_digits_experiment(seed: int = 0, device: torch.device | None = None) -> Result:
    """Experiment ``pcca-digits``: the shared-latent model between image and audio (PCA features), closed form.

    The latent dimension is chosen among ``DIGITS_SETUP["latent_dims"]`` on the validation split
    (``val_loglik_k<k>``); the test split is only reported. Metrics: ``latent_dim``, ``test_loglik_pcca`` and
    ``test_loglik_independent`` (nats per sample, joint density of the PCA features), ``test_loglik_image_only_*``
    (image view alone, audio marginalised), and the held-out mean squared error per value (original pixel /
    spectrogram units) of cross-modal prediction, ``test_mse_audio_from_image`` and ``test_mse_image_from_audio``,
    against the independent baseline's mean predictions ``test_mse_audio_mean``, ``test_mse_image_mean``. Arrays:
    ``y1``, ``y2`` (training PCA features: image, audio), the fitted ``pcca_*`` and ``independent_*`` parameters, the
    first 10 test samples' predictions ``pred_audio__from_image`` / ``pred_image__from_audio`` with
    ``label__from_image`` / ``label__from_audio``. The fit is in closed form: ``seed`` does not change the numbers.
    """
    seed_everything(seed)
    dev = resolve_device(device)
    data = digits_views(dev)
    independent = fit_independent_gaussians(data["train"])
    metrics: dict[str, float | int] = {"image_dim": int(DIGITS_SETUP["image_dim"]),
                                       "audio_dim": int(DIGITS_SETUP["audio_dim"])}
    fits = {}
    for k in DIGITS_SETUP["latent_dims"]:
        fits[k] = fit_pcca_closed_form(data["train"], k)
        metrics[f"val_loglik_k{k}"] = float(pcca_log_likelihood(data["val"], fits[k]).mean())
    best = max(fits, key=lambda k: metrics[f"val_loglik_k{k}"])
    fit = fits[best]
    test = data["test"]
    metrics["latent_dim"] = best
    metrics["val_loglik_independent"] = float(pcca_log_likelihood(data["val"], independent).mean())
    metrics["test_loglik_pcca"] = float(pcca_log_likelihood(test, fit).mean())
    metrics["test_loglik_independent"] = float(pcca_log_likelihood(test, independent).mean())
    metrics["test_loglik_image_only_pcca"] = float(pcca_log_likelihood([test[0], None], fit).mean())
    metrics["test_loglik_image_only_independent"] = float(pcca_log_likelihood([test[0], None], independent).mean())
    raw = data["raw"]["test"]
    arrays: dict[str, torch.Tensor] = {"y1": data["train"][0], "y2": data["train"][1]}
    for target, (name, source) in enumerate((("image", "audio"), ("audio", "image"))):
        mean, basis = data["pca"][name]
        given = [None, test[1]] if target == 0 else [test[0], None]
        prediction = predict_view(fit, given, target) @ basis.T + mean
        baseline = predict_view(independent, given, target) @ basis.T + mean
        metrics[f"test_mse_{name}_from_{source}"] = float(((prediction - raw[target]) ** 2).mean())
        metrics[f"test_mse_{name}_mean"] = float(((baseline - raw[target]) ** 2).mean())
        arrays[f"pred_{name}__from_{source}"] = prediction[:10]
        arrays[f"label__from_{source}"] = data["label"]["test"][:10]
    arrays.update(fit.arrays("pcca_"))
    arrays.update(independent.arrays("independent_"))
    return Result(metrics=metrics, arrays=arrays)


# ---------------------------------------------------------------------------------------------------------------------
# Exercises of notebook 02
# ---------------------------------------------------------------------------------------------------------------------


@exercise("02.2")
def _check_posterior_mean(fn) -> str:
    """Exercise 02.2: the shared latent of a sample, E[z | y] = (I + W^T Psi^-1 W)^-1 W^T Psi^-1 (y - mu)."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(5, 2, generator=gen, dtype=torch.float64)
    a = torch.randn(5, 5, generator=gen, dtype=torch.float64)
    psi = a @ a.T / 5 + 0.3 * torch.eye(5, dtype=torch.float64)
    mu = torch.randn(5, generator=gen, dtype=torch.float64)
    y = torch.randn(4, 5, generator=gen, dtype=torch.float64) * 2 + mu
    got = torch.as_tensor(fn(y, w, mu, psi), dtype=torch.float64)
    assert got.shape == (4, 2), (
        f"expected one latent vector (2 numbers) per sample, shape (4, 2); got {tuple(got.shape)}."
    )
    assert torch.allclose(fn(mu[None], w, mu, psi).to(torch.float64), torch.zeros(1, 2, dtype=torch.float64),
                          atol=1e-9), "a sample at the mean mu should have E[z | y] = 0, the prior mean."
    cov = w @ w.T + psi
    want = (y - mu) @ torch.linalg.solve(cov, w)  # W^T C^-1 (y - mu), the same by the Woodbury identity
    assert torch.allclose(got, want, atol=1e-8), (
        "expected E[z | y] = (I + W^T Psi^-1 W)^-1 W^T Psi^-1 (y - mu) (equivalently W^T C^-1 (y - mu) with "
        f"C = W W^T + Psi); the first row should be {want[0].numpy().round(4).tolist()}, got "
        f"{got[0].numpy().round(4).tolist()}."
    )
    return ("Both forms agree (Woodbury): the k x k one inverts a small matrix; the D x D one reads E[z | y] off the "
            "joint covariance. The posterior mean is the shared representation of a sample.")
