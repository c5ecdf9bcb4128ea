"""The dataset writer and the raw MCAP log in a process of their own, fed through shared memory.

Why (issue 4): video encoding (PyAV), parquet and MCAP writing hold the GIL for milliseconds at a
time. Run in the process that also steps the twin (or reads the cameras), they stalled its control
loop: obs->command p50 15 / p99 95 ms while collecting, against 4.9 / 9.2 ms in rehearsal. Here the
recording process only checks a frame, copies its images into shared memory
(:class:`~tether.teleop.recording.slot_ring.SlotRing`) and sends a few numbers down a pipe; a worker process
does the rest under its own GIL. It is started with ``spawn``: forking a process that runs DDS
threads can copy a held lock into the child.

    writer = WriterProcess.start(root, spec)   # creates the dataset, or appends (recovering a crash)
    writer.begin_episode("pick the cube")
    writer.add_frame(state, action, {"front": rgb, "wrist": rgb2}, capture_ns, False, "expert", "autonomous")
    writer.end_episode(success=True)
    writer.close()

What a crash loses, beside :class:`DatasetWriter`'s own guarantees (1 s segments, atomic commits):

- the worker killed: its open segment (< ``segment_seconds``) and the frames still queued to it
  (at most the ring, ``ring_seconds``; none while it keeps up);
- the recording process killed: nothing it had handed over. The worker writes every frame it was
  sent, closes the segment and the MCAP log and exits, leaving the episode staged for
  ``tether dataset recover``, which commits it as truncated.

The worker dying is never silent: the next call, or :meth:`WriterProcess.check`, raises
:class:`WriterProcessError` saying how it ended and what was in flight. It ignores SIGINT (a
terminal's Ctrl-C reaches the whole process group); its owner stops it with ``close()``, which
ends a running episode like ``DatasetWriter.close``: committed as truncated, or discarded.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import pickle
import signal
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn

import numpy as np

from tether.errors import (
    DatasetError,
    DiskFullError,
    EpisodeStateError,
    McapLogError,
    WriterDiskFullError,
    WriterProcessError,
)
from tether.dataset.layout import DatasetSpec, disk_full, read_info, spec_from_info
from tether.dataset.writer import CommitResult, DatasetWriter, FrameCheck, check_on_abort
from tether.teleop.recording.mcap_log import McapLog, TopicQos
from tether.teleop.recording.slot_ring import SlotRing

_CTX = multiprocessing.get_context("spawn")
_CALL_TIMEOUT_S = 60.0  # start-up (imports, recovering a crashed dataset) and the small calls
_COMMIT_TIMEOUT_S = 600.0  # a commit remuxes the current video file, up to its size limit
_STALL_S = 30.0  # a live worker that frees no slot for this long is stuck
_INLINE_BYTES = 64 * 1024  # smaller log messages go down the pipe, larger ones through the ring
_CDR_MARGIN = 4096  # an Image message's CDR bytes beyond its pixels (header, frame id, encoding)
_ASYNC = ("frame", "log", "log_batch")  # no reply: a failure is fatal and reported as such
# Small log messages (joint states, commands: ~500 a second) cross the pipe in batches: one send per
# message cost the recording process (which hosts the twin or the cameras) most of a core. A kill -9
# of that process loses at most this much more of the raw log than it did.
_LOG_BATCH_S = 0.05


@dataclass(frozen=True)
class Totals:
    """The worker's writer after each answered call."""

    episodes: int
    frames: int
    episode_running: bool


def dataset_exists(root: Path) -> bool:
    return (root / "meta").exists()


def open_or_create(root: Path, spec: DatasetSpec, segment_seconds: float = 1.0) -> DatasetWriter:
    """Append to the dataset at ``root`` (recovering what a crash left), or create it from ``spec``."""
    if dataset_exists(root):
        return DatasetWriter.open_existing(root, segment_seconds=segment_seconds)
    return DatasetWriter.create(root, spec, segment_seconds=segment_seconds)


def ring_for(spec: DatasetSpec, ring_seconds: float, log_images: bool) -> SlotRing:
    """One slot per camera image; ``ring_seconds`` of them, twice as many when the log takes images too."""
    image_bytes = max(h * w * 3 for h, w in spec.cameras.values())
    per_second = spec.fps * len(spec.cameras) * (2 if log_images else 1)
    slot_bytes = image_bytes + (_CDR_MARGIN if log_images else 0)
    return SlotRing(_CTX, slot_bytes, max(4, math.ceil(ring_seconds * per_second)))


