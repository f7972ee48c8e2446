"""Time per training step (forward + loss + backward + Adam step) of the multi-task families
``mtt`` (paper 003) and ``mtca`` (paper 002) at the papers' scale: d = 768, 224 px images,
batch 32, the Aff-Wild2 tasks (12 AUs, 8 expressions, valence/arousal).

    python benchmarks/model_step.py                 # full: batch 32, 1 warm-up + 3 timed steps
    python benchmarks/model_step.py --quick         # batch 8, 1 warm-up + 2 timed steps
    python benchmarks/model_step.py --device cuda --amp --channels-last   # on a GPU

Backbones as in the papers, built by timm without weights: ResNet-50 for mtt (paper 003 §4.1,
a 7 x 7 map projected to d = 768, N_x = 2, N_t = 2, 12 heads, N_d = 4) and EfficientNet-B0 for
mtca (paper 002 §3, node width d = 768, k = 4). Prints ms/step and ms/image per family and
writes ``benchmarks/results/model_step.json`` (``--out`` to change).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from monet.config import TrainConfig  # noqa: E402
from monet.data.affwild2 import spec as affwild2_spec  # noqa: E402
from monet.models import create_model  # noqa: E402

PAPER = {
    "mtt": dict(backbone="resnet50", d_model=768, n_x=2, n_t=2, heads=12, n_d=4),
    "mtca": dict(backbone="efficientnet_b0", d_model=768, knn=4),
}


def batch(B: int, size: int, device, channels_last: bool):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, 3, size, size, generator=g)
    y = torch.cat([(torch.rand(B, 12, generator=g) > 0.7).float(),
                   torch.randint(0, 8, (B, 1), generator=g).float(),
                   torch.rand(B, 2, generator=g) * 2 - 1], dim=1)
    x = x.to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device), torch.ones_like(y).to(device)


def time_family(family: str, args, device) -> dict:
    over = {"backbone": args.backbone} if args.backbone else {}
    c = TrainConfig(family=family, seed=0, **{**PAPER[family], **over})
    spec = affwild2_spec()
    model = create_model(c, spec, (3, args.size, args.size)).to(device).train()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x, y, m = batch(args.batch, args.size, device, args.channels_last)
    w = torch.ones(spec.T, device=device)
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp)
    times = []
    for i in range(args.warmup + args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device.type, enabled=args.amp,
                            dtype=torch.bfloat16 if device.type == "cpu" else torch.float16):
            out = model(x, y, mask=m)
        loss, _ = model.loss(type(out)(out.logits.float(), out.log_w.float()), y, m, w, c)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    ms = 1000 * statistics.median(times)
    n_params = sum(p.numel() for p in model.parameters())
    return {"family": family, "backbone": c.backbone, "d_model": c.d_model, "batch": args.batch,
            "size": args.size, "ms_per_step": round(ms, 1),
            "ms_per_image": round(ms / args.batch, 2), "steps_timed": len(times),
            "params_M": round(n_params / 1e6, 2)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="batch 8, 2 timed steps")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--families", default="mtt,mtca")
    p.add_argument("--backbone", default=None, help="override the papers' backbones")
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true", help="autocast (fp16 on CUDA, bf16 on CPU)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" /
                                        "model_step.json"))
    args = p.parse_args(argv)
    args.batch = args.batch or (8 if args.quick else 32)
    args.steps = args.steps or (2 if args.quick else 3)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = [time_family(f, args, device) for f in args.families.split(",")]
    print(f"{'family':6s} {'backbone':16s} {'d':>4s} {'batch':>5s} {'px':>4s} "
          f"{'ms/step':>9s} {'ms/image':>9s} {'params (M)':>10s}")
    for r in rows:
        print(f"{r['family']:6s} {r['backbone']:16s} {r['d_model']:4d} {r['batch']:5d} "
              f"{r['size']:4d} {r['ms_per_step']:9.1f} {r['ms_per_image']:9.2f} "
              f"{r['params_M']:10.2f}")
    meta = {"device": str(device), "amp": args.amp, "channels_last": args.channels_last,
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "quick": args.quick}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
