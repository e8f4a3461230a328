"""The package version, in a module of its own so that any module can read it without importing
the public API (``hwq/__init__`` imports everything)."""

__version__ = "0.1.0"
