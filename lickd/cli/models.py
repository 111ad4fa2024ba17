"""``lickd models`` and ``lickd convert``."""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from .common import NO_MODELS, CliError, check_input, check_output, emit, write_output


def cmd_models(args) -> None:
    from .. import zoo

    entries = zoo.registry()
    if args.json:
        print(json.dumps([{"name": e.name, "architecture": e.architecture, "N": e.N, "M": e.M,
                           "quality": e.quality, "qualities": e.qualities, "lambda": e.lmbda, "metric": e.metric, "default": e.default,
                           "variable_rate": e.variable_rate, "sha256": e.sha256, "file": str(e.path),
                           "measured": e.measured} for e in entries]))
        return
    if not entries:
        print(NO_MODELS, file=sys.stderr)
        return
    for e in entries:
        size = e.path.stat().st_size if e.path and e.path.exists() else 0
        low, high = e.offered_range
        rate = (f"qualities {low:g}..{high:g} (variable rate)" if e.variable_rate
                else f"quality {e.quality}, lambda {e.lmbda}")
        print(f"{e.name}@{e.short_hash}{'  (default)' if e.default else ''}")
        print(f"  {e.architecture} N={e.N} M={e.M}, {rate}, {e.metric}; {size / 1e6:.1f} MB")
        m = e.measured
        if "parameters" in m:
            cpu = m.get("cpu", {})
            print(f"  {m['parameters'] / 1e6:.2f} M parameters; kodim23 at q{cpu.get('quality')}: encode "
                  f"{cpu.get('encode_ms')} ms, decode {cpu.get('decode_ms')} ms ({cpu.get('name')}, "
                  f"{cpu.get('threads')} threads)")
        kodak = m.get("kodak")
        if kodak:
            points = ", ".join(f"q{q:g} {b:.3f} bpp {p:.2f} dB" for q, b, p in
                               zip(kodak["quality"], kodak["bpp"], kodak["psnr-rgb"]))
            print(f"  Kodak (24 images, real files): {points}")


def cmd_convert(args) -> None:
    from ..errors import LickdError
    from ..models import MSE_LAMBDAS
    from ..zoo.compressai_import import convert_checkpoint

    src, out = check_input(Path(args.input)), Path(args.output)
    check_output(out, args.force)
    lmbda = args.lmbda if args.lmbda is not None else (MSE_LAMBDAS[args.quality - 1] if args.quality else None)
    with tempfile.TemporaryDirectory(dir=out.parent if str(out.parent) else ".") as tmp:
        staged = Path(tmp) / out.name
        try:
            info = convert_checkpoint(src, staged, name=args.name or out.stem, architecture=args.architecture,
                                      quality=args.quality, lmbda=lmbda, half=args.half)
        except LickdError as e:
            raise CliError(None, str(e)) from None
        write_output(out, staged.read_bytes(), args.force)
    emit(args, f"{src} -> {out}: {info.architecture} N={info.N} M={info.M} sha256 {info.sha256[:16]}",
         {"input": str(src), "output": str(out), "architecture": info.architecture, "N": info.N, "M": info.M,
          "sha256": info.sha256})
