"""Bad input: one ``error:`` line naming the flag/file, exit code 2, no trial, nothing written."""

import pytest

from conftest import TINY, free_ports, run_cli
from search import tune_monet


class _Proc:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def run_inproc(args, capsys):
    """The CLI in this process (its checks run before Ray starts, so no Ray is needed)."""
    capsys.readouterr()
    try:
        rc = tune_monet.run(list(args))
    except SystemExit as e:  # argparse
        rc = e.code
    out = capsys.readouterr()
    return _Proc(rc, out.out, out.err)


def _assert_bad(proc, *needles):
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    for n in needles:
        assert n in lines[0]
    assert "Trial" not in proc.stdout


@pytest.mark.parametrize("args, needles", [
    (["--dataset", "nope"], ["--dataset", "'nope'", "toy"]),
    (["--family", "nope"], ["--family", "'nope'", "monet", "all"]),
    (["--dataset", "tabular"], ["data_root", "--data-root"]),
    (["--dataset", "bp4d", "--data-root", "/no/such/folder"], ["/no/such/folder"]),
    (["--space", "/no/such/space.yaml"], ["--space", "/no/such/space.yaml"]),
    (["--metric", "test/mean_acc"], ["--metric", "val/"]),
    (["--metric", "val/bogus"], ["--metric: 'val/bogus' is not reported by family monet on toy",
                                 "'val/mean_acc'"]),
    (["--metric", "order/dist_to_identity", "--family", "all"],
     ["--metric: 'order/dist_to_identity' is not reported by family vmnc"]),
    (["--max-epochs", "2", "--eval-every", "3"], ["--eval-every"]),
    (["--num-samples", "x"], ["--num-samples"]),
    (["--optuna-storage", "nonsense"], ["--optuna-storage"]),
])
def test_bad_flags_fail_before_ray(tmp_path, capsys, args, needles):
    proc = run_inproc(TINY + ["--storage-path", str(tmp_path), "--name", "x"] + args, capsys)
    _assert_bad(proc, *needles)
    assert not (tmp_path / "x").exists()


def test_bad_space_file_names_file_and_parameter(tmp_path, capsys):
    f = tmp_path / "space.yaml"
    f.write_text("M: {low: 2, high: 4}\nk: {low: 1, high: 6}\n")
    proc = run_cli(TINY + ["--family", "monet", "--space", str(f),
                           "--storage-path", str(tmp_path), "--name", "x"])
    _assert_bad(proc, str(f), "'k'", "beyond M")
    f.write_text("lrate: 0.1\n")
    _assert_bad(run_inproc(TINY + ["--space", str(f), "--storage-path", str(tmp_path)], capsys),
                "unknown parameter 'lrate'")
    assert not (tmp_path / "x").exists()


def test_unreachable_address(tmp_path):
    addr = f"127.0.0.1:{free_ports(1)[0]}"
    proc = run_cli(TINY + ["--address", addr, "--storage-path", str(tmp_path), "--name", "x"])
    _assert_bad(proc, "--address", addr)
    # RAY_ADDRESS is the default address
    proc = run_cli(TINY + ["--storage-path", str(tmp_path), "--name", "x"],
                   env={"RAY_ADDRESS": addr})
    _assert_bad(proc, addr)
    assert not (tmp_path / "x").exists()


def test_gpus_on_a_cluster_without_gpus(tmp_path):
    proc = run_cli(TINY + ["--gpus-per-trial", "0.5", "--num-cpus", "1",
                           "--storage-path", str(tmp_path), "--name", "x"])
    _assert_bad(proc, "--gpus-per-trial 0.5", "no node of the Ray cluster", "GPUs per node ['0']")
    assert not (tmp_path / "x").exists()


def test_resume_needs_an_experiment(tmp_path, capsys):
    proc = run_inproc(["--resume", "--storage-path", str(tmp_path), "--name", "none"], capsys)
    _assert_bad(proc, "--resume", str(tmp_path / "none"))
