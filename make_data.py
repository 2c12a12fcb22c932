"""Spatial-SSRL dataset builder: image folders (or built-in procedural RGB-D scenes) -> pretext-task dataset.

Stage 0 of Spatial-SSRL (arXiv 2510.27606): turn ordinary RGB or RGB-D images into the five verifiable
self-supervised tasks of tasks.py (shuffle, flip, crop, depth, position) for the SFT cold start and GRPO;
beyond the paper (docs/beyond-the-paper.md): depth estimated for RGB-only photos (--depth-model, checked
against depth files with --check-depth) and the opt-in rotation task (--tasks ...,rotation).

    python make_data.py                                  # 500 examples (+ 50 cold-start) from scenes.py -> data/ssrl
    python make_data.py --out data/mine --rgb photos/ --rgbd diode/ megadepth/imgs/ --n 81000 --workers 8
    python make_data.py --out data/mine --rgb photos/ --rgbd diode/ megadepth/imgs/ --n 81000 --workers 8 --resume
    python dev/bench.py data                               # generator / scene / builder speed (not here)
    python make_data.py --out data/p --rgb photos/ --depth-model depth-anything/Depth-Anything-V2-Small-hf
    python make_data.py --help                           # every knob with its default, and examples

RGB-D naming rule (--rgbd DIR, searched recursively): an image <stem>.<jpg|png|...> takes its depth from the
first of <stem>_depth.npy, <stem>.npy, <stem>_depth.png, <stem>_depth.h5, <stem>.h5, ../depths/<stem>.h5 (the
MegaDepth imgs/ + depths/ layout). .npy = metres, HxW or HxWx1; 16-bit PNG = millimetres (--depth-png-scale);
.h5 = key "depth" (needs `pip install h5py`). Optional validity mask <stem>_mask.npy or <stem>_depth_mask.npy
(DIODE). Depth <= 0, NaN, inf or masked out = invalid. Files named *_depth.* / *_mask.* are never RGB sources.
The depth map must match the image's stored pixel grid; EXIF rotation is applied to both. --rgbd with no
depth file at all is an error (unless --tasks names only RGB tasks); tasks that fall short are reported.

Depth from photos (--depth-model NAME_OR_PATH, beyond the paper): a transformers depth-estimation model (Depth
Anything or DPT; a folder, or an id in the local Hugging Face cache: never downloaded) estimates the depth of
every image without a depth file; a depth file wins where there is one. It runs in the main process, in fixed
chunks of --depth-batch images in plan order (DepthEstimates), and each job carries its map to the worker, so
workers never load the model and the dataset does not depend on --workers. A relative model's output is
inverse depth up to scale and shift (larger = nearer), read as d = 1 / (x + eps) (depth_from_output): it
keeps the order of the depths, so it feeds the depth task; position needs depth differences and is fed only
by a metric model (source_tasks, tasks.Task.depth_order_only). A depth-task record's meta "depth_source" is
"sensor", "scene" or "model:<name>" (counts in stats.json "depth"). --check-depth --rgbd DIR --depth-model M
builds nothing: it answers the depth questions of DIR's depth files again from M's estimate and prints how
often the answer is the same (check_depth): the number to know before trusting M.

Output (--out): train.jsonl (GRPO), test.jsonl (held out), sft.jsonl (cold start, with "response"): three
disjoint sets of source images; images/<task>/<id>_<i>.jpg, stats.json (counts, rejections, the unusable
source files by reason, and the shortcut report), run.json (the settings and a fingerprint of the source
folders: common.open_run), progress.jsonl (resume journal) and preview.png. Records: {"id", "task",
"problem", "answer", "images", "source", "meta"} (+ "response" in sft.jsonl); `images` are relative to --out.
--release also writes them in the authors' formats, for their EasyR1 / LLaMA-Factory trainers (docs/reproduce.md):
parquet/train.parquet + parquet/test.parquet, SFT-coldstart.json + dataset_info.json (write_release).

Output folder (common.out_dir_mode, the rule of every script): a new or empty --out is built; an earlier
make_data.py build in it is continued with --resume (refused if a setting differs or the source folders
changed: files added, removed or resized) or deleted and rebuilt with --overwrite; any other folder is refused.
A resumed build is byte-identical to an uninterrupted one. Exit codes (common.cli_main): 0 done; 2 bad input,
or a split that was asked for came out empty (too few source images); 130 interrupted (add --resume to go on).

Shortcut report (stats.json "shortcuts", and the end-of-run table): the accuracy of known 2-D heuristics
that never look at depth or at the hole (depth: "lower = nearer", "edge = nearer"; position: image x +
"higher = farther", image x alone, text-only priors; crop: a candidate-only classifier, pixel twins, JPEG
grid), next to chance and a limit (never above 100 %; "n too small to judge" where even a heuristic right on
every question could not be told from one at the limit); run it on your own photos to see whether they are
shortcut-prone.

Paper → code
  five pretext tasks from raw RGB / RGB-D images   → tasks.make_example(), called by run_job()
  81k-sample training set, split into tasks        → build() (quotas from --n and --tasks weights)
  cold-start SFT set (~3.6k) with reasoning         → Builder._accept() (tasks.reasoning_trace), sft_plan()
  the release's spatialssrl.parquet / SFT-coldstart.json → write_release() (records.write_parquet, write_llamafactory)
  DIODE .npy + mask / MegaDepth .h5 depth sources  → load_depth(), find_depth()
  no source data on a fresh machine                 → scenes.render_scene() (procedural RGB-D scenes)
  beyond: depth estimated for RGB-only photos       → load_depth_model(), depth_from_output(), DepthEstimates
  beyond: is the depth model good enough?           → check_depth() (--check-depth)
  beyond: the rotation task's 2-D shortcuts          → rotation_shortcuts()

Deviations from the official data scripts (data_process/*.py)
  1. One builder for all five tasks, deterministic per --seed whatever --workers, parallel and resumable;
     the official scripts are one-image demos that write no dataset records.
  2. Train/test split by source image (the official validation set is the first 10k training rows); the
     cold-start set also has its own source images (split_of), so GRPO never rewards an SFT example.
     Byte-identical files under two names are one source (same_content), so a copy cannot cross the split.
  3. Cold-start traces are templates built from each example's metadata (tasks.reasoning_trace), not
     LVLM-written.
  4. Built-in procedural scenes (scenes.py) replace downloads; real folders are used when --rgb/--rgbd are given
     (each takes several folders).
  5. Sources are down-scaled to --max-side (default 1024) before generation, JPEG sources also by a random
     per-file factor (jpeg_scale) so the 8×8 block grid carries no signal; images are saved as JPEG q95.
  6. Every build reports its shortcut heuristics (shortcut_report); the paper reports none.
  7. --tasks auto builds the paper's five (tasks.DEFAULT_TASKS); rotation (PC-GRPO) only when named.
  8. --depth-model (not in the paper, which uses RGB-D datasets for depth and position): photos without depth
     feed the depth task from a model's estimate, position only from a metric model.
"""
import dataclasses
import hashlib
import importlib.util
import io
import itertools
import json
import math
import os
import re
import textwrap
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps, UnidentifiedImageError

import records
import scenes
import tasks
from common import (SetupError, Skipped, append_jsonl, atomic_write, check_identity, cli_main, config_parser, knob,
                    open_run, out_dir_mode, read_jsonl, read_run_info, rewrite_jsonl, use_cuda)

PROG = "make_data.py"
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
DEPTH_SUFFIXES = ("_depth", "_mask", "_depth_mask")  # stems ending like this are depth/mask files, not images
SCENE_SALT, SFT_SALT, SPLIT_SALT = 0x5CE7E, 0x5F7, 0x7E57
# Settings that only change speed, reporting or how --out is used; the rest (and the source fingerprint) is the
# run's identity in run.json, which a --resume must match.
RUN_ONLY_KEYS = ("out", "workers", "preview", "progress", "sync_seconds", "resume", "overwrite", "release")
NAMING_RULE = ("Depth naming rule: an image <stem>.<jpg|png|...> takes its depth from the first of <stem>_depth.npy, "
               "<stem>.npy, <stem>_depth.png (16-bit, millimetres), <stem>_depth.h5, <stem>.h5 or ../depths/<stem>.h5 "
               "next to it.")
