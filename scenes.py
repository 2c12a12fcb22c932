"""Built-in procedural RGB-D scenes: a seeded numpy ray caster that needs no download.

Not a stage of Spatial-SSRL (arXiv 2510.27606) but its image source on a fresh machine: make_data.py turns
these pictures and their depth maps into the five pretext tasks when no --rgb / --rgbd folder is given.
Copy this file as one unit to reuse the renderer.

    rgb, depth = scenes.render_scene(seed, height=384, width=512)   # uint8 (H, W, 3), float32 z-depth (m)
    python dev/bench.py data                                          # scenes/s (target >= 30 at 512x384, one core)

Scene kinds (SCENE_KINDS, drawn per seed with SCENE_WEIGHTS), chosen so that image height and depth decouple:
  room      box room seen from any wall, corner or the middle; camera from near the floor to near the ceiling,
            pitched from looking up to looking down, some roll, vertical field of view 40-80°
  corridor  a long narrow room seen along its length
  tabletop  a table with stacked objects seen steeply from above
  open      an open ground plane with a horizon and sky, trees and poles; depth is NaN (invalid) for the sky
            and beyond SENSOR_RANGE metres, like a depth sensor's range
Objects stand on the floor, stack on boxes, sit on wall shelves or hang from the ceiling, at many depths.
Shading: one point light (indoors) or the sun (outdoors), Lambert + ambient with soft edge occlusion, and
soft shadow maps on the floor and on every surface that carries objects.

Paper → code
  "RGB-D images" (DIODE, MegaDepth) as the source of depth/position tasks → render_scene()
Deviations
  1. Synthetic scenes replace the paper's real photos when the user gives none (same tasks, same code path).
  2. Depth is z-depth (distance along the optical axis), as in DIODE; the sky is invalid (NaN) like a
     depth sensor's out-of-range pixels.
"""
from __future__ import annotations

import functools

import numpy as np

SCENE_KINDS = ("room", "corridor", "tabletop", "open")
SCENE_WEIGHTS = (0.45, 0.15, 0.15, 0.25)
ROOM_FACES = ("floor", "ceiling", "x-", "x+", "z-", "z+")
SKY = 6                  # face id of a ray that hits nothing (open scenes)
EPS = 1e-4
NOISE_BANK = 32        # distinct noise textures the scenes draw from
GROUND_FAR = 150.0       # m: open ground farther than this is drawn as sky
SENSOR_RANGE = 40.0      # m: open scenes have no valid depth beyond this (like a depth sensor's range)
def _hash_u01(*ints):
    """Integer hash of int arrays -> float32 in [0, 1); exact and machine-independent."""
    h = np.uint32(2166136261)
    for k, a in enumerate(ints):
        a = np.asarray(a).astype(np.int64).astype(np.uint32)
        h = (h ^ (a * np.uint32(0x9E3779B1 + 2 * k))) * np.uint32(16777619)
        h = h ^ (h >> np.uint32(15))
    h = h * np.uint32(0x2C1B3C6D)
    h = h ^ (h >> np.uint32(12))
    return (h >> np.uint32(8)).astype(np.float32) / np.float32(1 << 24)


def _periodic_noise(rng, size=128, cells=(4, 8, 16, 32)):
    """A tileable size x size noise texture in [0, 1] (sum of bilinear value-noise octaves)."""
    out = np.zeros((size, size), np.float32)
    for i, g in enumerate(cells):
        grid = rng.random((g, g)).astype(np.float32)
        c = np.arange(size, dtype=np.float32) * g / size
        i0 = c.astype(np.int64)
        f = c - i0
        i1 = (i0 + 1) % g
        rows = grid[i0] * (1 - f)[:, None] + grid[i1] * f[:, None]
        out += (rows[:, i0] * (1 - f) + rows[:, i1] * f) / (i + 1)
    out -= out.min()
    return out / max(float(out.max()), 1e-6)


@functools.lru_cache(maxsize=64)
def _noise(k, size=128, cells=(4, 8, 16, 32)):
    """The k-th of NOISE_BANK fixed noise textures (made once per process: scenes stay cheap to sample)."""
    tex = _periodic_noise(np.random.default_rng([k, size, *cells]), size, cells)
    tex.setflags(write=False)
    return tex


def _sample(tex, u, v):
    """Bilinear, wrapping lookup of a square power-of-two texture at texel coordinates (u, v)."""
    n = tex.shape[0]
    flat = tex.ravel()
    u0, v0 = np.floor(u), np.floor(v)
    fu, fv = (u - u0).astype(np.float32), (v - v0).astype(np.float32)
    u0, v0 = u0.astype(np.int32) & (n - 1), v0.astype(np.int32) & (n - 1)
    u1, r0, r1 = (u0 + 1) & (n - 1), v0 * n, ((v0 + 1) & (n - 1)) * n
    top = flat[r0 + u0] * (1 - fu) + flat[r0 + u1] * fu
    return top + (flat[r1 + u0] * (1 - fu) + flat[r1 + u1] * fu - top) * fv


def _hsv(h, s, v):
    """One HSV colour (all in [0, 1]) -> RGB float32 array."""
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i], np.float32)


def _corners(obj):
    """The 8 corners of an object's bounding box (the box's own corners when it is a yawed box)."""
    s = np.array([[i, j, k] for i in (-1, 1) for j in (-1, 1) for k in (-1, 1)], np.float64) * obj["half"]
    if obj["kind"] == "box":
        c, s_ = np.cos(obj["yaw"]), np.sin(obj["yaw"])
        s = np.stack([s[:, 0] * c + s[:, 2] * s_, s[:, 1], -s[:, 0] * s_ + s[:, 2] * c], 1)
    return s + obj["c"]


def _hit_sphere(o, d, obj):
    """Ray-sphere: nearest positive root of |o + t d - c|^2 = r^2; returns t and the normal planes."""
    (ox, oy, oz), r = (o - obj["c"]).tolist(), float(obj["half"][0])
    dx, dy, dz = d
    a = dx * dx + dy * dy + dz * dz
    b = dx * ox + dy * oy + dz * oz
    disc = b * b - a * (ox * ox + oy * oy + oz * oz - r * r)
    t = (-b - np.sqrt(np.maximum(disc, 0))) / a
    t = np.where((disc > 0) & (t > EPS), t, np.inf)
    with np.errstate(invalid="ignore"):
        return t, ((ox + t * dx) / r, (oy + t * dy) / r, (oz + t * dz) / r)


