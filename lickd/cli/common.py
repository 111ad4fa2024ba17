"""What every command shares: one-line errors, reading inputs, writing outputs, reporting.

Errors a user can cause are a ``CliError`` (exit status 1) or a ``UsageError`` (exit status 2),
printed as one line that names the file concerned.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

EXIT_ERROR = 1
EXIT_USAGE = 2

#: What to do when no model ships, in the command line's own terms.
NO_MODELS = ("no pretrained model ships with this lickd (the registry is empty); "
             "pass a weights file with --weights FILE")


class CliError(Exception):
    """An error to report as one line, with the file it concerns."""

    exit_code = EXIT_ERROR

    def __init__(self, path, message):
        super().__init__(f"{path}: {message}" if path else message)


class UsageError(CliError):
    """Flags that contradict each other or the command: exit status 2, as argparse's errors."""

    exit_code = EXIT_USAGE


# ---------------------------------------------------------------------------- inputs
def check_input(path: Path) -> Path:
    """``path`` if it names a file; else the one-line error saying what it is instead."""
    if path.is_dir():
        raise CliError(path, "is a directory")
    if not path.exists():
        raise CliError(path, "no such file")
    return path


def read_input(path: Path) -> bytes:
    try:
        return check_input(path).read_bytes()
    except OSError as e:
        raise CliError(path, e.strerror or str(e)) from None


def load_image(path: Path):
    """The image in ``path`` (a PIL image, decoded), or a one-line error."""
    from ..errors import ImageFormatError
    from ..image import read_image

    check_input(path)
    try:
        return read_image(path)
    except ImageFormatError as e:
        raise CliError(path, str(e)) from None
    except OSError as e:
        raise CliError(path, e.strerror or str(e)) from None


def load_codec(device: str, weights=None, model=None, quality=None):
    """A StudentCodec from a weights file, else a registered model by name, else the shipped
    model for ``quality``, else the shipped default. ``quality`` beside a file or a name sets
    what a variable-rate model codes at; a fixed-rate model codes at its own quality only."""
    from .. import zoo
    from ..codec import StudentCodec
    from ..errors import LickdError

    try:
        if weights:
            codec = StudentCodec.from_file(weights, device=device)
        elif not zoo.registry():
            raise CliError(None, NO_MODELS)
        elif model:
            codec = StudentCodec.from_pretrained(model, device=device)
        elif quality is None:
            return StudentCodec.from_pretrained(device=device)
        else:  # the shipped model for this quality (a fixed-rate one: the nearest, with a warning)
            entry = zoo.find_quality(quality)
            codec = StudentCodec.from_pretrained(f"{entry.name}@{entry.sha256}", device=device)
            if not codec.variable_rate:
                return codec
    except LickdError as e:  # the message names the weights file or the registry
        raise CliError(None, str(e)) from None
    if quality is not None:
        try:
            chosen = codec.quality_for(quality)
        except LickdError as e:  # a fixed-rate model's other quality, or one outside a model's range
            raise UsageError(None, f"-q {quality:g}: {e}") from None
        if codec.variable_rate:
            codec.quality = chosen
    return codec


# ---------------------------------------------------------------------------- outputs
def check_output(path: Path, force: bool) -> None:
    """Refuses, before any work, an output that exists (without ``force``), is a folder, or
    whose folder does not exist."""
    if path.exists() and not force:
        raise CliError(path, "exists (use -f to overwrite)")
    if path.exists() and path.is_dir():
        raise CliError(path, "is a directory")
    if not (path.parent if str(path.parent) else Path(".")).is_dir():
        raise CliError(path, "output folder does not exist")


def write_output(path: Path, data: bytes, force: bool) -> None:
    """Writes atomically, with the umask's permissions; without ``force`` an existing file is
    never replaced, even one that appears while the command works."""
    from ..fileio import atomic_write

    try:
        atomic_write(path, data, force)
    except FileExistsError:
        raise CliError(path, "exists (use -f to overwrite)") from None


def discard_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null, so later writes and the interpreter's last
    flush at exit do not fail again (what Python's documentation of SIGPIPE advises)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout is not a file (captured, replaced)
        pass


def emit(args, line: str, record: dict) -> None:
    """The result of a command: ``record`` as JSON on stdout with ``--json``, else ``line`` on
    stderr unless ``--quiet``."""
    if args.json:
        print(json.dumps(record))
    elif not args.quiet:
        print(line, file=sys.stderr)
