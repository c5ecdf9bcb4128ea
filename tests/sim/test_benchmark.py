"""The twin benchmark writes machine-readable results and a markdown summary."""

import json

from tether.sim import benchmark


def test_benchmark_reports_ratios_against_real_time(so101, tmp_path) -> None:
    results = benchmark.run(so101, repeats=1, seconds=0.05)
    assert results["realtime_factor_no_cameras"]["median"] > results["realtime_factor_two_cameras_128_at_30hz"]["median"] > 0
    ratio = results["steps_per_s_no_cameras"]["median"] * results["timestep_s"]
    assert abs(ratio - results["realtime_factor_no_cameras"]["median"]) < 1e-6
    md = benchmark.write(results, tmp_path / "sim.json")
    assert json.loads((tmp_path / "sim.json").read_text())["robot"] == "so101"
    assert "× real time" in md.read_text()