def _hit_box(o, d, obj):
    """Slab test in the box frame (rotated by yaw about the vertical axis)."""
    c, s = np.cos(obj["yaw"]), np.sin(obj["yaw"])
    rx, ry, rz = (o - obj["c"]).tolist()
    origin = (c * rx - s * rz, ry, s * rx + c * rz)
    dl = (c * d[0] - s * d[2], d[1], s * d[0] + c * d[2])
    tmin, tmax = [], []
    for i in range(3):
        h = float(obj["half"][i])
        inv = 1.0 / np.where(np.abs(dl[i]) < 1e-9, np.float32(1e-9), dl[i])
        t1, t2 = (-h - origin[i]) * inv, (h - origin[i]) * inv
        tmin.append(np.minimum(t1, t2))
        tmax.append(np.maximum(t1, t2))
    tnear = np.maximum(np.maximum(tmin[0], tmin[1]), tmin[2])
    tfar = np.minimum(np.minimum(tmax[0], tmax[1]), tmax[2])
    t = np.where((tnear < tfar) & (tnear > EPS), tnear, np.inf)
    nl = [np.where(tmin[i] == tnear, -np.sign(dl[i]), np.float32(0)) for i in range(3)]  # the entry face
    return t, (c * nl[0] + s * nl[2], nl[1], -s * nl[0] + c * nl[2])


def _hit_cylinder(o, d, obj):
    """Upright capped cylinder: side quadratic in the x-z plane plus the top or bottom disc."""
    r, hh = float(obj["half"][0]), float(obj["half"][1])
    (ox, oy, oz) = (o - obj["c"]).tolist()
    dx, dy, dz = d
    a = np.maximum(dx * dx + dz * dz, np.float32(1e-12))
    b = dx * ox + dz * oz
    disc = b * b - a * (ox * ox + oz * oz - r * r)
    ts = (-b - np.sqrt(np.maximum(disc, 0))) / a
    ts = np.where((disc > 0) & (ts > EPS) & (np.abs(oy + ts * dy) <= hh), ts, np.inf)
    cap = hh if oy > 0 else -hh  # the disc facing the camera
    tc = (cap - oy) / np.where(np.abs(dy) < 1e-9, np.float32(1e-9), dy)
    inside = (ox + tc * dx) ** 2 + (oz + tc * dz) ** 2 <= r * r
    tc = np.where(inside & (tc > EPS), tc, np.inf)
    t = np.minimum(ts, tc)
    side = ts <= tc
    with np.errstate(invalid="ignore"):
        nx = np.where(side, (ox + t * dx) / r, np.float32(0))
        nz = np.where(side, (oz + t * dz) / r, np.float32(0))
    return t, (nx, np.where(side, np.float32(0), np.float32(np.sign(oy))), nz)


def _rgb(color, factor):
    """A colour (3,) times a scalar field -> three channel planes."""
    return tuple(np.float32(color[i]) * factor for i in range(3))


def _pick(mask, a, b):
    """Per channel: a where mask else b (a, b: channel planes or constant colours)."""
    return tuple(np.where(mask, a[i], b[i]) for i in range(3))


def _floor_albedo(x, z, mat, noise):
    kind, size = mat["kind"], mat["size"]
    if kind == "planks":
        w, length = float(np.clip(size * 0.5, 0.09, 0.25)), 1.3
        i = np.floor(x / w)
        zz = z + _hash_u01(i, 7) * length
        j = np.floor(zz / length)
        fx, fz = x / w - i, zz / length - j
        grain = _sample(noise, x * 45.0 + 37 * i, zz * 7.0)
        factor = (0.82 + 0.3 * _hash_u01(i, j)) * (0.7 + 0.55 * grain)
        seam = (fx < 0.035) | (fz < 0.006 / length * 30)
        return _rgb(mat["color"], np.where(seam, factor * 0.55, factor))
    if kind == "tiles":
        s = size + 0.15
        i, j = np.floor(x / s), np.floor(z / s)
        fx, fz = x / s - i, z / s - j
        factor = (0.9 + 0.15 * _hash_u01(i, j)) * (0.92 + 0.12 * _sample(noise, x * 30, z * 30))
        alt = ((i + j) % 2 == 1) & mat["checker"]
        col = _pick(alt, _rgb(mat["color2"], factor), _rgb(np.clip(mat["color"] + 0.25, 0, 1), factor))
        grout = np.minimum(np.minimum(fx, 1 - fx), np.minimum(fz, 1 - fz)) < 0.02 / s
        return _pick(grout, (0.55, 0.55, 0.55), col)
    fine = _sample(noise, x * 90.0, z * 90.0) * 0.6 + _sample(noise, x * 9.0 + 50, z * 9.0) * 0.4
    return _rgb(mat["color2"], 0.75 + 0.45 * fine)


def _object_albedo(px, py, pz, obj, noise):
    """Albedo channel planes on an object, patterned in its own frame (plain, stripes, 3D checker, noise)."""
    cx, cy, cz = obj["c"].tolist()
    qx, qy, qz = px - cx, py - cy, pz - cz
    if obj["kind"] == "box":
        c, s = np.cos(obj["yaw"]), np.sin(obj["yaw"])
        qx, qz = qx * c - qz * s, qx * s + qz * c
    k, sc = obj["pattern"], obj["scale"]
    if k == 1:
        sel = np.floor((qy + float(obj["half"][1])) * sc) % 2 == 0
    elif k == 2:
        sel = (np.floor(qx * sc + 100) + np.floor(qy * sc + 100) + np.floor(qz * sc + 100)) % 2 == 0
    else:
        sel = np.ones(qx.shape, bool)
    col = _pick(sel, obj["color"], obj["color2"])
    if k == 3:
        factor = 0.65 + 0.6 * _sample(noise, (qx + qz) * 30.0 + 64, qy * 30.0)
        col = tuple(ch * factor for ch in col)
    return col




TONE_LUT = (255 * (np.arange(4096) / 4095) ** (1 / 1.25) + 0.5).astype(np.uint8)
ROOM_NORMALS = np.array([[0, 1, 0], [0, -1, 0], [1, 0, 0], [-1, 0, 0], [0, 0, 1], [0, 0, -1], [0, 1, 0]], np.float32)