SPLITS = ("train", "test", "sft")  # record files <split>.jsonl; sft.jsonl records also carry "response"
JOURNAL = "progress.jsonl"         # one line per finished job, written after the records it lists are durable
NAMED_PER_REASON = 5               # unusable source files named per reason in stats.json (3 in the summary)


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------
@dataclass
class Config:
    out: str = knob("data/ssrl", "output folder; a build already in it is continued with --resume or replaced "
                                 "with --overwrite")
    rgb: list = knob((), "folders of RGB images (recursive) for the RGB tasks (shuffle / flip / crop, rotation), "
                         "and with --depth-model the depth task")
    rgbd: list = knob((), "folders of RGB + depth pairs (naming rule below) for all five tasks")
    n: int = knob(500, "total number of examples (train + test), shared between tasks by their weights")
    tasks: str = knob("auto", 'comma list with optional weights ("shuffle:2,depth,rotation"); auto = the paper\'s '
                              "five (those the sources can feed: the RGB tasks if there is no depth); rotation "
                              "(beyond the paper) only when named")
    sft_size: int = knob(-1, "cold-start examples (sft.jsonl), from source images not used by train / test; "
                             "0 = none, -1 = auto: max(50, 4.4 %% of --n)")
    test_fraction: float = knob(0.1, "fraction of source images whose examples go to test.jsonl (0 = no test split)")
    seed: int = knob(0, "the dataset is a pure function of the seed and the settings (not of --workers)")
    workers: int = knob(0, "worker processes; 0 = all cores")
    preview: str = knob("auto", "contact sheet PNG with one example per task; auto = OUT/preview.png, none = off")
    scene_size: str = knob("512x384", "WxH of the built-in procedural rooms")
    shuffle_grids: str = knob("2x2", 'shuffle grids as ROWSxCOLS, comma list drawn uniformly per example ("2x2,3x3")')
    max_side: int = knob(1024, "down-scale sources whose longer side exceeds this; 0 = keep full size")
    jpeg_rescale: bool = knob(True, "resample JPEG sources by a per-file factor in [0.80, 0.95) (hides the 8x8 "
                                    "block grid)")
    min_side: int = knob(64, "skip sources whose shorter side is below this")
    per_source: int = knob(1, "at most this many examples of each task per source image (passes over a folder)")
    depth_png_scale: float = knob(1000.0, "16-bit depth PNG units per metre (1000 = millimetres)")
    depth_model: str = knob("", "a transformers depth-estimation model (Hugging Face id in the local cache, or a "
                                "folder; never downloaded) that estimates depth for the images without a depth "
                                "file: --rgb photos then feed the depth task, and position too if the model is "
                                "metric. A depth file wins where there is one (--rgbd)")
    depth_batch: int = knob(8, "images per forward pass of --depth-model (run in the main process, not the workers)")
    check_depth: bool = knob(False, "build nothing: on the --rgbd images with a depth file, report how often the "
                                    "depth-ordering answer from --depth-model equals the one from the depth file "
                                    "(up to --n questions; --out is not used)")
    short_prompts: bool = knob(False, "demo.sh's tiny model: each task's short problem text (tasks.Task.short: "
                                      "flip, depth, rotation), the same question in a fraction of the tokens")
    answer_only_traces: bool = knob(False, "demo.sh's tiny model: cold-start responses '<think></think> "
                                           "\\boxed{answer}' instead of the templated reasoning")
    image_format: str = knob("jpg", "jpg or png (lossless, ~8x slower to encode and ~4x larger at 1024x768)")
    jpeg_quality: int = knob(95, "JPEG quality of the saved task images")
    sync_seconds: float = knob(2.0, "make records and journal durable (fsync) at most this often (0 = after every "
                                    "job)")
    progress: bool = knob(True, "tqdm progress bar")
    release: bool = knob(False, "also write the authors' formats (from the .jsonl files, so a --resume of a finished "
                                "build adds them): OUT/parquet/{train,test}.parquet for EasyR1 (data.train_files="
                                "OUT/parquet@train, data.val_files=OUT/parquet@test; images embedded) and "
                                "OUT/SFT-coldstart.json + OUT/dataset_info.json for LLaMA-Factory (dataset coldstart, "
                                "dataset_dir OUT). Needs pyarrow")
    resume: bool = knob(False, "continue the build in --out (refused if a setting differs or the source folders "
                               "changed since it started)")
    overwrite: bool = knob(False, "delete the build in --out (a make_data.py output folder) and start over")


USAGE_EXAMPLES = f"""examples:
  python make_data.py                                  # 500 examples + 50 cold-start from built-in scenes -> data/ssrl
  python make_data.py --out data/photos --rgb photos/ --n 2000 --tasks shuffle,flip,crop
  python make_data.py --out data/mine --rgbd diode/ megadepth/imgs/ --rgb photos/ --n 81000 --workers 8
  python make_data.py --out data/mine --rgbd diode/ megadepth/imgs/ --rgb photos/ --n 81000 --workers 8 --resume
  python make_data.py --out data/mine ... --overwrite  # delete that build and make it again
  python make_data.py --rgbd diode/ --depth-model depth-anything/Depth-Anything-V2-Small-hf --check-depth
  python make_data.py --out data/photos --rgb photos/ --depth-model depth-anything/Depth-Anything-V2-Small-hf
  python make_data.py --out data/rot --rgb photos/ --tasks shuffle,flip,crop,rotation
  python make_data.py --out data/mine ... --release   # + EasyR1 parquet and LLaMA-Factory JSON (docs/reproduce.md)

An existing build in --out is never mixed with a new one: --resume continues it (same settings, same source
files; the result is byte-identical to an uninterrupted build), --overwrite starts over.
{textwrap.fill(NAMING_RULE, 110)}"""


def build_parser():
    return config_parser(Config, PROG, __doc__.split("\n")[0], USAGE_EXAMPLES)


def parse_config(argv=None):
    """A Config from command-line flags (argparse errors: one line, exit 2)."""
    return Config(**vars(build_parser().parse_args(argv)))


def check_config(cfg):
    """Every flag value that cannot work, in one SetupError (nothing is read or written before this)."""
    problems = [msg for bad, msg in [
        (cfg.n < 1, "--n must be >= 1"), (not 0 <= cfg.test_fraction < 1, "--test-fraction must be in [0, 1)"),
        (cfg.per_source < 1, "--per-source must be >= 1"), (cfg.workers < 0, "--workers must be >= 0"),
        (cfg.image_format not in ("jpg", "png"), "--image-format must be jpg or png"),
        (not 1 <= cfg.jpeg_quality <= 100, "--jpeg-quality must be in 1..100"),
        (cfg.sft_size < -1, "--sft-size must be >= 0 (or -1 = auto)"),
        (cfg.depth_png_scale <= 0, "--depth-png-scale must be > 0"), (cfg.min_side < 1, "--min-side must be >= 1"),
        (cfg.max_side < 0, "--max-side must be >= 0 (0 = keep full size)"),
        (cfg.depth_batch < 1, "--depth-batch must be >= 1"),
        (cfg.depth_model and not (cfg.rgb or cfg.rgbd), "--depth-model estimates depth for photos: give --rgb DIR "
                                                        "(the built-in scenes have exact depth)"),
        (cfg.check_depth and not (cfg.depth_model and cfg.rgbd), "--check-depth compares --depth-model with the "
                                                                 "depth files of --rgbd DIR: give both"),
        (cfg.release and importlib.util.find_spec("pyarrow") is None, "--release writes parquet files, which needs "
                                                                      "pyarrow (pip install pyarrow)")] if bad]
    for parse, spec in ((parse_grids, cfg.shuffle_grids), (parse_size, cfg.scene_size)):
        try:
            parse(spec)
        except SetupError as e:
            problems.append(str(e))
    if problems:
        raise SetupError("; ".join(problems))


# --------------------------------------------------------------------------------------------
# Sources: discovery and robust loading
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Source:
    key: str  # stable identity: "rgb:<relpath>", "rgbd:<relpath>" (rgb2:, rgbd2:, … for further folders, folder_prefix) or "scene:<seed>" (seeds + split use it)
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


def folder_prefix(kind, i):
    """The key prefix of the i-th (0-based) folder given to --rgb / --rgbd: "rgb", "rgb2", "rgb3", … (the first
    folder keeps the plain prefix, so a one-folder build keeps its keys, seeds and split)."""
    return kind if i == 0 else f"{kind}{i + 1}"


def folder_of(cfg, prefix):
    """The --rgb / --rgbd folder of a key prefix made by folder_prefix, None for "scene"."""
    m = re.fullmatch(r"(rgbd?)(\d*)", prefix)
    return {"rgb": cfg.rgb, "rgbd": cfg.rgbd}[m[1]][int(m[2] or 1) - 1] if m else None


def discover_sources(rgb_dirs, rgbd_dirs):
    """Folder sources (RGB-D first; an image present in two folders is used once, as RGB-D) and counts of
    RGB-D images without a depth file (they still feed the RGB tasks) and of byte-identical copies left out
    (same_content: the split is by source, so a copy must not land in a split of its own)."""
    sources, seen, notes = [], set(), Counter()
    for kind, roots in (("rgbd", rgbd_dirs), ("rgb", rgb_dirs)):
        for i, root in enumerate(roots):
            if not os.path.isdir(root):
                raise SetupError(f"--{kind} {root!r} is not a folder")
            for rel in _image_files(root):
                path = os.path.join(root, rel)
                real = os.path.realpath(path)
                if real in seen:
                    continue
                seen.add(real)
                depth, mask = find_depth(path) if kind == "rgbd" else ("", "")
                if kind == "rgbd" and not depth:
                    notes["rgbd-image-without-depth"] += 1
                sources.append(Source(f"{folder_prefix(kind, i)}:{rel}", path, depth, mask,
                                      "rgbd" if depth else "rgb"))
    kept = same_content(sources)
    if len(kept) < len(sources):
        notes["same-content-as-another-image"] += len(sources) - len(kept)
    if any(s.depth.endswith(".h5") for s in kept):
        _require_h5py()
    return kept, notes


def same_content(sources):
    """The sources without byte-identical copies of an earlier one (the first, an RGB-D one before an RGB one,
    is kept). Only files that share their size with another are read and hashed."""
    by_size = Counter(os.path.getsize(s.path) for s in sources)
    kept, hashes = [], set()
    for s in sources:
        if by_size[os.path.getsize(s.path)] > 1:
            with open(s.path, "rb") as f:
                digest = hashlib.file_digest(f, "blake2b").digest()
            if digest in hashes:
                continue
            hashes.add(digest)
        kept.append(s)
    return kept


def source_fingerprint(sources):
    """What a resumed build must find again in its source folders: the number of sources, how many have depth,
    and a hash of every source's relative path and file size (its depth and mask files too). None for the
    built-in scenes. A file edited in place at the same size goes unnoticed; anything added, removed, renamed
    or resized changes the hash."""
    if sources is None:
        return None
    h = hashlib.blake2b(digest_size=12)
    for src in sorted(sources, key=lambda s: s.key):
        files = [src.key, os.path.getsize(src.path)]
        for extra in (src.depth, src.mask):
            files += [os.path.relpath(extra, os.path.dirname(src.path)), os.path.getsize(extra)] if extra else ["", 0]
        h.update((json.dumps(files) + "\n").encode("utf-8"))
    return {"images": len(sources), "with_depth": sum(s.kind == "rgbd" for s in sources), "hash": h.hexdigest()}


def _require_h5py():
    try:
        import h5py  # noqa: F401
    except ImportError:
        raise SetupError("MegaDepth .h5 depth files need h5py: pip install h5py") from None
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


def jpeg_scale(path):
    """A per-file factor in [0.80, 0.95) by which JPEG sources are resampled, so that their 8×8 compression
    grid no longer lines up with pixel positions that a task could reveal (deterministic per file name)."""
    h = hashlib.blake2b(os.path.basename(str(path)).encode("utf-8"), digest_size=4).digest()
    return 0.80 + 0.15 * int.from_bytes(h, "little") / 2 ** 32


