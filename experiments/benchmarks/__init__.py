"""Benchmarks runnable as `python -m experiments.benchmarks.<name>`."""
