"""tether export: ONNX matches torch, INT8 is chosen by measurement, the manifest pins every graph."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tether.errors import PolicyError
from tether.policy_runtime.training import train as tr
from tether.policy_runtime.training.export import export, held_out_inputs, held_out_source, quantize_variants, to_onnx
from tether.policy_runtime.runtime.manifest import load_manifest



def test_fp32_export_matches_torch_and_pins_its_graph(run: Path, tmp_path: Path) -> None:
    out = export(run, tmp_path / "fp32", timing_runs=5)
    manifest = load_manifest(out)  # verifies the sha256
    spec = tr.load_run(run)
    assert manifest.policy == spec.policy and manifest.joint_names == spec.joint_names
    assert [c.name for c in manifest.cameras] == ["front", "wrist"] and manifest.quantization == "none"
    assert manifest.control_period_s == pytest.approx(1 / spec.fps)
    parity = json.loads((out / "parity.json").read_text())
    assert parity["fp32_vs_torch_max_abs_err"] < 1e-4
    # The graph runs from the manifest's names and shapes alone (what a torch-free runtime does).
    sess = ort.InferenceSession(str(out / manifest.policy_graph.file), providers=["CPUExecutionProvider"])
    feed = {t.name: np.zeros(t.shape, np.float32) for t in manifest.policy_graph.inputs}
    assert list(sess.run(["action"], feed)[0].shape) == manifest.policy_graph.outputs[0].shape
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.onnx", "parity.json", "parity.md"]


def test_int8_keeps_the_fastest_variant_within_tolerance(run: Path, tmp_path: Path) -> None:
    out = export(run, tmp_path / "int8", quantize="int8", tolerance_rad=10.0, timing_runs=5)
    manifest = load_manifest(out)
    parity = json.loads((out / "parity.json").read_text())
    built = [v for v in parity["variants"] if v["quantization"] != "none"]
    assert built and manifest.quantization == parity["chosen"]["quantization"]
    assert parity["chosen"]["p50_ms"] == min(v["p50_ms"] for v in built)
    assert set(manifest.graphs) == {"policy", "fp32_reference"}
    assert "INT8" in (out / "parity.md").read_text() or "int8" in (out / "parity.md").read_text()


def test_static_conv_variant_quantizes_only_the_convolutions(run: Path, tmp_path: Path) -> None:
    spec, model = tr.load_run(run), tr.load_weights(run)
    to_onnx(model, tmp_path / "model.fp32.onnx")
    calib = held_out_inputs(held_out_source(spec, model), model, 4)
    made = quantize_variants(tmp_path / "model.fp32.onnx", tmp_path, calib)
    graphs = {mode: onnx.load(str(path)).graph for mode, path in made.items() if isinstance(path, Path)}
    assert set(graphs) == {"int8-dynamic", "int8-static-qdq", "int8-static-conv"}, made

    def ops_with_int8_weights(graph: onnx.GraphProto) -> set[str]:
        stored = {t.name for t in graph.initializer}
        dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in stored}
        return {n.op_type for n in graph.node if len(n.input) > 1 and n.input[1] in dequantized}

    assert ops_with_int8_weights(graphs["int8-static-conv"]) == {"Conv"}
    assert ops_with_int8_weights(graphs["int8-static-qdq"]) > {"Conv"}  # the full variant quantizes other ops too


def test_int8_refuses_when_no_variant_is_accurate_enough(run: Path, tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="within 0.0 rad"):
        export(run, tmp_path / "strict", quantize="int8", tolerance_rad=0.0, timing_runs=5)


def test_held_out_frames_come_from_validation_episodes(run: Path) -> None:
    spec, model = tr.load_run(run), tr.load_weights(run)
    feeds = held_out_inputs(held_out_source(spec, model), model, 3)
    assert len(feeds) == 3 and set(feeds[0]) == set(model.export_input_names())
