"""The model shipped in models/: it loads torch-free, fits the SO-101, and drives a rehearsal."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tether.cli import main
from tether.policy_runtime.runtime.manifest import check_matches_profile, load_manifest
from tether.policy_runtime.runtime.inference import DEFAULT_MODEL_DIR, PolicyRuntime


def test_shipped_model_is_pinned_and_fits_the_robot(so101) -> None:
    manifest = load_manifest(DEFAULT_MODEL_DIR)  # verifies every graph's sha256
    check_matches_profile(manifest, so101.joint_names, {c.name: (c.width, c.height) for c in so101.cameras})
    assert manifest.quantization.startswith("int8") and manifest.created_by.startswith("tether export")
    runtime = PolicyRuntime.load(DEFAULT_MODEL_DIR, so101)
    images = {c.name: np.zeros((c.height, c.width, 3), np.uint8) for c in manifest.cameras}
    chunk = runtime.infer(so101.home, images)
    assert chunk.shape == (manifest.chunk_length, len(so101.joint_names)) and np.isfinite(chunk).all()


def test_rehearse_with_the_shipped_policy(tmp_path: Path) -> None:
    report = tmp_path / "policy"
    code = main(["rehearse", "--source", "policy", "--episodes", "1", "--seed", "5000", "--episode-timeout", "4",
                 "--video-episodes", "0", "--report", str(report)])
    assert code == 0
    data = json.loads((report / "report.json").read_text())
    assert data["episodes"] == 1 and data["meta"]["source"] == "policy"
    assert data["gate"]["chunks"] and int(data["gate"]["chunks"]) > 10  # the policy drove the gate
    assert data["latency_ms"]["obs_to_command"]["p50"] > 0
