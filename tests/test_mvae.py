"""Unit tests of mmlib.mvae: likelihoods, the model and its fusions, the objectives, evaluation and experiments."""

from __future__ import annotations

import math
from math import lgamma

import pytest
import torch
from torch import nn

from mmlib import mvae
from mmlib.data import MODALITIES, TEXT_LENGTH, TEXT_VOCAB, load_multimodal_digits
from mmlib.fusion import mixture_of_experts, mixture_of_products, product_of_experts
from mmlib.mvae import (
    FUSIONS,
    AutoregressiveTokens,
    BinomialLevels,
    GaussianSpectrogram,
    MixturePrior,
    Modality,
    MultimodalVAE,
    MVAEConfig,
    build_modality,
    build_mvae,
    elbo,
    evaluate_generation,
    fusion_loss,
    generate_cross,
    generate_joint,
    kl_to_standard_normal,
    mmvae_loss,
    mopoe_loss,
    mvae_loss,
    precision_at_k,
    subset_elbo,
)


@pytest.fixture(scope="module")
def ds():
    return load_multimodal_digits("cpu")


@pytest.fixture(scope="module")
def batch(ds):
    return {m: ds.train[m][:32] for m in MODALITIES}


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- likelihoods ----------------------------------------------------------------------------------------------------
def test_binomial_levels_is_the_binomial_formula(ds):
    logits = torch.randn(4, 64, generator=_gen(), dtype=torch.float64)
    x = ds.test["image"][:4].double()
    k, p = (x.flatten(1) * 16).round(), torch.sigmoid(logits)
    log_binom = torch.tensor([[lgamma(17) - lgamma(v + 1) - lgamma(17 - v) for v in row] for row in k.tolist()])
    want = (log_binom + k * p.log() + (16 - k) * (1 - p).log()).sum(1)
    assert torch.allclose(BinomialLevels().log_prob(logits, x), want, atol=1e-8)
    mode = BinomialLevels().mode(logits)
    assert mode.shape == (4, 1, 8, 8) and torch.equal(mode * 16, (mode * 16).round()), "grey levels / 16"


def test_autoregressive_tokens_see_only_earlier_positions(ds):
    lik = AutoregressiveTokens(TEXT_LENGTH, len(TEXT_VOCAB), hidden=8)
    out = torch.randn(3, lik.out_features, generator=_gen())
    x = ds.test["text"][:3]
    logits = lik.logits(out, x)
    changed = x.clone()
    changed[:, 5] = (changed[:, 5] + 1) % len(TEXT_VOCAB)
    later = lik.logits(out, changed)
    assert torch.equal(logits[:, :6], later[:, :6]), "positions 0..5 do not see token 5 or later"
    assert not torch.allclose(logits[:, 6:], later[:, 6:]), "later positions do see it"
    want = -nn.functional.cross_entropy(logits.reshape(-1, len(TEXT_VOCAB)), x.reshape(-1), reduction="none")
    assert torch.allclose(lik.log_prob(out, x), want.reshape(3, -1).sum(1), atol=1e-5), "sum of token log-probs"
    greedy = lik.mode(out)
    assert torch.equal(greedy, lik.logits(out, greedy).argmax(-1)), "greedy: each token is the argmax given the rest"


def test_gaussian_spectrogram_is_the_gaussian_formula(ds):
    lik = GaussianSpectrogram((28, 32))
    mean = torch.rand(2, 28 * 32, generator=_gen())
    x = ds.test["audio"][:2]
    s = float(lik.scale().detach())
    want = torch.distributions.Normal(mean, s).log_prob(x.flatten(1)).sum(1)
    assert torch.allclose(lik.log_prob(mean, x), want, rtol=1e-5)
    assert float(lik.mode(mean * 3 - 1).min()) >= 0 and float(lik.mode(mean * 3 - 1).max()) <= 1, "clipped to [0, 1]"


