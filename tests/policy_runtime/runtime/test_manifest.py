"""The model folder contract: sha256 pinning, strict keys and values, matching the robot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tether.errors import ManifestError, ModelMismatchError
from tether.policy_runtime.runtime.manifest import MANIFEST, STATE, check_matches_profile, load_manifest, sha256_of
from tether.policy_runtime.runtime.inference import PolicyRuntime, check_graph_matches_manifest


@pytest.fixture
def model(tmp_path: Path, fx) -> Path:
    return fx.write_model(tmp_path / "model")


def test_a_written_model_folder_loads_and_keeps_its_fields(model: Path, fx) -> None:
    m = load_manifest(model)
    assert m.joint_names == fx.SO101_JOINTS and [c.name for c in m.cameras] == ["front", "wrist"]
    assert m.policy_graph.file == "policy.onnx" and m.chunk_length == 5


def test_a_tampered_graph_is_refused(model: Path) -> None:
    graph = model / "policy.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0x01  # one byte changed
    graph.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="sha256 .* does not match"):
        load_manifest(model)
    with pytest.raises(ManifestError, match="refused"):
        PolicyRuntime.load(model)


def test_a_missing_graph_or_manifest_is_named(model: Path, tmp_path: Path) -> None:
    (model / "policy.onnx").unlink()
    with pytest.raises(ManifestError, match="'policy.onnx' is missing"):
        load_manifest(model)
    with pytest.raises(ManifestError, match="no manifest.json"):
        load_manifest(tmp_path / "nowhere")


@pytest.mark.parametrize("change, message", [
    ({"learning_rate": 1e-4}, "unknown key 'learning_rate'; valid keys: .*chunk_length"),
    ({"policy": "pi0"}, "unknown policy 'pi0'; policies: act, diffusion"),
    ({"quantization": "int4"}, "unknown quantization 'int4'; valid: none, int8-dynamic, int8-static-qdq, int8-static-conv"),
    ({"version": 2}, "this runtime reads 'tether-policy' version 1"),
    ({"chunk_length": 0}, "must be positive"),
    ({"chunk_length": "5"}, "expected an integer"),
    ({"joint_names": ["a", "a", "b", "c", "d", "e"]}, "each joint once"),
])
def test_bad_manifest_values_are_refused_with_the_valid_choices(model: Path, fx, change, message) -> None:
    fx.edit_manifest(model, **change)
    with pytest.raises(ManifestError, match=message):
        load_manifest(model)


def test_unknown_keys_inside_a_graph_and_bad_image_stats_are_refused(model: Path) -> None:
    data = json.loads((model / MANIFEST).read_text())
    data["graphs"]["policy"]["opset"] = 17
    (model / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=r"graphs\.policy: unknown key 'opset'"):
        load_manifest(model)
    del data["graphs"]["policy"]["opset"]
    data["normalization"]["images"] = {"mean": [0.5], "std": [0.5]}
    (model / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="'images' has 1 means and 1 stds for 3 channels"):
        load_manifest(model)


def test_a_graph_outside_the_model_folder_is_refused(model: Path, fx) -> None:
    data = json.loads((model / MANIFEST).read_text())
    data["graphs"]["policy"]["file"] = "../elsewhere.onnx"
    (model / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="inside the model folder"):
        load_manifest(model)


def test_a_model_for_other_joints_or_cameras_does_not_match(model: Path, so101, fx) -> None:
    m = load_manifest(model)
    cameras = {c.name: (c.width, c.height) for c in so101.cameras}
    check_matches_profile(m, so101.joint_names, cameras)  # the fixture is an SO-101 model
    with pytest.raises(ModelMismatchError, match="do not match the robot's"):
        check_matches_profile(m, list(reversed(so101.joint_names)), cameras)
    with pytest.raises(ModelMismatchError, match="camera 'wrist' is not on the robot; its cameras: front"):
        check_matches_profile(m, so101.joint_names, {"front": (640, 480)})


def test_the_runtime_refuses_a_model_for_another_robot(model: Path, panda) -> None:
    with pytest.raises(ModelMismatchError, match="do not match the robot's"):
        PolicyRuntime.load(model, panda)


def test_declared_io_must_follow_the_contract_and_the_graph(model: Path, fx) -> None:
    data = json.loads((model / MANIFEST).read_text())
    data["graphs"]["policy"]["outputs"][0]["shape"] = [1, 7, 6]  # the chunk is 5 long
    (model / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="do not follow the contract"):
        PolicyRuntime.load(model)
    # A manifest that is self-consistent but does not describe the graph on disk.
    other = fx.TinyPolicy(chunk_length=7)
    fx.manifest_for(other, data["graphs"]["policy"]["sha256"]).save(model)
    with pytest.raises(ManifestError, match="graph output 'action' is tensor\\(float\\) \\[1, 5, 6\\]"):
        PolicyRuntime.load(model)


def _rehearse_nodes(monkeypatch: pytest.MonkeyPatch, argv: list[str], command: str = "rehearse") -> tuple[int, list]:
    """Run `tether rehearse` (or ``command``) up to the graph it would start (no processes)."""
    from tether import cli

    captured: list = []

    def fake_run(command: str, nodes: list, report: Path, budget: float) -> int:
        captured.extend(nodes)
        return 1

    monkeypatch.setattr(cli, "_run", fake_run)
    return cli.main([command, *argv]), captured


def test_collect_with_a_policy_driving_records_at_the_models_image_size(model: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    argv = ["--autonomous", "policy", "--policy", str(model), "--device", "replay", "--out", str(tmp_path / "ds")]
    code, nodes = _rehearse_nodes(monkeypatch, argv, command="collect")
    assert code == 1
    by_name = {n.name: n for n in nodes}
    for name in ("twin", "recorder"):
        assert (by_name[name].parameters["camera_width"], by_name[name].parameters["camera_height"]) == (16, 12)
    assert by_name["policy"].parameters["model_dir"] == str(model.resolve())


def test_collect_refuses_a_policy_the_expert_would_ignore(model: Path, tmp_path: Path, capsys,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    code, nodes = _rehearse_nodes(monkeypatch, ["--policy", str(model), "--out", str(tmp_path / "ds")], "collect")
    assert code == 2 and nodes == []
    assert "--policy is for --autonomous policy" in capsys.readouterr().err


def test_rehearse_with_a_policy_renders_the_twin_at_the_models_image_size(model: Path, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    code, nodes = _rehearse_nodes(monkeypatch, ["--source", "policy", "--policy", str(model),
                                                "--report", str(tmp_path / "r")])
    assert code == 1  # the stand-in runner's code
    twin, source = nodes[0], nodes[1]
    assert (twin.parameters["camera_width"], twin.parameters["camera_height"]) == (16, 12)
    assert source.executable == "policy_node" and source.parameters["model_dir"] == str(model.resolve())


@pytest.mark.parametrize("argv, message", [
    (["--robot", "panda"], "do not match the robot's"),
    (["--camera-size", "64", "48"], "differs from the model's image size 16 12"),
    (["--policy", "/no/such/model"], "policy model folder /no/such/model does not exist"),
])
def test_rehearse_refuses_a_model_that_does_not_fit_before_starting(model: Path, tmp_path: Path, capsys,
                                                                    monkeypatch: pytest.MonkeyPatch, argv, message) -> None:
    argv = ["--source", "policy", *(["--policy", str(model)] if "--policy" not in argv else []), *argv]
    code, nodes = _rehearse_nodes(monkeypatch, [*argv, "--report", str(tmp_path / "r")])
    assert code == 2 and nodes == []
    assert message in capsys.readouterr().err


def _state_as_float64(graph) -> None:
    """The state input becomes float64, cast to float32 inside: a valid graph the manifest misdescribes."""
    from onnx import TensorProto, helper

    graph.graph.input[0].type.tensor_type.elem_type = TensorProto.DOUBLE
    for node in graph.graph.node:
        node.input[:] = ["state_f32" if name == STATE else name for name in node.input]
    graph.graph.node.insert(0, helper.make_node("Cast", [STATE], ["state_f32"], to=TensorProto.FLOAT))


GRAPH_VS_MANIFEST = {  # the graph's difference from the fixture's manifest -> what the check says
    "image shape": ({"cameras": {"front": (32, 24), "wrist": (32, 24)}}, None,
                    "graph input 'observation.images.front' is tensor(float) [1, 1, 3, 24, 32]; the manifest says "
                    "float32 [1, 1, 3, 12, 16]"),
    "input names": ({"cameras": {"front": (16, 12), "top": (16, 12)}}, None,
                    "graph inputs ['observation.images.front', 'observation.images.top', 'observation.state'] "
                    "differ from the manifest's ['observation.images.front', 'observation.images.wrist', "
                    "'observation.state']"),
    "state dtype": ({}, _state_as_float64,
                    "graph input 'observation.state' is tensor(double) [1, 1, 6]; the manifest says float32 [1, 1, 6]"),
    "chunk length": ({"chunk_length": 7}, None,
                     "graph output 'action' is tensor(float) [1, 7, 6]; the manifest says float32 [1, 5, 6]"),
}


def _model_misdescribed(folder: Path, fx, case: str) -> tuple[Path, str]:
    """A model folder whose manifest is the fixture's, pinning the sha256 of a graph that differs from it."""
    graph_kw, edit, message = GRAPH_VS_MANIFEST[case]
    folder.mkdir(parents=True)
    graph = fx.build_graph(fx.TinyPolicy(**graph_kw))
    if edit:
        edit(graph)
    import onnx

    onnx.save(graph, str(folder / "policy.onnx"))
    fx.manifest_for(fx.TinyPolicy(), sha256_of(folder / "policy.onnx")).save(folder)
    return folder, message


