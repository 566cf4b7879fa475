"""Perception: the point-cloud pipeline and the tool affordance encoder.

* ``perception.cloud``: crop, outlier removal, voxel grid, farthest-point sampling, tool/object split;
* ``perception.pointcloud2``: numpy <-> ``sensor_msgs/PointCloud2`` buffers (no ROS import);
* ``perception.labels``: exact affordance labels from the tweezer geometry;
* ``perception.synthetic``: synthetic labelled clouds rendered from the twin's geometry;
* ``perception.encoder``: the PointNet encoder and ``AffordanceEncoder.encode``;
* ``perception.training`` / ``perception.evaluation``: ``dexhier train|eval|bench affordance``.
"""
