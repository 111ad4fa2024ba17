"""Every command's flags, in one place: ``build_parser``."""
from __future__ import annotations

import argparse

from .. import __version__
from . import coding, evaluation, models, training

DEVICES = ["auto", "cpu", "cuda"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lickd", description="Learned image codec with distilled students.")
    p.add_argument("--version", action="version", version=f"lickd {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _coding(sub)
    _convert(sub)
    _evaluation(sub)
    _training(sub)
    _models(sub)
    return p


def _coding(sub) -> None:
    def common(sp, output_help):
        sp.add_argument("input", nargs="+", action=_Inputs, help="input file(s)")
        sp.add_argument("-o", "--output", help=output_help + "; with several inputs, an existing folder "
                                                             "(default: each output beside its input)")
        sp.add_argument("--weights", help="lickd weights file (.safetensors)")
        sp.add_argument("--device", default="auto", choices=DEVICES, help="default: auto")
        sp.add_argument("-f", "--force", action="store_true", help="overwrite the output")
        sp.add_argument("-j", "--jobs", type=_positive, metavar="N",
                        help="several inputs: files coded at once (default: one per core, each with a "
                             "share of torch's threads)")
        sp.add_argument("--json", action="store_true", help="print one JSON object to stdout (one line per "
                                                            "file with several inputs)")
        sp.add_argument("--quiet", action="store_true", help="print nothing on success")

    e = sub.add_parser("encode", help="compress an image to .lkd")
    common(e, "output .lkd, or a folder (default: input with .lkd suffix)")
    e.add_argument("-q", "--quality", type=_quality, metavar="Q",
                   help="1..8 (fractions too, e.g. 3.5), CompressAI's lambda scale; higher is better "
                        "(default: the model's own, 3 for the shipped default)")
    e.add_argument("--model", help="registered model name (see 'lickd models')")
    e.add_argument("--psnr", action="store_true", help="also decode and report PSNR")
    e.set_defaults(func=coding.cmd_encode)

    d = sub.add_parser("decode", help="decompress a .lkd file to an image")
    common(d, "output image, format from the suffix, or a folder (default: input with .png suffix)")
    d.add_argument("--ref", help="reference image: report PSNR against it (one input only)")
    d.set_defaults(func=coding.cmd_decode)

    i = sub.add_parser("info", help="show the header of a .lkd file")
    i.add_argument("input")
    i.add_argument("--json", action="store_true")
    i.add_argument("--quiet", action="store_true", help="print nothing: the exit status says whether the file is sound")
    i.set_defaults(func=coding.cmd_info)


def _convert(sub) -> None:
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
    c.set_defaults(func=models.cmd_convert)


def _evaluation(sub) -> None:
    e = sub.add_parser("eval", help="RD evaluation on a folder (CompressAI result JSON)")
    e.add_argument("dataset", help="folder of images (e.g. ../shared/data/kodak)")
    src = e.add_mutually_exclusive_group()
    src.add_argument("--codec", choices=["jpeg", "webp", "avif"], help="a classical anchor through Pillow")
    src.add_argument("--weights", action="append", help="lickd weights file, one per RD point (repeatable)")
    src.add_argument("--model", action="append", help="registered model name (repeatable; default: every shipped model)")
    e.add_argument("-q", "--quality", help="comma-separated qualities (codec scale, or lickd registry 1..8)")
    e.add_argument("--subsampling", choices=["default", "444"], default="default",
                   help="chroma subsampling of the classical codecs (default: the encoder's own, 4:2:0)")
    e.add_argument("--device", default="auto", choices=DEVICES)
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
    e.set_defaults(func=evaluation.cmd_eval)

    b = sub.add_parser("bd-rate", help="Bjøntegaard deltas of result files against an anchor")
    b.add_argument("anchor", help="anchor result JSON")
    b.add_argument("test", nargs="+", help="result JSON(s) to compare")
    b.add_argument("--metric", choices=["psnr", "ms-ssim"], default="psnr")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=evaluation.cmd_bd_rate)

    p = sub.add_parser("plot", help="RD curves of result files")
    p.add_argument("results", nargs="+", help="result JSON files (CompressAI schema)")
    p.add_argument("-o", "--output", required=True, help="image file (.png, .pdf, .svg)")
    p.add_argument("--title")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=evaluation.cmd_plot)

    n = sub.add_parser("bench", help="parameters, MACs, per-stage latency, memory and energy of a model")
    n.add_argument("--weights", help="lickd weights file")
    n.add_argument("--model", help="registered model name or quality")
    n.add_argument("--image", help="image to code (default: random pixels of --size)")
    n.add_argument("--size", default="768x512", help="WxH of the default image")
    n.add_argument("--device", default="auto", choices=DEVICES)
    n.add_argument("--repeats", type=int, default=10)
    n.add_argument("--json", help="also write the numbers to this JSON file")
    n.set_defaults(func=evaluation.cmd_bench)


class _Inputs(argparse.Action):
    """``inputs``: every input; ``input``: the input when there is one, None with several (the
    commands take the one-file path, unchanged, or the many-file one)."""

    def __call__(self, parser, namespace, values, option_string=None):
        namespace.inputs = list(values)
        setattr(namespace, self.dest, values[0] if len(values) == 1 else None)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _quality(text: str) -> float:
    """-q: a number in 1..8 (argparse turns the ValueError into a usage error)."""
    from ..models import check_quality

    try:
        return check_quality(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"quality must be a number in 1..8, got {text!r}") from None


def _training(sub) -> None:
    for name, text in (("train", "train a model (teacher, or a student without KD)"),
                       ("distill", "distil a student from a frozen teacher")):
        t = sub.add_parser(name, help=text)
        t.add_argument("config", nargs="?", help="TOML config (see lickd/train/config.py for the fields)")
        t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field (repeatable)")
        t.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN_DIR",
                       help="continue a run from its checkpoint: the run folder given (its configuration "
                            "comes from the checkpoint; --set may change steps, paths, logging), or run_dir")
        t.add_argument("--quiet", action="store_true")
        if name == "distill":
            t.add_argument("--teacher", help="teacher weights file (kd.teacher)")
            t.add_argument("--no-kd", action="store_true", help="the control: same student and budget, RD loss only")
        t.set_defaults(func=training.cmd_train)

    x = sub.add_parser("export", help="write a run's model as a registry-ready weights file")
    x.add_argument("input", help="run folder")
    x.add_argument("-o", "--output", required=True)
    x.add_argument("--name")
    x.add_argument("--half", action="store_true", help="fp16 parameters (tables rebuilt to match)")
    x.add_argument("-f", "--force", action="store_true")
    x.set_defaults(func=training.cmd_export)


def _models(sub) -> None:
    m = sub.add_parser("models", help="list the shipped models")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=models.cmd_models)
