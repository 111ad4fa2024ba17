"""Where a result came from: machine, library versions and the lickd commit.

Recorded with every result file, benchmark and training run, so numbers always name their
hardware and software.
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Optional


def git_commit() -> Optional[str]:
    """The commit of the lickd checkout this code runs from (None for an installed copy)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict:
    """Machine, versions and commit."""
    import torch
    from PIL import Image, features

    from . import __version__
    from .cpu import cpu_features

    env = {"lickd": __version__, "commit": git_commit(), "python": sys.version.split()[0], "torch": torch.__version__,
           "pillow": Image.__version__, "libjpeg": features.version("jpg"), "libwebp": features.version("webp"),
           "libavif": features.version("avif"), "cpu": cpu_name(), "cpu_features": cpu_features(),
           "cpu_count": os.cpu_count(),
           "platform": platform.platform()}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
    return env
