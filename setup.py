"""Kept for tools that still call ``python setup.py``; all metadata lives in pyproject.toml,
except the Project-URLs, which come from mkdocs.yml (the one place the site's address is set)."""

import importlib.util
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent
# loaded by path: the package's __init__ imports NumPy, absent from the isolated build environment
_spec = importlib.util.spec_from_file_location("_flowattn_links", HERE / "flowattn_np" / "links.py")
links = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(links)

setup(project_urls=links.project_urls(HERE / "mkdocs.yml"))
