"""A real two-node Ray cluster on this machine: trials run on both nodes.

The head (1 CPU) and a second node (1 CPU, its own ports) are started with ``ray start --block``
on 127.0.0.1, with token authentication on (a token made for this test). The search asks for 1 CPU
per trial and 2 at once, so both nodes must run trials; the trials table's node column says
where each ran. Both nodes are stopped afterwards (their processes, by id).
"""
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import TINY, free_ports, run_cli

RAY = str(Path(sys.executable).with_name("ray"))


def _stop(proc):
    """SIGKILL the processes of the session ``proc`` started (a ``ray start --block``)."""
    sid = proc.pid
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.getsid(int(d)) == sid:
                    os.kill(int(d), signal.SIGKILL)
            except OSError:
                pass
    proc.wait(timeout=30)


def _alive_nodes(address, env):
    code = ("import ray; ray.init(address=%r, logging_level='ERROR'); "
            "print(sum(n['Alive'] for n in ray.nodes()))" % address)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    return int(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else 0


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cluster")
    token = tmp / "token"
    token.write_text(secrets.token_hex(32))
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
           "RAY_USAGE_STATS_ENABLED": "0"}
    p = free_ports(12)
    temp_dir = f"/tmp/rt{p[0]}"              # short: AF_UNIX socket paths are limited
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
         "--port", str(p[0]), "--num-cpus", "1", "--include-dashboard", "false",
         "--temp-dir", temp_dir, "--dashboard-agent-listen-port", str(p[1]),
         "--metrics-export-port", str(p[2]), "--runtime-env-agent-port", str(p[3]),
         "--node-manager-port", str(p[4]), "--object-manager-port", str(p[5])],
        env=env, stdout=open(tmp / "head.log", "w"), stderr=subprocess.STDOUT,
        start_new_session=True)
    procs = [head]
    address = f"127.0.0.1:{p[0]}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", p[0]), timeout=1).close()
                break
            except OSError:
                assert head.poll() is None, (tmp / "head.log").read_text()[-2000:]
                assert time.monotonic() < deadline, "head node did not start"
                time.sleep(1)
        second = subprocess.Popen(
            [RAY, "start", "--block", "--address", address, "--node-ip-address", "127.0.0.1",
             "--num-cpus", "1", "--resources", '{"second_node": 1}',
             "--dashboard-agent-listen-port", str(p[6]), "--metrics-export-port", str(p[7]),
             "--runtime-env-agent-port", str(p[8]), "--node-manager-port", str(p[9]),
             "--object-manager-port", str(p[10])],
            env=env, stdout=open(tmp / "second.log", "w"), stderr=subprocess.STDOUT,
            start_new_session=True)
        procs.append(second)
        deadline = time.monotonic() + 180
        while _alive_nodes(address, env) < 2:
            assert second.poll() is None, (tmp / "second.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "second node did not join"
            time.sleep(2)
        yield address, env
    finally:
        for proc in reversed(procs):
            _stop(proc)


def test_search_runs_trials_on_both_nodes(two_nodes, tmp_path):
    address, env = two_nodes
    res = run_cli(TINY + ["--family", "vmnc", "--num-samples", "4", "--max-epochs", "2",
                          "--scheduler", "fifo", "--max-concurrent", "2", "--verbose", "0",
                          "--address", address, "--storage-path", str(tmp_path),
                          "--name", "two_nodes"], env=env, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    df = pd.read_parquet(tmp_path / "two_nodes" / "trials.parquet")
    assert len(df) == 4 and set(df["state"]) == {"TERMINATED"}
    assert df["node_id"].nunique() == 2, df[["trial_id", "node_id"]]
