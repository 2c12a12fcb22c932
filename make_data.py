"""Spatial-SSRL dataset builder: image folders (or built-in procedural RGB-D rooms) -> pretext-task dataset.

Stage 0 of Spatial-SSRL (arXiv 2510.27606): turn ordinary RGB or RGB-D images into the five verifiable
self-supervised tasks of tasks.py (shuffle, flip, crop, depth, position) for the SFT cold start and GRPO.

    python make_data.py                                  # 500 examples from built-in rooms -> data/ssrl (+ preview.png)
    python make_data.py --out data/mine --rgb photos/ --rgbd diode/ --n 81000 --workers 8
    python make_data.py --benchmark                      # samples/s per task on one core
    python make_data.py --help                           # every knob with its default

RGB-D naming rule (--rgbd DIR, searched recursively): an image <stem>.<jpg|png|...> takes its depth from the
first of <stem>_depth.npy, <stem>.npy, <stem>_depth.png, <stem>_depth.h5, <stem>.h5, ../depths/<stem>.h5 (the
MegaDepth imgs/ + depths/ layout). .npy = metres, HxW or HxWx1; 16-bit PNG = millimetres (--depth-png-scale);
.h5 = key "depth" (needs `pip install h5py`). Optional validity mask <stem>_mask.npy or <stem>_depth_mask.npy
(DIODE). Depth <= 0, NaN, inf or masked out = invalid. Files named *_depth.* / *_mask.* are never RGB sources.
The depth map must match the image's stored pixel grid; EXIF rotation is applied to both.

Output (--out): train.jsonl, test.jsonl, sft.jsonl, images/<task>/<id>_<i>.jpg, stats.json, config.json,
progress.jsonl (resume journal) and preview.png. Records: {"id", "task", "problem", "answer", "images",
"source", "meta"} (+ "response" in sft.jsonl); `images` are relative to --out.

Paper → code
  five pretext tasks from raw RGB / RGB-D images   → tasks.generate(), called by run_job()
  81k-sample training set, split into tasks        → build() (quotas from --n and --tasks weights)
  cold-start SFT subset (~3.6k) with reasoning      → write_sft() (tasks.reasoning_trace)
  DIODE .npy + mask / MegaDepth .h5 depth sources  → load_depth(), find_depth()
  no source data on a fresh machine                 → render_scene() (procedural RGB-D rooms)

Deviations from the official data scripts (data_process/*.py)
  1. One builder for all five tasks, deterministic per --seed whatever --workers, parallel and resumable;
     the official scripts are one-image demos that write no dataset records.
  2. Train/test split by source image (the official validation set is the first 10k training rows).
  3. Cold-start traces are templates built from each example's metadata (tasks.reasoning_trace), not
     LVLM-written; the SFT subset is drawn from the train split.
  4. Built-in procedural rooms replace downloads; real folders are used when --rgb/--rgbd are given.
  5. Sources are down-scaled to --max-side (default 1024) before generation; images are saved as JPEG q95.
"""
import argparse
import dataclasses
import hashlib
import io
import json
import math
import os
import sys
import tempfile
import textwrap
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps, UnidentifiedImageError

import tasks

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
DEPTH_SUFFIXES = ("_depth", "_mask", "_depth_mask")  # stems ending like this are depth/mask files, not images
SCENE_SALT, SFT_SALT, SPLIT_SALT = 0x5CE7E, 0x5F7, 0x7E57
# Settings that only change speed or reporting; everything else defines the dataset and must match on resume.
RUN_ONLY_KEYS = ("out", "workers", "preview", "progress", "benchmark", "bench_seconds", "sync_seconds")


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------
@dataclass
class Config:
    out: str = "data/ssrl"  # output folder (re-running the same command into it resumes)
    rgb: str = ""  # folder of RGB images (recursive) for shuffle/flip/crop
    rgbd: str = ""  # folder of RGB + depth pairs (naming rule in the module docstring) for all five tasks
    n: int = 500  # total number of examples (train + test), shared between tasks by their weights
    tasks: str = "auto"  # comma list with optional weights ("shuffle:2,depth"); auto = all five (RGB tasks if no depth)
    sft_size: int = 3600  # cold-start examples drawn from train (capped by the train size)
    test_fraction: float = 0.1  # fraction of source images whose examples go to test.jsonl
    seed: int = 0  # the dataset is a pure function of the seed and the settings (not of --workers)
    workers: int = 0  # worker processes; 0 = all cores
    preview: str = "auto"  # contact sheet PNG with one example per task; auto = OUT/preview.png, none = off
    scene_size: str = "512x384"  # WxH of the built-in procedural rooms
    shuffle_grids: str = "2x2"  # shuffle grids as ROWSxCOLS, comma list drawn uniformly per example ("2x2,3x3")
    max_side: int = 1024  # down-scale sources whose longer side exceeds this; 0 = keep full size
    min_side: int = 64  # skip sources whose shorter side is below this
    per_source: int = 1  # at most this many examples of each task per source image (passes over a folder)
    depth_png_scale: float = 1000.0  # 16-bit depth PNG units per metre (1000 = millimetres)
    image_format: str = "jpg"  # jpg or png (lossless, ~8x slower to encode and ~4x larger at 1024x768)
    jpeg_quality: int = 95  # JPEG quality of the saved task images
    sync_seconds: float = 2.0  # fsync records and journal at most this often (0 = after every job)
    progress: bool = True  # tqdm progress bar
    benchmark: bool = False  # print samples/s per task on one core and exit (writes nothing to --out)
    bench_seconds: float = 1.0  # time budget per benchmark cell


