"""For tools that look for setup.py: pyproject.toml is the one source of the package's metadata."""

from setuptools import setup

setup()
