"""The SROS2 policy for robots: only the gate may publish on the robot's command topic.

(Checked in this session against SROS2 0.13's policy.xsd, and turned into DDS permissions that
validate against the DDS Security permissions.xsd with SROS2's own XSLT; this test keeps the rule.)
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from tether.robot_profile import REPO_ROOT

POLICY = REPO_ROOT / "config" / "security" / "tether.policy.xml"


def allowed(rule: str) -> dict[str, set[str]]:
    """Enclave -> the topics its nodes may ``rule`` (publish or subscribe)."""
    root = ET.parse(POLICY).getroot()
    assert root.tag == "policy" and root.get("version") == "0.2.0"
    return {e.get("path", ""): {t.text or "" for ts in e.iter("topics") if ts.get(rule) == "ALLOW" for t in ts}
            for e in root.iter("enclave")}


def test_only_the_gate_may_command_the_robot(so101) -> None:
    publishers = {path for path, topics in allowed("publish").items() if so101.command_topic in topics}
    assert publishers == {"/tether/gate"}
    assert so101.command_topic in allowed("subscribe")["/tether/robot"]


def test_each_source_publishes_only_its_own_topic_and_the_gate_hears_them_all() -> None:
    from tether_ros.conversions import source_topic

    publish, subscribe = allowed("publish"), allowed("subscribe")
    for source in ("policy", "teleop"):
        assert {p for p, topics in publish.items() if source_topic(source) in topics} == {f"/tether/{source}"}
        assert source_topic(source) in subscribe["/tether/gate"]
    assert not any("joint_trajectory" in t for t in publish["/tether/operator"] | publish["/tether/session"])
