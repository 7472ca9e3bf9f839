"""Bad input, clear errors: property-based tests (hypothesis) over mmlib's public functions.

For every public function we know one valid call (``SPECS``). Hypothesis then breaks one argument at a time — wrong
shape, wrong dtype, NaN/inf, empty, a mismatched batch size, the wrong type, an unknown name, an out-of-range
hyper-parameter — and the function must either still work (some changes are harmless) or raise a ``ValueError`` /
``TypeError`` **raised by mmlib itself** whose message names the argument. Anything else — an ``IndexError`` or a
``RuntimeError`` from deep inside torch, a ``ValueError`` from numpy — is a *foreign* exception and fails the test.
The number of cases tried is printed at the end of the run.
"""

from __future__ import annotations

import copy
import math
import os
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
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
    specs += _more_core_specs()
    return specs


def _more_core_specs() -> list[Spec]:
    """The rest of the core modules' public functions. Left out, and why: functions without arguments
    (data.data_dir, experiments.list_experiments); the notebook runners course.build_notebooks,
    course.execute_notebook and bench.notebook_times (each starts Jupyter kernels, seconds to minutes a call) and the
    classifier trainers train_classifier / train_classifiers (each trains a full classifier); classes and containers
    (Result, Experiment, History, TrainingDiverged, NetworkBlocked, SliderSpec); decorators (experiments.register,
    exercises.exercise); mmlib.checks, the validators the others call."""
    from mmlib import (
        bench,
        checkpoint,
        classifiers,
        device,
        exercises,
        experiments,
        metrics,
        parallel,
        plot,
        seed,
        train,
        widgets,
    )
    from mmlib import data as d

    layer = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    return [
        Spec("checkpoint.load_checkpoint", checkpoint.load_checkpoint,
             lambda: {"path": _saved_checkpoint(), "map_location": "cpu"}),
        Spec("checkpoint.atomic_write_bytes", checkpoint.atomic_write_bytes,
             lambda: {"path": Path(_SCRATCH.name) / "blob.bin", "data": b"abc"}),
        Spec("device.resolve_device", device.resolve_device, lambda: {"device": "cpu", "name": "device"}),
        Spec("device.describe_device", device.describe_device, lambda: {"device": torch.device("cpu")}),
        Spec("device.one_cpu_thread", _enter_one_cpu_thread, lambda: {"device": "cpu"}),
        Spec("train.loss_step", train.loss_step,
             lambda: {"loss_fn": lambda x: layer(x).pow(2).mean(), "optimizer": opt, "scheduler": None,
                      "autocast": False, "compile": False}),
        Spec("train.minibatches", lambda **kw: list(train.minibatches(**kw)),
             lambda: {"tensors": [torch.ones(8, 2), torch.zeros(8)], "batch_size": 4, "steps": 3, "generator": _g()}),
        Spec("experiments.run_experiment", experiments.run_experiment,
             lambda: {"name": "data", "seed": 0, "out": Path(_SCRATCH.name) / "run", "device": "cpu"}),
        Spec("experiments.write_result", experiments.write_result,
             lambda: {"result": experiments.Result({"a": 1.0}, {"x": torch.ones(2)}),
                      "out": Path(_SCRATCH.name) / "result"}),
        Spec("data.read_verified", d.read_verified, lambda: {"path": _blob(), "sha256": _BLOB_SHA}),
        Spec("data.split_indices", d.split_indices, lambda: {"split": "val"}),
        Spec("data.audio_waveform", d.audio_waveform, lambda: {"split": "test", "index": 2}),
        Spec("data.export_arrays", d.export_arrays, lambda: {"dataset": d.load_multimodal_digits("cpu")}),
        Spec("classifiers.build_classifier", classifiers.build_classifier,
             lambda: {"modality": "text", "seed": 0, "device": "cpu"}),
        Spec("classifiers.save_classifiers", classifiers.save_classifiers,
             lambda: {"models": {"text": classifiers.build_classifier("text", seed=0, device="cpu")},
                      "folder": Path(_SCRATCH.name) / "clf"}),
        Spec("metrics.frechet_baseline", metrics.frechet_baseline,
             lambda: {"modality": "text", "split": "val", "device": "cpu"}),
        Spec("metrics.mode_assignments", metrics.mode_assignments,
             lambda: {"samples": d.ring_mixture(32, seed=0, device="cpu"), "modes": d.RING_MODES.clone(),
                      "std": d.RING_STD, "threshold": 3.0}),
        Spec("plot.image_grid", _closing(plot.image_grid),
             lambda: {"images": _images(4), "nrow": 2, "titles": ["a", "b", "c", "d"], "title": "t", "cmap": "gray_r",
                      "vmin": 0.0, "vmax": 1.0, "scale": 0.9, "ax_size": 1.0}),
        Spec("plot.scatter_2d", _closing(plot.scatter_2d),
             lambda: {"points": _randn(20, 2), "modes": d.RING_MODES.clone(), "title": "t", "s": 4.0, "alpha": 0.5,
                      "label": "samples"}),
        Spec("plot.density_2d", _closing(plot.density_2d),
             lambda: {"points": _randn(50, 2), "bins": 10, "extent": (-2.0, 2.0, -2.0, 2.0), "title": "t"}),
        Spec("plot.loss_curves", _closing(plot.loss_curves),
             lambda: {"curves": {"d": [1.0, 0.5, 0.2]}, "steps": [1, 2, 3], "title": "t", "ylabel": "loss",
                      "logy": True}),
        Spec("widgets.make_slider", widgets.make_slider, lambda: {"name": "beta", "spec": (0.0, 2.0, 0.1, 1.0)}),
        Spec("widgets.slider_plot", _closing(lambda draw, beta: widgets.slider_plot(draw, beta=beta)),
             lambda: {"draw": lambda beta: None, "beta": (0.0, 2.0, 0.1, 1.0)}),
        Spec("bench.matmul_peak_gflops", bench.matmul_peak_gflops,
             lambda: {"device": torch.device("cpu"), "n": 64, "repeats": 2}),
        Spec("bench.vae_flops_per_sample", bench.vae_flops_per_sample,
             lambda: {"x_dim": 784, "hidden": 400, "z_dim": 20}),
        Spec("bench.trainer_throughput", bench.trainer_throughput,
             lambda: {"data": torch.rand(64, 784, generator=_g()), "batch_size": 16, "steps": 2, "seed": 0}),
        Spec("bench.reference_throughput", bench.reference_throughput,
             lambda: {"data": torch.rand(64, 784, generator=_g()), "batch_size": 16, "steps": 2, "seed": 0}),
        Spec("parallel.run_jobs", parallel.run_jobs,
             lambda: {"jobs": [(seed.make_generator, {"seed": 0})], "device": "cpu", "workers": 1, "progress": False,
                      "desc": "runs"}),
        Spec("exercises.check", _quiet(exercises.check), lambda: {"key": "03.1", "answer": lambda *a, **k: None}),
    ]


