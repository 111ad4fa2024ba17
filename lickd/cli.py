"""The ``lickd`` command line (cwebp/avifenc conventions).

    lickd encode IN [-o OUT] [-q Q | --model NAME | --weights FILE] [--device auto|cpu|cuda] [-f] [--json] [--quiet] [--psnr]
    lickd decode IN [-o OUT] [--weights FILE] [--device ...] [-f] [--json] [--quiet] [--ref IMAGE]
    lickd info FILE [--json]
    lickd models [--json]
    lickd convert CKPT.pth.tar -o OUT.safetensors [-q Q] [--name NAME] [--half]
    lickd eval DIR (--codec jpeg|webp|avif | --weights FILE... | -q 1,2,3) [-o results.json]
    lickd bd-rate ANCHOR.json TEST.json... [--metric psnr|ms-ssim]
    lickd plot A.json B.json... -o rd.png
    lickd bench --weights FILE [--device cpu|cuda] [--json out.json]
    lickd train CONFIG.toml [--set key=value...] [--resume];  lickd distill CONFIG.toml --teacher W [--no-kd]
    lickd export RUN_DIR -o OUT.safetensors [--half]

Statistics go to stderr (one line), ``--json`` prints one JSON object to stdout with
CompressAI's key names. Outputs are written atomically and never overwritten without ``-f``.
Exit status: 0 on success, 1 on an error (one line naming the file and the problem), 2 on a
usage error.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Optional

from . import __version__

EXIT_ERROR = 1


class CliError(Exception):
    """An error to report as one line, with the file it concerns."""

    def __init__(self, path, message):
        super().__init__(f"{path}: {message}" if path else message)


# ---------------------------------------------------------------------------- helpers
def _atomic_write(path: Path, data: bytes, force: bool) -> None:
    """Writes via a temporary file in the same folder; without ``force`` an existing file is
    never replaced, even one that appears while we work."""
    folder = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if force:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails if path exists: no race with another writer
            except FileExistsError:
                raise CliError(path, "exists (use -f to overwrite)") from None
            except OSError:  # a file system without hard links: check, then rename
                if path.exists():
                    raise CliError(path, "exists (use -f to overwrite)") from None
                os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def check_output(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise CliError(path, "exists (use -f to overwrite)")
    if path.exists() and path.is_dir():
        raise CliError(path, "is a directory")
    if not (path.parent if str(path.parent) else Path(".")).is_dir():
        raise CliError(path, "output folder does not exist")


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CliError(path, "no such file") from None
    except IsADirectoryError:
        raise CliError(path, "is a directory") from None
    except OSError as e:
        raise CliError(path, e.strerror or str(e)) from None


def _load_image(path: Path):
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise CliError(path, "no such file")
    try:
        with Image.open(path) as img:
            img.load()
            return img.copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise CliError(path, f"cannot read image ({e})") from None


def _rgb8(image):
    """The 8-bit RGB pixels the codec sees for ``image`` (greyscale/palette converted silently)."""
    from .image import to_tensor, to_uint8

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return to_uint8(to_tensor(image)[0]).numpy()


def _encode_image(image, path: Path) -> bytes:
    """The bytes of ``image`` in the format named by the suffix of ``path`` (PNG by default)."""
    from PIL import Image

    fmt = Image.registered_extensions().get(path.suffix.lower(), None if path.suffix else "PNG")
    if fmt is None:
        raise CliError(path, f"unknown image format '{path.suffix}' (use .png, .ppm, .bmp, .tif...)")
    buf = io.BytesIO()
    try:
        image.save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    except (KeyError, ValueError, OSError) as e:
        raise CliError(path, f"cannot write {fmt} ({e})") from None
    return buf.getvalue()


def _codec_for_encode(args):
    from .codec import StudentCodec
    from .errors import LickdError

    try:
        if args.weights:
            return StudentCodec.from_file(args.weights, device=args.device)
        if args.model:
            return StudentCodec.from_pretrained(args.model, device=args.device)
        return StudentCodec.from_pretrained(args.quality, device=args.device)
    except LickdError as e:  # the message names the weights file or the registry
        raise CliError(None, str(e)) from None


def _codec_for_file(f, args):
    """The codec named by a file's header: --weights if given, else the registry."""
    from . import zoo
    from .codec import StudentCodec
    from .errors import LickdError, ModelNotFoundError

    try:
        if args.weights:
            return StudentCodec.from_file(args.weights, device=args.device)
        try:
            entry = zoo.find(name=f.model, weights_hash=f.weights)
        except ModelNotFoundError:
            raise CliError(args.input, f"model '{f.model}@{f.weights}' not found; "
                                       "run 'lickd models' or pass --weights FILE") from None
        return StudentCodec.from_pretrained(f"{entry.name}@{entry.sha256}", device=args.device)
    except LickdError as e:
        raise CliError(None, str(e)) from None


def _emit(args, line: str, record: dict) -> None:
    if args.json:
        print(json.dumps(record))
    elif not args.quiet:
        print(line, file=sys.stderr)


