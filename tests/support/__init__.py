"""Shared test helpers: real peers, synthetic data, process control."""