def _pcca_params(y1: torch.Tensor, y2: torch.Tensor):
    from mmlib.pcca import fit_pcca_closed_form

    return fit_pcca_closed_form([y1, y2], latent_dim=2)


def _saved_checkpoint() -> Path:
    from mmlib.checkpoint import save_checkpoint

    path = Path(_SCRATCH.name) / "saved.pt"
    if not path.exists():
        save_checkpoint(path, model={"w": torch.ones(2)})
    return path


_BLOB_SHA = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # SHA-256 of b"abc"


def _blob() -> Path:
    path = Path(_SCRATCH.name) / "abc.bin"
    path.write_bytes(b"abc")
    return path


def _enter_one_cpu_thread(device):
    from mmlib.device import one_cpu_thread

    with one_cpu_thread(device):
        pass


def _closing(fn: Callable) -> Callable:
    """Call a plotting function and close its figures (dozens of calls would otherwise pile up)."""

    def call(**kwargs):
        import matplotlib.pyplot as plt

        try:
            return fn(**kwargs)
        finally:
            plt.close("all")

    return call


def _quiet(fn: Callable) -> Callable:
    def call(**kwargs):
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):
            return fn(**kwargs)

    return call


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
        Spec("likelihood.compute_dtype", lk.compute_dtype, lambda: {"device": torch.device("cpu")}),
        Spec("likelihood.gaussian_log_density", lk.gaussian_log_density,
             lambda: {"x": _randn(5, 2), "mean": torch.zeros(2), "cov": torch.eye(2) * 2}),
        Spec("likelihood.gaussian_average_log_likelihood", lk.gaussian_average_log_likelihood,
             lambda: {"mean": torch.zeros(2), "scale_tril": torch.eye(2), "x_mean": torch.ones(2),
                      "x_cov": torch.eye(2) * 0.5}),
        Spec("likelihood.fit_gaussian_gradient", lk.fit_gaussian_gradient,
             lambda: {"x": _randn(30, 2), "steps": 3, "lr": 0.1, "log_every": 1, "progress": False}),
        Spec("likelihood.dequantize", lk.dequantize, lambda: {"levels": lk.to_levels(levels[:4]), "generator": _g()}),
        Spec("likelihood.discretized_gaussian_log_prob", lk.discretized_gaussian_log_prob,
             lambda: {"levels": lk.to_levels(levels[:4]), "mean": 8.0, "std": 2.0, "num_levels": 17}),
        Spec("likelihood.bce_log_score", lk.bce_log_score,
             lambda: {"levels": lk.to_levels(levels[:4]), "p": torch.full((64,), 0.3), "num_levels": 17}),
        Spec("likelihood.bce_total_mass", lk.bce_total_mass,
             lambda: {"p": torch.linspace(0.1, 0.9, 5), "num_levels": 17}),
        Spec("likelihood.categorical_mixture_sweep", lk.categorical_mixture_sweep,
             lambda: {"train_levels": lk.to_levels(levels[:20]), "val_levels": lk.to_levels(levels[20:30]),
                      "test_levels": lk.to_levels(levels[30:40]), "components": (1, 2), "alpha": 0.5,
                      "iterations": 2, "seed": 0, "tol": 1e-6}),
        Spec("pcca.as_params", pcca.as_params, lambda: {"params": _pcca_params(y1, y2), "name": "params"}),
        Spec("pcca.sample_moments", pcca.sample_moments, lambda: {"views": [y1.clone(), y2.clone()]}),
        Spec("pcca.pcca_log_likelihood", pcca.pcca_log_likelihood,
             lambda: {"views": [y1[:5].clone(), None], "params": _pcca_params(y1, y2)}),
        Spec("pcca.implied_canonical_correlations", pcca.implied_canonical_correlations,
             lambda: {"params": _pcca_params(y1, y2), "pair": (0, 1)}),
        Spec("pcca.fit_pcca_gradient", pcca.fit_pcca_gradient,
             lambda: {"views": [y1.clone(), y2.clone()], "latent_dim": 2, "steps": 2, "lr": 0.1, "seed": 0,
                      "log_every": 1, "progress": False}),
        Spec("pcca.fit_independent_gaussians", pcca.fit_independent_gaussians,
             lambda: {"views": [y1.clone(), y2.clone()]}),
        Spec("pcca.predict_view", pcca.predict_view,
             lambda: {"params": _pcca_params(y1, y2), "views": [y1[:5].clone(), None], "target": 1}),
        Spec("pcca.sample_pcca", pcca.sample_pcca, lambda: {"params": _pcca_params(y1, y2), "n": 4, "seed": 0}),
        Spec("pcca.pca_basis", pcca.pca_basis, lambda: {"x": y2.clone(), "dim": 2}),
        *_vae_specs(),
        *_aae_specs(),
        *_gan_specs(),
        *_cgan_specs(),
        *_chapter07_specs(),
        *_chapter08_specs(),
    ]


