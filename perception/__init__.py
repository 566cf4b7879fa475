"""Perception: point-cloud pipeline and the tool affordance encoder.

Not built yet; see docs/ARCHITECTURE.md.
"""
