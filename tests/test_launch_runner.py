"""`dexhier launch`: the ROS 2 XML launch subset, checked against the ROS 2 format's rules.

Expected values follow launch_xml / launch_ros semantics (scoped groups, unscoped includes,
relative vs absolute namespaces, YAML-typed parameters, the `--ros-args` order of launch_ros'
Node action, the rcl argument syntax), not this implementation. Process tests use a fake node
installed into a temporary ament prefix; nothing here starts rclpy.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from dexhier.launch import LaunchError, NodeAction, parse_launch_file, resolve_executable, run
from dexhier.launch.cli import main as launch_main

pytestmark = pytest.mark.ros

PKG = "fake_pkg"


def write(path: Path, body: str) -> Path:
    path.write_text(textwrap.dedent(body).strip() + "\n")
    return path


def launch(tmp_path: Path, body: str, name: str = "test.launch.xml", **args: str) -> list[NodeAction]:
    """Write ``body`` into a <launch> element (its first line is line 2 of the file) and parse it."""
    text = f"<launch>\n{textwrap.dedent(body).strip()}\n</launch>"
    return parse_launch_file(write(tmp_path / name, text), args)


def one(nodes: list[NodeAction]) -> NodeAction:
    assert len(nodes) == 1
    return nodes[0]


# ------------------------------------------------------------------------------ the fake node
FAKE_NODE = """\
#!{python}
import json, os, signal, subprocess, sys, time
args = sys.argv[1:]
if "--stubborn" in args:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    def bye(signum, frame):
        print("got " + signal.Signals(signum).name, flush=True)
        sys.exit(0)
    signal.signal(signal.SIGINT, bye)
    signal.signal(signal.SIGTERM, bye)
print("ARGV " + json.dumps(args), flush=True)
print("ENV " + json.dumps({{k: v for k, v in os.environ.items() if k.startswith("FAKE_")}}), flush=True)
print("PID " + str(os.getpid()), flush=True)
print("a line on stderr", file=sys.stderr, flush=True)
if "--exit" in args:  # --exit CODE [--after SECONDS]
    time.sleep(float(args[args.index("--after") + 1]) if "--after" in args else 0.0)
    sys.exit(int(args[args.index("--exit") + 1]))
if "--grandchild" in args:
    code = "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); time.sleep(60)"
    print("GRANDCHILD " + str(subprocess.Popen([sys.executable, "-c", code]).pid), flush=True)
print("READY", flush=True)
while True:
    time.sleep(0.02)
"""


@pytest.fixture
def ament_prefix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A colcon-like install prefix of package fake_pkg: ament index marker, share/, lib/fake_pkg/node."""
    prefix = tmp_path / "install"
    (prefix / "share" / "ament_index" / "resource_index" / "packages").mkdir(parents=True)
    (prefix / "share" / "ament_index" / "resource_index" / "packages" / PKG).write_text("")
    (prefix / "share" / PKG).mkdir()
    (prefix / "lib" / PKG).mkdir(parents=True)
    script = prefix / "lib" / PKG / "node"
    script.write_text(FAKE_NODE.format(python=sys.executable))
    script.chmod(0o755)
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(prefix))
    monkeypatch.setenv("ROS_LOG_DIR", str(tmp_path / "log"))
    return prefix


def lines_of(text: str, label: str, key: str) -> list[str]:
    prefix = f"[{label}] {key} "
    return [line[len(prefix) :] for line in text.splitlines() if line.startswith(prefix)]


