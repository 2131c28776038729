"""Packaging shim for Dataflow's ``--setup_file``: workers install this package and its pins.

Beam runs ``python setup.py sdist`` and installs the result on each worker. All metadata and the
pinned dependency list live in pyproject.toml (one manifest, no drift); setuptools reads them from
there, so this file only has to exist.
"""

import setuptools

setuptools.setup()
