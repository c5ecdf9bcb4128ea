"""tether train: runs, checkpoints as safetensors, validation loss, bit-exact resume, clear errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from tether.policy_runtime import train as tr
from tether.policy_runtime.train import TrainConfig, TrainError

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


def test_resume_continues_bit_exact(dataset: Path, tmp_path: Path, demo_data) -> None:
    tiny = demo_data.TINY["act"]
    straight = tr.train("act", dataset, tmp_path / "straight", config=CONFIG, overrides=tiny, progress=False)
    half = dict(CONFIG.__dict__, steps=3)
    tr.train("act", dataset, tmp_path / "resumed", config=TrainConfig(**half), overrides=tiny, progress=False)
    resumed = tr.train("act", dataset, tmp_path / "resumed", config=CONFIG, resume=True, progress=False)
    a, b = tr.load_weights(straight).state_dict(), tr.load_weights(resumed).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), "resume must reproduce the uninterrupted run exactly"


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
