"""The point-cloud pipeline (perception/cloud.py) and PointCloud2 conversion (perception/pointcloud2.py)."""

import types
import warnings

import numpy as np
import pytest

from dexhier.vocabulary import SEG_LABELS
from perception import pointcloud2 as pc2
from perception.cloud import COUNT_KEYS, CloudConfig, ProcessedCloud, process_cloud

TOOL_BOX = ((-0.02, -0.02, 0.10), (0.02, 0.02, 0.20))
OBJECT_BOX = ((-0.02, -0.02, 0.00), (0.02, 0.02, 0.03))


def make_config(**overrides) -> CloudConfig:
    kwargs = {
        "crop_min": (-0.1, -0.1, -0.01),
        "crop_max": (0.1, 0.1, 0.3),
        "tool_box_min": TOOL_BOX[0],
        "tool_box_max": TOOL_BOX[1],
        "object_box_min": OBJECT_BOX[0],
        "object_box_max": OBJECT_BOX[1],
    }
    kwargs.update(overrides)
    return CloudConfig(**kwargs)


def uniform_box(rng, lo, hi, n) -> np.ndarray:
    return rng.uniform(lo, hi, size=(n, 3))


def scene(seed=0, n_tool=3000, n_object=800, n_rest=600):
    """Tool points in TOOL_BOX, object points in OBJECT_BOX, rest points elsewhere in the crop."""
    rng = np.random.default_rng(seed)
    tool = uniform_box(rng, *TOOL_BOX, n_tool)
    obj = uniform_box(rng, *OBJECT_BOX, n_object)
    rest = uniform_box(rng, (0.04, 0.04, 0.0), (0.09, 0.09, 0.25), n_rest)  # outside both boxes
    points = np.concatenate([tool, obj, rest]).astype(np.float32)
    labels = np.concatenate(
        [
            np.full(n_tool, SEG_LABELS["tool"]),
            np.full(n_object, SEG_LABELS["object"]),
            np.full(n_rest, SEG_LABELS["table"]),
        ]
    ).astype(np.int8)
    return points, labels


def inside(points, lo, hi, tol=1e-6) -> np.ndarray:
    return np.all((points >= np.asarray(lo) - tol) & (points <= np.asarray(hi) + tol), axis=1)


def sorted_rows(a: np.ndarray) -> np.ndarray:
    return a[np.lexsort(a.T[::-1])]


# --- pipeline ----------------------------------------------------------------------------------


@pytest.mark.parametrize("use_labels", [True, False])
def test_parts_and_fixed_counts(use_labels):
    points, labels = scene()
    cfg = make_config()
    res = process_cloud(points, labels if use_labels else None, config=cfg)
    assert res.valid and res.reason == ""
    assert res.object_valid
    assert res.tool.shape == (cfg.n_tool_points, 3) and res.tool.dtype == np.float32
    assert res.object.shape == (cfg.n_object_points, 3) and res.object.dtype == np.float32
    assert inside(res.tool, *TOOL_BOX).all()
    assert inside(res.object, *OBJECT_BOX).all()
    # FPS of a part larger than its size: no repeated points, spread over the whole box.
    assert len(np.unique(res.tool, axis=0)) == cfg.n_tool_points
    assert np.ptp(res.tool[:, 2]) > 0.09
    assert set(res.counts) == set(COUNT_KEYS)
    c = res.counts
    assert c["input"] == c["finite"] == c["cropped"] == len(points)
    # Stage order: crop -> voxel grid -> outlier removal (tool and object only) -> split.
    assert c["cropped"] >= c["voxel"] >= c["inliers"] == c["tool"] + c["object"] + c["rest"]
    assert c["tool"] > 1000 and c["object"] > 300 and c["rest"] > 100


def test_labels_take_precedence_over_boxes():
    # Label some points in the tool box as "object": with labels, the object part comes from them.
    points, labels = scene(n_object=0)
    labels = labels.copy()
    in_top = points[:, 2] > 0.18
    labels[in_top & (labels == SEG_LABELS["tool"])] = SEG_LABELS["object"]
    res = process_cloud(points, labels, config=make_config())
    assert res.valid and res.object_valid
    assert (res.object[:, 2] > 0.18 - 1e-6).all()
    assert (res.tool[:, 2] <= 0.18 + 1e-6).all()