def gone(pid: int, timeout: float = 3.0) -> bool:
    """The process does not exist any more (or is a zombie about to be reaped by init)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.02)
    return False


# ------------------------------------------------------------------------------ arguments and let
def test_arg_default_command_line_override_and_description(tmp_path):
    body = """
    <arg name="rate" default="10" description="control rate in Hz"/>
    <arg name="robot" default="ur5e"/>
    <node pkg="p" exec="e" name="n">
      <param name="rate" value="$(var rate)"/>
      <param name="robot" value="$(var robot)"/>
    </node>
    """
    assert one(launch(tmp_path, body)).params == [{"rate": 10, "robot": "ur5e"}]
    assert one(launch(tmp_path, body, rate="20.5")).params == [{"rate": 20.5, "robot": "ur5e"}]


def test_arg_choices(tmp_path):
    body = """
    <arg name="mode" default="sim"><choice value="sim"/><choice value="real"/></arg>
    <node pkg="p" exec="e" name="$(var mode)"/>
    """
    assert one(launch(tmp_path, body, mode="real")).name == "real"
    with pytest.raises(LaunchError, match=r"argument 'mode' is 'fake' \(valid: sim, real\)"):
        launch(tmp_path, body, mode="fake")


def test_let_shadowing_is_scoped_by_group(tmp_path):
    nodes = launch(
        tmp_path,
        """
    <let name="who" value="outer"/>
    <group>
      <let name="who" value="inner"/>
      <node pkg="p" exec="e" name="$(var who)"/>
    </group>
    <node pkg="p" exec="e" name="$(var who)"/>
    <group scoped="false">
      <let name="who" value="leaked"/>
    </group>
    <node pkg="p" exec="e" name="$(var who)"/>
    """,
    )
    assert [n.name for n in nodes] == ["inner", "outer", "leaked"]


def test_arg_keeps_a_value_set_by_let_before_it(tmp_path):
    """DeclareLaunchArgument only applies its default when the configuration is not set yet."""
    nodes = launch(
        tmp_path,
        """
    <let name="x" value="from_let"/>
    <arg name="x" default="from_default"/>
    <node pkg="p" exec="e" name="$(var x)"/>
    """,
    )
    assert one(nodes).name == "from_let"


# ------------------------------------------------------------------------------ namespaces
def test_nested_groups_push_namespaces(tmp_path):
    nodes = launch(
        tmp_path,
        """
    <node pkg="p" exec="e" name="top"/>
    <group>
      <push_ros_namespace namespace="robot"/>
      <node pkg="p" exec="e" name="a"/>
      <group>
        <push-ros-namespace namespace="arm"/>
        <node pkg="p" exec="e" name="b"/>
        <node pkg="p" exec="e" name="c" namespace="driver"/>
        <node pkg="p" exec="e" name="d" namespace="/abs"/>
      </group>
      <node pkg="p" exec="e" name="e" namespace="cam/"/>
    </group>
    <node pkg="p" exec="e" name="f" namespace="solo"/>
    <group>
      <push_ros_namespace namespace="/x"/>
      <push_ros_namespace namespace="/y"/>
      <node pkg="p" exec="e" name="g"/>
    </group>
    """,
    )
    got = {n.name: n.namespace for n in nodes}
    assert got == {
        "top": None,
        "a": "/robot",
        "b": "/robot/arm",
        "c": "/robot/arm/driver",
        "d": "/abs",
        "e": "/robot/cam",
        "f": "/solo",
        "g": "/y",
    }
    assert nodes[0].ros_arguments() == ["--ros-args", "-r", "__node:=top"]
    assert nodes[3].full_name == "/robot/arm/driver/c"


def test_invalid_namespace_and_node_name(tmp_path):
    with pytest.raises(LaunchError, match=r"<node>: invalid namespace '/1robot'"):
        launch(tmp_path, '<node pkg="p" exec="e" namespace="1robot"/>')
    with pytest.raises(LaunchError, match=r"<node>: invalid node name 'my-node'"):
        launch(tmp_path, '<node pkg="p" exec="e" name="my-node"/>')


# ------------------------------------------------------------------------------ include
def test_include_with_args_dirname_and_unscoped_configurations(tmp_path):
    sub = tmp_path / "sub"
    sub.mkdir()
    write(sub / "params.yaml", "/**:\n  ros__parameters:\n    gain: 2.0\n")
    write(
        sub / "child.launch.xml",
        """
    <launch>
      <arg name="who"/>
      <arg name="rate" default="5"/>
      <let name="from_child" value="set by the child"/>
      <node pkg="p" exec="e" name="$(var who)">
        <param from="$(dirname)/params.yaml"/>
        <param name="rate" value="$(var rate)"/>
      </node>
    </launch>
    """,
    )
    nodes = launch(
        tmp_path,
        f"""
    <arg name="robot" default="ur5e"/>
    <group>
      <push_ros_namespace namespace="left"/>
      <include file="{sub}/child.launch.xml">
        <arg name="who" value="$(var robot)_driver"/>
        <arg name="rate" value="50"/>
      </include>
    </group>
    <node pkg="p" exec="e" name="between" args="$(var who unset) $(var from_child unset)"/>
    <include file="$(dirname)/sub/child.launch.xml">
      <arg name="who" value="again"/>
    </include>
    <node pkg="p" exec="e" name="after" args="$(var who) $(var from_child)"/>
    """,
    )
    first, between, second, after = nodes
    assert (first.name, first.namespace) == ("ur5e_driver", "/left")
    assert first.params == [sub / "params.yaml", {"rate": 50}]
    assert first.ros_arguments() == [
        "--ros-args",
        "-r",
        "__node:=ur5e_driver",
        "-r",
        "__ns:=/left",
        "--params-file",
        str(sub / "params.yaml"),
        "-p",
        "rate:=50",
    ]
    assert between.arguments == ["unset", "unset"]  # the <group> contained the include
    assert second.params == [sub / "params.yaml", {"rate": 5}]
    # include arguments and the child's lets stay set after an <include> (ROS 2 does not scope it)
    assert after.arguments == ["again", "set by the child"]


def test_include_missing_required_arg_names_the_arg(tmp_path):
    write(tmp_path / "child.launch.xml", '<launch><arg name="who" description="the node"/></launch>')
    with pytest.raises(LaunchError) as err:
        launch(tmp_path, '<include file="$(dirname)/child.launch.xml"/>')
    message = str(err.value)
    assert "\n" not in message
    assert "child.launch.xml:1: <arg>: required argument 'who' was not provided" in message
    assert "as <arg> of the <include>" in message and "who (required): the node" in message


# ------------------------------------------------------------------------------ conditions
@pytest.mark.parametrize(
    ("value", "started"),
    [("true", True), ("1", True), ("True", True), ("false", False), ("0", False), (" FALSE ", False)],
)
def test_if_and_unless(tmp_path, value, started):
    nodes = launch(
        tmp_path,
        """
    <arg name="on"/>
    <node pkg="p" exec="e" name="when" if="$(var on)"/>
    <node pkg="p" exec="e" name="otherwise" unless="$(var on)"/>
    <group if="$(var on)"><let name="x" value="1"/></group>
    """,
        on=value,
    )
    assert [n.name for n in nodes] == (["when"] if started else ["otherwise"])


def test_condition_values_other_than_true_false_1_0_are_errors(tmp_path):
    with pytest.raises(LaunchError, match=r"<node> if=: expected true, false, 1 or 0, got 'yes'"):
        launch(tmp_path, '<node pkg="p" exec="e" if="yes"/>')


def test_if_and_unless_on_args_lets_includes(tmp_path):
    nodes = launch(
        tmp_path,
        """
    <arg name="a" default="1" if="false"/>
    <let name="b" value="from_let" unless="true"/>
    <include file="does/not/exist.launch.xml" if="false"/>
    <node pkg="p" exec="e" name="n" args="$(var a default_a) $(var b default_b)"/>
    """,
    )
    assert one(nodes).arguments == ["default_a", "default_b"]


# ------------------------------------------------------------------------------ parameters and command line
def test_params_are_typed_with_yaml_rules(tmp_path):
    node = one(
        launch(
            tmp_path,
            """
    <node pkg="p" exec="e">
      <param name="i" value="5"/>
      <param name="f" value="0.5"/>
      <param name="b" value="true"/>
      <param name="s" value="hello world"/>
      <param name="quoted" value="'5'"/>
      <param name="sci" value="1e3"/>
      <param name="empty" value=""/>
      <param name="ints" value="[1, 2, 3]"/>
      <param name="strs" value="[a, b]"/>
    </node>
    """,
        )
    )
    assert node.params == [
        {
            "i": 5,
            "f": 0.5,
            "b": True,
            "s": "hello world",
            "quoted": "5",
            "sci": "1e3",
            "empty": "",
            "ints": [1, 2, 3],
            "strs": ["a", "b"],
        }
    ]
    # Each rule is the YAML that launch_ros would write into its parameter file for the same value
    # (yaml.dump), so rcl reads the same type either way ("1e3" is a float for rcl in both).
    assert node.ros_arguments() == [
        "--ros-args",
        "-p",
        "i:=5",
        "-p",
        "f:=0.5",
        "-p",
        "b:=true",
        "-p",
        "s:=hello world",
        "-p",
        "quoted:='5'",
        "-p",
        "sci:=1e3",
        "-p",
        "empty:=''",
        "-p",
        "ints:=[1, 2, 3]",
        "-p",
        "strs:=[a, b]",
    ]


def test_param_values_that_are_not_parameters_are_errors(tmp_path):
    with pytest.raises(LaunchError, match=r"<param>: parameter 'm': .*not a bool, int, float, string"):
        launch(tmp_path, '<node pkg="p" exec="e"><param name="m" value="{a: 1}"/></node>')
    with pytest.raises(LaunchError, match=r"<param>: parameter 'l': .*list of one type"):
        launch(tmp_path, '<node pkg="p" exec="e"><param name="l" value="[1, a]"/></node>')


def test_full_command_line_matches_launch_ros_order(tmp_path):
    yaml_file = write(tmp_path / "node.yaml", "n:\n  ros__parameters:\n    a: 1\n")
    node = one(
        launch(
            tmp_path,
            f"""
    <let name="topic" value="/camera/image"/>
    <node pkg="p" exec="e" name="n" namespace="ns" output="screen" respawn="true" respawn_delay="2"
          args="--flag 'two words' x=$(var topic)">
      <param name="before" value="1"/>
      <param from="{yaml_file}"/>
      <param name="after" value="x"/>
      <remap from="image" to="$(var topic)"/>
      <remap from="~/out" to="/out"/>
      <env name="FAKE_LOCAL" value="2"/>
    </node>
    """,
        )
    )
    assert (node.package, node.executable, node.output, node.respawn, node.respawn_delay) == (
        "p",
        "e",
        "screen",
        True,
        2.0,
    )
    assert node.arguments == ["--flag", "two words", "x=/camera/image"]
    assert node.remaps == [("image", "/camera/image"), ("~/out", "/out")]
    assert node.env == {"FAKE_LOCAL": "2"}
    assert node.command(["/bin/e"]) == [
        "/bin/e",
        "--flag",
        "two words",
        "x=/camera/image",
        "--ros-args",
        "-r",
        "__node:=n",
        "-r",
        "__ns:=/ns",
        "-p",
        "before:=1",
        "--params-file",
        str(yaml_file),
        "-p",
        "after:=x",
        "-r",
        "image:=/camera/image",
        "-r",
        "~/out:=/out",
    ]


def test_param_file_must_exist(tmp_path):
    with pytest.raises(LaunchError, match=r"launch.xml:3: <param>: parameter file .*missing.yaml does not"):
        launch(tmp_path, '<node pkg="p" exec="e">\n<param from="$(dirname)/missing.yaml"/>\n</node>')


def test_on_exit_shutdown_and_ros1_required(tmp_path, caplog):
    nodes = launch(
        tmp_path,
        """
    <node pkg="p" exec="e" name="a" on_exit="shutdown"/>
    <node pkg="p" exec="e" name="b" required="true"/>
    <node pkg="p" exec="e" name="c"/>
    """,
    )
    assert [n.required for n in nodes] == [True, True, False]
    assert "required= is the ROS 1 spelling" in caplog.text


# ------------------------------------------------------------------------------ substitutions and env
def test_substitutions(tmp_path, monkeypatch, ament_prefix):
    monkeypatch.setenv("FAKE_HOME", "/home/robot")
    monkeypatch.delenv("FAKE_UNSET", raising=False)
    node = one(
        launch(
            tmp_path,
            r"""
    <let name="which" value="target"/>
    <let name="target" value="nested"/>
    <node pkg="p" exec="e" args="$(env FAKE_HOME) $(env FAKE_UNSET fallback) $(env FAKE_UNSET 'a b')
                               $(var $(var which)) $(find-pkg-share fake_pkg)/cfg $(dirname) \$(var which)
                               $(var missing &quot;x y&quot;)"/>
    """,
        )
    )
    share = ament_prefix / "share" / "fake_pkg"
    assert node.arguments == [
        "/home/robot",
        "fallback",
        "a b",
        "nested",
        f"{share}/cfg",
        str(tmp_path.resolve()),
        "$(var",
        "which)",
        "x y",
    ]


def test_set_env_is_scoped_and_seen_by_env_substitution(tmp_path, monkeypatch):
    monkeypatch.delenv("FAKE_GLOBAL", raising=False)
    nodes = launch(
        tmp_path,
        """
    <set_env name="FAKE_GLOBAL" value="1"/>
    <group>
      <set_env name="FAKE_GLOBAL" value="2"/>
      <node pkg="p" exec="e" name="inner" args="$(env FAKE_GLOBAL)"><env name="FAKE_LOCAL" value="x"/></node>
    </group>
    <node pkg="p" exec="e" name="outer" args="$(env FAKE_GLOBAL)"/>
    """,
    )
    assert [(n.arguments, n.env) for n in nodes] == [
        (["2"], {"FAKE_GLOBAL": "2", "FAKE_LOCAL": "x"}),
        (["1"], {"FAKE_GLOBAL": "1"}),
    ]


def test_missing_env_var_and_unregistered_package(tmp_path, monkeypatch, ament_prefix):
    monkeypatch.delenv("FAKE_UNSET", raising=False)
    with pytest.raises(LaunchError, match=r"environment variable 'FAKE_UNSET' is not set"):
        launch(tmp_path, '<node pkg="p" exec="$(env FAKE_UNSET)"/>')
    with pytest.raises(LaunchError, match=r"<node> args=.*package 'no_such_pkg' is not registered"):
        launch(tmp_path, '<node pkg="p" exec="e" args="$(find-pkg-share no_such_pkg)"/>')
    with pytest.raises(LaunchError, match=r"launch configuration 'nope' is not set"):
        launch(tmp_path, '<node pkg="p" exec="$(var nope)"/>')


# ------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            '<nodes pkg="p" exec="e"/>',
            r"test.launch.xml:2: unknown element <nodes> in <launch> \(valid: arg, "
            r"group, include, let, node, push-ros-namespace, push_ros_namespace, "
            r"set_env\)",
        ),
        (
            '<node pkg="p" exec="e"><parm name="a" value="1"/></node>',
            r"unknown element <parm> in <node> \(valid: env, param, remap\)",
        ),
        (
            '<node pkg="p" exec="e" launch-prefix="gdb"/>',
            r"test.launch.xml:2: <node>: unknown attribute 'launch-prefix' \(valid: args, exec, if, name, ",
        ),
        ('<group ns="x"/>', r"<group>: unknown attribute 'ns' \(valid: if, scoped, unless\)"),
        (
            '<node pkg="p" exec="e"><param name="a" value="$(eval 1 + 1)"/></node>',
            r"test.launch.xml:2: <param> value=.*unknown substitution \$\(eval ...\) "
            r"\(valid: dirname, env, find-pkg-share, var\)",
        ),
        ('<let name="a" value="$(var)"/>', r"<let> value=.*\$\(var\) takes 1 or 2 argument\(s\), got 0"),
        ('<let name="a" value="$(var a"/>', r"<let> value=.*missing its closing"),
        ('<node pkg="p"/>', r"<node>: missing attribute 'exec'"),
        ('<node pkg="p" exec="e" if="1" unless="0"/>', r"'if' and 'unless' cannot be used together"),
        ('<node pkg="p" exec="e" output="own_log"/>', r"output='own_log' is not supported \(valid: screen, "),
        ('<node pkg="p" exec="e" on_exit="restart"/>', r"on_exit='restart' is not supported"),
        ('<node pkg="p" exec="e"><param name="a"/></node>', r"<param>: a name= parameter needs a value="),
        ('<include file="x.launch.py"/>', r"<include>: only XML launch files are supported"),
        ('<node pkg="p" exec="e"', r"not well-formed XML"),
    ],
)
def test_errors_are_one_line_and_name_file_and_element(tmp_path, body, expected):
    with pytest.raises(LaunchError) as err:
        launch(tmp_path, body)
    assert "\n" not in str(err.value)
    assert "test.launch.xml" in str(err.value)
    assert err.match(expected)


def test_errors_in_switched_off_branches_are_still_found(tmp_path):
    """launch_xml checks the whole file when it loads it, not only the branches that run."""
    with pytest.raises(LaunchError, match=r"unknown attribute 'nme'"):
        launch(tmp_path, '<group if="false"><node pkg="p" exec="e" nme="x"/></group>')


def test_missing_required_arg_lists_the_args(tmp_path):
    body = """
    <arg name="robot" description="robot model"/>
    <arg name="rate" default="10" description="Hz"/>
    <node pkg="p" exec="e" name="$(var robot)"/>
    """
    with pytest.raises(LaunchError) as err:
        launch(tmp_path, body)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{tmp_path}/test.launch.xml:2: <arg>: required argument 'robot' was not")
    assert "pass robot:=VALUE on the command line" in message
    assert "robot (required): robot model; rate (default '10'): Hz" in message
    assert one(launch(tmp_path, body, robot="ur5e")).name == "ur5e"


def test_root_must_be_launch(tmp_path):
    path = write(tmp_path / "x.launch.xml", "<launchfile/>")
    with pytest.raises(LaunchError, match=r"x.launch.xml:1: the root element must be <launch>"):
        parse_launch_file(path)


# ------------------------------------------------------------------------------ executables
def test_resolver_uses_the_ament_prefix_then_console_scripts(ament_prefix):
    assert resolve_executable(PKG, "node") == [str(ament_prefix / "lib" / PKG / "node")]
    argv = resolve_executable("dexhier", "dexhier")  # this project's own console script
    assert argv[:2] == [sys.executable, "-c"] and "dexhier.cli:main" in argv[2]
    with pytest.raises(LaunchError, match=r"cannot find executable 'nope' of package 'fake_pkg'"):
        resolve_executable(PKG, "nope")


def test_cli_print_shows_command_lines_and_starts_nothing(tmp_path, ament_prefix, capsys):
    path = write(
        tmp_path / "p.launch.xml",
        f"""
    <launch>
      <arg name="n" default="talker"/>
      <node pkg="{PKG}" exec="node" name="$(var n)" namespace="robot"><param name="a" value="1"/></node>
    </launch>
    """,
    )
    assert launch_main([str(path), "n:=speaker", "--print"]) == 0
    out = capsys.readouterr().out
    assert f"{ament_prefix}/lib/{PKG}/node --ros-args -r __node:=speaker -r __ns:=/robot -p a:=1" in out
    with pytest.raises(SystemExit):
        launch_main([str(path), "not-an-assignment"])
    assert "name:=value" in capsys.readouterr().err


# ------------------------------------------------------------------------------ processes
def test_run_prefixes_output_passes_command_line_and_env_and_stops_with_sigint(
    tmp_path, ament_prefix, capsys, monkeypatch
):
    monkeypatch.setenv("FAKE_FROM_RUNNER", "r")
    nodes = launch(
        tmp_path,
        f"""
    <set_env name="FAKE_GLOBAL" value="g"/>
    <node pkg="{PKG}" exec="node" name="talker" namespace="ns" output="screen" args="--hello">
      <param name="rate" value="10"/>
      <remap from="chatter" to="/chat"/>
      <env name="FAKE_LOCAL" value="l"/>
    </node>
    <node pkg="{PKG}" exec="node" name="quiet"/>
    """,
    )
    start = time.monotonic()
    assert run(nodes, stop_after=1.5, grace=2.0) == 0
    assert time.monotonic() - start < 4.0
    out, err = capsys.readouterr()
    argv = json.loads(lines_of(out, "talker", "ARGV")[0])
    assert argv == [
        "--hello",
        "--ros-args",
        "-r",
        "__node:=talker",
        "-r",
        "__ns:=/ns",
        "-p",
        "rate:=10",
        "-r",
        "chatter:=/chat",
    ]
    env = json.loads(lines_of(out, "talker", "ENV")[0])
    assert env == {"FAKE_FROM_RUNNER": "r", "FAKE_GLOBAL": "g", "FAKE_LOCAL": "l"}
    assert "[talker] READY" in out and "[talker] got SIGINT" in out  # a clean SIGINT shutdown
    assert "[talker] a line on stderr" in err
    # output="log" (the ROS 2 default): stdout only to the launch log, stderr also on the screen
    assert "[quiet] READY" not in out and "[quiet] a line on stderr" in err
    log_text = next((tmp_path / "log").glob("*/launch.log")).read_text()
    assert "[quiet] READY" in log_text and "[quiet] got SIGINT" in log_text
    for pid in [int(p) for p in lines_of(out, "talker", "PID")]:
        assert gone(pid)


def test_stubborn_node_and_its_group_are_killed_after_the_grace_periods(tmp_path, ament_prefix, capsys):
    nodes = launch(
        tmp_path,
        f"""
    <node pkg="{PKG}" exec="node" name="stubborn" output="screen" args="--stubborn --grandchild"/>
    """,
    )
    start = time.monotonic()
    assert run(nodes, stop_after=1.0, grace=0.3) == 0
    assert time.monotonic() - start < 1.0 + 3 * 0.3 + 1.5
    out, err = capsys.readouterr()
    assert "[stubborn] READY" in out and "got SIG" not in out
    assert "stubborn: still running, sending SIGTERM" in err
    assert "stubborn: still running, sending SIGKILL" in err
    assert "killed by SIGKILL" in err
    pid = int(lines_of(out, "stubborn", "PID")[0])
    grandchild = int(lines_of(out, "stubborn", "GRANDCHILD")[0])
    assert gone(pid) and gone(grandchild)


def test_required_node_exit_shuts_everything_down_with_its_error(tmp_path, ament_prefix, capsys):
    nodes = launch(
        tmp_path,
        f"""
    <node pkg="{PKG}" exec="node" name="worker" output="screen"/>
    <node pkg="{PKG}" exec="node" name="boss" output="screen" on_exit="shutdown" args="--exit 3 --after 0.8"/>
    """,
    )
    start = time.monotonic()
    assert run(nodes, stop_after=15.0, grace=2.0) == 1
    assert time.monotonic() - start < 8.0
    out, err = capsys.readouterr()
    assert "boss: process" in err and "died: exit code 3" in err
    assert "[worker] got SIGINT" in out
    assert gone(int(lines_of(out, "worker", "PID")[0]))


def test_exit_codes_when_nodes_end_by_themselves(tmp_path, ament_prefix, capsys):
    clean = launch(tmp_path, f'<node pkg="{PKG}" exec="node" name="a" args="--exit 0"/>')
    assert run(clean, stop_after=15.0) == 0
    failing = launch(
        tmp_path,
        f"""
    <node pkg="{PKG}" exec="node" name="a" args="--exit 0"/>
    <node pkg="{PKG}" exec="node" name="b" args="--exit 4"/>
    """,
    )
    assert run(failing, stop_after=15.0) == 1
    assert "b: process" in capsys.readouterr().err


def test_shutdown_on_failure_option(tmp_path, ament_prefix, capsys):
    nodes = launch(
        tmp_path,
        f"""
    <node pkg="{PKG}" exec="node" name="worker" output="screen"/>
    <node pkg="{PKG}" exec="node" name="flaky" args="--exit 1 --after 0.8"/>
    """,
    )
    start = time.monotonic()
    assert run(nodes, stop_after=15.0, grace=2.0, stop_on_failure=True) == 1
    assert time.monotonic() - start < 8.0
    assert "[worker] got SIGINT" in capsys.readouterr().out


def test_respawn(tmp_path, ament_prefix, capsys):
    nodes = launch(
        tmp_path,
        f"""
    <node pkg="{PKG}" exec="node" name="phoenix" output="screen" respawn="true" respawn_delay="0.1"
          args="--exit 0"/>
    """,
    )
    assert run(nodes, stop_after=1.2) == 0
    assert len(lines_of(capsys.readouterr().out, "phoenix", "PID")) >= 2


def test_ctrl_c_on_the_cli_stops_all_nodes_cleanly(tmp_path, ament_prefix):
    path = write(
        tmp_path / "two.launch.xml",
        f"""
    <launch>
      <node pkg="{PKG}" exec="node" name="one" output="screen"/>
      <node pkg="{PKG}" exec="node" name="two" output="screen"/>
    </launch>
    """,
    )
    runner = subprocess.Popen(
        [sys.executable, "-m", "dexhier.launch.cli", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    pids, ready = [], set()
    try:
        assert runner.stdout is not None
        deadline = time.monotonic() + 10.0
        while len(ready) < 2 and time.monotonic() < deadline:
            line = runner.stdout.readline()
            if line.startswith(("[one] PID", "[two] PID")):
                pids.append(int(line.split()[-1]))
            if line.endswith("READY\n"):
                ready.add(line.split()[0])
        assert ready == {"[one]", "[two]"}
        runner.send_signal(signal.SIGINT)
        out, err = runner.communicate(timeout=10.0)
    finally:
        if runner.poll() is None:
            runner.kill()
    assert runner.returncode == 0, err
    assert "[one] got SIGINT" in out and "[two] got SIGINT" in out
    assert "shutting down (SIGINT)" in err
    assert all(gone(pid) for pid in pids)