# ---------------------------------------------------------------------------- commands
def cmd_encode(args) -> None:
    from .eval.bench import synchronize
    from .eval.metrics import psnr_rgb

    src = Path(args.input)
    out = Path(args.output) if args.output else src.with_suffix(".lkd")
    check_output(out, args.force)
    image = _load_image(src)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        codec = _codec_for_encode(args)
        t0 = time.perf_counter()
        data = codec.compress(image)
        synchronize(codec.device)
        enc_time = time.perf_counter() - t0
    for w in caught:
        if not args.quiet:
            print(f"lickd: {src}: warning: {w.message}", file=sys.stderr)
    width, height = image.size
    bpp = 8 * len(data) / (width * height)
    record = {"input": str(src), "output": str(out), "width": width, "height": height, "bytes": len(data),
              "bpp": bpp, "model": codec.name, "device": codec.device.type, "encoding_time": enc_time}
    extra = ""
    if args.psnr:
        t0 = time.perf_counter()
        decoded = codec.decompress(data, output="numpy")
        synchronize(codec.device)
        record["decoding_time"] = time.perf_counter() - t0
        record["psnr-rgb"] = psnr_rgb(_rgb8(image), decoded)
        extra = f", PSNR {record['psnr-rgb']:.2f} dB"
    _atomic_write(out, data, args.force)
    _emit(args, f"{src} {width}x{height} -> {out}: {len(data):,} bytes ({bpp:.4f} bpp) "
                f"[{codec.name}] enc {enc_time * 1e3:.0f} ms ({codec.device.type}){extra}", record)


def cmd_decode(args) -> None:
    from . import container
    from .errors import CorruptFileError
    from .eval.bench import synchronize
    from .eval.metrics import psnr_rgb

    src = Path(args.input)
    out = Path(args.output) if args.output else src.with_suffix(".png")
    check_output(out, args.force)
    data = _read_bytes(src)
    try:
        f, _, _ = container.read_header(data)
    except CorruptFileError as e:
        raise CliError(src, str(e)) from None
    codec = _codec_for_file(f, args)
    t0 = time.perf_counter()
    try:
        image = codec.decompress(data, output="pil")
    except CorruptFileError as e:
        raise CliError(src, f"corrupt: {e}") from None
    synchronize(codec.device)
    dec_time = time.perf_counter() - t0
    record = {"input": str(src), "output": str(out), "width": f.width, "height": f.height, "bytes": len(data),
              "bpp": 8 * len(data) / (f.width * f.height), "model": codec.name, "device": codec.device.type,
              "decoding_time": dec_time}
    extra = ""
    if args.ref:
        reference, decoded = _rgb8(_load_image(Path(args.ref))), _rgb8(image)
        if reference.shape != decoded.shape:
            raise CliError(args.ref, f"reference size {reference.shape[1]}x{reference.shape[0]} differs from the "
                                     "decoded image")
        record["psnr-rgb"] = psnr_rgb(reference, decoded)
        extra = f", PSNR {record['psnr-rgb']:.2f} dB"
    _atomic_write(out, _encode_image(image, out), args.force)
    _emit(args, f"{src}: {f.width}x{f.height} {codec.name} -> {out}, dec {dec_time * 1e3:.0f} ms "
                f"({codec.device.type}){extra}", record)


def cmd_info(args) -> None:
    import math

    from . import container
    from .codec import FILE_CODER
    from .entropy import stream_info
    from .errors import CorruptFileError

    src = Path(args.input)
    data = _read_bytes(src)
    try:
        f = container.parse(data)
        bare = f.coder == FILE_CODER  # this lickd's files hold bare streams; their sizes come from the header
        streams = {s.name: stream_info(s.data, math.prod(s.shape) if bare else None) for s in f.sections}
    except CorruptFileError as e:
        raise CliError(src, f"corrupt: {e}") from None
    header = f.header_dict()
    header.update(file_bytes=len(data), payload_bytes=f.payload_bytes(), format_version=f.version,
                  bpp=8 * len(data) / (f.width * f.height))
    for lat in header["latents"]:
        s = streams[lat["name"]]
        lat.update(lanes=s["lanes"], chunks=s["n_chunks"], precision=s["precision"], symbols=s["n_symbols"])
    if args.json:
        print(json.dumps(header))
        return
    print(f"{src}: lickd file, format {f.version}, {len(data):,} bytes, {header['bpp']:.4f} bpp")
    print(f"  image   {f.width}x{f.height}")
    print(f"  model   {f.model}@{f.weights} ({f.architecture}, N={f.N}, M={f.M}, quality={f.quality}, "
          f"lambda={f.lmbda}, metric={f.metric})")
    print(f"  coder   {f.coder}")
    for lat in header["latents"]:
        shape = "x".join(map(str, lat["shape"]))
        print(f"  latent  {lat['name']}: {shape}, {lat['bytes']:,} bytes, {lat['symbols']:,} symbols, "
              f"{lat['chunks']} chunk(s) x {lat['lanes']} lanes, P={lat['precision']}")


