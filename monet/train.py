"""The training loop, as plain functions: ``train_steps``, ``evaluate`` and ``fit``. No Ray here.

``fit(config, data, report)`` trains one model and calls ``report(metrics, checkpoint_dir)``
after every evaluation round (``config.eval_every`` epochs, fractions allowed). Metric names are
flat and stable: ``train/loss``, ``val/loss``, ``val/mean_acc``, ``val/mean_f1``,
``val/acc/<task>``, ``val/f1/<task>``, ``order/dist_to_identity``, ``epoch``, ``round``.

A checkpoint is one dict (model, optimizers, schedulers, RNG states, progress) saved as
``checkpoint.pt`` and loadable with ``torch.load(..., weights_only=True)``; resuming from it gives
the same weights as an uninterrupted run on CPU.

Example:
    >>> from monet.config import TrainConfig
    >>> from monet.data import load_dataset
    >>> c = TrainConfig(family="vmnc", T=2, epochs=1, tensorboard=False)
    >>> res = fit(c, load_dataset(c))
    >>> 0.0 <= res["metrics"]["val/mean_acc"] <= 1.0
    True

CLI:
    python -m monet.train --dataset toy --family monet --T 5 --M 120 --k 100 --warmup 5 \\
        --epochs 500 --seed 0 --out runs/monet0
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from monet.config import TrainConfig
from monet.data.base import DataBundle
from monet.errors import MonetError, NonFiniteLossError
from monet.io import atomic_torch_save, atomic_write_yaml
from monet.losses import (dice_loss, inverse_frequency_weights, mixture_nll, prior_log_odds,
                          task_nll, temperature_weights)
from monet.metrics import compute_metrics
from monet.models import create_model

CHECKPOINT_FILE = "checkpoint.pt"
EVAL_SEED_OFFSET = 7919


# ---------------------------------------------------------------------------------- batching
def _epoch_permutation(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The shuffling of epoch ``epoch``: a pure function of (seed, epoch), so resuming mid-run
    needs no saved sampler state."""
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randperm(n, generator=g)


