"""Calibration: camera intrinsics, hand-eye, joint offsets, system identification."""
