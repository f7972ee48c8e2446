"""ASHA settings replayed on recorded learning curves: trial-epochs against FIFO and the winner,
over many trial orders (issue 14: "ASHA <= 1/3 of FIFO's trial-epochs with a winner within 1 point").

A FIFO search (every trial to the full budget, e.g. the ``fifo_random`` search of
``benchmarks/search_efficiency.py``) records every trial's whole validation curve and the time of
each round. Asynchronous ASHA's savings depend on the order in which trials arrive (the first
trials at a rung have nothing to be compared with and go on), so one live ASHA run is one draw.
This script replays the recorded curves through Ray's own ASHA bracket
(``ray.tune.schedulers.async_hyperband._Bracket``, the rule of ``ASHAScheduler``) on ``--slots``
simulated slots, event by event in recorded time, for ``--orders`` random trial orders per
setting, and prints per setting: the mean, 90th percentile and max share of FIFO's trial-epochs,
how often it is <= 1/3, and the gap of the winner (best last validation value, as the search
selects) to FIFO's winner in validation points; and the same for the order in which the FIFO
search's trials started, which is the order a live ASHA search with the same seed and sampler
gets (``search_efficiency.py --only compare`` runs both with the seeded random sampler). No
training: a few seconds.

    python benchmarks/asha_replay.py /tmp/search_efficiency_runs/fifo_random-<stamp>
    python benchmarks/asha_replay.py EXP --settings 3,3 2,4 --orders 300

It is a replay, not a search: the trials do not change with the settings (same configs, same
curves), which is what makes the settings comparable; the live check is
``search_efficiency.py --only compare``.
"""
from __future__ import annotations

import argparse
import heapq
import itertools
import json
import random
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
from ray.tune.schedulers import TrialScheduler
from ray.tune.schedulers.async_hyperband import _Bracket


def load_curves(exp: Path, metric: str) -> list:
    """``[(trial name, [(epoch, value, seconds of this round), ...]), ...]`` of a FIFO search, in
    the order its trials started (Ray's ``result.json``; the folder order when it is missing):
    the order the search's sampler proposed them, which a live ASHA search with the same seed
    and sampler sees too."""
    df = pd.read_parquet(exp / "trials.parquet")
    out = []
    for i, d in enumerate(df["trial_dir"]):
        f = exp / Path(d).name / "metrics.jsonl"
        rows = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
        prev, curve = 0.0, []
        for r in rows:
            curve.append((float(r["epoch"]), float(r[metric]),
                          float(r["time/train_s"]) - prev + float(r["time/eval_s"])))
            prev = float(r["time/train_s"])
        start = float(i)
        rj = exp / Path(d).name / "result.json"
        if rj.is_file():
            first = json.loads(rj.read_text().splitlines()[0])
            start = float(first["timestamp"]) - float(first["time_total_s"])
        out.append((start, Path(d).name, curve))
    return [(name, curve) for _, name, curve in sorted(out, key=lambda x: x[0])]


