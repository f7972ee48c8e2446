"""ASHA whose rungs survive a resume.

Ray does not save a scheduler's state with the experiment (DESIGN.md pitfalls): a resumed search
would start ASHA with empty rungs and prune less. :class:`PersistentASHA` writes its rungs, the
bracket of every trial and its stop decisions to one small JSON file in the experiment folder
(a local file through a temporary file and a rename, or one object in object storage: see
:mod:`search.storage`) whenever they change, and reads it back when the search is resumed. A
trial that ASHA stopped before a crash, and that Ray restarts from an older checkpoint, is
stopped again at its next result: the decision stands.

Example:
    >>> import tempfile, os
    >>> f = os.path.join(tempfile.mkdtemp(), "asha_state.json")
    >>> s = PersistentASHA(f, time_attr="epoch", metric="m", mode="max", max_t=9, grace_period=1,
    ...                    reduction_factor=3)
    >>> sorted(r["milestone"] for r in s.state()["brackets"][0])   # Ray's bracket adds max_t
    [1.0, 3.0, 9.0]
"""
from __future__ import annotations

import json
import logging
from typing import Optional

import math
import time

from ray.tune import Callback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from search.storage import ExperimentStore, base_name, parent_location

logger = logging.getLogger(__name__)

STATE_FILE = "asha_state.json"


class _KnowsController:
    """A scheduler that keeps the ``tune_controller`` Ray hands to its hooks (for
    :class:`SaveOnTrialStartEnd`)."""

    tune_controller = None

    def on_trial_add(self, tune_controller, trial) -> None:
        self.tune_controller = tune_controller
        super().on_trial_add(tune_controller, trial)

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        self.tune_controller = tune_controller
        super().on_trial_complete(tune_controller, trial, result)


class SaveOnTrialStartEnd(Callback):
    """Save Ray's experiment state in the loop step in which a trial started or ended (Ray saves
    it every ``TUNE_GLOBAL_CHECKPOINT_S``, in the background): a driver killed in between would
    otherwise resume a finished trial as unfinished and start it again, or lose a trial that
    started (and maybe finished, told to the Optuna study) after Ray's last save: Ray would not
    restore it, and the study would hold a trial the experiment does not (a trial's results
    reach the study in later loop steps than its start). Forced saves are skipped while they
    would take more than ``max_share`` of the driver's time and the last one took over
    ``always_below_s`` (each writes the state of every trial), so that a search of thousands of
    short trials stays linear; Ray's own periodic save goes on. :attr:`pending` is True while a
    trial's end is not saved yet (the tables wait for it: see ``search.results.ResultsCallback``).

    Args:
        scheduler: the search's scheduler (:class:`PersistentASHA` or :class:`PersistentFIFO`),
            through which the controller is reached.
    """

    always_below_s = 1.0     # a save that takes less than this is never skipped

    def __init__(self, scheduler, max_share: float = 0.05):
        self.scheduler, self.max_share = scheduler, float(max_share)
        self._due = False
        self._ended = False      # a trial's end is not saved yet
        self._last_end, self._last_cost = -math.inf, 0.0

    @property
    def pending(self) -> bool:
        return self._ended

    def on_trial_start(self, iteration, trials, trial, **info):
        self._due = True

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._due = self._ended = True

    def on_trial_error(self, iteration, trials, trial, **info):
        self._due = self._ended = True

    def on_step_end(self, iteration, trials, **info):
        controller = getattr(self.scheduler, "tune_controller", None)
        if not self._due or controller is None:
            return
        if self._last_cost > self.always_below_s and \
                time.monotonic() - self._last_end < self._last_cost / self.max_share:
            return
        t0 = time.monotonic()
        try:
            controller.checkpoint(force=True, wait=True)
            # Ray 2.60 launches the copy to the storage path in the background even when
            # forced: wait for it, so that what the tables say next is already saved
            manager = getattr(controller, "_checkpoint_manager", None)
            syncer = getattr(getattr(manager, "_storage", None), "syncer", None)
            if syncer is not None:
                syncer.wait()
        except Exception as e:  # noqa: BLE001 - Ray's periodic save still runs
            logger.warning("could not save the experiment state after a trial started or ended: %s", e)
        self._last_end = time.monotonic()
        self._last_cost = self._last_end - t0
        self._due = self._ended = False


class PersistentFIFO(_KnowsController, FIFOScheduler):
    """``FIFOScheduler`` that lets :class:`SaveOnTrialStartEnd` reach the controller."""


