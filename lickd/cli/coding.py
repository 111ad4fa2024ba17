"""``lickd encode``, ``lickd decode`` and ``lickd info``."""
from __future__ import annotations

import io
import math
import sys
import time
import warnings
from pathlib import Path

from . import batch
from .common import (EXIT_ERROR, CliError, UsageError, check_output, emit, load_codec, load_image, read_input,
                     write_output)


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


def _codec_for_file(f, args, src):
    """The codec named by a file's header: --weights if given, else the registry (an error names
    ``src``)."""
    from .. import zoo
    from ..errors import ModelNotFoundError

    if args.weights:
        return load_codec(args.device, weights=args.weights)
    try:
        entry = zoo.find(name=f.model, weights_hash=f.weights)
    except ModelNotFoundError:
        raise CliError(src, f"model '{f.model}@{f.weights}' not found; "
                            "run 'lickd models' or pass --weights FILE") from None
    return load_codec(args.device, model=f"{entry.name}@{entry.sha256}")


def _timed(codec, fn, *args):
    """``fn(*args)`` and the seconds it took, the device's queued work included."""
    from ..device import synchronize

    t0 = time.perf_counter()
    result = fn(*args)
    synchronize(codec.device)
    return result, time.perf_counter() - t0


def cmd_encode(args):
    if args.model and args.weights:
        raise UsageError(None, "--model and --weights each choose the model: give one of them")
    if args.input is None:
        return _encode_many(args)
    src = Path(args.input)
    out = batch.output_for(src, args.output, ".lkd")
    if _image_format(out):
        raise UsageError(out, f"encode writes a .lkd file, not {_image_format(out)}: name the output .lkd")
    check_output(out, args.force)
    image = load_image(src)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            codec = load_codec(args.device, args.weights, args.model, args.quality)
            line, record = _encode_one(codec, image, src, out, args)
        finally:
            for w in caught:
                if not args.quiet:
                    print(f"lickd: {src}: warning: {w.message}", file=sys.stderr)
    emit(args, line, record)


def _encode_one(codec, image, src: Path, out: Path, args) -> tuple[str, dict]:
    """Compresses ``image`` (read from ``src``) into ``out``: the summary line and the record."""
    from ..eval.metrics import psnr_rgb
    from ..image import rgb_array

    data, enc_time = _timed(codec, codec.compress, image)
    width, height = image.size
    bpp = 8 * len(data) / (width * height)
    record = {"input": str(src), "output": str(out), "width": width, "height": height, "bytes": len(data),
              "bpp": bpp, "model": codec.name, "device": codec.device.type, "encoding_time": enc_time}
    extra = ""
    if args.psnr:
        decoded, record["decoding_time"] = _timed(codec, codec.decompress, data, "numpy")
        record["psnr-rgb"] = psnr_rgb(rgb_array(image), decoded)
        extra = f", PSNR {record['psnr-rgb']:.2f} dB"
    write_output(out, data, args.force)
    return (f"{src} {width}x{height} -> {out}: {len(data):,} bytes ({bpp:.4f} bpp) "
            f"[{codec.name}] enc {enc_time * 1e3:.0f} ms ({codec.device.type}){extra}", record)


def _encode_many(args) -> int:
    """Several images: the codec loaded once, the files spread over the cores (lickd.cli.batch)."""
    jobs = batch.jobs_for(args.inputs, args.output, ".lkd")
    with batch.Batch(args, len(jobs)) as run:
        todo = run.writable(jobs, args.force)
        if todo:
            codec = load_codec(args.device, args.weights, args.model, args.quality)
            run.run(codec, todo, lambda codec, job: _encode_one(codec, load_image(job.src), job.src, job.out, args))
    return EXIT_ERROR if run.failures else 0


def cmd_decode(args):
    if args.input is None:
        return _decode_many(args)
    src = Path(args.input)
    out = batch.output_for(src, args.output, ".png")
    if out.suffix.lower() == ".lkd":
        raise UsageError(out, "decode writes an image, not a .lkd file: name the output .png, .ppm, .bmp, .tif...")
    check_output(out, args.force)
    data = read_input(src)
    f = _parse(src, data)
    codec = _codec_for_file(f, args, args.input)
    emit(args, *_decode_one(codec, data, f, src, out, args))


def _decode_one(codec, data: bytes, f, src: Path, out: Path, args) -> tuple[str, dict]:
    """Decompresses the file ``src`` (``data``, its parsed container ``f``) into the image ``out``:
    the summary line and the record."""
    from ..errors import CorruptFileError
    from ..eval.metrics import psnr_rgb
    from ..image import rgb_array

    try:
        image, dec_time = _timed(codec, codec.decompress, data, "pil")
    except CorruptFileError as e:  # past the container: the coded streams
        raise CliError(src, f"corrupt: {e}") from None
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
    return (f"{src}: {f.width}x{f.height} {codec.name} -> {out}, dec {dec_time * 1e3:.0f} ms "
            f"({codec.device.type}){extra}", record)


def _decode_many(args) -> int:
    """Several .lkd files: grouped by the model their headers name (each loaded once; --weights:
    one for all), each group's files spread over the cores (lickd.cli.batch)."""
    if args.ref:
        raise UsageError(None, "--ref names the reference of one input: decode one file with it")
    jobs = batch.jobs_for(args.inputs, args.output, ".png")
    with batch.Batch(args, len(jobs)) as run:
        groups: dict = {}
        for job in run.writable(jobs, args.force):
            try:
                job.data = read_input(job.src)
                job.header = _parse(job.src, job.data)
            except CliError as e:
                run.fail(e)
                continue
            key = None if args.weights else (job.header.model, job.header.weights)
            groups.setdefault(key, []).append(job)
        for key, members in groups.items():
            try:
                codec = _codec_for_file(members[0].header, args, None)
            except CliError as e:
                if key is None:  # --weights: no file can be decoded
                    raise
                for job in members:  # the registry has no such model: each of its files is one line
                    run.fail(CliError(job.src, str(e)))
                continue
            run.run(codec, members, lambda codec, job: _decode_one(codec, job.data, job.header, job.src, job.out,
                                                                  args))
            del codec
    return EXIT_ERROR if run.failures else 0


def cmd_info(args) -> None:
    import json

    from ..codec import READABLE_CODERS
    from ..entropy import stream_info
    from ..errors import CorruptFileError

    src = Path(args.input)
    data = read_input(src)
    f = _parse(src, data)
    bare = f.coder in READABLE_CODERS  # this lickd's files hold bare streams; their sizes come from the header
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
