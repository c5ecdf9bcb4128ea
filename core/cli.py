"""The ``tether`` command line. Subcommands import their capability lazily so ``--help`` is instant."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tether.errors import TetherError
from tether.graph import NodeSpec
from tether.graph_args import graph_arguments
from tether.policy_runtime.runtime import threads
from tether.policy_runtime.training.commands import add_export, add_train
from tether.preflight import Preflight, UsageError

if TYPE_CHECKING:
    from tether.graph import CollectArgs, RehearsalArgs
    from tether.robot_profile import RobotProfile


def _add_sim(sub: argparse._SubParsersAction) -> None:
    sim = sub.add_parser("sim", help="the MuJoCo twin without ROS: scripted expert, videos")
    sim_sub = sim.add_subparsers(dest="sim_command", required=True)
    exp = sim_sub.add_parser("expert", help="run the scripted expert headless and report success")
    _common(exp)
    exp.add_argument("--episodes", type=int, default=50)
    exp.add_argument("--json", type=Path, help="write the summary here")
    exp.set_defaults(func=_sim_expert)
    view = sim_sub.add_parser("view", help="write a video of the expert from a camera")
    _common(view)
    view.add_argument("--episodes", type=int, default=1)
    view.add_argument("--camera", default="front")
    view.add_argument("--size", type=int, nargs=2, metavar=("W", "H"), default=None)
    view.add_argument("--out", type=Path, default=Path("demo.mp4"))
    view.set_defaults(func=_sim_view)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--robot", default="so101")
    p.add_argument("--task", default="pick_place")
    p.add_argument("--seed", type=int, default=0)


# CLI spellings kept beside the launch argument's own (--dataset, --linger-s): the names people know.
_ALIASES = {"dataset": ("--out",), "linger_s": ("--linger",)}
# Arguments whose bad value the preflight refuses in its one line (argparse would print its usage).
_CHECKED_BY_PREFLIGHT = {"source", "device"}


def _add_graph_arguments(p: argparse.ArgumentParser, args_type: type) -> None:
    """One flag per graph argument, with the launch argument's name, default, help and choices
    (tether.graph_args: the launch files declare the very same list)."""
    for g in graph_arguments(args_type):
        flags = (g.flag, *_ALIASES.get(g.name, ()))
        if g.kind is bool:
            p.add_argument(*flags, dest=g.name, action=argparse.BooleanOptionalAction, default=g.default, help=g.help)
            continue
        checked_here = g.choices and g.name not in _CHECKED_BY_PREFLIGHT
        text = g.help if checked_here or not g.choices else f"{g.help}: {', '.join(g.choices)}"
        p.add_argument(*flags, dest=g.name, type=g.kind, default=g.default, help=text,
                       choices=g.choices if checked_here else None)
    p.add_argument("--camera-size", type=int, nargs=2, metavar=("W", "H"), default=None,
                   help="shorthand for --camera-width W --camera-height H (e.g. 128 128)")


def _add_rehearse(sub: argparse._SubParsersAction) -> None:
    from tether.graph import RehearsalArgs

    r = sub.add_parser("rehearse", help="run the full ROS 2 graph against the twin and write a report")
    _add_graph_arguments(r, RehearsalArgs)
    r.set_defaults(func=_rehearse)


def _sim_expert(a: argparse.Namespace) -> int:
    from tether.report import outcome_summary
    from tether.robot_profile import load_profile
    from tether.sim.evaluate import run_expert_episodes

    Preflight("sim expert").at_least("--episodes", a.episodes, 1)
    results = run_expert_episodes(load_profile(a.robot), a.task, a.episodes, a.seed, progress=True)
    summary = outcome_summary(results)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(summary, indent=2))
    lo, hi = summary["ci95"]
    print(f"expert on {a.robot}/{a.task}: {summary['successes']}/{summary['episodes']} "
          f"= {summary['success_rate']:.2f} (95% CI {lo:.2f}-{hi:.2f}), mean {summary['mean_duration_s']:.1f} s")
    return 0


def _sim_view(a: argparse.Namespace) -> int:
    from tether.robot_profile import load_profile
    from tether.sim.evaluate import record_expert_video

    check = Preflight("sim view")
    check.at_least("--episodes", a.episodes, 1)
    check.image_size("--size", a.size)
    size = tuple(a.size) if a.size else None
    frames = record_expert_video(load_profile(a.robot), a.task, a.episodes, a.seed, a.out, camera=a.camera, size=size)
    print(f"wrote {a.out} ({frames} frames)")
    return 0


def _run(command: str, nodes: list[NodeSpec], report: Path, budget: float) -> int:
    """Run a graph; on failure say why and where the logs are, and return the exit code."""
    from tether.runner import GraphFailed, run_graph

    try:
        code = run_graph(nodes, report / "logs", timeout=budget)
    except GraphFailed as exc:
        print(f"tether {command}: the graph failed: {exc}", file=sys.stderr)
        return 2
    if code != 0:
        print(f"tether {command}: session exited with {code}; logs in {report / 'logs'}", file=sys.stderr)
    return code


def _hang_guard(sim_seconds: float) -> float:
    """Wall seconds after which the runner calls a graph hung. Not a time limit: episodes run in the twin's
    time and the session fails a graph that stops answering, so this only catches a session that hangs;
    it allows a machine four times slower than real time."""
    return 120.0 + 4.0 * sim_seconds


def _rehearse(a: argparse.Namespace) -> int:
    from tether.graph import rehearsal_graph

    args = _rehearsal_args(a)
    report = Path(args.report)
    code = _run("rehearse", rehearsal_graph(args), report, _hang_guard(a.episodes * (a.episode_timeout + 10.0)))
    if code != 0:
        return code
    summary = json.loads((report / "report.json").read_text())
    lat = summary["latency_ms"]["obs_to_command"]
    lo, hi = summary["ci95"]
    print(f"success {summary['successes']}/{summary['episodes']} = {summary['success_rate']:.2f} "
          f"(95% CI {lo:.2f}-{hi:.2f}); obs->command p50 {lat.get('p50') or float('nan'):.1f} ms "
          f"p99 {lat.get('p99') or float('nan'):.1f} ms; command rate {summary['command_rate_hz']:.0f} Hz")
    if summary["failures"]:
        print("failed episodes missed: " + ", ".join(f"{k} {n}" for k, n in summary["failures"].items()))
    print(f"report: {report / 'report.md'}")
    return 0


def _rehearsal_args(a: argparse.Namespace) -> RehearsalArgs:
    """The graph's arguments, every one checked before any process starts or any file is written."""
    from tether.graph import SOURCES, RehearsalArgs

    check = Preflight("rehearse")
    if a.source not in SOURCES:
        check.refuse(f"--source {a.source} is not a source; sources: {', '.join(SOURCES)}")
    _check_run_lengths(check, a)
    check.not_negative("--video-episodes", a.video_episodes)
    check.not_negative("--replan-hz", a.replan_hz, " inferences a second (0: the policy node's default)")
    profile = _profile_and_task(check, a)
    check.writable_folder("--report", Path(a.report))
    size = _camera_size(check, a)
    w, h = size or (0, 0)
    model = ""
    if a.source == "policy":
        model, (w, h) = _policy_model(check, Path(a.policy) if a.policy else None, profile, size)
    elif a.policy or a.replan_hz or a.scheduler:
        check.refuse(f"--policy, --replan-hz and --scheduler are for --source policy (the source is '{a.source}')")
    return dataclasses.replace(_graph_args(RehearsalArgs, a), report=str(Path(a.report).resolve()),
                               camera_width=w, camera_height=h, policy=model)


