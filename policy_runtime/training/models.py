"""The registry that builds a policy network by name, and its ONNX export.

The networks (``act.py``, ``diffusion.py``) subclass :class:`~tether.policy_runtime.training.policy_model.PolicyModel`,
which lives apart so that they need not import this registry that imports them.
Build from a saved checkpoint with ``build_policy_from_spec(json.loads(...))``: ``spec()``
holds everything the constructor needs, as JSON-safe values.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from tether.config import from_dict
from tether.errors import PolicyError
from tether.policy_runtime.runtime.manifest import ACTION, NOISE, STATE
from tether.policy_runtime.runtime.manifest import POLICIES as POLICY_NAMES
from tether.policy_runtime.training.act import ACTConfig, ACTPolicy
from tether.policy_runtime.training.diffusion import DiffusionConfig, DiffusionPolicy
from tether.policy_runtime.training.policy_model import ACTION_IS_PAD, PolicyModel, hold_padding, image_key, masked_mean

SIZES = ("cpu", "paper")
OPSET = 17
POLICIES: dict[str, type[PolicyModel]] = {"act": ACTPolicy, "diffusion": DiffusionPolicy}
CONFIGS: dict[str, type[Any]] = {"act": ACTConfig, "diffusion": DiffusionConfig}



def _entry(name: str) -> tuple[type[Any], type[PolicyModel]]:
    if name not in POLICIES:
        raise PolicyError(f"unknown policy '{name}'; valid: {', '.join(POLICY_NAMES)}")
    return CONFIGS[name], POLICIES[name]


def config_for(name: str, size: str = "cpu") -> Any:
    """The default config of a policy: ``cpu`` (trains on a laptop) or ``paper`` (GPU)."""
    config_cls, _ = _entry(name)
    if size == "cpu":
        return config_cls()
    if size == "paper":
        return config_cls.paper()
    raise PolicyError(f"unknown config size '{size}'; valid: {', '.join(SIZES)}")


def config_from_dict(name: str, data: Mapping[str, Any], where: str = "") -> Any:
    """A policy config from its ``dataclasses.asdict`` form (e.g. read back from JSON); bad keys or
    values raise ConfigError naming ``where``."""
    config_cls, _ = _entry(name)
    return from_dict(config_cls, dict(data), where or f"{name} config")


def build_policy(name: str, config: object | None, state_dim: int, action_dim: int, cameras: list[str],
                 image_size: tuple[int, int]) -> PolicyModel:
    """A policy by name; ``config`` is its config dataclass, a dict of one, or None (the CPU default)."""
    config_cls, policy_cls = _entry(name)
    built: Any
    if config is None:
        built = config_cls()
    elif isinstance(config, Mapping):
        built = config_from_dict(name, config)
    elif isinstance(config, config_cls):
        built = config
    else:
        raise PolicyError(f"policy '{name}' takes a {config_cls.__name__}, got {type(config).__name__}")
    return policy_cls(built, state_dim, action_dim, cameras, image_size)


def build_policy_from_spec(spec: Mapping[str, Any]) -> PolicyModel:
    """Rebuild the (untrained) network that ``PolicyModel.spec()`` described; load weights after."""
    keys = ("policy", "config", "state_dim", "action_dim", "cameras", "image_size")
    missing = [k for k in keys if k not in spec]
    if missing:
        raise PolicyError(f"policy spec lacks {', '.join(missing)}; it has: {', '.join(sorted(spec))}")
    h, w = spec["image_size"]
    return build_policy(spec["policy"], spec["config"], int(spec["state_dim"]), int(spec["action_dim"]),
                        list(spec["cameras"]), (int(h), int(w)))


def export_onnx(policy: PolicyModel, path: Path | str, batch_size: int = 1) -> Path:
    """Write the policy's graph (inputs ``export_input_names()``, output ``action``) to ``path``.

    The TorchScript exporter (``dynamo=False``) gives a flat graph of standard ops that
    onnxruntime's quantizers take as is; the batch dimension is fixed.
    """
    path = Path(path)
    module = policy.export_module()
    with warnings.catch_warnings():
        # Its deprecation notice says nothing actionable here.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        # GroupNorm's own batch-size check in torch; shapes are fixed in the graph anyway.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module="torch.nn.functional")
        torch.onnx.export(module, policy.export_example_inputs(batch_size), str(path),
                          input_names=policy.export_input_names(), output_names=[ACTION],
                          opset_version=OPSET, dynamo=False)
    return path


__all__ = ["ACTION", "ACTION_IS_PAD", "NOISE", "STATE", "PolicyModel", "build_policy", "build_policy_from_spec",
           "config_for", "config_from_dict", "export_onnx", "hold_padding", "image_key", "masked_mean"]