def test_crop_keeps_only_points_inside():
    rng = np.random.default_rng(1)
    points, labels = scene()
    far = uniform_box(rng, (0.2, 0.2, 0.5), (1.0, 1.0, 1.0), 5000).astype(np.float32)
    res = process_cloud(
        np.concatenate([points, far]),
        np.concatenate([labels, np.full(len(far), SEG_LABELS["tool"], np.int8)]),
        config=make_config(),
    )
    assert res.valid
    assert res.counts["cropped"] == len(points)
    cfg = make_config()
    assert inside(res.tool, cfg.crop_min, cfg.crop_max).all()
    assert inside(res.tool, *TOOL_BOX).all()


def test_outliers_far_from_a_dense_cluster_are_removed():
    rng = np.random.default_rng(2)
    cluster = rng.normal((0.0, 0.0, 0.15), 0.003, size=(2000, 3))
    outliers = np.array([[0.018, 0.018, 0.11], [-0.018, 0.017, 0.19], [0.015, -0.019, 0.12]])
    points = np.concatenate([cluster, outliers]).astype(np.float32)
    cfg = make_config(voxel_size=0.0, n_tool_points=2000)
    res = process_cloud(points, config=cfg)
    assert res.valid
    assert res.counts["inliers"] < res.counts["cropped"]
    dist = np.linalg.norm(res.tool[:, None, :] - outliers[None].astype(np.float32), axis=2)
    assert dist.min() > 1e-3, "an outlier survived"
    # With outlier removal disabled they stay.
    res_off = process_cloud(
        points, config=make_config(voxel_size=0.0, outlier_neighbors=0, n_tool_points=2003)
    )
    assert res_off.counts["inliers"] == res_off.counts["cropped"] == len(points)
    dist = np.linalg.norm(res_off.tool[:, None, :] - outliers[None].astype(np.float32), axis=2)
    assert dist.min() < 1e-6


def test_voxel_size_reduces_the_count():
    points, labels = scene(n_tool=6000)
    fine = process_cloud(points, labels, config=make_config(voxel_size=0.0))
    coarse = process_cloud(points, labels, config=make_config(voxel_size=0.005))
    assert fine.counts["voxel"] == fine.counts["cropped"]
    assert coarse.counts["voxel"] < coarse.counts["cropped"]
    assert coarse.counts["tool"] < 0.5 * fine.counts["tool"]
    # Voxel centroids of tool points stay inside the tool box.
    assert inside(coarse.tool, *TOOL_BOX).all()


def rotation_z(angle):
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def assert_same_point_set(a: np.ndarray, b: np.ndarray, atol: float) -> None:
    """Every point of a has a point of b within atol and vice versa."""
    d = np.linalg.norm(a[:, None, :].astype(np.float64) - b[None, :, :], axis=2)
    assert d.min(axis=1).max() < atol and d.min(axis=0).max() < atol


def test_transform_is_applied():
    points, labels = scene(n_tool=600, n_object=100, n_rest=300)
    T = np.eye(4)
    T[:3, :3] = rotation_z(0.7) @ np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    T[:3, 3] = (0.3, -0.2, 0.5)
    # Express the scene in a "camera" frame: working = T @ camera, so camera = T^-1 @ working.
    Tinv = np.linalg.inv(T)
    cam = (points.astype(np.float64) @ Tinv[:3, :3].T + Tinv[:3, 3]).astype(np.float32)
    ours = (cam.astype(np.float64) @ T[:3, :3].T + T[:3, 3]).astype(np.float32)
    # No voxels and no outlier removal, and output sizes equal to the part sizes: each part comes
    # back whole, so it can be compared with transforming the points ourselves.
    cfg = make_config(voxel_size=0.0, outlier_neighbors=0, n_tool_points=600, n_object_points=100)
    res = process_cloud(cam, labels, T, config=cfg)
    assert res.valid and res.object_valid
    assert_same_point_set(res.tool, ours[labels == SEG_LABELS["tool"]], atol=1e-6)
    assert_same_point_set(res.object, ours[labels == SEG_LABELS["object"]], atol=1e-6)
    # The full pipeline agrees with the pre-transformed cloud up to float rounding.
    full = process_cloud(cam, labels, T, config=make_config())
    ref = process_cloud(ours, labels, config=make_config())
    assert full.valid and ref.valid
    assert full.counts["cropped"] == ref.counts["cropped"] == len(points)
    assert inside(full.tool, *TOOL_BOX, tol=1e-5).all()
    # Without the transform the camera-frame points miss the crop box.
    assert not process_cloud(cam, labels, config=cfg).valid


