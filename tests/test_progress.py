"""Progress output: a bar redrawn in place on a terminal, whole lines every few seconds in a log."""
from __future__ import annotations

import io
import subprocess
import sys

from distmeta.progress import LineProgress, progress_bar
from tests.helpers import SINUSOID_TINY


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_whole_lines_no_carriage_returns_and_the_final_state():
    log = io.StringIO()
    with progress_bar(total=50, desc="meta-train", unit="step", file=log, mininterval=0) as bar:
        assert isinstance(bar, LineProgress)
        for _ in range(50):
            bar.update(1)
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert lines and all(ln.startswith("meta-train:") for ln in lines), lines[:3]
    assert "50/50" in lines[-1], "the last line is the final state"
    assert len(lines) == len(set(lines)), "no line repeated"
    assert text.endswith("\n") and "\n\n" not in text


def test_a_log_is_written_at_most_once_per_interval():
    log = io.StringIO()
    bar = progress_bar(total=10_000, desc="meta-train", file=log, mininterval=3600)
    for _ in range(10_000):
        bar.update(1)
    bar.close()
    lines = log.getvalue().splitlines()
    assert len(lines) <= 2, lines  # the first draw and the final state, not one per update
    assert "10000/10000" in lines[-1]


def test_a_terminal_gets_tqdms_bar_in_place():
    tty = FakeTerminal()
    with progress_bar(total=5, desc="x", file=tty, mininterval=0) as bar:
        assert not isinstance(bar, LineProgress)
        for _ in range(5):
            bar.update(1)
    assert "\r" in tty.getvalue()


def test_distmeta_train_into_a_file_writes_a_bounded_number_of_lines(tmp_path):
    """As ``make train > log``: the training bar, piped, is a few lines, never one carriage return per step."""
    out = tmp_path / "log.txt"
    args = [*SINUSOID_TINY, "train.steps=60", "run.progress=true", "run.progress_every=3600",
            "run.eval_every=0", "run.checkpoint_every=0", "eval.baseline=false", f"run.dir={tmp_path / 'run'}"]
    with out.open("w") as f:
        proc = subprocess.run([sys.executable, "-m", "distmeta.cli", "train", *args], stdout=f, stderr=subprocess.STDOUT,
                              timeout=300)
    text = out.read_text()
    assert proc.returncode == 0, text[-2000:]
    assert "\r" not in text
    bar_lines = [ln for ln in text.splitlines() if ln.startswith("meta-train:")]
    assert 1 <= len(bar_lines) <= 3 and "60/60" in bar_lines[-1], bar_lines


def test_a_disabled_bar_takes_postfixes_and_writes_nothing():
    log = io.StringIO()
    with progress_bar(total=3, desc="x", file=log, disable=True) as bar:
        for _ in range(3):
            bar.update(1)
            bar.set_postfix({"loss": "0.1"})
    assert log.getvalue() == ""
