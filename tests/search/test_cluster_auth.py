"""Token authentication on a real two-node local cluster (what every cluster file turns on).

The head is started with ``RAY_AUTH_MODE=token`` and a token made for this test, on 127.0.0.1.
A second ``ray start --address`` given the token joins (even with a stale token in its
~/.ray/auth_token); one without any token (auth mode unset,
an empty HOME so that no ~/.ray/auth_token is found) and one with a wrong token are refused and
never show up as nodes. Every process is stopped afterwards, by its session id.
"""
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from conftest import free_ports

RAY = str(Path(sys.executable).with_name("ray"))


def _kill_session(sid):
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.getsid(int(d)) == sid:
                    os.kill(int(d), signal.SIGKILL)
            except OSError:
                pass


def _node_args(ports):
    return ["--node-ip-address", "127.0.0.1", "--num-cpus", "1",
            "--dashboard-agent-listen-port", str(ports[0]), "--metrics-export-port", str(ports[1]),
            "--runtime-env-agent-port", str(ports[2]), "--node-manager-port", str(ports[3]),
            "--object-manager-port", str(ports[4])]


def _alive_nodes(address, env):
    code = ("import ray; ray.init(address=%r, logging_level='ERROR'); "
            "print(sum(n['Alive'] for n in ray.nodes()))" % address)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.strip().splitlines()[-1])


def _join(address, env, ports, log):
    """``ray start --block --address``: returns the process, or its exit code if it ended."""
    return subprocess.Popen([RAY, "start", "--block", "--address", address] + _node_args(ports),
                            env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def test_token_auth_two_nodes(tmp_path):
    token = tmp_path / "token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    empty_home = tmp_path / "home"
    empty_home.mkdir()
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    base.update({"RAY_USAGE_STATS_ENABLED": "0", "HOME": str(empty_home)})
    env = {**base, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    p = free_ports(21)
    address = f"127.0.0.1:{p[0]}"
    procs = []
    try:
        head = subprocess.Popen(
            [RAY, "start", "--head", "--block", "--port", str(p[0]), "--temp-dir", f"/tmp/ra{p[0]}",
             "--include-dashboard", "false"] + _node_args(p[1:6]),
            env=env, stdout=open(tmp_path / "head.log", "w"), stderr=subprocess.STDOUT,
            start_new_session=True)
        procs.append(head)
        deadline = time.monotonic() + 90
        while True:
            try:
                socket.create_connection(("127.0.0.1", p[0]), timeout=1).close()
                break
            except OSError:
                assert head.poll() is None, (tmp_path / "head.log").read_text()[-2000:]
                assert time.monotonic() < deadline, "head node did not start"
                time.sleep(1)

        # refused: no token at all (Ray's default client: auth off), and a wrong token
        no_token = _join(address, base, p[6:11], tmp_path / "no_token.log")
        wrong = _join(address, {**base, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64},
                      p[11:16], tmp_path / "wrong.log")
        procs += [no_token, wrong]
        # accepted: the token, given as the variable this time (the file is the head's), even
        # with a stale ~/.ray/auth_token in that node's HOME (the variable wins)
        stale_home = tmp_path / "stale_home"
        (stale_home / ".ray").mkdir(parents=True)
        (stale_home / ".ray" / "auth_token").write_text(secrets.token_hex(32))
        good = _join(address, {**base, "RAY_AUTH_MODE": "token", "HOME": str(stale_home),
                               "RAY_AUTH_TOKEN": token.read_text()},
                     p[16:21], tmp_path / "good.log")
        procs.append(good)

        deadline = time.monotonic() + 120
        while _alive_nodes(address, env) < 2:
            assert good.poll() is None, (tmp_path / "good.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the node with the token did not join"
            time.sleep(2)
        for proc, log in [(no_token, "no_token.log"), (wrong, "wrong.log")]:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
            text = (tmp_path / log).read_text()
            assert proc.returncode not in (None, 0), f"{log} still running:\n{text[-2000:]}"
            assert "uthenticat" in text, text[-2000:]
        assert _alive_nodes(address, env) == 2          # the head and the node with the token
        # a driver without the token is refused too
        res = subprocess.run(
            [sys.executable, "-c", f"import ray; ray.init(address={address!r})"],
            env=base, capture_output=True, text=True, timeout=120)
        assert res.returncode != 0 and "uthenticat" in res.stderr, res.stderr[-2000:]
    finally:
        for proc in reversed(procs):
            _kill_session(proc.pid)
            proc.wait(timeout=30)
        shutil.rmtree(f"/tmp/ra{p[0]}", ignore_errors=True)
