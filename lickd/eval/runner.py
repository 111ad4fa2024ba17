"""Rate-distortion evaluation over a folder of images, written in CompressAI's result schema.

Each point of a curve is one codec setting (a quality, or one lickd model); for every image the
runner encodes, decodes and measures bpp from the real file (and from the payload alone), PSNR
and MS-SSIM on the decoded 8-bit RGB image, and the encode/decode wall times. The curve's point
is the mean over images, as CompressAI's ``eval_model`` reports it.
"""
from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..image import load_rgb
from ..provenance import environment
from .metrics import ms_ssim_rgb, psnr_rgb

METRIC_KEYS = ("bpp", "payload-bpp", "psnr-rgb", "ms-ssim-rgb", "encoding_time", "decoding_time")


def measure(codec, img: np.ndarray) -> dict:
    """One image through one codec setting: sizes, metrics and times."""
    sync = getattr(codec, "synchronize", lambda: None)
    t0 = time.perf_counter()
    enc = codec.encode(img)
    sync()
    t1 = time.perf_counter()
    out = codec.decode(enc.data)
    sync()
    t2 = time.perf_counter()
    pixels = img.shape[0] * img.shape[1]
    return {
        "bpp": 8 * len(enc.data) / pixels, "payload-bpp": 8 * enc.payload_bytes / pixels,
        "psnr-rgb": psnr_rgb(img, out), "ms-ssim-rgb": ms_ssim_rgb(img, out),
        "encoding_time": t1 - t0, "decoding_time": t2 - t1, "bytes": len(enc.data),
    }


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return float(np.mean(values)) if values else math.nan


def evaluate(points: Sequence, images: Sequence[os.PathLike], *, name: str, description: str,
             progress: bool = True, dataset: str = "") -> dict:
    """Runs every codec setting in ``points`` over ``images``; returns the result document."""
    from tqdm import tqdm

    if not images:
        raise ValueError("no images to evaluate")
    loaded = [(Path(p).name, load_rgb(p)) for p in images]
    results = {k: [] for k in ("quality",) + METRIC_KEYS}
    per_image = []
    bar = tqdm(total=len(points) * len(loaded), disable=not progress, unit="img", file=sys.stderr)
    for codec in points:
        rows = {}
        for fname, img in loaded:
            bar.set_description(f"{name} q={codec.quality}")
            rows[fname] = measure(codec, img)
            bar.update()
        results["quality"].append(codec.quality)
        for key in METRIC_KEYS:
            results[key].append(_mean(r[key] for r in rows.values() if not math.isnan(r[key])))
        per_image.append({"quality": codec.quality, "images": rows})
    bar.close()
    return {
        "name": name, "description": description,
        "meta": {"dataset": dataset, "n_images": len(loaded), "averaging": "mean over images (CompressAI eval_model)",
                 "times": "seconds per image, wall clock", "environment": environment()},
        "results": results, "per_image": per_image,
    }
