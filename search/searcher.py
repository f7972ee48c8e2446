"""A budget-honest Optuna searcher for Ray Tune, and Optuna storages from a URL.

Ray's ``OptunaSearch`` tells Optuna that a trial ASHA stopped at an early rung is COMPLETE with
that rung's value, so TPE compares a 1-epoch accuracy with a 20-epoch one. This searcher tells
Optuna the truth:

* every evaluation round is reported as an intermediate value (``trial.report(value, round)``);
* a trial that used its whole epoch budget is COMPLETE with its last value;
* a trial stopped before (ASHA, the time budget) is PRUNED, with its intermediate values
  (Optuna then uses its last intermediate value, as for any pruned trial);
* a trial that raised (an exception, a non-finite loss) is FAIL.

Example:
    >>> import optuna
    >>> from search.searcher import BudgetHonestOptunaSearch
    >>> s = BudgetHonestOptunaSearch(lambda t: {"x": t.suggest_float("x", 0, 1)} and None,
    ...                              metric="val/mean_acc", mode="max",
    ...                              sampler=optuna.samplers.RandomSampler(seed=0))
    >>> cfg = s.suggest("t0")
    >>> s.on_trial_result("t0", {"val/mean_acc": 0.5, "round": 1, "budget": 0.5})
    >>> s.on_trial_complete("t0", {"val/mean_acc": 0.5, "round": 1, "budget": 0.5})
    >>> s.study.trials[0].state.name, s.study.trials[0].intermediate_values
    ('PRUNED', {1: 0.5})
"""
from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import Optional

import optuna
from optuna.trial import TrialState
from ray.tune.search import ConcurrencyLimiter, SearchGenerator
from ray.tune.search.optuna import OptunaSearch

from monet.errors import ConfigError

logger = logging.getLogger(__name__)

BUDGET_KEY = "budget"       # share of the trial's epoch budget done (1.0 at the end)
STEP_KEY = "round"          # evaluation round: the intermediate-value step


