"""benchmarks/asha_replay.py: Ray's ASHA bracket replayed on recorded curves (no Ray instance)."""
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import asha_replay  # noqa: E402


def _curve(values, seconds=1.0):
    return [(float(e + 1), v, seconds) for e, v in enumerate(values)]


def test_first_trial_at_a_rung_goes_on_and_worse_later_trials_stop():
    good, bad = _curve([0.5, 0.6, 0.7, 0.8]), _curve([0.4, 0.45, 0.5, 0.55])
    # one slot, rungs at 1 and 2 (rf 2, max_t 4): the good trial first runs to the end, the bad
    # one is below the cutoff (the good one's value) at rung 1
    epochs, win = asha_replay.replay([("a", good), ("b", bad)], 1, 2, 4, 1, "max")
    assert (epochs, win) == (5, 0)
    # the other way round: the bad trial has nothing to be compared with and runs to the end,
    # the good one beats it at every rung
    epochs, win = asha_replay.replay([("b", bad), ("a", good)], 1, 2, 4, 1, "max")
    assert (epochs, win) == (8, 1)
    # mode min: now the "bad" curve is the better one and runs to the end; the other is stopped
    # at rung 1, and its last value there (0.5) is below the first one's final 0.55: the search
    # selects on the last reported value, so the stopped trial wins
    epochs, win = asha_replay.replay([("b", bad), ("a", good)], 1, 2, 4, 1, "min")
    assert (epochs, win) == (5, 1)


def _experiment(tmp_path, curves):
    rows = []
    for i, values in enumerate(curves):
        d = tmp_path / f"trial_{i}"
        d.mkdir()
        lines = [{"epoch": e + 1.0, "val/mean_acc": v, "time/train_s": 0.5 * (e + 1),
                  "time/eval_s": 0.1} for e, v in enumerate(values)]
        (d / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        rows.append({"trial_dir": str(d)})
    pd.DataFrame(rows).to_parquet(tmp_path / "trials.parquet")
    return tmp_path


def test_cli_prints_the_share_of_fifo_epochs_and_writes_json(tmp_path):
    exp = tmp_path / "exp"
    exp.mkdir()
    _experiment(exp, [[0.1 * i + 0.01 * e for e in range(9)] for i in range(6)])
    out = tmp_path / "replay.json"
    p = subprocess.run([sys.executable, str(REPO / "benchmarks" / "asha_replay.py"), str(exp),
                        "--settings", "9,3", "1,3", "--orders", "5", "--json", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "6 recorded trials, FIFO 54 trial-epochs" in p.stdout
    rows = json.loads(out.read_text())["rows"]
    # grace = max_t: nothing is ever stopped, ASHA costs what FIFO costs and finds its winner
    assert rows[0]["share_mean"] == 1.0 and rows[0]["gap_mean_pts"] == 0.0
    assert rows[1]["share_mean"] < 1.0 and rows[1]["p_gap_le_1pt"] == 1.0


def test_cli_refuses_a_folder_without_trials(tmp_path):
    p = subprocess.run([sys.executable, str(REPO / "benchmarks" / "asha_replay.py"), str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert "has no trials.parquet" in p.stderr
