"""What a run tells its user: the start-up summary, validation lines, warnings about settings that do nothing.

Pure formatting over the config, the prepared experiment and the backend: the Trainer prints
these (:mod:`distmeta.training.trainer`), so a run says once what it loaded and where it runs, and
each meta-validation reads as accuracy in % ± its 95 % CI next to the best so far.
"""
from __future__ import annotations

import json
import math
from typing import Any, Iterator

from distmeta.config import PRETRAINED_MODELS, Config

#: Where the encoder before meta-training is logged (metrics.jsonl, TensorBoard): ``baseline/<setting>/<metric>``.
BASELINE_PREFIX = "baseline/"


def validation_warnings(cfg: Config, has_val: bool) -> list[str]:
    """Settings under which meta-validation never runs, though something relies on it.

    Args:
        cfg: the run's config (``run.eval_every``, ``train.steps``, ``select_best``, ``patience``).
        has_val: whether the experiment has meta-validation classes (or is a regression).
    Returns:
        One message per problem, naming the keys to change; empty when validation runs as asked.
    """
    every, steps, t = cfg.run.eval_every, cfg.train.steps, cfg.train
    relies = [k for k, on in (("train.select_best", t.select_best), ("train.patience", t.patience)) if on]
    off = f" ({' and '.join(relies)} will do nothing: the last parameters are meta-tested)" if relies else ""
    if every and not has_val:
        return [f"run.eval_every={every}, but there are no meta-validation classes (data.split.val=0), so "
                f"meta-validation never runs{off}; give data.split.val a share of the classes"]
    if every and steps < every:
        return [f"train.steps={steps} < run.eval_every={every}: meta-validation never runs during meta-training"
                f"{off}; set run.eval_every={max(1, steps // 4)} (at most train.steps) or 0 to turn it off knowingly"]
    if not every and relies:
        return [f"run.eval_every=0 turns meta-validation off, so {' and '.join(relies)} will do nothing; "
                f"set run.eval_every to a number of steps"]
    return []


def _pct(x: float, ci: float | None = None) -> str:
    if ci is None or math.isnan(ci):
        return f"{100 * x:.2f}%"
    return f"{100 * x:.2f} ± {100 * ci:.2f}%"


def validation_line(step: int, val: dict[str, float], best: tuple[int, float] | None) -> str:
    """``step 50: val accuracy 71.20 ± 1.85% (best 72.00% at step 25), loss 0.8123``; MSE for regression.

    Args:
        step: the step validated (0: before meta-training).
        val: :meth:`~distmeta.training.evaluation.Evaluator.validate`'s summary.
        best: ``(step, score)`` of the best meta-validation so far (accuracy, or minus the MSE), or None.
    Returns:
        One line: the CI once, the best so far, and each ``data.mixture`` source's accuracy or MSE.
    """
    head = f"step {step}{' (before meta-training)' if step == 0 else ''}: val"
    if "accuracy" in val:
        line = f"{head} accuracy {_pct(val['accuracy'], val.get('accuracy_ci95'))}"
        if best is not None:
            line += f" (best {_pct(best[1])} at step {best[0]})"
        if "loss" in val:
            line += f", loss {val['loss']:.4f}"
        key = "accuracy"
    else:
        line = f"{head} mse {val['loss']:.4f} ± {val.get('loss_ci95', float('nan')):.4f}"
        if best is not None:
            line += f" (best {-best[1]:.4f} at step {best[0]})"
        key = "loss"
    sources = sorted(k for k in val if k.startswith("source") and k.endswith(f"/{key}"))
    if sources:
        shown = (_pct(val[k]) if key == "accuracy" else f"{val[k]:.4f}" for k in sources)
        line += " | " + ", ".join(f"{k.split('/')[0]} {v}" for k, v in zip(sources, shown))
    return line


def result_rows(results: dict[str, Any]) -> Iterator[tuple[str, dict[str, float]]]:
    """``(prefix, metrics)`` per meta-test setting (``test/<setting>/``) and per setting of the baseline on the
    same episodes (``baseline/<setting>/``: the frozen encoder, the fine-tuned head), for the metrics log."""
    for key, prefix in (("test", "test/"), ("before_meta_training", BASELINE_PREFIX)):
        for name, row in (results.get(key) or {}).items():
            yield f"{prefix}{name}/", {k: float(v) for k, v in row.items()}