def test_mixture_prior_density_and_samples():
    from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

    torch.manual_seed(0)
    prior = MixturePrior(3, 2)
    with torch.no_grad():
        prior.means.copy_(torch.tensor([[-4.0, 0.0], [0.0, 0.0], [4.0, 1.0]]))
        prior.log_vars.copy_(torch.log(torch.tensor([[0.5, 1.0], [0.2, 0.3], [1.0, 2.0]])))
        prior.logits.copy_(torch.tensor([0.0, 1.0, 2.0]))
    ref = MixtureSameFamily(Categorical(logits=prior.logits.detach()),
                            Independent(Normal(prior.means.detach(), (0.5 * prior.log_vars.detach()).exp()), 1))
    z = torch.randn(5, 7, 2, generator=_gen())
    assert torch.allclose(prior.log_prob(z), ref.log_prob(z), atol=1e-5), "the mixture's density"
    draws = prior.sample(20_000, generator=_gen(1))
    assert torch.allclose(draws.mean(0), ref.mean, atol=0.05), "samples have the mixture's mean"
    standard = MixturePrior(0, 2)
    assert torch.allclose(standard.log_prob(z), Normal(0.0, 1.0).log_prob(z).sum(-1)), "0 components: N(0, I)"


# --- model and fusion ------------------------------------------------------------------------------------------------
def test_model_encodes_any_subset_and_fuses_like_mmlib_fusion(batch):
    for fusion in FUSIONS:
        model = build_mvae(fusion, seed=0, device="cpu")
        x = {"text": batch["text"], "audio": batch["audio"]}
        means, log_vars, mask = model.encode(x)
        assert means.shape == (3, 32, MVAEConfig().latent_dim)
        assert mask[:, 0].tolist() == [False, True, True], "image missing"
        m, lv, w = model.posterior(x)
        if fusion == "poe":
            mu, log_var = product_of_experts(means, log_vars, mask)
            assert torch.allclose(m[0], mu) and torch.allclose(lv[0], log_var) and torch.equal(w, torch.ones(1, 32))
        elif fusion == "moe":
            ref = mixture_of_experts(means, log_vars, mask)
            assert all(torch.allclose(a, b) for a, b in zip((m, lv, w), ref))
            assert torch.allclose(w[:, 0], torch.tensor([0.0, 0.5, 0.5]))
        else:
            ref = mixture_of_products(means, log_vars, mask)
            assert all(torch.allclose(a, b) for a, b in zip((m, lv, w), ref))
            assert torch.allclose(w[:, 0].sum(), torch.tensor(1.0)) and int((w[:, 0] > 0).sum()) == 3


def test_build_is_seeded_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a, b = build_mvae("moe", seed=3, device="cpu"), build_mvae("mopoe", seed=3, device="cpu")
    assert torch.equal(state, torch.get_rng_state()), "building does not consume the global generator"
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb and torch.equal(pa, pb), "every fusion starts from the same networks"


def test_log_likelihood_with_several_draws_matches_a_loop(batch):
    model = build_mvae("mopoe", seed=0, device="cpu")
    z = torch.randn(4, 32, MVAEConfig().latent_dim, generator=_gen())
    with torch.no_grad():
        many = model.log_likelihood(batch, z)
        loop = torch.stack([model.log_likelihood(batch, z[r]) for r in range(4)])
    assert many.shape == (4, 32) and torch.allclose(many, loop, rtol=1e-5, atol=1e-3)


def test_decode_gives_the_data_representation():
    model = build_mvae("poe", seed=0, device="cpu")
    out = generate_joint(model, 5, generator=_gen())
    assert out["image"].shape == (5, 1, 8, 8) and float(out["image"].min()) >= 0 and float(out["image"].max()) <= 1
    assert out["text"].dtype == torch.int64 and out["text"].shape == (5, TEXT_LENGTH)
    assert int(out["text"].max()) < len(TEXT_VOCAB)
    assert out["audio"].shape == (5, 28, 32) and float(out["audio"].min()) >= 0 and float(out["audio"].max()) <= 1


# --- objectives -----------------------------------------------------------------------------------------------------
def _small_model(names: tuple[str, ...], fusion: str) -> MultimodalVAE:
    torch.manual_seed(0)
    return MultimodalVAE([build_modality(m, 4, 16) for m in names], 4, fusion)


def test_mvae_loss_is_the_sum_of_subset_elbos(batch):
    model = _small_model(("image", "text"), "poe")
    x = {m: batch[m] for m in ("image", "text")}
    loss = mvae_loss(model, x, generator=_gen(5))
    gen = _gen(5)
    terms = [subset_elbo(model, x, s, generator=gen) for s in (["image", "text"], ["image"], ["text"])]
    assert torch.allclose(loss, -sum(terms).mean()), "with two modalities: ELBO(X) + ELBO(x1) + ELBO(x2)"


