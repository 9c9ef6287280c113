"""Harmon networks: MAR, the diffusion head, the KL-16 VAE, checkpoint loading (lowest layer)."""
