"""The course's one training loop (introduced in notebook 00, used from chapter 01 on).

A *step* is a function ``step(*batch) -> dict[str, Tensor]`` that performs the optimiser update(s) itself and
returns detached scalar losses — a VAE step updates one optimiser, a GAN step two. :func:`train` only feeds it
minibatches and watches it:

- minibatches are drawn on the device from tensors already there (a random permutation per epoch; no ``DataLoader``,
  no per-sample Python);
- losses are averaged over ``log_every`` steps and copied to the host once per log (no per-step ``.item()``);
- a loss that turns NaN/inf stops training with :class:`TrainingDiverged`, which says what diverged and what to try;
- optionally the last finite state is checkpointed at every log, so a diverged run leaves a loadable checkpoint.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mmlib.checks import check_bool, check_generator, check_int, check_path, check_positive, check_tensor

__all__ = ["History", "TrainingDiverged", "train", "loss_step", "make_optimizer", "minibatches"]

Step = Callable[..., dict[str, torch.Tensor]]


class TrainingDiverged(RuntimeError):
    """Raised when a logged loss becomes NaN or infinite."""


@dataclass
class History:
    """Logged losses: ``history["loss"]`` is a list of floats, one per log; ``history.steps`` the step numbers."""

    steps: list[int] = field(default_factory=list)
    values: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0

    def __getitem__(self, name: str) -> list[float]:
        if name not in self.values:
            raise KeyError(f"no loss named {name!r} was logged; logged: {sorted(self.values)}")
        return self.values[name]

    def keys(self) -> list[str]:
        return list(self.values)

    def last(self, name: str) -> float:
        """The last logged value of loss ``name``."""
        return self[name][-1]


def make_optimizer(
    params: Iterable[torch.nn.Parameter], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), **kwargs
) -> torch.optim.Adam:
    """Adam with the fastest update available: the fused kernel (one pass over each parameter, on the CPU since
    torch 2.4 and on CUDA), else the ``foreach`` implementation (older torch, other devices).

    On the CPU the fused kernel makes a step of the benchmark's VAE about 20 % faster than ``foreach`` at
    batch 128 (``python -m mmlib bench``); it computes the same update, rounded differently in the last bits."""
    lr = check_positive(lr, "lr")
    if isinstance(params, torch.Tensor) or not isinstance(params, Iterable):
        raise TypeError(f"params: expected an iterable of parameters (model.parameters()), got {type(params).__name__}")
    params = list(params)
    if not params:
        raise ValueError("params: expected at least one parameter to optimise, got none")
    for i, p in enumerate(params):
        if isinstance(p, dict):  # parameter groups are passed through to torch
            continue
        if not isinstance(p, torch.Tensor) or not p.is_floating_point():
            raise TypeError(f"params[{i}]: expected a floating-point tensor/parameter, got {type(p).__name__}")
    try:
        return torch.optim.Adam(params, lr=lr, betas=betas, fused=True, **kwargs)
    except RuntimeError:  # no fused Adam for this device in this torch (for example the CPU before torch 2.4)
        return torch.optim.Adam(params, lr=lr, betas=betas, foreach=True, **kwargs)


def loss_step(
    loss_fn: Callable[..., torch.Tensor],
    optimizer: torch.optim.Optimizer,
    *,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    autocast: bool = False,
    compile: bool = False,  # noqa: A002  (the name torch uses)
) -> Step:
    """The usual step: zero the gradients, ``loss = loss_fn(*batch)``, backpropagate, update; returns ``{"loss"}``.
    A learning-rate ``scheduler`` (of ``optimizer``) is stepped after every update.

    Two opt-in accelerations for a GPU, both off by default (on the CPU the course's minute-long runs would spend more
    time compiling than they save, and CPUs gain little from bfloat16): ``autocast`` computes the loss under
    ``torch.autocast`` in bfloat16 on the batch's device (the weights and their updates stay in float32);
    ``compile`` passes ``loss_fn`` through ``torch.compile`` once.
    """
    if not callable(loss_fn):
        raise TypeError(f"loss_fn: expected a function of the batch, got {type(loss_fn).__name__}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer: expected a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if scheduler is not None and not isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler):
        raise TypeError(f"scheduler: expected a torch.optim.lr_scheduler scheduler or None, "
                        f"got {type(scheduler).__name__}")
    autocast, compile = check_bool(autocast, "autocast"), check_bool(compile, "compile")
    fn = torch.compile(loss_fn) if compile else loss_fn

    def step(*batch: torch.Tensor) -> dict[str, torch.Tensor]:
        optimizer.zero_grad(set_to_none=True)
        if autocast:
            with torch.autocast(device_type=batch[0].device.type, dtype=torch.bfloat16):
                loss = fn(*batch)
        else:
            loss = fn(*batch)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        return {"loss": loss.detach()}

    return step


def _check_batches(
    tensors: object, batch_size: object, steps: object, *, finite: bool = False
) -> tuple[tuple[torch.Tensor, ...], int | None, int]:
    """Row-aligned ``tensors`` on one device (one tensor or a sequence), ``batch_size`` (None or >= 1), ``steps``."""
    if not isinstance(tensors, (torch.Tensor, list, tuple)):
        raise TypeError(f"tensors: expected a tensor or a sequence of tensors, got {type(tensors).__name__}")
    tensors = (tensors,) if isinstance(tensors, torch.Tensor) else tuple(tensors)
    if not tensors:
        raise ValueError("tensors: expected at least one tensor to train on")
    for i, t in enumerate(tensors):
        check_tensor(t, f"tensors[{i}]", finite=finite)
    n = int(tensors[0].shape[0])
    for i, t in enumerate(tensors):
        if t.shape[0] != n:
            raise ValueError(f"tensors[{i}]: expected {n} rows like tensors[0], got {t.shape[0]}")
        if t.device != tensors[0].device:
            raise ValueError(f"tensors[{i}]: on {t.device}, but tensors[0] is on {tensors[0].device}")
    if batch_size is not None:
        batch_size = check_int(batch_size, "batch_size", low=1)
    return tensors, batch_size, check_int(steps, "steps", low=1)


def minibatches(
    tensors: Sequence[torch.Tensor], batch_size: int | None, steps: int, generator: torch.Generator | None = None
) -> Iterator[tuple[torch.Tensor, ...]]:
    """Yield ``steps`` minibatches (tuples of row-aligned slices), reshuffling on the device every epoch.

    ``batch_size=None`` (or ≥ the number of rows) yields the full tensors every step.
    """
    tensors, batch_size, steps = _check_batches(tensors, batch_size, steps)
    generator = check_generator(generator, "generator")
    if generator is not None and generator.device != tensors[0].device:
        raise ValueError(f"generator: on {generator.device}, but the tensors are on {tensors[0].device}")
    return _minibatches(tensors, batch_size, steps, generator)


def _minibatches(
    tensors: tuple[torch.Tensor, ...], batch_size: int | None, steps: int, generator: torch.Generator | None
) -> Iterator[tuple[torch.Tensor, ...]]:
    n = int(tensors[0].shape[0])
    if batch_size is None or batch_size >= n:
        for _ in range(steps):
            yield tuple(tensors)
        return
    device = tensors[0].device
    per_epoch = n // batch_size  # drop the ragged last batch: every step sees the same batch size
    done = 0
    while done < steps:
        order = torch.randperm(n, device=device, generator=generator)
        for b in range(min(per_epoch, steps - done)):
            idx = order[b * batch_size : (b + 1) * batch_size]
            yield tuple(t[idx] for t in tensors)
        done += min(per_epoch, steps - done)


def _finite_state(state: dict) -> bool:
    for value in state.values():
        if isinstance(value, dict):
            if not _finite_state(value):
                return False
        elif isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return False
    return True


def train(
    step: Step,
    tensors: torch.Tensor | Sequence[torch.Tensor],
    *,
    steps: int,
    batch_size: int | None = 128,
    log_every: int = 50,
    seed: int | None = None,
    desc: str = "training",
    progress: bool = True,
    checkpoint_path: str | Path | None = None,
    checkpoint_state: Callable[[], dict] | None = None,
) -> History:
    """Run ``step`` on ``steps`` minibatches of ``tensors`` and return the logged :class:`History`.

    Parameters
    ----------
    step: performs one update on a minibatch, returns detached scalar losses by name.
    tensors: one tensor or a sequence of row-aligned tensors (same first dimension), already on the device.
    steps: number of updates. ``batch_size``: rows per step (``None`` = full batch).
    log_every: average the losses over this many steps, check them for NaN/inf, and update the progress bar.
    seed: seeds the private generator that shuffles the minibatches (``None`` draws from torch's global one).
    checkpoint_path, checkpoint_state: when both are given, ``checkpoint_state()`` (a dict of state dicts) is saved
        there at every log whose losses and state are finite, so a diverged run leaves the last good state behind.
    """
    if not callable(step):
        raise TypeError(f"step: expected a function step(*batch) -> dict of losses, got {type(step).__name__}")
    tensors, batch_size, steps = _check_batches(tensors, batch_size, steps, finite=True)
    log_every = check_int(log_every, "log_every", low=1)
    progress = check_bool(progress, "progress")
    if (checkpoint_path is None) != (checkpoint_state is None):
        raise ValueError("checkpoint_path, checkpoint_state: give both (where to save, and what) or neither")
    if checkpoint_path is not None:
        checkpoint_path = check_path(checkpoint_path, "checkpoint_path")
        if not callable(checkpoint_state):
            raise TypeError(f"checkpoint_state: expected a function returning a dict of state dicts, got "
                            f"{type(checkpoint_state).__name__}")

    generator = None
    if seed is not None:
        generator = torch.Generator(device=tensors[0].device)
        generator.manual_seed(check_int(seed, "seed", low=0))

    history = History()
    pending: list[dict[str, torch.Tensor]] = []
    bar = tqdm(total=steps, desc=desc, disable=not progress, leave=True, mininterval=0.5)
    start = time.perf_counter()
    try:
        for i, batch in enumerate(minibatches(tensors, batch_size, steps, generator), start=1):
            losses = step(*batch)
            pending.append(losses)
            if i % log_every == 0 or i == steps:
                _log(history, pending, i, desc)
                bar.update(len(pending))
                bar.set_postfix({k: f"{v[-1]:.4g}" for k, v in history.values.items()}, refresh=False)
                pending = []
                if checkpoint_path is not None and checkpoint_state is not None:
                    state = checkpoint_state()
                    if _finite_state(state):
                        from mmlib.checkpoint import save_checkpoint

                        save_checkpoint(checkpoint_path, **state)
    finally:
        bar.close()
        history.seconds = time.perf_counter() - start
    return history


def _log(history: History, pending: list[dict[str, torch.Tensor]], step: int, desc: str) -> None:
    """Average the pending losses (one host copy) and stop if any is NaN/inf."""
    names = list(pending[0])
    for name in names:
        if not isinstance(pending[0][name], torch.Tensor):
            raise TypeError(f"step: loss {name!r} must be a tensor (return loss.detach(), not loss.item())")
    means = torch.stack([torch.stack([p[name].float().reshape(()) for p in pending]).mean() for name in names])
    values = means.tolist()
    history.steps.append(step)
    for name, value in zip(names, values):
        if not math.isfinite(value):
            last = history.values.get(name, [])
            before = f"; its last finite average was {last[-1]:.4g}" if last else ""
            raise TrainingDiverged(
                f"{desc}: loss {name!r} became {value} between steps {step - len(pending) + 1} and {step}{before}. "
                "The updates diverged. Try a smaller learning rate (for example 10x smaller), gradient clipping, "
                "or check the inputs for NaN/inf and the loss for log(0) or division by zero."
            )
        history.values.setdefault(name, []).append(value)