@pytest.mark.parametrize("order", [MODALITIES, ("audio", "image", "text")])
def test_mvae_loss_keeps_the_drawn_subset_on_the_device_with_the_same_value(batch, monkeypatch, order):
    """On a GPU the three-modality loss does not read its random subset on the host: every decoder scores the drawn
    subset's draw, weighted by membership. Same draws, same loss and gradients as selecting the rows on the host."""
    torch.manual_seed(0)
    model = MultimodalVAE([build_modality(m, 4, 16) for m in MODALITIES], 4, "poe", prior_components=3)
    x = {m: batch[m] for m in order}
    results = []
    for on_host in (True, False):
        monkeypatch.setattr(mvae, "_host_reads_are_free", lambda device, on_host=on_host: on_host)
        for seed in range(6):  # several draws: each of the three pairs comes up
            model.zero_grad()
            loss = mvae_loss(model, x, generator=_gen(seed))
            loss.backward()
            results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    for (host_loss, host_grads), (device_loss, device_grads) in zip(results[:6], results[6:]):
        assert torch.allclose(host_loss, device_loss, rtol=1e-6, atol=1e-5)
        assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(host_grads, device_grads))
    drawn = {int(torch.randint(3, (1,), generator=_gen(seed))) for seed in range(6)}
    assert drawn == {0, 1, 2}, "the seeds draw every pair"


def test_subset_elbo_is_reconstruction_minus_kl(batch):
    model = _small_model(("image",), "poe")
    x = {"image": batch["image"]}
    mu, log_var = model.modalities["image"].encode(x["image"])
    mu, log_var = product_of_experts(mu.unsqueeze(0), log_var.unsqueeze(0))
    z = mu + torch.exp(0.5 * log_var) * torch.randn(mu.shape, generator=_gen(2))
    want = model.modalities["image"].log_likelihood(x["image"], z) - kl_to_standard_normal(mu, log_var)
    assert torch.allclose(subset_elbo(model, x, ["image"], generator=_gen(2)), want)


def test_mmvae_loss_with_one_modality_is_the_plain_elbo_estimate(batch):
    """One expert: log q_MoE = log q_1, so the MMVAE term is log p(x|z) + log p(z) - log q(z|x)."""
    model = _small_model(("text",), "moe")
    x = {"text": batch["text"]}
    mu, log_var = model.modalities["text"].encode(x["text"])
    z = mu + torch.exp(0.5 * log_var) * torch.randn(mu.shape, generator=_gen(4))
    log_q = torch.distributions.Normal(mu, torch.exp(0.5 * log_var)).log_prob(z).sum(-1)
    log_p = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)  # _small_model: prior N(0, I)
    want = -(model.modalities["text"].log_likelihood(x["text"], z) + log_p - log_q).mean()
    assert torch.allclose(mmvae_loss(model, x, generator=_gen(4)), want, rtol=1e-5)


def _mixture_prior_model(names: tuple[str, ...], fusion: str) -> MultimodalVAE:
    """A small model with a 3-component mixture prior whose components differ (the training default's kind)."""
    torch.manual_seed(0)
    model = MultimodalVAE([build_modality(m, 4, 16) for m in names], 4, fusion, prior_components=3)
    with torch.no_grad():
        model.prior.log_vars.copy_(0.3 * torch.randn(3, 4))
        model.prior.logits.copy_(torch.tensor([0.5, -0.2, 0.1]))
    return model


def _prior_reference(prior: MixturePrior) -> torch.distributions.Distribution:
    normal = torch.distributions.Normal(prior.means, torch.exp(0.5 * prior.log_vars))
    components = torch.distributions.Independent(normal, 1)
    return torch.distributions.MixtureSameFamily(torch.distributions.Categorical(logits=prior.logits), components)


def _gaussian(mu: torch.Tensor, log_var: torch.Tensor) -> torch.distributions.Distribution:
    return torch.distributions.Independent(torch.distributions.Normal(mu, torch.exp(0.5 * log_var)), 1)


def test_mvae_loss_with_a_mixture_prior_against_torch_distributions(batch):
    """-[sum over S of E_q_S log p(X_S | z) - (log q_S(z) - log p(z))] at one draw per subset, p a Gaussian mixture."""
    names = ("image", "text")
    model = _mixture_prior_model(names, "poe")
    x = {m: batch[m][:16] for m in names}
    with torch.no_grad():
        got = mvae_loss(model, x, generator=_gen(5))
        gen, total = _gen(5), 0.0
        experts = {m: model.modalities[m].encode(x[m]) for m in names}
        for subset in (["image", "text"], ["image"], ["text"]):  # the order mvae_loss draws them in
            mu, log_var = product_of_experts(torch.stack([experts[m][0] for m in subset]),
                                             torch.stack([experts[m][1] for m in subset]))
            z = mu + torch.exp(0.5 * log_var) * torch.randn(mu.shape, generator=gen)
            log_lik = sum(model.modalities[m].log_likelihood(x[m], z) for m in subset)
            total = total + log_lik - (_gaussian(mu, log_var).log_prob(z) - _prior_reference(model.prior).log_prob(z))
    assert torch.allclose(got, -total.mean(), rtol=1e-5)


