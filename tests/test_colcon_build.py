"""``colcon build`` of robot_ws/src/dexhier_ros, as on a ROS 2 machine, and its installed nodes.

Builds into a temporary workspace (build, install and log bases; nothing is written to the source
tree), then checks the layout ``ros2 run`` / ``ros2 launch`` rely on: the ament index marker, the
node executables in ``<install>/dexhier_ros/lib/dexhier_ros/``, package.xml and the launch files in
``share/dexhier_ros``. Finally the installed nodes run from the install's own environment
(``local_setup.bash``) on LOCALHOST discovery: the twin bridge must say it is ready, and every node
must exit cleanly on SIGINT.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.ros

for _module, _dist in (("colcon_core", "colcon-core"), ("colcon_ros", "colcon-ros")):
    pytest.importorskip(_module, reason=f"{_dist} is not installed (`make setup` installs requirements.lock)")

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "dexhier_ros"
SOURCE = ROOT / "robot_ws" / "src" / PACKAGE
NODES = ("twin_bridge", "expert_policy", "safety_supervisor", "episode_coordinator")
RUN_S = 3.0  # how long the installed nodes run before SIGINT


def console_scripts() -> set[str]:
    """The executables setup.py declares (``name = {PACKAGE}.module:main``)."""
    text = (SOURCE / "setup.py").read_text()
    return set(re.findall(r"(\w+) = (?:\{PACKAGE\}|dexhier_ros)\.\w+:main", text))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Run ``colcon build`` once for the module; returns its paths, output and the sourced environment."""
    ws = tmp_path_factory.mktemp("colcon")
    env = {k: v for k, v in os.environ.items() if k not in ("AMENT_PREFIX_PATH", "COLCON_PREFIX_PATH")}
    env["COLCON_HOME"] = str(ws / "colcon_home")  # no user defaults or mixins
    cmd = [
        sys.executable, "-c", "import sys; from colcon_core.command import main; sys.exit(main())",
        "--log-base", str(ws / "log"),
        "build", "--base-paths", "robot_ws/src", "--packages-select", PACKAGE,
        "--build-base", str(ws / "build"), "--install-base", str(ws / "install"),
    ]  # fmt: skip
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    seconds = time.monotonic() - t0
    install = ws / "install"
    sourced = None
    if proc.returncode == 0:
        # What `source install/local_setup.bash` gives a shell on the cell (AMENT_PREFIX_PATH, PYTHONPATH).
        out = subprocess.run(["bash", "-c", f'source "{install}/local_setup.bash" && env -0'],
                             env=env, capture_output=True, timeout=30, check=True).stdout  # fmt: skip
        sourced = dict(item.split("=", 1) for item in out.decode().split("\0") if "=" in item)
    return {"proc": proc, "seconds": seconds, "install": install, "prefix": install / PACKAGE, "env": sourced}


def test_colcon_build_succeeds(workspace):
    proc = workspace["proc"]
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert f"Finished <<< {PACKAGE}" in proc.stdout, proc.stdout[-2000:]
    assert workspace["seconds"] < 60, workspace["seconds"]


def test_install_layout_for_ros2_run_and_launch(workspace):
    assert workspace["proc"].returncode == 0
    prefix = workspace["prefix"]
    assert (prefix / "share" / "ament_index" / "resource_index" / "packages" / PACKAGE).is_file()
    assert (prefix / "share" / PACKAGE / "package.xml").is_file()
    scripts = console_scripts()
    assert set(NODES) <= scripts
    lib = prefix / "lib" / PACKAGE
    assert {p.name for p in lib.iterdir()} == scripts
    for name in scripts:
        exe = lib / name
        assert exe.is_file() and os.access(exe, os.X_OK), exe
        shebang = exe.read_text().splitlines()[0]
        assert Path(shebang[2:]).resolve() == Path(sys.executable).resolve(), shebang  # the venv's Python
    launch = {p.name for p in (ROOT / "launch").iterdir() if p.name.endswith((".launch.xml", ".yaml"))}
    share = prefix / "share" / PACKAGE / "launch"
    assert launch and {p.name for p in share.iterdir()} == launch
    # The installed launch files find their parameter files next to them ($(dirname)).
    from dexhier.launch import parse_launch_file

    for name in sorted(p for p in launch if p.endswith(".launch.xml")):
        for node in parse_launch_file(share / name):
            for params in node.params:
                assert not isinstance(params, Path) or params.parent == share, (name, node.name, params)


