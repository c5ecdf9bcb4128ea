"""MuJoCo digital twin: model building, tasks, rendering, scripted experts and sim evaluation."""
