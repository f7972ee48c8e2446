"""Run configuration: one flat dataclass that a run folder saves as ``config.yaml``.

Flat keys keep it easy to search over (a Ray/Optuna trial config is a flat dict) and easy to
reproduce: ``TrainConfig.from_yaml(run_dir / "config.yaml")`` rebuilds the exact run.

Each field says what it means, and what values it takes, in one place: its
``field(metadata=...)`` (``help``, and where they apply ``choices``, ``lo``/``hi`` bounds).
:meth:`TrainConfig.validate` checks every field against them (type, finiteness, range, choice)
and ``monet.cli.add_config_flags`` builds the ``--help`` text of every CLI flag from them.

Example:
    >>> c = TrainConfig.from_dict({"family": "vmnc", "epochs": 3})
    >>> c.family, c.epochs, c.lr
    ('vmnc', 3, 0.0005)
    >>> TrainConfig.from_dict({"epochs": "three"})
    Traceback (most recent call last):
    ...
    monet.errors.ConfigError: config: field 'epochs' = 'three' (str); expected a number
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import re
import typing
from dataclasses import dataclass, field
from typing import Optional

from monet.errors import ConfigError
from monet.io import yaml_kind

BIG = 10 ** 6          # upper bound of counts and epochs: beyond it a value is a typo, not a plan
SEED_MAX = 2 ** 32 - 1
MAX_TOY_ROWS = 10 ** 7  # toy sizes: beyond this the draw alone needs gigabytes
DEVICE_RE = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")


def _f(default, help: str, *, factory=None, **check):
    """A field with its help text and checks (``choices``, ``lo``, ``hi``, ``lo_open``,
    ``hi_open``) in ``metadata``."""
    md = {"help": help, **check}
    if factory is not None:
        return field(default_factory=factory, metadata=md)
    return field(default=default, metadata=md)


@dataclass
class TrainConfig:
    # ---- data -------------------------------------------------------------------------------
    dataset: str = _f("toy", "dataset: toy | tabular | bp4d | disfa | celeba | affwild2")
    T: int = _f(5, "toy: number of tasks", lo=1, hi=10)
    reading: str = _f("bits", "toy: 'bits' (the text's reading) or 'printed' (eq. 28 as printed)",
                      choices=("bits", "printed"))
    n_train: int = _f(500, "toy: training examples (paper: 500)", lo=1, hi=MAX_TOY_ROWS)
    n_val: int = _f(250, "toy: validation examples (paper: 250)", lo=1, hi=MAX_TOY_ROWS)
    n_test: int = _f(250, "toy: test examples (paper: 250)", lo=1, hi=MAX_TOY_ROWS)
    data_seed: Optional[int] = _f(None, "seed of the toy draw / random splits (None: same as seed)",
                                  lo=0, hi=SEED_MAX)
    data_root: Optional[str] = _f(None, "folder (face data) or file (tabular .csv/.npz)")
    fold: int = _f(1, "face data: test fold of the 3-fold protocol", lo=1, hi=3)
    val_subjects: float = _f(0.2, "face data: share of training subjects held out for validation",
                             lo=0, hi=1, lo_open=True, hi_open=True)
    layout: str = _f("auto", "face data: 'graphau' lists, 'jaanet' part lists, 'raw' DISFA "
                     "intensity files, or 'auto'", choices=("auto", "graphau", "jaanet", "raw"))
    subset: str = _f("gender", "celeba: the 5-attribute subset",
                     choices=("gender", "accessory", "beauty", "haircut", "misc"))
    cache: Optional[str] = _f(None, "face data: folder of the uint8 face cache")
    image_size: Optional[int] = _f(None, "face data: input size in pixels (None: the backbone's "
                                   "default)", lo=8, hi=2048)
    augment: bool = _f(False, "face data: flip + small rotation/zoom on tensors")
    num_workers: int = _f(0, "DataLoader workers for image folders", lo=0, hi=256)
    # ---- model ------------------------------------------------------------------------------
    family: str = _f("monet", "model family: vmnc | vmns | mrnn | monet | oracle | mtt | mtca")
    backbone: str = _f("auto", "encoder: 'auto' (mlp for vectors, inception_v3 for images), "
                       "'mlp', 'tiny_cnn' or any timm name (inception_v3, resnet50, ...)")
    pretrained: Optional[str] = _f(None, "local weights file for the backbone (never downloaded)")
    enc_layers: int = _f(4, "mlp encoder depth (paper toy: 4 dense layers of 64 units)",
                         lo=0, hi=1000)
    enc_width: int = _f(64, "mlp encoder width", lo=1, hi=BIG)
    hidden: int = _f(64, "GRU units (mrnn/monet)", lo=1, hi=BIG)
    head_width: int = _f(64, "vmnc/vmns head width", lo=1, hi=BIG)
    dropout: float = _f(0.0, "vmnc/vmns head dropout", lo=0, hi=1, hi_open=True)
    feedback: str = _f("prev", "label feedback: 'prev' (eq. 15) or 'all' (every earlier label)",
                       choices=("prev", "all"))
    feedback_embed: int = _f(0, "> 0: dense layer of this width on the label feedback",
                             lo=0, hi=BIG)
    M: int = _f(120, "monet: number of orders (<= T!)", lo=1, hi=BIG)
    k: int = _f(100, "monet: orders kept per example (order dropout), 1..M", lo=1, hi=BIG)
    warmup: float = _f(5.0, "monet: epochs with frozen order logits (fractions allowed)",
                       lo=0, hi=BIG)
    order_lr: float = _f(5e-3, "monet: Adam learning rate of the order logits", lo=0, lo_open=True)
    warmup_loss: str = _f("mixture", "monet, during warmup: 'mixture' (eq. 18 with pi frozen) or "
                          "'mean' (every kept order trained with equal weight)",
                          choices=("mixture", "mean"))
    order_temp_final: float = _f(1.0, "monet: temperature tau of pi = softmax(u / tau) at the "
                                 "end of training; < 1 sharpens pi late (1: off, the paper's pi)",
                                 lo=0, lo_open=True, hi=BIG)
    order_anneal_start: float = _f(0.5, "monet: share of training after which tau anneals "
                                   "geometrically from 1 to order_temp_final", lo=0, hi=1,
                                   hi_open=True)
    L: int = _f(20, "mrnn/monet: inference trajectories", lo=1, hi=BIG)
    val_loss: str = _f("exact", "monet: validation loss over all M orders with the full pi "
                       "('exact') or over the L orders the evaluation's trajectories draw "
                       "from pi ('sampled': -log of their mean likelihood, unbiased for the "
                       "mixture likelihood, about L/M of the cost; exact when M <= L)",
                       choices=("exact", "sampled"))
    order: Optional[list] = _f(None, "oracle / mrnn: the task order (0-based indices); None: "
                               "seeded random")
    d_model: int = _f(768, "mtt: token width d (paper 003: 768); mtca: AU node width",
                      lo=1, hi=BIG)
    n_x: int = _f(2, "mtt: self-attention layers over the patches (paper: 2)", lo=0, hi=1000)
    n_t: int = _f(2, "mtt: token modules, self- then cross-attention (paper: 2)", lo=0, hi=1000)
    n_d: int = _f(4, "mtt: dense layers per task group, ReLU, last linear (paper: 4)",
                  lo=1, hi=1000)
    heads: int = _f(12, "mtt: attention heads; d_model must be a multiple (paper: 12)",
                    lo=1, hi=BIG)
    knn: int = _f(4, "mtca: neighbours kept per AU node in the ANFL graph", lo=1, hi=BIG)
    cross_attn: bool = _f(True, "mtca: AU-to-FER cross attention (paper 002 eqs. 6-7)")
    au_steps: int = _f(0, "mtca: first training steps with the AU loss only (staged schedule)",
                       lo=0, hi=2 ** 31)
    mixup: bool = _f(False, "mtt/mtca: multi-task MixUp of inputs and labels (003 §4.2)")
    mixup_alpha: float = _f(0.2, "MixUp: lambda ~ Beta(alpha, alpha)", lo=0, lo_open=True,
                            hi=BIG)
    # ---- optimisation -----------------------------------------------------------------------
    optimizer: str = _f("adam", "optimizer of the network weights", choices=("adam", "adamw"))
    lr: float = _f(5e-4, "learning rate", lo=0, lo_open=True)
    weight_decay: float = _f(0.0, "weight decay", lo=0)
    lr_decay: float = _f(0.99, "exponential learning-rate decay per epoch", lo=0, hi=1,
                         lo_open=True)
    batch_size: int = _f(64, "examples per training step", lo=1, hi=BIG)
    epochs: float = _f(500, "training length in epochs (fractions allowed)", lo=0, hi=BIG,
                       lo_open=True)
    eval_every: float = _f(1.0, "evaluation round length in epochs (fractions allowed)",
                           lo=0, hi=BIG, lo_open=True)
    eval_at: Optional[list] = _f(None, "epochs after which to evaluate on validation: the first "
                                 "round reaching each one, and always the last round (other "
                                 "rounds report training metrics only); None: every round")
    max_steps_per_epoch: Optional[int] = _f(None, "cap on steps per epoch (quick runs on big data)",
                                            lo=1, hi=2 ** 31)
    # ---- loss -------------------------------------------------------------------------------
    loss: str = _f("bce", "binary loss: 'bce' or 'wasl' (weighted asymmetric loss, paper 002)",
                   choices=("bce", "wasl"))
    dice_lambda: float = _f(0.0, "weight of the Dice term (paper AU runs: 0.5)", lo=0, hi=BIG)
    task_weighting: bool = _f(False, "inverse-frequency per-task weights (normalised to mean 1)")
    bias_init: bool = _f(False, "output bias from training label priors")
    temperatures: dict = _f(None, "task group -> logit temperature (paper 003); a regression "
                            "group's value is its variance sigma^2", factory=dict)
    group_weights: dict = _f(None, "task group -> loss weight (1 where not named)", factory=dict)
    weighting: str = _f("fixed", "'fixed' or 'uncertainty' (a learned log temperature per group, "
                        "with Kendall et al.'s 1/2 log T term)", choices=("fixed", "uncertainty"))
    # ---- run --------------------------------------------------------------------------------
    seed: int = _f(0, "seed of the weights, the shuffling and the sampling", lo=0, hi=SEED_MAX)
    device: str = _f("cpu", "torch device: cpu, cuda, cuda:N or mps")
    checkpoint_every: int = _f(1, "write a checkpoint every this many evaluation rounds",
                               lo=1, hi=BIG)
    checkpoint_period_s: Optional[float] = _f(
        None, "and, on rounds that do not evaluate, only once this many seconds have passed "
        "since the last one (None: by rounds alone); the last round always writes one",
        lo=0, hi=BIG)
    test_at_end: bool = _f(False, "evaluate on the test split after training (not in searches)")
    tensorboard: bool = _f(True, "write tensorboardX events into the run folder")

    def __post_init__(self):
        # ``--group-weights au=1,expr=0.5`` on the command line arrives as a string
        if isinstance(self.group_weights, str):
            try:
                self.group_weights = {kv.split("=")[0].strip(): float(kv.split("=")[1])
                                      for kv in self.group_weights.split(",") if kv.strip()}
            except (IndexError, ValueError):
                raise ConfigError(f"group_weights: expected group=weight pairs, got "
                                  f"{self.group_weights!r}") from None

    @classmethod
    def fields(cls) -> list:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def field_info(cls) -> dict:
        """``name -> (type, default, metadata)`` of every field (what ``--help`` shows)."""
        hints = _hints(cls)
        out = {}
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            out[f.name] = (hints[f.name], default, dict(f.metadata))
        return out

    @classmethod
    def from_dict(cls, d, source: str = "config") -> "TrainConfig":
        """Build from a mapping; an unknown key, a value of the wrong type or out of range is an
        error naming it and ``source``."""
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: expected a mapping of TrainConfig field: value, got "
                              f"{yaml_kind(d)}")
        bad_keys = [k for k in d if not isinstance(k, str)]
        if bad_keys:
            raise ConfigError(f"{source}: field names must be text, got {bad_keys[0]!r}")
        known = set(cls.fields())
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown field(s) {unknown}")
        c = cls(**d)
        c.validate(source)
        return c

    @classmethod
    def from_yaml(cls, path, flag: str = "--config") -> "TrainConfig":
        """Read a YAML file of fields (any malformed file is one ``ConfigError`` line)."""
        from monet.io import load_yaml_mapping

        return cls.from_dict(load_yaml_mapping(path, flag), source=str(path))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **kw) -> "TrainConfig":
        return TrainConfig.from_dict({**self.to_dict(), **kw})

    def validate(self, source: str = "config") -> None:
        """Check every field: type, finite, range, choices (numeric text such as YAML's ``1e-4``
        in a float field is converted). Raises one ``ConfigError`` line naming the first bad
        field."""
        hints = _hints(type(self))
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            v = _check_value(f.name, v, hints[f.name], f.metadata, source)
            object.__setattr__(self, f.name, v)
        if not DEVICE_RE.match(self.device):
            raise ConfigError(f"{source}: field 'device' = {self.device!r}; expected cpu, cuda, "
                              f"cuda:N or mps")
        if self.eval_at is not None and any(
                isinstance(e, bool) or not isinstance(e, (int, float)) or not math.isfinite(e)
                or not e > 0 for e in self.eval_at):
            raise ConfigError(f"{source}: field 'eval_at' = {self.eval_at!r}; expected a list of "
                              f"epochs > 0")
        if self.order is not None and any(isinstance(t, bool) or not isinstance(t, int)
                                          for t in self.order):
            raise ConfigError(f"{source}: field 'order' = {self.order!r}; expected a list of "
                              f"0-based task indices")
        for g, t in self.temperatures.items():
            if not isinstance(g, str) or isinstance(t, bool) or not isinstance(t, (int, float)) \
                    or not math.isfinite(t) or not t > 0:
                raise ConfigError(f"{source}: field 'temperatures' = {self.temperatures!r}; "
                                  f"expected a mapping task group -> positive temperature")
        for g, w in self.group_weights.items():
            if not isinstance(g, str) or isinstance(w, bool) or not isinstance(w, (int, float)) \
                    or not math.isfinite(w) or not w >= 0:
                raise ConfigError(f"{source}: field 'group_weights' = {self.group_weights!r}; "
                                  f"expected a mapping task group -> weight >= 0")
        if self.family == "mtt" and int(self.d_model) % int(self.heads):
            raise ConfigError(f"{source}: field 'd_model' = {self.d_model!r}; expected a multiple "
                              f"of heads = {self.heads}")


# ---------------------------------------------------------------------------------- checks
_HINTS: dict = {}


def _hints(cls) -> dict:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _base_type(tp):
    """``(type, optional)`` of an annotation: ``Optional[int] -> (int, True)``."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) is typing.Union and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


