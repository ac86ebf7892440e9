"""Simulated lab hardware: boards that report their own progress."""