@pytest.mark.parametrize("use_labels", [True, False])
def test_output_does_not_depend_on_input_order(use_labels):
    points, labels = scene(seed=3)
    perm = np.random.default_rng(4).permutation(len(points))
    cfg = make_config()
    a = process_cloud(points, labels if use_labels else None, config=cfg)
    b = process_cloud(points[perm], labels[perm] if use_labels else None, config=cfg)
    assert a.valid and b.valid
    assert a.counts == b.counts
    np.testing.assert_array_equal(sorted_rows(a.tool), sorted_rows(b.tool))
    np.testing.assert_array_equal(sorted_rows(a.object), sorted_rows(b.object))
    # Stronger than the set: the canonical sort makes the arrays identical.
    np.testing.assert_array_equal(a.tool, b.tool)
    # And a repeated call gives the same result.
    np.testing.assert_array_equal(
        process_cloud(points, config=cfg).tool, process_cloud(points, config=cfg).tool
    )


def test_small_part_is_filled_by_cycling_in_fps_order():
    points, labels = scene(n_tool=100, n_object=20)
    cfg = make_config(voxel_size=0.0, outlier_neighbors=0)
    res = process_cloud(points, labels, config=cfg)
    assert res.valid and res.object_valid
    assert res.tool.shape == (cfg.n_tool_points, 3)
    # All 100 tool points are used and the sequence repeats with period 100.
    assert len(np.unique(res.tool, axis=0)) == 100
    np.testing.assert_array_equal(res.tool[100:200], res.tool[:100])
    np.testing.assert_array_equal(sorted_rows(res.tool[:100]), sorted_rows(points[:100]))
    assert res.object.shape == (cfg.n_object_points, 3)
    np.testing.assert_array_equal(res.object[20:40], res.object[:20])


def test_missing_object_is_valid_but_flagged():
    points, labels = scene(n_object=5)
    cfg = make_config(voxel_size=0.0, outlier_neighbors=0)
    res = process_cloud(points, labels, config=cfg)
    assert res.valid and res.reason == ""
    assert not res.object_valid
    assert res.object.shape == (0, 3)
    assert res.counts["object"] == 5
    assert res.tool.shape == (cfg.n_tool_points, 3)


def _bad_inputs():
    points, labels = scene()
    nan_T = np.eye(4)
    nan_T[0, 3] = np.nan
    few_tool_points, few_tool_labels = scene(n_tool=5)
    return {
        "empty": (np.zeros((0, 3), np.float32), None, None, "empty"),
        "all nan": (np.full((100, 3), np.nan, np.float32), None, None, "non-finite"),
        "all inf": (np.full((100, 3), np.inf), None, None, "non-finite"),
        "int dtype": (np.ones((10, 3), np.int64), None, None, "int64"),
        "shape (N, 2)": (np.ones((10, 2), np.float32), None, None, "(10, 2)"),
        "1-d": (np.ones(30, np.float32), None, None, "shape"),
        "list": ([[0.0, 0.0, 0.0]], None, None, "numpy array"),
        "labels length": (points, labels[:-1], None, "labels"),
        "float labels": (points, labels.astype(np.float32), None, "labels"),
        "non-finite transform": (points, labels, nan_T, "transform"),
        "transform shape": (points, labels, np.eye(3), "transform"),
        "transform last row": (points, labels, np.ones((4, 4)), "transform"),
        "nothing in the crop": (points + 5.0, labels, None, "crop"),
        "too few tool points": (few_tool_points, few_tool_labels, None, "too few tool points"),
    }


@pytest.mark.parametrize("case", list(_bad_inputs()))
def test_bad_input_is_invalid_with_a_reason(case):
    points, labels, transform, expected = _bad_inputs()[case]
    cfg = make_config(voxel_size=0.0, outlier_neighbors=0)
    res = process_cloud(points, labels, transform, config=cfg)
    assert isinstance(res, ProcessedCloud)
    assert not res.valid and not res.object_valid
    assert expected in res.reason, res.reason
    assert res.tool.shape == (0, 3) and res.object.shape == (0, 3)
    assert set(res.counts) == set(COUNT_KEYS)


def test_too_few_tool_points_reason_has_the_numbers():
    points, labels = scene(n_tool=5)
    res = process_cloud(points, labels, config=make_config(voxel_size=0.0, outlier_neighbors=0))
    assert not res.valid
    assert "5 < 32" in res.reason