ORPHAN_ATTR = "closed_on_resume"   # user attr of a trial a killed driver left RUNNING


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class BudgetHonestOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that records ASHA-stopped trials as PRUNED and errors as FAIL.

    Args:
        space: a define-by-run function ``space(trial) -> dict | None`` (see ``search.spaces``).
        metric, mode: what the study optimises (``mode`` ``max`` or ``min``).
        sampler: an Optuna sampler (e.g. ``TPESampler(seed=0, constant_liar=True)``).
        storage: an Optuna storage object (see :func:`make_storage`) or None (in memory).
        study_name: the study's name in ``storage``.
    """

    def __init__(self, space, metric: str, mode: str, sampler=None, storage=None,
                 study_name: Optional[str] = None):
        super().__init__(space=space, metric=metric, mode=mode, sampler=sampler,
                         storage=storage, study_name=study_name)
        self._budget = {}
        self._steps = {}

    @property
    def study(self) -> optuna.Study:
        self._ensure_study()
        return self._ot_study

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._ensure_study()
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        if _finite(result.get(BUDGET_KEY)):
            self._budget[trial_id] = float(result[BUDGET_KEY])
        v = result.get(self.metric)
        if not _finite(v):
            return
        step = int(result.get(STEP_KEY) or result.get("training_iteration") or 0)
        done = self._steps.setdefault(trial_id, set())
        if step not in done:  # a trial resumed from a checkpoint may repeat a round
            try:
                self._ot_trials[trial_id].report(float(v), step)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # closed in the study before a crash; see on_trial_complete
            done.add(step)

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None,
                          error: bool = False) -> None:
        self._ensure_study()
        if trial_id in self._completed_trials:
            return
        if trial_id not in self._ot_trials:
            logger.warning("trial %s is unknown to the Optuna study; not recorded", trial_id)
            return
        result = result or {}
        if result:
            self.on_trial_result(trial_id, result)
        ot_trial = self._ot_trials[trial_id]
        budget = result.get(BUDGET_KEY, self._budget.get(trial_id))
        value = result.get(self.metric)
        if error:
            state, value, reason = TrialState.FAIL, None, "error"
        elif value is None and self._steps.get(trial_id):
            # ended with no final result after intermediate reports: stopped, not failed
            state, value, reason = TrialState.PRUNED, None, "no final result"
        elif not _finite(value):
            state, value, reason = TrialState.FAIL, None, "no finite metric"
        elif _finite(budget) and budget >= 1.0 - 1e-9:
            state, value, reason = TrialState.COMPLETE, float(value), "full budget"
        else:
            state, value, reason = TrialState.PRUNED, None, "stopped early"
        try:
            ot_trial.set_user_attr("ray_trial_id", trial_id)
            ot_trial.set_user_attr("reason", reason)
            if _finite(result.get("epoch")):
                ot_trial.set_user_attr("epochs", float(result["epoch"]))
            self._ot_study.tell(ot_trial, value, state=state)
        except optuna.exceptions.UpdateFinishedTrialError:
            # Told already (a resumed experiment replays a trial the study closed before the
            # crash): the study's record stands.
            logger.info("trial %s is already finished in the Optuna study", trial_id)
        except Exception as exc:  # e.g. the study was finished elsewhere
            logger.warning("could not tell Optuna about trial %s: %s", trial_id, exc)
        self._completed_trials.add(trial_id)


    def enqueue(self, params: dict, user_attrs: Optional[dict] = None) -> None:
        """Make ``params`` the next configuration the study asks for (warm start)."""
        self._ot_study.enqueue_trial(params, user_attrs=user_attrs, skip_if_exists=False)

    # ------------------------------------------------------------------ saving
    # A persistent study (sqlite, journal) is not pickled with the searcher: Ray's searcher
    # state and tuner.pkl keep the study's name, the sampler (with its random state) and the
    # trial ids; restore() re-opens the study in the storage of the experiment being resumed,
    # which may be a copy of the folder that saved it.
    def _portable(self, d: dict) -> dict:
        if self._ot_study is None or isinstance(self._storage, (type(None),
                                                                 optuna.storages.InMemoryStorage)):
            return d
        d = dict(d)
        d["_study_name_saved"] = self._ot_study.study_name
        d["_sampler"] = self._ot_study.sampler
        d["_trial_ids_saved"] = {rid: t._trial_id for rid, t in self._ot_trials.items()}
        d["_ot_study"], d["_storage"], d["_ot_trials"] = None, None, {}
        return d

    def __getstate__(self) -> dict:
        return self._portable(self.__dict__)

    def save(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "wb") as f:
            pickle.dump(self._portable(self.__dict__.copy()), f)

    def _reopen(self, storage) -> None:
        """Open the saved study in ``storage`` (with the saved sampler) and its trials."""
        name = getattr(self, "_study_name_saved", None) or self._study_name
        self._storage = storage
        self._ot_study = optuna.load_study(study_name=name, storage=storage, sampler=self._sampler,
                                           pruner=optuna.pruners.NopPruner())
        ids = getattr(self, "_trial_ids_saved", None)
        if ids is None:
            ids = {rid: t._trial_id for rid, t in self._ot_trials.items()}
        self._ot_trials = {rid: optuna.Trial(self._ot_study, tid) for rid, tid in ids.items()}
        self._trial_ids_saved = None

    def _ensure_study(self) -> None:
        if self._ot_study is None:
            storage = getattr(self, "rebind_storage", None)
            if storage is None:
                raise RuntimeError("the searcher's Optuna study was not re-opened after a restore")
            self._reopen(storage)

    def suggest(self, trial_id: str):
        self._ensure_study()
        return super().suggest(trial_id)

    def restore(self, checkpoint_path: str) -> None:
        """Restore the searcher; trials a killed driver left RUNNING in a persistent study
        (asked after the last saved state) are closed as FAIL.

        :attr:`rebind_storage` (set before the restore) is the storage of the experiment folder
        being resumed; the study is re-opened there."""
        rebind = getattr(self, "rebind_storage", None)
        ray_ids = getattr(self, "restored_trial_ids", None)
        super().restore(checkpoint_path)
        self._budget = getattr(self, "_budget", {})
        self._steps = getattr(self, "_steps", {})
        self.rebind_storage, self.restored_trial_ids = rebind, None
        if rebind is not None:
            self._reopen(rebind)
        self._ensure_study()
        if ray_ids is not None:     # trials Ray does not restore are asked again: close ours
            self._ot_trials = {k: v for k, v in self._ot_trials.items() if k in ray_ids}
        known = {t.number for t in self._ot_trials.values()}
        for ft in self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if ft.number not in known:
                try:
                    # marked, so that it is not counted as one of the experiment's trials
                    self._ot_study._storage.set_trial_user_attr(ft._trial_id, ORPHAN_ATTR, True)
                    self._ot_study.tell(ft.number, state=TrialState.FAIL)
                except Exception as exc:
                    logger.warning("could not close orphaned Optuna trial %s: %s", ft.number, exc)


class BudgetedSearchGenerator(SearchGenerator):
    """Ray's ``SearchGenerator`` whose budget can change when a search is resumed.

    Ray restores the number of trials to ask for (and the concurrency cap) from the saved state,
    so ``Tuner.restore`` never adds trials (ray-project/ray#42221). Set :attr:`budget` (and
    :attr:`max_concurrent`) before the restored tuner runs: they win over the saved values, so
    ``--resume --num-samples N`` asks for ``N`` trials in all.

    Args:
        searcher: the searcher, usually ``ConcurrencyLimiter(BudgetHonestOptunaSearch(...))``.
    """

    # Our own copy of the search state, written (synchronously) each time a trial is created.
    # Ray uploads its experiment folder file by file in the background: a driver killed during
    # an upload can leave object storage with an experiment_state that lists a trial and no
    # searcher state, or an older one (seen with s3://); the restored search then asked for
    # its whole budget again. The copy always knows every trial an experiment_state can list.
    OWN_STATE = "monet_search_gen_state.pkl"
    OWN_SEARCHER = "monet_searcher_state.pkl"

    def __init__(self, searcher):
        super().__init__(searcher)
        self.budget: Optional[int] = None
        self.max_concurrent: Optional[int] = None
        self.state_sink = None   # callable(name, bytes): where the copy goes (the experiment store)

    def next_trial(self):
        trial = super().next_trial()
        if trial is not None and self.state_sink is not None:
            self.save_own_state(self.state_sink)
        return trial

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None,
                          error: bool = False):
        super().on_trial_complete(trial_id, result=result, error=error)
        if self.state_sink is not None:
            self.save_own_state(self.state_sink)

    def save_own_state(self, sink) -> None:
        """Write the searcher's state, then this generator's (the commit), through ``sink``."""
        import tempfile

        with tempfile.TemporaryDirectory(prefix="monet-search-state-") as td:
            self.save_to_dir(td, session_str="own")
            sink(self.OWN_SEARCHER, (Path(td) / self.base_searcher.CKPT_FILE_TMPL.format("own"))
                 .read_bytes())
            sink(self.OWN_STATE, (Path(td) / self.CKPT_FILE_TMPL.format("own")).read_bytes())

    def __getstate__(self):
        d = self.__dict__.copy()
        d["state_sink"] = None
        return d

    def has_checkpoint(self, dirpath: str):
        return super().has_checkpoint(dirpath) or (Path(dirpath) / self.OWN_STATE).is_file()

    @property
    def base_searcher(self):
        s = self.searcher
        while hasattr(s, "searcher"):
            s = s.searcher
        return s

    @property
    def asked(self) -> int:
        """Trials asked for so far."""
        return self._counter

    @staticmethod
    def _known(state) -> Optional[set]:
        """Ray trial ids a saved searcher state knows (None: not a state of ours)."""
        if not isinstance(state, dict):
            return None
        return set(state.get("_trial_ids_saved") or state.get("_ot_trials") or {})

    def _use_own(self, dirpath: str, ray_ids: Optional[set]) -> bool:
        """Whether to restore from our copy: Ray's searcher state is missing or does not know
        every trial Ray restores, and ours does."""
        import pickle

        from ray.tune.utils.util import _load_newest_checkpoint

        own, own_searcher = Path(dirpath) / self.OWN_STATE, Path(dirpath) / self.OWN_SEARCHER
        if not (own.is_file() and own_searcher.is_file()):
            return False
        ray_state = _load_newest_checkpoint(dirpath, self.CKPT_FILE_TMPL.format("*"))
        ray_known = self._known(_load_newest_checkpoint(
            dirpath, self.base_searcher.CKPT_FILE_TMPL.format("*")))
        if not ray_state or ray_known is None:
            return True
        if ray_ids is None:
            return False
        with open(own_searcher, "rb") as f:
            own_known = self._known(pickle.load(f)) or set()
        return not ray_ids <= ray_known and ray_ids <= own_known

    @staticmethod
    def _ray_trial_ids(dirpath: str) -> Optional[set]:
        """The trial ids of the newest experiment_state in ``dirpath`` (what Ray restores)."""
        import json

        states = sorted(Path(dirpath).glob("experiment_state-*.json"))
        try:
            data = json.loads(states[-1].read_text())["trial_data"]
            return {json.loads(t)["trial_id"] for t, _ in data}
        except (IndexError, OSError, ValueError, KeyError, TypeError):
            return None

    def restore_from_dir(self, dirpath: str):
        ray_ids = self._ray_trial_ids(dirpath)
        self.base_searcher.restored_trial_ids = ray_ids
        if self._use_own(dirpath, ray_ids):
            import shutil
            import tempfile

            logger.info("restoring the search state from %s (Ray's copy is older)", self.OWN_STATE)
            with tempfile.TemporaryDirectory(prefix="monet-search-state-") as td:
                shutil.copyfile(Path(dirpath) / self.OWN_STATE,
                                Path(td) / self.CKPT_FILE_TMPL.format("own"))
                shutil.copyfile(Path(dirpath) / self.OWN_SEARCHER,
                                Path(td) / self.base_searcher.CKPT_FILE_TMPL.format("own"))
                super().restore_from_dir(td)
        else:
            super().restore_from_dir(dirpath)
        if ray_ids is not None:     # the search goes on with exactly the trials Ray restores
            self._counter = len(ray_ids)
            if isinstance(self.searcher, ConcurrencyLimiter):
                live = {t for t in self.searcher.live_trials if t in ray_ids}
                self.searcher.live_trials = live
                self.searcher.num_unfinished_live_trials = len(live)
        if self.budget is not None and self.budget != self._total_samples:
            self._total_samples = max(int(self.budget), self._counter)
            self._finished = False
            if self._experiment is not None:
                self._experiment.spec["num_samples"] = self._total_samples
        if self.max_concurrent is not None and isinstance(self.searcher, ConcurrencyLimiter):
            self.searcher.max_concurrent = int(self.max_concurrent)


def absolute_storage_url(url: Optional[str]) -> Optional[str]:
    """``url`` with a relative sqlite or journal file made absolute, so that a resume from another
    folder opens the same study.

    Example:
        >>> absolute_storage_url("sqlite:////tmp/a.db")
        'sqlite:////tmp/a.db'
        >>> absolute_storage_url("sqlite:///a.db").startswith("sqlite:////")
        True
    """
    if not url:
        return url
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(url[len("sqlite:///"):]).expanduser().resolve())
    if url.startswith("journal:"):
        path = url[len("journal:"):]
        path = path[2:] if path.startswith("//") else path
        return "journal:" + str(Path(path).expanduser().resolve())
    if "://" not in url and url.endswith((".log", ".journal")):
        return str(Path(url).expanduser().resolve())
    return url


def make_storage(url: Optional[str]):
    """An Optuna storage object from ``--optuna-storage``.

    ``sqlite:///study.db`` (or any SQLAlchemy URL) gives an ``RDBStorage``; ``journal:PATH`` or a
    path ending in ``.log``/``.journal`` gives a ``JournalStorage`` on a file (safe on NFS).
    """
    if not url:
        return None
    if url.startswith("journal:") or url.endswith((".log", ".journal")):
        path = url[len("journal:"):] if url.startswith("journal:") else url
        path = path[2:] if path.startswith("//") else path
        p = Path(path).expanduser().resolve()
        if not p.parent.is_dir():
            raise ConfigError(f"--optuna-storage: folder {p.parent} does not exist")
        from optuna.storages.journal import JournalFileBackend, JournalStorage
        return JournalStorage(JournalFileBackend(str(p)))
    if "://" not in url:
        raise ConfigError(f"--optuna-storage: {url!r} is neither a database URL "
                          f"(sqlite:///study.db) nor a journal file (journal:PATH or *.log)")
    if url.startswith("sqlite:///"):
        p = Path(url[len("sqlite:///"):]).expanduser()
        if not p.resolve().parent.is_dir():
            raise ConfigError(f"--optuna-storage: folder {p.resolve().parent} does not exist")
    try:
        return optuna.storages.RDBStorage(url)
    except Exception as e:  # bad driver, unreachable server
        raise ConfigError(f"--optuna-storage: cannot open {url!r}: "
                          f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


LAST_VIEW = -1               # tpe-last: each trial graded by its last value (see last_view)
RUNG_MIN_TRIALS = 6          # tpe-rung: trials needed at a budget to grade at it (see rung_view)
DEFAULT_TPE_HISTORY = 1000   # finished trials TPE looks at (besides the best); 0: all


def last_view(trials: list) -> list:
    """Every finished trial with intermediate values as COMPLETE with its last one: what TPE sees
    behind Ray's ``OptunaSearch``, which tells Optuna every trial as complete."""
    out = []
    for t in trials:
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and t.intermediate_values:
            t = _graded(t, t.intermediate_values[max(t.intermediate_values)]
                        if t.state == TrialState.PRUNED else t.value)
        out.append(t)
    return out


