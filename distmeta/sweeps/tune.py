"""Run a Ray Tune search over distributed meta-training runs, and report its best trial.

::

    distmeta tune --config configs/tune_sinusoid_asha.yaml [--resume] [key=value ...]

    from distmeta.sweeps.tune import run_search
    summary = run_search("configs/tune_sinusoid_asha.yaml", ["num_samples=3"])   # or resume=True after a kill

:func:`run_search` checks the search (:func:`~distmeta.sweeps.search.load_search`), connects
to Ray like ``distmeta train``, checks that one trial's placement group fits the cluster
(:func:`~distmeta.sweeps.fit.check_fits`: an error at once on a fixed cluster, a message on
one that may autoscale), runs the trials (:mod:`distmeta.sweeps.trial`) and writes
``best.json`` and ``best_config.yaml`` (the best trial's resolved config) to the experiment
directory. Diverged trials are results (``diverged_trials`` in the summary), not failures.

Where Tune stores (``storage_path``) is trusted: ``Tuner.restore`` (``--resume``) unpickles the
experiment state it finds there, so whoever can write it can run code in this process. A local
``storage_path`` is checked private (:func:`~distmeta.security.check_private_dir`); a storage URI
cannot be checked, so keep that bucket or prefix writable by you alone. The best trial's
checkpoint is meta-tested in a local copy, verified by its manifest; its config is taken whole
only from private local storage. From a URI it goes through the refusal path of a foreign
checkpoint (:func:`~distmeta.security.config_from_saved`): data and model locations are the
search's own, and a location the search does not name is refused (``test_source`` says why).
"""
from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

from distmeta.config import config_from_dict, dump_config, set_key
from distmeta.errors import DistmetaError
from distmeta.persistence.storage import join_uri, open_store, redact_uri
from distmeta.sweeps.output import RayLog, TrialLines, diverged_runs
from distmeta.sweeps.search import BASE_KEY, Search, load_search
from distmeta.sweeps.trial import (
    meta_test_metrics,
    trainable,
    trial_config,
    trial_resources,
)

BEST_FILE = "best.json"
#: Tune's tables and the trials' own output, kept out of the terminal: in the experiment directory.
RAY_LOG_FILE = "tune.log"
BEST_CONFIG_FILE = "best_config.yaml"
FIT_HINT = ("lower driver_cpus, resources.workers or resources.cpus_per_worker / gpus_per_worker in the search "
            "(fractions are fine, e.g. resources.cpus_per_worker=0.5), or run it on a bigger cluster (ray.address)")


def _trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def _scheduler(search: Search) -> Any:
    from ray.tune.schedulers import (
        ASHAScheduler,
        FIFOScheduler,
        PopulationBasedTraining,
    )

    sched = search.spec.scheduler
    if sched.name == "asha":
        return ASHAScheduler(time_attr=sched.time_attr, max_t=sched.max_t, grace_period=sched.grace_period,
                             reduction_factor=sched.reduction_factor, brackets=sched.brackets)
    if sched.name == "pbt":
        return PopulationBasedTraining(
            time_attr=sched.time_attr, perturbation_interval=sched.perturbation_interval,
            burn_in_period=sched.burn_in_period, hyperparam_mutations=search.mutations(),
            quantile_fraction=sched.quantile_fraction, resample_probability=sched.resample_probability,
            synch=sched.synch)
    return FIFOScheduler()


def build_tuner(search: Search, callbacks: list[Any] | None = None, resume: bool = False) -> Any:
    """A ``ray.tune.Tuner`` for the search (or ``Tuner.restore`` of its experiment with ``resume``)."""
    from ray import tune
    from ray.tune.search import BasicVariantGenerator

    spec = search.spec
    # Run dirs (metrics, TensorBoard, checkpoints) under the experiment, on the same storage: a local
    # directory, or run.dir URIs on an object store (distmeta.persistence.storage).
    run_root = (str(search.experiment_path / "runs") if search.local_storage
                else join_uri(spec.storage_path, spec.name, "runs"))
    fn = tune.with_parameters(trainable, run_root=run_root, metric=search.metric, mode=spec.mode)
    fn = tune.with_resources(fn, trial_resources(search.base_cfg, spec.driver_cpus, spec.driver_gpus,
                                                 spec.placement_strategy))
    if resume:
        path = str(search.experiment_path) if search.local_storage else f"{spec.storage_path.rstrip('/')}/{spec.name}"
        if not tune.Tuner.can_restore(path):
            raise DistmetaError(f"--resume: no Tune experiment to restore at {redact_uri(path)}")
        return tune.Tuner.restore(path, trainable=fn, param_space=search.param_space(),
                                  resume_unfinished=True, resume_errored=True)
    pbt = spec.scheduler.name == "pbt"
    run_config = tune.RunConfig(
        name=spec.name, storage_path=spec.storage_path, verbose=spec.verbose, callbacks=callbacks,
        # PBT clones other trials' checkpoints: keep a few more of them than a plain search needs.
        checkpoint_config=tune.CheckpointConfig(num_to_keep=max(spec.keep_checkpoints, 4) if pbt else spec.keep_checkpoints),
        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
    )
    seeded = spec.search_seed is not None
    tune_config = tune.TuneConfig(
        metric=search.metric, mode=spec.mode, scheduler=_scheduler(search), num_samples=spec.num_samples,
        max_concurrent_trials=None if seeded else spec.max_concurrent_trials, reuse_actors=spec.reuse_actors,
        trial_dirname_creator=_trial_dirname,
        search_alg=BasicVariantGenerator(random_state=spec.search_seed, max_concurrent=spec.max_concurrent_trials or 0)
        if seeded else None,
    )
    return tune.Tuner(fn, param_space=search.param_space(), tune_config=tune_config, run_config=run_config)


