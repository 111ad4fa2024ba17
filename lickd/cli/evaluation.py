"""``lickd eval``, ``lickd bd-rate``, ``lickd plot`` and ``lickd bench``."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from .common import CliError, UsageError, load_codec, load_image


def _parse_qualities(text: str, kind=int) -> list:
    try:
        return [kind(q) for q in text.split(",") if q.strip()]
    except ValueError:
        what = "integers" if kind is int else "numbers"
        raise CliError(None, f"-q takes a comma-separated list of {what}, got {text!r}") from None


def _write_json(doc: dict, output) -> None:
    from ..fileio import atomic_write

    text = json.dumps(doc, indent=2, allow_nan=True)
    if output in (None, "-"):
        print(text)
    else:
        atomic_write(output, (text + "\n").encode())


def _lickd_points(args, fused) -> list:
    """The points of a lickd ``eval``: each --weights or --model (a variable-rate model at every
    -q it offers, by default each whole quality it offers of 1..8; a fixed-rate one at its own
    quality), else the shipped models for -q, else every shipped model."""
    from .. import zoo
    from ..eval.codecs import LickdCodec
    qualities = _parse_qualities(args.quality, float) if args.quality else None
    if qualities:
        from ..models import check_quality

        try:
            qualities = [check_quality(q) for q in qualities]
        except ValueError as e:
            raise UsageError(None, f"-q: {e}") from None
    if args.weights:
        codecs = [load_codec(args.device, weights=w) for w in args.weights]
    elif args.model:
        codecs = [load_codec(args.device, model=m) for m in args.model]
    elif qualities:
        if not zoo.registry():
            load_codec(args.device)  # raises the empty-registry error
        codecs = []  # the models for these qualities, each loaded once (a variable-rate one serves them all)
        for q in qualities:
            entry = zoo.find_quality(q)
            if all(c.info.sha256 != entry.sha256 for c in codecs):
                codecs.append(load_codec(args.device, model=f"{entry.name}@{entry.sha256}"))
    else:  # every shipped model
        codecs = [load_codec(args.device, model=f"{e.name}@{e.sha256}") for e in zoo.registry()] \
            or [load_codec(args.device)]  # an empty registry: its error
    if args.fused:
        import torch

        from .. import accelerate
        from ..kernels import kernels_available

        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.fused]
        for c in codecs:
            if not args.emulate and not kernels_available(torch.empty(0, device=c.device)):
                raise CliError(None, "--fused runs the Triton kernels: it needs a CUDA device (or "
                                     "TRITON_INTERPRET=1, very slow); on a CPU add --emulate")
            accelerate(c.model, dtype=dtype, emulate=args.emulate)
    points = []
    for c in codecs:
        if c.variable_rate:
            low, high = c.info.offered_range
            offered = ([q for q in qualities if c.info.offers(q)] if qualities  # its whole qualities, else its ends
                       else list(range(math.ceil(low), math.floor(high) + 1)) or sorted({low, high}))
            if not offered:
                raise UsageError(None, f"-q: model '{c.info.name}' offers qualities {low:g}..{high:g}")
            points += [LickdCodec(c, fused=fused, quality=q) for q in offered]
        elif qualities and not args.weights and not args.model and c.info.quality not in qualities:
            continue
        else:
            points.append(LickdCodec(c, fused=fused))
    return points


def cmd_eval(args) -> None:
    from ..eval.codecs import DEFAULT_QUALITIES, PillowCodec
    from ..eval.runner import evaluate
    from ..image import list_images

    if args.emulate and not (args.fused and not args.codec):
        raise CliError(None, "--emulate needs --fused DTYPE (and a lickd model, not --codec)")
    folder = Path(args.dataset)
    if not folder.is_dir():
        raise CliError(folder, "no such folder")
    images = list_images(folder)
    if args.limit:
        images = images[: args.limit]
    if not images:
        raise CliError(folder, "no images found")
    if args.codec:
        qualities = _parse_qualities(args.quality) if args.quality else list(DEFAULT_QUALITIES[args.codec])
        try:
            points = [PillowCodec(args.codec, q, args.subsampling) for q in qualities]
        except (ValueError, RuntimeError) as e:
            raise CliError(None, str(e)) from None
        name, description = points[0].name, points[0].description()
    else:
        fused = args.fused and args.fused + (" (emulated: the kernels' rounding model in PyTorch)" if args.emulate else "")
        points = _lickd_points(args, fused)
        name = args.name or points[0].name
        description = "; ".join(p.description() for p in points)
    doc = evaluate(points, images, name=args.name or name, description=description, progress=not args.quiet,
                   dataset=str(folder))
    _write_json(doc, args.output)
    if not args.quiet and args.output not in (None, "-"):
        r = doc["results"]
        for i, q in enumerate(r["quality"]):
            print(f"q={q}: {r['bpp'][i]:.4f} bpp, {r['psnr-rgb'][i]:.2f} dB, MS-SSIM {r['ms-ssim-rgb'][i]:.4f}, "
                  f"enc {1e3 * r['encoding_time'][i]:.1f} ms, dec {1e3 * r['decoding_time'][i]:.1f} ms",
                  file=sys.stderr)


def cmd_bd_rate(args) -> None:
    from ..eval.bdrate import bd_psnr, bd_rate
    from ..eval.metrics import ms_ssim_db
    from ..eval.plot import load_results

    try:
        anchor = load_results(args.anchor)
        tests = [load_results(p) for p in args.test]
    except (OSError, ValueError, json.JSONDecodeError) as e:
        raise CliError(None, f"cannot read results ({e})") from None
    key = {"psnr": "psnr-rgb", "ms-ssim": "ms-ssim-rgb"}[args.metric]

    def curve(doc):
        r = doc["results"]
        if key not in r:
            raise CliError(None, f"{doc['name']}: no '{key}' in results")
        pts = [(b, v) for b, v in zip(r["bpp"], r[key]) if v is not None and not math.isnan(v)]
        dist = [ms_ssim_db(v) if key == "ms-ssim-rgb" else v for _, v in pts]
        return [b for b, _ in pts], dist

    ra, da = curve(anchor)
    rows = []
    for doc in tests:
        rt, dt = curve(doc)
        row = {"anchor": anchor["name"], "test": doc["name"], "metric": key}
        for interp in ("pchip", "cubic"):
            try:
                row[f"bd-rate-{interp}"] = bd_rate(ra, da, rt, dt, interp)
                row[f"bd-{args.metric}-{interp}"] = bd_psnr(ra, da, rt, dt, interp)
            except ValueError as e:
                row[f"bd-rate-{interp}"] = row[f"bd-{args.metric}-{interp}"] = None
                row[f"{interp}-note"] = str(e)
        rows.append(row)
    if args.json:
        print(json.dumps(rows))
        return
    unit = "dB"
    print(f"anchor: {anchor['name']}  metric: {key}  (negative BD-rate = fewer bits than the anchor)")
    print(f"{'test':30s} {'BD-rate pchip':>14s} {'BD-rate cubic':>14s} {'BD-' + args.metric + ' pchip':>16s}")
    for row in rows:
        def fmt(v, suffix):
            return "n/a" if v is None else f"{v:+.2f}{suffix}"
        print(f"{row['test'][:30]:30s} {fmt(row['bd-rate-pchip'], ' %'):>14s} {fmt(row['bd-rate-cubic'], ' %'):>14s} "
              f"{fmt(row[f'bd-{args.metric}-pchip'], ' ' + unit):>16s}")


def cmd_plot(args) -> None:
    from ..eval.plot import plot_rd

    try:
        plot_rd(args.results, args.output, title=args.title or "")
    except ImportError:
        raise CliError(None, "lickd plot needs matplotlib: pip install 'lickd[plot]'") from None
    except (OSError, ValueError, json.JSONDecodeError) as e:
        raise CliError(None, f"cannot plot ({e})") from None
    if not args.quiet:
        print(f"wrote {args.output}", file=sys.stderr)


def cmd_bench(args) -> None:
    import numpy as np

    from ..eval.bench import benchmark, macs_per_pixel, parameter_counts
    from ..image import rgb_array
    from ..provenance import environment

    if args.weights and args.model:
        raise UsageError(None, "--model and --weights each choose the model: give one of them")
    codec = load_codec(args.device, weights=args.weights, model=args.model)
    if args.image:
        image = rgb_array(load_image(Path(args.image)))
    else:
        w, h = (int(v) for v in args.size.lower().split("x"))
        rng = np.random.default_rng(0)
        image = rng.integers(0, 256, (h, w, 3), dtype="uint8")
    h, w = image.shape[:2]
    padded_h, padded_w = codec.padded_size((h, w))
    doc = {"model": codec.name, "architecture": codec.info.architecture, "N": codec.info.N, "M": codec.info.M,
           "device": codec.device.type, "parameters": parameter_counts(codec.model),
           "kmacs_per_pixel": {k: v / 1e3 for k, v in macs_per_pixel(codec.model, padded_h, padded_w).items()},
           **benchmark(codec, image, repeats=args.repeats), "environment": environment()}
    lat = doc["latency_ms"]
    pixels = padded_h * padded_w
    doc["gmac_per_s"] = {d: doc["kmacs_per_pixel"][d] * 1e3 * pixels / 1e9 / (lat[d]["total"] / 1e3)
                         for d in ("encode", "decode")}
    if args.json:
        _write_json(doc, args.json)
    print(f"{doc['model']} ({doc['architecture']} N={doc['N']} M={doc['M']}) on {doc['device']}, image {doc['image']}")
    print(f"parameters {doc['parameters']['total']:,}; kMAC/pixel encode {doc['kmacs_per_pixel']['encode']:.1f}, "
          f"decode {doc['kmacs_per_pixel']['decode']:.1f}")
    stages = ["g_a", "h_a", "h_s", "g_s", "entropy coding", "total"]
    print(f"{'ms (median)':12s}" + "".join(f"{s:>16s}" for s in stages))
    for d in ("encode", "decode"):
        print(f"{d:12s}" + "".join(f"{lat[d].get(s, 0.0):16.2f}" for s in stages))
    print(f"fast path: {doc['fast_path']['summary']}; arithmetic rate (MACs / total time) encode "
          f"{doc['gmac_per_s']['encode']:.1f} GMAC/s, decode {doc['gmac_per_s']['decode']:.1f} GMAC/s")
    energy = doc.get("energy_j_per_image")
    print(f"throughput: encode {doc['encode_mpixel_per_s']:.2f} MP/s, decode {doc['decode_mpixel_per_s']:.2f} MP/s; "
          f"peak memory {doc['peak_memory_mb']:.0f} MB ({doc['peak_memory_kind']}); energy "
          + (f"{energy:.3f} J/image (encode+decode, idle subtracted)" if energy is not None else f"n/a ({doc['energy_note']})"))
