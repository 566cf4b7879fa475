"""``make demo``: the stack through the ROS 2 graph against the twin.

Launches ``launch/sim.launch.xml`` with our launch runner (the file is the one ``ros2 launch``
runs on a cell), lets the episode coordinator run N seeded episodes, then prints per-episode
results and the summary by object width, and writes a markdown report beside the videos.
The policy node is the launch argument ``policy``: ``hierarchical`` (the default of ``make demo``:
the low-level policy with the learned ``highlevel`` node giving its goals), ``expert`` (the privileged
expert) or ``lowlevel`` (the learned low-level policy, with the ``oracle_goals`` node standing in for
the high level); the report names the one that ran.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from typing import Any

from dexhier import hierarchical_rollout as H
from dexhier.evaluation import EvalRequest, format_table, summarize, write_report
from sim.rollout import EpisodeResult

ROOT = Path(__file__).resolve().parents[1]
SIM_LAUNCH = ROOT / "launch" / "sim.launch.xml"
DDS_PROFILE = ROOT / "launch" / "fastdds_local.xml"

POLICY_NODES = {
    "expert": "the privileged expert (expert_policy): privileged state, not a learned policy",
    "lowlevel": "the learned low-level policy (lowlevel_policy, checkpoints/lowlevel) with goals from "
    "oracle_goals, a stand-in for the high level that replays the expert's rollout of each seed",
    "hierarchical": "the learned hierarchy: the low-level policy (lowlevel_policy, "
    "checkpoints/lowlevel_pick, lowlevel_pick_place for that task) with goals from the learned high "
    "level (highlevel: subgoal generator "
    "checkpoints/subgoal, progress filter checkpoints/subgoal_filter, grasp stage from perception's "
    "tool state)",
}
"""What runs as the policy for each value of the launch argument ``policy``."""


def isolate_dds() -> None:
    """Keep the graph on this machine: loopback discovery, a domain of our own and shared memory.

    The domain and the Fast DDS profile are the caller's if set. The profile (``launch/fastdds_local.xml``)
    moves all traffic to shared memory with segments large enough for the ~1 MB camera cloud, which
    the default transports send as UDP fragments that a loaded machine loses whole.
    """
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 100)))
    os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(DDS_PROFILE))


def run_demo(
    task: str,
    episodes: int,
    seed: int,
    out: Path,
    real_time_factor: float,
    videos: int,
    policy: str = "hierarchical",
) -> dict[str, Any]:
    """Run the sim graph for ``episodes`` episodes with ``policy`` (a key of ``POLICY_NODES``).

    Returns the evaluation summary, with ``policy_node`` saying what ran as the policy.
    """
    if policy not in POLICY_NODES:
        raise ValueError(f"unknown policy {policy!r}; valid: {', '.join(POLICY_NODES)}")
    from dexhier.launch.runner import run
    from dexhier.launch.xml_format import parse_launch_file

    isolate_dds()
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "episodes.jsonl"
    results_path.unlink(missing_ok=True)
    args = {
        "task": task, "episodes": str(episodes), "seed": str(seed),
        "real_time_factor": str(real_time_factor), "results_path": str(results_path),
        "video_dir": str(out / "videos"), "video_episodes": str(videos), "policy": policy,
    }  # fmt: skip
    if policy == "hierarchical":
        args["lowlevel_checkpoint"] = str(ROOT / H.default_lowlevel(task))
    domain = os.environ["ROS_DOMAIN_ID"]
    profile = Path(os.environ["FASTDDS_DEFAULT_PROFILES_FILE"]).name
    print(f"launching {SIM_LAUNCH.relative_to(ROOT)} (ROS_DOMAIN_ID={domain}, discovery on loopback only, "
          f"Fast DDS profile {profile})")  # fmt: skip
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
    options = {}
    if policy == "lowlevel":
        options["checkpoint"] = str(ROOT / "checkpoints" / "lowlevel")
    if policy == "hierarchical":  # absolute paths: the options are checked wherever the demo runs
        paths = {"checkpoint": H.default_lowlevel(task), "generator": H.DEFAULT_GENERATOR,
                 "filter": H.DEFAULT_FILTER, "affordance": H.DEFAULT_AFFORDANCE}  # fmt: skip
        options = {k: str(ROOT / v) for k, v in paths.items()}
    req = EvalRequest(policy=policy, task=task, episodes=max(1, len(results)), seed=seed, options=options)
    summary = summarize(req, results)
    summary.update(launch_exit_code=code, graph_wall_s=wall, through_ros=True)
    summary["policy_node"] = POLICY_NODES[policy]
    videos_found = sorted((out / "videos").glob("*.mp4"))
    summary["videos"] = [str(v) for v in videos_found]
    report = out / "report.md"
    command = f"dexhier demo --policy {policy} --task {task} --episodes {episodes} --seed {seed}"
    command += f" --real-time-factor {real_time_factor:g}" if real_time_factor != 1.0 else ""
    write_report(summary, report, command, videos_found)
    with report.open("a") as f:  # which policy ran, in words (the title has only its name)
        f.write(f"\nPolicy: {POLICY_NODES[policy]}.\n")
    summary["report"] = str(report)
    print(format_table(summary))
    return summary
