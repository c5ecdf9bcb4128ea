"""A raw log of recorded topics as a rosbag2 bag (MCAP storage), next to each episode's dataset.

    with McapLog("runs/session/raw") as log:
        log.add_topic("/joint_states", "sensor_msgs/msg/JointState", qos=TopicQos("reliable", "volatile", depth=600))
        log.write("/joint_states", cdr, stamp_ns)   # the bytes a raw subscription received

The result is a bag folder (``metadata.yaml`` + ``raw.mcap``, rosbag2 format version 9) that
``ros2 bag info``/``play``, Foxglove, rosbags and ``mcap-ros2-support`` read. Messages are the CDR
bytes exactly as they went over the wire: take them from a raw subscription
(``create_subscription(..., raw=True)``), never from rclpy's ``serialize_message``, whose buffer
runs past the CDR payload (4 bytes for a JointState with empty efforts, 12 for a JointTrajectory)
with uninitialised memory that rosbags rejects ("CDR message size mismatch"). Each topic carries
the QoS it was recorded with in ``offered_qos_profiles`` (so a replay latches a transient-local
topic again), and ``ros_distro`` names the ROS 2 distribution in use (:func:`ros_distro`), whose
message definitions, from rosbags' type store of that release, describe the messages.

Crash behaviour (kill -9, power loss). rosbags writes ``metadata.yaml`` and the MCAP summary and
footer only in ``close()``; messages are collected in an in-memory chunk that it writes out once
it passes 1 MiB. Unhelped, a killed recorder leaves a folder with no ``metadata.yaml`` and an
MCAP file that has its header, the chunks that were full, and no footer: everything since the
last full chunk is lost (with 640x480 images that is a frame or two; joint states alone fill
a chunk in about a minute and a half at 100 Hz), and neither rosbags nor ``ros2 bag info``
opens the bag. So this log also closes the chunk and flushes
it to the OS on the first write ``flush_period`` seconds after the last flush: a kill -9 loses
about that much (a power cut also what the OS had not yet written), and
:func:`tether.teleop.recording.mcap_repair.repair` (run by ``tether dataset recover``) rebuilds a crashed bag
in place from its complete chunks. ``close()`` is idempotent;
a ``with`` block that ends in an exception still closes the log normally (rosbags' own context
manager would ``abort``, dropping the index and metadata of data that is perfectly good).
"""

from __future__ import annotations

import importlib.metadata
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from tether.errors import McapLogError

# rclpy's major version in each ROS 2 distribution (the PyPI wheels carry no distribution name):
# Humble 3.3.x, Jazzy 7.1.x, Kilted 9.1.x.
RCLPY_DISTROS = {3: "humble", 7: "jazzy", 9: "kilted"}

# rosbag2's names for each QoS policy (version 9 metadata writes them in lower case).
RELIABILITY = ("system_default", "reliable", "best_effort", "best_available")
DURABILITY = ("system_default", "transient_local", "volatile", "best_available")
HISTORY = ("system_default", "keep_last", "keep_all")
LIVELINESS = ("system_default", "automatic", "manual_by_node", "manual_by_topic", "best_available")


def ros_distro() -> str:
    """The ROS 2 distribution in use: ``ROS_DISTRO`` (a sourced ROS install sets it), else the rclpy wheel's."""
    named = os.environ.get("ROS_DISTRO", "").strip().lower()
    if named:
        return named
    try:
        version = importlib.metadata.version("ros-rclpy")
    except importlib.metadata.PackageNotFoundError:
        raise McapLogError("cannot tell the ROS 2 distribution: ROS_DISTRO is not set and the ros-rclpy wheel "
                           "is not installed; set ROS_DISTRO (e.g. kilted)") from None
    distro = RCLPY_DISTROS.get(int(version.split(".")[0]))
    if distro is None:
        known = ", ".join(f"{major}.x {name}" for major, name in RCLPY_DISTROS.items())
        raise McapLogError(f"cannot tell the ROS 2 distribution of ros-rclpy {version} (known: rclpy {known}); "
                           "set ROS_DISTRO")
    return distro


