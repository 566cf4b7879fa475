"""Start the nodes of a launch file as child processes and shut them down like ``ros2 launch``.

Each node runs in its own process group; its stdout/stderr lines are printed with a ``[label] ``
prefix (``output="screen"``), written to ``launch.log`` in the log directory (``output="log"``,
whose stderr still goes to the screen, as in ROS 2) or both. On SIGINT/SIGTERM to the runner, at
``stop_after``, when a node with ``on_exit="shutdown"`` exits (or, with ``stop_on_failure``, when
any node fails) every process group gets SIGINT, then SIGTERM after ``grace`` seconds, then SIGKILL
after another ``grace``. A second Ctrl-C skips to the next signal. The exit code is 0 unless a
node failed (exited non-zero before the shutdown began).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO

from .xml_format import LaunchError, NodeAction

GRACE_S = 5.0
_POLL_S = 0.02


# ------------------------------------------------------------------------------ executables
def resolve_executable(package: str | None, executable: str) -> list[str]:
    """The argv prefix that starts ``executable`` of ``package``.

    As ``ros2 launch``: ``<prefix>/lib/<package>/<executable>`` of the package's prefix in the
    ament index (AMENT_PREFIX_PATH). Otherwise, a ``console_scripts`` entry point named
    ``executable`` of the installed Python distribution named ``package`` (``_``/``-`` equal),
    run by this interpreter. Without a package, ``executable`` is a path or a command on PATH.
    """
    if package is None:
        found = executable if os.sep in executable else shutil.which(executable)
        if found is None or not os.access(found, os.X_OK):
            raise LaunchError(f"executable '{executable}' not found on PATH")
        return [found]
    prefix = _ament_prefix(package)
    if prefix is not None:
        candidate = Path(prefix) / "lib" / package / executable
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return [str(candidate)]
    entry = _console_script(package, executable)
    if entry is not None:
        name, value = json.dumps(entry.name), json.dumps(entry.value)
        code = (
            "import sys; from importlib.metadata import EntryPoint; "
            f"sys.argv[0] = {json.dumps(executable)}; "
            f'sys.exit(EntryPoint({name}, {value}, "console_scripts").load()())'
        )
        return [sys.executable, "-c", code]
    where = f"{prefix}/lib/{package}/" if prefix else "the ament index (AMENT_PREFIX_PATH)"
    raise LaunchError(
        f"cannot find executable '{executable}' of package '{package}': not in {where}, and no installed "
        f"Python distribution '{package}' has a console script '{executable}'"
    )


def _ament_prefix(package: str) -> str | None:
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_prefix
    except ImportError:  # pragma: no cover - ament_index_python comes with the rclpy wheels
        return None
    try:
        return get_package_prefix(package)
    except (PackageNotFoundError, OSError, ValueError):
        return None


def _console_script(package: str, executable: str) -> importlib.metadata.EntryPoint | None:
    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    for dist in importlib.metadata.distributions():
        if norm(dist.metadata["Name"] or "") == norm(package):
            for entry in dist.entry_points:
                if entry.group == "console_scripts" and entry.name == executable:
                    return entry
    return None


def describe(nodes: list[NodeAction]) -> tuple[str, bool]:
    """Human-readable nodes and command lines (``dexhier launch --print``); False if one cannot start."""
    lines: list[str] = []
    ok = True
    for node in nodes:
        flags = [f"output={node.output}"]
        flags += ["respawn"] if node.respawn else []
        flags += ['on_exit="shutdown"'] if node.required else []
        lines.append(
            f"{node.label}  [{node.package or '-'}/{node.executable}]  {' '.join(flags)}  ({node.source})"
        )
        try:
            exe = resolve_executable(node.package, node.executable)
            lines.append("  cmd: " + shlex.join(node.command(exe)))
        except LaunchError as err:
            ok = False
            lines.append(f"  cmd: <{node.package}/{node.executable}> {shlex.join(node.command([]))}")
            lines.append(f"  error: {err}")
        if node.env:
            lines.append("  env: " + " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(node.env.items())))
    return "\n".join(lines), ok


# ------------------------------------------------------------------------------ the runner
@dataclass
class _Child:
    node: NodeAction
    label: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    reported: bool = True  # the exit of `proc` was handled
    respawn_at: float | None = None
    readers: list[threading.Thread] = field(default_factory=list)


def run(
    nodes: list[NodeAction],
    stop_after: float | None = None,
    *,
    grace: float = GRACE_S,
    stop_on_failure: bool = False,
    log_dir: str | os.PathLike[str] | None = None,
    stop_when: Callable[[], bool] | None = None,
) -> int:
    """Start ``nodes``, stream their output, and shut everything down; return the exit code.

    Returns when every node has exited, after ``stop_after`` seconds, on SIGINT/SIGTERM, when a
    node with ``on_exit="shutdown"`` exits, or when ``stop_when()`` (polled) returns True. All
    executables are resolved before anything starts.
    """
    return _Runner(nodes, grace, stop_on_failure, log_dir).run(stop_after, stop_when)


class _Runner:
    def __init__(
        self,
        nodes: list[NodeAction],
        grace: float,
        stop_on_failure: bool,
        log_dir: str | os.PathLike[str] | None,
    ) -> None:
        self.grace, self.stop_on_failure = grace, stop_on_failure
        self.out, self.err = sys.stdout, sys.stderr
        self.lock = threading.Lock()
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.log_file: IO[str] | None = None
        self.log_closed = False
        self.children: list[_Child] = []
        counts: dict[str, int] = {}
        for node in nodes:
            counts[node.label] = counts.get(node.label, 0) + 1
            label = node.label if counts[node.label] == 1 else f"{node.label}-{counts[node.label]}"
            exe = resolve_executable(node.package, node.executable)
            self.children.append(_Child(node, label, node.command(exe)))
        self.failed = False
        self.stop_reason: str | None = None
        self.signals = 0
        self.stopping = False

    # --- output
    def say(self, message: str) -> None:
        with self.lock:
            self.err.write(f"[launch] {message}\n")
            self.err.flush()

    def _log(self) -> IO[str]:
        if self.log_file is None:
            base = self.log_dir or _default_log_dir()
            base.mkdir(parents=True, exist_ok=True)
            self.log_file = open(base / "launch.log", "a", encoding="utf-8")  # noqa: SIM115 - closed in run()
            self.err.write(f"[launch] log file: {base / 'launch.log'}\n")
        return self.log_file

    def _pump(self, child: _Child, stream: IO[bytes], is_err: bool) -> None:
        output = child.node.output
        to_screen = output in ("screen", "both") or (is_err and output == "log")
        to_log = output in ("log", "both")
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            with self.lock:
                if to_screen:
                    target = self.err if is_err else self.out
                    target.write(f"[{child.label}] {line}\n")
                    target.flush()
                if to_log and not self.log_closed:
                    self._log().write(f"{time.time():.7f} [{child.label}] {line}\n")
        stream.close()

    # --- processes
    def _start(self, child: _Child) -> None:
        env = {**os.environ, **child.node.env}
        env.setdefault("PYTHONUNBUFFERED", "1")  # Python nodes' prints reach the screen line by line
        try:
            proc = subprocess.Popen(
                child.argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                process_group=0,
            )
        except OSError as err:
            self.say(f"{child.label}: cannot start {child.argv[0]}: {err}")
            self.failed = True
            self._request_stop(f"{child.label} could not start")
            return
        child.proc, child.reported = proc, False
        assert proc.stdout is not None and proc.stderr is not None
        child.readers = [
            threading.Thread(target=self._pump, args=(child, proc.stdout, False), daemon=True),
            threading.Thread(target=self._pump, args=(child, proc.stderr, True), daemon=True),
        ]
        for reader in child.readers:
            reader.start()
        self.say(f"{child.label}: started, pid {proc.pid}: {shlex.join(child.argv)}")

    def _request_stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason

    def _on_signal(self, signum: int, frame: object) -> None:
        # Only flags here: printing could deadlock on a lock the interrupted main thread holds.
        self.signals += 1
        self._request_stop(signal.Signals(signum).name)

    def _on_exit(self, child: _Child) -> None:
        assert child.proc is not None
        child.reported = True
        for reader in child.readers:
            reader.join(timeout=1.0)
        rc, pid = child.proc.returncode, child.proc.pid
        if rc == 0:
            self.say(f"{child.label}: process {pid} finished cleanly")
        else:
            self.say(f"{child.label}: process {pid} died: {_exit_text(rc)}")
        if self.stopping:
            return
        if child.node.required:
            self.failed |= rc != 0
            self._request_stop(f'{child.label} exited and has on_exit="shutdown"')
        elif child.node.respawn:
            self.say(f"{child.label}: respawning in {child.node.respawn_delay:g} s")
            child.respawn_at = time.monotonic() + child.node.respawn_delay
        elif rc != 0:
            self.failed = True
            if self.stop_on_failure:
                self._request_stop(f"{child.label} failed")

    def _poll(self) -> bool:
        """Handle exits and due respawns; True while a node runs or waits to respawn."""
        active = False
        for child in self.children:
            if child.respawn_at is not None:
                if time.monotonic() >= child.respawn_at:
                    child.respawn_at = None
                    self._start(child)
                active = True
            elif child.proc is not None and child.proc.poll() is None:
                active = True
            elif child.proc is not None and not child.reported:
                self._on_exit(child)
                active = active or child.respawn_at is not None
        return active

    def run(self, stop_after: float | None, stop_when: Callable[[], bool] | None = None) -> int:
        in_main = threading.current_thread() is threading.main_thread()
        previous: dict[signal.Signals, object] = {}
        if in_main:
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, self._on_signal)
        deadline = None if stop_after is None else time.monotonic() + stop_after
        try:
            for child in self.children:
                if self.stop_reason is None:
                    self._start(child)
            while self.stop_reason is None:
                if not self._poll():
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    self._request_stop(f"stop after {stop_after:g} s")
                    break
                if stop_when is not None and stop_when():
                    self._request_stop("the caller asked to stop")
                    break
                time.sleep(_POLL_S)
        finally:
            self._shutdown()
            for sig, handler in previous.items():
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
            with self.lock:
                self.log_closed = True
                if self.log_file is not None:
                    self.log_file.close()
        return 1 if self.failed else 0

    def _alive(self, child: _Child) -> bool:
        """The node's process, or anything left in its process group, still runs."""
        if child.proc is None:
            return False
        if child.proc.poll() is None:
            return True
        try:
            os.killpg(child.proc.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def _shutdown(self) -> None:
        self.stopping = True
        for child in self.children:
            child.respawn_at = None
        if self.stop_reason is not None and any(self._alive(c) for c in self.children):
            self.say(f"shutting down ({self.stop_reason})")
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
            alive = [c for c in self.children if self._alive(c)]
            if not alive:
                break
            if sig != signal.SIGINT:
                names = ", ".join(c.label for c in alive)
                self.say(f"{names}: still running, sending {sig.name}")
            for child in alive:
                assert child.proc is not None
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.proc.pid, sig)
            signals_before = self.signals
            end = time.monotonic() + self.grace
            while time.monotonic() < end and self.signals == signals_before:
                if not any(self._alive(c) for c in alive):
                    break
                time.sleep(_POLL_S)
        for child in self.children:
            if child.proc is not None and not child.reported:
                child.proc.poll()
                if child.proc.returncode is None:  # pragma: no cover - only if SIGKILL did not work
                    child.proc.wait(timeout=self.grace)
                self._on_exit(child)


def _exit_text(rc: int) -> str:
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit code {rc}"


def _default_log_dir() -> Path:
    """Like ROS 2: $ROS_LOG_DIR, else $ROS_HOME/log, else ~/.ros/log; one directory per run."""
    base = os.environ.get("ROS_LOG_DIR") or os.path.join(
        os.environ.get("ROS_HOME") or os.path.join(os.path.expanduser("~"), ".ros"), "log"
    )
    stamp = datetime.now().strftime("%Y-%m-%d-%H-%M-%S-%f")
    return Path(base) / f"{stamp}-{os.uname().nodename}-{os.getpid()}"
