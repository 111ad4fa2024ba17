"""The ``lickd`` command line (cwebp/avifenc conventions).

    lickd encode IN... [-o OUT|DIR] [-q Q | --model NAME | --weights FILE] [--device auto|cpu|cuda] [-j N] [-f] [--json] [--quiet] [--psnr]
    lickd decode IN... [-o OUT|DIR] [--weights FILE] [--device ...] [-j N] [-f] [--json] [--quiet] [--ref IMAGE]
    lickd info FILE [--json] [--quiet]
    lickd models [--json]
    lickd convert CKPT.pth.tar -o OUT.safetensors [-q Q] [--name NAME] [--half]
    lickd eval DIR (--codec jpeg|webp|avif | --weights FILE... | -q 1,2,3) [-o results.json]
    lickd bd-rate ANCHOR.json TEST.json... [--metric psnr|ms-ssim]
    lickd plot A.json B.json... -o rd.png
    lickd bench --weights FILE [--device cpu|cuda] [--json out.json]
    lickd train CONFIG.toml [--set key=value...] [--resume];  lickd distill CONFIG.toml --teacher W [--no-kd]
    lickd export RUN_DIR -o OUT.safetensors [--half]

Statistics go to stderr (one line), ``--json`` prints one JSON object to stdout with
CompressAI's key names. Several inputs (``lickd encode *.png -o DIR``) give one line, or one JSON
line, per file; a bad one is an error line, the others are still written (lickd.cli.batch).
Outputs are written atomically, with the umask's permissions, and never overwritten without
``-f``. Exit status: 0 on success (also when the reader of stdout goes away, as in
``lickd info F | head -1``), 1 on an error (one line naming the file and the problem), 2 on a
usage error.

The package sits above the rest of lickd and nothing below imports it: ``parser`` holds every
command's flags, ``coding``, ``models``, ``evaluation`` and ``training`` the commands, which call
plain functions of lickd, and ``common`` what they share.
"""
from __future__ import annotations

import os
import sys
from typing import Optional

from .common import EXIT_ERROR, CliError, discard_stdout
from .parser import build_parser

__all__ = ["CliError", "build_parser", "main"]


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from ..errors import LickdError

    try:
        status = args.func(args)  # None, or the status of a many-file run (1: some files were bad)
        sys.stdout.flush()  # a reader that went away shows here, not at exit
    except BrokenPipeError:
        discard_stdout()
        return 0
    except CliError as e:
        print(f"lickd: error: {e}", file=sys.stderr)
        return e.exit_code
    except LickdError as e:
        subject = getattr(args, "input", None)
        print(f"lickd: error: {f'{subject}: ' if subject else ''}{e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("lickd: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug: still one line, unless LICKD_DEBUG asks for the traceback
        if os.environ.get("LICKD_DEBUG"):
            raise
        print(f"lickd: error: {getattr(args, 'input', '')}: internal error "
              f"({type(e).__name__}: {e}); set LICKD_DEBUG=1 for the traceback", file=sys.stderr)
        return EXIT_ERROR
    return status or 0
