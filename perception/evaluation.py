"""Evaluation and benchmark of the affordance encoder.

* synthetic: held-out synthetic clouds (another seed, object widths 4–30 mm);
* twin: clouds of the twin's wrist camera (320x240 depth) during expert episodes of
  ``tweezer_pick`` and ``tool_open_to``, labelled by the twin's hinge angles: the
  sim-to-sim gap between the synthetic renders and the running twin.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from dexhier import vocabulary as V
from perception.encoder import AffordanceEncoder
from perception.labels import GRASP_CLEARANCE
from perception.synthetic import SyntheticConfig, generate
from perception.training import metrics
from sim.cell import WRIST_CAMERA

TWIN_TASKS = ("tweezer_pick", "tool_open_to")


def evaluate_synthetic(encoder: AffordanceEncoder, n: int, seed: int, workers: int = 1) -> dict[str, float]:
    """Metrics on ``n`` fresh synthetic samples with object widths 4–30 mm."""
    cfg = replace(SyntheticConfig(), object_width=(0.004, 0.030), cloud=encoder.cloud_config)
    return metrics(encoder, generate(n, seed, cfg, workers=workers))


def twin_clouds(
    episodes: int,
    seed: int,
    every: int = 4,
    size: tuple[int, int] = (320, 240),
    progress: Callable | None = None,
) -> list[dict[str, Any]]:
    """Wrist-camera clouds from expert episodes, every ``every`` control steps, with twin labels."""
    from sim.expert import ExpertPolicy
    from sim.twin import TwinConfig, TwinEnv

    out = []
    for task in TWIN_TASKS:
        cfg = TwinConfig(task=task, cameras=(WRIST_CAMERA,), points_camera=WRIST_CAMERA,
                         image_width=size[0], image_height=size[1])  # fmt: skip
        env = TwinEnv(cfg)
        expert = ExpertPolicy(env)
        for i in range(episodes):
            obs = env.reset(seed + i)
            expert.reset()
            step, done = 0, False
            while not done:
                if step % every == 0:
                    theta = env.opening_angle()
                    out.append({
                        "task": task, "seed": seed + i, "step": step,
                        "points": obs[V.OBS_POINTS], "labels": obs[V.OBS_POINTS_LABEL],
                        "tool_pose": env.tool_mount_pose(), "tip_gap": env.tip_gap(), "opening_angle": theta,
                        "max_gap": env.tool.max_gap, "object_width": env.instance.object.width,
                    })  # fmt: skip
                obs, _, term, trunc, _ = env.step(expert.select_action(obs))
                done = term or trunc
                step += 1
            if progress:
                progress(1)
        env.close()
    return out


def evaluate_twin(encoder: AffordanceEncoder, clouds: list[dict[str, Any]]) -> dict[str, Any]:
    """Errors of the encoder on twin clouds: with the segmentation labels splitting tool and object,
    and (``twin_unlabelled_*``) without them, as a real camera's cloud comes."""
    errs, ang, grasp, invalid = [], [], [], 0
    for c in clouds:
        est = encoder.encode(c["points"], c["labels"], c["tool_pose"])
        if not est.valid:
            invalid += 1
            continue
        errs.append(abs(est.tip_gap - c["tip_gap"]))
        ang.append(abs(est.opening_angle - c["opening_angle"]))
        if est.object_valid:
            grasp.append(est.graspable == (c["object_width"] + GRASP_CLEARANCE <= c["max_gap"]))
    errs_a = np.array(errs) if errs else np.array([np.nan])
    # A real camera's cloud has no segmentation labels: the same clouds split by geometry alone.
    bare = [encoder.encode(c["points"], None, c["tool_pose"]) for c in clouds]
    bare_errs = np.array([abs(e.tip_gap - c["tip_gap"]) for e, c in zip(bare, clouds, strict=True)
                          if e.valid])  # fmt: skip
    bare_errs = bare_errs if len(bare_errs) else np.array([np.nan])
    return {
        "twin_unlabelled_invalid": sum(not e.valid for e in bare),
        "twin_unlabelled_tip_gap_mae_mm": float(1000 * bare_errs.mean()),
        "twin_clouds": len(clouds),
        "twin_invalid": invalid,
        "twin_tip_gap_mae_mm": float(1000 * errs_a.mean()),
        "twin_tip_gap_p95_mm": float(1000 * np.quantile(errs_a, 0.95)),
        "twin_angle_mae_deg": float(np.degrees(np.mean(ang))) if ang else float("nan"),
        "twin_graspable_accuracy": float(np.mean(grasp)) if grasp else float("nan"),
        "twin_object_clouds": len(grasp),
    }


def bench(encoder: AffordanceEncoder, repeats: int = 200) -> dict[str, float]:
    """Latency of preprocessing + encoding one raw cloud from 64x64 and 320x240 wrist depth."""
    from sim.expert import ExpertPolicy
    from sim.twin import TwinConfig, TwinEnv

    res: dict[str, float] = {}
    for w, h, tag in ((64, 64, "64"), (320, 240, "320")):
        env = TwinEnv(TwinConfig(task="tweezer_pick", cameras=(WRIST_CAMERA,), points_camera=WRIST_CAMERA,
                                 image_width=w, image_height=h))  # fmt: skip
        expert = ExpertPolicy(env)
        obs = env.reset(0)
        expert.reset()
        while expert.phase != "close":
            obs, *_ = env.step(expert.select_action(obs))
        pts, lab, pose = obs[V.OBS_POINTS], obs[V.OBS_POINTS_LABEL], env.tool_mount_pose()
        env.close()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            est = encoder.encode(pts, lab, pose)
            times.append(1000 * (time.perf_counter() - t))
        suffix = "" if tag == "320" else "_64"
        res[f"p50_ms{suffix}"] = statistics.median(times)
        res[f"p99_ms{suffix}"] = float(np.quantile(times, 0.99))
        res[f"raw_points{suffix}"] = len(pts)
        res[f"valid{suffix}"] = bool(est.valid)
    res["tool_points"] = encoder.cloud_config.n_tool_points
    return res
