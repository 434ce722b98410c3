"""dapo.algo"""
