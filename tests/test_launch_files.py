"""The project's launch files (launch/*.launch.xml) and their parameter YAML.

Each file is resolved with ``dexhier.launch.parse_launch_file`` (the subset of the ROS 2 XML format
that ``ros2 launch`` and ``dexhier launch`` share). Checked: the node set, names, namespaces,
parameters and remaps; that every parameter file is a ROS 2 parameter file (``node: {ros__parameters:
{...}}``, and rcl's own parser accepts it) whose keys the node declares in its source (the
``parameter(self, "<name>", default)`` helper of dexhier_ros.runtime) with a compatible type; and
that rcl accepts each node's resulting command line.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from dexhier import vocabulary as V
from dexhier.launch import NodeAction, parse_launch_file
from sim.cell import WRIST_CAMERA

pytestmark = pytest.mark.ros

rclpy = pytest.importorskip("rclpy")

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
SIM, CELL, TELEOP = LAUNCH / "sim.launch.xml", LAUNCH / "cell.launch.xml", LAUNCH / "teleop.launch.xml"
PACKAGE = ROOT / "robot_ws" / "src" / "dexhier_ros"
NODE_SOURCES = PACKAGE / "dexhier_ros"
SIM_NODES = {"twin_bridge", "perception", "expert_policy", "safety_supervisor", "episode_coordinator"}
TELEOP_NODES = {"twin_bridge", "perception", "safety_supervisor", "recorder", "teleop"}
# Parameters every rclpy node declares by itself.
BUILTIN_PARAMETERS: dict[str, object] = {"use_sim_time": False}
# The twin bridge's camera topics, which the cell's camera driver is remapped onto.
TWIN_CAMERA_TOPICS = {
    "/camera/color/image_raw",
    "/camera/depth/image_raw",
    "/camera/color/camera_info",
    "/camera/points",
}


def by_name(nodes: list[NodeAction]) -> dict[str, NodeAction]:
    named = {node.name: node for node in nodes}
    assert None not in named and len(named) == len(nodes), [n.name for n in nodes]
    return named  # type: ignore[return-value]


def inline(node: NodeAction) -> dict[str, object]:
    """The node's name=value parameters, later ones winning (as rcl applies them)."""
    out: dict[str, object] = {}
    for params in node.params:
        if isinstance(params, dict):
            out.update(params)
    return out


def files(node: NodeAction) -> list[Path]:
    return [p for p in node.params if isinstance(p, Path)]


def console_scripts() -> dict[str, str]:
    """``executable -> module`` of dexhier_ros' setup.py entry points (``name = {PACKAGE}.module:main``)."""
    text = (PACKAGE / "setup.py").read_text()
    return dict(re.findall(r"(\w+) = (?:\{PACKAGE\}|dexhier_ros)\.(\w+):main", text))


def declared_parameters(executable: str) -> dict[str, object]:
    """``name -> default`` of every ``parameter(self, "<name>", default)`` call in a node's source."""
    module = console_scripts()[executable]
    tree = ast.parse((NODE_SOURCES / f"{module}.py").read_text())
    out: dict[str, object] = {}
    for call in ast.walk(tree):
        if (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "parameter"
                and len(call.args) == 3 and isinstance(call.args[1], ast.Constant)):  # fmt: skip
            out[call.args[1].value] = ast.literal_eval(call.args[2])
    return out


def check_value(node: str, key: str, value: object, default: object) -> None:
    """The value must be one the node's ``parameter`` helper casts without surprise."""
    where = f"{node}: parameter {key!r} = {value!r} (declared default {default!r})"
    if isinstance(default, bool):
        assert isinstance(value, bool), where
    elif isinstance(default, int):
        assert isinstance(value, int) and not isinstance(value, bool), where
    elif isinstance(default, float):
        assert isinstance(value, int | float) and not isinstance(value, bool), where
    else:
        assert isinstance(value, type(default)), where


def rcl_accepts(args: list[str]) -> None:
    """rcl parses these arguments (remap rules, -p values, parameter files) without error."""
    context = rclpy.Context()
    rclpy.init(args=args, context=context)
    context.try_shutdown()


