"""``dexhier train lowlevel-oc``: the object-centric low level (label-free perception's inputs).

Its flags are derived from ``OCConfig`` and ``OCTrainConfig`` (each field once, with its default),
so a new option is written in one place.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

_RENAME = {"steps": "sample_steps"}  # --steps is the number of training steps
_SKIP = {"edm", "seed", "batch"}  # batch: --batch-size, the trainers' common flag


def _add_dataclass_flags(parser: argparse.ArgumentParser, cls: type, prefix: str = "") -> None:
    for f in dataclasses.fields(cls):
        if f.name in _SKIP or f.type not in ("int", "float", "bool", "str"):
            continue
        name = prefix + _RENAME.get(f.name, f.name)
        flag, default = "--" + name.replace("_", "-"), f.default
        if f.type == "bool":
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction,
                                default=default, help=f"(default: {default})")  # fmt: skip
        else:
            kind = {"int": int, "float": float, "str": str}[f.type]
            parser.add_argument(flag, dest=name, type=kind, default=default,
                                help=f"(default: {default})")  # fmt: skip


def _from_args(args: argparse.Namespace, cls: type, prefix: str = "") -> Any:
    kw = {}
    for f in dataclasses.fields(cls):
        name = prefix + _RENAME.get(f.name, f.name)
        if f.name not in _SKIP and hasattr(args, name):
            kw[f.name] = getattr(args, name)
    return cls(**kw)


def cmd_train_lowlevel_oc(args: argparse.Namespace) -> int:
    import sys

    import torch

    from dexhier.cli import _check_datasets, _run_training
    from policies.low_level.object_centric import OCConfig
    from policies.low_level.oc_training import OCTrainConfig, train

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        policy_cfg = _from_args(args, OCConfig)
        train_cfg = dataclasses.replace(
            _from_args(args, OCTrainConfig, "train_"), seed=args.seed, batch=args.batch_size
        )
    except ValueError as err:
        print(f"dexhier train lowlevel-oc: error: {err}", file=sys.stderr)
        return 2
    _check_datasets(args.data)
    return _run_training(args, "the object-centric low level", "train lowlevel-oc", args.steps, args.seed,
                         lambda log, bar: train(args.data, args.out, policy_cfg, train_cfg, args.steps,
                                                args.checkpoint_every, log=log, bar=bar))  # fmt: skip


def add_command(tr_sub, add_json, positive) -> None:
    """Register ``train lowlevel-oc`` on the ``train`` subparsers."""
    from policies.low_level.object_centric import OCConfig
    from policies.low_level.oc_training import OCTrainConfig

    p = tr_sub.add_parser(
        "lowlevel-oc",
        help="train the object-centric low level (label-free perception inputs, DP3 point encoder)",
        description="Train the object-centric low level (BESO: EDM, 3 steps) on expert datasets recorded "
        "with `dexhier collect expert --perception`: proprio, the perceived tool state, object and point "
        "sets in; "
        "a chunk of joint-target offsets out; hindsight goals (future tips relative to the object, tip gap).",
    )
    p.add_argument("--data", type=Path, nargs="+", required=True, help="dataset directories")
    p.add_argument("--out", type=Path, required=True, help="checkpoint directory")
    p.add_argument("--steps", type=positive, default=6000, help="optimisation steps (default: 6000)")
    p.add_argument("--checkpoint-every", type=positive, default=1000, help="(default: 1000)")
    p.add_argument("--seed", type=int, default=0, help="data split and initialisation seed (default: 0)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--batch-size", type=positive, default=OCTrainConfig.batch,
                   help=f"(default: {OCTrainConfig.batch})")  # fmt: skip
    _add_dataclass_flags(p, OCConfig)
    _add_dataclass_flags(p, OCTrainConfig, "train_")
    add_json(p)
    p.set_defaults(func=cmd_train_lowlevel_oc)


def cmd_eval_probe(args: argparse.Namespace) -> int:
    import json
    import sys

    from policies.low_level.oc_probe import ProbeConfig, probe

    try:
        result = probe(args.checkpoint, args.data, ProbeConfig(frames=args.frames, shift=args.shift))
    except (ValueError, FileNotFoundError) as err:
        print(f"dexhier eval probe: error: {err}", file=sys.stderr)
        return 2
    for key, value in result.items():
        print(f"{key:36s} {value:.4f}" if isinstance(value, float) else f"{key:36s} {value}")
    if args.json:
        print(json.dumps({"checkpoint": str(args.checkpoint), **result}))
    return 0


def add_probe_command(ev_sub, add_json, positive) -> None:
    """Register ``eval probe`` on the ``eval`` subparsers."""
    p = ev_sub.add_parser(
        "probe",
        help="does the object-centric low level use the object, the goal, and hold under dropout?",
        description="On recorded approach frames: the predicted approach point's response to the object "
        "moved by --shift (goal-free and with the goal moved along), the chunk's change when the goal is "
        "swapped for another episode's (against sampling noise), and holds under perception dropout.",
    )
    p.add_argument("--checkpoint", type=Path, default=Path("checkpoints/lowlevel_oc_pick"),
                   help="object-centric checkpoint (default: %(default)s)")  # fmt: skip
    p.add_argument("--data", type=Path, required=True, help="a dataset recorded with --perception")
    p.add_argument("--frames", type=positive, default=60, help="approach frames (default: 60)")
    p.add_argument("--shift", type=float, default=0.02, help="object shift, m (default: 0.02)")
    add_json(p)
    p.set_defaults(func=cmd_eval_probe)
