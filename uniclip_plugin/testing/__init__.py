"""Helpers for tests and CI smoke runs: generated shards and sets, a 2-process gloo group."""