# ------------------------------------------------------------------------------ the declared parameters
def test_node_sources_declare_parameters():
    scripts = console_scripts()
    assert {"twin_bridge", "expert_policy", "safety_supervisor", "episode_coordinator"} <= set(scripts)
    declared = {exe: declared_parameters(exe) for exe in scripts}
    assert {"task", "control_hz", "stale_after", "arm_max_velocity", "hand_max_velocity"} <= set(
        declared["safety_supervisor"]
    )
    assert {"task", "seed", "real_time_factor", "image_width", "camera_every"} <= set(declared["twin_bridge"])
    assert {"episodes", "results_path", "episode_timeout"} <= set(declared["episode_coordinator"])
    assert "task" in declared["expert_policy"]
    lowlevel = {"checkpoint", "control_hz", "temporal_ensemble", "exec_steps", "goal_timeout", "obs_timeout"}
    assert lowlevel <= set(declared["lowlevel_policy"])
    assert {"task", "lookahead", "control_hz"} <= set(declared["oracle_goals"])
    highlevel = {"generator", "filter", "task", "candidates", "selection", "replan_every", "rate_hz",
                 "image_size"}  # fmt: skip
    assert highlevel <= set(declared["highlevel"])
    assert {"device", "replay_file", "control_hz", "task"} <= set(declared["teleop"])
    assert {"out", "task", "instruction", "control_hz", "bag"} <= set(declared["recorder"])


# ------------------------------------------------------------------------------ sim.launch.xml
def test_sim_launch_nodes_parameters_and_arguments():
    nodes = by_name(parse_launch_file(SIM))
    assert set(nodes) == SIM_NODES
    for name, node in nodes.items():
        assert (node.package, node.executable) == ("dexhier_ros", name)
        assert node.executable in console_scripts()
        assert node.namespace is None and node.full_name == f"/{name}"
        assert node.remaps == []
    # The bridge makes /clock; everything that acts on time runs on it.
    assert "use_sim_time" not in inline(nodes["twin_bridge"])
    assert inline(nodes["expert_policy"])["use_sim_time"] is True
    assert inline(nodes["safety_supervisor"])["use_sim_time"] is True
    assert nodes["episode_coordinator"].required and not nodes["twin_bridge"].required
    assert inline(nodes["episode_coordinator"])["episodes"] == 0
    for name in ("twin_bridge", "safety_supervisor", "episode_coordinator"):
        assert files(nodes[name]) == [LAUNCH / "sim.params.yaml"]
    assert files(nodes["expert_policy"]) == files(nodes["perception"]) == []
    assert Path(inline(nodes["perception"])["checkpoint"]).is_dir()  # the shipped encoder checkpoint

    args = {"task": "tool_open_to", "seed": "7", "episodes": "3", "real_time_factor": "2",
            "results_path": "r.jsonl", "perception": "false"}  # fmt: skip
    nodes = by_name(parse_launch_file(SIM, args))
    assert set(nodes) == SIM_NODES - {"perception"}
    for name in ("twin_bridge", "expert_policy", "safety_supervisor"):
        assert inline(nodes[name])["task"] == "tool_open_to"
    assert inline(nodes["twin_bridge"])["seed"] == 7
    assert inline(nodes["twin_bridge"])["real_time_factor"] == 2
    assert inline(nodes["episode_coordinator"]) == {
        "episodes": 3, "results_path": "r.jsonl", "ready_topics": "/dexhier/command/arm"
    }  # fmt: skip


def test_sim_launch_runs_the_control_path_real_time_over_shared_memory(monkeypatch):
    monkeypatch.delenv("FASTDDS_DEFAULT_PROFILES_FILE", raising=False)
    control_path = ("twin_bridge", "expert_policy", "safety_supervisor")
    for args, priority in (({}, 40), ({"realtime_priority": "0"}, 0)):
        nodes = by_name(parse_launch_file(SIM, args))
        for name, node in nodes.items():
            assert node.env["FASTDDS_DEFAULT_PROFILES_FILE"] == str(LAUNCH / "fastdds_local.xml"), name
            if name in control_path:
                assert inline(node)["realtime_priority"] == priority, name
                assert node.env["OPENBLAS_NUM_THREADS"] == "1", name
            else:
                assert "realtime_priority" not in inline(node), name
    low = by_name(parse_launch_file(SIM, {"policy": "lowlevel"}))["lowlevel_policy"]
    assert inline(low)["realtime_priority"] == 40 and low.env["OPENBLAS_NUM_THREADS"] == "1"
    # A caller's own profile wins (node.env holds what differs from the environment the nodes inherit).
    monkeypatch.setenv("FASTDDS_DEFAULT_PROFILES_FILE", "/etc/my_profile.xml")
    for node in parse_launch_file(SIM):
        assert "FASTDDS_DEFAULT_PROFILES_FILE" not in node.env