class PersistentASHA(_KnowsController, ASHAScheduler):
    """``ASHAScheduler`` that keeps its state in ``state_file`` (see the module docstring).

    Args:
        state_file: the JSON file: a local path or a URI (``s3://bucket/exp/asha_state.json``,
            query options kept at the end), or None (nothing saved: plain ASHA).
        **kw: ``ASHAScheduler`` arguments.
    """

    def __init__(self, state_file: Optional[str] = None, **kw):
        super().__init__(**kw)
        self.state_file = state_file
        self._stopped = set()
        self._passed = set()           # trials ASHA let go on at their bracket's last rung
        self._loaded = False
        self._resumed = False          # state was read from state_file
        self._pruned_ghosts = False

    # ------------------------------------------------------------------ state
    def state(self) -> dict:
        """Rungs (per bracket: milestone -> trial -> value), trial brackets, stop decisions."""
        return {
            "brackets": [[{"milestone": float(m), "recorded": {k: float(v) for k, v in r.items()}}
                          for m, r in b._rungs] for b in self._brackets],
            "trial_bracket": {tid: self._brackets.index(b) for tid, b in self._trial_info.items()},
            "stopped": sorted(self._stopped),
            "passed": sorted(self._passed),
            "num_stopped": int(self._num_stopped),
        }

    def load(self) -> bool:
        """Read the saved state, if any (called once, when the search starts)."""
        self._loaded = True
        if not self.state_file:
            return False
        try:
            st = json.loads(self._store(self.state_file).read_bytes(base_name(self.state_file)))
        except FileNotFoundError:
            return False
        except (OSError, ValueError) as e:
            logger.warning("ASHA state %s unreadable (%s); starting with empty rungs",
                           self._store(self.state_file).shown(base_name(self.state_file)), e)
            return False
        for b, saved in zip(self._brackets, st.get("brackets", [])):
            for (milestone, recorded), rung in zip(b._rungs, saved):
                recorded.clear()
                recorded.update(rung["recorded"])
        self._trial_info = {tid: self._brackets[i] for tid, i in st.get("trial_bracket", {}).items()
                            if i < len(self._brackets)}
        self._stopped = set(st.get("stopped", []))
        self._passed = set(st.get("passed", []))
        self._num_stopped = int(st.get("num_stopped", 0))
        self._resumed = True
        return True

    def save(self, checkpoint_path: Optional[str] = None) -> None:
        path = checkpoint_path or self.state_file
        if not path:
            return
        try:
            self._store(path).write_text(base_name(path), json.dumps(self.state()))
        except OSError as e:   # object storage away for a moment: the next change saves again
            logger.warning("ASHA state not saved (%s)", e)

    @staticmethod
    def _store(path: str) -> ExperimentStore:
        return ExperimentStore(parent_location(str(path)))

    def _ensure_loaded(self) -> None:
        if not self._loaded:
            self.load()

    # ------------------------------------------------------------------ scheduler hooks
    def set_search_properties(self, metric, mode, **spec) -> bool:
        self._ensure_loaded()
        return super().set_search_properties(metric, mode, **spec)

    def on_trial_add(self, tune_controller, trial) -> None:
        self._ensure_loaded()
        self.tune_controller = tune_controller
        if trial.trial_id in self._trial_info:   # restored: keep its bracket
            return
        super().on_trial_add(tune_controller, trial)
        self.save()

    def _forget_unknown(self, tune_controller) -> None:
        """After a resume, forget the trials Ray does not know: a trial started after Ray last
        saved the experiment is started again under a new id (with the same configuration),
        and the ghost's rung values would count twice."""
        self._pruned_ghosts = True
        try:
            known = {t.trial_id for t in tune_controller.get_trials()}
        except Exception:  # noqa: BLE001 - no controller (unit use): nothing to compare with
            return
        ghosts = (set(self._trial_info) | self._stopped) - known
        for b in self._brackets:
            for _, recorded in b._rungs:
                ghosts |= set(recorded) - known
                for tid in set(recorded) - known:
                    del recorded[tid]
        for tid in ghosts:
            self._trial_info.pop(tid, None)
        self._stopped -= ghosts
        self._passed -= ghosts
        if ghosts:
            logger.info("ASHA: forgot %d trial(s) the resumed experiment does not have: %s",
                        len(ghosts), sorted(ghosts))
            self.save()

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        self._ensure_loaded()
        self.tune_controller = tune_controller
        if self._resumed and not self._pruned_ghosts:
            self._forget_unknown(tune_controller)
        if trial.trial_id in self._stopped:      # decided before a crash: the decision stands
            return TrialScheduler.STOP
        if trial.trial_id not in self._trial_info:
            super().on_trial_add(tune_controller, trial)
        before = self._num_stopped, self._recorded_count()
        action = super().on_trial_result(tune_controller, trial, result)
        if action == TrialScheduler.STOP:
            self._stopped.add(trial.trial_id)
        elif trial.trial_id not in self._passed and self._at_last_rung(trial.trial_id):
            self._passed.add(trial.trial_id)
        if (self._num_stopped, self._recorded_count()) != before:
            self.save()
        return action

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        self._ensure_loaded()
        self.tune_controller = tune_controller
        if trial.trial_id not in self._trial_info:
            return
        super().on_trial_complete(tune_controller, trial, result)
        self.save()

    def on_trial_remove(self, tune_controller, trial) -> None:
        self._trial_info.pop(trial.trial_id, None)
        self.save()

    def _at_last_rung(self, trial_id: str) -> bool:
        """Recorded at the largest milestone below the full budget (Ray's bracket can also
        hold one at ``max_t`` itself, where the full budget stops the trial anyway)."""
        b = self._trial_info.get(trial_id)
        rungs = [(m, r) for m, r in (b._rungs if b else []) if m < self._max_t]
        return bool(rungs) and trial_id in max(rungs, key=lambda mr: mr[0])[1]

    def passed_rungs(self, trial_id: str) -> bool:
        """True once ASHA let the trial go on at the last rung of its bracket: it passed every
        decision the scheduler makes before the full budget. A trial that the search's end (a
        time budget, a stopper, a trial timeout) cut after that still counts as a finalist in
        ``best_config.yaml`` (:mod:`search.finalists`)."""
        self._ensure_loaded()
        return trial_id in self._passed

    def _recorded_count(self) -> int:
        return sum(len(r) for b in self._brackets for _, r in b._rungs)