def load_image(path, max_side, min_side, jpeg_rescale=True):
    """(rgb uint8 HxWx3, stored (W, H), EXIF orientation); raises common.Skipped for unusable files. Sources
    larger than max_side are scaled down; JPEG sources are also resampled by jpeg_scale()."""
    try:
        with Image.open(path) as im:
            stored, is_jpeg = im.size, im.format == "JPEG"
            orientation = int(im.getexif().get(0x0112, 1) or 1)
            if im.format == "JPEG" and max_side:
                im.draft("RGB", (max_side, max_side))  # decode at 1/2, 1/4, 1/8 scale when that is enough
            im.load()
            im = _to_rgb(ImageOps.exif_transpose(im))
    except UnidentifiedImageError:
        raise Skipped("not-an-image", str(path)) from None
    except Image.DecompressionBombError:
        raise Skipped("too-many-pixels", str(path)) from None
    except (OSError, SyntaxError, ValueError, EOFError, TypeError) as e:
        raise Skipped("truncated" if "truncated" in str(e) else "unreadable", f"{path}: {e}") from None
    scale = min(1.0, max_side / max(im.size)) if max_side else 1.0
    scale *= jpeg_scale(path) if is_jpeg and jpeg_rescale else 1.0
    if scale < 1.0:
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.BICUBIC)
    if min(im.size) < min_side:
        raise Skipped("too-small", f"{path}: {im.width}x{im.height}, --min-side {min_side}")
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
                raise Skipped("depth-png-not-16-bit", f"{path}: mode {im.mode}")
            return np.asarray(im, np.float32) / np.float32(png_scale)
    if a.dtype.kind not in "fiu":
        raise Skipped("depth-bad-dtype", f"{path}: {a.dtype}")
    return a


def load_depth(path, mask_path, stored_size, orientation, out_size, png_scale=1000.0):
    """Depth in metres (H, W) float32 aligned with the loaded RGB; invalid pixels are NaN."""
    try:
        d = _read_depth_array(path, png_scale)
        m = np.load(mask_path, allow_pickle=False) if mask_path else None
    except Skipped:
        raise
    except Exception:  # numpy, Pillow and h5py raise many types for corrupt files
        raise Skipped("depth-unreadable", path) from None
    d = np.asarray(d, np.float32)
    if d.ndim == 3 and d.shape[2] == 1:
        d = d[..., 0]
    if d.ndim != 2:
        raise Skipped("depth-bad-shape", f"{path}: {d.shape}")
    if d.shape != (stored_size[1], stored_size[0]):
        raise Skipped("depth-size-mismatch", f"{path}: {d.shape[::-1]} vs image {stored_size}")
    valid = np.isfinite(d) & (d > 0)
    if m is not None:
        m = np.squeeze(np.asarray(m))
        if m.shape != d.shape:
            raise Skipped("mask-size-mismatch", mask_path)
        valid &= m != 0
    if not valid.any():
        raise Skipped("depth-no-valid-pixels", path)
    im = Image.fromarray(np.where(valid, d, np.nan).astype(np.float32))  # mode "F"
    method = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}.get(orientation)
    if method is not None:
        im = im.transpose(method)
    if im.size != out_size:
        im = im.resize(out_size, Image.Resampling.NEAREST)
    return np.asarray(im, np.float32).copy()


def load_source(src, need_depth, scene_hw=(384, 512), max_side=1024, min_side=64, png_scale=1000.0,
                jpeg_rescale=True):
    """(rgb, depth or None) for one source, the depth resampled onto the RGB grid; raises Skipped."""
    if src.kind == "scene":
        return scenes.render_scene(int(src.key.split(":", 1)[1]), *scene_hw)
    rgb, stored, orientation = load_image(src.path, max_side, min_side, jpeg_rescale)
    if not (need_depth and src.depth):
        return rgb, None
    size = (rgb.shape[1], rgb.shape[0])
    return rgb, load_depth(src.depth, src.mask, stored, orientation, size, png_scale)


# --------------------------------------------------------------------------------------------
# Depth from photos: a transformers depth-estimation model (--depth-model), run in the main process
# --------------------------------------------------------------------------------------------
RELATIVE_EPS = 1e-3       # relative output x -> depth 1 / (max(x, 0) + RELATIVE_EPS · P99(x))


@dataclass
class DepthModel:
    """A loaded --depth-model. kind: "relative" (the output is inverse depth up to an unknown scale and shift,
    larger = nearer) or "metric" (depth in metres, larger = farther)."""
    name: str
    kind: str
    model: object
    processor: object
    device: object

    @property
    def label(self):
        """Where a record's depth came from (its meta "depth_source", stats.json)."""
        return f"model:{self.name}"

    def estimate(self, rgbs):
        """Depth maps (depth_from_output) for RGB arrays of one size, in one forward pass, each on its image's
        pixel grid (the processor's own post-processing: bicubic for DPT / Depth Anything)."""
        import torch
        inputs = self.processor(images=[Image.fromarray(a) for a in rgbs], return_tensors="pt")
        with torch.inference_mode():
            out = self.model(pixel_values=inputs["pixel_values"].to(self.device))
        maps = self.processor.post_process_depth_estimation(out, target_sizes=[a.shape[:2] for a in rgbs])
        return [depth_from_output(m["predicted_depth"].float().cpu().numpy(), self.kind) for m in maps]


def depth_from_output(x, kind):
    """A depth model's output as the depth map tasks.py reads (larger = farther; NaN = invalid). metric:
    metres as they are (<= 0 or not finite = invalid). relative: the output is inverse depth (larger = nearer)
    up to an unknown scale and shift, so d = 1 / (max(x, 0) + ε), ε = RELATIVE_EPS × its 99th percentile,
    reverses it and keeps the order of the depths exactly (not their differences); outputs <= 0 (the sky,
    "infinitely far") all become the farthest depth 1/ε."""
    x = np.asarray(x, np.float32)
    if kind == "metric":
        return np.where(np.isfinite(x) & (x > 0), x, np.nan).astype(np.float32)
    x = np.maximum(np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0), 0)
    eps = RELATIVE_EPS * float(np.percentile(x, 99)) if x.size else 0.0
    return (1.0 / (x + (eps if eps > 0 else 1.0))).astype(np.float32)


def _depth_output_kind(config):
    """What a depth-estimation model's predicted_depth is, for the models whose convention we know: DPT / MiDaS
    v3 (Ranftl et al. 2021) "relative" (inverse depth up to scale and shift); Depth Anything V1/V2 (Yang et al.
    2024) as its config.depth_estimation_type says, "relative" (the same) or "metric" (metres); else None."""
    if config.model_type == "depth_anything":
        return getattr(config, "depth_estimation_type", "relative")
    return "relative" if config.model_type == "dpt" else None


def load_depth_model(name):
    """--depth-model from a folder or the local Hugging Face cache only (local_files_only: never downloaded,
    whatever HF_HUB_OFFLINE says), on the GPU when there is one. Raises SetupError (one line) for a model that
    is not there, not a depth-estimation model, or one whose output convention we do not know."""
    import transformers
    from huggingface_hub import constants
    from transformers.models.auto.modeling_auto import MODEL_FOR_DEPTH_ESTIMATION_MAPPING_NAMES as DEPTH_MODELS
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        config = transformers.AutoConfig.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError):
        raise SetupError(f"--depth-model {name!r} is neither a model folder nor in the local Hugging Face cache "
                         f"({constants.HF_HUB_CACHE}); make_data.py never downloads: fetch it first "
                         f"(hf download {name}) or give its folder") from None
    if config.model_type not in DEPTH_MODELS:
        raise SetupError(f"--depth-model {name}: a {config.model_type} model, not a depth-estimation model "
                         f"(AutoModelForDepthEstimation: {', '.join(DEPTH_MODELS)})")
    kind = _depth_output_kind(config)
    if kind not in ("relative", "metric"):
        raise SetupError(f"--depth-model {name}: a {config.model_type} depth model, whose output make_data.py does "
                         f"not know how to read; use a Depth Anything (relative or metric) or DPT model")
    try:
        model = transformers.AutoModelForDepthEstimation.from_pretrained(name, local_files_only=True)
        processor = transformers.AutoImageProcessor.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError) as e:
        raise SetupError(f"--depth-model {name}: cannot load its weights or image processor ({e})".split("\n")[0]) from None
    import torch
    device = torch.device("cuda") if use_cuda() else torch.device("cpu")
    return DepthModel(name, kind, model.to(device).eval(), processor, device)


def estimate_depths(depth_model, rgbs, batch):
    """Depth maps for a list of RGB arrays, `batch` images of one size per forward pass (images of other sizes
    go to other passes), in the list's order."""
    maps, groups = [None] * len(rgbs), {}
    for i, a in enumerate(rgbs):
        groups.setdefault(a.shape, []).append(i)
    for idx in groups.values():
        for start in range(0, len(idx), batch):
            part = idx[start:start + batch]
            for i, m in zip(part, depth_model.estimate([rgbs[i] for i in part])):
                maps[i] = m
    return maps


class DepthEstimates:
    """Estimated depth for the photos without a depth file (Source kind "estimated"), made in the main process
    as the jobs are planned (workers never load the model): the estimated sources in plan order are cut into
    fixed chunks of --depth-batch, and a chunk is estimated when the first of its jobs is planned. Chunks do
    not depend on --workers or on where a --resume starts, so the same images always share a forward pass."""

    def __init__(self, depth_model, order, ctx, batch):
        self.depth_model, self.batch, self.ctx = depth_model, batch, ctx
        self.sources = [s for s in order if s.kind == "estimated"]
        self.position = {s.key: i for i, s in enumerate(self.sources)}
        self.chunk, self.maps = None, {}

    def get(self, src):
        """The depth map of one estimated source (None if its image cannot be loaded: its job skips it)."""
        chunk = self.position[src.key] // self.batch
        if chunk != self.chunk:
            members = self.sources[chunk * self.batch:(chunk + 1) * self.batch]
            loaded = {}
            for s in members:
                try:
                    loaded[s.key] = load_image(s.path, self.ctx.max_side, self.ctx.min_side, self.ctx.jpeg_rescale)[0]
                except Skipped:
                    continue
            maps = estimate_depths(self.depth_model, list(loaded.values()), self.batch)
            self.chunk, self.maps = chunk, dict(zip(loaded, maps))
        return self.maps.get(src.key)


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
    jpeg_rescale: bool = True
    depth_label: str = ""  # "model:<name>" with --depth-model: the depth_source of records from estimated depth


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


