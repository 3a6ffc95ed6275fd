"""The version of biodatacentric, in one place (the package root and ``base`` read it here)."""

__version__ = "0.1.0.dev0"
