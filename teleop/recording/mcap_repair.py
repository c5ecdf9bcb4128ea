"""Repair, in place, a raw MCAP log that a crash cut off; each topic keeps its message definition and QoS.

    if needs_repair(bag):
        print(repair(bag))   # kept 1480 messages on 3 topics (14.80 s); lost: 212 bytes cut off after them, ...

What a kill -9 (or a full disk) leaves of a :class:`~tether.teleop.recording.mcap_log.McapLog`: the MCAP
header, every chunk the log flushed (about one a second), perhaps the start of the chunk it was
writing, and no summary, footer or ``metadata.yaml``. Readers refuse it: rosbags wants
``metadata.yaml``, and the ``mcap`` reader, looking for a footer, fails with
``RecordLengthLimitExceeded``. :func:`repair` reads the file front to back, keeps every message of
its complete chunks and the complete messages at the start of a cut-off one, and writes them as a
new bag with rosbags' writer: each topic keeps its schema record (the message definition, byte for
byte) and the QoS of its channel record (``offered_qos_profiles``). The ROS distribution, which
only ``close()`` writes, is the one in use here. What cannot be kept is said in numbers: the bytes
past the last record kept and, when a cut-off chunk's header survived, how much later its last
message was. Messages the log still held in memory (up to its flush period, 1 s by default) never
reached the file, and nothing on disk says how many there were.

A repair interrupted in its turn is safe to run again: the new bag is built in ``<bag>/.repair/``
(deleted first); its .mcap replaces the old one before ``metadata.yaml`` appears, and a complete
.mcap without ``metadata.yaml`` repairs to the same messages.
"""

from __future__ import annotations

import mmap
import os
import shutil
import struct
import zlib
from collections import Counter
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tether.errors import McapLogError
from tether.teleop.recording.durable import fsync_dir, fsync_file
from tether.teleop.recording.mcap_log import finish_bag, ros_distro

MAGIC = b"\x89MCAP0\r\n"
# MCAP record opcodes (https://mcap.dev/spec).
OP_FOOTER, OP_SCHEMA, OP_CHANNEL, OP_MESSAGE, OP_CHUNK, OP_DATA_END = 0x02, 0x03, 0x04, 0x05, 0x06, 0x0F
WORK = ".repair"  # inside the bag: where the new bag is built
Data = bytes | mmap.mmap  # slices of either are bytes
Records = Generator[tuple[int, bytes], None, bool]  # records, then whether all were whole


@dataclass(frozen=True)
class LogRepair:
    """What :func:`repair` kept of one bag, and what it knows was lost."""

    bag: Path
    messages: dict[str, int]  # topic -> messages kept
    first_ns: int | None  # log time of the first and last message kept
    last_ns: int | None
    bytes_lost: int  # of the cut-off file, past the last record kept
    cut_until_ns: int | None  # the last message time a cut-off chunk announced (its messages past last_ns are lost)
    ended: bool  # the file reached its data section's end: the crash came after the last message was written

    @property
    def kept(self) -> int:
        return sum(self.messages.values())

    @property
    def span_s(self) -> float:
        return 0.0 if self.first_ns is None or self.last_ns is None else (self.last_ns - self.first_ns) / 1e9

    @property
    def seconds_lost(self) -> float | None:
        """Log time that a cut-off chunk held past the last message kept (None: no chunk header was cut off)."""
        if self.cut_until_ns is None or self.last_ns is None:
            return None
        return max(0.0, (self.cut_until_ns - self.last_ns) / 1e9)

    def __str__(self) -> str:
        if self.kept == 0 and self.bytes_lost == 0 and not self.ended:
            return "nothing had reached its file (the log flushes about once a second): it is now an empty bag"
        topics = len(self.messages)
        text = f"kept {self.kept} messages on {topics} topic{'' if topics == 1 else 's'} ({self.span_s:.2f} s)"
        if self.ended:
            return text + "; none lost (the file held every message; its summary or metadata.yaml was missing)"
        text += f"; lost: {self.bytes_lost} bytes cut off after them"
        if self.seconds_lost is not None:
            text += f" (a chunk running {self.seconds_lost:.2f} s past the last message kept)"
        return text + ", and what the log had not yet flushed (it flushes about once a second)"


def bags(raw_logs: Path) -> list[Path]:
    """The bag folders (holding an .mcap file) under ``raw_logs``, sorted."""
    if not raw_logs.is_dir():
        return []
    return sorted(p for p in raw_logs.iterdir() if p.is_dir() and any(p.glob("*.mcap")))


