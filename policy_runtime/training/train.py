"""``tether train``: one trainer for every policy in :mod:`tether.policy_runtime.training.models`.

A run folder holds ``run.json`` (what was trained on, the policy config, the
normalization), ``metrics.jsonl``, ``loss.png`` and ``checkpoints/step_NNNNNNN/``
with safetensors files only (weights, EMA weights, optimizer moments, RNG state),
so resuming never unpickles anything.

What resume guarantees: the run continues from exactly the saved state. On CPU it is
bit-identical to an uninterrupted run when it resumes with the same thread count, CPU
kernels and torch build; training runs in torch's deterministic mode there, so an op
that could break this raises instead. Each checkpoint's ``state.json`` records these
(:func:`numerics`); resuming with others warns (:class:`ResumeNotBitExact`) and goes
on: float sums then round differently, as in any two runs at different thread counts.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from tether.config import from_dict
from tether.errors import TetherError
from tether.policy_runtime.training import models
from tether.policy_runtime.training.batches import Affine, BatchSource, image_stats, mean_std, min_max
from tether.dataset.reader import ACTION, STATE, DemoSet, load_demos

RUN_FILE = "run.json"


class TrainError(TetherError):
    """A training run cannot start or resume as asked."""


class ResumeNotBitExact(UserWarning):
    """A run resumes with other numerics than its checkpoint's: same state, but its steps round differently."""


def numerics(device: torch.device) -> dict[str, Any]:
    """What decides how a run's steps round; resuming with all of it unchanged is bit-exact on CPU."""
    return {"device": device.type, "threads": torch.get_num_threads(),
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__}


def check_numerics(saved: dict[str, Any] | None, now: dict[str, Any], checkpoint: Path) -> dict[str, Any]:
    """What differs between a checkpoint's numerics and this process's ({} when nothing); warns when any does."""
    if saved is None:  # a checkpoint from before they were recorded
        changed: dict[str, Any] = {"numerics": "not recorded in the checkpoint"}
    else:
        changed = {k: [saved.get(k), v] for k, v in now.items() if saved.get(k) != v}
    if changed:
        what = "; ".join(f"{k}: {v}" if isinstance(v, str) else f"{k} {v[0]} -> {v[1]}" for k, v in changed.items())
        warnings.warn(f"resuming from {checkpoint}: {what}. The run continues from the exact saved state, but not "
                      "bit-exactly: that needs the checkpoint's thread count (`tether --threads N` or TETHER_THREADS), "
                      "CPU kernels and torch build", ResumeNotBitExact, stacklevel=2)
    return changed


@contextmanager
def deterministic_on(device: torch.device) -> Iterator[None]:
    """torch's deterministic algorithms for the block on CPU (an op without one raises rather than drift), then
    the previous setting. Not on CUDA, where it also needs CUBLAS_WORKSPACE_CONFIG and costs speed."""
    if device.type != "cpu":
        yield
        return
    before = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn_only)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 20000
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 1e-4
    grad_clip: float = 10.0
    warmup_steps: int = 500
    val_fraction: float = 0.1  # of episodes, at least one
    val_every: int = 500
    val_samples: int = 256
    checkpoint_every: int = 1000
    ema_decay: float = 0.0  # 0: no EMA (ACT); diffusion uses ~0.995
    shift_px: int = 4  # random-shift augmentation
    image_size: int = 96  # square; frames are resized while decoding
    seed: int = 0
    only_success: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.ema_decay < 1.0:
            raise TrainError(f"ema_decay must be in [0, 1) (0 turns EMA off), got {self.ema_decay}")


def default_train_config(policy: str) -> TrainConfig:
    if policy == "diffusion":
        return TrainConfig(lr=3e-4, ema_decay=0.995, shift_px=0)  # the model random-crops itself
    return TrainConfig()


