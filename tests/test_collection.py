"""Expert collection writes readable episodes in the episode format."""

import numpy as np
import pytest

from dexhier import vocabulary as V
from dexhier.collection import CollectRequest, collect
from dexhier.episodes import EpisodeDataset

pytestmark = pytest.mark.sim


def test_collect_expert_episodes_round_trip(tmp_path):
    req = CollectRequest(task="tool_open_to", episodes=2, seed=5, out=tmp_path / "data", image_size=(32, 24))
    results = list(collect(req))
    assert [r.seed for r in results] == [5, 6]
    ds = EpisodeDataset(tmp_path / "data")
    assert ds.indices == [0, 1] and ds.incomplete == []
    assert ds.meta["action_names"] == list(V.ARM_JOINTS + V.HAND_JOINTS)
    for res, ep in zip(results, ds, strict=True):
        assert ep.success == res.success and ep.num_steps == res.steps
        assert ep.meta["seed"] == res.seed and ep.meta["task"] == "tool_open_to"
        assert ep[V.rgb_key("scene")].shape == (res.steps, 24, 32, 3)
        assert ep[V.depth_key("wrist")].dtype == np.float32
        t = ep[V.STEP_TIME]
        np.testing.assert_allclose(np.diff(t), 0.05, atol=1e-9)  # 20 Hz, sim clock
        assert t[0] == pytest.approx(0.0, abs=1e-9)
        lower, upper = np.array(ds.meta["action_lower"]), np.array(ds.meta["action_upper"])
        np.testing.assert_array_equal(ep[V.ACTION], np.clip(ep[V.ACTION_REQUEST], lower, upper))
        # The gap the expert was asked for is reached by the end.
        assert abs(ep[V.OBS_TOOL_TIP_GAP][-1, 0] - ep.meta["target_gap"]) < 0.0015


def test_collect_refuses_to_overwrite_an_episode(tmp_path):
    req = CollectRequest(task="tool_open_to", episodes=1, seed=0, out=tmp_path / "d", image_size=(16, 16))
    list(collect(req))
    with pytest.raises(FileExistsError):
        list(collect(req))
