"""The search's settings, resolved once from the flags: :class:`SearchSettings` (what
``config.yaml`` records under ``search``), :class:`TrialRuntime` (per-trial settings handed to
the trainable with ``tune.with_parameters``, never inside the searched config) and
:data:`DATA_FLAGS`, the one table of data flags from which the parser, the space file's
forbidden keys and every trial's fixed TrainConfig fields are built.

Example:
    >>> s = SearchSettings.from_dict({"dataset": "toy", "families": ["vmnc"], "metric": "val/mean_acc"})
    >>> s.mode, s.scheduler
    ('max', 'asha')
    >>> SearchSettings.from_dict({"datset": "toy"})
    Traceback (most recent call last):
    ...
    monet.errors.ConfigError: search settings: unknown field(s) ['datset']
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from monet.errors import ConfigError


@dataclass(frozen=True)
class DataFlag:
    """A TrainConfig field the search takes as a flag (``--<field with dashes>``); its help,
    type, choices and bounds come from the field's metadata in ``monet/config.py``."""

    field: str
    searchable: bool = False    # a space file may search it too (the flag then sets the default)

    @property
    def flag(self) -> str:
        return "--" + self.field.replace("_", "-")


# The data flags: fixed for every trial of a search, set by flags only (a space file may not).
DATA_FLAGS = tuple(DataFlag(f) for f in (
    "T", "reading", "n_train", "n_val", "n_test", "data_seed", "data_root", "fold",
    "val_subjects", "layout", "subset", "cache", "image_size", "backbone", "pretrained")) + (
    DataFlag("augment", searchable=True),)

# TrainConfig fields the search owns through other flags or always sets itself.
# Flags that may change when a search is resumed (the budget); any other given flag must match.
BUDGET_FLAGS = ("num_samples", "time_budget", "max_concurrent", "max_failures", "verbose")

SEARCH_OWNED = {
    "dataset": "--dataset", "family": "--family", "epochs": "--max-epochs",
    "eval_every": "--eval-every", "seed": "--seed", "device": "--gpus-per-trial",
    "test_at_end": "(never in a search)", "tensorboard": "(always on in a search)",
    "checkpoint_every": "(every round in a search)",
    "checkpoint_period_s": "--checkpoint-period",
    "val_loss": "--val-loss",
}


# TrainConfig fields a search sets only to make its trials cheaper; none of them changes what a
# run trains. A run outside the search (best_config.yaml, every retrain of search/retrain.py)
# takes them back: it evaluates on validation every round (not only at the scheduler's decision
# epochs), computes MONET's exact val/loss (not the L-order estimate) and checkpoints every round.
SEARCH_ONLY = {"eval_at": None, "val_loss": "exact", "checkpoint_period_s": None}


def outside_search(config: dict) -> dict:
    """A trial's TrainConfig dict with the search-only fields (:data:`SEARCH_ONLY`) reset.

    Example:
        >>> outside_search({"family": "monet", "eval_at": [2.0, 30.0], "val_loss": "sampled"})
        {'family': 'monet', 'eval_at': None, 'val_loss': 'exact', 'checkpoint_period_s': None}
    """
    return {**config, **SEARCH_ONLY}


def flag_owned_fields() -> dict:
    """TrainConfig field -> the flag that sets it (a space file may not set these)."""
    return {**{f.field: f.flag for f in DATA_FLAGS if not f.searchable}, **SEARCH_OWNED}