def _batch_indices(n: int, batch_size: int, max_steps: Optional[int]) -> list:
    """Start/stop pairs of the batches of one epoch (a trailing batch of 1 is dropped: BatchNorm)."""
    bounds = [(a, min(a + batch_size, n)) for a in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds = bounds[:-1]
    return bounds[:max_steps] if max_steps else bounds


def _fetch(split, idx: torch.Tensor, num_workers: int = 0):
    """Rows ``idx`` of a split as ``(x, y, mask)`` tensors."""
    if hasattr(split, "batch"):  # TensorSplit, the face cache: batched fetch
        return split.batch(idx)
    items = [split[int(i)] for i in idx]
    return tuple(torch.stack(v) for v in zip(*items))


def _iter_split(split, batch_size: int, num_workers: int = 0):
    """Ordered batches of a whole split (evaluation)."""
    n = len(split)
    if num_workers and not hasattr(split, "batch"):
        loader = torch.utils.data.DataLoader(split, batch_size=batch_size, shuffle=False,
                                             num_workers=num_workers)
        yield from loader
        return
    for a in range(0, n, batch_size):
        yield _fetch(split, torch.arange(a, min(a + batch_size, n)))


# ---------------------------------------------------------------------------------- pieces
def build_loss_weights(config: TrainConfig, data: DataBundle) -> torch.Tensor:
    """Per-task loss weights: inverse frequency (optional) times group temperature factors."""
    spec = data.spec
    w = torch.ones(spec.T)
    if config.task_weighting:
        y, m = data.label_matrix("train")
        b = spec.indices("binary")
        if b:
            w[b] = inverse_frequency_weights(y[:, b], m[:, b])
    if config.temperatures:
        w = w * temperature_weights(spec, config.temperatures)
    return w


def init_output_bias(model, data: DataBundle) -> None:
    """Output bias of binary tasks <- log-odds of their training frequency."""
    b = data.spec.indices("binary")
    if b:
        y, m = data.label_matrix("train")
        model.init_binary_bias(prior_log_odds(y[:, b], m[:, b]))


def compute_loss(model, out, y, mask, spec, weights, config, warming: bool = False) -> tuple:
    """Total loss and its parts for one batch. ``warming``: inside MONET's warmup, where
    ``config.warmup_loss == 'mean'`` trains every kept order with equal weight. A model with a
    ``loss(out, y, mask, weights, config)`` method (mtt, mtca) computes its own."""
    if hasattr(model, "loss"):
        return model.loss(out, y, mask, weights, config)
    reg = None
    if hasattr(model, "group_scale"):  # per-group weights; learned temperatures (uncertainty)
        weights, reg = model.group_scale(weights, config.temperatures)
    nll = task_nll(out.logits, y, mask, spec, weights, kind_binary=config.loss)   # [B, K]
    if warming and config.warmup_loss == "mean":
        loss_nll = nll.mean()
    else:
        loss_nll = mixture_nll(nll, out.log_w).mean()
    parts = {"nll": loss_nll}
    loss = loss_nll
    if config.dice_lambda > 0:
        b = spec.indices("binary")
        if b:
            probs = model.activate(out.logits)                                   # [B, K, D]
            mix = (torch.softmax(out.log_w, dim=1)[..., None] * probs).sum(1)    # [B, D]
            offs = [spec.offsets[j] for j in b]
            d = dice_loss(mix[:, offs], y[:, b], mask[:, b], weights[b])
            parts["dice"] = d
            loss = loss + config.dice_lambda * d
    if reg is not None and getattr(model, "log_tau", None) is not None:
        parts["uncertainty"] = reg
        loss = loss + reg
    return loss, parts


@torch.no_grad()
def evaluate(model, split, spec, config: TrainConfig, weights: torch.Tensor,
             prepare: Optional[Callable] = None, device="cpu", seed: int = 0) -> dict:
    """Metrics of ``model`` on ``split``: the protocol metrics of ``monet.metrics`` computed from
    L-trajectory predictions, plus ``loss`` (the mixture NLL with the full pi)."""
    model.eval()
    gen = torch.Generator().manual_seed(int(seed) + EVAL_SEED_OFFSET)
    preds, ys, ms, losses, n = [], [], [], 0.0, 0
    bs = max(int(config.batch_size), 256)
    for x, y, m in _iter_split(split, bs, config.num_workers):
        x, y, m = x.to(device), y.to(device), m.to(device)
        if prepare is not None:
            x = prepare(x, False, None)
        preds.append(model.predict(x, L=config.L, generator=gen).float().cpu())
        out = model(x, y, mask=m)
        if hasattr(model, "loss"):
            losses += float(model.loss(out, y, m, weights.to(device), config)[0]) * len(y)
        else:
            nll = task_nll(out.logits, y, m, spec, weights.to(device), kind_binary=config.loss)
            losses += float(mixture_nll(nll, out.log_w).sum())
        n += len(y)
        ys.append(y.cpu())
        ms.append(m.cpu())
    met = compute_metrics(torch.cat(preds), torch.cat(ys), torch.cat(ms), spec)
    met["loss"] = losses / max(n, 1)
    return met


def _rng_state(gen: torch.Generator) -> dict:
    return {"torch": torch.get_rng_state(), "gen": gen.get_state()}


def _set_rng_state(st: dict, gen: torch.Generator) -> None:
    torch.set_rng_state(st["torch"])
    gen.set_state(st["gen"])


def load_checkpoint(path) -> dict:
    """Load a checkpoint dict (``path`` is the file or its folder) with ``weights_only=True``."""
    p = Path(path)
    if p.is_dir():
        p = p / CHECKPOINT_FILE
    if not p.is_file():
        raise MonetError(f"{p}: no checkpoint file")
    return torch.load(p, map_location="cpu", weights_only=True)


def _tb_writer(config, run_dir):
    if not (config.tensorboard and run_dir):
        return None
    try:
        from tensorboardX import SummaryWriter
    except ImportError:  # optional
        return None
    return SummaryWriter(str(Path(run_dir) / "events"))


def _tb_log(writer, model, metrics: dict, step: int) -> None:
    if writer is None:
        return
    for k, v in metrics.items():
        if isinstance(v, (int, float)) and k not in ("round", "step"):
            writer.add_scalar(k, v, step)
    if hasattr(model, "order_logits") and model.order_logits is not None:
        writer.add_histogram("order/pi", model.pi().cpu().numpy(), step)
        writer.add_image("order/omega", model.soft_order().cpu()[None].numpy(), step)
    writer.flush()


# ---------------------------------------------------------------------------------- fit
def fit(config, data: DataBundle, report: Optional[Callable] = None, run_dir=None,
        resume_from=None, log: Optional[Callable] = None) -> dict:
    """Train one model.

    Args:
        config: a :class:`TrainConfig` or a flat dict of its fields.
        data: the dataset (loaded once by the caller).
        report: ``report(metrics: dict, checkpoint_dir: str | None)`` after each evaluation round;
            ``checkpoint_dir`` holds ``checkpoint.pt`` on rounds that wrote one; without a
            ``run_dir`` it is a temporary folder, valid during the call only (copy it there,
            as ``tune.report(..., checkpoint=Checkpoint.from_directory(d))`` does).
        run_dir: folder for ``config.yaml``, ``metrics.jsonl``, ``checkpoint/`` and ``events/``;
            None keeps checkpoints in a temporary folder and writes nothing else.
        resume_from: a checkpoint file or folder to continue from.
        log: a ``print``-like function for progress lines (None: silent).

    Returns:
        ``{"metrics": last round, "best": best round by val loss, "test": test metrics or None,
        "order": most likely order or None, "run_dir": run_dir, "steps": steps done}``.

    Raises:
        NonFiniteLossError: the loss became NaN/inf (the message says where).
    """
    c = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(dict(config))
    device = torch.device(c.device)
    spec = data.spec
    model = create_model(c, spec, data.input_shape)
    if c.bias_init:
        init_output_bias(model, data)
    model.to(device)
    order_params = model.order_parameters()
    order_ids = {id(p) for p in order_params}
    main_params = [p for p in model.parameters() if id(p) not in order_ids]
    Opt = torch.optim.AdamW if c.optimizer == "adamw" else torch.optim.Adam
    opt = Opt(main_params, lr=c.lr, weight_decay=c.weight_decay)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=c.lr_decay)
    opt_u = torch.optim.Adam(order_params, lr=c.order_lr) if order_params else None
    weights = build_loss_weights(c, data).to(device)
    gen = torch.Generator().manual_seed(int(c.seed) + 1)

    n_train = len(data.train)
    bounds = _batch_indices(n_train, int(c.batch_size), c.max_steps_per_epoch)
    spe = len(bounds)
    total = max(1, int(round(float(c.epochs) * spe)))
    every = max(1, int(round(float(c.eval_every) * spe)))
    warm_steps = float(c.warmup) * spe
    step, rnd, best = 0, 0, None

    run_path = Path(run_dir) if run_dir else None
    tmp_ckpt = None
    if run_path:
        run_path.mkdir(parents=True, exist_ok=True)
        atomic_write_yaml(run_path / "config.yaml", c.to_dict())
        ckpt_dir = run_path / "checkpoint"
    else:
        tmp_ckpt = tempfile.TemporaryDirectory(prefix="monet-ckpt-")
        ckpt_dir = Path(tmp_ckpt.name)
    ckpt_dir.mkdir(parents=True, exist_ok=True)

    if resume_from is not None:
        ck = load_checkpoint(resume_from)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        if opt_u is not None and ck.get("opt_u") is not None:
            opt_u.load_state_dict(ck["opt_u"])
        _set_rng_state(ck["rng"], gen)
        step, rnd, best = int(ck["step"]), int(ck["round"]), ck.get("best")
    else:
        torch.manual_seed(int(c.seed) + 2)

    writer = _tb_writer(c, run_path)
    metrics_file = open(run_path / "metrics.jsonl", "a") if run_path else None
    last = {}
    acc = {"loss": 0.0, "nll": 0.0, "dice": 0.0, "n": 0}
    t_train = 0.0
    try:
        perm, perm_epoch = None, -1
        while step < total:
            model.train()
            t0 = time.perf_counter()
            stop = min(total, (step // every + 1) * every)
            while step < stop:
                epoch, j = divmod(step, spe)
                if epoch != perm_epoch:
                    perm, perm_epoch = _epoch_permutation(c.seed, epoch, n_train), epoch
                a, b = bounds[j]
                x, y, m = _fetch(data.train, perm[a:b])
                x, y, m = x.to(device), y.to(device), m.to(device)
                if data.prepare is not None:
                    x = data.prepare(x, True, gen)
                out = (model(x, y, mask=m, generator=gen) if hasattr(model, "order_logits")
                       else model(x, y, mask=m))
                loss, parts = compute_loss(model, out, y, m, spec, weights, c,
                                           warming=step < warm_steps)
                if not torch.isfinite(loss):
                    raise NonFiniteLossError(
                        f"non-finite loss ({float(loss.detach())}) at epoch {epoch}, step {step} "
                        f"(lr={opt.param_groups[0]['lr']:.3g}); lower the learning rate")
                opt.zero_grad(set_to_none=True)
                if opt_u is not None:
                    opt_u.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if opt_u is not None and step >= warm_steps:  # order logits idle during warmup
                    opt_u.step()
                step += 1
                if step % spe == 0:
                    sched.step()
                acc["loss"] += float(loss.detach()) * len(y)
                acc["nll"] += float(parts["nll"].detach()) * len(y)
                acc["dice"] += float(parts["dice"].detach()) * len(y) if "dice" in parts else 0.0
                acc["n"] += len(y)
            t_train += time.perf_counter() - t0
            rnd += 1
            t1 = time.perf_counter()
            val = evaluate(model, data.val, spec, c, weights, data.prepare, device, c.seed)
            n = max(acc["n"], 1)
            last = {"epoch": step / spe, "round": rnd, "step": step,
                    "train/loss": acc["loss"] / n, "train/nll": acc["nll"] / n,
                    "lr": opt.param_groups[0]["lr"]}
            if c.dice_lambda > 0:
                last["train/dice"] = acc["dice"] / n
            last.update({f"val/{k}": v for k, v in val.items()})
            last.update(model.order_stats())
            last["time/train_s"] = t_train
            last["time/eval_s"] = time.perf_counter() - t1
            acc = {"loss": 0.0, "nll": 0.0, "dice": 0.0, "n": 0}
            if best is None or last["val/loss"] < best["val/loss"]:
                best = dict(last)
            wrote = rnd % int(c.checkpoint_every) == 0 or step >= total
            if wrote:
                atomic_torch_save({
                    "model": model.state_dict(), "opt": opt.state_dict(),
                    "sched": sched.state_dict(),
                    "opt_u": opt_u.state_dict() if opt_u is not None else None,
                    "rng": _rng_state(gen), "step": step, "round": rnd, "best": best,
                    "config": c.to_dict(), "spec": spec.to_dict()}, ckpt_dir / CHECKPOINT_FILE)
            if metrics_file:
                metrics_file.write(json.dumps(last) + "\n")
                metrics_file.flush()
            _tb_log(writer, model, last, step)
            if log:
                log(_progress_line(last, spec))
            if report is not None:
                report(dict(last), str(ckpt_dir) if wrote else None)
        test = None
        if c.test_at_end:
            test = evaluate(model, data.test, spec, c, weights, data.prepare, device, c.seed)
            if run_path:
                atomic_write_yaml(run_path / "test_metrics.yaml", {k: float(v) for k, v in test.items()})
        order = model.most_likely_order() if hasattr(model, "most_likely_order") else None
        return {"metrics": last, "best": best, "test": test, "order": order,
                "run_dir": str(run_path) if run_path else None, "steps": step, "model": model}
    finally:
        if metrics_file:
            metrics_file.close()
        if writer is not None:
            writer.close()
        if tmp_ckpt is not None:  # report() consumers copy the checkpoint during the call
            tmp_ckpt.cleanup()


def _progress_line(m: dict, spec) -> str:
    s = f"epoch {m['epoch']:.2f}  train/loss {m['train/loss']:.4f}  val/loss {m['val/loss']:.4f}"
    if "val/mean_acc" in m:
        s += f"  val/mean_acc {m['val/mean_acc']:.4f}"
    if "order/dist_to_identity" in m:
        s += f"  dist_to_I {m['order/dist_to_identity']:.3f}"
    return s


# ---------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m monet.train",
                                description="Train one multi-task model (no Ray).")
    d = TrainConfig()
    p.add_argument("--config", help="YAML file of TrainConfig fields (flags override it)")
    for name, val in d.to_dict().items():
        flag = "--" + name.replace("_", "-")
        if name == "order":
            p.add_argument(flag, help="task order, comma-separated 0-based indices")
        elif name == "temperatures":
            p.add_argument(flag, help="group=T pairs, comma-separated (e.g. au=1,expr=5)")
        elif isinstance(val, bool):
            p.add_argument(flag, type=_bool, default=None, metavar="BOOL")
        elif isinstance(val, (int, float)) and not isinstance(val, bool):
            p.add_argument(flag, type=type(val), default=None)
        else:
            p.add_argument(flag, default=None)
    p.add_argument("--out", help="run folder (config.yaml, metrics.jsonl, checkpoint/, events/)")
    p.add_argument("--resume", help="checkpoint file or folder to resume from")
    p.add_argument("--quiet", action="store_true", help="no per-round progress lines")
    return p


def _bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


_INT_OR_NONE = {"data_seed", "max_steps_per_epoch", "image_size"}


def config_from_args(a) -> TrainConfig:
    import yaml

    base = {}
    if a.config:
        if not os.path.isfile(a.config):
            raise MonetError(f"--config: no such file {a.config}")
        with open(a.config) as f:
            base = yaml.safe_load(f) or {}
        TrainConfig.from_dict(base, source=a.config)
    for name in TrainConfig.fields():
        v = getattr(a, name, None)
        if v is None:
            continue
        if name == "order":
            try:
                v = [int(t) for t in v.split(",")]
            except ValueError:
                raise MonetError(f"--order: expected comma-separated task indices, got {v!r}") from None
        elif name == "temperatures":
            try:
                v = {kv.split("=")[0]: float(kv.split("=")[1]) for kv in v.split(",")}
            except (IndexError, ValueError):
                raise MonetError(f"--temperatures: expected group=T pairs, got {v!r}") from None
        elif name in _INT_OR_NONE:
            try:
                v = int(v)
            except ValueError:
                raise MonetError(f"--{name.replace('_', '-')}: expected an integer, got {v!r}") from None
        base[name] = v
    return TrainConfig.from_dict(base, source="flags")


def main(argv=None) -> int:
    from monet.data import load_dataset

    a = build_parser().parse_args(argv)
    try:
        c = config_from_args(a)
        c.test_at_end = True
        data = load_dataset(c)
        res = fit(c, data, run_dir=a.out, resume_from=a.resume, log=None if a.quiet else print)
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except MonetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    test = res["test"]
    names = data.spec.names
    print(f"test results ({c.dataset}, family {c.family}, seed {c.seed}):")
    for t in data.spec.tasks:
        if t.kind == "regression":
            print(f"  {t.name:>12s}  ccc {test[f'ccc/{t.name}']:.4f}")
        else:
            print(f"  {t.name:>12s}  acc {test[f'acc/{t.name}']:.4f}  f1 {test[f'f1/{t.name}']:.4f}")
    if "mean_acc" in test:
        print(f"  mean accuracy {test['mean_acc']:.4f}  mean F1 {test['mean_f1']:.4f}")
    if "p_mtl" in test:
        print(f"  P_MTL {test['p_mtl']:.4f}")
    if res["order"] is not None:
        order = [names[i] for i in res["order"]]
        print(f"learned order: {' -> '.join(order)}  (0-based {res['order']})")
        if "order/dist_to_identity" in res["metrics"]:
            print(f"||Omega - I||_F^2 = {res['metrics']['order/dist_to_identity']:.4f}")
    if a.out:
        print(f"run folder: {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
