"""mmlib.data: the 2D mixtures, the linear-Gaussian views and the multimodal digits."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmlib import data as D

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ds() -> D.MultimodalDigits:
    return D.load_multimodal_digits("cpu")


# --- 2D mixtures ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sample, modes, std", [(D.ring_mixture, D.RING_MODES, D.RING_STD),
                                                (D.grid_mixture, D.GRID_MODES, D.GRID_STD)])
def test_mixtures_lie_on_their_modes(sample, modes, std):
    x = sample(4000, seed=1, device="cpu")
    assert x.shape == (4000, 2) and x.dtype == torch.float32
    distance, nearest = torch.cdist(x, modes).min(dim=1)
    assert float(distance.max()) < 6 * std, "every point lies within 6 std of a mode"
    counts = torch.bincount(nearest, minlength=len(modes)).float()
    assert float(counts.min()) > 0.5 * 4000 / len(modes), "the components are used evenly"
    assert torch.equal(x, sample(4000, seed=1, device="cpu")), "same seed, same points"
    assert not torch.equal(x, sample(4000, seed=2, device="cpu")), "another seed, other points"


def test_mode_constants():
    assert D.RING_MODES.shape == (8, 2) and torch.allclose(D.RING_MODES.norm(dim=1), torch.ones(8))
    assert D.GRID_MODES.shape == (25, 2) and set(D.GRID_MODES.flatten().tolist()) == {-4.0, -2.0, 0.0, 2.0, 4.0}
    assert D.RING_STD == 0.01 and D.GRID_STD == 0.05


def test_mixture_rejects_bad_input():
    with pytest.raises(ValueError, match="n"):
        D.ring_mixture(0)
    with pytest.raises(TypeError, match="seed"):
        D.grid_mixture(10, seed=1.5)


# --- linear-Gaussian views ------------------------------------------------------------------------------------------


def test_linear_gaussian_views_match_their_parameters():
    views, params = D.linear_gaussian_views(40_000, latent_dim=2, view_dims=[3, 4], seed=0, dtype=torch.float64,
                                            device="cpu")
    assert [v.shape for v in views] == [(40_000, 3), (40_000, 4)]
    assert params.latent_dim == 2 and params.view_dims == [3, 4]
    y = torch.cat(views, dim=1)
    assert torch.allclose(y.mean(0), params.mean(), atol=0.05)
    emp = torch.cov(y.T)
    model = params.covariance()
    assert torch.allclose(emp, model, atol=0.1 * float(model.abs().max())), "sample covariance ≈ W W^T + Psi"
    assert float(emp[:3, 3:].abs().max()) > 0.3, "the views are correlated through z"
    for psi in params.Psi:
        assert torch.allclose(psi, psi.T) and float(torch.linalg.eigvalsh(psi).min()) > 0


def test_linear_gaussian_views_diagonal_noise():
    _, params = D.linear_gaussian_views(10, latent_dim=1, view_dims=[2, 5], seed=3, noise="diagonal", device="cpu")
    for psi in params.Psi:
        assert torch.equal(psi, torch.diag(torch.diagonal(psi)))
    with pytest.raises(ValueError, match="noise"):
        D.linear_gaussian_views(10, latent_dim=1, view_dims=[2], noise="spherical")
    with pytest.raises(TypeError, match="view_dims"):
        D.linear_gaussian_views(10, latent_dim=1, view_dims=3)


# --- the digits ------------------------------------------------------------------------------------------------------


def test_splits_partition_the_images_stratified(ds):
    rows = [set(ds.split(s).style["image_index"].tolist()) for s in D.SPLITS]
    assert sum(len(r) for r in rows) == 1797 and set().union(*rows) == set(range(1797)), "every image, exactly once"
    assert not (rows[0] & rows[2]) and not (rows[0] & rows[1]) and not (rows[1] & rows[2]), "splits are disjoint"
    _, labels = D.load_digit_images(device="cpu")
    per_digit = torch.bincount(labels, minlength=10)
    for s, frac in (("val", 0.15), ("test", 0.15)):
        counts = torch.bincount(ds.split(s).label, minlength=10)
        assert torch.all((counts - frac * per_digit).abs() <= 1), f"{s} is stratified by digit"
    assert torch.equal(D.split_indices("test"), ds.test.style["image_index"])


def test_modalities_shapes_types_and_ranges(ds):
    assert D.MODALITIES == ("image", "text", "audio")
    for name in D.SPLITS:
        s = ds.split(name)
        n = len(s)
        assert s.modalities == D.MODALITIES and set(s.x) == set(D.MODALITIES)
        assert s["image"].shape == (n, 1, 8, 8) and s["image"].dtype == torch.float32
        assert torch.equal(s["image"] * 16, (s["image"] * 16).round()) and 0 <= float(s["image"].min())
        assert float(s["image"].max()) <= 1
        assert s["text"].shape == (n, D.TEXT_LENGTH) and s["text"].dtype == torch.int64
        assert s["audio"].shape == (n, D.AUDIO_BINS, D.AUDIO_FRAMES) and s["audio"].dtype == torch.float32
        assert 0 <= float(s["audio"].min()) and float(s["audio"].max()) <= 1
        assert 300 <= D.AUDIO_BINS * D.AUDIO_FRAMES <= 1000
        assert s.label.dtype == torch.int64 and s.label.shape == (n,)
        for key, value in s.style.items():
            assert key.split("_")[0] in D.MODALITIES, f"style factor {key} is prefixed by its modality"
            assert value.shape == (n,)


def test_captions_name_the_digit_in_their_own_style(ds):
    s = ds.train
    texts = D.decode_text(s["text"])
    for i in range(len(s)):
        expected = D.caption(int(s.label[i]), int(s.style["text_language"][i]), int(s.style["text_template"][i]),
                             int(s.style["text_case"][i]))
        assert texts[i] == expected
    for factor, n in (("text_language", 4), ("text_template", 3), ("text_case", 3)):
        assert torch.bincount(s.style[factor], minlength=n).min() > 0.2 * len(s) / n, f"{factor} varies"
    assert D.caption(3, "fr", "numeral", "upper") == "LE CHIFFRE 3"
    assert D.caption(5, "de", "word", "capitalized") == "Fünf"


def test_styles_are_independent_across_modalities(ds):
    s = ds.train
    r = np.corrcoef(s.style["audio_pitch"].numpy(), s.style["text_language"].numpy())[0, 1]
    assert abs(r) < 0.1
    r = np.corrcoef(s.style["audio_pitch"].numpy(), s.label.numpy())[0, 1]
    assert abs(r) < 0.1, "audio style does not depend on the digit"


def test_text_encode_decode():
    all_captions = [D.caption(d, lang, tmpl, case) for d in range(10) for lang in range(4) for tmpl in range(3)
                    for case in range(3)]
    assert max(len(c) for c in all_captions) < D.TEXT_LENGTH
    tokens = D.encode_text(all_captions, device="cpu")
    assert tokens.shape == (360, D.TEXT_LENGTH)
    assert D.decode_text(tokens) == all_captions
    noisy = tokens.clone()
    noisy[:, -1] = 5  # garbage after the end token is ignored
    assert D.decode_text(noisy) == all_captions
    assert D.decode_text(tokens[0]) == [all_captions[0]]
    with pytest.raises(ValueError, match="not in TEXT_VOCAB"):
        D.encode_text(["three?"])
    with pytest.raises(ValueError, match="characters"):
        D.encode_text(["x" * D.TEXT_LENGTH])
    with pytest.raises(ValueError, match="tokens"):
        D.decode_text(torch.tensor([[len(D.TEXT_VOCAB)]]))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(alphabet="".join(D.TEXT_VOCAB[2:]), max_size=D.TEXT_LENGTH - 1), min_size=1, max_size=5))
def test_any_vocabulary_string_round_trips(texts):
    assert D.decode_text(D.encode_text(texts, device="cpu")) == texts


def test_audio_interval_encodes_the_digit():
    for digit in range(10):
        for pitch in (-3.0, 0.0, 3.0):  # on the bin grid (1.5 semitones), so the peaks sit on bins
            spec = D.waveform_to_spectrogram(D.audio_clip(digit, pitch=pitch, noise=-100.0, onset=0.05))
            first, second = spec[:, 6].argmax(), spec[:, 6 + 15].argmax()  # frames inside note 1 and note 2
            assert int(second - first) == round(D.DIGIT_INTERVALS[digit] / 1.5), (digit, pitch)
    clip = D.audio_clip(5, pitch=0.0, noise=-100.0)
    assert int(D.waveform_to_spectrogram(clip)[:, 6].argmax()) == 14, "pitch 0 puts the first note on bin 14"


def test_dataset_spectrograms_come_from_its_waveforms(ds):
    waves = ds.waveforms["val"][:20]
    assert torch.equal(D.waveform_to_spectrogram(waves), ds.val["audio"][:20])
    wave = D.audio_waveform("val", 3)
    assert wave.dtype == np.float32 and wave.shape == (D.AUDIO_SAMPLES,) and np.abs(wave).max() < 1
    assert D.SAMPLE_RATE == 8000


def test_griffin_lim_round_trip(ds):
    spec = ds.test["audio"][:10]
    wave = D.spectrogram_to_audio(spec, n_iter=32)
    assert wave.shape == (10, D.AUDIO_SAMPLES) and torch.isfinite(wave).all()
    again = D.waveform_to_spectrogram(wave)
    r = np.corrcoef(again.flatten().numpy(), spec.flatten().numpy())[0, 1]
    assert r > 0.85, f"re-analysed Griffin-Lim audio resembles its spectrogram (r = {r:.3f})"
    assert D.spectrogram_to_audio(spec[0], n_iter=2).shape == (D.AUDIO_SAMPLES,)
    with pytest.raises(ValueError, match="spec"):
        D.spectrogram_to_audio(torch.zeros(3, 8, 8))


def test_load_digit_images(ds):
    levels, labels = D.load_digit_images(device="cpu")
    assert levels.shape == (1797, 8, 8) and levels.dtype == torch.int64 and labels.shape == (1797,)
    assert int(levels.min()) == 0 and int(levels.max()) == 16 and D.NUM_LEVELS == 17
    test_levels, test_labels = D.load_digit_images("test", device="cpu")
    assert torch.equal(test_levels.unsqueeze(1).float() / 16, ds.test["image"])
    assert torch.equal(test_labels, ds.test.label)


def test_unknown_modality_and_split(ds):
    with pytest.raises(ValueError, match="image, text, audio"):
        ds.train["video"]
    with pytest.raises(ValueError, match="split"):
        ds.split("holdout")


def test_checksum_mismatch_names_the_file_and_the_fix(tmp_path, monkeypatch):
    src = ROOT / "data" / D.DIGITS_FILE
    damaged = bytearray(src.read_bytes())
    damaged[100] ^= 0xFF
    (tmp_path / D.DIGITS_FILE).write_bytes(bytes(damaged))
    monkeypatch.setenv("MMLIB_DATA_DIR", str(tmp_path))
    with pytest.raises(ValueError, match=r"digits\.csv\.gz.*SHA-256 mismatch.*git checkout -- data/digits\.csv\.gz"):
        D.load_digit_images()
    monkeypatch.setenv("MMLIB_DATA_DIR", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="git checkout"):
        D.load_multimodal_digits("cpu")


def test_stored_file_checksum_and_datasheet():
    raw = (ROOT / "data" / D.DIGITS_FILE).read_bytes()
    assert hashlib.sha256(raw).hexdigest() == D.DIGITS_SHA256
    sheet = (ROOT / "data" / "README.md").read_text()
    assert D.DIGITS_SHA256 in sheet, "the datasheet lists the data file's checksum"


_HASH_SCRIPT = """
import hashlib, torch
from mmlib.data import load_multimodal_digits, SPLITS
ds = load_multimodal_digits("cpu")
h = hashlib.sha256()
for name in SPLITS:
    s = ds.split(name)
    for key in sorted(s.x):
        h.update(s.x[key].numpy().tobytes())
    h.update(s.label.numpy().tobytes())
    for key in sorted(s.style):
        h.update(key.encode()); h.update(s.style[key].numpy().tobytes())
    h.update(ds.waveforms[name].numpy().tobytes())
