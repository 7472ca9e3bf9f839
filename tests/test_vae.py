"""Unit tests of mmlib.vae (chapter 04): the ELBO's pieces against torch.distributions, bounds, errors, exercises."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Categorical, Independent, Normal, kl_divergence

from mmlib import exercises, vae
from mmlib.seed import make_generator


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    gen = make_generator(0)
    return torch.randint(0, 17, (24, 1, 8, 8), generator=gen).float() / 16


@pytest.fixture(scope="module")
def model() -> vae.VAE:
    return vae.build_vae(latent_dim=3, hidden=16, seed=0, device="cpu").eval()


# --- pieces against the library ------------------------------------------------------------------------------------
def test_kl_closed_form_matches_torch_and_monte_carlo():
    gen = make_generator(1)
    mu, log_var = (torch.randn(6, 4, generator=gen, dtype=torch.float64) for _ in range(2))
    closed = vae.kl_to_standard_normal(mu, log_var)
    lib = kl_divergence(Independent(Normal(mu, (0.5 * log_var).exp()), 1),
                        Independent(Normal(torch.zeros_like(mu), torch.ones_like(mu)), 1))
    assert torch.allclose(closed, lib, atol=1e-12)
    estimate, se = vae.kl_monte_carlo(mu, log_var, 20_000, generator=gen)
    assert ((estimate - closed).abs() < 5 * se).all()


def test_categorical_log_likelihood_matches_torch():
    gen = make_generator(2)
    logits = torch.randn(3, 5, 64, 17, generator=gen)
    levels = torch.randint(0, 17, (5, 64), generator=gen)
    want = Categorical(logits=logits).log_prob(levels).sum(-1)
    assert torch.allclose(vae.categorical_log_likelihood(logits, levels), want, atol=1e-4)


def test_gaussian_log_likelihood_is_scaled_squared_error():
    gen = make_generator(3)
    mean, x = (torch.rand(4, 64, generator=gen, dtype=torch.float64) for _ in range(2))
    sigma = 0.3
    assert torch.allclose(vae.gaussian_log_likelihood(mean, x, sigma), Normal(mean, sigma).log_prob(x).sum(-1))


def test_reparameterise_draws_the_right_distribution():
    mu, log_var = torch.tensor([1.0, -2.0]), torch.tensor([0.0, math.log(4.0)])
    z = vae.reparameterise(mu, log_var, n_samples=40_000, generator=make_generator(4))
    assert z.shape == (40_000, 2)
    assert torch.allclose(z.mean(0), mu, atol=0.05) and torch.allclose(z.std(0), torch.tensor([1.0, 2.0]), atol=0.05)


def test_reparameterise_same_stream_as_randn_like():
    mu, log_var = torch.zeros(3, 4), torch.zeros(3, 4)
    torch.manual_seed(0)
    a = vae.reparameterise(mu, log_var)
    torch.manual_seed(0)
    b = mu + torch.randn_like(mu)
    assert torch.equal(a, b), "the notebook's inline loss and mmlib draw the same eps"


def test_gradient_estimators_unbiased_and_reparameterised_has_lower_variance():
    f = lambda z: z**2  # d/dmu E[z^2] = 2 mu
    rep = vae.reparameterised_gradients(f, 2.0, 1.0, 20_000, generator=make_generator(5))
    score = vae.score_function_gradients(f, 2.0, 1.0, 20_000, generator=make_generator(6))
    for g in (rep, score):
        assert abs(float(g.mean()) - 4.0) < 5 * float(g.std()) / math.sqrt(20_000)
    assert abs(float(rep.var()) - 4.0) < 0.3
    assert float(score.var()) > 10 * float(rep.var())


# --- the ELBO and the article's forms ------------------------------------------------------------------------------
def test_negative_elbo_is_minus_loglik_plus_kl(model, images):
    gen = make_generator(7)
    loss = vae.negative_elbo(model, images, generator=gen)
    log_lik, kl = vae.elbo_terms(model, images, generator=make_generator(7))
    assert torch.allclose(loss, (kl - log_lik).mean())
    assert torch.allclose(vae.negative_elbo(model, images, beta=2.0, generator=make_generator(7)),
                          (2 * kl - log_lik).mean())


def test_article_eq5_reduces_to_reconstruction(model, images):
    eq5 = vae.article_eq5(model, images, generator=make_generator(8))
    log_lik, _ = vae.elbo_terms(model, images, generator=make_generator(8))
    assert torch.allclose(eq5, log_lik.mean(), atol=1e-4)


def test_article_eq6_has_the_wrong_sign(images):
    g = vae.build_vae(latent_dim=3, hidden=16, likelihood="gaussian", sigma=0.1, dropout=0.0, seed=0).eval()
    sq, kl = vae.gaussian_elbo_terms(g, images, generator=make_generator(9))
    assert torch.allclose(vae.article_eq6(g, images, generator=make_generator(9)), (kl - 50 * sq).mean())
    assert torch.allclose(vae.gaussian_negative_elbo(g, images, generator=make_generator(9)), (kl + 50 * sq).mean())


def test_iwae_bounds_ordered_and_elbo_matches_terms(model, images):
    bounds = vae.importance_weighted_bounds(model, images, (1, 10, 100), n_samples=400, seed=0)
    assert bounds[1].repeats == 400 and bounds[100].repeats == 4
    for lo, hi in ((1, 10), (10, 100)):
        se = math.hypot(bounds[lo].standard_error, bounds[hi].standard_error)
        assert bounds[lo].value <= bounds[hi].value + 3 * se
    log_w = vae.log_importance_weights(model, images, 400, seed=0)
    assert log_w.shape == (400, 24)
    # E_q[log w] = E_q[log p(x|z)] - KL: the ELBO; the closed-form KL version agrees within Monte Carlo error
    gen = make_generator(10)
    with torch.no_grad():
        terms = torch.stack([torch.sub(*vae.elbo_terms(model, images, generator=gen)) for _ in range(100)])
    n_images = images.shape[0]
    # both average the same images, so only the draws of z are noise: per image, variance / number of draws
    se = math.sqrt(float((log_w.var(0) / log_w.shape[0] + terms.var(0) / terms.shape[0]).sum())) / n_images
    assert abs(float(log_w.mean()) - float(terms.mean())) < 4 * se


def test_iwae_estimates_is_log_mean_exp():
    log_w = torch.log(torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]], dtype=torch.float64))
    est = vae.iwae_estimates(log_w, 2)
    assert torch.allclose(est, torch.log(torch.tensor([[2.0, 3.0], [6.0, 7.0]], dtype=torch.float64)))


def test_fit_vae_is_deterministic_and_leaves_global_rng_alone(images):
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    m1, h1 = vae.fit_vae(images, latent_dim=2, hidden=16, steps=20, batch_size=8, seed=3, progress=False)
    assert torch.equal(torch.random.get_rng_state(), before), "fit_vae does not consume the caller's random stream"
    m2, h2 = vae.fit_vae(images, latent_dim=2, hidden=16, steps=20, batch_size=8, seed=3, progress=False)
    assert h1["loss"] == h2["loss"]
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    assert not m1.training


def test_outputs_have_documented_shapes(model, images):
    assert vae.encode_mean(model, images).shape == (24, 3)
    recon = vae.reconstruct(model, images)
    assert recon.shape == (24, 1, 8, 8) and float(recon.min()) >= 0 and float(recon.max()) <= 1
    samples, z = vae.sample_images(model, 7, seed=1)
    assert samples.shape == (7, 1, 8, 8) and z.shape == (7, 3)
    assert torch.equal(samples * 16, (samples * 16).round()), "samples are grey levels / 16"
    rate, distortion = vae.rate_distortion(model, images)
    assert rate >= 0 and distortion > 0


# --- bad input -------------------------------------------------------------------------------------------------------
def test_bad_inputs_raise_named_errors(model, images):
    with pytest.raises(ValueError, match="images"):
        vae.image_levels(images * 2)
    with pytest.raises(ValueError, match="images"):
        vae.image_levels(torch.rand(3, 1, 7, 7))
    with pytest.raises(TypeError, match="images"):
        vae.image_levels(torch.zeros(3, 64, dtype=torch.long))
    with pytest.raises(ValueError, match="images"):
        vae.image_levels(torch.full((2, 64), float("nan")))
    with pytest.raises(ValueError, match="mu, log_var"):
        vae.kl_to_standard_normal(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(TypeError, match="model"):
        vae.negative_elbo("not a model", images)
    with pytest.raises(ValueError, match="beta"):
        vae.negative_elbo(model, images, beta=-1.0)
    with pytest.raises(ValueError, match="likelihood"):
        vae.VAE(likelihood="poisson")
    with pytest.raises(ValueError, match="dropout"):
        vae.VAE(dropout=1.5)
    with pytest.raises(ValueError, match="model"):
        vae.article_eq6(model, images)
    with pytest.raises(ValueError, match="k"):
        vae.iwae_estimates(torch.zeros(5, 2), 6)
    with pytest.raises(ValueError, match="ks"):
        vae.importance_weighted_bounds(model, images, (1, 300), n_samples=400)
    with pytest.raises(ValueError, match="z"):
        vae.decode_mean(model, torch.zeros(2, 5))
    with pytest.raises(ValueError, match="levels"):
        vae.categorical_log_likelihood(torch.zeros(2, 64, 17), torch.full((2, 64), 17))
    with pytest.raises(TypeError, match="f"):
        vae.reparameterised_gradients("square", 0.0, 1.0, 10)
    with pytest.raises(ValueError, match="sigma"):
        vae.score_function_gradients(lambda z: z, 0.0, 0.0, 10)
    with pytest.raises(TypeError, match="betas"):
        vae.beta_sweep(images, images, 1.0)


# --- exercises -----------------------------------------------------------------------------------------------------
def _kl_solution(mu_q, lv_q, mu_p, lv_p):
    return 0.5 * ((lv_q - lv_p).exp() + (mu_q - mu_p) ** 2 / lv_p.exp() - 1 - (lv_q - lv_p)).sum(-1)


def test_exercise_04_2_checker(capsys):
    exercises.check("04.2", _kl_solution)
    assert exercises.RESULTS["04.2"]
    exercises.check("04.2", lambda mq, lq, mp, lp: 0.5 * ((lq - lp).exp() + (mq - mp) ** 2 - 1 - (lq - lp)).sum(-1))
    assert not exercises.RESULTS["04.2"]
    exercises.check("04.2", lambda mq, lq, mp, lp: _kl_solution(mq, lq, mp, lp)[:, None])
    assert not exercises.RESULTS["04.2"]
    assert "not yet" in capsys.readouterr().out


def test_exercise_04_3_checker():
    exercises.check("04.3", lambda lw: torch.logsumexp(lw, 0) - math.log(lw.shape[0]))
    assert exercises.RESULTS["04.3"]
    exercises.check("04.3", lambda lw: torch.log(lw.exp().mean(0)))  # underflows
    assert not exercises.RESULTS["04.3"]
    exercises.check("04.3", lambda lw: lw.mean(0))  # the ELBO, not the bound
    assert not exercises.RESULTS["04.3"]


# --- the experiment (small and fast: the real run is exercised by notebook 04) -------------------------------------
def test_experiment_is_registered():
    from mmlib.experiments import get_experiment

    assert get_experiment("vae-digits").fn is vae.vae_digits