class WriterProcess:
    """The recording process's side: the calls of :class:`DatasetWriter`, plus the MCAP log's."""

    def __init__(self, process: BaseProcess, conn: Connection, ring: SlotRing, root: Path, spec: DatasetSpec) -> None:
        """Use ``start``."""
        self.root, self.spec = root, spec
        self._process, self._conn, self._ring = process, conn, ring
        self._check = FrameCheck(spec)
        self._totals = Totals(0, 0, False)
        self._episode: int | None = None  # the running episode's index
        self._frames_sent = 0
        self._last_capture_ns: int | None = None
        self._topics: dict[str, str] | None = None  # the open log's topics
        self._log_batch: list[tuple[str, bytes, int]] = []  # small log messages not yet sent
        self._log_batch_at = time.monotonic()
        self._error: WriterProcessError | None = None
        self._started = False  # the worker's first answer (dataset opened) has been read
        self._closed = False
        self.last_commit: CommitResult | None = None
        self.recovery = ""  # what opening the dataset recovered from a crash ("" when nothing)

    @classmethod
    def start(cls, root: Path | str, spec: DatasetSpec, *, log_images: bool = False,
              segment_seconds: float = 1.0, ring_seconds: float = 1.0) -> WriterProcess:
        """Start the worker on the dataset at ``root`` (created from ``spec`` unless it exists).

        Returns at once: the worker opens the dataset while the caller goes on (a node's
        constructor must not hold up the twin beside it), and the first call waits for it. A
        dataset that cannot be opened then raises WriterProcessError, from that call or ``check``.
        """
        root = Path(root)
        if dataset_exists(root):  # appending: frames must match the dataset, not the caller's idea of it
            spec = spec_from_info(read_info(root))
        ring = ring_for(spec, ring_seconds, log_images)
        mine, theirs = _CTX.Pipe()
        process = _CTX.Process(target=serve, args=(theirs, ring, str(root), spec, segment_seconds),
                               name="tether-dataset-writer", daemon=True)
        process.start()
        theirs.close()  # the worker holds the only other end: its death reads as end-of-file here
        return cls(process, mine, ring, root, spec)

    def wait_started(self) -> None:
        """Wait until the worker has opened the dataset (``recovery`` then says what a crash left)."""
        if self._started or self._error is not None:
            return
        try:
            self.recovery = self._reply("start", _CALL_TIMEOUT_S)
        except WriterProcessError:
            raise
        except Exception as exc:  # noqa: BLE001 - any reason the worker cannot run is the same to its owner
            error = WriterProcessError(f"the dataset writer process cannot open {self.root}: {exc}")
            error.__cause__ = exc
            self._fail(error)
        self._started = True

    # -- state, as the recording process knows it

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def num_episodes(self) -> int:
        return self._totals.episodes

    @property
    def num_frames(self) -> int:
        return self._totals.frames

    @property
    def episode_running(self) -> bool:
        return self._episode is not None

    @property
    def episode_frames(self) -> int:
        """Frames handed to the worker in the running episode."""
        return self._frames_sent if self._episode is not None else 0

    # -- episodes

    def begin_episode(self, task: str) -> int:
        index: int = self._call("begin", task)
        self._episode, self._frames_sent, self._last_capture_ns = index, 0, None
        return index

    def add_frame(self, state: np.ndarray, action: np.ndarray, images: Mapping[str, np.ndarray], capture_time_ns: int,
                  intervention: bool = False, control_source: str = "policy", phase: str = "autonomous") -> None:
        """Check the frame here (a bad one raises DatasetFrameError, as DatasetWriter's), then hand it over."""
        self.check()
        if self._episode is None:
            raise EpisodeStateError("add_frame", "not recording", "call begin_episode(task) first")
        frame = self._check.frame(state, action, images, capture_time_ns, intervention, control_source, phase,
                                  self._last_capture_ns)
        slots = [self._ring.put(frame.images[cam], self._waiting) for cam in self.spec.cameras]
        self._send(("frame", slots, frame.state.tolist(), frame.action.tolist(), frame.capture_time_ns,
                    frame.intervention, frame.control_source, frame.phase))
        self._last_capture_ns = frame.capture_time_ns
        self._frames_sent += 1

    def end_episode(self, success: bool | None = None) -> int:
        """Commit the running episode (after the worker has written every frame sent); its index."""
        try:
            index, self.last_commit = self._call("end", success, timeout=_COMMIT_TIMEOUT_S)
            return int(index)
        finally:
            self._sync_episode()

    def discard_episode(self) -> None:
        try:
            self._call("discard")
        finally:
            self._sync_episode()

    # -- the raw MCAP log

    def open_log(self, path: Path | str, topics: Mapping[str, str], qos: Mapping[str, TopicQos] | None = None) -> None:
        """A new rosbag2 bag at ``path`` for ``topics`` (name -> message type); ``qos``: each one's recorded QoS."""
        if qos is not None and set(qos) != set(topics):
            raise McapLogError(f"raw log: QoS given for {', '.join(sorted(qos)) or '(none)'}; "
                               f"give one for each logged topic: {', '.join(sorted(topics))}")
        self._call("log_open", str(path), dict(topics), dict(qos or {}))
        self._topics = dict(topics)

    def log(self, topic: str, cdr: bytes, stamp_ns: int) -> None:
        """Log one message given as the CDR bytes a raw subscription received."""
        if self._topics is None or topic not in self._topics:
            raise McapLogError(f"raw log: topic '{topic}' is not in the open log; its topics: "
                               f"{', '.join(self._topics or {}) or '(no log open)'}")
        if len(cdr) > _INLINE_BYTES and self._ring.fits(len(cdr)):
            self._send_log_batch()  # in order
            self.check()
            self._send(("log", topic, None, self._ring.put(cdr, self._waiting), len(cdr), stamp_ns))
            return
        self._log_batch.append((topic, bytes(cdr), stamp_ns))
        if time.monotonic() - self._log_batch_at >= _LOG_BATCH_S:
            self._send_log_batch()

    def close_log(self) -> None:
        if self._topics is not None:
            self._topics = None
            self._call("log_close")

    def _send_log_batch(self) -> None:
        self._log_batch_at = time.monotonic()
        if self._log_batch:
            batch, self._log_batch = self._log_batch, []
            self.check()  # once a batch: a dead worker is noticed within one
            self._send(("log_batch", batch))

    # -- the worker's health and end

    def check(self) -> None:
        """Raise WriterProcessError if the worker has died or failed. Cheap: two system calls."""
        if self._error is None and not self._closed:
            if not self._started:
                if self._conn.poll() or not self._process.is_alive():
                    self.wait_started()
            elif self._conn.poll():  # between calls only a failure report, or end-of-file, can be waiting
                self._reply("check", 0.0)
            elif not self._process.is_alive():
                self._fail(self._died())
        if self._error is not None:
            raise self._error

    def close(self, on_abort: str = "truncate") -> None:
        """Close the log, end a running episode as ``on_abort`` says (see ``DatasetWriter.close``), stop the worker."""
        if self._closed:
            return
        check_on_abort(on_abort)
        try:
            self._call("close", on_abort, timeout=_COMMIT_TIMEOUT_S)
        finally:
            self._shut()

    def abandon(self) -> None:
        """Stop the worker without committing: it stages what it has, for recover (an error path)."""
        if not self._closed:
            self._shut()

    def __enter__(self) -> WriterProcess:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abandon()

    # -- plumbing

    def _call(self, op: str, *args: Any, timeout: float = _CALL_TIMEOUT_S) -> Any:
        self.wait_started()
        self.check()
        self._send_log_batch()  # what was logged before this call reaches the worker before it
        self._send((op, *args))
        return self._reply(op, timeout)

    def _send(self, message: tuple[Any, ...]) -> None:
        try:
            self._conn.send(message)
        except OSError:  # BrokenPipeError: the worker is gone
            self._fail(self._died())

    def _reply(self, op: str, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while not self._conn.poll(min(0.1, timeout)):  # the worker's death wakes this too (end-of-file)
            if time.monotonic() >= deadline:
                self._fail(WriterProcessError(f"the dataset writer process (pid {self.pid}) did not answer "
                                              f"'{op}' within {timeout:.0f} s{self._in_flight()}"))
        try:
            kind, value, totals = self._conn.recv()
        except (EOFError, OSError):
            self._fail(self._died())
        if kind == "fatal":
            self._fail(WriterProcessError(f"the dataset writer process failed: {value}{self._in_flight()}"))
        if kind == "disk_full":  # the cause in one line: the recorder logs it, and the graph fails with it
            self._fail(WriterDiskFullError(self.root, *value))
        self._totals = totals or self._totals
        if kind == "error":
            raise value
        return value

    def _waiting(self, seconds: float) -> None:
        """Called while the ring is full: fine while the worker lives and frees slots now and then."""
        self.check()
        if seconds > _STALL_S:
            self._fail(WriterProcessError(f"the dataset writer process (pid {self.pid}) has freed no image slot "
                                          f"in {_STALL_S:.0f} s: it is stuck{self._in_flight()}"))

    def _sync_episode(self) -> None:
        # The worker says whether its episode still runs (a refused end leaves it running).
        if not self._totals.episode_running:
            self._episode = None

    def _fail(self, error: WriterProcessError) -> NoReturn:
        self._error = error
        raise error

    def _died(self) -> WriterProcessError:
        self._process.join(timeout=1.0)
        code = self._process.exitcode
        if code is None:
            how = "closed its pipe but is still running"
        elif code < 0:
            how = f"was killed by {signal.Signals(-code).name}"
        else:
            how = f"exited with status {code}"
        return WriterProcessError(f"the dataset writer process (pid {self.pid}) {how}{self._in_flight()}")

    def _in_flight(self) -> str:
        if self._episode is None:
            return ""
        return (f", while recording episode {self._episode} ({self._frames_sent} frames handed over); its flushed "
                f"segments stay staged: run `tether dataset recover {self.root}`")

    def _shut(self) -> None:
        self._closed = True
        self._conn.close()  # a live worker reads end-of-file, stages what it has and exits
        self._process.join(timeout=30.0)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()


# ---------------------------------------------------------------- the worker process


def serve(conn: Connection, ring: SlotRing, root: str, spec: DatasetSpec, segment_seconds: float) -> None:
    """The worker's main: open the dataset, then carry out the owner's messages until it closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the owner stops us
    try:
        worker = _Worker(ring, Path(root), spec, segment_seconds)
    except Exception as exc:  # noqa: BLE001 - the owner raises it
        full = _disk_full(exc, "opening the dataset")
        conn.send(("disk_full", full, None) if full else ("error", _portable(exc), None))
        return
    conn.send(("ok", worker.recovery, worker.totals()))
    worker.run(conn)


class _Worker:
    def __init__(self, ring: SlotRing, root: Path, spec: DatasetSpec, segment_seconds: float) -> None:
        self.ring = ring
        self.writer = open_or_create(root, spec, segment_seconds)
        report = self.writer.recovery
        self.recovery = "" if report is None or report.clean else str(report)
        self.log: McapLog | None = None
        self.handlers: dict[str, Callable[..., Any]] = {
            "begin": self.writer.begin_episode, "frame": self.frame, "end": self.end,
            "discard": self.writer.discard_episode, "log_open": self.log_open, "log": self.log_write,
            "log_batch": self.log_batch,
            "log_close": self.log_close, "close": self.close,
        }

    def totals(self) -> Totals:
        w = self.writer
        return Totals(w.num_episodes, w.num_frames, w.episode_running)

    def run(self, conn: Connection) -> None:
        """Until the owner closes us. Its end-of-file, or SIGTERM (what multiprocessing sends at the owner's
        exit), means it is gone without close(): keep all it sent, staged for recover()."""
        stopping: list[int] = []
        signal.signal(signal.SIGTERM, lambda signum, _frame: stopping.append(signum))  # acted on between messages
        while True:
            try:
                if not conn.poll(0.0 if stopping else 0.2):
                    if stopping:  # and every message the owner had sent is handled
                        break
                    continue
                op, *args = conn.recv()
                if op in _ASYNC:
                    self._do_async(conn, op, args)
                elif not self._do_sync(conn, op, args):
                    return
            except (EOFError, OSError):
                break
        self.abandon()

    def _do_sync(self, conn: Connection, op: str, args: list[Any]) -> bool:
        """Answer one call; False once the owner has closed us."""
        try:
            reply = ("ok", self.handlers[op](*args), self.totals())
        except Exception as exc:  # noqa: BLE001 - the owner raises it (a refused call, not a dead worker)
            self._stop_if_disk_full(conn, op, exc)
            reply = ("error", _portable(exc), self.totals())
        conn.send(reply)
        return op != "close"

    def _do_async(self, conn: Connection, op: str, args: list[Any]) -> None:
        try:
            self.handlers[op](*args)
        except Exception as exc:  # noqa: BLE001 - fatal: nobody waits for an answer, so fail loudly
            self._stop_if_disk_full(conn, op, exc)
            traceback.print_exc()  # into the owner's log (stderr is inherited)
            self._stop(conn, ("fatal", f"{op}: {type(exc).__name__}: {exc}", None))

    def _stop_if_disk_full(self, conn: Connection, op: str, exc: Exception) -> None:
        """Nothing more can be written: say so in one line (no traceback to bury it) and end."""
        full = _disk_full(exc, self._doing(op))
        if full is not None:
            self._stop(conn, ("disk_full", full, None))

    def _stop(self, conn: Connection, message: tuple[str, Any, None]) -> NoReturn:
        with contextlib.suppress(OSError):
            conn.send(message)
        self.abandon()
        sys.exit(1)

    def _doing(self, op: str) -> str:
        episode = f"episode {self.writer.num_episodes}"  # the running one's index, as begin_episode returned it
        log = f"the raw log {self.log.path}" if self.log is not None else "the raw log"
        return {"begin": "beginning an episode", "frame": f"writing the frames of {episode}",
                "end": f"committing {episode}", "discard": f"discarding {episode}", "log_open": "opening a raw log",
                "log": f"writing {log}", "log_close": f"closing {log}", "close": "closing the dataset"}.get(op, op)

    def frame(self, slots: list[int], state: list[float], action: list[float], capture_time_ns: int,
              intervention: bool, control_source: str, phase: str) -> None:
        cameras = self.writer.spec.cameras
        images = {cam: self.ring.get(slot, h * w * 3).reshape(h, w, 3) for (cam, (h, w)), slot in zip(cameras.items(), slots)}
        try:  # the encoder copies each image in add_frame: the slots are free again after it
            self.writer.add_frame(np.asarray(state), np.asarray(action), images, capture_time_ns, intervention,
                                  control_source, phase)
        finally:
            self.ring.release(len(slots))

    def end(self, success: bool | None) -> tuple[int, CommitResult | None]:
        index = self.writer.end_episode(success)
        return index, self.writer.last_commit

    def log_open(self, path: str, topics: dict[str, str], qos: dict[str, TopicQos]) -> None:
        self.log_close()
        self.log = McapLog(path)
        for topic, msgtype in topics.items():
            self.log.add_topic(topic, msgtype, qos=qos.get(topic))

    def log_write(self, topic: str, cdr: bytes | None, slot: int, nbytes: int, stamp_ns: int) -> None:
        if cdr is None:
            cdr = self.ring.get(slot, nbytes).tobytes()
            self.ring.release()
        if self.log is None:
            raise McapLogError(f"raw log: a message for '{topic}' came with no log open")
        self.log.write(topic, cdr, stamp_ns)

    def log_batch(self, messages: list[tuple[str, bytes, int]]) -> None:
        for topic, cdr, stamp_ns in messages:
            self.log_write(topic, cdr, -1, 0, stamp_ns)

    def log_close(self) -> None:
        if self.log is not None:
            self.log.close()
            self.log = None

    def close(self, on_abort: str) -> None:
        self.log_close()
        self.writer.close(on_abort)

    def abandon(self) -> None:
        """Stage every frame received and close the log; the episode stays staged for recover()."""
        # Best effort on a path that is already failing: what was flushed before stays valid regardless.
        with contextlib.suppress(Exception):
            self.log_close()
        with contextlib.suppress(Exception):
            self.writer.flush()


def _disk_full(exc: Exception, doing: str) -> tuple[str, str] | None:
    """(what was being done, the system's words) when ``exc`` says the disk is full, else None."""
    if isinstance(exc, DiskFullError):  # from recovering the dataset as it opened: it says what it was doing
        return exc.doing, exc.reason
    full = disk_full(exc)
    if full is None:
        return None
    return doing + (f" ({full.filename})" if full.filename else ""), full.reason


def _portable(exc: Exception) -> Exception:
    """``exc`` if it survives pickling (the owner raises it as is), else a DatasetError with its text."""
    try:
        copy: Exception = pickle.loads(pickle.dumps(exc))
        return copy
    except Exception:  # noqa: BLE001 - e.g. an __init__ taking other arguments than its message
        return DatasetError(f"{type(exc).__name__}: {exc}")