def needs_repair(bag: Path) -> bool:
    """True unless rosbags opens the bag (it needs ``metadata.yaml`` and the MCAP summary a crash never wrote)."""
    from rosbags.rosbag2 import Reader

    if not (bag / "metadata.yaml").is_file():
        return True
    try:
        with Reader(bag):
            pass
    except Exception:  # noqa: BLE001 - rosbags raises many kinds; any of them means the bag cannot be read as is
        return True
    return False


def repair(bag: Path | str) -> LogRepair:
    """Rebuild ``bag`` in place from what its .mcap holds; raises McapLogError when it cannot."""
    bag = Path(bag)
    source = _the_mcap(bag)
    work = bag / WORK
    shutil.rmtree(work, ignore_errors=True)  # what an interrupted repair left
    work.mkdir()
    try:
        new = work / source.stem  # rosbags names the file after its folder: the same name as the old one
        with open(source, "rb") as f:
            data = _contents(f)
            try:
                result = _Rebuild(data, bag).into(new)
            finally:
                if isinstance(data, mmap.mmap):
                    data.close()
        for name in (source.name, "metadata.yaml"):
            fsync_file(new / name)
        os.replace(new / source.name, source)  # a complete .mcap first: a repair cut short here repairs again
        os.replace(new / "metadata.yaml", bag / "metadata.yaml")
        fsync_dir(bag)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result


def _the_mcap(bag: Path) -> Path:
    files = sorted(bag.glob("*.mcap"))
    if len(files) != 1:
        raise McapLogError(f"{bag}: expected one .mcap file, found {len(files)} ({', '.join(f.name for f in files)})")
    return files[0]


def _contents(f: Any) -> Data:
    """The file, mapped (an image log can be many GB); a file the crash left (nearly) empty, read."""
    if os.fstat(f.fileno()).st_size < len(MAGIC):
        return bytes(f.read())
    return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


class _Rebuild:
    """Copies the schemas, channels and messages of a cut-off MCAP file into a new bag."""

    def __init__(self, data: Any, bag: Path) -> None:
        self.records = _Records(data)
        self.bag = bag
        self.schemas: dict[int, tuple[str, str, str]] = {}  # id -> (name, encoding, definition)
        self.connections: dict[int, Any] = {}
        self.counts: Counter[str] = Counter()
        self.first_ns: int | None = None
        self.last_ns: int | None = None

    def into(self, out: Path) -> LogRepair:
        from rosbags.rosbag2 import StoragePlugin, Writer

        distro = ros_distro()
        writer = Writer(out, version=9, storage_plugin=StoragePlugin.MCAP)
        writer.open()
        try:
            for op, body in self.records:
                self._copy(writer, op, body)
        except BaseException:
            writer.abort()
            raise
        finish_bag(writer, distro)
        return LogRepair(self.bag, dict(self.counts), self.first_ns, self.last_ns,
                         len(self.records.data) - self.records.end, self.records.cut_until_ns, self.records.ended)

    def _copy(self, writer: Any, op: int, body: bytes) -> None:
        if op == OP_SCHEMA:  # id, name, encoding, data
            sid = struct.unpack_from("<H", body)[0]
            name, pos = _string(body, 2)
            encoding, pos = _string(body, pos)
            self.schemas[sid] = (name, encoding, body[pos + 4:pos + 4 + _u32(body, pos)].decode())
        elif op == OP_CHANNEL:  # id, schema id, topic, message encoding, metadata
            cid, sid = struct.unpack_from("<HH", body)
            self.connections[cid] = self._connection(writer, sid, body)
        elif op == OP_MESSAGE:  # channel id, sequence, log time, publish time, data
            cid, _, log_time = struct.unpack_from("<HIQ", body)
            if cid not in self.connections:
                raise McapLogError(f"{self.bag}: a message on channel {cid}, which has no channel record before it")
            writer.write(self.connections[cid], log_time, body[22:])
            self.counts[self.connections[cid].topic] += 1
            self.first_ns = log_time if self.first_ns is None else min(self.first_ns, log_time)
            self.last_ns = log_time if self.last_ns is None else max(self.last_ns, log_time)

    def _connection(self, writer: Any, sid: int, body: bytes) -> Any:
        from rosbags.rosbag2.metadata import parse_qos

        if sid not in self.schemas:
            raise McapLogError(f"{self.bag}: a channel with schema {sid}, which has no schema record before it")
        topic, pos = _string(body, 4)
        metadata = _string_map(body, _string(body, pos)[1])
        msgtype, encoding, msgdef = self.schemas[sid]
        return writer.add_connection(topic, msgtype, msgdef=msgdef, rihs01=_rihs01(msgtype, encoding, msgdef),
                                     offered_qos_profiles=parse_qos(metadata.get("offered_qos_profiles", "")))


