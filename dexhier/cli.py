"""The ``dexhier`` command line.

Every command that produces figures accepts ``--json`` and then prints one JSON object as
the last line of stdout. Progress goes to stderr. Bad arguments give a one-line error.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, without the usage dump."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _tasks() -> list[str]:
    from sim.tasks import TASKS

    return sorted(TASKS)


def _gather(results: Iterator[Any], total: int, desc: str) -> list[Any]:
    """Collect episode results behind a progress bar (stderr) that shows the running success count."""
    from tqdm import tqdm

    done: list[Any] = []
    with tqdm(total=total, desc=desc, unit="ep", file=sys.stderr, dynamic_ncols=True, disable=None) as bar:
        for res in results:
            done.append(res)
            bar.update(1)
            bar.set_postfix(success=f"{sum(r.success for r in done)}/{len(done)}")
    return done


def _emit(args: argparse.Namespace, summary: dict[str, Any]) -> None:
    if args.json:
        print(json.dumps(summary, default=float))


def _print_figures(result: dict[str, Any], width: int, precision: int) -> None:
    """One ``key value`` line per figure, floats with ``precision`` decimals."""
    for key, value in result.items():
        text = f"{value:.{precision}f}" if isinstance(value, float) else str(value)
        print(f"{key:{width}s} {text}")


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"size must look like 64x64, got {text!r}") from err
    if not (8 <= w <= 640 and 8 <= h <= 480):
        raise argparse.ArgumentTypeError(f"size {text} outside 8x8 .. 640x480")
    return w, h


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from err
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


# ------------------------------------------------------------------------------- commands
def cmd_sim_render(args: argparse.Namespace) -> int:
    import imageio.v2 as imageio

    from sim.twin import TwinConfig, TwinEnv

    env = TwinEnv(TwinConfig(task=args.task, render=False, points=False))
    env.reset(args.seed)
    w, h = args.size
    frame = env.render(args.camera, w, h)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    imageio.imwrite(args.out, frame)
    print(f"wrote {args.out} ({w}x{h}, camera {args.camera}, task {args.task}, seed {args.seed})")
    print(f"instruction: {env.instance.instruction}")
    env.close()
    return 0


def cmd_sim_info(args: argparse.Namespace) -> int:
    from sim.twin import TwinConfig, TwinEnv

    env = TwinEnv(TwinConfig(task=args.task))
    spec = env.action_spec
    info = {
        "task": args.task,
        "time_limit_s": env.time_limit,
        "control_hz": env.config.control_hz,
        "physics_hz": env.config.cell.physics_hz,
        "arm_joints": list(env.robot.arm_joints),
        "hand_joints": list(env.robot.hand_joints),
        "action_lower": spec.lower.round(4).tolist(),
        "action_upper": spec.upper.round(4).tolist(),
        "observation": {k: {"shape": list(s.shape), "dtype": s.dtype, "unit": s.unit}
                        for k, s in env.observation_spec.items()},
    }  # fmt: skip
    print(f"task {args.task}: time limit {env.time_limit} s, {env.config.control_hz:g} Hz control")
    print(f"action: {spec.size} joint targets (rad): {', '.join(spec.names)}")
    for key, s in env.observation_spec.items():
        print(f"  obs {key:18s} {str(s.shape):14s} {s.dtype:8s} {s.unit}")
    env.close()
    _emit(args, info)
    return 0


def cmd_collect_expert(args: argparse.Namespace) -> int:
    from dexhier.collection import CollectRequest, collect

    req = CollectRequest(
        task=args.task,
        episodes=args.episodes,
        seed=args.seed,
        out=args.out,
        workers=args.workers,
        image_size=args.image_size,
        only_success=args.only_success,
        perception=args.perception,
    )
    results = _gather(collect(req), req.episodes, f"collect {req.task}")
    ok = sum(r.success for r in results)
    kept = ok if req.only_success else len(results)
    print(f"wrote {kept} episodes to {req.out} ({ok}/{len(results)} successful)")
    _emit(args, {"out": str(req.out), "episodes": len(results), "written": kept,
                 "success_rate": ok / len(results), "task": req.task, "seed": req.seed})  # fmt: skip
    return 0


_LOWLEVEL_FLAGS = ("checkpoint", "goal_source", "steps", "sampler", "cfg_lambda", "exec_steps",
                   "temporal_ensemble", "lookahead", "tool_noise")  # fmt: skip
_HIERARCHY_FLAGS = ("checkpoint", "exec_steps", "temporal_ensemble", "generator", "filter", "value",
                    "affordance", "candidates", "selection", "subgoals", "replan_every")  # fmt: skip
_POLICY_FLAGS = {"expert": (), "lowlevel": _LOWLEVEL_FLAGS, "hierarchical": _HIERARCHY_FLAGS}


def _default_lowlevel(policy: str, task: str) -> Path:
    from dexhier.hierarchical_rollout import best_lowlevel, default_lowlevel

    return Path(default_lowlevel(task) if policy == "hierarchical" else best_lowlevel(task))


def _policy_options(args: argparse.Namespace) -> dict[str, Any]:
    """The policy's options from the eval flags (only flags the user gave); a flag of another
    policy is an error rather than silently ignored."""
    every = dict.fromkeys([*_LOWLEVEL_FLAGS, *_HIERARCHY_FLAGS])
    given = {k: getattr(args, k, None) for k in every}
    given = {k: (str(v) if isinstance(v, Path) else v) for k, v in given.items() if v is not None}
    mine = _POLICY_FLAGS.get(args.policy, ())
    foreign = [k for k in given if k not in mine]
    if foreign:
        users = [p for p, flags in _POLICY_FLAGS.items() if foreign[0] in flags]
        raise ValueError(f"--{foreign[0].replace('_', '-')} applies to --policy {' / '.join(users)} only")
    if "checkpoint" in mine:
        given.setdefault("checkpoint", str(_default_lowlevel(args.policy, args.task)))
    return given


def _run_eval(args: argparse.Namespace, command: str) -> dict[str, Any]:
    from dexhier.evaluation import EvalRequest, format_table, iter_results, summarize, write_report

    req = EvalRequest(
        policy=args.policy,
        task=args.task,
        episodes=args.episodes,
        seed=args.seed,
        workers=args.workers,
        video_dir=args.video,
        videos=args.videos,
        options=_policy_options(args),
        objects=getattr(args, "objects", "train"),
    )
    results = _gather(iter_results(req), req.episodes, f"eval {req.label} {req.task}")
    summary = summarize(req, results)
    print(format_table(summary))
    videos = sorted(Path(req.video_dir).glob(f"{req.task}_{req.label}_seed*.mp4")) if req.video_dir else []
    report = args.report or Path("out") / "eval" / f"{req.label}_{req.task}.md"
    write_report(summary, report, command, videos)
    summary["report"] = str(report)
    summary["videos"] = [str(v) for v in videos]
    print(f"report: {report}")
    return summary


def _hierarchy_flags(group: Any, ablation: bool = False) -> None:
    from dexhier import hierarchical_rollout as H

    group.add_argument(
        "--generator",
        type=Path,
        default=None,
        help=f"subgoal generator checkpoint (default: {H.DEFAULT_GENERATOR})",
    )
    group.add_argument(
        "--filter",
        type=Path,
        default=None,
        help=f"progress classifier checkpoint (default: {H.DEFAULT_FILTER})",
    )
    group.add_argument(
        "--value",
        type=Path,
        default=None,
        help=f"reachability estimate checkpoint, for --selection value (default: {H.DEFAULT_VALUE})",
    )
    group.add_argument(
        "--affordance",
        type=Path,
        default=None,
        help=f"affordance encoder checkpoint (default: {H.DEFAULT_AFFORDANCE})",
    )
    group.add_argument("--candidates", type=_positive, default=None, help="subgoal candidates N (default: 4)")
    group.add_argument("--replan-every", type=_positive, default=None,
                       help="control steps between subgoals (default: 10)")  # fmt: skip
    if not ablation:
        group.add_argument(
            "--selection",
            choices=("progress", "value", "first"),
            default=None,
            help="progress: the classifier's argmax (default); value: the reachability estimate; "
            "first: no filter",
        )
        group.add_argument("--subgoals", choices=("generated", "oracle", "oracle_lowres"), default=None,
                           help="generated (default); the expert's frames, full or generator "
                           "resolution (ablations)")  # fmt: skip


def cmd_eval_hierarchy(args: argparse.Namespace) -> int:
    from dexhier.evaluation import EvalRequest, iter_results, summarize
    from dexhier.hierarchy_report import VARIANTS, write_hierarchy_report

    base = {k: (str(v) if isinstance(v, Path) else v)
            for k in ("checkpoint", "generator", "filter", "value", "affordance", "candidates",
                      "replan_every")
            if (v := getattr(args, k, None)) is not None}  # fmt: skip
    base.setdefault("checkpoint", str(_default_lowlevel("hierarchical", args.task)))
    summaries = {}
    for name in args.variants:
        options = {**base, **VARIANTS[name]}
        req = EvalRequest(policy="hierarchical", task=args.task, episodes=args.episodes, seed=args.seed,
                          workers=args.workers, options=options)  # fmt: skip
        results = _gather(iter_results(req), req.episodes, f"eval hierarchy {name} {req.task}")
        summaries[name] = summarize(req, results)
        print(f"{name:>8}: {summaries[name]['successes']}/{req.episodes} "
              f"({100 * summaries[name]['success_rate']:.1f}%)")  # fmt: skip
    report = args.report or Path("out") / "eval" / f"hierarchy_{args.task}.md"
    write_hierarchy_report(summaries, report, "dexhier " + shlex.join(sys.argv[1:]))
    print(f"report: {report}")
    _emit(args, {
        "task": args.task, "episodes": args.episodes, "seed": args.seed, "report": str(report),
        "variants": {n: {k: v for k, v in s.items() if k != "per_episode"} for n, s in summaries.items()},
    })  # fmt: skip
    return 0


def cmd_eval_subgoal(args: argparse.Namespace) -> int:
    import imageio.v2 as imageio

    from policies.high_level.generator import SubgoalGenerator
    from policies.high_level.samples import subgoal_samples

    _check_datasets(args.data)
    gen = SubgoalGenerator.load(args.checkpoint)
    grid, metrics = subgoal_samples(gen, args.data, args.rows, args.candidates, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    imageio.imwrite(args.out, grid)
    print(f"wrote {args.out}: per row the current frame, the real future frame, {args.candidates} generated")
    print(f"MSE vs the real future (generator units): first candidate {metrics['mse_first']:.4f}, closest "
          f"{metrics['mse_best']:.4f}, repeating the current frame {metrics['mse_copy_current']:.4f}")
    _emit(args, {"checkpoint": str(args.checkpoint), "out": str(args.out), **metrics})
    return 0


def cmd_eval_rollout(args: argparse.Namespace) -> int:
    summary = _run_eval(args, "dexhier " + shlex.join(sys.argv[1:]))
    _emit(args, summary)
    return 0


def cmd_bench_twin(args: argparse.Namespace) -> int:
    from dexhier.bench import bench_twin

    result = bench_twin(episodes=args.episodes, progress=lambda m: print(f"bench: {m}", file=sys.stderr))
    _print_figures(result, 34, 3)
    _emit(args, result)
    return 0


DEFAULT_AFFORDANCE = Path("checkpoints/affordance")


def cmd_train_affordance(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from perception.training import TrainConfig, train

    cfg = TrainConfig(
        n_train=args.samples,
        n_val=args.val_samples,
        steps=args.steps,
        batch_size=args.batch_size,
        seed=args.seed,
        workers=args.workers,
    )
    print(f"training the affordance encoder into {args.out} ({cfg.steps} steps, batch {cfg.batch_size})")
    with tqdm(total=cfg.steps, desc="train affordance", unit="step", file=sys.stderr, disable=None) as bar:
        result = train(args.out, cfg, log=lambda m: tqdm.write(m, file=sys.stderr), bar=bar)
    _print_figures(result, 28, 4)
    from dexhier.checkpoints import update_manifest

    keep = ("tip_gap_mae_mm", "angle_mae_deg", "graspable_accuracy", "approach_opening_mae_mm", "samples")
    manifest = update_manifest(
        args.out, "dexhier " + shlex.join(sys.argv[1:]), cfg.seed, {k: round(result[k], 4) for k in keep}
    )
    if manifest is not None:
        print(f"recorded in {manifest}")
    _emit(args, {"out": str(args.out), **result})
    return 0


DEFAULT_LOWLEVEL = Path("checkpoints/lowlevel")


def _check_datasets(paths: list[Path]) -> None:
    missing = [str(d) for d in paths if not (Path(d) / "dataset.json").is_file()]
    if missing:
        raise FileNotFoundError(f"not an episode dataset (no dataset.json): {', '.join(missing)}")


def _run_training(args: argparse.Namespace, what: str, desc: str, steps: int, seed: int, run: Any) -> int:
    """Progress bar, figures, MANIFEST line and JSON around ``run(log, bar) -> metrics``; rank 0 reports."""
    from tqdm import tqdm

    rank = int(os.environ.get("RANK", "0"))
    if rank == 0:
        print(f"training {what} into {args.out}: {steps} steps, batch {args.batch_size} per process, "
              f"data {', '.join(map(str, args.data))}")  # fmt: skip
    log = (lambda m: tqdm.write(m, file=sys.stderr)) if rank == 0 else (lambda m: None)
    # In a log file (no TTY) the bar still reports, every 30 s, so that long runs show progress.
    with tqdm(total=steps, desc=desc, unit="step", file=sys.stderr, disable=rank != 0,
              mininterval=0.5 if sys.stderr.isatty() else 30) as bar:  # fmt: skip
        result = run(log, bar)
    if rank != 0:
        return 0
    _print_figures(result, 24, 4)
    from dexhier.checkpoints import update_manifest

    manifest = update_manifest(
        args.out,
        "dexhier " + shlex.join(sys.argv[1:]),
        seed,
        {k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()},
    )
    if manifest is not None:
        print(f"recorded in {manifest}")
    _emit(args, {"out": str(args.out), **result})
    return 0


def cmd_train_lowlevel(args: argparse.Namespace) -> int:
    import torch

    from policies.low_level.config import PolicyConfig
    from policies.low_level.training import TrainConfig, train

    if args.threads:
        torch.set_num_threads(args.threads)
    policy = PolicyConfig(
        diffusion=args.diffusion, steps=3 if args.diffusion == "edm" else 100, obs_horizon=args.obs_horizon
    )
    init = str(args.init_from) if args.init_from else None
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, seed=args.seed, policy=policy,
                      checkpoint_every=args.checkpoint_every, balance_datasets=args.balance_datasets,
                      shift=args.image_shift, init_from=init)  # fmt: skip
    _check_datasets(args.data)
    what = f"the low-level policy ({cfg.policy.diffusion})"
    return _run_training(args, what, f"train lowlevel {cfg.policy.diffusion}", cfg.steps, cfg.seed,
                         lambda log, bar: train(args.data, args.out, cfg, log=log, bar=bar))  # fmt: skip


def _train_high_level(args: argparse.Namespace, what: str) -> int:
    """``train subgoal`` and ``train filter``: the same flags, another recipe and trainer."""
    import torch

    from policies.high_level import training as T

    if args.threads:
        torch.set_num_threads(args.threads)
    recipe, run, desc = {
        "subgoal": (T.SubgoalTrainConfig, T.train_subgoal, "the subgoal generator"),
        "filter": (T.ProgressTrainConfig, T.train_progress, "the subgoal filter"),
        "value": (T.ReachabilityTrainConfig, T.train_reachability, "the reachability estimate"),
    }[what]
    extra = {"horizon": args.horizon} if what == "value" else {}
    if what == "subgoal" and args.init_from:
        extra["init_from"] = str(args.init_from)
    cfg = recipe(steps=args.steps, batch_size=args.batch_size, seed=args.seed,
                 checkpoint_every=args.checkpoint_every, camera=args.camera, image_size=args.image_size,
                 offsets=tuple(args.offsets), **extra)  # fmt: skip
    _check_datasets(args.data)
    return _run_training(args, desc, f"train {what}", cfg.steps, cfg.seed,
                         lambda log, bar: run(args.data, args.out, cfg, log=log, bar=bar))  # fmt: skip


def cmd_train_subgoal(args: argparse.Namespace) -> int:
    return _train_high_level(args, "subgoal")


def cmd_train_filter(args: argparse.Namespace) -> int:
    return _train_high_level(args, "filter")


def cmd_train_value(args: argparse.Namespace) -> int:
    return _train_high_level(args, "value")


def cmd_eval_affordance(args: argparse.Namespace) -> int:
    from perception.encoder import AffordanceEncoder
    from perception.evaluation import evaluate_synthetic, evaluate_twin, twin_clouds

    encoder = AffordanceEncoder.load(args.checkpoint)
    print(f"synthetic: {args.samples} held-out clouds (seed {args.seed})", file=sys.stderr)
    result: dict[str, Any] = {"checkpoint": str(args.checkpoint)}
    result.update(evaluate_synthetic(encoder, args.samples, args.seed, workers=args.workers))
    from tqdm import tqdm

    n_eps = args.twin_episodes * 2
    with tqdm(total=n_eps, desc="twin episodes", unit="ep", file=sys.stderr, disable=None) as bar:
        clouds = twin_clouds(args.twin_episodes, args.seed, progress=bar.update)
    result.update(evaluate_twin(encoder, clouds))
    _print_figures(result, 28, 4)
    _emit(args, result)
    return 0


def cmd_bench_affordance(args: argparse.Namespace) -> int:
    from perception.encoder import AffordanceEncoder
    from perception.evaluation import bench
    from perception.label_free_eval import bench as bench_label_free

    result = bench(AffordanceEncoder.load(args.checkpoint), repeats=args.repeats)
    result.update(bench_label_free(repeats=args.repeats))
    _print_figures(result, 16, 3)
    _emit(args, result)
    return 0


def cmd_bench_lowlevel(args: argparse.Namespace) -> int:
    from dexhier.lowlevel_bench import bench_lowlevel

    if args.no_peer:
        args.peer = None
    for ckpt in (args.checkpoint, args.peer):
        if ckpt is not None and not (ckpt / "config.json").is_file():
            raise FileNotFoundError(f"no checkpoint at {ckpt} (config.json missing)")
    result = bench_lowlevel(
        args.checkpoint, args.peer, repeats=args.repeats, peer_repeats=args.peer_repeats, task=args.task,
        episodes=args.episodes, seed=args.seed, workers=args.workers,
        progress=lambda m: print(f"bench: {m}", file=sys.stderr),
    )  # fmt: skip
    _print_figures(result, 32, 3)
    _emit(args, result)
    return 0


def cmd_bench_subgoal(args: argparse.Namespace) -> int:
    from dexhier import hierarchical_rollout as H
    from policies.high_level.bench import bench_subgoal

    if args.untrained:
        args.checkpoint = args.filter = None
    else:  # the shipped checkpoints unless others are given
        args.checkpoint = args.checkpoint or Path(H.DEFAULT_GENERATOR)
        args.filter = args.filter or Path(H.DEFAULT_FILTER)
    for ckpt in (args.checkpoint, args.filter):
        if ckpt is not None and not (ckpt / "config.json").is_file():
            raise FileNotFoundError(f"no checkpoint at {ckpt} (config.json missing; --untrained times the "
                                    "default architectures with random weights)")  # fmt: skip
    if args.checkpoint is None:
        print("bench subgoal: --untrained: the default architectures with random weights "
              "(latency does not depend on the weights)", file=sys.stderr)  # fmt: skip
    result = bench_subgoal(args.checkpoint, args.filter, args.candidates, args.steps, args.repeats)
    _print_figures(result, 24, 2)
    _emit(args, result)
    return 0


def cmd_bench_ros(args: argparse.Namespace) -> int:
    from dexhier.ros_bench import bench_ros

    print(f"bench ros: the sim graph for {args.duration:g} s at real-time factor {args.real_time_factor:g}",
          file=sys.stderr)  # fmt: skip
    result = bench_ros(args.duration, args.real_time_factor, perception=not args.no_perception,
                       realtime_priority=args.realtime_priority, policy=args.policy)  # fmt: skip
    _print_figures(result, 28, 3)
    _emit(args, result)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from dexhier.ros_demo import POLICY_NODES

    out: Path = args.out
    policy = POLICY_NODES[args.policy]
    if args.direct:
        if args.policy == "lowlevel":  # no nodes in-process: the same policy and oracle, as library objects
            policy = "the learned low-level policy (checkpoints/lowlevel) with oracle goals from the expert"
        if args.policy == "hierarchical":
            policy = ("the learned hierarchy (perception, subgoal generator + progress filter, "
                      f"{_default_lowlevel('hierarchical', args.task)}) as library objects")  # fmt: skip
        print(f"dexhier demo: {policy} solves '{args.task}' in the MuJoCo twin, in-process "
              f"({args.episodes} seeded episodes, {args.workers} workers)")  # fmt: skip
        ns = argparse.Namespace(
            policy=args.policy, task=args.task, episodes=args.episodes, seed=args.seed, workers=args.workers,
            video=out / "videos", videos=args.videos, report=out / "report.md", json=args.json,
        )  # fmt: skip
        flags = f"--policy {args.policy} --task {args.task} --episodes {args.episodes}"
        summary = _run_eval(ns, f"dexhier demo --direct {flags}")
    else:
        from dexhier.ros_demo import run_demo

        graph = "twin bridge -> policy -> safety supervisor -> twin"
        print(f"dexhier demo: {policy} solves '{args.task}' through the ROS 2 graph ({graph}), "
              f"{args.episodes} seeded episodes")  # fmt: skip
        summary = run_demo(args.task, args.episodes, args.seed, out, args.real_time_factor, args.videos,
                           policy=args.policy)  # fmt: skip
        print(f"report: {summary['report']}")
    print(f"videos: {', '.join(summary['videos']) or 'none'}")
    _emit(args, summary)
    return 0


# --------------------------------------------------------------------------------- parser
def _high_level_train_args(p: argparse.ArgumentParser, steps: int, batch: int) -> None:
    """The flags ``train subgoal`` and ``train filter`` share."""
    p.add_argument("--data", type=Path, nargs="+", required=True, help="episode dataset directories")
    p.add_argument("--out", type=Path, required=True, help="checkpoint directory")
    p.add_argument("--steps", type=_positive, default=steps, help=f"optimizer steps (default: {steps})")
    p.add_argument("--batch-size", type=_positive, default=batch, help=f"per process (default: {batch})")
    p.add_argument("--checkpoint-every", type=_positive, default=500, help="steps (default: 500)")
    p.add_argument("--camera", default="scene", help="camera of the images (default: scene)")
    p.add_argument("--image-size", type=_positive, default=32,
                   help="image side, px; generator and filter must match (default: 32)")  # fmt: skip
    p.add_argument("--offsets", type=_positive, nargs=2, default=(10, 20), metavar=("MIN", "MAX"),
                   help="subgoal offset k range, control steps (default: 10 20)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="training seed (default: 0)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")


def build_parser() -> argparse.ArgumentParser:
    tasks = _tasks()
    from dexhier.evaluation import POLICIES

    p = _Parser(prog="dexhier", description="dexhier: hierarchical tool manipulation with a dexterous hand.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    def add_json(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")

    sim = sub.add_parser("sim", help="the MuJoCo twin: render frames, show specs")
    sim_sub = sim.add_subparsers(
        dest="sim_command", required=True, metavar="SIM_COMMAND", parser_class=_Parser
    )
    r = sim_sub.add_parser(
        "render",
        help="render one camera frame of a seeded episode start to PNG",
        description="Reset the twin with a task and seed and write one camera frame as PNG.",
    )
    r.add_argument("--task", choices=tasks, default="tweezer_pick", help="task (default: %(default)s)")
    r.add_argument("--seed", type=int, default=0, help="episode seed (default: %(default)s)")
    r.add_argument("--out", type=Path, default=Path("frame.png"), help="output PNG (default: %(default)s)")
    r.add_argument(
        "--camera", choices=["scene", "wrist"], default="scene", help="camera (default: %(default)s)"
    )
    r.add_argument("--size", type=_size, default=(640, 480), help="WIDTHxHEIGHT (default: 640x480)")
    r.set_defaults(func=cmd_sim_render)
    i = sim_sub.add_parser("info", help="print joint names, limits and the observation spec")
    i.add_argument("--task", choices=tasks, default="tweezer_pick")
    add_json(i)
    i.set_defaults(func=cmd_sim_info)

    col = sub.add_parser("collect", help="collect demonstration episodes")
    col_sub = col.add_subparsers(
        dest="collect_command", required=True, metavar="SOURCE", parser_class=_Parser
    )
    ce = col_sub.add_parser(
        "expert",
        help="episodes of the privileged expert, in the episode format",
        description="Run the privileged expert and write its episodes (images, depth, joint states, tool "
        "gap, the action sent and the raw request) to a dataset in the episode format "
        "(docs/episode_format.md). Episode i uses seed SEED+i and is committed atomically.",
    )
    ce.add_argument("--task", choices=tasks, required=True, help="task to demonstrate")
    ce.add_argument(
        "--episodes", type=_positive, default=10, help="number of episodes (default: %(default)s)"
    )
    ce.add_argument("--seed", type=int, default=0, help="seed of episode 0; episode i uses seed+i")
    ce.add_argument("--out", type=Path, required=True, help="dataset directory (created or appended to)")
    ce.add_argument("--workers", type=_positive, default=1, help="parallel worker processes (default: 1)")
    ce.add_argument("--image-size", type=_size, default=(64, 64), help="camera WIDTHxHEIGHT (default: 64x64)")
    ce.add_argument("--only-success", action="store_true", help="write successful episodes only")
    ce.add_argument(
        "--perception",
        action="store_true",
        help="also record label-free perception's perception/* keys every step (object-centric low level)",
    )
    add_json(ce)
    ce.set_defaults(func=cmd_collect_expert)

    ev = sub.add_parser("eval", help="evaluate policies")
    ev_sub = ev.add_subparsers(dest="eval_command", required=True, metavar="EVAL", parser_class=_Parser)
    er = ev_sub.add_parser(
        "rollout",
        help="closed-loop seeded episodes in the twin",
        description="Run seeded closed-loop episodes of a policy in the MuJoCo twin. Episode i uses seed "
        "SEED+i in whichever worker runs it, so results do not depend on --workers. Prints a success "
        "table by object width and writes a markdown report (and MP4 videos with --video).",
    )
    er.add_argument("--policy", choices=sorted(POLICIES), default="expert", help="policy (default: expert)")
    er.add_argument("--task", choices=tasks, required=True, help="task to evaluate")
    er.add_argument(
        "--episodes", type=_positive, default=20, help="number of episodes (default: %(default)s)"
    )
    er.add_argument("--seed", type=int, default=0, help="seed of episode 0; episode i uses seed+i")
    er.add_argument(
        "--objects",
        choices=("train", "heldout"),
        default="train",
        help="object shapes: the tasks' (train) or shapes never in training data: capsules, ellipsoids, "
        "hexagonal-prism meshes (heldout) (default: train)",
    )
    er.add_argument("--workers", type=_positive, default=1, help="parallel worker processes (default: 1)")
    er.add_argument("--video", type=Path, default=None, help="directory for MP4 videos of the episodes")
    er.add_argument("--videos", type=int, default=0, help="record only the first N episodes (0 = all)")
    er.add_argument("--report", type=Path, default=None, help="markdown report path (default: out/eval/...)")
    ll = er.add_argument_group("low-level policy (--policy lowlevel)")
    ll.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="policy checkpoint (default: the best shipped low level for the task, "
        "dexhier.hierarchical_rollout.BEST_LOWLEVEL; checkpoints/lowlevel_ddpm is the DDPM peer; "
        "with --policy hierarchical checkpoints/lowlevel_pick, or lowlevel_pick_place for that task; "
        "an object-centric checkpoint runs on label-free perception)",
    )
    ll.add_argument(
        "--goal-source",
        choices=("oracle",),
        default=None,
        help="oracle: subgoal frames of the expert's rollout of the same seed (default)",
    )
    ll.add_argument(
        "--steps", type=_positive, default=None, help="denoising steps (default: the checkpoint's)"
    )
    ll.add_argument(
        "--sampler",
        choices=("ddim", "heun", "euler_ancestral", "dpmpp_2m"),
        default=None,
        help="EDM sampler (default: the checkpoint's, ddim)",
    )
    ll.add_argument(
        "--cfg-lambda",
        type=float,
        default=None,
        help="classifier-free guidance weight: 1 = conditional, 0 = goal-free (default: 1)",
    )
    ll.add_argument("--exec-steps", type=_positive, default=None, help="actions executed per chunk")
    ll.add_argument(
        "--temporal-ensemble",
        action="store_true",
        default=None,
        help="replan every step and average overlapping chunks",
    )
    ll.add_argument("--lookahead", type=int, default=None, help="oracle goal lookahead, steps (default: 20)")
    ll.add_argument(
        "--tool-noise", type=float, default=None, help="noise on the measured tip gap, m (default: 0)"
    )
    hl = er.add_argument_group(
        "hierarchy (--policy hierarchical; --checkpoint, --exec-steps, --temporal-ensemble also apply)"
    )
    _hierarchy_flags(hl)
    add_json(er)
    er.set_defaults(func=cmd_eval_rollout)

    eh = ev_sub.add_parser(
        "hierarchy",
        help="the hierarchy and its ablations in one run",
        description="Evaluate the hierarchy (--policy hierarchical) on the same seeds in several "
        "variants, one after the other: progress-classifier selection of N candidates (filter), "
        "reachability selection (value), no filter (n1: N = 1), the expert's frames as subgoal images "
        "(oracle; tool goal and tool state still from perception) and the same frames at the generator's "
        "resolution (oracle_lowres). Prints one table, writes one markdown report with a "
        "success-by-width plot.",
    )
    eh.add_argument("--task", choices=tasks, default="tweezer_pick", help="task (default: %(default)s)")
    eh.add_argument("--episodes", type=_positive, default=20, help="episodes per variant (default: 20)")
    eh.add_argument("--seed", type=int, default=1000, help="seed of episode 0 (default: %(default)s)")
    eh.add_argument("--workers", type=_positive, default=1, help="parallel worker processes (default: 1)")
    eh.add_argument(
        "--variants",
        nargs="+",
        choices=("filter", "value", "n1", "oracle", "oracle_lowres"),
        default=["filter", "value", "n1", "oracle"],
        help="which variants to run (default: filter value n1 oracle)",
    )
    eh.add_argument("--report", type=Path, default=None, help="markdown report path (default: out/eval/...)")
    eh.add_argument("--checkpoint", type=Path, default=None,
                    help="low level (default: checkpoints/lowlevel_pick; checkpoints/lowlevel_pick_place "
                    "for tweezer_pick_place)")  # fmt: skip
    _hierarchy_flags(eh, ablation=True)
    add_json(eh)
    eh.set_defaults(func=cmd_eval_hierarchy)

    tr = sub.add_parser("train", help="train models")
    tr_sub = tr.add_subparsers(dest="train_command", required=True, metavar="MODEL", parser_class=_Parser)
    ta = tr_sub.add_parser(
        "affordance",
        help="the point-cloud affordance encoder, on synthetic clouds",
        description="Generate synthetic tool clouds from the twin's geometry (cached in OUT/data) and train "
        "the PointNet affordance encoder. Checkpoints and the training state are written every 500 steps; "
        "running the same command again resumes.",
    )
    ta.add_argument("--out", type=Path, required=True, help="checkpoint directory")
    ta.add_argument("--samples", type=_positive, default=12000, help="training clouds (default: 12000)")
    ta.add_argument("--val-samples", type=_positive, default=1000, help="validation clouds (default: 1000)")
    ta.add_argument("--steps", type=_positive, default=3000, help="optimizer steps (default: 3000)")
    ta.add_argument("--batch-size", type=_positive, default=128, help="batch size (default: 128)")
    ta.add_argument("--workers", type=_positive, default=2, help="data-generation processes (default: 2)")
    ta.add_argument("--seed", type=int, default=0, help="data and training seed (default: 0)")
    add_json(ta)
    ta.set_defaults(func=cmd_train_affordance)

    tl = tr_sub.add_parser(
        "lowlevel",
        help="the goal-conditioned score-diffusion policy (BESO) or its DDPM peer",
        description="Train the low-level policy on episode datasets (expert or teleop) with hindsight goals. "
        "A checkpoint (EMA weights) and the training state are written every --checkpoint-every steps; "
        "running the same command again resumes. Runs unchanged under torchrun --nproc_per_node N "
        "(data parallel, gloo on CPU); --batch-size is per process.",
    )
    tl.add_argument("--data", type=Path, nargs="+", required=True, help="episode dataset directories")
    tl.add_argument("--out", type=Path, required=True, help="checkpoint directory")
    tl.add_argument("--diffusion", choices=("edm", "ddpm"), default="edm",
                    help="edm = BESO (3 steps); ddpm = the DDPM-100 peer (default: edm)")  # fmt: skip
    tl.add_argument("--steps", type=_positive, default=6000, help="optimizer steps (default: 6000)")
    tl.add_argument("--batch-size", type=_positive, default=128, help="batch per process (default: 128)")
    tl.add_argument("--checkpoint-every", type=_positive, default=500, help="steps (default: 500)")
    tl.add_argument(
        "--balance-datasets",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="draw each --data dataset equally often, else each step (default: balanced)",
    )
    tl.add_argument("--obs-horizon", type=_positive, default=1,
                    help="proprio history length, steps (default: %(default)s)")  # fmt: skip
    tl.add_argument("--image-shift", type=int, default=1,
                    help="random-shift augmentation, pixels (default: %(default)s)")  # fmt: skip
    tl.add_argument(
        "--init-from",
        type=Path,
        default=None,
        help="start from this low-level checkpoint's weights and normalization, widened to cover the "
        "data (fine-tuning)",
    )
    tl.add_argument("--seed", type=int, default=0, help="training seed (default: 0)")
    tl.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    add_json(tl)
    tl.set_defaults(func=cmd_train_lowlevel)

    ts = tr_sub.add_parser(
        "subgoal",
        help="the diffusion subgoal-image generator (high level)",
        description="Train the image-to-image subgoal generator (diffusers UNet2DModel, current image "
        "concatenated on channels, task as a class embedding, v-prediction) on (frame t, frame t+k, task) "
        "pairs of episode datasets (expert or teleop). EMA, periodic checkpoints, resume by running the "
        "same command again; runs unchanged under torchrun --nproc_per_node N.",
    )
    _high_level_train_args(ts, steps=6000, batch=64)
    ts.add_argument("--init-from", type=Path, default=None,
                    help="start from this generator checkpoint's weights (fine-tuning; a task it does not "
                    "know starts from its null task)")  # fmt: skip
    ts.set_defaults(func=cmd_train_subgoal)

    tf = tr_sub.add_parser(
        "filter",
        help="the subgoal filter: GHIL-Glue's progress classifier",
        description="Train the progress classifier that scores (current image, candidate subgoal, task) on "
        "episode datasets: positives (t, t+k) and negatives with a wrong task, reversed order or a wrong "
        "goal image (50/20/20/10 %%). Resumes by running the same command again; torchrun-able.",
    )
    _high_level_train_args(tf, steps=3000, batch=128)
    tf.set_defaults(func=cmd_train_filter)
    tv = tr_sub.add_parser(
        "value",
        help="the value selection: a reachability (temporal distance) estimate",
        description="Train the HECRL-style alternative to the filter: a network that estimates how many "
        "control steps separate the current image from a candidate subgoal (normalized by --horizon), "
        "with reversed and other-episode pairs as unreachable (60/20/20 %%). Selection keeps reachable "
        "candidates and prefers the one at the generator's mean offset. Resumes; torchrun-able.",
    )
    _high_level_train_args(tv, steps=3000, batch=128)
    tv.add_argument("--horizon", type=_positive, default=60,
                    help="distance normalization, control steps (default: 60)")  # fmt: skip
    tv.set_defaults(func=cmd_train_value)
    from dexhier.oc_cli import add_command as add_oc_command

    add_oc_command(tr_sub, add_json, _positive)

    es = ev_sub.add_parser(
        "subgoal",
        help="generated subgoals next to the real future frames (a PNG and MSEs)",
        description="Sample (frame t, frame t+k, task) triples from episode datasets, generate candidate "
        "subgoals for each, and write a PNG grid: per row the current frame, the real future frame, then "
        "the candidates (nearest-neighbour upscaled to 64 px). Prints the MSE of the first and of the "
        "closest candidate against the real future, and of repeating the current frame.",
    )
    es.add_argument("--data", type=Path, nargs="+", required=True, help="episode dataset directories")
    es.add_argument("--checkpoint", type=Path, default=Path("checkpoints/subgoal"),
                    help="generator checkpoint (default: %(default)s)")  # fmt: skip
    es.add_argument("--out", type=Path, default=Path("out/eval/subgoal_samples.png"),
                    help="PNG path (default: %(default)s)")  # fmt: skip
    es.add_argument("--rows", type=_positive, default=6, help="triples, one per row (default: 6)")
    es.add_argument("--candidates", type=_positive, default=3, help="candidates per row (default: 3)")
    es.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    add_json(es)
    es.set_defaults(func=cmd_eval_subgoal)
    ea = ev_sub.add_parser(
        "affordance",
        help="affordance encoder errors on held-out synthetic and twin clouds",
        description="Tip-gap / angle errors and graspability accuracy on fresh synthetic clouds and on "
        "wrist-camera clouds of the twin during expert episodes (tweezer_pick and tool_open_to).",
    )
    ea.add_argument(
        "--checkpoint", type=Path, default=DEFAULT_AFFORDANCE, help="checkpoint (default: %(default)s)"
    )
    ea.add_argument("--samples", type=_positive, default=1000, help="synthetic clouds (default: 1000)")
    ea.add_argument(
        "--twin-episodes", type=_positive, default=5, help="expert episodes per task (default: 5)"
    )
    ea.add_argument("--seed", type=int, default=10_000, help="seed of the held-out data (default: 10000)")
    ea.add_argument("--workers", type=_positive, default=2, help="data-generation processes (default: 2)")
    add_json(ea)
    ea.set_defaults(func=cmd_eval_affordance)
    from dexhier.perception_cli import add_commands as add_perception_commands

    add_perception_commands(ev_sub, add_json, _positive)
    from dexhier.oc_cli import add_probe_command

    add_probe_command(ev_sub, add_json, _positive)

    be = sub.add_parser("bench", help="benchmarks")
    be_sub = be.add_subparsers(dest="bench_command", required=True, metavar="TARGET", parser_class=_Parser)
    bt = be_sub.add_parser(
        "twin",
        help="physics real-time factor, render time, expert episode time",
        description="Benchmark the twin: raw physics real-time factor during a grasp, env step time, "
        "render time per 64x64 / 128x128 frame, full-observation time and expert episode wall time. "
        "Figures are medians of repeats in one run.",
    )
    bt.add_argument("--episodes", type=_positive, default=3, help="expert episodes to time (default: 3)")
    add_json(bt)
    bt.set_defaults(func=cmd_bench_twin)
    ba = be_sub.add_parser(
        "affordance",
        help="preprocessing + encoding latency per cloud",
        description="Latency of the whole perception step (pipeline + network) on a raw wrist-camera cloud "
        "from 64x64 and 320x240 depth; p50 and p99 over repeats (keys p50_ms / p99_ms are for 320x240). "
        "label_free_p50_ms / label_free_p99_ms: label-free perception (no segmentation labels) of one "
        "320x240 workspace + wrist depth pair.",
    )
    ba.add_argument(
        "--checkpoint", type=Path, default=DEFAULT_AFFORDANCE, help="checkpoint (default: %(default)s)"
    )
    ba.add_argument("--repeats", type=_positive, default=200, help="timed repeats per cloud (default: 200)")
    add_json(ba)
    ba.set_defaults(func=cmd_bench_affordance)
    bl = be_sub.add_parser(
        "lowlevel",
        help="low-level policy: chunk latency vs the DDPM-100 peer, success at 1/3/10 steps",
        description="Latency of one action chunk (input checks, CNN encoding of observation and goal "
        "images, all denoising passes) on one CPU thread: p50_ms / p99_ms at the checkpoint's steps (3), "
        "ddpm100_p50_ms of the DDPM peer and speedup_vs_ddpm100. Then success with oracle goals on the "
        "same seeded episodes at 1, 3 and 10 steps and of the peer (--episodes 0 skips it).",
    )
    bl.add_argument(
        "--checkpoint", type=Path, default=DEFAULT_LOWLEVEL, help="BESO checkpoint (default: %(default)s)"
    )
    bl.add_argument("--peer", type=Path, default=Path("checkpoints/lowlevel_ddpm"),
                    help="DDPM peer checkpoint (default: %(default)s)")  # fmt: skip
    bl.add_argument("--no-peer", action="store_true", help="leave the DDPM peer out")
    bl.add_argument("--repeats", type=_positive, default=300, help="timed chunks (default: 300)")
    bl.add_argument("--peer-repeats", type=_positive, default=50, help="timed peer chunks (default: 50)")
    bl.add_argument("--task", choices=tasks, default="tweezer_pick", help="task of the success part")
    bl.add_argument("--episodes", type=int, default=20, help="episodes per setting (default: 20; 0 = none)")
    bl.add_argument("--seed", type=int, default=1000, help="seed of episode 0 (default: 1000)")
    bl.add_argument("--workers", type=_positive, default=2, help="parallel worker processes (default: 2)")
    add_json(bl)
    bl.set_defaults(func=cmd_bench_lowlevel)
    bs = be_sub.add_parser(
        "subgoal",
        help="high level: latency of generating N subgoals and selecting one",
        description="Latency of one high-level decision on one CPU thread: N candidate subgoals from the "
        "generator (one batched pass per denoising step) plus the progress classifier's selection; "
        "p50_ms / p99_ms. The shipped checkpoints by default; --untrained times the default architectures "
        "with random weights.",
    )
    bs.add_argument(
        "--checkpoint", type=Path, help="subgoal generator checkpoint (default: checkpoints/subgoal)"
    )
    bs.add_argument("--filter", type=Path,
                    help="progress classifier checkpoint (default: checkpoints/subgoal_filter)")  # fmt: skip
    bs.add_argument(
        "--untrained", action="store_true", help="time the default architectures with random weights instead"
    )
    bs.add_argument("--candidates", type=_positive, default=4, help="N (default: 4)")
    bs.add_argument("--steps", type=_positive, help="denoising steps (default: the generator's)")
    bs.add_argument("--repeats", type=_positive, default=20, help="timed decisions (default: 20)")
    add_json(bs)
    bs.set_defaults(func=cmd_bench_subgoal)
    br = be_sub.add_parser(
        "ros",
        help="latency, control jitter and dropped commands of the ROS 2 graph",
        description="Launch the sim graph in real time and measure, with a probe node: camera frame -> "
        "forwarded safe command latency (e2e_p50_ms / e2e_p99_ms), control-period jitter (jitter_p99_ms) "
        "and control steps without a fresh command (dropped_commands).",
    )
    br.add_argument("--duration", type=float, default=60.0, help="seconds of measurement (default: 60)")
    br.add_argument("--real-time-factor", type=float, default=1.0, help="twin speed (default: 1)")
    br.add_argument("--no-perception", action="store_true", help="leave the perception node out")
    br.add_argument(
        "--policy", choices=("expert", "lowlevel"), default="expert",
        help="expert: the privileged expert on tweezer_pick (default); lowlevel: the learned low level on "
        "tool_open_to with oracle goals",
    )  # fmt: skip
    br.add_argument(
        "--realtime-priority", type=int, default=40,
        help="SCHED_FIFO priority of the control path (twin, policy, supervisor) and of the probe, as the "
        "sim launch's realtime_priority; 0 = default scheduler (default: 40)",
    )  # fmt: skip
    add_json(br)
    br.set_defaults(func=cmd_bench_ros)

    de = sub.add_parser(
        "demo",
        help="the default demo (make demo): the stack through the ROS 2 graph against the twin",
        description="Launch launch/sim.launch.xml (twin bridge, policy, safety supervisor, episode "
        "coordinator) with the project's launch runner, run seeded episodes through the graph, print the "
        "results by object width and write a report and a video. --direct runs the same policy in-process "
        "instead (no ROS).",
    )
    de.add_argument("--task", choices=tasks, default="tweezer_pick", help="task (default: %(default)s)")
    de.add_argument(
        "--policy",
        choices=("expert", "lowlevel", "hierarchical"),
        default="hierarchical",
        help="expert: the privileged expert; lowlevel: the learned low-level policy with oracle goals "
        "standing in for the high level; hierarchical: the learned hierarchy (perception, subgoal "
        "generator + filter, low level; what make demo runs) (default: %(default)s)",
    )
    de.add_argument("--episodes", type=_positive, default=5, help="number of episodes (default: 5)")
    de.add_argument("--seed", type=int, default=0, help="seed of episode 0 (default: 0)")
    de.add_argument("--real-time-factor", type=float, default=1.0, help="twin speed vs wall (default: 1)")
    de.add_argument("--videos", type=int, default=1, help="episodes to record as MP4 (default: 1)")
    de.add_argument("--direct", action="store_true", help="run in-process without ROS")
    de.add_argument("--workers", type=_positive, default=2, help="with --direct: processes (default: 2)")
    de.add_argument("--out", type=Path, default=Path("out/demo"), help="output directory (default: out/demo)")
    add_json(de)
    de.set_defaults(func=cmd_demo)

    from dexhier.dataset_cli import add_dataset_parser
    from dexhier.launch.cli import add_launch_parser
    from dexhier.teleop.cli import add_teleop_parser

    add_launch_parser(sub, _Parser)
    add_teleop_parser(sub, _Parser, tasks, _size)
    add_dataset_parser(sub, _Parser)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, RuntimeError, OSError, KeyError) as err:
        # KeyError's text is the repr of its argument; show the message itself.
        text = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"dexhier: error: {text}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dexhier: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