def _best_test(search: Search, best: Any) -> tuple[dict[str, Any], str]:
    """The best trial's meta-test: from its final report, or by meta-testing its latest checkpoint here."""
    metrics = best.metrics or {}
    test = {k: v for k, v in metrics.items() if k.startswith("test_")}
    if metrics.get("final") and test:
        return test, "trial"
    if best.checkpoint is None:
        return {}, "none"
    from distmeta.security import UntrustedConfigError
    from distmeta.training.trainer import Trainer

    # Evaluated in a scratch copy: preparing the experiment writes its split and tokenizer into the run
    # directory, and Tune's stored checkpoint is not ours to write.
    with best.checkpoint.as_directory() as d, tempfile.TemporaryDirectory(prefix="dmbest") as tmp:
        run = Path(tmp) / "best"
        shutil.copytree(d, run)
        over = ["resources.workers=0", "run.progress=false"]
        # Local storage is checked private by run_search: the trial is this search's own, its paths ours.
        # Remote storage cannot be checked: its config is a foreign one, with the search's own locations.
        trust = search.local_storage
        try:
            with Trainer.from_checkpoint(run, over + ([] if trust else own_locations(search.base)),
                                         trust_config=trust,
                                         came_from=None if trust else search.spec.storage_path) as trainer:
                results = trainer.evaluate(split="test", episodes=search.spec.test_episodes, baseline=False)
        except UntrustedConfigError as err:
            warnings.warn(f"the best trial was not meta-tested: {err}", stacklevel=2)
            return {}, f"refused: {err}"
    return meta_test_metrics(results), "checkpoint"


def own_locations(base: dict[str, Any]) -> list[str]:
    """``key=value`` overrides for every data and model location of the search's own base config.

    A location inside a list (``data.mixture.0.source``) is given as its whole list. Where and how
    to run (:data:`~distmeta.security.USER_KEYS`) is the caller's anyway, so it is left out.
    """
    from distmeta.security import USER_KEYS, locations

    out: dict[str, Any] = {}
    for path, _ in locations(base):
        if path[0] in USER_KEYS:
            continue
        cut = next((i for i, part in enumerate(path) if part.isdigit()), len(path))
        node: Any = base
        for part in path[:cut]:
            node = node[part]
        out[".".join(path[:cut])] = node
    return [f"{key}={json.dumps(value)}" for key, value in out.items()]


