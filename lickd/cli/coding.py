"""``lickd encode``, ``lickd decode`` and ``lickd info``."""
from __future__ import annotations

import io
import math
import sys
import time
import warnings
from pathlib import Path

from .common import CliError, UsageError, check_output, emit, load_codec, load_image, read_input, write_output


def _image_format(path: Path):
    """Pillow's format for the suffix of ``path`` (None: not an image suffix)."""
    from PIL import Image

    return Image.registered_extensions().get(path.suffix.lower())


def _encode_image(image, path: Path) -> bytes:
    """The bytes of ``image`` in the format named by the suffix of ``path`` (PNG by default)."""
    fmt = _image_format(path) if path.suffix else "PNG"
    if fmt is None:
        raise CliError(path, f"unknown image format '{path.suffix}' (use .png, .ppm, .bmp, .tif...)")
    buf = io.BytesIO()
    try:
        image.save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    except (KeyError, ValueError, OSError) as e:
        raise CliError(path, f"cannot write {fmt} ({e})") from None
    return buf.getvalue()


def _parse(src: Path, data: bytes):
    """The checked container of a .lkd file (header, section lengths and CRCs)."""
    from .. import container
    from ..errors import CorruptFileError

    try:
        return container.parse(data)
    except CorruptFileError as e:  # the message says what is wrong with the file
        raise CliError(src, str(e)) from None


def _codec_for_file(f, args):
    """The codec named by a file's header: --weights if given, else the registry."""
    from .. import zoo
    from ..errors import ModelNotFoundError

    if args.weights:
        return load_codec(args.device, weights=args.weights)
    try:
        entry = zoo.find(name=f.model, weights_hash=f.weights)
    except ModelNotFoundError:
        raise CliError(args.input, f"model '{f.model}@{f.weights}' not found; "
                                   "run 'lickd models' or pass --weights FILE") from None
    return load_codec(args.device, model=f"{entry.name}@{entry.sha256}")


def cmd_encode(args) -> None:
    from ..device import synchronize
    from ..eval.metrics import psnr_rgb
    from ..image import rgb_array

    if args.model and args.weights:
        raise UsageError(None, "--model and --weights each choose the model: give one of them")
    src = Path(args.input)
    out = Path(args.output) if args.output else src.with_suffix(".lkd")
    if _image_format(out):
        raise UsageError(out, f"encode writes a .lkd file, not {_image_format(out)}: name the output .lkd")
    check_output(out, args.force)
    image = load_image(src)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        codec = load_codec(args.device, args.weights, args.model, args.quality)
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
        record["psnr-rgb"] = psnr_rgb(rgb_array(image), decoded)
        extra = f", PSNR {record['psnr-rgb']:.2f} dB"
    write_output(out, data, args.force)
    emit(args, f"{src} {width}x{height} -> {out}: {len(data):,} bytes ({bpp:.4f} bpp) "
               f"[{codec.name}] enc {enc_time * 1e3:.0f} ms ({codec.device.type}){extra}", record)


def cmd_decode(args) -> None:
    from ..device import synchronize
    from ..errors import CorruptFileError
    from ..eval.metrics import psnr_rgb
    from ..image import rgb_array

    src = Path(args.input)
    out = Path(args.output) if args.output else src.with_suffix(".png")
    if out.suffix.lower() == ".lkd":
        raise UsageError(out, "decode writes an image, not a .lkd file: name the output .png, .ppm, .bmp, .tif...")
    check_output(out, args.force)
    data = read_input(src)
    f = _parse(src, data)
    codec = _codec_for_file(f, args)
    t0 = time.perf_counter()
    try:
        image = codec.decompress(data, output="pil")
    except CorruptFileError as e:  # past the container: the coded streams
        raise CliError(src, f"corrupt: {e}") from None
    synchronize(codec.device)
    dec_time = time.perf_counter() - t0
    record = {"input": str(src), "output": str(out), "width": f.width, "height": f.height, "bytes": len(data),
              "bpp": 8 * len(data) / (f.width * f.height), "model": codec.name, "device": codec.device.type,
              "decoding_time": dec_time}
    extra = ""
    if args.ref:
        reference, decoded = rgb_array(load_image(Path(args.ref))), rgb_array(image)
        if reference.shape != decoded.shape:
            raise CliError(args.ref, f"reference size {reference.shape[1]}x{reference.shape[0]} differs from the "
                                     "decoded image")
        record["psnr-rgb"] = psnr_rgb(reference, decoded)
        extra = f", PSNR {record['psnr-rgb']:.2f} dB"
    write_output(out, _encode_image(image, out), args.force)
    emit(args, f"{src}: {f.width}x{f.height} {codec.name} -> {out}, dec {dec_time * 1e3:.0f} ms "
               f"({codec.device.type}){extra}", record)


def cmd_info(args) -> None:
    import json

    from ..codec import FILE_CODER
    from ..entropy import stream_info
    from ..errors import CorruptFileError

    src = Path(args.input)
    data = read_input(src)
    f = _parse(src, data)
    bare = f.coder == FILE_CODER  # this lickd's files hold bare streams; their sizes come from the header
    try:
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
    if args.quiet:  # the exit status says whether the file is sound
        return
    model = [f.architecture, f"N={f.N}", f"M={f.M}"] + [
        f"{key}={value}" for key, value in (("quality", f.quality), ("lambda", f.lmbda), ("metric", f.metric))
        if value is not None]
    print(f"{src}: lickd file, format {f.version}, {len(data):,} bytes, {header['bpp']:.4f} bpp")
    print(f"  image   {f.width}x{f.height}")
    print(f"  model   {f.model}@{f.weights} ({', '.join(model)})")
    print(f"  coder   {f.coder}")
    for lat in header["latents"]:
        shape = "x".join(map(str, lat["shape"]))
        print(f"  latent  {lat['name']}: {shape}, {lat['bytes']:,} bytes, {lat['symbols']:,} symbols, "
              f"{lat['chunks']} chunk(s) x {lat['lanes']} lanes, P={lat['precision']}")
