"""Benchmark grid, result tables and reports. The only package that knows every defense."""
