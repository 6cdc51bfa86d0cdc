"""Package discovery: ``cli/`` installs as ``tuner_cli`` (never a bare ``cli`` package)."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["tuner_core", "tuner_core.*"]), "tuner_cli"],
    package_dir={"tuner_cli": "cli"},
)
