"""dapo: DAPO, GRPO and PPO for training LLMs with reinforcement learning on verifiable rewards.

Layers (imports point one way, never up; docs/architecture.md draws them):
    0  algo, data, models, metrics, checkpoint, cluster, errors
    1  rewards, rollout, config, report
    2  workers, sft, plan
    3  step, runtime
    4  components
    5  trainer
    6  ablation, cli
"""

__version__ = "0.1.0"