# Chapters 03-06. Every name in the modules' ``__all__`` that takes arguments is here, called with tiny settings (a
# few rows, hidden width 8, steps=2, progress=False), and so are the tensor-taking methods of their models and the
# training-step closures that gan_step / cgan_step return. Left out, and why:
# - the whole-experiment runners vae.vae_digits, aae.aae_digits, gan.mixture_experiment (and gan_ring / gan_grid),
#   gan.results_table, cgan.run_cgan and cgan.cgan_experiment: each trains full-size models for thousands of steps
#   (seconds to minutes per call, far too slow for dozens of broken calls); they validate their arguments through
#   the functions below (fit_vae, fit_model, fit_mixture, fit_cgan, ...), which are tested here with tiny settings;
# - gan.environment (no arguments); constants (NUM_LEVELS, PRIOR_STD, RECIPES, ...);
# - plain result containers without validation (experiments.TrainedResult, vae.Bound, aae.Optimisers, aae.MMDTest,
#   gan.TrainedGAN, cgan.FittedCGAN, cgan.CGANEvaluation); the validated configs GANConfig and CGANConfig are here;
# - the ``config`` of gan.fit_mixture, cgan.fit_cgan, mvae.train_mvae and mmgan.fit_mmgan is held at the tiny one:
#   broken to ``None`` it means the chapter's full recipe (8-30 s a call).
def _images(n: int = 16) -> torch.Tensor:
    from mmlib.data import load_multimodal_digits

    return load_multimodal_digits("cpu").test["image"][:n].clone()


def _labels(n: int = 16) -> torch.Tensor:
    from mmlib.data import load_multimodal_digits

    return load_multimodal_digits("cpu").test.label[:n].clone()


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=_g(seed))


def _enter_seeded(seed, device):
    from mmlib.vae import seeded

    with seeded(seed, device):
        pass


def _vae_specs() -> list[Spec]:
    from mmlib import vae

    model = vae.build_vae(2, 8, seed=0, device="cpu")
    gauss = vae.build_vae(2, 8, likelihood="gaussian", seed=0, device="cpu")
    imgs = _images()
    return [
        Spec("vae.seeded", _enter_seeded, lambda: {"seed": 0, "device": "cpu"}),
        Spec("vae.image_levels", vae.image_levels, lambda: {"images": imgs.clone()}),
        Spec("vae.reparameterise", vae.reparameterise,
             lambda: {"mu": _randn(4, 2), "log_var": _randn(4, 2, seed=1), "n_samples": 3, "generator": _g()}),
        Spec("vae.reparameterised_gradients", vae.reparameterised_gradients,
             lambda: {"f": lambda z: z.pow(2), "mu": 0.5, "sigma": 1.0, "n_samples": 8, "generator": _g()}),
        Spec("vae.score_function_gradients", vae.score_function_gradients,
             lambda: {"f": lambda z: z.pow(2), "mu": 0.5, "sigma": 1.0, "n_samples": 8, "generator": _g()}),
        Spec("vae.kl_to_standard_normal", vae.kl_to_standard_normal,
             lambda: {"mu": _randn(4, 2), "log_var": _randn(4, 2, seed=1)}),
        Spec("vae.kl_monte_carlo", vae.kl_monte_carlo,
             lambda: {"mu": _randn(4, 2), "log_var": _randn(4, 2, seed=1), "n_samples": 4, "generator": _g()}),
        Spec("vae.categorical_log_likelihood", vae.categorical_log_likelihood,
             lambda: {"logits": _randn(4, 64, 17), "levels": vae.image_levels(imgs[:4])}),
        Spec("vae.gaussian_log_likelihood", vae.gaussian_log_likelihood,
             lambda: {"mean": _randn(4, 64).sigmoid(), "x": imgs[:4].reshape(4, -1).clone(), "sigma": 0.1}),
        Spec("vae.elbo_terms", vae.elbo_terms, lambda: {"model": model, "images": imgs.clone(), "generator": _g()}),
        Spec("vae.negative_elbo", vae.negative_elbo,
             lambda: {"model": model, "images": imgs.clone(), "beta": 1.0, "generator": _g()}),
        Spec("vae.article_eq5", vae.article_eq5, lambda: {"model": model, "images": imgs.clone(), "generator": _g()}),
        Spec("vae.gaussian_elbo_terms", vae.gaussian_elbo_terms,
             lambda: {"model": gauss, "images": imgs.clone(), "generator": _g()}),
        Spec("vae.gaussian_negative_elbo", vae.gaussian_negative_elbo,
             lambda: {"model": gauss, "images": imgs.clone(), "beta": 1.0, "gamma": 2.0, "generator": _g()}),
        Spec("vae.article_eq6", vae.article_eq6,
             lambda: {"model": gauss, "images": imgs.clone(), "beta": 1.0, "gamma": 2.0, "generator": _g()}),
        Spec("vae.fit_vae", vae.fit_vae,
             lambda: {"images": imgs.clone(), "latent_dim": 2, "hidden": 8, "dropout": 0.1, "beta": 1.0, "steps": 2,
                      "batch_size": 8, "lr": 1e-3, "seed": 0, "progress": False, "desc": "VAE"}),
        Spec("vae.encode_mean", vae.encode_mean, lambda: {"model": model, "images": imgs.clone()}),
        Spec("vae.decode_mean", vae.decode_mean, lambda: {"model": model, "z": _randn(4, 2)}),
        Spec("vae.reconstruct", vae.reconstruct, lambda: {"model": model, "images": imgs.clone()}),
        Spec("vae.reconstruction_error", vae.reconstruction_error, lambda: {"model": model, "images": imgs.clone()}),
        Spec("vae.sample_images", vae.sample_images, lambda: {"model": model, "n": 4, "seed": 0}),
        Spec("vae.rate_distortion", vae.rate_distortion, lambda: {"model": model, "images": imgs.clone(), "seed": 0}),
        Spec("vae.log_importance_weights", vae.log_importance_weights,
             lambda: {"model": model, "images": imgs.clone(), "n_samples": 4, "seed": 0, "chunk_size": 2}),
        Spec("vae.iwae_estimates", vae.iwae_estimates, lambda: {"log_weights": _randn(8, 4), "k": 2}),
        Spec("vae.importance_weighted_bounds", vae.importance_weighted_bounds,
             lambda: {"model": model, "images": imgs.clone(), "ks": (1, 2), "n_samples": 4, "seed": 0}),
        Spec("vae.beta_sweep", vae.beta_sweep,
             lambda: {"train_images": imgs.clone(), "test_images": imgs[:8].clone(), "betas": [1.0], "steps": 2,
                      "latent_dim": 2, "seed": 0, "progress": False}),
        Spec("vae.VAE", vae.VAE,
             lambda: {"latent_dim": 2, "hidden": 8, "likelihood": "gaussian", "dropout": 0.1, "sigma": 0.1}),
        Spec("vae.build_vae", vae.build_vae,
             lambda: {"latent_dim": 2, "hidden": 8, "likelihood": "categorical", "dropout": 0.1, "sigma": 0.1,
                      "seed": 0, "device": "cpu"}),
        Spec("VAE.log_likelihood", model.log_likelihood, lambda: {"images": imgs.clone(), "z": _randn(16, 2)}),
        Spec("VAE.log_likelihood[gaussian]", gauss.log_likelihood,
             lambda: {"images": imgs.clone(), "z": _randn(16, 2)}),
        Spec("vae.GaussianEncoder", vae.GaussianEncoder, lambda: {"latent_dim": 2, "hidden": 8, "n_pixels": 64}),
        Spec("GaussianEncoder.forward", model.encoder, lambda: {"images": imgs.clone()}),
        Spec("vae.CategoricalDecoder", vae.CategoricalDecoder,
             lambda: {"latent_dim": 2, "hidden": 8, "n_pixels": 64, "num_levels": 17, "dropout": 0.1}),
        Spec("CategoricalDecoder.forward", model.decoder, lambda: {"z": _randn(4, 2)}),
        Spec("vae.GaussianDecoder", vae.GaussianDecoder,
             lambda: {"latent_dim": 2, "hidden": 8, "n_pixels": 64, "dropout": 0.1}),
        Spec("GaussianDecoder.forward", gauss.decoder, lambda: {"z": _randn(4, 2)}),
    ]


