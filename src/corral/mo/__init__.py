"""The Maintenance Orchestrator (MO): domain types, the gRPC client and a simulator.

Protobuf stays inside this package: the rest of Corral speaks the domain
types of :mod:`corral.mo.types`.
"""