# ----------------------------------------------------------------------------- scene sampling
def _sample_layout(rng, kind):
    """Room box (lo, hi corners, floor at y = 0) for indoor kinds; None for open ground."""
    if kind == "open":
        return None
    if kind == "corridor":
        w, d, h = rng.uniform(1.6, 2.8), rng.uniform(12.0, 25.0), rng.uniform(2.4, 3.2)
    elif kind == "tabletop":
        w, d, h = rng.uniform(4.0, 7.0), rng.uniform(4.0, 7.0), rng.uniform(2.6, 3.2)
    else:
        w, d, h = rng.uniform(3.5, 9.0), rng.uniform(4.0, 10.0), rng.uniform(2.5, 3.4)
    return np.array([-w / 2, 0.0, 0.0]), np.array([w / 2, h, d])


def _sample_materials(rng, sc):
    """Floor / ground material, wall paint, posters and windows, the light, the sky."""
    outdoor = sc["box"] is None
    if outdoor:
        kind = rng.choice(["grass", "tiles", "planks"], p=[0.6, 0.25, 0.15])
        color = (_hsv(rng.uniform(0.2, 0.35), rng.uniform(0.4, 0.8), rng.uniform(0.3, 0.6)) if kind == "grass"
                 else _hsv(rng.uniform(0.0, 0.15), rng.uniform(0.05, 0.4), rng.uniform(0.4, 0.8)))
    else:
        kind = rng.choice(["planks", "tiles", "carpet"], p=[0.45, 0.35, 0.2])
        color = _hsv(rng.uniform(0.02, 0.12), rng.uniform(0.3, 0.7), rng.uniform(0.35, 0.8))
    sc["floor"] = {"kind": str(kind), "color": color, "size": rng.uniform(0.12, 0.6), "checker": rng.random() < 0.4,
                   "color2": _hsv(rng.random(), rng.uniform(0.0, 0.4), rng.uniform(0.3, 0.95))}
    if kind == "grass":
        sc["floor"]["color2"] = color
    sc["wall"] = _hsv(rng.random(), rng.uniform(0.05, 0.35), rng.uniform(0.6, 0.95))
    sc["wall2"] = _hsv(rng.random(), rng.uniform(0.05, 0.4), rng.uniform(0.5, 0.95))
    sc["stripes"] = rng.random() < 0.3
    sc["noise"] = _noise(int(rng.integers(NOISE_BANK)))
    sc["light_color"] = np.array([1.0, rng.uniform(0.9, 1.0), rng.uniform(0.75, 0.95)], np.float32)
    sc["sky"] = (_hsv(rng.uniform(0.55, 0.62), rng.uniform(0.1, 0.3), rng.uniform(0.8, 0.95)),
                 _hsv(rng.uniform(0.56, 0.64), rng.uniform(0.4, 0.75), rng.uniform(0.6, 0.9)))
    if outdoor:
        el, az = rng.uniform(0.45, 1.1), rng.uniform(0, 2 * np.pi)
        sc["sun"] = np.array([np.cos(el) * np.sin(az), np.sin(el), np.cos(el) * np.cos(az)], np.float32)
        sc["posters"] = []
        return
    lo, hi = sc["box"]
    sc["light"] = np.array([rng.uniform(lo[0] + 0.5, hi[0] - 0.5), hi[1] - 0.25, rng.uniform(lo[2] + 0.5, hi[2] - 0.5)])
    sc["posters"] = []
    for _ in range(int(rng.integers(2, 6))):
        p = _sample_poster(rng, lo, hi)
        if p and not any(q["face"] == p["face"] and abs(q["s"] - p["s"]) < q["hw"] + p["hw"] + 0.1
                         for q in sc["posters"]):
            sc["posters"].append(p)


def _sample_poster(rng, lo, hi):
    """A framed picture or window on one wall: face, centre along the wall, centre height, half sizes."""
    face = int(rng.integers(2, 6))
    a, b = (lo[2], hi[2]) if face in (2, 3) else (lo[0], hi[0])
    hw, hh = rng.uniform(0.25, 0.9), rng.uniform(0.2, 0.6)
    if b - a < 2 * hw + 0.4:
        return None
    return {"face": face, "s": rng.uniform(a + hw + 0.2, b - hw - 0.2), "y": rng.uniform(1.2, hi[1] - hh - 0.15),
            "hw": hw, "hh": hh, "window": rng.random() < 0.35, "tex": _noise(int(rng.integers(NOISE_BANK)), 64, (2, 4, 8)),
            "colors": [_hsv(rng.random(), rng.uniform(0.3, 0.9), rng.uniform(0.3, 1.0)) for _ in range(3)]}


def _pick_height(rng, top):
    """Camera height: near the floor, standing, or high (near the ceiling / a drone), 30 / 40 / 30 %."""
    u = rng.random()
    if u < 0.3:
        return rng.uniform(0.25, 0.8)
    if u < 0.7:
        return rng.uniform(0.8, 1.8)
    return rng.uniform(1.8, top)


def _room_pose(rng, sc):
    """Camera position, yaw and pitch in a room: from a corner, along a wall, or the middle, looking
    toward a random point of the room."""
    lo, hi = sc["box"]
    m = 0.3
    x = rng.uniform(lo[0] + m, hi[0] - m)
    z = rng.uniform(lo[2] + m, hi[2] - m)
    mode = rng.random()
    if mode < 0.35:                                        # a corner
        x = lo[0] + m if rng.random() < 0.5 else hi[0] - m
        z = lo[2] + m if rng.random() < 0.5 else hi[2] - m
    elif mode < 0.75:                                      # a wall
        if rng.random() < 0.5:
            x = lo[0] + m if rng.random() < 0.5 else hi[0] - m
        else:
            z = lo[2] + m if rng.random() < 0.5 else hi[2] - m
    y = _pick_height(rng, hi[1] - 0.25)
    tx, tz = rng.uniform(lo[0] + 0.2 * (hi[0] - lo[0]), hi[0] - 0.2 * (hi[0] - lo[0])), \
        rng.uniform(lo[2] + 0.2 * (hi[2] - lo[2]), hi[2] - 0.2 * (hi[2] - lo[2]))
    if np.hypot(tx - x, tz - z) < 1.0:
        tx, tz = 2 * tx - x + 0.5, 2 * tz - z + 0.5
    yaw = np.arctan2(tx - x, tz - z) + rng.normal(0, 0.15)
    pitch = np.radians(np.clip(-(y - 1.3) * 20 + rng.normal(0, 12), -55, 35))
    return np.array([x, y, z]), yaw, pitch


