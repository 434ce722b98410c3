"""dapo.rollout"""
