"""A network namespace with loopback only, for tests that start Ray nodes and connect to them.

Ray rewrites a client's ``127.0.0.1:port`` to the machine's own address
(``services.resolve_ip_for_localhost``), and ``ray start --address`` does the same; inside a
namespace whose only interface is ``lo`` that address is 127.0.0.1, so every connection stays on
loopback. The namespace is held open by a sleeping process; commands enter it with ``nsenter``
(which execs them: the process id stays the command's own).
"""
import shutil
import subprocess

import pytest


class NetNS:
    def __init__(self):
        if not (shutil.which("unshare") and shutil.which("nsenter") and shutil.which("ip")):
            pytest.skip("needs unshare, nsenter and ip (util-linux, iproute2)")
        self.proc = subprocess.Popen(
            ["unshare", "-n", "sh", "-c", "ip link set lo up && echo ready && exec sleep 100000"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        if self.proc.stdout.readline().strip() != "ready":
            err = self.proc.stderr.read()
            self.proc.wait()
            pytest.skip(f"cannot make a network namespace: {err.strip()[:200]}")

    def cmd(self, argv):
        """``argv`` run inside the namespace."""
        return ["nsenter", "-t", str(self.proc.pid), "-n", "--"] + list(argv)

    def close(self):
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def netns():
    ns = NetNS()
    yield ns
    ns.close()
