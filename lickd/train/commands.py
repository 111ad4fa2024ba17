"""``lickd train``, ``lickd distill`` and ``lickd export``."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..cli import CliError, check_output


def cmd_train(args) -> None:
    from . import Trainer, load_config

    overrides = list(args.set or [])
    if getattr(args, "teacher", None):
        overrides.append(f"kd.teacher={args.teacher}")
    if getattr(args, "no_kd", False):
        overrides.append("kd.no_kd=true")
    try:
        cfg = load_config(args.config, tuple(overrides))
    except (OSError, ValueError) as e:
        raise CliError(args.config, str(e)) from None
    if args.command == "distill" and cfg.kd.teacher is None:
        raise CliError(None, "distill needs a teacher: --teacher FILE or kd.teacher in the config")
    try:
        trainer = Trainer(cfg, resume=args.resume, progress=not args.quiet)
    except (FileNotFoundError, ValueError) as e:
        raise CliError(None, str(e)) from None
    try:
        summary = trainer.train()
    finally:
        trainer.close()
    if trainer.is_main and not args.quiet:
        print(json.dumps({k: v for k, v in summary.items() if k != "rank_fingerprints"}), file=sys.stderr)


def cmd_export(args) -> None:
    from . import export_run

    run = Path(args.input)
    if not (run / "checkpoint.safetensors").is_file():
        raise CliError(run, "no checkpoint.safetensors in this run folder")
    check_output(Path(args.output), args.force)
    info = export_run(run, args.output, half=args.half, name=args.name)
    print(f"{run} -> {args.output}: {info.architecture} N={info.N} M={info.M} sha256 {info.sha256}", file=sys.stderr)


def add_commands(sub) -> None:
    for name, text in (("train", "train a model (teacher, or a student without KD)"),
                       ("distill", "distil a student from a frozen teacher")):
        t = sub.add_parser(name, help=text)
        t.add_argument("config", nargs="?", help="TOML config (see lickd/train/config.py for the fields)")
        t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field (repeatable)")
        t.add_argument("--resume", action="store_true", help="continue the run in run_dir from its checkpoint")
        t.add_argument("--quiet", action="store_true")
        if name == "distill":
            t.add_argument("--teacher", help="teacher weights file (kd.teacher)")
            t.add_argument("--no-kd", action="store_true", help="the control: same student and budget, RD loss only")
        t.set_defaults(func=cmd_train)

    x = sub.add_parser("export", help="write a run's model as a registry-ready weights file")
    x.add_argument("input", help="run folder")
    x.add_argument("-o", "--output", required=True)
    x.add_argument("--name")
    x.add_argument("--half", action="store_true", help="fp16 parameters (tables rebuilt to match)")
    x.add_argument("-f", "--force", action="store_true")
    x.set_defaults(func=cmd_export)
