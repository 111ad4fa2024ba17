"""``lickd train``, ``lickd distill`` and ``lickd export``."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .common import CliError, UsageError, check_output


def cmd_train(args) -> None:
    from ..train import Trainer, load_config, saved_config

    overrides = list(args.set or [])
    if getattr(args, "teacher", None):
        overrides.append(f"kd.teacher={args.teacher}")
    if getattr(args, "no_kd", False):
        overrides.append("kd.no_kd=true")
    run_dir = args.resume if isinstance(args.resume, str) else None
    if run_dir and args.config:
        raise UsageError(None, "--resume RUN_DIR takes the configuration from the run's checkpoint: "
                               "drop the config file (or give it with a bare --resume)")
    try:
        cfg = saved_config(run_dir, tuple(overrides)) if run_dir else load_config(args.config, tuple(overrides))
    except (OSError, ValueError) as e:
        raise CliError(run_dir or args.config, str(e)) from None
    if args.command == "distill" and cfg.kd.teacher is None:
        raise CliError(None, "distill needs a teacher: --teacher FILE or kd.teacher in the config")
    try:
        trainer = Trainer(cfg, resume=bool(args.resume), progress=not args.quiet)
    except (FileNotFoundError, ValueError) as e:
        raise CliError(None, str(e)) from None
    try:
        summary = trainer.train()
    finally:
        trainer.close()
    if trainer.is_main and not args.quiet:
        print(json.dumps({k: v for k, v in summary.items() if k != "rank_fingerprints"}), file=sys.stderr)


def cmd_export(args) -> None:
    from ..train import export_run

    run = Path(args.input)
    if not (run / "checkpoint.safetensors").is_file():
        raise CliError(run, "no checkpoint.safetensors in this run folder")
    check_output(Path(args.output), args.force)
    info = export_run(run, args.output, half=args.half, name=args.name)
    print(f"{run} -> {args.output}: {info.architecture} N={info.N} M={info.M} sha256 {info.sha256}", file=sys.stderr)
