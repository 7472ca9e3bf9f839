"""mmlib.metrics on hand-made cases whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch

from mmlib import metrics as M
from mmlib.data import GRID_MODES, GRID_STD, RING_MODES, RING_STD, grid_mixture, ring_mixture

# --- coherence ------------------------------------------------------------------------------------------------------


class _Oracle:
    """A stand-in classifier that reads the digit stored in column 0 of each row."""

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0].long()


def test_coherence_perfect_and_label_ignoring():
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (20_000,), generator=gen)
    assert M.coherence(labels, labels) == 1.0
    random_pred = torch.randint(0, 10, (20_000,), generator=gen)
    assert abs(M.coherence(random_pred, labels) - 0.1) < 0.01, "a generator that ignores the digit scores ~1/10"
    assert M.coherence(np.array([1, 2, 3]), np.array([1, 2, 0])) == pytest.approx(2 / 3)


def test_cross_coherence_with_a_perfect_and_a_random_generator():
    gen = torch.Generator().manual_seed(1)
    source_labels = torch.randint(0, 10, (10_000,), generator=gen)
    perfect = torch.stack([source_labels.float(), torch.randn(10_000, generator=gen)], dim=1)
    assert M.cross_coherence(_Oracle(), perfect, source_labels) == 1.0
    ignoring = torch.stack([torch.randint(0, 10, (10_000,), generator=gen).float(), torch.zeros(10_000)], dim=1)
    assert abs(M.cross_coherence(_Oracle(), ignoring, source_labels) - 0.1) < 0.015


def test_joint_coherence():
    labels = torch.arange(1000) % 10
    rows = torch.stack([labels.float(), torch.zeros(1000)], dim=1)
    clfs = {"a": _Oracle(), "b": _Oracle(), "c": _Oracle()}
    assert M.joint_coherence(clfs, {"a": rows, "b": rows, "c": rows}) == 1.0
    shifted = torch.stack([((labels + 1) % 10).float(), torch.zeros(1000)], dim=1)
    assert M.joint_coherence(clfs, {"a": rows, "b": shifted}) == 0.0
    gen = torch.Generator().manual_seed(2)
    rand = torch.stack([torch.randint(0, 10, (1000,), generator=gen).float(), torch.zeros(1000)], dim=1)
    assert abs(M.joint_coherence(clfs, {"a": rows, "b": rand}) - 0.1) < 0.04
    predictions = {"a": labels, "b": labels, "c": (labels + (labels == 3).long()) % 10}
    assert M.joint_coherence(predictions) == pytest.approx(0.9), "or from predicted digits directly"


def test_coherence_input_errors():
    with pytest.raises(ValueError, match="same length"):
        M.coherence(torch.tensor([1, 2]), torch.tensor([1]))
    with pytest.raises(TypeError, match="pred"):
        M.coherence(torch.tensor([1.0, 2.0]), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="non-empty"):
        M.coherence(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long))
    with pytest.raises(TypeError, match="classifier"):
        M.cross_coherence(object(), torch.zeros(3, 2), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="generated"):
        M.cross_coherence(_Oracle(), torch.zeros(4, 2), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="at least two"):
        M.joint_coherence({"a": _Oracle()}, {"a": torch.zeros(3, 2)})
    with pytest.raises(ValueError, match="no classifier"):
        M.joint_coherence({"a": _Oracle()}, {"a": torch.zeros(3, 2), "b": torch.zeros(3, 2)})
    with pytest.raises(TypeError, match="predictions"):
        M.joint_coherence({"a": torch.zeros(3), "b": torch.zeros(3)})
    with pytest.raises(ValueError, match="same, non-zero number of rows"):
        M.joint_coherence({"a": _Oracle(), "b": _Oracle()}, {"a": torch.zeros(3, 2), "b": torch.zeros(4, 2)})


# --- 2D mode metrics ------------------------------------------------------------------------------------------------


def test_samples_exactly_at_the_modes():
    for modes, std in ((RING_MODES, RING_STD), (GRID_MODES, GRID_STD)):
        samples = modes.repeat(7, 1)
        m = M.mode_metrics(samples, modes, std)
        assert m["modes_covered"] == len(modes) and m["hq_fraction"] == 1.0
        assert m["reverse_kl"] == pytest.approx(0.0, abs=1e-12)


def test_samples_far_from_the_modes():
    far = torch.full((500, 2), 10.0)
    m = M.mode_metrics(far, RING_MODES, RING_STD)
    assert m["modes_covered"] == 0 and m["hq_fraction"] == 0.0
    assert m["reverse_kl"] == pytest.approx(math.log(8)), "no high-quality sample: reported as total collapse"
    between = torch.tensor([[0.0, 0.0]]).repeat(10, 1)  # the centre of the ring: 1 unit (100 std) from every mode
    assert M.mode_metrics(between, RING_MODES, RING_STD)["modes_covered"] == 0


def test_collapse_onto_one_mode():
    collapsed = RING_MODES[3] + 0.5 * RING_STD * torch.randn(1000, 2, generator=torch.Generator().manual_seed(0))
    m = M.mode_metrics(collapsed, RING_MODES, RING_STD)
    assert m["modes_covered"] == 1 and m["hq_fraction"] == 1.0
    assert m["reverse_kl"] == pytest.approx(math.log(8))


def test_true_mixture_samples_score_well():
    for sample, modes, std in ((ring_mixture, RING_MODES, RING_STD), (grid_mixture, GRID_MODES, GRID_STD)):
        m = M.mode_metrics(sample(5000, seed=0, device="cpu"), modes, std)
        assert m["modes_covered"] == len(modes)
        # P(|eps| <= 3 std) for a 2D Gaussian is 1 - exp(-9/2) = 0.989
        assert abs(m["hq_fraction"] - (1 - math.exp(-4.5))) < 0.006
        assert m["reverse_kl"] < 0.01


def test_reverse_kl_of_an_uneven_histogram_matches_scipy():
    counts = [30, 10, 0, 5, 0, 0, 1, 4]  # high-quality samples per ring mode, unevenly spread
    samples = torch.cat([RING_MODES[k].repeat(n, 1) for k, n in enumerate(counts)])
    m = M.mode_metrics(samples, RING_MODES, RING_STD)
    assert m["modes_covered"] == 5
    assert m["reverse_kl"] == pytest.approx(float(scipy.stats.entropy(counts, np.full(8, 1 / 8))), rel=1e-12)


def test_half_the_modes():
    samples = RING_MODES[::2].repeat(10, 1)  # 4 of the 8 modes, evenly
    m = M.mode_metrics(samples, RING_MODES, RING_STD)
    assert m["modes_covered"] == 4 and m["reverse_kl"] == pytest.approx(math.log(2))
    assigned = M.mode_assignments(samples, RING_MODES, RING_STD)
    assert assigned.tolist() == list(range(0, 8, 2)) * 10


def test_mode_metric_errors():
    with pytest.raises(ValueError, match="samples"):
        M.mode_metrics(torch.tensor([[float("nan"), 0.0]]), RING_MODES, RING_STD)
    with pytest.raises(ValueError, match="samples, modes"):
        M.mode_metrics(torch.zeros(3, 3), RING_MODES, RING_STD)
    with pytest.raises(ValueError, match="std"):
        M.mode_metrics(torch.zeros(3, 2), RING_MODES, 0.0)
    with pytest.raises(ValueError, match="samples"):
        M.mode_metrics(torch.zeros(0, 2), RING_MODES, RING_STD)


# --- Fréchet distance -----------------------------------------------------------------------------------------------


def _reference_fd(a: np.ndarray, b: np.ndarray) -> float:
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(ca @ cb).real
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(ca + cb - 2 * covmean))


def test_frechet_identical_and_shifted():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(500, 8, generator=gen, dtype=torch.float64) @ torch.randn(8, 8, generator=gen, dtype=torch.float64)
    assert M.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    delta = torch.tensor([1.0, -2.0, 0.5, 0, 0, 0, 0, 3.0], dtype=torch.float64)
    assert M.frechet_distance(a, a + delta) == pytest.approx(float(delta.pow(2).sum()), rel=1e-8, abs=1e-8)


def test_frechet_matches_scipy_and_is_symmetric():
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(300, 5, generator=gen, dtype=torch.float64)
    b = 1.5 * torch.randn(200, 5, generator=gen, dtype=torch.float64) @ torch.randn(5, 5, generator=gen,
                                                                                    dtype=torch.float64) + 0.3
    ref = _reference_fd(a.numpy(), b.numpy())
    assert M.frechet_distance(a, b) == pytest.approx(ref, rel=1e-6)
    assert M.frechet_distance(b, a) == pytest.approx(ref, rel=1e-6)
    assert M.frechet_distance(a.float().numpy(), b.float()) == pytest.approx(ref, rel=1e-4), "numpy and float32 too"


def test_frechet_with_singular_covariance():
    gen = torch.Generator().manual_seed(2)
    a = torch.randn(10, 32, generator=gen)  # fewer samples than features: rank-deficient covariances
    b = torch.randn(10, 32, generator=gen) + 1.0
    d = M.frechet_distance(a, b)
    # reference in float64: tr((S_a S_b)^{1/2}) from the eigenvalues of S_a S_b (real and >= 0 up to round-off)
    A, B = a.double().numpy(), b.double().numpy()
    ca, cb = np.cov(A, rowvar=False), np.cov(B, rowvar=False)
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvals(ca @ cb).real, 0, None)).sum()
    ref = float(((A.mean(0) - B.mean(0)) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * trace_sqrt)
    assert math.isfinite(d) and d == pytest.approx(ref, rel=1e-6)


def test_frechet_errors():
    with pytest.raises(ValueError, match="feats_a"):
        M.frechet_distance(torch.tensor([[float("nan"), 1.0], [0.0, 1.0]]), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="feature size"):
        M.frechet_distance(torch.zeros(3, 2), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="at least 2 rows"):
        M.frechet_distance(torch.zeros(1, 2), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="feats_b"):
        M.frechet_distance(torch.zeros(3, 2), torch.zeros(3))
    with pytest.raises(TypeError, match="feats_a"):
        M.frechet_distance("features", torch.zeros(3, 2))


# --- linear probe ---------------------------------------------------------------------------------------------------


def test_linear_probe_separable_and_random():
    gen = torch.Generator().manual_seed(0)
    centres = 4 * torch.randn(10, 6, generator=gen)
    y_train, y_test = torch.arange(600) % 10, torch.arange(300) % 10
    z_train = centres[y_train] + torch.randn(600, 6, generator=gen)
    z_test = centres[y_test] + torch.randn(300, 6, generator=gen)
    acc = M.linear_probe_accuracy(z_train, y_train, z_test, y_test)
    assert acc > 0.97
    assert acc == M.linear_probe_accuracy(z_train, y_train, z_test, y_test), "deterministic"
    noise_train, noise_test = torch.randn(600, 6, generator=gen), torch.randn(300, 6, generator=gen)
    chance = M.linear_probe_accuracy(noise_train, y_train, noise_test, y_test)
    assert chance < 0.2, "codes that carry no digit information give chance accuracy"


def test_linear_probe_errors():
    z, y = torch.zeros(5, 2), torch.zeros(5, dtype=torch.long)
    with pytest.raises(ValueError, match="z_train, y_train"):
        M.linear_probe_accuracy(z, y[:4], z, y)
    with pytest.raises(ValueError, match="feature size"):
        M.linear_probe_accuracy(z, y, torch.zeros(5, 3), y)
    with pytest.raises(TypeError, match="y_test"):
        M.linear_probe_accuracy(z, y, z, y.float())
    with pytest.raises(ValueError, match="z_test"):
        M.linear_probe_accuracy(z, y, torch.full((5, 2), float("inf")), y)


# --- Fréchet distances with the course's classifiers ----------------------------------------------------------------


def test_frechet_baseline_and_to_data():
    from mmlib.data import load_multimodal_digits

    test = load_multimodal_digits("cpu").test
    for modality in ("image", "audio"):
        base = M.frechet_baseline(modality, device="cpu")
        assert math.isfinite(base) and base > 0
        assert M.frechet_to_data(modality, test[modality], device="cpu") == pytest.approx(0.0, abs=1e-6)
    shuffled = test["image"].flip(-1)  # mirrored digits are further from the data than real halves are
    assert M.frechet_to_data("image", shuffled, device="cpu") > M.frechet_baseline("image", device="cpu")
    with pytest.raises(ValueError, match="modality"):
        M.frechet_baseline("video")