@dataclass(frozen=True)
class TopicQos:
    """The QoS a topic was recorded with, as rosbag2 writes it in ``offered_qos_profiles``; durations in ns."""

    reliability: str
    durability: str
    history: str = "keep_last"
    depth: int = 10
    deadline_ns: int = 0  # 0: the middleware's default
    lifespan_ns: int = 0
    liveliness: str = "system_default"
    liveliness_lease_ns: int = 0
    avoid_ros_namespace_conventions: bool = False

    def __post_init__(self) -> None:
        for name, valid in (("reliability", RELIABILITY), ("durability", DURABILITY), ("history", HISTORY),
                            ("liveliness", LIVELINESS)):
            if getattr(self, name) not in valid:
                raise McapLogError(f"QoS {name} '{getattr(self, name)}' is not one of {', '.join(valid)}")
        if self.depth < 0:
            raise McapLogError(f"QoS depth must be 0 or more, got {self.depth}")

    def to_rosbags(self) -> Any:
        from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

        def time_of(ns: int) -> QosTime:
            return QosTime(*divmod(int(ns), 1_000_000_000))

        return Qos(QosHistory[self.history.upper()], self.depth, QosReliability[self.reliability.upper()],
                   QosDurability[self.durability.upper()], time_of(self.deadline_ns), time_of(self.lifespan_ns),
                   QosLiveliness[self.liveliness.upper()], time_of(self.liveliness_lease_ns),
                   self.avoid_ros_namespace_conventions)


class McapLog:
    """Writes a rosbag2 MCAP bag; see the module docstring for what survives a crash."""

    def __init__(self, path: str | Path, *, flush_period: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer, WriterError

        self.path = Path(path)
        self.flush_period = flush_period
        self._clock = clock
        self.ros_distro = ros_distro()
        self._store_name, self._typestore = _typestore(self.ros_distro)
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

    def add_topic(self, name: str, msgtype: str, *, msgdef: str | None = None, qos: TopicQos | None = None) -> None:
        """Register a topic before writing to it.

        ``qos``: the profile it is recorded with (``offered_qos_profiles``; none listed without it);
        ``msgdef``: the .msg text of a type outside the type store.
        """
        self._check_open()
        if name in self._connections:
            raise McapLogError(f"raw log: topic '{name}' is already added (as {self._connections[name].msgtype})")
        if msgdef is not None:
            from rosbags.typesys import get_types_from_msg

            self._typestore.register(get_types_from_msg(msgdef, msgtype))
        elif msgtype not in self._typestore.types:
            raise McapLogError(
                f"raw log: message type '{msgtype}' is not in the {self._store_name} type store; "
                "pass msgdef= with its .msg definition (ROS type names look like 'sensor_msgs/msg/JointState')")
        offered = [qos.to_rosbags()] if qos is not None else []
        self._connections[name] = self._writer.add_connection(name, msgtype, typestore=self._typestore,
                                                              offered_qos_profiles=offered)

    def write(self, topic: str, cdr: bytes | bytearray | memoryview, timestamp_ns: int) -> None:
        """Log one message: its CDR bytes as a raw subscription received them."""
        self._check_open()
        if topic not in self._connections:
            added = ", ".join(self._connections) or "(none)"
            raise McapLogError(f"raw log: topic '{topic}' was not added; added topics: {added}")
        if not isinstance(cdr, (bytes, bytearray, memoryview)):
            raise McapLogError(f"raw log: cannot write a {type(cdr).__name__}; give the CDR bytes a raw subscription "
                               "received (rclpy's serialize_message pads them with uninitialised bytes)")
        self._writer.write(self._connections[topic], int(timestamp_ns), bytes(cdr))
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
        finish_bag(self._writer, self.ros_distro)

    def __enter__(self) -> McapLog:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise McapLogError(f"raw log {self.path} is closed")


def finish_bag(writer: Any, distro: str) -> None:
    """rosbags' ``Writer.close``, naming the ROS distribution in the metadata where rosbags writes 'rosbags'."""
    storage = writer.storage
    close_storage = storage.close
    # The metadata's copy inside the .mcap (what `ros2 bag reindex` reads), then metadata.yaml.
    storage.close = lambda version, text: close_storage(version, _with_distro(text, distro))
    writer.close()
    meta = yaml.safe_load(writer.metapath.read_text())
    meta["rosbag2_bagfile_information"]["ros_distro"] = distro
    tmp = writer.metapath.with_suffix(".yaml.tmp")
    tmp.write_text(yaml.safe_dump(meta, sort_keys=False))
    tmp.replace(writer.metapath)


def _with_distro(info_yaml: str, distro: str) -> str:
    info = yaml.safe_load(info_yaml)
    info["ros_distro"] = distro
    return yaml.safe_dump(info, sort_keys=False)


def _typestore(distro: str) -> tuple[str, Any]:
    """(name, store) of rosbags' message definitions for ``distro``."""
    from rosbags.typesys import Stores, get_typestore

    name = "LATEST" if distro == "rolling" else f"ROS2_{distro.upper()}"
    if name not in Stores.__members__:
        known = ", ".join(s[5:].lower() for s in Stores.__members__ if s.startswith("ROS2_"))
        raise McapLogError(f"rosbags has no message definitions for ROS 2 '{distro}' (ROS_DISTRO or the rclpy "
                           f"wheel); it knows: {known}, rolling")
    return name, get_typestore(Stores[name])
