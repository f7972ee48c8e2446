"""--val-loss: which val/loss a search's MONET trials compute (no Ray needed)."""
import pytest

from monet.config import TrainConfig
from monet.errors import ConfigError
from search import tune_monet
from search.settings import SearchSettings


def settings(tmp_path, *args):
    a = tune_monet.build_parser().parse_args(["--storage-path", str(tmp_path), *args])
    s = tune_monet.resolve(a)
    return s, tune_monet.base_config(a, s)


@pytest.mark.parametrize("args, want", [
    ((), "sampled"),                                   # accuracy metric: the L-order estimate
    (("--metric", "val/loss"), "exact"),               # the loss is what ASHA and TPE judge
    (("--val-loss", "exact"), "exact"),
    (("--metric", "val/loss", "--val-loss", "sampled"), "sampled"),
])
def test_val_loss_default_follows_the_metric(tmp_path, args, want):
    s, base = settings(tmp_path, *args)
    assert s.val_loss == want and base["val_loss"] == want
    assert TrainConfig.from_dict(base).val_loss == want


def test_val_loss_saved_before_the_flag_reads_as_exact_and_bad_values_are_refused(tmp_path):
    s, _ = settings(tmp_path)
    saved = s.to_dict()
    saved.pop("val_loss")
    assert SearchSettings.from_dict(saved).val_loss == "exact"
    with pytest.raises(ConfigError, match="val_loss 'approx'; expected 'exact' or 'sampled'"):
        SearchSettings.from_dict({**saved, "val_loss": "approx"})
    with pytest.raises(SystemExit) as e:
        tune_monet.build_parser().parse_args(["--val-loss", "approx"])
    assert e.value.code == 2
