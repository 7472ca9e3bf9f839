"""Unit tests of mmlib.aae (chapter 05): prior, losses, AAE step, MMD and its permutation test, errors, exercise."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from mmlib import aae, exercises
from mmlib.seed import make_generator


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randint(0, 17, (32, 1, 8, 8), generator=make_generator(0)).float() / 16


@pytest.fixture(scope="module")
def prior() -> aae.RingPrior:
    return aae.RingPrior(device="cpu")


# --- prior ---------------------------------------------------------------------------------------------------------
def test_ring_prior_samples_and_density(prior):
    z, comp = prior.sample(20_000, generator=make_generator(1))
    assert z.shape == (20_000, 2) and comp.shape == (20_000,)
    assert torch.allclose(prior.means.norm(dim=1), torch.full((10,), aae.PRIOR_RADIUS))
    offsets = z - prior.means[comp]
    assert abs(float(offsets.std()) - aae.PRIOR_STD) < 0.01
    counts = torch.bincount(comp, minlength=10).float() / 20_000
    assert (counts - 0.1).abs().max() < 0.015
    # log_prob is a normalised density: integrate it on a grid
    axis = torch.linspace(-7, 7, 561)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
    mass = float(prior.log_prob(grid).exp().sum() * (axis[1] - axis[0]) ** 2)
    assert abs(mass - 1) < 1e-3
    fixed, fixed_comp = prior.sample(5, components=torch.tensor([3, 3, 3, 3, 3]))
    assert (fixed_comp == 3).all() and ((fixed - prior.means[3]).norm(dim=1) < 3).all()


# --- losses --------------------------------------------------------------------------------------------------------
def test_discriminator_losses_are_the_gan_losses():
    disc = aae.Discriminator(2, 8)
    zp, zc = torch.randn(6, 2), torch.randn(5, 2)
    d_real, d_fake = torch.sigmoid(disc(zp)), torch.sigmoid(disc(zc))
    want = -torch.log(d_real).mean() - torch.log(1 - d_fake).mean()
    assert torch.allclose(aae.discriminator_loss(disc, zp, zc), want, atol=1e-6)
    assert torch.allclose(aae.encoder_adversarial_loss(disc, zc), -torch.log(d_fake).mean(), atol=1e-6)


def test_label_conditioned_discriminator_needs_labels():
    disc = aae.Discriminator(2, 8, n_classes=10)
    assert disc(torch.randn(4, 2), torch.tensor([0, 1, 2, 9])).shape == (4,)
    with pytest.raises(ValueError, match="labels"):
        disc(torch.randn(4, 2))


def test_reconstruction_nll_matches_categorical(images):
    model = aae.build_model("ae", seed=0).eval()
    levels = (images.flatten(1) * 16).round().long()
    logits = model.decoder(model.encoder(images))
    want = -torch.distributions.Categorical(logits=logits).log_prob(levels).sum(-1).mean()
    assert torch.allclose(aae.reconstruction_nll(model, images), want, atol=1e-4)


def test_mixture_vae_loss_is_negative_elbo_with_monte_carlo_kl(images, prior):
    model = aae.build_model("vae", seed=0).eval()
    torch.manual_seed(2)
    loss = aae.mixture_vae_loss(model, images, prior)
    torch.manual_seed(2)
    mu, log_var = model.encoder(images)
    z = mu + (0.5 * log_var).exp() * torch.randn_like(mu)
    log_q = torch.distributions.Normal(mu, (0.5 * log_var).exp()).log_prob(z).sum(-1)
    levels = (images.flatten(1) * 16).round().long()
    log_lik = torch.distributions.Categorical(logits=model.decoder(z)).log_prob(levels).sum(-1)
    assert torch.allclose(loss, (-log_lik + log_q - prior.log_prob(z)).mean(), atol=1e-3)


# --- the AAE step --------------------------------------------------------------------------------------------------
def test_aae_step_updates_discriminator_then_autoencoder(images, prior):
    model = aae.build_model("aae", seed=0)
    optimisers = aae.make_optimisers(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    losses = aae.aae_step(model, optimisers, prior, images)
    assert set(losses) == {"reconstruction", "discriminator", "encoder"}
    assert all(not v.requires_grad for v in losses.values())
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert any(k.startswith("encoder") for k in changed) and any(k.startswith("decoder") for k in changed)
    assert any(k.startswith("discriminator") for k in changed)


def test_aae_step_inline_equivalence(images, prior):
    """The notebook's inline step (written here again) and aae_step give the same numbers."""

    def inline(model, opt, x):
        z_codes = model.encoder(x)
        z_prior, _ = prior.sample(x.shape[0])
        opt.discriminator.zero_grad(set_to_none=True)
        d = F.softplus(-model.discriminator(z_prior)).mean() + F.softplus(model.discriminator(z_codes.detach())).mean()
        d.backward()
        opt.discriminator.step()
        opt.autoencoder.zero_grad(set_to_none=True)
        levels = (x.flatten(1) * 16).round().long()
        rec = -model.decoder(z_codes).log_softmax(-1).gather(-1, levels.unsqueeze(-1)).squeeze(-1).sum(1).mean()
        adv = F.softplus(-model.discriminator(z_codes)).mean()
        (rec + aae.ADVERSARIAL_WEIGHT * adv).backward()
        opt.autoencoder.step()
        return rec.detach()

    results = []
    for use_lib in (False, True):
        model = aae.build_model("aae", seed=1)
        opt = aae.make_optimisers(model)
        torch.manual_seed(4)
        values = [aae.aae_step(model, opt, prior, images)["reconstruction"] if use_lib else inline(model, opt, images)
                  for _ in range(3)]
        results.append(torch.stack(values))
    assert torch.equal(results[0], results[1])


