"""Encoder adapters; importing this package registers them all."""

from encoders.adapters import pixels  # noqa: F401
