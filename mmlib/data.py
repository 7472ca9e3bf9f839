"""All of the course's data, offline: 2D mixtures, linear-Gaussian views and the multimodal digits.

Nothing here downloads anything. The only stored data is ``data/digits.csv.gz`` (the UCI handwritten digits, checked
against a SHA-256 recorded below); every other array is generated from it, or from fixed seeds, deterministically.
``data/README.md`` is the datasheet.

- :func:`ring_mixture`, :func:`grid_mixture` — PacGAN's 2D test beds (notebook 03, mode collapse).
- :func:`linear_gaussian_views` — ``y_j = W_j z + mu_j + eps_j`` with known parameters (notebook 02, probabilistic CCA).
- :func:`load_digit_images` — the 1,797 real 8x8 digits as integer grey levels (notebook 01, likelihoods).
- :func:`load_multimodal_digits` — image, text and audio paired by the digit (notebook 00 tours it; 04-08 model it).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from mmlib.checks import check_choice, check_int, check_path, check_positive, check_tensor
from mmlib.device import resolve_device
from mmlib.experiments import Result, register

__all__ = [
    "MODALITY_SHAPES",
    # 2D mixtures (03)
    "RING_MODES",
    "RING_STD",
    "GRID_MODES",
    "GRID_STD",
    "gaussian_mixture",
    "ring_mixture",
    "grid_mixture",
    # linear-Gaussian views (02)
    "LinearGaussianParams",
    "linear_gaussian_views",
    # digits
    "DIGITS_FILE",
    "DIGITS_SHA256",
    "NUM_LEVELS",
    "SPLITS",
    "MODALITIES",
    "data_dir",
    "read_verified",
    "load_digit_images",
    "split_indices",
    # text
    "TEXT_VOCAB",
    "TEXT_LENGTH",
    "PAD_TOKEN",
    "END_TOKEN",
    "TEXT_LANGUAGES",
    "TEXT_TEMPLATES",
    "TEXT_CASES",
    "caption",
    "encode_text",
    "decode_text",
    # audio
    "SAMPLE_RATE",
    "AUDIO_SAMPLES",
    "AUDIO_BINS",
    "AUDIO_FRAMES",
    "N_FFT",
    "HOP_LENGTH",
    "AUDIO_BIN_HZ",
    "DIGIT_INTERVALS",
    "AUDIO_STYLE_RANGES",
    "audio_clip",
    "waveform_to_spectrogram",
    "spectrogram_to_audio",
    # the dataset
    "Split",
    "MultimodalDigits",
    "load_multimodal_digits",
    "audio_waveform",
    "export_arrays",
]

# ---------------------------------------------------------------------------------------------------------------------
# 2D mixtures (notebook 03)
# ---------------------------------------------------------------------------------------------------------------------

#: PacGAN's ring: 8 modes on the unit circle at angles 2*pi*k/8, shape (8, 2).
RING_MODES: torch.Tensor = torch.stack(
    [torch.tensor([math.cos(2 * math.pi * k / 8), math.sin(2 * math.pi * k / 8)]) for k in range(8)]
).float()
#: Standard deviation of every ring component.
RING_STD: float = 0.01
#: PacGAN's grid: 25 modes at {-4, -2, 0, 2, 4}^2 (row-major: x varies slowest), shape (25, 2).
GRID_MODES: torch.Tensor = torch.cartesian_prod(*[torch.tensor([-4.0, -2.0, 0.0, 2.0, 4.0])] * 2)
#: Standard deviation of every grid component.
GRID_STD: float = 0.05


def gaussian_mixture(
    n: int, modes: torch.Tensor, std: float, *, seed: int = 0, device: torch.device | str | None = None
) -> torch.Tensor:
    """``n`` draws from the equal-weight isotropic mixture ``p(x) = (1/K) sum_k N(x; m_k, std^2 I)``.

    A component ``k ~ Uniform{0..K-1}`` is drawn, then ``x = m_k + std * eps`` with ``eps ~ N(0, I)``. The draws are
    made on the CPU with a private generator seeded by ``seed`` and then moved to ``device``, so the numbers do not
    depend on the device. Returns a float32 tensor of shape ``(n, d)``.
    """
    n = check_int(n, "n", low=1)
    seed = check_int(seed, "seed", low=0)
    modes = check_tensor(modes, "modes", ndim=2, floating=True)
    std = check_positive(std, "std")
    gen = torch.Generator().manual_seed(seed)
    component = torch.randint(modes.shape[0], (n,), generator=gen)
    noise = torch.randn(n, modes.shape[1], generator=gen)
    x = modes.detach().cpu().float()[component] + std * noise
    return x.to(resolve_device(device))


def ring_mixture(n: int, *, seed: int = 0, device: torch.device | str | None = None) -> torch.Tensor:
    """``n`` points from PacGAN's ring: 8 Gaussians on the unit circle, std 0.01 (notebook 03). Shape ``(n, 2)``."""
    return gaussian_mixture(n, RING_MODES, RING_STD, seed=seed, device=device)


def grid_mixture(n: int, *, seed: int = 0, device: torch.device | str | None = None) -> torch.Tensor:
    """``n`` points from PacGAN's grid: 25 Gaussians at {-4,-2,0,2,4}^2, std 0.05 (notebook 03). Shape ``(n, 2)``."""
    return gaussian_mixture(n, GRID_MODES, GRID_STD, seed=seed, device=device)