def _graph_args(args_type: type, a: argparse.Namespace) -> Any:
    """The graph's arguments as given on the command line (one flag per field)."""
    return args_type(**{f.name: getattr(a, f.name) for f in dataclasses.fields(args_type)})


def _camera_size(check: Preflight, a: argparse.Namespace) -> list[int] | None:
    """--camera-size W H, or --camera-width and --camera-height (both, or neither: the profile's)."""
    given = (a.camera_width, a.camera_height)
    if a.camera_size is not None and any(given):
        check.refuse("give --camera-size or --camera-width/--camera-height, not both")
    if a.camera_size is None and any(given):
        check.image_size("--camera-width/--camera-height", list(given))
        return list(given)
    return [int(v) for v in a.camera_size] if a.camera_size is not None else None


def _check_deployment(check: Preflight, a: argparse.Namespace) -> None:
    """--namespace is a ROS namespace and --params-file a file, before any node starts."""
    from tether.graph import ros_namespace

    with check.about("--namespace"):
        ros_namespace(a.namespace)
    if a.params_file and not Path(a.params_file).is_file():
        check.refuse(f"--params-file {a.params_file}: no such file; give a ROS parameters YAML")


def _check_run_lengths(check: Preflight, a: argparse.Namespace) -> None:
    check.at_least("--episodes", a.episodes, 1)
    check.positive("--episode-timeout", a.episode_timeout, " seconds")
    check.positive("--gate-rate-hz", a.gate_rate_hz, " commands a second")
    check.image_size("--camera-size", a.camera_size)
    _check_deployment(check, a)