def test_mopoe_loss_with_a_mixture_prior_against_torch_distributions(batch):
    """One subset S per example drawn with the mixture's weights, z ~ q_S: -[log p(X | z) - (log q_S(z) - log p(z))]."""
    names = ("image", "text", "audio")
    model = _mixture_prior_model(names, "mopoe")
    x = {m: batch[m][:16] for m in names}
    with torch.no_grad():
        got = mopoe_loss(model, x, beta=0.7, generator=_gen(3))
        means, log_vars, weights = model.posterior(x)
        gen = _gen(3)  # mopoe_loss's draws: a component per example, then the Gaussian noise
        component = torch.multinomial(weights.T, 1, generator=gen).squeeze(1)
        rows = torch.arange(means.shape[1])
        mu, log_var = means[component, rows], log_vars[component, rows]
        z = mu + torch.exp(0.5 * log_var) * torch.randn(mu.shape, generator=gen)
        kl = _gaussian(mu, log_var).log_prob(z) - _prior_reference(model.prior).log_prob(z)
        want = -(sum(model.modalities[m].log_likelihood(x[m], z) for m in names) - 0.7 * kl).mean()
    assert torch.allclose(got, want, rtol=1e-5)


def test_losses_are_finite_and_train_every_encoder(batch):
    for fusion, loss_fn in (("poe", mvae_loss), ("moe", mmvae_loss), ("mopoe", mopoe_loss)):
        model = build_mvae(fusion, MVAEConfig(hidden=32), seed=0, device="cpu")
        loss = loss_fn(model, batch, generator=_gen())
        assert loss.ndim == 0 and torch.isfinite(loss)
        assert torch.equal(loss, fusion_loss(model, batch, generator=_gen())), "fusion_loss dispatches"
        loss.backward()
        for name, modality in model.modalities.items():
            grad = modality.encoder.parameters().__next__().grad
            assert grad is not None and float(grad.abs().sum()) > 0, f"{fusion}: the {name} expert is trained"


def test_elbo_of_one_modality_matches_closed_form_kl(batch):
    model = _small_model(("image",), "poe")
    x = {"image": batch["image"][:8]}
    with torch.no_grad():
        mu, log_var = product_of_experts(*[t.unsqueeze(0) for t in model.modalities["image"].encode(x["image"])])
        z = mu + torch.exp(0.5 * log_var) * torch.randn(2000, *mu.shape, generator=_gen(1))
        rec = torch.stack([model.modalities["image"].log_likelihood(x["image"], zz) for zz in z]).mean(0)
        want = rec - kl_to_standard_normal(mu, log_var)
        got = elbo(model, x, num_samples=2000, generator=_gen(9))
    assert torch.allclose(got, want, atol=0.5), "the mixture ELBO of a one-component posterior is the usual ELBO"


def test_training_is_deterministic_and_finite():
    config = MVAEConfig(hidden=32, steps=12, batch_size=64, kl_warmup=4)
    for fusion in FUSIONS:
        m1, h1 = mvae.train_mvae(fusion, config=config, seed=1, device="cpu", progress=False)
        m2, h2 = mvae.train_mvae(fusion, config=config, seed=1, device="cpu", progress=False)
        assert h1["loss"] == h2["loss"] and all(math.isfinite(v) for v in h1["loss"]), f"{fusion}: same seed, same run"
        assert not m1.training
        assert m1.prior.components == config.refit_prior, f"{fusion}: the prior is refitted after training"
        assert torch.equal(m1.prior.means, m2.prior.means), f"{fusion}: the refit is seeded too"


