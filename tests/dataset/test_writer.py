"""DatasetWriter: LeRobot v3.0 layout, plain-reader round trip, typed input errors, validate()."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tether.errors import (
    DatasetError,
    DatasetFrameError,
    DatasetLayoutError,
    EpisodeStateError,
    TetherError,
    UnknownCameraError,
)
from tether.dataset import DatasetSpec, DatasetWriter, info, validate
from tether.dataset.layout import TETHER_COLUMNS, MissingEpisodeColumnError

FPS = 10
SIZE = (48, 64)  # height, width


@pytest.fixture(scope="module")
def spec(so101) -> DatasetSpec:
    return DatasetSpec.from_profile(so101, fps=FPS, image_size=SIZE)


def shade(ep: int, i: int, cam: int) -> int:
    """A flat grey level that identifies (episode, frame, camera) after lossy coding."""
    return (ep * 50 + i * 7 + cam * 90) % 200 + 20


class Clock:
    def __init__(self) -> None:
        self.ns = 1_700_000_000_000_000_000

    def tick(self) -> int:
        self.ns += 100_000_000 + 3_000_000  # real capture times are near, not on, the grid
        return self.ns


def frame(spec: DatasetSpec, ep: int, i: int) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    state = np.linspace(-1, 1, len(spec.joint_names)) + ep + i / 100
    images = {cam: np.full((*SIZE, 3), shade(ep, i, k), np.uint8) for k, cam in enumerate(spec.cameras)}
    return state, state * 0.5, images


def record(writer: DatasetWriter, episodes: int, frames: int = 20, clock: Clock | None = None) -> None:
    clock = clock or Clock()
    for e in range(episodes):
        ep = writer.num_episodes
        writer.begin_episode("pick the cube" if e % 2 == 0 else "place the cube")
        for i in range(frames + e):
            state, action, images = frame(writer.spec, ep, i)
            human = 5 <= i < 9
            writer.add_frame(state, action, images, clock.tick(), human, "human" if human else "policy", "correction" if human else "autonomous")
        writer.end_episode(success=e != 1)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, spec) -> Path:
    root = tmp_path_factory.mktemp("pristine") / "ds"
    with DatasetWriter.create(root, spec) as writer:
        record(writer, 3)
    return root


@pytest.fixture
def dataset(pristine, tmp_path) -> Path:
    """A private copy of the 3-episode dataset, free to corrupt."""
    return Path(shutil.copytree(pristine, tmp_path / "ds"))


def read_plain(root: Path):
    """Iterate (episode row, data rows, {camera key: decoded RGB frames}) with pyarrow and PyAV only."""
    info_json = json.loads((root / "meta/info.json").read_text())
    keys = [k for k, ft in info_json["features"].items() if ft["dtype"] == "video"]
    for ep_file in sorted((root / "meta/episodes").glob("*/*.parquet")):
        for ep in pq.read_table(ep_file).to_pylist():
            data_file = root / info_json["data_path"].format(chunk_index=ep["data/chunk_index"], file_index=ep["data/file_index"])
            table = pq.read_table(data_file)
            rows = table.filter(pc.equal(table.column("episode_index"), ep["episode_index"]))
            videos = {}
            for key in keys:
                path = root / info_json["video_path"].format(
                    video_key=key, chunk_index=ep[f"videos/{key}/chunk_index"], file_index=ep[f"videos/{key}/file_index"]
                )
                with av.open(str(path)) as c:
                    s = c.streams.video[0]
                    videos[key] = [
                        f.to_ndarray(format="rgb24")
                        for f in c.decode(s)
                        if ep[f"videos/{key}/from_timestamp"] - 1e-4 <= f.pts * s.time_base < ep[f"videos/{key}/to_timestamp"] - 1e-4
                    ]
            yield ep, rows, videos


def test_three_episodes_are_valid_and_read_back_with_plain_pyarrow_and_pyav(pristine, spec):
    assert validate(pristine) == []
    seen = 0
    for ep, rows, videos in read_plain(pristine):
        e = ep["episode_index"]
        assert rows.num_rows == ep["length"] == 20 + e
        assert rows.column("frame_index").to_pylist() == list(range(ep["length"]))
        assert rows.column("index").to_pylist() == list(range(seen, seen + ep["length"]))
        np.testing.assert_allclose(rows.column("timestamp").to_numpy(), np.arange(ep["length"]) / FPS, atol=1e-6)
        states = np.stack(rows.column("observation.state").to_numpy(zero_copy_only=False))
        np.testing.assert_allclose(states[3], frame(spec, e, 3)[0], rtol=1e-6)
        for k, (key, frames) in enumerate(videos.items()):
            assert len(frames) == ep["length"], key  # decoded frames == data rows, per camera, per episode
            decoded = [int(round(f.mean())) for f in frames]
            assert all(abs(d - shade(e, i, k)) <= 4 for i, d in enumerate(decoded)), (key, decoded)
        assert rows.column("control_source").to_pylist()[5:9] == ["human"] * 4
        seen += ep["length"]
    assert seen == 63


def test_metadata_follows_lerobot_v3(pristine):
    meta = json.loads((pristine / "meta/info.json").read_text())
    assert meta["codebase_version"] == "v3.0"
    assert (meta["total_episodes"], meta["total_frames"], meta["total_tasks"]) == (3, 63, 2)
    assert meta["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert meta["features"]["observation.images.front"]["shape"] == [48, 64, 3]
    assert meta["features"]["capture_time_ns"] == {"dtype": "int64", "shape": [1], "names": None}
    tasks = pq.read_table(pristine / "meta/tasks.parquet")
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["task"]  # LeRobot reads it with pandas
    episodes = pq.read_table(pristine / "meta/episodes/chunk-000/file-000.parquet")
    assert episodes.column("success").to_pylist() == [True, False, True]
    assert episodes.column("intervention_frames").to_pylist() == [4, 4, 4]
    assert np.array(episodes.column("stats/observation.images.wrist/mean")[0].as_py()).shape == (3, 1, 1)
    stats = json.loads((pristine / "meta/stats.json").read_text())
    assert stats["index"]["max"] == [62] and stats["index"]["count"] == [63]


def test_open_existing_appends_with_continuing_indices(dataset):
    with DatasetWriter.open_existing(dataset) as writer:
        assert writer.recovery.clean
        record(writer, 1, frames=12)
    assert validate(dataset) == []
    *_, (ep, rows, _) = read_plain(dataset)
    assert ep["episode_index"] == 3 and rows.column("index").to_pylist()[0] == 63
    assert ep["tasks"] == ["pick the cube"]
    assert pq.read_table(dataset / "meta/tasks.parquet").num_rows == 2


def test_info_summarises(pristine):
    text = info(pristine)
    assert "episodes: 3" in text and "frames: 63 at 10 fps = 6.3 s" in text
    assert "front 64x48" in text and "success: 2/3" in text and "interventions: 12 frames" in text


def test_video_files_roll_over_at_their_size_limit(tmp_path, so101):
    """Noise does not compress: two episodes overflow a 1 MB video file, the second starts file-001."""
    spec = DatasetSpec.from_profile(so101, fps=FPS, image_size=(240, 320), cameras=["front"])
    rng = np.random.default_rng(0)
    with DatasetWriter.create(tmp_path / "ds", spec, video_files_size_in_mb=1) as writer:
        clock = Clock()
        for _ in range(2):
            writer.begin_episode("noise")
            for _ in range(15):
                writer.add_frame(np.zeros(6), np.zeros(6), {"front": rng.integers(0, 256, (240, 320, 3), np.uint8)}, clock.tick())
            writer.end_episode()
    rows = pq.read_table(tmp_path / "ds/meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [r["videos/observation.images.front/file_index"] for r in rows] == [0, 1]
    assert rows[1]["videos/observation.images.front/from_timestamp"] == 0.0
    assert validate(tmp_path / "ds") == []


# ---------------------------------------------------------------- bad inputs


def good(spec: DatasetSpec, i: int = 0) -> dict:
    state, action, images = frame(spec, 0, i)
    return dict(state=state, action=action, images=images, capture_time_ns=10**9 * (i + 1), intervention=False, control_source="policy", phase="autonomous")


BAD = {
    "state too short": (lambda s: {"state": np.zeros(5)}, DatasetFrameError, "shape (5,)"),
    "NaN action": (lambda s: {"action": np.array([0, 0, np.nan, 0, 0, 0])}, DatasetFrameError, "elbow_flex"),
    "unknown camera": (lambda s: {"images": {**good(s)["images"], "top": np.zeros((*SIZE, 3), np.uint8)}}, UnknownCameraError, "'top'"),
    "missing camera": (lambda s: {"images": {"front": good(s)["images"]["front"]}}, DatasetFrameError, "wrist"),
    "wrong image size": (lambda s: {"images": {**good(s)["images"], "front": np.zeros((480, 640, 3), np.uint8)}}, DatasetFrameError, "(48, 64, 3)"),
    "float image": (lambda s: {"images": {**good(s)["images"], "wrist": np.zeros((*SIZE, 3), np.float32)}}, DatasetFrameError, "float32"),
    "unknown source": (lambda s: {"control_source": "joystick"}, DatasetFrameError, "policy, human, expert"),
    "unknown phase": (lambda s: {"phase": "idle"}, DatasetFrameError, "autonomous, correction, recovery"),
    "time goes back": (lambda s: {"capture_time_ns": 1}, DatasetFrameError, "after the previous"),
    "intervention not bool": (lambda s: {"intervention": "yes"}, DatasetFrameError, "True or False"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_frame_raises_a_typed_error_and_loses_nothing(tmp_path, spec, case):
    change, error, text = BAD[case]
    with DatasetWriter.create(tmp_path / "ds", spec, segment_seconds=0.5) as writer:
        record(writer, 1, frames=10)  # one committed episode
        writer.begin_episode("pick the cube")
        for i in range(7):  # across a segment flush
            writer.add_frame(**good(spec, i))
        with pytest.raises(error, match=text.replace("(", r"\(").replace(")", r"\)")) as caught:
            writer.add_frame(**{**good(spec, 7), **change(spec)})
        assert isinstance(caught.value, TetherError)
        writer.add_frame(**good(spec, 7))
        assert writer.end_episode(success=True) == 1
    assert validate(tmp_path / "ds") == []
    lengths = [ep["length"] for ep, _, _ in read_plain(tmp_path / "ds")]
    assert lengths == [10, 8]


def test_calls_out_of_order_raise(tmp_path, spec):
    writer = DatasetWriter.create(tmp_path / "ds", spec)
    with pytest.raises(EpisodeStateError, match="begin_episode"):
        writer.add_frame(**good(spec))
    writer.begin_episode("pick the cube")
    with pytest.raises(EpisodeStateError, match="empty episode"):
        writer.end_episode()
    with pytest.raises(EpisodeStateError, match="end_episode or discard_episode"):
        writer.begin_episode("again")
    with pytest.raises(DatasetLayoutError, match="not empty"):
        DatasetWriter.create(tmp_path / "ds", spec)


def test_discard_episode_leaves_the_dataset_as_it_was(dataset, spec):
    writer = DatasetWriter.open_existing(dataset)
    writer.begin_episode("pick the cube")
    for i in range(15):
        writer.add_frame(**good(spec, i))
    writer.discard_episode()
    writer.close()
    assert writer.num_episodes == 3 and validate(dataset) == []
    assert not any((dataset / ".staging").iterdir())


# ---------------------------------------------------------------- a session cut short


def test_close_commits_a_running_episode_as_truncated_with_an_unknown_outcome(dataset, spec):
    writer = DatasetWriter.open_existing(dataset)
    writer.begin_episode("pick the cube")
    for i in range(15):
        writer.add_frame(**good(spec, i))
    writer.close()  # the session that recorded it failed, or was stopped, mid-episode
    assert validate(dataset) == []
    *_, (ep, rows, _) = read_plain(dataset)
    assert (ep["episode_index"], ep["length"], ep["success"], ep["truncated"]) == (3, 15, None, True)
    assert "episodes: 4 (1 truncated by a crash or an aborted session)" in info(dataset)


def test_close_can_discard_a_running_episode_instead(dataset, spec):
    writer = DatasetWriter.open_existing(dataset)
    writer.begin_episode("pick the cube")
    for i in range(15):
        writer.add_frame(**good(spec, i))
    with pytest.raises(DatasetError, match="on_abort 'keep' is not one of truncate, discard"):
        writer.close(on_abort="keep")
    writer.close(on_abort="discard")
    assert writer.num_episodes == 3 and validate(dataset) == []
    assert "episodes: 3 (0 truncated" in info(dataset)


# ---------------------------------------------------------------- after a tool that knows only LeRobot's columns


def drop_our_episode_columns(root: Path) -> None:
    """What lerobot's delete_episodes leaves: meta/episodes rebuilt from the columns LeRobot knows."""
    for path in root.glob("meta/episodes/*/*.parquet"):
        table = pq.read_table(path)
        pq.write_table(table.drop_columns([c for c in TETHER_COLUMNS if c in table.column_names]), path)


