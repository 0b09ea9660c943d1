"""Benchmarks of metrictransfer: run each from the repository root as ``.venv/bin/python -m benchmarks.NAME``;
benchmarks/common.py holds their harness (arguments, environment record, table and JSON writing)."""
