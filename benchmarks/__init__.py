"""Benchmarks whose plans and records live in the repository; each is a package run with `python -m`."""