def test_info_says_unknown_for_what_is_lost_and_counts_interventions_from_the_frames(dataset):
    drop_our_episode_columns(dataset)
    text = info(dataset)
    assert "episodes: 3 (truncated: unknown (column missing))" in text
    assert "success: unknown (column missing)" in text
    assert "interventions: 12 frames" in text  # the per-frame labels survive such tools


def test_validate_says_which_columns_are_missing_and_what_that_costs(dataset):
    drop_our_episode_columns(dataset)
    (problem,) = validate(dataset, quick=True)
    assert problem.startswith("meta/episodes: episode(s) 0-2 have no success, truncated, intervention_frames, "
                              "capture_start_ns, capture_end_ns column")
    assert "--include-failed" in problem


def test_appending_to_a_dataset_without_our_columns_is_refused(dataset, spec):
    drop_our_episode_columns(dataset)
    for _ in range(2):  # the refusal releases the dataset: the second attempt says the same
        with pytest.raises(MissingEpisodeColumnError, match="'success', 'truncated'.* episode.s. 0-2.*new dataset"):
            DatasetWriter.open_existing(dataset)


def test_validate_checks_our_columns_against_the_frames(dataset):
    path = dataset / "meta/episodes/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    counts = table.column("intervention_frames").to_pylist()
    table = table.set_column(table.schema.get_field_index("intervention_frames"), "intervention_frames",
                             pa.array([counts[0], counts[1] + 1, counts[2]], pa.int64()))
    pq.write_table(table, path)
    assert validate(dataset, quick=True) == ["episode 1: intervention_frames is 5 but the frames give 4"]