def _split_draw(seed, salt, key):
    """A source's deterministic uniform draw in [0, 1) for one split decision."""
    return np.random.SeedSequence([seed, salt, *_key_words(key)]).generate_state(1)[0] / 2.0 ** 32


def is_test(seed, key, test_fraction):
    """Split by source: a deterministic per-source uniform draw, so no source feeds both splits."""
    return bool(_split_draw(seed, SPLIT_SALT, key) < test_fraction)


def split_of(seed, key, test_fraction, sft_share):
    """"test", "sft" or "train" for a built-in scene: test by is_test, then a second independent per-source
    draw sends a share of the rest to the cold-start set, so SFT and GRPO never see the same source image."""
    if is_test(seed, key, test_fraction):
        return "test"
    return "sft" if _split_draw(seed, SFT_SALT, key) < sft_share else "train"


def split_counts(m, test_fraction, sft_share):
    """(test, sft, train) source counts for a folder of m sources: test = round(test_fraction·m), sft =
    round(sft_share·(m − test)), each at least 1 when asked for (test_fraction > 0, sft_share > 0), train the
    rest; SetupError in one line naming the knobs when m cannot give every asked split a source."""
    asked = {"test": test_fraction > 0, "cold-start": sft_share > 0}
    if m < 1 + sum(asked.values()):
        knobs = " or ".join(k for k, a in (("--test-fraction 0", asked["test"]),
                                           ("--sft-size 0", asked["cold-start"])) if a)
        raise SetupError(f"{m} source image(s) cannot give a train, {' and '.join(k for k, a in asked.items() if a)} "
                         f"split each: add images or pass {knobs}")
    test = max(int(asked["test"]), round(test_fraction * m))
    test = min(test, m - 1 - int(asked["cold-start"]))
    sft = min(max(int(asked["cold-start"]), round(sft_share * (m - test))), m - test - 1)
    return test, sft, m - test - sft


def folder_splits(seed, keys, test_fraction, sft_share):
    """{key: "test" | "sft" | "train"} for folder sources, with split_counts' exact counts (independent draws
    per source, as for the scenes, can leave a small folder without a test or train source): the sources with
    the smallest test draws are test, of the rest those with the smallest cold-start draws are sft."""
    test, sft, _ = split_counts(len(keys), test_fraction, sft_share)
    by_test = sorted(keys, key=lambda k: _split_draw(seed, SPLIT_SALT, k))
    rest = sorted(by_test[test:], key=lambda k: _split_draw(seed, SFT_SALT, k))
    return {**{k: "test" for k in by_test[:test]}, **{k: "sft" for k in rest[:sft]},
            **{k: "train" for k in rest[sft:]}}


def sft_plan(cfg, weights):
    """(share of non-test sources reserved for SFT, per-task SFT quotas) for --sft-size."""
    size = max(50, round(0.044 * cfg.n)) if cfg.sft_size < 0 else cfg.sft_size
    if size == 0:
        return 0.0, {t: 0 for t in weights}
    main = cfg.n * (1 - cfg.test_fraction)
    return size / (size + main), split_quota(size, weights)


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


def make_one(task, rgb, depth, key, k, ctx):
    """Call tasks.make_example with the example's own seeded rng; returns tasks.Example or a reason string."""
    ss = example_seed(ctx.seed, key, task, k)
    options = {}
    if task == "shuffle":
        options["grid"] = ctx.grids[int(ss.generate_state(1)[0]) % len(ctx.grids)]
    try:
        depth = depth if task in tasks.DEPTH_TASKS else None
        ex = tasks.make_example(task, rgb, depth, np.random.default_rng(ss), **options)
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
        atomic_write(Path(ctx.out_dir, rel), data)
    return rels


DEPTH_SOURCE = {"scene": "scene", "rgbd": "sensor"}   # a record's meta "depth_source" by source kind (+ model:<name>)


def run_job(job):
    """Worker entry point. job = (index, source, k, task tuple, Context, estimated depth or None). Returns a
    picklable dict with the source-level skip reason (or None) and, per attempted task, a rejection reason or
    the example (its images already saved by _save_images; depth-task examples say in meta "depth_source" where
    their depth came from: "sensor", "scene" or "model:<name>")."""
    index, src, k, todo, ctx, estimated = job
    result = {"index": index, "key": src.key, "skip": None, "examples": {}}
    need_depth = any(t in tasks.DEPTH_TASKS for t in todo)
    try:
        rgb, depth = load_source(src, need_depth, ctx.scene_hw, ctx.max_side, ctx.min_side, ctx.png_scale,
                                 ctx.jpeg_rescale)
        if src.kind == "estimated":
            depth = estimated
    except Skipped as e:
        result["skip"] = e.reason
        return result
    except Exception as e:  # anything unexpected in a decoder: skip the source, never crash the build
        result["skip"] = f"load-error:{type(e).__name__}"
        return result
    for task in todo:
        ex = make_one(task, rgb, depth, src.key, k, ctx)
        if isinstance(ex, str):
            result["examples"][task] = ex
            continue
        if task in tasks.DEPTH_TASKS:
            ex.meta["depth_source"] = DEPTH_SOURCE.get(src.kind, ctx.depth_label)
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
# Output folder: crash-safe append-only files, resume
# --------------------------------------------------------------------------------------------
def job_of(record_id):
    """Record ids are "<task>-<job index>"; the job index orders everything in the folder."""
    return int(record_id.rsplit("-", 1)[1])


class OutputFolder:
    """Append-only record files plus a journal (progress.jsonl, one line per finished job). Workers write
    images (common.atomic_write) before the main process takes the record that references them; records wait
    in memory and are appended per split at each sync (common.append_jsonl: one fsynced write), then the
    journal lines of the jobs they belong to, so a journal line is written only after the records it lists are
    durable. On resume everything after the first job that is not fully on disk is rolled back, so the folder
    always holds an exact prefix of the uninterrupted run. The folder itself (run.json, the lock) is set up
    by common.start_out_dir before this."""

    def __init__(self, root, sync_seconds=2.0):
        self.root, self.sync_seconds = Path(root), sync_seconds
        self.resume_at, self.journal = self._repair()   # also sets self.records (the kept records)
        self.pending = {split: [] for split in SPLITS}
        self.pending_journal, self.last_sync = [], time.monotonic()

    def _repair(self):
        """Find the first job that is not completely on disk, roll every file back to before it, and delete
        images that no kept record references. Sets self.records; returns (resume index, kept journal)."""
        journal = read_jsonl(self.root / JOURNAL, torn_tail_ok=True)     # a killed run may have cut a line
        recs = {s: read_jsonl(self.root / f"{s}.jsonl", torn_tail_ok=True) for s in SPLITS}
        by_id = {r["id"]: r for s in recs for r in recs[s]}
        resume = journal[-1]["job"] + 1 if journal else 0
        for entry in journal:
            if any(i not in by_id or not self._images_ok(by_id[i]) for i in entry["accepted"]):
                resume = min(resume, entry["job"])
        for rec in by_id.values():
            if not self._images_ok(rec):
                resume = min(resume, job_of(rec["id"]))
        kept_journal = [e for e in journal if e["job"] < resume]
        rewrite_jsonl(self.root / JOURNAL, kept_journal)
        self.records = {s: [r for r in rows if job_of(r["id"]) < resume] for s, rows in recs.items()}
        for split, rows in self.records.items():
            rewrite_jsonl(self.root / f"{split}.jsonl", rows)
        self.prune_images()
        return resume, kept_journal

    def prune_images(self):
        """Delete every file under images/ that no record references (and any temporary file)."""
        referenced = {p for split in self.records for r in self.records[split] for p in r["images"]}
        for dirpath, _, names in os.walk(self.root / "images"):
            for name in names:
                path = Path(dirpath) / name
                if path.relative_to(self.root).as_posix() not in referenced:
                    path.unlink()

    def _images_ok(self, rec):
        return all((self.root / p).is_file() and (self.root / p).stat().st_size > 0 for p in rec["images"])

    def write_record(self, split, record):
        """Take one complete record (its images are already on disk, written by the worker); it is appended to
        <split>.jsonl at the next sync."""
        self.records[split].append(record)
        self.pending[split].append(record)

    def discard(self, example):
        """Delete the images of an example that does not become a record (its task's quota filled up)."""
        for rel in example["images"]:
            (self.root / rel).unlink(missing_ok=True)

    def end_job(self, entry, force_sync=False):
        self.pending_journal.append(entry)
        if force_sync or time.monotonic() - self.last_sync >= self.sync_seconds:
            self.sync()

    def sync(self):
        """Append the waiting records (fsynced), then journal the jobs whose records are now durable. Cut off
        halfway (Ctrl-C), it journals nothing more: a resume rolls those jobs back and makes them again."""
        try:
            for split in SPLITS:
                append_jsonl(self.root / f"{split}.jsonl", self.pending[split])
                self.pending[split] = []
            append_jsonl(self.root / JOURNAL, self.pending_journal)
        finally:
            self.pending_journal, self.last_sync = [], time.monotonic()

    def close(self):
        self.sync()


# --------------------------------------------------------------------------------------------
# Build loop
# --------------------------------------------------------------------------------------------
def source_tasks(kind, depth_kind=None):
    """The tasks a source of this kind can feed: built-in scenes and images with a depth file all of them;
    photos without one the RGB tasks, and with --depth-model (kind "estimated") also the depth tasks its output
    supports: a metric model all, a relative one only those whose answer depends on the order of the depths
    alone (tasks.Task.depth_order_only: the depth task; position needs depth differences)."""
    if kind in ("scene", "rgbd"):
        return tasks.TASKS
    if kind == "estimated":
        return tuple(t for t, spec in tasks.TASK_SPECS.items()
                     if not spec.needs_depth or spec.depth_order_only or depth_kind == "metric")
    return tasks.RGB_TASKS


