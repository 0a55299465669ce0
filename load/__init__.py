"""Carebook's load runner: a small HTTP load generator, scenarios, baselines and the report."""
