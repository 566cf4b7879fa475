"""ament_python package of the dexhier ROS 2 nodes (colcon-buildable; also pip-installable)."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "dexhier_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("../../../launch/*.xml") + glob("../../../launch/*.yaml")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="dexhier developers",
    maintainer_email="dev@dexhier.local",
    description="ROS 2 nodes of dexhier: twin bridge, policy, safety supervisor, episode coordinator.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            f"twin_bridge = {PACKAGE}.twin_bridge:main",
            f"expert_policy = {PACKAGE}.expert_policy:main",
            f"safety_supervisor = {PACKAGE}.safety_supervisor:main",
            f"episode_coordinator = {PACKAGE}.episode_coordinator:main",
        ],
    },
)
