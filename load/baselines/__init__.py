"""Baselines measured in the same run as Carebook: the floor of the stack (and, later, the
audits' anti-patterns)."""
