"""Build the twin's MuJoCo model: robot URDF + servos + gripper pads + tabletop scene + task.

The URDF -> MJCF conversion runs once per (URDF, profile, task, builder version) and is cached
on disk as MJCF XML, so later twins only parse the XML (meshes are still read from the
installed package, by absolute path).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

# Headless default for offscreen GL; it must be set before mujoco is first imported.
if "DISPLAY" not in os.environ:
    os.environ.setdefault("MUJOCO_GL", "egl")

import mujoco
import numpy as np

from tether.robot_profile import RobotProfile
from tether.sim import tasks as tasks_module
from tether.sim.tasks import get_task

# Bump whenever the builder's output changes, so stale cache entries are never reused.
BUILDER_VERSION = "1"

# Collision bits: the robot collides with the world (floor, objects) but not with itself;
# objects collide with everything.
ROBOT_CONTYPE, ROBOT_CONAFFINITY = 2, 1
WORLD_CONTYPE, WORLD_CONAFFINITY = 1, 3
HIDDEN_GROUP = 3  # collision meshes live here; the renderer does not draw it

MESH_EXTENSIONS = (".stl", ".obj", ".msh")
# CPU GL is vertex-bound: the SO-101 STLs hold ~400k triangles (~20 fps at any image size).
# Visual meshes are simplified by vertex clustering on this grid (m); collision keeps the originals.
VISUAL_MESH_CELL = 0.003


@dataclass(frozen=True)
class Pad:
    """A box collision pad, posed in ``frame_link`` at q = 0, attached to ``body``."""

    name: str
    body: str
    frame_link: str
    pos: tuple[float, float, float]
    pitch: float  # rotation about the frame's y axis (rad): the jaw faces taper
    half: tuple[float, float, float]


@dataclass(frozen=True)
class GripperPads:
    """Simple contact geometry that replaces a gripper's mesh hulls, which grasp poorly."""

    replace_meshes_on: tuple[str, ...]
    pads: tuple[Pad, ...]


# SO-101 jaw faces, measured from the STL vertices in gripper_link's frame at q = 0: the fixed
# jaw's inner face runs from x=-7.9 mm (tip, z=-100 mm) to -13.3 mm (z=-50 mm); the moving
# jaw's from +7.9 mm (tip) to +11.9 mm (z=-55 mm). Pads are 5 mm thick, behind those faces.
SO101_PADS = GripperPads(
    replace_meshes_on=("gripper_link", "moving_jaw_so101_v1_link"),
    pads=(
        Pad("fixed_jaw_pad", "gripper_link", "gripper_link", (-0.0131, 0.0, -0.075), -0.1076, (0.0025, 0.009, 0.026)),
        Pad("moving_jaw_pad", "moving_jaw_so101_v1_link", "gripper_link", (0.0124, 0.0, -0.0775), 0.0886, (0.0025, 0.009, 0.0225)),
        # Palm between the jaw roots, so a cube pushed up into the hand stops there.
        Pad("palm_pad", "gripper_link", "gripper_link", (-0.006, 0.0, -0.040), 0.0, (0.008, 0.014, 0.005)),
        # The jaw servo behind the palm.
        Pad("jaw_servo_pad", "gripper_link", "gripper_link", (0.0077, 0.0, -0.0234), 0.0, (0.022, 0.020, 0.012)),
    ),
)
GRIPPER_PADS: dict[str, GripperPads] = {"so101": SO101_PADS}

PAD_FRICTION = (1.5, 0.02, 0.0005)
PAD_SOLREF = (0.01, 1.0)
PAD_SOLIMP = (0.95, 0.99, 0.001, 0.5, 2.0)


def build_model(profile: RobotProfile, task: str | None = None, *, cache_dir: Path | None = None) -> mujoco.MjModel:
    """The compiled model for ``profile`` with ``task`` (None: robot and table only)."""
    return mujoco.MjModel.from_xml_path(str(model_xml_path(profile, task, cache_dir=cache_dir)))


