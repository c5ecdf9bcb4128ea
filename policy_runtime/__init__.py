"""Policies: the torch-free runtime that runs on the robot (runtime/) and, apart, training with torch (training/)."""