def _rihs01(msgtype: str, encoding: str, msgdef: str) -> str:
    """The type hash rosbag2 lists per topic, from the definition the bag itself carries."""
    from rosbags.typesys import Stores, get_types_from_idl, get_types_from_msg, get_typestore

    store = get_typestore(Stores.EMPTY)
    if encoding == "ros2msg":
        store.register(get_types_from_msg(msgdef, msgtype))
    elif encoding == "ros2idl":
        store.register(get_types_from_idl(msgdef))
    else:
        raise McapLogError(f"schema of {msgtype}: encoding '{encoding}' is not one of ros2msg, ros2idl")
    return str(store.hash_rihs01(msgtype))


class _Records:
    """The records of an MCAP file's data section in order, each chunk's own records in its place.

    Stops at the data section's end, or at the first record cut off or damaged; ``end`` is then the
    offset past the last record kept, and ``cut_until_ns`` the last message time a cut-off chunk
    announced."""

    def __init__(self, data: Data) -> None:
        if len(data) >= len(MAGIC) and data[:len(MAGIC)] != MAGIC:
            raise McapLogError("not an MCAP file: it does not start with the MCAP magic")
        self.data = data
        self.end = min(len(MAGIC), len(data))  # the log's first bytes reach the file with its first flush
        self.cut_until_ns: int | None = None
        self.ended = False

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        data, pos = self.data, len(MAGIC)
        while pos + 9 <= len(data):
            op, stop = data[pos], pos + 9 + _u64(data, pos + 1)
            if op in (OP_DATA_END, OP_FOOTER):  # a complete file: the summary after this holds no message
                self.end, self.ended = len(data), True
                return
            if op == 0 or stop > len(data):  # zeros where a record should start, or a record cut off
                if op == OP_CHUNK:
                    yield from self._cut_chunk(pos + 9)
                return
            if op == OP_CHUNK:
                if not (yield from self._chunk(pos + 9, stop)):
                    return
            elif op in (OP_SCHEMA, OP_CHANNEL, OP_MESSAGE):
                yield op, data[pos + 9:stop]
            pos = self.end = stop

    def _chunk(self, start: int, stop: int) -> Records:
        """A complete chunk's records; returns False when its CRC says it is damaged (nothing of it kept)."""
        head = _chunk_head(self.data, start)
        records = self.data[head.records:stop]
        if head.crc and zlib.crc32(records) != head.crc:
            return False
        return (yield from self._inner(records, head.records))

    def _cut_chunk(self, start: int) -> Records:
        """The complete records at the start of a chunk the file ends in."""
        if start + 16 <= len(self.data):
            self.cut_until_ns = _u64(self.data, start + 8)
        try:
            head = _chunk_head(self.data, start)
        except (struct.error, McapLogError, UnicodeDecodeError):
            return False  # its header is cut off too
        return (yield from self._inner(self.data[head.records:], head.records))

    def _inner(self, records: bytes, offset: int) -> Records:
        """Records inside a chunk, up to the first cut off; True when all of them were whole."""
        pos = 0
        while pos + 9 <= len(records):
            op, stop = records[pos], pos + 9 + _u64(records, pos + 1)
            if stop > len(records):
                return False
            yield op, records[pos + 9:stop]
            pos = stop
            self.end = offset + pos
        return pos == len(records)


@dataclass(frozen=True)
class _ChunkHead:
    crc: int
    records: int  # file offset of its records


def _chunk_head(data: Data, start: int) -> _ChunkHead:
    # message start time, message end time, uncompressed size, uncompressed crc, compression, records length
    crc = _u32(data, start + 24)
    compression, pos = _string(data, start + 28)
    if compression:
        raise McapLogError(f"chunk compression '{compression}' is not supported (the log writes none)")
    return _ChunkHead(crc, pos + 8)


def _u32(data: Data, pos: int) -> int:
    return int(struct.unpack_from("<I", data, pos)[0])


def _u64(data: Data, pos: int) -> int:
    return int(struct.unpack_from("<Q", data, pos)[0])


def _string(data: Data, pos: int) -> tuple[str, int]:
    length = _u32(data, pos)
    if pos + 4 + length > len(data):
        raise McapLogError("a string runs past the end of its record")
    return data[pos + 4:pos + 4 + length].decode(), pos + 4 + length


def _string_map(data: Data, pos: int) -> dict[str, str]:
    """An MCAP map<string, string>: its byte length, then key and value strings."""
    end = pos + 4 + _u32(data, pos)
    pos += 4
    found = {}
    while pos < end:
        key, pos = _string(data, pos)
        found[key], pos = _string(data, pos)
    return found
