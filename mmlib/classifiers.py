"""Evaluation classifiers: one small network per modality of the multimodal digits (used by ``mmlib.metrics``).

A generated image, caption or sound "shows digit d" when the modality's classifier says so; chapters 06-08 build
their coherence metrics on this, and the classifiers' penultimate layer gives the features of a Fréchet distance.
The trained weights ship in ``data/classifiers/<modality>.pt`` (checked against the SHA-256 recorded below, loaded
with ``weights_only=True``); ``python -m mmlib run classifiers --out DIR`` retrains all three from scratch,
deterministically, and reports their held-out (test) accuracies.

Each classifier is trained on the training split with the course's trainer; the validation split picks the best
checkpoint (model selection); the test split is only used to report the accuracy.
"""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mmlib.checks import check_choice, check_folder, check_int, check_tensor
from mmlib.data import (
    AUDIO_BINS,
    AUDIO_FRAMES,
    END_TOKEN,
    MODALITIES,
    PAD_TOKEN,
    TEXT_LENGTH,
    TEXT_VOCAB,
    data_dir,
    load_multimodal_digits,
    read_verified,
)
from mmlib.device import resolve_device
from mmlib.experiments import Result, register

__all__ = [
    "FEATURE_DIM",
    "CLASSIFIER_SHA256",
    "Classifier",
    "build_classifier",
    "train_classifier",
    "train_classifiers",
    "save_classifiers",
    "load_classifiers",
]

#: Width of the penultimate layer, the features used by Fréchet distances.
FEATURE_DIM: int = 64
#: SHA-256 of the committed weights ``data/classifiers/<modality>.pt`` (update after retraining on purpose).
CLASSIFIER_SHA256: dict[str, str] = {
    "image": "166684d191ff3a88e0905c651f4fc9f9c790175f89ea6044c9f0d37c700e9026",
    "text": "ab38a0cb159fe2f4f0eb9c0056f05fff8cc0048fffe164c77d547f8a13067e48",
    "audio": "b72a33e86f0116851f50cc075a9df9455307cfd08211530b4e7a7686af7ed837",
}
_SUBDIR = "classifiers"


# ---------------------------------------------------------------------------------------------------------------------
# The networks: a trunk that ends in FEATURE_DIM features, and a linear head to the 10 digits
# ---------------------------------------------------------------------------------------------------------------------


