"""JointTrajectoryController semantics of the trajectory follower."""

import numpy as np

from tether.trajectory import Chunk, TrajectoryFollower

NAMES = ("a", "b")


def chunk(start: float, times: list[float], points: list[list[float]]) -> Chunk:
    return Chunk(NAMES, start, np.array(times), np.array(points, dtype=float))


def test_linear_interpolation_from_current_setpoint() -> None:
    f = TrajectoryFollower(np.zeros(2), now=0.0)
    f.command(chunk(0.0, [1.0, 2.0], [[1.0, 2.0], [3.0, 2.0]]), now=0.0)
    np.testing.assert_allclose(f.sample(0.5), [0.5, 1.0])
    np.testing.assert_allclose(f.sample(1.5), [2.0, 2.0])
    np.testing.assert_allclose(f.sample(10.0), [3.0, 2.0])  # holds the last point


def test_new_chunk_replaces_the_rest_from_its_start_time() -> None:
    f = TrajectoryFollower(np.zeros(2), now=0.0)
    f.command(chunk(0.0, [2.0], [[2.0, 0.0]]), now=0.0)
    f.command(chunk(1.0, [1.0], [[-1.0, 0.0]]), now=0.2)
    np.testing.assert_allclose(f.sample(0.5), [0.5, 0.0])  # old trajectory until t=1
    np.testing.assert_allclose(f.sample(1.0), [1.0, 0.0])
    np.testing.assert_allclose(f.sample(1.5), [0.0, 0.0])  # from 1.0 towards -1.0
    np.testing.assert_allclose(f.sample(2.0), [-1.0, 0.0])


def test_points_in_the_past_are_skipped() -> None:
    f = TrajectoryFollower(np.zeros(2), now=0.0)
    # Stamped 1 s ago: the first point is already due, so motion heads for the second.
    f.command(chunk(9.0, [0.5, 2.0], [[5.0, 5.0], [1.0, 1.0]]), now=10.0)
    np.testing.assert_allclose(f.sample(10.0), [0.0, 0.0])
    np.testing.assert_allclose(f.sample(11.0), [1.0, 1.0])


def test_fully_past_chunk_goes_to_its_last_point() -> None:
    f = TrajectoryFollower(np.zeros(2), now=0.0)
    f.command(chunk(0.0, [0.1], [[4.0, 4.0]]), now=5.0)
    np.testing.assert_allclose(f.sample(5.0), [4.0, 4.0])
