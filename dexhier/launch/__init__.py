"""A runner for the subset of the ROS 2 XML launch format that dexhier's launch files use.

``parse_launch_file(path, {"name": "value"})`` resolves a launch file into :class:`NodeAction`
objects (package/executable, name, namespace, parameters, remaps, environment, output) and
``run(nodes)`` starts them as child processes like ``ros2 launch``. The command line is
``dexhier launch FILE [name:=value ...]``. See ``xml_format`` for the supported format.
"""

from .runner import resolve_executable, run
from .xml_format import LaunchDescription, LaunchError, NodeAction, parse_launch_file

__all__ = ["LaunchDescription", "LaunchError", "NodeAction", "parse_launch_file", "resolve_executable", "run"]
