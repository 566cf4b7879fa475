"""``dexhier dataset export|import --format lerobot``: hand episodes to LeRobot (v3 layout) and back."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

EXPORT_HELP = """\
Write the dexhier episode dataset DIR as a LeRobot v3 dataset in the new directory OUT:
meta/info.json (codebase_version v3.0, fps, features with shapes and dtypes), meta/stats.json,
meta/tasks.parquet, meta/episodes/chunk-000/file-000.parquet, frames in data/chunk-000/file-000.parquet
and one H.264 MP4 per camera in videos/observation.images.<camera>/chunk-000/file-000.mp4.
Joint states (observation.state: arm then hand), velocities, the tool tip gap and the action keep their
float64 values; the other step keys travel as dexhier.* features; depth is not exported. The task of
a frame is the episode's instruction. meta/dexhier.json keeps what LeRobot has no place for (episode
success and meta, the key mapping), so `dataset import` restores the dataset. OUT is written to a
temporary directory beside it and renamed when complete; it must not exist."""

IMPORT_HELP = """\
Turn the LeRobot v3 dataset SRC into a new dexhier episode dataset OUT that the trainers accept.
A dataset written by `dataset export` comes back with its keys, meta and episode outcomes (images
through the video codec). Any other LeRobot v3 dataset of an arm + hand is mapped generically:
observation.state and action (same joints) are split into arm (first --arm-dof elements) and hand;
observation.velocity likewise if present; action limits are the per-joint min/max of the actions;
the tool tip gap is observation.tool_tip_gap or zero; observation.images.<cam> become rgb/<cam>
(rename with --camera, resize with --image-size). Every episode is marked successful (LeRobot keeps
no outcome). The metadata and every file are checked; any problem stops with a one-line error and
nothing is written. Older layouts (v2.x) are refused: convert them with LeRobot first."""


def _camera(text: str) -> tuple[str, str]:
    src, sep, dst = text.partition("=")
    if not sep or not src or not dst:
        raise argparse.ArgumentTypeError(f"expected LEROBOT_NAME=DEXHIER_NAME, got {text!r}")
    return src, dst


def add_lerobot_parsers(ds_sub: Any) -> None:
    """Add ``export`` and ``import`` to the ``dexhier dataset`` subcommands."""
    fmt = {"choices": ("lerobot",), "required": True, "help": "target layout (only: lerobot, v3.0)"}
    ex = ds_sub.add_parser(
        "export",
        help="write a dataset in another layout (LeRobot v3)",
        description=EXPORT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ex.add_argument("root", type=Path, metavar="DIR", help="dexhier episode dataset")
    ex.add_argument("--format", **fmt)
    ex.add_argument("--out", type=Path, required=True, help="new LeRobot dataset directory")
    ex.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    ex.set_defaults(func=cmd_export)
    im = ds_sub.add_parser(
        "import",
        help="make a dexhier dataset from another layout (LeRobot v3)",
        description=IMPORT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    im.add_argument("src", type=Path, metavar="SRC", help="LeRobot v3 dataset directory")
    im.add_argument("--format", **fmt)
    im.add_argument("--out", type=Path, required=True, help="new dexhier dataset directory")
    im.add_argument("--arm-dof", type=int, default=6, help="arm joints before the hand joints (default: 6)")
    im.add_argument(
        "--camera",
        type=_camera,
        action="append",
        default=[],
        metavar="NAME=CAM",
        help="rename LeRobot camera NAME to dexhier camera CAM (repeatable; e.g. top=scene)",
    )
    im.add_argument("--image-size", type=int, default=None, help="resize images to SIZE x SIZE px")
    im.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    im.set_defaults(func=cmd_import)


def cmd_export(args: argparse.Namespace) -> int:
    from dexhier.lerobot_export import export_lerobot

    summary = export_lerobot(args.root, args.out)
    print(
        f"wrote {summary['episodes']} episodes ({summary['frames']} frames, {summary['tasks']} tasks, "
        f"cameras {', '.join(summary['cameras']) or 'none'}) to {summary['out']} at {summary['fps']} fps"
    )
    if summary["skipped_keys"]:
        print(f"not exported: {', '.join(summary['skipped_keys'])}")
    if args.json:
        print(json.dumps(summary))
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from dexhier.lerobot_import import import_lerobot

    summary = import_lerobot(
        args.src, args.out, arm_dof=args.arm_dof, camera_map=dict(args.camera), image_size=args.image_size
    )
    how = "exact keys from meta/dexhier.json" if summary["sidecar"] else "generic arm + hand mapping"
    print(f"wrote {summary['episodes']} episodes ({summary['frames']} frames) to {summary['out']} ({how})")
    if args.json:
        print(json.dumps(summary))
    return 0