class _ImageTrunk(nn.Module):
    """(N, 1, 8, 8) -> (N, FEATURE_DIM): two 3x3 conv blocks with 2x2 max-pooling, then a dense layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),  # (N, 32, 8, 8)
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),  # (N, 32, 8, 8)
            nn.MaxPool2d(2),  # (N, 32, 4, 4)
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),  # (N, 64, 4, 4)
            nn.MaxPool2d(2),  # (N, 64, 2, 2)
        )
        self.dense = nn.Sequential(nn.Flatten(), nn.Linear(64 * 2 * 2, FEATURE_DIM), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(self.conv(x))


class _TextTrunk(nn.Module):
    """(N, TEXT_LENGTH) token ids -> (N, FEATURE_DIM): embedding, two 1D convolutions, max over positions.

    Tokens after a row's first end/pad token are replaced by padding first, so the classifier reads exactly what
    :func:`mmlib.data.decode_text` reads. Letter case is a style, not content, so a token is embedded as
    ``embed(its lower-case symbol) + embed_case(upper or not)``: "ZÉRO" is read as the letters of "zéro" in capitals
    even if no capitalised "zéro" was in the training split.
    """

    def __init__(self) -> None:
        super().__init__()
        lower = [TEXT_VOCAB.index(s.lower()) if len(s) == 1 else i for i, s in enumerate(TEXT_VOCAB)]
        upper = [int(len(s) == 1 and s != s.lower()) for s in TEXT_VOCAB]
        self.register_buffer("lower_id", torch.tensor(lower), persistent=False)
        self.register_buffer("is_upper", torch.tensor(upper), persistent=False)
        self.embed = nn.Embedding(len(TEXT_VOCAB), 16, padding_idx=PAD_TOKEN)
        self.embed_case = nn.Embedding(2, 16)
        self.conv = nn.Sequential(
            nn.Conv1d(16, 64, 3, padding=1), nn.ReLU(),  # (N, 64, L)
            nn.Conv1d(64, 64, 3, padding=1), nn.ReLU(),  # (N, 64, L)
        )
        self.dense = nn.Sequential(nn.Linear(64, FEATURE_DIM), nn.ReLU())

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        stop = (tokens == END_TOKEN) | (tokens == PAD_TOKEN)
        after_stop = torch.cumsum(stop.long(), dim=1) > 0
        tokens = torch.where(after_stop, torch.full_like(tokens, PAD_TOKEN), tokens)
        e = self.embed(self.lower_id[tokens]) + self.embed_case(self.is_upper[tokens])  # (N, L, 16)
        h = self.conv(e.transpose(1, 2))  # (N, 64, L)
        return self.dense(h.amax(dim=2))


class _AudioTrunk(nn.Module):
    """(N, F, T) spectrograms -> (N, FEATURE_DIM): four 3x3 conv layers, two max-pools, then the maximum over
    frequency and time — so a pitch shift or a later onset (styles) moves the motif but not the features."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (N, 8, F/2, T/2)
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (N, 16, F/4, T/4)
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),  # (N, 32, F/4, T/4): each unit sees ~18x18 input cells
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        )
        self.dense = nn.Sequential(nn.Linear(32, FEATURE_DIM), nn.ReLU())

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        h = self.conv(spec.unsqueeze(1))
        return self.dense(h.amax(dim=(2, 3)))


_TRUNKS: dict[str, Callable[[], nn.Module]] = {"image": _ImageTrunk, "text": _TextTrunk, "audio": _AudioTrunk}


