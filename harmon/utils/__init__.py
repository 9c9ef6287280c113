"""Plumbing every layer shares: atomic files and digests, devices and ranks, schedules, strict YAML configs."""
