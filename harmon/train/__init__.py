"""Training Harmon: typed stage configs and presets, data mixing, losses, and an accelerate-based trainer."""