def _graded(t, value):
    return optuna.trial.FrozenTrial(
        number=t.number, state=TrialState.COMPLETE, value=value, values=None,
        datetime_start=t.datetime_start, datetime_complete=t.datetime_complete,
        params=t.params, distributions=t.distributions, user_attrs=t.user_attrs,
        system_attrs=t.system_attrs, intermediate_values=t.intermediate_values,
        trial_id=t._trial_id)


def rung_view(trials: list, n_min: int) -> list:
    """The finished trials graded at one common budget, for TPE (BOHB's rule).

    Optuna's TPE ranks every COMPLETE trial above every PRUNED one. Under asynchronous ASHA the
    first trials reach the full budget unopposed (a rung with fewer results than the reduction
    factor stops nobody), so the COMPLETE trials are the early ones, not the good ones, and TPE's
    "good" group fills with them. Here the budget is the largest step (evaluation round) that at
    least ``n_min`` finished trials reached; each of those becomes COMPLETE with its value at
    that budget (its first intermediate value at or after it), the others stay PRUNED (ranked
    below them by Optuna, by the step they reached). Running trials are left as they are.
    """
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
            and t.intermediate_values]
    if len(done) < n_min:
        return trials
    reached = sorted((max(t.intermediate_values) for t in done), reverse=True)
    budget = reached[n_min - 1]
    graded = {t.number for t in done if max(t.intermediate_values) >= budget}
    out = []
    for t in trials:
        if t.number in graded:
            step = min(s for s in t.intermediate_values if s >= budget)
            t = _graded(t, t.intermediate_values[step])
        out.append(t)
    return out