def model_xml_path(profile: RobotProfile, task: str | None = None, *, cache_dir: Path | None = None) -> Path:
    """Path of the cached MJCF file, converting the URDF if no valid entry exists."""
    if task is not None:
        get_task(task)  # fail fast, before any conversion
    path = (cache_dir or default_cache_dir()) / f"{profile.name}-{task or 'none'}-{cache_key(profile, task)}.xml"
    if not path.exists():
        _write_atomically(path, build_mjcf(profile, task))
    return path


def build_mjcf(profile: RobotProfile, task: str | None = None) -> str:
    """Convert the profile's URDF to the full scene MJCF (no cache)."""
    return SceneBuilder(profile, task).build().to_xml()


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tether" / "mjcf"


def cache_key(profile: RobotProfile, task: str | None) -> str:
    h = hashlib.sha256()
    # The builder's own source is part of the key: editing this file or tasks.py invalidates.
    sources = "".join(Path(str(m.__file__)).read_text() for m in (sys.modules[__name__], tasks_module))
    parts = (BUILDER_VERSION, mujoco.__version__, sources, profile.urdf_text(),
             repr(dataclasses.replace(profile, source_path="")), str(task))
    for part in parts:
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the cache may be shared between users' tools
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class UrdfFrames:
    """Resolves URDF links (which MuJoCo may have fused away) to a MuJoCo body plus an offset."""

    WORLD_LINK = "tether_world"

    def __init__(self, urdf: ET.Element) -> None:
        self._fixed: dict[str, tuple[str, np.ndarray, np.ndarray]] = {}
        for joint in urdf.findall("joint"):
            if joint.get("type") == "fixed":
                child = str(joint.find("child").get("link"))  # type: ignore[union-attr]
                parent = str(joint.find("parent").get("link"))  # type: ignore[union-attr]
                pos, quat = _urdf_origin(joint.find("origin"))
                self._fixed[child] = (parent, pos, quat)

    def resolve(self, spec: mujoco.MjSpec, link: str) -> tuple[mujoco.MjsBody, np.ndarray, np.ndarray]:
        """(body, pos, quat) of ``link`` expressed in the nearest surviving body."""
        pos, quat = np.zeros(3), np.array([1.0, 0, 0, 0])
        while link != self.WORLD_LINK and link != "world":
            body = spec.body(link)
            if body is not None:
                return body, pos, quat
            if link not in self._fixed:
                raise KeyError(f"link '{link}' is neither a MuJoCo body nor fixed to one")
            parent, p, q = self._fixed[link]
            pos, quat = _compose(p, q, pos, quat)
            link = parent
        return spec.worldbody, pos, quat


