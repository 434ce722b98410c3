"""dapo.rewards"""
