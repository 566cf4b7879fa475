"""Teleoperation: input devices, their mapping to arm and hand targets, and the recorder.

Modules: ``commands`` (what every device produces), ``devices`` (keyboard, spacemouse, gamepad,
handpose, replay), ``hand_topic`` (hand keypoints from ROS), ``retarget`` (hand keypoints to hand
joints), ``control`` (device command to joint targets through IK and hand synergies), ``bag`` (raw
topics to MCAP), ``episode_bag`` (a twin step as the graph's topics), ``session`` (the teleop loop
in the twin), ``scripted`` (the expert's motion as a device stream), ``cli``. Crash-safe recording
is `dexhier.episode_journal`.
"""
