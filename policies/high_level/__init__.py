"""The high level: the subgoal-image generator (built); the subgoal filter and the hierarchical
controller are planned (issue 5)."""

from policies.high_level.generator import GeneratorConfig, SubgoalGenerator

__all__ = ["GeneratorConfig", "SubgoalGenerator"]
