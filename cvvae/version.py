"""The package version, in one place (``cvvae.__version__`` and every sidecar read it)."""

__version__ = "0.1.0"