def parse_tasks(spec, usable, depth_model=None):
    """"shuffle:2,depth" -> {"shuffle": 2.0, "depth": 1.0}; "auto" -> the paper's five (tasks.DEFAULT_TASKS) among
    `usable`, the tasks some source can feed (source_tasks). A task beyond the paper (rotation) is built only
    when named."""
    if spec == "auto":
        spec = ",".join(t for t in tasks.DEFAULT_TASKS if t in usable)
    weights = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, w = item.partition(":")
        if name not in tasks.TASKS:
            raise SetupError(f"--tasks: unknown task {name!r}; choose from {', '.join(tasks.TASKS)}")
        weights[name] = float(w) if w else 1.0
        if not weights[name] > 0:
            raise SetupError(f"--tasks: a task weight must be > 0 in {item!r}")
    if not weights:
        raise SetupError("--tasks selects no task")
    missing = [t for t in weights if t not in usable]
    if missing and depth_model is not None and depth_model.kind == "relative":
        raise SetupError(f"--tasks {','.join(missing)} needs metric depth, and --depth-model {depth_model.name} "
                         "outputs relative depth (inverse depth up to an unknown scale and shift: it keeps the order "
                         "of depths, which the depth task needs, not their differences); use a metric model (e.g. "
                         "depth-anything/Depth-Anything-V2-Metric-Indoor-Small-hf) or --rgbd with depth files")
    if missing:
        raise SetupError("the depth and position tasks need depth maps: give --rgbd DIR with depth files, "
                         "--depth-model for photos, or no source flag at all (built-in RGB-D scenes), or select only "
                         f"RGB tasks ({','.join(tasks.RGB_TASKS)}). {NAMING_RULE}")
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
        raise SetupError(f"--shuffle-grids wants ROWSxCOLS[,ROWSxCOLS...], got {spec!r}") from None
    return grids


MIN_SCENE_SIDE = 16   # px: the smallest --scene-size side accepted


def parse_size(spec):
    try:
        w, h = (int(v) for v in spec.lower().split("x"))
    except ValueError:
        raise SetupError(f"--scene-size wants WxH (e.g. 512x384), got {spec!r}") from None
    if w < MIN_SCENE_SIDE or h < MIN_SCENE_SIDE:
        raise SetupError(f"--scene-size {spec}: each side must be at least {MIN_SCENE_SIDE} px (e.g. 512x384)")
    return h, w


def dataset_identity(cfg, sources):
    """The run's identity saved in run.json: every setting that defines the dataset (source folders as
    absolute paths) and the fingerprint of the sources; a --resume must match it (check_resume)."""
    d = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RUN_ONLY_KEYS}
    d["rgb"] = [os.path.abspath(f) for f in cfg.rgb]
    d["rgbd"] = [os.path.abspath(f) for f in cfg.rgbd]
    d["depth_model"] = os.path.abspath(cfg.depth_model) if os.path.isdir(cfg.depth_model) else cfg.depth_model
    d["sources"] = source_fingerprint(sources)
    return d


def _describe_sources(fp):
    if not fp:
        return "none"
    return f"{fp['images']} images" + (f" ({fp['with_depth']} with depth)" if fp["with_depth"] else "")


def check_resume(out, identity):
    """--resume continues a build only with the settings and the source files it started with: a changed
    setting is named by common.check_identity; changed source folders (the journal replays job numbers,
    which index the sorted sources) are one line with the counts then and now."""
    check_identity(out, {k: v for k, v in identity.items() if k != "sources"})
    saved = (read_run_info(out) or {}).get("identity", {}).get("sources")
    if saved != identity["sources"]:
        raise SetupError(f"--resume: the source folders changed since {out} was started ({_describe_sources(saved)} "
                         f"then, {_describe_sources(identity['sources'])} now; files added, removed or resized): "
                         "resuming would skip some images and use others twice. Start over with --overwrite, or "
                         "build the new images into a new --out")


def source_order(sources, seed):
    """The order in which a build visits folder sources: a seeded hash of their keys (no folder order bias)."""
    return sorted(sources, key=lambda s: hashlib.blake2b(f"{seed}:{s.key}".encode()).digest())