def _aae_specs() -> list[Spec]:
    from mmlib import aae

    prior = aae.RingPrior(device="cpu")
    ae = aae.build_model("ae", hidden=8, seed=0, device="cpu")
    mvae = aae.build_model("vae", hidden=8, seed=0, device="cpu")
    disc = aae.Discriminator(2, 8, 10)
    imgs, labels = _images(), _labels()

    def fresh_aae() -> dict:
        model = aae.build_model("aae-labels", hidden=8, seed=0, device="cpu")
        return {"model": model, "optimisers": aae.make_optimisers(model, 1e-3)}

    return [
        Spec("aae.RingPrior", aae.RingPrior, lambda: {"components": 10, "radius": 4.0, "std": 0.5, "device": "cpu"}),
        Spec("RingPrior.log_prob", prior.log_prob, lambda: {"z": _randn(8, 2)}),
        Spec("RingPrior.sample", prior.sample,
             lambda: {"n": 8, "generator": _g(), "components": torch.arange(8) % 10}),
        Spec("aae.Discriminator", aae.Discriminator, lambda: {"latent_dim": 2, "hidden": 8, "n_classes": 10}),
        Spec("aae.Discriminator.forward", disc, lambda: {"z": _randn(8, 2), "labels": torch.arange(8)}),
        Spec("aae.Autoencoder", aae.Autoencoder, lambda: {"latent_dim": 2, "hidden": 8, "dropout": 0.1}),
        Spec("Autoencoder.encode", ae.encode, lambda: {"images": imgs.clone()}),
        Spec("aae.AdversarialAutoencoder", aae.AdversarialAutoencoder,
             lambda: {"latent_dim": 2, "hidden": 8, "dropout": 0.1, "n_classes": 10}),
        Spec("aae.MixturePriorVAE", aae.MixturePriorVAE, lambda: {"latent_dim": 2, "hidden": 8, "dropout": 0.1}),
        Spec("MixturePriorVAE.encode", mvae.encode, lambda: {"images": imgs.clone()}),
        Spec("aae.build_model", aae.build_model, lambda: {"kind": "aae", "seed": 0, "device": "cpu", "hidden": 8}),
        Spec("aae.reconstruction_nll", aae.reconstruction_nll, lambda: {"model": ae, "images": imgs.clone()}),
        Spec("aae.discriminator_loss", aae.discriminator_loss,
             lambda: {"discriminator": disc, "z_prior": _randn(8, 2), "z_codes": _randn(8, 2, seed=1),
                      "labels_prior": torch.arange(8), "labels_codes": torch.arange(8) % 3}),
        Spec("aae.encoder_adversarial_loss", aae.encoder_adversarial_loss,
             lambda: {"discriminator": disc, "z_codes": _randn(8, 2), "labels": torch.arange(8)}),
        Spec("aae.make_optimisers", aae.make_optimisers, lambda: {"model": ae, "lr": 1e-3}),
        Spec("aae.aae_step", aae.aae_step,
             lambda: {**fresh_aae(), "prior": prior, "images": imgs.clone(), "labels": labels.clone(),
                      "weight": 5.0}),
        Spec("aae.mixture_vae_loss", aae.mixture_vae_loss, lambda: {"model": mvae, "images": imgs.clone(),
                                                                     "prior": prior}),
        Spec("aae.fit_model", aae.fit_model,
             lambda: {"kind": "aae-labels", "images": imgs.clone(), "labels": labels.clone(), "prior": prior,
                      "steps": 2, "batch_size": 8, "lr": 1e-3, "seed": 0, "progress": False}),
        Spec("aae.latent_codes", aae.latent_codes, lambda: {"model": mvae, "images": imgs.clone(), "seed": 0}),
        Spec("aae.decode_expected", aae.decode_expected, lambda: {"model": ae, "z": _randn(4, 2)}),
        Spec("aae.generate", aae.generate,
             lambda: {"model": ae, "prior": prior, "n": 8, "seed": 0, "components": torch.arange(8) % 10}),
        Spec("aae.mmd2", aae.mmd2, lambda: {"x": _randn(10, 2), "y": _randn(12, 2, seed=1), "bandwidth": 1.0}),
        Spec("aae.mmd_permutation_test", aae.mmd_permutation_test,
             lambda: {"x": _randn(10, 2), "y": _randn(12, 2, seed=1), "bandwidth": 1.0, "permutations": 5,
                      "seed": 0}),
    ]


