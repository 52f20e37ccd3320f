"""Quality table: held-out accuracy of shipped configs on ICD-10-CM and the extra corpora.

For every (config, corpus) pair this runs, one at a time, as a subprocess::

    .venv/bin/distmeta train --config C <corpus overrides> run.dir=OUT/runs/<config>-<corpus> \\
        eval.episodes=N run.progress=false [--set overrides] --overwrite

and times the whole command (data, caches, meta-training, meta-test). The config is
otherwise used as shipped: the point is to measure what users get. Corpora: ``icd10cm``
(the config's own source) and the parquet files that ``python -m benchmarks.corpora`` builds
(``debian-sections``, ``wordnet-topics``, ``fortunes``), read with ``data.max_length=64``.

    python -m benchmarks.quality.table --configs configs/default.yaml configs/bag_protonet.yaml \\
        --corpora icd10cm debian-sections wordnet-topics fortunes [--episodes 600] \\
        [--out benchmarks/results/quality] [--set key=value ...] [--rerun] [--dry-run]
    python -m benchmarks.quality.table --from-json benchmarks/results/quality/quality.json

Writes OUT/quality.json (every run's numbers, wall time, command, git commit, date,
machine), OUT/quality.md (the table in docs/results.md, also printed) and OUT/quality.png (5-way
1-shot and 5-shot accuracy against wall time). ``--set`` is appended to every command;
it is a smoke-test knob (``--set train.steps=5 --set resources.workers=0``), not for the table.
A run dir whose results.json is newer than its config and corpus files and whose
recorded command matches is reused unless ``--rerun``. A failed run is recorded with
its last 20 stderr lines, shown as FAILED, and the script exits 1; so does a missing
corpus, which is skipped and listed as not run.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.corpora import PARQUET, corpora_dir, corpus_overrides

ROOT = Path(__file__).resolve().parents[2]
CORPORA = ["icd10cm", *sorted(PARQUET)]
SIDECAR = "quality_run.json"  # written into each run dir: the command, its exit status and wall time
PLOTTED = [("5way_1shot", "5-way 1-shot"), ("5way_5shot", "5-way 5-shot")]


def distmeta_exe() -> str:
    """The repository's ``.venv/bin/distmeta``, else the one next to this Python, else on PATH."""
    for cand in (ROOT / ".venv/bin/distmeta", Path(sys.executable).parent / "distmeta"):
        if cand.exists():
            return str(cand)
    return shutil.which("distmeta") or "distmeta"


def build_command(config: Path, corpus: str, run_dir: Path, episodes: int, extra: list[str], cdir: Path) -> list[str]:
    """The full ``distmeta train`` argv for one (config, corpus) run."""
    return [distmeta_exe(), "train", "--config", str(config), *corpus_overrides(corpus, cdir),
            f"run.dir={run_dir}", f"eval.episodes={episodes}", "run.progress=false", *extra, "--overwrite"]


def reusable(run_dir: Path, cmd: list[str], inputs: list[Path]) -> dict[str, Any] | None:
    """The recorded run in ``run_dir`` if it succeeded with the same command after ``inputs`` last changed."""
    side, res = run_dir / SIDECAR, run_dir / "results.json"
    if not (side.exists() and res.exists()):
        return None
    rec = json.loads(side.read_text())
    newest_input = max(p.stat().st_mtime for p in inputs if p.exists())
    if rec.get("returncode") != 0 or rec.get("command", [None])[1:] != cmd[1:] or res.stat().st_mtime <= newest_input:
        return None
    return {**rec, "results": json.loads(res.read_text()), "reused": True}


def run_one(cmd: list[str], run_dir: Path, log_dir: Path) -> dict[str, Any]:
    """Run ``cmd`` with stdout/stderr to ``log_dir``; returns its record (results, wall time, stderr tail)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    out_log, err_log = log_dir / f"{run_dir.name}.stdout", log_dir / f"{run_dir.name}.stderr"
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    t0 = time.perf_counter()
    with out_log.open("w") as so, err_log.open("w") as se:
        rc = subprocess.run(cmd, stdout=so, stderr=se, cwd=ROOT, env=env).returncode
    wall = time.perf_counter() - t0
    rec: dict[str, Any] = {"command": cmd, "returncode": rc, "wall_s": wall, "logs": [str(out_log), str(err_log)]}
    if rc == 0 and (run_dir / "results.json").exists():
        (run_dir / SIDECAR).write_text(json.dumps(rec, indent=2))
        return {**rec, "results": json.loads((run_dir / "results.json").read_text()), "reused": False}
    rec["stderr_tail"] = err_log.read_text(errors="replace").splitlines()[-20:]
    if run_dir.is_dir():
        (run_dir / SIDECAR).write_text(json.dumps(rec, indent=2))
    return {**rec, "reused": False}


def machine() -> dict[str, Any]:
    """CPU count available to this process, CPU model, OS and Python."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = platform.processor() or "unknown"
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"nproc": nproc, "cpu_model": model, "platform": platform.platform(), "python": platform.python_version()}


