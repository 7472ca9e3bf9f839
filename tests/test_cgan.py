"""Unit tests of mmlib.cgan (notebook 06): shapes, losses against their definitions, bad inputs, exercise checkers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from mmlib import cgan
from mmlib.data import TEXT_LENGTH, TEXT_VOCAB
from mmlib.exercises import RESULTS, check


def _text(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, len(TEXT_VOCAB), (n, TEXT_LENGTH), generator=torch.Generator().manual_seed(seed))


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_to_vector():
    tokens = _text(5)
    v = cgan.to_vector(tokens, "text")
    assert v.shape == (5, cgan.modality_dim("text")) and torch.equal(v.sum(1), torch.full((5,), float(TEXT_LENGTH)))
    assert torch.equal(v.reshape(5, TEXT_LENGTH, -1).argmax(2), tokens)
    images = _images(3)
    assert torch.equal(cgan.to_vector(images, "image"), images.flatten(1))
    assert cgan.modality_dim("audio") == 28 * 32


def test_token_linear_is_a_linear_layer_on_one_hot_tokens():
    layer = cgan.TokenLinear(TEXT_LENGTH, len(TEXT_VOCAB), 7)
    tokens = _text(9)
    by_matmul = cgan.to_vector(tokens, "text") @ layer.as_matrix().T + layer.bias
    assert torch.allclose(layer(tokens), by_matmul, atol=1e-5)


def test_shapes_and_determinism(cpu):
    G, D = cgan.build_cgan("text", "image", hidden=32, seed=3, device=cpu)
    G2, _ = cgan.build_cgan("text", "image", hidden=32, seed=3, device=cpu)
    for a, b in zip(G.parameters(), G2.parameters()):
        assert torch.equal(a, b), "the same seed gives the same initial weights"
    c = _text(6)
    x = G(torch.randn(6, G.noise_dim), c).detach()
    assert x.shape == (6, 1, 8, 8) and float(x.min()) >= 0 and float(x.max()) <= 1
    assert D(x, c).shape == (6,)
    samples = cgan.generate(G, c, n_per_condition=4, seed=1)
    assert samples.shape == (6, 4, 1, 8, 8)
    assert torch.equal(samples, cgan.generate(G, c, n_per_condition=4, seed=1)), "generate is seeded"
    collapsed = cgan.generate(G, c, n_per_condition=4, noise_scale=0.0)
    assert cgan.within_condition_variance(collapsed) == 0.0, "z = 0 gives one output per condition"
    G3, D3 = cgan.build_cgan(5, "audio", hidden=16, device=cpu)  # a vector condition of width 5
    assert G3(torch.randn(2, G3.noise_dim), torch.randn(2, 5)).shape == (2, 28, 32)


def test_projection_discriminator_is_psi_plus_inner_product(cpu):
    _, D = cgan.build_cgan("image", "audio", hidden=16, seed=0, device=cpu)
    x, c = torch.rand(4, 28, 32), _images(4)
    h = D.phi(x.flatten(1))
    expected = D.psi(h).squeeze(1) + (D.encoder.net(c) * h).sum(1)
    assert torch.allclose(D(x, c), expected, atol=1e-6)


def test_chapter_03_losses_are_the_binary_cross_entropy():
    real, fake = torch.randn(50), torch.randn(50)
    bce = F.binary_cross_entropy_with_logits
    assert torch.allclose(cgan.discriminator_loss(real, fake), bce(real, torch.ones(50)) + bce(fake, torch.zeros(50)),
                          atol=1e-6)
    assert torch.allclose(cgan.generator_loss(fake), bce(fake, torch.ones(50)), atol=1e-6)


def test_r1_penalty_of_a_linear_critic_is_half_squared_weight_norm():
    w = torch.randn(64)
    x = _images(7).flatten(1).requires_grad_(True)
    assert math.isclose(float(cgan.r1_penalty(x @ w, x)), 0.5 * float(w @ w), rel_tol=1e-5)
    with pytest.raises(ValueError, match="requires_grad"):
        cgan.r1_penalty(x.detach() @ w, x.detach())


def test_mode_seeking_loss():
    a, b = torch.zeros(4, 3), torch.ones(4, 3)
    za, zb = torch.zeros(4, 2), torch.full((4, 2), 2.0)
    assert math.isclose(float(cgan.mode_seeking_loss(a, b, za, zb)), 1 / (0.5 + 1e-5), rel_tol=1e-6)
    assert float(cgan.mode_seeking_loss(a, a, za, zb)) > 1e4, "identical outputs for different noise are punished"


def test_a_step_changes_both_players_and_returns_detached_losses(cpu):
    G, D = cgan.build_cgan("text", "image", hidden=16, seed=0, device=cpu)
    ema = cgan.build_cgan("text", "image", hidden=16, seed=0, device=cpu)[0].requires_grad_(False)
    g_opt = torch.optim.Adam(G.parameters(), lr=1e-3)
    d_opt = torch.optim.Adam(D.parameters(), lr=1e-3)
    before_g = [p.detach().clone() for p in G.parameters()]
    before_d = [p.detach().clone() for p in D.parameters()]
    step = cgan.cgan_step(G, D, g_opt, d_opt, noise=torch.Generator().manual_seed(0), ema=ema, ema_decay=0.5)
    out = step(_text(8), _images(8))
    assert set(out) == {"d_loss", "g_loss", "r1"} and not any(v.requires_grad for v in out.values())
    assert any(not torch.equal(a, b) for a, b in zip(before_g, G.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(before_d, D.parameters()))
    for e, b, g in zip(ema.parameters(), before_g, G.parameters()):
        assert torch.allclose(e, 0.5 * b + 0.5 * g.detach(), atol=1e-6), "EMA: θ_ema ← β θ_ema + (1 − β) θ"


def test_the_steps_discriminator_update_is_that_of_separate_passes(cpu):
    """The step computes φ(x) of the real targets once, for the real and the mismatched pairs; its update of D must
    be the one of the loss as written, L_D(D(x, c), [D(x̃, c), D(x, c rolled)]) + γ R1, with separate passes."""
    G, D = cgan.build_cgan("text", "audio", hidden=16, seed=0, device=cpu)
    G_ref, D_ref = cgan.build_cgan("text", "audio", hidden=16, seed=0, device=cpu)
    c, x = _text(8), torch.rand(8, 28, 32, generator=torch.Generator().manual_seed(1))
    step = cgan.cgan_step(G, D, torch.optim.SGD(G.parameters(), lr=0.0), torch.optim.SGD(D.parameters(), lr=1.0),
                          mode_seeking=0.0, r1_every=1, noise=torch.Generator().manual_seed(3))
    step(c, x)
    z = torch.randn(8, G_ref.noise_dim, generator=torch.Generator().manual_seed(3))
    fake = G_ref(z, c).detach()
    x = x.clone().requires_grad_(True)
    real_logits = D_ref(x, c)
    fake_logits = torch.cat([D_ref(fake, c), D_ref.score(x.detach(), D_ref.encoder(c).roll(1, dims=0))])
    loss = cgan.discriminator_loss(real_logits, fake_logits) + cgan.r1_penalty(real_logits, x)
    grads = torch.autograd.grad(loss, list(D_ref.parameters()))
    for p, p0, g in zip(D.parameters(), D_ref.parameters(), grads):
        assert torch.allclose(p, p0 - g, atol=1e-6)


def test_fit_is_reproducible(cpu):
    config = cgan.CGANConfig(steps=3, batch_size=4, hidden=16)
    c, x = _text(10), _images(10)
    a = cgan.fit_cgan("text", "image", c, x, config=config, seed=1, device=cpu, progress=False)
    b = cgan.fit_cgan("text", "image", c, x, config=config, seed=1, device=cpu, progress=False)
    assert a.history["g_loss"] == b.history["g_loss"]
    for p, q in zip(a.generator.parameters(), b.generator.parameters()):
        assert torch.equal(p, q)


def test_metrics():
    assert cgan.conditional_accuracy(torch.tensor([1, 2, 3, 4]), torch.tensor([1, 2, 0, 4])) == 0.75
    samples = torch.zeros(5, 3, 2)
    samples[:, 1] = 1.0  # values 0, 1, 0 per coordinate: unbiased variance 1/3
    assert math.isclose(cgan.within_condition_variance(samples), 1 / 3, rel_tol=1e-6)
    feats = torch.randn(40, 3, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(40) % 10
    fd = cgan.class_frechet_distances(feats, labels, feats, labels)
    assert fd.shape == (10,) and np.allclose(fd, 0.0, atol=1e-8)
    x = torch.randn(40, 2, generator=torch.Generator().manual_seed(1))
    expected = np.mean([float(x[labels == d].var(0).mean()) for d in range(10)])
    assert math.isclose(cgan.real_within_digit_variance(x, labels), expected, rel_tol=1e-6)


def test_one_per_digit_collapses_each_digit():
    samples = torch.randn(6, 3, 2)
    labels = torch.tensor([4, 1, 4, 1, 0, 4])
    out = cgan.one_per_digit(samples, labels)
    assert torch.equal(out[2, 1], samples[0, 0]) and torch.equal(out[3, 2], samples[1, 0])
    assert cgan.within_condition_variance(out) == 0.0
    predicted = labels[:, None].repeat(1, 3)
    predicted[0, 0] = 7  # the first "4" is not recognised: the next one is used
    out = cgan.one_per_digit(samples, labels, predicted)
    assert torch.equal(out[5, 2], samples[0, 1])


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [
        (lambda: cgan.to_vector(torch.rand(2, 8, 8), "image"), ValueError, "x: expected shape"),
        (lambda: cgan.to_vector(torch.full((2, TEXT_LENGTH), 99), "text"), ValueError, "token ids"),
        (lambda: cgan.to_vector(torch.rand(2, TEXT_LENGTH), "text"), TypeError, "integer"),
        (lambda: cgan.to_vector(torch.rand(2, 1, 8, 8), "smell"), ValueError, "modality"),
        (lambda: cgan.to_vector(torch.full((2, 1, 8, 8), float("nan")), "image"), ValueError, "NaN"),
        (lambda: cgan.build_cgan("image", "image"), ValueError, "different"),
        (lambda: cgan.build_cgan("image", "text"), ValueError, "target"),
        (lambda: cgan.build_cgan(2.5, "image"), TypeError, "source"),
        (lambda: cgan.build_cgan("text", "image", hidden=0), ValueError, "hidden"),
        (lambda: cgan.generate(torch.nn.Linear(2, 2), _text(2)), TypeError, "generator"),
        (lambda: cgan.within_condition_variance(torch.zeros(4, 1, 3)), ValueError, "K >= 2"),
        (lambda: cgan.conditional_accuracy(torch.zeros(3, dtype=torch.long), torch.zeros(2, dtype=torch.long)),
         ValueError, "same length"),
        (lambda: cgan.fit_cgan("text", "image", _text(4), _images(5), device="cpu"), ValueError, "paired rows"),
        (lambda: cgan.fit_cgan("text", "image", _text(4), _images(4), config={"steps": 2}, device="cpu"),
         TypeError, "config"),
        (lambda: cgan.CGANConfig(ema_decay=1.5), ValueError, "ema_decay"),
        (lambda: cgan.CGANConfig(batch_size=1), ValueError, "batch_size"),
        (lambda: cgan.mode_seeking_loss(torch.zeros(2, 3), torch.zeros(3, 3), torch.zeros(2, 1), torch.zeros(2, 1)),
         ValueError, "matching"),
        (lambda: cgan.one_per_digit(torch.zeros(3, 2, 2), torch.zeros(2, dtype=torch.long)), ValueError, "labels"),
        (lambda: cgan.evaluate_cgan(torch.zeros(3, 2, 5), torch.zeros(3, dtype=torch.long), _images(3), _images(3),
                                    torch.zeros(3, dtype=torch.long), None), ValueError, "samples"),
        (lambda: cgan.mlp([3]), ValueError, "sizes"),
    ],
)
def test_bad_inputs_are_named(call, error, words):
    with pytest.raises(error, match=words):
        call()


def test_bad_network_inputs(cpu):
    G, D = cgan.build_cgan("text", "image", hidden=8, device=cpu)
    with pytest.raises(ValueError, match="z, c"):
        G(torch.randn(3, G.noise_dim), _text(4))
    with pytest.raises(ValueError, match="z: expected shape"):
        G(torch.randn(4, 3), _text(4))
    with pytest.raises(ValueError, match="x, c"):
        D(_images(3), _text(4))
    with pytest.raises(ValueError, match="n_per_condition"):
        cgan.generate(G, _text(2), n_per_condition=0)
    with pytest.raises(ValueError, match="noise_scale"):
        cgan.generate(G, _text(2), noise_scale=-1.0)
    with pytest.raises(TypeError, match="generator, discriminator"):
        cgan.cgan_step(D, G, None, None)


def test_exercise_checker_passes_the_solution_and_fails_wrong_answers(capsys):
    def solution(real_logits, x):
        (grad,) = torch.autograd.grad(real_logits.sum(), x, create_graph=True)
        return 0.5 * grad.pow(2).flatten(1).sum(1).mean()

    def no_half(real_logits, x):
        (grad,) = torch.autograd.grad(real_logits.sum(), x, create_graph=True)
        return grad.pow(2).flatten(1).sum(1).mean()

    def detached(real_logits, x):
        (grad,) = torch.autograd.grad(real_logits.sum(), x, retain_graph=True)
        return 0.5 * grad.pow(2).flatten(1).sum(1).mean()

    def stub(real_logits, x):
        raise NotImplementedError

    check("06.1", solution)
    assert RESULTS["06.1"]
    for wrong in (no_half, detached, stub):
        check("06.1", wrong)
        assert not RESULTS["06.1"], wrong.__name__
    out = capsys.readouterr().out
    assert "½‖w‖²" in out and "create_graph" in out and "not implemented" in out
