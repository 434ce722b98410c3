"""A reward that makes most groups all-correct: a response is "correct" unless a stable hash of it says not.

verl-style signature; used by the dynamic-sampling test (and an example of a user reward function).
"""

import hashlib


def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    digest = hashlib.sha256(solution_str.encode()).digest()[0]
    correct = digest % 10 != 0  # ~90 % correct: with G = 8, ~43 % of groups are all-correct
    return {"score": 1.0 if correct else -1.0, "acc": correct}


def shorter_is_better(data_source, solution_str, ground_truth, extra_info=None):
    """A reward that differs between almost any two responses (so every group has a gradient)."""
    return {"score": -len(solution_str) / 100.0, "acc": False}


def always_right(data_source, solution_str, ground_truth, extra_info=None):
    """Every response scores +1: a return the PPO critic can learn exactly, whatever the policy samples."""
    return {"score": 1.0, "acc": True}