def git_commit() -> str:
    """HEAD's commit, with ``-dirty`` when tracked files differ from it."""
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    head = git("rev-parse", "HEAD") or "unknown"
    return head + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def pct(block: dict[str, Any], key: str) -> str:
    """``block[key]`` ± its CI as a percentage, or an em dash when absent."""
    if key not in block:
        return "—"
    return f"{100 * block[key]:.2f} ± {100 * block.get(f'{key}_ci95', block.get('ci95', 0.0)):.2f}"


def minutes(seconds: float) -> str:
    """Wall time as ``M min S s``."""
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s} s" if m else f"{s} s"


def render_table(report: dict[str, Any]) -> str:
    """The Markdown quality table (one row per run and setting; FAILED and not-run rows included)."""
    head = ("| corpus | config | setting | meta-trained acc ± CI | frozen encoder (cosine centroid) ± CI "
            "| fine-tuned head ± CI | error reduction vs frozen | wall time |")
    rows = [head, "|" + " --- |" * 8]
    for r in report["runs"]:
        c, k = r["corpus"], r["config_name"]
        if r["status"] == "not run":
            rows.append(f"| {c} | {k} | — | NOT RUN: {r['reason']} | | | | |")
        elif r["status"] == "failed":
            last = (r.get("stderr_tail") or [""])[-1].strip().replace("|", "\\|")[:100]
            rows.append(f"| {c} | {k} | — | FAILED (exit {r['returncode']}): {last} | | | | {minutes(r['wall_s'])} |")
        else:
            res = r["results"]
            for setting, test in res["test"].items():
                base = res.get("before_meta_training", {}).get(setting, {})
                er = f"{100 * test['error_reduction']:+.1f}%" if "error_reduction" in test else "—"
                rows.append(f"| {c} | {k} | {setting} | {pct(test, 'accuracy')} | {pct(base, 'accuracy')} "
                            f"| {pct(base, 'accuracy_finetune')} | {er} | {minutes(r['wall_s'])} |")
    m = report["machine"]
    rows.append(f"\n{report['episodes']} episodes per setting, 95% CI; commit {report['git_commit'][:12]}, "
                f"{report['date']}, {m['nproc']} CPUs ({m['cpu_model']}).")
    if report.get("extra_overrides"):
        rows.append(f"Smoke-test overrides on every run (not the shipped configs): {' '.join(report['extra_overrides'])}.")
    return "\n".join(rows) + "\n"