def test_sim_launch_with_the_learned_low_level():
    """policy:=lowlevel swaps the expert for the learned low level and its stand-in goal source."""
    args = {"policy": "lowlevel", "task": "tool_open_to", "temporal_ensemble": "true"}
    nodes = by_name(parse_launch_file(SIM, args))
    assert set(nodes) == SIM_NODES - {"expert_policy"} | {"lowlevel_policy", "oracle_goals"}
    for name in ("lowlevel_policy", "oracle_goals"):
        assert (nodes[name].package, nodes[name].executable) == ("dexhier_ros", name)
        assert inline(nodes[name])["use_sim_time"] is True and files(nodes[name]) == []
    low = inline(nodes["lowlevel_policy"])
    assert low["temporal_ensemble"] is True and Path(low["checkpoint"]).is_dir()  # the shipped checkpoint
    assert inline(nodes["oracle_goals"])["task"] == "tool_open_to"
    # The first episode waits for the policy, perception (the tool state) and the goal source.
    ready = inline(nodes["episode_coordinator"])["ready_topics"].split(",")
    assert ready == ["/dexhier/command/arm", "/dexhier/tool_state", "/dexhier/subgoal/image"]
    assert "lowlevel_policy" not in by_name(parse_launch_file(SIM, {"policy": "expert"}))
    with pytest.raises(
        ValueError, match=r"argument 'policy' is 'beso' \(valid: expert, lowlevel, hierarchical\)"
    ):
        parse_launch_file(SIM, {"policy": "beso"})


def test_sim_launch_with_the_learned_hierarchy():
    """policy:=hierarchical runs the learned low level with the learned high level instead of the stand-in."""
    args = {"policy": "hierarchical", "task": "tool_open_to", "generator_checkpoint": "g",
            "filter_checkpoint": "f"}  # fmt: skip
    nodes = by_name(parse_launch_file(SIM, args))
    assert set(nodes) == SIM_NODES - {"expert_policy"} | {"lowlevel_policy", "highlevel"}
    for name in ("lowlevel_policy", "highlevel"):
        assert (nodes[name].package, nodes[name].executable) == ("dexhier_ros", name)
        assert inline(nodes[name])["use_sim_time"] is True and files(nodes[name]) == []
    assert inline(nodes["highlevel"]) == {"use_sim_time": True, "task": "tool_open_to", "generator": "g",
                                          "filter": "f"}  # fmt: skip
    assert Path(inline(nodes["lowlevel_policy"])["checkpoint"]).is_dir()
    ready = inline(nodes["episode_coordinator"])["ready_topics"].split(",")
    assert ready == ["/dexhier/command/arm", "/dexhier/tool_state", "/dexhier/subgoal/image"]
    # The default checkpoints are the repository's.
    high = inline(by_name(parse_launch_file(SIM, {"policy": "hierarchical"}))["highlevel"])
    assert Path(high["generator"]).resolve() == ROOT / "checkpoints" / "subgoal"
    assert Path(high["filter"]).resolve() == ROOT / "checkpoints" / "subgoal_filter"
    assert "highlevel" not in by_name(parse_launch_file(SIM, {"policy": "lowlevel"}))


# ------------------------------------------------------------------------------ cell.launch.xml
CELL_REMAPS = {
    "~/color/image_raw": "/camera/color/image_raw",
    "~/aligned_depth_to_color/image_raw": "/camera/depth/image_raw",
    "~/color/camera_info": "/camera/color/camera_info",
}
WRIST_REMAPS = {  # the twin's wrist camera gives the low level's wrist image and perception's cloud
    "~/color/image_raw": "/wrist_camera/color/image_raw",
    "~/depth/color/points": "/camera/points",
}


