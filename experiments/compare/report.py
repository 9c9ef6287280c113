"""report.md of `harmon compare`: every table of results.json in short, every figure linked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harmon.utils.files import atomic_write, file_stem

MAR_NOTE = ("MAR-family encoders are not reconstructed: their features never decode to pixels, and their "
            "generative path (MAR decoder + diffusion head) samples latents rather than reconstructing them, so any "
            "image they produce would measure their VAE or their sampler, not their encoder.")


def _f(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _probes(results: dict[str, Any]) -> list[str]:
    layered = any(r["layers"] for r in results["encoders"].values())
    lines = ["## Probes\n", "Linear probe (BN-linear, lr x wd sweep) on the pooled features of every encoder; k-NN "
             "(temperature-weighted, cosine) on the same features.\n",
             "| encoder | weights | pooling | dim | top-1 % | top-5 % | k-NN top-1 % | images encoded / from cache |",
             "|---|---|---|---|---|---|---|---|"]
    for label, r in {**results["encoders"], **results["twins"]}.items():
        knn = r.get("knn")
        knn_top1 = knn[max(knn, key=int)]["top1"] if knn else None
        lines.append(f"| {label} | {r['weights']} | {r['pooling']} | {r['dim']} | {_f(r['top1'])} | {_f(r['top5'])} | "
                     f"{_f(knn_top1)} | {r['cache']['computed']} / {r['cache']['reused']} |")
    lines += ["", "![probes](probes.png) ([PDF](probes.pdf))\n", *_controls(results)]
    if layered:
        lines += ["Per layer (top-1 %):\n", "| encoder | " + " | ".join(["layer: top-1"]) + " |", "|---|---|"]
        for label, r in results["encoders"].items():
            cells = ", ".join(f"{layer}: {_f(s['top1'], 1)}" for layer, s in r["layers"].items()) or "–"
            lines.append(f"| {label} | {cells} |")
        lines += ["", "![layers](layers.png) ([PDF](layers.pdf))\n"]
    return lines


def _controls(results: dict[str, Any]) -> list[str]:
    block, top1 = results["controls"], {label: r["top1"] for label, r in results["encoders"].items()}
    top1 |= {r["twin_of"] + " (random)": r["top1"] for r in results["twins"].values()}
    rows = [(label, f"{label} (random)", c) for label, c in block["vs_twin"].items()]
    rows += [(label, block["pixels"], c) for label, c in block["vs_pixels"].items()]
    if not rows:
        return []
    level = round(100 * block["level"])
    lines = ["### Controls\n", "Each encoder against its random-init twin (the same architecture, preprocessing and "
             "pooling, seeded; probed identically) and against raw pixels, on the same val images: Δ = top-1 − "
             f"control top-1 (points) with a {level} % paired bootstrap interval over the images "
             f"({block['resamples']} resamples), McNemar's exact p, and the verdict on \"beats the control\" (an "
             "interval containing zero is a tie). One seed: the intervals hold no seed variance, so they are "
             "exploratory.\n",
             f"| encoder | control | top-1 % | control top-1 % | Δ [{level} % interval] | McNemar p | verdict |",
             "|---|---|---|---|---|---|---|"]
    for label, control, c in rows:
        said = c["verdict"] + (" (a tie)" if c["tie"] else "")
        lines.append(f"| {label} | {control} | {_f(top1[label])} | {_f(top1[control])} | {c['delta']:+.2f} "
                     f"[{c['low']:+.2f}, {c['high']:+.2f}] | {c['mcnemar_p']:.3g} | {said} |")
    return [*lines, ""]


def _alignment(results: dict[str, Any]) -> list[str]:
    block = results["alignment"]
    if block is None:
        return ["## Alignment\n", "One encoder only: nothing to align.\n"]
    lines = ["## Alignment\n", f"On the first {block['n']} val images (k = {block['k']}); every pair in "
             "[alignment/report.md](alignment/report.md) and [alignment/alignment.json](alignment/alignment.json).\n"]
    versus = block.get("against_reference")
    if versus:
        metrics = list(versus)
        lines += [f"Against `{block['reference']}`:\n", "| encoder | " + " | ".join(metrics) + " |",
                  "|---|" + "---|" * len(metrics)]
        for name in versus[metrics[0]]["values"]:
            lines.append(f"| {name} | " + " | ".join(_f(versus[m]["values"][name], 3) for m in metrics) + " |")
        lines.append("")
    for metric in block["metrics"]:
        lines.append(f"- {metric}: ![{metric}](alignment/alignment-{metric}.png) "
                     f"([PDF](alignment/alignment-{metric}.pdf))")
    return [*lines, ""]


def _cams(results: dict[str, Any]) -> list[str]:
    rows = {label: r["cam"] for label, r in results["encoders"].items() if "cam" in r}
    if not rows:
        return []
    masks = results["data"]["object_masks"]
    lines = ["## Grad-CAM++ localisation\n",
             "Maps of the final-layer linear probe's logit for the true class. "
             + ("Scored against the exact object masks: share of map energy inside the mask, and the pointing game "
                "(the map's peak inside the mask).\n" if masks else
                "This data has no object masks, so localisation is not scored; the grid shows the maps.\n"),
             "| encoder | images | constant maps | energy in mask % | pointing game % |", "|---|---|---|---|---|"]
    for label, c in rows.items():
        lines.append(f"| {label} | {c['images']} | {len(c['constant_maps'])} | {_f(c.get('energy_in_mask'), 1)} | "
                     f"{_f(c.get('pointing_game'), 1)} |")
    return [*lines, "", "![cams](cams.png) ([PDF](cams.pdf))\n"]


def _reconstruction(results: dict[str, Any]) -> list[str]:
    lines = ["## Reconstruction vs semantics\n"]
    done = {label: r["reconstruction"] for label, r in results["encoders"].items() if "reconstruction" in r}
    fd = results["fd_encoder"]
    if done:
        lines += ["Reconstructions of val images through each autoencoder (posterior mean / nearest codes); PSNR "
                  "and SSIM with data range 1, LPIPS (AlexNet) where enabled, Fréchet distance of reconstructions to "
                  + (f"originals on the pooled features of `{fd['name']}` ({fd['weights']})." if fd else
                     "originals not computed (no fd_encoder).") + "\n",
                  "| encoder | images | PSNR dB | SSIM | LPIPS | Fréchet distance | samples |", "|---|---|---|---|---|---|---|"]
        for label, r in done.items():
            stem = f"reconstructions-{file_stem(label)}"
            lines.append(f"| {label} | {r['images']} | {_f(r['psnr'])} | {_f(r['ssim'], 3)} | {_f(r.get('lpips'), 3)} | "
                         f"{_f(r.get('frechet'), 3)} | [{stem}.png]({stem}.png) |")
        lines.append("")
    left = results["pareto"]["left_out"]
    if left:
        mar = any("mar" in results["encoders"][label]["encoder"] for label in left)
        lines.append(f"Not reconstructed (no decoder): {', '.join(left)}." + (f" {MAR_NOTE}" if mar else "") + "\n")
    points = results["pareto"]["points"]
    if points:
        front = [p["label"] for p in points if p["non_dominated"]]
        lines += [f"Pareto plot: {results['pareto']['xlabel']} against probe top-1, one point per encoder and probed "
                  f"layer; non-dominated (filled): {', '.join(front)}.\n",
                  "![pareto](pareto.png) ([PDF](pareto.pdf))\n"]
    return lines


def compare_report(results: dict[str, Any]) -> str:
    data, timings = results["data"], results["timings"]
    lines = [f"# Encoder comparison: {results['name']}\n",
             f"Data: `{data['spec']}`, {len(data['classes'])} classes, {data['train_samples']} train / "
             f"{data['val_samples']} val images; device {results['device']}. Every score below reads the same "
             "feature cache. Numbers: [results.json](results.json).\n",
             *_probes(results), *_alignment(results), *_cams(results), *_reconstruction(results),
             "## Time\n", f"Total {timings['total_s']:.0f} s, of which pretraining or loading the zoo "
             f"{timings['pretraining_s']:.0f} s.\n",
             "## Figures\n", *[f"- [{name}]({name}) ([PDF]({name[:-4]}.pdf))" for name in results["figures"]], ""]
    return "\n".join(lines)


def write_report(results: dict[str, Any], out: Path) -> Path:
    return atomic_write(out / "report.md", compare_report(results))