def _sample_camera(rng, sc, height, width):
    """Pinhole camera: position, yaw (any direction), pitch (up or down), roll, vertical field of view."""
    kind, box = sc["kind"], sc["box"]
    vfov = np.radians(rng.uniform(40.0, 80.0))
    if kind == "room":
        pos, yaw, pitch = _room_pose(rng, sc)
    elif kind == "corridor":
        lo, hi = box
        back = rng.random() < 0.5
        pos = np.array([rng.uniform(-0.3, 0.3) * hi[0], _pick_height(rng, hi[1] - 0.25), hi[2] - 0.4 if back else 0.4])
        yaw = (np.pi if back else 0.0) + rng.uniform(-0.2, 0.2)
        pitch = np.radians(np.clip(-(pos[1] - 1.3) * 15 + rng.normal(0, 8), -40, 30))
    elif kind == "tabletop":
        t = sc["table"]
        r, a = rng.uniform(0, 0.6), rng.uniform(0, 2 * np.pi)
        pos = np.array([t["c"][0] + r * np.sin(a), 2 * t["half"][1] + rng.uniform(0.6, 1.4), t["c"][2] + r * np.cos(a)])
        yaw, pitch = rng.uniform(0, 2 * np.pi), np.radians(rng.uniform(-88, -45))
        vfov = np.radians(rng.uniform(45.0, 70.0))
    else:
        y = rng.choice([rng.uniform(0.3, 1.0), rng.uniform(1.0, 2.0), rng.uniform(2.0, 8.0)])
        pos, yaw = np.array([0.0, y, 0.0]), rng.uniform(0, 2 * np.pi)
        pitch = np.radians(np.clip(-(y - 1.5) * 6 + rng.normal(-3, 9), -60, 20))
    roll = 0.0 if rng.random() < 0.3 else float(np.radians(np.clip(rng.normal(0, 6), -15, 15)))
    focal = (height / 2) / np.tan(vfov / 2)
    fwd = np.array([np.sin(yaw) * np.cos(pitch), np.sin(pitch), np.cos(yaw) * np.cos(pitch)])
    right0 = np.array([np.cos(yaw), 0.0, -np.sin(yaw)])
    up0 = np.cross(fwd, right0)
    right, up = np.cos(roll) * right0 + np.sin(roll) * up0, -np.sin(roll) * right0 + np.cos(roll) * up0
    return {"pos": pos.astype(np.float32), "fwd": fwd, "right": right, "up": up, "focal": focal, "yaw": yaw,
            "hfov": float(np.arctan((width / 2) / focal)), "roll": roll, "pitch": pitch}


def _make_object(rng, kind, c, half, support, **extra):
    obj = {"kind": kind, "half": np.asarray(half, np.float32), "yaw": float(rng.uniform(0, np.pi)),
           "c": np.asarray(c, np.float32), "support": support,
           "radius": float(np.hypot(half[0], half[2])) if kind == "box" else float(half[0]),
           "color": _hsv(rng.random(), rng.uniform(0.2, 0.9), rng.uniform(0.3, 0.95)),
           "color2": _hsv(rng.random(), rng.uniform(0.1, 0.9), rng.uniform(0.2, 0.95)),
           "pattern": int(rng.choice(4, p=[0.45, 0.2, 0.2, 0.15])), "scale": rng.uniform(3.0, 10.0)}
    obj.update(extra)
    return obj


def _random_shape(rng, scale):
    """(kind, half sizes) of a box, sphere or upright cylinder; scale ~ its size in metres."""
    kind = str(rng.choice(["box", "sphere", "cylinder"], p=[0.5, 0.25, 0.25]))
    if kind == "box":
        return kind, np.array([rng.uniform(0.3, 1.0), rng.uniform(0.3, 1.1), rng.uniform(0.3, 0.9)]) * scale
    if kind == "sphere":
        return kind, np.full(3, rng.uniform(0.25, 0.7) * scale)
    r = rng.uniform(0.15, 0.55) * scale
    return kind, np.array([r, rng.uniform(0.3, 1.1) * scale, r])


# ----------------------------------------------------------------------------- object placement
def _local_to_world(obj, u, v):
    """World (x, z) of the point (u, v) in an object's yawed horizontal frame."""
    c, s = np.cos(obj["yaw"]), np.sin(obj["yaw"])
    return float(obj["c"][0] + c * u + s * v), float(obj["c"][2] - s * u + c * v)


def _in_view_xz(rng, cam, rmin, rmax):
    """A ground point (x, z) at distance rmin..rmax inside the camera's horizontal field of view."""
    a = cam["yaw"] + rng.uniform(-0.9, 0.9) * cam["hfov"]
    r = rmin + (rmax - rmin) * rng.random() ** 0.8
    return float(cam["pos"][0] + r * np.sin(a)), float(cam["pos"][2] + r * np.cos(a))


def _free(sc, cam, objects, x, z, rad):
    """True if a floor object of radius rad at (x, z) stays in the room, off the camera and off the others."""
    if sc["box"] is not None:
        lo, hi = sc["box"]
        if not (lo[0] + rad + 0.05 < x < hi[0] - rad - 0.05 and lo[2] + rad + 0.05 < z < hi[2] - rad - 0.05):
            return False
    if np.hypot(x - cam["pos"][0], z - cam["pos"][2]) < rad + 0.5:
        return False
    return all(np.hypot(x - o["c"][0], z - o["c"][2]) > o["radius"] + rad + 0.05
               for o in objects if o["support"] == -1 or o.get("shelf"))


def _place_floor(rng, sc, cam, objects, scale, rmax):
    kind, half = _random_shape(rng, scale)
    rad = float(np.hypot(half[0], half[2])) if kind == "box" else float(half[0])
    x, z = _in_view_xz(rng, cam, 0.8 + rad, rmax)
    if not _free(sc, cam, objects, x, z, rad):
        return []
    return [_make_object(rng, kind, (x, half[1], z), half, -1)]