@dataclass(frozen=True)
class RunSpec:
    """Everything needed to rebuild the model and its normalization: saved as run.json."""

    policy: str
    policy_config: dict[str, Any]
    train: TrainConfig
    dataset: str
    robot: str
    fps: float
    joint_names: list[str]
    cameras: list[str]
    image_size: list[int]
    normalization: dict[str, Affine]
    train_episodes: list[int]
    val_episodes: list[int]
    init_from: str = ""  # fine-tuning: the checkpoint the weights started from ("": from scratch)

    def build_model(self) -> models.PolicyModel:
        cfg = from_dict(models.CONFIGS[self.policy], self.policy_config, f"{RUN_FILE}.policy_config")
        return models.build_policy(self.policy, cfg, len(self.joint_names), len(self.joint_names),
                                   self.cameras, (self.image_size[0], self.image_size[1]))


def load_run(run: Path | str) -> RunSpec:
    path = Path(run) / RUN_FILE
    if not path.is_file():
        raise TrainError(f"{run}: no {RUN_FILE}; not a training run folder (make one with `tether train`)")
    data = json.loads(path.read_text())
    norms = {k: from_dict(Affine, v, f"{path}.normalization.{k}") for k, v in data.get("normalization", {}).items()}
    return dataclasses.replace(from_dict(RunSpec, data, str(path)), normalization=norms)


