"""The teaching notebooks in the package: ``flowattn-np notebooks DIR`` copies them into DIR.

They ship in the wheel as ``flowattn_np/teaching/notebooks/NN_*.ipynb`` (in a source tree
that folder links to ``notebooks/``)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

NOTEBOOK_GLOB = "[0-9][0-9]_*.ipynb"


class CourseError(ValueError):
    """The notebooks cannot be copied: missing from the installation, or in the way of files."""


def notebook_paths():
    """The teaching notebooks, in course order (their names start with their number)."""
    here = Path(__file__).resolve().parent / "notebooks"
    paths = sorted(here.glob(NOTEBOOK_GLOB))
    if not paths:
        raise CourseError(f"the teaching notebooks are missing from the installation ({here})")
    return paths


def copy_notebooks(directory, overwrite=False):
    """Copy the teaching notebooks into ``directory`` (made if missing); returns the new paths.

    Files of the same name are left alone unless ``overwrite``: if any is in the way,
    nothing is copied. Each file is written to a temporary name and renamed into place,
    so none is left half-written.
    """
    directory = Path(directory)
    sources = notebook_paths()
    if directory.exists() and not directory.is_dir():
        raise CourseError(f"DIR: {directory} exists and is not a folder")
    targets = [directory / p.name for p in sources]
    if not overwrite:
        taken = [t.name for t in targets if t.exists()]
        if taken:
            raise CourseError(f"DIR: {directory} already holds {', '.join(taken)}; "
                              "--overwrite replaces them")
    directory.mkdir(parents=True, exist_ok=True)
    for source, target in zip(sources, targets):
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}-", dir=directory)
        os.close(fd)
        try:
            shutil.copyfile(source, tmp)
            os.replace(tmp, target)
        except BaseException:
            os.unlink(tmp)
            raise
    return targets
