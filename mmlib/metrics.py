"""Evaluation metrics: mode coverage on the 2D mixtures (notebook 03), coherence across modalities (06-08),
linear probes of latent codes (04, 05, 07) and Fréchet distances in classifier feature space (06-08).

Every function validates its input and raises ``ValueError``/``TypeError`` naming the argument; all return plain
Python floats (or a dict of them), computed in float64 where numerical care matters.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Protocol

import torch

from mmlib.checks import as_tensor, check_choice, check_int, check_positive, check_tensor

__all__ = [
    "coherence",
    "cross_coherence",
    "joint_coherence",
    "linear_probe_accuracy",
    "frechet_distance",
    "frechet_to_data",
    "frechet_baseline",
    "mode_assignments",
    "mode_metrics",
]


class _Predicts(Protocol):
    def predict(self, x: torch.Tensor) -> torch.Tensor: ...


def _labels(x: object, name: str) -> torch.Tensor:
    """A non-empty 1-D integer tensor (tensors and NumPy arrays accepted)."""
    t = as_tensor(x, name) if not isinstance(x, torch.Tensor) else x
    t = check_tensor(t, name, ndim=1)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name}: expected integer class labels, got dtype {t.dtype}")
    return t


def _features(x: object, name: str) -> torch.Tensor:
    """A finite 2-D floating tensor ``(N, d)`` (tensors and NumPy arrays accepted), as float64 on the CPU."""
    t = as_tensor(x, name) if not isinstance(x, torch.Tensor) else x
    if not t.is_floating_point():
        t = t.double()
    t = check_tensor(t, name, ndim=2)
    return t.detach().to("cpu", torch.float64)


# ---------------------------------------------------------------------------------------------------------------------
# Coherence (notebooks 06-08)
# ---------------------------------------------------------------------------------------------------------------------


def coherence(pred: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of samples whose predicted digit is the intended one: ``(1/N) sum_i [pred_i = labels_i]``.

    A perfect generator scores 1; one that ignores the digit scores about 1/10 (notebooks 06-08).
    """
    pred = _labels(pred, "pred")
    labels = _labels(labels, "labels")
    if pred.shape[0] != labels.shape[0]:
        raise ValueError(f"pred, labels: expected the same length, got {pred.shape[0]} and {labels.shape[0]}")
    return int((pred == labels.to(pred.device)).sum()) / int(pred.shape[0])


def cross_coherence(classifier: _Predicts, generated: torch.Tensor, source_labels: torch.Tensor) -> float:
    """Cross-modal coherence of ``A -> B`` generation: ``coherence(classifier_B(generated_B), label(source_A))``.

    ``generated`` holds modality B generated from the source samples of modality A, row by row; ``source_labels``
    are the digits of those sources; ``classifier`` is B's evaluation classifier (``load_classifiers()[B]``).
    Used in notebooks 06 (conditional GAN) and 07 (multimodal VAE).
    """
    if not callable(getattr(classifier, "predict", None)):
        raise TypeError(f"classifier: expected an object with .predict(x), got {type(classifier).__name__}")
    source_labels = _labels(source_labels, "source_labels")
    if not isinstance(generated, torch.Tensor):
        raise TypeError(f"generated: expected a torch.Tensor, got {type(generated).__name__}")
    if generated.ndim == 0 or generated.shape[0] != source_labels.shape[0]:
        raise ValueError(
            f"generated, source_labels: expected one generated row per source label ({source_labels.shape[0]}), "
            f"got shape {tuple(generated.shape)}"
        )
    check_input = getattr(classifier, "check_input", None)
    if callable(check_input):
        generated = check_input(generated, "generated")
    return coherence(classifier.predict(generated), source_labels)


def _checked(classifier: object, x: torch.Tensor, name: str) -> torch.Tensor:
    """``classifier.check_input(x, name)`` when the classifier has one (mmlib's do), else ``x`` unchanged."""
    check_input = getattr(classifier, "check_input", None)
    return check_input(x, name) if callable(check_input) else x


