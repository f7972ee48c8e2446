"""Per-family define-by-run Optuna search spaces, overridable from a user YAML file.

A :class:`SearchSpace` is a picklable callable ``space(trial) -> dict`` for Ray's
``OptunaSearch``: it calls ``trial.suggest_*`` in a fixed order (the family first when several
are searched, then the parameters every family shares, then the family's own; ``M`` before ``k``
so that ``k`` can be conditional on ``M``) and returns the fixed values, which land in the trial
config beside the suggested ones.

Default parameters (``low..high``; ``log`` marks a log scale):

=================  ==============================  ==============================
parameter          families                        default range
=================  ==============================  ==============================
lr                 all                             1e-4..1e-2 log
weight_decay       all                             1e-7..1e-3 log
lr_decay           all                             0.95..1.0
batch_size         all                             16, 32, 64, 128
enc_width          all (encoder hidden units)      32, 64, 128
dice_lambda        all                             0..1
task_weighting     all                             false, true
temperature/<g>    all, one per task group g       0.5..10 log (paper 003: T_a, T_e; a
                                                   regression group's value is sigma_v^2)
weight/<g>         all, with several task groups   0.1..10 log (loss weight of group g)
weighting          all, with several task groups   fixed, uncertainty (learned temperatures)
hidden             mrnn, monet, oracle (GRU)       32, 64, 128
L                  mrnn, monet, oracle             10, 20, 40
M                  monet                           1..min(T!, 128) log
k                  monet                           1..M (conditional on M)
warmup             monet                           0..min(5, max_epochs / 2) epochs
order_lr           monet                           1e-3..5e-2 log
head_width         vmnc, vmns                      32, 64, 128
dropout            vmnc, vmns                      0..0.5
temperature/<g>    mtt, mtca (instead of above)    0.05..20 log; mtca: only when
                                                   weighting = uncertainty (their start)
d_model            mtt                             96, 192, 384, 768 (multiples of 12)
heads              mtt                             4, 8, 12
n_x, n_t, n_d      mtt                             1..4 each (paper: 2, 2, 4)
d_model            mtca (AU node width)            96, 192, 384, 768 (one distribution)
knn                mtca                            1..number of binary tasks
cross_attn         mtca                            true, false
mixup              mtt, mtca                       false, true
mixup_alpha        mtt, mtca                       0.1..1 log, only when mixup is true
=================  ==============================  ==============================

mtt and mtca do without ``dice_lambda`` (their losses have no Dice term) and mtca without
``task_weighting`` (it weights AUs by eq. 9 itself). A parameter with a condition is suggested
only when its parent (sampled or fixed earlier) has the given value; otherwise the TrainConfig
default is used. ``d_model`` and ``heads`` are checked together: every pair must divide.

A YAML file changes it without code (``--space my_space.yaml``)::

    lr: {low: 1.0e-4, high: 3.0e-3, log: true}   # new range
    batch_size: [32, 64]                          # categorical choices
    M: {low: 8, high: 64}                         # k stays 1..M
    dropout: 0.1                                  # fixed value
    weight_decay: null                            # dropped: the TrainConfig default is used
    feedback_embed: 64                            # any other TrainConfig field: fixed ...
    enc_layers: {low: 2, high: 4}                 # ... or searched

Example:
    >>> import optuna
    >>> from monet.tasks import TaskSpec
    >>> space = SearchSpace.build(["monet"], TaskSpec.binary("abc"), max_epochs=4)
    >>> study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    >>> t = study.ask()
    >>> fixed = space(t)
    >>> 1 <= t.params["k"] <= t.params["M"] <= 6
    True
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

from monet.config import TrainConfig
from monet.errors import ConfigError
from search.settings import flag_owned_fields

FAMILIES_ALL = ("vmnc", "vmns", "mrnn", "monet", "mtt", "mtca")   # what --family all searches
M_CAP = 128                                         # default upper end of M (paper toy grid: 128+)
TEMPERATURE_PREFIX = "temperature/"
D_MODELS = [96, 192, 384, 768]    # mtt and mtca share the choices (one Optuna distribution)
WEIGHT_PREFIX = "weight/"                           # weight/<group> -> TrainConfig.group_weights
GROUP_PREFIXES = (TEMPERATURE_PREFIX, WEIGHT_PREFIX)
TRIAL_NUMBER_KEY = "optuna_trial"                   # the Optuna trial number, in every config
WARM_START_KEY = "warm_start"                       # where a warm-started trial came from

# TrainConfig fields that flags own (search.settings.DATA_FLAGS and the search's own): a space
# file may not set them.
FLAG_FIELDS = flag_owned_fields()


@dataclass
class Param:
    """One search parameter.

    Attributes:
        name: TrainConfig field, or ``temperature/<group>``.
        kind: ``float`` | ``int`` | ``categorical`` | ``fixed``.
        low, high: range ends (``float``/``int``); for ``k`` a None ``high`` means "up to M".
        log: log scale.
        step: grid step (optional).
        choices: categorical choices.
        value: the fixed value.
        when: ``(parent, value)``: suggested only when the parent parameter took ``value``.
    """

    name: str
    kind: str
    low: Any = None
    high: Any = None
    log: bool = False
    step: Any = None
    choices: list = field(default_factory=list)
    value: Any = None
    when: Optional[tuple] = None

    def suggest(self, trial, high=None):
        """Ask ``trial`` for a value (``high`` overrides the upper end: conditional ranges)."""
        hi = self.high if high is None else high
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, hi, log=self.log, step=self.step)
        if self.kind == "int":
            return trial.suggest_int(self.name, self.low, hi, log=self.log, step=self.step or 1)
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        return self.value

    @property
    def bounds(self) -> tuple:
        """(smallest, largest) value this parameter can take (numbers only)."""
        if self.kind == "fixed":
            return self.value, self.value
        if self.kind == "categorical":
            return min(self.choices), max(self.choices)
        return self.low, self.high

    def describe(self):
        """A YAML-friendly description (the same form a space file uses)."""
        if self.kind == "fixed":
            return self.value
        if self.kind == "categorical":
            return list(self.choices)
        d = {"low": self.low, "high": "M" if self.high is None else self.high}
        if self.log:
            d["log"] = True
        if self.step is not None:
            d["step"] = self.step
        return d


def _f(name, low, high, log=False):
    return Param(name, "float", low, high, log=log)


def _c(name, choices):
    return Param(name, "categorical", choices=list(choices))


def default_params(family: str, groups, T: int, max_epochs: float,
                   n_binary: Optional[int] = None) -> list:
    """The default parameters of ``family``, in suggestion order (``n_binary``: binary tasks,
    default T)."""
    n_binary = T if n_binary is None else int(n_binary)
    multi = family in ("mtt", "mtca")
    common = [_f("lr", 1e-4, 1e-2, log=True), _f("weight_decay", 1e-7, 1e-3, log=True),
              _f("lr_decay", 0.95, 1.0), _c("batch_size", [16, 32, 64, 128]),
              _c("enc_width", [32, 64, 128])]
    if not multi:
        common.append(_f("dice_lambda", 0.0, 1.0))
    if family != "mtca":
        common.append(_c("task_weighting", [False, True]))
    if len(groups) > 1 or multi:
        common.append(_c("weighting", ["fixed", "uncertainty"]))
    if multi:
        when = ("weighting", "uncertainty") if family == "mtca" else None
        common += [Param(TEMPERATURE_PREFIX + g, "float", 0.05, 20.0, log=True, when=when)
                   for g in groups]
    else:
        common += [_f(TEMPERATURE_PREFIX + g, 0.5, 10.0, log=True) for g in groups]
    if len(groups) > 1:
        common += [_f(WEIGHT_PREFIX + g, 0.1, 10.0, log=True) for g in groups]
    mix = [_c("mixup", [False, True]),
           Param("mixup_alpha", "float", 0.1, 1.0, log=True, when=("mixup", True))]
    if family == "mtt":
        own = [_c("d_model", D_MODELS), _c("heads", [4, 8, 12]),
               Param("n_x", "int", 1, 4), Param("n_t", "int", 1, 4), Param("n_d", "int", 1, 4)
               ] + mix
    elif family == "mtca":
        own = [_c("d_model", D_MODELS), Param("knn", "int", 1, max(1, n_binary)),
               _c("cross_attn", [True, False])] + mix
    elif family == "monet":
        m_max = min(math.factorial(T), M_CAP)
        own = [_c("hidden", [32, 64, 128]), Param("M", "int", 1, m_max, log=True),
               Param("k", "int", 1, None),
               _f("warmup", 0.0, float(min(5.0, max_epochs / 2))),
               _f("order_lr", 1e-3, 5e-2, log=True), _c("L", [10, 20, 40])]
    elif family in ("mrnn", "oracle"):
        own = [_c("hidden", [32, 64, 128]), _c("L", [10, 20, 40])]
    elif family in ("vmnc", "vmns"):
        own = [_c("head_width", [32, 64, 128]), _f("dropout", 0.0, 0.5)]
    else:
        own = []
    return common + own


class SearchSpace:
    """A define-by-run space over one or several model families (picklable).

    Build it with :meth:`build`; call it with an Optuna trial.
    """

    def __init__(self, families: list, params: dict, T: int, source: str = "defaults"):
        self.families = list(families)
        self.params = params          # family -> list of Param, in suggestion order
        self.T = int(T)
        self.source = source

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(cls, families, spec, max_epochs: float, overrides: Optional[dict] = None,
              source: str = "space file") -> "SearchSpace":
        """Default spaces of ``families`` for ``spec`` (a TaskSpec), with ``overrides`` applied.

        Raises:
            ConfigError: one line naming ``source``, the parameter and what was expected.
        """
        families = list(families)
        T, groups = spec.T, list(spec.groups)
        nb = len(spec.indices("binary"))
        per = {f: default_params(f, groups, T, max_epochs, nb) for f in families}
        overrides = dict(overrides or {})
        known = {p.name for ps in per.values() for p in ps}
        allowed = set(TrainConfig.fields()) | known
        for name, spec_v in overrides.items():
            name = str(name)
            if name in FLAG_FIELDS:
                raise ConfigError(f"{source}: parameter {name!r} is set by the flag "
                                  f"{FLAG_FIELDS[name]}, not by the space file")
            pre = next((p for p in GROUP_PREFIXES if name.startswith(p)), None)
            if pre is not None and name[len(pre):] not in groups:
                raise ConfigError(f"{source}: parameter {name!r}: the dataset has no task group "
                                  f"{name[len(pre):]!r}; expected one of "
                                  f"{[pre + g for g in groups]}")
            if name not in allowed:
                raise ConfigError(f"{source}: unknown parameter {name!r}; expected a search "
                                  f"parameter {sorted(known)} or a TrainConfig field")
            for f in families:
                ps = per[f]
                idx = next((i for i, p in enumerate(ps) if p.name == name), None)
                if spec_v is None:                      # dropped
                    if idx is not None:
                        ps.pop(idx)
                    continue
                template = ps[idx] if idx is not None else None
                if template is None and name in known:
                    continue                            # another family's parameter
                p = _parse_param(name, spec_v, template, source)
                if template is not None and p.kind != "fixed":
                    p.when = template.when
                if idx is None:
                    ps.append(p)
                else:
                    ps[idx] = p
        space = cls(families, per, T, source if overrides else "defaults")
        space.validate(source)
        return space

    @classmethod
    def from_file(cls, path, families, spec, max_epochs: float) -> "SearchSpace":
        """Defaults with the overrides of a YAML file (see the module docstring)."""
        return cls.build(families, spec, max_epochs, load_space_file(path), source=str(path))

    # ------------------------------------------------------------------ checks
    def validate(self, source: str) -> None:
        """Check every range and value against TrainConfig's rules and the M/k constraints."""
        T = self.T
        tfact = math.factorial(T)
        for fam, ps in self.params.items():
            by = {p.name: p for p in ps}
            for p in ps:
                _check_values(p, source)
            if fam == "mtt":
                _check_heads(by, source)
            if fam != "monet":
                continue
            m = by.get("M") or Param("M", "fixed", value=min(TrainConfig.M, tfact))
            k = by.get("k") or Param("k", "fixed", value=min(TrainConfig.k, m.bounds[0]))
            m_lo, m_hi = m.bounds
            if m_lo < 1 or m_hi > tfact:
                raise ConfigError(f"{source}: parameter 'M' spans {m_lo}..{m_hi}; expected "
                                  f"1..T! = {tfact} for T={T} tasks")
            k_lo, k_hi = k.bounds
            k_cap = m_lo if k.kind in ("fixed", "categorical") else m_hi
            if k_lo < 1 or k_lo > m_lo or (k_hi is not None and k_hi > k_cap):
                shown = f"{k_lo}..{'M' if k_hi is None else k_hi}"
                raise ConfigError(f"{source}: parameter 'k' spans {shown}, beyond M's range "
                                  f"{m_lo}..{m_hi}; expected 1 <= k <= M for every M")

    # ------------------------------------------------------------------ use
    def __call__(self, trial) -> dict:
        """Suggest one configuration; returns the fixed values (merged into the trial config),
        with None for every parameter of the space this trial does not use (another family's,
        or one whose condition is not met), so that every trial config has the same keys."""
        if len(self.families) > 1:
            family = trial.suggest_categorical("family", list(self.families))
        else:
            family = self.families[0]
        fixed = {}
        values = {}
        for p in self.params[family]:
            if p.when is not None:
                parent, want = p.when
                got = values.get(parent, getattr(TrainConfig, parent, None))
                if got != want:
                    continue
            high = None
            if p.name == "k" and p.kind in ("int", "float"):
                high = int(values["M"]) if p.high is None else min(int(p.high), int(values["M"]))
            if p.name == "M" and p.kind == "fixed":
                values["M"] = p.value
            v = p.suggest(trial, high=high)
            values[p.name] = v
            if p.kind == "fixed":
                fixed[p.name] = v
        for name in self.names():       # every trial config has every column (Ray's reporter
            if name != "family" and name not in values:    # and the tables need the keys):
                fixed[name] = None      # None = not used by this family / condition
        number = getattr(trial, "number", None)
        if number is not None:                         # links the Tune trial to the study
            fixed[TRIAL_NUMBER_KEY] = int(number)
        origin = (getattr(trial, "user_attrs", None) or {}).get(WARM_START_KEY)
        if origin:                                     # enqueued by --warm-start
            fixed[WARM_START_KEY] = str(origin)
        if "M" not in values and family == "monet":   # M dropped: clamp defaults to T!
            fixed["M"] = min(TrainConfig.M, math.factorial(self.T))
            if "k" not in values:
                fixed["k"] = min(TrainConfig.k, fixed["M"])
        return fixed

    def describe(self) -> dict:
        """``{family: {parameter: range or value}}`` for the experiment's config.yaml."""
        return {f: {p.name: p.describe() for p in ps} for f, ps in self.params.items()}

    def names(self) -> list:
        out = ["family"] if len(self.families) > 1 else []
        for ps in self.params.values():
            out += [p.name for p in ps if p.name not in out]
        return out