def _place_on(rng, objects, scale, supports=None):
    """A smaller object stacked on top of a box with room left (one of `supports` if given): a crate,
    a shelf or the table."""
    tops = [k for k, o in enumerate(objects) if o["kind"] == "box" and o.get("load", 0) < o.get("capacity", 1)
            and (supports is None or k in supports)]
    if not tops:
        return []
    k = int(rng.choice(tops))
    sup = objects[k]
    kind, half = _random_shape(rng, scale)
    rad = float(np.hypot(half[0], half[2])) if kind == "box" else float(half[0])
    room_u, room_v = float(sup["half"][0]) - rad - 0.02, float(sup["half"][2]) - rad - 0.02
    if room_u < 0 or room_v < 0:
        return []
    u, v = rng.uniform(-room_u, room_u), rng.uniform(-room_v, room_v)
    if any(o["support"] == k and np.hypot(*np.subtract(_local_to_world(sup, u, v), (o["c"][0], o["c"][2])))
           < o["radius"] + rad + 0.02 for o in objects):
        return []
    sup["load"] = sup.get("load", 0) + 1
    x, z = _local_to_world(sup, u, v)
    top = float(sup["c"][1] + sup["half"][1])
    return [_make_object(rng, kind, (x, top + half[1], z), half, k)]


def _place_shelf(rng, sc, cam, objects):
    """A thin board on a wall at 0.5-2.2 m, which later carries small objects (capacity 3)."""
    lo, hi = sc["box"]
    face = int(rng.integers(2, 6))
    length, depth, y = rng.uniform(0.4, 1.0), rng.uniform(0.12, 0.2), rng.uniform(0.5, min(2.2, hi[1] - 0.5))
    if min(hi[0] - lo[0], hi[2] - lo[2]) < 2 * length + 0.3:
        return []
    if face in (2, 3):
        s = rng.uniform(lo[2] + length + 0.1, hi[2] - length - 0.1)
        x = lo[0] + depth if face == 2 else hi[0] - depth
        c, half = (x, y, s), (depth, 0.02, length)
    else:
        s = rng.uniform(lo[0] + length + 0.1, hi[0] - length - 0.1)
        z = lo[2] + depth if face == 4 else hi[2] - depth
        c, half = (s, y, z), (length, 0.02, depth)
    if np.hypot(c[0] - cam["pos"][0], c[2] - cam["pos"][2]) < length + 0.6 or _project(cam, c) is None:
        return []
    shelf = _make_object(rng, "box", c, half, -2, shelf=True, capacity=3, pattern=0)
    shelf["yaw"] = 0.0
    return [shelf]


def _place_hanging(rng, sc, cam, objects, rmax):
    """A lamp (sphere, shade or box) hanging on a cord from the ceiling."""
    lo, hi = sc["box"]
    x, z = _in_view_xz(rng, cam, 1.0, rmax)
    kind = str(rng.choice(["sphere", "cylinder", "box"]))
    r = rng.uniform(0.12, 0.35)
    half = np.array([r, r if kind == "sphere" else rng.uniform(0.08, 0.25), r])
    y = hi[1] - rng.uniform(0.4, 1.5) - half[1]
    if not (lo[0] + r < x < hi[0] - r and lo[2] + r < z < hi[2] - r) or y - half[1] < 0.3 or \
            np.hypot(x - cam["pos"][0], z - cam["pos"][2]) < r + 0.5:
        return []
    cord_h = (hi[1] - y - half[1]) / 2
    lamp = _make_object(rng, kind, (x, y, z), half, -2)
    cord = _make_object(rng, "cylinder", (x, hi[1] - cord_h, z), (0.012, cord_h, 0.012), -2, pattern=0)
    cord["color"] = cord["color2"] = np.array([0.1, 0.1, 0.1], np.float32)
    return [lamp, cord]


def _place_tree(rng, sc, cam, objects, rmax):
    """A tree (trunk + round crown) or a pole with a sign: tall things whose top is high in the picture."""
    x, z = _in_view_xz(rng, cam, 2.0, rmax)
    if rng.random() < 0.7:
        rt, ht, rc = rng.uniform(0.1, 0.3), rng.uniform(1.5, 4.0), rng.uniform(0.7, 2.0)
        if not _free(sc, cam, objects, x, z, rc):
            return []
        trunk = _make_object(rng, "cylinder", (x, ht / 2, z), (rt, ht / 2, rt), -1, pattern=3,
                             color=_hsv(rng.uniform(0.05, 0.1), 0.5, 0.35))
        crown = _make_object(rng, "sphere", (x, ht + 0.6 * rc, z), (rc, rc, rc), -2, pattern=3, scale=2.0,
                             color=_hsv(rng.uniform(0.22, 0.36), rng.uniform(0.4, 0.8), rng.uniform(0.25, 0.55)))
        crown["color2"] = crown["color"]
        return [trunk, crown]
    hp, sw = rng.uniform(2.5, 4.5), rng.uniform(0.4, 0.9)
    if not _free(sc, cam, objects, x, z, sw):
        return []
    pole = _make_object(rng, "cylinder", (x, hp / 2, z), (0.05, hp / 2, 0.05), -1, pattern=0)
    sign = _make_object(rng, "box", (x, hp + 0.3, z), (sw, rng.uniform(0.25, 0.5), 0.04), -2)
    return [pole, sign]


PLACEMENTS = {  # kind -> (share of floor, stacked, shelf / tree, hanging) placements, object count range
    "room": ((0.45, 0.2, 0.15, 0.2), (5, 12)), "corridor": ((0.45, 0.2, 0.15, 0.2), (4, 10)),
    "tabletop": ((0.1, 0.75, 0.05, 0.1), (6, 12)), "open": ((0.45, 0.15, 0.4, 0.0), (6, 15))}


def _sample_objects(rng, sc, cam):
    """Objects at many depths: on the floor, stacked, on shelves, hanging (indoors) or trees (outdoors)."""
    objects = [sc["table"]] if "table" in sc else []
    shares, (lo_n, hi_n) = PLACEMENTS[sc["kind"]]
    target = len(objects) + int(rng.integers(lo_n, hi_n))
    indoor = sc["box"] is not None
    rmax = 35.0 if not indoor else float(np.hypot(*(sc["box"][1] - sc["box"][0])[[0, 2]]))
    small = 0.25 if sc["kind"] == "tabletop" else 0.6
    for _ in range(80):
        if len(objects) >= target:
            break
        u = rng.random()
        if u < shares[0]:
            new = _place_floor(rng, sc, cam, objects, 0.6 if indoor else rng.uniform(0.8, 2.0), rmax)
        elif u < shares[0] + shares[1]:
            new = _place_on(rng, objects, small * rng.uniform(0.5, 1.0))
        elif u < shares[0] + shares[1] + shares[2]:
            new = _place_shelf(rng, sc, cam, objects) if indoor else _place_tree(rng, sc, cam, objects, rmax)
        else:
            new = _place_hanging(rng, sc, cam, objects, rmax)
        objects += new
    for k in [k for k, o in enumerate(objects) if o.get("shelf")]:
        for _ in range(3):
            objects += _place_on(rng, objects, 0.2, supports=(k,))
    return objects


