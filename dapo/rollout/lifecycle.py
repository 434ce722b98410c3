"""When a colocated engine sleeps, wakes and receives the weights (rollout.sleep_level), in the order that keeps a
shared GPU from running out of memory.

A colocated engine and the training ranks share GPUs and take turns: the engine generates, then sleeps while the
ranks train (level 1: its weights go to host memory and its KV cache is dropped; level 2: both dropped), then:

    1. wake the weights only            the KV cache stays unallocated while the new weights arrive
    2. push the trained weights         (a gather on the ranks, a load in the engine)
    3. free the trainer's cached memory the allocator's cache from the update, before the engine asks for its
                                        KV cache (verl's and NeMo-RL's order; the other order is the OOM their
                                        users report)
    4. wake the KV cache                and reset the prefix cache: cached prefixes were computed with the old
                                        weights

With level 0 (the default) the engine never sleeps and a push is only step 2. On a CPU, vLLM's sleep and wake
change nothing (it logs so); the order is the same.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dapo.rollout.base import RolloutEngine

SLEEP_LEVELS = (0, 1, 2)


class EngineLifecycle:
    """Puts `engine` to sleep after generation and wakes it around each weight push (see the module docstring)."""

    def __init__(self, engine: RolloutEngine, level: int, release_trainer_memory: Callable[[], None]):
        if level not in SLEEP_LEVELS:
            raise ValueError(f"sleep level must be one of {SLEEP_LEVELS}, got {level!r}")
        self.engine, self.level, self.release_trainer_memory = engine, level, release_trainer_memory

    def after_generation(self) -> None:
        """The ranks train next: the engine gives its memory back."""
        if self.level:
            self.engine.sleep(self.level)

    def push(self, policy: Any) -> None:
        """The trained weights into the engine, waking it in the order above; `policy` is the `PolicyWorkers`."""
        if not self.level:
            policy.push_weights(self.engine)
            return
        self.engine.wake_up(("weights",))
        policy.push_weights(self.engine)
        self.release_trainer_memory()
        self.engine.wake_up(("kv_cache",))
