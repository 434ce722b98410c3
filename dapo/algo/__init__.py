"""Pure torch math of PPO, GRPO and DAPO: tensors in, tensors out.

No config objects, no I/O, no `.item()`, no torch.distributed. Each formula carries its equation number from
the DAPO paper (arXiv:2503.14476) in its docstring and a hand-computed test in tests/algo.
"""

from dapo.algo.advantages import (
    broadcast_to_tokens,
    drgrpo_advantages,
    gae_advantages,
    group_relative_advantages,
    grpo_advantages,
    masked_whiten,
    rloo_advantages,
    token_level_rewards,
)
from dapo.algo.aggregate import (
    AGGREGATION_MODES,
    EXACT_AGGREGATION_MODES,
    LEGACY_TOKEN_MEAN,
    group_token_mean,
    loss_row_weights,
    masked_mean,
    micro_batch_token_mean_weights,
    seq_mean_token_mean,
    seq_mean_token_sum,
    seq_mean_token_sum_norm,
    token_mean,
    weighted_token_sum,
    zero_masked,
)
from dapo.algo.kl import KL_ESTIMATORS, adaptive_kl_coef, kl_estimate, kl_penalized_token_rewards
from dapo.algo.logits import entropy_from_logits, head_token_logprobs, token_logprobs
from dapo.algo.policy_loss import PolicyLossStats, clipped_policy_loss, clipped_value_loss, explained_variance
from dapo.algo.rollout_correction import LEVELS as ROLLOUT_IS_LEVELS
from dapo.algo.rollout_correction import MODES as ROLLOUT_IS_MODES
from dapo.algo.rollout_correction import prob_abs_diff, rollout_is_weights
from dapo.algo.shaping import informative_groups, overlong_filter_mask, overlong_penalty

# Outcome-reward advantage estimators with one signature: (rewards (P, G), eps) -> (P, G).
# GAE needs values and per-token rewards, so the PPO path calls `gae_advantages` explicitly.
GROUP_ADVANTAGES = {
    "grpo": grpo_advantages,
    "drgrpo": drgrpo_advantages,
    "rloo": rloo_advantages,
}
ADVANTAGE_ESTIMATORS = (*GROUP_ADVANTAGES, "gae")

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "AGGREGATION_MODES",
    "EXACT_AGGREGATION_MODES",
    "GROUP_ADVANTAGES",
    "KL_ESTIMATORS",
    "LEGACY_TOKEN_MEAN",
    "ROLLOUT_IS_LEVELS",
    "ROLLOUT_IS_MODES",
    "PolicyLossStats",
    "adaptive_kl_coef",
    "broadcast_to_tokens",
    "clipped_policy_loss",
    "clipped_value_loss",
    "drgrpo_advantages",
    "entropy_from_logits",
    "explained_variance",
    "gae_advantages",
    "group_relative_advantages",
    "group_token_mean",
    "grpo_advantages",
    "head_token_logprobs",
    "informative_groups",
    "kl_estimate",
    "kl_penalized_token_rewards",
    "loss_row_weights",
    "masked_mean",
    "masked_whiten",
    "micro_batch_token_mean_weights",
    "overlong_filter_mask",
    "overlong_penalty",
    "prob_abs_diff",
    "rloo_advantages",
    "rollout_is_weights",
    "seq_mean_token_mean",
    "seq_mean_token_sum",
    "seq_mean_token_sum_norm",
    "token_level_rewards",
    "token_logprobs",
    "token_mean",
    "weighted_token_sum",
    "zero_masked",
]
