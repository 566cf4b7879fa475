"""Time a LeRobot v3 export (and the import back) of an episode dataset.

    python -m dexhier.lerobot_bench DATASET [--episodes N] [--import] [--json]

Target of issue 18: exporting 400 episodes takes <= 2 min. With ``--episodes N`` only the first N
episodes are exported (through a temporary dataset of hard links), and the per-episode figure is
reported alongside. Run it on one core (``taskset -c 0``) to measure the worst case here.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path


def _subset(src: Path, n: int, dst: Path) -> Path:
    """A dataset of the first ``n`` episodes of ``src``, made of hard links (no copy of the data)."""
    from dexhier.episodes import DATASET_FILE, EPISODES_DIR, EpisodeDataset, episode_dirname

    indices = EpisodeDataset(src).indices[:n]
    (dst / EPISODES_DIR).mkdir(parents=True)
    shutil.copy2(src / DATASET_FILE, dst / DATASET_FILE)
    for i in indices:
        shutil.copytree(
            src / EPISODES_DIR / episode_dirname(i),
            dst / EPISODES_DIR / episode_dirname(i),
            copy_function=os.link,
        )
    return dst


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", type=Path, help="dexhier episode dataset")
    p.add_argument("--episodes", type=int, default=None, help="export only the first N episodes")
    p.add_argument("--import", dest="also_import", action="store_true", help="also time the import back")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    args = p.parse_args(argv)

    from dexhier.lerobot_export import export_lerobot
    from dexhier.lerobot_import import import_lerobot

    with tempfile.TemporaryDirectory(prefix="lerobot-bench-") as tmp:
        src = args.dataset
        if args.episodes is not None:
            src = _subset(args.dataset, args.episodes, Path(tmp) / "subset")
        t0 = time.perf_counter()
        summary = export_lerobot(src, Path(tmp) / "lerobot")
        export_s = time.perf_counter() - t0
        result = {
            "episodes": summary["episodes"],
            "frames": summary["frames"],
            "export_s": round(export_s, 3),
            "export_ms_per_episode": round(1000 * export_s / summary["episodes"], 2),
            "export_400_estimate_s": round(400 * export_s / summary["episodes"], 1),
            "size_mb": round(
                sum(f.stat().st_size for f in (Path(tmp) / "lerobot").rglob("*") if f.is_file()) / 2**20, 2
            ),
            "cpus": len(os.sched_getaffinity(0)),
        }
        if args.also_import:
            t0 = time.perf_counter()
            import_lerobot(Path(tmp) / "lerobot", Path(tmp) / "back")
            result["import_s"] = round(time.perf_counter() - t0, 3)
    for k, v in result.items():
        print(f"{k:24s} {v}")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