def parse_config(argv=None):
    """argparse generated from Config: --dash-names, defaults shown by --help, --x/--no-x booleans."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    comments = _field_comments()
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        kind = {"action": argparse.BooleanOptionalAction} if f.type in (bool, "bool") else {"type": type(f.default)}
        parser.add_argument(flag, default=f.default, help=comments.get(f.name, " "), **kind)
    return Config(**vars(parser.parse_args(argv)))


def _field_comments():
    """The `# comment` after each Config field, used as its --help text."""
    try:
        import inspect
        lines = inspect.getsource(Config).splitlines()
    except (OSError, TypeError):
        return {}
    out = {}
    for line in lines:
        name, sep, rest = line.strip().partition(":")
        if sep and "#" in rest and name.isidentifier():
            out[name] = rest.split("#", 1)[1].strip().replace("%", "%%")
    return out


# --------------------------------------------------------------------------------------------
# Built-in source: procedural RGB-D rooms (seeded numpy ray casting)
# --------------------------------------------------------------------------------------------
ROOM_FACES = ("floor", "ceiling", "left", "right", "front", "back")
EPS = 1e-4


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


def _sample_room(rng):
    """Room box, materials and the light; the camera stands near the front wall (z = 0)."""
    room = {"w": rng.uniform(4.0, 8.0), "d": rng.uniform(5.0, 10.0), "h": rng.uniform(2.6, 3.3)}
    room["floor"] = {"kind": rng.choice(["planks", "tiles", "carpet"], p=[0.45, 0.35, 0.2]),
                     "color": _hsv(rng.uniform(0.02, 0.12), rng.uniform(0.3, 0.7), rng.uniform(0.35, 0.8)),
                     "color2": _hsv(rng.random(), rng.uniform(0.0, 0.4), rng.uniform(0.3, 0.95)),
                     "size": rng.uniform(0.12, 0.6), "checker": rng.random() < 0.4}
    room["wall"] = _hsv(rng.random(), rng.uniform(0.05, 0.35), rng.uniform(0.6, 0.95))
    room["wall2"] = _hsv(rng.random(), rng.uniform(0.05, 0.4), rng.uniform(0.5, 0.95))
    room["stripes"] = rng.random() < 0.3
    room["noise"] = _periodic_noise(rng)
    room["light"] = np.array([rng.uniform(-0.25, 0.25) * room["w"], room["h"] - 0.25,
                              rng.uniform(0.3, 0.7) * room["d"]])
    room["light_color"] = np.array([1.0, rng.uniform(0.9, 1.0), rng.uniform(0.75, 0.95)], np.float32)
    room["posters"] = []
    for _ in range(int(rng.integers(1, 4))):
        p = _sample_poster(rng, room)
        if not any(q["face"] == p["face"] and abs(q["s"] - p["s"]) < q["hw"] + p["hw"] + 0.1 for q in room["posters"]):
            room["posters"].append(p)
    return room


def _sample_poster(rng, room):
    """A framed picture or window on one wall: face, centre along the wall, centre height, half sizes."""
    face = int(rng.choice([2, 3, 5], p=[0.25, 0.25, 0.5]))
    span = room["w"] if face == 5 else room["d"]
    hw, hh = rng.uniform(0.3, 0.9), rng.uniform(0.25, 0.6)
    lo = -span / 2 + hw + 0.2 if face == 5 else 2.0 + hw
    hi = span / 2 - hw - 0.2 if face == 5 else span - hw - 0.2
    centre = rng.uniform(lo, hi) if hi > lo else (lo + hi) / 2
    return {"face": face, "s": centre, "y": rng.uniform(1.3, room["h"] - hh - 0.2), "hw": hw, "hh": hh,
            "window": rng.random() < 0.35, "tex": _periodic_noise(rng, 64, (2, 4, 8)),
            "colors": [_hsv(rng.random(), rng.uniform(0.3, 0.9), rng.uniform(0.3, 1.0)) for _ in range(3)]}


def _sample_objects(rng, room, cam_z):
    """Boxes (with a yaw), spheres and upright cylinders resting on the floor or on top of a box."""
    objects, target = [], int(rng.integers(4, 10))
    for _ in range(60):
        if len(objects) >= target:
            break
        kind = rng.choice(["box", "sphere", "cylinder"], p=[0.5, 0.25, 0.25])
        if kind == "box":
            half = np.array([rng.uniform(0.15, 0.7), rng.uniform(0.15, 0.8), rng.uniform(0.15, 0.6)])
            radius = float(np.hypot(half[0], half[2]))
        elif kind == "sphere":
            radius = rng.uniform(0.12, 0.5)
            half = np.array([radius] * 3)
        else:
            radius = rng.uniform(0.08, 0.4)
            half = np.array([radius, rng.uniform(0.15, 0.75), radius])
        tables = [o for o in objects if o["kind"] == "box" and o["base"] == 0.0
                  and min(o["half"][0], o["half"][2]) > radius + 0.03 and not o.get("loaded")]
        if tables and kind != "box" and rng.random() < 0.5:
            table = tables[0]
            table["loaded"] = True
            x, z, base = table["c"][0], table["c"][2], 2 * table["half"][1]
        else:
            x = rng.uniform(-room["w"] / 2 + radius + 0.05, room["w"] / 2 - radius - 0.05)
            z = rng.uniform(cam_z + 1.2 + radius, room["d"] - radius - 0.05)
            base = 0.0
            if any(np.hypot(x - o["c"][0], z - o["c"][2]) < o["radius"] + radius + 0.05
                   for o in objects if o["base"] == 0.0):
                continue
        objects.append({"kind": str(kind), "half": half.astype(np.float32), "yaw": float(rng.uniform(0, np.pi)),
                        "c": np.array([x, base + half[1], z], np.float32), "base": float(base), "radius": float(radius),
                        "color": _hsv(rng.random(), rng.uniform(0.2, 0.9), rng.uniform(0.3, 0.95)),
                        "color2": _hsv(rng.random(), rng.uniform(0.1, 0.9), rng.uniform(0.2, 0.95)),
                        "pattern": int(rng.choice(4, p=[0.45, 0.2, 0.2, 0.15])),
                        "scale": rng.uniform(3.0, 10.0)})
    return objects


def _sample_camera(rng, room, height, width):
    """Pinhole camera near the front wall, looking into the room slightly downwards."""
    vfov = np.radians(rng.uniform(45.0, 60.0))
    focal = (height / 2) / np.tan(vfov / 2)
    half_hfov = np.arctan((width / 2) / focal)
    max_yaw = max(0.0, min(np.radians(20.0), np.radians(72.0) - half_hfov))
    yaw, pitch = rng.uniform(-max_yaw, max_yaw), np.radians(rng.uniform(8.0, 25.0))
    pos = np.array([rng.uniform(-0.3, 0.3) * room["w"] / 2, rng.uniform(1.0, 2.0), rng.uniform(0.15, 0.8)], np.float32)
    fwd = np.array([np.sin(yaw) * np.cos(pitch), -np.sin(pitch), np.cos(yaw) * np.cos(pitch)])
    right = np.array([np.cos(yaw), 0.0, -np.sin(yaw)])
    up = np.cross(fwd, right)
    return {"pos": pos, "fwd": fwd, "right": right, "up": up, "focal": focal}


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


def _corners(obj):
    """The 8 corners of an object's bounding box (the box's own corners when it is a yawed box)."""
    s = np.array([[i, j, k] for i in (-1, 1) for j in (-1, 1) for k in (-1, 1)], np.float64) * obj["half"]
    if obj["kind"] == "box":
        c, s_ = np.cos(obj["yaw"]), np.sin(obj["yaw"])
        s = np.stack([s[:, 0] * c + s[:, 2] * s_, s[:, 1], -s[:, 0] * s_ + s[:, 2] * c], 1)
    return s + obj["c"]


def _hit_room(o, d, room):
    """Exit distance of rays from inside the room box and the face index hit (ROOM_FACES order)."""
    lo = (-room["w"] / 2, 0.0, -0.5)
    hi = (room["w"] / 2, room["h"], room["d"])
    best = np.full(d[0].shape, np.inf, np.float32)
    face = np.zeros(d[0].shape, np.int8)
    for ax, neg, pos in ((1, 0, 1), (0, 2, 3), (2, 4, 5)):  # y: floor/ceiling, x: left/right, z: front/back
        da = d[ax]
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(da > 0, (hi[ax] - float(o[ax])) / da, (lo[ax] - float(o[ax])) / da)
        t = np.where(np.abs(da) < 1e-9, np.inf, t)
        closer = t < best
        best = np.where(closer, t, best)
        face = np.where(closer, np.where(da > 0, pos, neg), face).astype(np.int8)
    return best, face


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


def _wall_albedo(s, y, face, room):
    """Painted walls with a skirting board, optional two-tone wallpaper, framed pictures and windows."""
    col = _rgb(room["wall"], 0.93 + 0.1 * _sample(room["noise"], s * 25.0, y * 25.0))
    if room["stripes"]:
        stripe = (np.floor(s / 0.18) % 2 == 0) & (y > 1.0)
        col = _pick(stripe, [c * 0.9 + 0.1 * float(w) for c, w in zip(col, room["wall2"])], col)
        col = _pick(y <= 1.0, room["wall2"] * 0.85, col)
        col = _pick(np.abs(y - 1.0) < 0.025, (0.92, 0.92, 0.92), col)
    col = _pick(y < 0.09, 0.9 * np.clip(room["wall2"] + 0.3, 0, 1), col)
    for p in room["posters"]:
        if p["face"] != face:
            continue
        du, dv = np.abs(s - p["s"]), np.abs(y - p["y"])
        inside = (du < p["hw"]) & (dv < p["hh"])
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


def _room_albedo(px, py, pz, face, room):
    """Albedo channel planes of room-surface hit points (1-D coordinate arrays) given their faces."""
    out = [np.empty(px.shape, np.float32) for _ in range(3)]
    for f in range(6):
        idx = np.flatnonzero(face == f)
        if not len(idx):
            continue
        x, y, z = px[idx], py[idx], pz[idx]
        if f == 0:
            col = _floor_albedo(x, z, room["floor"], room["noise"])
        elif f == 1:
            col = _rgb((0.93, 0.93, 0.93), 0.96 + 0.04 * _sample(room["noise"], x * 10, z * 10))
        else:
            col = _wall_albedo(z if f in (2, 3) else x, y, f, room)
        for o, c in zip(out, col):
            o[idx] = c
    return out


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
ROOM_NORMALS = np.array([[0, 1, 0], [0, -1, 0], [1, 0, 0], [-1, 0, 0], [0, 0, 1], [0, 0, -1]], np.float32)


def _shadow_map(room, objects, size=128):
    """Floor light factor on a size x size grid over the room's floor: a soft blob pushed away from
    the light under each object plus a tight contact shadow around its footprint."""
    xs = (np.arange(size, dtype=np.float32) + 0.5) / size * room["w"] - room["w"] / 2
    zs = (np.arange(size, dtype=np.float32) + 0.5) / size * (room["d"] + 0.5) - 0.5
    gx, gz = np.meshgrid(xs, zs)
    light = np.ones((size, size), np.float32)
    lx, ly, lz = room["light"].tolist()
    for obj in objects:
        if obj["base"] > 0:
            continue
        (x, y, z), (hx, hy, hz) = obj["c"].tolist(), obj["half"].tolist()
        lift = 0.5 * (y + hy) / max(ly - y - hy, 0.3)
        r = obj["radius"] * (1.0 + lift) + 0.05
        blob = ((gx - x - (x - lx) * lift) ** 2 + (gz - z - (z - lz) * lift) ** 2) / (r * r)
        if obj["kind"] == "box":
            c, s = np.cos(obj["yaw"]), np.sin(obj["yaw"])
            u, v = (gx - x) * c - (gz - z) * s, (gx - x) * s + (gz - z) * c
            gap = np.hypot(np.maximum(np.abs(u) - hx, 0), np.maximum(np.abs(v) - hz, 0))
        else:
            foot = 0.35 * hx if obj["kind"] == "sphere" else hx
            gap = np.maximum(np.hypot(gx - x, gz - z) - foot, 0)
        light *= (1 - 0.6 * np.exp(-1.5 * blob)) * (1 - 0.5 * np.exp(-gap / 0.06))
    return light


def _shade(p, n, albedo, floor, room, objects):
    """Lambert shading from one ceiling point light plus a sky-like ambient term, with cheap soft
    shadows: ambient occlusion along the room's edges and shadows on the floor (_shadow_map).
    p, n, albedo: three (H, W) planes each; floor: (H, W) bool. Returns (H, W, 3) uint8."""
    (px, py, pz), (nx, ny, nz) = p, n
    lx, ly, lz = room["light"].tolist()
    tx, ty, tz = lx - px, ly - py, lz - pz
    dist = np.sqrt(tx * tx + ty * ty + tz * tz)
    direct = np.maximum((nx * tx + ny * ty + nz * tz) / dist, 0) * 1.7 / (1 + (dist / 4.5) ** 2)
    w2 = room["w"] / 2
    g0 = np.minimum(px + w2, w2 - px)
    g1 = np.minimum(py, room["h"] - py)
    g2 = np.minimum(pz + 0.5, room["d"] - pz)
    edge = np.maximum(np.minimum(g0, g1), np.minimum(np.maximum(g0, g1), g2))  # 2nd smallest: nearest edge
    ambient = (1 - 0.4 * np.exp(-edge / 0.3)) * (0.22 + 0.1 * ny)
    size = 128
    u = (px[floor] + w2) / room["w"] * size - 0.5
    v = (pz[floor] + 0.5) / (room["d"] + 0.5) * size - 0.5
    shadow = _sample(_shadow_map(room, objects, size), np.clip(u, 0, size - 1.001), np.clip(v, 0, size - 1.001))
    direct[floor] *= shadow
    ambient[floor] *= 0.5 + 0.5 * shadow
    out = []
    for a, tint in zip(albedo, room["light_color"].tolist()):
        idx = np.clip(a * (ambient + direct * tint) * 4095, 0, 4095).astype(np.int32)
        out.append(TONE_LUT[idx])
    return np.stack(out, axis=-1)


def render_scene(seed, height=384, width=512):
    """Render one procedural room: returns (rgb uint8 (H, W, 3), depth float32 (H, W) z-depth in metres).

    `seed` is an int or a np.random.Generator; the same seed gives the same pixels. Every ray hits a
    room surface, so the depth is finite and positive everywhere."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    room = _sample_room(rng)
    cam = _sample_camera(rng, room, height, width)
    objects = _sample_objects(rng, room, cam["pos"][2])
    o = cam["pos"].astype(np.float32)
    d = _camera_rays(cam, height, width)
    depth, face = _hit_room(o, d, room)
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
            for plane, ni in zip(normal, nk):
                plane[win][closer] = ni[closer]
            obj_id[win][closer] = k
    p = tuple(float(o[i]) + depth * d[i] for i in range(3))
    albedo = [np.empty((height, width), np.float32) for _ in range(3)]
    on_room = obj_id < 0
    for plane, col in zip(albedo, _room_albedo(*(pi[on_room] for pi in p), face[on_room], room)):
        plane[on_room] = col
    for k, (obj, (r0, r1, c0, c1)) in enumerate(zip(objects, boxes)):
        win = (slice(r0, r1), slice(c0, c1))
        m = obj_id[win] == k
        if m.any():
            for plane, col in zip(albedo, _object_albedo(*(pi[win][m] for pi in p), obj, room["noise"])):
                plane[win][m] = col
    rgb = _shade(p, normal, albedo, on_room & (face == 0), room, objects)
    return rgb, depth.astype(np.float32)


