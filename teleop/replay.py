"""Stand-ins for a human: a recorded episode played back, or the scripted pick-place expert.

    replay = Replay.from_parquet("data/chunk-000/file-000.parquet", joint_names, episode_index=3)
    with replay:
        cmd = replay.read()        # joint targets interpolated at the time since connect()

Both produce joint targets, like a leader arm; they drive tests and demos of the teleop path.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from tether.errors import ReplayError
from tether.robot_profile import RobotProfile
from tether.teleop.devices import Buttons, TeleopCommand, Teleoperator, joint_features

# (q, object_pos, object_quat, target_pos, t): what the expert needs each tick.
Observation = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]


class Replay(Teleoperator):
    """Plays timestamped joint targets, linearly interpolated, starting at ``connect()``.

    After the last sample it holds the last target and reports ``end_button`` (if given) once.
    """

    name = "replay"
    kind = "joints"

    def __init__(self, timestamps: Sequence[float] | np.ndarray, actions: np.ndarray, joint_names: Sequence[str],
                 *, end_button: str | None = None, activity_speed: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.times = np.asarray(timestamps, dtype=float)
        self.actions = np.asarray(actions, dtype=float)
        self.joint_names = list(joint_names)
        _check_episode(self.times, self.actions, self.joint_names)
        self.times = self.times - self.times[0]
        self.end_button = end_button
        if end_button is not None:
            Buttons.pressed(frozenset({end_button}))  # a wrong name fails here, not at the end
        self.activity_speed = activity_speed
        self._clock = clock
        self._t0 = 0.0
        self._ended = False
        self._speed = 0.0

    @classmethod
    def from_parquet(cls, path: str | Path, joint_names: Sequence[str], *, episode_index: int | None = None,
                     **kwargs: object) -> Replay:
        """An episode from a LeRobot-style parquet file: ``timestamp`` and ``action`` columns."""
        import pyarrow.parquet as pq  # the runtime extra; only needed here

        table = pq.read_table(path)
        for column in ("timestamp", "action"):
            if column not in table.column_names:
                raise ReplayError(f"{path}: no '{column}' column; columns: {', '.join(table.column_names)}")
        if episode_index is not None:
            if "episode_index" not in table.column_names:
                raise ReplayError(f"{path}: no 'episode_index' column to pick episode {episode_index} from")
            episodes = np.asarray(table.column("episode_index").to_numpy())
            table = table.filter(episodes == episode_index)
        actions = np.array(table.column("action").to_pylist(), dtype=float)
        return cls(table.column("timestamp").to_numpy(), actions, joint_names, **kwargs)  # type: ignore[arg-type]

    @property
    def action_features(self) -> dict[str, type]:
        return joint_features(self.joint_names)

    @property
    def duration(self) -> float:
        return float(self.times[-1])

    def activity(self) -> float:
        return self._speed / self.activity_speed

    def sample(self, t: float) -> np.ndarray:
        """The target ``t`` seconds into the episode."""
        return np.array([np.interp(t, self.times, self.actions[:, j]) for j in range(self.actions.shape[1])])

    def _open(self) -> None:
        self._t0, self._ended = self._clock(), False

    def _close(self) -> None:
        pass

    def _read(self) -> TeleopCommand:
        now = self._clock()
        t = now - self._t0
        target = self.sample(t)
        self._speed = self._speed_at(t)
        buttons = Buttons()
        if t >= self.duration and not self._ended:
            self._ended = True
            if self.end_button is not None:
                buttons = Buttons.pressed(frozenset({self.end_button}))
        return TeleopCommand(stamp=now, joints=target, buttons=buttons)

    def _speed_at(self, t: float) -> float:
        if len(self.times) < 2 or not 0.0 <= t < self.duration:
            return 0.0
        i = min(int(np.searchsorted(self.times, t, side="right")), len(self.times) - 1)
        step = self.actions[i] - self.actions[i - 1]
        return float(np.max(np.abs(step)) / (self.times[i] - self.times[i - 1]))


class ExpertTeleop(Teleoperator):
    """The scripted pick-place expert (privileged object poses) as a device.

    ``observe`` returns the current observation; the expert plans from it on every read().
    """

    name = "expert"
    kind = "joints"

    def __init__(self, profile: RobotProfile, observe: Callable[[], Observation]) -> None:
        super().__init__()
        from tether.sim.expert import PickPlaceExpert  # pinocchio only, no MuJoCo

        self.profile = profile
        self.expert = PickPlaceExpert(profile)
        self._observe = observe
        self._last: np.ndarray | None = None
        self._t = 0.0
        self._speed = 0.0

    @property
    def action_features(self) -> dict[str, type]:
        return joint_features(self.profile.joint_names)

    def activity(self) -> float:
        """Fastest joint's speed in rad/s (activity 1 at 1 rad/s)."""
        return self._speed

    def _open(self) -> None:
        self.expert.reset()
        self._last, self._speed = None, 0.0

    def _close(self) -> None:
        pass

    def _read(self) -> TeleopCommand:
        q, obj_pos, obj_quat, target_pos, t = self._observe()
        target = self.expert.act(q, obj_pos, obj_quat, target_pos, t)
        if self._last is not None and t > self._t:
            self._speed = float(np.max(np.abs(target - self._last)) / (t - self._t))
        self._last, self._t = target, t
        return TeleopCommand(stamp=t, joints=target)


def _check_episode(times: np.ndarray, actions: np.ndarray, joint_names: list[str]) -> None:
    if times.ndim != 1 or len(times) == 0:
        raise ReplayError(f"an episode needs at least one timestamp; got shape {times.shape}")
    if actions.shape != (len(times), len(joint_names)):
        raise ReplayError(f"actions have shape {actions.shape}; expected ({len(times)}, {len(joint_names)}) "
                          f"for {len(times)} timestamps and joints {', '.join(joint_names)}")
    if np.any(np.diff(times) <= 0):
        raise ReplayError("timestamps must be strictly increasing")
    if not np.all(np.isfinite(actions)):
        raise ReplayError("actions contain NaN or inf")
