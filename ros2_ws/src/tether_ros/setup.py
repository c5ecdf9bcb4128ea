from setuptools import setup
package_name = "tether_ros"
setup(name=package_name, version="0.1.0", packages=[package_name])