def _profile_and_task(check: Preflight, a: argparse.Namespace) -> RobotProfile:
    from tether.robot_profile import load_profile
    from tether.sim.tasks import get_task

    with check.about("--robot"):
        profile = load_profile(a.robot)
    with check.about("--task"):
        get_task(a.task)
    return profile


def _policy_model(check: Preflight, model_dir: Path | None, profile: RobotProfile,
                  camera_size: list[int] | None) -> tuple[str, tuple[int, int]]:
    """(model folder, twin camera size): the model must fit the robot, its graph must be what its manifest
    says (as the policy node checks at start), and the twin renders at its image size."""
    from tether.policy_runtime.runtime.manifest import check_matches_profile, load_manifest
    from tether.policy_runtime.runtime.inference import check_graph_matches_manifest, resolve_model_dir

    with check.about("--policy"):
        folder = resolve_model_dir(model_dir or "")
        manifest = load_manifest(folder)
    with check.about(f"--policy {folder}"):
        check_matches_profile(manifest, profile.joint_names, {c.name: (c.width, c.height) for c in profile.cameras})
        check_graph_matches_manifest(folder, manifest)
    sizes = sorted({(c.width, c.height) for c in manifest.cameras})
    if len(sizes) > 1:
        check.refuse(f"--policy {folder}: the twin renders every camera at one size, but the model's cameras "
                     f"have sizes {sizes}")
    if sizes and camera_size and tuple(camera_size) != sizes[0]:
        check.refuse(f"--camera-size {camera_size[0]} {camera_size[1]} differs from the model's image size "
                     f"{sizes[0][0]} {sizes[0][1]}; leave it out when a policy drives")
    w, h = sizes[0] if sizes else tuple(camera_size or (0, 0))
    return str(folder), (w, h)


def _add_bench(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="benchmarks: JSON results plus a markdown summary")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    sim = bench_sub.add_parser("sim", help="twin physics and rendering throughput")
    sim.add_argument("--robot", default="so101")
    sim.add_argument("--repeats", type=int, default=5)
    sim.add_argument("--json", type=Path, default=Path("runs/bench/sim.json"))
    sim.set_defaults(func=_bench_sim)
    rec = bench_sub.add_parser("record", help="recording soak through the collect graph: drops, CPU, disk, commit time")
    rec.add_argument("--robot", default="so101")
    rec.add_argument("--seconds", type=float, default=300.0)
    rec.add_argument("--json", type=Path, default=Path("runs/bench/record.json"))
    rec.add_argument("--mcap-images", action="store_true", help="also log raw camera images in the MCAP log")
    rec.set_defaults(func=_bench_record)
    gate = bench_sub.add_parser("gate", help="the gate under attack: a rehearsal with a chunk flood, every kind of "
                                             "malformed chunk, e-stops and switches; limits and refusals")
    gate.add_argument("--robot", default="so101")
    gate.add_argument("--seconds", type=float, default=300.0, help="length of the attacked episode (twin's time)")
    gate.add_argument("--flood-hz", type=float, default=1500.0, help="valid chunks a second on the source's topic")
    gate.add_argument("--malformed-hz", type=float, default=20.0, help="malformed chunks a second")
    gate.add_argument("--json", type=Path, default=Path("runs/bench/gate.json"))
    gate.set_defaults(func=_bench_gate)
    pol = bench_sub.add_parser("policy", help="ACT and diffusion: PyTorch eager vs ONNX fp32 vs INT8, batch 1, and "
                                              "the shipped model's runtime; without training runs, at random weights")
    for name, default in _BENCH_RUNS.items():
        pol.add_argument(f"--{name}", type=Path, metavar="RUN",
                         help=f"a training run of {name} (default: {default} when it exists, else the CPU config "
                              "at random initialisation: latency only, no policy's action error)")
    pol.add_argument("--policies", nargs="+", choices=tuple(_BENCH_RUNS), default=list(_BENCH_RUNS))
    pol.add_argument("--runs", type=int, default=300, help="timed inferences per engine")
    pol.add_argument("--threads", type=int, help="CPU threads for torch and onnxruntime, fixed at start-up like "
                                                 "`tether --threads N` (default: $TETHER_THREADS, else torch's)")
    pol.add_argument("--robot", default="so101", help="joints and cameras of the random-weight networks")
    pol.add_argument("--json", type=Path, default=Path("runs/bench/policy.json"),
                     help="results; the markdown summary and the libraries' log go beside it (.md, .log)")
    pol.set_defaults(func=_bench_policy, uses_torch=True)


