"""RD plots of CompressAI-schema result files (bpp against PSNR and against MS-SSIM in dB)."""
from __future__ import annotations

import json
import math
import os
from typing import Sequence

from .metrics import ms_ssim_db

CLASSICAL = ("JPEG", "WebP", "AVIF", "BPG", "VTM", "HM", "AV1")


def load_results(path: os.PathLike) -> dict:
    with open(path) as f:
        doc = json.load(f)
    results = doc.get("results", doc)
    if "bpp" not in results:
        raise ValueError(f"{path}: no 'bpp' in results")
    return {"name": doc.get("name", os.path.basename(str(path)).split(".")[0]), "results": results}


def plot_rd(paths: Sequence[os.PathLike], output: os.PathLike, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [load_results(p) for p in paths]
    panels = [("psnr-rgb", "PSNR (RGB) [dB]", lambda v: v), ("ms-ssim-rgb", "MS-SSIM (RGB) [dB]", ms_ssim_db)]
    panels = [p for p in panels if any(p[0] in c["results"] for c in curves)]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 5), squeeze=False)
    for ax, (key, label, transform) in zip(axes[0], panels):
        for c in curves:
            r = c["results"]
            if key not in r:
                continue
            pts = sorted((b, transform(v)) for b, v in zip(r["bpp"], r[key])
                         if v is not None and not math.isnan(v))
            style = "--" if any(n in c["name"] for n in CLASSICAL) else "-"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker=".", linewidth=1, label=c["name"])
        ax.set_xlabel("bits per pixel (file size)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(output, dpi=150)
    plt.close(fig)
