"""Does the order matter on the toy data, and how much? (MONET Fig. 5.)

Trains the oracle (MONET with M = 1 and one imposed order) on toy T=5 for a set of orders at
every distance ||M_sigma - I||_F^2 from the identity (0, 4, 6, 8, 10) and prints the test accuracy
per order and per distance, with the final training loss: the quantity MONET's order selector
compares. Run it before reading Table 1's "identity found" counts: an order that is only a few
tenths of a point behind the identity is hard to tell from it.

    python benchmarks/toy_orders.py                      # bits reading, 3 seeds
    python benchmarks/toy_orders.py --readings bits printed --seeds 2
    python benchmarks/toy_orders.py --report-only

Each run is one process with one thread and writes its JSON under ``--out``; saved runs with the
same configuration are reused, so an interrupted run resumes.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from toy_tables import _load, run_jobs  # noqa: E402

# Orders at each distance from the identity (0-based tasks; distance = 2 x misplaced tasks).
ORDERS = [
    [0, 1, 2, 3, 4],                                   # 0: the identity
    [1, 0, 2, 3, 4], [0, 2, 1, 3, 4], [0, 1, 3, 2, 4], [0, 1, 2, 4, 3],   # 4: one swap
    [1, 2, 0, 3, 4], [0, 1, 3, 4, 2],                  # 6: a 3-cycle
    [1, 0, 3, 2, 4], [2, 3, 0, 1, 4],                  # 8
    [4, 3, 2, 1, 0], [1, 2, 3, 4, 0],                  # 8 (the reverse) and 10
]


def dist(order) -> int:
    return 2 * sum(int(o != i) for i, o in enumerate(order))


def plan(a) -> list:
    jobs = []
    for reading in a.readings:
        for order in ORDERS:
            for seed in range(a.seeds):
                cfg = dict(dataset="toy", T=5, reading=reading, family="oracle", order=order,
                           epochs=a.epochs, batch_size=64, lr=a.lr, lr_decay=0.99,
                           optimizer="adam", L=20, hidden=64, enc_layers=4, enc_width=64,
                           feedback=a.feedback, eval_every=a.epochs, tensorboard=False,
                           test_at_end=True, seed=seed)
                tag = "".join(map(str, order))
                jobs.append({"name": f"{reading}/{tag}/s{seed}", "config": cfg,
                             "path": str(Path(a.out) / reading / f"o{tag}_s{seed}.json")})
    return jobs


def report(a, jobs) -> dict:
    summary = {}
    for reading in a.readings:
        print(f"\nOracle with an imposed order, toy T=5, reading '{reading}' "
              f"(test mean accuracy %, final train loss; up to {a.seeds} seeds per order)")
        print(f"{'order':>13s}{'dist':>6s}{'test acc':>16s}{'task 5':>9s}{'train loss':>12s}"
              f"{'runs':>6s}")
        by_dist = {}
        for order in ORDERS:
            tag = "".join(map(str, order))
            rs = [_load(j["path"], j["config"]) for j in jobs
                  if j["name"].startswith(f"{reading}/{tag}/")]
            rs = [r for r in rs if r]
            if not rs:
                continue
            acc = [100 * r["test"]["mean_acc"] for r in rs]
            t5 = [100 * r["test"]["acc/task5"] for r in rs]
            loss = [r["train_loss"] for r in rs if r.get("train_loss") is not None]
            by_dist.setdefault(dist(order), []).extend(acc)
            sd = f"+-{statistics.stdev(acc):4.1f}" if len(acc) > 1 else "      "
            print(f"{str(order).replace(' ', ''):>13s}{dist(order):>6d}"
                  f"{statistics.mean(acc):10.1f}{sd}{statistics.mean(t5):9.1f}"
                  f"{statistics.mean(loss) if loss else float('nan'):12.3f}{len(acc):6d}")
            summary[f"{reading}/{tag}"] = {"acc": statistics.mean(acc), "runs": len(acc),
                                           "train_loss": statistics.mean(loss) if loss else None}
        print("by distance: " + ", ".join(f"{d}: {statistics.mean(v):.1f}"
                                          for d, v in sorted(by_dist.items())))
        summary[f"{reading}/by_distance"] = {d: statistics.mean(v) for d, v in by_dist.items()}
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--readings", nargs="+", default=["bits"], choices=["bits", "printed"])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=float, default=500)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--feedback", choices=["prev", "all"], default="prev")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "toy_orders"))
    p.add_argument("--report-only", action="store_true")
    a = p.parse_args(argv)
    jobs = plan(a)
    todo = [j for j in jobs if _load(j["path"], j["config"]) is None]
    if todo and not a.report_only:
        print(f"{len(todo)} runs to do, {a.workers} workers", flush=True)
        run_jobs(todo, a.workers)
    summary = report(a, jobs)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    tmp = Path(a.out) / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1, default=str))
    os.replace(tmp, Path(a.out) / "summary.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
