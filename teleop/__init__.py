"""Teleoperation: input devices, human/policy arbitration, intervention labels, episode recording."""
