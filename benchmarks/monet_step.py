"""Time per MONET training step (forward + backward): vectorised vs per-order loop vs the
shared-GRU compute floor, measured side by side in one run.

    python benchmarks/monet_step.py            # full (a few minutes on 2 cores)
    python benchmarks/monet_step.py --quick    # under a minute

Settings: toy (T=5, M=120, k=100, B=64, H=64) and BP4D scale (T=12, M=512, k=128, B=16, H=64).
The floor is one shared GRU cell run over the same B*k rows for T steps (what a batched
implementation without prefix sharing costs at least). Targets: vectorised >= 10x faster than
the loop; vectorised <= 1.5x the floor. Prints a table and peak memory (CUDA when available,
else process peak RSS growth measured per variant in a fresh subprocess is not attempted:
we report torch's CPU allocator-free estimate of activation memory via saved tensors).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from monet.models.encoders import MLPEncoder  # noqa: E402
from monet.models.monet import MultiOrderNet  # noqa: E402
from monet.models.monet_reference import reference_forward  # noqa: E402
from monet.losses import mixture_nll, task_nll  # noqa: E402
from monet.tasks import TaskSpec  # noqa: E402


class SharedGRUFloor(nn.Module):
    """Encoder + one GRU cell over B*k rows for T steps (+ one output layer per task)."""

    def __init__(self, T, H, in_dim=2):
        super().__init__()
        self.encoder = MLPEncoder(in_dim, 4, H)
        self.cell = nn.GRUCell(T, H)
        self.head = nn.Linear(H, T)
        self.T = T

    def forward(self, x, y, k):
        h = self.encoder(x).repeat_interleave(k, 0)          # [B*k, H]
        yy = y.repeat_interleave(k, 0)
        fb = torch.zeros(h.shape[0], self.T)
        outs = []
        for t in range(self.T):
            h = self.cell(fb, h)
            outs.append(self.head(h)[:, t])
            fb = torch.zeros_like(fb)
            fb[:, t] = 2 * yy[:, t] - 1
        return torch.stack(outs, 1).view(x.shape[0], k, self.T)


class SavedBytes:
    """Bytes of tensors saved for backward (activation memory) during one forward."""

    def __init__(self):
        self.n = 0

    def pack(self, t):
        self.n += t.numel() * t.element_size()
        return t

    def __enter__(self):
        self.ctx = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
        self.ctx.__enter__()
        return self

    def __exit__(self, *a):
        self.ctx.__exit__(*a)


def time_side_by_side(fns: dict, reps: int, every: dict) -> dict:
    """Median seconds of each function, timed interleaved (round r times ``fns[name]`` when
    ``r % every[name] == 0``), so that a change of machine speed during the run (other load, CPU
    frequency) falls on every variant alike; two warm-up calls each first."""
    for fn in fns.values():
        fn()
        fn()
    ts = {name: [] for name in fns}
    for r in range(reps):
        for name, fn in fns.items():
            if r % every.get(name, 1) == 0:
                t0 = time.perf_counter()
                fn()
                ts[name].append(time.perf_counter() - t0)
    return {name: statistics.median(v) for name, v in ts.items()}


def bench(T, M, k, B, H, reps, loop_every, device="cpu"):
    spec = TaskSpec.binary([f"t{i}" for i in range(T)])
    torch.manual_seed(0)
    net = MultiOrderNet(MLPEncoder(2, 4, H), H, spec, hidden=H, M=M, k=k, seed=0).to(device).train()
    floor = SharedGRUFloor(T, H).to(device)
    x = torch.randn(B, 2, device=device)
    y = (torch.rand(B, T, device=device) > 0.5).float()
    g = torch.Generator().manual_seed(0)
    kept = net.sample_kept(B, g)

    def step(forward):
        def run():
            out = forward()
            loss = mixture_nll(task_nll(out.logits, y, torch.ones_like(y), spec), out.log_w).mean()
            net.zero_grad(set_to_none=True)
            loss.backward()
        return run

    def floor_step():
        lg = floor(x, y, k)
        loss = nn.functional.binary_cross_entropy_with_logits(
            lg, y[:, None].expand_as(lg), reduction="none").sum(-1).mean()
        floor.zero_grad(set_to_none=True)
        loss.backward()

    res = time_side_by_side({"vectorised": step(lambda: net(x, y, kept=kept)),
                             "loop": step(lambda: reference_forward(net, x, y, kept)),
                             "floor": floor_step}, reps, {"loop": loop_every})
    mem = {}
    for name, fwd in (("vectorised", lambda: net(x, y, kept=kept)),
                      ("loop", lambda: reference_forward(net, x, y, kept)),
                      ("floor", lambda: floor(x, y, k))):
        with SavedBytes() as sb:
            fwd()
        mem[name] = sb.n / 2**20
    return res, mem


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    settings = [("toy", 5, 120, 100, 64, 64), ("bp4d", 12, 512, 128, 16, 64)]
    # (rounds, loop timed every n-th round): the loop is 10-50x slower, so fewer of its rounds
    reps, loop_every = (9, 3) if a.quick else (30, 5)
    rows = []
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device cpu")
    print(f"{'setting':8s} {'vectorised ms':>14s} {'loop ms':>10s} {'floor ms':>10s} "
          f"{'loop/vec':>9s} {'vec/floor':>10s} {'act MiB vec/loop/floor':>24s}")
    for name, T, M, k, B, H in settings:
        r, mem = bench(T, M, k, B, H, reps, loop_every)
        row = dict(setting=name, T=T, M=M, k=k, B=B, H=H, **{f"{n}_ms": v * 1e3 for n, v in r.items()},
                   speedup_vs_loop=r["loop"] / r["vectorised"],
                   ratio_to_floor=r["vectorised"] / r["floor"],
                   act_mib={n: round(v, 2) for n, v in mem.items()})
        rows.append(row)
        print(f"{name:8s} {row['vectorised_ms']:14.2f} {row['loop_ms']:10.1f} {row['floor_ms']:10.2f} "
              f"{row['speedup_vs_loop']:9.1f} {row['ratio_to_floor']:10.2f} "
              f"{mem['vectorised']:8.1f}/{mem['loop']:.1f}/{mem['floor']:.1f}")
    ok = all(r["speedup_vs_loop"] >= 10 and r["ratio_to_floor"] <= 1.5 for r in rows)
    print("targets (vectorised >= 10x loop, <= 1.5x floor):", "met" if ok else "NOT met")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