def joint_coherence(
    classifiers: Mapping[str, _Predicts] | Mapping[str, torch.Tensor],
    samples: Mapping[str, torch.Tensor] | None = None,
) -> float:
    """Coherence of joint (unconditional) generation: the fraction of rows ``i`` where every modality's classifier
    predicts the same digit, ``(1/N) sum_i [pred_m(x_i^m) equal for all m]`` (notebooks 07 and 08).

    Two ways to call it:

    - ``joint_coherence(classifiers, samples)``: ``samples`` maps at least two modality names to row-aligned
      generated tensors, ``classifiers`` holds a classifier (``.predict``) for each of them;
    - ``joint_coherence(predictions)``: the predicted digits per modality (1-D integer tensors), already computed.

    A generator whose modalities ignore each other scores about ``10^-(M-1)`` for ``M`` modalities.
    """
    if samples is None:
        if not isinstance(classifiers, Mapping):
            raise TypeError(f"predictions: expected a dict {{modality: digits}}, got {type(classifiers).__name__}")
        if any(callable(getattr(c, "predict", None)) for c in classifiers.values()):
            raise TypeError("samples: missing; call joint_coherence(classifiers, samples) with the generated samples, "
                            "or joint_coherence(predictions) with predicted digits")
        preds = {m: _labels(p, f"predictions[{m!r}]") for m, p in classifiers.items()}
        name = "predictions"
    else:
        if not isinstance(samples, Mapping) or not isinstance(classifiers, Mapping):
            raise TypeError("classifiers, samples: expected dicts keyed by modality name")
        missing = [m for m in samples if m not in classifiers]
        if missing:
            raise ValueError(f"samples, classifiers: no classifier for modality {missing}; have {list(classifiers)}")
        for m in samples:
            if not callable(getattr(classifiers[m], "predict", None)):
                raise TypeError(f"classifiers[{m!r}]: expected a classifier with .predict(x), "
                                f"got {type(classifiers[m]).__name__}")
        for m, x in samples.items():
            if not isinstance(x, torch.Tensor) or x.ndim == 0:
                raise TypeError(f"samples[{m!r}]: expected a tensor with one row per sample, got {type(x).__name__}")
        preds = None
        name = "samples"
    source = preds if preds is not None else samples
    if len(source) < 2:
        raise ValueError(f"{name}: expected at least two modalities to compare, got {list(source)}")
    rows = {m: int(x.shape[0]) for m, x in source.items()}
    if len(set(rows.values())) != 1 or next(iter(rows.values())) == 0:
        raise ValueError(f"{name}: expected the same, non-zero number of rows in every modality, got {rows}")
    if preds is None:
        preds = {m: classifiers[m].predict(_checked(classifiers[m], x, f"samples[{m!r}]")) for m, x in samples.items()}
    first, *others = preds.values()
    agree = torch.ones_like(first, dtype=torch.bool)
    for p in others:
        agree &= p.to(first.device) == first
    return int(agree.sum()) / int(agree.shape[0])


# ---------------------------------------------------------------------------------------------------------------------
# Linear probe (notebooks 04, 05, 07)
# ---------------------------------------------------------------------------------------------------------------------