def _bench_sim(a: argparse.Namespace) -> int:
    from tether.robot_profile import load_profile
    from tether.sim import benchmark

    md = benchmark.write(benchmark.run(load_profile(a.robot), repeats=a.repeats), a.json)
    print(md.read_text())
    return 0


def _add_collect(sub: argparse._SubParsersAction) -> None:
    from tether.graph import CollectArgs

    c = sub.add_parser("collect", help="teleoperate or run the expert and record every episode to a LeRobot v3 dataset")
    _add_graph_arguments(c, CollectArgs)
    c.set_defaults(func=_collect)


def _collect(a: argparse.Namespace) -> int:
    from tether.graph import collect_graph
    from tether.dataset import info

    args = _collect_args(a)
    report = Path(args.report)
    code = _run("collect", collect_graph(args), report,
                _hang_guard(a.episodes * (a.episode_timeout + a.linger_s + 20.0)))
    if code != 0:
        return code
    print(info(args.dataset))
    return 0


def _collect_args(a: argparse.Namespace) -> CollectArgs:
    """The graph's arguments, every one checked before any process starts or any file is written."""
    from tether.graph import CollectArgs

    check = Preflight("collect")
    _check_run_lengths(check, a)
    check.not_negative("--takeover-after", a.takeover_after, " seconds")
    check.not_negative("--linger", a.linger_s, " seconds")
    profile = _profile_and_task(check, a)
    given = Path(a.dataset)
    check.dataset_to_append("--out", given)
    out = given.resolve()
    report = Path(a.report) if a.report else out.with_name(out.name + "_report")
    check.writable_folder("--report", report)
    check.outside("--report", report, "--out", given)
    size = _camera_size(check, a)
    w, h = size or (0, 0)
    model = ""
    if a.autonomous == "policy":
        model, (w, h) = _policy_model(check, Path(a.policy) if a.policy else None, profile, size)
    elif a.policy:
        check.refuse("--policy is for --autonomous policy (the expert drives otherwise)")
    with check.about("--device"):
        device_path = _check_device(a.device, a.device_path, profile)
    return dataclasses.replace(_graph_args(CollectArgs, a), dataset=str(out), report=str(report.resolve()),
                               camera_width=w, camera_height=h, device_path=device_path, policy=model)


def _check_device(device: str, path: str, profile: object) -> str:
    """Fail before any process starts when the device is absent (DeviceNotFoundError: one line, exit 2).

    Returns the device path the teleop node should open: for the keyboard, this terminal."""
    import os

    from tether.errors import DeviceNotFoundError
    from tether.graph import DEVICES

    if device not in DEVICES:
        raise TetherError(f"unknown device '{device}'; devices: {', '.join(DEVICES)}")
    if device == "keyboard":
        if not sys.stdin.isatty():
            raise DeviceNotFoundError("keyboard", "standard input is not a terminal",
                                      "run tether collect in an interactive terminal or pick another device")
        return path or os.ttyname(sys.stdin.fileno())
    if device in ("gamepad", "spacemouse"):
        from tether.teleop.operator import make_device

        with make_device(device, profile, path):  # type: ignore[arg-type]  # connect(), disconnect()
            pass
    return path


