"""A local search (no --address): its Ray instance is private and ends with its driver.

What is checked, on a real local search started as users start it (a subprocess in a session of
its own):

* the listening sockets of the search's Ray processes (the driver's descendants that belong to
  its Ray session) are listed; in Ray 2.60 they are not all on loopback (gcs_server, raylet and
  workers listen on all interfaces), so the guard is the search's own token: a client that
  connects to the search's GCS on 127.0.0.1 without a token, or with another token (a stale
  ``~/.ray/auth_token`` in its HOME), is refused with Ray's AuthenticationError, while one given
  the search's token (read from the raylet's environment) connects. The token appears in no
  output and no file of the experiment.
* SIGKILL of the driver mid-trial: every process of that Ray session (gcs_server, raylet,
  DashboardAgent, RuntimeEnvAgent, workers, the watchdog) ends soon after; none is left.
* SIGTERM of the driver mid-trial: the search stops gracefully (exit code 143, experiment saved),
  nothing is left.
* In-process start_ray/stop_ray (the normal end): the token is gone from the environment and the
  environment is as before, the watchdog has exited, no Ray process is left.
* Checkpoints are loaded weights-only and YAML is safe-loaded everywhere in the code.

The searches and the clients run in a network namespace of the test's own with loopback only
(tests/search/netns.py): Ray rewrites a client's 127.0.0.1 to the machine's address otherwise.
"""
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import CLI, REPO, TINY

from netns import netns  # noqa: F401 - fixture
from search.ray_guard import _psutil, _reset_ray_token_cache

psutil = _psutil()
LOOPBACK = ("127.0.0.1", "::1", "::ffff:127.0.0.1")   # ss writes all interfaces as * or ::

CLIENT = r"""
import sys, ray
try:
    ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
except Exception as e:
    print("REFUSED", type(e).__name__, (str(e).splitlines() or [""])[0][:200])
    sys.exit(3)
print("CONNECTED", sum(n["Alive"] for n in ray.nodes()))
"""


