"""Encoder adapters behind the feature contract of `encoders.base`; `encoders.registry` lists them."""
