"""Simulated robot: OGBench cube scenes, their scripted expert, demonstration datasets, evaluation."""
