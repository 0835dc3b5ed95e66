"""raysim: a Ray-based simulation cluster for sparse federated learning."""

__version__ = "0.1.0"
