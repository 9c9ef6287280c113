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

# Table 4 (GenEval; overall = mean of the six category scores), Table 3 (FID on MSCOCO-30K and MJHQ-30K), and the
# generation columns of Tables 6 (training stages I/II/III used) and 7 (stage-III resolution), all Harmon-0.5B
# except the Harmon-1.5B rows.
GENEVAL_COLUMNS = ("single_object", "two_object", "counting", "colors", "position", "color_attr", "overall")
PAPER_GENEVAL: dict[str, dict[str, float]] = {
    "Harmon-0.5B": {"single_object": 0.99, "two_object": 0.80, "counting": 0.57, "colors": 0.87, "position": 0.55,
                    "color_attr": 0.48, "overall": 0.71},
    "Harmon-1.5B": {"single_object": 0.99, "two_object": 0.86, "counting": 0.66, "colors": 0.85, "position": 0.74,
                    "color_attr": 0.48, "overall": 0.76},
}
PAPER_FID: dict[str, dict[str, float]] = {
    "Harmon-0.5B": {"MSCOCO-30K": 8.86, "MJHQ-30K": 6.08},
    "Harmon-1.5B": {"MSCOCO-30K": 8.39, "MJHQ-30K": 5.15},
}
# row label -> (MSCOCO-30K FID, MJHQ-30K FID, GenEval overall)
PAPER_TABLE6: dict[str, tuple[float, float, float]] = {
    "#1 stages II+III": (10.23, 7.56, 0.66),
    "#2 stages I+III": (10.99, 8.12, 0.65),
    "#3 stages I+II": (15.64, 16.85, 0.56),
    "#4 stages I+II+III": (8.86, 6.08, 0.71),
}
PAPER_TABLE7: dict[str, tuple[float, float, float]] = {
    "#1 256 px": (11.50, 9.91, 0.68),
    "#2 384 px": (10.97, 8.65, 0.69),
    "#3 512 px": (8.86, 6.08, 0.71),
}
