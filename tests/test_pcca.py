"""Unit tests of mmlib.pcca (chapter 02): the three fits agree, CCA, marginalisation, prediction, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import linalg, stats

from mmlib import exercises
from mmlib.data import linear_gaussian_views
from mmlib.pcca import (
    PCCAParams,
    canonical_correlations,
    fit_independent_gaussians,
    fit_pcca_closed_form,
    fit_pcca_em,
    fit_pcca_gradient,
    implied_canonical_correlations,
    max_log_likelihood,
    pca_basis,
    pcca_log_likelihood,
    predict_view,
    sample_moments,
    sample_pcca,
)

F64 = torch.float64


@pytest.fixture(scope="module")
def data():
    views, true = linear_gaussian_views(1500, latent_dim=2, view_dims=[4, 3], seed=5, dtype=F64, device="cpu")
    return views, true


def _numpy_cca(y1: np.ndarray, y2: np.ndarray) -> np.ndarray:
    """Canonical correlations with numpy/scipy only (an independent implementation)."""
    s = np.cov(np.hstack([y1, y2]).T, bias=True)
    d1 = y1.shape[1]
    w1 = linalg.inv(linalg.sqrtm(s[:d1, :d1])).real
    w2 = linalg.inv(linalg.sqrtm(s[d1:, d1:])).real
    return np.linalg.svd(w1 @ s[:d1, d1:] @ w2, compute_uv=False)


def test_log_likelihood_matches_scipy_and_marginalises(data):
    views, true = data
    ll = pcca_log_likelihood(views, true)
    y = torch.cat(views, 1).numpy()
    cov = true.covariance().numpy()
    ref = stats.multivariate_normal(true.mean().numpy(), cov).logpdf(y)
    np.testing.assert_allclose(ll.numpy(), ref, atol=1e-9)
    only1 = pcca_log_likelihood([views[0], None], true)
    ref1 = stats.multivariate_normal(true.mu[0].numpy(), cov[:4, :4]).logpdf(views[0].numpy())
    np.testing.assert_allclose(only1.numpy(), ref1, atol=1e-9)


def test_three_fits_reach_the_same_maximum(data):
    views, _ = data
    closed = fit_pcca_closed_form(views, 2)
    em, history = fit_pcca_em(views, 2)
    grad, _ = fit_pcca_gradient(views, 2, progress=False)
    lls = [float(pcca_log_likelihood(views, p).mean()) for p in (closed, em, grad)]
    assert max(lls) - min(lls) < 1e-3, lls
    assert abs(lls[0] - max_log_likelihood(views, 2)) < 1e-9
    assert float(history.diff().min()) > -1e-10, "EM never decreases the log-likelihood"
    assert abs(float(history[-1]) - lls[1]) < 1e-9, "EM's history is the log-likelihood of its parameters"
    # identifiable quantities agree: the joint covariance
    assert torch.allclose(closed.covariance(), em.covariance(), atol=1e-3)


def test_closed_form_is_a_maximum(data):
    views, true = data
    closed = fit_pcca_closed_form(views, 2)
    best = pcca_log_likelihood(views, closed).mean()
    assert best >= pcca_log_likelihood(views, true).mean()
    for scale in (0.95, 1.05):
        moved = PCCAParams([w * scale for w in closed.W], closed.mu, closed.Psi)
        assert pcca_log_likelihood(views, moved).mean() < best
    # Psi is a valid covariance
    for psi in closed.Psi:
        assert float(torch.linalg.eigvalsh(psi).min()) > 0


def test_canonical_correlations_against_numpy(data):
    views, _ = data
    rho = canonical_correlations(*views)
    np.testing.assert_allclose(rho.numpy(), _numpy_cca(views[0].numpy(), views[1].numpy()), atol=1e-10)
    implied = implied_canonical_correlations(fit_pcca_closed_form(views, 2))
    assert torch.allclose(implied[:2], rho[:2], atol=1e-10)
    assert float(implied[2:].abs().max()) < 1e-8, "a rank-2 link implies only 2 non-zero canonical correlations"


def test_independent_baseline_has_no_link_and_predicts_the_mean(data):
    views, _ = data
    ind = fit_independent_gaussians(views)
    assert ind.latent_dim == 0
    cov = ind.covariance()
    assert float(cov[:4, 4:].abs().max()) == 0.0
    pred = predict_view(ind, [views[0], None], target=1)
    assert torch.allclose(pred, views[1].mean(0).expand_as(pred))
    # same per-view marginals as PCCA with full noise covariances; the joint is worse
    closed = fit_pcca_closed_form(views, 2)
    assert torch.allclose(pcca_log_likelihood([views[0], None], ind), pcca_log_likelihood([views[0], None], closed))
    assert pcca_log_likelihood(views, closed).mean() > pcca_log_likelihood(views, ind).mean()


def test_prediction_is_the_conditional_mean_and_beats_the_baseline(data):
    views, true = data
    train = [v[:1000] for v in views]
    test = [v[1000:] for v in views]
    fit = fit_pcca_closed_form(train, 2)
    pred = predict_view(fit, [test[0], None], target=1)
    base = predict_view(fit_independent_gaussians(train), [test[0], None], target=1)
    assert ((pred - test[1]) ** 2).mean() < ((base - test[1]) ** 2).mean()
    # with a full-rank link (k = min(d1, d2)) the model's C21 C11^-1 is the sample one: least-squares regression
    full = fit_pcca_closed_form(train, 3)
    x = torch.cat([train[0], torch.ones(1000, 1, dtype=F64)], 1)
    coef = torch.linalg.lstsq(x, train[1]).solution
    ls = torch.cat([test[0], torch.ones(500, 1, dtype=F64)], 1) @ coef
    assert torch.allclose(predict_view(full, [test[0], None], target=1), ls, atol=1e-8)


def test_sampling_reproduces_the_covariance(data):
    _, true = data
    sampled = sample_pcca(true, 20000, seed=1)
    _, cov = sample_moments(sampled)
    assert torch.allclose(cov, true.covariance(), atol=0.25)


def test_pca_basis_is_orthonormal():
    x = torch.randn(100, 6, dtype=F64, generator=torch.Generator().manual_seed(0))
    mean, basis = pca_basis(x, 3)
    assert torch.allclose(basis.T @ basis, torch.eye(3, dtype=F64), atol=1e-10)
    assert torch.allclose(mean, x.mean(0))


def test_bad_input_names_the_argument(data):
    views, true = data
    y1, y2 = views
    with pytest.raises(ValueError, match=r"views\[1\].*samples"):
        fit_pcca_closed_form([y1, y2[:-1]], 2)
    with pytest.raises(ValueError, match=r"views\[1\].*samples"):
        fit_pcca_em([y1, y2[:-1]], 2)
    with pytest.raises(ValueError, match=r"views\[1\].*samples"):
        fit_pcca_gradient([y1, y2[:-1]], 2)
    for fit in (fit_pcca_closed_form, fit_pcca_em, fit_pcca_gradient):
        with pytest.raises(ValueError, match="latent_dim"):
            fit([y1, y2], 4)
        with pytest.raises(ValueError, match="latent_dim"):
            fit([y1, y2], 0)
    nan = y1.clone()
    nan[3, 1] = float("nan")
    with pytest.raises(ValueError, match=r"views\[0\].*NaN"):
        fit_pcca_closed_form([nan, y2], 2)
    with pytest.raises(ValueError, match=r"views\[0\].*NaN"):
        pcca_log_likelihood([nan, y2], true)
    with pytest.raises(ValueError, match="views"):
        fit_pcca_closed_form([y1, y2, y2], 2)
    with pytest.raises(TypeError, match="views"):
        fit_pcca_closed_form(torch.cat(views, 1), 2)
    with pytest.raises(TypeError, match=r"views\[0\]"):
        fit_pcca_em([y1.long(), y2], 1)
    with pytest.raises(ValueError, match=r"views\[0\].*features"):
        pcca_log_likelihood([y1[:, :2], y2], true)
    with pytest.raises(ValueError, match="target"):
        predict_view(true, [y1, None], target=2)
    with pytest.raises(ValueError, match="views"):
        predict_view(true, [None, None], target=1)
    with pytest.raises(TypeError, match="params"):
        pcca_log_likelihood(views, {"W": 1})
    with pytest.raises(ValueError, match="views"):
        canonical_correlations(y1, torch.zeros(len(y1), 2, dtype=F64))


def test_exercise_checker():
    def posterior_mean(y, W, mu, Psi):
        precision = torch.eye(W.shape[1], dtype=W.dtype) + W.T @ torch.linalg.solve(Psi, W)
        return torch.linalg.solve(precision, torch.linalg.solve(Psi, W).T @ (y - mu).T).T

    def forgets_the_prior(y, W, mu, Psi):  # (W^T Psi^-1 W)^-1 W^T Psi^-1 (y - mu): no "I +"
        precision = W.T @ torch.linalg.solve(Psi, W)
        return torch.linalg.solve(precision, torch.linalg.solve(Psi, W).T @ (y - mu).T).T

    exercises.check("02.2", posterior_mean)
    assert exercises.RESULTS["02.2"]
    exercises.check("02.2", forgets_the_prior)
    assert not exercises.RESULTS["02.2"]
    exercises.check("02.2", lambda y, W, mu, Psi: (y - mu) @ W)
    assert not exercises.RESULTS["02.2"]
