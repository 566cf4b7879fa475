"""Robot models of the default cell, as MJCF text built in code (arm and hand)."""