def split_episodes(indices: list[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    if len(indices) < 2:
        raise TrainError(f"need at least 2 episodes to hold one out for validation, got {len(indices)}")
    order = np.random.default_rng(seed).permutation(indices).tolist()
    n_val = max(1, round(len(indices) * fraction))
    return sorted(order[n_val:]), sorted(order[:n_val])


def normalization(policy: str, demos: DemoSet) -> dict[str, Affine]:
    state = np.concatenate([e.state for e in demos.episodes])
    action = np.concatenate([e.action[e.targets] for e in demos.episodes])  # what the policy will output
    act_norm = min_max(action) if policy == "diffusion" else mean_std(action)
    return {STATE: mean_std(state), ACTION: act_norm, "images": image_stats(demos)}


class Trainer:
    """Runs (or resumes) one training run in ``out``."""

    def __init__(self, out: Path, spec: RunSpec, demos: DemoSet, device: torch.device) -> None:
        self.out, self.spec, self.device = out, spec, device
        torch.manual_seed(spec.train.seed)
        self.model = spec.build_model().to(device)
        self.ema = spec.build_model().to(device) if spec.train.ema_decay > 0 else None
        if self.ema is not None:
            self.ema.load_state_dict(self.model.state_dict())
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=spec.train.lr, weight_decay=spec.train.weight_decay)
        cfg = self.model.config
        train = DemoSet(**{**demos.__dict__, "episodes": [e for e in demos.episodes
                                                           if e.index in spec.train_episodes]})
        val = DemoSet(**{**demos.__dict__, "episodes": [e for e in demos.episodes if e.index in spec.val_episodes]})
        self.train_src = BatchSource(train, cfg.n_obs_steps, cfg.chunk_length, spec.normalization, device,
                                     spec.train.shift_px)
        self.val_src = BatchSource(val, cfg.n_obs_steps, cfg.chunk_length, spec.normalization, device)
        self.gen = torch.Generator().manual_seed(spec.train.seed)
        self.step = 0

    def lr_at(self, step: int) -> float:
        t = self.spec.train
        if step < t.warmup_steps:
            return t.lr * (step + 1) / t.warmup_steps
        progress = (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps)
        return t.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    def train_step(self) -> dict[str, float]:
        self.model.train()
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(self.step)
        idx = torch.randint(0, len(self.train_src), (self.spec.train.batch_size,), generator=self.gen)
        loss, logs = self.model.compute_loss(self.train_src.batch(idx, self.gen))
        if not torch.isfinite(loss):
            raise TrainError(f"step {self.step}: loss is {loss.item()}; lower --lr or check the dataset "
                             "(`tether dataset validate`)")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.spec.train.grad_clip)
        self.opt.step()
        self._update_ema()
        self.step += 1
        return {"loss": float(loss.item()), **logs}

    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.ema is None:
            return
        d = min(self.spec.train.ema_decay, (1 + self.step) / (10 + self.step))
        for e, p in zip(self.ema.state_dict().values(), self.model.state_dict().values(), strict=True):
            if e.dtype.is_floating_point:
                e.mul_(d).add_(p.detach(), alpha=1 - d)
            else:
                e.copy_(p)

    @torch.no_grad()
    def validate(self) -> float:
        """Mean loss over a fixed sample of held-out frames (same frames and noise every time)."""
        model = self.ema or self.model
        model.eval()
        gen = torch.Generator().manual_seed(1234)
        n = min(self.spec.train.val_samples, len(self.val_src))
        idx = torch.randperm(len(self.val_src), generator=gen)[:n]
        state = torch.get_rng_state()
        torch.manual_seed(1234)
        losses = [model.compute_loss(self.val_src.batch(chunk))[0].item() for chunk in idx.split(64)]
        torch.set_rng_state(state)
        return float(np.mean(losses))

    def deploy_model(self) -> models.PolicyModel:
        return self.ema or self.model

    # -- checkpoints ---------------------------------------------------------------------------
    def save(self) -> Path:
        folder = self.out / "checkpoints" / f"step_{self.step:07d}"
        tmp = folder.with_name(folder.name + ".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        save_file(_contiguous(self.model.state_dict()), str(tmp / "model.safetensors"))
        if self.ema is not None:
            save_file(_contiguous(self.ema.state_dict()), str(tmp / "ema.safetensors"))
        opt_tensors, opt_meta = _flatten_optimizer(self.opt)
        save_file({**opt_tensors, "rng.torch": torch.get_rng_state(), "rng.sampler": self.gen.get_state()},
                  str(tmp / "optimizer.safetensors"))
        (tmp / "state.json").write_text(json.dumps({"step": self.step, "optimizer": opt_meta,
                                                    "numerics": numerics(self.device)}))
        if folder.exists():  # re-saving a step (a resumed run that had already reached it)
            shutil.rmtree(folder)
        os.replace(tmp, folder)
        _write_atomic(self.out / "checkpoints" / "latest", folder.name)
        return folder

    def start_from(self, folder: Path) -> None:
        """Fine-tuning: begin at another run's checkpoint weights (its optimizer state is not taken)."""
        weights = load_file(str(folder / "model.safetensors"), device=str(self.device))
        self.model.load_state_dict(weights)
        if self.ema is not None:
            ema = folder / "ema.safetensors"
            self.ema.load_state_dict(load_file(str(ema), device=str(self.device)) if ema.is_file() else weights)

    def resume(self) -> dict[str, Any]:
        """Load the latest checkpoint; returns how this process's numerics differ from its own (see module doc)."""
        folder = latest_checkpoint(self.out)
        self.model.load_state_dict(load_file(str(folder / "model.safetensors"), device=str(self.device)))
        if self.ema is not None:
            self.ema.load_state_dict(load_file(str(folder / "ema.safetensors"), device=str(self.device)))
        tensors = load_file(str(folder / "optimizer.safetensors"))
        meta = json.loads((folder / "state.json").read_text())
        _restore_optimizer(self.opt, tensors, meta["optimizer"], self.device)
        torch.set_rng_state(tensors["rng.torch"])
        self.gen.set_state(tensors["rng.sampler"])
        self.step = int(meta["step"])
        return check_numerics(meta.get("numerics"), numerics(self.device), folder)


def latest_checkpoint(run: Path) -> Path:
    pointer = run / "checkpoints" / "latest"
    if not pointer.is_file():
        raise TrainError(f"{run}: no checkpoint yet (checkpoints/latest is missing)")
    folder = run / "checkpoints" / pointer.read_text().strip()
    if not (folder / "model.safetensors").is_file():
        raise TrainError(f"{folder}: checkpoint is incomplete (no model.safetensors)")
    return folder


def load_weights(run: Path | str, *, ema: bool = True) -> models.PolicyModel:
    """The deployable model of a run's latest checkpoint (EMA weights when the run keeps them)."""
    run = Path(run)
    spec = load_run(run)
    folder = latest_checkpoint(run)
    model = spec.build_model()
    name = "ema.safetensors" if ema and (folder / "ema.safetensors").is_file() else "model.safetensors"
    model.load_state_dict(load_file(str(folder / name)))
    return model.eval()


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().clone() for k, v in state.items()}


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors = {f"state.{pid}.{name}": v.detach().clone().contiguous()
               for pid, st in sd["state"].items() for name, v in st.items() if isinstance(v, torch.Tensor)}
    groups = [{k: v for k, v in g.items() if k != "params"} | {"params": g["params"]} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups}


