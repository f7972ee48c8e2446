"""The training loop, as plain functions. No Ray here.

``fit`` reads top to bottom in named phases: :func:`plan_steps` (batches, rounds, warmup; the
search's trainable uses it too), :class:`Optimizers`, :func:`train_round`, :func:`evaluate`,
:func:`save_checkpoint` / :func:`restore_checkpoint`, and :class:`RunFolder`, which owns the run
folder (``config.yaml``, ``metrics.jsonl``, TensorBoard events, the checkpoint).

``fit(config, data, report)`` trains one model and calls ``report(metrics, checkpoint_dir)``
after every round (``config.eval_every`` epochs, fractions allowed); a round evaluates on
validation unless ``config.eval_at`` lists the epochs to evaluate at (a search's scheduler
decisions, see :func:`evaluates`), and then only its ``train/`` metrics are reported. Names are
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

import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from monet.config import TrainConfig
from monet.data.base import DataBundle
from monet.errors import MonetError, NonFiniteLossError
from monet.io import atomic_torch_save, atomic_write_text, atomic_write_yaml, clean_stale_tmp
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
    L-trajectory predictions, plus ``loss``: the mixture NLL with the full pi over all M orders
    (``config.val_loss == "exact"``), or, with ``"sampled"`` and L < M, ``-log`` of the mean
    likelihood under the L orders the trajectories drew from pi (per example), an unbiased
    estimate of the mixture likelihood at about L/M of the cost. The predictions, and so every
    other metric, are the same either way."""
    model.eval()
    gen = torch.Generator().manual_seed(int(seed) + EVAL_SEED_OFFSET)
    preds, ys, ms, losses, n = [], [], [], 0.0, 0
    bs = max(int(config.batch_size), 256)
    sampled = config.val_loss == "sampled" and getattr(model, "M", 1) > int(config.L)
    for x, y, m in _iter_split(split, bs, config.num_workers):
        x, y, m = x.to(device), y.to(device), m.to(device)
        if prepare is not None:
            x = prepare(x, False, None)
        if sampled:
            p, drawn = model.predict(x, L=config.L, generator=gen, return_orders=True)
            out = model(x, y, mask=m, kept=drawn)          # duplicates share their trie rows
            out = out._replace(log_w=torch.full_like(out.log_w, -math.log(drawn.shape[1])))
        else:
            p = model.predict(x, L=config.L, generator=gen)
            out = model(x, y, mask=m)
        preds.append(p.float().cpu())
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


def reported_metrics(model, data: DataBundle, config: TrainConfig) -> set:
    """The metric names :func:`fit` reports every round for ``model`` on ``data`` (the ``val/``
    ones from an evaluation of a few validation examples), so a metric name can be checked
    before any training."""
    rows = torch.utils.data.Subset(data.val, range(min(len(data.val), 8)))
    weights = build_loss_weights(config, data)
    val = evaluate(model, rows, data.spec, config, weights, data.prepare, "cpu", config.seed)
    names = {"epoch", "round", "step", "lr", "train/loss", "train/nll", "time/train_s",
             "time/eval_s"} | {f"val/{k}" for k in val} | set(model.order_stats())
    if config.dice_lambda > 0:
        names.add("train/dice")
    return names


