"""edgekit: from a trained PyTorch model to a verified, benchmarked edge model."""

__version__ = "0.1.0"