def test_installed_package_is_found_like_ros2_run_does(workspace, monkeypatch):
    assert workspace["proc"].returncode == 0
    env, prefix = workspace["env"], workspace["prefix"]
    assert env["AMENT_PREFIX_PATH"].split(os.pathsep)[0] == str(prefix)
    monkeypatch.setenv("AMENT_PREFIX_PATH", env["AMENT_PREFIX_PATH"])
    from ament_index_python.packages import get_package_prefix, get_package_share_directory

    from dexhier.launch import resolve_executable

    assert get_package_prefix(PACKAGE) == str(prefix)
    assert Path(get_package_share_directory(PACKAGE), "launch", "sim.launch.xml").is_file()
    for name in NODES:  # what `dexhier launch` (and ros2 launch) will start
        assert resolve_executable(PACKAGE, name) == [str(prefix / "lib" / PACKAGE / name)]
    # The installed copy is the one imported, and the one whose entry points the node scripts load,
    # not the source tree's editable install in the venv.
    code = ("import dexhier_ros, importlib.metadata as m; print(dexhier_ros.__file__); "
            "print(m.distribution('dexhier_ros').locate_file(''))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    module, dist = out.stdout.splitlines()
    assert module.startswith(str(prefix / "lib")) and dist.startswith(str(prefix / "lib")), out.stdout


# What each node creates last in its constructor: once the graph shows it, the node is up (a
# SIGINT while a node is still importing or building its model would be a test artefact).
READY = {
    "twin_bridge": ("service", "/dexhier/sim/pause"),
    "expert_policy": ("subscription", "/dexhier/sim/state"),
    "safety_supervisor": ("service", "/dexhier/estop/reset"),
    "episode_coordinator": ("service", "/dexhier/episode/reset"),
}


def _up(probe, name: str) -> bool:
    kind, topic = READY[name]
    if (name, "/") not in probe.get_node_names_and_namespaces():
        return False
    lookup = {
        "service": probe.get_service_names_and_types_by_node,
        "subscription": probe.get_subscriber_names_and_types_by_node,
    }[kind]
    return topic in {entity for entity, _ in lookup(name, "/")}


def test_installed_nodes_run_and_stop_cleanly(workspace, tmp_path):
    """The four nodes from the install come up in the ROS graph, run ~3 s, and exit 0 on SIGINT."""
    rclpy = pytest.importorskip("rclpy")
    assert workspace["proc"].returncode == 0
    env = {**workspace["env"], "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "PYTHONUNBUFFERED": "1"}
    lib = workspace["prefix"] / "lib" / PACKAGE
    args = {
        "twin_bridge": ["-p", "task:=tool_open_to"],
        "expert_policy": ["-p", "task:=tool_open_to", "-p", "use_sim_time:=true"],
        "safety_supervisor": ["-p", "task:=tool_open_to", "-p", "use_sim_time:=true"],
        "episode_coordinator": ["-p", "episodes:=0", "-p", f"results_path:={tmp_path / 'episodes.jsonl'}"],
    }
    logs = {name: (tmp_path / f"{name}.log").open("w") for name in NODES}

    def log(name: str) -> str:
        return (tmp_path / f"{name}.log").read_text()

    context = rclpy.Context()
    rclpy.init(context=context)
    probe = rclpy.create_node("colcon_build_probe", context=context)
    procs: dict[str, subprocess.Popen] = {}
    try:
        t0 = time.monotonic()
        for name in NODES:
            procs[name] = subprocess.Popen(
                [str(lib / name), "--ros-args", *args[name]], env=env, cwd=tmp_path,
                stdout=logs[name], stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        waiting = set(NODES)
        while waiting and time.monotonic() - t0 < 60:
            for name in sorted(waiting):
                code = procs[name].poll()
                assert code is None, f"{name} exited early ({code}):\n{log(name)}"
                if _up(probe, name) and (name != "twin_bridge" or "twin ready" in log(name)):
                    waiting.discard(name)
            time.sleep(0.1)
        assert not waiting, f"not up after 60 s: {sorted(waiting)}"
        assert "twin ready: task tool_open_to" in log("twin_bridge"), log("twin_bridge")
        time.sleep(max(0.0, RUN_S - (time.monotonic() - t0)))
        for name, proc in procs.items():
            assert proc.poll() is None, f"{name} exited early ({proc.returncode}):\n{log(name)}"
        for proc in procs.values():
            os.killpg(proc.pid, signal.SIGINT)
        codes = {name: proc.wait(timeout=15) for name, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for f in logs.values():
            f.close()
        probe.destroy_node()
        context.try_shutdown()
    for name, code in codes.items():
        assert code == 0, f"{name} exited with {code}:\n{log(name)}"
        assert "Traceback" not in log(name), log(name)
