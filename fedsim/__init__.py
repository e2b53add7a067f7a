"""Federated learning simulator for FetchSGD and its baselines."""

__all__ = []
