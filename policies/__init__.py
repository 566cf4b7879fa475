"""Policies: the low-level score-diffusion policy and the high-level subgoal generator (not built yet)."""