def _gan_step_call(real, **kwargs):
    from mmlib.gan import gan_step

    return gan_step(**kwargs)(real)


def _gan_specs() -> list[Spec]:
    from mmlib import gan

    gen, disc = gan.Generator(2, 2, 8, 1), gan.Discriminator(2, 8, 1, pack=2)
    tiny = gan.GANConfig(hidden=8, g_layers=1, d_layers=1, steps=2, batch_size=16, n_train=64)

    def fresh_game() -> dict:
        g, d = gan.Generator(2, 2, 8, 1), gan.Discriminator(2, 8, 1)
        return {"generator": g, "discriminator": d, "opt_g": torch.optim.Adam(g.parameters()),
                "opt_d": torch.optim.Adam(d.parameters())}

    return [
        Spec("gan.Generator", gan.Generator,
             lambda: {"noise_dim": 2, "data_dim": 2, "hidden": 8, "layers": 1, "categories": 3}),
        Spec("gan.Generator.forward", gen, lambda: {"z": _randn(8, 2)}),
        Spec("gan.Discriminator", gan.Discriminator,
             lambda: {"data_dim": 2, "hidden": 8, "layers": 1, "pack": 2, "unit": 0.5}),
        Spec("gan.Discriminator.forward", disc, lambda: {"x": _randn(8, 2)}),
        Spec("gan.pack_samples", gan.pack_samples, lambda: {"x": _randn(8, 2), "pack": 2}),
        Spec("gan.init_through_data", gan.init_through_data,
             lambda: {"discriminator": gan.Discriminator(2, 8, 1), "real": _randn(32, 2)}),
        Spec("gan.discriminator_loss", gan.discriminator_loss,
             lambda: {"real_logits": _randn(8), "fake_logits": _randn(6, seed=1)}),
        Spec("gan.generator_loss", gan.generator_loss, lambda: {"fake_logits": _randn(8), "kind": "minimax"}),
        Spec("gan.optimal_discriminator", gan.optimal_discriminator,
             lambda: {"p_data": torch.rand(8, generator=_g()), "p_model": torch.rand(8, generator=_g(1)) + 0.1}),
        Spec("gan.article_eq4_loss", gan.article_eq4_loss,
             lambda: {"log_q_generated": _randn(8), "log_q_real": _randn(8, seed=1)}),
        Spec("gan.draw_noise", gan.draw_noise,
             lambda: {"n": 8, "noise_dim": 2, "generator": _g(), "device": "cpu", "categories": 3}),
        Spec("gan.gan_step", gan.gan_step,
             lambda: {**fresh_game(), "noise": _g(), "loss": "minimax", "lr_drop_at": 1, "lr_drop": 0.1,
                      "d_lr_drop": 0.5}),
        Spec("gan.gan_step()(real)", _gan_step_call,
             lambda: {**fresh_game(), "noise": _g(), "loss": "minimax", "lr_drop_at": 0, "lr_drop": 0.1,
                      "d_lr_drop": 0.5, "real": _randn(8, 2)}),
        Spec("gan.generator_gradient_norms", gan.generator_gradient_norms,
             lambda: {"generator": gen, "discriminator": disc, "z": _randn(8, 2)}),
        Spec("gan.train_discriminator", gan.train_discriminator,
             lambda: {"real": _randn(32, 2), "fake": _randn(32, 2, seed=1), "hidden": 8, "layers": 1, "steps": 2,
                      "batch_size": 16, "lr": 1e-3, "final_fraction": 0.5, "lr_drop": 0.1, "seed": 0,
                      "device": "cpu", "progress": False}),
        Spec("gan.GANConfig", gan.GANConfig,
             lambda: {"hidden": 8, "g_layers": 1, "d_layers": 1, "noise_dim": 2, "pack": 2, "d_unit": 0.5,
                      "init_through_data": True, "steps": 2, "batch_size": 16, "lr": 1e-3, "betas": (0.5, 0.9),
                      "final_fraction": 0.5, "lr_drop": 0.1, "d_lr_drop": 0.1, "loss": "minimax", "n_train": 64,
                      "noise_categories": 3}),
        Spec("gan.train_gan", gan.train_gan,
             lambda: {"data": _randn(64, 2), "config": tiny, "seed": 0, "device": "cpu", "progress": False,
                      "desc": "GAN"}),
        Spec("gan.sample", gan.sample, lambda: {"generator": gen, "n": 8, "seed": 0}),
        Spec("gan.mixture", gan.mixture, lambda: {"name": "grid"}),
        Spec("gan.fit_mixture", partial(gan.fit_mixture, config=tiny),  # config: see the note above _images
             lambda: {"name": "ring", "setting": "plain", "seed": 0, "device": "cpu", "progress": False}),
        Spec("gan.load_results", gan.load_results, lambda: {"path": gan.RESULTS_FILE}),
    ]


def _cgan_step_call(c, x, **kwargs):
    from mmlib.cgan import cgan_step

    return cgan_step(**kwargs)(c, x)


