"""`tether collect` end to end: the graph records LeRobot v3 episodes with labelled takeovers."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq

from tether.cli import main
from tether.teleop.dataset import validate


def test_replay_takeover_is_recorded_and_labelled(tmp_path: Path) -> None:
    out = tmp_path / "dataset"
    code = main(["collect", "--device", "replay", "--takeover-after", "1.5", "--episodes", "2", "--mcap-images",
                 "--camera-size", "64", "48", "--out", str(out)])
    assert code == 0
    assert validate(out) == []
    data = pq.read_table(next(out.glob("data/chunk-*/file-*.parquet"))).to_pydict()
    episode = np.array(data["episode_index"])
    assert set(episode.tolist()) == {0, 1}
    for e in (0, 1):
        m = episode == e
        labels = np.array(data["intervention"])[m]
        first = int(np.argmax(labels))
        assert 0 < first and labels[first:].all()  # autonomous, then the human keeps control
        assert set(np.array(data["control_source"])[m][:first]) == {"expert"}
        assert set(np.array(data["phase"])[m][first:]) == {"correction"}
        capture = np.array(data["capture_time_ns"])[m]
        assert np.all(np.diff(capture) > 0)
    # The raw log beside the dataset: one rosbag2 MCAP bag per episode, with every recorded topic.
    for e in (0, 1):
        meta = (tmp_path / "dataset_mcap" / f"episode_{e:06d}" / "metadata.yaml").read_text()
        for topic in ("/joint_states", "/camera/front/image_raw", "/tether/intervention", "joint_trajectory"):
            assert topic in meta
    # A plain PyAV reader sees as many frames per camera as the table has rows.
    for video in out.glob("videos/*/chunk-*/file-*.mp4"):
        with av.open(str(video)) as container:
            assert sum(1 for _ in container.decode(video=0)) == len(episode)