class SceneBuilder:
    """One job: turn a profile (+ task) into an MjSpec ready to compile."""

    def __init__(self, profile: RobotProfile, task: str | None) -> None:
        self.profile = profile
        self.task = get_task(task) if task is not None else None

    def build(self) -> mujoco.MjSpec:
        urdf = self._prepared_urdf()
        spec = mujoco.MjSpec.from_string(ET.tostring(urdf, encoding="unicode"))
        frames = UrdfFrames(urdf)
        self._set_options(spec)
        self._style_robot_geoms(spec)
        self._simplify_visual_meshes(spec)
        self._add_servos(spec)
        self._add_gripper_pads(spec)
        self._add_ee_site(spec, frames)
        self._add_scene(spec)
        spec.add_numeric(name="tether_base_pos", data=list(map(float, self.profile.base_pos)))
        self._add_cameras(spec, frames)
        if self.task is not None:
            self.task.add_to_spec(spec, self.profile)
        spec.compile()  # validates now, so a broken model never reaches the cache
        return spec

    # -- URDF ---------------------------------------------------------------------------------
    def _prepared_urdf(self) -> ET.Element:
        """The URDF with its root fixed to a world link at base_pos and MuJoCo import options."""
        root = ET.fromstring(self.profile.urdf_text())
        children = {j.find("child").get("link") for j in root.findall("joint")}  # type: ignore[union-attr]
        base = next(link.get("name") for link in root.findall("link") if link.get("name") not in children)
        ET.SubElement(root, "link", name=UrdfFrames.WORLD_LINK)
        joint = ET.SubElement(root, "joint", name="tether_base_joint", type="fixed")
        ET.SubElement(joint, "parent", link=UrdfFrames.WORLD_LINK)
        ET.SubElement(joint, "child", link=str(base))
        ET.SubElement(joint, "origin", xyz=" ".join(map(str, self.profile.base_pos)), rpy="0 0 0")
        # Visual meshes MuJoCo cannot read (Collada) are dropped; the collision meshes then show.
        visual_files = [m.get("filename", "") for m in root.iter("mesh") if _in_visual(root, m)]
        keep_visual = all(f.lower().endswith(MESH_EXTENSIONS) for f in visual_files)
        mj = ET.Element("mujoco")
        ET.SubElement(mj, "compiler", discardvisual=str(not keep_visual).lower(), strippath="false",
                      fusestatic="true", balanceinertia="true")
        root.insert(0, mj)
        return root

    def _set_options(self, spec: mujoco.MjSpec) -> None:
        spec.modelname = f"tether_{self.profile.name}"
        spec.option.integrator = mujoco.mjtIntegrator.mjINT_IMPLICITFAST
        spec.option.cone = mujoco.mjtCone.mjCONE_ELLIPTIC  # better stick/slip for grasps
        spec.option.timestep = 0.002
        # Rendering is on CPU: no multisampling, small shadow map (shadows are off anyway).
        spec.visual.quality.offsamples = 0
        spec.visual.quality.shadowsize = 0
        spec.visual.global_.offwidth = max([640] + [c.width for c in self.profile.cameras])
        spec.visual.global_.offheight = max([480] + [c.height for c in self.profile.cameras])

    def _style_robot_geoms(self, spec: mujoco.MjSpec) -> None:
        has_visuals = any(g.contype == 0 and g.conaffinity == 0 for g in spec.geoms)
        for geom in spec.geoms:
            if geom.contype == 0 and geom.conaffinity == 0:
                geom.group = 1
                continue
            geom.contype, geom.conaffinity = ROBOT_CONTYPE, ROBOT_CONAFFINITY
            if has_visuals:
                geom.group = HIDDEN_GROUP

    def _simplify_visual_meshes(self, spec: mujoco.MjSpec) -> None:
        simplified: dict[str, str] = {}
        for geom in spec.geoms:
            if geom.type != mujoco.mjtGeom.mjGEOM_MESH or geom.contype != 0 or geom.conaffinity != 0:
                continue
            source = spec.mesh(geom.meshname)
            if not source.file.lower().endswith(".stl"):
                continue
            if source.name not in simplified:
                verts, faces = simplify_mesh(*read_stl(source.file), VISUAL_MESH_CELL / float(np.max(source.scale)))
                name = f"{source.name}_visual"
                spec.add_mesh(name=name, uservert=verts.ravel().tolist(), userface=faces.ravel().tolist(),
                              scale=list(source.scale))
                simplified[source.name] = name
            geom.meshname = simplified[source.name]

    # -- actuation ----------------------------------------------------------------------------
    def _add_servos(self, spec: mujoco.MjSpec) -> None:
        servo, grip = self.profile.servo, self.profile.gripper
        for j in self.profile.joints:
            joint = spec.joint(j.name)
            joint.armature, joint.frictionloss = servo.armature, servo.frictionloss
            joint.damping = [servo.damping, 0.0, 0.0]  # MuJoCo 4: linear term of a damping polynomial
            is_grip = grip is not None and grip.joint == j.name
            kp = grip.kp if is_grip and grip else servo.kp
            force = grip.force_limit if is_grip and grip else servo.force_limit
            act = spec.add_actuator(name=j.name, target=j.name, trntype=mujoco.mjtTrn.mjTRN_JOINT)
            act.set_to_position(kp=kp, kv=servo.kv)
            act.ctrllimited = mujoco.mjtLimited.mjLIMITED_TRUE
            act.ctrlrange = [j.lower, j.upper]
            act.forcelimited = mujoco.mjtLimited.mjLIMITED_TRUE
            act.forcerange = [-force, force]

    def _add_gripper_pads(self, spec: mujoco.MjSpec) -> None:
        pads = GRIPPER_PADS.get(self.profile.name)
        if pads is None:
            return
        for geom in spec.geoms:
            body = geom.parent
            if body.name in pads.replace_meshes_on and geom.contype != 0:
                geom.contype = geom.conaffinity = 0
        for pad in pads.pads:
            pos, quat = _pad_pose_in_body(spec, pad)
            spec.body(pad.body).add_geom(
                name=pad.name, type=mujoco.mjtGeom.mjGEOM_BOX, size=list(pad.half), pos=pos, quat=quat,
                contype=ROBOT_CONTYPE, conaffinity=ROBOT_CONAFFINITY, condim=4, friction=list(PAD_FRICTION),
                solref=list(PAD_SOLREF), solimp=list(PAD_SOLIMP), group=HIDDEN_GROUP, density=0.0,
                rgba=[0.2, 0.6, 1.0, 0.5])

    def _add_ee_site(self, spec: mujoco.MjSpec, frames: UrdfFrames) -> None:
        body, pos, quat = frames.resolve(spec, self.profile.ee_frame)
        body.add_site(name=self.profile.ee_frame, pos=pos, quat=quat, size=[0.004, 0, 0], group=4)

    # -- scene --------------------------------------------------------------------------------
    def _add_scene(self, spec: mujoco.MjSpec) -> None:
        spec.add_texture(name="skybox", type=mujoco.mjtTexture.mjTEXTURE_SKYBOX,
                         builtin=mujoco.mjtBuiltin.mjBUILTIN_GRADIENT, rgb1=[0.75, 0.82, 0.9],
                         rgb2=[0.2, 0.25, 0.3], width=64, height=64)
        spec.add_texture(name="table", type=mujoco.mjtTexture.mjTEXTURE_2D,
                         builtin=mujoco.mjtBuiltin.mjBUILTIN_CHECKER, rgb1=[0.55, 0.42, 0.3],
                         rgb2=[0.5, 0.38, 0.27], width=256, height=256)
        mat = spec.add_material(name="table", texrepeat=[8, 8], reflectance=0.0)
        mat.textures[mujoco.mjtTextureRole.mjTEXROLE_RGB] = "table"
        spec.worldbody.add_geom(name="table", type=mujoco.mjtGeom.mjGEOM_PLANE, size=[1.5, 1.5, 0.05],
                                material="table", contype=WORLD_CONTYPE, conaffinity=WORLD_CONAFFINITY,
                                condim=3, friction=[0.8, 0.005, 0.0001])
        spec.worldbody.add_light(name="key", pos=[0.3, -0.4, 1.2], dir=[-0.2, 0.4, -1.0],
                                 diffuse=[0.7, 0.7, 0.7], castshadow=False)
        spec.worldbody.add_light(name="fill", pos=[-0.4, 0.5, 1.0], dir=[0.4, -0.5, -1.0],
                                 diffuse=[0.35, 0.35, 0.35], castshadow=False)
        spec.visual.headlight.ambient = [0.3, 0.3, 0.3]
        spec.visual.headlight.diffuse = [0.3, 0.3, 0.3]

    def _add_cameras(self, spec: mujoco.MjSpec, frames: UrdfFrames) -> None:
        for cam in self.profile.cameras:
            if cam.parent == "world":
                body, pos, quat = spec.worldbody, np.asarray(cam.pos, float), cam.orientation()
            else:
                body, off_p, off_q = frames.resolve(spec, cam.parent)
                pos, quat = _compose(off_p, off_q, np.asarray(cam.pos, float), cam.orientation())
            body.add_camera(name=cam.name, pos=pos, quat=quat, fovy=cam.fovy)


