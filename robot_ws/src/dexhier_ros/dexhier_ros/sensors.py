"""Camera frames and point clouds of the twin, rendered and published off the control tick.

A real cell's camera driver runs beside the robot driver, not inside its control loop. The twin
bridge does the same: each control step hands a snapshot of the simulation to this thread, which
renders (MuJoCo releases the GIL while it renders, so this overlaps the next control steps) and
publishes. When rendering falls behind, older snapshots are dropped, like frames of a camera; a
cloud a dropped snapshot was due for is rendered from the next one instead.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from dataclasses import dataclass

import mujoco
import numpy as np
from sensor_msgs.msg import CameraInfo, PointCloud2, PointField

from dexhier import vocabulary as V
from dexhier_ros import messages as M
from dexhier_ros.scheduling import leave_realtime
from perception.pointcloud2 import to_pointcloud2
from sim.camera import camera_intrinsics, camera_pose, depth_to_points
from sim.cell import SCENE_CAMERA, WRIST_CAMERA
from sim.cell_model import segmentation_table
from sim.rendering import CameraRenderer


@dataclass
class _Snapshot:
    model: mujoco.MjModel
    data: mujoco.MjData
    stamp: float
    camera: bool
    cloud: bool


class SensorPublisher(threading.Thread):
    """Publishes the scene camera (colour, depth, camera_info), the wrist camera's colour image
    and the ``points_camera`` cloud.

    Args:
        publishers: (rgb, depth, camera_info, points) ROS publishers.
        image_size: (width, height) of the scene and wrist colour images, px.
        points_camera, points_size: camera and (width, height) of the cloud.
        wrist_rgb: publisher of the wrist colour image (rendered with the scene image), or None.
    """

    def __init__(self, publishers: tuple, image_size: tuple[int, int], points_camera: str,
                 points_size: tuple[int, int], wrist_rgb=None) -> None:  # fmt: skip
        super().__init__(name="sensors", daemon=True)
        self.pub_rgb, self.pub_depth, self.pub_info, self.pub_points = publishers
        self.pub_wrist_rgb = wrist_rgb
        self.image_size, self.points_camera, self.points_size = image_size, points_camera, points_size
        self._queue: queue.Queue[_Snapshot | None] = queue.Queue(maxsize=1)
        self._model: mujoco.MjModel | None = None
        self.dropped = 0
        self._pool: list[mujoco.MjData] = []  # snapshot buffers free for reuse
        self._pool_model: mujoco.MjModel | None = None
        self._pool_lock = threading.Lock()
        self.error: str | None = None

    def submit(
        self, model: mujoco.MjModel, data: mujoco.MjData, stamp: float, camera: bool, cloud: bool
    ) -> None:
        """Queue a copy of ``data`` for rendering; replaces a snapshot not yet rendered.

        Runs on the control tick, so it copies into a recycled ``MjData`` (a copy costs microseconds,
        a new ``MjData`` most of a millisecond).
        """
        snap = self._take_buffer(model)
        mujoco.mj_copyData(snap, model, data)
        item = _Snapshot(model, snap, stamp, camera, cloud)
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            try:
                old = self._queue.get_nowait()
                # What the dropped snapshot was due for (a cloud comes every 2nd camera frame) is
                # rendered from the newer state instead of lost: under load the cloud keeps its rate.
                item.camera, item.cloud = item.camera or old.camera, item.cloud or old.cloud
                self._give_back(old)
                self.dropped += 1
            except queue.Empty:
                pass
            self._queue.put_nowait(item)

    def _take_buffer(self, model: mujoco.MjModel) -> mujoco.MjData:
        with self._pool_lock:
            if self._pool_model is not model:  # a reset built a new model: old buffers do not fit
                self._pool, self._pool_model = [], model
            return self._pool.pop() if self._pool else mujoco.MjData(model)

    def _give_back(self, snap: _Snapshot | None) -> None:
        if snap is None:
            return
        with self._pool_lock:
            if snap.model is self._pool_model:
                self._pool.append(snap.data)

    def stop(self) -> None:
        with contextlib.suppress(queue.Empty):
            self._give_back(self._queue.get_nowait())  # make room so the stop sentinel always fits
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        self.join(timeout=5.0)

    def _prepare(self, model: mujoco.MjModel) -> None:
        """Renderers (created in this thread, which owns their GL contexts) for a new model."""
        if self._model is model:
            return
        for r in getattr(self, "_renderers", ()):
            r.close()
        self._image_renderer = CameraRenderer(model, *self.image_size)
        self._points_renderer = CameraRenderer(model, *self.points_size)
        self._renderers = (self._image_renderer, self._points_renderer)
        self._intr = camera_intrinsics(model, SCENE_CAMERA, *self.image_size)
        self._points_intr = camera_intrinsics(model, self.points_camera, *self.points_size)
        self._seg = segmentation_table(model)
        self._model = model

    def run(self) -> None:
        try:
            # Rendering is bulk work: off the control tick's real-time priority (if it has one), and so
            # are the renderer's own threads, which inherit this thread's scheduler.
            leave_realtime()
            while (snap := self._queue.get()) is not None:
                self._prepare(snap.model)
                if snap.camera:
                    self._publish_images(snap)
                if snap.cloud:
                    self._publish_cloud(snap)
                self._give_back(snap)
        except Exception as err:  # a dead sensor thread must be visible, not silent
            self.error = f"{type(err).__name__}: {err}"
        finally:
            for r in getattr(self, "_renderers", ()):
                r.close()

    def _publish_images(self, snap: _Snapshot) -> None:
        r, frame = self._image_renderer, V.FRAME_SCENE_CAMERA
        rgb, depth = r.rgb(snap.data, SCENE_CAMERA), r.depth(snap.data, SCENE_CAMERA)
        self.pub_rgb.publish(M.image(rgb, snap.stamp, frame))
        self.pub_depth.publish(M.image(depth, snap.stamp, frame))
        info: CameraInfo = M.camera_info(self._intr, snap.stamp, frame)
        self.pub_info.publish(info)
        if self.pub_wrist_rgb is not None:  # the learned policy sees both cameras, as in its training data
            wrist = r.rgb(snap.data, WRIST_CAMERA)
            self.pub_wrist_rgb.publish(M.image(wrist, snap.stamp, V.FRAME_WRIST_CAMERA))

    def _publish_cloud(self, snap: _Snapshot) -> None:
        r, cam = self._points_renderer, self.points_camera
        ids = r.geom_ids(snap.data, cam)
        labels = np.where(ids >= 0, self._seg[np.maximum(ids, 0)], V.SEG_LABELS["background"]).astype(
            np.int32
        )
        rot, trans = camera_pose(snap.data, cam)
        points, labels = depth_to_points(r.depth(snap.data, cam), self._points_intr, rot, trans, labels)
        msg = to_pointcloud2(points, labels, msg_cls=PointCloud2, field_cls=PointField)
        msg.header.stamp, msg.header.frame_id = M.to_time(snap.stamp), V.FRAME_BASE
        self.pub_points.publish(msg)
