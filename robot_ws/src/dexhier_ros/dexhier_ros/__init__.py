"""dexhier ROS 2 nodes: thin adapters over the dexhier libraries (see docs/ARCHITECTURE.md)."""