def _cgan_specs() -> list[Spec]:
    from mmlib import cgan
    from mmlib.classifiers import load_classifiers
    from mmlib.data import TEXT_LENGTH, TEXT_VOCAB, load_multimodal_digits

    ds = load_multimodal_digits("cpu")
    imgs, labels, text = ds.test["image"][:16], ds.test.label[:16], ds.test["text"][:16]
    G, D = cgan.build_cgan("text", "image", noise_dim=4, embed_dim=4, hidden=8, seed=0, device="cpu")
    tiny = cgan.CGANConfig(steps=2, batch_size=8, r1_every=1, noise_dim=4, embed_dim=4, hidden=8)
    layer = cgan.TokenLinear(TEXT_LENGTH, len(TEXT_VOCAB), 4)
    # two test conditions and three training targets of every digit (what the per-digit Fréchet distances need)
    test_idx = torch.cat([torch.nonzero(ds.test.label == k)[:2, 0] for k in range(10)])
    train_idx = torch.cat([torch.nonzero(ds.train.label == k)[:3, 0] for k in range(10)])
    clf = load_classifiers("cpu")["image"]

    def fresh_game() -> dict:
        g, d = cgan.build_cgan("text", "image", noise_dim=4, embed_dim=4, hidden=8, seed=0, device="cpu")
        return {"generator": g, "discriminator": d, "g_optimizer": torch.optim.Adam(g.parameters()),
                "d_optimizer": torch.optim.Adam(d.parameters())}

    def r1_inputs() -> dict:
        x = _randn(4, 3).requires_grad_(True)
        return {"real_logits": torch.tanh(x).sum(1), "real_inputs": x}

    return [
        Spec("cgan.modality_dim", cgan.modality_dim, lambda: {"modality": "audio"}),
        Spec("cgan.to_vector", cgan.to_vector, lambda: {"x": text.clone(), "modality": "text"}),
        Spec("cgan.to_vector[image]", cgan.to_vector, lambda: {"x": imgs.clone(), "modality": "image"}),
        Spec("cgan.mlp", cgan.mlp, lambda: {"sizes": [4, 8, 2], "slope": 0.2}),
        Spec("cgan.TokenLinear", cgan.TokenLinear, lambda: {"length": 4, "vocab": 6, "out_features": 3}),
        Spec("TokenLinear.forward", layer, lambda: {"tokens": text.clone()}),
        Spec("cgan.ConditionEncoder", cgan.ConditionEncoder, lambda: {"source": "text", "embed_dim": 4, "hidden": 8}),
        Spec("ConditionEncoder.forward", G.encoder, lambda: {"c": text.clone()}),
        Spec("cgan.ConditionalGenerator", cgan.ConditionalGenerator,
             lambda: {"source": "text", "target": "audio", "noise_dim": 4, "embed_dim": 4, "hidden": 8}),
        Spec("ConditionalGenerator.forward", G, lambda: {"z": _randn(16, 4), "c": text.clone()}),
        Spec("cgan.ProjectionDiscriminator", cgan.ProjectionDiscriminator,
             lambda: {"source": 5, "target": "image", "hidden": 8}),
        Spec("ProjectionDiscriminator.forward", D, lambda: {"x": imgs.clone(), "c": text.clone()}),
        Spec("ProjectionDiscriminator.score", D.score, lambda: {"x": imgs.clone(), "embedding": _randn(16, 8)}),
        Spec("cgan.build_cgan", cgan.build_cgan,
             lambda: {"source": "text", "target": "image", "noise_dim": 4, "embed_dim": 4, "hidden": 8, "seed": 0,
                      "device": "cpu"}),
        Spec("cgan.discriminator_loss", cgan.discriminator_loss,
             lambda: {"real_logits": _randn(8), "fake_logits": _randn(16, seed=1)}),
        Spec("cgan.generator_loss", cgan.generator_loss, lambda: {"fake_logits": _randn(8)}),
        Spec("cgan.r1_penalty", cgan.r1_penalty, r1_inputs),
        Spec("cgan.mode_seeking_loss", cgan.mode_seeking_loss,
             lambda: {"fake_a": _randn(4, 1, 8, 8), "fake_b": _randn(4, 1, 8, 8, seed=1), "z_a": _randn(4, 3, seed=2),
                      "z_b": _randn(4, 3, seed=3)}),
        Spec("cgan.cgan_step", cgan.cgan_step,
             lambda: {**fresh_game(), "r1_weight": 1.0, "mismatch": True, "mode_seeking": 0.02, "noise": _g(),
                      "ema": None, "ema_decay": 0.9, "r1_every": 2}),
        Spec("cgan.cgan_step()(c, x)", _cgan_step_call,
             lambda: {**fresh_game(), "r1_weight": 1.0, "mismatch": True, "mode_seeking": 0.02, "noise": _g(),
                      "ema_decay": 0.9, "r1_every": 1, "c": text[:8].clone(), "x": imgs[:8].clone()}),
        Spec("cgan.CGANConfig", cgan.CGANConfig,
             lambda: {"steps": 2, "batch_size": 8, "lr": 1e-3, "betas": (0.5, 0.9), "r1_weight": 1.0, "r1_every": 2,
                      "mismatch": False, "mode_seeking": 0.02, "ema_decay": 0.9, "noise_dim": 4, "embed_dim": 4,
                      "hidden": 8}),
        Spec("cgan.fit_cgan", partial(cgan.fit_cgan, config=tiny),  # config: see the note above _images
             lambda: {"source": "text", "target": "image", "conditions": text.clone(), "targets": imgs.clone(),
                      "seed": 0, "device": "cpu", "progress": False}),
        Spec("cgan.generate", cgan.generate,
             lambda: {"generator": G, "conditions": text.clone(), "n_per_condition": 2, "seed": 0,
                      "noise_scale": 1.0}),
        Spec("cgan.one_per_digit", cgan.one_per_digit,
             lambda: {"samples": torch.rand(16, 3, 1, 8, 8, generator=_g()), "labels": labels.clone(),
                      "predicted": torch.arange(48).reshape(16, 3) % 10}),
        Spec("cgan.conditional_accuracy", cgan.conditional_accuracy,
             lambda: {"predicted": labels.clone(), "condition_labels": labels.flip(0)}),
        Spec("cgan.within_condition_variance", cgan.within_condition_variance,
             lambda: {"samples": torch.rand(8, 3, 1, 8, 8, generator=_g())}),
        Spec("cgan.real_within_digit_variance", cgan.real_within_digit_variance,
             lambda: {"x": ds.train["image"][train_idx].clone(), "labels": ds.train.label[train_idx].clone()}),
        Spec("cgan.class_frechet_distances", cgan.class_frechet_distances,
             lambda: {"features": _randn(30, 3), "labels": torch.arange(30) % 10, "reference": _randn(40, 3, seed=1),
                      "reference_labels": torch.arange(40) % 10}),
        Spec("cgan.evaluate_cgan", cgan.evaluate_cgan,
             lambda: {"samples": torch.rand(20, 2, 1, 8, 8, generator=_g()),
                      "condition_labels": ds.test.label[test_idx].clone(), "real_test": ds.test["image"][test_idx],
                      "real_train": ds.train["image"][train_idx], "train_labels": ds.train.label[train_idx],
                      "classifier": clf}),
    ]