# ---------------------------------------------------------------------------------------------------------------------
# Linear-Gaussian views (notebook 02)
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LinearGaussianParams:
    """True parameters of ``y_j = W_j z + mu_j + eps_j``, ``z ~ N(0, I_k)``, ``eps_j ~ N(0, Psi_j)``.

    ``W[j]`` is ``(d_j, k)``, ``mu[j]`` is ``(d_j,)``, ``Psi[j]`` is the ``(d_j, d_j)`` noise covariance (always stored
    as a full matrix; it is diagonal when the data were drawn with ``noise="diagonal"``).
    """

    W: list[torch.Tensor]
    mu: list[torch.Tensor]
    Psi: list[torch.Tensor]

    @property
    def latent_dim(self) -> int:
        return int(self.W[0].shape[1])

    @property
    def view_dims(self) -> list[int]:
        return [int(w.shape[0]) for w in self.W]

    def mean(self) -> torch.Tensor:
        """The joint mean ``[mu_1; mu_2; ...]`` of the stacked views."""
        return torch.cat(self.mu)

    def covariance(self) -> torch.Tensor:
        """The joint covariance of the stacked views, ``W W^T + blockdiag(Psi_1, Psi_2, ...)``, ``W = [W_1; W_2; ...]``.

        Its off-diagonal blocks ``W_i W_j^T`` are the cross-modal link that independent per-view models lose.
        """
        W = torch.cat(self.W, dim=0)
        return W @ W.T + torch.block_diag(*self.Psi)


def linear_gaussian_views(
    n: int,
    *,
    latent_dim: int,
    view_dims: Sequence[int],
    seed: int = 0,
    noise: str = "full",
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> tuple[list[torch.Tensor], LinearGaussianParams]:
    """Draw ``n`` paired samples of several views from the shared-latent linear-Gaussian model (probabilistic CCA).

    The generative model (notebook 02, eq. (3) done right) is::

        z ~ N(0, I_k),   y_j = W_j z + mu_j + eps_j,   eps_j ~ N(0, Psi_j),   j = 1..J,

    so ``Cov(y_i, y_j) = W_i W_j^T`` for ``i != j``. The parameters are drawn once from ``seed``: ``W_j`` entries
    ``~ N(0, 1)``, ``mu_j ~ N(0, I)``; with ``noise="full"`` (the default, as in Bach & Jordan's probabilistic CCA)
    ``Psi_j = 0.5 A A^T / d_j + 0.2 I`` with ``A ~ N(0, 1)`` (a full, well-conditioned covariance); with
    ``noise="diagonal"`` ``Psi_j = diag(u)``, ``u ~ Uniform(0.2, 0.7)`` (factor-analysis noise).

    Returns ``(views, params)``: ``views[j]`` is ``(n, d_j)``; ``params`` holds the true ``W``, ``mu`` and ``Psi``.
    All randomness is drawn in float64 on the CPU and then cast to ``dtype`` on ``device``.
    """
    n = check_int(n, "n", low=1)
    latent_dim = check_int(latent_dim, "latent_dim", low=1)
    seed = check_int(seed, "seed", low=0)
    noise = check_choice(noise, "noise", ("full", "diagonal"))
    if isinstance(view_dims, (str, bytes)) or not isinstance(view_dims, Sequence) or len(view_dims) < 1:
        raise TypeError(f"view_dims: expected a non-empty sequence of ints (one per view), got {view_dims!r}")
    dims = [check_int(d, f"view_dims[{i}]", low=1) for i, d in enumerate(view_dims)]
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype: expected a floating torch.dtype, got {dtype!r}")
    dev = resolve_device(device)
    gen = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    W, mu, Psi = [], [], []
    for d in dims:
        W.append(torch.randn(d, latent_dim, generator=gen, dtype=f64))
        mu.append(torch.randn(d, generator=gen, dtype=f64))
        if noise == "full":
            A = torch.randn(d, d, generator=gen, dtype=f64)
            Psi.append(0.5 * A @ A.T / d + 0.2 * torch.eye(d, dtype=f64))
        else:
            Psi.append(torch.diag(0.2 + 0.5 * torch.rand(d, generator=gen, dtype=f64)))
    z = torch.randn(n, latent_dim, generator=gen, dtype=f64)
    views = []
    for Wj, mj, Pj in zip(W, mu, Psi):
        L = torch.linalg.cholesky(Pj)
        eps = torch.randn(n, Pj.shape[0], generator=gen, dtype=f64) @ L.T
        views.append((z @ Wj.T + mj + eps).to(device=dev, dtype=dtype))
    params = LinearGaussianParams(
        W=[w.to(device=dev, dtype=dtype) for w in W],
        mu=[m.to(device=dev, dtype=dtype) for m in mu],
        Psi=[p.to(device=dev, dtype=dtype) for p in Psi],
    )
    return views, params


# ---------------------------------------------------------------------------------------------------------------------
# The real images: UCI handwritten digits (stored file, verified)
# ---------------------------------------------------------------------------------------------------------------------

#: The one stored data file: 1,797 rows of 64 grey levels (0..16, row-major 8x8) and the digit, comma-separated.
DIGITS_FILE: str = "digits.csv.gz"
#: Its SHA-256, checked on every first load in a process.
DIGITS_SHA256: str = "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22"
#: Number of grey levels of the images (0..16).
NUM_LEVELS: int = 17
#: Split names, in order.
SPLITS: tuple[str, ...] = ("train", "val", "test")
#: Modalities of the multimodal digits.
MODALITIES: tuple[str, ...] = ("image", "text", "audio")
#: Fractions of each digit's images held out for validation and test (the rest trains).
_VAL_FRACTION = 0.15
_TEST_FRACTION = 0.15


def data_dir() -> Path:
    """The folder holding the stored data: ``$MMLIB_DATA_DIR`` if set, else ``data/`` at the repository root."""
    env = os.environ.get("MMLIB_DATA_DIR")
    if env:
        return Path(env)
    from mmlib import REPO_ROOT

    return REPO_ROOT / "data"


def read_verified(path: Path, sha256: str) -> bytes:
    """The bytes of ``path`` after checking their SHA-256; a mismatch is a ``ValueError`` that says how to restore.

    The course never downloads data: a damaged file is restored from git, not fetched again.
    """
    path = check_path(path, "path")
    if not isinstance(sha256, str) or len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ValueError(f"sha256: expected 64 lower-case hex digits, got {sha256!r}")
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: the course's data file is missing. It ships with the repository: restore it with "
            f"`git checkout -- data/{path.name}` (nothing is ever downloaded)."
        )
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != sha256:
        raise ValueError(
            f"{path}: SHA-256 mismatch (expected {sha256}, found {digest}); the file was changed or damaged. "
            f"Restore it with `git checkout -- data/{path.name}` (nothing is ever downloaded; data/README.md says "
            "how each file was made)."
        )
    return raw


