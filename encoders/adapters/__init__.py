"""Encoder adapters; importing this package registers them all."""

from encoders.adapters import mar, pixels, siglip, timm_generic, vae, vqgan  # noqa: F401