def _project(cam, point):
    """Pixel (col, row) relative to the image centre of a 3-D point, or None if behind or far outside."""
    rel = np.asarray(point, np.float64) - cam["pos"]
    z = rel @ cam["fwd"]
    if z < 0.1:
        return None
    x, y = cam["focal"] * (rel @ cam["right"]) / z, cam["focal"] * (rel @ cam["up"]) / z
    limit = cam["focal"] * np.tan(cam["hfov"]) * 1.1
    return (x, y) if abs(x) < limit and abs(y) < limit else None


# ----------------------------------------------------------------------------- ray casting
def _camera_rays(cam, height, width):
    """World ray directions as three (H, W) planes, scaled so that the ray parameter t equals z-depth."""
    xs = (np.arange(width, dtype=np.float32) + 0.5 - width / 2) / np.float32(cam["focal"])
    ys = -(np.arange(height, dtype=np.float32) + 0.5 - height / 2) / np.float32(cam["focal"])
    r, u, f = (cam[k].astype(np.float32) for k in ("right", "up", "fwd"))
    return tuple(xs[None, :] * r[i] + (ys[:, None] * u[i] + f[i]) for i in range(3))


def _screen_box(cam, corners, height, width):
    """Pixel bounding box (r0, r1, c0, c1) of 3D points, or the full frame if one is behind the camera."""
    rel = corners - cam["pos"]
    z = rel @ cam["fwd"]
    if np.any(z < 0.05):
        return 0, height, 0, width
    cols = cam["focal"] * (rel @ cam["right"]) / z + width / 2
    rows = height / 2 - cam["focal"] * (rel @ cam["up"]) / z
    r0, r1 = max(int(rows.min()) - 1, 0), min(int(np.ceil(rows.max())) + 2, height)
    c0, c1 = max(int(cols.min()) - 1, 0), min(int(np.ceil(cols.max())) + 2, width)
    return r0, r1, c0, c1


def _hit_room(o, d, box):
    """Exit distance of rays from inside the room box (lo, hi) and the face index hit (ROOM_FACES order)."""
    lo, hi = box
    best = np.full(d[0].shape, np.inf, np.float32)
    face = np.zeros(d[0].shape, np.int8)
    for ax, neg, pos in ((1, 0, 1), (0, 2, 3), (2, 4, 5)):  # y: floor/ceiling, x: x-/x+ walls, z: z-/z+ walls
        da = d[ax]
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(da > 0, np.float32(hi[ax] - o[ax]) / da, np.float32(lo[ax] - o[ax]) / da)
        t = np.where(np.abs(da) < 1e-9, np.inf, t)
        closer = t < best
        best = np.where(closer, t, best)
        face = np.where(closer, np.where(da > 0, pos, neg), face).astype(np.int8)
    return best, face


def _hit_ground(o, d):
    """Open scenes: the ground plane y = 0 up to GROUND_FAR metres, else the sky (t = inf, face SKY)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(d[1] < -1e-6, np.float32(-o[1]) / d[1], np.inf).astype(np.float32)
    t[t > GROUND_FAR] = np.inf
    return t, np.where(np.isfinite(t), 0, SKY).astype(np.int8)


# ----------------------------------------------------------------------------- materials
def _grass(x, z, mat, noise):
    fine = _sample(noise, x * 14.0, z * 14.0) * 0.5 + _sample(noise, x * 1.3 + 40, z * 1.3) * 0.5
    return _rgb(mat["color"], 0.6 + 0.7 * fine)


def _wall_albedo(s, y, face, sc):
    """Painted walls with a skirting board, optional two-tone wallpaper, framed pictures and windows."""
    col = _rgb(sc["wall"], 0.93 + 0.1 * _sample(sc["noise"], s * 25.0, y * 25.0))
    if sc["stripes"]:
        stripe = (np.floor(s / 0.18) % 2 == 0) & (y > 1.0)
        col = _pick(stripe, [c * 0.9 + 0.1 * float(w) for c, w in zip(col, sc["wall2"])], col)
        col = _pick(y <= 1.0, sc["wall2"] * 0.85, col)
        col = _pick(np.abs(y - 1.0) < 0.025, (0.92, 0.92, 0.92), col)
    skirting = y < 0.09
    if skirting.any():
        col = _pick(skirting, 0.9 * np.clip(sc["wall2"] + 0.3, 0, 1), col)
    for p in sc["posters"]:
        if p["face"] != face:
            continue
        du, dv = np.abs(s - p["s"]), np.abs(y - p["y"])
        inside = (du < p["hw"]) & (dv < p["hh"])
        if not inside.any():
            continue
        inner = (du < p["hw"] - 0.045) & (dv < p["hh"] - 0.045)
        if p["window"]:
            t = np.clip((y - p["y"] + p["hh"]) / (2 * p["hh"]), 0, 1)
            pic = tuple(sky * (1 - 0.4 * t) + 0.4 * t for sky in (0.55, 0.75, 1.0))
            pic = _pick((du < 0.025) | (dv < 0.025), (0.95, 0.95, 0.95), pic)
            frame = (0.95, 0.95, 0.95)
        else:
            v = _sample(p["tex"], (s - p["s"]) * 40.0, (y - p["y"]) * 40.0)
            c0, c1, c2 = p["colors"]
            pic = _pick(v < 0.45, c0, _pick(v < 0.6, c1, c2))
            frame = (0.15, 0.15, 0.15)
        col = _pick(inner, pic, _pick(inside, frame, col))
    return col


def _surface_albedo(p, face, sc, albedo):
    """Write the albedo of floor / wall / ceiling pixels (face 0..5; objects are −1, the sky SKY) into the
    three contiguous (H, W) albedo planes, from the hit points' three (H, W) coordinate planes p."""
    flat = face.ravel()
    for f in range(6):
        idx = np.flatnonzero(flat == f)
        if not len(idx):
            continue
        x, y, z = (pi.ravel()[idx] for pi in p)
        if f == 0:
            col = _grass(x, z, sc["floor"], sc["noise"]) if sc["floor"]["kind"] == "grass" else \
                _floor_albedo(x, z, sc["floor"], sc["noise"])
        elif f == 1:
            col = (np.full(x.shape, 0.93, np.float32),) * 3
        else:
            col = _wall_albedo(z if f in (2, 3) else x, y, f, sc)
        for plane, c in zip(albedo, col):
            plane.ravel()[idx] = c