def test_cell_launch_nodes_parameters_and_remaps():
    nodes = by_name(parse_launch_file(CELL))
    assert set(nodes) == {"camera", "wrist_camera", "policy", "safety_supervisor", "episode_coordinator"}
    # No twin on the cell: ros2_control's controllers and joint_state_broadcaster take its place.
    assert "twin_bridge" not in {node.executable for node in nodes.values()}

    camera, wrist = nodes["camera"], nodes["wrist_camera"]
    for driver in (camera, wrist):
        assert (driver.package, driver.executable) == ("realsense2_camera", "realsense2_camera_node")
        assert files(driver) == []
    assert camera.namespace == "/camera" and camera.full_name == "/camera/camera"
    assert wrist.full_name == "/wrist_camera/wrist_camera"
    assert dict(camera.remaps) == CELL_REMAPS and len(camera.remaps) == len(CELL_REMAPS)
    assert dict(wrist.remaps) == WRIST_REMAPS and len(wrist.remaps) == len(WRIST_REMAPS)
    assert inline(camera) == {"serial_no": "", "align_depth.enable": True}
    assert inline(wrist) == {"serial_no": "", "pointcloud.enable": True}

    policy = nodes["policy"]
    assert (policy.package, policy.executable) == ("dexhier_ros", "expert_policy")
    assert inline(policy) == {"use_sim_time": False, "task": "tweezer_pick"}

    safety = nodes["safety_supervisor"]
    assert (safety.package, safety.executable) == ("dexhier_ros", "safety_supervisor")
    assert files(safety) == [LAUNCH / "cell.params.yaml"]
    assert inline(safety) == {"use_sim_time": False, "task": "tweezer_pick"}
    assert safety.required  # nothing reaches the controllers without it

    coordinator = nodes["episode_coordinator"]
    assert files(coordinator) == [LAUNCH / "cell.params.yaml"]
    assert inline(coordinator) == {  # the operator marks each episode: nothing on a cell detects success
        "use_sim_time": False, "source": "operator", "task": "tweezer_pick", "episodes": 0,
        "results_path": "out/cell/episodes.jsonl",
    }  # fmt: skip
    assert not coordinator.required

    # Our nodes keep their topic names: the safety supervisor publishes straight to the JTC topics
    # (/arm_controller/joint_trajectory, /hand_controller/joint_trajectory) and reads /joint_states.
    for name in ("policy", "safety_supervisor", "episode_coordinator"):
        assert nodes[name].namespace is None and nodes[name].remaps == []


def test_cell_launch_with_the_learned_hierarchy():
    args = {"policy": "hierarchical", "task": "tool_open_to", "camera_in_mount": "0.1 0 0 1 0 0 0"}
    nodes = by_name(parse_launch_file(CELL, args))
    assert set(nodes) == {"camera", "wrist_camera", "perception", "highlevel", "lowlevel_policy",
                          "safety_supervisor", "episode_coordinator"}  # fmt: skip
    for name in ("perception", "highlevel", "lowlevel_policy"):
        assert (nodes[name].package, nodes[name].executable) == ("dexhier_ros", name)
        assert inline(nodes[name])["use_sim_time"] is False  # no /clock on a cell
    perception = inline(nodes["perception"])
    assert perception["cloud_frame"] == "camera" and perception["camera_in_mount"] == "0.1 0 0 1 0 0 0"
    assert (
        inline(nodes["highlevel"])["resize_images"] is True
        and inline(nodes["highlevel"])["task"] == "tool_open_to"
    )
    assert inline(nodes["lowlevel_policy"])["resize_images"] is True
    # The shipped checkpoints by default, as in the sim launch.
    for key, name in (
        ("checkpoint", "lowlevel_policy"),
        ("generator", "highlevel"),
        ("checkpoint", "perception"),
    ):
        assert Path(inline(nodes[name])[key]).is_dir(), (name, key)
    # The low level trained for picking, as `dexhier demo` runs the hierarchy in sim.
    assert (
        Path(inline(nodes["lowlevel_policy"])["checkpoint"]).resolve()
        == ROOT / "checkpoints" / "lowlevel_pick"
    )