def test_fit_prior_is_em_on_the_posterior_means(ds):
    model = build_mvae("moe", MVAEConfig(hidden=16), seed=0, device="cpu")
    x = {m: ds.train[m][:300] for m in MODALITIES}
    z = mvae.posterior_means(model, x)
    learned = model.prior.log_prob(z).mean()
    fits = {}
    for iters in (0, 3, 30):
        prior = mvae.fit_prior(model, x, 6, iters=iters, min_var=1e-9, generator=_gen(3))
        assert model.prior is prior and prior.components == 6, "the fitted mixture replaces the model's prior"
        fits[iters] = float(prior.log_prob(z).mean().detach())
    assert fits[0] <= fits[3] + 1e-4 and fits[3] <= fits[30] + 1e-4, f"EM never lowers the codes' likelihood: {fits}"
    assert fits[30] > float(learned.detach()), "the refitted prior explains the codes better than the untrained one"
    assert model.elbo_prior.components == MVAEConfig().prior_components, "the prior trained against is kept"
    assert torch.allclose(prior.logits.softmax(-1).sum(), torch.tensor(1.0)), "mixture weights sum to one"
    again = mvae.fit_prior(model, x, 6, iters=30, min_var=1e-9, generator=_gen(3))
    assert torch.equal(again.means, prior.means), "same generator, same fit"
    with pytest.raises(ValueError, match="components"):
        mvae.fit_prior(model, x, 301)


# --- evaluation -----------------------------------------------------------------------------------------------------
def test_precision_at_k_against_brute_force():
    q, g = torch.randn(20, 3, generator=_gen(1)), torch.randn(40, 3, generator=_gen(2))
    lq, lg = torch.randint(4, (20,), generator=_gen(3)), torch.randint(4, (40,), generator=_gen(4))
    for k in (1, 7, 40):
        hits = 0
        for i in range(20):
            order = sorted(range(40), key=lambda j: float(((q[i] - g[j]) ** 2).sum()))
            hits += sum(int(lg[j] == lq[i]) for j in order[:k])
        assert abs(precision_at_k(q, g, lq, lg, k) - hits / (20 * k)) < 1e-12
    with pytest.raises(ValueError, match="k"):
        precision_at_k(q, g, lq, lg, 41)
    with pytest.raises(ValueError, match="gallery"):
        precision_at_k(q, g[:, :2], lq, lg, 1)
    with pytest.raises(ValueError, match="query_labels"):
        precision_at_k(q, g, lq[:5], lg, 1)


def test_evaluate_generation_on_real_data_reads_the_classifiers(ds):
    from mmlib.classifiers import load_classifiers
    from mmlib.metrics import frechet_baseline

    classifiers = load_classifiers("cpu")
    test = ds.test
    cross = {(a, b): test[b] for a in MODALITIES for b in MODALITIES if a != b}
    out = evaluate_generation(dict(test.x), cross, ds, classifiers)
    for a, b in cross:
        assert out[f"cross_coherence_{a}_to_{b}"] == pytest.approx(classifiers[b].accuracy(test[b], test.label))
    assert out["joint_coherence"] > 0.98, "real triples: the classifiers agree"
    for m in MODALITIES:
        assert out[f"fd_baseline_{m}"] == pytest.approx(frechet_baseline(m, device="cpu")), "= metrics' baseline"
    with pytest.raises(ValueError, match="joint_samples"):
        evaluate_generation({m: test[m][:50] for m in MODALITIES}, None, ds, classifiers)
    with pytest.raises(TypeError, match="joint_samples"):
        evaluate_generation({"image": test["image"]}, None, ds, classifiers)
    with pytest.raises(ValueError, match="cross_samples"):
        evaluate_generation(dict(test.x), {("image", "text"): test["text"][:10]}, ds, classifiers)
    with pytest.raises(ValueError, match="cross_samples"):
        evaluate_generation(dict(test.x), {("image", "smell"): test["text"]}, ds, classifiers)


def test_evaluate_mvae_names_every_figure(ds):
    from mmlib.classifiers import load_classifiers

    model, _ = mvae.train_mvae("mopoe", config=MVAEConfig(hidden=32, steps=5), seed=0, device="cpu", progress=False)
    metrics, arrays = mvae.evaluate_mvae(model, ds, load_classifiers("cpu"), seed=0)
    pairs = [(a, b) for a in MODALITIES for b in MODALITIES if a != b]
    expected = {"test_elbo", "joint_coherence", "latent_probe_acc"}
    expected |= {f"fd_{m}" for m in MODALITIES} | {f"fd_baseline_{m}" for m in MODALITIES}
    for a, b in pairs:
        expected |= {f"cross_coherence_{a}_to_{b}", f"retrieval_p1_{a}_to_{b}", f"retrieval_p10_{a}_to_{b}"}
    assert set(metrics) == expected and all(math.isfinite(v) for v in metrics.values())
    assert {f"gen_{m}" for m in MODALITIES} <= set(arrays)
    assert all(f"gen_{b}__from_{a}" in arrays and f"label__from_{a}" in arrays for a, b in pairs)
    assert arrays["gen_image"].shape[0] == mvae.NUM_JOINT_SAMPLES
    assert torch.equal(arrays["label__from_text"], ds.test.label)
    cross = generate_cross(model, {"audio": ds.test["audio"][:3]}, generator=_gen())
    assert set(cross) == {("audio", "image"), ("audio", "text")}


