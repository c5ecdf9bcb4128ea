"""A raw log of recorded topics as a rosbag2 bag (MCAP storage), next to each episode's dataset.

    with McapLog("runs/session/raw") as log:
        log.add_topic("/joint_states", "sensor_msgs/msg/JointState")
        log.write("/joint_states", serialize_message(msg), stamp_ns)   # or the rclpy message itself

The result is a bag folder (``metadata.yaml`` + ``raw.mcap``, rosbag2 format version 9) that
``ros2 bag info``/``play`` and Foxglove read. Messages stay CDR bytes exactly as rclpy sent them;
the message definitions come from rosbags' ROS 2 Kilted type store (the ROS release of the rclpy
wheels), or from ``msgdef=`` for a type it does not know.

Crash behaviour (kill -9, power loss). rosbags writes ``metadata.yaml`` and the MCAP summary and
footer only in ``close()``; messages are collected in an in-memory chunk that it writes out once
it passes 1 MiB. Unhelped, a killed recorder leaves a folder with no ``metadata.yaml`` and an
MCAP file that has its header, the chunks that were full, and no footer: everything since the
last full chunk is lost (with 640x480 images that is a frame or two; joint states alone fill
a chunk in about a minute and a half at 100 Hz), and neither rosbags nor ``ros2 bag info``
opens the bag. So this log also closes the chunk and flushes
it to the OS on the first write ``flush_period`` seconds after the last flush: a kill -9 loses
about that much (a power cut also what the OS had not yet written), and :func:`recover`
rebuilds a readable bag from the complete chunks of a crashed one. ``close()`` is idempotent;
a ``with`` block that ends in an exception still closes the log normally (rosbags' own context
manager would ``abort``, dropping the index and metadata of data that is perfectly good).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from tether.errors import McapLogError

# The ROS 2 release whose message definitions the log records (the rclpy wheels are Kilted).
TYPESTORE = "ROS2_KILTED"


class McapLog:
    """Writes a rosbag2 MCAP bag; see the module docstring for what survives a crash."""

    def __init__(self, path: str | Path, *, flush_period: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer, WriterError

        self.path = Path(path)
        self.flush_period = flush_period
        self._clock = clock
        self._typestore = _typestore()
        try:
            self._writer: Any = Writer(self.path, version=9, storage_plugin=StoragePlugin.MCAP)
            self._writer.open()
        except WriterError as err:
            raise McapLogError(f"raw log {self.path}: {err} (choose a new folder)") from None
        self._connections: dict[str, Any] = {}
        self._last_flush = clock()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def topics(self) -> dict[str, str]:
        """Topic name -> message type."""
        return {topic: conn.msgtype for topic, conn in self._connections.items()}

    def add_topic(self, name: str, msgtype: str, *, msgdef: str | None = None) -> None:
        """Register a topic before writing to it; ``msgdef`` (.msg text) for types outside the store."""
        self._check_open()
        if name in self._connections:
            raise McapLogError(f"raw log: topic '{name}' is already added (as {self._connections[name].msgtype})")
        if msgdef is not None:
            from rosbags.typesys import get_types_from_msg

            self._typestore.register(get_types_from_msg(msgdef, msgtype))
        elif msgtype not in self._typestore.types:
            raise McapLogError(
                f"raw log: message type '{msgtype}' is not in the {TYPESTORE} type store; "
                "pass msgdef= with its .msg definition (ROS type names look like 'sensor_msgs/msg/JointState')")
        self._connections[name] = self._writer.add_connection(name, msgtype, typestore=self._typestore)

    def write(self, topic: str, message: bytes | bytearray | memoryview | Any, timestamp_ns: int) -> None:
        """Log one message: CDR bytes (``rclpy.serialization.serialize_message``) or an rclpy message."""
        self._check_open()
        if topic not in self._connections:
            added = ", ".join(self._connections) or "(none)"
            raise McapLogError(f"raw log: topic '{topic}' was not added; added topics: {added}")
        data = message if isinstance(message, (bytes, bytearray, memoryview)) else _serialize(message)
        self._writer.write(self._connections[topic], int(timestamp_ns), bytes(data))
        if self._clock() - self._last_flush >= self.flush_period:
            self.flush()

    def flush(self) -> None:
        """Close the pending chunk and hand it to the OS: what a kill -9 after this cannot lose."""
        self._check_open()
        storage = self._writer.storage
        # rosbags has no public flush; these are its MCAP writer's own chunk-closing and file handle.
        if storage.chunk.bio.tell():
            storage.close_chunk()
        storage.bio.flush()
        self._last_flush = self._clock()

    def close(self) -> None:
        """Write the index, the footer and ``metadata.yaml``. Safe to call again."""
        if self._closed:
            return
        self._closed = True
        self._writer.close()

    def __enter__(self) -> McapLog:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise McapLogError(f"raw log {self.path} is closed")


def recover(crashed: str | Path, out: str | Path | None = None, *, msgdefs: dict[str, str] | None = None) -> Path:
    """Rebuild a readable bag from a crashed log's complete chunks; returns the new bag's folder.

    ``crashed`` is a bag folder without ``metadata.yaml``; the new bag goes to ``out`` (default:
    ``<crashed>-recovered``). Messages in a chunk cut short by the crash are lost. ``msgdefs``
    (type -> .msg text) gives the types that were added with ``msgdef=``.
    """
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import get_types_from_msg

    crashed = Path(crashed)
    files = sorted(crashed.glob("*.mcap"))
    if not files:
        raise McapLogError(f"recover: no .mcap file in {crashed}")
    out = Path(out) if out is not None else crashed.with_name(crashed.name + "-recovered")
    schemas: dict[int, str] = {}
    channels: dict[int, Any] = {}
    typestore = _typestore()
    for msgtype, text in (msgdefs or {}).items():
        typestore.register(get_types_from_msg(text, msgtype))
    with Writer(out, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        for op, body in _chunk_records(files[0].read_bytes()):
            if op == 0x03:  # schema: id, name, encoding, data
                sid, name = struct.unpack_from("<H", body)[0], _string(body, 2)[0]
                schemas[sid] = name
            elif op == 0x04:  # channel: id, schema id, topic, ...
                cid, sid = struct.unpack_from("<HH", body)
                channels[cid] = writer.add_connection(_string(body, 4)[0], schemas[sid], typestore=typestore)
            elif op == 0x05:  # message: channel id, sequence, log time, publish time, data
                cid, _, log_time = struct.unpack_from("<HIQ", body)
                writer.write(channels[cid], log_time, body[22:])
    return out


def _chunk_records(data: bytes) -> Iterator[tuple[int, bytes]]:
    """The records inside each complete chunk of an MCAP file; stops at the first cut-off record."""
    pos = 8  # past the magic
    while pos + 9 <= len(data):
        op, length = data[pos], struct.unpack_from("<Q", data, pos + 1)[0]
        body = data[pos + 9:pos + 9 + length]
        if len(body) < length:
            return
        pos += 9 + length
        if op == 0x06:
            yield from _records(_chunk_payload(body))


def _chunk_payload(body: bytes) -> bytes:
    # start time, end time, uncompressed size, crc, compression (string), records (sized bytes)
    compression, pos = _string(body, 28)
    if compression:
        raise McapLogError(f"recover: chunk compression '{compression}' is not supported (the log writes none)")
    size = struct.unpack_from("<Q", body, pos)[0]
    return body[pos + 8:pos + 8 + size]


def _records(data: bytes) -> Iterator[tuple[int, bytes]]:
    pos = 0
    while pos + 9 <= len(data):
        op, length = data[pos], struct.unpack_from("<Q", data, pos + 1)[0]
        yield op, data[pos + 9:pos + 9 + length]
        pos += 9 + length


def _string(body: bytes, pos: int) -> tuple[str, int]:
    length = struct.unpack_from("<I", body, pos)[0]
    return body[pos + 4:pos + 4 + length].decode(), pos + 4 + length


def _typestore() -> Any:
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(getattr(Stores, TYPESTORE))


def _serialize(message: Any) -> bytes:
    if not hasattr(message, "get_fields_and_field_types"):
        raise McapLogError(f"raw log: cannot write a {type(message).__name__}; give CDR bytes or an rclpy message")
    from rclpy.serialization import serialize_message  # only when handed a message object

    return serialize_message(message)