# ---------------------------------------------------------------- validate() finds corruption


def test_validate_reports_a_deleted_video_file(dataset):
    (dataset / "videos/observation.images.wrist/chunk-000/file-000.mp4").unlink()
    problems = validate(dataset)
    assert any("observation.images.wrist" in p and "missing" in p for p in problems), problems


def test_validate_reports_a_truncated_parquet(dataset):
    path = dataset / "data/chunk-000/file-000.parquet"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    problems = validate(dataset)
    assert any("data/chunk-000/file-000.parquet" in p and "unreadable" in p for p in problems), problems


@pytest.mark.parametrize("quick", [False, True], ids=["decoded", "quick"])
def test_validate_reports_a_video_frame_count_mismatch(dataset, quick: bool):
    """Drop the last video frame of the front camera (a remux, no re-encode); the packets alone show it."""
    assert validate(dataset, quick=quick) == []
    path = dataset / "videos/observation.images.front/chunk-000/file-000.mp4"
    short = path.with_name("short.mp4")
    with av.open(str(path)) as src, av.open(str(short), "w") as dst:
        packets = [p for p in src.demux(src.streams.video[0]) if p.dts is not None]
        out = dst.add_stream_from_template(src.streams.video[0], opaque=True)
        out.time_base = src.streams.video[0].time_base
        for p in packets[:-1]:
            p.stream = out
            dst.mux(p)
    short.replace(path)
    problems = validate(dataset, quick=quick)
    assert any("episode 2" in p and "decodes to 21 frames" in p for p in problems), problems


