"""Warm-start a new search from another one: its best configurations become the first trials.

``--warm-start PATH`` names an experiment folder (its Optuna study, in ``study.db`` or where its
``config.yaml`` says) or a study directly, ``sqlite:///file.db#study_name`` (also
``journal:FILE#study_name``). The best ``--warm-start-top`` trials of that study (COMPLETE ones
by value, then PRUNED ones by their last intermediate value) are enqueued in the new study
(``optuna.Study.enqueue_trial``), restricted to the new search space: a number outside its range
is clipped, a parameter the new space does not search (another family's, another dataset's task
group, a fixed value) or a choice it does not offer is dropped, each with one warning line.
Enqueued trials carry the user attribute ``warm_start`` (``<source>#<trial number>``), which
the trial config and ``trials.parquet`` repeat as ``warm_start``.

A different family or dataset is allowed: that is the point (DISFA from BP4D, fold 2 from fold 1).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import optuna
from optuna.trial import TrialState

from monet.errors import ConfigError
from search.spaces import WARM_START_KEY


def open_source(spec: str) -> tuple:
    """``(study, label)`` of ``--warm-start`` ``spec``; a missing folder, file or study is one
    ``ConfigError`` line."""
    import yaml

    from search.searcher import absolute_storage_url, make_storage

    if "#" in spec and ("://" in spec or spec.startswith("journal:")):
        url, _, name = spec.rpartition("#")
        url = absolute_storage_url(url)
        if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).is_file():
            raise ConfigError(f"--warm-start: no such study database {url[len('sqlite:///'):]}")
        label = spec
    else:
        exp = Path(spec).expanduser()
        cfg_file = exp / "config.yaml"
        if not cfg_file.is_file():
            raise ConfigError(f"--warm-start: {spec} is not an experiment folder (no config.yaml) "
                              f"nor a study URL (sqlite:///file.db#study_name)")
        try:
            search = (yaml.safe_load(cfg_file.read_text()) or {})["search"]
            name = search["name"]
        except (yaml.YAMLError, KeyError, TypeError):
            raise ConfigError(f"--warm-start: {cfg_file} is not a search's config.yaml") from None
        url = search.get("optuna_storage") or f"sqlite:///{exp.resolve() / 'study.db'}"
        if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).is_file():
            raise ConfigError(f"--warm-start: the experiment {spec} keeps no Optuna study "
                              f"(no {url[len('sqlite:///'):]})")
        label = str(exp)
    storage = make_storage(url)
    if name not in optuna.study.get_all_study_names(storage):
        raise ConfigError(f"--warm-start: no study named {name!r} in {url}")
    return optuna.load_study(study_name=name, storage=storage), label


def best_trials(study: optuna.Study, top: int) -> list:
    """The ``top`` best trials: COMPLETE by value, then PRUNED by last intermediate value."""
    sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0

    def last(t):
        return t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.value is not None and math.isfinite(t.value)]
    pruned = [t for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
              if last(t) is not None and math.isfinite(last(t))]
    done.sort(key=lambda t: sign * t.value)
    pruned.sort(key=lambda t: sign * last(t))
    return (done + pruned)[:max(0, int(top))]


def restrict(params: dict, space, warn: set) -> dict:
    """``params`` restricted to ``space`` (a :class:`search.spaces.SearchSpace`): clipped,
    dropped; each change is added to ``warn`` as one line (a set: printed once each)."""
    out = {}
    families = list(space.families)
    family = params.get("family")
    if len(families) > 1:
        if family in families:
            out["family"] = family
        elif family is not None:
            warn.add(f"family {family!r} is not searched here ({families}); dropped")
    target = family if family in families else families[0]
    by = {p.name: p for p in space.params[target]}
    for name, v in params.items():
        if name == "family":
            continue
        p = by.get(name)
        if p is None:
            warn.add(f"parameter {name!r} is not searched here (family {target}); dropped")
            continue
        if p.kind == "fixed":
            warn.add(f"parameter {name!r} is fixed to {p.value!r} here; dropped")
            continue
        if p.kind == "categorical":
            if v in p.choices:
                out[name] = v
            else:
                warn.add(f"parameter {name!r}: {v!r} is not one of {list(p.choices)}; dropped")
            continue
        low = p.low
        high = p.high
        if name == "k" and "M" in out:                      # k <= M
            high = out["M"] if high is None else min(high, out["M"])
        clipped = min(max(v, low), high) if high is not None else max(v, low)
        if p.kind == "int":
            clipped = int(round(clipped))
        if clipped != v:
            warn.add(f"parameter {name!r} clipped to [{low}, {'M' if high is None else high}]")
        out[name] = clipped
    return out


def enqueue_warm_start(searcher, space, spec: str, top: int, log=print) -> int:
    """Enqueue the best ``top`` configurations of ``spec`` in ``searcher``'s study; returns how
    many were enqueued. Warnings go to ``log`` (one line each)."""
    study, label = open_source(spec)
    trials = best_trials(study, top)
    if not trials:
        raise ConfigError(f"--warm-start: the study of {spec} has no finished trial to start from")
    warn = set()
    for t in trials:
        searcher.enqueue(restrict(dict(t.params), space, warn),
                         user_attrs={WARM_START_KEY: f"{label}#{t.number}"})
    for w in sorted(warn):
        log(f"warning: --warm-start: {w}")
    return len(trials)


def warm_start_of(trial) -> Optional[str]:
    """The ``warm_start`` user attribute of an Optuna trial (None: sampled)."""
    return (getattr(trial, "user_attrs", None) or {}).get(WARM_START_KEY)
