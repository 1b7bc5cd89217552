"""Only the optional C accelerator lives here; everything else is in pyproject.toml.

``optional=True``: without a C compiler (or Python headers) the build warns
and foundry-track installs as pure Python, with the same behaviour; the C
module only makes ``run.log``'s common call cheaper (docs/performance.md).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("foundry_track._speedups", ["foundry_track/_speedups.c"], optional=True)])