@dataclass(frozen=True)
class SearchSettings:
    """Everything a search was asked for, after defaults (saved as ``config.yaml: search``)."""

    dataset: str = "toy"
    families: tuple = ("monet",)      # model families searched ('family' flag 'all': several)
    family: str = "monet"             # the --family flag as given ('all' or one family)
    space: Optional[str] = None       # the --space file
    metric: str = "val/mean_acc"
    mode: str = "max"
    num_samples: int = 16
    max_epochs: float = 30.0          # ASHA's max_t, in epochs
    eval_every: float = 1.0           # one evaluation round, in epochs: ASHA's clock
    grace_period: float = 2.0
    reduction_factor: float = 5.0
    scheduler: str = "asha"           # asha | fifo
    sampler: str = "tpe"              # tpe | tpe-mv | tpe-rung | random
    n_startup_trials: int = 4
    tpe_history: int = 1000           # finished trials TPE looks at besides the best (0: all)
    constant_liar: bool = True        # TPE counts running trials as bad (Optuna's constant liar)
    max_concurrent: Optional[int] = None  # None: what the cluster's CPUs/GPUs allow
    time_budget: Optional[float] = None
    seed: int = 0
    optuna_storage: Optional[str] = None  # None: sqlite study.db in the experiment folder
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_failures: int = 0
    storage_path: str = "results"
    name: str = "search"
    inject_fault: Optional[str] = None
    trial_timeout: Optional[float] = None  # seconds of training per trial (then stopped, PRUNED)
    warm_start: Optional[str] = None       # experiment folder or study URL#name to start from
    warm_start_top: int = 5
    reuse_actors: bool = True              # one Ray actor runs trial after trial (data loaded once)
    eval_rounds: str = "decisions"         # decisions (ASHA's rungs + last round) | all
    val_loss: str = "sampled"              # MONET's val/loss in trials: sampled (L orders) | exact
    checkpoint_period: float = 10.0        # seconds between a trial's checkpoints (0: every round)

    def __post_init__(self):
        if self.mode not in ("max", "min"):
            raise ConfigError(f"search settings: mode {self.mode!r}; expected 'max' or 'min'")
        object.__setattr__(self, "families", tuple(self.families))
        if self.val_loss not in ("exact", "sampled"):
            raise ConfigError(f"search settings: val_loss {self.val_loss!r}; expected 'exact' "
                              "or 'sampled'")

    @classmethod
    def fields(cls) -> list:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, d: dict, source: str = "search settings") -> "SearchSettings":
        """Build from a dict (a saved ``config.yaml``); an unknown key is an error naming it."""
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: expected a mapping, got {type(d).__name__}")
        unknown = sorted(set(d) - set(cls.fields()))
        if unknown:
            raise ConfigError(f"{source}: unknown field(s) {unknown}")
        d = dict(d)
        if "mode" not in d and "metric" in d:
            d["mode"] = "min" if str(d["metric"]).endswith("loss") else "max"
        d.setdefault("val_loss", "exact")     # saved before --val-loss existed: exact
        d.setdefault("checkpoint_period", 0.0)  # saved before --checkpoint-period: every round
        return cls(**d)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["families"] = list(self.families)
        return d

    def replace(self, **kw) -> "SearchSettings":
        return dataclasses.replace(self, **kw)

    @property
    def study_url(self) -> Optional[str]:
        """Where the Optuna study lives: ``--optuna-storage``, else ``study.db`` in a local
        experiment folder (resolved where the experiment is now, so a copied folder keeps its
        own study), else None (in memory)."""
        if self.optuna_storage:
            return self.optuna_storage
        if self.is_remote:
            return None
        return f"sqlite:///{Path(self.storage_path) / self.name / 'study.db'}"

    @property
    def is_remote(self) -> bool:
        """Results go to object storage (``s3://``, ``gs://``, ...), not a local folder."""
        return "://" in self.storage_path


@dataclass(frozen=True)
class TrialRuntime:
    """Per-trial settings that are not hyperparameters, handed to the trainable with
    ``tune.with_parameters`` (never inside the searched config).

    Attributes:
        threads: torch threads of a trial (its CPU share).
        fault: parsed ``--inject-fault`` (drills and tests) or None.
        exp_dir: the local experiment folder (trial files are written straight there), or None.
        exp_uri: the experiment's URI when it is in object storage (``s3://...``), or None:
            each trial keeps its latest checkpoint there as one object.
    """

    threads: int = 1
    fault: Optional[dict] = None
    exp_dir: Optional[str] = None
    exp_uri: Optional[str] = None
