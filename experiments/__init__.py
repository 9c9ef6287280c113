"""Recipes, presets, benchmarks and the `harmon` command line (top layer)."""
