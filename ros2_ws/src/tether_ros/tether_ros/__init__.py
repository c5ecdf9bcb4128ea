"""ROS 2 nodes of tether. Each node only converts: parameters to config, messages to numpy, callbacks to core calls."""