@lru_cache(maxsize=4)
def _digits_table(folder: str) -> tuple[np.ndarray, np.ndarray]:
    """(levels uint8 (1797, 8, 8), labels int64 (1797,)) read from the verified CSV in ``folder``."""
    raw = read_verified(Path(folder) / DIGITS_FILE, DIGITS_SHA256)
    table = np.loadtxt(io.StringIO(gzip.decompress(raw).decode("ascii")), delimiter=",", dtype=np.int64)
    if table.shape != (1797, 65):
        raise ValueError(f"{DIGITS_FILE}: expected 1797 rows of 65 values, got {table.shape}")
    return table[:, :64].reshape(-1, 8, 8).astype(np.uint8), table[:, 64].copy()


def _split_of_each_image(labels: np.ndarray) -> np.ndarray:
    """Split id (0 train, 1 val, 2 test) of each image: stratified by digit, in a fixed pseudo-random order.

    Within each digit the images are ordered by ``blake2b("mmlib-digits:<row>")`` (a hash, so the order is the same
    in every library version); the first 15 % go to test, the next 15 % to validation, the rest to training.
    """
    keys = [hashlib.blake2b(f"mmlib-digits:{i}".encode(), digest_size=8).digest() for i in range(len(labels))]
    split = np.zeros(len(labels), dtype=np.int64)
    for digit in range(10):
        rows = sorted(np.flatnonzero(labels == digit).tolist(), key=lambda i: keys[i])
        n_test = round(_TEST_FRACTION * len(rows))
        n_val = round(_VAL_FRACTION * len(rows))
        split[rows[:n_test]] = 2
        split[rows[n_test : n_test + n_val]] = 1
    return split


def split_indices(split: str) -> torch.Tensor:
    """Rows of ``data/digits.csv.gz`` (ascending) that belong to ``split`` ('train', 'val' or 'test')."""
    split = check_choice(split, "split", SPLITS)
    _, labels = _digits_table(str(data_dir()))
    return torch.from_numpy(np.flatnonzero(_split_of_each_image(labels) == SPLITS.index(split)))


