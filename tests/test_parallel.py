"""mmlib.parallel: runs spread over worker processes give the same numbers as one after the other."""

from __future__ import annotations

import time

import pytest
import torch

from mmlib.gan import GANConfig, fit_mixture
from mmlib.parallel import cpu_cores, run_jobs

TINY = GANConfig(hidden=16, steps=30, batch_size=64, n_train=512)


def _jobs() -> list:
    return [(fit_mixture, {"name": name, "setting": "plain", "config": TINY, "seed": seed, "device": "cpu",
                           "progress": False}) for name, seed in (("ring", 0), ("grid", 1), ("ring", 2))]


def test_workers_give_the_same_numbers_as_one_after_the_other():
    here = run_jobs(_jobs(), workers=1, progress=False)
    spread = run_jobs(_jobs(), workers=2, progress=False)
    assert len(spread) == 3
    for (m_here, x_here, _), (m_spread, x_spread, _) in zip(here, spread):
        assert torch.equal(torch.as_tensor(x_here), torch.as_tensor(x_spread)), "same samples, bit for bit"
        assert {k: v for k, v in m_here.items() if k != "seconds"} == {
            k: v for k, v in m_spread.items() if k != "seconds"
        }
    # the results come back in the order of the jobs, not the order they finished in: the three jobs' samples all
    # differ, so the element-wise comparison above would catch any reordering
    samples = [torch.as_tensor(r[1]) for r in here]
    assert all(not torch.equal(samples[i], samples[j]) for i in range(3) for j in range(i + 1, 3))


def test_more_workers_than_cores_give_the_same_numbers():
    here = run_jobs(_jobs(), workers=1, progress=False)
    shared = run_jobs(_jobs(), workers=3, progress=False)  # this process and two workers, whatever the cores
    for (m_here, x_here, _), (m_shared, x_shared, _) in zip(here, shared):
        assert torch.equal(torch.as_tensor(x_here), torch.as_tensor(x_shared)), "same samples, bit for bit"
        assert m_here["modes_covered"] == m_shared["modes_covered"]


def test_cpu_cores_is_positive():
    assert cpu_cores() >= 1


def test_bad_jobs_get_clear_errors():
    with pytest.raises(TypeError, match="jobs"):
        run_jobs([], progress=False)
    with pytest.raises(TypeError, match=r"jobs\[0\]"):
        run_jobs([fit_mixture], progress=False)
    with pytest.raises(ValueError, match=r"jobs\[0\].*importable"):
        run_jobs([(lambda: 1, {})], progress=False)
    with pytest.raises(ValueError, match="workers"):
        run_jobs(_jobs(), workers=0, progress=False)


def test_errors_in_a_worker_reach_the_caller():
    bad = (fit_mixture, {"name": "no-such-mixture", "setting": "plain", "config": TINY, "progress": False})
    with pytest.raises(ValueError, match="name"):  # the first job, which runs in this process
        run_jobs([bad, bad], workers=2, progress=False)
    with pytest.raises(ValueError, match="name"):  # a job that a worker process runs
        run_jobs([_jobs()[0], bad], workers=2, progress=False)


def _read_twice(x: torch.Tensor, wait: float) -> tuple[bool, int, int, float]:
    """Whether ``x`` is in shared memory when the job starts, its data pointer before and after ``wait`` seconds,
    and its sum."""
    shared, before = x.is_shared(), x.data_ptr()
    time.sleep(wait)
    return shared, before, x.data_ptr(), float(x.sum())


@pytest.mark.skipif(cpu_cores() < 2, reason="jobs go to worker processes only with two cores or more")
def test_data_sent_to_a_worker_does_not_move_under_the_job_running_here():
    """Sending a tensor to a worker moves its storage to shared memory; if that happened while this process's own job
    read the same tensor, the job would read freed memory. run_jobs shares every tensor before any job starts."""
    x = torch.arange(1_000_000, dtype=torch.float32)
    total = float(x.sum())
    here, there = run_jobs([(_read_twice, {"x": x, "wait": 1.0}), (_read_twice, {"x": x, "wait": 0.0})], workers=2,
                           progress=False)
    shared, before, after, seen = here
    assert shared, "the tensor was in shared memory before this process's job started"
    assert before == after, "its storage did not move while the job here was using it"
    assert seen == total and there[3] == total, "both jobs read the same values"
    assert x.is_shared() and float(x.sum()) == total
