"""Unit tests of mmlib's core: device, seed, trainer, checkpoints, experiments, command line, exercises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mmlib import checkpoint, device, exercises, experiments, seed, train
from mmlib.checks import check_choice, check_int, check_positive, check_tensor

ROOT = Path(__file__).resolve().parent.parent


# --- device -----------------------------------------------------------------------------------------------------
def test_device_default_and_override(monkeypatch):
    monkeypatch.delenv("MMLIB_DEVICE", raising=False)
    auto = device.get_device()
    expected = "cuda" if torch.cuda.is_available() else ("mps" if device._mps_available() else "cpu")
    assert auto.type == expected, "CUDA, then MPS, then CPU"
    monkeypatch.setenv("MMLIB_DEVICE", "cpu")
    assert device.get_device().type == "cpu", "the environment variable overrides the choice"
    assert device.get_device("cpu").type == "cpu"


def test_device_rejects_unknown_and_unavailable(monkeypatch):
    with pytest.raises(ValueError, match="preferred"):
        device.get_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            device.get_device("cuda")


def test_no_hard_coded_cuda_in_package():
    for path in (ROOT / "mmlib").glob("*.py"):
        assert ".cuda()" not in path.read_text(), f"{path.name} never hard-codes .cuda()"


# --- seed -------------------------------------------------------------------------------------------------------
def test_seed_everything_repeats_draws():
    seed.seed_everything(3)
    a = (torch.randn(4), np.random.rand(2))
    seed.seed_everything(3)
    b = (torch.randn(4), np.random.rand(2))
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1])


@pytest.mark.parametrize("bad", [-1, 2**32, 1.5, "0", True])
def test_seed_rejects_bad_seed(bad):
    with pytest.raises((TypeError, ValueError), match="seed"):
        seed.seed_everything(bad)


# --- trainer ----------------------------------------------------------------------------------------------------
def _regression(n: int = 256):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=gen)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.01 * torch.randn(n, generator=gen)
    return x, y


def test_trainer_fits_and_logs():
    x, y = _regression()
    model = torch.nn.Linear(3, 1)
    opt = train.make_optimizer(model.parameters(), lr=0.05)
    step = train.loss_step(lambda a, b: ((model(a).squeeze(-1) - b) ** 2).mean(), opt)
    history = train.train(step, (x, y), steps=300, batch_size=32, log_every=25, seed=0, progress=False)
    assert history.steps == list(range(25, 301, 25)), "one log every 25 steps"
    assert history.last("loss") < 1e-3 < history["loss"][0], "the loss falls to the noise level"
    assert torch.allclose(model.weight.detach(), torch.tensor([[1.0, -2.0, 0.5]]), atol=0.02)


def test_trainer_is_deterministic_given_seed():
    def run():
        torch.manual_seed(1)
        x, y = _regression()
        model = torch.nn.Linear(3, 1)
        opt = train.make_optimizer(model.parameters(), lr=0.05)
        step = train.loss_step(lambda a, b: ((model(a).squeeze(-1) - b) ** 2).mean(), opt)
        return train.train(step, (x, y), steps=40, batch_size=16, log_every=10, seed=5, progress=False)["loss"]

    assert run() == run()


def test_minibatches_cover_each_epoch_once():
    x = torch.arange(10)
    batches = list(train.minibatches((x,), batch_size=5, steps=4, generator=torch.Generator().manual_seed(0)))
    assert len(batches) == 4
    assert sorted(torch.cat([b[0] for b in batches[:2]]).tolist()) == list(range(10)), "an epoch sees every row once"


def test_trainer_stops_on_divergence_and_keeps_last_good_checkpoint(tmp_path):
    x, y = _regression()
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=10.0)  # absurd learning rate: the loss explodes
    step = train.loss_step(lambda a, b: ((model(a).squeeze(-1) - b) ** 2).mean(), opt)
    path = tmp_path / "last_good.pt"
    with pytest.raises(train.TrainingDiverged, match="smaller learning rate") as info:
        train.train(step, (x, y), steps=500, batch_size=32, log_every=1, seed=0, progress=False,
                    checkpoint_path=path, checkpoint_state=lambda: {"model": model.state_dict()})
    assert "'loss' became" in str(info.value)
    saved = checkpoint.load_checkpoint(path)
    assert all(torch.isfinite(v).all() for v in saved["model"].values()), "the last good checkpoint is finite"
    torch.nn.Linear(3, 1).load_state_dict(saved["model"])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"steps": 0}, "steps"),
        ({"steps": 5, "batch_size": 0}, "batch_size"),
        ({"steps": 5, "log_every": 0}, "log_every"),
        ({"steps": 5, "checkpoint_path": "x.pt"}, "checkpoint_state"),
    ],
)
def test_trainer_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        train.train(lambda x: {"loss": x.sum()}, torch.ones(4, 2), progress=False, **kwargs)


def test_trainer_rejects_bad_data():
    with pytest.raises(ValueError, match="NaN"):
        train.train(lambda x: {}, torch.tensor([[float("nan")]]), steps=1, progress=False)
    with pytest.raises(ValueError, match=r"tensors\[1\]"):
        train.train(lambda a, b: {}, (torch.ones(4, 2), torch.ones(3)), steps=1, progress=False)
    with pytest.raises(TypeError, match="step"):
        train.train("not a function", torch.ones(4, 2), steps=1, progress=False)


def test_trainer_rejects_undetached_float_loss():
    with pytest.raises(TypeError, match="tensor"):
        train.train(lambda x: {"loss": 1.0}, torch.ones(4, 2), steps=1, progress=False)


# --- checkpoints ------------------------------------------------------------------------------------------------
def test_checkpoint_round_trip_is_bit_exact(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt = train.make_optimizer(model.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 4)).pow(2).mean().backward()
        opt.step()
    path = checkpoint.save_checkpoint(tmp_path / "ck.pt", model=model.state_dict(), optimizer=opt.state_dict())
    loaded = checkpoint.load_checkpoint(path)
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded["model"][k])
    for k, v in opt.state_dict()["state"].items():
        for name, t in v.items():
            assert torch.equal(torch.as_tensor(t), torch.as_tensor(loaded["optimizer"]["state"][k][name]))
    assert not list(tmp_path.glob(".*.tmp")), "no temporary file is left behind"


def test_checkpoint_interrupted_write_leaves_old_file(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    checkpoint.save_checkpoint(path, model={"w": torch.ones(2)})

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_checkpoint(path, model={"w": torch.zeros(2)})
    assert torch.equal(checkpoint.load_checkpoint(path)["model"]["w"], torch.ones(2)), "the old file is intact"
    assert not list(tmp_path.glob(".*.tmp")), "the half-written temporary file is removed"


def test_checkpoint_errors(tmp_path):
    with pytest.raises(ValueError, match="path"):
        checkpoint.load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(TypeError, match="model"):
        checkpoint.save_checkpoint(tmp_path / "x.pt", model=torch.nn.Linear(2, 2))


# --- experiments and the command line ----------------------------------------------------------------------------
def test_registry_runs_and_writes(tmp_path):
    @experiments.register("unit-test-experiment", "a tiny experiment for the tests")
    def tiny(seed: int = 0, device=None):
        x = torch.randn(3, 2)
        return experiments.Result(metrics={"mean": float(x.mean())}, arrays={"gen_xy": x})

    result = experiments.run_experiment("unit-test-experiment", seed=4, out=tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["mean"] == pytest.approx(result.metrics["mean"])
    assert np.load(tmp_path / "arrays.npz")["gen_xy"].shape == (3, 2)
    again = experiments.run_experiment("unit-test-experiment", seed=4)
    assert again.metrics["mean"] == result.metrics["mean"], "same seed, same figures"
    experiments._REGISTRY.pop("unit-test-experiment")


def test_registry_unknown_name_lists_known():
    with pytest.raises(ValueError, match="unknown experiment 'nope'; known"):
        experiments.get_experiment("nope")


def test_write_result_rejects_non_finite(tmp_path):
    with pytest.raises(ValueError, match="finite"):
        experiments.write_result(experiments.Result(metrics={"x": float("nan")}), tmp_path)


def test_cli_list_and_help():
    out = subprocess.run([sys.executable, "-m", "mmlib", "list"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    for e in experiments.list_experiments():
        assert e.name in out.stdout
    helped = subprocess.run([sys.executable, "-m", "mmlib", "run", "--help"], capture_output=True, text=True)
    assert helped.returncode == 0 and "--seed" in helped.stdout and "--out" in helped.stdout
    bad = subprocess.run([sys.executable, "-m", "mmlib", "run", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown experiment" in bad.stderr


# --- exercises and checks -----------------------------------------------------------------------------------------
def test_exercise_verdicts(capsys):
    def right(x):
        m = x.mean()
        return m, ((x - m) ** 2).mean().sqrt()

    def wrong(x):
        return x.mean(), x.std()

    def stub(x):
        raise NotImplementedError

    exercises.check("00.1", right)
    assert exercises.RESULTS["00.1"] and "correct" in capsys.readouterr().out
    exercises.check("00.1", wrong)
    assert not exercises.RESULTS["00.1"] and "divides by n" in capsys.readouterr().out
    exercises.check("00.1", stub)
    assert not exercises.RESULTS["00.1"] and "not implemented yet" in capsys.readouterr().out
    with pytest.raises(ValueError, match="no exercise"):
        exercises.check("00.99", right)


def test_checks_messages_name_the_argument():
    with pytest.raises(TypeError, match="x: expected a torch.Tensor"):
        check_tensor([1, 2], "x")
    with pytest.raises(ValueError, match=r"x: expected shape \(\*, 2\)"):
        check_tensor(torch.ones(3, 3), "x", shape=(None, 2))
    with pytest.raises(ValueError, match="lr: expected a finite number > 0"):
        check_positive(-1.0, "lr")
    with pytest.raises(ValueError, match="k: expected an int >= 1"):
        check_int(0, "k", low=1)
    with pytest.raises(ValueError, match="mode: unknown value 'x'"):
        check_choice("x", "mode", ["a", "b"])


def test_one_cpu_thread_restores_the_thread_count():
    from mmlib.device import one_cpu_thread

    before = torch.get_num_threads()
    with one_cpu_thread("cpu"):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), one_cpu_thread("cpu"):
        raise RuntimeError("the body fails")
    assert torch.get_num_threads() == before, "restored even when the body raises"


def test_loss_step_autocast_and_compile_are_opt_in(monkeypatch):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    x = torch.randn(8, 4)
    seen = {}

    def loss_fn(batch):
        out = model(batch)
        seen["dtype"] = out.dtype
        return out.float().pow(2).mean()

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    train.loss_step(loss_fn, opt)(x)
    assert seen["dtype"] == torch.float32, "off by default"
    train.loss_step(loss_fn, opt, autocast=True)(x)
    assert seen["dtype"] == torch.bfloat16, "autocast computes the forward pass in bfloat16"
    assert model.weight.dtype == torch.float32, "the weights stay in float32"
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn: compiled.append(fn) or fn)
    train.loss_step(loss_fn, opt, compile=True)(x)
    assert compiled == [loss_fn], "compile=True passes the loss through torch.compile once"
    with pytest.raises(TypeError, match="autocast"):
        train.loss_step(loss_fn, opt, autocast="yes")