# ---------------------------------------------------------------------------------- step plan
@dataclass(frozen=True)
class StepPlan:
    """The step arithmetic of a run (all counts in optimizer steps).

    Attributes:
        batches: ``(start, stop)`` rows of each batch of an epoch (after shuffling).
        steps_per_epoch: ``len(batches)``.
        total_steps: ``round(epochs * steps_per_epoch)``, at least 1.
        steps_per_round: steps between evaluations (``eval_every`` epochs), at least 1.
        warmup_steps: steps during which MONET's order logits stay frozen (fractional).
    """

    batches: tuple
    steps_per_epoch: int
    total_steps: int
    steps_per_round: int
    warmup_steps: float

    def round_end(self, step: int) -> int:
        """The step at which the round containing ``step`` ends."""
        return min(self.total_steps, (step // self.steps_per_round + 1) * self.steps_per_round)


def evaluates(config: TrainConfig, plan: StepPlan, start: int, end: int) -> bool:
    """Whether the round from step ``start`` to ``end`` ends with a validation evaluation: every
    round when ``config.eval_at`` is None; else the last round and the first round whose epoch
    (``end / steps_per_epoch``, the value reported) reaches each listed epoch, the same test as
    Ray's ASHA (``epoch >= milestone``), so a scheduler deciding at those epochs sees a metric."""
    if config.eval_at is None or end >= plan.total_steps:
        return True
    a, b = start / plan.steps_per_epoch, end / plan.steps_per_epoch
    return any(a < e <= b for e in config.eval_at)


def plan_steps(config: TrainConfig, n_train: int) -> StepPlan:
    """Batches, rounds and warmup of ``config`` on ``n_train`` training examples."""
    batches = tuple(_batch_indices(n_train, int(config.batch_size), config.max_steps_per_epoch))
    steps_per_epoch = len(batches)
    return StepPlan(
        batches=batches, steps_per_epoch=steps_per_epoch,
        total_steps=max(1, int(round(float(config.epochs) * steps_per_epoch))),
        steps_per_round=max(1, int(round(float(config.eval_every) * steps_per_epoch))),
        warmup_steps=float(config.warmup) * steps_per_epoch)


# ---------------------------------------------------------------------------------- optimizers
@dataclass
class Optimizers:
    """Adam/AdamW on the model with per-epoch exponential decay, and MONET's own Adam on the order
    logits (``order``: None for families without them)."""

    main: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    order: Optional[torch.optim.Optimizer]

    @classmethod
    def build(cls, config: TrainConfig, model) -> "Optimizers":
        order_params = model.order_parameters()
        order_ids = {id(p) for p in order_params}
        main_params = [p for p in model.parameters() if id(p) not in order_ids]
        Opt = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
        main = Opt(main_params, lr=config.lr, weight_decay=config.weight_decay)
        return cls(main, torch.optim.lr_scheduler.ExponentialLR(main, gamma=config.lr_decay),
                   torch.optim.Adam(order_params, lr=config.order_lr) if order_params else None)

    @property
    def lr(self) -> float:
        return self.main.param_groups[0]["lr"]


# ---------------------------------------------------------------------------------- one round
def order_temperature(config: TrainConfig, step: float, total_steps: int) -> float:
    """MONET's order temperature tau at ``step``: 1 until ``order_anneal_start`` of training,
    then geometric from 1 to ``order_temp_final`` at the last step (1 throughout by default).

    Example:
        >>> c = TrainConfig(order_temp_final=0.01, order_anneal_start=0.5)
        >>> [round(order_temperature(c, s, 100), 3) for s in (0, 50, 75, 100)]
        [1.0, 1.0, 0.1, 0.01]
    """
    final = float(config.order_temp_final)
    start = float(config.order_anneal_start) * total_steps
    if final == 1.0 or step <= start:
        return 1.0
    return final ** min(1.0, (step - start) / max(1.0, total_steps - start))


def _set_order_temperature(model, config: TrainConfig, step: float, total_steps: int) -> None:
    if getattr(model, "order_logits", None) is not None:
        model.order_temperature = order_temperature(config, step, total_steps)


def train_round(model, data: DataBundle, config: TrainConfig, plan: StepPlan, optim: Optimizers,
                weights: torch.Tensor, gen: torch.Generator, step: int, device) -> tuple:
    """Train from ``step`` to the end of its round; returns ``(step, train metrics)``.

    Raises:
        NonFiniteLossError: the loss became NaN/inf.
    """
    model.train()
    sums = {"loss": 0.0, "nll": 0.0, "dice": 0.0}
    n_seen, stop, perm, perm_epoch = 0, plan.round_end(step), None, -1
    while step < stop:
        epoch, j = divmod(step, plan.steps_per_epoch)
        if epoch != perm_epoch:
            perm, perm_epoch = _epoch_permutation(config.seed, epoch, len(data.train)), epoch
        a, b = plan.batches[j]
        x, y, m = (v.to(device) for v in _fetch(data.train, perm[a:b]))
        if data.prepare is not None:
            x = data.prepare(x, True, gen)
        _set_order_temperature(model, config, step, plan.total_steps)
        out = (model(x, y, mask=m, generator=gen) if hasattr(model, "order_logits")
               else model(x, y, mask=m))
        loss, parts = compute_loss(model, out, y, m, data.spec, weights, config,
                                   warming=step < plan.warmup_steps)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"non-finite loss ({float(loss.detach())}) at epoch {epoch}, step {step} "
                f"(lr={optim.lr:.3g}); lower the learning rate")
        optim.main.zero_grad(set_to_none=True)
        if optim.order is not None:
            optim.order.zero_grad(set_to_none=True)
        loss.backward()
        optim.main.step()
        if optim.order is not None and step >= plan.warmup_steps:  # order logits idle in warmup
            optim.order.step()
        step += 1
        if step % plan.steps_per_epoch == 0:
            optim.schedule.step()
        parts["loss"] = loss
        for k in sums:
            sums[k] += float(parts[k].detach()) * len(y) if k in parts else 0.0
        n_seen += len(y)
    _set_order_temperature(model, config, step, plan.total_steps)   # for the evaluation
    n_seen = max(n_seen, 1)
    metrics = {"train/loss": sums["loss"] / n_seen, "train/nll": sums["nll"] / n_seen}
    if config.dice_lambda > 0:
        metrics["train/dice"] = sums["dice"] / n_seen
    return step, metrics


# ---------------------------------------------------------------------------------- checkpoints
def save_checkpoint(path, model, optim: Optimizers, gen: torch.Generator, progress: dict,
                    config: TrainConfig, spec) -> None:
    """One dict (weights, optimizers, RNG states, ``progress``: step, round, best), written
    through a temporary file and a rename."""
    atomic_torch_save({
        "model": model.state_dict(), "opt": optim.main.state_dict(),
        "sched": optim.schedule.state_dict(),
        "opt_u": optim.order.state_dict() if optim.order is not None else None,
        "rng": {"torch": torch.get_rng_state(), "gen": gen.get_state()},
        **progress, "config": config.to_dict(), "spec": spec.to_dict()}, path)


def restore_checkpoint(path, model, optim: Optimizers, gen: torch.Generator) -> dict:
    """Load ``path`` (file or folder) into the model, optimizers and RNGs; returns the progress
    ``{"step", "round", "best", "last"}`` (``last``: the metrics of the last round)."""
    ck = load_checkpoint(path)
    model.load_state_dict(ck["model"])
    optim.main.load_state_dict(ck["opt"])
    optim.schedule.load_state_dict(ck["sched"])
    if optim.order is not None and ck.get("opt_u") is not None:
        optim.order.load_state_dict(ck["opt_u"])
    torch.set_rng_state(ck["rng"]["torch"])
    gen.set_state(ck["rng"]["gen"])
    return {"step": int(ck["step"]), "round": int(ck["round"]), "best": ck.get("best"),
            "last": ck.get("last") or {}}


def load_checkpoint(path) -> dict:
    """Load a checkpoint dict (``path`` is the file or its folder) with ``weights_only=True``."""
    p = Path(path)
    if p.is_dir():
        p = p / CHECKPOINT_FILE
    if not p.is_file():
        raise MonetError(f"{p}: no checkpoint file")
    return torch.load(p, map_location="cpu", weights_only=True)


# ---------------------------------------------------------------------------------- run folder
class RunFolder:
    """Owns what a run writes: ``config.yaml``, ``metrics.jsonl``, the TensorBoard writer and the
    checkpoint folder (a temporary one when there is no run folder). Use as a context manager.

    Args:
        run_dir: the run folder, or None (nothing written but temporary checkpoints).
        config: the run's config (written as ``config.yaml``; ``tensorboard`` switches events).
    """

    def __init__(self, run_dir, config: TrainConfig):
        self.path = Path(run_dir) if run_dir else None
        self.config = config
        self._tmp = self._metrics = self.writer = None

    def __enter__(self) -> "RunFolder":
        if self.path:
            self.path.mkdir(parents=True, exist_ok=True)
            clean_stale_tmp(self.path)                 # a save killed half-way left a .tmp
            atomic_write_yaml(self.path / "config.yaml", self.config.to_dict())
            self.checkpoint_dir = self.path / "checkpoint"
            self._metrics = open(self.path / "metrics.jsonl", "a")
            if self.config.tensorboard:
                from tensorboardX import SummaryWriter
                self.writer = SummaryWriter(str(self.path / "events"))
        else:
            self._tmp = tempfile.TemporaryDirectory(prefix="monet-ckpt-")
            self.checkpoint_dir = Path(self._tmp.name)
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        return self

    def keep_rounds(self, last_round: int) -> None:
        """Drop ``metrics.jsonl`` lines of rounds after ``last_round`` (written after the
        checkpoint a run resumes from: they are run again)."""
        if not self.path:
            return
        f = self.path / "metrics.jsonl"
        lines = f.read_text().splitlines() if f.is_file() else []
        keep = [ln for ln in lines if ln.strip() and json.loads(ln).get("round", 0) <= last_round]
        if len(keep) != len(lines):
            self._metrics.close()
            atomic_write_text(f, "".join(ln + "\n" for ln in keep))
            self._metrics = open(f, "a")

    @property
    def checkpoint_file(self) -> Path:
        return self.checkpoint_dir / CHECKPOINT_FILE

    def log(self, metrics: dict, model) -> None:
        """One line of ``metrics.jsonl`` and the round's TensorBoard scalars (pi and Omega too)."""
        if self._metrics:
            self._metrics.write(json.dumps(metrics) + "\n")
            self._metrics.flush()
        if self.writer is None:
            return
        step = metrics["step"]
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and k not in ("round", "step"):
                self.writer.add_scalar(k, v, step)
        if getattr(model, "order_logits", None) is not None:
            self.writer.add_histogram("order/pi", model.pi().cpu().numpy(), step)
            self.writer.add_image("order/omega", model.soft_order().cpu()[None].numpy(), step)
        self.writer.flush()

    def write_yaml(self, name: str, obj) -> None:
        if self.path:
            atomic_write_yaml(self.path / name, obj)

    def __exit__(self, *exc) -> None:
        if self._metrics:
            self._metrics.close()
        if self.writer is not None:
            self.writer.close()
        if self._tmp is not None:  # report() consumers copy the checkpoint during the call
            self._tmp.cleanup()


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
        "order": most likely order or None, "run_dir": run_dir, "steps": steps done, "model"}``.

    Raises:
        NonFiniteLossError: the loss became NaN/inf (the message says where).
    """
    c = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(dict(config))
    device = torch.device(c.device)
    model = create_model(c, data.spec, data.input_shape)
    if c.bias_init:
        init_output_bias(model, data)
    model.to(device)
    optim = Optimizers.build(c, model)
    weights = build_loss_weights(c, data).to(device)
    gen = torch.Generator().manual_seed(int(c.seed) + 1)
    plan = plan_steps(c, len(data.train))
    with RunFolder(run_dir, c) as folder:
        if resume_from is not None:
            progress = restore_checkpoint(resume_from, model, optim, gen)
        else:
            progress = {"step": 0, "round": 0, "best": None, "last": {}}
            torch.manual_seed(int(c.seed) + 2)
        # metrics lines of rounds after the one this run starts from are run again: dropped
        # (round 0: a trial retried or resumed before its first checkpoint starts over)
        folder.keep_rounds(progress["round"])
        step, last, train_seconds = progress["step"], progress["last"], 0.0
        saved_at = time.perf_counter()     # the last checkpoint (or the start of this call)
        _set_order_temperature(model, c, step, plan.total_steps)
        while step < plan.total_steps:
            t0 = time.perf_counter()
            before = step
            step, train_metrics = train_round(model, data, c, plan, optim, weights, gen, step, device)
            t1 = time.perf_counter()
            train_seconds += t1 - t0
            val = {}
            if evaluates(c, plan, before, step):
                val = evaluate(model, data.val, data.spec, c, weights, data.prepare, device, c.seed)
            progress["round"] += 1
            last = {"epoch": step / plan.steps_per_epoch, "round": progress["round"], "step": step,
                    **train_metrics, "lr": optim.lr, **{f"val/{k}": v for k, v in val.items()},
                    **model.order_stats(), "time/train_s": train_seconds,
                    "time/eval_s": time.perf_counter() - t1}
            if val and (progress["best"] is None
                        or last["val/loss"] < progress["best"]["val/loss"]):
                progress["best"] = dict(last)
            progress["step"], progress["last"] = step, last
            folder.log(last, model)    # before the checkpoint: a resume drops lines after it
            # with a period, a round that evaluates (where a scheduler may stop the run, so its
            # last metrics have their weights) still writes one; the others wait for the period
            wrote = step >= plan.total_steps or (
                progress["round"] % int(c.checkpoint_every) == 0
                and (c.checkpoint_period_s is None or bool(val)
                     or time.perf_counter() - saved_at >= float(c.checkpoint_period_s)))
            if wrote:
                save_checkpoint(folder.checkpoint_file, model, optim, gen, progress, c, data.spec)
                saved_at = time.perf_counter()
            if log:
                log(_progress_line(last))
            if report is not None:
                report(dict(last), str(folder.checkpoint_dir) if wrote else None)
        test = None
        if c.test_at_end:
            test = evaluate(model, data.test, data.spec, c, weights, data.prepare, device, c.seed)
            folder.write_yaml("test_metrics.yaml", {k: float(v) for k, v in test.items()})
    order = model.most_likely_order() if hasattr(model, "most_likely_order") else None
    return {"metrics": last, "best": progress["best"], "test": test, "order": order,
            "run_dir": str(folder.path) if folder.path else None, "steps": step, "model": model}


def _progress_line(m: dict) -> str:
    s = f"epoch {m['epoch']:.2f}  train/loss {m['train/loss']:.4f}"
    if "val/loss" in m:
        s += f"  val/loss {m['val/loss']:.4f}"
    if "val/mean_acc" in m:
        s += f"  val/mean_acc {m['val/mean_acc']:.4f}"
    if "order/dist_to_identity" in m:
        s += f"  dist_to_I {m['order/dist_to_identity']:.3f}"
    return s


# ---------------------------------------------------------------------------------- CLI
RUNTIME_FIELDS = ("device", "num_workers", "tensorboard")   # may differ when a run is resumed


def build_parser():
    """The ``python -m monet.train`` parser: one flag per TrainConfig field (help, default and
    choices from the field's metadata in ``monet/config.py``), and the run flags."""
    from monet.cli import ArgumentParser, add_config_flags

    p = ArgumentParser(prog="python -m monet.train",
                       description="Train one multi-task model (no Ray).")
    g = p.add_argument_group("run")
    g.add_argument("--config", metavar="FILE",
                   help="YAML file of TrainConfig fields, a run's config.yaml or a search's "
                        "best_config.yaml (flags given override it)")
    g.add_argument("--out", metavar="DIR",
                   help="run folder (config.yaml, metrics.jsonl, checkpoint/, events/); must be "
                        "new or empty")
    g.add_argument("--overwrite", action="store_true",
                   help="replace the run folder --out if it exists (run folders only)")
    g.add_argument("--resume", metavar="RUN_DIR",
                   help="continue a run from its folder (or its checkpoint folder or file), with "
                        "the config saved there; flags that contradict it are refused")
    g.add_argument("--quiet", action="store_true", help="no per-round progress lines")
    add_config_flags(p)
    return p


def _config_mapping(path: str) -> dict:
    """A config file's TrainConfig mapping (a search's best_config.yaml holds it under config)."""
    from monet.cli import load_yaml_mapping

    d = load_yaml_mapping(path, "--config", what="a mapping of TrainConfig field: value")
    if isinstance(d.get("config"), dict) and "trial_id" in d:
        d = d["config"]                          # a search's best_config.yaml
    TrainConfig.from_dict(d, source=str(path))
    return d


def config_from_args(a) -> TrainConfig:
    """``--config`` with the flags given on top."""
    base = _config_mapping(a.config) if a.config else {}
    for name in TrainConfig.fields():
        v = getattr(a, name, None)
        if v is not None:
            base[name] = v
    return TrainConfig.from_dict(base, source="flags")


def resume_target(path: str) -> tuple:
    """``--resume`` path -> ``(run_dir or None, checkpoint file)``: a run folder, its
    ``checkpoint/`` folder or the ``checkpoint.pt`` file."""
    p = Path(path)
    if (p / "checkpoint" / CHECKPOINT_FILE).is_file():
        return p, p / "checkpoint" / CHECKPOINT_FILE
    if (p / CHECKPOINT_FILE).is_file():
        ck = p / CHECKPOINT_FILE
    elif p.is_file():
        ck = p
    else:
        raise MonetError(f"--resume: {path}: no run folder or checkpoint there (expected "
                         f"RUN_DIR with checkpoint/{CHECKPOINT_FILE})")
    run = ck.parent.parent if ck.parent.name == "checkpoint" else None
    return (run if run is not None and (run / "config.yaml").is_file() else None), ck


def resume_config(a, ck_file: Path, run_dir) -> TrainConfig:
    """The config a run was started with (its ``config.yaml``, else the checkpoint's copy); a
    flag or ``--config`` that contradicts it is refused (``device``, ``num_workers`` and
    ``tensorboard`` may change)."""
    try:
        ck = load_checkpoint(ck_file)
    except Exception as e:  # noqa: BLE001 - truncated, garbage: one line
        raise MonetError(f"--resume: {ck_file} is not a readable checkpoint "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''})"
                         ) from None
    if run_dir is not None:
        saved = TrainConfig.from_yaml(Path(run_dir) / "config.yaml")
    elif isinstance(ck.get("config"), dict):
        saved = TrainConfig.from_dict(ck["config"], source=str(ck_file))
    else:
        raise MonetError(f"--resume: {ck_file} holds no config and has no run folder around it")
    given = dict(_config_mapping(a.config)) if a.config else {}
    given.update({n: getattr(a, n) for n in TrainConfig.fields() if getattr(a, n, None) is not None})
    d = saved.to_dict()
    for name, v in given.items():
        new = TrainConfig.from_dict({**d, name: v}, source="flags")
        if getattr(new, name) != d[name] and name not in RUNTIME_FIELDS:
            flag = ("--" + name.replace("_", "-") if getattr(a, name, None) is not None
                    else "--config")
            raise MonetError(f"{flag}: {name} = {getattr(new, name)!r} contradicts the resumed "
                             f"run's {d[name]!r}; a resumed run keeps its saved config")
        d[name] = getattr(new, name)
    return TrainConfig.from_dict(d, source="flags")


