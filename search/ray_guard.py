"""A local Ray instance that is private to its search and leaves nothing behind.

Two guards around ``ray.init()`` for a search without ``--address``:

* **A token of its own.** Ray 2.60's gcs_server, raylet and workers listen on all interfaces even
  with ``_node_ip_address="127.0.0.1"`` (seen with ``ss -ltnp``; the RuntimeEnvAgent even binds the
  machine's own address), and there is no option to bind them to loopback. A new local
  ``ray.init()`` does turn token authentication on by default, but with the token in
  ``~/.ray/auth_token``: one token for every cluster of the user, written world-readable, never
  rotated. :func:`private_token_env` gives the search a fresh random token instead
  (``RAY_AUTH_MODE=token``, ``RAY_AUTH_TOKEN``, set before ``ray.init()``; never printed) and
  puts the environment back as it was when the search ends. A client without that token is
  refused (``AuthenticationError``).
* **A watchdog.** Ray's processes are children of the driver, and a driver that dies without
  ``ray.shutdown()`` (SIGKILL, OOM killer) leaves raylet's agents and workers running.
  :func:`start_watchdog` starts this file as a small process in a session of its own; it keeps a
  list of the Ray session's processes (the driver's descendants whose command line names the
  session folder, and all their descendants) and, as soon as the driver is gone (the pipe the
  driver holds reaches end-of-file: normal exit, exception, signal, SIGKILL), ends every one of
  them that is still alive (SIGTERM, then SIGKILL) and exits.

Example (what ``search/tune_monet.py`` does in local mode)::

    with private_token_env():
        ray.init(num_cpus=2, _node_ip_address="127.0.0.1")
        guard = start_watchdog(session_dir_of_ray())
        try:
            ...                       # the search
        finally:
            ray.shutdown()
            guard.close()             # the watchdog sweeps what is left, then exits
"""
from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path
from typing import Optional

AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
POLL_S = 0.5          # how often the watchdog refreshes its list of the session's processes
TERM_WAIT_S = 3.0     # SIGTERM, then SIGKILL after this long


# ------------------------------------------------------------------------------- token
def _reset_ray_token_cache() -> None:
    """Make Ray (in this process) read the auth mode and token from the environment again."""
    try:
        from ray._raylet import AuthenticationTokenLoader, Config
        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
    except Exception:  # noqa: BLE001 - an older/newer Ray without these: nothing cached
        pass


@contextlib.contextmanager
def private_token_env():
    """Token authentication with a fresh random token for the duration of the block.

    The token lives only in this process's environment (inherited by the Ray processes it
    starts); the previous values of ``RAY_AUTH_MODE``, ``RAY_AUTH_TOKEN`` and
    ``RAY_AUTH_TOKEN_PATH`` are put back at the end, however the block ends."""
    saved = {k: os.environ.get(k) for k in AUTH_VARS}
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    os.environ.pop("RAY_AUTH_TOKEN_PATH", None)       # the variable must win over any file
    _reset_ray_token_cache()
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _reset_ray_token_cache()


def session_dir_of_ray() -> Optional[str]:
    """The session folder of the Ray instance this process started (``/tmp/ray/session_...``)."""
    try:
        import ray
        return ray._private.worker._global_node.get_session_dir_path()
    except Exception:  # noqa: BLE001
        return None


# ------------------------------------------------------------------------------- watchdog
class Watchdog:
    """The driver's end of a running watchdog: :meth:`close` tells it the driver is done."""

    def __init__(self, proc: subprocess.Popen, write_fd: int):
        self.proc, self._fd = proc, write_fd

    @property
    def pid(self) -> int:
        return self.proc.pid

    def close(self, wait: float = 30.0) -> None:
        """Close the pipe (the watchdog then ends what is left of the session) and wait for it."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        try:
            self.proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            pass


def start_watchdog(session_dir: str, driver_pid: Optional[int] = None) -> Watchdog:
    """Start the watchdog of the Ray session ``session_dir`` owned by ``driver_pid`` (this
    process by default). It runs in a session of its own, so that signals sent to the driver's
    process group do not reach it."""
    r, w = os.pipe()                  # both ends non-inheritable: only the watchdog gets ``r``
    os.set_inheritable(r, True)
    env = {k: v for k, v in os.environ.items() if k not in AUTH_VARS}   # it needs no token
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--driver-pid",
         str(driver_pid or os.getpid()), "--fd", str(r), "--session-dir", session_dir],
        pass_fds=(r,), start_new_session=True, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    os.close(r)
    return Watchdog(proc, w)


def _psutil():
    try:
        import psutil
    except ImportError:  # Ray ships psutil in its thirdparty_files (added to sys.path by `import ray`)
        import importlib.util
        spec = importlib.util.find_spec("ray")
        if spec is None or not spec.submodule_search_locations:
            raise
        sys.path.append(str(Path(list(spec.submodule_search_locations)[0]) / "thirdparty_files"))
        import psutil
    return psutil


def session_processes(psutil, driver_pid: int, session_dir: str) -> dict:
    """``pid -> Process`` of the Ray session: the driver's descendants whose command line names
    ``session_dir`` (gcs_server, raylet, dashboard, monitors) and all their descendants
    (the agents and workers the raylet starts, whose titles no longer name the session)."""
    out = {}
    try:
        kids = psutil.Process(driver_pid).children(recursive=True)
    except psutil.Error:
        return out
    for p in kids:
        try:
            if session_dir in " ".join(p.cmdline()):
                out[p.pid] = p
                for c in p.children(recursive=True):
                    out[c.pid] = c
        except psutil.Error:
            continue
    return out


def _sweep(psutil, known: dict, session_dir: str) -> None:
    """End every process of ``known`` still alive, their descendants, and any process whose
    command line names ``session_dir``: SIGTERM, then SIGKILL."""
    me = os.getpid()
    targets = {}
    for pid, p in known.items():
        try:
            if p.is_running():                  # same pid *and* start time: not a reused pid
                targets[pid] = p
                for c in p.children(recursive=True):
                    targets[c.pid] = c
        except psutil.Error:
            pass
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if p.pid != me and session_dir in " ".join(p.info["cmdline"] or ()):
                targets[p.pid] = p
                for c in p.children(recursive=True):
                    targets[c.pid] = c
        except psutil.Error:
            pass
    targets.pop(me, None)
    procs = list(targets.values())
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in procs:
            try:
                p.send_signal(sig)
            except psutil.Error:
                pass
        _, procs = psutil.wait_procs(procs, timeout=TERM_WAIT_S)
        if not procs:
            break


def watch(driver_pid: int, fd: int, session_dir: str) -> None:
    """The watchdog's loop: refresh the list every :data:`POLL_S` until the pipe closes (the
    driver ended, however it ended), then sweep."""
    import select

    psutil = _psutil()
    known = {}
    while True:
        for pid, p in session_processes(psutil, driver_pid, session_dir).items():
            known.setdefault(pid, p)
        ready, _, _ = select.select([fd], [], [], POLL_S)
        if ready and not os.read(fd, 1):        # EOF: the driver closed it or died
            break
    _sweep(psutil, known, session_dir)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="End a Ray session's processes when its driver ends.")
    p.add_argument("--driver-pid", type=int, required=True)
    p.add_argument("--fd", type=int, required=True)
    p.add_argument("--session-dir", required=True)
    a = p.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # a Ctrl+C in the terminal is the driver's
    watch(a.driver_pid, a.fd, a.session_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