def log_results(logger: Any, step: int, results: dict[str, Any]) -> None:
    """Log a meta-test's results and its baselines at ``step`` (metrics.jsonl and TensorBoard)."""
    for prefix, row in result_rows(results):
        logger.log(step, row, prefix=prefix)


def announce(cfg: Config, exp: Any, backend: Any, has_val: bool) -> None:
    """Print :func:`startup_summary` once and warn (UserWarning) about each of :func:`validation_warnings`."""
    import warnings

    print(startup_summary(cfg, exp, backend), flush=True)
    for message in validation_warnings(cfg, has_val):
        warnings.warn(message, UserWarning, stacklevel=3)


def _data_lines(exp: Any) -> list[str]:
    """Per source: its rows, classes and the classes (and rows) of each split; sinusoid: the task family."""
    lines = []
    for c, src in enumerate(exp.sources):
        name = f"data{f' source {c}' if len(exp.sources) > 1 else ''}"
        if src.data is None:
            lines.append(f"{name}: {src.cfg.source} regression, {src.cfg.shots} shots + {src.cfg.queries} queries "
                         f"per task")
            continue
        counts = src.data.class_counts()
        parts = [f"{part} {len(getattr(src.split, part))} classes ({int(counts[getattr(src.split, part)].sum())} rows)"
                 for part in ("train", "val", "test")]
        lines.append(f"{name}: {src.cfg.source}, {len(src.data)} rows, {src.data.num_classes} classes; "
                     f"split: {', '.join(parts)}")
    return lines


def _layers(cfg: Config) -> str:
    """How deep the encoder is: a pretrained one's ``config.json``, else the config's own sizes."""
    m = cfg.model
    if m.name in PRETRAINED_MODELS:
        from distmeta.models import pretrained_dir

        where = pretrained_dir(cfg)
        try:
            doc = json.loads((where / "config.json").read_text())
        except (OSError, ValueError):
            doc = {}
        layers = doc.get("num_hidden_layers", doc.get("n_layers", "?"))
        return f"{where}, {layers} layers, pooling {m.pooling}"
    return {"transformer": f"{m.layers} layers of width {m.dim}", "bag": f"an embedding bag of width {m.dim}",
            "mlp": f"hidden layers {m.hidden}"}.get(m.name, "")


def _encoder_line(cfg: Config, exp: Any, meta: dict[str, Any]) -> str:
    """The encoder, what meta-training changes (with its parameter count) and what the prefix cache freezes."""
    size = sum(int(t.numel()) for t in meta.values())
    line = (f"encoder: {cfg.model.name} ({_layers(cfg)}); meta-trains model.trainable={cfg.model.trainable} "
            f"({size:,} parameters), {cfg.algorithm.name}")
    if exp.prefix:
        line += f"; {exp.prefix['layers']} frozen layers cached"
    return line


def _actors_line(cfg: Config, backend: Any) -> str:
    """How many workers compute, on which resources (and on how many Ray nodes)."""
    res = cfg.resources
    if res.workers == 0:
        device = getattr(getattr(backend, "worker", None), "device", res.device)
        return f"actors: none, one in-process worker (resources.workers=0) on {device}"
    infos = list(getattr(backend, "infos", []) or [])
    nodes = len({i.get("node") for i in infos}) if infos else 0
    devices = sorted({str(i.get("device")) for i in infos}) or ["?"]
    gpus = f", {res.gpus_per_worker:g} GPU" if res.gpus_per_worker else ""
    where = f" on {nodes} node{'s' if nodes != 1 else ''}" if nodes else ""
    return (f"actors: {backend.num_workers} Ray actors x ({res.cpus_per_worker:g} CPU{gpus}, device "
            f"{'/'.join(devices)}){where}")


def startup_summary(cfg: Config, exp: Any, backend: Any) -> str:
    """What the run loaded and where it runs, printed once before the first step.

    Args:
        cfg: the run's config.
        exp: the prepared :class:`~distmeta.experiment.Experiment`.
        backend: the started backend (its ``num_workers``, a Ray pool's ``infos``, ``initial_meta``).
    Returns:
        Three or more lines: data (rows, classes, split sizes), encoder (path, layers, trainable part,
        pooling), actors (how many, on which resources).
    """
    return "\n".join([*_data_lines(exp), _encoder_line(cfg, exp, backend.initial_meta), _actors_line(cfg, backend)])


__all__ = ["BASELINE_PREFIX", "announce", "log_results", "result_rows", "startup_summary", "validation_line",
           "validation_warnings"]
