"""Search efficiency on toy T=5: ASHA vs FIFO, TPE vs random, Tune's overhead, the headline.

What it measures (every search on one local Ray instance, same seed and number of trials):

1. ASHA vs FIFO (every trial to the full budget), both with the seeded random sampler, so both
   searches try exactly the same configs: total trial-epochs, wall time, and the test mean
   accuracy of each winner. Target: ASHA within 1 point of FIFO with <= 1/3 of its epochs.
2. TPE vs random sampling, both with ASHA, at the same number of trials.
3. Tune's overhead in the default search (``python search/tune_monet.py``'s settings): the share
   of the trial slots' wall time spent outside training steps (and outside training + eval).
4. The headline: the default MONET search with a larger budget; is the winner's test mean
   accuracy >= 90.1 (the paper's hand-tuned MONET)?

The search only sees validation metrics. A winner's test accuracy comes from retraining its
best_train_config.yaml with ``test_at_end=True`` (``fit`` is deterministic on CPU, so this is the
winning trial itself, now evaluated on the test split).

    python benchmarks/search_efficiency.py                 # everything (~30-45 min on 2 cores)
    python benchmarks/search_efficiency.py --quick         # a minute-scale smoke of the script
    python benchmarks/search_efficiency.py --only headline --headline-samples 64

Results: ``benchmarks/results/search_efficiency.json`` (and a printed table).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import pandas as pd  # noqa: E402
import yaml  # noqa: E402

PAPER_MONET_TOY = 0.901
RUNS = {"asha_tpe": [], "asha_random": ["--sampler", "random"],
        "fifo_random": ["--scheduler", "fifo", "--sampler", "random"]}


def run_search(storage, name, args) -> dict:
    """One search through the CLI's ``run``; returns its wall time and tables."""
    from search import tune_monet

    t0 = time.perf_counter()
    rc = tune_monet.run(["--storage-path", str(storage), "--name", name, "--verbose", "0"] + args)
    wall = time.perf_counter() - t0
    exp = Path(storage) / name
    df = pd.read_parquet(exp / "trials.parquet")
    best = yaml.safe_load((exp / "best_config.yaml").read_text()) if rc == 0 else None
    return {"rc": rc, "wall_s": wall, "df": df, "best": best, "exp": exp}


def trial_times(exp: Path, df) -> tuple:
    """(sum of training-step seconds, sum of evaluation seconds) over all trials."""
    train = evals = 0.0
    for d in df["trial_dir"]:
        f = exp / Path(d).name / "metrics.jsonl"
        if not f.is_file():
            continue
        rows = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
        if rows:
            train += rows[-1].get("time/train_s", 0.0)
            evals += sum(r.get("time/eval_s", 0.0) for r in rows)
    return train, evals


def test_accuracy(best: dict) -> float:
    """Retrain the winner's config (deterministic) and evaluate it on the test split."""
    import torch

    from monet.config import TrainConfig
    from monet.data import load_dataset
    from monet.train import fit

    torch.set_num_threads(1)
    cfg = TrainConfig.from_dict({**best["config"], "test_at_end": True, "tensorboard": False})
    res = fit(cfg, load_dataset(cfg))
    return float(res["test"]["mean_acc"])