def _chapter07_specs() -> list[Spec]:
    """Public functions of notebook 07's modules (fusion and the multimodal VAE). Left out: the whole-experiment
    runners run_mvae, mvae_experiment and the registered mvae_poe/moe/mopoe_experiment (a minute a call; their
    arguments go through train_mvae and evaluate_mvae, tested here)."""
    from mmlib import fusion, mvae
    from mmlib.data import load_multimodal_digits

    def experts(k: int = 3, n: int = 4, d: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        gen = _g(seed)
        return torch.randn(k, n, d, generator=gen), torch.randn(k, n, d, generator=gen)

    from mmlib.classifiers import load_classifiers

    ds = load_multimodal_digits("cpu")
    test = ds.test
    clf = load_classifiers("cpu")
    model = mvae.build_mvae("moe", mvae.MVAEConfig(hidden=8, prior_components=3), seed=0, device="cpu")
    mix = fusion.mixture_of_experts(*experts())
    mods = ("image", "text", "audio")
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
        Spec("fusion.subset_masks", fusion.subset_masks, lambda: {"num_experts": 3, "device": "cpu"}),
        Spec("fusion.mixture_sample", fusion.mixture_sample,
             lambda: {"means": mix[0].clone(), "log_vars": mix[1].clone(), "weights": mix[2].clone(),
                      "generator": _g()}),
        Spec("fusion.mixture_mean", fusion.mixture_mean,
             lambda: {"means": mix[0].clone(), "log_vars": mix[1].clone(), "weights": mix[2].clone()}),
        Spec("mvae.MVAEConfig", mvae.MVAEConfig, lambda: {"latent_dim": 2, "hidden": 8, "steps": 2, "lr": 1e-3}),
        Spec("mvae.build_mvae", mvae.build_mvae,
             lambda: {"fusion": "poe", "config": mvae.MVAEConfig(hidden=8), "seed": 0, "device": "cpu"}),
        *[Spec(f"mvae.{name}", fn, lambda: {"model": model, "x": {m: test[m][:4].clone() for m in mods},
                                            "beta": 1.0, "generator": _g()})
          for name, fn in (("mvae_loss", mvae.mvae_loss), ("mmvae_loss", mvae.mmvae_loss),
                           ("mopoe_loss", mvae.mopoe_loss), ("fusion_loss", mvae.fusion_loss))],
        Spec("mvae.elbo", mvae.elbo,
             lambda: {"model": model, "x": {m: test[m][:4].clone() for m in mods}, "num_samples": 2,
                      "generator": _g()}),
        Spec("mvae.fit_prior", mvae.fit_prior,
             lambda: {"model": copy.deepcopy(model), "x": {m: test[m][:30].clone() for m in mods}, "components": 3,
                      "iters": 3, "min_var": 1e-3, "generator": _g()}),
        Spec("mvae.generate_cross", mvae.generate_cross,
             lambda: {"model": model, "x": {"text": test["text"][:4].clone()}, "targets": ["image"],
                      "generator": _g()}),
        Spec("mvae.latent_probe_accuracy", mvae.latent_probe_accuracy,
             lambda: {"model": model, "ds": ds, "source": ["text"]}),
        Spec("mvae.retrieval_precision", mvae.retrieval_precision,
             lambda: {"model": model, "split": ds.test, "source": "image", "target": "audio", "ks": (1, 10)}),
        Spec("mvae.evaluate_generation", mvae.evaluate_generation,
             lambda: {"joint_samples": {m: test[m][:135].clone() for m in ("image", "text")},
                      "cross_samples": {("text", "image"): test["image"].clone()}, "ds": ds, "classifiers": clf,
                      "split": "test"}),
        Spec("mvae.evaluate_mvae", mvae.evaluate_mvae,
             lambda: {"model": model, "ds": ds, "classifiers": clf, "seed": 0}),
        Spec("mvae.BinomialLevels", mvae.BinomialLevels, lambda: {"shape": (1, 8, 8), "levels": 16}),
        Spec("mvae.AutoregressiveTokens", mvae.AutoregressiveTokens,
             lambda: {"length": 16, "vocab_size": 30, "hidden": 8, "embed_dim": 4}),
        Spec("mvae.GaussianSpectrogram", mvae.GaussianSpectrogram, lambda: {"shape": (28, 32), "min_scale": 0.02}),
        Spec("mvae.MixturePrior", mvae.MixturePrior, lambda: {"components": 3, "latent_dim": 2}),
        Spec("mvae.Modality", mvae.Modality,
             lambda: {"name": "image", "encoder": torch.nn.Linear(64, 4), "decoder": torch.nn.Linear(2, 64),
                      "likelihood": mvae.BinomialLevels()}),
        Spec("mvae.MultimodalVAE", mvae.MultimodalVAE,
             lambda: {"modalities": [mvae.build_modality(m, 2, 8) for m in ("image", "text")], "latent_dim": 2,
                      "fusion": "moe", "prior_components": 2}),
        # config held at a tiny one: broken to None it means the chapter's full training (half a minute a call)
        Spec("mvae.train_mvae",
             lambda fusion, seed, device, progress: mvae.train_mvae(
                 fusion, config=mvae.MVAEConfig(hidden=8, steps=2, refit_prior=0), seed=seed, device=device,
                 progress=progress),
             lambda: {"fusion": "moe", "seed": 0, "device": "cpu", "progress": False}),
    ]


