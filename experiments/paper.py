"""The Harmon paper's numbers the recipes compare against, and the encoders it names.

Table 5 ("Choices of visual encoders for understanding"): 'Acc' is the top-5 linear-probing accuracy (%) on
ImageNet; the other columns are the understanding benchmarks after training Harmon with each encoder. Figure 2
plots the same linear probe (and Grad-CAM++ maps) for VQGAN, VAE and MAR, without printing the values.
"""

from __future__ import annotations

TABLE5_ENCODERS = ("SigLIP", "VQGAN", "VAE", "MAR")
# Table 5 label -> registry name of the full-size encoder (SigLIP-Base-Patch16, the taming VQGAN, KL-16, MAR-B)
PAPER_ENCODERS = {"SigLIP": "siglip-b16", "VQGAN": "vqgan", "VAE": "vae-kl16", "MAR": "mar-b"}
TABLE5_COLUMNS = ("Acc", "POPE", "MME-P", "MME-C", "MMB", "SEED", "GQA", "MMMU")
PAPER_TABLE5: dict[str, dict[str, float]] = {
    "SigLIP": {"Acc": 95.9, "POPE": 85.1, "MME-P": 1203, "MME-C": 258, "MMB": 61.1, "SEED": 63.2, "GQA": 56.1,
               "MMMU": 35.2},
    "VQGAN": {"Acc": 18.2, "POPE": 57.2, "MME-P": 67.3, "MME-C": 21.8, "MMB": 37.3, "SEED": 38.3, "GQA": 38.0,
              "MMMU": 27.7},
    "VAE": {"Acc": 18.5, "POPE": 63.8, "MME-P": 732, "MME-C": 223, "MMB": 44.9, "SEED": 42.5, "GQA": 40.2,
            "MMMU": 30.3},
    "MAR": {"Acc": 83.1, "POPE": 86.1, "MME-P": 1123, "MME-C": 262, "MMB": 60.1, "SEED": 62.2, "GQA": 55.7,
            "MMMU": 33.3},
}
PAPER_NOTE = ("VQGAN's MME-P 67.3 and MME-C 21.8 are as printed in the paper; both lie below what always answering "
              "'yes' scores (500 and 200: acc 50 and acc+ 0 per category), so they are probably 673 and 218.")
# Table 5 'Acc': ImageNet top-5 linear probing (%), the probe Figure 2 plots
PAPER_TOP5 = {label: row["Acc"] for label, row in PAPER_TABLE5.items()}