def _add_dataset(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("dataset", help="inspect, check and repair recorded datasets")
    d_sub = d.add_subparsers(dest="dataset_command", required=True)
    for name, text in (("info", "print a summary"), ("validate", "check every invariant"),
                       ("recover", "turn what a crash left into valid episodes, or explain why not")):
        p = d_sub.add_parser(name, help=text)
        p.add_argument("path", type=Path)
        p.set_defaults(func=_dataset, quick=False)
        if name == "validate":
            p.add_argument("--quick", action="store_true",
                           help="read frame times from the mp4 packets instead of decoding every frame "
                                "(skips the check of image means against the pixels)")


def _dataset(a: argparse.Namespace) -> int:
    from tether import dataset

    if not (a.path / "meta" / "info.json").is_file():
        print(f"tether dataset: {a.path} is not a dataset (no meta/info.json)", file=sys.stderr)
        return 2
    if a.dataset_command == "info":
        print(dataset.info(a.path))
        return 0
    if a.dataset_command == "recover":
        print(dataset.recover(a.path))
    problems = dataset.validate(a.path, quick=a.quick, progress=True)
    for problem in problems:
        print(f"problem: {problem}")
    print(f"{a.path}: {'valid' if not problems else f'{len(problems)} problem(s)'}")
    return 0 if not problems else 1


def _bench_gate(a: argparse.Namespace) -> int:
    from tether import gate_soak
    from tether.gate import GateConfig
    from tether.graph import GateSoakArgs, gate_soak_graph
    from tether.robot_profile import load_profile

    check = Preflight("bench gate")
    with check.about("--robot"):
        profile = load_profile(a.robot)
    for flag, value in (("--seconds", a.seconds), ("--flood-hz", a.flood_hz), ("--malformed-hz", a.malformed_hz)):
        check.positive(flag, value)
    folder = a.json.with_suffix("").resolve()
    check.writable_folder("--json", folder)
    args = GateSoakArgs(robot=a.robot, seconds=a.seconds, flood_hz=a.flood_hz, malformed_hz=a.malformed_hz,
                        report=str(folder))
    code = _run("bench gate", gate_soak_graph(args), folder, _hang_guard(a.seconds + 30.0))
    if code != 0:
        return code
    config = GateConfig()
    results = gate_soak.analyse(gate_soak.SoakRecord.load(folder), profile, 1.0 / config.rate_hz, config.max_step)
    md = gate_soak.write(results, a.json)
    print(md.read_text())
    return 0


def _bench_record(a: argparse.Namespace) -> int:
    from tether.teleop import benchmark

    md = benchmark.write(benchmark.run(a.json.parent / "record", a.seconds, a.robot, mcap_images=a.mcap_images), a.json)
    print(md.read_text())
    return 0


_BENCH_RUNS = {"act": Path("runs/e2e/act"), "diffusion": Path("runs/e2e/diffusion")}


def _bench_policy(a: argparse.Namespace) -> int:
    from tether.policy_runtime.training import benchmark
    from tether.robot_profile import load_profile

    chosen = benchmark.resolve_runs({p: getattr(a, p) for p in a.policies}, _BENCH_RUNS)
    e2e = (a.act or _BENCH_RUNS["act"]).parent
    with benchmark.library_log(a.json.with_suffix(".log")) as log:
        results = benchmark.run(chosen, e2e, load_profile(a.robot), a.runs)
    md = benchmark.write(results, a.json)
    print(md.read_text())
    print(f"results: {a.json} and {md}; the libraries' notes: {log}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tether", description="ROS 2 control stack for learned robot policies")
    parser.add_argument("--threads", type=int, dest="process_threads", metavar="N",
                        help=f"CPU threads for torch and onnxruntime in this process, fixed at start-up "
                             f"(default: ${threads.ENV}, else torch's default: the physical cores)")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_rehearse(sub)
    _add_collect(sub)
    _add_dataset(sub)
    _add_sim(sub)
    _add_bench(sub)
    add_train(sub)
    add_export(sub)
    return parser


def _requested_threads(a: argparse.Namespace) -> int | None:
    """``tether --threads N CMD`` or ``tether CMD --threads N`` (train, export, bench policy): one count."""
    given = {n for n in (a.process_threads, getattr(a, "threads", None)) if n is not None}
    if len(given) > 1:
        raise TetherError(f"--threads is given twice, as {' and '.join(map(str, sorted(given)))}; give one count")
    return threads.requested(given.pop() if given else None)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        # Before any torch work: torch's thread count cannot change safely once it has run.
        threads.fix(_requested_threads(args), torch=getattr(args, "uses_torch", False))
        return int(args.func(args))
    except UsageError as exc:  # already names the command and the flag
        print(exc, file=sys.stderr)
        return 2
    except TetherError as exc:
        print(f"tether: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