def test_fit_model_deterministic_and_label_aware(images, prior):
    labels = torch.arange(32) % 10
    m1, h1 = aae.fit_model("aae-labels", images, labels, prior=prior, steps=6, batch_size=8, seed=2, progress=False)
    m2, h2 = aae.fit_model("aae-labels", images, labels, prior=prior, steps=6, batch_size=8, seed=2, progress=False)
    assert h1["reconstruction"] == h2["reconstruction"] and not m1.training
    for kind in ("ae", "vae"):
        model, history = aae.fit_model(kind, images, prior=prior, steps=3, batch_size=8, progress=False)
        assert len(history["loss"]) == 1
    codes = aae.latent_codes(m1, images)
    assert codes.shape == (32, 2)
    generated, z, comp = aae.generate(m1, prior, 20, components=torch.arange(20) % 10)
    assert generated.shape == (20, 1, 8, 8) and torch.equal(comp, torch.arange(20) % 10)
    assert torch.equal(generated * 16, (generated * 16).round())
    expected = aae.decode_expected(m1, z)
    assert expected.shape == (20, 1, 8, 8) and float(expected.min()) >= 0 and float(expected.max()) <= 1


# --- MMD -----------------------------------------------------------------------------------------------------------
def _mmd2_loops(x, y, h):
    k = lambda a, b: math.exp(-float(((a - b) ** 2).sum()) / (2 * h * h))
    n, m = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return xx + yy - 2 * xy


def test_mmd2_matches_definition_and_detects_shift():
    gen = make_generator(3)
    x, y = torch.randn(12, 2, generator=gen), torch.randn(9, 2, generator=gen) + 0.5
    assert math.isclose(aae.mmd2(x, y, bandwidth=0.7), _mmd2_loops(x.double(), y.double(), 0.7), abs_tol=1e-10)
    same = aae.mmd2(torch.randn(300, 2, generator=gen), torch.randn(300, 2, generator=gen))
    shifted = aae.mmd2(torch.randn(300, 2, generator=gen), torch.randn(300, 2, generator=gen) + 1.0)
    assert abs(same) < 0.01 and shifted > 0.1