def linear_probe_accuracy(
    z_train: torch.Tensor,
    y_train: torch.Tensor,
    z_test: torch.Tensor,
    y_test: torch.Tensor,
    *,
    l2: float = 1e-3,
    max_iter: int = 200,
) -> float:
    """Test accuracy of a multinomial logistic regression fitted to ``(z_train, y_train)``: how linearly the codes
    separate the digits.

    Features are standardised with the training mean and standard deviation; then ``W, b`` minimise
    ``(1/N) sum_i -log softmax(W z_i + b)_{y_i} + (l2/2) ||W||_F^2`` by L-BFGS (float64 on the CPU, zero start:
    deterministic). Returns the fraction of test rows with ``argmax(W z + b) = y``.
    """
    z_train, z_test = _features(z_train, "z_train"), _features(z_test, "z_test")
    y_train, y_test = _labels(y_train, "y_train").cpu(), _labels(y_test, "y_test").cpu()
    for (zn, z), (yn, y) in ((("z_train", z_train), ("y_train", y_train)), (("z_test", z_test), ("y_test", y_test))):
        if z.shape[0] != y.shape[0]:
            raise ValueError(f"{zn}, {yn}: expected the same number of rows, got {z.shape[0]} and {y.shape[0]}")
    if z_train.shape[1] != z_test.shape[1]:
        raise ValueError(f"z_train, z_test: expected the same feature size, got {z_train.shape[1]}, {z_test.shape[1]}")
    if int(y_train.min()) < 0 or int(y_test.min()) < 0:
        raise ValueError("y_train, y_test: expected class labels >= 0")
    l2 = check_positive(l2, "l2", allow_zero=True)
    max_iter = check_int(max_iter, "max_iter", low=1)
    classes = int(max(int(y_train.max()), int(y_test.max()))) + 1
    mean = z_train.mean(dim=0)
    std = z_train.std(dim=0, unbiased=False).clamp_min(1e-8)
    a, b = (z_train - mean) / std, (z_test - mean) / std
    weight = torch.zeros(a.shape[1], classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9,
                                  tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(a @ weight + bias, y_train) + 0.5 * l2 * (weight**2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        pred = (b @ weight + bias).argmax(dim=1)
    return float((pred == y_test).double().mean())


# ---------------------------------------------------------------------------------------------------------------------
# Fréchet distance (notebooks 06-08)
# ---------------------------------------------------------------------------------------------------------------------


def frechet_distance(feats_a: torch.Tensor, feats_b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (the FID recipe, with our classifiers' features):

        d^2 = ||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a^{1/2} S_b S_a^{1/2})^{1/2}),

    with ``mu`` the means and ``S`` the unbiased covariances. ``tr((S_a^{1/2} S_b S_a^{1/2})^{1/2})`` equals
    ``tr((S_a S_b)^{1/2})`` but is computed from two symmetric eigendecompositions in float64 (eigenvalues clipped
    at 0), which stays real and stable even when a covariance is singular (fewer samples than features). The result
    is clipped at 0. It is biased upwards for small samples: compare models at the same sample size, and against
    :func:`frechet_baseline` (notebooks 06-08).
    """
    a, b = _features(feats_a, "feats_a"), _features(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feats_a, feats_b: expected the same feature size, got {a.shape[1]} and {b.shape[1]}")
    for name, x in (("feats_a", a), ("feats_b", b)):
        if x.shape[0] < 2:
            raise ValueError(f"{name}: expected at least 2 rows to estimate a covariance, got {x.shape[0]}")
    mu_a, mu_b = a.mean(dim=0), b.mean(dim=0)
    cov_a, cov_b = torch.cov(a.T).reshape(a.shape[1], a.shape[1]), torch.cov(b.T).reshape(b.shape[1], b.shape[1])
    evals_a, evecs_a = torch.linalg.eigh(cov_a)
    sqrt_a = (evecs_a * evals_a.clamp_min(0).sqrt()) @ evecs_a.T
    middle = sqrt_a @ cov_b @ sqrt_a
    middle = 0.5 * (middle + middle.T)
    trace_sqrt = torch.linalg.eigvalsh(middle).clamp_min(0).sqrt().sum()
    d2 = (mu_a - mu_b).pow(2).sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * trace_sqrt
    return max(float(d2), 0.0)


def frechet_to_data(
    modality: str, generated: torch.Tensor, *, split: str = "test", device: torch.device | str | None = None
) -> float:
    """Fréchet distance between the classifier features of ``generated`` samples of ``modality`` and those of the
    real samples of ``split`` (notebooks 06-08). Lower is better; read it next to :func:`frechet_baseline`."""
    from mmlib.classifiers import load_classifiers
    from mmlib.data import MODALITIES, SPLITS, load_multimodal_digits

    modality = check_choice(modality, "modality", MODALITIES)
    split = check_choice(split, "split", SPLITS)
    classifier = load_classifiers(device)[modality]
    generated = classifier.check_input(generated, "generated")
    real = load_multimodal_digits(device).split(split)[modality]
    return frechet_distance(classifier.features(generated), classifier.features(real))


def frechet_baseline(modality: str, *, split: str = "test", device: torch.device | str | None = None) -> float:
    """The Fréchet distance between two halves of the real ``split`` (even vs odd rows, in file order) in the
    classifier features of ``modality``: the score of a perfect generator at this sample size (about half the split).
    A model's :func:`frechet_to_data` near this value is as close to the data as the data is to itself."""
    from mmlib.classifiers import load_classifiers
    from mmlib.data import MODALITIES, SPLITS, load_multimodal_digits

    modality = check_choice(modality, "modality", MODALITIES)
    split = check_choice(split, "split", SPLITS)
    feats = load_classifiers(device)[modality].features(load_multimodal_digits(device).split(split)[modality])
    return frechet_distance(feats[0::2], feats[1::2])


# ---------------------------------------------------------------------------------------------------------------------
# Mode coverage on the 2D mixtures (notebook 03)
# ---------------------------------------------------------------------------------------------------------------------


def mode_assignments(samples: torch.Tensor, modes: torch.Tensor, std: float, *, threshold: float = 3.0) -> torch.Tensor:
    """For each sample, the index of its nearest mode if it is *high quality* (Euclidean distance to that mode at
    most ``threshold * std``), else ``-1``. int64 ``(N,)`` on the samples' device (notebook 03)."""
    samples = check_tensor(samples, "samples", ndim=2, floating=True)
    modes = check_tensor(modes, "modes", ndim=2, floating=True)
    if samples.shape[1] != modes.shape[1]:
        raise ValueError(f"samples, modes: expected the same dimension, got {samples.shape[1]} and {modes.shape[1]}")
    std = check_positive(std, "std")
    threshold = check_positive(threshold, "threshold")
    # float64 on the CPU: exact enough for points 0.01 apart, and available on every backend (MPS has no float64)
    distance = torch.cdist(samples.detach().cpu().double(), modes.detach().cpu().double())  # (N, K)
    nearest_distance, nearest = distance.min(dim=1)
    assigned = torch.where(nearest_distance <= threshold * std, nearest, torch.full_like(nearest, -1))
    return assigned.to(samples.device)


def mode_metrics(
    samples: torch.Tensor, modes: torch.Tensor, std: float, *, threshold: float = 3.0
) -> dict[str, float | int]:
    """PacGAN/VEEGAN's mode-collapse metrics for samples of a 2D mixture of ``K`` equal-weight Gaussians (notebook 03).

    - a sample is **high quality** when its distance to the nearest mode is at most ``3 std``;
    - ``modes_covered``: the number of modes with at least one high-quality sample (``K`` at best);
    - ``hq_fraction``: the fraction of samples that are high quality;
    - ``reverse_kl``: ``KL(p || u) = sum_k p_k log(K p_k)``, where ``p_k = n_k / n_hq`` is the share of the
      high-quality samples assigned to mode ``k`` and ``u`` the uniform distribution of the true mixture.
      Empty modes contribute ``0 log 0 = 0``, so the value is finite and lies in ``[0, log K]``: 0 when the
      high-quality samples spread evenly, ``log K`` when they all sit on one mode. (The *forward* KL(u || p) would be
      infinite as soon as one mode is missed, which is why the papers report the reverse one.) With no high-quality
      sample at all, ``p`` is undefined; we then report ``log K``, the value of total collapse, and
      ``modes_covered = 0`` says why.

    Returns ``{"modes_covered": int, "hq_fraction": float, "reverse_kl": float}``.
    """
    assigned = mode_assignments(samples, modes, std, threshold=threshold)
    k = int(modes.shape[0])
    hq = assigned >= 0
    counts = torch.bincount(assigned[hq].cpu(), minlength=k).double()
    n_hq = float(counts.sum())
    if n_hq == 0:
        reverse_kl = math.log(k)
    else:
        p = counts / n_hq
        nonzero = p > 0
        reverse_kl = float((p[nonzero] * torch.log(k * p[nonzero])).sum())
    return {
        "modes_covered": int((counts > 0).sum()),
        "hq_fraction": int(hq.sum()) / int(hq.shape[0]),
        "reverse_kl": max(reverse_kl, 0.0),
    }