def replay(curves: list, grace: float, rf: float, max_t: float, slots: int, mode: str) -> tuple:
    """(trial-epochs, index of the winner) of async ASHA over ``curves`` in the given order."""
    bracket = _Bracket(min_t=grace, max_t=max_t, reduction_factor=rf, s=0)
    sign = 1.0 if mode == "max" else -1.0
    seq, pq, nxt, epochs, last = itertools.count(), [], 0, 0.0, {}
    prev_epoch = {}

    def start(i, t):
        heapq.heappush(pq, (t + curves[i][1][0][2], next(seq), i, 0))

    for _ in range(min(slots, len(curves))):
        start(nxt, 0.0)
        nxt += 1
    while pq:
        t, _, i, e = heapq.heappop(pq)
        ep, val, _ = curves[i][1][e]
        epochs += ep - prev_epoch.get(i, 0.0)
        prev_epoch[i] = ep
        last[i] = val
        action = bracket.on_result(SimpleNamespace(trial_id=str(i)), ep, sign * val)
        if action == TrialScheduler.STOP or ep >= max_t or e + 1 >= len(curves[i][1]):
            if nxt < len(curves):
                start(nxt, t)
                nxt += 1
        else:
            heapq.heappush(pq, (t + curves[i][1][e + 1][2], next(seq), i, e + 1))
    win = max(last, key=lambda i: sign * last[i])
    return epochs, win


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("fifo_experiment", type=Path)
    p.add_argument("--metric", default="val/mean_acc")
    p.add_argument("--mode", choices=("max", "min"), default="max")
    p.add_argument("--settings", nargs="+", default=["3,3", "2,3", "3,4", "2,4", "1,4", "2,5"],
                   help="grace,reduction_factor pairs (grace in epochs)")
    p.add_argument("--orders", type=int, default=300, help="random trial orders per setting")
    p.add_argument("--slots", type=int, default=2)
    p.add_argument("--json", type=Path, help="also write the table here")
    a = p.parse_args(argv)
    if not (a.fifo_experiment / "trials.parquet").is_file():
        print(f"fifo_experiment: {a.fifo_experiment} has no trials.parquet (expected the folder "
              f"of a finished search)", file=sys.stderr)
        return 2
    curves = load_curves(a.fifo_experiment, a.metric)
    max_t = max(c[-1][0] for _, c in curves)
    full = sum(c[-1][0] for _, c in curves)
    sign = 1.0 if a.mode == "max" else -1.0
    finals = [c[-1][1] for _, c in curves]
    best = max(sign * v for v in finals)
    print(f"{len(curves)} recorded trials, FIFO {full:g} trial-epochs, max_t {max_t:g}, FIFO's "
          f"winner {a.metric} {sign * best:.4f}; {a.orders} random orders per setting, "
          f"{a.slots} slots")
    print(f"{'grace':>5s} {'rf':>3s} {'share mean':>10s} {'p90':>6s} {'max':>6s} "
          f"{'P(<=1/3)':>9s} {'gap mean (pts)':>14s} {'P(gap<=1)':>10s} "
          f"{'share, gap in the recorded order':>33s}")
    rows = []
    for setting in a.settings:
        grace, rf = (float(v) for v in setting.split(","))
        shares, gaps = [], []
        for s in range(a.orders):
            idx = list(range(len(curves)))
            random.Random(s).shuffle(idx)
            order = [curves[i] for i in idx]
            ep, win = replay(order, grace, rf, max_t, a.slots, a.mode)
            shares.append(ep / full)
            gaps.append(100 * (best - sign * order[win][1][-1][1]))
        sh, gp = np.array(shares), np.array(gaps)
        ep, win = replay(curves, grace, rf, max_t, a.slots, a.mode)
        own = (ep / full, 100 * (best - sign * curves[win][1][-1][1]))
        row = {"grace": grace, "rf": rf, "share_mean": round(float(sh.mean()), 3),
               "share_p90": round(float(np.percentile(sh, 90)), 3),
               "share_max": round(float(sh.max()), 3),
               "p_share_le_third": round(float(np.mean(sh <= 1 / 3)), 3),
               "gap_mean_pts": round(float(gp.mean()), 3),
               "p_gap_le_1pt": round(float(np.mean(gp <= 1.0)), 3),
               "recorded_order_share": round(own[0], 3), "recorded_order_gap_pts": round(own[1], 3)}
        rows.append(row)
        print(f"{grace:5g} {rf:3g} {row['share_mean']:10.3f} {row['share_p90']:6.3f} "
              f"{row['share_max']:6.3f} {row['p_share_le_third']:9.2f} "
              f"{row['gap_mean_pts']:14.2f} {row['p_gap_le_1pt']:10.2f} "
              f"{row['recorded_order_share']:26.3f}, {row['recorded_order_gap_pts']:.2f}")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = a.json.with_suffix(".tmp")
        tmp.write_text(json.dumps({"experiment": str(a.fifo_experiment), "orders": a.orders,
                                   "slots": a.slots, "rows": rows}, indent=1))
        tmp.replace(a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
