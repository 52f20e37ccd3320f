"""Best-on-meta-validation selection and early stopping (``train.select_best``, ``train.patience``).

The tracker keeps the parameters of the best meta-validation in ``best.safetensors`` in the run
directory (written atomically, so a crash leaves the previous best or the new one) and its
score and bookkeeping in the checkpoint's trainer state, so ``--resume`` continues the same
selection.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

BEST_FILE = "best.safetensors"


def validation_score(val: dict[str, float]) -> float:
    """Higher is better: accuracy for classification, negative loss (MSE) for regression."""
    return float(val["accuracy"]) if "accuracy" in val else -float(val["loss"])


class BestTracker:
    """Remembers the best meta-validation's parameters and counts validations without improvement.

    Args:
        run_dir: where ``best.safetensors`` lives.
        patience: validations without improvement before :meth:`update` asks to stop (0 = never).
        name: file-name prefix, so two stages (pretraining, meta-training) keep separate bests.
    """

    def __init__(self, run_dir: Path, patience: int = 0, name: str = "") -> None:
        self.path = Path(run_dir) / f"{name}{BEST_FILE}"
        self.patience = patience
        self.score, self.step, self.bad = -math.inf, -1, 0

    def update(self, step: int, val: dict[str, float], params: dict[str, torch.Tensor]) -> bool:
        """Record validation ``val`` of ``params`` at ``step``; True when patience is exhausted."""
        score = validation_score(val)
        if score > self.score:
            self.score, self.step, self.bad = score, step, 0
            tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
            save_file({n: t.detach().cpu().contiguous() for n, t in params.items()}, str(tmp))
            os.replace(tmp, self.path)
            os.chmod(self.path, 0o600)
            return False
        self.bad += 1
        return bool(self.patience) and self.bad >= self.patience

    def best_params(self) -> dict[str, torch.Tensor] | None:
        """The saved best parameters, or None when no validation ran."""
        return load_file(str(self.path)) if self.step >= 0 and self.path.is_file() else None

    def state(self) -> dict[str, Any]:
        return {"score": self.score if math.isfinite(self.score) else None, "step": self.step, "bad": self.bad}

    def load_state(self, state: dict[str, Any] | None) -> None:
        if state:
            self.score = -math.inf if state.get("score") is None else float(state["score"])
            self.step, self.bad = int(state["step"]), int(state["bad"])


def record_validation(best: BestTracker, step: int, val: dict[str, float], params: dict[str, torch.Tensor],
                      write: Callable[[str], None]) -> bool:
    """Record ``step``'s meta-validation in ``best`` and write its line with the best so far.

    Returns:
        True when ``train.patience`` ran out (the stop is written too).
    """
    from distmeta.training.report import validation_line

    stop = best.update(step, val, params)
    write(validation_line(step, val, (best.step, best.score)))
    if stop:
        write(f"step {step}: no better meta-validation in {best.bad} validations (train.patience); stopping, "
              f"best at step {best.step}")
    return stop


def restore_best(best: BestTracker, optimizer: Any, write: Callable[[str], None]) -> bool:
    """Load ``best``'s saved parameters into ``optimizer`` (``train.select_best``) and say so through ``write``.

    Returns:
        Whether there were best parameters to restore (none when no meta-validation ran).
    """
    params = best.best_params()
    if params is None:
        write("train.select_best: no meta-validation ran; keeping the last parameters")
        return False
    optimizer.load_params(params)
    shown = f"accuracy {100 * best.score:.2f}%" if best.score >= 0 else f"mse {-best.score:.4f}"  # validation_score
    write(f"train.select_best: meta-testing the parameters of step {best.step} (meta-validation {shown})")
    return True


__all__ = ["BEST_FILE", "BestTracker", "record_validation", "restore_best", "validation_score"]