def _start_search(ns, tmp_path, name, epochs=100000):
    """A search that runs until the test stops it (a trial of 300 epochs used to end before
    the checks on a quiet machine)."""
    space = tmp_path / "space.yaml"
    space.write_text("batch_size: 16\n")
    args = TINY + ["--family", "vmnc", "--num-samples", "2", "--max-epochs", str(epochs),
                   "--space", str(space), "--eval-every", "0.5", "--scheduler", "fifo",
                   "--max-concurrent", "1", "--num-cpus", "1", "--verbose", "0",
                   "--storage-path", str(tmp_path), "--name", name]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    log = tmp_path / f"{name}.log"
    proc = subprocess.Popen(ns.cmd(CLI + args), cwd=str(REPO), env=env, stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    return proc, log


def _wait_training(proc, exp, log, timeout=400):
    """Wait until a trial has reported (a worker is training)."""
    deadline = time.monotonic() + timeout
    while True:
        for m in exp.glob("trial_*/metrics.jsonl"):
            if m.stat().st_size > 0:
                return
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "no trial started training"
        time.sleep(0.5)


def _session_of(driver_pid):
    """The driver's Ray session folder and its processes (pid -> Process), watchdog included."""
    kids = psutil.Process(driver_pid).children(recursive=True)
    session = None
    for p in kids:
        m = re.search(r"--session[-_]dir=(\S+)", " ".join(p.cmdline()))
        if m:
            session = m.group(1)
            break
    assert session, [p.cmdline()[:2] for p in kids]
    procs = {}
    for p in kids:
        try:
            if session in " ".join(p.cmdline()):
                procs[p.pid] = p
                procs.update({c.pid: c for c in p.children(recursive=True)})
        except psutil.Error:
            pass
    return session, procs


def _alive(p):
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _left_over(session, snapshot):
    """Processes still alive from ``snapshot``, or any whose command line names ``session``."""
    left = {pid: p for pid, p in snapshot.items() if _alive(p)}
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if session in " ".join(p.info["cmdline"] or ()) and _alive(p):
                left[p.pid] = p
        except psutil.Error:
            pass
    return left


def _wait_gone(session, snapshot, timeout=60):
    deadline = time.monotonic() + timeout
    while _left_over(session, snapshot) and time.monotonic() < deadline:
        time.sleep(0.5)
    return _left_over(session, snapshot)


def _describe(procs):
    out = []
    for p in procs.values():
        try:
            out.append(f"{p.pid} {p.name()} {' '.join(p.cmdline())[:80]}")
        except psutil.Error:
            pass
    return out


def _kill_all(procs):
    for p in procs.values():
        try:
            p.kill()
        except psutil.Error:
            pass


def _listening(ns, procs):
    """(process name, ip, port) of every listening TCP socket of ``procs``, from ``ss -ltnp`` run
    in their network namespace (psutil reads the sockets of the caller's namespace)."""
    out = subprocess.run(ns.cmd(["ss", "-Hltnp"]), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    found = []
    for line in out.stdout.splitlines():
        parts = line.split()
        local = parts[3]
        ip, _, port = local.rpartition(":")
        for name, pid in re.findall(r'\("([^"]+)",pid=(\d+)', line):
            if int(pid) in procs:
                found.append((procs[int(pid)].name(), ip.strip("[]"), int(port)))
    return found


def _client(ns, address, env, tmp_path):
    res = subprocess.run(ns.cmd([sys.executable, "-c", CLIENT, address]), env=env, capture_output=True,
                         text=True, timeout=300, cwd=str(tmp_path))
    return res.returncode, res.stdout + res.stderr


def test_local_search_private_token_then_sigkill_leaves_nothing(tmp_path, netns):
    proc, log = _start_search(netns, tmp_path, "guarded")
    snapshot, session = {}, None
    try:
        _wait_training(proc, tmp_path / "guarded", log)
        session, snapshot = _session_of(proc.pid)
        names = {p.name() for p in snapshot.values()}
        assert {"gcs_server", "raylet"} <= names, names
        assert any(n.startswith("ray::") for n in names), names      # agents, the trial's worker

        # -- sockets: what listens, and where
        listening = _listening(netns, snapshot)
        print("listening sockets of the search's Ray processes:", listening)
        gcs = [port for name, ip, port in listening if name == "gcs_server"]
        assert gcs, listening
        all_loopback = all(ip in LOOPBACK for _, ip, _ in listening)
        print("all on loopback:", all_loopback)
        address = f"127.0.0.1:{gcs[0]}"

        # -- clients: without the token, with another token: refused; with it: connected
        base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        base["RAY_USAGE_STATS_ENABLED"] = "0"
        empty_home = tmp_path / "home"
        empty_home.mkdir()
        stale_home = tmp_path / "stale_home"
        (stale_home / ".ray").mkdir(parents=True)
        (stale_home / ".ray" / "auth_token").write_text(secrets.token_hex(32))
        raylet = next(p for p in snapshot.values() if p.name() == "raylet")
        token = raylet.environ().get("RAY_AUTH_TOKEN")
        assert token and len(token) >= 32 and os.environ.get("RAY_AUTH_TOKEN") != token

        rc, out = _client(netns, address, {**base, "HOME": str(empty_home)}, tmp_path)
        assert rc == 3 and "REFUSED" in out and "uthenticat" in out, out[-2000:]
        rc, out = _client(netns, address, {**base, "HOME": str(stale_home)}, tmp_path)
        assert rc == 3 and "REFUSED" in out and "uthenticat" in out, out[-2000:]
        rc, out = _client(netns, address, {**base, "HOME": str(empty_home), "RAY_AUTH_MODE": "token",
                                    "RAY_AUTH_TOKEN": token}, tmp_path)
        assert rc == 0 and "CONNECTED 1" in out, out[-2000:]

        # -- SIGKILL the driver: the whole Ray session goes
        assert proc.poll() is None, log.read_text()[-3000:]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        left = _wait_gone(session, snapshot)
        assert not left, f"left behind: {_describe(left)}"
        text = log.read_text()
        assert token not in text
        for f in (tmp_path / "guarded").rglob("*"):
            if f.is_file() and f.stat().st_size < 5_000_000:
                assert token.encode() not in f.read_bytes(), f
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if session:
            _kill_all(_left_over(session, snapshot))


def test_sigterm_stops_search_gracefully_and_leaves_nothing(tmp_path, netns):
    proc, log = _start_search(netns, tmp_path, "termed")
    snapshot, session = {}, None
    try:
        _wait_training(proc, tmp_path / "termed", log)
        session, snapshot = _session_of(proc.pid)
        os.kill(proc.pid, signal.SIGTERM)
        rc = proc.wait(timeout=300)
        text = log.read_text()
        assert rc == 143, text[-3000:]
        assert "SIGTERM" in text and "--resume" in text, text[-3000:]
        assert (tmp_path / "termed" / "tuner.pkl").is_file()
        left = _wait_gone(session, snapshot)
        assert not left, f"left behind: {_describe(left)}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if session:
            _kill_all(_left_over(session, snapshot))


def test_start_ray_then_stop_ray_restores_environment(monkeypatch):
    from search import tune_monet

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", "/nonexistent/token")
    assert tune_monet.start_ray(None, 1)
    try:
        assert os.environ["RAY_AUTH_MODE"] == "token"
        token = os.environ["RAY_AUTH_TOKEN"]
        assert len(token) >= 32 and "RAY_AUTH_TOKEN_PATH" not in os.environ
        watchdog = tune_monet._LOCAL["watchdog"]
        session, procs = _session_of(os.getpid())
        assert watchdog.pid in procs
    finally:
        tune_monet.stop_ray()
    assert os.environ["RAY_AUTH_MODE"] == "disabled"
    assert "RAY_AUTH_TOKEN" not in os.environ
    assert os.environ["RAY_AUTH_TOKEN_PATH"] == "/nonexistent/token"
    # put the environment back and make Ray in this process read it again (its config is cached)
    monkeypatch.undo()
    _reset_ray_token_cache()
    assert watchdog.proc.returncode == 0
    left = _wait_gone(session, procs)
    assert not left, f"left behind: {_describe(left)}"


CODE_DIRS = ("monet", "search", "benchmarks", "clusters")


def _code_files():
    for d in CODE_DIRS:
        yield from (REPO / d).rglob("*.py")


def _calls(text, name):
    """The argument text of every call ``name(...)`` in ``text`` (balanced parentheses)."""
    for m in re.finditer(re.escape(name) + r"\(", text):
        i, depth = m.end(), 1
        while i < len(text) and depth:
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        yield m.start(), text[m.end():i - 1]


def test_checkpoints_weights_only_and_yaml_safe_loaded():
    bad = []
    n_torch = 0
    for f in _code_files():
        text = f.read_text()
        for pos, args in _calls(text, "torch.load"):
            n_torch += 1
            if not re.search(r"weights_only\s*=\s*True", args):
                bad.append(f"{f.relative_to(REPO)}:{text.count(chr(10), 0, pos) + 1}: "
                           f"torch.load without weights_only=True")
        for name in ("yaml.load", "yaml.load_all", "yaml.unsafe_load", "yaml.full_load"):
            for pos, args in _calls(text, name):
                if name.startswith("yaml.load") and re.search(r"Loader\s*=\s*(yaml\.)?(C?SafeLoader)",
                                                              args):
                    continue
                bad.append(f"{f.relative_to(REPO)}:{text.count(chr(10), 0, pos) + 1}: {name} "
                           f"without SafeLoader")
    assert n_torch >= 1          # the checkpoint loader is found by this scan
    assert not bad, "\n".join(bad)