print(h.hexdigest())
"""


def _data_folder(path: Path) -> Path:
    """A data folder holding only a copy of the stored digits (so nothing is cached there yet)."""
    path.mkdir()
    (path / D.DIGITS_FILE).write_bytes((ROOT / "data" / D.DIGITS_FILE).read_bytes())
    return path


def _dataset_hashes(folders: list[Path]) -> list[str]:
    """The dataset's hash in a fresh process per folder (run side by side), with ``MMLIB_DATA_DIR`` = the folder."""
    base = {**os.environ, "MMLIB_DEVICE": "cpu", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", _HASH_SCRIPT], cwd=ROOT, env={**base, "MMLIB_DATA_DIR": str(f)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for f in folders]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    return [out.strip() for out, _err in outs]


def test_two_fresh_processes_generate_identical_data_and_the_cache_holds_it_bit_for_bit(tmp_path):
    first, second = _data_folder(tmp_path / "a"), _data_folder(tmp_path / "b")
    generated = _dataset_hashes([first, second])  # nothing cached yet: both generate (and leave a cache file)
    assert generated[0] == generated[1] and len(generated[0]) == 64
    cached = list((first / "cache").glob("digits-*.pt"))
    assert len(cached) == 1, "the first load leaves the generated dataset in <data>/cache/"
    assert _dataset_hashes([first]) == generated[:1], "a process that reads the cache gets the same bits"


def test_a_damaged_cache_file_is_generated_again(tmp_path):
    folder = _data_folder(tmp_path / "data")
    fresh = D._generate(str(folder))
    path = D._cache_file(str(folder))
    path.parent.mkdir()
    path.write_bytes(b"not a torch file")
    loaded = D._build.__wrapped__(str(folder))
    for name in D.SPLITS:
        for modality in D.MODALITIES:
            assert torch.equal(loaded.split(name)[modality], fresh.split(name)[modality])
        assert torch.equal(loaded.waveforms[name], fresh.waveforms[name])
    again = D._build.__wrapped__(str(folder))  # the damaged file was replaced by a good one
    assert torch.equal(again.test["audio"], fresh.test["audio"])
    assert list(again.test.style) == list(fresh.test.style) and list(again.test.x) == list(D.MODALITIES)


def test_data_experiment_exports_everything(tmp_path, ds):
    from mmlib.experiments import run_experiment

    result = run_experiment("data", out=tmp_path, device="cpu")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["n_train"] + metrics["n_val"] + metrics["n_test"] == metrics["n_total"] == 1797
    assert math.isfinite(metrics["load_seconds"])
    with np.load(tmp_path / "arrays.npz") as arrays:
        for name in D.SPLITS:
            for modality in D.MODALITIES:
                np.testing.assert_array_equal(arrays[f"{name}_{modality}"], ds.split(name)[modality].numpy())
            np.testing.assert_array_equal(arrays[f"{name}_label"], ds.split(name).label.numpy())
            for factor in ds.split(name).style:
                assert f"{name}_style_{factor}" in arrays
    assert result.metrics["n_test"] == len(ds.test)


def test_dataset_is_cached_and_moves_to_a_device(ds):
    assert D.load_multimodal_digits("cpu") is ds
    sub = ds.test.take(slice(0, 5))
    assert len(sub) == 5 and sub.style["image_index"].shape == (5,)
    assert ds.test.to("cpu").device == torch.device("cpu")