# --------------------------------------------------------------------------------------------
# Sources: discovery and robust loading
# --------------------------------------------------------------------------------------------
class BadSource(Exception):
    """A source image (or its depth) that cannot be used; .reason is a short stable slug for stats.json."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Source:
    key: str  # stable identity: "rgb:<relpath>", "rgbd:<relpath>" or "scene:<seed>" (seeds + split use it)
    path: str = ""  # image file ("" for scenes)
    depth: str = ""  # depth file ("" = RGB-only)
    mask: str = ""  # optional validity mask (.npy)
    kind: str = "rgb"  # rgb | rgbd | scene

    @property
    def label(self):
        """The "source" field of a record: the image path, or scene:<seed>."""
        return self.path or self.key


def _image_files(root):
    """Image-like files under root, recursively, as sorted relative posix paths (depth/mask files excluded)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            stem, ext = os.path.splitext(name)
            if ext.lower() in IMAGE_EXTS and not stem.endswith(DEPTH_SUFFIXES):
                found.append(Path(os.path.relpath(os.path.join(dirpath, name), root)).as_posix())
    return found


def find_depth(image_path):
    """(depth_path, mask_path) for an RGB-D image following the naming rule, "" where absent."""
    folder, name = os.path.split(image_path)
    stem = os.path.splitext(name)[0]
    candidates = [f"{stem}_depth.npy", f"{stem}.npy", f"{stem}_depth.png", f"{stem}_depth.h5", f"{stem}.h5"]
    paths = [os.path.join(folder, c) for c in candidates]
    if os.path.basename(folder) == "imgs":
        paths.append(os.path.join(os.path.dirname(folder), "depths", stem + ".h5"))
    depth = next((p for p in paths if os.path.isfile(p)), "")
    masks = [os.path.join(folder, f"{stem}_mask.npy"), os.path.join(folder, f"{stem}_depth_mask.npy")]
    return depth, next((m for m in masks if os.path.isfile(m)), "")