# ----------------------------------------------------------------------------- lighting
def _light_offset(sc, x, z, rise):
    """Horizontal shift of the shadow of a point `rise` metres above its receiving surface."""
    if "sun" in sc:
        s = sc["sun"]
        return -s[0] / s[1] * rise, -s[2] / s[1] * rise
    lx, ly, lz = sc["light"].tolist()
    lift = rise / max(ly - rise, 0.3)
    return (x - lx) * lift, (z - lz) * lift


def _shadow_map(sc, objects, support, extent, size):
    """Light factor on a size × size grid over a horizontal receiver (the floor, a box top, a shelf):
    for every object resting on it a soft blob shifted away from the light plus a contact shadow.
    extent = (x0, z0, x1, z1) in the receiver's frame; objects on it are given in that frame too."""
    x0, z0, x1, z1 = extent
    light = np.ones((size, size), np.float32)
    sx, sz = (x1 - x0) / size, (z1 - z0) / size
    for obj, (x, z) in support:
        hx, hy, hz = obj["half"].tolist()
        dx, dz = _light_offset(sc, x, z, hy)
        reach = obj["radius"] * 2.5 + abs(dx) + abs(dz) + 0.3
        i0, i1 = max(0, int((z - reach - z0) / sz)), min(size, int((z + reach - z0) / sz) + 1)
        j0, j1 = max(0, int((x - reach - x0) / sx)), min(size, int((x + reach - x0) / sx) + 1)
        if i0 >= i1 or j0 >= j1:
            continue
        gz = (np.arange(i0, i1, dtype=np.float32) + 0.5) * sz + z0
        gx = (np.arange(j0, j1, dtype=np.float32) + 0.5) * sx + x0
        gx, gz = gx[None, :], gz[:, None]
        r = obj["radius"] * (1.0 + 0.5 * hy / max(hy, 0.3)) + 0.05
        blob = ((gx - x - dx) ** 2 + (gz - z - dz) ** 2) / (r * r)
        if obj["kind"] == "box":
            c, s = np.cos(obj["yaw"] - obj.get("frame_yaw", 0.0)), np.sin(obj["yaw"] - obj.get("frame_yaw", 0.0))
            u, v = (gx - x) * c - (gz - z) * s, (gx - x) * s + (gz - z) * c
            gap = np.hypot(np.maximum(np.abs(u) - hx, 0), np.maximum(np.abs(v) - hz, 0))
        else:
            gap = np.maximum(np.hypot(gx - x, gz - z) - (0.35 * hx if obj["kind"] == "sphere" else hx), 0)
        light[i0:i1, j0:j1] *= (1 - 0.55 * np.exp(-1.5 * blob)) * (1 - 0.5 * np.exp(-gap / 0.06))
    return light


def _receiver_light(sc, objects, p, on_floor, obj_id, normal_y):
    """Multiplicative shadow factor (H, W) from the floor's and every loaded box top's shadow map."""
    px, py, pz = p
    shadow = np.ones(px.shape, np.float32)
    if sc["box"] is not None:
        lo, hi = sc["box"]
        extent, size = (lo[0], lo[2], hi[0], hi[2]), 128
    else:
        cx, cz = float(sc["cam"]["pos"][0]), float(sc["cam"]["pos"][2])
        extent, size = (cx - 40, cz - 40, cx + 40, cz + 40), 256
    on = [(o, (float(o["c"][0]), float(o["c"][2]))) for o in objects if o["support"] == -1]
    if on and on_floor.any():
        m = _shadow_map(sc, objects, on, extent, size)
        u = (px[on_floor] - extent[0]) / (extent[2] - extent[0]) * size - 0.5
        v = (pz[on_floor] - extent[1]) / (extent[3] - extent[1]) * size - 0.5
        shadow[on_floor] = _sample_clamped(m, u, v)
    for k, sup in enumerate(objects):
        kids = [o for o in objects if o["support"] == k]
        top = (obj_id == k) & (normal_y > 0.5)
        if not kids or not top.any():
            continue
        c, s = np.cos(sup["yaw"]), np.sin(sup["yaw"])
        rx, rz = px[top] - sup["c"][0], pz[top] - sup["c"][2]
        hx, hz = float(sup["half"][0]), float(sup["half"][2])
        local = [(dict(o, frame_yaw=sup["yaw"]), ((o["c"][0] - sup["c"][0]) * c - (o["c"][2] - sup["c"][2]) * s,
                                                   (o["c"][0] - sup["c"][0]) * s + (o["c"][2] - sup["c"][2]) * c))
                 for o in kids]
        m = _shadow_map(sc, objects, local, (-hx, -hz, hx, hz), 32)
        shadow[top] = _sample_clamped(m, (c * rx - s * rz + hx) / (2 * hx) * 32 - 0.5,
                                      (s * rx + c * rz + hz) / (2 * hz) * 32 - 0.5)
    return shadow


def _sample_clamped(tex, u, v):
    n = tex.shape[0]
    u, v = np.clip(u, 0, n - 1.001), np.clip(v, 0, n - 1.001)
    u0, v0 = u.astype(np.int32), v.astype(np.int32)
    fu, fv = (u - u0).astype(np.float32), (v - v0).astype(np.float32)
    top = tex[v0, u0] * (1 - fu) + tex[v0, u0 + 1] * fu
    return top + (tex[v0 + 1, u0] * (1 - fu) + tex[v0 + 1, u0 + 1] * fu - top) * fv


