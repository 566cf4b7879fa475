"""``make demo``: the stack through the ROS 2 graph against the twin.

Launches ``launch/sim.launch.xml`` with our launch runner (the file is the one ``ros2 launch``
runs on a cell), lets the episode coordinator run N seeded episodes, then prints per-episode
results and the summary by object width, and writes a markdown report beside the videos.
Until the learned layers land, the policy node is the privileged expert, and the demo says so.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from typing import Any

from dexhier.evaluation import EvalRequest, format_table, summarize, write_report
from sim.rollout import EpisodeResult

ROOT = Path(__file__).resolve().parents[1]
SIM_LAUNCH = ROOT / "launch" / "sim.launch.xml"


def isolate_dds() -> None:
    """Keep discovery on this machine and in a domain of our own (unless the caller chose one)."""
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 100)))


def run_demo(
    task: str, episodes: int, seed: int, out: Path, real_time_factor: float, videos: int
) -> dict[str, Any]:
    """Run the sim graph for ``episodes`` episodes; returns the evaluation summary."""
    from dexhier.launch.runner import run
    from dexhier.launch.xml_format import parse_launch_file

    isolate_dds()
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "episodes.jsonl"
    results_path.unlink(missing_ok=True)
    args = {
        "task": task, "episodes": str(episodes), "seed": str(seed),
        "real_time_factor": str(real_time_factor), "results_path": str(results_path),
        "video_dir": str(out / "videos"), "video_episodes": str(videos),
    }  # fmt: skip
    domain = os.environ["ROS_DOMAIN_ID"]
    print(f"launching {SIM_LAUNCH.relative_to(ROOT)} (ROS_DOMAIN_ID={domain}, discovery on loopback only)")
    t0 = time.monotonic()
    code = run(parse_launch_file(SIM_LAUNCH, args))
    wall = time.monotonic() - t0
    if not results_path.is_file():
        raise RuntimeError(f"the launched graph wrote no results (launch exit code {code})")
    rows = [json.loads(line) for line in results_path.read_text().splitlines() if line.strip()]
    results = [
        EpisodeResult(seed=r["seed"], task=r["task"] or task, success=r["success"], steps=r["steps"] or 0,
                      sim_time=r["sim_time"] or 0.0, wall_time=r["wall_time"],
                      object={"width": r["object_width"] or 0.0})
        for r in rows
    ]  # fmt: skip
    req = EvalRequest(policy="expert", task=task, episodes=max(1, len(results)), seed=seed)
    summary = summarize(req, results)
    summary.update(launch_exit_code=code, graph_wall_s=wall, through_ros=True)
    videos_found = sorted((out / "videos").glob("*.mp4"))
    summary["videos"] = [str(v) for v in videos_found]
    report = out / "report.md"
    command = f"make demo (dexhier demo --episodes {episodes} --seed {seed})"
    write_report(summary, report, command, videos_found)
    summary["report"] = str(report)
    print(format_table(summary))
    return summary