def test_non_finite_rows_are_dropped_quietly():
    points, labels = scene()
    points = points.copy()
    points[::7] = np.nan
    points[1::7, 0] = np.inf
    T = np.eye(4)
    T[:3, :3] = rotation_z(0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning from inf * 0 in the transform
        res = process_cloud(points, labels, T, config=make_config(crop_min=(-0.2, -0.2, -0.01)))
    assert res.valid
    assert res.counts["finite"] == len(points) - len(points[::7]) - len(points[1::7])
    assert np.isfinite(res.tool).all() and np.isfinite(res.object).all()


def test_float64_and_big_endian_points_are_accepted():
    points, labels = scene()
    cfg = make_config()
    ref = process_cloud(points, labels, config=cfg)
    for p in (points.astype(np.float64), points.astype(">f4")):
        res = process_cloud(p, labels.astype(np.int64), config=cfg)
        assert res.valid
        np.testing.assert_array_equal(res.tool, ref.tool)


def test_config_validation_and_type():
    with pytest.raises(ValueError, match="crop_min must be < crop_max"):
        make_config(crop_min=(0.0, 0.0, 0.0), crop_max=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="voxel_size"):
        make_config(voxel_size=-0.001)
    with pytest.raises(ValueError, match="n_tool_points"):
        make_config(n_tool_points=0)
    with pytest.raises(ValueError, match="outlier_neighbors"):
        make_config(outlier_neighbors=-1)
    with pytest.raises(ValueError, match="tool_box_min"):
        make_config(tool_box_min=(0.0, 0.0))
    points, labels = scene()
    with pytest.raises(TypeError, match="CloudConfig"):
        process_cloud(points, labels, config={"crop_min": (0, 0, 0)})


# --- PointCloud2 -------------------------------------------------------------------------------


def test_numpy_fields_numpy_round_trip_is_exact():
    rng = np.random.default_rng(5)
    points = rng.normal(size=(257, 3)).astype(np.float32)
    points[3] = np.nan
    labels = rng.integers(0, 6, size=257).astype(np.int8)
    fields = pc2.points_to_cloud_fields(points, labels)
    assert fields["height"] == 1 and fields["width"] == 257
    assert fields["point_step"] == 16 and fields["row_step"] == 16 * 257
    assert not fields["is_dense"] and not fields["is_bigendian"]
    assert [f["name"] for f in fields["fields"]] == ["x", "y", "z", "label"]
    assert isinstance(fields["data"], bytes) and len(fields["data"]) == 16 * 257
    back, back_labels = pc2.pointcloud2_to_points(fields)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, points)  # NaN rows compare equal in assert_array_equal
    np.testing.assert_array_equal(back_labels, labels)
    # Without labels; and via a SimpleNamespace message.
    msg = pc2.to_pointcloud2(points[4:])
    assert isinstance(msg, types.SimpleNamespace) and msg.is_dense and msg.point_step == 12
    back, back_labels = pc2.pointcloud2_to_points(msg)
    np.testing.assert_array_equal(back, points[4:])
    assert back_labels is None


def test_big_endian_float64_organized_cloud_with_padding():
    rng = np.random.default_rng(6)
    height, width = 3, 5
    xyz = rng.normal(size=(height, width, 3))
    xyz[1, 2] = np.nan
    labels = rng.integers(0, 60000, size=(height, width)).astype(np.uint16)
    # Layout per point (point_step 40): label at 0 (u2), padding, x at 8, y at 16, z at 24, 8 pad.
    point_step, row_step = 40, 40 * width + 24
    data = bytearray(b"\xab" * (height * row_step))
    for r in range(height):
        for c in range(width):
            base = r * row_step + c * point_step
            data[base : base + 2] = np.array(labels[r, c], dtype=">u2").tobytes()
            for i, off in enumerate((8, 16, 24)):
                data[base + off : base + off + 8] = np.array(xyz[r, c, i], dtype=">f8").tobytes()
    field = types.SimpleNamespace
    msg = types.SimpleNamespace(
        height=height,
        width=width,
        fields=[
            field(name="label", offset=0, datatype=pc2.UINT16, count=1),
            field(name="x", offset=8, datatype=pc2.FLOAT64, count=1),
            field(name="y", offset=16, datatype=pc2.FLOAT64, count=1),
            field(name="z", offset=24, datatype=pc2.FLOAT64, count=1),
        ],
        is_bigendian=True,
        point_step=point_step,
        row_step=row_step,
        data=bytes(data),
        is_dense=False,
    )
    points, back_labels = pc2.pointcloud2_to_points(msg)
    assert points.dtype == np.float64 and points.shape == (height * width, 3)
    np.testing.assert_array_equal(points, xyz.reshape(-1, 3))
    assert back_labels.dtype == np.uint16
    np.testing.assert_array_equal(back_labels, labels.reshape(-1))


