"""Bad input, clear errors: property-based tests (hypothesis) over mmlib's public functions.

For every public function we know one valid call (``SPECS``). Hypothesis then breaks one argument at a time — wrong
shape, wrong dtype, NaN/inf, empty, a mismatched batch size, the wrong type, an unknown name, an out-of-range
hyper-parameter — and the function must either still work (some changes are harmless) or raise a ``ValueError`` /
``TypeError`` **raised by mmlib itself** whose message names the argument. Anything else — an ``IndexError`` or a
``RuntimeError`` from deep inside torch, a ``ValueError`` from numpy — is a *foreign* exception and fails the test.
The number of cases tried is printed at the end of the run.
"""

from __future__ import annotations

import math
import os
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mmlib

PACKAGE_DIR = Path(mmlib.__file__).resolve().parent
CASES_TRIED = {"n": 0}


@dataclass(frozen=True)
class Spec:
    name: str
    fn: Callable
    valid: Callable[[], dict]  # fresh valid keyword arguments for each call
    names: dict[str, tuple[str, ...]] | None = None  # words an error about this argument may use instead of its name


def _g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _specs() -> list[Spec]:
    from mmlib import checkpoint, device, experiments, metrics, seed, train
    from mmlib import data as d
    from mmlib.classifiers import load_classifiers

    clf = load_classifiers("cpu")
    ds = d.load_multimodal_digits("cpu")
    imgs, labels = ds.test["image"][:32], ds.test.label[:32]
    specs = [
        Spec("device.get_device", device.get_device, lambda: {"preferred": "cpu"}),
        Spec("seed.seed_everything", seed.seed_everything, lambda: {"seed": 0}),
        Spec("seed.make_generator", seed.make_generator, lambda: {"seed": 0}),
        Spec("train.make_optimizer", lambda params, lr: train.make_optimizer(params, lr),
             lambda: {"params": [torch.nn.Parameter(torch.zeros(2))], "lr": 1e-3}),
        Spec("train.train", train.train,
             lambda: {"step": lambda x: {"loss": x.sum().detach()}, "tensors": torch.ones(8, 2), "steps": 2,
                      "batch_size": 4, "log_every": 1, "progress": False}),
        Spec("checkpoint.save_checkpoint", lambda path, model: checkpoint.save_checkpoint(path, model=model),
             lambda: {"path": _tmp_file(), "model": {"w": torch.ones(2)}}),
        Spec("experiments.get_experiment", experiments.get_experiment, lambda: {"name": "data"}),
        Spec("data.ring_mixture", d.ring_mixture, lambda: {"n": 16, "seed": 0, "device": "cpu"}),
        Spec("data.grid_mixture", d.grid_mixture, lambda: {"n": 16, "seed": 0, "device": "cpu"}),
        Spec("data.gaussian_mixture", d.gaussian_mixture,
             lambda: {"n": 16, "modes": d.RING_MODES.clone(), "std": 0.01, "seed": 0, "device": "cpu"}),
        Spec("data.linear_gaussian_views", d.linear_gaussian_views,
             lambda: {"n": 32, "latent_dim": 2, "view_dims": (3, 4), "seed": 0, "device": "cpu"}),
        Spec("data.load_digit_images", d.load_digit_images, lambda: {"split": "test", "device": "cpu"}),
        Spec("data.load_multimodal_digits", d.load_multimodal_digits, lambda: {"device": "cpu"}),
        Spec("data.encode_text", d.encode_text, lambda: {"texts": ["three", "drei"], "device": "cpu"}),
        Spec("data.decode_text", d.decode_text, lambda: {"tokens": ds.test["text"][:4].clone()}),
        Spec("data.caption", d.caption, lambda: {"digit": 3, "language": "fr", "template": "word", "case": "upper"}),
        Spec("data.spectrogram_to_audio", d.spectrogram_to_audio,
             lambda: {"spec": ds.test["audio"][:2].clone(), "n_iter": 2}),
        Spec("data.waveform_to_spectrogram", d.waveform_to_spectrogram,
             lambda: {"waveform": torch.from_numpy(ds.waveform("test", 0))}),
        Spec("data.audio_clip", d.audio_clip, lambda: {"digit": 4, "pitch": 1.0, "duration": 0.1}),
        Spec("MultimodalDigits.waveform", ds.waveform, lambda: {"split": "test", "index": 3}),
        Spec("Split.__getitem__", ds.test.__getitem__, lambda: {"modality": "image"}),
        Spec("metrics.coherence", metrics.coherence, lambda: {"pred": labels.clone(), "labels": labels.clone()}),
        Spec("metrics.cross_coherence", metrics.cross_coherence,
             lambda: {"classifier": clf["image"], "generated": imgs.clone(), "source_labels": labels.clone()}),
        Spec("metrics.joint_coherence", metrics.joint_coherence,
             lambda: {"classifiers": clf, "samples": {"image": imgs.clone(), "text": ds.test["text"][:32].clone()}}),
        Spec("metrics.linear_probe_accuracy", metrics.linear_probe_accuracy,
             lambda: {"z_train": torch.randn(40, 3, generator=_g()), "y_train": torch.arange(40) % 4,
                      "z_test": torch.randn(20, 3, generator=_g(1)), "y_test": torch.arange(20) % 4}),
        Spec("metrics.frechet_distance", metrics.frechet_distance,
             lambda: {"feats_a": torch.randn(50, 4, generator=_g()), "feats_b": torch.randn(60, 4, generator=_g(1))}),
        Spec("metrics.frechet_to_data", metrics.frechet_to_data,
             lambda: {"modality": "image", "generated": imgs.clone(), "device": "cpu"}),
        Spec("metrics.mode_metrics", metrics.mode_metrics,
             lambda: {"samples": d.ring_mixture(64, seed=0, device="cpu"), "modes": d.RING_MODES.clone(),
                      "std": d.RING_STD}),
        Spec("Classifier.predict", clf["image"].predict, lambda: {"x": imgs.clone()}),
        Spec("Classifier.features", clf["audio"].features, lambda: {"x": ds.test["audio"][:8].clone()}),
        Spec("Classifier.predict[text]", clf["text"].predict, lambda: {"x": ds.test["text"][:8].clone()}),
    ]
    specs += _chapter_specs()
    return specs


