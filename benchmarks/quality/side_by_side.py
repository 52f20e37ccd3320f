"""distmeta beside what a practitioner would use instead, per encoder, on the same meta-test episodes.

Reads what :mod:`benchmarks.quality.table` and :mod:`benchmarks.quality.setfit_peer` wrote and runs
nothing::

    python -m benchmarks.quality.side_by_side \\
        --table MiniLM=benchmarks/results/quality/quality.json#default \\
        --table MPNet=benchmarks/results/quality/mpnet/quality.json \\
        --setfit MiniLM='benchmarks/results/quality/setfit-all-MiniLM-L6-v2-*.json' \\
        --setfit MPNet='benchmarks/results/quality/setfit-all-mpnet-base-v2-*.json' \\
        [--out benchmarks/results/quality/side_by_side]

``--table ENCODER=quality.json[#CONFIG]`` names the encoder of the quality table's runs (only the
runs of ``CONFIG`` when given). Each finished run gives, on its 600 episodes per setting: the frozen
encoder (cosine nearest centroid), the fine-tuned head, distmeta's meta-trained model, and, when the
run scored them (``eval.transductive``), the transductive frozen and meta-trained rows.
``--setfit ENCODER=GLOB`` adds SetFit's JSON reports (one per corpus): their episodes are the first
*N* of the same 600, and their difference to the frozen encoder is paired per episode.

Writes ``side_by_side.md`` (every row with accuracy ± 95 % CI, its difference to the frozen encoder of
the same encoder, and its wall time; then the error reduction of meta-training per encoder) and
``side_by_side.png`` (accuracy against wall time per corpus and setting; the frozen encoder and the
fine-tuned head, which need no training, as lines). Wall times: distmeta's is the whole ``distmeta
train`` command (data, cache, training, meta-test with baselines); SetFit's is its mean seconds per
episode times the table's episodes (training a model per episode is the method), a projection where
fewer episodes were run.
"""
from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path
from typing import Any

from benchmarks.quality.table import PLOTTED, minutes

ROOT = Path(__file__).resolve().parents[2]
FROZEN, HEAD, META, SETFIT = "frozen encoder", "fine-tuned head", "distmeta (meta-trained)", "SetFit"
FROZEN_T, META_T = "frozen encoder, transductive", "distmeta, transductive"


def parse_source(item: str, flag: str) -> tuple[str, str]:
    """``MPNet=path`` -> ("MPNet", "path"); a clear error for anything else."""
    label, sep, path = item.partition("=")
    if not sep or not label or not path:
        raise argparse.ArgumentTypeError(f"{flag} {item!r}: expected ENCODER=PATH, e.g. MPNet=out/quality.json")
    return label, path


def corpus_of(source: str) -> str:
    """The corpus name of a ``data.source``: a parquet file's stem, else the source itself (``icd10cm``)."""
    return Path(source.split(":", 1)[1]).stem if ":" in source else source


def _row(corpus: str, setting: str, method: str, encoder: str, block: dict[str, Any], key: str, **extra: Any) -> dict:
    return {"corpus": corpus, "setting": setting, "method": method, "encoder": encoder,
            "episodes": int(block.get("episodes", 0)), "acc": block[key],
            "ci": block.get(f"{key}_ci95", block.get("ci95", 0.0)), **extra}


def table_rows(report: dict[str, Any], encoder: str, config: str | None) -> list[dict[str, Any]]:
    """Rows of every finished run of a quality report (only ``config``'s when given).

    Args:
        report: a ``quality.json`` of :mod:`benchmarks.quality.table`.
        encoder: the label its runs' encoder gets (``MiniLM``).
        config: a ``config_name`` to keep, or None for every run.

    Returns:
        One row per method and setting: frozen, fine-tuned head, meta-trained and, where scored,
        the two transductive rows; the meta-trained rows carry the run's wall time.
    """
    rows: list[dict[str, Any]] = []
    for run in report["runs"]:
        if run.get("status") != "ok" or (config and run["config_name"] != config):
            continue
        res, wall = run["results"], run["wall_s"]
        for setting, test in res["test"].items():
            base = res.get("before_meta_training", {}).get(setting)
            if base is None:
                continue
            if "episodes" not in base:
                base = {**base, "episodes": test.get("episodes", 0)}
            args = (run["corpus"], setting)
            rows += [_row(*args, FROZEN, encoder, base, "accuracy"),
                     _row(*args, HEAD, encoder, base, "accuracy_finetune"),
                     _row(*args, META, encoder, test, "accuracy", wall_s=wall)]
            if "accuracy_transductive" in test and "accuracy_transductive" in base:
                rows += [_row(*args, FROZEN_T, encoder, base, "accuracy_transductive"),
                         _row(*args, META_T, encoder, test, "accuracy_transductive", wall_s=wall)]
    return rows


