"""benchmarks/search_vs_peers.py: ours against each peer seed by seed (no Ray instance)."""
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import search_vs_peers as svp  # noqa: E402


def _run(seed, test, vals=None):
    return {"seed": seed, "test_mean": test,
            "retrain": [{"val": v, "test": test} for v in (vals or [test])]}


def test_paired_matches_seeds_counts_ties_and_brackets_the_mean():
    ours = [_run(0, 0.80), _run(1, 0.90, [0.88, 0.92]), _run(2, 0.70), _run(5, 0.99)]
    # the peer's runs in another order, seed 5 missing: pairs are by seed, not by position
    peer = [_run(2, 0.74), _run(0, 0.80), _run(1, 0.85, [0.80, 0.84])]
    d = svp.paired(ours, peer)
    assert d["seeds"] == 3
    # +0.0, +5.0, -4.0 points
    assert d["test_diff"] == pytest.approx(1 / 3, abs=0.01)
    assert d["wins_ties_losses"] == [1, 1, 1]
    assert d["test_diff_sd"] == pytest.approx(4.51, abs=0.01)
    lo, hi = d["test_diff_ci95"]
    assert -4.0 <= lo < d["test_diff"] < hi <= 5.0
    # validation of the retrains: (0.90 - 0.82) on seed 1, -4 on seed 2, 0 on seed 0
    assert d["retrain_val_diff"] == pytest.approx((0 + 8 - 4) / 3, abs=0.01)
    assert svp.paired(ours, peer) == d                       # seeded bootstrap
    assert svp.paired(ours, [_run(7, 0.5)]) is None          # no seed in common


def test_summary_carries_the_paired_comparison_for_every_peer():
    base = {"winner": {"family": "monet"}, "winner_val": 0.8, "trial_epochs": 10.0, "wall_s": 5.0,
            "reach": {"epochs": None, "wall_s": None}, "overhead_outside_train": 0.2,
            "events": [], "identity": 0}
    runs = {m: [{**base, **_run(s, t + 0.01 * s)} for s in range(3)]
            for m, t in (("ours", 0.80), ("ray_stock", 0.82))}
    summ = svp.summarize("bits", runs)
    assert "paired" not in summ["ours"]
    p = summ["ray_stock"]["paired"]
    assert p["test_diff"] == pytest.approx(-2.0) and p["wins_ties_losses"] == [0, 0, 3]
    assert p["test_diff_ci95"] == [pytest.approx(-2.0), pytest.approx(-2.0)]