def test_real_sensor_msgs_round_trip():
    msgs = pytest.importorskip("sensor_msgs.msg")
    std_msgs = pytest.importorskip("std_msgs.msg")
    rng = np.random.default_rng(7)
    points = rng.normal(size=(1000, 3)).astype(np.float32)
    labels = rng.integers(0, 6, size=1000).astype(np.int8)
    header = std_msgs.Header(frame_id="base_link")
    msg = pc2.to_pointcloud2(
        points, labels, msg_cls=msgs.PointCloud2, field_cls=msgs.PointField, header=header
    )
    assert isinstance(msg, msgs.PointCloud2)
    assert msg.header.frame_id == "base_link"
    assert msg.is_dense and msg.width == 1000 and msg.height == 1
    assert [f.datatype for f in msg.fields] == [
        msgs.PointField.FLOAT32,
        msgs.PointField.FLOAT32,
        msgs.PointField.FLOAT32,
        msgs.PointField.INT32,
    ]
    back, back_labels = pc2.pointcloud2_to_points(msg)
    np.testing.assert_array_equal(back, points)
    np.testing.assert_array_equal(back_labels, labels)
    # The datatype constants agree with sensor_msgs.
    for name in ("INT8", "UINT8", "INT16", "UINT16", "INT32", "UINT32", "FLOAT32", "FLOAT64"):
        assert getattr(pc2, name) == getattr(msgs.PointField, name)


def test_pointcloud2_feeds_the_pipeline():
    points, labels = scene()
    back, back_labels = pc2.pointcloud2_to_points(pc2.to_pointcloud2(points, labels))
    cfg = make_config()
    a = process_cloud(points, labels, config=cfg)
    b = process_cloud(back, back_labels, config=cfg)
    np.testing.assert_array_equal(a.tool, b.tool)


def test_empty_pointcloud2():
    points, labels = pc2.pointcloud2_to_points(pc2.to_pointcloud2(np.zeros((0, 3), np.float32)))
    assert points.shape == (0, 3) and labels is None


def _good_msg(**changes):
    msg = pc2.to_pointcloud2(np.zeros((4, 3), np.float32), np.zeros(4, np.int32))
    for key, value in changes.items():
        setattr(msg, key, value)
    return msg


def _field(name, offset, datatype, count=1):
    return types.SimpleNamespace(name=name, offset=offset, datatype=datatype, count=count)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"fields": [_field("x", 0, pc2.FLOAT32), _field("y", 4, pc2.FLOAT32)]}, "no field z"),
        ({"data": b"\x00" * 63}, "data has 63 bytes"),
        ({"row_step": 32}, "row_step"),
        (
            {"fields": [_field("x", 0, pc2.FLOAT32), _field("y", 4, pc2.FLOAT32), _field("z", 8, pc2.INT32)]},
            "datatype",
        ),
        (
            {"fields": [_field("x", 0, pc2.FLOAT32), _field("y", 4, pc2.FLOAT32), _field("z", 8, 42)]},
            "datatype",
        ),
        (
            {
                "fields": [
                    _field("x", 0, pc2.FLOAT32, 3),
                    _field("y", 4, pc2.FLOAT32),
                    _field("z", 8, pc2.FLOAT32),
                ]
            },
            "count",
        ),
        (
            {
                "fields": [
                    _field("x", 0, pc2.FLOAT32),
                    _field("y", 4, pc2.FLOAT32),
                    _field("z", 14, pc2.FLOAT32),
                ]
            },
            "does not fit",
        ),
        (
            {
                "fields": [
                    _field("x", 0, pc2.FLOAT32),
                    _field("y", 4, pc2.FLOAT32),
                    _field("z", 8, pc2.FLOAT32),
                    _field("label", 12, pc2.FLOAT32),
                ]
            },
            "integer",
        ),
    ],
)
def test_malformed_messages_raise(changes, match):
    with pytest.raises(ValueError, match=match):
        pc2.pointcloud2_to_points(_good_msg(**changes))


def test_malformed_message_missing_attribute_raises():
    msg = _good_msg()
    del msg.data
    with pytest.raises(ValueError, match="data"):
        pc2.pointcloud2_to_points(msg)


def test_points_to_cloud_fields_rejects_bad_arrays():
    with pytest.raises(ValueError, match="shape"):
        pc2.points_to_cloud_fields(np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match="labels"):
        pc2.points_to_cloud_fields(np.zeros((3, 3), np.float32), np.zeros(2, np.int32))
    with pytest.raises(ValueError, match="msg_cls"):
        pc2.to_pointcloud2(np.zeros((3, 3), np.float32), msg_cls=object)
