"""dapo.data"""