def _mmgan_step_call(image, text, audio, label, **kwargs):
    from mmlib.mmgan import mmgan_step

    return mmgan_step(**kwargs)(image, text, audio, label)


def _chapter08_specs() -> list[Spec]:
    """Public functions of notebook 08's module (the joint GAN and its combination with the multimodal VAE). Left out:
    run_mmgan, fit_vae_and_decoder and mmgan_experiment (whole-experiment runners, a minute a call; their arguments go
    through fit_mmgan, fit_latent_decoder and the functions below) and the result container FittedMMGAN."""
    from mmlib import cgan, mmgan, mvae
    from mmlib.data import load_multimodal_digits

    test = load_multimodal_digits("cpu").test
    rows = torch.arange(20)
    triple = {m: test[m][rows].clone() for m in ("image", "text", "audio")}
    digits = test.label[rows].clone()
    tiny = {"noise_dim": 4, "hidden": 8, "head_hidden": 8, "text_hidden": 8, "char_dim": 4, "branch": 4}
    G, D = mmgan.build_mmgan(**tiny, seed=0, device="cpu")
    vae = mvae.build_mvae("moe", mvae.MVAEConfig(hidden=8, prior_components=3), seed=0, device="cpu")
    decoder = mmgan.fit_latent_decoder(vae, triple, config=cgan.CGANConfig(steps=2, hidden=8, embed_dim=4,
                                                                           noise_dim=2), progress=False)
    game = mmgan.MMGANConfig(steps=2, batch_size=8, **tiny)

    def fresh_players() -> dict:
        g, d = mmgan.build_mmgan(**tiny, seed=0, device="cpu")
        return {"generator": g, "discriminator": d, "g_optimizer": torch.optim.Adam(g.parameters()),
                "d_optimizer": torch.optim.Adam(d.parameters())}

    return [
        Spec("mmgan.straight_through_argmax", mmgan.straight_through_argmax,
             lambda: {"logits": _randn(4, 16, 73), "tau": 1.0}),
        Spec("mmgan.JointGenerator", mmgan.JointGenerator,
             lambda: {k: v for k, v in tiny.items() if k != "branch"}),
        Spec("mmgan.JointDiscriminator", mmgan.JointDiscriminator, lambda: {"hidden": 8, "branch": 4, "char_dim": 4}),
        Spec("JointGenerator.forward", G, lambda: {"z": _randn(6, 4), "y": torch.arange(6) % 10}),
        Spec("mmgan.build_mmgan", mmgan.build_mmgan, lambda: dict(tiny, seed=0, device="cpu")),
        Spec("mmgan.as_discriminator_input", mmgan.as_discriminator_input, lambda: {"x": dict(triple)}),
        Spec("mmgan.shuffle_modality", mmgan.shuffle_modality,
             lambda: {"x": dict(triple), "modality": "text", "shift": 1}),
        Spec("mmgan.MMGANConfig", mmgan.MMGANConfig, lambda: {"steps": 2, "batch_size": 8, "lr": 1e-3, **tiny}),
        Spec("mmgan.mmgan_step", mmgan.mmgan_step,
             lambda: {**fresh_players(), "r1_weight": 1.0, "mismatch": True, "noise": _g(), "ema": None,
                      "ema_decay": 0.9, "r1_every": 2}),
        Spec("mmgan.mmgan_step()(image, text, audio, label)", _mmgan_step_call,
             lambda: {**fresh_players(), "image": triple["image"][:8].clone(), "text": triple["text"][:8].clone(),
                      "audio": triple["audio"][:8].clone(), "label": digits[:8].clone()}),
        Spec("cgan.GameConfig", cgan.GameConfig,
             lambda: {"steps": 2, "batch_size": 8, "lr": 1e-3, "betas": (0.5, 0.9), "r1_weight": 1.0, "r1_every": 2,
                      "mismatch": True, "ema_decay": 0.9}),
        # config held at the tiny one: broken to None it means the chapter's full training (20 s a call); a config
        # of the wrong type is tested in tests/test_mmgan.py
        Spec("mmgan.fit_mmgan",
             lambda data, labels, seed, device, progress: mmgan.fit_mmgan(
                 data, labels, config=game, seed=seed, device=device, progress=progress),
             lambda: {"data": dict(triple), "labels": digits.clone(), "seed": 0, "device": "cpu", "progress": False}),
        Spec("mmgan.generate_joint", mmgan.generate_joint, lambda: {"generator": G, "n": 4, "seed": 0}),
        Spec("mmgan.discriminator_scores", mmgan.discriminator_scores,
             lambda: {"discriminator": D, "x": dict(triple), "y": digits.clone()}),
        Spec("mmgan.generate_combined", mmgan.generate_combined,
             lambda: {"vae": vae, "decoder": decoder, "n": 4, "seed": 0}),
        Spec("mmgan.generate_combined_cross", mmgan.generate_combined_cross,
             lambda: {"vae": vae, "decoder": decoder, "source": "text", "x": triple["text"][:4].clone(), "seed": 0}),
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
    """A broken argument must never surface as a foreign exception from deep inside torch; when mmlib rejects it, the
    ValueError/TypeError names the argument. Some drawn values are legitimately accepted (a list where a tensor is
    expected, NaN where a training step skips the host-synchronising check), except a bare ``object()``, which no
    argument of the course accepts."""
    kwargs = spec.valid()
    kwargs[arg] = data.draw(_bad_values(kwargs[arg]), label=arg)
    CASES_TRIED["n"] += 1
    try:
        spec.fn(**kwargs)
        assert type(kwargs[arg]) is not object, f"{spec.name}({arg}=object()): accepted an argument of no use"
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
