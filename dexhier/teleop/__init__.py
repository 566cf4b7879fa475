"""Teleoperation: input devices, their mapping to arm and hand targets, and the recorder.

Modules: ``commands`` (what every device produces), ``devices`` (keyboard, spacemouse, gamepad,
handpose, replay), ``retarget`` (hand keypoints to hand joints), ``control`` (device command to
joint targets through IK and hand synergies), ``journal`` (crash-safe episode recording),
``bag`` (raw topics to MCAP), ``session`` (the teleop loop in the twin).
"""
