"""Reproduce MONET's toy tables (Table 2: baselines vs MONET vs oracle; Table 1: warmup x order
dropout ablation) on toy T=5, under both readings of eq. 28 (DESIGN.md §1).

Every run is one process (``torch`` with 1 thread) from a pool; each writes its own JSON file
under ``--out`` and is skipped when that file exists, so an interrupted benchmark resumes.

    python benchmarks/toy_tables.py                       # full: 5 seeds x 2 readings + ablation
    python benchmarks/toy_tables.py --workers 2 --seeds 5 --ablation-seeds 3
    python benchmarks/toy_tables.py --report-only         # print the tables from saved runs
    python benchmarks/toy_tables.py --lr 2e-3 --out benchmarks/results/toy_tables_lr2e-3
    python benchmarks/toy_select.py benchmarks/results/toy_tables benchmarks/results/toy_tables_lr2e-3

Paper settings (§4.2): 500 epochs, batch 64, Adam lr 5e-4 with decay 0.99, order lr 5e-3,
L = 20, M = 120, k = 100; the warmup n was tuned on validation in the paper (``--warmup``).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PAPER_T2 = {  # Table 2 of the MONET paper (toy, T = 5): tasks 1..5 and mean
    "vmnc": [98.7, 97.6, 92.4, 65.2, 54.0, 81.5],
    "vmns": [98.7, 97.5, 72.8, 51.5, 52.9, 74.9],
    "mrnn": [93.7, 93.6, 80.1, 60.5, 51.3, 75.9],
    "monet": [99.4, 98.3, 95.8, 90.0, 68.2, 90.1],
    "oracle": [99.6, 98.6, 96.1, 92.1, 80.6, 93.4],
}
PAPER_T1 = {(False, False): (89.2, "8/10"), (True, False): (89.3, "9/10"),
            (False, True): (89.8, "10/10"), (True, True): (90.1, "10/10")}
FAMILIES = ["vmnc", "vmns", "mrnn", "monet", "oracle"]
BASELINES = ["vmnc", "vmns", "mrnn"]


def base_config(a) -> dict:
    return dict(dataset="toy", T=5, epochs=a.epochs, batch_size=64, lr_decay=0.99,
                optimizer="adam", order_lr=a.order_lr, L=20, M=120, k=a.k, warmup=a.warmup,
                hidden=64, enc_layers=4, enc_width=64, head_width=64,
                feedback=a.feedback, feedback_embed=a.feedback_embed, warmup_loss=a.warmup_loss,
                lr=a.lr, eval_every=a.eval_every, tensorboard=False,
                test_at_end=True)


def run_one(job: dict) -> dict:
    """Train one model (in a worker process) and save its result JSON."""
    import torch

    torch.set_num_threads(1)
    from monet.config import TrainConfig
    from monet.data import load_dataset
    from monet.train import fit

    out = Path(job["path"])
    c = TrainConfig.from_dict(job["config"])
    t0 = time.time()
    res = fit(c, load_dataset(c))
    rec = {"job": job["name"], "config": c.to_dict(), "test": res["test"], "order": res["order"],
           "dist_to_identity": res["metrics"].get("order/dist_to_identity"),
           "val_mean_acc": res["metrics"].get("val/mean_acc"),
           "train_loss": res["metrics"].get("train/loss"), "seconds": time.time() - t0}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(rec, indent=1))
    os.replace(tmp, out)
    return rec


def run_jobs(todo: list, workers: int) -> None:
    """Run the jobs in a pool of single-threaded processes, printing one line per finished run;
    a failed run is reported and the others go on."""
    with ProcessPoolExecutor(max_workers=workers) as ex:
        futs = {ex.submit(run_one, j): j for j in todo}
        for f in as_completed(futs):
            j = futs[f]
            try:
                r = f.result()
                print(f"done {j['name']}: test mean acc {100 * r['test']['mean_acc']:.1f}, "
                      f"order {r['order']}, {r['seconds']:.0f}s", flush=True)
            except Exception as e:  # noqa: BLE001 - report and go on
                print(f"FAILED {j['name']}: {e}", flush=True)


def plan(a) -> list:
    """Jobs in the order they run: Table 2 of the first reading, Table 1 (bits), other readings."""
    base = base_config(a)

    def table2(reading):
        return [{"name": f"t2/{reading}/{fam}/s{seed}",
                 "config": dict(base, family=fam, reading=reading, seed=seed),
                 "path": str(Path(a.out) / "table2" / reading / f"{fam}_s{seed}.json")}
                for fam in FAMILIES for seed in range(a.seeds)]

    table1 = []
    for warm in (False, True):
        for drop in (False, True):
            for seed in range(a.ablation_seeds):
                cfg = dict(base, family="monet", reading="bits", seed=seed,
                           warmup=a.warmup if warm else 0.0, k=a.k if drop else 120)
                tag = f"w{int(warm)}_d{int(drop)}"
                path = Path(a.out) / "table1" / f"{tag}_s{seed}.json"
                if warm and drop and seed < a.seeds and "bits" in a.readings:
                    # the same run as Table 2's MONET (bits): share it
                    path = Path(a.out) / "table2" / "bits" / f"monet_s{seed}.json"
                table1.append({"name": f"t1/{tag}/s{seed}", "config": cfg, "path": str(path)})
    jobs = table2(a.readings[0]) + table1
    for reading in a.readings[1:]:
        jobs += table2(reading)
    seen, uniq = set(), []   # one job per file (shared runs are planned once)
    for j in jobs:
        if j["path"] not in seen:
            seen.add(j["path"])
            uniq.append(j)
    return uniq


def _load(path, config=None):
    """The saved run, or None when there is none (or, given ``config``, when it was made with
    another configuration: a stale result is never reported under new settings)."""
    p = Path(path)
    if not p.is_file():
        return None
    rec = json.loads(p.read_text())
    if config is not None:
        from monet.config import TrainConfig
        want = TrainConfig.from_dict(config).to_dict()
        known = set(want)   # fields added since the run was saved take their default value
        have = TrainConfig.from_dict({k: v for k, v in rec["config"].items() if k in known}).to_dict()
        if have != want:
            return None
    return rec


def _ms(v):
    if not v:
        return "   n/a    "
    if len(v) == 1:
        return f"{v[0]:6.1f}     "
    return f"{statistics.mean(v):5.1f}+-{statistics.stdev(v):4.1f}"


def table2(reading: str, by_fam: dict) -> dict:
    """Print Table 2 for one reading from ``{family: [run record or None per seed]}`` and the
    targets (MONET above every baseline, share of the baseline -> oracle gap closed)."""
    summary, means, ident = {}, {}, list(range(5))
    print(f"{'':8s}" + "".join(f"{'task' + str(t):>18s}" for t in range(1, 6)) + f"{'mean':>18s}"
          + f"{'runs':>6s}{'I found':>9s}")
    for fam in FAMILIES:
        rs = [r for r in by_fam.get(fam, []) if r]
        cols = [[100 * r["test"][f"acc/task{t}"] for r in rs] for t in range(1, 6)]
        mean = [100 * r["test"]["mean_acc"] for r in rs]
        means[fam] = statistics.mean(mean) if mean else float("nan")
        found = (f"{sum(r['order'] == ident for r in rs)}/{len(rs)}"
                 if fam == "monet" and rs else "")
        cells = [f"{_ms(v)} [{pp:4.1f}]" for v, pp in zip(cols + [mean], PAPER_T2[fam])]
        print(f"{fam:8s}" + "".join(f"{c:>18s}" for c in cells) + f"{len(rs):>6d}{found:>9s}")
        summary[f"{reading}/{fam}/mean"] = means[fam]
        if fam == "monet":
            summary[f"{reading}/monet/identity_found"] = found
    print("MONET's most likely order per seed (0-based; ||Omega - I||^2): " + ", ".join(
        f"s{s} {r['order']} ({r['dist_to_identity']:.2f})"
        for s, r in enumerate(by_fam.get("monet", [])) if r))
    best_base = max(means[b] for b in BASELINES)
    gap = means["oracle"] - best_base
    closed = (means["monet"] - best_base) / gap if gap > 0 else float("nan")
    summary[f"{reading}/gap_closed"] = closed
    print(f"MONET above every baseline: {means['monet'] > best_base}; "
          f"gap (best baseline -> oracle) closed: {100 * closed:.0f}% (paper: 72%)")
    return summary


def report(a, jobs) -> dict:
    recs = {j["name"]: _load(j["path"], j["config"]) for j in jobs}
    for warm in (False, True):   # Table 1 names of runs shared with Table 2
        for drop in (False, True):
            for seed in range(a.ablation_seeds):
                name = f"t1/w{int(warm)}_d{int(drop)}/s{seed}"
                if name not in recs and warm and drop:
                    recs[name] = recs.get(f"t2/bits/monet/s{seed}")
    summary = {}
    ident = list(range(5))
    for reading in a.readings:
        by_fam = {fam: [recs[f"t2/{reading}/{fam}/s{s}"] for s in range(a.seeds)]
                  for fam in FAMILIES}
        print(f"\nTable 2 (toy T=5, reading '{reading}', test accuracy %, mean+-std over seeds; "
              f"paper in brackets)")
        summary.update(table2(reading, by_fam))
    print(f"\nTable 1 (toy T=5, reading 'bits', M=120, MONET mean accuracy %, identity found; "
          f"warmup n={a.warmup}, dropout k={a.k} vs k=M=120)")
    print(f"{'warmup':>7s}{'dropout':>8s}{'mean acc':>14s}{'I found':>9s}   paper")
    for warm in (False, True):
        for drop in (False, True):
            tag = f"w{int(warm)}_d{int(drop)}"
            rs = [recs[f"t1/{tag}/s{s}"] for s in range(a.ablation_seeds)]
            rs = [r for r in rs if r]
            mean = [100 * r["test"]["mean_acc"] for r in rs]
            found = f"{sum(r['order'] == ident for r in rs)}/{len(rs)}"
            pm, pf = PAPER_T1[(warm, drop)]
            print(f"{'yes' if warm else 'no':>7s}{'yes' if drop else 'no':>8s}{_ms(mean):>14s}"
                  f"{found:>9s}   {pm} {pf}   orders: "
                  + " ".join(str(r["order"]).replace(" ", "") for r in rs))
            summary[f"table1/{tag}"] = {"mean": statistics.mean(mean) if mean else None,
                                        "found": found}
    return summary


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--ablation-seeds", type=int, default=3)
    p.add_argument("--readings", nargs="+", default=["bits", "printed"])
    p.add_argument("--epochs", type=float, default=500)
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--feedback", choices=["prev", "all"], default="prev",
                   help="label feedback of the sequential families (prev: eq. 15)")
    p.add_argument("--feedback-embed", type=int, default=0)
    p.add_argument("--warmup-loss", choices=["mixture", "mean"], default="mixture",
                   help="MONET's loss during warmup (mixture: eq. 18 with pi frozen)")
    p.add_argument("--lr", type=float, default=5e-4, help="base learning rate (paper: 5e-4)")
    p.add_argument("--order-lr", type=float, default=5e-3, help="Adam lr of the order logits "
                   "(paper: 5e-3)")
    p.add_argument("--k", type=int, default=100, help="MONET order dropout: orders kept per "
                   "example, of M = 120 (paper: k = 100; Table 1's no-dropout rows use k = M)")
    p.add_argument("--eval-every", type=float, default=50.0,
                   help="evaluation round length in epochs (validation is only logged here)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "toy_tables"))
    p.add_argument("--only", help="run only jobs whose name contains this (e.g. t2/bits/monet)")
    p.add_argument("--report-only", action="store_true")
    a = p.parse_args(argv)
    jobs = plan(a)
    missing = [j for j in jobs if _load(j["path"], j["config"]) is None]
    todo = [j for j in missing if not a.only or a.only in j["name"]]
    if not a.report_only and todo:
        done = len(jobs) - len(missing)
        print(f"{len(todo)} runs to do ({done} saved already), {a.workers} workers", flush=True)
        run_jobs(todo, a.workers)
    summary = report(a, jobs)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    tmp = Path(a.out) / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1))
    os.replace(tmp, Path(a.out) / "summary.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
