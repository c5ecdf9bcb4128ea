"""Several tether nodes in one process, each spinning its own executor in its own thread.

    python -m tether_ros.container twin_node recorder_node --ros-args -p robot:=so101 ...

Large images then cross no process boundary (DESIGN: 640x480 across processes
costs ~14 ms and, best-effort, loses frames), while rendering and video encoding,
which release the GIL, still run side by side. Parameters apply to every node
in the process; the graph declaration refuses conflicting values.
"""

from __future__ import annotations

import importlib
import sys
import threading

from rclpy.experimental import EventsExecutor
from rclpy.node import Node

from tether_ros.spin import StopRequest, init, release, spin_until_stopped


def _spin(node: Node, stop: StopRequest) -> None:
    try:
        spin_until_stopped(node, EventsExecutor(), stop)
    finally:
        # One node ending (finished, or a crash) ends the process, as for a single node.
        stop.set(f"node '{node.get_name()}' ended")


def main(args: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if args is None else args)
    split = argv.index("--ros-args") if "--ros-args" in argv else len(argv)
    names, ros_args = argv[:split], argv[split:]
    if not names:
        print("usage: python -m tether_ros.container NODE_MODULE [...] --ros-args ...", file=sys.stderr)
        return 2
    stop = init(["container", *ros_args])
    nodes: list[Node] = []
    try:
        nodes = [importlib.import_module(f"tether_ros.{name}").NODE() for name in names]
        threads = [threading.Thread(target=_spin, args=(n, stop), daemon=True) for n in nodes]
        for t in threads:
            t.start()
        while not stop():  # the main thread takes the signals; the nodes spin in their own threads
            stop.event.wait(0.1)
        for t in threads:
            t.join(timeout=2.0)
        nodes[0].get_logger().info(f"stopping: {stop.reason}")
        return max(int(getattr(n, "exit_code", 0)) for n in nodes)
    except KeyboardInterrupt:
        return 0
    finally:
        release(nodes)


if __name__ == "__main__":
    raise SystemExit(main())