def _shade(p, n, albedo, shadow, sc, depth):
    """Lambert shading from one point light (indoors: ceiling light, falloff) or the sun (outdoors), plus
    an ambient term darkened near the room's edges; outdoors a little haze with distance.
    p, n, albedo: three (H, W) planes each; shadow: (H, W). Returns (H, W, 3) uint8."""
    (px, py, pz), (nx, ny, nz) = p, n
    if "sun" in sc:
        sx, sy, sz = sc["sun"].tolist()
        direct = np.maximum(nx * sx + ny * sy + nz * sz, 0) * 1.1
        ambient = 0.32 + 0.12 * ny
    else:
        lx, ly, lz = sc["light"].tolist()
        tx, ty, tz = lx - px, ly - py, lz - pz
        dist = np.sqrt(tx * tx + ty * ty + tz * tz)
        direct = np.maximum((nx * tx + ny * ty + nz * tz) / dist, 0) * 1.7 / (1 + (dist / 4.5) ** 2)
        lo, hi = (v.tolist() for v in sc["box"])
        g0 = np.minimum(px - lo[0], hi[0] - px)
        g1 = np.minimum(py - lo[1], hi[1] - py)
        g2 = np.minimum(pz - lo[2], hi[2] - pz)
        edge = np.maximum(np.minimum(g0, g1), np.minimum(np.maximum(g0, g1), g2))  # 2nd smallest: nearest edge
        ambient = (1 - 0.4 * np.exp(-edge / 0.3)) * (0.22 + 0.1 * ny)
    direct = direct * shadow
    ambient = ambient * (0.5 + 0.5 * shadow)
    haze = 1 - np.exp(depth * np.float32(-1 / 70.0)) if "sun" in sc else None
    out = np.empty(px.shape + (3,), np.uint8)
    for i, (a, tint, h) in enumerate(zip(albedo, sc["light_color"].tolist(), sc["sky"][0].tolist())):
        v = a * (ambient + direct * tint)
        if haze is not None:
            v += (0.8 * h - v) * haze
        v *= 4095
        np.clip(v, 0, 4095, out=v)
        out[..., i] = TONE_LUT[v.astype(np.int32)]
    return out


def _sky(d, sc):
    """Sky colour planes for ray directions d: horizon colour blending into the zenith colour."""
    dy = d[1] / np.sqrt(d[0] ** 2 + d[1] ** 2 + d[2] ** 2)
    t = np.clip(dy * 2.0, 0, 1)
    return [TONE_LUT[np.clip((h + (z - h) * t) * 4095, 0, 4095).astype(np.int32)]
            for h, z in zip(sc["sky"][0].tolist(), sc["sky"][1].tolist())]


# ----------------------------------------------------------------------------- entry point
def sample_scene(seed, height=384, width=512):
    """The scene description for `seed` (kind, room box, materials, camera, objects); no pixels."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    kind = SCENE_KINDS[int(rng.choice(len(SCENE_KINDS), p=SCENE_WEIGHTS))]
    sc = {"kind": kind, "box": _sample_layout(rng, kind)}
    _sample_materials(rng, sc)
    if kind == "tabletop":
        lo, hi = sc["box"]
        half = np.array([rng.uniform(0.5, 1.0), rng.uniform(0.35, 0.45), rng.uniform(0.4, 0.8)])
        c = (rng.uniform(-0.3, 0.3) * hi[0], half[1], rng.uniform(0.4, 0.6) * hi[2])
        sc["table"] = _make_object(rng, "box", c, half, -1, capacity=8, pattern=3, scale=4.0)
        sc["table"]["yaw"] = float(rng.uniform(-0.4, 0.4))
    sc["cam"] = _sample_camera(rng, sc, height, width)
    sc["objects"] = _sample_objects(rng, sc, sc["cam"])
    return sc


def render_scene(seed, height=384, width=512):
    """Render one procedural scene: returns (rgb uint8 (H, W, 3), depth float32 (H, W) z-depth in metres,
    NaN where a ray sees the sky). `seed` is an int or a np.random.Generator; same seed, same pixels."""
    sc = sample_scene(seed, height, width)
    cam, objects = sc["cam"], sc["objects"]
    o = cam["pos"].astype(np.float32)
    d = _camera_rays(cam, height, width)
    depth, face = _hit_room(o, d, sc["box"]) if sc["box"] is not None else _hit_ground(o, d)
    normal = [ROOM_NORMALS[:, i][face] for i in range(3)]
    obj_id = np.full((height, width), -1, np.int16)
    hit = {"box": _hit_box, "sphere": _hit_sphere, "cylinder": _hit_cylinder}
    boxes = [_screen_box(cam, _corners(obj), height, width) for obj in objects]
    for k, (obj, (r0, r1, c0, c1)) in enumerate(zip(objects, boxes)):
        if r0 < r1 and c0 < c1:
            win = (slice(r0, r1), slice(c0, c1))
            tk, nk = hit[obj["kind"]](o, tuple(di[win] for di in d), obj)
            closer = tk < depth[win]
            depth[win][closer] = tk[closer]
            face[win][closer] = -1
            for plane, ni in zip(normal, nk):
                plane[win][closer] = ni[closer]
            obj_id[win][closer] = k
    sky = face == SKY
    z = np.where(sky, 0, depth)
    p = tuple(float(o[i]) + z * d[i] for i in range(3))
    albedo = [np.zeros((height, width), np.float32) for _ in range(3)]
    _surface_albedo(p, face, sc, albedo)
    for k, (obj, (r0, r1, c0, c1)) in enumerate(zip(objects, boxes)):
        win = (slice(r0, r1), slice(c0, c1))
        m = obj_id[win] == k
        if m.any():
            for plane, col in zip(albedo, _object_albedo(*(pi[win][m] for pi in p), obj, sc["noise"])):
                plane[win][m] = col
    shadow = _receiver_light(sc, objects, p, face == 0, obj_id, normal[1])
    rgb = _shade(p, normal, albedo, shadow, sc, z)
    if sky.any():
        for i, plane in enumerate(_sky(tuple(di[sky] for di in d), sc)):
            rgb[..., i][sky] = plane
    if sc["box"] is None:
        sky |= depth > SENSOR_RANGE
    return rgb, np.where(sky, np.nan, depth).astype(np.float32)


def contact_sheet(seeds, height=192, width=256, columns=4):
    """A grid of rendered scenes (RGB above its depth map) as a PIL image, for eyeballing the variety."""
    from PIL import Image
    tiles = []
    for s in seeds:
        rgb, depth = render_scene(s, height, width)
        finite = np.isfinite(depth)
        lo, hi = (np.percentile(depth[finite], [1, 99]) if finite.any() else (0, 1))
        gray = np.where(finite, 255 * (1 - np.clip((depth - lo) / max(hi - lo, 1e-6), 0, 1)), 0).astype(np.uint8)
        tiles.append(np.concatenate([rgb, np.repeat(gray[..., None], 3, -1)], 0))
    rows = [np.concatenate(tiles[i:i + columns] + [np.zeros_like(tiles[0])] * (columns - len(tiles[i:i + columns])), 1)
            for i in range(0, len(tiles), columns)]
    return Image.fromarray(np.concatenate(rows, 0))
