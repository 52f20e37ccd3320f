"""Outer optimisers over a name -> tensor dict of meta-parameters.

Built on ``torch.optim`` (SGD, momentum, Nesterov, Adam) so their update rules and
state dicts are the well-tested ones; noisy SGD adds annealed Gaussian noise with
variance ``eta / (1 + t)^gamma`` (Neelakantan et al., 2015), drawn from a generator
seeded by (seed, step) so runs stay reproducible and resumable.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from distmeta.config import OuterConfig

Params = dict[str, Tensor]


def scheduled_lr(base: float, step: int, warmup: int, schedule: str, total: int) -> float:
    """Learning rate at update ``step``: linear warm-up over ``warmup`` steps, then constant or cosine to 0 at ``total``."""
    if warmup and step < warmup:
        return base * (step + 1) / warmup
    if schedule == "cosine" and total > warmup:
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return base * 0.5 * (1.0 + math.cos(math.pi * progress))
    return base


class OuterOptimizer:
    """Applies mean meta-gradients to meta-parameters held as leaf tensors."""

    def __init__(self, cfg: OuterConfig, params: Params, seed: int = 0, total_steps: int = 0) -> None:
        self.cfg, self.seed, self.total_steps = cfg, seed, total_steps
        self.names = list(params)
        self.params = {n: p.detach().clone() for n, p in params.items()}
        tensors = [self.params[n] for n in self.names]
        # fused: one kernel over all tensors instead of the per-tensor loop torch picks on CPU;
        # this is driver time while every worker waits.
        if cfg.name == "adam":
            self.opt: torch.optim.Optimizer = torch.optim.Adam(
                tensors, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay, fused=True
            )
        else:
            momentum = cfg.momentum if cfg.name in ("momentum", "nesterov") else 0.0
            self.opt = torch.optim.SGD(
                tensors, lr=cfg.lr, momentum=momentum, nesterov=cfg.name == "nesterov",
                weight_decay=cfg.weight_decay, fused=True,
            )
        self.steps = 0

    def grad_buffers(self) -> Params:
        """The gradient tensors :meth:`step` reads, allocated once: reduce into them to skip a copy."""
        for p in self.params.values():
            if p.grad is None:
                p.grad = torch.empty_like(p)
        return {n: self.params[n].grad for n in self.names}

    @property
    def lr(self) -> float:
        return float(self.opt.param_groups[0]["lr"])

    def lr_at(self, step: int) -> float:
        """``outer.lr`` after linear warm-up and the ``outer.schedule`` decay at (0-based) update ``step``.

        A pure function of the step, so a resumed run follows the same schedule.
        """
        return scheduled_lr(self.cfg.lr, step, self.cfg.warmup_steps, self.cfg.schedule, self.total_steps)

    def noise_std(self, step: int) -> float:
        return (self.cfg.noise_eta / (1.0 + step) ** self.cfg.noise_gamma) ** 0.5

    @torch.no_grad()
    def step(self, grads: Params) -> dict[str, float]:
        """One update from ``grads`` (same names as the params); returns the grad norm."""
        missing = set(self.names) - set(grads)
        if missing:
            raise KeyError(f"meta-gradient lacks {sorted(missing)[:5]}")
        gen = None
        if self.cfg.name == "noisy_sgd":
            seed = int(np.random.SeedSequence([self.seed, self.steps]).generate_state(1)[0])
            gen = torch.Generator().manual_seed(seed)
        buffers = self.grad_buffers()
        for n, buf in buffers.items():
            if grads[n] is not buf:  # the caller may have reduced straight into grad_buffers()
                buf.copy_(grads[n])  # into a kept buffer: no fresh allocation (and page faults) per step
            if gen is not None:
                noise = torch.randn(buf.shape, generator=gen, dtype=buf.dtype)
                buf.add_(noise.to(buf.device), alpha=self.noise_std(self.steps))
        norm = torch.nn.utils.get_total_norm(list(buffers.values()), foreach=True)
        if self.cfg.grad_clip:  # clip_grad_norm_ would also rescale by 1.0 when not clipping: a pass over every gradient
            torch.nn.utils.clip_grads_with_norm_([self.params[n] for n in self.names], self.cfg.grad_clip, norm, foreach=True)
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(self.steps)
        self.opt.step()
        self.steps += 1
        return {"grad_norm": float(norm)}

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.opt.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state["optimizer"])
        self.steps = int(state["steps"])

    def load_params(self, params: Params) -> None:
        with torch.no_grad():
            for n in self.names:
                self.params[n].copy_(params[n])
