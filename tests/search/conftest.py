"""Shared helpers for the search-layer tests (real Ray, real Optuna, real toy training)."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
# Ray workers inherit the driver's environment: make monet/ and search/ importable there too.
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

CLI = [sys.executable, str(REPO / "search" / "tune_monet.py")]
# the smallest real search: toy T=3, vmnc, few examples, few epochs
TINY = ["--dataset", "toy", "--T", "3", "--n-train", "96", "--n-val", "64", "--n-test", "64"]


def free_ports(n):
    """``n`` distinct free TCP ports on 127.0.0.1 (for the Ray nodes a test starts)."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def run_cli(args, timeout=300, env=None, **kw):
    """Run ``search/tune_monet.py ARGS`` in a subprocess; returns CompletedProcess."""
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=timeout,
                          env=e, cwd=str(REPO), **kw)


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray instance (2 CPUs) per test module, with a token of its own, as a search
    without ``--address`` gets it (:func:`search.ray_guard.private_token_env`).

    A plain ``ray.init()`` would leave ``RAY_AUTH_MODE=token`` in this process's environment and
    Ray's in-process config cached; a later test that changes the auth variables would then
    start a cluster this process cannot talk to (InvalidAuthToken). It also would not write
    ``~/.ray/auth_token``."""
    import ray

    from search.ray_guard import private_token_env

    with private_token_env():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        try:
            yield ray
        finally:
            ray.shutdown()