def load_space_file(path) -> dict:
    """Read a space YAML file into a mapping (missing, binary, malformed or not a mapping: one
    ``ConfigError`` line naming the file)."""
    from monet.cli import load_yaml_mapping

    return load_yaml_mapping(path, "--space", what="a mapping of parameter: range or value")


# ---------------------------------------------------------------------- parsing helpers
def _num(v, name, source, what):
    if isinstance(v, bool):
        raise ConfigError(f"{source}: parameter {name!r}: {what} {v!r} is not a number")
    if isinstance(v, (int, float)):
        return v
    try:  # YAML reads 1e-4 (no dot) as a string
        return float(v)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: parameter {name!r}: {what} {v!r} is not a number") from None


def _field_kind(name):
    if name.startswith(GROUP_PREFIXES):
        return "float"
    default = getattr(TrainConfig, name, None)
    if isinstance(default, bool):
        return "categorical"
    if isinstance(default, int):
        return "int"
    if isinstance(default, float):
        return "float"
    return None


def _parse_param(name, v, template: Optional[Param], source) -> Param:
    kind = template.kind if template and template.kind in ("float", "int") else _field_kind(name)
    if isinstance(v, list):
        if not v:
            raise ConfigError(f"{source}: parameter {name!r}: empty list of choices")
        return Param(name, "categorical", choices=list(v))
    if not isinstance(v, dict):
        return Param(name, "fixed", value=_coerce_scalar(name, v, kind, source))
    keys = set(v)
    if "value" in keys:
        if keys - {"value"}:
            raise ConfigError(f"{source}: parameter {name!r}: 'value' fixes it; remove "
                              f"{sorted(keys - {'value'})}")
        return Param(name, "fixed", value=_coerce_scalar(name, v["value"], kind, source))
    if "choices" in keys:
        if keys - {"choices"} or not isinstance(v["choices"], list) or not v["choices"]:
            raise ConfigError(f"{source}: parameter {name!r}: expected {{choices: [a, b, ...]}}")
        return Param(name, "categorical", choices=list(v["choices"]))
    bad = keys - {"low", "high", "log", "step"}
    if bad:
        raise ConfigError(f"{source}: parameter {name!r}: unknown key(s) {sorted(bad)}; expected "
                          f"low, high, log, step (a range), choices (a list) or value (fixed)")
    if kind not in ("float", "int") and not (template and template.kind == "categorical"):
        raise ConfigError(f"{source}: parameter {name!r} is not numeric; give a value or a "
                          f"list of choices, not a range")
    if kind is None:
        kind = "int" if all(isinstance(c, int) for c in template.choices) else "float"
    lo = v.get("low", template.low if template else None)
    hi = v.get("high", template.high if template else None)
    if lo is None or (hi is None and name != "k"):
        raise ConfigError(f"{source}: parameter {name!r}: a range needs both low and high")
    lo = _num(lo, name, source, "low")
    if name == "k" and (hi is None or hi == "M"):
        hi = None
    elif hi is not None:
        hi = _num(hi, name, source, "high")
    log = bool(v.get("log", template.log if template else False))
    step = v.get("step")
    if kind == "int":
        for what, x in (("low", lo), ("high", hi)):
            if x is not None and float(x) != int(x):
                raise ConfigError(f"{source}: parameter {name!r}: {what} {x!r} is not an integer")
        lo, hi = int(lo), (int(hi) if hi is not None else None)
    else:
        lo, hi = float(lo), float(hi)
    if hi is not None and lo > hi:
        raise ConfigError(f"{source}: parameter {name!r}: low {lo} > high {hi}; expected low <= high")
    if log and lo <= 0:
        raise ConfigError(f"{source}: parameter {name!r}: a log range needs low > 0, got {lo}")
    if log and step is not None:
        raise ConfigError(f"{source}: parameter {name!r}: log and step cannot be combined")
    if hi is not None and lo == hi:
        return Param(name, "fixed", value=lo)
    return Param(name, kind, lo, hi, log=log,
                 step=None if step is None else _num(step, name, source, "step"))


