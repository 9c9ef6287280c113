"""Probing frozen features: datasets, linear and k-NN probes, CKA and classification metrics."""
