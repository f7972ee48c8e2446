"""The papers' published numbers (monet/data/published.yaml): present, consistent, and keyed by
the metric names monet computes."""
from pathlib import Path

import pytest
import torch
import yaml

import monet
from monet.data.affwild2 import spec
from monet.metrics import compute_metrics

FILE = Path(monet.__file__).parent / "data" / "published.yaml"
METRICS = ("mean_f1/au", "mean_f1/expr", "mean_ccc", "p_mtl")


def load():
    return yaml.safe_load(FILE.read_text())


def test_rows_of_both_papers():
    d = load()
    mtt, mtca = d["mtt"]["rows"], d["mtca"]["rows"]
    assert [(r["mean_f1/au"], r["mean_f1/expr"], r["mean_ccc"], r["p_mtl"]) for r in mtt] == \
        [(0.25, 0.48, 0.39, 1.12), (0.27, 0.47, 0.38, 1.11)]
    assert [(r["cross_attn"], r["p_mtl"]) for r in mtca] == [(True, 1.25), (False, 1.24)]
    assert mtca[0]["mean_f1/au"] == 0.43 and mtca[0]["mean_f1/expr"] == 0.33
    assert mtca[0]["mean_ccc"] == 0.49 and d["mtca"]["baseline"]["p_mtl"] == 0.30


@pytest.mark.parametrize("family", ["mtt", "mtca"])
def test_p_mtl_is_the_sum_and_ranges_span_the_rows(family):
    d = load()[family]
    for r in d["rows"]:
        assert abs(r["mean_f1/au"] + r["mean_f1/expr"] + r["mean_ccc"] - r["p_mtl"]) <= 0.015
    for k in METRICS:
        vals = [r[k] for r in d["rows"]]
        assert d["range"][k] == [min(vals), max(vals)]
    assert d["dataset"] == "affwild2" and d["source"].endswith(".txt")


def test_metric_keys_are_monet_metric_names():
    s = spec()
    y = torch.tensor([[1.0] * 12 + [3, 0.1, 0.2], [0.0] * 12 + [4, -0.3, 0.1]])
    pred = torch.rand(2, sum(s.out_dims))
    names = set(compute_metrics(pred, y, torch.ones_like(y), s))
    assert set(METRICS) <= names