def discover_sources(rgb_dir, rgbd_dir):
    """Folder sources (RGB-D first; an image present in both folders is used once, as RGB-D) and counts of
    RGB-D images without a depth file (they still feed the RGB tasks)."""
    sources, seen, notes = [], set(), Counter()
    for kind, root in (("rgbd", rgbd_dir), ("rgb", rgb_dir)):
        if not root:
            continue
        if not os.path.isdir(root):
            raise SystemExit(f"make_data: --{kind} {root!r} is not a folder")
        for rel in _image_files(root):
            path = os.path.join(root, rel)
            real = os.path.realpath(path)
            if real in seen:
                continue
            seen.add(real)
            depth, mask = find_depth(path) if kind == "rgbd" else ("", "")
            if kind == "rgbd" and not depth:
                notes["rgbd-image-without-depth"] += 1
            sources.append(Source(f"{kind}:{rel}", path, depth, mask, "rgbd" if depth else "rgb"))
    if any(s.depth.endswith(".h5") for s in sources):
        _require_h5py()
    return sources, notes


def _require_h5py():
    try:
        import h5py  # noqa: F401
    except ImportError:
        raise SystemExit("make_data: MegaDepth .h5 depth files need h5py: pip install h5py") from None
    return h5py


def _to_rgb(im):
    """Any Pillow mode -> RGB: alpha composited on white, 16-bit/float grey rescaled to 8 bits."""
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        a = np.asarray(im, np.float32)
        if im.mode == "F" or a.max() > 65535 or a.min() < 0:
            lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
            a = (a - lo) / max(hi - lo, 1e-12) * 255
        elif a.max() > 255:
            a = a / 257
        return Image.fromarray(np.nan_to_num(a).clip(0, 255).astype(np.uint8)).convert("RGB")
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return im.convert("RGB")


def load_image(path, max_side, min_side):
    """(rgb uint8 HxWx3, stored (W, H), EXIF orientation); raises BadSource for unusable files."""
    try:
        with Image.open(path) as im:
            stored = im.size
            orientation = int(im.getexif().get(0x0112, 1) or 1)
            if im.format == "JPEG" and max_side:
                im.draft("RGB", (max_side, max_side))  # decode at 1/2, 1/4, 1/8 scale when that is enough
            im.load()
            im = _to_rgb(ImageOps.exif_transpose(im))
    except UnidentifiedImageError:
        raise BadSource("not-an-image") from None
    except Image.DecompressionBombError:
        raise BadSource("too-many-pixels") from None
    except (OSError, SyntaxError, ValueError, EOFError, TypeError) as e:
        raise BadSource("truncated" if "truncated" in str(e) else "unreadable") from None
    if max_side and max(im.size) > max_side:
        scale = max_side / max(im.size)
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.BICUBIC)
    if min(im.size) < min_side:
        raise BadSource("too-small")
    return np.asarray(im), stored, orientation


def _read_depth_array(path, png_scale):
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npy":
        a = np.load(path, allow_pickle=False)
    elif ext == ".h5":
        with _require_h5py().File(path, "r") as f:
            a = f["depth"][()]
    else:
        with Image.open(path) as im:
            if im.mode == "F":
                return np.asarray(im, np.float32)
            if im.mode not in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
                raise BadSource("depth-png-not-16-bit")
            return np.asarray(im, np.float32) / np.float32(png_scale)
    if a.dtype.kind not in "fiu":
        raise BadSource("depth-bad-dtype")
    return a


def load_depth(path, mask_path, stored_size, orientation, out_size, png_scale=1000.0):
    """Depth in metres (H, W) float32 aligned with the loaded RGB; invalid pixels are NaN."""
    try:
        d = _read_depth_array(path, png_scale)
        m = np.load(mask_path, allow_pickle=False) if mask_path else None
    except BadSource:
        raise
    except Exception:  # numpy, Pillow and h5py raise many types for corrupt files
        raise BadSource("depth-unreadable") from None
    d = np.asarray(d, np.float32)
    if d.ndim == 3 and d.shape[2] == 1:
        d = d[..., 0]
    if d.ndim != 2:
        raise BadSource("depth-bad-shape")
    if d.shape != (stored_size[1], stored_size[0]):
        raise BadSource("depth-size-mismatch")
    valid = np.isfinite(d) & (d > 0)
    if m is not None:
        m = np.squeeze(np.asarray(m))
        if m.shape != d.shape:
            raise BadSource("mask-size-mismatch")
        valid &= m != 0
    if not valid.any():
        raise BadSource("depth-no-valid-pixels")
    im = Image.fromarray(np.where(valid, d, np.nan).astype(np.float32))  # mode "F"
    method = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}.get(orientation)
    if method is not None:
        im = im.transpose(method)
    if im.size != out_size:
        im = im.resize(out_size, Image.Resampling.NEAREST)
    return np.asarray(im, np.float32).copy()


def load_source(src, need_depth, scene_hw=(384, 512), max_side=1024, min_side=64, png_scale=1000.0):
    """(rgb, depth or None) for one source; raises BadSource with a reason."""
    if src.kind == "scene":
        return render_scene(int(src.key.split(":", 1)[1]), *scene_hw)
    rgb, stored, orientation = load_image(src.path, max_side, min_side)
    if not (need_depth and src.depth):
        return rgb, None
    size = (rgb.shape[1], rgb.shape[0])
    return rgb, load_depth(src.depth, src.mask, stored, orientation, size, png_scale)


# --------------------------------------------------------------------------------------------
# Jobs: one job = one source image (or scene) x one pass -> at most one example per task
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Context:
    """Everything a worker needs besides the job itself (small, pickled with every job)."""
    seed: int
    scene_hw: tuple
    grids: tuple
    max_side: int
    min_side: int
    png_scale: float
    image_format: str
    jpeg_quality: int
    out_dir: str  # workers write the task images here themselves (in parallel); the main process writes records