def _coerce_scalar(name, v, kind, source):
    if kind == "float" and isinstance(v, str):
        return float(_num(v, name, source, "value"))
    return v


def _check_values(p: Param, source) -> None:
    """Every end/choice/value of ``p`` must pass TrainConfig's own checks."""
    if p.kind in ("float", "int"):
        vals = [p.low] + ([p.high] if p.high is not None else [])
    elif p.kind == "categorical":
        vals = list(p.choices)
    else:
        vals = [p.value]
    for v in vals:
        if p.name.startswith(TEMPERATURE_PREFIX):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ConfigError(f"{source}: parameter {p.name!r} = {v!r}; expected a positive "
                                  f"temperature")
            continue
        if p.name.startswith(WEIGHT_PREFIX):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
                raise ConfigError(f"{source}: parameter {p.name!r} = {v!r}; expected a loss "
                                  f"weight >= 0")
            continue
        if p.name in ("d_model", "heads"):             # checked together in _check_heads
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{source}: parameter {p.name!r} = {v!r}; expected a positive "
                                  f"integer")
            continue
        if p.name in ("M", "k"):
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigError(f"{source}: parameter {p.name!r} = {v!r}; expected an integer")
            continue
        try:
            TrainConfig.from_dict({p.name: v}, source=source)
        except ConfigError as e:
            raise ConfigError(str(e).replace("field", "parameter", 1)) from None
        except (TypeError, ValueError):
            raise ConfigError(f"{source}: parameter {p.name!r} = {v!r} has the wrong type") from None


