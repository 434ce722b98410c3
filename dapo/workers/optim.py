"""The optimiser side of a worker: AdamW with the learning-rate schedule, the clipped step, the end of an update."""

from __future__ import annotations

import math

import torch
from torch import nn

from dapo.workers.base import OptimParams
from dapo.workers.parallel import DataParallel
from dapo.workers.stats import Accumulator


def lr_factor(step: int, warmup_steps: int, schedule: str, total_steps: int, min_lr_ratio: float) -> float:
    """Learning-rate multiplier at training step `step` (0-based, one scheduler step per training step).

    Linear warm-up: (step + 1) / warmup_steps for the first warmup_steps steps (so step 0 already trains;
    verl's factor min(1, step / warmup) gives 0 at step 0, i.e. a wasted step). Then constant (verl/DAPO),
    or a cosine from 1 down to min_lr_ratio at total_steps.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant" or total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(params, optim: OptimParams) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    optimizer = torch.optim.AdamW(
        params, lr=optim.lr, betas=optim.betas, eps=optim.eps, weight_decay=optim.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(step, optim.warmup_steps, optim.schedule, optim.total_steps, optim.min_lr_ratio),
    )
    return optimizer, scheduler


def clip_and_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, grad_clip: float, stats: Accumulator, prefix: str
) -> None:
    """Clip the global grad norm; skip the step (and count it) when the norm is not finite."""
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if hasattr(grad_norm, "full_tensor"):  # FSDP2: the norm of sharded gradients is a DTensor
        grad_norm = grad_norm.full_tensor()
    if torch.isfinite(grad_norm):
        optimizer.step()
        stats.add_scalar(f"{prefix}/grad_norm", float(grad_norm))
        stats.sums[f"{prefix}/num_skipped_steps"] += 0.0
    else:
        stats.sums[f"{prefix}/num_skipped_steps"] += 1.0
    stats.counts[f"{prefix}/num_skipped_steps"] = 1.0
    optimizer.zero_grad(set_to_none=True)


def end_update(
    stats: Accumulator,
    dp: DataParallel,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    prefix: str,
) -> dict[str, float]:
    """Close one training step's update: the metrics summed over ranks, the learning rate the step used, one
    scheduler step (the schedule counts training steps, not optimiser steps)."""
    stats.reduce_per_token(dp)
    stats.add_scalar(f"{prefix}/lr", optimizer.param_groups[0]["lr"])
    scheduler.step()
    return stats.means()