def setfit_rows(report: dict[str, Any], encoder: str, table_episodes: int) -> list[dict[str, Any]]:
    """One SetFit row per setting of a ``setfit_peer`` report, with its paired difference to the frozen encoder.

    Args:
        report: the JSON :mod:`benchmarks.quality.setfit_peer` wrote for one corpus.
        encoder: the label of its encoder.
        table_episodes: episodes per setting in the quality table, for the projected wall time.

    Returns:
        Rows with ``paired`` (SetFit minus frozen, mean and CI over the same episodes) and ``wall_s``
        (mean seconds per episode times ``table_episodes``; ``projected`` when fewer were run).
    """
    corpus, rows = corpus_of(report["source"]), []
    for setting, s in report["settings"].items():
        if not s.get("episodes"):
            continue
        row = _row(corpus, setting, SETFIT, encoder, s, "accuracy", wall_s=s["seconds_per_episode_mean"] * table_episodes,
                   projected=s["episodes"] < table_episodes)
        if "minus_frozen_encoder" in s:
            row["paired"] = (s["minus_frozen_encoder"], s["minus_frozen_encoder_ci95"])
        rows.append(row)
    return rows


def vs_frozen(row: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The row's accuracy minus its encoder's frozen one, in points: paired for SetFit (its own episodes), on the
    same 600 episodes for the rest (the transductive rows against the transductive frozen encoder)."""
    if "paired" in row:
        d, ci = row["paired"]
        return f"{100 * d:+.2f} ± {100 * ci:.2f} (paired, {row['episodes']} eps)"
    ref = FROZEN_T if row["method"] in (FROZEN_T, META_T) else FROZEN
    if row["method"] == ref:
        return "—"
    base = next((r for r in rows if (r["corpus"], r["setting"], r["encoder"], r["method"])
                 == (row["corpus"], row["setting"], row["encoder"], ref)), None)
    return "—" if base is None else f"{100 * (row['acc'] - base['acc']):+.2f}"


def wall_text(row: dict[str, Any]) -> str:
    """A row's wall time as shown: minutes and seconds, marked when projected; a dash where nothing is trained."""
    if "wall_s" not in row:
        return "— (no training)"
    text = minutes(row["wall_s"])
    return text + " (projected)" if row.get("projected") else text


def render_rows(rows: list[dict[str, Any]]) -> str:
    """The Markdown table: corpora and settings in input order, methods grouped by encoder."""
    out = ["| corpus | setting | encoder | method | episodes | accuracy ± CI | vs frozen, same encoder (points) "
           "| wall time |", "|" + " --- |" * 8]
    keys = list(dict.fromkeys((r["corpus"], r["setting"]) for r in rows))
    for corpus, setting in keys:
        for r in (r for r in rows if (r["corpus"], r["setting"]) == (corpus, setting)):
            out.append(f"| {corpus} | {setting} | {r['encoder']} | {r['method']} | {r['episodes']} | "
                       f"{100 * r['acc']:.2f} ± {100 * r['ci']:.2f} | {vs_frozen(r, rows)} | {wall_text(r)} |")
    return "\n".join(out) + "\n"


def error_reduction(meta: float, frozen: float) -> float:
    """The fraction of the frozen encoder's error that meta-training removes."""
    return (meta - frozen) / (1.0 - frozen) if frozen < 1.0 else 0.0


def render_reductions(rows: list[dict[str, Any]]) -> str:
    """Per corpus and setting and encoder: frozen -> meta-trained accuracy, the error reduction, and distmeta's lead
    over SetFit estimated through the frozen encoder both are measured against (SetFit's episodes are a subset)."""
    encoders = list(dict.fromkeys(r["encoder"] for r in rows if r["method"] == META))
    pick = {(r["corpus"], r["setting"], r["encoder"], r["method"]): r for r in rows}
    head = [f"{e}: frozen → meta-trained (error reduction) | {e}: distmeta − SetFit" for e in encoders]
    out = ["| corpus | setting | " + " | ".join(head) + " |", "|" + " --- |" * (2 + 2 * len(encoders))]
    for corpus, setting in dict.fromkeys((r["corpus"], r["setting"]) for r in rows):
        cells = []
        for e in encoders:
            f, m, s = (pick.get((corpus, setting, e, k)) for k in (FROZEN, META, SETFIT))
            if f is None or m is None:
                cells += ["—", "—"]
                continue
            cells.append(f"{100 * f['acc']:.2f} → {100 * m['acc']:.2f} ({100 * error_reduction(m['acc'], f['acc']):+.1f}%)")
            lead = None if s is None or "paired" not in s else m["acc"] - f["acc"] - s["paired"][0]
            cells.append("—" if lead is None else f"{100 * lead:+.2f} ({s['episodes']} SetFit eps)")
        out.append(f"| {corpus} | {setting} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def plotted_accuracy(row: dict[str, Any], rows: list[dict[str, Any]]) -> tuple[float, float]:
    """(accuracy, CI) as plotted: SetFit's, on fewer episodes, is placed like for like as its encoder's frozen accuracy
    over all the table's episodes plus SetFit's paired gain on its own (CI: the paired one); the rest as measured."""
    frozen = next((r for r in rows if r["method"] == FROZEN and (r["corpus"], r["setting"], r["encoder"])
                   == (row["corpus"], row["setting"], row["encoder"])), None)
    if row["method"] != SETFIT or "paired" not in row or frozen is None:
        return row["acc"], row["ci"]
    return frozen["acc"] + row["paired"][0], row["paired"][1]


def render_plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Accuracy against wall time (log scale), one panel per corpus and setting; colour = encoder, marker = method;
    the frozen encoder (dashed) and the fine-tuned head (dotted) are lines in their encoder's colour; SetFit is
    placed by :func:`plotted_accuracy`."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    from matplotlib.lines import Line2D

    corpora = list(dict.fromkeys(r["corpus"] for r in rows))
    encoders = list(dict.fromkeys(r["encoder"] for r in rows))
    colour = {e: plt.get_cmap("tab10")(i % 10) for i, e in enumerate(encoders)}
    marker = {META: "o", META_T: "D", SETFIT: "s"}
    lines = {FROZEN: "--", HEAD: ":", FROZEN_T: "-."}
    fig, axes = plt.subplots(len(corpora), len(PLOTTED), figsize=(12, 3.6 * len(corpora) + 0.6), squeeze=False)
    for i, corpus in enumerate(corpora):
        for ax, (setting, title) in zip(axes[i], PLOTTED):
            for r in (r for r in rows if (r["corpus"], r["setting"]) == (corpus, setting)):
                if r["method"] in lines:
                    ax.axhline(100 * r["acc"], color=colour[r["encoder"]], ls=lines[r["method"]], lw=1.1, alpha=0.8)
                    continue
                hollow = r.get("projected")
                acc, ci = plotted_accuracy(r, rows)
                ax.errorbar(r["wall_s"] / 60, 100 * acc, yerr=100 * ci, fmt=marker[r["method"]],
                            color=colour[r["encoder"]], mfc="white" if hollow else colour[r["encoder"]], ms=7,
                            capsize=3, mec=colour[r["encoder"]] if hollow else "black", mew=0.8)
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}"))
            ax.xaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(  # 2, 5, 20, 50 ...: plain minutes
                lambda x, _: f"{x:g}" if f"{x:g}"[0] in "25" else ""))
            ax.set_title(f"{corpus}, {title}", fontsize=10)
            ax.set_xlabel("wall time (minutes, log scale)", fontsize=9)
            ax.set_ylabel("accuracy (%)", fontsize=9)
            ax.grid(True, alpha=0.3, which="both")
    handles = [Line2D([], [], ls="", marker="s", color=colour[e], ms=9, label=e) for e in encoders]
    handles += [Line2D([], [], ls="", marker=m, color="grey", mec="black", ms=7, label=k) for k, m in marker.items()]
    handles += [Line2D([], [], ls="", marker="s", mfc="white", mec="grey", ms=7, label="SetFit, time\nprojected to 600 eps")]
    handles += [Line2D([], [], ls=s, color="grey", label=k) for k, s in lines.items()]
    fig.legend(handles=handles, loc="upper center", ncol=5, frameon=False, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 1.1 / fig.get_figheight()))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def collect(tables: list[tuple[str, str]], setfits: list[tuple[str, str]]) -> tuple[list[dict[str, Any]], int]:
    """All rows from the given reports, and the table's episodes per setting."""
    rows: list[dict[str, Any]] = []
    episodes = 600
    for encoder, spec in tables:
        path, _, config = spec.partition("#")
        report = json.loads(Path(path).read_text())
        episodes = int(report.get("episodes", episodes))
        rows += table_rows(report, encoder, config or None)
    for encoder, pattern in setfits:
        files = sorted(glob.glob(pattern))
        if not files:
            raise SystemExit(f"--setfit {encoder}={pattern}: no file matches")
        for f in files:
            rows += setfit_rows(json.loads(Path(f).read_text()), encoder, episodes)
    corpora, encoders = (list(dict.fromkeys(r[k] for r in rows)) for k in ("corpus", "encoder"))
    rows.sort(key=lambda r: (corpora.index(r["corpus"]), r["setting"], encoders.index(r["encoder"])))  # stable
    return rows, episodes


def main(argv: list[str] | None = None) -> int:
    """Read the reports, write ``side_by_side.md`` and ``side_by_side.png`` into ``--out``; prints the tables."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--table", action="append", default=[], type=lambda s: parse_source(s, "--table"),
                    metavar="ENCODER=quality.json[#CONFIG]", help="a quality table report and its encoder's label")
    ap.add_argument("--setfit", action="append", default=[], type=lambda s: parse_source(s, "--setfit"),
                    metavar="ENCODER=GLOB", help="SetFit reports (setfit_peer JSON) of that encoder")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/quality/side_by_side")
    args = ap.parse_args(argv)
    if not args.table:
        ap.error("give at least one --table ENCODER=quality.json")
    rows, episodes = collect(args.table, args.setfit)
    args.out.mkdir(parents=True, exist_ok=True)
    text = (render_rows(rows) + f"\n{episodes} episodes per setting in the table's rows, 95% CI.\n\n"
            + render_reductions(rows))
    (args.out / "side_by_side.md").write_text(text)
    render_plot(rows, args.out / "side_by_side.png")
    print(text + f"wrote {args.out / 'side_by_side.md'} and {args.out / 'side_by_side.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
