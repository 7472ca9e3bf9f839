"""The course runs offline: the guard is active here, in subprocesses and in notebook kernels, and it bites."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys

import nbformat
import pytest

from mmlib.course import NOTEBOOK_DIR, execute_notebook
from mmlib.offline import NetworkBlocked, is_blocked

PROBE = (
    "import socket\n"
    "try:\n"
    "    socket.create_connection(('93.184.216.34', 80), timeout=5)\n"
    "    print('REACHED')\n"
    "except OSError as err:\n"
    "    print('BLOCKED' if 'network access blocked' in str(err) else f'OTHER {err}')\n"
)


def test_guard_active_in_test_process():
    assert is_blocked()
    with pytest.raises(NetworkBlocked):
        socket.create_connection(("93.184.216.34", 80), timeout=5)
    with pytest.raises(NetworkBlocked):
        socket.getaddrinfo("pypi.org", 443)


def test_loopback_still_allowed():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.create_connection(server.getsockname(), timeout=5)
    client.close()
    server.close()


def test_guard_active_in_subprocesses():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "BLOCKED", out.stdout + out.stderr


def test_guard_active_in_notebook_kernels(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(PROBE)])
    execute_notebook(nb, cwd=tmp_path, timeout=120)
    printed = "".join(o.get("text", "") for o in nb.cells[0].outputs)
    assert printed.strip() == "BLOCKED", printed


#: Registered experiments that finish in seconds: each runs here through the command line, offline.
QUICK_EXPERIMENTS = ("data", "classifiers", "pcca", "pcca-digits", "likelihood-digits")
#: The others train for 0.5–1.5 minutes each (about 8 minutes together, more than the suite's budget allows on top of
#: the notebooks). The notebook of each runs it — ``run_experiment(NAME)``, the very call behind ``python -m mmlib run
#: NAME`` — and the notebooks run offline under nbval (the guard is in their kernels and in mmlib.parallel's workers).
NOTEBOOK_EXPERIMENTS = {
    "gan-ring": "03_gan",
    "gan-grid": "03_gan",
    "vae-digits": "04_vae",
    "aae-digits": "05_adversarial_autoencoder",
    "cgan": "06_conditional_gan",
    "mvae-poe": "07_multimodal_vae",
    "mvae-moe": "07_multimodal_vae",
    "mvae-mopoe": "07_multimodal_vae",
    "mmgan": "08_multimodal_gan",
}


@pytest.mark.parametrize("name", QUICK_EXPERIMENTS)
def test_quick_experiment_runs_offline_from_the_command_line(name: str, tmp_path):
    cmd = [sys.executable, "-m", "mmlib", "run", name, "--seed", "0", "--out", str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics and (tmp_path / "arrays.npz").stat().st_size > 0


def test_every_registered_experiment_is_run_offline_somewhere():
    from mmlib.experiments import list_experiments

    names = {experiment.name for experiment in list_experiments()}
    assert names == set(QUICK_EXPERIMENTS) | set(NOTEBOOK_EXPERIMENTS), "a registered experiment is not run offline"
    for name, notebook in NOTEBOOK_EXPERIMENTS.items():
        code = "\n".join(line for line in (NOTEBOOK_DIR / f"{notebook}.py").read_text().splitlines()
                         if not line.lstrip().startswith("#"))  # code lines only, not prose
        runner = RUN_TOGETHER.get(name, "run_experiment")
        assert re.search(rf"\b{runner}\b", code) and f'"{name}"' in code, (
            f"{notebook} does not run the registered experiment {name!r} through {runner}")


#: Experiments that their notebook runs together, through the function behind each of them, so that all their
#: trainings share the cores at once: name -> that function (tests/test_gan.py checks it is what the name runs).
RUN_TOGETHER = {"gan-ring": "mixture_experiments", "gan-grid": "mixture_experiments"}
