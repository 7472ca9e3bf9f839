"""Unit tests of mmlib.mmgan (notebook 08): the joint generator and discriminator, the straight-through Gumbel draw,
mismatched triples, one training step, bad inputs, and the exercise checker."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from mmlib import mmgan
from mmlib.data import TEXT_LENGTH, TEXT_VOCAB
from mmlib.exercises import RESULTS, check

V = len(TEXT_VOCAB)


def _triple(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.rand(n, 1, 8, 8, generator=g), "text": torch.randint(0, V, (n, TEXT_LENGTH), generator=g),
            "audio": torch.rand(n, 28, 32, generator=g)}


def test_straight_through_is_one_hot_forward_and_softmax_backward():
    logits = torch.randn(5, 7, requires_grad=True)
    weights = torch.randn(5, 7)
    hard = mmgan.straight_through_argmax(logits, tau=0.5)
    assert torch.equal(hard.detach(), F.one_hot(logits.detach().argmax(1), 7).float())
    (grad_hard,) = torch.autograd.grad((hard * weights).sum(), logits)
    (grad_soft,) = torch.autograd.grad((torch.softmax(logits / 0.5, 1) * weights).sum(), logits)
    assert torch.allclose(grad_hard, grad_soft, atol=1e-6)


def test_shapes_and_determinism(cpu):
    G, D = mmgan.build_mmgan(hidden=32, head_hidden=16, text_hidden=16, char_dim=8, branch=8, seed=2, device=cpu)
    G2, _ = mmgan.build_mmgan(hidden=32, head_hidden=16, text_hidden=16, char_dim=8, branch=8, seed=2, device=cpu)
    assert all(torch.equal(a, b) for a, b in zip(G.parameters(), G2.parameters()))
    samples, digits = mmgan.generate_joint(G, 6, seed=4)
    assert samples["image"].shape == (6, 1, 8, 8) and samples["audio"].shape == (6, 28, 32)
    assert samples["text"].shape == (6, TEXT_LENGTH) and samples["text"].dtype == torch.int64
    assert digits.shape == (6,) and int(digits.max()) < mmgan.NUM_DIGITS
    again, _ = mmgan.generate_joint(G, 6, seed=4)
    assert all(torch.equal(samples[m], again[m]) for m in samples), "generation is seeded"
    assert mmgan.discriminator_scores(D, samples, digits).shape == (6,)
    view = mmgan.as_discriminator_input(_triple(3))
    assert view["text"].shape == (3, TEXT_LENGTH, V) and torch.equal(view["text"].sum(2), torch.ones(3, TEXT_LENGTH))


def test_discriminator_is_a_sum_of_projection_terms(cpu):
    _, D = mmgan.build_mmgan(hidden=16, head_hidden=8, text_hidden=8, char_dim=4, branch=8, device=cpu)
    x = mmgan.as_discriminator_input(_triple(4))
    y = torch.tensor([0, 3, 3, 9])
    h = D.features(x)
    by_hand = sum(D.psi[m](h[m]).squeeze(1) + (D.embed[m](y) * h[m]).sum(1) for m in h)
    for a, b in (("image", "text"), ("image", "audio"), ("text", "audio")):
        by_hand = by_hand + (D.compat[f"{a}-{b}"](h[a]) * h[b]).sum(1)
    assert torch.allclose(D(x, y), by_hand, atol=1e-5)


def test_shuffle_modality_rolls_one_modality():
    x = _triple(4)
    out = mmgan.shuffle_modality(x, "audio")
    assert torch.equal(out["audio"][1], x["audio"][0]) and torch.equal(out["image"], x["image"])
    assert torch.equal(out["text"], x["text"])


def test_rolled_features_are_the_features_of_the_rolled_triple(cpu):
    """What the training step relies on to score mismatched triples without another pass through φ."""
    _, D = mmgan.build_mmgan(hidden=16, head_hidden=8, text_hidden=8, char_dim=4, branch=8, device=cpu)
    x = mmgan.as_discriminator_input(_triple(6))
    y = torch.tensor([0, 3, 3, 9, 1, 2])
    for m in x:
        rolled = D.project(mmgan.shuffle_modality(D.features(x), m), y)
        assert torch.allclose(rolled, D(mmgan.shuffle_modality(x, m), y), atol=1e-6)


def test_the_steps_discriminator_update_is_that_of_separate_passes(cpu):
    """One step's update of D is the gradient of L_D + R1 as written: real, generated and mismatched triples each
    through the whole discriminator (the step shares φ of the real triples with the mismatched ones)."""
    sizes = {"hidden": 16, "head_hidden": 16, "text_hidden": 16, "char_dim": 4, "branch": 8, "device": cpu}
    G, D = mmgan.build_mmgan(**sizes)
    G_ref, D_ref = mmgan.build_mmgan(**sizes)
    step = mmgan.mmgan_step(G, D, torch.optim.SGD(G.parameters(), lr=0.0), torch.optim.SGD(D.parameters(), lr=1.0),
                            noise=torch.Generator().manual_seed(3), ema=None)
    raw, label = _triple(8), torch.arange(8) % 10
    step(raw["image"], raw["text"], raw["audio"], label)
    z, y = G_ref.draw_noise(8, torch.Generator().manual_seed(3))
    fake = {m: v.detach() for m, v in G_ref(z, y).items()}
    real = {m: v.requires_grad_(True) for m, v in mmgan.as_discriminator_input(raw).items()}
    real_logits = D_ref(real, label)
    wrong = mmgan.shuffle_modality({m: v.detach() for m, v in real.items()}, "image")  # step 0 rolls the image
    fake_logits = torch.cat([D_ref(fake, y), D_ref(wrong, label)])
    input_grads = torch.autograd.grad(real_logits.sum(), list(real.values()), create_graph=True)
    r1 = 0.5 * sum(g.pow(2).flatten(1).sum(1) for g in input_grads).mean()
    grads = torch.autograd.grad(mmgan.discriminator_loss(real_logits, fake_logits) + r1, list(D_ref.parameters()))
    for p, p0, g in zip(D.parameters(), D_ref.parameters(), grads):
        assert torch.allclose(p, p0 - g, atol=1e-6)


def test_step_updates_and_ema(cpu):
    G, D = mmgan.build_mmgan(hidden=16, head_hidden=16, text_hidden=16, char_dim=4, branch=8, device=cpu)
    ema = mmgan.build_mmgan(hidden=16, head_hidden=16, text_hidden=16, char_dim=4, branch=8,
                            device=cpu)[0].requires_grad_(False)
    before = [p.detach().clone() for p in G.parameters()]
    step = mmgan.mmgan_step(G, D, torch.optim.Adam(G.parameters()), torch.optim.Adam(D.parameters()),
                            noise=torch.Generator().manual_seed(0), ema=ema, ema_decay=0.5)
    x = _triple(8)
    out = step(x["image"], x["text"], x["audio"], torch.arange(8) % 10)
    assert set(out) == {"d_loss", "g_loss", "r1"} and all(torch.isfinite(v) for v in out.values())
    assert float(out["r1"]) > 0
    for e, b, g in zip(ema.parameters(), before, G.parameters()):
        assert torch.allclose(e, 0.5 * b + 0.5 * g.detach(), atol=1e-6)


def test_r1_of_the_joint_step_matches_its_definition(cpu):
    """The step's R1 is ½ E Σ_m ||∇_{x_m} D||² over the three real inputs (the text as one-hot floats)."""
    _, D = mmgan.build_mmgan(hidden=16, head_hidden=16, text_hidden=16, char_dim=4, branch=8, device=cpu)
    x = mmgan.as_discriminator_input(_triple(5))
    x = {m: v.requires_grad_(True) for m, v in x.items()}
    y = torch.arange(5)
    grads = torch.autograd.grad(D(x, y).sum(), list(x.values()))
    by_hand = 0.5 * sum(g.pow(2).flatten(1).sum(1) for g in grads).mean()
    flat = torch.cat([v.detach().flatten(1) for v in x.values()], 1).requires_grad_(True)
    sizes = [v[0].numel() for v in x.values()]
    parts = dict(zip(x, torch.split(flat, sizes, dim=1)))
    logits = D({m: parts[m].reshape(x[m].shape) for m in x}, y)
    (g_flat,) = torch.autograd.grad(logits.sum(), flat)
    assert torch.allclose(by_hand, 0.5 * g_flat.pow(2).sum(1).mean(), atol=1e-6)
    # ... and the training step reports exactly this R1: it is computed on the real triple before D's update
    G, _ = mmgan.build_mmgan(hidden=16, head_hidden=16, text_hidden=16, char_dim=4, branch=8, device=cpu)
    step = mmgan.mmgan_step(G, D, torch.optim.SGD(G.parameters(), lr=0.0), torch.optim.SGD(D.parameters(), lr=0.0),
                            noise=torch.Generator().manual_seed(0), r1_every=1)
    raw = _triple(5)
    out = step(raw["image"], raw["text"], raw["audio"], y)
    assert torch.allclose(out["r1"], by_hand.detach(), rtol=1e-5, atol=1e-7)


