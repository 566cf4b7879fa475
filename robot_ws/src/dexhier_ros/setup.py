"""ament_python package of the dexhier ROS 2 nodes (colcon-buildable; also pip-installable).

``colcon build`` installs the nodes as ``<install>/dexhier_ros/lib/dexhier_ros/<node>`` (setup.cfg's
script directory, where ``ros2 run`` and ``ros2 launch`` look them up), registers the package in the
ament index and installs package.xml and the launch files to ``<install>/dexhier_ros/share/dexhier_ros``.
"""

import os
import sys
from pathlib import Path

from setuptools import find_packages, setup

PACKAGE = "dexhier_ros"
HERE = Path(__file__).resolve().parent


def launch_files() -> list[str]:
    """The repository's launch files and their parameter YAML (``<repo>/launch``).

    They live outside this package (``dexhier launch`` runs them from the repository), so they
    exist only when the package is built inside the repository. The former
    ``glob("../../../launch/*.xml")``, relative to the working directory, installed nothing without
    a word when the package was built elsewhere (copied into another workspace, from an sdist),
    leaving ``ros2 launch dexhier_ros ...`` to fail later, and took any XML file there. This finds
    the directory from this file (the repository's when it holds sim.launch.xml), takes only
    ``*.launch.xml`` and ``*.yaml`` in a stable order, and says on stderr when there are none.
    The paths are relative to this directory, as setuptools and colcon require.
    """
    launch_dir = HERE.parents[2] / "launch"
    if not (launch_dir / "sim.launch.xml").is_file():  # not the dexhier repository's launch/
        print(f"{PACKAGE}: no {launch_dir / 'sim.launch.xml'}: installing the nodes without launch files",
              file=sys.stderr)  # fmt: skip
        return []
    files = sorted(p for pattern in ("*.launch.xml", "*.yaml") for p in launch_dir.glob(pattern))
    return [os.path.relpath(p, HERE) for p in files]


LAUNCH_FILES = launch_files()

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        *([(f"share/{PACKAGE}/launch", LAUNCH_FILES)] if LAUNCH_FILES else []),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="dexhier developers",
    maintainer_email="dev@dexhier.local",
    description="ROS 2 nodes of dexhier: twin bridge, policy, safety supervisor, episodes, teleop, recorder.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            f"twin_bridge = {PACKAGE}.twin_bridge:main",
            f"expert_policy = {PACKAGE}.expert_policy:main",
            f"lowlevel_policy = {PACKAGE}.lowlevel_node:main",
            f"oracle_goals = {PACKAGE}.oracle_goal_node:main",
            f"highlevel = {PACKAGE}.highlevel_node:main",
            f"safety_supervisor = {PACKAGE}.safety_supervisor:main",
            f"episode_coordinator = {PACKAGE}.episode_coordinator:main",
            f"perception = {PACKAGE}.perception_node:main",
            f"teleop = {PACKAGE}.teleop_node:main",
            f"recorder = {PACKAGE}.recorder_node:main",
        ],
    },
)