def render_plot(report: dict[str, Any], path: Path) -> None:
    """Accuracy against wall time (one panel per plotted setting) with each run's frozen baseline dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    ok = [r for r in report["runs"] if r["status"] == "ok"]
    corpora = list(dict.fromkeys(r["corpus"] for r in report["runs"]))
    configs = list(dict.fromkeys(r["config_name"] for r in report["runs"]))
    colour = {c: plt.get_cmap("tab10")(i % 10) for i, c in enumerate(corpora)}
    marker = {k: "osD^vP*Xph"[i % 10] for i, k in enumerate(configs)}
    fig, axes = plt.subplots(1, len(PLOTTED), figsize=(6 * len(PLOTTED) + 2.5, 5), squeeze=False)
    for ax, (setting, title) in zip(axes[0], PLOTTED):
        for r in ok:
            test = r["results"]["test"].get(setting)
            if test is None:
                continue
            col, mk = colour[r["corpus"]], marker[r["config_name"]]
            ax.errorbar(r["wall_s"] / 60, 100 * test["accuracy"], yerr=100 * test["ci95"], fmt=mk, color=col,
                        ms=8, capsize=4, mec="black", mew=0.6)
            base = r["results"].get("before_meta_training", {}).get(setting)
            if base:  # the frozen encoder of this config on this corpus; hollow config marker at the right edge
                ax.axhline(100 * base["accuracy"], color=col, ls="--", lw=1.2, alpha=0.8)
                ax.plot([1.0], [100 * base["accuracy"]], marker=mk, mfc="white", mec=col, ms=7,
                        transform=ax.get_yaxis_transform(), clip_on=False)
        ax.set_title(f"held-out {title}")
        ax.set_xlabel("wall time of the whole run (minutes)")
        ax.set_ylabel("accuracy (%)")
        ax.set_xlim(0, 1.15 * max([r["wall_s"] / 60 for r in ok] or [1.0]))  # room for the baseline markers
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=10)
    handles = [Line2D([], [], ls="", marker="s", color=colour[c], ms=9, label=c) for c in corpora]
    handles += [Line2D([], [], ls="", marker=marker[k], color="grey", mec="black", ms=8, label=k) for k in configs]
    handles += [Line2D([], [], ls="--", color="grey", label="frozen encoder\n(cosine centroid;\nhollow: its config)")]
    fig.legend(handles=handles, loc="center right", title="colour: corpus\nmarker: config", frameon=False, fontsize=10)
    note = f"{report['episodes']} episodes per setting, error bars 95% CI"
    if report.get("extra_overrides"):
        note += "; smoke-test overrides: " + " ".join(report["extra_overrides"])
    fig.suptitle(note, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1 - 2.1 / fig.get_figwidth(), 1))
    fig.savefig(path, dpi=130)
    plt.close(fig)


def write_outputs(report: dict[str, Any], out: Path) -> None:
    """quality.md and quality.png in ``out``; the table is also printed."""
    out.mkdir(parents=True, exist_ok=True)
    table = render_table(report)
    (out / "quality.md").write_text(table)
    render_plot(report, out / "quality.png")
    print(table)
    print(f"wrote {out / 'quality.md'} and {out / 'quality.png'}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", nargs="+", type=Path, default=[Path("configs/default.yaml")])
    ap.add_argument("--corpora", nargs="+", choices=CORPORA, default=CORPORA)
    ap.add_argument("--episodes", type=int, default=600, help="meta-test episodes per setting")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default benchmarks/results/quality; "
                                                           "with --from-json, the JSON's folder)")
    ap.add_argument("--corpora-dir", type=Path, default=corpora_dir(), help="where the parquet corpora are")
    ap.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                    help="override appended to every command; a smoke-test knob (train.steps=5), not for the table")
    ap.add_argument("--rerun", action="store_true", help="run again even where a matching result exists")
    ap.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    ap.add_argument("--from-json", type=Path, help="re-render quality.md and quality.png from this quality.json")
    args = ap.parse_args(argv)

    if args.from_json:
        report = json.loads(args.from_json.read_text())
        write_outputs(report, args.out or args.from_json.parent)
        return 0 if all(r["status"] == "ok" for r in report["runs"]) else 1

    out = (args.out or ROOT / "benchmarks/results/quality").absolute()
    report: dict[str, Any] = {"episodes": args.episodes, "extra_overrides": args.extra, "git_commit": git_commit(),
                              "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                              "machine": machine(), "runs": []}
    for config in args.configs:
        config = config.absolute()
        for corpus in args.corpora:
            run_dir = out / "runs" / f"{config.stem}-{corpus}"
            cmd = build_command(config, corpus, run_dir, args.episodes, args.extra, args.corpora_dir)
            entry: dict[str, Any] = {"config": str(config), "config_name": config.stem, "corpus": corpus,
                                     "run_dir": str(run_dir), "command": cmd}
            parquet = args.corpora_dir / f"{corpus}.parquet"
            if corpus in PARQUET and not parquet.exists():
                build = f"python -m benchmarks.corpora --only {corpus} --out {args.corpora_dir}"
                entry.update(status="not run", reason=f"{parquet} missing; build it with `{build}`")
                print(f"!! NOT RUN {config.stem} on {corpus}: {entry['reason']}", file=sys.stderr)
                report["runs"].append(entry)
                continue
            print("$ " + " ".join(cmd), flush=True)
            if args.dry_run:
                continue
            inputs = [config, parquet] if corpus in PARQUET else [config]
            rec = None if args.rerun else reusable(run_dir, cmd, inputs)
            if rec is not None:
                print(f"   reusing {run_dir} (results.json newer than its inputs, same command)")
            else:
                rec = run_one(cmd, run_dir, out / "logs")
            entry.update(rec, status="ok" if rec["returncode"] == 0 and "results" in rec else "failed")
            print(f"   {entry['status']} in {minutes(entry['wall_s'])}", flush=True)
            if entry["status"] == "failed":
                print("   " + "\n   ".join(entry.get("stderr_tail", [])), file=sys.stderr)
            report["runs"].append(entry)
    if args.dry_run:
        return 1 if report["runs"] else 0  # only not-run entries are recorded in a dry run
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {out / 'quality.json'}")
    write_outputs(report, out)
    bad = [f"{r['config_name']}-{r['corpus']} ({r['status']})" for r in report["runs"] if r["status"] != "ok"]
    if bad:
        print(f"!! not ok: {', '.join(bad)}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
