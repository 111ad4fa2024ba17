"""Ship a trained run as a model of the package: export, measure on Kodak, check, register.

    python benchmarks/ship_model.py RUN_DIR --name NAME [--default] [--kodak DIR] [--force]

1. Exports the run's latest checkpoint (``training/<run>/checkpoint.safetensors``) as fp16
   safetensors, and measures what fp16 costs against the fp32 export on four Kodak images.
2. Evaluates the fp16 file on all of Kodak with real bytes (every quality 1..8 of a
   variable-rate model; its own of a fixed-rate one), writes the ``lickd eval`` JSON beside the
   anchors, and compares every point with the committed JPEG anchor: JPEG's PSNR at the same bpp
   (interpolated in log-bpp; extrapolated linearly from its two lowest points below its range).
   A variable-rate model offers the qualities where it does (``--qualities auto``: the widest run
   of consecutive qualities 1..8 that beat JPEG, at least two; or ``--qualities LOW-HIGH``, each
   of which must): its weights file and registry entry record that range and the codec refuses
   the others. A model that does not beat JPEG at every quality it offers is refused (``--force``
   ships it anyway, for an experiment, never for a release).
3. Times encode and decode on kodim23 (median of 5, this machine, all its cores).
4. Copies the file to ``lickd/zoo/weights/NAME.safetensors`` and writes its registry entry:
   sha256, the measured Kodak curve, the per-image result for kodim01 at the default quality
   (what tests/test_shipped_models.py checks a fresh install against), parameters, CPU times.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lickd.models.variable_rate import QUALITY_MAX, QUALITY_MIN

ROOT = Path(__file__).resolve().parents[1]
#: the whole qualities a variable-rate model can offer
WHOLE_RANGE = (int(QUALITY_MIN), int(QUALITY_MAX))
RESULTS = ROOT / "benchmarks" / "results" / "kodak" / "amd-epyc-2vcpu"


def jpeg_psnr_at(bpp: float, anchor: dict) -> float:
    """The anchor's PSNR at ``bpp``: linear in log(bpp) between its points, extrapolated from its
    two lowest (or highest) points outside them."""
    r = anchor["results"]
    pts = sorted(zip(r["bpp"], r["psnr-rgb"]))
    xs, ys = np.log([p[0] for p in pts]), np.array([p[1] for p in pts])
    x = math.log(bpp)
    if x <= xs[0]:
        i = 0
    elif x >= xs[-1]:
        i = len(xs) - 2
    else:
        i = int(np.searchsorted(xs, x)) - 1
    t = (x - xs[i]) / (xs[i + 1] - xs[i])
    return float(ys[i] + t * (ys[i + 1] - ys[i]))


def quality_range_arg(text: str):
    """``--qualities``: "auto", or "LOW-HIGH" with whole qualities in WHOLE_RANGE, LOW < HIGH."""
    if text == "auto":
        return text
    try:
        low, high = (int(v) for v in text.split("-"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto or LOW-HIGH (whole qualities), got {text!r}") from None
    if not WHOLE_RANGE[0] <= low < high <= WHOLE_RANGE[1]:
        raise argparse.ArgumentTypeError(f"expected {WHOLE_RANGE[0]} <= LOW < HIGH <= {WHOLE_RANGE[1]}, got {text!r}")
    return low, high


def offered_range(qualities: list, margins: list, wanted) -> tuple[int, int] | None:
    """The qualities to offer: ``wanted`` (LOW, HIGH) when each of them beats JPEG (a positive
    margin), or for "auto" the widest run of consecutive qualities that do (the lower one on a
    tie; at least two); None when none qualifies."""
    beats = {int(q) for q, m in zip(qualities, margins) if m > 0}
    if wanted != "auto":
        low, high = wanted
        return (low, high) if all(q in beats for q in range(low, high + 1)) else None
    runs = [(low, high) for low in sorted(beats) for high in sorted(beats)
            if high > low and all(q in beats for q in range(low, high + 1))]
    return max(runs, key=lambda r: (r[1] - r[0], -r[0])) if runs else None


def time_codec(codec, img, quality, repeats=5) -> tuple[float, float]:
    enc, dec = [], []
    data = codec.compress(img, quality=quality)
    codec.decompress(data)
    for _ in range(repeats):
        t0 = time.perf_counter()
        data = codec.compress(img, quality=quality)
        t1 = time.perf_counter()
        codec.decompress(data, output="numpy")
        t2 = time.perf_counter()
        enc.append(t1 - t0)
        dec.append(t2 - t1)
    return 1e3 * statistics.median(enc), 1e3 * statistics.median(dec)


def main(argv=None) -> int:
    from lickd import StudentCodec, zoo
    from lickd.eval.bench import parameter_counts
    from lickd.eval.codecs import LickdCodec
    from lickd.eval.metrics import psnr_rgb
    from lickd.eval.runner import evaluate
    from lickd.fileio import atomic_write
    from lickd.image import list_images, load_rgb
    from lickd.provenance import cpu_name
    from lickd.train import export_run
    from lickd.train.checkpoint import CHECKPOINT

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("--name", required=True)
    p.add_argument("--description", default="")
    p.add_argument("--default", action="store_true", help="make it the model lickd encode uses")
    p.add_argument("--kodak", default=str(ROOT.parent / "shared" / "data" / "kodak"))
    p.add_argument("--force", action="store_true", help="ship even where it does not beat JPEG")
    p.add_argument("--qualities", default="auto", type=quality_range_arg,
                   help="variable rate: the qualities to offer, LOW-HIGH or auto")
    p.add_argument("--dry-run", action="store_true", help="measure and report, change nothing")
    p.add_argument("--limit", type=int, default=0, help="a smoke test on the first N images (implies --dry-run)")
    args = p.parse_args(argv)
    torch.set_grad_enabled(False)

    images = list_images(args.kodak)
    if args.limit:
        images, args.dry_run = images[: args.limit], True
    elif len(images) != 24:
        raise SystemExit(f"{args.kodak}: expected the 24 Kodak images, found {len(images)}")
    scratch = tempfile.TemporaryDirectory()
    tmp = Path(scratch.name)
    run = tmp / Path(args.run_dir).name  # one copy of the checkpoint: the run may go on meanwhile
    run.mkdir()
    shutil.copyfile(Path(args.run_dir) / CHECKPOINT, run / CHECKPOINT)
    half = export_run(run, tmp / "half.safetensors", half=True, name=args.name)
    full = export_run(run, tmp / "full.safetensors", half=False, name=args.name)
    codec = StudentCodec.from_file(half.path, device="cpu")
    reference = StudentCodec.from_file(full.path, device="cpu")
    if not codec.variable_rate and args.qualities != "auto":
        raise SystemExit("--qualities is for variable-rate models; a fixed-rate one offers its own")
    qualities = list(range(1, 9)) if codec.variable_rate else [codec.info.quality]

    # fp16 against fp32 on four images, at the lowest, default and highest quality
    fp16 = []
    for path in images[:4]:
        img = load_rgb(path)
        for q in sorted({qualities[0], codec.quality_for(None) or qualities[0], qualities[-1]}):
            q = q if codec.variable_rate else None
            a, b = codec.compress(img, quality=q), reference.compress(img, quality=q)
            fp16.append({"image": Path(path).name, "quality": q, "bytes_fp16": len(a), "bytes_fp32": len(b),
                         "psnr_fp16": psnr_rgb(img, codec.decompress(a, output="numpy")),
                         "psnr_fp32": psnr_rgb(img, reference.decompress(b, output="numpy"))})
    d_psnr = [r["psnr_fp16"] - r["psnr_fp32"] for r in fp16]
    d_bytes = [r["bytes_fp16"] / r["bytes_fp32"] - 1 for r in fp16]
    print(f"fp16 vs fp32: PSNR {min(d_psnr):+.4f} .. {max(d_psnr):+.4f} dB, "
          f"bytes {100 * min(d_bytes):+.3f} .. {100 * max(d_bytes):+.3f} %", file=sys.stderr)

    def shipped_description(c) -> str:
        return LickdCodec(c).description() + " (fp16 weights as shipped)"

    points = [LickdCodec(codec, quality=q if codec.variable_rate else None) for q in qualities]
    doc = evaluate(points, images, name=f"lickd {args.name}", description=shipped_description(codec),
                   dataset=str(args.kodak))
    doc["fp16_vs_fp32"] = fp16
    jpeg = json.loads((RESULTS / "jpeg.json").read_text())
    r = doc["results"]
    margins = [psnr - jpeg_psnr_at(b, jpeg) for b, psnr in zip(r["bpp"], r["psnr-rgb"])]
    for q, b, psnr, m in zip(r["quality"], r["bpp"], r["psnr-rgb"], margins):
        print(f"q={q}: {b:.4f} bpp {psnr:.2f} dB, vs JPEG at that rate {m:+.2f} dB", file=sys.stderr)
    offered = None
    if codec.variable_rate:
        offered = offered_range(r["quality"], margins, args.qualities)
        beats = offered is not None
        if not beats and args.force:  # an experiment: the range asked for, or all of it
            offered = args.qualities if args.qualities != "auto" else WHOLE_RANGE
        if offered is not None:
            print(f"offers qualities {offered[0]}..{offered[1]}", file=sys.stderr)
        if offered == WHOLE_RANGE:
            offered = None  # the whole range: nothing to narrow
    else:
        beats = all(m > 0 for m in margins)
    if not beats and not args.force:
        print("refused: it does not beat JPEG at every quality it would offer (--force to ship anyway)",
              file=sys.stderr)
        return 1
    if args.dry_run:
        return 0
    if offered is not None:  # the measured tensors, the range in the metadata
        half = zoo.narrow_qualities(half.path, tmp / "offered.safetensors", offered)
        codec = StudentCodec.from_file(half.path, device="cpu")
        doc["description"] = shipped_description(codec)  # names the file that ships

    default_q = codec.quality_for(None)
    kodim01 = doc["per_image"][qualities.index(default_q) if codec.variable_rate else 0]["images"]["kodim01.png"]
    img = load_rgb(next(p for p in images if Path(p).name == "kodim23.png"))
    enc_ms, dec_ms = time_codec(codec, img, default_q if codec.variable_rate else None)
    params = parameter_counts(codec.model)

    out_json = RESULTS / f"lickd-{args.name}.json"
    atomic_write(out_json, (json.dumps(doc, indent=2) + "\n").encode())
    target = ROOT / "lickd" / "zoo" / "weights" / f"{args.name}.safetensors"
    atomic_write(target, half.path.read_bytes())
    registry_path = ROOT / "lickd" / "zoo" / "registry.json"
    registry = json.loads(registry_path.read_text())
    entries = [e for e in registry["models"] if e["name"] != args.name]
    if args.default:
        for e in entries:
            e.pop("default", None)
    entry = {
        "name": args.name, "file": target.name, "sha256": zoo.file_sha256(target),
        "architecture": half.architecture, "N": half.N, "M": half.M, "quality": half.quality,
        **({"qualities": list(half.qualities)} if half.qualities else {}),
        "lambda": half.lmbda, "metric": half.metric, "description": args.description,
        **({"default": True} if args.default or not entries else {}),
        "measured": {
            "kodak": {"quality": r["quality"], "bpp": [round(v, 5) for v in r["bpp"]],
                      "psnr-rgb": [round(v, 4) for v in r["psnr-rgb"]],
                      "ms-ssim-rgb": [round(v, 5) for v in r["ms-ssim-rgb"]],
                      "vs_jpeg_db": [round(v, 3) for v in margins], "results": str(out_json.relative_to(ROOT))},
            "kodim01": {"quality": default_q, "bytes": kodim01["bytes"], "psnr-rgb": round(kodim01["psnr-rgb"], 4)},
            "parameters": params.get("total", sum(params.values())),
            "cpu": {"name": cpu_name(), "threads": torch.get_num_threads(), "image": "kodim23 768x512",
                    "quality": default_q, "encode_ms": round(enc_ms, 1), "decode_ms": round(dec_ms, 1)},
            "fp16_vs_fp32_db": [round(min(d_psnr), 4), round(max(d_psnr), 4)],
            "training": half.training,
        },
    }
    registry["models"] = entries + [entry]
    atomic_write(registry_path, (json.dumps(registry, indent=2) + "\n").encode())  # last: names a file already there
    print(f"shipped {target.relative_to(ROOT)} ({target.stat().st_size / 1e6:.1f} MB, sha256 {entry['sha256'][:16]}), "
          f"results {out_json.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
