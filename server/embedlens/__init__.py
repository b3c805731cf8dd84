"""embedlens: an embedding space and the residual stream of a transformer, served over gRPC."""

__version__ = "0.1.0"
