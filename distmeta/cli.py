"""``distmeta train | eval | config | tune | grid``: the command-line front door.

``distmeta`` alone prints the help, ``distmeta --version`` the version, ``distmeta <command>
--help`` each command's flags (every one has a help text: ``tests/test_cli.py`` walks
the parsers). ``main(argv)`` runs one from Python and returns its exit status (0 done, 1
finished with failed trials or no results, 2 a DistmetaError such as a bad config, 130
interrupted).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from distmeta import __version__
from distmeta.errors import DistmetaError
from distmeta.files import CONFIG_FILE


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="distmeta", description="Distributed meta-learning for few-shot NLP "
                                "(README.md; every config key: docs/config.md)")
    p.add_argument("--version", action="version", version=f"distmeta {__version__}",
                   help="print distmeta's version and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser("train", help="meta-train a configuration, then meta-test it")
    t.add_argument("--config", help="YAML config (default: the embedded default, configs/default.yaml)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR (a path or a URI such as "
                   "s3://bucket/run) from its latest checkpoint")
    t.add_argument("--overwrite", action="store_true", help="move an existing run in run.dir aside and start afresh")
    t.add_argument("--trust-checkpoint-config", action="store_true",
                   help="take ray.*, run.*, faults, workers and paths from the saved config too (only for runs "
                        "whose author you trust: see README, Security)")
    t.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. algorithm.inner_lr=0.1")

    e = sub.add_parser("eval", help="meta-test a checkpoint on held-out classes")
    e.add_argument("--checkpoint", required=True, help="run directory, its checkpoints/ or one step_* directory "
                   "(a path or a URI such as s3://bucket/run)")
    e.add_argument("--split", default="test", choices=["train", "val", "test"],
                   help="which classes to draw the episodes from (default: test, the held-out classes)")
    e.add_argument("--episodes", type=int, default=None, help="episodes per setting (default eval.episodes)")
    e.add_argument("--settings", default=None, help="comma-separated WAYSxSHOTS, e.g. 5x1,5x5 (default eval.settings)")
    e.add_argument("--no-baseline", action="store_true", help="skip the before-meta-training baseline")
    e.add_argument("--output", help="write the results as JSON here")
    e.add_argument("--trust-checkpoint-config", action="store_true",
                   help="take ray.*, run.*, faults, workers and paths from the saved config too (only for runs "
                        "whose author you trust: see README, Security)")
    e.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (e.g. resources.workers=2)")

    c = sub.add_parser("config", help="print the resolved config (YAML): the file, its overrides and the schema "
                       "defaults, as distmeta train would run it")
    c.add_argument("--config", help="YAML config (default: the embedded default, configs/default.yaml, or "
                   "$DISTMETA_BASE_CONFIG)")
    c.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. data.ways=10")

    tu = sub.add_parser("tune", help="Ray Tune search over meta-training runs (configs/tune_*.yaml)")
    tu.add_argument("--config", required=True, help="tune YAML: base config, search_space, metric, scheduler, ...")
    tu.add_argument("--resume", action="store_true", help="restore the search's experiment (Tuner.restore) and finish it")
    tu.add_argument("overrides", nargs="*", metavar="key=value",
                    help="tune keys (num_samples=8, scheduler.max_t=4) or base-config keys (train.steps=500)")

    ca = sub.add_parser("cache", help="list or prune distmeta's on-disk caches (token ids, tokenizers, prefix states)")
    ca.add_argument("action", choices=["list", "prune"], help="list: entries, sizes, last use; prune: remove them")
    ca.add_argument("--older-than", metavar="AGE", help="prune only entries unused for longer than AGE (30d, 12h, "
                    "90m; a bare number is days); without it, prune removes every entry")
    ca.add_argument("--root", help="the cache root (default $DISTMETA_CACHE_DIR, else ~/.cache/distmeta)")
    ca.add_argument("--prefix-dir", help="a model.cache_dir to treat as the prefix cache (default ROOT/prefix)")

    g = sub.add_parser("grid", help="meta-train and meta-test every cell of a task-distribution grid (configs/grid_*.yaml)")
    g.add_argument("--config", required=True, help="grid YAML: base config and axes, e.g. data.ways x data.shots")
    g.add_argument("overrides", nargs="*", metavar="key=value", help="grid keys (name=..., episodes=...) or base-config keys")
    return p


def _settings(text: str | None) -> list[tuple[int, int]] | None:
    if not text:
        return None
    out = []
    for item in text.split(","):
        try:
            ways, shots = item.lower().split("x")
            out.append((int(ways), int(shots)))
        except ValueError:
            raise DistmetaError(f"--settings item {item!r} is not WAYSxSHOTS (e.g. 5x1)") from None
    return out


def cmd_train(args: argparse.Namespace) -> int:
    from distmeta.config import load_config
    from distmeta.persistence.storage import is_remote, redact_uri
    from distmeta.training.trainer import Trainer

    if args.resume:
        remote = is_remote(args.resume)  # s3://bucket/run: its config.yaml is read from there
        run_dir = args.resume if remote else Path(args.resume)
        saved = f"{args.resume.rstrip('/')}/{CONFIG_FILE}" if remote else run_dir / CONFIG_FILE
        if args.config is None and not remote and not saved.exists():
            raise DistmetaError(f"--resume {run_dir}: no {CONFIG_FILE} there; is it a distmeta run directory?")
        if args.config is not None:  # the user's own file: taken whole
            cfg = load_config(args.config, [*args.overrides, f"run.dir={run_dir}"])
        else:  # the run directory's: its definition, the user's environment (distmeta.security)
            from distmeta.config import read_yaml
            from distmeta.persistence.remote_run import read_remote_config
            from distmeta.security import config_from_saved

            raw = read_remote_config(args.resume) if remote else read_yaml(saved)
            cfg = config_from_saved(raw, args.overrides, trust=args.trust_checkpoint_config,
                                    source=str(saved), pins={"run.dir": str(run_dir)})
    else:
        cfg = load_config(args.config, args.overrides)
    with Trainer(cfg, resume=bool(args.resume), overwrite=args.overwrite) as trainer:
        results = trainer.fit()
    where = redact_uri(cfg.run.dir) if is_remote(cfg.run.dir) else trainer.run_dir
    print(f"run directory: {where}  (results.json, metrics.jsonl, tensorboard/, checkpoints/)")
    return 0 if results else 1


def cmd_eval(args: argparse.Namespace) -> int:
    from distmeta.training.trainer import Trainer

    with Trainer.from_checkpoint(args.checkpoint, args.overrides, trust_config=args.trust_checkpoint_config) as trainer:
        results = trainer.evaluate(
            split=args.split, episodes=args.episodes, settings=_settings(args.settings),
            baseline=False if args.no_baseline else None,
        )
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2))
        print(f"wrote {args.output}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    """Print the config ``distmeta train`` would run with the same ``--config`` and overrides, every key resolved."""
    from distmeta.config import dump_config, load_config

    print(dump_config(load_config(args.config, args.overrides)), end="")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from ray.tune import TuneError

    from distmeta.sweeps.tune import run_search

    try:
        summary = run_search(args.config, args.overrides, resume=args.resume)
    except TuneError as err:
        print(f"distmeta tune: the search stopped: {err}\n(continue it with: distmeta tune --config {args.config} "
              f"--resume)", file=sys.stderr)
        return 1
    return 0 if summary["errored_trials"] == 0 else 1  # diverged trials are results, not errors


def cmd_grid(args: argparse.Namespace) -> int:
    from distmeta.sweeps.grid import run_grid

    run_grid(args.config, args.overrides)
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from distmeta.cache_admin import run

    print(run(args.action, args.root, args.prefix_dir, args.older_than))
    return 0


def _one_line_warnings() -> None:
    """Warnings as ``warning: message`` lines: a terminal user needs the message, not our source line."""
    import warnings

    warnings.formatwarning = lambda message, category, *args, **kwargs: f"warning: {message}\n"  # type: ignore[assignment]


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:  # bare `distmeta`: the help, not an argparse error
        parser.print_help()
        return 0
    _one_line_warnings()
    commands = {"train": cmd_train, "eval": cmd_eval, "config": cmd_config, "tune": cmd_tune, "grid": cmd_grid,
                "cache": cmd_cache}
    try:
        return commands[args.command](args)
    except DistmetaError as err:
        from distmeta.persistence.uris import redact_text

        print(f"distmeta {args.command}: error: {redact_text(str(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the latest checkpoint is kept (resume with --resume RUN_DIR)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