def plan_jobs(cfg, sources, builder, start, ctx, depth_model=None):
    """Lazily yield jobs in index order, skipping jobs whose tasks are all full already (for the split
    their source belongs to). Folder: job i = source order[i % M], pass i // M. Built-in scenes: job i =
    scene i. A photo without a depth file gets its depth from depth_model (DepthEstimates) when its job has
    a depth task to do."""
    estimates = None
    if sources is None:
        share = builder.sft_share * (1 - cfg.test_fraction)
        need = max(max(builder.quotas.values()) / max(1 - share, 1e-3),
                   max(builder.sft_quotas.values(), default=0) / max(share, 1e-3) if share else 0)
        limit = int(10 * need) + 50
        plan = lambda i: (scene_source(cfg.seed, i), 0)  # noqa: E731
    else:
        order = source_order(sources, cfg.seed)
        limit = len(order) * cfg.per_source
        plan = lambda i: (order[i % len(order)], i // len(order))  # noqa: E731
        estimates = depth_model and DepthEstimates(depth_model, order, ctx, cfg.depth_batch)
    for index in range(start, limit):
        if builder.done():
            return
        src, k = plan(index)
        usable = source_tasks(src.kind, depth_model and depth_model.kind)
        todo = tuple(t for t in builder.open_tasks(builder.split(src.key)) if t in usable)
        if not todo:
            continue
        need = src.kind == "estimated" and any(t in tasks.DEPTH_TASKS for t in todo)
        yield index, src, k, todo, ctx, estimates.get(src) if need else None


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
    """Main-process side of a build: decides, strictly in job order, which results become records.
    Quotas: `quotas` for train + test together, `sft_quotas` for the cold-start set (its own sources)."""

    def __init__(self, cfg, out, quotas, sft_share, sft_quotas, splits=None):
        self.cfg, self.out, self.quotas, self.sft_share, self.sft_quotas = cfg, out, quotas, sft_share, sft_quotas
        self.splits = splits
        self.counts = Counter(r["task"] for s in ("train", "test") for r in out.records[s])
        self.sft_counts = Counter(r["task"] for r in out.records["sft"])
        self.rejected = {t: Counter() for t in quotas}
        self.skipped, self.skipped_files = Counter(), {}
        for entry in out.journal:
            if entry["skip"]:
                self._skip(entry["skip"], entry["key"])
            for t, reason in entry["rejected"].items():
                self.rejected.setdefault(t, Counter())[reason] += 1
        self.bar = None

    def _skip(self, reason, key):
        """Count an unusable source by its reason and keep the first few file names per reason."""
        self.skipped[reason] += 1
        names = self.skipped_files.setdefault(reason, [])
        if len(names) < NAMED_PER_REASON:
            prefix, rel = key.split(":", 1)
            root = folder_of(self.cfg, prefix)
            names.append(os.path.join(root, rel) if root else key)   # the path a record's "source" would show

    def split(self, key):
        if self.splits is not None:
            return self.splits[key]
        return split_of(self.cfg.seed, key, self.cfg.test_fraction, self.sft_share)

    def open_tasks(self, split):
        """Tasks whose quota for this split (sft, or train + test) is not full yet, in task order."""
        counts, quotas = (self.sft_counts, self.sft_quotas) if split == "sft" else (self.counts, self.quotas)
        return [t for t in quotas if counts[t] < quotas[t]]

    def done(self):
        return not self.open_tasks("train") and not self.open_tasks("sft")

    def handle(self, job, result):
        """Accept one job's results. A task counts (record or rejection) only while its quota is open,
        so the outcome does not depend on how far ahead the workers ran."""
        index, src, k, todo = job[:4]
        split = self.split(src.key)
        live = [t for t in todo if t in self.open_tasks(split)]
        for task, ex in result["examples"].items():
            if task not in live and isinstance(ex, dict):
                self.out.discard(ex)
        if not live:
            return False
        entry = {"job": index, "key": src.key, "skip": None, "rejected": {}, "accepted": []}
        if result["skip"] and k == 0:
            entry["skip"] = result["skip"]
            self._skip(result["skip"], src.key)
        for task in live:
            ex = result["examples"].get(task)
            if isinstance(ex, str):
                entry["rejected"][task] = ex
                self.rejected[task][ex] += 1
            elif ex is not None:
                self._accept(split, task, index, src, ex)
                entry["accepted"].append(f"{task}-{index:07d}")
        self.out.end_job(entry)
        return self.done()

    def _accept(self, split, task, index, src, ex):
        short = tasks.TASK_SPECS[task].short if self.cfg.short_prompts else ""
        record = {"id": f"{task}-{index:07d}", "task": task, "problem": short or ex["problem"], "answer": ex["answer"],
                  "images": ex["images"], "source": src.label, "meta": ex["meta"]}
        if split == "sft":
            record["response"] = f"<think></think> \\boxed{{{ex['answer']}}}" if self.cfg.answer_only_traces \
                else _trace(record)
            self.sft_counts[task] += 1
        else:
            self.counts[task] += 1
        self.out.write_record(split, record)
        if self.bar is not None:
            self.bar.update(1)


@dataclass
class Plan:
    """What prepare() decided before anything is written."""
    mode: str            # how --out is used: fresh | resume | overwrite (common.out_dir_mode)
    sources: list        # folder sources, or None for the built-in scenes
    notes: Counter       # counts about the sources that are not errors (RGB-D images without depth)
    quotas: dict         # train + test examples per task
    sft_share: float     # share of the non-test sources reserved for the cold-start set
    sft_quotas: dict     # cold-start examples per task
    identity: dict       # run.json "identity" (dataset_identity)
    depth_model: object = None   # DepthModel (--depth-model) or None
    splits: dict = None  # folder sources: {key: split} (folder_splits); None for the built-in scenes


def prepare(cfg):
    """Every check that can fail on the input, read-only: the flag values, how --out may be used, the source
    folders, the tasks they allow, the depth model (loaded, from local files only), and (--resume) that the
    settings and source files are those of the build being continued. Raises SetupError; nothing is written.
    With --depth-model, the images without a depth file become "estimated" sources (a depth file wins)."""
    check_config(cfg)
    mode = out_dir_mode(cfg.out, PROG, cfg.resume, cfg.overwrite)
    sources, notes = (None, Counter()) if not (cfg.rgb or cfg.rgbd) else discover_sources(cfg.rgb, cfg.rgbd)
    if sources is not None and not sources:
        raise SetupError(f"no image files ({', '.join(IMAGE_EXTS)}) under {' and '.join([*cfg.rgb, *cfg.rgbd])}")
    if cfg.rgbd and not cfg.depth_model and not any(s.kind == "rgbd" for s in sources) and cfg.tasks == "auto":
        raise SetupError(f"--rgbd {' '.join(cfg.rgbd)}: none of its images has a depth file, so the depth and "
                         f"position tasks cannot be built. {NAMING_RULE} To build only the RGB tasks, pass --tasks "
                         "shuffle,flip,crop (or use --rgb).")
    depth_model = load_depth_model(cfg.depth_model) if cfg.depth_model else None
    if depth_model is not None:
        sources = [dataclasses.replace(s, kind="estimated") if s.kind == "rgb" else s for s in sources]
    kinds = {"scene"} if sources is None else {s.kind for s in sources}
    usable = [t for t in tasks.TASKS if any(t in source_tasks(k, depth_model and depth_model.kind) for k in kinds)]
    weights = parse_tasks(cfg.tasks, usable, depth_model)
    no_short = [t for t in weights if cfg.short_prompts and not tasks.TASK_SPECS[t].short]
    if no_short:
        raise SetupError(f"--short-prompts: {', '.join(no_short)} has no short problem text (tasks with one: "
                         f"{', '.join(t for t, s in tasks.TASK_SPECS.items() if s.short)})")
    sft_share, sft_quotas = sft_plan(cfg, weights)
    identity = dataset_identity(cfg, sources)
    if mode == "resume":
        check_resume(cfg.out, identity)
    splits = None if sources is None else folder_splits(cfg.seed, [s.key for s in sources], cfg.test_fraction,
                                                         sft_share)
    return Plan(mode, sources, notes, split_quota(cfg.n, weights), sft_share, sft_quotas, identity, depth_model,
                splits)


def build(cfg):
    """Build (or, with --resume, continue) the dataset in cfg.out; returns the stats dict written to
    stats.json. Ctrl-C makes what is finished durable and re-raises (common.cli_main: exit 130)."""
    from tqdm import tqdm
    t0 = time.time()
    plan = prepare(cfg)
    open_run(cfg.out, PROG, plan.mode, plan.identity)     # the lock, --overwrite's delete, run.json
    ctx = Context(cfg.seed, parse_size(cfg.scene_size), parse_grids(cfg.shuffle_grids), cfg.max_side,
                  cfg.min_side, cfg.depth_png_scale, cfg.image_format, cfg.jpeg_quality, str(Path(cfg.out).resolve()),
                  cfg.jpeg_rescale, plan.depth_model.label if plan.depth_model else "")
    out = OutputFolder(cfg.out, cfg.sync_seconds)
    builder = Builder(cfg, out, plan.quotas, plan.sft_share, plan.sft_quotas, plan.splits)
    workers = cfg.workers or os.cpu_count() or 1
    done = sum(builder.counts.values()) + sum(builder.sft_counts.values())
    announce(cfg, plan, out, done)
    tqdm.monitor_interval = 0  # no monitor thread: the worker pool is forked after the bar exists
    builder.bar = tqdm(total=cfg.n + sum(plan.sft_quotas.values()), initial=done, unit="ex",
                       disable=not cfg.progress, desc="examples")
    try:
        run_all(plan_jobs(cfg, plan.sources, builder, out.resume_at, ctx, plan.depth_model), workers, builder.handle)
    finally:
        builder.bar.close()
        out.close()
    out.prune_images()  # results of jobs still in flight when the quotas filled up
    stats = write_stats(cfg, out, builder, plan)
    atomic_write(out.root / "stats.json", json.dumps(stats, indent=1) + "\n")
    stats["seconds"], stats["workers"] = time.time() - t0, workers
    return stats


def announce(cfg, plan, out, done):
    """The first lines of a build: what it makes from what, and where a resumed build continues."""
    what = "built-in RGB-D scenes" if plan.sources is None else _describe_sources(plan.identity["sources"])
    print(f"{PROG}: {cfg.n} examples ({', '.join(f'{t} {q}' for t, q in plan.quotas.items())}) + "
          f"{sum(plan.sft_quotas.values())} cold-start examples from {what} -> {cfg.out}")
    if plan.depth_model is not None:
        m = plan.depth_model
        n = sum(s.kind == "estimated" for s in plan.sources)
        feeds = [t for t in source_tasks("estimated", m.kind) if t in tasks.DEPTH_TASKS]
        print(f"{PROG}: depth of {n} images without a depth file from {m.label} ({m.kind} depth"
              f"{', read as 1 / (x + eps)' if m.kind == 'relative' else ''}; feeds {', '.join(feeds)}) on {m.device}; "
              f"depth files win for {sum(s.kind == 'rgbd' for s in plan.sources)} images")
    if plan.mode == "resume":
        print(f"{PROG}: resuming {cfg.out} at job {out.resume_at} ({done} examples already there)")


def write_stats(cfg, out, builder, plan):
    """stats.json: counts per task and split, shortfalls, rejections, unusable sources, where the depth of the
    depth-task records came from ("depth": the model and its output kind, records per depth_source), the
    shortcut report."""
    recs, sources, notes = out.records, plan.sources, plan.notes
    counts = {t: {s: sum(r["task"] == t for r in recs[s]) for s in SPLITS} for t in builder.quotas}
    made = {t: c["train"] + c["test"] for t, c in counts.items()}
    everything = [r for s in SPLITS for r in recs[s]]
    return {
        "counts": counts, "quota": builder.quotas, "sft_quota": builder.sft_quotas,
        "shortfall": {t: q - made[t] for t, q in builder.quotas.items() if made[t] < q},
        "sft_shortfall": {t: q - counts[t]["sft"] for t, q in builder.sft_quotas.items() if counts[t]["sft"] < q},
        "sources_per_split": {s: len({r["source"] for r in recs[s]}) for s in SPLITS},
        "rejected": {t: dict(sorted(c.items())) for t, c in builder.rejected.items() if c},
        "skipped_sources": dict(sorted(builder.skipped.items())),
        "skipped_files": {k: builder.skipped_files[k] for k in sorted(builder.skipped_files)},   # the first few
        "sources": {"kind": "scenes" if sources is None else "folders",
                    "found": None if sources is None else len(sources),
                    "rgbd": None if sources is None else sum(s.kind == "rgbd" for s in sources),
                    "used": len({r["source"] for r in everything}), **dict(notes)},
        "jobs": len(read_jsonl(out.root / JOURNAL)),
        "depth": {"model": cfg.depth_model or None, "output": plan.depth_model.kind if plan.depth_model else None,
                  "records": dict(sorted(Counter(r["meta"]["depth_source"] for r in everything
                                                 if "depth_source" in r["meta"]).items()))},
        "shortcuts": shortcut_report(everything, out.root),
    }


def _trace(rec):
    """tasks.reasoning_trace for a record: the cold-start response is built from the record's metadata alone."""
    return tasks.reasoning_trace(tasks.Example(task=rec["task"], images=[], problem=rec["problem"],
                                               answer=rec["answer"], meta=rec["meta"]))


# --------------------------------------------------------------------------------------------
# Shortcut report: how far known 2-D heuristics get on this dataset (a dataset card)
# --------------------------------------------------------------------------------------------
def _verdict(task, heuristic, n, accuracy, chance, threshold):
    """One line of the shortcut report. The limit is at most 100 %. A row is judged ("ok") only where n could
    show a shortcut at all: a heuristic right on every question must lie more than two standard errors (at
    the limit) above the limit, i.e. n >= 4·limit / (1 - limit); otherwise ok is None and "judged" False
    (n too small to judge)."""
    limit = None if threshold is None else min(float(threshold), 1.0)
    judged = accuracy is not None and limit is not None and limit < 1 and n >= 4 * limit / (1 - limit)
    return {"task": task, "heuristic": heuristic, "n": int(n), "accuracy": accuracy, "chance": chance,
            "threshold": limit, "ok": bool(accuracy <= limit) if judged else None, "judged": judged}


def _row(task, heuristic, hits, chance, threshold):
    """_verdict for the accuracy of a heuristic over len(hits) questions."""
    hits = np.asarray(hits, np.float64)
    return _verdict(task, heuristic, len(hits), float(hits.mean()) if len(hits) else None, chance, threshold)


def depth_shortcuts(records):
    """"Lower in the picture = nearer" and "farther from the centre = nearer", full order and pairwise."""
    xy = np.array([[r["center"] for r in rec["meta"]["regions"]] for rec in records]).reshape(-1, 3, 2)
    if not len(records):
        return []
    sizes = np.array([rec["meta"].get("size", [0, 0]) for rec in records], np.float64)
    lower, outer = zip(*(tasks.pair_agreement(p, *hw) for p, hw in zip(xy, sizes)))
    lower, outer = np.array(lower), np.array(outer)
    return [_row("depth", '"lower in the picture = nearer", full order', lower == 3, 1 / 6, 0.30),
            _row("depth", '"lower in the picture = nearer", pairwise', lower / 3, 1 / 2, 0.60),
            _row("depth", '"farther from the centre = nearer", full order', outer == 3, 1 / 6, 0.30),
            _row("depth", '"farther from the centre = nearer", pairwise', outer / 3, 1 / 2, 0.60)]


def position_shortcuts(records):
    """The 2-D rule (image x + "higher = farther", turned by the facing), image x alone on simple-option
    questions, and the text-only prior (the most common relation given the facing and the option style)."""
    if not records:
        return []
    two_d, x_only, keys = [], [], []
    for rec in records:
        m = rec["meta"]
        style = m.get("style", "compound" if "-" in m["relation"] else "simple")
        code = tasks.RELATIONS.index(m["relation"])
        vy = m.get("vy", (m["camera"]["center"][1] - m["target"]["center"][1]) / max(m.get("size", [1])[0], 1))
        two_d.append(tasks.position_2d_guess(np.array([m["dx"]]), np.array([vy]), m["facing"], style)[0] == code)
        if style == "simple":
            x_only.append(tasks.position_x_guess(np.array([m["dx"]]), m["facing"])[0] == code)
        keys.append(((m["facing"], style), m["relation"]))
    prior = _held_out_majority(keys)
    return [_row("position", "2-D rule: image x + \"higher = farther\", turned by the facing", two_d, 1 / 4, 0.45),
            _row("position", "simple options answered from image x alone", x_only, 1 / 4, 0.50),
            _verdict("position", "text only: most common relation given facing and option style (held out)",
                     len(records), prior, 1 / 4, 0.30)]


def _held_out_majority(keys):
    """Accuracy of "answer the most common label of my group" learned on one half of (group, label) pairs
    and scored on the other half (2-fold, both ways): a text-only prior measured out of sample."""
    hits = 0
    for fold in (0, 1):
        seen = {}
        for group, label in keys[fold::2]:
            seen.setdefault(group, Counter())[label] += 1
        hits += sum(group in seen and seen[group].most_common(1)[0][0] == label for group, label in keys[1 - fold::2])
    return hits / len(keys)


TWIN_GREY = 0.75  # mean |Δ| of sorted grey values below which two candidates are pixel rearrangements of each other


def _candidate_features(ims):
    """Per-candidate image statistics (the masked picture is never used), centred within the question:
    brightness, contrast, gradient energy, sharpness, colourfulness, 8-px JPEG blockiness, pixel-twin
    score and thumbnail similarity to the other candidates; plus their squares."""
    feats, sorted_gray, thumbs = [], [], []
    for im in ims:
        a = np.asarray(im, np.float32)
        g = a.mean(-1)
        gx, gy = np.abs(np.diff(g, axis=1)), np.abs(np.diff(g, axis=0))
        grad = gx.mean() + gy.mean()
        lap = np.abs(g[1:-1, 1:-1] * 4 - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]).mean()
        cols = gx.mean(0)
        block = cols[7::8].mean() / (cols.mean() + 1e-6) if len(cols) > 8 else 1.0
        rg, yb = a[..., 0] - a[..., 1], (a[..., 0] + a[..., 1]) / 2 - a[..., 2]
        feats.append([g.mean(), g.std(), grad, lap / (grad + 1e-6), rg.std() + yb.std(), block])
        sorted_gray.append(np.sort(g.ravel()))
        thumbs.append(np.asarray(Image.fromarray(a.astype(np.uint8)).resize((12, 12), Image.Resampling.BOX),
                                 np.float32).ravel())
    for i in range(len(ims)):
        others = [k for k in range(len(ims)) if k != i]
        twin = min(np.abs(sorted_gray[i] - sorted_gray[k]).mean() if sorted_gray[i].shape == sorted_gray[k].shape
                   else np.inf for k in others)
        sim = np.mean([np.abs(thumbs[i] - thumbs[k]).mean() for k in others])
        feats[i] += [-twin, -sim]
    f = np.nan_to_num(np.array(feats, np.float64), posinf=1e3, neginf=-1e3)
    raw_twin = f[:, 6].copy()
    f -= f.mean(0)
    return np.concatenate([f, f ** 2], 1), raw_twin


