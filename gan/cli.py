"""The ``gan`` command: parses and validates arguments, then calls one function per subcommand.

Heavy imports (torch, onnxruntime, bentoml) happen inside each subcommand, so ``gan serve`` and
``gan sample`` never import torch.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


class CLIError(Exception):
    """A user error: printed as one line naming the flag or file, exit status 2."""


# ---------------------------------------------------------------- gan train

def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One --flag per TrainConfig field, with its documentation and dataclass default."""
    from training.config import SECTION_CLASSES, SECTION_NAMES
    import dataclasses

    for section, cls in zip(SECTION_NAMES, SECTION_CLASSES):
        group = parser.add_argument_group(f"{section} options")
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            flag = "--" + f.name.replace("_", "-")
            help_text = f"{f.metadata['help']} (default: {default})"
            kwargs = {"dest": f.name, "default": None, "help": help_text}
            if isinstance(default, bool):
                group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
            elif isinstance(default, list):
                group.add_argument(flag, type=int, nargs="+", metavar="N", **kwargs)
            else:
                group.add_argument(flag, type=type(default), choices=f.metadata.get("choices"), **kwargs)


def _train_parser(sub) -> None:
    from training.config import PRESETS

    p = sub.add_parser("train", help="train a GAN (writes runs/NNNNN-name/)",
                       description="Train G and D. Presets set their own values; flags override them; "
                                   "--dry-run prints the resolved config.")
    p.add_argument("--preset", default="fmnist-dcgan", choices=list(PRESETS),
                   help="named recipe to start from (default: fmnist-dcgan)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its latest checkpoint "
                   "(flags such as --steps may extend it)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config as JSON and exit")
    _add_config_flags(p)
    p.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    from training.config import apply_overrides, field_index, make_config, validate

    overrides = {name: getattr(args, name) for name in field_index() if getattr(args, name) is not None}
    try:
        if args.resume:
            from training.checkpoint import load_checkpoint
            cfg = load_checkpoint(args.resume).config
            apply_overrides(cfg, overrides)
            validate(cfg)
        else:
            cfg = make_config(args.preset, overrides)
    except (ValueError, OSError) as exc:
        raise CLIError(str(exc)) from exc
    if args.dry_run:
        print(cfg.to_json())
        return 0
    from training.data import DataError
    from training.loop import TrainingDiverged, TrainingInterrupted, train

    try:
        run_dir = train(cfg, resume=args.resume)
    except TrainingInterrupted as exc:
        print(f"gan train: {exc}", file=sys.stderr)
        return 130
    except TrainingDiverged as exc:
        print(f"gan train: {exc}", file=sys.stderr)
        return 3
    except (DataError, ValueError) as exc:
        raise CLIError(str(exc)) from exc
    print(run_dir)
    return 0


# ---------------------------------------------------------------- main

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gan", description="Train, export, serve and sample GAN image generators.")
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except CLIError as exc:
        print(f"gan {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