def test_fit_is_reproducible(cpu):
    config = mmgan.MMGANConfig(steps=3, batch_size=4, hidden=16, head_hidden=16, text_hidden=16, char_dim=4, branch=8)
    data, labels = _triple(10), torch.arange(10)
    a = mmgan.fit_mmgan(data, labels, config=config, seed=3, device=cpu, progress=False)
    b = mmgan.fit_mmgan(data, labels, config=config, seed=3, device=cpu, progress=False)
    assert a.history["d_loss"] == b.history["d_loss"]


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [
        (lambda: mmgan.straight_through_argmax(torch.zeros(3, 4), tau=0.0), ValueError, "tau"),
        (lambda: mmgan.straight_through_argmax(torch.zeros(3, 4, dtype=torch.long)), TypeError, "logits"),
        (lambda: mmgan.as_discriminator_input({"image": torch.zeros(2, 1, 8, 8)}), ValueError, "modalities"),
        (lambda: mmgan.as_discriminator_input([1, 2]), TypeError, "dict"),
        (lambda: mmgan.as_discriminator_input({**_triple(3), "audio": torch.zeros(2, 28, 32)}), ValueError, "rows"),
        (lambda: mmgan.as_discriminator_input({**_triple(3), "text": torch.full((3, TEXT_LENGTH), 500)}),
         ValueError, "token ids"),
        (lambda: mmgan.shuffle_modality(_triple(3), "smell"), ValueError, "modality"),
        (lambda: mmgan.shuffle_modality(_triple(3), "text", shift=0), ValueError, "shift"),
        (lambda: mmgan.generate_joint(torch.nn.Linear(2, 2), 3), TypeError, "generator"),
        (lambda: mmgan.generate_joint(mmgan.build_mmgan(hidden=8, head_hidden=8, text_hidden=8, char_dim=2,
                                                        branch=8)[0], 0), ValueError, "n"),
        (lambda: mmgan.discriminator_scores(mmgan.build_mmgan(hidden=8, head_hidden=8, text_hidden=8, char_dim=2,
                                                              branch=8)[1], _triple(3), torch.tensor([1, 2, 12])),
         ValueError, "digits"),
        (lambda: mmgan.MMGANConfig(lr=-1.0), ValueError, "lr"),
        (lambda: mmgan.MMGANConfig(mismatch="yes"), TypeError, "mismatch"),
        (lambda: mmgan.fit_mmgan(_triple(4), torch.arange(4), config={"steps": 1}, device="cpu"), TypeError, "config"),
        (lambda: mmgan.fit_mmgan(_triple(4), torch.arange(3), device="cpu"), ValueError, "labels"),
        (lambda: mmgan.fit_latent_decoder(torch.nn.Linear(2, 2), _triple(4)), TypeError, "vae"),
        (lambda: mmgan.mmgan_step(torch.nn.Linear(2, 2), None, None, None), TypeError, "generator"),
    ],
)
def test_bad_inputs_are_named(call, error, words):
    with pytest.raises(error, match=words):
        call()


def test_exercise_checker(capsys):
    def solution(x, modality):
        return {m: (torch.roll(v, 1, dims=0) if m == modality else v) for m, v in x.items()}

    def rolls_all(x, modality):
        return {m: torch.roll(v, 1, dims=0) for m, v in x.items()}

    def wrong_direction(x, modality):
        return {m: (torch.roll(v, -1, dims=0) if m == modality else v) for m, v in x.items()}

    def in_place(x, modality):
        x[modality] = torch.roll(x[modality], 1, dims=0)
        return x

    def stub(x, modality):
        raise NotImplementedError

    check("08.1", solution)
    assert RESULTS["08.1"]
    for wrong in (rolls_all, wrong_direction, in_place, stub):
        check("08.1", wrong)
        assert not RESULTS["08.1"], wrong.__name__
    assert "not implemented" in capsys.readouterr().out


def test_one_hot_text_view_matches_f_one_hot():
    x = _triple(2)
    assert torch.equal(mmgan.as_discriminator_input(x)["text"], F.one_hot(x["text"], V).float())
