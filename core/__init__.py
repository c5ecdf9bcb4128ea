"""tether: a ROS 2 control stack for robots that run learned policies.

The trunk holds what every capability shares: typed errors, strict config
loading, robot profiles, kinematics and small statistics helpers.
"""

__version__ = "0.1.0"
