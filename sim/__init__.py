"""MuJoCo digital twin: model building, tasks, rendering, scripted experts and sim evaluation."""

import os as _os

# MuJoCo picks its GL backend at import; headless machines need EGL (or OSMesa) chosen first.
if not _os.environ.get("DISPLAY"):
    _os.environ.setdefault("MUJOCO_GL", "egl")