def test_validate_reports_a_broken_index(dataset):
    path = dataset / "data/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    index = table.column("index").to_numpy().copy()
    index[30] += 1000
    pq.write_table(table.set_column(table.schema.get_field_index("index"), "index", pa.array(index)), path)
    problems = validate(dataset)
    assert any("episode 1: index is not" in p for p in problems), problems


def test_validate_reports_stats_that_do_not_match_the_data(dataset):
    path = dataset / "meta/stats.json"
    stats = json.loads(path.read_text())
    stats["action"]["max"][0] += 1.0
    path.write_text(json.dumps(stats))
    assert any("stats.json: action/max" in p for p in validate(dataset))


def test_dataset_stats_match_all_the_data(pristine):
    """meta/stats.json merges episode stats; for min/max/mean/std/count that equals stats over every frame."""
    stats = json.loads((pristine / "meta/stats.json").read_text())
    table = pq.read_table(pristine / "data/chunk-000/file-000.parquet")
    for key in ("observation.state", "action"):
        values = np.stack(table.column(key).to_numpy(zero_copy_only=False)).astype(np.float64)
        for stat, fn in (("min", np.min), ("max", np.max), ("mean", np.mean), ("std", np.std)):
            np.testing.assert_allclose(stats[key][stat], fn(values, axis=0), rtol=1e-6, err_msg=f"{key}/{stat}")
        assert stats[key]["count"] == [63]
    assert stats["intervention"]["mean"] == pytest.approx([12 / 63])
    assert all(0 <= v[0][0] <= 1 for v in stats["observation.images.front"]["mean"])


def test_quick_validation_reads_the_same_frame_times_without_decoding(pristine):
    from tether.dataset.validate import _Decoded

    path = pristine / "videos/observation.images.front/chunk-000/file-000.mp4"
    decoded, packets = _Decoded(path), _Decoded(path, pixels=False)
    np.testing.assert_array_equal(packets.times, decoded.times)
    assert packets.means is None and decoded.means is not None and len(decoded.means) == len(decoded.times)


def test_the_cli_validates_quickly_and_exits_1_on_a_problem(dataset, capsys):
    from tether.cli import main

    assert main(["dataset", "validate", "--quick", str(dataset)]) == 0
    assert capsys.readouterr().out.strip().endswith(": valid")
    (dataset / "videos/observation.images.wrist/chunk-000/file-000.mp4").unlink()
    assert main(["dataset", "validate", "--quick", str(dataset)]) == 1
    assert "is missing" in capsys.readouterr().out
