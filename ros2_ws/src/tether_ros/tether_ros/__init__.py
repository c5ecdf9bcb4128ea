"""ROS 2 adapters for tether."""