def cmd_models(args) -> None:
    from . import zoo

    entries = zoo.registry()
    if args.json:
        print(json.dumps([{"name": e.name, "architecture": e.architecture, "N": e.N, "M": e.M,
                           "quality": e.quality, "lambda": e.lmbda, "metric": e.metric,
                           "sha256": e.sha256, "file": str(e.path)} for e in entries]))
        return
    if not entries:
        print("no pretrained model ships with this lickd yet (the registry is empty); "
              "encode with --weights FILE", file=sys.stderr)
        return
    for e in entries:
        size = e.path.stat().st_size if e.path and e.path.exists() else 0
        print(f"{e.name}@{e.short_hash}  {e.architecture} N={e.N} M={e.M} q={e.quality} "
              f"lambda={e.lmbda} {e.metric}  {size / 1024:.0f} KiB")


def cmd_convert(args) -> None:
    from .errors import LickdError
    from .models import MSE_LAMBDAS
    from .zoo.compressai_import import convert_checkpoint

    src, out = Path(args.input), Path(args.output)
    if not src.is_file():
        raise CliError(src, "no such file")
    check_output(out, args.force)
    lmbda = args.lmbda if args.lmbda is not None else (MSE_LAMBDAS[args.quality - 1] if args.quality else None)
    with tempfile.TemporaryDirectory(dir=out.parent if str(out.parent) else ".") as tmp:
        staged = Path(tmp) / out.name
        try:
            info = convert_checkpoint(src, staged, name=args.name or out.stem, architecture=args.architecture,
                                      quality=args.quality, lmbda=lmbda, half=args.half)
        except LickdError as e:
            raise CliError(None, str(e)) from None
        _atomic_write(out, staged.read_bytes(), args.force)
    _emit(args, f"{src} -> {out}: {info.architecture} N={info.N} M={info.M} sha256 {info.sha256[:16]}",
          {"input": str(src), "output": str(out), "architecture": info.architecture, "N": info.N, "M": info.M,
           "sha256": info.sha256})


# ---------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lickd", description="Learned image codec with distilled students.")
    p.add_argument("--version", action="version", version=f"lickd {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sp, output_help):
        sp.add_argument("input", help="input file")
        sp.add_argument("-o", "--output", help=output_help)
        sp.add_argument("--weights", help="lickd weights file (.safetensors)")
        sp.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: auto")
        sp.add_argument("-f", "--force", action="store_true", help="overwrite the output")
        sp.add_argument("--json", action="store_true", help="print one JSON object to stdout")
        sp.add_argument("--quiet", action="store_true", help="print nothing on success")

    e = sub.add_parser("encode", help="compress an image to .lkd")
    common(e, "output .lkd (default: input with .lkd suffix)")
    e.add_argument("-q", "--quality", type=int, default=3, choices=range(1, 9), metavar="Q",
                   help="1..8, CompressAI's lambda scale; higher is better (default 3)")
    e.add_argument("--model", help="registered model name (see 'lickd models')")
    e.add_argument("--psnr", action="store_true", help="also decode and report PSNR")
    e.set_defaults(func=cmd_encode)

    d = sub.add_parser("decode", help="decompress a .lkd file to an image")
    common(d, "output image, format from the suffix (default: input with .png suffix)")
    d.add_argument("--ref", help="reference image: report PSNR against it")
    d.set_defaults(func=cmd_decode)

    i = sub.add_parser("info", help="show the header of a .lkd file")
    i.add_argument("input")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_info)

    c = sub.add_parser("convert", help="import a CompressAI checkpoint as a lickd weights file")
    c.add_argument("input", help="CompressAI .pth.tar (zoo file or training checkpoint)")
    c.add_argument("-o", "--output", required=True, help="output .safetensors")
    c.add_argument("--name", help="model name recorded in files (default: output stem)")
    c.add_argument("--architecture", choices=["bmshj2018-factorized", "bmshj2018-hyperprior", "mbt2018-mean"],
                   help="default: guessed from the weights")
    c.add_argument("-q", "--quality", type=int, choices=range(1, 9), metavar="Q", help="CompressAI quality 1..8")
    c.add_argument("--lambda", dest="lmbda", type=float, help="training lambda (default: from --quality)")
    c.add_argument("--half", action="store_true", help="store parameters in fp16 (tables rebuilt to match)")
    c.add_argument("-f", "--force", action="store_true")
    c.add_argument("--json", action="store_true")
    c.add_argument("--quiet", action="store_true")
    c.set_defaults(func=cmd_convert)

    from .eval.commands import add_commands as add_eval_commands

    add_eval_commands(sub)

    from .train.commands import add_commands as add_train_commands

    add_train_commands(sub)

    m = sub.add_parser("models", help="list the shipped models")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=cmd_models)
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from .errors import LickdError

    try:
        args.func(args)
    except CliError as e:
        print(f"lickd: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except LickdError as e:
        print(f"lickd: error: {args.input}: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("lickd: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug: still one line, unless LICKD_DEBUG asks for the traceback
        if os.environ.get("LICKD_DEBUG"):
            raise
        print(f"lickd: error: {args.input if hasattr(args, 'input') else ''}: internal error "
              f"({type(e).__name__}: {e}); set LICKD_DEBUG=1 for the traceback", file=sys.stderr)
        return EXIT_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