def _restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                       device: torch.device) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("state."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value.to(device) if name != "step" else value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# -- the command -------------------------------------------------------------------------------
def new_run(policy: str, dataset: Path, train: TrainConfig, size: str, overrides: dict[str, Any],
            progress: bool) -> tuple[RunSpec, DemoSet]:
    policy_cfg = models.config_for(policy, size)
    if overrides:
        policy_cfg = dataclasses.replace(policy_cfg, **overrides)
    demos = _load(dataset, train.image_size, train.only_success, None, progress)
    return _run_spec(policy, dataclasses.asdict(policy_cfg), train, dataset, demos, normalization(policy, demos)), demos


def fine_tune_run(policy: str, init: Path, dataset: Path, train: TrainConfig,
                  progress: bool) -> tuple[RunSpec, DemoSet]:
    """A new run on ``dataset`` that keeps ``init``'s architecture, image size and normalization.

    The normalization stays: the weights were learned against it, and the deployed model ships it.
    """
    base, start = load_run(init), str(latest_checkpoint(init))  # before the slow decode: fail fast
    if base.policy != policy:
        raise TrainError(f"{init} is a '{base.policy}' run; it cannot start a '{policy}' run (--policy {base.policy})")
    train = dataclasses.replace(train, image_size=base.train.image_size)
    demos = _load(dataset, train.image_size, train.only_success, None, progress)
    for what, ours, theirs in (("joints", demos.joint_names, base.joint_names), ("cameras", demos.cameras, base.cameras)):
        if ours != theirs:
            raise TrainError(f"{dataset} has {what} {ours}, but {init} was trained on {theirs}")
    return _run_spec(policy, base.policy_config, train, dataset, demos, base.normalization, start), demos


def _run_spec(policy: str, policy_config: dict[str, Any], train: TrainConfig, dataset: Path, demos: DemoSet,
              norms: dict[str, Affine], init_from: str = "") -> RunSpec:
    """A new run's spec: the demos' robot, joints and cameras, and its train/validation split."""
    train_eps, val_eps = split_episodes([e.index for e in demos.episodes], train.val_fraction, train.seed)
    return RunSpec(policy, policy_config, train, str(dataset), demos.robot, demos.fps, demos.joint_names,
                   demos.cameras, list(demos.image_size), norms, train_eps, val_eps, init_from)


def _load(dataset: Path, image_size: int, only_success: bool, episodes: list[int] | None,
          progress: bool) -> DemoSet:
    with tqdm(desc="decode episodes", unit="ep", disable=not progress) as bar:
        def tick(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)
        return load_demos(dataset, image_size=(image_size, image_size), only_success=only_success,
                          episodes=episodes, progress=tick)


def train(policy: str, dataset: Path | str, out: Path | str, *, config: TrainConfig | None = None,
          size: str = "cpu", overrides: dict[str, Any] | None = None, resume: bool = False,
          init_from: Path | str | None = None, device: str | None = None, progress: bool = True) -> Path:
    """Train (or resume) a run; returns the run folder. Checkpoints every ``checkpoint_every`` steps.

    ``init_from`` (a run folder) fine-tunes: the new run starts at that run's latest weights.
    """
    out = Path(out)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if resume:
        spec = load_run(out)
        if config is not None and config.steps != spec.train.steps:
            spec = dataclasses.replace(spec, train=dataclasses.replace(spec.train, steps=config.steps))
        demos = _load(Path(spec.dataset), spec.train.image_size, spec.train.only_success,
                      spec.train_episodes + spec.val_episodes, progress)
    else:
        if (out / RUN_FILE).exists():
            raise TrainError(f"{out}: a run already exists; pass --resume to continue it, or choose another --out")
        config = config or default_train_config(policy)
        if init_from is not None and overrides:
            raise TrainError(f"the architecture comes from {init_from}; overrides {sorted(overrides)} cannot change it")
        if init_from is not None:
            spec, demos = fine_tune_run(policy, Path(init_from), Path(dataset), config, progress)
        else:
            spec, demos = new_run(policy, Path(dataset), config, size, overrides or {}, progress)
        out.mkdir(parents=True, exist_ok=True)
    _write_atomic(out / RUN_FILE, json.dumps(dataclasses.asdict(spec), indent=2))
    with deterministic_on(dev):
        trainer = Trainer(out, spec, demos, dev)
        if resume:
            changed = trainer.resume()
            _drop_metrics_after(out / "metrics.jsonl", trainer.step)
            _log_resume(out / "metrics.jsonl", trainer.step, changed)
        elif spec.init_from:
            trainer.start_from(Path(spec.init_from))
        _loop(trainer, progress)
    return out


def _log_resume(path: Path, step: int, changed: dict[str, Any]) -> None:
    """metrics.jsonl keeps where a run resumed and with which numerics changed (see the module doc)."""
    with open(path, "a") as f:
        f.write(json.dumps({"step": step, "resumed": True, "same_numerics": not changed, "changed": changed}) + "\n")


def _loop(trainer: Trainer, progress: bool) -> None:
    t = trainer.spec.train
    metrics = open(trainer.out / "metrics.jsonl", "a")
    started = time.monotonic()
    with metrics, tqdm(total=t.steps, initial=trainer.step, desc=f"train {trainer.spec.policy}", unit="step",
                       disable=not progress) as bar:
        while trainer.step < t.steps:
            logs = trainer.train_step()
            bar.update(1)
            if trainer.step % 50 == 0:
                bar.set_postfix(loss=f"{logs['loss']:.4f}", refresh=False)
                metrics.write(json.dumps({"step": trainer.step, "lr": trainer.lr_at(trainer.step), **logs,
                                          "elapsed_s": time.monotonic() - started}) + "\n")
            if trainer.step % t.val_every == 0 or trainer.step == t.steps:
                val = trainer.validate()
                bar.set_postfix(loss=f"{logs['loss']:.4f}", val=f"{val:.4f}", refresh=False)
                metrics.write(json.dumps({"step": trainer.step, "val_loss": val}) + "\n")
                metrics.flush()
            if trainer.step % t.checkpoint_every == 0 or trainer.step == t.steps:
                trainer.save()
    plot_losses(trainer.out)


def _drop_metrics_after(path: Path, step: int) -> None:
    """A resumed run repeats the steps after its checkpoint; their old rows would be logged twice."""
    if path.is_file():
        rows = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
        _write_atomic(path, "".join(row + "\n" for row in rows))


def plot_losses(run: Path) -> Path | None:
    """loss.png: training and validation loss against step."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train_rows = [r for r in rows if "loss" in r]
    val_rows = [r for r in rows if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in train_rows], [r["loss"] for r in train_rows], label="train", lw=0.8)
    ax.plot([r["step"] for r in val_rows], [r["val_loss"] for r in val_rows], "o-", label="validation")
    ax.set(xlabel="step", ylabel="loss", yscale="log", title=run.name)
    ax.legend()
    fig.tight_layout()
    path = run / "loss.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
