"""`harmon compare`: probes, k-NN, alignment, Grad-CAM++ localisation and the reconstruction / semantics trade-off
of several encoders on one shared feature cache, in one report."""
