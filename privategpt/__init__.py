"""PrivateGPT API v1.5 server."""

__version__ = "0.1.0"
