"""dapo.models"""
