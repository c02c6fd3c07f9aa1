"""Hearth: a local-first, private chatbot over your own documents.

The repository's root is this package (pyproject maps it): ``hearth.config``, ``hearth.api``,
``hearth.model``, ``hearth.ingest`` ... Nothing is built at import time.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hearth")
except PackageNotFoundError:  # a checkout that was never installed
    __version__ = "0+unknown"
