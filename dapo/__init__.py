"""dapo: DAPO, GRPO and PPO for training LLMs with reinforcement learning on verifiable rewards.

Layers (imports point one way): algo -> rewards, data -> models, rollout, workers -> trainer -> cli.
"""

__version__ = "0.1.0"
