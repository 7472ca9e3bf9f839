"""The course runs offline: the guard is active here, in subprocesses and in notebook kernels, and it bites."""

from __future__ import annotations

import socket
import subprocess
import sys

import nbformat
import pytest

from mmlib.course import execute_notebook
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
