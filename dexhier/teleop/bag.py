"""Raw ROS 2 topics to one MCAP file that ``ros2 bag play`` / ``ros2 bag info`` and Foxglove open.

The file follows the MCAP ``ros2`` profile the way rosbag2's own MCAP storage plugin writes it:
schema encoding ``ros2msg`` (the full ``.msg`` text with its dependencies after ``MSG:`` separators),
message encoding ``cdr``, chunks compressed with zstd, and per channel the metadata keys
``offered_qos_profiles`` (a YAML list of QoS profiles) and ``topic_type_hash`` (RIHS01). Messages are
the CDR bytes a ROS 2 subscription delivers with ``raw=True``, stored unchanged, or rclpy message
objects serialised by ``cdr_bytes``. Times are integer nanoseconds on the recorder's clock
(``log_time``: when the message was received).

The writer uses the ``mcap`` library; ``read_bag_summary`` reads back with ``rosbags``, a separate
implementation, so a round trip checks both. MCAP is append-only: a crash loses the chunk in flight
and the summary at the end (``is_complete`` tells), not the chunks written before. The writer ends
its chunk and fsyncs every ``sync_interval`` s (0.5 s), so a ``kill -9`` or power loss costs at most
that much; ``recover_bag`` rewrites such a file into a valid, indexed MCAP of every intact chunk.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, Self

import yaml
from mcap.writer import CompressionType
from mcap.writer import Writer as _McapWriter
from rosbags.typesys import Stores, get_typestore

from dexhier.episodes import fsync_dir

if TYPE_CHECKING:
    from rosbags.typesys.store import Typestore

MCAP_MAGIC = b"\x89MCAP0\r\n"
# Footer record: opcode 0x02, length 20 (summary start u64, summary offset start u64, summary crc u32).
_FOOTER_HEAD = b"\x02" + (20).to_bytes(8, "little")
_FOOTER_LEN = 1 + 8 + 20 + len(MCAP_MAGIC)

_COMPRESSION = {"zstd": CompressionType.ZSTD, "lz4": CompressionType.LZ4, "none": CompressionType.NONE}
_LIBRARY = "dexhier.teleop.bag"


def qos_profile_yaml(reliability: str = "reliable", durability: str = "volatile", depth: int = 10) -> str:
    """``offered_qos_profiles`` for one publisher, as rosbag2 (Jazzy and later) serialises it.

    Policies are rmw short names (``reliable`` / ``best_effort``, ``volatile`` / ``transient_local``):
    rosbag2 >= Jazzy (metadata version 9, assumed for a bare .mcap) parses reliability, durability
    and liveliness as names, so integer codes (the Humble form) would read back as "unknown".
    Durations {0, 0} mean "rmw default" (no deadline, lifespan or lease).
    """
    if reliability not in ("reliable", "best_effort"):
        raise ValueError(f"reliability must be 'reliable' or 'best_effort', not {reliability!r}")
    if durability not in ("volatile", "transient_local"):
        raise ValueError(f"durability must be 'volatile' or 'transient_local', not {durability!r}")
    unset = {"sec": 0, "nsec": 0}
    profile = {
        "history": "keep_last",
        "depth": int(depth),
        "reliability": reliability,
        "durability": durability,
        "deadline": dict(unset),
        "lifespan": dict(unset),
        "liveliness": "automatic",
        "liveliness_lease_duration": dict(unset),
        "avoid_ros_namespace_conventions": False,
    }
    return yaml.safe_dump([profile], sort_keys=False)


RELIABLE_QOS = qos_profile_yaml("reliable", "volatile", 10)
"""Commands, joint states, events: what a reliable rclpy publisher with depth 10 offers."""
SENSOR_QOS = qos_profile_yaml("best_effort", "volatile", 5)
"""Cameras and other high-rate sensors: rclpy's ``qos_profile_sensor_data``."""


@functools.cache
def _typestore() -> Typestore:
    """Message definitions of the ROS release the project's wheels come from (Kilted)."""
    store = getattr(Stores, "ROS2_KILTED", None) or Stores.ROS2_JAZZY  # older rosbags lack KILTED
    return get_typestore(store)


