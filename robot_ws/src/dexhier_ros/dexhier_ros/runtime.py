"""Process entry points shared by the nodes: init, spin, and a quiet, complete shutdown."""

from __future__ import annotations

from collections.abc import Callable

import rclpy
from rclpy.executors import Executor, ExternalShutdownException
from rclpy.node import Node


def run_node(
    make: Callable[[], Node], args: list[str] | None = None, executor: Executor | None = None
) -> None:
    """Create the node, spin it until Ctrl-C / SIGTERM / context shutdown, then clean up.

    A callback that was running when the context shut down may fail to publish; that is part of a
    normal shutdown and is not reported as a crash.
    """
    rclpy.init(args=args)
    node = None
    try:
        node = make()  # inside the try: Ctrl-C during a slow start-up is a normal shutdown too
        if executor is None:
            rclpy.spin(node)
        else:
            executor.add_node(node)
            executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        if rclpy.ok():
            raise
    finally:
        try:
            close = getattr(node, "close", None)
            if close is not None:
                close()
        finally:
            if node is not None:
                node.destroy_node()
            rclpy.try_shutdown()


def parameter(node: Node, name: str, default):
    """Declare a parameter and return its value cast to the default's type.

    Dynamic typing lets ``real_time_factor:=2`` (an integer on the command line) stand for 2.0.
    """
    from rcl_interfaces.msg import ParameterDescriptor

    value = node.declare_parameter(name, default, ParameterDescriptor(dynamic_typing=True)).value
    try:
        return type(default)(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"parameter {name!r}: cannot use {value!r} as {type(default).__name__}") from err
