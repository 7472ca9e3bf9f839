"""mmlib.classifiers: the committed evaluation classifiers and their safeguards."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from mmlib import classifiers as C
from mmlib import data as D

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def models() -> dict[str, C.Classifier]:
    return C.load_classifiers("cpu")


@pytest.fixture(scope="module")
def ds() -> D.MultimodalDigits:
    return D.load_multimodal_digits("cpu")


@pytest.mark.parametrize("modality", D.MODALITIES)
def test_committed_classifier_held_out_accuracy(models, ds, modality):
    acc = models[modality].accuracy(ds.test[modality], ds.test.label)
    print(f"held-out accuracy of the {modality} classifier: {acc:.4f}")
    assert acc >= 0.97, f"the {modality} classifier reads >= 97 % of the held-out test digits ({acc:.4f})"


def test_predict_and_features(models, ds):
    for modality, model in models.items():
        x = ds.val[modality][:17]
        pred = model.predict(x)
        assert pred.shape == (17,) and pred.dtype == torch.int64
        feats = model.features(x)
        assert feats.shape == (17, C.FEATURE_DIM) and not feats.requires_grad
        assert torch.equal(pred, model.predict(x)), "deterministic"
        assert not model.training


def test_image_classifier_accepts_three_dimensional_images(models, ds):
    x = ds.val["image"][:8]
    assert torch.equal(models["image"].predict(x), models["image"].predict(x[:, 0]))


def test_text_classifier_ignores_what_follows_the_end_token(models, ds):
    tokens = ds.test["text"][:50].clone()
    pred = models["text"].predict(tokens)
    tokens[:, -1] = D.TEXT_VOCAB.index("z")  # garbage after the end token, as a generator might emit
    assert torch.equal(models["text"].predict(tokens), pred)


def test_audio_classifier_hears_the_interval_not_the_pitch(models):
    clips = torch.stack([D.audio_clip(d, pitch=p, duration=dur, seed=i)
                         for i, (d, p, dur) in enumerate((d, p, dur) for d in range(10) for p in (-4.0, -1.3, 2.2, 4.0)
                                                          for dur in (0.09, 0.14))])
    labels = torch.arange(10).repeat_interleave(8)
    acc = models["audio"].accuracy(D.waveform_to_spectrogram(clips), labels)
    assert acc >= 0.95, f"the digit survives pitch and tempo changes ({acc:.3f})"


def test_griffin_lim_audio_is_still_recognised(models, ds):
    spec = ds.test["audio"][:60]
    resynth = D.waveform_to_spectrogram(D.spectrogram_to_audio(spec, n_iter=32))
    acc = models["audio"].accuracy(resynth, ds.test.label[:60])
    assert acc >= 0.9, f"spectrogram -> Griffin-Lim audio -> spectrogram keeps the digit ({acc:.3f})"


def test_input_validation(models):
    with pytest.raises(ValueError, match="x"):
        models["image"].predict(torch.zeros(4, 1, 9, 9))
    with pytest.raises(TypeError, match="x"):
        models["text"].predict(torch.zeros(4, D.TEXT_LENGTH))
    with pytest.raises(ValueError, match="token ids"):
        models["text"].predict(torch.full((2, D.TEXT_LENGTH), 999))
    with pytest.raises(ValueError, match="x"):
        models["audio"].predict(torch.zeros(2, D.AUDIO_FRAMES, D.AUDIO_BINS))
    with pytest.raises(ValueError, match="NaN"):
        models["audio"].predict(torch.full((2, D.AUDIO_BINS, D.AUDIO_FRAMES), float("nan")))


def test_unknown_modality():
    with pytest.raises(ValueError, match=r"modality.*\['image', 'text', 'audio'\]"):
        C.build_classifier("video")


def test_checksum_mismatch_says_how_to_restore(tmp_path, monkeypatch):
    shutil.copy(ROOT / "data" / D.DIGITS_FILE, tmp_path / D.DIGITS_FILE)
    shutil.copytree(ROOT / "data" / "classifiers", tmp_path / "classifiers")
    path = tmp_path / "classifiers" / "audio.pt"
    raw = bytearray(path.read_bytes())
    raw[-10] ^= 0xFF
    path.write_bytes(bytes(raw))
    monkeypatch.setenv("MMLIB_DATA_DIR", str(tmp_path))
    with pytest.raises(ValueError, match=r"audio\.pt.*SHA-256 mismatch.*git checkout.*python -m mmlib run classifiers"):
        C.load_classifiers("cpu")


def test_committed_files_match_the_recorded_checksums_and_datasheet():
    import hashlib

    sheet = (ROOT / "data" / "README.md").read_text()
    for modality, digest in C.CLASSIFIER_SHA256.items():
        raw = (ROOT / "data" / "classifiers" / f"{modality}.pt").read_bytes()
        assert hashlib.sha256(raw).hexdigest() == digest
        assert len(raw) < 300_000, "the committed weights stay small"
        assert digest in sheet, f"the datasheet lists the checksum of {modality}.pt"


def test_fresh_classifier_is_deterministic_and_saves(tmp_path):
    a, b = C.build_classifier("text", seed=3, device="cpu"), C.build_classifier("text", seed=3, device="cpu")
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    digests = C.save_classifiers({"text": a}, tmp_path)
    assert (tmp_path / "text.pt").is_file() and len(digests["text"]) == 64
    state = torch.load(tmp_path / "text.pt", weights_only=True)
    assert set(state) == set(a.state_dict())