def message_definition(msgtype: str) -> tuple[str, str]:
    """(``ros2msg`` schema text, RIHS01 type hash) of e.g. ``"sensor_msgs/msg/JointState"``.

    ValueError if the type is not a standard ROS 2 message known to rosbags.
    """
    store = _typestore()
    try:
        # ros_version=2: the default (1) writes ROS 1 `time`/`duration`, which ROS 2 readers reject.
        text, _md5 = store.generate_msgdef(msgtype, ros_version=2)
        return text, store.hash_rihs01(msgtype)
    except Exception as exc:  # rosbags raises TypesysError or KeyError for an unknown type
        raise ValueError(f"unknown ROS 2 message type {msgtype!r}: {exc}") from exc


def msgtype_of(msg: Any) -> str:
    """ROS 2 type name of an rclpy message object, e.g. ``"sensor_msgs/msg/JointState"``."""
    package, kind = type(msg).__module__.split(".")[:2]  # e.g. sensor_msgs.msg._joint_state
    return f"{package}/{kind}/{type(msg).__name__}"


def cdr_bytes(msg: Any, msgtype: str | None = None) -> bytes:
    """CDR bytes of an rclpy message, as a subscription with ``raw=True`` receives them.

    ``rclpy.serialization.serialize_message`` (rmw_fastrtps, Kilted) returns a buffer sized by an
    upper bound: up to tens of bytes of uninitialised memory can follow the message (JointState,
    JointTrajectory), which strict readers such as rosbags reject ("CDR message size mismatch").
    The message is parsed once to find its true length (4-byte header + body) and cut there.
    """
    from rclpy.serialization import serialize_message  # rclpy only where messages are objects

    raw = serialize_message(msg)
    msgtype = msgtype_of(msg) if msgtype is None else msgtype
    store = _typestore()
    definition = store.get_msgdef(msgtype)
    parse = definition.deserialize_cdr_le if raw[1] else definition.deserialize_cdr_be
    _, body = parse(memoryview(raw)[4:], 0, definition.cls, store)
    return raw if 4 + body == len(raw) else raw[: 4 + body]  # no copy of a large exact image


def _check_time(name: str, value: int) -> None:
    # MCAP stores u64 nanoseconds; a float (seconds?) or a negative time is a caller's unit mistake.
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 64:
        raise ValueError(f"{name} must be an int of nanoseconds in [0, 2**64), not {value!r}")