def _values_of(p: Optional[Param], default) -> list:
    if p is None:
        return [default]
    if p.kind == "fixed":
        return [p.value]
    if p.kind == "categorical":
        return list(p.choices)
    if p.kind == "int" and p.high is not None and p.high - p.low <= 4096:
        return list(range(int(p.low), int(p.high) + 1, int(p.step or 1)))
    return []


def _check_heads(by: dict, source) -> None:
    """Every (d_model, heads) pair the space can draw must divide (attention heads)."""
    if "d_model" not in by and "heads" not in by:
        return
    ds = _values_of(by.get("d_model"), TrainConfig.d_model)
    hs = _values_of(by.get("heads"), TrainConfig.heads)
    if not ds or not hs:
        raise ConfigError(f"{source}: parameters 'd_model' and 'heads' must be lists or fixed "
                          f"values (every pair has to divide)")
    bad = [(d, h) for d in ds for h in hs if d % h]
    if bad:
        raise ConfigError(f"{source}: parameters 'd_model' and 'heads': d_model {bad[0][0]} is "
                          f"not a multiple of heads {bad[0][1]}; expected every pair to divide")


def trial_to_train_config(base: dict, params: dict) -> TrainConfig:
    """The full :class:`TrainConfig` of one trial: ``base`` (flags) + the trial's ``params``.

    ``params`` is flat (``temperature/<g>`` keys are gathered into ``temperatures``,
    ``weight/<g>`` keys into ``group_weights``).
    """
    d = dict(base)
    temps = dict(d.get("temperatures") or {})
    weights = dict(d.get("group_weights") or {})
    for k, v in params.items():
        if k in (TRIAL_NUMBER_KEY, WARM_START_KEY) or v is None:   # None: not this family's
            continue
        if k.startswith(TEMPERATURE_PREFIX):
            temps[k[len(TEMPERATURE_PREFIX):]] = float(v)
        elif k.startswith(WEIGHT_PREFIX):
            weights[k[len(WEIGHT_PREFIX):]] = float(v)
        else:
            d[k] = v
    d["temperatures"] = temps
    d["group_weights"] = weights
    return TrainConfig.from_dict(d, source="trial config")
