"""The dexhier command line: help, one-line errors, JSON output, rendering."""

import json
import subprocess
import sys

import pytest

from dexhier.cli import main


def _run(*args, check=False):
    return subprocess.run(
        [sys.executable, "-m", "dexhier.cli", *args], capture_output=True, text=True, check=check
    )


def test_help_lists_the_commands():
    out = _run("--help", check=True).stdout
    for cmd in ("sim", "collect", "eval", "bench", "demo"):
        assert cmd in out


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["eval", "rollout", "--task", "juggle"], "tool_open_to"),
        (["eval", "rollout", "--task", "tweezer_pick", "--policy", "alphago"], "expert"),
        (["collect", "expert", "--task", "tweezer_pick", "--out", "x", "--episodes", "0"], "positive"),
        (["sim", "render", "--size", "big"], "64x64"),
        (["fly"], "sim"),
    ],
)
def test_bad_arguments_give_one_line_errors(args, expected):
    res = _run(*args)
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.strip().splitlines() if ln]
    assert len(lines) == 1 and "Traceback" not in res.stderr
    assert expected in lines[0]


@pytest.mark.sim
def test_sim_render_writes_a_png(tmp_path, capsys):
    out = tmp_path / "frame.png"
    assert (
        main(["sim", "render", "--task", "tweezer_pick", "--seed", "3", "--out", str(out), "--size", "64x48"])
        == 0
    )
    import imageio.v2 as imageio

    img = imageio.imread(out)
    assert img.shape == (48, 64, 3) and img.std() > 5


@pytest.mark.sim
def test_eval_rollout_json_is_the_last_stdout_line(tmp_path, capsys):
    report, videos = str(tmp_path / "r.md"), str(tmp_path / "v")
    args = ["--episodes", "2", "--seed", "1", "--report", report, "--video", videos, "--videos", "1"]
    args.append("--json")
    code = main(["eval", "rollout", "--task", "tool_open_to", *args])
    assert code == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    summary = json.loads(last)
    assert summary["episodes"] == 2 and 0.0 <= summary["success_rate"] <= 1.0
    assert {"success_rate", "episodes", "per_episode"} <= summary.keys()
    assert len(summary["videos"]) == 1 and (tmp_path / "v").exists()
    assert "success rate" in (tmp_path / "r.md").read_text()