# -- meshes ----------------------------------------------------------------------------------------
def read_stl(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(vertices, faces) of a binary or ASCII STL, one vertex per triangle corner."""
    raw = Path(path).read_bytes()
    count = int(np.frombuffer(raw, "<u4", 1, 80)[0]) if len(raw) >= 84 else -1
    if count >= 0 and len(raw) == 84 + 50 * count:
        rec = np.dtype([("n", "<f4", 3), ("v", "<f4", (3, 3)), ("attr", "<u2")])
        tris = np.frombuffer(raw, rec, count, 84)["v"].astype(float)
    else:
        words = raw.decode("ascii", "replace").split()
        idx = [i for i, w in enumerate(words) if w == "vertex"]
        tris = np.array([[float(words[i + k]) for k in (1, 2, 3)] for i in idx]).reshape(-1, 3, 3)
    return tris.reshape(-1, 3), np.arange(len(tris) * 3).reshape(-1, 3)


def simplify_mesh(verts: np.ndarray, faces: np.ndarray, cell: float) -> tuple[np.ndarray, np.ndarray]:
    """Vertex clustering: merge vertices sharing a grid cell, drop collapsed and duplicate faces."""
    keys = np.floor(verts / cell).astype(np.int64)
    _, cluster = np.unique(keys, axis=0, return_inverse=True)
    cluster = cluster.ravel()
    counts = np.bincount(cluster)
    merged = np.zeros((len(counts), 3))
    np.add.at(merged, cluster, verts)
    merged /= counts[:, None]
    f = cluster[faces]
    f = f[(f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])]
    _, first = np.unique(np.sort(f, axis=1), axis=0, return_index=True)
    f = f[np.sort(first)]
    used, f = np.unique(f, return_inverse=True)
    return merged[used], f.reshape(-1, 3)


# -- small geometry helpers ---------------------------------------------------------------------
def _in_visual(root: ET.Element, mesh: ET.Element) -> bool:
    return any(mesh in list(v.iter("mesh")) for v in root.iter("visual"))


def _urdf_origin(origin: ET.Element | None) -> tuple[np.ndarray, np.ndarray]:
    if origin is None:
        return np.zeros(3), np.array([1.0, 0, 0, 0])
    pos = np.array([float(v) for v in origin.get("xyz", "0 0 0").split()])
    rpy = [float(v) for v in origin.get("rpy", "0 0 0").split()]
    quat = np.zeros(4)
    mujoco.mju_euler2Quat(quat, np.array(rpy), "XYZ")  # URDF rpy: fixed-axis X, Y, Z
    return pos, quat


def _compose(p1: np.ndarray, q1: np.ndarray, p2: np.ndarray, q2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pose (p1, q1) followed by (p2, q2), both wxyz."""
    pos, quat = np.zeros(3), np.zeros(4)
    mujoco.mju_rotVecQuat(pos, p2, q1)
    mujoco.mju_mulQuat(quat, q1, q2)
    return pos + p1, quat


def _inverse(p: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    qi, pi = np.zeros(4), np.zeros(3)
    mujoco.mju_negQuat(qi, q)
    mujoco.mju_rotVecQuat(pi, -p, qi)
    return pi, qi


def _pad_pose_in_body(spec: mujoco.MjSpec, pad: Pad) -> tuple[np.ndarray, np.ndarray]:
    """Pad pose given in ``frame_link`` (at q = 0) re-expressed in ``pad.body``."""
    quat = np.array([np.cos(pad.pitch / 2), 0.0, np.sin(pad.pitch / 2), 0.0])
    pos = np.asarray(pad.pos, float)
    if pad.body == pad.frame_link:
        return pos, quat
    child = spec.body(pad.body)
    if child.parent.name != pad.frame_link:
        raise ValueError(f"pad '{pad.name}': body '{pad.body}' is not a child of '{pad.frame_link}'")
    inv_p, inv_q = _inverse(np.asarray(child.pos, float), np.asarray(child.quat, float))
    return _compose(inv_p, inv_q, pos, quat)