def describe_range(md: dict) -> str:
    """``(0, 1]``-style text of a field's bounds ('' when it has none)."""
    lo, hi = md.get("lo"), md.get("hi")
    if lo is None and hi is None:
        return ""
    if hi is None:
        return f"{'>' if md.get('lo_open') else '>='} {_num(lo)}"
    if lo is None:
        return f"{'<' if md.get('hi_open') else '<='} {_num(hi)}"
    return (f"{'(' if md.get('lo_open') else '['}{_num(lo)}, {_num(hi)}"
            f"{')' if md.get('hi_open') else ']'}")


def _num(x) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def _check_value(name, v, tp, md, source):
    base, optional = _base_type(tp)

    def bad(expected):
        shown = f"{v!r} ({type(v).__name__})" if base in (int, float) and not isinstance(
            v, (int, float)) else f"{v!r}"
        raise ConfigError(f"{source}: field {name!r} = {shown}; expected {expected}")

    if v is None:
        if optional:
            return v
        if base is dict and name in ("temperatures", "group_weights"):
            return {}
        bad("a value (None is not allowed here)")
    is_bool = isinstance(v, bool) or (type(v).__module__ == "numpy"     # numpy's bool too
                                      and type(v).__name__ in ("bool", "bool_"))
    if base is bool:
        if not is_bool:
            bad("true or false")
        return bool(v)
    if base is int:
        if is_bool:
            bad("an integer")
        if isinstance(v, numbers.Real) and not isinstance(v, numbers.Integral) and \
                math.isfinite(v) and v == int(v):
            v = int(v)                                      # 2.0 -> 2
        if not isinstance(v, numbers.Integral):
            bad("an integer")
        v = int(v)                                          # numpy integers -> int
    elif base is float:
        if is_bool:
            bad("a number")
        if isinstance(v, str):
            try:  # YAML 1.1 reads 1e-4 (no dot) as text
                v = float(v)
            except ValueError:
                bad("a number")
        if not isinstance(v, numbers.Real):
            bad("a number")
        if type(v) not in (int, float):
            v = int(v) if isinstance(v, numbers.Integral) else float(v)   # numpy scalars
        if not math.isfinite(v):
            bad(f"a finite number {describe_range(md)}".rstrip())
    elif base is str:
        if not isinstance(v, str):
            bad("text")
    elif base is list:
        if not isinstance(v, list):
            bad("a list")
    elif base is dict:
        if not isinstance(v, dict):
            bad("a mapping")
    if "choices" in md and v not in md["choices"]:
        bad(" or ".join(repr(c) for c in md["choices"]))
    if base in (int, float):
        lo, hi = md.get("lo"), md.get("hi")
        below = lo is not None and (v <= lo if md.get("lo_open") else v < lo)
        above = hi is not None and (v >= hi if md.get("hi_open") else v > hi)
        if below or above:
            if hi is None or (name in ("k", "M") and below):
                bad(f"{name} {describe_range({'lo': lo, 'lo_open': md.get('lo_open')})}")
            bad(f"a value in {describe_range(md)}")
    return v


def check_device(config) -> None:
    """Refuse (one ``ConfigError`` line) a CUDA/MPS device this machine does not have.

    Call it where the training will run (``monet.train`` before loading data; a Ray trial on its
    worker), not in a search driver that may have no GPU while its workers do.

    Example:
        >>> check_device(TrainConfig(device="cpu"))
    """
    import torch

    dev = str(config.device)
    if dev.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device: {dev!r} asked but torch.cuda.is_available() is False "
                              f"(no GPU, or a CPU-only torch {torch.__version__}); use --device cpu")
        n = torch.cuda.device_count()
        if ":" in dev and int(dev.split(":")[1]) >= n:
            raise ConfigError(f"device: {dev!r} asked but this machine has {n} GPU(s) "
                              f"(cuda:0..cuda:{n - 1})")
    elif dev == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigError("device: 'mps' asked but torch.backends.mps.is_available() is False; "
                              "use --device cpu")