def summarize(tag, r, slots) -> dict:
    df = r["df"]
    train, evals = trial_times(r["exp"], df)
    out = {
        "search": tag, "trials": int(len(df)),
        "trial_epochs": float(df["epochs"].fillna(0).sum()),
        "full_budget_trials": int((~df["stopped_early"] & (df["state"] == "TERMINATED")).sum()),
        "wall_s": round(r["wall_s"], 1),
        "train_s": round(train, 1), "eval_s": round(evals, 1),
        "overhead_outside_train": round(1 - train / (r["wall_s"] * slots), 3),
        "overhead_outside_train_eval": round(1 - (train + evals) / (r["wall_s"] * slots), 3),
        "best_val": r["best"]["value"] if r["best"] else None,
        "best_trial": r["best"]["trial_id"] if r["best"] else None,
        "best_config": {k: r["best"]["config"][k] for k in (
            "lr", "weight_decay", "lr_decay", "batch_size", "enc_width", "hidden", "M", "k",
            "warmup", "order_lr", "L", "dice_lambda", "task_weighting", "temperatures")}
        if r["best"] else None,
    }
    if r["best"]:
        t0 = time.perf_counter()
        out["test_mean_acc"] = round(test_accuracy(r["best"]), 4)
        out["retrain_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps({k: v for k, v in out.items() if k != "best_config"}), flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny budgets (checks the script)")
    p.add_argument("--only", choices=("compare", "headline"), default=None)
    p.add_argument("--runs", nargs="+", choices=RUNS, default=list(RUNS),
                   help="comparison searches to run now; the others are read from --out")
    p.add_argument("--samples", type=int, default=16, help="trials per comparison search")
    p.add_argument("--epochs", type=float, default=30, help="epoch budget per comparison trial")
    p.add_argument("--headline-samples", type=int, default=48)
    p.add_argument("--headline-epochs", type=float, default=150)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--storage", default=str(REPO / "benchmarks" / "results" / "runs"))
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "search_efficiency.json"))
    a = p.parse_args(argv)
    if a.quick:
        a.samples, a.epochs, a.headline_samples, a.headline_epochs = 4, 3, 4, 4
    import ray

    slots = 2
    ray.init(num_cpus=slots, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    storage = Path(a.storage)
    common = ["--dataset", "toy", "--T", "5", "--family", "monet", "--seed", str(a.seed),
              "--num-samples", str(a.samples), "--max-epochs", str(a.epochs),
              "--max-concurrent", str(slots)]
    out = Path(a.out)
    old = json.loads(out.read_text()) if out.is_file() else {}
    report = {"machine": f"{os.cpu_count()} CPUs", "slots": slots, "seed": a.seed,
              "started": stamp, "settings": vars(a)}
    if old.get("headline"):
        report["headline"] = old["headline"]
    out.parent.mkdir(parents=True, exist_ok=True)

    def save():
        from monet.io import atomic_write_json
        atomic_write_json(out, report)

    try:
        if a.only in (None, "compare"):
            runs = {k: v for k, v in old.get("runs", {}).items() if k in RUNS}
            for tag in a.runs:
                r = run_search(storage, f"{tag}-{stamp}", common + RUNS[tag])
                runs[tag] = summarize(tag, r, slots)
                report["runs"] = runs
                save()
            report["runs"] = runs
            missing = [t for t in RUNS if t not in runs]
            if missing:
                raise SystemExit(f"--runs: no saved results for {missing} in {out}; run them")
            tpe, rnd, fifo = runs["asha_tpe"], runs["asha_random"], runs["fifo_random"]
            report["asha_vs_fifo"] = {
                "sampler": "random (same configs in both searches)",
                "asha_trial_epochs": rnd["trial_epochs"], "fifo_trial_epochs": fifo["trial_epochs"],
                "epoch_ratio": round(rnd["trial_epochs"] / fifo["trial_epochs"], 3),
                "wall_ratio": round(rnd["wall_s"] / fifo["wall_s"], 3),
                "asha_test": rnd["test_mean_acc"], "fifo_test": fifo["test_mean_acc"],
                "test_gap_points": round(100 * (fifo["test_mean_acc"] - rnd["test_mean_acc"]), 2),
                "target_met": bool(rnd["trial_epochs"] <= fifo["trial_epochs"] / 3 and
                                   fifo["test_mean_acc"] - rnd["test_mean_acc"] <= 0.01)}
            asha = tpe
            report["tpe_vs_random"] = {
                "tpe_test": asha["test_mean_acc"], "random_test": rnd["test_mean_acc"],
                "tpe_val": asha["best_val"], "random_val": rnd["best_val"],
                "tpe_epochs": asha["trial_epochs"], "random_epochs": rnd["trial_epochs"]}
            report["overhead_default_search"] = {
                "outside_training_steps": asha["overhead_outside_train"],
                "outside_training_and_eval": asha["overhead_outside_train_eval"]}
            save()
        if a.only in (None, "headline"):
            args = ["--dataset", "toy", "--T", "5", "--family", "monet", "--seed", str(a.seed),
                    "--num-samples", str(a.headline_samples),
                    "--max-epochs", str(a.headline_epochs), "--max-concurrent", str(slots)]
            r = run_search(storage, f"headline-{stamp}", args)
            h = summarize("headline", r, slots)
            h["paper_monet_toy"] = PAPER_MONET_TOY
            h["meets_paper"] = bool(h.get("test_mean_acc", 0) >= PAPER_MONET_TOY)
            h["budget"] = {"num_samples": a.headline_samples, "max_epochs": a.headline_epochs,
                           "trial_epochs": h["trial_epochs"], "wall_s": h["wall_s"]}
            report["headline"] = h
            save()
    finally:
        report["finished"] = time.strftime("%Y%m%d-%H%M%S")
        save()
        ray.shutdown()
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
