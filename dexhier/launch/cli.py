"""``dexhier launch FILE [name:=value ...]``: run a ROS 2 XML launch file without ros2cli.

Wire it into the main parser with ``add_launch_parser(sub, _Parser)``; ``python -m
dexhier.launch.cli FILE ...`` runs the same command on its own.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .runner import GRACE_S, describe, run
from .xml_format import LaunchError, parse_launch_file


def _launch_arg(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"launch arguments look like name:=value, got {text!r}")
    return name, value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text}")
    return value


def cmd_launch(args: argparse.Namespace) -> int:
    nodes = parse_launch_file(args.file, dict(args.launch_args))
    if args.print_only:
        text, ok = describe(nodes)
        print(text if nodes else f"{args.file}: no nodes to start")
        return 0 if ok else 1
    if not nodes:
        print(f"{args.file}: no nodes to start", file=sys.stderr)
        return 0
    return run(nodes, args.stop_after, grace=args.grace, stop_on_failure=args.shutdown_on_failure)


def add_launch_parser(
    sub: argparse._SubParsersAction, parser_class: type[argparse.ArgumentParser] | None = None
) -> argparse.ArgumentParser:
    """Register the ``launch`` subcommand on ``sub`` (its parsers are of ``sub``'s parser_class).

    ``parser_class`` is accepted for symmetry with the other commands; the subcommand has no
    nested subparsers, so it is not needed.
    """
    del parser_class
    p = sub.add_parser(
        "launch",
        help="run a ROS 2 XML launch file (the subset our launch/*.launch.xml use)",
        description="Run a ROS 2 XML launch file like `ros2 launch` does: every <node> becomes a child "
        "process with the same command line; output lines are prefixed with [node]. Ctrl-C stops all "
        "nodes (SIGINT, then SIGTERM, then SIGKILL).",
    )
    p.add_argument("file", type=Path, metavar="FILE", help="launch file (*.launch.xml)")
    p.add_argument(
        "launch_args",
        nargs="*",
        type=_launch_arg,
        metavar="name:=value",
        help="launch arguments, as for ros2 launch",
    )
    p.add_argument(
        "--print",
        dest="print_only",
        action="store_true",
        help="print the resolved nodes and their command lines, start nothing",
    )
    p.add_argument(
        "--stop-after",
        type=_seconds,
        metavar="SECONDS",
        help="shut everything down after this long (default: run until Ctrl-C or all nodes exit)",
    )
    p.add_argument(
        "--grace",
        type=_seconds,
        default=GRACE_S,
        metavar="SECONDS",
        help="wait this long after SIGINT before SIGTERM, and after SIGTERM before SIGKILL "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--shutdown-on-failure",
        action="store_true",
        help="stop everything when any node exits with an error (default: only nodes with "
        'on_exit="shutdown" stop the launch)',
    )
    p.set_defaults(func=cmd_launch)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dexhier")
    add_launch_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["launch", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except LaunchError as err:
        print(f"dexhier launch: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
