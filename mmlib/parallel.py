"""Independent training runs side by side, one per CPU core (notebooks 03 to 08).

The course's networks are small: one training run keeps one core busy (:func:`mmlib.device.one_cpu_thread`), and a
second thread inside the same run mostly waits for the first. Runs that do not depend on each other — the plain GAN and
the recipe on two mixtures, a GAN beside a VAE — are better spread over the cores: this process runs some of them, and
worker processes with one thread each run the others, whose results come back as if they had run here. Every run is
seeded by its own arguments, so the numbers are the same bit for bit wherever the runs go, in any order
(``tests/test_parallel.py`` checks).

On a GPU, or with a single core, the runs simply go one after the other in this process.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

import torch
from tqdm.auto import tqdm

from mmlib.checks import check_bool, check_int
from mmlib.device import one_cpu_thread, resolve_device

__all__ = ["Job", "cpu_cores", "run_jobs"]

#: One run: a function importable from a module (so that a worker process can find it) and its keyword arguments.
Job = tuple[Callable[..., Any], Mapping[str, Any]]


def cpu_cores() -> int:
    """The CPU cores this process may use (its affinity where the OS reports one, else ``os.cpu_count()``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def _worker_init() -> None:
    torch.set_num_threads(1)


def _check_jobs(jobs: object) -> list[Job]:
    if isinstance(jobs, (str, bytes)) or not isinstance(jobs, Sequence) or not jobs:
        raise TypeError(f"jobs: expected a non-empty list of (function, kwargs) pairs, got {jobs!r:.80}")
    out = []
    for i, job in enumerate(jobs):
        if not (isinstance(job, tuple) and len(job) == 2 and callable(job[0]) and isinstance(job[1], Mapping)):
            raise TypeError(f"jobs[{i}]: expected a (function, kwargs dict) pair, got {job!r:.80}")
        fn = job[0]
        if getattr(fn, "__module__", None) in (None, "__main__") or "<" in getattr(fn, "__qualname__", "<"):
            raise ValueError(f"jobs[{i}]: {fn!r} is not importable by a worker process; pass a module-level "
                             "function of mmlib (or of another importable module)")
        out.append((fn, dict(job[1])))
    return out


def run_jobs(
    jobs: Sequence[Job],
    *,
    device: torch.device | str | None = None,
    workers: int | None = None,
    progress: bool = True,
    desc: str = "runs",
) -> list[Any]:
    """Run ``fn(**kwargs)`` for every ``(fn, kwargs)`` in ``jobs``; their results, in the order of ``jobs``.

    On the CPU with more than one core, ``workers`` jobs run at once (default: one per core, at most one per job),
    each on one thread: in this process, which has torch and ``mmlib`` loaded already and would otherwise sit
    waiting, and in ``workers - 1`` worker processes; whichever is free takes the next job in the list, so list the
    longest job first. More workers than cores share the cores by time-slicing, which costs more than it balances
    here: notebook 07's three fusions took 53–56 s with three at once on two cores, 50–52 s with two (the third
    started by whichever finishes first) — the runs evict each other's data from the caches. On a GPU, with one core
    or with ``workers=1``, the jobs run here one after the other (on one thread on the CPU). Worker processes are
    started fresh ("spawn"), so nothing of this process's state leaks into them: everything a job needs must be in
    its arguments. The progress bar counts finished jobs; ask the jobs for ``progress=False`` (a worker's own bars
    would print to the console, not the notebook).
    """
    jobs = _check_jobs(jobs)
    dev = resolve_device(device)
    progress = check_bool(progress, "progress")
    if not isinstance(desc, str):
        raise TypeError(f"desc: expected a string, got {type(desc).__name__}")
    workers = min(len(jobs), cpu_cores() if workers is None else check_int(workers, "workers", low=1))
    if dev.type != "cpu" or workers == 1 or cpu_cores() == 1:
        with one_cpu_thread(dev):
            return [fn(**kwargs) for fn, kwargs in tqdm(jobs, desc=desc, disable=not progress)]
    return _share_jobs(jobs, dev, workers, tqdm(total=len(jobs), desc=desc, disable=not progress))


def _share_tensors(value: Any) -> None:
    """Move every CPU tensor in ``value`` (a tensor, a module, or dicts, lists, tuples and dataclasses of them) to
    shared memory, here and now.

    Sending a tensor to a worker process moves its storage to shared memory and frees the old one (torch's
    multiprocessing pickler). That happens in a background thread while this process already runs its own job, and
    jobs often share their data (the same dataset, cached once): the job here could read freed memory and crash
    (notebook 08's kernel once died with a segfault in libtorch this way). Sharing first, before any job starts,
    leaves nothing to move later: a storage already in shared memory is sent as it is."""
    if isinstance(value, torch.Tensor):
        if value.device.type == "cpu" and not value.is_shared():
            value.share_memory_()
    elif isinstance(value, torch.nn.Module):
        value.share_memory()
    elif isinstance(value, Mapping):
        for item in value.values():
            _share_tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _share_tensors(item)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            _share_tensors(getattr(value, field.name))


def _share_jobs(jobs: list[Job], dev: torch.device, workers: int, bar: tqdm) -> list[Any]:
    """Greedy list scheduling over this process and ``workers - 1`` worker processes: whoever is free takes the next
    job in the list. A thread here feeds the worker processes, one job each at a time, while this process runs jobs
    itself on one thread. A failed job stops the handing out of new ones; its error is raised here."""
    for _, kwargs in jobs:  # before any job runs (see _share_tensors)
        _share_tensors(kwargs)
    pending = deque(range(len(jobs)))
    lock = threading.Lock()
    results: list[Any] = [None] * len(jobs)
    failures: list[BaseException] = []

    def take() -> int | None:
        with lock:
            return pending.popleft() if pending and not failures else None

    def fail(err: BaseException) -> None:
        with lock:
            failures.append(err)
            pending.clear()

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers - 1, mp_context=context, initializer=_worker_init) as pool, bar:

        def feed() -> None:  # keep every worker process busy with the next job in the list
            running: dict[Future, int] = {}

            def submit() -> None:
                i = take()
                if i is not None:
                    fn, kwargs = jobs[i]
                    running[pool.submit(fn, **kwargs)] = i

            try:
                for _ in range(workers - 1):
                    submit()
                while running:
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in done:
                        i = running.pop(future)
                        try:
                            results[i] = future.result()
                        except BaseException as err:  # noqa: BLE001 - handed to the caller below
                            fail(err)
                            continue
                        bar.update(1)
                        submit()
            except BaseException as err:  # noqa: BLE001 - e.g. a worker process that could not start
                fail(err)

        i = take()  # the first (longest) job is this process's: a worker spends seconds starting up
        feeder = threading.Thread(target=feed, name="mmlib-run-jobs", daemon=True)
        feeder.start()
        try:
            with one_cpu_thread(dev):
                while i is not None:
                    fn, kwargs = jobs[i]
                    results[i] = fn(**kwargs)
                    bar.update(1)
                    i = take()
        except BaseException as err:
            fail(err)
            feeder.join()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        feeder.join()
    if failures:
        raise failures[0]
    return results