class McapBagWriter:
    """One MCAP file, ROS 2 profile: schema encoding 'ros2msg', message encoding 'cdr', zstd chunks.

    ``path``: the .mcap file to write (created, or truncated if it exists). ``chunk_size``: bytes of
    uncompressed messages per chunk (1 MiB, rosbag2's default). ``sync_interval``: s (monotonic clock)
    a message may wait before a write ends the chunk and fsyncs the file (None: by size only), so a
    crash loses at most that much; call ``sync_if_due`` from a timer when messages may stop. ``compression``:
    'zstd' | 'lz4' | 'none'. Disk errors (``OSError``, e.g. ENOSPC) propagate unchanged from every
    method. Use as a context manager, or call ``close``.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        chunk_size: int = 1 << 20,
        compression: str = "zstd",
        sync_interval: float | None = 0.5,
    ) -> None:
        if compression not in _COMPRESSION:
            raise ValueError(f"compression must be one of {sorted(_COMPRESSION)}, not {compression!r}")
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be > 0 bytes, not {chunk_size}")
        if sync_interval is not None and not sync_interval > 0:
            raise ValueError(f"sync_interval must be > 0 s or None, not {sync_interval}")
        self.path = Path(path)
        self.sync_interval = sync_interval
        self._pending_since: float | None = None  # monotonic time of the oldest message not fsynced
        self._fsync_wanted = threading.Event()
        self._fsync_thread: threading.Thread | None = None
        self._fsync_error: OSError | None = None
        self.counts: dict[str, int] = {}
        """Messages written per topic (topics added but never written count 0)."""
        self._types: dict[str, str] = {}  # topic -> msgtype
        self._channels: dict[str, int] = {}  # topic -> channel id
        self._schemas: dict[str, int] = {}  # msgtype -> schema id: one schema per type, as rosbag2
        self._closed = False
        self._size = 0  # file size once closed
        self._file: IO[bytes] = open(self.path, "wb")  # noqa: SIM115 (closed by close())
        try:
            self._mcap = _McapWriter(self._file, chunk_size=chunk_size, compression=_COMPRESSION[compression])
            self._mcap.start(profile="ros2", library=_LIBRARY)
            self._file.flush()  # the header on disk now, not in Python's buffer: never a 0-byte bag
            fsync_dir(self.path.parent)
        except BaseException:
            with contextlib.suppress(OSError):  # the first error (a full disk, say) is the one to report
                self._file.close()
            raise

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def nbytes(self) -> int:
        """Bytes written to the file so far; the chunk being filled is not counted until it is written."""
        return self._size if self._closed else self._file.tell()

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError(f"bag {self.path} is closed")

    def add_topic(self, topic: str, msgtype: str, qos: str | None = None) -> None:
        """Declare ``topic`` carrying ``msgtype`` (e.g. ``"sensor_msgs/msg/JointState"``).

        ``qos``: the publisher's ``offered_qos_profiles`` YAML (``RELIABLE_QOS`` if None,
        ``SENSOR_QOS`` for best-effort sensors); ``ros2 bag play`` republishes with it. Adding a topic
        again with the same type does nothing; with another type it raises ValueError.
        """
        self._check_open()
        if topic in self._types:
            if self._types[topic] != msgtype:
                raise ValueError(f"topic {topic!r} already has type {self._types[topic]}, not {msgtype}")
            return
        if not topic.startswith("/"):
            raise ValueError(f"topic {topic!r} must be absolute (start with '/'), as rosbag2 records it")
        text, type_hash = message_definition(msgtype)
        if msgtype not in self._schemas:
            self._schemas[msgtype] = self._mcap.register_schema(
                name=msgtype, encoding="ros2msg", data=text.encode()
            )
        metadata = {
            "offered_qos_profiles": RELIABLE_QOS if qos is None else qos,
            "topic_type_hash": type_hash,
        }
        self._channels[topic] = self._mcap.register_channel(
            topic=topic, message_encoding="cdr", schema_id=self._schemas[msgtype], metadata=metadata
        )
        self._types[topic] = msgtype
        self.counts[topic] = 0

    def write(self, topic: str, data: bytes, log_time_ns: int, publish_time_ns: int | None = None) -> None:
        """Append one CDR-serialised message (encapsulation header included), stored as given.

        ``data`` as a ``raw=True`` subscription delivers it; for a message object use
        ``write_message`` (``serialize_message`` output carries trailing garbage, see ``cdr_bytes``).
        ``log_time_ns``: receive time, the time ``ros2 bag play`` replays on; ``publish_time_ns``:
        send time if known, else the receive time. KeyError if ``topic`` was not added.
        """
        self._check_open()
        if topic not in self._channels:
            raise KeyError(f"topic {topic!r} was not added to bag {self.path.name}; call add_topic first")
        _check_time("log_time_ns", log_time_ns)
        if publish_time_ns is None:
            publish_time_ns = log_time_ns
        _check_time("publish_time_ns", publish_time_ns)
        if len(data) < 4:  # every CDR payload starts with a 4-byte encapsulation header
            raise ValueError(f"{len(data)} bytes on {topic!r} is not a CDR message")
        self._mcap.add_message(
            channel_id=self._channels[topic],
            log_time=log_time_ns,
            data=bytes(data),
            publish_time=publish_time_ns,
            sequence=self.counts[topic] & 0xFFFFFFFF,  # u32 field; rosbag2 puts a per-topic counter here
        )
        self.counts[topic] += 1
        if self._pending_since is None:
            self._pending_since = time.monotonic()
        self.sync_if_due()

    def write_message(
        self, topic: str, msg: Any, log_time_ns: int, publish_time_ns: int | None = None
    ) -> None:
        """Serialise an rclpy message object with ``cdr_bytes`` and ``write`` it.

        ValueError if the message's type is not the topic's; no ``rclpy.init()`` is needed.
        """
        self._check_open()
        if topic not in self._types:
            raise KeyError(f"topic {topic!r} was not added to bag {self.path.name}; call add_topic first")
        msgtype = msgtype_of(msg)
        if msgtype != self._types[topic]:
            raise ValueError(f"topic {topic!r} carries {self._types[topic]}, not {msgtype}")
        self.write(topic, cdr_bytes(msg, msgtype), log_time_ns, publish_time_ns)

    def flush(self) -> None:
        """Write the chunk in progress (a smaller chunk) and flush Python's buffer; no fsync."""
        self._check_open()
        self._mcap.flush()

    def sync(self, wait: bool = True) -> None:
        """End the chunk in progress and write it to the kernel (it now survives a killed process), then
        fsync (power loss). ``wait=False``, as ``sync_if_due`` does, leaves the fsync to a background
        thread: under load it takes tens of ms, which a control loop must not wait for."""
        self._check_open()
        if self._fsync_error is not None:  # a background fsync failed: report it once, here
            err, self._fsync_error = self._fsync_error, None
            raise err
        self._mcap.flush()
        self._pending_since = None
        if wait:
            os.fsync(self._file.fileno())
            return
        if self._fsync_thread is None:
            self._fsync_thread = threading.Thread(target=self._fsync_loop, name="bag-fsync", daemon=True)
            self._fsync_thread.start()
        self._fsync_wanted.set()

    def _fsync_loop(self) -> None:
        while True:
            self._fsync_wanted.wait()
            self._fsync_wanted.clear()
            if self._closed:
                return
            try:
                os.fsync(self._file.fileno())
            except OSError as err:
                self._fsync_error = err

    def sync_if_due(self) -> bool:
        """``sync`` if the oldest message not yet fsynced was written ``sync_interval`` s ago or more."""
        since = self._pending_since
        if self.sync_interval is None or since is None or self._closed:
            return False
        if time.monotonic() - since < self.sync_interval:
            return False
        self.sync(wait=False)
        return True

    def close(self) -> None:
        """Write the summary and footer and close the file; later calls do nothing."""
        if self._closed:
            return
        self._closed = True  # also when finishing fails: a half-written summary must not be appended to
        try:
            self._mcap.finish()
            self._file.flush()
            os.fsync(self._file.fileno())  # complete on disk before the caller renames it
        finally:
            # Closed even if finish failed (disk full): the caller gets the OSError, no leaked handle.
            if self._fsync_thread is not None:  # it must not fsync a closed descriptor
                self._fsync_wanted.set()
                self._fsync_thread.join()
            self._size = self._file.tell()
            self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def is_complete(path: str | Path) -> bool:
    """True if ``path`` starts with the MCAP magic and ends with a footer record and the magic.

    A writer that crashed (or was killed) before ``close`` leaves a file without the footer. Raises
    FileNotFoundError for a missing file.
    """
    with open(path, "rb") as f:
        head = f.read(len(MCAP_MAGIC))
        size = f.seek(0, 2)
        if head != MCAP_MAGIC or size < len(MCAP_MAGIC) + _FOOTER_LEN:
            return False
        f.seek(size - _FOOTER_LEN)
        tail = f.read()
    return tail.startswith(_FOOTER_HEAD) and tail.endswith(MCAP_MAGIC)