def test_cell_launch_without_camera_and_with_other_nodes():
    full = by_name(parse_launch_file(CELL))
    nodes = by_name(parse_launch_file(CELL, {"use_camera": "false"}))
    assert set(nodes) == {"policy", "safety_supervisor", "episode_coordinator"}
    for name, node in nodes.items():
        assert node.ros_arguments() == full[name].ros_arguments()

    args = {"camera_pkg": "my_camera", "camera_exec": "rgbd_node", "policy_pkg": "my_policies",
            "policy_exec": "diffusion_policy", "task": "tool_open_to", "results_path": "r.jsonl"}  # fmt: skip
    nodes = by_name(parse_launch_file(CELL, args))
    assert (nodes["camera"].package, nodes["camera"].executable) == ("my_camera", "rgbd_node")
    assert (nodes["policy"].package, nodes["policy"].executable) == ("my_policies", "diffusion_policy")
    for name in ("policy", "safety_supervisor"):
        assert inline(nodes[name])["task"] == "tool_open_to"
    assert inline(nodes["episode_coordinator"])["results_path"] == "r.jsonl"


def test_cell_camera_topics_are_the_twin_topics_as_rcl_resolves_them():
    bridge = ast.parse((NODE_SOURCES / "twin_bridge.py").read_text())
    published = {c.value for c in ast.walk(bridge) if isinstance(c, ast.Constant) and isinstance(c.value, str)
                 and c.value.startswith("/camera/")}  # fmt: skip
    assert published == TWIN_CAMERA_TOPICS
    assert set(CELL_REMAPS.values()) | {WRIST_REMAPS["~/depth/color/points"]} == TWIN_CAMERA_TOPICS
    assert WRIST_REMAPS["~/color/image_raw"] == V.camera_topic(WRIST_CAMERA)

    camera = by_name(parse_launch_file(CELL))["camera"]
    context = rclpy.Context()
    rclpy.init(args=camera.ros_arguments(), context=context)
    try:
        node = rclpy.create_node("unnamed", context=context)
        assert node.get_fully_qualified_name() == "/camera/camera"
        for private, topic in CELL_REMAPS.items():
            assert node.resolve_topic_name(private) == topic
        # Anything not remapped stays below the driver's own name.
        assert node.resolve_topic_name("~/depth/image_rect_raw") == "/camera/camera/depth/image_rect_raw"
        node.destroy_node()
    finally:
        context.try_shutdown()


def test_cell_velocity_limits_are_conservative():
    cell = yaml.safe_load((LAUNCH / "cell.params.yaml").read_text())["safety_supervisor"]["ros__parameters"]
    sim = yaml.safe_load((LAUNCH / "sim.params.yaml").read_text())["safety_supervisor"]["ros__parameters"]
    assert 0 < cell["arm_max_velocity"] <= 1.0 and cell["arm_max_velocity"] <= sim["arm_max_velocity"]
    assert 0 < cell["hand_max_velocity"] <= 3.0 and cell["hand_max_velocity"] <= sim["hand_max_velocity"]
    assert 0 < cell["stale_after"] <= 0.5


# ------------------------------------------------------------------------------ teleop.launch.xml
def test_teleop_launch_nodes_parameters_and_arguments():
    nodes = by_name(parse_launch_file(TELEOP))
    assert set(nodes) == TELEOP_NODES
    for name, node in nodes.items():
        assert (node.package, node.executable) == ("dexhier_ros", name)
        assert node.executable in console_scripts()
        assert node.namespace is None and node.remaps == []
    # The twin is the clock; every other node runs on it.
    assert "use_sim_time" not in inline(nodes["twin_bridge"])
    for name in TELEOP_NODES - {"twin_bridge"}:
        assert inline(nodes[name])["use_sim_time"] is True, name
    # QUIT (or the end of a replay) ends the session; the recorder keeps an episode in flight then.
    assert nodes["teleop"].required and not nodes["recorder"].required
    for name in TELEOP_NODES - {"perception"}:
        assert files(nodes[name]) == [LAUNCH / "teleop.params.yaml"], name
    assert inline(nodes["recorder"]) == {"use_sim_time": True, "task": "tweezer_pick", "out": "out/teleop",
                                         "instruction": "", "bag": True, "device": "replay"}  # fmt: skip

    args = {"task": "tool_open_to", "device": "handpose", "replay_file": "s.jsonl", "out": "d",
            "perception": "false", "bag": "false", "seed": "3", "instruction": "open it"}  # fmt: skip
    nodes = by_name(parse_launch_file(TELEOP, args))
    assert set(nodes) == TELEOP_NODES - {"perception"}
    for name in ("twin_bridge", "safety_supervisor", "recorder", "teleop"):
        assert inline(nodes[name])["task"] == "tool_open_to"
    assert inline(nodes["teleop"])["device"] == inline(nodes["recorder"])["device"] == "handpose"
    assert inline(nodes["teleop"])["replay_file"] == "s.jsonl"
    assert inline(nodes["recorder"])["out"] == "d" and inline(nodes["recorder"])["bag"] is False
    assert inline(nodes["recorder"])["instruction"] == "open it"
    assert inline(nodes["twin_bridge"])["seed"] == 3