class _HistoryWindow:
    """A study as TPE sees it through :class:`WindowedTPESampler`: ``_get_trials`` returns the
    best finished trials (TPE's whole "good" group), the latest ``size`` other finished trials
    and every running trial (with ``rung`` > 0, graded at a common budget first: see
    :func:`rung_view`); everything else is the study itself."""

    def __init__(self, study, size: int, gamma, rung: int = 0):
        self._study, self._size, self._gamma, self._rung = study, size, gamma, rung

    def __getattr__(self, name):
        return getattr(self._study, name)

    def _get_trials(self, deepcopy=False, states=None, use_cache=False):
        from optuna.samplers._tpe.sampler import _split_trials

        trials = self._study._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache)
        if self._rung == LAST_VIEW:
            trials = last_view(trials)
        elif self._rung:
            done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
            trials = rung_view(trials, max(self._rung, 2 * self._gamma(len(done))))
        done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        if self._size <= 0 or len(done) <= self._size:
            return trials
        best, rest = _split_trials(self._study, done, self._gamma(len(done)))
        keep = {t.number for t in best} | {t.number for t in rest[-self._size:]}
        return [t for t in trials if t.number in keep or t.state == TrialState.RUNNING]


class WindowedTPESampler(optuna.samplers.TPESampler):
    """``TPESampler`` whose cost per suggestion stops growing with the study.

    TPE builds its two Parzen estimators from every finished trial on every suggestion, so a
    search of thousands of trials slows down as it goes (``benchmarks/cluster_overhead.py``
    measures how much). This sampler gives TPE a bounded history: the ``history`` latest finished
    trials, plus the best ones from the whole study (the "good" group TPE would pick from all of
    them, at most 25), plus the running ones (constant liar). Up to ``history`` finished trials it
    is exactly ``TPESampler``.

    Args:
        history: finished trials looked at besides the best ones (``None`` or 0: all).
        **kw: ``TPESampler`` arguments.

    Example:
        >>> s = WindowedTPESampler(history=200, seed=0)
        >>> study = optuna.create_study(sampler=s)
        >>> study.optimize(lambda t: t.suggest_float("x", 0, 1) ** 2, n_trials=12)
        >>> len(study.trials)
        12
    """

    def __init__(self, history: Optional[int] = DEFAULT_TPE_HISTORY, rung: int = 0, **kw):
        super().__init__(**kw)
        self.history = int(history or 0)
        self.rung = int(rung)

    def _sample(self, study, trial, search_space):
        if self.history <= 0 and not self.rung:
            return super()._sample(study, trial, search_space)
        from optuna.samplers._tpe.sampler import default_gamma
        window = _HistoryWindow(study, self.history, self._gamma or default_gamma, self.rung)
        return super()._sample(window, trial, search_space)