_SCRATCH = tempfile.TemporaryDirectory(prefix="mmlib-bad-input-")  # removed when the test process ends


def _tmp_file() -> Path:
    return Path(_SCRATCH.name) / "ck.pt"


def _chapter_specs() -> list[Spec]:
    """Public functions of the chapter modules."""
    from mmlib import likelihood as lk
    from mmlib import pcca
    from mmlib.data import linear_gaussian_views, load_digit_images

    levels = load_digit_images("test", device="cpu")[0][:40]
    (y1, y2), _ = linear_gaussian_views(60, latent_dim=2, view_dims=(3, 4), seed=0, device="cpu")
    return [
        Spec("likelihood.to_levels", lk.to_levels, lambda: {"images": levels.clone()}),
        Spec("likelihood.fit_gaussian", lk.fit_gaussian, lambda: {"x": torch.randn(30, 3, generator=_g())}),
        Spec("likelihood.fit_categorical", lk.fit_categorical, lambda: {"levels": lk.to_levels(levels), "alpha": 0.5}),
        Spec("likelihood.fit_categorical_mixture", lk.fit_categorical_mixture,
             lambda: {"levels": lk.to_levels(levels), "components": 2, "iterations": 2, "seed": 0}),
        Spec("likelihood.bits_per_pixel", lk.bits_per_pixel, lambda: {"log_likelihood": -100.0, "num_pixels": 64}),
        Spec("pcca.fit_pcca_closed_form", pcca.fit_pcca_closed_form, lambda: {"views": [y1, y2], "latent_dim": 2}),
        Spec("pcca.fit_pcca_em", pcca.fit_pcca_em, lambda: {"views": [y1, y2], "latent_dim": 2, "iterations": 3}),
        Spec("pcca.max_log_likelihood", pcca.max_log_likelihood, lambda: {"views": [y1, y2], "latent_dim": 2}),
        Spec("pcca.canonical_correlations", pcca.canonical_correlations, lambda: {"y1": y1.clone(), "y2": y2.clone()}),
        *_chapter07_specs(),
    ]