def test_teleop_rates_and_image_sizes_agree():
    doc = yaml.safe_load((LAUNCH / "teleop.params.yaml").read_text())
    params = {name: section["ros__parameters"] for name, section in doc.items()}
    assert params["safety_supervisor"]["control_hz"] == params["recorder"]["control_hz"]
    assert params["teleop"]["control_hz"] == params["recorder"]["control_hz"]
    for key in ("image_width", "image_height"):
        assert params["twin_bridge"][key] == params["recorder"][key], key


# ------------------------------------------------------------------------------ all files
CASES = [
    (SIM, {}),
    (SIM, {"perception": "false"}),
    (SIM, {"policy": "lowlevel"}),
    (SIM, {"policy": "hierarchical"}),
    (CELL, {}),
    (CELL, {"use_camera": "false"}),
    (TELEOP, {}),
    (TELEOP, {"perception": "false", "device": "handpose", "replay_file": "s.jsonl"}),
]
IDS = ["sim", "sim-no-perception", "sim-lowlevel", "sim-hierarchical", "cell", "cell-no-camera", "teleop",
       "teleop-handpose"]  # fmt: skip


def test_every_launch_file_is_checked():
    assert {path for path, _ in CASES} == set(LAUNCH.glob("*.launch.xml"))


@pytest.mark.parametrize(("path", "args"), CASES, ids=IDS)
def test_parameter_files_are_ros2_parameter_files_of_declared_parameters(path, args):
    nodes = parse_launch_file(path, args)
    loaders: dict[Path, list[NodeAction]] = {}
    for node in nodes:
        for params_file in files(node):
            loaders.setdefault(params_file, []).append(node)
    assert loaders, f"{path.name} uses no parameter file"
    for params_file, users in loaders.items():
        assert params_file.is_file(), params_file
        assert params_file.parent == LAUNCH  # installed together with the launch files
        doc = yaml.safe_load(params_file.read_text())
        assert isinstance(doc, dict), params_file
        # Every section belongs to a node that loads the file, and every such node has one.
        assert set(doc) == {node.name for node in users}, params_file.name
        for node in users:
            section = doc[node.name]
            assert isinstance(section, dict), (params_file, node.name)
            assert list(section) == ["ros__parameters"], (params_file, node.name)
            values = section["ros__parameters"]
            assert isinstance(values, dict) and values, (params_file, node.name)
            declared = {**BUILTIN_PARAMETERS, **declared_parameters(node.executable)}
            unknown = sorted(set(values) - set(declared))
            assert not unknown, f"{params_file.name}: {node.name} does not declare {unknown}"
            for key, value in values.items():
                check_value(node.name, key, value, declared[key])
        rcl_accepts(["--ros-args", "--params-file", str(params_file)])


@pytest.mark.parametrize(("path", "args"), CASES, ids=IDS)
def test_inline_parameters_are_declared_and_command_lines_parse(path, args):
    for node in parse_launch_file(path, args):
        if node.package == "dexhier_ros":
            declared = {**BUILTIN_PARAMETERS, **declared_parameters(node.executable)}
            for key, value in inline(node).items():
                assert key in declared, f"{path.name}: {node.name} does not declare {key!r}"
                check_value(node.name, key, value, declared[key])
        rcl_accepts(node.ros_arguments())
