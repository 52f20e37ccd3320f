"""The README's "Your own data" commands run as written, in order, one after another.

The commands are taken from README.md itself and run by bash, unchanged, from a directory that
holds what they name (`docs/examples/topics.csv`, `configs/`) and a fresh `runs/`. One thing is
scaled down, through the environment rather than the commands: `DISTMETA_BASE_CONFIG` (the base
`distmeta train` uses without `--config`, as the rest of the suite does) points at the from-scratch
bag config with fewer steps and no Ray, because the embedded default meta-trains a pretrained
encoder for minutes. `source .venv/bin/activate` puts on PATH the interpreter running this test.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def section(title: str) -> str:
    """The text of the README section ``## title``, up to the next ``## `` heading."""
    text = README.read_text()
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    assert match, f"README.md has no section '## {title}'"
    return match.group(1)


def fenced(text: str, lang: str) -> list[str]:
    """The bodies of the ```lang fenced blocks of ``text``, in order."""
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.S | re.M)


def _scaled_base(tmp_path: Path) -> Path:
    raw = yaml.safe_load((ROOT / "configs" / "bag_protonet.yaml").read_text())
    raw["resources"]["workers"] = 0  # no Ray start: the same commands, without a cluster's start-up on a shared CI machine
    raw["train"]["steps"] = 30  # seconds, not minutes (2000 steps in the shipped file)
    raw["run"].update(eval_every=10, checkpoint_every=10, progress=False)  # still validates and checkpoints
    raw["eval"]["episodes"] = 100  # the train command's own meta-test; eval's --episodes 1000 stays as written
    path = tmp_path / "scaled_bag.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _workdir(tmp_path: Path) -> Path:
    bindir = Path(sys.executable).parent
    if not (bindir / "distmeta").exists():
        pytest.skip(f"no distmeta console script beside {sys.executable} (pip install -e . first)")
    work = tmp_path / "repo"
    (work / ".venv" / "bin").mkdir(parents=True)
    (work / ".venv" / "bin" / "activate").write_text(f'export PATH="{bindir}:$PATH"\n')
    for name in ("docs", "configs"):
        (work / name).symlink_to(ROOT / name)
    return work


def test_the_inline_example_is_the_shipped_files_beginning():
    shown = fenced(section("Your own data"), "csv")
    assert len(shown) == 1, "one inline CSV example"
    head = (ROOT / "docs" / "examples" / "topics.csv").read_text().splitlines()
    assert shown[0].splitlines() == head[: len(shown[0].splitlines())]
    assert head[0] == "text,label", "the README promises the default column names text and label"


def test_your_own_data_runs_as_written_in_order(tmp_path):
    blocks = fenced(section("Your own data"), "bash")
    assert len(blocks) == 1 and "distmeta train" in blocks[0] and "distmeta eval" in blocks[0]
    work = _workdir(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env["DISTMETA_BASE_CONFIG"] = str(_scaled_base(tmp_path))
    done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", blocks[0]], cwd=work, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"the README's commands failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert "source: csv:docs/examples/topics.csv" in done.stdout, "distmeta config printed the data section"

    run = work / "runs" / "topics"
    trained = json.loads((run / "results.json").read_text())
    evaluated = json.loads((run / "eval.json").read_text())
    for name in ("5way_1shot", "5way_5shot"):
        assert evaluated["test"][name]["episodes"] == 1000, name
        # chance is 20 %: the meta-trained bag separates these toy topics well above it
        assert trained["test"][name]["accuracy"] > 0.35 and evaluated["test"][name]["accuracy"] > 0.35, name


def _commands(text: str) -> list[list[str]]:
    """Each command of the ```bash blocks of ``text`` as argv words (continuation lines joined, comments cut,
    pipelines and lists split into their commands)."""
    out = []
    for block in fenced(text, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            segment: list[str] = []
            for word in [*shlex.split(line, comments=True), ";"]:  # one command per pipeline or list member
                if word in ("|", "&&", "||", ";", ">"):
                    out += [segment] if segment else []
                    segment = []
                else:
                    segment.append(word)
    return out


def test_every_readme_command_parses_and_its_config_loads(monkeypatch):
    """The commands the README does not run here (minutes or a cluster) at least parse and load their configs."""
    from distmeta.cli import _parser
    from distmeta.config import load_config
    from distmeta.sweeps.grid import load_grid
    from distmeta.sweeps.search import load_search

    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("DISTMETA_BASE_CONFIG", raising=False)  # the README's commands see the embedded default
    checked = {"make": 0, "train": 0, "eval": 0, "config": 0, "tune": 0, "grid": 0}
    for words in _commands(README.read_text()):
        if words[:2] == ["make", "train"]:
            opts = dict(w.split("=", 1) for w in words[2:])
            load_config(opts.get("CONFIG", "configs/default.yaml"), shlex.split(opts.get("ARGS", "")))
            checked["make"] += 1
            continue
        if words[0] != "distmeta" and not (words[0].startswith("RAY_ADDRESS=") and words[1] == "distmeta"):
            continue
        argv = [w.replace("$ENCODER", str(ROOT)) for w in words[words.index("distmeta") + 1:]]
        args = _parser().parse_args(argv)
        if args.command in ("train", "config"):
            load_config(args.config, args.overrides)
        elif args.command == "tune":
            load_search(args.config, args.overrides)
        elif args.command == "grid":
            load_grid(args.config, args.overrides)
        checked[args.command] += 1
    assert all(checked.values()), f"the README shows every kind of command: {checked}"


def _anchors(md: Path) -> set[str]:
    """GitHub's anchors for the headings of a Markdown file."""
    heads = re.findall(r"^#+ (.+)$", md.read_text(), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


def test_links_in_the_readme_and_docs_resolve():
    """Every relative link of README.md and docs/*.md names a file that exists, and a heading that exists."""
    broken = []
    for md in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)\s]+)\)", md.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            where = (md.parent / path).resolve() if path else md
            if not where.exists() or (anchor and where.suffix == ".md" and anchor not in _anchors(where)):
                broken.append(f"{md.relative_to(ROOT)}: {target}")
    assert not broken, f"broken links: {broken}"