def _chapter07_specs() -> list[Spec]:
    """Public functions of notebook 07's modules (fusion and the multimodal VAE)."""
    from mmlib import fusion, mvae
    from mmlib.data import load_multimodal_digits

    def experts(k: int = 3, n: int = 4, d: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        gen = _g(seed)
        return torch.randn(k, n, d, generator=gen), torch.randn(k, n, d, generator=gen)

    test = load_multimodal_digits("cpu").test
    model = mvae.build_mvae("moe", mvae.MVAEConfig(hidden=8, prior_components=3), seed=0, device="cpu")
    mix = fusion.mixture_of_experts(*experts())
    return [
        Spec("fusion.product_of_experts", fusion.product_of_experts,
             lambda: dict(zip(("means", "log_vars"), experts()), mask=torch.ones(3, 4, dtype=torch.long))),
        Spec("fusion.mixture_of_experts", fusion.mixture_of_experts,
             lambda: dict(zip(("means", "log_vars"), experts()))),
        Spec("fusion.mixture_of_products", fusion.mixture_of_products,
             lambda: dict(zip(("means", "log_vars"), experts()))),
        Spec("fusion.mixture_log_prob", fusion.mixture_log_prob,
             lambda: {"z": torch.randn(4, 2, generator=_g(1)), "means": mix[0].clone(), "log_vars": mix[1].clone(),
                      "weights": mix[2].clone()}),
        Spec("fusion.nonempty_subsets", fusion.nonempty_subsets, lambda: {"num_experts": 3}),
        Spec("mvae.precision_at_k", mvae.precision_at_k,
             lambda: {"query": torch.randn(6, 3, generator=_g()), "gallery": torch.randn(9, 3, generator=_g(1)),
                      "query_labels": torch.arange(6) % 3, "gallery_labels": torch.arange(9) % 3, "k": 2}),
        Spec("mvae.build_modality", mvae.build_modality, lambda: {"name": "audio", "latent_dim": 4, "hidden": 8}),
        Spec("mvae.generate_joint", mvae.generate_joint, lambda: {"model": model, "n": 4}),
        Spec("mvae.subset_elbo", lambda x, subset: mvae.subset_elbo(model, x, subset),
             lambda: {"x": {"image": test["image"][:4].clone(), "audio": test["audio"][:4].clone()},
                      "subset": ["image"]}),
        Spec("mvae.posterior_means", lambda x: mvae.posterior_means(model, x),
             lambda: {"x": {"text": test["text"][:4].clone()}}),
    ]


# --- how to break one argument ------------------------------------------------------------------------------------
def _bad_values(value: object) -> st.SearchStrategy:
    nothing = st.sampled_from([None, "text", object()])
    if isinstance(value, torch.Tensor):
        options = [nothing, st.just(value.tolist() if value.numel() < 50 else "tensor-as-string")]
        if value.ndim >= 1:
            options.append(st.just(value[:0]))  # empty
            if value.shape[0] > 1:
                options.append(st.just(value[:-1]))  # one row short: mismatched batch
            options.append(st.just(value.unsqueeze(0)))  # one dimension too many
        if value.ndim >= 2:
            options.append(st.just(value.reshape(-1)))  # flattened
            options.append(st.just(value[..., :-1] if value.shape[-1] > 1 else value.repeat_interleave(2, -1)))
        if value.is_floating_point():
            options.append(st.just(value.long()))
            options.append(st.just(value.to(torch.complex64)))
            for bad in (math.nan, math.inf, -math.inf):
                options.append(st.integers(0, max(value.numel() - 1, 0)).map(lambda i, b=bad: _poke(value, i, b)))
        else:
            options.append(st.just(value.float() + 0.5))
            options.append(st.just(value - 10**6))
        return st.one_of(options)
    if isinstance(value, bool):
        return st.one_of(nothing, st.just("yes"))
    if isinstance(value, int):
        return st.one_of(nothing, st.integers(-10**6, -1), st.floats(allow_nan=True), st.just(str(value)))
    if isinstance(value, float):
        return st.one_of(nothing, st.sampled_from([math.nan, math.inf, -math.inf, -1.0, -1e6]), st.just(str(value)))
    if isinstance(value, str):
        return st.one_of(st.sampled_from([None, 3, "", "no-such-" + value]), st.text(max_size=6))
    if isinstance(value, (tuple, list)):
        return st.one_of(nothing, st.just(type(value)()), st.just(type(value)([-1] * len(value))),
                         st.just(type(value)([None] * len(value))))
    if isinstance(value, dict):
        keys = list(value)
        return st.one_of(nothing, st.just({}), st.just({"no-such-modality": next(iter(value.values()))}),
                         st.sampled_from(keys).map(lambda k: {**value, k: "not a tensor"}))
    return nothing


def _poke(value: torch.Tensor, index: int, bad: float) -> torch.Tensor:
    out = value.clone()
    out.view(-1)[index] = bad
    return out


def _raised_in_mmlib(err: BaseException) -> bool:
    frames = traceback.extract_tb(err.__traceback__)
    return bool(frames) and Path(frames[-1].filename).resolve().is_relative_to(PACKAGE_DIR)


@pytest.fixture(autouse=True, scope="module")
def _work_in_scratch():
    """Broken arguments can be valid file names: run in a scratch folder so nothing lands in the repository."""
    here = os.getcwd()
    os.chdir(_SCRATCH.name)
    yield
    os.chdir(here)


SPECS = _specs()
PARAMS = [(spec, arg) for spec in SPECS for arg in spec.valid()]


@pytest.mark.parametrize(("spec", "arg"), PARAMS, ids=[f"{s.name}:{a}" for s, a in PARAMS])
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
@given(data=st.data())
def test_bad_argument_gets_a_clear_error(spec: Spec, arg: str, data):
    kwargs = spec.valid()
    kwargs[arg] = data.draw(_bad_values(kwargs[arg]), label=arg)
    CASES_TRIED["n"] += 1
    try:
        spec.fn(**kwargs)
    except (ValueError, TypeError) as err:
        message = str(err)
        words = (arg, *(spec.names or {}).get(arg, ()))
        assert _raised_in_mmlib(err), f"{spec.name}({arg}=...): {type(err).__name__} from outside mmlib: {message}"
        assert any(w in message for w in words), f"{spec.name}({arg}=...): message does not name {arg!r}: {message}"
    except Exception as err:  # noqa: BLE001
        pytest.fail(f"{spec.name}({arg}=...): foreign {type(err).__name__}: {err}")


def test_cases_were_tried():
    """Runs after the property tests in this file (the count is printed in pytest's summary)."""
    assert CASES_TRIED["n"] >= len(PARAMS)
