"""Run configuration: one flat, commented dataclass that a run folder saves as ``config.yaml``.

Flat keys keep it easy to search over (a Ray/Optuna trial config is a flat dict) and easy to
reproduce: ``TrainConfig.from_yaml(run_dir / "config.yaml")`` rebuilds the exact run.

Example:
    >>> c = TrainConfig.from_dict({"family": "vmnc", "epochs": 3})
    >>> c.family, c.epochs, c.lr
    ('vmnc', 3, 0.0005)
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from monet.errors import ConfigError


@dataclass
class TrainConfig:
    # ---- data -------------------------------------------------------------------------------
    dataset: str = "toy"            # toy | tabular | bp4d | disfa | celeba | affwild2
    T: int = 5                      # toy: number of tasks (1..10)
    reading: str = "bits"           # toy: 'bits' (the text's reading) or 'printed' (eq. 28)
    n_train: int = 500              # toy sizes (paper: 500/250/250)
    n_val: int = 250
    n_test: int = 250
    data_seed: Optional[int] = None  # seed of the toy draw / random splits (None: same as seed)
    data_root: Optional[str] = None  # folder (face data) or file (tabular)
    fold: int = 1                   # face data: test fold of the 3-fold protocol
    val_subjects: float = 0.2       # face data: share of training subjects held out for validation
    layout: str = "auto"            # face data: 'graphau' lists, 'jaanet' part lists, 'raw' DISFA
    subset: str = "gender"          # celeba: gender | accessory | beauty | haircut | misc
    cache: Optional[str] = None     # face data: folder of the uint8 face cache
    image_size: Optional[int] = None  # face data: input size (None: the backbone's default)
    augment: bool = False           # face data: flip + small rotation/zoom on tensors
    num_workers: int = 0            # DataLoader workers for image folders
    # ---- model ------------------------------------------------------------------------------
    family: str = "monet"           # vmnc | vmns | mrnn | monet | oracle
    backbone: str = "auto"          # 'auto': mlp for vectors, inception_v3 for images; or 'mlp',
                                    # 'tiny_cnn', any timm name (inception_v3, resnet50, ...)
    pretrained: Optional[str] = None  # local weights file for the backbone (never downloaded)
    enc_layers: int = 4             # mlp encoder depth (paper toy: 4 dense layers of 64 units)
    enc_width: int = 64
    hidden: int = 64                # GRU units (mrnn/monet)
    head_width: int = 64            # vmnc/vmns head width
    dropout: float = 0.0            # vmnc/vmns head dropout
    feedback: str = "prev"          # label feedback: 'prev' (eq. 15) or 'all' (every earlier label)
    feedback_embed: int = 0         # >0: dense layer of this width on the label feedback
    M: int = 120                    # monet: number of orders (<= T!)
    k: int = 100                    # monet: orders kept per example (order dropout), 1..M
    warmup: float = 5.0             # monet: epochs with frozen order logits (fractions allowed)
    order_lr: float = 5e-3          # monet: Adam lr of the order logits
    warmup_loss: str = "mixture"    # monet, during warmup: 'mixture' (eq. 18 with pi frozen) or
                                    # 'mean' (every kept order trained with equal weight)
    order_temp_final: float = 1.0   # monet: temperature of pi = softmax(u / tau) at the end of
                                    # training; < 1 sharpens pi late (1: off, the paper's pi)
    order_anneal_start: float = 0.5  # monet: share of training after which tau anneals
                                    # geometrically from 1 to order_temp_final
    L: int = 20                     # mrnn/monet: inference trajectories
    order: Optional[list] = None    # oracle / mrnn: the task order (0-based); None: seeded random
    # ---- optimisation -----------------------------------------------------------------------
    optimizer: str = "adam"         # adam | adamw
    lr: float = 5e-4
    weight_decay: float = 0.0
    lr_decay: float = 0.99          # exponential decay per epoch
    batch_size: int = 64
    epochs: float = 500
    eval_every: float = 1.0         # evaluation round length in epochs (fractions allowed)
    max_steps_per_epoch: Optional[int] = None  # cap steps per epoch (quick runs on big data)
    # ---- loss -------------------------------------------------------------------------------
    loss: str = "bce"               # bce | wasl (weighted asymmetric loss, paper 002)
    dice_lambda: float = 0.0        # weight of the Dice term (paper AU runs: 0.5)
    task_weighting: bool = False    # inverse-frequency per-task weights (normalised to mean 1)
    bias_init: bool = False         # output bias from training label priors
    temperatures: dict = field(default_factory=dict)  # group -> logit temperature (paper 003)
    # ---- run --------------------------------------------------------------------------------
    seed: int = 0
    device: str = "cpu"
    checkpoint_every: int = 1       # write a checkpoint every this many evaluation rounds
    test_at_end: bool = False       # evaluate on the test split after training (not in searches)
    tensorboard: bool = True        # write tensorboardX events into the run folder

    @classmethod
    def fields(cls) -> list:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> "TrainConfig":
        """Build from a dict; an unknown key is an error naming it and ``source``."""
        known = set(cls.fields())
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown field(s) {unknown}")
        c = cls(**d)
        c.validate(source)
        return c

    @classmethod
    def from_yaml(cls, path) -> "TrainConfig":
        import yaml

        with open(path) as f:
            return cls.from_dict(yaml.safe_load(f) or {}, source=str(path))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **kw) -> "TrainConfig":
        return TrainConfig.from_dict({**self.to_dict(), **kw})

    def validate(self, source: str = "config") -> None:
        def bad(name, expected):
            raise ConfigError(f"{source}: field {name!r} = {getattr(self, name)!r}; expected {expected}")

        for name in ("lr", "order_lr"):
            if not float(getattr(self, name)) > 0:
                bad(name, "a positive learning rate")
        if not 0 < float(self.lr_decay) <= 1:
            bad("lr_decay", "a value in (0, 1]")
        if float(self.weight_decay) < 0:
            bad("weight_decay", ">= 0")
        if int(self.batch_size) < 1:
            bad("batch_size", ">= 1")
        if not float(self.epochs) > 0:
            bad("epochs", "> 0")
        if not float(self.eval_every) > 0:
            bad("eval_every", "> 0 (epochs, fractions allowed)")
        if float(self.warmup) < 0:
            bad("warmup", ">= 0 epochs")
        if not float(self.order_temp_final) > 0:
            bad("order_temp_final", "a positive temperature (1: no annealing)")
        if not 0 <= float(self.order_anneal_start) < 1:
            bad("order_anneal_start", "a share of training in [0, 1)")
        if int(self.checkpoint_every) < 1:
            bad("checkpoint_every", ">= 1 evaluation rounds")
        if int(self.L) < 1:
            bad("L", ">= 1 inference trajectories")
        if not 0 <= float(self.dropout) < 1:
            bad("dropout", "a value in [0, 1)")
        if float(self.dice_lambda) < 0:
            bad("dice_lambda", ">= 0")
        if self.optimizer not in ("adam", "adamw"):
            bad("optimizer", "'adam' or 'adamw'")
        if self.warmup_loss not in ("mixture", "mean"):
            bad("warmup_loss", "'mixture' or 'mean'")
        if self.loss not in ("bce", "wasl"):
            bad("loss", "'bce' or 'wasl'")
        if not isinstance(self.temperatures, dict) or any(
                not float(v) > 0 for v in self.temperatures.values()):
            bad("temperatures", "a mapping task group -> positive temperature")
        if int(self.hidden) < 1 or int(self.enc_width) < 1 or int(self.head_width) < 1:
            bad("hidden", "positive layer widths")
