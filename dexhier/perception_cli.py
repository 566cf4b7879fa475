"""``dexhier eval perception`` and ``dexhier eval visibility``: how well the cell sees.

Kept apart from ``dexhier.cli`` (which registers them) so each command's flags live next to the
code that runs it.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def _progress(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="ep", file=sys.stderr, dynamic_ncols=True, disable=None)


def cmd_eval_perception(args: argparse.Namespace) -> int:
    from perception.label_free_eval import PerceptionEvalRequest, evaluate

    try:
        req = PerceptionEvalRequest(
            tasks=tuple(args.task),
            episodes=args.episodes,
            seed=args.seed,
            every=args.every,
            workers=args.workers,
        )
    except ValueError as err:
        print(f"dexhier eval perception: error: {err}", file=sys.stderr)
        return 2
    with _progress(len(req.tasks) * req.episodes, "perception") as bar:
        result = evaluate(req, progress=bar.update)
    _report(result)
    _emit(args, result)
    return 0


def cmd_eval_visibility(args: argparse.Namespace) -> int:
    from dexhier import vocabulary as V
    from sim.visibility import VisibilityConfig, measure

    try:
        cfg = VisibilityConfig(every=args.every, min_pixels=args.min_pixels)
        if args.task not in _tasks():
            raise ValueError(f"unknown task {args.task!r}; valid: {', '.join(_tasks())}")
    except ValueError as err:
        print(f"dexhier eval visibility: error: {err}", file=sys.stderr)
        return 2
    with _progress(args.episodes, "visibility") as bar:
        result = measure(args.task, args.episodes, args.seed, V.CAMERAS, cfg, progress=bar.update)
    for cam in V.CAMERAS:
        r = result[cam]
        print(f"{cam:10s} object px median {r['object_px_median']:6.0f}  p10 {r['object_px_p10']:6.0f}  "
              f"seen {100 * r['seen_fraction']:5.1f} %  tips px {r['tip_px_median']:5.0f}")  # fmt: skip
    print(f"seen by at least one camera: {100 * result['any_camera_seen_fraction']:.1f} % of frames")
    _emit(args, result)
    return 0


def _emit(args: argparse.Namespace, result: dict[str, Any]) -> None:
    if args.json:
        print(json.dumps(result, default=float))


def _tasks() -> list[str]:
    from sim.tasks import TASKS

    return sorted(TASKS)


def _report(result: dict[str, Any]) -> None:
    for key, value in result.items():
        if isinstance(value, float):
            print(f"{key:26s} {value:.3f}")
    print("by phase:")
    for phase, r in result["by_phase"].items():
        print(f"  {phase:9s} frames {r['frames']:5d}  gap {r['tip_gap_mae_mm']:5.2f} mm  centroid "
              f"{r['object_centroid_err_mm']:5.2f} mm  width {r['object_width_err_mm']:5.2f} mm  "
              f"object invalid {100 * r['object_invalid_fraction']:4.1f} %")  # fmt: skip


def add_commands(ev_sub, add_json, positive) -> None:
    """Register the two ``eval`` subcommands on the ``eval`` subparsers."""
    ep = ev_sub.add_parser(
        "perception",
        help="label-free perception errors on twin depth images (no labels fed)",
        description="Runs label-free perception (table plane, robot and tool masked by forward kinematics, "
        "the object as the cluster nearest the tips) on the workspace and wrist depth images of expert "
        "episodes, with no segmentation labels, and compares with the twin's ground truth: tip gap, "
        "object centroid, width and height errors (mm), invalid fraction, per-frame time.",
    )
    ep.add_argument("--task", action="append", default=None, help="task (repeatable; default: tweezer_pick)")
    ep.add_argument("--episodes", type=positive, default=100, help="episodes per task (default: 100)")
    ep.add_argument("--seed", type=int, default=1000, help="first seed (default: 1000)")
    ep.add_argument("--every", type=positive, default=5, help="perceive every N control steps (default: 5)")
    ep.add_argument("--workers", type=positive, default=2, help="worker processes (default: 2)")
    add_json(ep)
    ep.set_defaults(func=_with_default_task(cmd_eval_perception))
    ev = ev_sub.add_parser(
        "visibility",
        help="how many pixels of the object each camera sees through expert episodes",
        description="Object and tool-tip pixels per camera (segmentation renders at 320x240, a design-time "
        "oracle) through expert episodes, and the fraction of frames in which each camera, and at least one, "
        "sees the object. The cell's cameras are chosen by this measurement.",
    )
    ev.add_argument("--task", default="tweezer_pick", help="task (default: %(default)s)")
    ev.add_argument("--episodes", type=positive, default=20, help="episodes (default: 20)")
    ev.add_argument("--seed", type=int, default=1000, help="first seed (default: 1000)")
    ev.add_argument("--every", type=positive, default=2, help="measure every N control steps (default: 2)")
    ev.add_argument("--min-pixels", type=positive, default=30, help="pixels for 'seen' (default: 30)")
    add_json(ev)
    ev.set_defaults(func=cmd_eval_visibility)


def _with_default_task(fn):
    def run(args: argparse.Namespace) -> int:
        args.task = args.task or ["tweezer_pick"]
        return fn(args)

    return run
