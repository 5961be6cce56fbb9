"""tornado-imagegate: an OpenAI-compatible image-generation gateway built on Tornado."""

__version__ = "0.1.0"
