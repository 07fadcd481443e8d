"""Packaging glue that pyproject.toml cannot express: the `cli/` folder installs as `geoseg_cli`."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["geoseg", "geoseg.*"]), "geoseg_cli"],
    package_dir={"geoseg_cli": "cli"},
)