class IncompleteBagError(ValueError):
    """The MCAP file has no footer: its writer did not close it (crash, kill, full disk)."""


def read_bag_summary(path: str | Path, *, deserialize: bool = True) -> dict[str, dict[str, Any]]:
    """``{topic: {"msgtype": str, "count": int}}`` of a bare .mcap, read with rosbags' AnyReader.

    With ``deserialize`` every message is decoded against the schema embedded in the file (a
    malformed one raises rosbags' AnyReaderError) and counted; without, counts come from the summary.
    Raises IncompleteBagError for a file without footer: nothing is returned from it, since a
    partial answer would pass for a whole recording; ``mcap recover`` rebuilds such a file.
    """
    from rosbags.highlevel import AnyReader  # rosbags' reader is heavier than the writer's imports

    path = Path(path)
    if not is_complete(path):
        raise IncompleteBagError(
            f"{path} has no MCAP footer (its writer was not closed); recover it with `mcap recover`"
        )
    summary: dict[str, dict[str, Any]] = {}
    counts: dict[str, int] = defaultdict(int)
    with AnyReader([path], default_typestore=_typestore()) as reader:
        for conn in reader.connections:
            known = summary.setdefault(conn.topic, {"msgtype": conn.msgtype, "count": 0})
            if known["msgtype"] != conn.msgtype:
                raise ValueError(f"{path}: {conn.topic} has types {known['msgtype']} and {conn.msgtype}")
            if not deserialize:
                counts[conn.topic] += conn.msgcount
        if deserialize:
            for conn, _t, raw in reader.messages(connections=reader.connections):
                reader.deserialize(raw, conn.msgtype)
                counts[conn.topic] += 1
    for topic, entry in summary.items():
        entry["count"] = counts[topic]
    return summary