def test_permutation_test_calibrated_and_powerful():
    gen = make_generator(4)
    null = aae.mmd_permutation_test(torch.randn(100, 2, generator=gen), torch.randn(100, 2, generator=gen),
                                    permutations=99)
    alt = aae.mmd_permutation_test(torch.randn(100, 2, generator=gen), torch.randn(100, 2, generator=gen) + 1.0,
                                   permutations=99)
    assert null.p_value > 0.05 and alt.p_value == 0.01
    assert null.null.shape == (99,)
    # the permutation statistic of the identity ordering is the observed one
    x, y = torch.randn(10, 2, generator=gen), torch.randn(8, 2, generator=gen)
    assert math.isclose(aae.mmd_permutation_test(x, y, permutations=5).mmd2, aae.mmd2(x, y), abs_tol=1e-12)


# --- bad input -------------------------------------------------------------------------------------------------------
def test_bad_inputs_raise_named_errors(images, prior):
    with pytest.raises(ValueError, match="kind"):
        aae.build_model("gan")
    with pytest.raises(ValueError, match="labels"):
        aae.fit_model("aae-labels", images, steps=1, progress=False)
    with pytest.raises(ValueError, match="labels"):
        aae.fit_model("aae-labels", images, torch.full((32,), 12), steps=1, progress=False)
    with pytest.raises(TypeError, match="prior"):
        aae.fit_model("ae", images, prior="ring", steps=1, progress=False)
    with pytest.raises(ValueError, match="images"):
        aae.fit_model("ae", images * 3, steps=1, progress=False)
    with pytest.raises(TypeError, match="model"):
        aae.reconstruction_nll(aae.build_model("vae"), images)
    with pytest.raises(TypeError, match="model"):
        aae.aae_step(aae.build_model("ae"), aae.make_optimisers(aae.build_model("ae")), prior, images)
    with pytest.raises(ValueError, match="x, y"):
        aae.mmd2(torch.zeros(5, 2), torch.zeros(5, 3))
    with pytest.raises(ValueError, match="x"):
        aae.mmd2(torch.zeros(1, 2), torch.zeros(5, 2))
    with pytest.raises(ValueError, match="bandwidth"):
        aae.mmd2(torch.randn(5, 2), torch.randn(5, 2), bandwidth=0.0)
    with pytest.raises(ValueError, match="y"):
        aae.mmd2(torch.randn(5, 2), torch.full((5, 2), float("nan")))
    with pytest.raises(ValueError, match="components"):
        aae.RingPrior(components=0)
    with pytest.raises(ValueError, match="z"):
        aae.decode_expected(aae.build_model("ae"), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="z_prior, z_codes"):
        aae.discriminator_loss(aae.Discriminator(), torch.zeros(3, 2), torch.zeros(3, 3))


# --- exercise ------------------------------------------------------------------------------------------------------
def test_exercise_05_2_checker(capsys):
    def solution(x, y, h):
        k = lambda a, b: torch.exp(-torch.cdist(a, b) ** 2 / (2 * h**2))
        n, m = len(x), len(y)
        kxx, kyy = k(x, x), k(y, y)
        return ((kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1)) + (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
                - 2 * k(x, y).mean())

    exercises.check("05.2", solution)
    assert exercises.RESULTS["05.2"]

    def biased(x, y, h):
        k = lambda a, b: torch.exp(-torch.cdist(a, b) ** 2 / (2 * h**2))
        return k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean()

    exercises.check("05.2", biased)
    assert not exercises.RESULTS["05.2"] and "biased" in capsys.readouterr().out
    exercises.check("05.2", lambda x, y, h: solution(x, y, 2 * h))
    assert not exercises.RESULTS["05.2"]


def test_experiment_is_registered():
    from mmlib.experiments import get_experiment

    assert get_experiment("aae-digits").fn is aae.aae_digits
