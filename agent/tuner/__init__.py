"""The optimization engine: Optuna trials forked from a run's checkpoint (in-run
tuning, driven by the supervisor's ``tuning`` phase) and whole studies from scratch
(``smart-tuner tune``).

One job per module:

* ``config``: the ``tuner:`` section (objective weights, search space, pruner, budget);
* ``objective``: the composite TTS objective from an evaluation record;
* ``space``: hyperparameters <-> config keys and trainer commands, and Optuna suggestions;
* ``study``: Optuna storage, sampler, pruner; the offline study;
* ``trial_child``: the trial process (``python -m agent.tuner.trial_child``);
* ``trial_runner``: starts one trial process, relays its evaluations to the pruner;
* ``rounds``: one in-run round of trials from a base checkpoint (used by the supervisor and the bench);
* ``inrun``: the supervisor's side of a round (commands, journal rows, proposals);
* ``tracking``: MLflow child runs for trials.

Nothing here is imported by the daemon at start: Optuna, torch and MLflow load only
when a round or a study runs.
"""
