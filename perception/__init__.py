"""Perception: point-cloud pipeline and the tool affordance encoder (not built yet; see docs/ARCHITECTURE.md)."""
