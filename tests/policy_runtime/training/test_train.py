"""tether train: runs, checkpoints as safetensors, validation loss, bit-exact resume, clear errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tether.policy_runtime.training import train as tr
from tether.policy_runtime.training.train import TrainConfig, TrainError

CONFIG = TrainConfig(steps=6, batch_size=4, warmup_steps=2, val_every=3, checkpoint_every=3, val_samples=8,
                     image_size=32)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory, so101, demo_data) -> Path:
    return demo_data.write_demos(tmp_path_factory.mktemp("train") / "ds", so101, [14, 12, 10, 9], failed=(3,))


@pytest.mark.parametrize("policy", ["act", "diffusion"])
def test_a_run_writes_checkpoints_metrics_and_a_plot(policy: str, dataset: Path, tmp_path: Path, demo_data) -> None:
    run = tr.train(policy, dataset, tmp_path / policy, config=CONFIG, overrides=demo_data.TINY[policy],
                   progress=False)
    spec = tr.load_run(run)
    assert spec.policy == policy and spec.cameras == ["front", "wrist"] and spec.image_size == [32, 32]
    assert 3 not in spec.train_episodes + spec.val_episodes  # the failed episode is left out
    assert set(spec.train_episodes).isdisjoint(spec.val_episodes) and spec.val_episodes
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step_0000003", "step_0000006"]
    assert all(f.suffix in (".safetensors", ".json") for f in (run / "checkpoints" / "step_0000006").iterdir())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "val_loss" in r] == [3, 6]
    assert (run / "loss.png").stat().st_size > 0
    model = tr.load_weights(run)
    assert model.name == policy and not model.training


def _cli_train(dataset: Path, out: Path, steps: int, tiny: dict[str, object]) -> list[str]:
    sets = [x for k, v in tiny.items() for x in ("--set", f"{k}={json.dumps(v)}")]
    return ["train", "--policy", "act", "--dataset", str(dataset), "--out", str(out), "--steps", str(steps),
            "--batch-size", "4", "--lr", "0.5", "--image-size", "32", "--val-every", "3", "--checkpoint-every", "3",
            *sets]  # lr 0.5: still in warm-up, the 6 steps move each weight by ~1e-2


@pytest.fixture(scope="module")
def resumed_runs(dataset: Path, tmp_path_factory: pytest.TempPathFactory, demo_data, python_with) -> Path:
    """Through the CLI, in a process fixed at 2 threads: 6 steps straight, and 3 steps then a resume to 6 (twice:
    one copy is left for a resume at another thread count)."""
    root = tmp_path_factory.mktemp("resume")
    straight, half = _cli_train(dataset, root / "straight", 6, demo_data.TINY["act"]), \
        _cli_train(dataset, root / "resumed", 3, demo_data.TINY["act"])
    python_with(f"""
        import json, shutil
        from tether.cli import main
        assert main({straight!r}) == 0 and main({half!r}) == 0
        shutil.copytree("{root / 'resumed'}", "{root / 'resumed_1_thread'}")
        assert main(["train", "--policy", "act", "--out", "{root / 'resumed'}", "--resume", "--steps", "6"]) == 0
        print(json.dumps("done"))
    """, threads=2)
    return root


def test_resume_is_bit_exact_with_the_same_thread_count(resumed_runs: Path) -> None:
    """The guarantee on CPU: same thread count (and kernels, torch build), deterministic mode on -> bit-exact."""
    a = tr.load_weights(resumed_runs / "straight").state_dict()
    b = tr.load_weights(resumed_runs / "resumed").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), "resume must reproduce the uninterrupted run exactly"
    state = json.loads((resumed_runs / "resumed" / "checkpoints" / "step_0000006" / "state.json").read_text())
    assert state["numerics"]["threads"] == 2 and state["numerics"]["deterministic"] is True
    rows = [json.loads(line) for line in (resumed_runs / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert {"step": 3, "resumed": True, "same_numerics": True, "changed": {}} in rows


def test_resume_at_another_thread_count_warns_and_stays_close(resumed_runs: Path, python_with) -> None:
    """Otherwise the run goes on from the same state with a warning; its steps round differently, and Adam turns
    that into lr-sized differences in the few weights whose gradients are near zero: the stated tolerance is on
    the whole (2% of how far the resumed steps moved the weights) and on the validation loss (1e-4 relative)."""
    run = resumed_runs / "resumed_1_thread"
    _, stderr = python_with(f"""
        import json
        from tether.cli import main
        assert main(["train", "--policy", "act", "--out", "{run}", "--resume", "--steps", "6"]) == 0
        print(json.dumps("done"))
    """, threads=1)
    assert "ResumeNotBitExact" in stderr and "threads 2 -> 1" in stderr
    straight, checkpoint = _flat_weights(resumed_runs / "straight"), _flat_weights(run, "step_0000003")
    moved = (straight - checkpoint).norm()
    assert (_flat_weights(run) - straight).norm() < 0.02 * moved
    val = [_val_losses(r)[6] for r in (resumed_runs / "straight", run)]
    assert val[1] == pytest.approx(val[0], rel=1e-4)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"step": 3, "resumed": True, "same_numerics": False, "changed": {"threads": [2, 1]}} in rows


def _flat_weights(run: Path, step: str = "") -> torch.Tensor:
    """Every float weight of a run's latest (or given) checkpoint, as one vector."""
    folder = run / "checkpoints" / (step or (run / "checkpoints" / "latest").read_text().strip())
    weights = load_file(str(folder / "model.safetensors"))
    return torch.cat([v.flatten() for v in weights.values() if v.dtype.is_floating_point])