def summarise(search: Search, grid: Any, out_dir: Path | None = None) -> dict[str, Any]:
    """Best trial, its config and meta-test ± CI; written to ``best.json`` / ``best_config.yaml`` and printed.

    Args:
        search: the search.
        grid: Tune's ``ResultGrid``.
        out_dir: where to write (default the experiment directory).

    Returns:
        The summary written to ``best.json`` (plus ``files``).

    Raises:
        DistmetaError: no trial reported the metric, or every trial diverged.
    """
    errors = [r for r in grid if r.error is not None]
    diverged = [r for r in grid if r.error is None and (r.metrics or {}).get("diverged")]
    gone = {id(r) for r in diverged}
    finished = {r.metrics.get("trial_id"): r for r in grid if r.error is None and r.metrics and id(r) not in gone}
    flagged = diverged_runs({trial: r.metrics for trial, r in finished.items()})  # finite, yet far off the others
    diverged += [finished[trial] for trial in flagged]
    try:
        best = grid.get_best_result(metric=search.metric, mode=search.spec.mode, scope="last")
    except RuntimeError as err:
        raise DistmetaError(f"no trial reported {search.metric!r}: {err}; "
                            f"{len(errors)} of {len(grid)} trials failed: {[str(e)[:200] for e in errors[:3]]}") from None
    if best.metrics.get("diverged"):
        raise DistmetaError(f"every trial that reported diverged ({len(diverged)} of {len(grid)}); lower the learning "
                            f"rates of the search space (first: {best.metrics.get('diverged_because', '')})")
    test, test_source = _best_test(search, best)
    cfg = config_from_dict(set_key(trial_config(best.config), "run.dir", f"runs/{search.spec.name}-best"))
    summary = {
        "experiment": str(search.experiment_path) if search.local_storage
        else redact_uri(join_uri(search.spec.storage_path, search.spec.name)), "metric": search.metric, "mode": search.spec.mode,
        "best_trial": best.metrics.get("trial_id"), "best_value": best.metrics.get(search.metric),
        "best_step": best.metrics.get("step"), "best_params": {k: v for k, v in best.config.items() if k != BASE_KEY},
        "test": test, "test_source": test_source, "trials": len(grid), "errored_trials": len(errors),
        "diverged_trials": len(diverged),
        "diverged": [{"trial": r.metrics.get("trial_id"), "params": {k: v for k, v in r.config.items() if k != BASE_KEY},
                      "because": flagged.get(r.metrics.get("trial_id")) or r.metrics.get("diverged_because", "")}
                     for r in diverged],
    }
    out_dir = out_dir or (search.experiment_path if search.local_storage else Path("runs") / search.spec.name)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / BEST_FILE).write_text(json.dumps(summary, indent=2, default=str))
    (out_dir / BEST_CONFIG_FILE).write_text(dump_config(cfg))
    summary["files"] = [str(out_dir / BEST_FILE), str(out_dir / BEST_CONFIG_FILE)]
    if not search.local_storage:  # beside the trials in the bucket too: the driver's disk may be gone tomorrow
        store = open_store(join_uri(search.spec.storage_path, search.spec.name))
        for name in (BEST_FILE, BEST_CONFIG_FILE):
            store.write_bytes(name, (out_dir / name).read_bytes())
            summary["files"].append(redact_uri(store.uri_of(name)))
    print(format_summary(summary), flush=True)
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as the lines ``distmeta tune`` prints."""
    lines = [f"best trial {summary['best_trial']}: {summary['metric']} = {summary['best_value']:.4f} "
             f"(step {summary['best_step']}) with " + ", ".join(f"{k}={v}" for k, v in summary["best_params"].items())]
    test = summary["test"]
    for key in sorted(k for k in test if k.endswith("_accuracy")):
        name = key[len("test_"):-len("_accuracy")]
        lines.append(f"  meta-test {name}: accuracy {100 * test[key]:.2f} ± {100 * test[f'test_{name}_ci95']:.2f}%")
    for key in sorted(k for k in test if k.endswith("_mse")):
        name = key[len("test_"):-len("_mse")]
        lines.append(f"  meta-test {name}: mse {test[key]:.4f} ± {test[f'test_{name}_mse_ci95']:.4f}")
    for d in summary.get("diverged", []):
        lines.append(f"  trial {d['trial']} DIVERGED ({d['because'][:160]}) with "
                     + ", ".join(f"{k}={v}" for k, v in d["params"].items()))
    lines.append(f"  {summary['trials']} trials ({summary['errored_trials']} failed, {summary['diverged_trials']} "
                 f"diverged); wrote {BEST_FILE} and {BEST_CONFIG_FILE} to {summary['experiment']}")
    return "\n".join(lines)


def run_search(path: str | Path | dict[str, Any], overrides: list[str] | None = None, *, resume: bool = False,
               callbacks: list[Any] | None = None) -> dict[str, Any]:
    """Validate, run (or with ``resume`` restore) a search, then write and print its best trial.

    Uses an already-initialised Ray as it is; otherwise connects like ``distmeta train``
    (``ray.address`` / ``RAY_ADDRESS``, else a private Ray on 127.0.0.1).

    Args:
        path: the tune YAML, or its content as a mapping.
        overrides: ``key=value`` for the search or its base config.
        resume: restore the search's stored experiment and finish it.
        callbacks: Ray Tune callbacks.

    Returns:
        :func:`summarise`'s summary, with ``result_grid`` (Tune's ``ResultGrid``).
    """
    search = load_search(path, overrides)
    if search.local_storage:  # Tuner.restore unpickles what it finds there: nobody else may write it
        from distmeta.security import check_private_dir

        check_private_dir(search.experiment_path, "Tune storage_path")
    from distmeta.distributed import session
    from distmeta.sweeps.fit import check_fits

    ray_session = session.connect(search.base_cfg.ray)
    try:
        spec = search.spec
        pgf = trial_resources(search.base_cfg, spec.driver_cpus, spec.driver_gpus, spec.placement_strategy)
        check_fits(pgf.bundles, spec.placement_strategy, search.base_cfg.ray, "one trial", FIT_HINT)
        if search.local_storage:
            search.experiment_path.mkdir(parents=True, exist_ok=True)
        log_path = (search.experiment_path if search.local_storage else Path("runs") / spec.name) / RAY_LOG_FILE
        print(f"[tune] {spec.num_samples} trials of {search.metric} ({spec.mode}); Ray's own output: {log_path}",
              flush=True)
        with RayLog(log_path) as log:
            try:
                lines = TrialLines(log.say, search.metric)
                grid = build_tuner(search, callbacks=[*(callbacks or []), lines], resume=resume).fit()
            finally:
                ray_session.close()  # Ray's last (deduplicated) lines come out at shutdown: into the log too
        summary = summarise(search, grid)
        summary["result_grid"] = grid
        return summary
    finally:
        ray_session.close()


__all__ = ["BEST_CONFIG_FILE", "BEST_FILE", "build_tuner", "format_summary", "run_search", "summarise"]