def test_experiments_are_registered():
    from mmlib.experiments import get_experiment

    for fusion in FUSIONS:
        assert get_experiment(f"mvae-{fusion}").fn.__module__ == "mmlib.mvae"


# --- bad input ------------------------------------------------------------------------------------------------------
def test_bad_inputs_name_the_argument(batch):
    model = build_mvae("mopoe", MVAEConfig(hidden=16), seed=0, device="cpu")
    with pytest.raises(ValueError, match="fusion"):
        build_mvae("sum")
    with pytest.raises(TypeError, match="config"):
        build_mvae("poe", {"latent_dim": 3})
    with pytest.raises(ValueError, match="config.latent_dim"):
        MVAEConfig(latent_dim=0)
    with pytest.raises(ValueError, match="config.lr"):
        MVAEConfig(lr=-1.0)
    with pytest.raises(ValueError, match="config.prior_components"):
        MVAEConfig(prior_components=-1)
    with pytest.raises(ValueError, match="config.refit_prior"):
        MVAEConfig(refit_prior=-1)
    with pytest.raises(ValueError, match="config.audio_min_scale"):
        MVAEConfig(audio_min_scale=0.0)
    with pytest.raises(TypeError, match="x"):
        model.encode({})
    with pytest.raises(ValueError, match="unknown modalities"):
        model.encode({"smell": batch["image"]})
    with pytest.raises(ValueError, match="same number of rows"):
        model.encode({"image": batch["image"], "text": batch["text"][:5]})
    with pytest.raises(ValueError, match="subset"):
        subset_elbo(model, {"image": batch["image"]}, ["text"])
    with pytest.raises(TypeError, match="model"):
        fusion_loss(nn.Linear(2, 2), batch)
    with pytest.raises(ValueError, match="beta"):
        fusion_loss(model, batch, beta=-1.0)
    with pytest.raises(ValueError, match="z"):
        model.decode(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="names"):
        model.decode(torch.zeros(3, MVAEConfig().latent_dim), ["smell"])
    with pytest.raises(ValueError, match="n"):
        generate_joint(model, 0)
    with pytest.raises(TypeError, match="likelihood"):
        Modality("image", nn.Identity(), nn.Identity(), nn.Identity())
    with pytest.raises(ValueError, match="modalities"):
        MultimodalVAE([build_modality("image", 4, 8), build_modality("image", 4, 8)], 4, "poe")
    with pytest.raises(ValueError, match="name"):
        build_modality("smell", 4)


# --- exercise -------------------------------------------------------------------------------------------------------
def test_exercise_checker_accepts_the_solution_and_rejects_a_wrong_answer():
    from mmlib.exercises import RESULTS, check

    check("07.2", precision_at_k)
    assert RESULTS["07.2"] is True

    def forgets_to_average_over_k(query, gallery, query_labels, gallery_labels, k):
        return precision_at_k(query, gallery, query_labels, gallery_labels, k) * k

    check("07.2", forgets_to_average_over_k)
    assert RESULTS["07.2"] is False
    with pytest.raises(AssertionError, match="k = 2"):
        mvae._check_precision_at_k(forgets_to_average_over_k)


def test_config_image_encoder_and_weight_decay():
    assert MVAEConfig().image_encoder == "conv" and MVAEConfig().weight_decay > 0
    with pytest.raises(ValueError, match="config.image_encoder"):
        MVAEConfig(image_encoder="resnet")
    with pytest.raises(ValueError, match="config.weight_decay"):
        MVAEConfig(weight_decay=-1.0)
    conv = build_modality("image", 4, 16, image_encoder="conv")
    mlp = build_modality("image", 4, 16, image_encoder="mlp")
    assert any(isinstance(m, nn.Conv2d) for m in conv.encoder.modules())
    assert not any(isinstance(m, nn.Conv2d) for m in mlp.encoder.modules())
    x = torch.rand(5, 1, 8, 8)
    for modality in (conv, mlp):
        mean, log_var = modality.encode(x)
        assert mean.shape == log_var.shape == (5, 4)
