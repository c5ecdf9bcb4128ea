"""ament_python package: colcon builds it on a ROS 2 install; pip installs it into tether's .venv."""

import os
from glob import glob

from setuptools import setup

# The launch files live in the repository's launch/ (they are the graph's, not this package's), and are
# installed into share/<package>/launch so that `ros2 launch tether_ros <file>` finds them. setuptools
# wants data_files relative to this folder; colcon and pip both run setup.py from here.
HERE = os.path.dirname(os.path.abspath(__file__))
LAUNCH_FILES = sorted(os.path.relpath(path, HERE)
                      for path in glob(os.path.join(HERE, "..", "..", "..", "launch", "*.launch.py")))

package_name = "tether_ros"
nodes = ["twin_node", "gate_node", "expert_node", "policy_node", "session_node", "recorder_node", "teleop_node",
         "adversary_node",
         "container"]

setup(
    name=package_name,
    version="0.1.0",
    packages=[package_name],
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{package_name}"]),
        (f"share/{package_name}", ["package.xml"]),
        (f"share/{package_name}/launch", LAUNCH_FILES),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="tether developers",
    description="ROS 2 adapters for the tether core.",
    license="Apache-2.0",
    entry_points={"console_scripts": [f"{n} = {package_name}.{n}:main" for n in nodes]},
)
