"""``dexhier dataset info|ls|show|rm|recover``: review and curate episode datasets."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_dataset_parser(sub: Any, parser_class: type[argparse.ArgumentParser]) -> None:
    ds = sub.add_parser("dataset", help="review and curate episode datasets (expert or teleop)")
    ds_sub = ds.add_subparsers(
        dest="dataset_command", required=True, metavar="ACTION", parser_class=parser_class
    )

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("root", type=Path, help="dataset directory")
        p.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")

    info = ds_sub.add_parser("info", help="summary: source, task, episodes, successes, size")
    common(info)
    info.set_defaults(func=cmd_info)
    ls = ds_sub.add_parser("ls", help="one line per episode: steps, duration, outcome, flags")
    common(ls)
    ls.set_defaults(func=cmd_ls)
    show = ds_sub.add_parser(
        "show", help="one episode: meta, keys, what the safety supervisor changed; optional frames"
    )
    common(show)
    show.add_argument("index", type=int, help="episode index")
    show.add_argument("--frames", type=Path, help="write a contact sheet of the episode's frames (PNG)")
    show.add_argument("--camera", default="scene", help="camera of the contact sheet (default: scene)")
    show.set_defaults(func=cmd_show)
    rm = ds_sub.add_parser("rm", help="delete episodes (and their bags) from the dataset")
    common(rm)
    rm.add_argument("index", type=int, nargs="+", help="episode indices")
    rm.set_defaults(func=cmd_rm)
    rec = ds_sub.add_parser(
        "recover",
        help="turn what a crash left into episodes marked incomplete; move damaged files aside",
        description="Recover the episodes a crashed recorder left in flight: every flushed step is committed "
        "as an episode marked incomplete (success false), and a bag without footer is rewritten into a valid "
        "MCAP. Damaged episodes and journal chunks are moved to ROOT/quarantine/, never deleted. Do not run "
        "while a recorder writes to the dataset.",
    )
    common(rec)
    rec.set_defaults(func=cmd_recover)
    from dexhier.lerobot_cli import add_lerobot_parsers

    add_lerobot_parsers(ds_sub)  # export / import --format lerobot


def _emit(args: argparse.Namespace, doc: Any) -> None:
    if args.json:
        print(json.dumps(doc, default=str))


def cmd_info(args: argparse.Namespace) -> int:
    from dexhier.dataset_review import dataset_info

    info = dataset_info(args.root)
    for key, value in info.items():
        if isinstance(value, list) and len(value) > 8:
            value = f"{len(value)} items: {', '.join(map(str, value[:4]))}, ..."
        print(f"{key:18s} {value}")
    _emit(args, info)
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    from dexhier.dataset_review import episode_rows

    all_rows = episode_rows(args.root)
    rows = [r for r in all_rows if "error" not in r]
    print(
        f"{'index':>6s} {'steps':>6s} {'dur_s':>7s} {'success':>7s}  {'end reason':28s} flags / instruction"
    )
    for r in all_rows:
        if "error" in r:  # one line naming the damaged file; `dataset recover` moves it aside
            print(f"{r['index']:6d} DAMAGED: {r['error']}")
            continue
        extra = " ".join(r["flags"]) or r["instruction"]
        print(
            f"{r['index']:6d} {r['steps']:6d} {r['duration_s']:7.2f} {str(r['success']):>7s}  "
            f"{r['end_reason'][:28]:28s} {extra}"
        )
    damaged = len(all_rows) - len(rows)
    note = f", {damaged} damaged (run `dexhier dataset recover` to move them aside)" if damaged else ""
    print(f"{len(rows)} episodes, {sum(r['success'] for r in rows)} successful{note}")
    _emit(args, {"episodes": all_rows})
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from dexhier.dataset_review import contact_sheet, episode_detail

    detail = episode_detail(args.root, args.index)
    sheet = contact_sheet(args.root, args.index, args.camera) if args.frames is not None else None
    for key in (
        "index",
        "steps",
        "duration_s",
        "success",
        "task",
        "instruction",
        "source",
        "end_reason",
        "flags",
    ):
        print(f"{key:26s} {detail[key]}")
    for key in ("steps_modified_by_safety", "steps_without_request"):
        if key in detail:
            print(f"{key:26s} {detail[key]}")
    print("keys:")
    for key, spec in detail["keys"].items():
        print(f"  {key:28s} {spec['dtype']:8s} {tuple(spec['shape'])}")
    if args.frames is not None:
        import imageio.v3 as iio

        args.frames.parent.mkdir(parents=True, exist_ok=True)
        iio.imwrite(args.frames, sheet)
        print(f"wrote {args.frames} ({sheet.shape[1]}x{sheet.shape[0]})")
        detail["frames"] = str(args.frames)
    _emit(args, detail)
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    from dexhier.dataset_review import remove_episodes

    removed = [str(p) for p in remove_episodes(args.root, list(args.index))]
    for index in args.index:
        print(f"removed episode {index}")
    _emit(args, {"removed": removed})
    return 0


def cmd_recover(args: argparse.Namespace) -> int:
    from dexhier.dataset_review import recover_dataset

    messages = recover_dataset(args.root)
    for m in messages:
        print(m)
    if not messages:
        print("nothing to recover")
    _emit(args, {"messages": messages})
    return 0
