"""A trial that Ray gives a GPU must use it: where torch sees none, the trial fails with a line
saying so (it never trains on the CPU silently). The GPU here is one Ray is told exists."""
import pandas as pd
import pytest

from conftest import TINY
from search import tune_monet


@pytest.fixture(scope="module")
def ray_with_a_declared_gpu():
    import ray
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a real GPU")
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, logging_level="ERROR",
             log_to_driver=False)
    yield
    ray.shutdown()


def test_gpu_trial_without_a_visible_gpu_fails_clearly(ray_with_a_declared_gpu, tmp_path, capsys):
    rc = tune_monet.run(TINY + ["--family", "vmnc", "--num-samples", "1", "--max-epochs", "1",
                                "--gpus-per-trial", "1", "--storage-path", str(tmp_path),
                                "--name", "g", "--verbose", "0"])
    assert rc == 1
    df = pd.read_parquet(tmp_path / "g" / "trials.parquet")
    assert list(df["state"]) == ["ERROR"]
    assert "was given GPU(s) by Ray but torch sees none" in df["error"][0]
    assert "does not fall back to the CPU" in df["error"][0]
