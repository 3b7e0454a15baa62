"""The course material in the package, and the website where it is published.

* The teaching notebooks ship in the wheel as ``flowattn_np/notebooks/NN_*.ipynb`` (in a
  source tree that folder links to ``notebooks/``); ``flowattn-np notebooks DIR`` copies
  them into DIR.
* The site's address is written once, as ``site_url`` (and ``repo_url``) in mkdocs.yml.
  setup.py copies them into the distribution's metadata (Project-URL ``Documentation`` and
  ``Source``), so an installed package finds the address there; a source tree reads
  mkdocs.yml itself. Standard library only: setup.py loads this file before anything is
  installed.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

NOTEBOOK_GLOB = "[0-9][0-9]_*.ipynb"

DISTRIBUTION = "flowattn-np"
# a top-level `site_url: ...` / `repo_url: ...` line (a commented-out one does not count)
_URL_LINE = re.compile(r"^(site_url|repo_url):[ \t]*['\"]?([^'\"\s#]+)", re.M)


def mkdocs_urls(path):
    """``{"site_url": ..., "repo_url": ...}`` as set in the mkdocs.yml at ``path`` (unset keys absent)."""
    return dict(_URL_LINE.findall(Path(path).read_text(encoding="utf-8")))


def project_urls(mkdocs_yml):
    """The distribution's Project-URLs: Documentation from site_url, Source from repo_url."""
    urls = mkdocs_urls(mkdocs_yml)
    names = {"site_url": "Documentation", "repo_url": "Source"}
    return {names[key]: value for key, value in urls.items()}


@functools.lru_cache(maxsize=None)
def site_url():
    """The published site's address ending in ``/``, or None where none is set."""
    checkout = Path(__file__).resolve().parents[1] / "mkdocs.yml"
    if checkout.is_file():  # a source tree (or an editable install of one)
        url = mkdocs_urls(checkout).get("site_url")
    else:
        from importlib.metadata import PackageNotFoundError, metadata

        try:
            entries = metadata(DISTRIBUTION).get_all("Project-URL") or []
        except PackageNotFoundError:
            entries = []
        pairs = [e.split(",", 1) for e in entries if "," in e]
        url = next((u.strip() for name, u in pairs if name.strip() == "Documentation"), None)
    return url.rstrip("/") + "/" if url else None


def page_url(page):
    """Where a reader finds the docs page ``page`` (``"gpu"`` for docs/gpu.md): its address on
    the published site (where none is set, the page's title on the course website)."""
    base = site_url()
    return f"{base}{page}.html" if base else f"the '{page}' page of the course website"
