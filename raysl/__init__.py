"""raysl: tune and scale self-supervised learning on Ray."""

__version__ = "0.1.0"