def make_sampler(kind: str, seed: int, n_startup_trials: int,
                 history: Optional[int] = DEFAULT_TPE_HISTORY, constant_liar: bool = True):
    """``tpe``, ``tpe-mv``, ``tpe-rung`` or ``random`` (all seeded).

    TPE: ``constant_liar=True`` for parallel trials; a bounded history (see
    :class:`WindowedTPESampler`; ``history`` 0 or None: all trials). ``tpe`` models each parameter
    on its own (Optuna's default; a parameter whose range depends on another, k <= M, is drawn
    within its current range); ``tpe-mv`` adds ``multivariate=True, group=True``, so that
    conditional parameters (k on M, mixup_alpha on mixup, the mtca temperatures on weighting) are
    modelled jointly within their group (an experimental Optuna feature). ``tpe`` is the default:
    at the budgets ``benchmarks/search_vs_peers.py`` measures (about 20-50 trials), its winners
    scored 86.6 on toy ``bits`` against 83.7 for ``tpe-mv`` (3 search seeds, README).
    ``tpe-rung`` is ``tpe`` on the trials graded at one common budget (:func:`rung_view`).
    """
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind not in ("tpe", "tpe-mv", "tpe-rung", "tpe-last"):
        raise ValueError(f"sampler {kind!r}: expected tpe, tpe-mv, tpe-rung, tpe-last or random")
    kw = {"multivariate": True, "group": True} if kind == "tpe-mv" else {}
    if kind == "tpe-rung":
        kw["rung"] = RUNG_MIN_TRIALS
    if kind == "tpe-last":
        kw["rung"] = LAST_VIEW
    with warnings.catch_warnings():       # multivariate/group are flagged experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return WindowedTPESampler(history=history, seed=seed, constant_liar=constant_liar,
                                  n_startup_trials=n_startup_trials, **kw)
