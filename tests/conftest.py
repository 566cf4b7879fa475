"""Test-session environment, set before any test module imports rclpy or MuJoCo rendering."""

import os

# Headless rendering unless the caller chose another backend (e.g. osmesa).
os.environ.setdefault("MUJOCO_GL", "egl")
# ROS 2 discovery stays on this machine, always.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
# A per-run domain (1..100) so concurrent test runs on one machine do not see each other's nodes;
# child processes spawned by the `ros` tests inherit it.
os.environ.setdefault("ROS_DOMAIN_ID", str(os.getpid() % 100 + 1))
