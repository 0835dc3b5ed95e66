"""Federations (dataset + partition), participation models (docs/data.md)."""

from raysim.data.federation import ClientData, Federation, build_federation, stack_clients

__all__ = ["ClientData", "Federation", "build_federation", "stack_clients"]
