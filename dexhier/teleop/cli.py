"""``dexhier teleop``: teleoperate the twin and record demonstrations."""

from __future__ import annotations

import argparse
import errno
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEVICE_HELP = (
    "keyboard: a plain terminal, keys below; spacemouse: 3Dconnexion via pyspacemouse; gamepad: evdev; "
    "handpose: hand keypoints on the ROS topic /dexhier/teleop/hand_keypoints (geometry_msgs/PoseArray, "
    "21 points in the wrist frame) retargeted to the hand, the arm from the keyboard or --replay FILE; "
    "spacemouse and gamepad take episode events from the terminal's keys too; replay: a recorded "
    "JSON Lines stream (--replay FILE) or the expert's motion as a scripted stream (--replay expert)."
)


def add_teleop_parser(
    sub: Any, parser_class: type[argparse.ArgumentParser], tasks: list[str], size: Callable[[str], Any]
) -> None:
    """The ``teleop`` parser; ``size`` parses WIDTHxHEIGHT as every ``dexhier`` image-size flag does."""
    from dexhier.teleop.devices import DEVICE_KINDS, KEY_HELP

    tp = sub.add_parser(
        "teleop",
        help="teleoperate the twin and record demonstrations",
        description="Drive the MuJoCo twin with an input device (Cartesian arm control through IK, hand "
        "synergies, a clutch, speed steps; the safety supervisor always in the loop) and record episodes "
        "into a dataset in the episode format, plus one MCAP bag of the raw topics per episode. Recording "
        "resumes into an existing dataset; journals left by a crash are recovered first, marked incomplete. "
        "The status line shows the episode, its duration, the loop rate and the disk space.",
        epilog=f"devices: {DEVICE_HELP}\n\nkeyboard keys:\n{KEY_HELP}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tp.add_argument(
        "--device", choices=DEVICE_KINDS, default="keyboard", help="input device (default: keyboard)"
    )
    tp.add_argument("--task", choices=tasks, required=True, help="the task laid out in the twin")
    tp.add_argument("--out", type=Path, required=True, help="dataset directory (created or resumed)")
    tp.add_argument("--replay", help="with --device replay: a JSON Lines stream, or 'expert' (scripted)")
    tp.add_argument("--save-stream", type=Path, help="with --replay expert: also write the stream here")
    tp.add_argument(
        "--episodes", type=int, help="stop after this many episodes are kept (default: until quit)"
    )
    tp.add_argument("--seed", type=int, default=0, help="episode i is laid out with seed SEED+i (default: 0)")
    tp.add_argument("--instruction", help="task instruction stored with each episode (default: the task's)")
    tp.add_argument("--episode-time", type=float, default=60.0, help="episode time limit, s (default: 60)")
    tp.add_argument(
        "--speed", type=float, help="maximum tool-tip speed at full deflection, m/s (default: 0.3)"
    )
    tp.add_argument("--image-size", type=size, default=(64, 64), help="camera WIDTHxHEIGHT (default: 64x64)")
    tp.add_argument("--no-bag", action="store_true", help="do not write MCAP bags")
    tp.add_argument(
        "--no-realtime", action="store_true", help="run as fast as possible (replayed streams only)"
    )
    tp.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    tp.set_defaults(func=cmd_teleop)


def _device(args: argparse.Namespace, config: Any) -> Any:
    """The device of ``--device``, with terminal keys for episode events where the device lacks them."""
    from dexhier.teleop.devices import (
        CompositeDevice,
        EventMerge,
        HandPoseDevice,
        KeyboardDevice,
        ReplayDevice,
        make_device,
    )

    if args.device not in ("replay", "handpose") and (args.replay or args.save_stream):
        raise ValueError("--replay and --save-stream apply to --device replay (or handpose, for the arm)")
    if args.device != "replay" and args.no_realtime:
        raise ValueError("--no-realtime applies to --device replay only (a person is in the loop)")
    if args.device == "keyboard":
        return make_device("keyboard")
    if args.device in ("spacemouse", "gamepad"):
        device = make_device(args.device)
        # Episode events (start, save, e-stop, quit ...) from the terminal's keys as well.
        return EventMerge(device, KeyboardDevice()) if sys.stdin.isatty() else device
    if args.device == "handpose":
        from dexhier.teleop.hand_topic import HandKeypointTopic

        hand = HandPoseDevice()
        if args.replay:
            arm = ReplayDevice(Path(args.replay))
        elif sys.stdin.isatty():
            arm = KeyboardDevice()
        else:
            raise ValueError(
                "--device handpose needs the arm from the keyboard (a terminal) or --replay FILE"
            )
        topic = HandKeypointTopic(hand)
        device = CompositeDevice(arm, hand)
        close = device.close

        def close_all() -> None:  # the topic's thread goes with the device
            try:
                close()
            finally:
                topic.close()

        device.close = close_all
        return device
    if not args.replay:
        raise ValueError("--device replay needs --replay FILE or --replay expert")
    if args.replay != "expert":
        return ReplayDevice(Path(args.replay))
    from dexhier.episode_journal import next_index
    from dexhier.teleop.devices import write_replay
    from dexhier.teleop.scripted import expert_stream

    if args.episodes is None:
        raise ValueError("--replay expert needs --episodes N")
    # Resuming into a dataset: its next episode is laid out with seed SEED + next index.
    first = next_index(args.out) if (args.out / "dataset.json").is_file() else 0
    records = list(expert_stream(args.task, args.seed + first, args.episodes, config))
    if args.save_stream:
        args.save_stream.parent.mkdir(parents=True, exist_ok=True)
        write_replay(args.save_stream, records)
    return ReplayDevice.from_records(records)


def cmd_teleop(args: argparse.Namespace) -> int:
    from dexhier.teleop.control import TeleopConfig
    from dexhier.teleop.session import SessionConfig, TeleopSession

    teleop = TeleopConfig() if args.speed is None else TeleopConfig(max_linear_speed=args.speed)
    config = SessionConfig(
        task=args.task,
        out=args.out,
        seed=args.seed,
        episodes=args.episodes,
        instruction=args.instruction,
        episode_time=args.episode_time,
        image_size=args.image_size,
        realtime=not args.no_realtime,
        bag=not args.no_bag,
        teleop=teleop,
    )
    device = _device(args, teleop)
    tty = sys.stderr.isatty()

    def status(line: str) -> None:
        if tty:  # one live line on a terminal; a log file gets no status spam
            print(f"\r\x1b[2K{line}", end="", file=sys.stderr, flush=True)

    def log(msg: str) -> None:
        print(("\r\x1b[2K" if tty else "") + msg, file=sys.stderr, flush=True)

    try:
        summary = TeleopSession(config, device, log=log, status=status).run()
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise OSError(
                err.errno,
                f"{err.strerror} while recording into {args.out}: saved episodes are intact; free space, "
                f"then run `dexhier dataset recover {args.out}` to keep the episode that was in flight",
            ) from err
        raise
    kept = summary.kept
    print(f"kept {kept} episodes in {args.out} ({summary.stop_reason})")
    if args.json:
        print(json.dumps(summary.to_json(), default=float))
    return 0
