"""dapo.rewards: verifiable rewards. Pure scorers (text in, `ScoreResult` out), a killable worker pool for
symbolic checks, and the reward step the trainer calls (`build_reward_function`)."""

from dapo.rewards.custom import coerce_result, load_callable
from dapo.rewards.dapo_answer import SCORER_MODES, score_dapo, verl_prediction
from dapo.rewards.gsm8k import gsm8k_ground_truth, score_gsm8k
from dapo.rewards.math_answer import check_math_answer, extract_math_answer, normalize_latex
from dapo.rewards.pool import KillablePool, TaskOutcome
from dapo.rewards.reward_fn import (
    EXACT_ROUTES,
    PREFIX_ROUTES,
    RewardBatch,
    RewardFunction,
    RewardFunctionError,
    RewardSample,
    RewardSettings,
    build_reward_function,
    route,
)
from dapo.rewards.text import last_boxed, last_number_matches, parse_number, sanitize
from dapo.rewards.types import FAILURE_KINDS, ScoreResult

__all__ = [
    "EXACT_ROUTES",
    "FAILURE_KINDS",
    "PREFIX_ROUTES",
    "SCORER_MODES",
    "KillablePool",
    "RewardBatch",
    "RewardFunction",
    "RewardFunctionError",
    "RewardSample",
    "RewardSettings",
    "ScoreResult",
    "TaskOutcome",
    "build_reward_function",
    "check_math_answer",
    "coerce_result",
    "extract_math_answer",
    "gsm8k_ground_truth",
    "last_boxed",
    "last_number_matches",
    "load_callable",
    "normalize_latex",
    "parse_number",
    "route",
    "sanitize",
    "score_dapo",
    "score_gsm8k",
    "verl_prediction",
]
