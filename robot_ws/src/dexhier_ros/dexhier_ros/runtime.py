"""Process entry points shared by the nodes: init, spin, and a quiet, complete shutdown."""

from __future__ import annotations

import gc
import sys
import time
import traceback
from collections.abc import Callable

import rclpy
from rclpy.executors import Executor, ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.time_source import TimeSource

from dexhier.safety import LogThrottle

MAX_CLOCK_NS = 2**63 - 1


def valid_clock(msg) -> str | None:
    """Why a ``/clock`` message cannot be a time (negative, past rclpy's int64 ns), or None."""
    sec, nsec = int(msg.clock.sec), int(msg.clock.nanosec)
    if sec < 0 or not 0 <= nsec < 1_000_000_000 or sec * 1_000_000_000 + nsec > MAX_CLOCK_NS:
        return f"/clock {sec} s {nsec} ns is not a time"
    return None


def _guarded_clock_callback(self: TimeSource, msg) -> None:
    # rclpy's TimeSource turns /clock into a Time, which raises on a negative stamp: one bogus
    # publisher would end every sim-time node. Invalid stamps are dropped and counted instead.
    why = valid_clock(msg)
    if why is None:
        return _rclpy_clock_callback(self, msg)
    node = self._get_node()
    if node is not None and _clock_log.check("bad clock", time.monotonic()) is not None:
        node.get_logger().warning(f"ignored {why} ({_clock_log.counts['bad clock']} so far)")


_rclpy_clock_callback = TimeSource.clock_callback
_clock_log = LogThrottle()


def guard_clock() -> None:
    """Make every node of this process ignore /clock messages that are not a time (idempotent)."""
    TimeSource.clock_callback = _guarded_clock_callback


guard_clock()  # every node module imports this one: the guard is in place before any node exists


def run_node(
    make: Callable[[], Node],
    args: list[str] | None = None,
    executor: Executor | Callable[[], Executor] | None = None,
) -> None:
    """Create the node, spin it until Ctrl-C / SIGTERM / context shutdown, then clean up.

    ``executor`` is an executor or a factory of one (``lambda: MultiThreadedExecutor(2)``): an
    executor needs an initialized context, so one built before this call's ``rclpy.init`` fails;
    the factory is called after it. None spins the node on a single-threaded executor. A message the
    middleware fails to hand over (the take itself raises) is dropped with a warning.

    A callback that was running when the context shut down may fail to publish; that is part of a
    normal shutdown and is not reported as a crash. Any other exception a callback raises is a bug
    the callback's own checks missed: it is logged as "unhandled exception in a callback" with its
    traceback (throttled, counted) and the node keeps running, since no message may end a process.
    """
    rclpy.init(args=args)
    node = None
    running: Executor | None = None
    unexpected = LogThrottle(period=5.0)
    try:
        node = make()  # inside the try: Ctrl-C during a slow start-up is a normal shutdown too
        # What start-up built (models, networks) lives until exit: out of the collector's sight, it no
        # longer makes the occasional full collection pause a control callback for milliseconds.
        gc.collect()
        gc.freeze()
        if executor is None:
            running = SingleThreadedExecutor()
        else:
            running = executor if isinstance(executor, Executor) else executor()
        running.add_node(node)
        while rclpy.ok():
            try:
                running.spin_once(timeout_sec=0.1)
            except (KeyboardInterrupt, ExternalShutdownException):
                raise
            except Exception as err:
                if not rclpy.ok():
                    raise
                _report(node, err, unexpected)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        if rclpy.ok():
            raise
    finally:
        try:
            if running is not None:  # let callbacks still running on other threads finish first
                running.shutdown(timeout_sec=5.0)
            close = getattr(node, "close", None)
            if close is not None:
                close()
        finally:
            if node is not None:
                node.destroy_node()
            rclpy.try_shutdown()


_unexpected = LogThrottle(period=5.0)


def report_exception(node: Node, err: Exception) -> None:
    """Log an exception that escaped a callback (for nodes that spin their own executor)."""
    _report(node, err, _unexpected)


def _report(node: Node, err: Exception, log: LogThrottle) -> None:
    """Log an exception that escaped a callback, at most every few seconds per place, with counts."""
    if isinstance(err, RuntimeError) and _failed_take(err):
        # Seen with shared-memory transport while a publisher's process exits: one unreadable
        # sample is bad input, not a reason for the subscriber to die.
        if log.check("take", time.monotonic()) is not None:
            node.get_logger().warning(f"dropped a message the middleware could not hand over: {err}")
        return
    frames = traceback.extract_tb(err.__traceback__)
    where = (
        f"{type(err).__name__} at {frames[-1].filename}:{frames[-1].lineno}" if frames else type(err).__name__
    )
    quiet = log.check(where, time.monotonic())
    if quiet is not None:
        text = "".join(traceback.format_exception(err)).rstrip()
        node.get_logger().error(
            f"unhandled exception in a callback ({log.counts[where]} so far, {quiet} not shown): {text}"
        )


def _failed_take(err: RuntimeError) -> bool:
    """Whether ``err`` came from taking a message off the middleware (not from a callback)."""
    frames = traceback.extract_tb(err.__traceback__)
    return bool(frames) and frames[-1].name.startswith("_take_")


def log_summary(node: Node, text: str) -> None:
    """Log a node's closing summary. On Ctrl-C rclpy has already shut the context down, and a log
    call would also fail to reach /rosout (and say so): then the line goes to stderr alone."""
    if node.context.ok():
        node.get_logger().info(text)
    else:
        print(f"[INFO] [{node.get_name()}]: {text}", file=sys.stderr, flush=True)


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
