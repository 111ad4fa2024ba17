"""``lickd eval``, ``lickd bd-rate``, ``lickd plot`` and ``lickd bench``."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path


def _parse_qualities(text: str) -> list[int]:
    try:
        return [int(q) for q in text.split(",") if q.strip()]
    except ValueError:
        raise SystemExit(f"lickd: error: -q takes a comma-separated list of integers, got {text!r}") from None


def _write_json(doc: dict, output) -> None:
    text = json.dumps(doc, indent=2, allow_nan=True)
    if output in (None, "-"):
        print(text)
    else:
        Path(output).write_text(text + "\n")


def cmd_eval(args) -> None:
    from ..cli import CliError
    from ..codec import StudentCodec
    from ..image import list_images
    from .codecs import DEFAULT_QUALITIES, LickdCodec, PillowCodec
    from .runner import evaluate

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
        if args.weights:
            codecs = [StudentCodec.from_file(w, device=args.device) for w in args.weights]
        elif args.model:
            codecs = [StudentCodec.from_pretrained(m, device=args.device) for m in args.model]
        elif args.quality:
            codecs = [StudentCodec.from_pretrained(q, device=args.device) for q in _parse_qualities(args.quality)]
        else:  # every shipped model
            from .. import zoo

            entries = zoo.registry() or [zoo.find()]  # find() raises the registry-empty error
            codecs = [StudentCodec.from_pretrained(f"{e.name}@{e.sha256}", device=args.device) for e in entries]
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
        fused = args.fused and args.fused + (" (emulated: the kernels' rounding model in PyTorch)" if args.emulate else "")
        points = [LickdCodec(c, fused=fused) for c in codecs]
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
    from ..cli import CliError
    from .bdrate import bd_psnr, bd_rate
    from .metrics import ms_ssim_db
    from .plot import load_results

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
    from ..cli import CliError
    from .plot import plot_rd

    try:
        plot_rd(args.results, args.output, title=args.title or "")
    except ImportError:
        raise CliError(None, "lickd plot needs matplotlib: pip install 'lickd[plot]'") from None
    except (OSError, ValueError, json.JSONDecodeError) as e:
        raise CliError(None, f"cannot plot ({e})") from None
    if not args.quiet:
        print(f"wrote {args.output}", file=sys.stderr)


def cmd_bench(args) -> None:
    from ..codec import StudentCodec
    from .bench import benchmark, macs_per_pixel, parameter_counts
    from ..provenance import environment
    from .runner import load_rgb

    codec = (StudentCodec.from_file(args.weights, device=args.device) if args.weights
             else StudentCodec.from_pretrained(args.model or 3, device=args.device))
    if args.image:
        image = load_rgb(args.image)
    else:
        w, h = (int(v) for v in args.size.lower().split("x"))
        rng = __import__("numpy").random.default_rng(0)
        image = rng.integers(0, 256, (h, w, 3), dtype="uint8")
    h, w = image.shape[:2]
    f = codec.model.downsampling_factor
    doc = {"model": codec.name, "architecture": codec.info.architecture, "N": codec.info.N, "M": codec.info.M,
           "device": codec.device.type, "parameters": parameter_counts(codec.model),
           "kmacs_per_pixel": {k: v / 1e3 for k, v in
                               macs_per_pixel(codec.model, -(-h // f) * f, -(-w // f) * f).items()},
           **benchmark(codec, image, repeats=args.repeats), "environment": environment()}
    if args.json:
        _write_json(doc, args.json)
    lat = doc["latency_ms"]
    print(f"{doc['model']} ({doc['architecture']} N={doc['N']} M={doc['M']}) on {doc['device']}, image {doc['image']}")
    print(f"parameters {doc['parameters']['total']:,}; kMAC/pixel encode {doc['kmacs_per_pixel']['encode']:.1f}, "
          f"decode {doc['kmacs_per_pixel']['decode']:.1f}")
    stages = ["g_a", "h_a", "h_s", "g_s", "entropy coding", "total"]
    print(f"{'ms (median)':12s}" + "".join(f"{s:>16s}" for s in stages))
    for d in ("encode", "decode"):
        print(f"{d:12s}" + "".join(f"{lat[d].get(s, 0.0):16.2f}" for s in stages))
    energy = doc.get("energy_j_per_image")
    print(f"throughput: encode {doc['encode_mpixel_per_s']:.2f} MP/s, decode {doc['decode_mpixel_per_s']:.2f} MP/s; "
          f"peak memory {doc['peak_memory_mb']:.0f} MB ({doc['peak_memory_kind']}); energy "
          + (f"{energy:.3f} J/image (encode+decode, idle subtracted)" if energy is not None else f"n/a ({doc['energy_note']})"))


def add_commands(sub) -> None:
    e = sub.add_parser("eval", help="RD evaluation on a folder (CompressAI result JSON)")
    e.add_argument("dataset", help="folder of images (e.g. ../shared/data/kodak)")
    src = e.add_mutually_exclusive_group()
    src.add_argument("--codec", choices=["jpeg", "webp", "avif"], help="a classical anchor through Pillow")
    src.add_argument("--weights", action="append", help="lickd weights file, one per RD point (repeatable)")
    src.add_argument("--model", action="append", help="registered model name (repeatable; default: every shipped model)")
    e.add_argument("-q", "--quality", help="comma-separated qualities (codec scale, or lickd registry 1..8)")
    e.add_argument("--subsampling", choices=["default", "444"], default="default",
                   help="chroma subsampling of the classical codecs (default: the encoder's own, 4:2:0)")
    e.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    e.add_argument("--fused", choices=["bf16", "fp16", "fp32"],
                   help="lickd: g_a/g_s through the fused Triton kernels in this storage dtype (GPUs, or "
                        "TRITON_INTERPRET=1 on CPUs)")
    e.add_argument("--emulate", action="store_true",
                   help="with --fused: run the kernels' rounding model in PyTorch instead of the kernels (any "
                        "device, fast): predicts the fused path's PSNR and bytes without a GPU")
    e.add_argument("--name", help="curve name in the JSON")
    e.add_argument("--limit", type=int, help="only the first N images (quick runs)")
    e.add_argument("-o", "--output", help="result JSON (default: stdout)")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=cmd_eval)

    b = sub.add_parser("bd-rate", help="Bjøntegaard deltas of result files against an anchor")
    b.add_argument("anchor", help="anchor result JSON")
    b.add_argument("test", nargs="+", help="result JSON(s) to compare")
    b.add_argument("--metric", choices=["psnr", "ms-ssim"], default="psnr")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bd_rate)

    p = sub.add_parser("plot", help="RD curves of result files")
    p.add_argument("results", nargs="+", help="result JSON files (CompressAI schema)")
    p.add_argument("-o", "--output", required=True, help="image file (.png, .pdf, .svg)")
    p.add_argument("--title")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_plot)

    n = sub.add_parser("bench", help="parameters, MACs, per-stage latency, memory and energy of a model")
    n.add_argument("--weights", help="lickd weights file")
    n.add_argument("--model", help="registered model name or quality")
    n.add_argument("--image", help="image to code (default: random pixels of --size)")
    n.add_argument("--size", default="768x512", help="WxH of the default image")
    n.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    n.add_argument("--repeats", type=int, default=10)
    n.add_argument("--json", help="also write the numbers to this JSON file")
    n.set_defaults(func=cmd_bench)