def _key_words(key):
    """A source key as four uint32 words (stable across runs, machines and Python versions)."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=16).digest()
    return [int.from_bytes(digest[i:i + 4], "little") for i in range(0, 16, 4)]


def example_seed(seed, key, task, k):
    """SeedSequence of the k-th example of `task` from source `key`: independent of worker count,
    job order and which other tasks or sources are selected."""
    return np.random.SeedSequence([seed, tasks.TASKS.index(task), k, *_key_words(key)])


def scene_source(seed, index):
    """The index-th built-in scene: its render seed is derived from the dataset seed."""
    scene_seed = int(np.random.SeedSequence([seed, SCENE_SALT, index]).generate_state(1)[0])
    return Source(f"scene:{scene_seed}", kind="scene")


def is_test(seed, key, test_fraction):
    """Split by source: a deterministic per-source uniform draw, so no source feeds both splits."""
    u = np.random.SeedSequence([seed, SPLIT_SALT, *_key_words(key)]).generate_state(1)[0] / 2.0 ** 32
    return bool(u < test_fraction)


def _encode(img, image_format, quality):
    buf = io.BytesIO()
    if image_format == "png":
        img.save(buf, format="PNG", compress_level=1)
    else:
        img.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _json_safe(x):
    """Metadata from tasks.py made JSON-serialisable (numpy scalars/arrays, tuples)."""
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, np.ndarray):
        return _json_safe(x.tolist())
    if isinstance(x, np.generic):
        return x.item()
    return x


def generate_one(task, rgb, depth, key, k, ctx):
    """Call tasks.generate with the example's own seeded rng; returns tasks.Example or a reason string."""
    ss = example_seed(ctx.seed, key, task, k)
    options = {}
    if task == "shuffle":
        options["grid"] = ctx.grids[int(ss.generate_state(1)[0]) % len(ctx.grids)]
    try:
        depth = depth if task in tasks.DEPTH_TASKS else None
        ex = tasks.generate(task, rgb, depth, np.random.default_rng(ss), **options)
    except Exception as e:  # a generator bug must not kill a long build; it is counted and reported
        return f"generator-error:{type(e).__name__}"
    if isinstance(ex, tasks.Rejected):
        return str(ex.reason)
    if ex.problem.count("<image>") != len(ex.images) or not ex.images:
        return "generator-error:image-count"
    return ex


def _save_images(images, task, index, ctx):
    """Write one example's images (each atomically) as images/<task>/<task>-<job>_<i>.<ext>; returns the
    paths relative to the output folder. Nothing references them until the main process writes the record."""
    ext = "png" if ctx.image_format == "png" else "jpg"
    rels = [f"images/{task}/{task}-{index:07d}_{i}.{ext}" for i in range(len(images))]
    Path(ctx.out_dir, "images", task).mkdir(parents=True, exist_ok=True)
    for rel, data in zip(rels, images):
        _atomic_write(Path(ctx.out_dir, rel), data)
    return rels


def run_job(job):
    """Worker entry point. job = (index, source, k, task tuple, Context). Returns a picklable dict with the
    source-level skip reason (or None) and, per attempted task, a rejection reason or the example (its
    images already saved by _save_images)."""
    index, src, k, todo, ctx = job
    result = {"index": index, "key": src.key, "skip": None, "examples": {}}
    need_depth = any(t in tasks.DEPTH_TASKS for t in todo)
    try:
        rgb, depth = load_source(src, need_depth, ctx.scene_hw, ctx.max_side, ctx.min_side, ctx.png_scale)
    except BadSource as e:
        result["skip"] = e.reason
        return result
    except Exception as e:  # anything unexpected in a decoder: skip the source, never crash the build
        result["skip"] = f"load-error:{type(e).__name__}"
        return result
    for task in todo:
        ex = generate_one(task, rgb, depth, src.key, k, ctx)
        if isinstance(ex, str):
            result["examples"][task] = ex
            continue
        try:
            images = [_encode(im, ctx.image_format, ctx.jpeg_quality) for im in ex.images]
            meta = json.loads(json.dumps(_json_safe(ex.meta), allow_nan=False))
        except (TypeError, ValueError, OSError, AttributeError) as e:  # not a PIL image / not JSON-able metadata
            result["examples"][task] = f"generator-error:{type(e).__name__}"
            continue
        result["examples"][task] = {"problem": ex.problem, "answer": str(ex.answer), "meta": meta,
                                    "images": _save_images(images, task, index, ctx)}
    return result


# --------------------------------------------------------------------------------------------
# Output folder: config check, crash-safe append-only files, resume
# --------------------------------------------------------------------------------------------
def job_of(record_id):
    """Record ids are "<task>-<job index>"; the job index orders everything in the folder."""
    return int(record_id.rsplit("-", 1)[1])


def _read_jsonl(path):
    """[(raw_line_bytes, obj)] for the complete, parseable lines of a file, stopping at the first bad
    one (a partial line left by a killed run is never trusted)."""
    if not path.exists():
        return []
    out = []
    for raw in path.read_bytes().split(b"\n")[:-1]:  # the piece after the last newline is incomplete
        try:
            out.append((raw + b"\n", json.loads(raw)))
        except ValueError:
            break
    return out


def _atomic_write(path, data):
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