def prepare_run(a) -> tuple:
    """Everything checked before any work: ``(config, run_dir, checkpoint or None)``."""
    from monet.cli import check_output_dir
    from monet.config import check_device

    ck_file = None
    if a.resume:
        run_dir, ck_file = resume_target(a.resume)
        c = resume_config(a, ck_file, run_dir)
        out = a.out or (str(run_dir) if run_dir is not None else None)
        if out is not None and (run_dir is None or Path(out).resolve() != Path(run_dir).resolve()):
            check_output_dir(out, a.overwrite)    # a new folder continuing from the checkpoint
    else:
        c = config_from_args(a)
        out = a.out
        if out is not None:
            check_output_dir(out, a.overwrite)
    check_device(c)
    return c, out, ck_file


def main(argv=None) -> int:
    from monet.cli import run_main

    return run_main(_main, argv)


def _main(argv) -> int:
    import shutil

    from monet.data import load_dataset

    a = build_parser().parse_args(argv)
    c, out, ck_file = prepare_run(a)
    c.test_at_end = True
    data = load_dataset(c)
    fresh_out = out is not None and not (a.resume and ck_file is not None
                                         and Path(out).resolve() == ck_file.parent.parent.resolve())
    if fresh_out and a.overwrite and Path(out).is_dir():
        shutil.rmtree(out)                       # checked by check_output_dir: a run folder
    res = fit(c, data, run_dir=out, resume_from=str(ck_file) if ck_file else None,
              log=None if a.quiet else print)
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
    if out:
        print(f"run folder: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
