"""Packaging for flowattn_np (import name) / flowattn-np (distribution name)."""

import re
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "flowattn_np" / "__init__.py").read_text()).group(1)

PLOT = ["matplotlib>=3.5"]
NOTEBOOKS = ["jupyter>=1.0", "nbclient>=0.7", "nbformat>=5.7", "ipykernel>=6.0"] + PLOT
TEST = ["pytest>=7.0", "hypothesis>=6.0", "nbclient>=0.7", "nbformat>=5.7", "ipykernel>=6.0",
        "build>=1.0", "scipy>=1.8"] + PLOT
BENCH = ["torch>=2.0"]

setup(
    name="flowattn-np",
    version=VERSION,
    description=(
        "Transformers derived as gradient flows of multinomial regression: "
        "cross- and self-attention, split-flow blocks and hand-written backward passes in NumPy"
    ),
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    packages=["flowattn_np"],
    python_requires=">=3.10",
    install_requires=["numpy>=1.22", "tqdm>=4.60"],
    extras_require={
        # CuPy ships per-CUDA wheels; plain `cupy` builds from source. See docs/gpu.md.
        "gpu": ["cupy-cuda12x>=12.0"],
        "plot": PLOT,
        "notebooks": NOTEBOOKS,
        "test": TEST,
        "bench": BENCH,
        "all": sorted(set(PLOT + NOTEBOOKS + TEST)),
    },
    entry_points={"console_scripts": ["flowattn-np = flowattn_np.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Intended Audience :: Education",
        "Intended Audience :: Science/Research",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
