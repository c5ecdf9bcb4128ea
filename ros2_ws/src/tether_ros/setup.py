"""ament_python package: colcon builds it on a ROS 2 install; pip installs it into tether's .venv."""

from setuptools import setup

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
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="tether developers",
    description="ROS 2 adapters for the tether core.",
    license="Apache-2.0",
    entry_points={"console_scripts": [f"{n} = {package_name}.{n}:main" for n in nodes]},
)
