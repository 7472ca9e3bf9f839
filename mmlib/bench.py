"""The course's performance benchmark: ``python -m mmlib bench`` (issue "Performance").

It measures, in one run on the chosen device:

1. the fp32 matrix-multiply peak (GFLOP/s) of a large square matmul;
2. the training throughput (samples/s) of :func:`mmlib.train.train` on a VAE shaped like pytorch/examples' (a
   784-400-20 MLP, Adam) on synthetic data, at batch 128 and 512, beside a reference loop written the conventional
   way (``DataLoader`` over a ``TensorDataset`` with shuffling, ``.item()`` on the loss every step) — runs alternate,
   the ratio is reported;
3. the fraction of the matmul peak the trainer reaches at batch 512 (from the model's FLOPs per sample);
4. every notebook's wall time and peak memory, each executed fresh in its own kernel, and the total.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from mmlib.checks import check_int, check_tensor
from mmlib.device import describe_device, resolve_device
from mmlib.train import loss_step, make_optimizer, train

__all__ = ["ExamplesVAE", "matmul_peak_gflops", "vae_flops_per_sample", "trainer_throughput",
           "reference_throughput", "notebook_times", "run_benchmark"]


class ExamplesVAE(nn.Module):
    """The MLP VAE of pytorch/examples' ``vae`` (784 → 400 → 2×20, 20 → 400 → 784), written for the benchmark."""

    def __init__(self, x_dim: int = 784, hidden: int = 400, z_dim: int = 20) -> None:
        super().__init__()
        self.enc = nn.Linear(x_dim, hidden)
        self.enc_mu = nn.Linear(hidden, z_dim)
        self.enc_logvar = nn.Linear(hidden, z_dim)
        self.dec = nn.Linear(z_dim, hidden)
        self.dec_out = nn.Linear(hidden, x_dim)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """Negative ELBO per example: Bernoulli reconstruction (summed over pixels) + closed-form KL."""
        h = F.relu(self.enc(x))
        mu, logvar = self.enc_mu(h), self.enc_logvar(h)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        logits = self.dec_out(F.relu(self.dec(z)))
        rec = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum()
        return (rec + kl) / x.shape[0]


def vae_flops_per_sample(x_dim: int = 784, hidden: int = 400, z_dim: int = 20) -> float:
    """Training FLOPs per sample of :class:`ExamplesVAE`: 3 × (2 × multiply-adds of the forward matmuls)."""
    x_dim, hidden, z_dim = (check_int(x_dim, "x_dim", low=1), check_int(hidden, "hidden", low=1),
                            check_int(z_dim, "z_dim", low=1))
    macs = x_dim * hidden + 2 * hidden * z_dim + z_dim * hidden + hidden * x_dim
    return 3.0 * 2.0 * macs


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def matmul_peak_gflops(device: torch.device, n: int = 2048, repeats: int = 10) -> float:
    """The best GFLOP/s of an ``n × n`` fp32 matmul over ``repeats`` timed runs (after a warm-up)."""
    device = resolve_device(device)
    n = check_int(n, "n", low=1)
    repeats = check_int(repeats, "repeats", low=1)
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best / 1e9


def _check_throughput_args(data: object, batch_size: object, steps: object, seed: object):
    """Pixel rows ``(N, 784)`` in [0, 1], a batch size ``<= N``, a step count and a seed."""
    data = check_tensor(data, "data", ndim=2, floating=True)
    if data.shape[1] != 784 or data.shape[0] == 0:
        raise ValueError(f"data: expected rows of 784 pixel values, shape (N, 784), got {tuple(data.shape)}")
    if float(data.min()) < 0 or float(data.max()) > 1:
        raise ValueError("data: expected pixel values in [0, 1] (the VAE's Bernoulli likelihood)")
    batch_size = check_int(batch_size, "batch_size", low=1, high=data.shape[0])
    return data, batch_size, check_int(steps, "steps", low=1), check_int(seed, "seed", low=0)


def trainer_throughput(data: torch.Tensor, batch_size: int, steps: int, seed: int = 0) -> float:
    """Samples per second of :func:`mmlib.train.train` on :class:`ExamplesVAE` (after a short warm-up)."""
    data, batch_size, steps, seed = _check_throughput_args(data, batch_size, steps, seed)
    torch.manual_seed(seed)
    model = ExamplesVAE().to(data.device)
    step = loss_step(model.loss, make_optimizer(model.parameters(), lr=1e-3))
    train(step, data, steps=10, batch_size=batch_size, log_every=10, progress=False, seed=seed)
    _sync(data.device)
    start = time.perf_counter()
    train(step, data, steps=steps, batch_size=batch_size, log_every=100, progress=False, seed=seed)
    _sync(data.device)
    return steps * batch_size / (time.perf_counter() - start)