class Classifier(nn.Module):
    """A digit classifier for one modality: ``logits = head(trunk(x))``, ``features = trunk(x)``.

    :meth:`predict` and :meth:`features` run in eval mode without gradients, in chunks, on the classifier's device
    (the input is moved there and the result moved back to the input's device).
    """

    def __init__(self, modality: str) -> None:
        super().__init__()
        self.modality = check_choice(modality, "modality", MODALITIES)
        self.trunk = _TRUNKS[modality]()
        self.head = nn.Linear(FEATURE_DIM, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def check_input(self, x: object, name: str = "x") -> torch.Tensor:
        """Validate ``x`` as a batch of this modality (images ``(N, 1, 8, 8)`` or ``(N, 8, 8)`` in [0, 1]-ish floats,
        token ids ``(N, TEXT_LENGTH)``, spectrograms ``(N, F, T)``); returns it in the network's layout."""
        if self.modality == "image":
            x = check_tensor(x, name, ndim=(3, 4), floating=True)
            if x.ndim == 3:
                x = x.unsqueeze(1)
            if tuple(x.shape[1:]) != (1, 8, 8):
                raise ValueError(f"{name}: expected images of shape (N, 1, 8, 8) or (N, 8, 8), got {tuple(x.shape)}")
        elif self.modality == "text":
            x = check_tensor(x, name, shape=(None, TEXT_LENGTH), integer=True)
            if int(x.min()) < 0 or int(x.max()) >= len(TEXT_VOCAB):
                raise ValueError(
                    f"{name}: expected token ids in 0..{len(TEXT_VOCAB) - 1}, got {int(x.min())}..{int(x.max())}"
                )
        else:
            x = check_tensor(x, name, shape=(None, AUDIO_BINS, AUDIO_FRAMES), floating=True)
        return x

    @torch.no_grad()
    def _run_chunked(
        self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, chunk: int = 2048
    ) -> torch.Tensor:
        was_training = self.training
        self.eval()
        try:
            out = [fn(x[i : i + chunk].to(self.device)) for i in range(0, x.shape[0], chunk)]
        finally:
            self.train(was_training)
        return torch.cat(out).to(x.device)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores ``(N, 10)`` (no gradients)."""
        x = self.check_input(x)
        return self._run_chunked(self.forward, x.float() if self.modality != "text" else x)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted digits, int64 ``(N,)``: ``argmax_c logits_c(x)``."""
        return self.logits(x).argmax(dim=1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features ``(N, FEATURE_DIM)`` (no gradients), for Fréchet distances (mmlib.metrics)."""
        x = self.check_input(x)
        return self._run_chunked(self.trunk, x.float() if self.modality != "text" else x)

    def accuracy(self, x: torch.Tensor, labels: torch.Tensor) -> float:
        """Fraction of rows whose predicted digit equals ``labels``."""
        labels = check_tensor(labels, "labels", ndim=1, integer=True)
        pred = self.predict(x)
        if pred.shape[0] != labels.shape[0]:
            raise ValueError(f"labels: expected {pred.shape[0]} labels (one per row of x), got {labels.shape[0]}")
        return int((pred == labels.to(pred.device)).sum()) / int(labels.shape[0])


def build_classifier(modality: str, *, seed: int = 0, device: torch.device | str | None = None) -> Classifier:
    """A freshly initialised classifier for ``modality``; the initial weights depend only on ``seed`` (drawn on the
    CPU with the global generator forked, so the caller's random state is untouched)."""
    modality = check_choice(modality, "modality", MODALITIES)
    seed = check_int(seed, "seed", low=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Classifier(modality)
    return model.to(resolve_device(device))


# ---------------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Recipe:
    steps: int
    lr: float
    batch_size: int
    eval_every: int
    weight_decay: float = 0.0
    shift: int = 0  # random translation by up to this many pixels (image augmentation)


_RECIPES: dict[str, _Recipe] = {
    "image": _Recipe(steps=1800, lr=2e-3, batch_size=64, eval_every=100, weight_decay=1e-4, shift=1),
    "text": _Recipe(steps=300, lr=3e-3, batch_size=64, eval_every=50),
    "audio": _Recipe(steps=400, lr=2e-3, batch_size=64, eval_every=50),
}
_SEED_OFFSET = {"image": 0, "text": 1000, "audio": 2000}


def _random_shift(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image ``(B, 1, H, W)`` by its own random offset in ``[-max_shift, max_shift]^2`` (zero fill)."""
    b, _, h, w = images.shape
    padded = nn.functional.pad(images, (max_shift,) * 4)
    offsets = torch.randint(0, 2 * max_shift + 1, (b, 2), generator=generator, device=images.device)
    rows = offsets[:, 0, None] + torch.arange(h, device=images.device)  # (B, H)
    cols = offsets[:, 1, None] + torch.arange(w, device=images.device)  # (B, W)
    batch = torch.arange(b, device=images.device)[:, None, None]
    return padded[batch, 0, rows[:, :, None], cols[:, None, :]].unsqueeze(1)


def train_classifier(
    modality: str, *, seed: int = 0, device: torch.device | str | None = None, progress: bool = False
) -> tuple[Classifier, dict[str, float]]:
    """Train the evaluation classifier of ``modality`` on the training split; returns it and its accuracies.

    Cross-entropy ``-log softmax(logits)_y`` minimised with Adam on minibatches (images randomly shifted by up to one
    pixel); every ``eval_every`` steps the validation accuracy is measured and the best state so far kept (ties go
    to the lower validation loss). The returned dict holds ``val_acc`` and the held-out ``test_acc``.
    """
    from mmlib.train import make_optimizer, train

    modality = check_choice(modality, "modality", MODALITIES)
    seed = check_int(seed, "seed", low=0)
    dev = resolve_device(device)
    recipe = _RECIPES[modality]
    base = seed + _SEED_OFFSET[modality]
    ds = load_multimodal_digits(dev)
    x_train, y_train = ds.train[modality], ds.train.label
    x_val, y_val = ds.val[modality], ds.val.label

    model = build_classifier(modality, seed=base, device=dev)
    optimizer = make_optimizer(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    generator = torch.Generator(device=dev)
    generator.manual_seed(base)

    def step(x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        if recipe.shift:
            x = _random_shift(x, recipe.shift, generator)
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        return {"loss": loss.detach()}

    best: tuple[float, float] | None = None
    best_state: dict[str, torch.Tensor] = {}
    for round_ in range(recipe.steps // recipe.eval_every):
        model.train()
        train(step, (x_train, y_train), steps=recipe.eval_every, batch_size=recipe.batch_size,
              log_every=recipe.eval_every, seed=base + round_, desc=f"{modality} classifier", progress=progress)
        model.eval()
        with torch.no_grad():
            logits = model(x_val)
            val_loss = float(nn.functional.cross_entropy(logits, y_val))
            val_acc = int((logits.argmax(1) == y_val).sum()) / int(y_val.shape[0])
        if best is None or (val_acc, -val_loss) > best:
            best = (val_acc, -val_loss)
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    model.eval()
    assert best is not None
    return model, {"val_acc": best[0], "test_acc": model.accuracy(ds.test[modality], ds.test.label)}


def _timed_classifier(modality: str, seed: int, device: torch.device) -> tuple[Classifier, dict[str, float], float]:
    """:func:`train_classifier` and its wall time in seconds (one job of :func:`train_classifiers`)."""
    start = time.perf_counter()
    model, acc = train_classifier(modality, seed=seed, device=device)
    return model, acc, round(time.perf_counter() - start, 2)


def train_classifiers(
    *, seed: int = 0, device: torch.device | str | None = None, progress: bool = False
) -> tuple[dict[str, Classifier], dict[str, float]]:
    """Train all three classifiers; returns them and the figures ``acc_<modality>`` (test), ``val_acc_<modality>``
    and ``seconds_<modality>`` (wall time; longer when trainings share a core).

    The three trainings do not depend on each other: they run side by side, each on one CPU thread
    (:func:`mmlib.parallel.run_jobs`; on a GPU one after the other), the image's (the longest) first. Each is seeded
    by its modality and ``seed``, so the weights are those of the trainings run one after the other on one thread
    (``OMP_NUM_THREADS=1``). ``progress`` shows a bar over the finished trainings."""
    from mmlib.parallel import run_jobs

    seed = check_int(seed, "seed", low=0)
    dev = resolve_device(device)
    order = ("image", "audio", "text")  # the longest first (run_jobs hands out jobs in this order)
    done = run_jobs([(_timed_classifier, {"modality": m, "seed": seed, "device": dev}) for m in order],
                    device=dev, progress=progress, desc="evaluation classifiers")
    by_modality = dict(zip(order, done))
    models: dict[str, Classifier] = {}
    figures: dict[str, float] = {}
    for modality in MODALITIES:
        models[modality], acc, seconds = by_modality[modality]
        figures[f"acc_{modality}"] = acc["test_acc"]
        figures[f"val_acc_{modality}"] = acc["val_acc"]
        figures[f"seconds_{modality}"] = seconds
    return models, figures


# ---------------------------------------------------------------------------------------------------------------------
# Saving and loading the committed weights
# ---------------------------------------------------------------------------------------------------------------------


def _state_bytes(model: Classifier) -> bytes:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def save_classifiers(models: dict[str, Classifier], folder: str | Path) -> dict[str, str]:
    """Write each model's state dict to ``folder/<modality>.pt``; returns their SHA-256 (to record in
    ``CLASSIFIER_SHA256`` and ``data/README.md`` when the committed weights are replaced on purpose)."""
    from mmlib.checkpoint import atomic_write_bytes

    if not isinstance(models, dict) or not models:
        raise TypeError(f"models: expected a non-empty dict {{modality: Classifier}}, got {models!r:.80}")
    folder = check_folder(folder, "folder")
    digests = {}
    for modality, model in models.items():
        check_choice(modality, "models", MODALITIES)
        if not isinstance(model, Classifier):
            raise TypeError(f"models[{modality!r}]: expected a Classifier, got {type(model).__name__}")
        raw = _state_bytes(model)
        atomic_write_bytes(folder / f"{modality}.pt", raw)
        digests[modality] = hashlib.sha256(raw).hexdigest()
    return digests


_LOADED: dict[tuple[str, str], dict[str, Classifier]] = {}


def load_classifiers(device: torch.device | str | None = None) -> dict[str, Classifier]:
    """The committed evaluation classifiers ``{"image": ..., "text": ..., "audio": ...}`` on ``device``, in eval mode.

    Each ``data/classifiers/<modality>.pt`` is checked against ``CLASSIFIER_SHA256`` (a mismatch is a ``ValueError``
    saying how to restore or regenerate it) and loaded with ``torch.load(..., weights_only=True)``. Cached per device:
    treat the returned models as read-only.
    """
    dev = resolve_device(device)
    folder = data_dir() / _SUBDIR
    key = (str(folder), str(dev))
    if key not in _LOADED:
        models = {}
        for modality in MODALITIES:
            path = folder / f"{modality}.pt"
            try:
                raw = read_verified(path, CLASSIFIER_SHA256[modality])
            except ValueError as err:
                raise ValueError(
                    f"{err} To regenerate the classifiers instead, run `python -m mmlib run classifiers --out DIR` "
                    "and follow data/README.md."
                ) from None
            state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
            model = Classifier(modality)
            model.load_state_dict(state)
            models[modality] = model.to(dev).eval().requires_grad_(False)
        _LOADED[key] = models
    return _LOADED[key]


@register("classifiers", "Retrain the three evaluation classifiers from scratch; report their held-out accuracies")
def classifiers_experiment(seed: int = 0, device: torch.device | None = None) -> Result:
    """Experiment ``classifiers``: retrain image, text and audio classifiers (deterministic for a given seed and
    machine) and report ``acc_<modality>`` on the test split. ``arrays.npz`` holds each model's test predictions
    (``pred_<modality>``), the test labels (``label``), and every weight as ``weights_<modality>.<parameter>``;
    ``python -m mmlib.classifiers DIR`` writes the ``.pt`` files (see data/README.md)."""
    models, figures = train_classifiers(seed=seed, device=device)
    ds = load_multimodal_digits(device)
    arrays: dict[str, torch.Tensor] = {"label": ds.test.label}
    for modality, model in models.items():
        arrays[f"pred_{modality}"] = model.predict(ds.test[modality])
        for name, value in model.state_dict().items():
            arrays[f"weights_{modality}.{name}"] = value
    committed = {}
    try:
        for modality, model in load_classifiers(device).items():
            committed[f"committed_acc_{modality}"] = model.accuracy(ds.test[modality], ds.test.label)
    except (ValueError, FileNotFoundError):
        pass  # no usable committed weights (for example while regenerating them): report the retrained ones only
    return Result(metrics={**figures, **committed}, arrays=arrays)


def _main(argv: list[str] | None = None) -> int:
    """``python -m mmlib.classifiers FOLDER [--seed S]``: retrain and write ``FOLDER/<modality>.pt``, print hashes."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m mmlib.classifiers", description=_main.__doc__)
    parser.add_argument("folder", help="where to write image.pt, text.pt and audio.pt (data/classifiers to replace)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    models, figures = train_classifiers(seed=args.seed, device=args.device, progress=True)
    for key, value in figures.items():
        print(f"{key}: {value}")
    for modality, digest in save_classifiers(models, args.folder).items():
        print(f'"{modality}": "{digest}",')
    return 0


if __name__ == "__main__":
    from mmlib.classifiers import _main as main  # the importable module's copy: its functions can go to workers

    raise SystemExit(main())