@dataclass
class BagRecovery:
    """What `recover_bag` kept of a bag."""

    counts: dict[str, int] = field(default_factory=dict)
    """Messages kept per topic."""
    last_log_time_ns: int | None = None
    complete: bool = False
    """The source had its footer (nothing was lost)."""
    damaged_chunks: int = 0
    """Chunks skipped because their data failed to decompress or its CRC."""
    stopped: str = ""
    """Why reading stopped before a footer (the cut tail of a killed writer), else ''."""
    intact_bytes: int = 0
    """Bytes of the source read as whole records: what follows is the unreadable tail."""

    @property
    def messages(self) -> int:
        return sum(self.counts.values())


def recover_bag(src: str | Path, dst: str | Path) -> BagRecovery:
    """Rewrite the MCAP file ``src`` (say, left without a footer by a killed writer) into ``dst``.

    ``dst`` is a valid, indexed MCAP (summary, chunk and message indexes, footer) holding every message
    of every intact chunk of ``src`` with its channel, schema, times and sequence number. A chunk
    whose data fails its CRC is skipped and reading goes on; reading stops at the first record that is
    cut off (the tail a crash leaves). ``dst`` is written to a temporary file, fsynced and renamed, so
    it is whole or absent; ``src`` is not modified. A file without even a header gives an empty bag.
    """
    from mcap.records import Channel, Chunk, Header, Message, Metadata, Schema
    from mcap.stream_reader import StreamReader, breakup_chunk

    src, dst = Path(src), Path(dst)
    result = BagRecovery()
    tmp = dst.with_name(f".{dst.name}-{uuid.uuid4().hex[:8]}.tmp")
    schemas: dict[int, int] = {0: 0}  # source id -> id in dst (0: no schema)
    channels: dict[int, tuple[int, str]] = {}  # source id -> (id in dst, topic)
    try:
        with open(src, "rb") as f, open(tmp, "xb") as out:
            writer = _McapWriter(out, chunk_size=1 << 20, compression=CompressionType.ZSTD)
            started = False

            def start(profile: str = "ros2", library: str = _LIBRARY) -> None:
                nonlocal started
                if not started:
                    writer.start(profile=profile, library=library)
                    started = True

            def take(record: Any) -> None:
                if isinstance(record, Header):
                    start(record.profile, record.library)
                    return
                start()
                if isinstance(record, Schema) and record.id not in schemas:
                    schemas[record.id] = writer.register_schema(record.name, record.encoding, record.data)
                elif isinstance(record, Channel) and record.id not in channels:
                    if record.schema_id not in schemas:
                        return  # its schema was in a damaged chunk: the channel cannot be decoded
                    cid = writer.register_channel(
                        record.topic, record.message_encoding, schemas[record.schema_id], record.metadata
                    )
                    channels[record.id] = (cid, record.topic)
                    result.counts.setdefault(record.topic, 0)
                elif isinstance(record, Message) and record.channel_id in channels:
                    cid, topic = channels[record.channel_id]
                    writer.add_message(
                        cid, record.log_time, record.data, record.publish_time, record.sequence
                    )
                    result.counts[topic] += 1
                    last = result.last_log_time_ns
                    result.last_log_time_ns = record.log_time if last is None else max(last, record.log_time)
                elif isinstance(record, Metadata):
                    writer.add_metadata(record.name, record.metadata)

            try:
                result.intact_bytes = len(MCAP_MAGIC) if f.read(len(MCAP_MAGIC)) == MCAP_MAGIC else 0
                f.seek(0)
                for record in StreamReader(f, emit_chunks=True).records:
                    if isinstance(record, Chunk):
                        try:
                            inner = breakup_chunk(record, validate_crc=True)
                        except Exception:  # bad compressed data or CRC: skip this chunk, keep the rest
                            result.damaged_chunks += 1
                            continue
                        for r in inner:
                            take(r)
                    else:
                        take(record)
                    result.intact_bytes = f.tell()
                result.complete = True
            except Exception as err:  # a cut or garbled record: everything before it is kept
                result.stopped = f"{type(err).__name__}: {err}".rstrip(": ")
            start()
            writer.finish()
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dst)
        fsync_dir(dst.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return result