class OutputFolder:
    """Append-only record files plus a journal (progress.jsonl, one line per finished job). Workers write
    images (tmp + rename) before the main process appends the record that references them; journal lines
    are written only after the records they list are fsync'ed. On resume everything after the first job that is not fully on disk
    is rolled back, so the folder always holds an exact prefix of the uninterrupted run."""

    def __init__(self, root, dataset_config, sync_seconds=2.0):
        self.root, self.sync_seconds = Path(root), sync_seconds
        self.root.mkdir(parents=True, exist_ok=True)
        self._check_config(dataset_config)
        self.resume_at, self.journal = self._repair()   # also sets self.records (the kept records)
        self.files = {name: open(self.root / f"{name}.jsonl", "ab") for name in ("train", "test", "progress")}
        self.pending, self.last_sync = [], time.monotonic()

    def _check_config(self, dataset_config):
        path = self.root / "config.json"
        text = json.dumps(dataset_config, indent=1, sort_keys=True) + "\n"
        if path.exists():
            stored = json.loads(path.read_text())
            diff = sorted(k for k in set(stored) | set(dataset_config) if stored.get(k) != dataset_config.get(k))
            if diff:
                raise SystemExit(f"make_data: {self.root} was built with different settings ({', '.join(diff)}: "
                                 f"{ {k: stored.get(k) for k in diff} }); use a new --out or the same settings")
        elif any(p.name != "config.json.tmp" for p in self.root.iterdir()):
            raise SystemExit(f"make_data: {self.root} is not empty and holds no config.json; refusing to mix datasets")
        else:
            _atomic_write(path, text.encode())

    def _repair(self):
        """Find the first job that is not completely on disk, roll every file back to before it, and delete
        images that no kept record references. Sets self.records; returns (resume index, kept journal)."""
        journal = _read_jsonl(self.root / "progress.jsonl")
        recs = {s: _read_jsonl(self.root / f"{s}.jsonl") for s in ("train", "test")}
        by_id = {obj["id"]: obj for s in recs for _, obj in recs[s]}
        resume = journal[-1][1]["job"] + 1 if journal else 0
        for _, entry in journal:
            if any(i not in by_id or not self._images_ok(by_id[i]) for i in entry["accepted"]):
                resume = min(resume, entry["job"])
        for rec in by_id.values():
            if not self._images_ok(rec):
                resume = min(resume, job_of(rec["id"]))
        kept_journal = [(raw, e) for raw, e in journal if e["job"] < resume]
        _atomic_write(self.root / "progress.jsonl", b"".join(raw for raw, _ in kept_journal))
        kept = {}
        for split, lines in recs.items():
            lines = [(raw, r) for raw, r in lines if job_of(r["id"]) < resume]
            _atomic_write(self.root / f"{split}.jsonl", b"".join(raw for raw, _ in lines))
            kept[split] = [r for _, r in lines]
        self.records = kept
        self.prune_images()
        return resume, [e for _, e in kept_journal]

    def prune_images(self):
        """Delete every file under images/ that no record references (and any *.tmp)."""
        referenced = {p for split in self.records for r in self.records[split] for p in r["images"]}
        for dirpath, _, names in os.walk(self.root / "images"):
            for name in names:
                path = Path(dirpath) / name
                if path.relative_to(self.root).as_posix() not in referenced:
                    path.unlink()

    def _images_ok(self, rec):
        return all((self.root / p).is_file() and (self.root / p).stat().st_size > 0 for p in rec["images"])

    def write_record(self, split, record):
        """Append one complete JSON line (its images are already on disk, written by the worker)."""
        self.records[split].append(record)
        self.files[split].write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))

    def discard(self, example):
        """Delete the images of an example that does not become a record (its task's quota filled up)."""
        for rel in example["images"]:
            (self.root / rel).unlink(missing_ok=True)

    def end_job(self, entry, force_sync=False):
        self.pending.append((json.dumps(entry, sort_keys=True) + "\n").encode())
        if force_sync or time.monotonic() - self.last_sync >= self.sync_seconds:
            self.sync()

    def sync(self):
        """fsync the records, then journal the jobs whose records are now durable."""
        for split in ("train", "test"):
            self.files[split].flush()
            os.fsync(self.files[split].fileno())
        self.files["progress"].write(b"".join(self.pending))
        self.files["progress"].flush()
        os.fsync(self.files["progress"].fileno())
        self.pending, self.last_sync = [], time.monotonic()

    def close(self):
        self.sync()
        for f in self.files.values():
            f.close()


# --------------------------------------------------------------------------------------------
# Build loop
# --------------------------------------------------------------------------------------------
def parse_tasks(spec, have_depth):
    """"shuffle:2,depth" -> {"shuffle": 2.0, "depth": 1.0}; "auto" -> all five (RGB tasks only without depth)."""
    if spec == "auto":
        spec = ",".join(tasks.TASKS if have_depth else tasks.RGB_TASKS)
    weights = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, w = item.partition(":")
        if name not in tasks.TASKS:
            raise SystemExit(f"make_data: unknown task {name!r}; choose from {', '.join(tasks.TASKS)}")
        weights[name] = float(w) if w else 1.0
        if not weights[name] > 0:
            raise SystemExit(f"make_data: task weight must be > 0 in {item!r}")
    if not weights:
        raise SystemExit("make_data: --tasks selects no task")
    if not have_depth and set(weights) & set(tasks.DEPTH_TASKS):
        raise SystemExit("make_data: the depth and position tasks need depth maps: give --rgbd DIR with depth files "
                         "(see the naming rule in `python make_data.py --help` / the module docstring) or no source "
                         "flag at all (built-in RGB-D scenes), or select only shuffle,flip,crop")
    return {t: weights[t] for t in tasks.TASKS if t in weights}


def split_quota(total, weights):
    """Largest-remainder split of `total` over tasks in proportion to their weights (sums to total)."""
    s = sum(weights.values())
    raw = {t: total * w / s for t, w in weights.items()}
    q = {t: int(math.floor(v)) for t, v in raw.items()}
    for t in sorted(raw, key=lambda t: (q[t] - raw[t], list(weights).index(t)))[: total - sum(q.values())]:
        q[t] += 1
    return q


def parse_grids(spec):
    try:
        grids = tuple(tuple(int(v) for v in g.lower().split("x")) for g in spec.split(",") if g.strip())
        if not grids or not all(len(g) == 2 and min(g) >= 1 and g[0] * g[1] >= 2 for g in grids):
            raise ValueError(spec)
    except ValueError:
        raise SystemExit(f"make_data: --shuffle-grids wants ROWSxCOLS[,ROWSxCOLS...], got {spec!r}") from None
    return grids


def parse_size(spec):
    try:
        w, h = (int(v) for v in spec.lower().split("x"))
        if w < 16 or h < 16:
            raise ValueError(spec)
    except ValueError:
        raise SystemExit(f"make_data: --scene-size wants WxH (e.g. 512x384), got {spec!r}") from None
    return h, w


def dataset_config(cfg):
    """The settings that define the dataset (stored in config.json; a resume must match them)."""
    d = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RUN_ONLY_KEYS}
    d["rgb"] = os.path.abspath(cfg.rgb) if cfg.rgb else ""
    d["rgbd"] = os.path.abspath(cfg.rgbd) if cfg.rgbd else ""
    return d