def load_digit_images(
    split: str | None = None, *, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The real UCI handwritten digits as integer grey levels (notebook 01 fits likelihoods to them).

    Returns ``(levels, labels)``: ``levels`` int64 ``(N, 8, 8)`` with values in ``0..16`` (``NUM_LEVELS = 17``
    levels: each pixel counts the ink in a 4x4 block of a 32x32 bitmap), ``labels`` int64 ``(N,)`` in ``0..9``.
    ``split=None`` gives all 1,797 images in file order; ``'train'``/``'val'``/``'test'`` gives the same stratified
    split as :func:`load_multimodal_digits` (so held-out likelihoods in 01 use the images held out later).
    """
    levels, labels = _digits_table(str(data_dir()))
    if split is not None:
        rows = split_indices(split).numpy()
        levels, labels = levels[rows], labels[rows]
    dev = resolve_device(device)
    return torch.from_numpy(levels.astype(np.int64)).to(dev), torch.from_numpy(labels).to(dev)


def _image_style(levels: np.ndarray) -> dict[str, np.ndarray]:
    """Measured style of the real images: ink (mean grey level / 16) and slant (shear of the ink, second moments).

    ``slant = -Cov(col, row) / Var(row)`` under the ink distribution: > 0 when the digit leans right (its top is
    further right than its bottom), in pixels of horizontal shift per row.
    """
    x = levels.astype(np.float64)
    mass = x.sum(axis=(1, 2))
    rows, cols = np.meshgrid(np.arange(8.0), np.arange(8.0), indexing="ij")
    mr = (x * rows).sum(axis=(1, 2)) / mass
    mc = (x * cols).sum(axis=(1, 2)) / mass
    dr = rows[None] - mr[:, None, None]
    dc = cols[None] - mc[:, None, None]
    var_r = (x * dr**2).sum(axis=(1, 2)) / mass
    cov_rc = (x * dr * dc).sum(axis=(1, 2)) / mass
    return {
        "image_ink": (x.mean(axis=(1, 2)) / 16.0).astype(np.float32),
        "image_slant": (-cov_rc / var_r).astype(np.float32),
    }


# ---------------------------------------------------------------------------------------------------------------------
# Text: a caption naming the digit, with a style of its own
# ---------------------------------------------------------------------------------------------------------------------

PAD_TOKEN: int = 0
END_TOKEN: int = 1
#: Token ids -> symbols: 0 = padding, 1 = end of caption, then space, digits, ASCII letters and four accented ones.
TEXT_VOCAB: tuple[str, ...] = (
    ("<pad>", "<end>", " ")
    + tuple("0123456789")
    + tuple("abcdefghijklmnopqrstuvwxyz")
    + tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
    + tuple("éíúüÉÍÚÜ")
)
#: Tokens per caption: the characters, one end token, then padding.
TEXT_LENGTH: int = 16
_CHAR_TO_ID: dict[str, int] = {c: i for i, c in enumerate(TEXT_VOCAB) if i > END_TOKEN}

#: Style factor ``text_language`` (index into this tuple).
TEXT_LANGUAGES: tuple[str, ...] = ("en", "fr", "de", "es")
_WORDS: dict[str, tuple[str, ...]] = {
    "en": ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"),
    "fr": ("zéro", "un", "deux", "trois", "quatre", "cinq", "six", "sept", "huit", "neuf"),
    "de": ("null", "eins", "zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht", "neun"),
    "es": ("cero", "uno", "dos", "tres", "cuatro", "cinco", "seis", "siete", "ocho", "nueve"),
}
#: Style factor ``text_template``: the bare word, a phrase with the numeral, or a noun and the word.
TEXT_TEMPLATES: tuple[str, ...] = ("word", "numeral", "number-word")
_PHRASES: dict[str, tuple[str, str]] = {  # (phrase before the numeral, noun before the word)
    "en": ("the digit", "number"),
    "fr": ("le chiffre", "numéro"),
    "de": ("die Ziffer", "Nummer"),
    "es": ("el dígito", "número"),
}
#: Style factor ``text_case``.
TEXT_CASES: tuple[str, ...] = ("lower", "capitalized", "upper")


def caption(digit: int, language: int | str = "en", template: int | str = "word", case: int | str = "lower") -> str:
    """The caption of ``digit`` in a given text style, for example ``caption(3, "fr", "numeral", "upper")`` ->
    ``'LE CHIFFRE 3'``. Styles are names or indices into ``TEXT_LANGUAGES``, ``TEXT_TEMPLATES`` and ``TEXT_CASES``.
    """
    digit = check_int(digit, "digit", low=0, high=9)

    def pick(value: int | str, name: str, names: tuple[str, ...]) -> str:
        if isinstance(value, str):
            return check_choice(value, name, names)
        return names[check_int(value, name, low=0, high=len(names) - 1)]

    lang = pick(language, "language", TEXT_LANGUAGES)
    tmpl = pick(template, "template", TEXT_TEMPLATES)
    kase = pick(case, "case", TEXT_CASES)
    word = _WORDS[lang][digit]
    phrase, noun = _PHRASES[lang]
    text = {"word": word, "numeral": f"{phrase} {digit}", "number-word": f"{noun} {word}"}[tmpl]
    text = text.lower()
    if kase == "upper":
        text = text.upper()
    elif kase == "capitalized":
        text = text[0].upper() + text[1:]
    return text


def encode_text(texts: Sequence[str], *, device: torch.device | str | None = None) -> torch.Tensor:
    """Strings -> token ids, int64 ``(N, TEXT_LENGTH)``: one id per character, then ``END_TOKEN``, then ``PAD_TOKEN``.

    Raises ``ValueError`` for a character outside ``TEXT_VOCAB`` or a string longer than ``TEXT_LENGTH - 1``.
    """
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TypeError(f"texts: expected a list of strings, got {type(texts).__name__}")
    out = torch.full((len(texts), TEXT_LENGTH), PAD_TOKEN, dtype=torch.int64)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}]: expected a string, got {type(text).__name__}")
        if len(text) > TEXT_LENGTH - 1:
            raise ValueError(f"texts[{i}]: {text!r} has {len(text)} characters; at most {TEXT_LENGTH - 1} fit")
        for j, ch in enumerate(text):
            if ch not in _CHAR_TO_ID:
                raise ValueError(f"texts[{i}]: character {ch!r} is not in TEXT_VOCAB")
            out[i, j] = _CHAR_TO_ID[ch]
        out[i, len(text)] = END_TOKEN
    return out.to(resolve_device(device))


def decode_text(tokens: torch.Tensor) -> list[str]:
    """Token ids ``(N, L)`` (or one row ``(L,)``) -> strings, reading each row up to its first end or pad token.

    Generated rows decode the same way: whatever follows the first ``END_TOKEN``/``PAD_TOKEN`` is ignored.
    """
    tokens = check_tensor(tokens, "tokens", ndim=(1, 2), integer=True)
    rows = tokens.reshape(1, -1) if tokens.ndim == 1 else tokens
    rows = rows.detach().cpu()
    if int(rows.min()) < 0 or int(rows.max()) >= len(TEXT_VOCAB):
        raise ValueError(f"tokens: expected ids in 0..{len(TEXT_VOCAB) - 1}, got {int(rows.min())}..{int(rows.max())}")
    out = []
    for row in rows.tolist():
        chars = []
        for t in row:
            if t in (PAD_TOKEN, END_TOKEN):
                break
            chars.append(TEXT_VOCAB[t])
        out.append("".join(chars))
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Audio: a two-note motif whose interval encodes the digit
# ---------------------------------------------------------------------------------------------------------------------

SAMPLE_RATE: int = 8000
#: Samples per clip (0.496 s): with centred frames of hop 128 this gives exactly 32 frames.
AUDIO_SAMPLES: int = 3968
N_FFT: int = 512
HOP_LENGTH: int = 128
AUDIO_FRAMES: int = AUDIO_SAMPLES // HOP_LENGTH + 1
#: Log-frequency bins of the spectrogram, 1.5 semitones apart from 250 Hz (top bin ~2.6 kHz).
AUDIO_BINS: int = 28
_F_MIN = 250.0
_SEMITONES_PER_BIN = 1.5
#: Centre frequency (Hz) of each spectrogram bin, low to high.
AUDIO_BIN_HZ: torch.Tensor = _F_MIN * 2.0 ** (_SEMITONES_PER_BIN * torch.arange(AUDIO_BINS, dtype=torch.float32) / 12)
#: Shape of one sample of each modality of the multimodal digits (text: token ids).
MODALITY_SHAPES: dict[str, tuple[int, ...]] = {
    "image": (1, 8, 8),
    "text": (TEXT_LENGTH,),
    "audio": (AUDIO_BINS, AUDIO_FRAMES),
}
#: The first note sits ``pitch`` semitones from this frequency (Hz).
_REFERENCE_HZ = _F_MIN * 2.0 ** (21 / 12)
#: Interval (semitones) from the first note to the second, per digit: 3 (d - 5), so 0 falls 15 and 9 climbs 12.
DIGIT_INTERVALS: tuple[int, ...] = tuple(3 * (d - 5) for d in range(10))
#: Audio style factors, each drawn uniformly from its range, independently per clip.
AUDIO_STYLE_RANGES: dict[str, tuple[float, float]] = {
    "audio_pitch": (-4.0, 4.0),  # semitones from the reference pitch (~841 Hz) of the first note
    "audio_duration": (0.09, 0.14),  # seconds per note (the gap between notes is half of it): the tempo
    "audio_onset": (0.02, 0.08),  # seconds of silence before the first note
    "audio_loudness": (-15.0, -3.0),  # peak amplitude of the notes, dB re full scale
    "audio_noise": (-45.0, -25.0),  # standard deviation of the white background noise, dB re full scale
}
#: The spectrogram's dB range mapped to [0, 1] (fixed for all clips, so loudness and noise stay visible).
_DB_FLOOR, _DB_CEIL = -60.0, 0.0


def _synthesize(labels: np.ndarray, style: dict[str, np.ndarray], noise: np.ndarray) -> np.ndarray:
    """Waveforms float32 ``(N, AUDIO_SAMPLES)`` of the two-note motifs (see :func:`audio_clip` for the definition)."""
    n = len(labels)
    f1 = _REFERENCE_HZ * 2.0 ** (style["audio_pitch"] / 12.0)
    f2 = f1 * 2.0 ** (np.asarray(DIGIT_INTERVALS, dtype=np.float64)[labels] / 12.0)
    dur = style["audio_duration"]
    start1 = style["audio_onset"]
    start2 = start1 + 1.5 * dur
    amp = 10.0 ** (style["audio_loudness"] / 20.0)
    span = int(math.ceil(dur.max() * SAMPLE_RATE)) + 2  # samples that can hold a note
    wave = np.zeros((n, AUDIO_SAMPLES + span), dtype=np.float32)  # padded, so every note fits; cropped below
    rows = np.arange(n)[:, None]

    for freq, start in ((f1, start1), (f2, start2)):
        first = np.floor(start * SAMPLE_RATE).astype(np.int64)  # first sample at or before the note's start
        index = first[:, None] + np.arange(span)[None, :]
        since = index / SAMPLE_RATE - start[:, None]  # seconds since the note began (float64)
        # raised-cosine attack (5 ms) and release (20 ms): no clicks, clean spectrogram edges
        ramp = np.clip(np.minimum(since / 0.005, (dur[:, None] - since) / 0.020), 0.0, 1.0).astype(np.float32)
        phase = np.mod(2 * np.pi * freq[:, None] * np.maximum(since, 0.0), 2 * np.pi).astype(np.float32)
        wave[rows, index] += np.sin(0.5 * np.float32(np.pi) * ramp) ** 2 * np.sin(phase)

    wave = wave[:, :AUDIO_SAMPLES] * amp[:, None].astype(np.float32)
    wave += (10.0 ** (style["audio_noise"] / 20.0))[:, None].astype(np.float32) * noise
    return wave.astype(np.float32)


def _window(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return torch.hann_window(N_FFT, periodic=True, device=device, dtype=dtype)


def _stft(wave: torch.Tensor) -> torch.Tensor:
    """Complex STFT ``(N, N_FFT/2 + 1, AUDIO_FRAMES)`` with a Hann window, hop ``HOP_LENGTH``, centred frames."""
    return torch.stft(wave, N_FFT, HOP_LENGTH, window=_window(wave.device, wave.dtype), center=True,
                      return_complex=True)


def _istft(spec: torch.Tensor) -> torch.Tensor:
    window = _window(spec.device, spec.real.dtype)
    return torch.istft(spec, N_FFT, HOP_LENGTH, window=window, center=True, length=AUDIO_SAMPLES)


@lru_cache(maxsize=1)
def _band_weights_cpu() -> torch.Tensor:
    """Triangular weights ``(AUDIO_BINS, N_FFT/2 + 1)`` on the semitone axis: 1 at a bin's centre, 0 at its neighbours.

    Neighbouring triangles sum to one, so the transposed matrix linearly interpolates bins back onto linear frequency.
    """
    freqs = torch.arange(N_FFT // 2 + 1, dtype=torch.float64) * SAMPLE_RATE / N_FFT
    position = 12 * torch.log2(freqs.clamp_min(1.0) / _F_MIN) / _SEMITONES_PER_BIN  # in units of bins
    weights = (1 - (position[None, :] - torch.arange(AUDIO_BINS, dtype=torch.float64)[:, None]).abs()).clamp_min(0)
    return weights.float()


@lru_cache(maxsize=1)
def _band_ranges() -> tuple[tuple[int, int], ...]:
    """For each spectrogram bin, the slice ``[lo, hi)`` of STFT bins where its triangle is non-zero."""
    ranges = []
    for row in _band_weights_cpu():
        nonzero = torch.nonzero(row > 0).flatten()
        ranges.append((int(nonzero[0]), int(nonzero[-1]) + 1))
    return tuple(ranges)


def waveform_to_spectrogram(waveform: torch.Tensor) -> torch.Tensor:
    """Waveforms ``(N, AUDIO_SAMPLES)`` or ``(AUDIO_SAMPLES,)`` -> normalised log-frequency spectrograms ``(N, F, T)``.

    1. ``|STFT|`` with a 512-point Hann window and hop 128, scaled so a full-scale sine peaks at 1;
    2. each of the ``F = 28`` bins (1.5 semitones apart from 250 Hz) takes the *largest* triangle-weighted magnitude in
       its band — a tone keeps its height whatever its pitch, and a pitch shift becomes a shift along the bins;
    3. ``20 log10`` and the fixed range -60..0 dB mapped linearly onto [0, 1] (clipped).
    """
    waveform = check_tensor(waveform, "waveform", ndim=(1, 2), floating=True)
    if waveform.shape[-1] != AUDIO_SAMPLES:
        raise ValueError(f"waveform: expected {AUDIO_SAMPLES} samples in the last dimension, got {waveform.shape[-1]}")
    single = waveform.ndim == 1
    wave = waveform.reshape(-1, AUDIO_SAMPLES).float()
    window_gain = N_FFT / 4  # sum of the periodic Hann window / 2: the STFT peak of a unit-amplitude sine
    magnitude = _stft(wave).abs() / window_gain
    weights = _band_weights_cpu().to(wave.device)
    bands = [
        (magnitude[:, lo:hi, :] * weights[b, lo:hi, None]).amax(dim=1) for b, (lo, hi) in enumerate(_band_ranges())
    ]
    band_magnitude = torch.stack(bands, dim=1)
    db = 20 * torch.log10(band_magnitude.clamp_min(1e-6))
    spec = ((db - _DB_FLOOR) / (_DB_CEIL - _DB_FLOOR)).clamp(0.0, 1.0)
    return spec[0] if single else spec


def spectrogram_to_audio(
    spec: torch.Tensor, *, n_iter: int = 48, momentum: float = 0.99, seed: int = 0
) -> torch.Tensor:
    """Listen to a (generated) spectrogram: normalised ``(F, T)`` or ``(N, F, T)`` -> waveforms ``(AUDIO_SAMPLES,)``
    or ``(N, AUDIO_SAMPLES)`` at ``SAMPLE_RATE``, on the spectrogram's device.

    The normalisation is undone (``[0, 1] -> dB -> magnitude``), the bins are interpolated back onto the STFT's linear
    frequencies (the transposed triangle weights), and the missing phase is found by fast Griffin-Lim (Perraudin,
    Balazs & Sondergaard, 2013): starting from random phases ``phi`` (drawn from ``seed``), repeat

        x = ISTFT(A e^{i phi});   C = STFT(x);   phi = angle(C + m/(1+m) (C - C_prev))

    for ``n_iter`` rounds, where ``A`` is the target magnitude and ``m`` the ``momentum`` (0 gives plain Griffin-Lim;
    the paper's acceleration ``alpha`` is ``m/(1+m)`` here, about 0.5 for the default ``m = 0.99``).
    Play the result with ``IPython.display.Audio(wave.cpu().numpy(), rate=SAMPLE_RATE)`` (notebook 00).
    """
    spec = check_tensor(spec, "spec", ndim=(2, 3), floating=True)
    if tuple(spec.shape[-2:]) != (AUDIO_BINS, AUDIO_FRAMES):
        raise ValueError(f"spec: expected (..., {AUDIO_BINS}, {AUDIO_FRAMES}) spectrograms, got {tuple(spec.shape)}")
    n_iter = check_int(n_iter, "n_iter", low=1)
    momentum = check_positive(momentum, "momentum", allow_zero=True)
    seed = check_int(seed, "seed", low=0)
    single = spec.ndim == 2
    s = spec.detach().reshape(-1, AUDIO_BINS, AUDIO_FRAMES).float().clamp(0.0, 1.0)
    band_magnitude = 10.0 ** ((_DB_FLOOR + s * (_DB_CEIL - _DB_FLOOR)) / 20.0)
    band_magnitude = torch.where(s > 0, band_magnitude, torch.zeros_like(band_magnitude))  # the floor is silence
    weights = _band_weights_cpu().to(s.device)
    target = torch.einsum("fk,nft->nkt", weights, band_magnitude) * (N_FFT / 4)
    gen = torch.Generator().manual_seed(seed)
    phase = (2 * math.pi * torch.rand(target.shape, generator=gen)).to(s.device)
    angles = torch.polar(torch.ones_like(target), phase)
    previous = torch.zeros_like(angles)
    for _ in range(n_iter):
        rebuilt = _stft(_istft(target * angles))
        accelerated = rebuilt + (momentum / (1 + momentum)) * (rebuilt - previous)
        angles = accelerated / accelerated.abs().clamp_min(1e-12)
        previous = rebuilt
    wave = _istft(target * angles)
    return wave[0] if single else wave


def audio_clip(
    digit: int,
    *,
    pitch: float = 0.0,
    duration: float = 0.12,
    onset: float = 0.05,
    loudness: float = -6.0,
    noise: float = -35.0,
    seed: int = 0,
) -> torch.Tensor:
    """One clip ``(AUDIO_SAMPLES,)`` float32 at ``SAMPLE_RATE``: the two-note motif of ``digit`` in a chosen style.

    Two sine notes, each ``duration`` seconds with a 5 ms attack and 20 ms release, the second starting half a
    duration after the first ends. The first note has frequency ``f1 = 841 Hz * 2^(pitch/12)``; the second
    ``f2 = f1 * 2^(3 (digit - 5) / 12)``: the **interval** (in semitones) carries the digit, so changing the pitch
    (a style) moves both notes without changing what is said. Peak amplitude ``10^(loudness/20)``; white noise of
    standard deviation ``10^(noise/20)`` (drawn from ``seed``). Try it in notebook 00.
    """
    digit = check_int(digit, "digit", low=0, high=9)
    values = {"audio_pitch": pitch, "audio_duration": duration, "audio_onset": onset, "audio_loudness": loudness,
              "audio_noise": noise}
    style = {}
    for key, value in values.items():
        name = key.removeprefix("audio_")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise TypeError(f"{name}: expected a finite number, got {value!r}")
        style[key] = np.array([float(value)])
    if duration <= 0 or onset < 0 or onset + 2.5 * duration > AUDIO_SAMPLES / SAMPLE_RATE:
        raise ValueError(
            f"duration, onset: the motif (onset + 2.5 duration = {onset + 2.5 * duration:.3f} s) must fit in the "
            f"{AUDIO_SAMPLES / SAMPLE_RATE:.3f} s clip, with duration > 0 and onset >= 0"
        )
    seed = check_int(seed, "seed", low=0)
    white = np.random.default_rng(seed).standard_normal((1, AUDIO_SAMPLES), dtype=np.float32)
    return torch.from_numpy(_synthesize(np.array([digit]), style, white)[0])


# ---------------------------------------------------------------------------------------------------------------------
# The multimodal digits
# ---------------------------------------------------------------------------------------------------------------------

#: Seeds of the style draws (fixed: the dataset is the same everywhere). Each modality has its own stream.
_TEXT_SEED = 20_240_301
_AUDIO_SEED = 20_240_302


@dataclass(frozen=True)
class Split:
    """One split of the multimodal digits; row ``i`` of every tensor describes the same sample.

    ``split["image"]`` float32 ``(N, 1, 8, 8)`` in [0, 1] (grey level / 16); ``split["text"]`` int64
    ``(N, TEXT_LENGTH)`` token ids; ``split["audio"]`` float32 ``(N, AUDIO_BINS, AUDIO_FRAMES)`` normalised
    log-magnitude spectrograms in [0, 1]; ``split.label`` int64 ``(N,)``; ``split.style`` the per-sample style
    factors, named ``<modality>_<factor>``.
    """

    name: str
    x: dict[str, torch.Tensor]
    label: torch.Tensor
    style: dict[str, torch.Tensor] = field(default_factory=dict)

    def __getitem__(self, modality: str) -> torch.Tensor:
        if modality not in self.x:
            raise ValueError(f"modality: unknown modality {modality!r}; known: {', '.join(self.x)}")
        return self.x[modality]

    def __len__(self) -> int:
        return int(self.label.shape[0])

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.x)

    @property
    def device(self) -> torch.device:
        return self.label.device

    def to(self, device: torch.device | str | None) -> Split:
        """The same split on ``device``."""
        dev = resolve_device(device)
        return Split(
            self.name,
            {k: v.to(dev) for k, v in self.x.items()},
            self.label.to(dev),
            {k: v.to(dev) for k, v in self.style.items()},
        )

    def take(self, index: torch.Tensor | slice) -> Split:
        """The rows ``index`` (a slice, an index tensor or a boolean mask) of every tensor, as a new split."""
        return Split(
            self.name,
            {k: v[index] for k, v in self.x.items()},
            self.label[index],
            {k: v[index] for k, v in self.style.items()},
        )


@dataclass(frozen=True)
class MultimodalDigits:
    """The multimodal digits: ``train``, ``val`` and ``test`` splits, and the audio waveforms behind the spectrograms.

    ``waveforms[split]`` is a CPU float32 tensor ``(N, AUDIO_SAMPLES)`` at ``SAMPLE_RATE``, row-aligned with the split.
    """

    train: Split
    val: Split
    test: Split
    waveforms: dict[str, torch.Tensor]

    def split(self, name: str) -> Split:
        """The split called ``name`` ('train', 'val' or 'test')."""
        return getattr(self, check_choice(name, "split", SPLITS))

    def waveform(self, split: str, index: int) -> np.ndarray:
        """The audio of sample ``index`` of ``split``, float32 ``(AUDIO_SAMPLES,)``, for ``IPython.display.Audio``."""
        waves = self.waveforms[check_choice(split, "split", SPLITS)]
        index = check_int(index, "index", low=0, high=len(waves) - 1)
        return waves[index].numpy().copy()

    def sizes(self) -> dict[str, int]:
        return {name: len(self.split(name)) for name in SPLITS}


def _cache_file(folder: str) -> Path:
    """Where :func:`_build` keeps the generated dataset: ``<folder>/cache/digits-<key>.pt``, the key a hash of what
    the tensors depend on — the verified digits file, this module's source, and the torch and NumPy versions (the
    STFT's last bits may change with them) — so that a change to any of them generates the dataset afresh."""
    read_verified(Path(folder) / DIGITS_FILE, DIGITS_SHA256)
    key = hashlib.sha256()
    for part in (DIGITS_SHA256, Path(__file__).read_bytes(), torch.__version__, np.__version__):
        key.update(part if isinstance(part, bytes) else part.encode())
    return Path(folder) / "cache" / f"digits-{key.hexdigest()[:16]}.pt"


def _to_tensors(ds: MultimodalDigits) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name in SPLITS:
        split = ds.split(name)
        out.update({f"{name}/x/{k}": v for k, v in split.x.items()})
        out.update({f"{name}/style/{k}": v for k, v in split.style.items()})
        out[f"{name}/label"] = split.label
        out[f"{name}/waveform"] = ds.waveforms[name]
    return out


def _from_tensors(tensors: dict[str, torch.Tensor]) -> MultimodalDigits:
    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

    splits = {name: Split(name, part(f"{name}/x/"), tensors[f"{name}/label"], part(f"{name}/style/"))
              for name in SPLITS}
    if any(set(splits[name].x) != set(MODALITIES) for name in SPLITS):
        raise ValueError("the cached dataset misses a modality")
    return MultimodalDigits(splits["train"], splits["val"], splits["test"],
                            {name: tensors[f"{name}/waveform"] for name in SPLITS})


@lru_cache(maxsize=4)
def _build(folder: str) -> MultimodalDigits:
    """The whole dataset on the CPU: read from ``data/cache/`` (:func:`_cache_file`) when an earlier process left it
    there, else generated (:func:`_generate`, about two seconds on one core) and left there for the next process —
    notebooks 04-08 and their worker processes each need it. The file holds the generated tensors bit for bit; one
    that cannot be read is generated anew, and a folder that cannot be written only costs the time."""
    path = _cache_file(folder)
    if path.is_file():
        try:
            return _from_tensors(torch.load(path, map_location="cpu", weights_only=True))
        except Exception:  # noqa: BLE001 - a damaged or foreign cache file: generate again (and replace it)
            pass
    ds = _generate(folder)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        torch.save(_to_tensors(ds), temporary)
        os.replace(temporary, path)  # atomic: a process reading at the same time sees the whole file or none
    except OSError:
        pass
    return ds


def _generate(folder: str) -> MultimodalDigits:
    """Generate the whole dataset on the CPU (deterministic)."""
    levels, labels = _digits_table(folder)
    n = len(labels)
    split_id = _split_of_each_image(labels)

    # text: one caption per image, its style drawn from the text stream
    rng_text = np.random.default_rng(_TEXT_SEED)
    text_style = {
        "text_language": rng_text.integers(0, len(TEXT_LANGUAGES), n),
        "text_template": rng_text.integers(0, len(TEXT_TEMPLATES), n),
        "text_case": rng_text.integers(0, len(TEXT_CASES), n),
    }
    captions = [
        caption(int(labels[i]), int(text_style["text_language"][i]), int(text_style["text_template"][i]),
                int(text_style["text_case"][i]))
        for i in range(n)
    ]
    tokens = encode_text(captions, device="cpu")

    # audio: one clip per image, its style (and noise) drawn from the audio stream
    rng_audio = np.random.default_rng(_AUDIO_SEED)
    audio_style = {key: rng_audio.uniform(lo, hi, n) for key, (lo, hi) in AUDIO_STYLE_RANGES.items()}
    white = rng_audio.standard_normal((n, AUDIO_SAMPLES), dtype=np.float32)
    waves = torch.from_numpy(_synthesize(labels, audio_style, white))
    spectrograms = waveform_to_spectrogram(waves)

    images = torch.from_numpy(levels.astype(np.float32) / 16.0).unsqueeze(1)
    style_all: dict[str, torch.Tensor] = {"image_index": torch.arange(n)}
    style_all.update({k: torch.from_numpy(v) for k, v in _image_style(levels).items()})
    style_all.update({k: torch.from_numpy(v.astype(np.int64)) for k, v in text_style.items()})
    style_all.update({k: torch.from_numpy(v.astype(np.float32)) for k, v in audio_style.items()})
    labels_t = torch.from_numpy(labels)

    splits, waveforms = {}, {}
    for s, name in enumerate(SPLITS):
        rows = torch.from_numpy(np.flatnonzero(split_id == s))
        splits[name] = Split(
            name,
            {"image": images[rows], "text": tokens[rows], "audio": spectrograms[rows]},
            labels_t[rows],
            {k: v[rows] for k, v in style_all.items()},
        )
        waveforms[name] = waves[rows]
    return MultimodalDigits(splits["train"], splits["val"], splits["test"], waveforms)


_ON_DEVICE: dict[tuple[str, str], MultimodalDigits] = {}


def load_multimodal_digits(device: torch.device | str | None = None) -> MultimodalDigits:
    """The multimodal digits dataset on ``device`` (generated once, kept in ``data/cache/`` and in the process).

    Every real 8x8 image of ``data/digits.csv.gz`` is paired with one caption and one audio clip of the same digit.
    The three modalities share only the digit: each has its own style, drawn independently:

    - **image** — the real handwriting (style: the writer; measured as ``image_ink`` and ``image_slant``);
    - **text** — :func:`caption` in a random language, template and letter case (``text_language``,
      ``text_template``, ``text_case``), as ``TEXT_LENGTH`` character tokens;
    - **audio** — the two-note motif of :func:`audio_clip` with random pitch, tempo, onset, loudness and noise
      (``audio_pitch``, ``audio_duration``, ``audio_onset``, ``audio_loudness``, ``audio_noise``), as the spectrogram
      of :func:`waveform_to_spectrogram`.

    The splits are stratified by digit (70 / 15 / 15 %) and fixed; since each image has exactly one caption and one
    clip, no test sample's image, caption draw or clip is used in training. The returned object is shared between
    calls: treat its tensors as read-only. See ``data/README.md`` (the datasheet) and notebook 00 (the tour).
    """
    dev = resolve_device(device)
    folder = str(data_dir())
    key = (folder, str(dev))
    if key not in _ON_DEVICE:
        cpu = _build(folder)
        if dev.type == "cpu":
            _ON_DEVICE[key] = cpu
        else:
            _ON_DEVICE[key] = MultimodalDigits(cpu.train.to(dev), cpu.val.to(dev), cpu.test.to(dev), cpu.waveforms)
    return _ON_DEVICE[key]


def audio_waveform(split: str, index: int) -> np.ndarray:
    """The waveform (float32, ``SAMPLE_RATE`` Hz) of sample ``index`` of ``split``: play it with
    ``IPython.display.Audio(audio_waveform("train", 0), rate=SAMPLE_RATE)``."""
    return load_multimodal_digits("cpu").waveform(split, index)


def export_arrays(dataset: MultimodalDigits | None = None) -> dict[str, np.ndarray]:
    """The whole dataset as NumPy arrays named ``<split>_<modality>``, ``<split>_label`` and
    ``<split>_style_<factor>`` (the layout of ``python -m mmlib run data``; COURSE.md, "Experiments")."""
    if dataset is not None and not isinstance(dataset, MultimodalDigits):
        raise TypeError(f"dataset: expected None or load_multimodal_digits(...), got {type(dataset).__name__}")
    ds = load_multimodal_digits("cpu") if dataset is None else dataset
    arrays: dict[str, np.ndarray] = {}
    for name in SPLITS:
        split = ds.split(name)
        for modality in MODALITIES:
            arrays[f"{name}_{modality}"] = split[modality].detach().cpu().numpy()
        arrays[f"{name}_label"] = split.label.detach().cpu().numpy()
        for factor, values in split.style.items():
            arrays[f"{name}_style_{factor}"] = values.detach().cpu().numpy()
    return arrays


@register("data", "Export the multimodal digits (image, text, audio; train/val/test) with labels and style factors")
def data_experiment(seed: int = 0, device: torch.device | None = None) -> Result:
    """Experiment ``data``: the dataset as ``arrays.npz`` and its sizes as ``metrics.json``.

    The dataset does not depend on ``seed`` (it is fixed); ``load_seconds`` (wall clock) and ``load_cpu_seconds``
    (user + system CPU time of the process) are the time it takes to generate it (whatever ``data/cache/`` holds);
    a process that finds it there, or has loaded it before, does not wait that long.
    """
    start, start_cpu = time.perf_counter(), time.process_time()
    _generate(str(data_dir()))
    load_seconds, load_cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    ds = load_multimodal_digits("cpu")
    metrics: dict[str, int | float] = {f"n_{name}": len(ds.split(name)) for name in SPLITS}
    metrics.update(
        n_total=sum(len(ds.split(name)) for name in SPLITS),
        n_modalities=len(MODALITIES),
        image_height=8,
        image_width=8,
        image_levels=NUM_LEVELS,
        text_length=TEXT_LENGTH,
        text_vocab_size=len(TEXT_VOCAB),
        audio_bins=AUDIO_BINS,
        audio_frames=AUDIO_FRAMES,
        audio_samples=AUDIO_SAMPLES,
        sample_rate=SAMPLE_RATE,
        load_seconds=round(load_seconds, 3),
        load_cpu_seconds=round(load_cpu_seconds, 3),
    )
    return Result(metrics=metrics, arrays=export_arrays(ds))
