"""Ablations of the Harmon paper (Table 5 encoder choice, Figure 6 single-task vs unified training): encoders
plugged into Harmon's understanding path, ShapesWorld and public-benchmark evaluation, and the reports."""
