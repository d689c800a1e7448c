"""The pre-registered GLUE benchmark (`python -m benchmarks.glue`): see plan.toml and __main__.py."""
