"""The Optuna sweeper of `hparams_search=optuna` (a Hydra plugin: Hydra takes sweepers from `hydra_plugins` only):
Hydra's, except that a failed trial does not end the search.

`lnmt-train` returns NaN for a failed job (its metrics.json says why). Hydra's Optuna sweeper tells the study
that value, Optuna 2 raises on it and the sweeper ends the search; here the trial is told as failed instead,
counts towards `n_trials`, and the search goes on. A search in which no trial finished ends with the sweep
summary, not with Optuna's "No trials are completed yet". Trials run in `trial_<number>` directories."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger("lightning_nmt")

try:  # the `sweeps` extra; without it Hydra's plugin scan imports this module and finds no sweeper here
    import optuna
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper as HydraOptunaSweeper
    from optuna.trial import TrialState
except ImportError:
    HydraOptunaSweeper = None


@contextmanager
def nan_is_a_failed_trial() -> Iterator[None]:
    """While inside, `Study.tell` with a NaN value tells the trial as failed (without raising)."""
    tell = optuna.study.Study.tell

    def tell_failed_on_nan(study: optuna.study.Study, trial: Any, values: Any = None, state: Any = None) -> Any:
        if values is not None and any(math.isnan(v) for v in ([values] if isinstance(values, float) else values)):
            return tell(study, trial, state=TrialState.FAIL)
        return tell(study, trial, values) if state is None else tell(study, trial, values, state)

    optuna.study.Study.tell = tell_failed_on_nan
    try:
        yield
    finally:
        optuna.study.Study.tell = tell


if HydraOptunaSweeper is not None:

    class OptunaSweeper(HydraOptunaSweeper):
        def sweep(self, arguments: list[str]) -> None:
            impl, configure = self.sweeper, self.sweeper._configure_trials

            def in_trial_dirs(trials: list[Any], *args: Any) -> list[tuple[str, ...]]:
                """Each trial's job directory is `trial_<number>`, its number in the study: a continued study
                (`hydra.sweeper.storage`) never writes into an earlier trial's directory."""
                overrides = configure(trials, *args)
                return [(*o, f"hydra.sweep.subdir=trial_{t.number}") for t, o in zip(trials, overrides)]

            impl._configure_trials = in_trial_dirs
            with nan_is_a_failed_trial():
                try:
                    return super().sweep(arguments)
                except ValueError as err:  # raised by study.best_trial
                    if "No trials are completed yet" not in str(err):
                        raise
                    log.warning("no trial of the search finished")
