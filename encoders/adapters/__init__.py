"""Encoder adapters; importing this package registers them all."""

from encoders.adapters import harmon_mar, mar, pixels, siglip, timm_generic, vae, vqgan  # noqa: F401