def reference_throughput(data: torch.Tensor, batch_size: int, steps: int, seed: int = 0) -> float:
    """Samples per second of the conventional loop: DataLoader + shuffling + ``.item()`` every step."""
    from torch.utils.data import DataLoader, TensorDataset

    data, batch_size, steps, seed = _check_throughput_args(data, batch_size, steps, seed)
    torch.manual_seed(seed)
    model = ExamplesVAE().to(data.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(TensorDataset(data.cpu()), batch_size=batch_size, shuffle=True, drop_last=True)

    def run(n_steps: int) -> None:
        done, losses = 0, []
        while done < n_steps:
            for (x,) in loader:
                x = x.to(data.device)
                optimizer.zero_grad()
                loss = model.loss(x)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
                done += 1
                if done == n_steps:
                    return

    run(10)
    _sync(data.device)
    start = time.perf_counter()
    run(steps)
    _sync(data.device)
    return steps * batch_size / (time.perf_counter() - start)


class _TreeMemory:
    """Samples, every ``interval`` seconds in a background thread, the summed resident memory of this process's
    children (the notebook's kernel and the worker processes it starts) and keeps the peak, in MB (needs psutil,
    which Jupyter's kernel installs; without it the peak stays 0)."""

    def __init__(self, interval: float = 0.1) -> None:
        import threading

        self.interval, self.peak_mb = interval, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            import psutil
        except ImportError:
            return
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for child in me.children(recursive=True):
                try:
                    total += child.memory_info().rss
                except psutil.Error:  # it ended between listing and reading
                    pass
            self.peak_mb = max(self.peak_mb, total / 2**20)
            self._stop.wait(self.interval)

    def __enter__(self) -> _TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def notebook_times(selection: list[str] | None = None) -> list[dict]:
    """Execute each notebook fresh in its own kernel; its wall time (s), the kernel's peak resident memory and the
    largest worker's (MB, from the kernel's ``getrusage``), and the peak of their sum (MB, sampled every 0.1 s)."""
    import nbformat

    from mmlib.course import NOTEBOOK_DIR, execute_notebook, notebook_sources

    probe = (  # the kernel's peak, and the largest peak of the worker processes it waited for (mmlib.parallel)
        "import resource, sys\n"
        "_unit = 1024 if sys.platform != 'darwin' else 2**20\n"
        "print('PEAK_MB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / _unit,\n"
        "      resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / _unit)\n"
    )
    rows = []
    for source in notebook_sources(selection):
        nb = nbformat.read(source.with_suffix(".ipynb"), as_version=4)
        nb.cells.append(nbformat.v4.new_code_cell(probe))
        with _TreeMemory() as tree:
            start = time.perf_counter()
            execute_notebook(nb, NOTEBOOK_DIR)
            seconds = time.perf_counter() - start
        printed = "".join(o.get("text", "") for o in nb.cells[-1].outputs)
        peak, worker_peak = (float(v) for v in printed.split("PEAK_MB")[1].split()[:2])
        rows.append({"notebook": source.stem, "seconds": round(seconds, 1), "peak_mb": round(peak),
                     "worker_peak_mb": round(worker_peak),
                     # sampling can miss a brief peak: the sum is at least what one process reached on its own
                     "total_peak_mb": round(max(tree.peak_mb, peak, worker_peak))})
    return rows


def run_benchmark(
    device: str | torch.device | None = None,
    *,
    steps: int = 300,
    repeats: int = 3,
    notebooks: bool = True,
    out: str | Path | None = None,
) -> dict:
    """Run the whole benchmark, print its table and return (and optionally write as JSON) the figures."""
    device = resolve_device(device)
    peak = matmul_peak_gflops(device)
    data = torch.rand(8192, 784, device=device)
    flops = vae_flops_per_sample()
    report: dict = {
        "device": describe_device(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "matmul_peak_gflops": round(peak, 1),
        "vae_train_flops_per_sample": flops,
        "trainer": {},
    }
    for batch in (128, 512):
        ours, ref = [], []
        for r in range(repeats):  # alternate the two loops so that drifts in machine load hit both
            ours.append(trainer_throughput(data, batch, steps, seed=r))
            ref.append(reference_throughput(data, batch, steps, seed=r))
        best_ours, best_ref = max(ours), max(ref)
        report["trainer"][str(batch)] = {
            "mmlib_samples_per_s": round(best_ours),
            "reference_samples_per_s": round(best_ref),
            "ratio": round(best_ours / best_ref, 2),
            "fraction_of_peak": round(best_ours * flops / (peak * 1e9), 3),
        }
    # Measure the peak again after the throughput runs and keep the best: a peak lowered by a busy moment would
    # flatter the fraction of peak reached.
    peak = max(peak, matmul_peak_gflops(device))
    report["matmul_peak_gflops"] = round(peak, 1)
    for row in report["trainer"].values():
        row["fraction_of_peak"] = round(row["mmlib_samples_per_s"] * flops / (peak * 1e9), 3)
    if notebooks:
        rows = notebook_times()
        report["notebooks"] = rows
        report["notebooks_total_seconds"] = round(sum(r["seconds"] for r in rows), 1)
    print(format_report(report))
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(report, indent=2) + "\n")
    return report


def format_report(report: dict) -> str:
    """The benchmark as a Markdown table (what the README's "Performance" section shows)."""
    lines = [
        f"device: {report['device']} · torch {report['torch']} · python {report['python']}",
        "",
        "| measure | value |",
        "|---|---|",
        f"| fp32 matmul peak (2048²) | {report['matmul_peak_gflops']:.1f} GFLOP/s |",
    ]
    for batch, row in report["trainer"].items():
        lines.append(
            f"| VAE 784-400-20, batch {batch}: mmlib trainer / reference loop | {row['mmlib_samples_per_s']:,} / "
            f"{row['reference_samples_per_s']:,} samples/s (×{row['ratio']:.2f}) |"
        )
        lines.append(f"| … fraction of matmul peak at batch {batch} | {100 * row['fraction_of_peak']:.0f} % |")
    for row in report.get("notebooks", []):
        memory = f"kernel {row['peak_mb']:,} MB"
        if row.get("worker_peak_mb", 0) > 100:
            memory += f", largest worker {row['worker_peak_mb']:,} MB"
        if row.get("total_peak_mb"):
            memory += f", all together ≥ {row['total_peak_mb']:,} MB"
        lines.append(f"| notebook {row['notebook']} | {row['seconds']:.1f} s; peak memory: {memory} |")
    if "notebooks_total_seconds" in report:
        lines.append(f"| **all notebooks** | **{report['notebooks_total_seconds']:.1f} s** |")
    return "\n".join(lines)
