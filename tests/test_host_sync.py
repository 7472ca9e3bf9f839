"""GPU-readiness of every training step in the course: no host synchronisation inside a step (issue "Performance").

On a GPU the host queues kernels and runs ahead; an operation whose result the host must *read* (``.item()``,
``int(t)``, ``bool(t)``, boolean-mask indexing, whose output size depends on the data, ``torch.linalg.solve``'s
error check) or a tensor built from Python data (a host-to-device copy) makes it wait for the device, every step.
These tests run a few steps of every chapter's training, on the CPU, under a dispatch mode that records such
operations, and require none. The trainer's own once-per-log copy of the losses happens outside the step.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import replace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mmlib import aae, cgan, classifiers, gan, likelihood, mmgan, mvae, pcca, vae
from mmlib import train as train_module
from mmlib.data import load_multimodal_digits

aten = torch.ops.aten
#: Operations whose result the host reads (or whose output shape depends on the data).
HOST_READS = {aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default,
              aten.is_nonzero.default, aten.equal.default, aten._linalg_check_errors.default,
              aten.repeat_interleave.Tensor}
#: A tensor made from Python numbers or lists: on a GPU, a copy from host memory.
FROM_PYTHON = {aten.lift_fresh.default}
STEPS = 3


def _where() -> str:
    """The innermost mmlib frame that led here, as ``file:line in function``."""
    frames = [f for f in traceback.extract_stack() if "/mmlib/" in f.filename.replace("\\", "/")]
    return f"{frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno} in {frames[-1].name}" if frames else "?"


_IN_ONE_HOT = [0]


def _cpu_only_check() -> bool:
    """Range checks that run on the CPU only, not GPU synchronisations: ``mmlib.checks.check_indices`` (documented
    there) and ``F.one_hot`` with ``num_classes`` given (PyTorch checks the class range on the CPU only and relies
    on the device's assert on CUDA and MPS; see aten/src/ATen/native/Onehot.cpp)."""
    return _IN_ONE_HOT[0] > 0 or any(f.name == "check_indices" and f.filename.endswith("checks.py")
                                     for f in traceback.extract_stack())


def _one_hot(real: Callable) -> Callable:
    def one_hot(tensor: torch.Tensor, num_classes: int = -1) -> torch.Tensor:
        if num_classes < 0:  # without num_classes, one_hot reads the largest class: a real synchronisation
            return real(tensor, num_classes)
        _IN_ONE_HOT[0] += 1
        try:
            return real(tensor, num_classes)
        finally:
            _IN_ONE_HOT[0] -= 1

    return one_hot


class HostSyncs(TorchDispatchMode):
    """Records, with the mmlib line that caused it, every operation that would make the host wait for a GPU."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        bool_index = func is aten.index.Tensor and any(
            isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in args[1] if i is not None)
        if (func in HOST_READS or func in FROM_PYTHON or bool_index) and not _cpu_only_check():
            self.found.append(f"{func} at {_where()}")
        return func(*args, **kwargs)


@pytest.fixture
def watched_steps(monkeypatch) -> list[str]:
    """Every module's ``train`` runs :data:`STEPS` steps, each under :class:`HostSyncs`; returns what they found."""
    found: list[str] = []
    real_train = train_module.train

    def short_train(step: Callable, tensors, *, steps: int, **kwargs):
        def watched(*batch):
            with HostSyncs() as mode:
                losses = step(*batch)
            found.extend(mode.found)
            return losses

        kwargs["log_every"] = STEPS
        return real_train(watched, tensors, steps=min(steps, STEPS), **kwargs)

    monkeypatch.setattr(torch.nn.functional, "one_hot", _one_hot(torch.nn.functional.one_hot))
    monkeypatch.setattr(train_module, "train", short_train)  # what functions importing it when called get
    for module in (aae, cgan, gan, likelihood, mmgan, pcca, vae):  # and the modules that imported it at the top
        monkeypatch.setattr(module, "train", short_train)
    return found


@pytest.fixture(scope="module")
def ds():
    return load_multimodal_digits()


def test_the_detector_sees_what_would_stall_a_gpu():
    x, mask = torch.randn(4, 3), torch.tensor([True, False, True, True])
    for make in (lambda: float(x.sum()), lambda: x[mask], lambda: torch.linalg.solve(torch.eye(3), x.T),
                 lambda: torch.tensor([1.0, 2.0]), lambda: x.nonzero(), lambda: x[[0, 2]]):
        with HostSyncs() as mode:
            make()
        assert mode.found, "each of these makes the host wait for the device (or copies from the host)"
    with HostSyncs() as mode:
        (x @ x.T).relu().sum().neg()
    assert mode.found == [], "queued arithmetic needs no synchronisation"


def test_the_detector_tells_one_hots_range_check_from_a_read(monkeypatch):
    monkeypatch.setattr(torch.nn.functional, "one_hot", _one_hot(torch.nn.functional.one_hot))
    ids = torch.tensor([0, 3, 1])
    with HostSyncs() as mode:
        torch.nn.functional.one_hot(ids, 5)
    assert mode.found == [], "with num_classes, one_hot's range check runs on the CPU only"
    with HostSyncs() as mode:
        torch.nn.functional.one_hot(ids)
    assert mode.found, "without it, one_hot reads the largest id: a synchronisation on any device"


def test_chapters_01_02_gradient_fits(watched_steps):
    likelihood.fit_gaussian_gradient(torch.randn(200, 1), progress=False)
    y1, y2 = torch.randn(100, 3), torch.randn(100, 2)
    pcca.fit_pcca_gradient([y1, y2], 1, progress=False)
    assert watched_steps == []


def test_chapter_03_gan_steps(watched_steps):
    data = gan.mixture("grid")[0](2048, seed=0)
    gan.train_gan(data, replace(gan.RECIPES["grid"], n_train=2048), progress=False)  # categories, EMA, lr drop
    gan.train_gan(data, gan.PLAIN_GAN, progress=False)
    gan.train_discriminator(data[:512], torch.randn(512, 2), progress=False)
    assert watched_steps == []


def test_chapters_04_05_autoencoder_steps(watched_steps, ds):
    images = ds.train["image"]
    vae.fit_vae(images, progress=False)
    prior = aae.RingPrior()
    for kind in aae.KINDS:
        aae.fit_model(kind, images, ds.train.label, prior=prior, progress=False)
    assert watched_steps == []


def test_chapter_06_conditional_gan_steps(watched_steps, ds):
    for source, target in cgan.PAIRS:
        cgan.fit_cgan(source, target, ds.train[source], ds.train[target], progress=False)
    assert watched_steps == []


@pytest.mark.parametrize("fusion", list(mvae.FUSIONS))
def test_chapter_07_multimodal_vae_steps(watched_steps, fusion, monkeypatch):
    # MVAE's loss reads its random subset on the host where that is free (the CPU): test the GPU's way here
    monkeypatch.setattr(mvae, "_host_reads_are_free", lambda device: False)
    mvae.train_mvae(fusion, progress=False)
    assert watched_steps == []


def test_chapter_08_joint_gan_and_latent_decoder_steps(watched_steps, ds):
    mmgan.fit_mmgan(ds.train.x, ds.train.label, progress=False)
    model, _ = mvae.train_mvae("moe", progress=False)
    mmgan.fit_latent_decoder(model, ds.train.x, progress=False)
    assert watched_steps == []


def test_evaluation_classifiers_steps(watched_steps):
    classifiers.train_classifier("image")
    assert watched_steps == []
