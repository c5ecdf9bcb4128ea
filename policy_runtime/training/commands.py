"""``tether train`` and ``tether export``: argument parsing only; torch is imported when they run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tether.preflight import Preflight

POLICY_CHOICES = ("act", "diffusion")


def add_train(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train", help="train ACT or Diffusion Policy on a LeRobot v3 dataset (CPU or GPU)")
    t.add_argument("--policy", choices=POLICY_CHOICES, required=True)
    t.add_argument("--dataset", type=Path, help="a local LeRobot v3 dataset folder (not needed with --resume)")
    t.add_argument("--out", type=Path, required=True, help="run folder: checkpoints, metrics, loss.png")
    t.add_argument("--size", choices=("cpu", "paper"), help="model size preset (default cpu)")
    t.add_argument("--steps", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--seed", type=int)
    t.add_argument("--image-size", type=int, help="frames are resized to this square size (default 96)")
    t.add_argument("--checkpoint-every", type=int)
    t.add_argument("--val-every", type=int)
    t.add_argument("--ema-decay", type=float,
                   help="keep an exponential moving average of the weights; it is what validation and export use "
                        "(default: 0, off, for ACT; 0.995 for diffusion)")
    t.add_argument("--include-failed", action="store_true", help="also train on episodes recorded as failures")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a policy config field, e.g. --set chunk_length=30 (JSON values)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    t.add_argument("--init-from", type=Path, metavar="RUN",
                   help="fine-tune: a new run that starts at RUN's latest weights, keeping its architecture, "
                        "image size and normalization")
    t.add_argument("--device", help="torch device (default: cuda when present, else cpu)")
    t.add_argument("--threads", type=int, help="CPU threads for torch, fixed at start-up like `tether --threads N` "
                   "(default: $TETHER_THREADS, else torch's: the physical cores; 1 leaves a core free)")
    t.set_defaults(func=_train, uses_torch=True)


def _overrides(check: Preflight, pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            check.refuse(f"--set expects KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
        if isinstance(out[key], list):
            out[key] = tuple(out[key])
    return out


def _check_train(check: Preflight, a: argparse.Namespace) -> None:
    """Before torch loads a frame or the run folder exists."""
    if not a.resume and a.dataset is None:
        check.refuse("--dataset is required for a new run")
    if a.init_from is not None and (a.resume or a.size or a.set or a.image_size):
        check.refuse("--init-from takes the architecture and image size from that run; "
                     "leave out --resume, --size, --set and --image-size")
    for flag, value in (("--steps", a.steps), ("--batch-size", a.batch_size), ("--image-size", a.image_size),
                        ("--checkpoint-every", a.checkpoint_every), ("--val-every", a.val_every)):
        check.at_least(flag, value, 1)
    check.positive("--lr", a.lr)
    if a.ema_decay is not None and not 0.0 <= a.ema_decay < 1.0:
        check.refuse(f"--ema-decay must be in [0, 1) (0 turns the average off), got {a.ema_decay}")
    if not a.resume:
        check.dataset_to_read("--dataset", a.dataset)
    check.writable_folder("--out", a.out)


def _train(a: argparse.Namespace) -> int:
    import dataclasses

    from tether.policy_runtime.training import train as tr

    check = Preflight("train")
    _check_train(check, a)
    overrides = _overrides(check, a.set)
    base = tr.default_train_config(a.policy)
    chosen = {"steps": a.steps, "batch_size": a.batch_size, "lr": a.lr, "seed": a.seed,
              "image_size": a.image_size, "checkpoint_every": a.checkpoint_every, "val_every": a.val_every,
              "ema_decay": a.ema_decay}
    config: tr.TrainConfig | None = dataclasses.replace(
        base, **{k: v for k, v in chosen.items() if v is not None}, only_success=not a.include_failed)
    if a.resume:  # the run keeps its own config; only --steps may extend it
        config = dataclasses.replace(base, steps=a.steps) if a.steps else None
    run = tr.train(a.policy, a.dataset, a.out, config=config, size=a.size or "cpu", overrides=overrides,
                   resume=a.resume, init_from=a.init_from, device=a.device)
    print(f"run: {run}  (loss plot: {run / 'loss.png'}; export with `tether export {run} --out MODEL_DIR`)")
    return 0


def add_export(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("export", help="export a training run to ONNX + manifest (optionally INT8) with a parity report")
    e.add_argument("run", type=Path, help="a `tether train` run folder")
    e.add_argument("--out", type=Path, required=True, help="model folder: model.onnx, manifest.json, parity.md")
    e.add_argument("--quantize", choices=("none", "int8"), default="none",
                   help="int8: build dynamic and static-QDQ variants, keep the fastest within --tolerance")
    e.add_argument("--tolerance", type=float, default=0.05, help="max INT8 action error vs fp32, rad")
    e.add_argument("--threads", type=int, help="CPU threads for torch and the onnxruntime timings, fixed at start-up "
                   "like `tether --threads N` (default: $TETHER_THREADS, else torch's: the physical cores)")
    e.add_argument("--no-fp32-reference", action="store_true",
                   help="with --quantize int8: do not keep model.fp32.onnx beside the INT8 graph (smaller folder)")
    e.set_defaults(func=_export, uses_torch=True)


def _export(a: argparse.Namespace) -> int:
    from tether.policy_runtime.training.export import export
    from tether.policy_runtime.training.train import load_run

    check = Preflight("export")
    check.positive("--tolerance", a.tolerance, " rad")
    with check.about("RUN"):
        load_run(a.run)
    check.writable_folder("--out", a.out)

    out = export(a.run, a.out, quantize=a.quantize, tolerance_rad=a.tolerance, keep_reference=not a.no_fp32_reference)
    print((out / "parity.md").read_text())
    print(f"model: {out}  (rehearse it: tether rehearse --source policy --policy {out})")
    return 0
