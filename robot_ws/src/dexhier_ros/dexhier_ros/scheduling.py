"""Real-time scheduling for the nodes on the control path (twin or driver, policy, safety supervisor).

On a shared machine the control tick waits behind whatever else is running (perception's encoder,
rendering, training), and that wait is the command-period jitter. ros2_control runs its update
loop under ``SCHED_FIFO`` for the same reason; these nodes take a ``realtime_priority`` parameter
(1-99, 0 = leave the default scheduler) and move every thread of their process (executor, DDS) to
``SCHED_FIFO`` at that priority. Bulk work steps down: the twin's sensor thread for good, and
:func:`default_scheduler` around a scene rebuild or a video frame on the control thread, so that the
GL and BLAS worker threads those start are not real-time either (the launch files also give these
nodes one BLAS thread).

Without the permission (no ``CAP_SYS_NICE`` / ``rtprio`` limit) the node logs one warning and runs
on the default scheduler: slower to react under load, otherwise the same. A FIFO thread that never
blocks starves the normal ones on its core; the kernel's real-time throttling
(``/proc/sys/kernel/sched_rt_runtime_us``, 95 % by default, -1 on some tuned real-time machines)
is the only backstop, so nothing that runs at this priority may loop without waiting.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from rclpy.node import Node

MAX_PRIORITY = 99


def process_threads() -> list[int]:
    """Kernel thread ids of this process (Linux)."""
    return sorted(int(t) for t in os.listdir("/proc/self/task"))


def set_fifo(priority: int) -> list[int]:
    """Move this process's threads to SCHED_FIFO at ``priority``.

    Threads created later inherit the policy of the thread that creates them. Returns the thread ids
    changed. Raises ValueError for a priority outside 1..99 and PermissionError without the right.
    """
    if not 1 <= priority <= MAX_PRIORITY:
        raise ValueError(f"realtime priority {priority} outside 1..{MAX_PRIORITY}")
    changed = []
    for tid in process_threads():
        try:
            os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(priority))
        except ProcessLookupError:  # the thread ended meanwhile
            continue
        changed.append(tid)
    return changed


def leave_realtime() -> None:
    """Put the calling thread on the normal time-sharing scheduler (always permitted)."""
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


@contextlib.contextmanager
def default_scheduler() -> Iterator[None]:
    """Run the block on the normal scheduler if the calling thread is real-time, then restore it.

    Threads started inside (renderer workers, say) keep the normal scheduler.
    """
    policy = os.sched_getscheduler(0)
    if policy == os.SCHED_OTHER:
        yield
        return
    param = os.sched_getparam(0)
    leave_realtime()
    try:
        yield
    finally:
        os.sched_setscheduler(0, policy, param)


def apply_realtime_priority(node: Node, priority: int) -> int:
    """Apply a node's ``realtime_priority`` parameter; returns the priority in effect (0 = none).

    Call it before the node starts threads for bulk work, or have those threads step down themselves.
    """
    if priority == 0:
        return 0
    if not 1 <= priority <= MAX_PRIORITY:
        raise ValueError(f"parameter 'realtime_priority': {priority} outside 0..{MAX_PRIORITY} (0 = off)")
    try:
        changed = set_fifo(priority)
    except PermissionError:
        node.get_logger().warning(
            f"realtime_priority {priority}: not permitted (needs CAP_SYS_NICE or an rtprio limit); "
            "running on the default scheduler"
        )
        return 0
    node.get_logger().info(f"SCHED_FIFO priority {priority} on {len(changed)} threads")
    return priority
