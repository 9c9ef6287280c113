"""Ablations of the Harmon paper (Table 5 encoder choice, Figure 6 single-task vs unified training): encoders
plugged into Harmon's understanding path, the Harmons and runs of `harmon table5` / `harmon figure6`, ShapesWorld
and public-benchmark evaluation, and the reports."""