def plan_jobs(cfg, sources, quotas, counts, start, ctx):
    """Lazily yield jobs in index order, skipping jobs whose tasks are all full already.
    Folder: job i = source order[i % M], pass i // M. Built-in scenes: job i = scene i."""
    if sources is None:
        limit = 10 * max(quotas.values()) + 50
        plan = lambda i: (scene_source(cfg.seed, i), 0)  # noqa: E731
    else:
        order = sorted(sources, key=lambda s: hashlib.blake2b(f"{cfg.seed}:{s.key}".encode()).digest())
        limit = len(order) * cfg.per_source
        plan = lambda i: (order[i % len(order)], i // len(order))  # noqa: E731
    for index in range(start, limit):
        if all(counts[t] >= quotas[t] for t in quotas):
            return
        src, k = plan(index)
        usable = tasks.TASKS if src.kind in ("scene", "rgbd") else tasks.RGB_TASKS
        todo = tuple(t for t in quotas if t in usable and counts[t] < quotas[t])
        if todo:
            yield index, src, k, todo, ctx


def run_all(jobs, workers, handle):
    """Run jobs in a process pool, handling results strictly in job order (a sliding window keeps the
    pool busy without running far ahead). handle(job, result) returns True to stop early."""
    if workers <= 1:
        for job in jobs:
            if handle(job, run_job(job)):
                return
        return
    import multiprocessing
    pool = multiprocessing.get_context().Pool(workers)
    try:
        pending = deque()
        while True:
            while len(pending) < 4 * workers:
                job = next(jobs, None)
                if job is None:
                    break
                pending.append((job, pool.apply_async(run_job, (job,))))
            if not pending:
                return
            job, future = pending.popleft()
            if handle(job, future.get()):
                return
    finally:
        pool.terminate()
        pool.join()


class Builder:
    """Main-process side of a build: decides, strictly in job order, which results become records."""

    def __init__(self, cfg, out, quotas):
        self.cfg, self.out, self.quotas = cfg, out, quotas
        self.counts = Counter(r["task"] for s in out.records for r in out.records[s])
        self.rejected = {t: Counter() for t in quotas}
        self.skipped = Counter()
        for entry in out.journal:
            self.skipped.update([entry["skip"]] if entry["skip"] else [])
            for t, reason in entry["rejected"].items():
                self.rejected.setdefault(t, Counter())[reason] += 1
        self.bar = None

    def handle(self, job, result):
        """Accept one job's results. A task counts (record or rejection) only while its quota is open,
        so the outcome does not depend on how far ahead the workers ran."""
        index, src, k, todo, _ = job
        live = [t for t in todo if self.counts[t] < self.quotas[t]]
        for task, ex in result["examples"].items():
            if task not in live and isinstance(ex, dict):
                self.out.discard(ex)
        if not live:
            return False
        entry = {"job": index, "key": src.key, "skip": None, "rejected": {}, "accepted": []}
        if result["skip"] and k == 0:
            entry["skip"] = result["skip"]
            self.skipped[result["skip"]] += 1
        split = "test" if is_test(self.cfg.seed, src.key, self.cfg.test_fraction) else "train"
        for task in live:
            ex = result["examples"].get(task)
            if isinstance(ex, str):
                entry["rejected"][task] = ex
                self.rejected[task][ex] += 1
            elif ex is not None:
                rid = f"{task}-{index:07d}"
                self.out.write_record(split, {"id": rid, "task": task, "problem": ex["problem"],
                                              "answer": ex["answer"], "images": ex["images"],
                                              "source": src.label, "meta": ex["meta"]})
                entry["accepted"].append(rid)
                self.counts[task] += 1
                if self.bar is not None:
                    self.bar.update(1)
        self.out.end_job(entry)
        return all(self.counts[t] >= self.quotas[t] for t in self.quotas)


def build(cfg):
    """Build (or resume) the dataset in cfg.out; returns the stats dict written to stats.json."""
    from tqdm import tqdm
    t0 = time.time()
    _check_config(cfg)
    sources, notes = (None, Counter()) if not (cfg.rgb or cfg.rgbd) else discover_sources(cfg.rgb, cfg.rgbd)
    if sources is not None and not sources:
        raise SystemExit(f"make_data: no image files ({', '.join(IMAGE_EXTS)}) under {cfg.rgb or ''} {cfg.rgbd or ''}")
    have_depth = sources is None or any(s.kind == "rgbd" for s in sources)
    quotas = split_quota(cfg.n, parse_tasks(cfg.tasks, have_depth))
    ctx = Context(cfg.seed, parse_size(cfg.scene_size), parse_grids(cfg.shuffle_grids), cfg.max_side,
                  cfg.min_side, cfg.depth_png_scale, cfg.image_format, cfg.jpeg_quality, str(Path(cfg.out).resolve()))
    out = OutputFolder(cfg.out, dataset_config(cfg), cfg.sync_seconds)
    builder = Builder(cfg, out, quotas)
    workers = cfg.workers or os.cpu_count() or 1
    done = sum(builder.counts.values())
    what = "built-in RGB-D scenes" if sources is None else \
        f"{len(sources)} images ({sum(s.kind == 'rgbd' for s in sources)} with depth)"
    print(f"make_data: {cfg.n} examples ({', '.join(f'{t} {q}' for t, q in quotas.items())}) from {what} -> {cfg.out}")
    if done:
        print(f"make_data: resuming {cfg.out} at job {out.resume_at} ({done} examples already there)")
    tqdm.monitor_interval = 0  # no monitor thread: the worker pool is forked after the bar exists
    builder.bar = tqdm(total=cfg.n, initial=done, unit="ex", disable=not cfg.progress, desc="examples")
    try:
        run_all(plan_jobs(cfg, sources, quotas, builder.counts, out.resume_at, ctx), workers, builder.handle)
    except KeyboardInterrupt:
        out.close()
        raise SystemExit("make_data: interrupted; run the same command again to resume") from None
    builder.bar.close()
    out.close()
    out.prune_images()  # results of jobs still in flight when the quotas filled up
    stats = write_stats(cfg, out, builder, sources, notes)
    stats["sft"] = write_sft(cfg, out.root, out.records["train"], quotas)
    _atomic_write(out.root / "stats.json", (json.dumps(stats, indent=1) + "\n").encode())
    stats["seconds"], stats["workers"] = time.time() - t0, workers
    return stats


def _check_config(cfg):
    problems = [msg for bad, msg in [
        (cfg.n < 1, "--n must be >= 1"), (not 0 <= cfg.test_fraction < 1, "--test-fraction must be in [0, 1)"),
        (cfg.per_source < 1, "--per-source must be >= 1"), (cfg.workers < 0, "--workers must be >= 0"),
        (cfg.image_format not in ("jpg", "png"), "--image-format must be jpg or png"),
        (not 1 <= cfg.jpeg_quality <= 100, "--jpeg-quality must be in 1..100"),
        (cfg.sft_size < 0, "--sft-size must be >= 0"),
        (cfg.depth_png_scale <= 0, "--depth-png-scale must be > 0")] if bad]
    if problems:
        raise SystemExit("make_data: " + "; ".join(problems))


def write_stats(cfg, out, builder, sources, notes):
    recs = out.records
    counts = {t: {s: sum(r["task"] == t for r in recs[s]) for s in ("train", "test")} for t in builder.quotas}
    return {
        "counts": counts, "quota": builder.quotas,
        "shortfall": {t: q - sum(counts[t].values()) for t, q in builder.quotas.items() if sum(counts[t].values()) < q},
        "rejected": {t: dict(sorted(c.items())) for t, c in builder.rejected.items() if c},
        "skipped_sources": dict(sorted(builder.skipped.items())),
        "sources": {"kind": "scenes" if sources is None else "folders",
                    "found": None if sources is None else len(sources),
                    "rgbd": None if sources is None else sum(s.kind == "rgbd" for s in sources),
                    "used": len({r["source"] for s in recs for r in recs[s]}), **dict(notes)},
        "jobs": len(_read_jsonl(out.root / "progress.jsonl")),
    }


def _trace(rec):
    """tasks.reasoning_trace for a stored record: the trace is built from the record's metadata alone."""
    return tasks.reasoning_trace(tasks.Example(task=rec["task"], images=[], problem=rec["problem"],
                                               answer=rec["answer"], meta=rec["meta"]))


def write_sft(cfg, root, train, quotas):
    """sft.jsonl: a task-balanced, seeded subset of train with templated reasoning traces ("response")."""
    want = split_quota(min(cfg.sft_size, len(train)), {t: 1.0 for t in quotas}) if train else {}
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, SFT_SALT]))
    chosen = set()
    for task in quotas:
        idx = [i for i, r in enumerate(train) if r["task"] == task]
        chosen.update(idx[j] for j in sorted(rng.permutation(len(idx))[: want.get(task, 0)]))
    shortage = sum(want.values()) - len(chosen)  # tasks with too few train records: top up from the others
    rest = [i for i in rng.permutation(len(train)) if i not in chosen]
    chosen.update(int(i) for i in rest[:shortage])
    lines = []
    for i in sorted(chosen):
        lines.append(json.dumps({**train[i], "response": _trace(train[i])}, ensure_ascii=False) + "\n")
    _atomic_write(root / "sft.jsonl", "".join(lines).encode("utf-8"))
    return dict(Counter(train[i]["task"] for i in sorted(chosen)))


