"""dapo.workers"""