def _val_losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["val_loss"] for r in rows if "val_loss" in r}


def test_an_existing_run_is_not_overwritten(dataset: Path, tmp_path: Path, demo_data) -> None:
    run = tr.train("act", dataset, tmp_path / "r", config=CONFIG, overrides=demo_data.TINY["act"], progress=False)
    with pytest.raises(TrainError, match="--resume"):
        tr.train("act", dataset, run, config=CONFIG, overrides=demo_data.TINY["act"], progress=False)
    with pytest.raises(TrainError, match="not a training run"):
        tr.load_run(tmp_path)


@pytest.mark.parametrize("policy", ["act", "diffusion"])
def test_fine_tuning_starts_at_the_init_runs_weights_and_keeps_its_normalization(
        policy: str, dataset: Path, tmp_path: Path, so101, demo_data) -> None:
    base = tr.train(policy, dataset, tmp_path / "base", config=CONFIG, overrides=demo_data.TINY[policy],
                    progress=False)
    corrections = demo_data.write_demos(tmp_path / "corrections", so101, [10, 12, 8], takeover={0: 4, 1: 5})
    still = dataclasses.replace(CONFIG, steps=1, lr=0.0, image_size=64)  # lr 0: the weights cannot move
    tuned = tr.train(policy, corrections, tmp_path / "tuned", config=still, init_from=base, progress=False)
    spec, base_spec = tr.load_run(tuned), tr.load_run(base)
    assert spec.init_from.endswith("step_0000006") and spec.image_size == base_spec.image_size == [32, 32]
    assert spec.normalization == base_spec.normalization  # not the corrections' own statistics
    tuned_weights = tr.load_weights(tuned).state_dict()
    for key, value in tr.load_weights(base).state_dict().items():
        assert torch.equal(tuned_weights[key], value), key


def test_fine_tuning_refuses_another_architecture(dataset: Path, tmp_path: Path, demo_data) -> None:
    base = tr.train("act", dataset, tmp_path / "base", config=CONFIG, overrides=demo_data.TINY["act"], progress=False)
    with pytest.raises(TrainError, match="is a 'act' run; it cannot start a 'diffusion' run"):
        tr.train("diffusion", dataset, tmp_path / "d", config=CONFIG, init_from=base, progress=False)
    with pytest.raises(TrainError, match="architecture comes from"):
        tr.train("act", dataset, tmp_path / "a", config=CONFIG, overrides={"chunk_length": 8}, init_from=base,
                 progress=False)


def test_the_cli_keeps_ema_weights_when_asked(dataset: Path, tmp_path: Path, demo_data) -> None:
    from tether.cli import main

    tiny = [f"{k}={json.dumps(v)}" for k, v in demo_data.TINY["act"].items()]
    args = ["train", "--policy", "act", "--dataset", str(dataset), "--out", str(tmp_path / "ema"), "--steps", "3",
            "--batch-size", "4", "--image-size", "32", "--val-every", "3", "--ema-decay", "0.9"]
    assert main([*args, *(x for pair in tiny for x in ("--set", pair))]) == 0
    run = tmp_path / "ema"
    assert tr.load_run(run).train.ema_decay == 0.9
    assert (run / "checkpoints" / "step_0000003" / "ema.safetensors").is_file()
    ema, raw = tr.load_weights(run).state_dict(), tr.load_weights(run, ema=False).state_dict()
    assert any(not torch.equal(ema[k], raw[k]) for k in ema), "the average lags the trained weights"
    with pytest.raises(TrainError, match=r"ema_decay must be in \[0, 1\)"):
        TrainConfig(ema_decay=1.0)