# --------------------------------------------------------------------------------------------
# Preview contact sheet, summary, benchmark
# --------------------------------------------------------------------------------------------
def make_preview(records, root, path, row_height=260, text_width=560):
    """One row per task: its images (scaled to row_height) next to the wrapped question and the answer."""
    first = {}
    for rec in records:
        first.setdefault(rec["task"], rec)
    rows, font, bold = [], tasks.font(15), tasks.font(20)
    for task in [t for t in tasks.TASKS if t in first]:
        rec = first[task]
        ims = [Image.open(root / p).convert("RGB") for p in rec["images"]]
        h = row_height if len(ims) == 1 else row_height * 3 // 4
        ims = [im.resize((max(1, round(im.width * h / im.height)), h)) for im in ims]
        lines = []
        for para in rec["problem"].split("\n"):
            lines += textwrap.wrap(para, 64) or [""]
        lines = lines[:14] + (["..."] if len(lines) > 14 else [])
        size = (text_width + sum(im.width + 8 for im in ims) + 8, max(row_height + 8, 80 + 18 * len(lines)))
        row = Image.new("RGB", size, "white")
        draw = ImageDraw.Draw(row)
        draw.text((10, 8), f"{task}   ({rec['id']})", fill=(0, 0, 0), font=bold)
        for i, line in enumerate(lines):
            draw.text((10, 40 + 18 * i), line, fill=(40, 40, 40), font=font)
        draw.text((10, 44 + 18 * len(lines)), f"answer: {rec['answer']}", fill=(180, 0, 0), font=bold)
        x = text_width
        for im in ims:
            row.paste(im, (x, 4))
            x += im.width + 8
        rows.append(row)
    if not rows:
        return None
    sheet = Image.new("RGB", (max(r.width for r in rows), sum(r.height + 6 for r in rows)), (200, 200, 200))
    y = 0
    for r in rows:
        sheet.paste(r, (0, y))
        y += r.height + 6
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def print_summary(cfg, stats, preview):
    c, q = stats["counts"], stats["quota"]
    train = sum(v["train"] for v in c.values())
    test = sum(v["test"] for v in c.values())
    print(f"\nmake_data: {cfg.out}: {train} train + {test} test examples from {stats['sources']['used']} sources "
          f"({stats['jobs']} jobs) in {stats['seconds']:.1f} s with {stats['workers']} workers")
    print(f"{'task':<10}{'quota':>7}{'train':>7}{'test':>6}{'sft':>6}  rejected (top reasons)")
    for t in q:
        rej = sorted(stats["rejected"].get(t, {}).items(), key=lambda kv: -kv[1])[:3]
        print(f"{t:<10}{q[t]:>7}{c[t]['train']:>7}{c[t]['test']:>6}{stats['sft'].get(t, 0):>6}  "
              + (", ".join(f"{k} {v}" for k, v in rej) or "-"))
    if stats["skipped_sources"]:
        print("skipped sources: " + ", ".join(f"{k} {v}" for k, v in stats["skipped_sources"].items()))
    errors = {k: v for t in stats["rejected"].values() for k, v in t.items() if k.startswith("generator-error")}
    if errors:
        print(f"WARNING: tasks.generate raised or returned a malformed example: {errors} (a bug in tasks.py)")
    if stats["shortfall"]:
        print("SHORT of quota (sources exhausted or too many rejections): "
              + ", ".join(f"{k} {v}" for k, v in stats["shortfall"].items()))
    if sum(stats["sft"].values()) < cfg.sft_size:
        print(f"sft.jsonl: {sum(stats['sft'].values())} examples (--sft-size {cfg.sft_size} capped by the train split)")
    print("files: train.jsonl test.jsonl sft.jsonl stats.json images/" + (f"  preview: {preview}" if preview else ""))


def _bench(fn, seconds, min_reps=3):
    """Mean seconds per call of fn(i), repeated for about `seconds`."""
    t0, reps = time.perf_counter(), 0
    while reps < min_reps or time.perf_counter() - t0 < seconds:
        fn(reps)
        reps += 1
    return (time.perf_counter() - t0) / reps


def benchmark(cfg):
    """Per-task generation speed on this process's single core, then scene-render speed."""
    grids, rows = parse_grids(cfg.shuffle_grids), []
    with tempfile.TemporaryDirectory() as tmp:
        for w, h in ((512, 512), (1024, 768)):
            scenes = [render_scene(s, h, w) for s in range(4)]
            for task in tasks.TASKS:
                accepted = []

                def gen(i, save=False):
                    rgb, depth = scenes[i % len(scenes)]
                    opts = {"grid": grids[0]} if task == "shuffle" else {}
                    ex = tasks.generate(task, rgb, depth if task in tasks.DEPTH_TASKS else None,
                                        np.random.default_rng(i), **opts)
                    accepted.append(isinstance(ex, tasks.Example))
                    for j, im in enumerate(ex.images if save and accepted[-1] else []):
                        Path(tmp, f"{i}_{j}.jpg").write_bytes(_encode(im, cfg.image_format, cfg.jpeg_quality))
                g = _bench(gen, cfg.bench_seconds)
                ok = float(np.mean(accepted))
                s = _bench(lambda i: gen(i, True), cfg.bench_seconds)
                rows.append((f"{w}x{h}", task, g, s, ok))
    print(f"{'input':<10}{'task':<10}{'gen ms':>9}{'gen/s':>8}{'gen+save ms':>13}{'gen+save/s':>12}{'accepted':>10}")
    for size, task, g, s, ok in rows:
        print(f"{size:<10}{task:<10}{g * 1e3:>9.1f}{1 / g:>8.1f}{s * 1e3:>13.1f}{1 / s:>12.1f}{ok:>10.0%}")
    print(f"\n{'scene':<10}{'ms':>9}{'renders/s':>11}")
    for w, h in ((256, 256), (512, 384), (512, 512)):
        r = _bench(lambda i: render_scene(i, h, w), cfg.bench_seconds)
        print(f"{f'{w}x{h}':<10}{r * 1e3:>9.1f}{1 / r:>11.1f}")
    slow = [t for size, t, g, _, _ in rows if g > 0.020 and size == "1024x768"]
    print("target < 20 ms/sample at 1024x768 (generation): " + ("met" if not slow else "MISSED by " + ", ".join(slow)))


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------
def main(argv=None):
    cfg = parse_config(argv)
    if cfg.benchmark:
        benchmark(cfg)
        return 0
    stats = build(cfg)
    preview = None
    if cfg.preview.lower() != "none":
        path = Path(cfg.out) / "preview.png" if cfg.preview == "auto" else Path(cfg.preview)
        root = Path(cfg.out)
        records = [r for split in ("train", "test") for _, r in _read_jsonl(root / f"{split}.jsonl")]
        preview = make_preview(records, root, path)
    print_summary(cfg, stats, preview)
    if not sum(sum(v.values()) for v in stats["counts"].values()):
        print(f"make_data: error: nothing usable: no example could be made from the given sources "
              f"(skipped: {stats['skipped_sources'] or 'none'}; rejected: {stats['rejected'] or 'none'})",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
