"""Summarises committed RD results: a Markdown table for the README and an RD plot.

    python benchmarks/report.py benchmarks/results/kodak/amd-epyc-2vcpu [--anchor JPEG] [--plot rd.png]
    python benchmarks/report.py benchmarks/results/kodak/amd-epyc-2vcpu/jpeg.json MORE/ --lmbda 0.0067
    python benchmarks/report.py --against ref.json fused-bf16.json fused-fp16.json

Arguments are result files or folders of them (every *.json inside).

For every curve: BD-rate and BD-PSNR against the anchor (pchip, over the overlapping range),
PSNR interpolated at 0.25 / 0.5 / 1.0 bpp (pchip in log-rate, inside the measured range), and
the median encode/decode times, all read from the result files (nothing is re-measured).

Single-point results (one trained model each, e.g. a student and its no-KD control) get a second
table: bpp, PSNR, MS-SSIM, the anchor's PSNR at the same bpp, and with ``--lmbda`` the mean
rate-distortion cost bpp + lambda * 255^2 * MSE over the images (the training objective, so
models trained for the same lambda compare on it even when they land at different rates).

``--against REF``: instead, each single-point result's per-image differences from REF on the same
images (PSNR in dB, file bytes in %): how far a variant of one model (the fused kernels, an fp16
export) moves its results.
"""
import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from lickd.eval.bdrate import bd_psnr, bd_rate
from lickd.eval.plot import load_results, plot_rd

RATES = (0.25, 0.5, 1.0)


def psnr_at(bpps, psnrs, target):
    """PSNR at a bpp, interpolating PSNR against log-rate (linear between the two nearest points)."""
    pts = sorted(zip(bpps, psnrs))
    x = [math.log(b) for b, _ in pts]
    y = [p for _, p in pts]
    t = math.log(target)
    if not x[0] <= t <= x[-1]:
        return None
    return float(np.interp(t, x, y))


def per_image(doc: dict) -> dict:
    return doc["per_image"][0]["images"]


def rd_cost(images: dict, lmbda: float) -> float:
    """Mean over images of bpp + lambda * 255^2 * MSE (MSE of [0, 1] pixels = 10^(-PSNR / 10))."""
    return float(np.mean([v["bpp"] + lmbda * 255**2 * 10 ** (-v["psnr-rgb"] / 10) for v in images.values()]))


def print_points(points: dict, anchor: str, ra: dict, lmbda) -> None:
    head = (f"| model | bpp | PSNR | MS-SSIM | {anchor} PSNR at that bpp | vs {anchor} |"
            + (f" RD cost (lambda={lmbda:g}) |" if lmbda else "") + " enc ms | dec ms |")
    print("\n" + head)
    print("|" + "---|" * (head.count("|") - 1))
    for name, (f, r) in sorted(points.items(), key=lambda kv: kv[1][1]["bpp"][0]):
        bpp, psnr = r["bpp"][0], r["psnr-rgb"][0]
        ref = psnr_at(ra["bpp"], ra["psnr-rgb"], bpp)
        vs = "–" if ref is None else f"{psnr - ref:+.2f} dB"
        cost = f" {rd_cost(per_image(json.loads(f.read_text())), lmbda):.4f} |" if lmbda else ""
        print(f"| {name} | {bpp:.4f} | {psnr:.2f} dB | {r['ms-ssim-rgb'][0]:.4f} | "
              f"{'–' if ref is None else f'{ref:.2f} dB'} | {vs} |{cost} {1e3 * np.median(r['encoding_time']):.1f} | "
              f"{1e3 * np.median(r['decoding_time']):.1f} |")


def print_against(ref_file: Path, files: list) -> None:
    ref = per_image(json.loads(ref_file.read_text()))
    head = "| result | images | ΔPSNR mean | ΔPSNR min … max | Δbytes mean |"
    print(f"Per-image differences from {ref_file.name}\n\n{head}\n" + "|" + "---|" * (head.count("|") - 1))
    for f in files:
        doc = json.loads(f.read_text())
        imgs = per_image(doc)
        if set(imgs) != set(ref):
            sys.exit(f"{f}: not the images of {ref_file}")
        dp = np.array([imgs[k]["psnr-rgb"] - ref[k]["psnr-rgb"] for k in ref])
        db = np.array([imgs[k]["bytes"] / ref[k]["bytes"] - 1 for k in ref])
        label = doc["description"].rsplit(", ", 1)[-1] if doc.get("description") else f.stem
        print(f"| {f.name} ({label}) | {len(ref)} | {dp.mean():+.4f} dB | {dp.min():+.4f} … {dp.max():+.4f} dB | "
              f"{100 * db.mean():+.3f} % |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("paths", nargs="+", help="result JSON files or folders of them")
    p.add_argument("--anchor", default="JPEG")
    p.add_argument("--plot", help="write the RD plot here")
    p.add_argument("--lmbda", type=float, help="single-point table: also the mean RD cost at this lambda")
    p.add_argument("--against", type=Path, help="per-image differences of each result from this one instead")
    args = p.parse_args(argv)
    files = [f for path in map(Path, args.paths) for f in (sorted(path.glob("*.json")) if path.is_dir() else [path])]
    if args.against:
        print_against(args.against, [f for f in files if f.resolve() != args.against.resolve()])
        return
    curves = {doc["name"]: (f, doc["results"]) for f in files for doc in [load_results(f)]}
    if args.anchor not in curves:
        sys.exit(f"anchor {args.anchor!r} not among {sorted(curves)}")
    env = json.loads(files[0].read_text())["meta"]["environment"]
    ra = curves[args.anchor][1]
    print(f"Kodak (24 images), mean over images; BD against {args.anchor} (pchip); times on {env['cpu']} "
          f"({env['cpu_count']} vCPU), Pillow {env['pillow']}, lickd commit {env['commit']}\n")
    head = "| codec | BD-rate | BD-PSNR | " + " | ".join(f"PSNR @ {r} bpp" for r in RATES) + " | enc ms | dec ms |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    points = {name: c for name, c in curves.items() if len(c[1]["bpp"]) == 1}
    for name, (_, r) in sorted(curves.items(), key=lambda kv: kv[0] != args.anchor):
        if name in points:
            continue
        bdr = bd_rate(ra["bpp"], ra["psnr-rgb"], r["bpp"], r["psnr-rgb"])
        bdp = bd_psnr(ra["bpp"], ra["psnr-rgb"], r["bpp"], r["psnr-rgb"])
        at = [psnr_at(r["bpp"], r["psnr-rgb"], t) for t in RATES]
        cells = " | ".join("–" if v is None else f"{v:.2f} dB" for v in at)
        print(f"| {name} | {bdr:+.1f} % | {bdp:+.2f} dB | {cells} | {1e3 * np.median(r['encoding_time']):.1f} | "
              f"{1e3 * np.median(r['decoding_time']):.1f} |")
    if points:
        print_points(points, args.anchor, ra, args.lmbda)
    if args.plot:
        plot_rd([f for f, _ in curves.values()], args.plot, title="Kodak")
        print(f"\n(plot: {args.plot})")


if __name__ == "__main__":
    main()