@pytest.mark.parametrize("case", GRAPH_VS_MANIFEST)
def test_a_graph_that_differs_from_its_manifest_is_named_without_running_it(tmp_path: Path, fx, case: str) -> None:
    folder, message = _model_misdescribed(tmp_path / "model", fx, case)
    with pytest.raises(ManifestError) as refused:
        check_graph_matches_manifest(folder, load_manifest(folder))
    assert str(refused.value) == f"policy.onnx: {message}"
    with pytest.raises(ManifestError, match="the manifest says|differ from the manifest"):
        PolicyRuntime.load(folder)  # the policy node's own check stays


@pytest.mark.parametrize("case", GRAPH_VS_MANIFEST)
def test_rehearse_refuses_a_graph_that_differs_from_its_manifest_before_any_node_starts(
        tmp_path: Path, fx, capsys, monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    folder, message = _model_misdescribed(tmp_path / "model", fx, case)
    capsys.readouterr()
    code, nodes = _rehearse_nodes(monkeypatch, ["--source", "policy", "--policy", str(folder),
                                                "--report", str(tmp_path / "r")])
    assert (code, nodes) == (2, [])
    line = f"tether rehearse: --policy {folder.resolve()}: policy.onnx: {message}"
    assert capsys.readouterr().err.splitlines() == [line]
    assert not (tmp_path / "r").exists()


def test_collect_refuses_a_graph_that_differs_from_its_manifest_before_any_node_starts(
        tmp_path: Path, fx, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, message = _model_misdescribed(tmp_path / "model", fx, "image shape")
    capsys.readouterr()
    argv = ["--autonomous", "policy", "--policy", str(folder), "--device", "replay", "--out", str(tmp_path / "ds")]
    code, nodes = _rehearse_nodes(monkeypatch, argv, command="collect")
    assert (code, nodes) == (2, [])
    line = f"tether collect: --policy {folder.resolve()}: policy.onnx: {message}"
    assert capsys.readouterr().err.splitlines() == [line]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