def _fit_choice_model(x, y, steps=300, l2=1e-2, lr=0.5):
    """Conditional logit over the candidates of each question: p(k) = softmax_k(x_k · w); full-batch
    gradient descent on the mean cross-entropy + l2·|w|². x: (Q, K, F) standardised, y: (Q,)."""
    w = np.zeros(x.shape[2])
    for _ in range(steps):
        s = x @ w
        p = np.exp(s - s.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        p[np.arange(len(y)), y] -= 1
        w -= lr * (np.einsum("qk,qkf->f", p, x) / len(y) + 2 * l2 * w)
    return w


def crop_shortcuts(records, load, limit=2000):
    """A 5-fold cross-validated choice model on candidate statistics only, the share of questions whose
    true crop has a pixel twin among the candidates, and "the most JPEG-blocky candidate" (on the first
    `limit` questions: enough for a ±2 % estimate, and fast on big builds)."""
    records = records[:limit]
    if len(records) < 10:
        return []
    xs, ys, twins, block = [], [], [], []
    for rec in records:
        f, twin = _candidate_features([load(p) for p in rec["images"][1:]])
        xs.append(f)
        ys.append(tasks.LETTERS.index(rec["answer"]))
        twins.append(twin[ys[-1]] > -TWIN_GREY)   # its sorted pixel values match another candidate's
        block.append(int(np.argmax(f[:, 5])) == ys[-1])
    x, y = np.array(xs), np.array(ys)
    x = x / (x.reshape(-1, x.shape[2]).std(0) + 1e-9)
    folds, hits = np.arange(len(y)) % 5, np.zeros(len(y), bool)
    for k in range(5):
        w = _fit_choice_model(x[folds != k], y[folds != k])
        hits[folds == k] = (x[folds == k] @ w).argmax(1) == y[folds == k]
    return [_row("crop", "candidate statistics only, 5-fold cross-validated choice model", hits, 1 / 4, 0.35),
            _row("crop", "true crop has a pixel-for-pixel twin among the candidates", twins, 0.0, 0.05),
            _row("crop", "most JPEG-blocky candidate (8-px grid)", block, 1 / 4, 0.35)]


def rotation_shortcuts(records, load, limit=2000):
    """2-D cues for the rotation task that never look at what the picture shows: "turn the brightest edge
    band to the top" (a sky or a ceiling light above: tasks.side_means on the shown picture) and "a portrait
    picture was turned 90°" (aspect ratio; the squares leave it at chance), on the first `limit` questions."""
    records = records[:limit]
    if not records:
        return []
    bright, aspect = [], []
    for rec in records:
        gray = np.asarray(load(rec["images"][0]), np.float32).mean(-1)
        truth, side = int(rec["answer"]), min(gray.shape)
        brightest = int(tasks.side_means(gray, np.array([[0, 0, side]]))[0].argmax())
        bright.append(tasks.ROTATIONS[brightest] == truth)
        aspect.append((90 if gray.shape[0] > gray.shape[1] else 0) == truth)
    return [_row("rotation", '"turn the brightest edge to the top" (sky / light above)', bright, 1 / 4, 0.35),
            _row("rotation", "aspect ratio: a portrait picture was turned 90 degrees", aspect, 1 / 4, 0.35)]


def answer_priors(records):
    """Per task: the share of the most common answer next to 1/(number of possible answers); threshold =
    chance + 4 standard errors of a uniform draw, at most 100 % (a skewed answer distribution is a text-only
    shortcut; where chance + 4 SE reaches 100 %, n is too small to judge)."""
    rows = []
    for task in tasks.TASKS:
        answers = Counter(r["answer"] for r in records if r["task"] == task)
        n = sum(answers.values())
        if not n:
            continue
        if task in ("shuffle",):
            sizes = Counter(len(a.split(",")) for a in answers.elements())
            space = math.factorial(max(sizes)) - 1
        else:   # a task missing here: the answers seen (a lower bound of its answer space)
            space = {"flip": 8, "crop": 4, "depth": 6, "position": 4, "rotation": len(tasks.ROTATIONS)}.get(
                task, len(answers))
        p = 1 / space
        rows.append(_verdict(task, "most common answer (text-only prior)", n, answers.most_common(1)[0][1] / n, p,
                             round(p + 4 * math.sqrt(p * (1 - p) / n), 3)))
    return rows


def shortcut_report(records, root):
    """Every known shortcut heuristic's accuracy on these records next to chance and its threshold."""
    by = {t: [r for r in records if r["task"] == t] for t in tasks.TASKS}
    load = lambda rel: Image.open(Path(root) / rel).convert("RGB")  # noqa: E731
    return (answer_priors(records) + depth_shortcuts(by["depth"]) + position_shortcuts(by["position"])
            + crop_shortcuts(by["crop"], load) + rotation_shortcuts(by["rotation"], load))


def print_shortcuts(rows):
    """The shortcut report as a table. ±: two standard errors of the accuracy (small builds are noisy); a row
    is ABOVE LIMIT when its accuracy exceeds the limit by more than two standard errors at the limit."""
    print(f"\n{'task':<10}{'shortcut heuristic (never looks at depth / the hole)':<74}{'n':>6}{'acc':>7}{'±':>6}"
          f"{'chance':>8}{'limit':>7}")
    for r in rows:
        acc, limit = r["accuracy"], r["threshold"]
        se = "" if acc is None else f"{2 * math.sqrt(max(acc * (1 - acc), 1e-4) / max(r['n'], 1)):.1%}"
        flag = ""
        if acc is not None and not r.get("judged", True):
            flag = "  n too small to judge"
        elif r["ok"] is False:
            margin = 2 * math.sqrt(limit * (1 - limit) / r["n"])
            flag = "  ABOVE LIMIT" if acc > limit + margin else "  above limit (within 2 SE: more data?)"
        shown = "-" if limit is None else f"{limit:.0%}"
        shown_acc = "-" if acc is None else f"{acc:.1%}"
        print(f"{r['task']:<10}{r['heuristic'][:72]:<74}{r['n']:>6}{shown_acc:>7}{se:>6}{r['chance']:>8.1%}"
              f"{shown:>7}{flag}")


# --------------------------------------------------------------------------------------------
# Preview contact sheet, summary
# --------------------------------------------------------------------------------------------
def make_preview(records, root, path, row_height=260, text_width=560, scene_size=(384, 512)):
    """One row per task: its images (scaled to row_height) next to the wrapped question and the answer;
    for built-in scenes a last row of the first 8 source scenes (RGB above depth) shows their variety."""
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
    seeds = list(dict.fromkeys(int(r["source"].split(":", 1)[1]) for r in records if r["source"].startswith("scene:")))
    if seeds:
        h, w = scene_size
        rows.append(scenes.contact_sheet(seeds[:8], 144, max(16, round(144 * w / h)), columns=8))
    sheet = Image.new("RGB", (max(r.width for r in rows), sum(r.height + 6 for r in rows)), (200, 200, 200))
    y = 0
    for r in rows:
        sheet.paste(r, (0, y))
        y += r.height + 6
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def print_summary(cfg, stats, preview):
    c, q, sq = stats["counts"], stats["quota"], stats["sft_quota"]
    n = {s: sum(v[s] for v in c.values()) for s in SPLITS}
    per = stats["sources_per_split"]
    print(f"\n{PROG}: {cfg.out}: {n['train']} train + {n['test']} test + {n['sft']} cold-start examples from "
          f"{per['train']} + {per['test']} + {per['sft']} different sources ({stats['jobs']} jobs) in "
          f"{stats['seconds']:.1f} s with {stats['workers']} workers")
    print(f"{'task':<10}{'quota':>7}{'train':>7}{'test':>6}{'sft':>6}  rejected (top reasons)")
    for t in q:
        rej = sorted(stats["rejected"].get(t, {}).items(), key=lambda kv: -kv[1])[:3]
        print(f"{t:<10}{q[t]:>7}{c[t]['train']:>7}{c[t]['test']:>6}{c[t]['sft']:>6}  "
              + (", ".join(f"{k} {v}" for k, v in rej) or "-"))
    print_skipped(stats)
    errors = {k: v for t in stats["rejected"].values() for k, v in t.items() if k.startswith("generator-error")}
    if errors:
        print(f"WARNING: tasks.make_example raised or returned a malformed example: {errors} (a bug in tasks.py)")
    for name, short, quota in (("train + test", stats["shortfall"], q), ("sft.jsonl", stats["sft_shortfall"], sq)):
        if short:
            print(f"SHORT of the request ({name}; sources exhausted or too many rejections): "
                  + ", ".join(f"{t} {quota[t] - k} of {quota[t]} ({k} short)" for t, k in short.items()))
    if stats["sources"]["kind"] == "folders" and (stats["shortfall"] or stats["sft_shortfall"]):
        print(f"  each image gives at most --per-source {cfg.per_source} example(s) per task: raise it or add images")
    if stats["sources"]["kind"] == "folders" and set(stats["shortfall"]) & set(tasks.DEPTH_TASKS):
        print(f"  only {stats['sources']['rgbd']} of {stats['sources']['found']} images have a depth file. {NAMING_RULE}")
    print_shortcuts(stats["shortcuts"])
    print("files: train.jsonl test.jsonl sft.jsonl stats.json images/" + (f"  preview: {preview}" if preview else ""))


def print_skipped(stats, shown=3):
    """Unusable source files by reason, each with up to `shown` of its files (stats.json "skipped_files"
    keeps the first NAMED_PER_REASON)."""
    skipped = stats["skipped_sources"]
    if not skipped:
        return
    print(f"skipped {sum(skipped.values())} unusable source file(s):")
    for reason, count in skipped.items():
        names = stats["skipped_files"].get(reason, [])[:shown]
        more = ", …" if count > len(names) else ""
        print(f"  {reason} {count}: {', '.join(names)}{more}")


def check_splits(cfg, stats):
    """A split that was asked for (train always, test with --test-fraction > 0, sft with a cold-start quota)
    and came out empty is an error, not a result: one SetupError saying which and what to do. A split that
    is only short of its quota stays a warning (print_summary)."""
    made = {s: sum(v[s] for v in stats["counts"].values()) for s in SPLITS}
    if not sum(made.values()):
        raise SetupError(f"nothing usable: no example could be made from the given sources (skipped: "
                         f"{stats['skipped_sources'] or 'none'}; rejected: {stats['rejected'] or 'none'})")
    found = stats["sources"]["found"]
    have = "the built-in scenes" if found is None else f"{found} source images"
    advice = {
        "train": "every usable source went to test / cold start: lower --test-fraction or --sft-size, or add source "
                 "images",
        "test": f"no source was drawn for the test split (--test-fraction {cfg.test_fraction}): add source images, "
                "raise --test-fraction, or pass --test-fraction 0 for no test split",
        "sft": f"no source was drawn for the cold-start set (--sft-size {cfg.sft_size}): add source images, or pass "
               "--sft-size 0 for no cold-start set"}
    asked = ["train"] + ["test"] * (cfg.test_fraction > 0) + ["sft"] * (sum(stats["sft_quota"].values()) > 0)
    empty = [s for s in asked if not made[s]]
    if empty:
        raise SetupError(f"{' and '.join(f'{s}.jsonl' for s in empty)} came out empty from {have}: "
                         + "; ".join(advice[s] for s in empty) + f". Then build again with --overwrite (the files "
                         f"in {cfg.out} are kept until then)")


# --------------------------------------------------------------------------------------------
# --check-depth: how far to trust a depth model (its depth-ordering answers against depth files)
# --------------------------------------------------------------------------------------------
def region_order(depth, regions):
    """Marker labels from nearest to farthest by the median of `depth` over each region's box."""
    med = [float(np.nanmedian(depth[r["box"][1]:r["box"][3], r["box"][0]:r["box"][2]])) for r in regions]
    return tuple(r["label"] for _, r in sorted(zip(med, regions), key=lambda p: p[0]))


def _file_depth_questions(cfg, sources, skipped):
    """(rgb, depth Example) for each source: the depth-ordering question the builder would make from its
    depth file (the same seed as its first depth example); unusable images and images with no question are
    counted in `skipped` by reason."""
    found = []
    for src in sources:
        try:
            rgb, depth = load_source(src, True, max_side=cfg.max_side, min_side=cfg.min_side,
                                     png_scale=cfg.depth_png_scale, jpeg_rescale=cfg.jpeg_rescale)
        except Skipped as e:
            skipped[e.reason] += 1
            continue
        ex = tasks.make_example("depth", rgb, depth, np.random.default_rng(example_seed(cfg.seed, src.key, "depth", 0)))
        if isinstance(ex, tasks.Rejected):
            skipped[ex.reason] += 1
        else:
            found.append((rgb, ex))
    return found


def check_depth(cfg):
    """--check-depth: up to --n depth-ordering questions built from the depth files of --rgbd (images in the
    builder's order), answered again from --depth-model's estimate of the same pixels (the markers' regions,
    nearest to farthest by median estimated depth). Reports how often the answer is the same and how many of
    the 3 marker pairs keep their order: the number to know before letting the model feed the depth task.
    Prints and returns the report; writes nothing (--out is not used)."""
    check_config(cfg)
    sources = source_order([s for s in discover_sources((), cfg.rgbd)[0] if s.kind == "rgbd"], cfg.seed)
    if not sources:
        raise SetupError(f"--check-depth: no image under --rgbd {' '.join(cfg.rgbd)} has a depth file. {NAMING_RULE}")
    depth_model = load_depth_model(cfg.depth_model)
    same, pairs, skipped, tried = [], [], Counter(), 0
    for start in range(0, len(sources), cfg.depth_batch):
        chunk = sources[start:start + cfg.depth_batch]
        tried += len(chunk)
        found = _file_depth_questions(cfg, chunk, skipped)
        for (_, ex), est in zip(found, estimate_depths(depth_model, [rgb for rgb, _ in found], cfg.depth_batch)):
            truth = tuple(r["label"] for r in ex.meta["regions"])          # listed near to far
            got = region_order(est, ex.meta["regions"])
            same.append(got == truth)
            rank = {label: i for i, label in enumerate(got)}
            pairs.append(np.mean([rank[a] < rank[b] for a, b in itertools.combinations(truth, 2)]))
        if len(same) >= cfg.n:
            break
    if not same:
        raise SetupError(f"--check-depth: no depth-ordering question could be built from the depth files of "
                         f"{' '.join(cfg.rgbd)} ({dict(skipped)})")
    same, pairs = same[:cfg.n], pairs[:cfg.n]
    report = {"model": depth_model.label, "output": depth_model.kind, "rgbd": list(cfg.rgbd), "images": tried,
              "questions": len(same), "same_answer": float(np.mean(same)), "pairs_same_order": float(np.mean(pairs)),
              "se": [2 * float(np.std(v)) / math.sqrt(len(v)) for v in (same, pairs)],   # two standard errors
              "no_question": dict(sorted(skipped.items()))}
    print_check_depth(report)
    return report


def print_check_depth(r):
    """The --check-depth report: agreement with two standard errors, next to chance and to a map read the
    wrong way round (which reverses every answer)."""
    n, (se_same, se_pairs) = r["questions"], r["se"]
    how = "relative depth, read as 1 / (x + eps)" if r["output"] == "relative" else "metric depth"
    print(f"{PROG} --check-depth: {r['model']} ({how}) against the depth files of {r['rgbd']}")
    print(f"  {n} depth-ordering questions from {r['images']} images"
          + (f" (no question: {', '.join(f'{k} {v}' for k, v in r['no_question'].items())})" if r["no_question"] else ""))
    print(f"  same answer as the depth file   {r['same_answer']:6.1%} ± {se_same:.1%}   (chance 16.7 %; a map read "
          f"the wrong way round: 0 %)")
    print(f"  marker pairs in the same order  {r['pairs_same_order']:6.1%} ± {se_pairs:.1%}   (chance 50 %)")


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------
def run(cfg):
    """Build, write the preview, print the summary; an empty split is an error after the summary.
    --check-depth: only the depth model's report (check_depth), nothing built."""
    if cfg.check_depth:
        return check_depth(cfg)
    stats = build(cfg)
    if cfg.release:
        write_release(cfg.out)
    preview = None
    if cfg.preview.lower() != "none":
        path = Path(cfg.out) / "preview.png" if cfg.preview == "auto" else Path(cfg.preview)
        root = Path(cfg.out)
        records = [r for split in ("train", "test") for r in read_jsonl(root / f"{split}.jsonl")]
        preview = make_preview(records, root, path, scene_size=parse_size(cfg.scene_size))
    print_summary(cfg, stats, preview)
    check_splits(cfg, stats)
    return stats


def write_release(out):
    """--release: the built splits in the authors' formats (records.write_parquet, records.write_llamafactory),
    read from the .jsonl files; images stay where they are (the cold-start JSON names them relative to OUT)."""
    root = Path(out)
    for split in ("train", "test"):
        n = records.write_parquet(root / "parquet" / f"{split}.parquet", read_jsonl(root / f"{split}.jsonl"), root)
        print(f"{PROG}: {n} {split} prompts -> {root / 'parquet' / f'{split}.parquet'} (EasyR1 @{split})")
    path = records.write_llamafactory(root, read_jsonl(root / "sft.jsonl"))
    print(f"{PROG}: cold-start set -> {path} + dataset_info.json (LLaMA-Factory dataset coldstart)")


def main(argv=None):
    """The command line, with every script's exit codes (common.cli_main): 0 built; 2 bad input (one line
    "make_data.py: error: …"; nothing written when it is about the flags, the sources or --out) or a split
    that was asked for came out empty; 130 interrupted (run the same command with --resume to continue)."""
    cli_main(PROG, run, parse_config(argv))


if __name__ == "__main__":
    main()
