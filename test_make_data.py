"""Tests of the dataset builder (make_data.py) and the procedural renderer (scenes.py).

The builder is run end to end on built-in rooms and on a folder of corrupt and odd files, across worker counts,
and through interrupted and resumed runs; its command line keeps every script's output-folder rule (--resume,
--overwrite, run.json) and exit codes (common.cli_main).
Run: python -m pytest -q test_make_data.py
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import make_data
import records
from common import SetupError, Skipped
import scenes
import tasks
from test_tasks import ROOM_SEED, depth_friendly_seeds


# =============================================================================================
# make_data.py: the renderer and the dataset builder
# =============================================================================================
HERE = Path(__file__).resolve().parent
SMALL = ["--scene-size", "256x192", "--no-progress", "--preview", "none"]


def build(out, *args):
    """Run the builder in-process (make_data.run: bad input raises SetupError); returns the stats."""
    return make_data.run(make_data.parse_config(["--out", str(out), *SMALL, *args]))


def cli(*args, timeout=120):
    """Run `python make_data.py ARGS` in a subprocess (exit codes, stderr)."""
    return subprocess.run([sys.executable, str(HERE / "make_data.py"), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def folder_bytes(root):
    """{relative path: bytes} of every file in a folder (run.json included)."""
    root = Path(root)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------- renderer
def test_render_scene_is_deterministic_and_plausible():
    rgb, depth = scenes.render_scene(7, 96, 128)
    rgb2, depth2 = scenes.render_scene(np.random.default_rng(7), 96, 128)
    assert rgb.shape == (96, 128, 3) and rgb.dtype == np.uint8
    assert depth.shape == (96, 128) and depth.dtype == np.float32
    assert np.array_equal(rgb, rgb2) and np.array_equal(depth, depth2, equal_nan=True)
    other, _ = scenes.render_scene(8, 96, 128)
    assert not np.array_equal(rgb, other)
    kinds = {}
    for seed in range(24):
        kind = scenes.sample_scene(seed)["kind"]
        rgb, depth = scenes.render_scene(seed, 48, 64)
        valid = np.isfinite(depth)
        assert valid.mean() > 0.2 and (depth[valid] > 0.01).all() and depth[valid].max() < 200
        assert rgb.std() > 5
        if kind != "open":
            assert valid.all()                      # indoors every ray hits a surface
        kinds[kind] = kinds.get(kind, 0) + 1
    assert set(kinds) == set(scenes.SCENE_KINDS)


def test_render_scene_depth_is_z_depth_not_ray_length():
    """Recompute each pixel's ray independently (pinhole with the sampled pose): floor pixels of a room,
    found as those whose depth puts the hit point at height 0, must be many, and their depth is the
    distance along the optical axis, which is shorter than the ray length off the image centre."""
    h, w = 60, 80
    rooms = [s for s in range(40) if scenes.sample_scene(s, h, w)["kind"] in ("room", "corridor")][:4]
    for seed in rooms:
        _, depth = scenes.render_scene(seed, h, w)
        cam = scenes.sample_scene(seed, h, w)["cam"]
        cols, rows = np.meshgrid(np.arange(w) + 0.5 - w / 2, -(np.arange(h) + 0.5 - h / 2))
        rays = (cols[..., None] * cam["right"] + rows[..., None] * cam["up"]) / cam["focal"] + cam["fwd"]
        assert np.allclose(rays @ cam["fwd"], 1)             # unit forward component: t is z-depth
        y = cam["pos"][1] + depth * rays[..., 1]
        floor = np.abs(y) < 1e-3
        assert floor.sum() > 0.02 * h * w or cam["pitch"] > 0.2
        length = depth * np.linalg.norm(rays, axis=-1)
        assert (length >= depth - 1e-6).all() and (length[0, 0] > 1.05 * depth[0, 0])
    assert rooms


# ---------------------------------------------------------------------------------------- built-in scenes
SCENE_ARGS = ["--n", "40", "--seed", "5", "--test-fraction", "0.3", "--sft-size", "10", "--shuffle-grids", "2x2,3x3"]


@pytest.fixture(scope="module")
def scene_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("scenes") / "ds"
    build(out, *SCENE_ARGS, "--workers", "1", "--preview", str(out.parent / "sheet.png"))
    return out


def test_end_to_end_records_images_and_stats(scene_build):
    out = scene_build
    train, test, sft = (read_jsonl(out / f"{s}.jsonl") for s in ("train", "test", "sft"))
    records = train + test
    assert len(records) == 40
    assert len({r["id"] for r in records}) == 40
    referenced = set()
    for r in records:
        assert {"id", "task", "problem", "answer", "images", "source", "meta"} <= set(r)
        assert r["task"] in tasks.TASKS and r["source"].startswith("scene:")
        assert r["problem"].count("<image>") == len(r["images"]) >= 1
        for p in r["images"]:
            assert (out / p).is_file() and p.startswith(f"images/{r['task']}/")
            referenced.add(p)
        assert tasks.reward(f"<think>x</think> \\boxed{{{r['answer']}}}", r["answer"], r["task"]) == 1.0
    on_disk = {p.relative_to(out).as_posix() for p in (out / "images").rglob("*") if p.is_file()}
    assert on_disk == referenced | {p for r in sft for p in r["images"]}  # no orphan image, no missing image
    assert not {r["source"] for r in train} & {r["source"] for r in test}  # split by source image
    assert test, "test fraction 0.3 over 8+ scenes should give some test records"
    stats = json.loads((out / "stats.json").read_text())
    assert set(stats["counts"]) == set(tasks.DEFAULT_TASKS)          # --tasks auto: the paper's five
    for t in tasks.DEFAULT_TASKS:
        assert stats["counts"][t]["train"] == sum(r["task"] == t for r in train)
        assert stats["counts"][t]["test"] == sum(r["task"] == t for r in test)
    assert sum(stats["quota"].values()) == 40 and not stats["shortfall"]
    assert {r["meta"]["depth_source"] for r in records if r["task"] in tasks.DEPTH_TASKS} == {"scene"}
    assert stats["depth"]["model"] is None and set(stats["depth"]["records"]) == {"scene"}
    # sft: task-balanced cold-start records from their own source images, with a templated trace that
    # earns the full reward and states no metric depth
    assert len(sft) == 10 and {r["task"] for r in sft} == set(tasks.DEFAULT_TASKS)
    assert not {r["source"] for r in sft} & {r["source"] for r in records}     # SFT and RL/test disjoint
    assert not {r["id"] for r in sft} & {r["id"] for r in records}
    for r in sft:
        assert set(r) == {"id", "task", "problem", "answer", "images", "source", "meta", "response"}
        assert tasks.reward(r["response"], r["answer"], r["task"], problem=r["problem"]) == pytest.approx(1.0)
        assert "depth ≈" not in r["response"] and "metre" not in r["response"]
    assert stats["counts"]["depth"]["sft"] == 2 and stats["sources_per_split"]["sft"] >= 2
    for row in stats["shortcuts"]:
        assert {"task", "heuristic", "n", "accuracy", "chance", "threshold", "ok"} <= set(row)
    assert Image.open(out.parent / "sheet.png").size[0] > 500


def test_same_output_whatever_the_worker_count(scene_build, tmp_path):
    out = tmp_path / "two_workers"
    build(out, *SCENE_ARGS, "--workers", "2")
    assert folder_bytes(out) == folder_bytes(scene_build)


def test_resume_after_interrupted_run_gives_the_same_output(scene_build, tmp_path):
    out = tmp_path / "resumed"
    shutil.copytree(scene_build, out)
    for name in ("sft.jsonl", "stats.json"):
        (out / name).unlink()  # an interrupted run has not written these yet
    journal = (out / "progress.jsonl").read_bytes().splitlines(keepends=True)
    (out / "progress.jsonl").write_bytes(b"".join(journal[: len(journal) // 2]) + journal[len(journal) // 2][:7])
    train = (out / "train.jsonl").read_bytes()
    (out / "train.jsonl").write_bytes(train[: len(train) * 3 // 4])  # ends in the middle of a record
    (out / "images" / "crop" / "crop-9999999_0.jpg").write_bytes(b"orphan")
    (out / "images" / "flip" / "x.jpg.tmp").write_bytes(b"half")
    kept = read_jsonl(scene_build / "test.jsonl")[0]
    (out / kept["images"][0]).unlink()  # an image a record points to went missing: roll back to before it
    build(out, *SCENE_ARGS, "--workers", "2", "--resume")
    assert folder_bytes(out) == folder_bytes(scene_build)


KILL_ARGS = ["--n", "250", "--seed", "1", "--sync-seconds", "0"]


@pytest.fixture(scope="module")
def kill_reference(tmp_path_factory):
    """An uninterrupted build that the killed and interrupted builds must reproduce byte for byte."""
    out = tmp_path_factory.mktemp("kill") / "reference"
    build(out, *KILL_ARGS, "--workers", "2")
    return out


def start_and_stop(out, sig, workers):
    """Start `make_data.py` in a subprocess, send `sig` once its journal has 8 lines; returns (exit code,
    stderr)."""
    cmd = [sys.executable, str(HERE / "make_data.py"), "--out", str(out), *SMALL, *KILL_ARGS, "--workers", workers]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            journal = out / "progress.jsonl"
            if journal.exists() and journal.read_bytes().count(b"\n") >= 8:
                break
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, sig) if sig == signal.SIGKILL else proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    assert not (out / "stats.json").exists(), "the run finished before it could be stopped"
    return proc.returncode, err


def test_resume_after_sigkill_gives_the_same_output(kill_reference, tmp_path):
    out = tmp_path / "killed"
    start_and_stop(out, signal.SIGKILL, "2")   # the builder and its pool workers, mid-run
    with pytest.raises(SetupError, match="add --resume"):
        build(out, *KILL_ARGS, "--workers", "2")
    build(out, *KILL_ARGS, "--workers", "2", "--resume")
    assert folder_bytes(out) == folder_bytes(kill_reference)


def test_ctrl_c_exits_130_with_the_resume_hint_and_resume_is_exact(kill_reference, tmp_path):
    out = tmp_path / "interrupted"
    code, err = start_and_stop(out, signal.SIGINT, "1")
    assert code == 130 and "interrupted; run the same command with --resume" in err and "Traceback" not in err, err
    build(out, *KILL_ARGS, "--workers", "1", "--resume")
    assert folder_bytes(out) == folder_bytes(kill_reference)


def test_rerun_with_other_settings_is_an_error(scene_build, tmp_path):
    out = tmp_path / "other"
    shutil.copytree(scene_build, out)
    before = folder_bytes(out)
    with pytest.raises(SetupError, match=r"--seed 5 \(now 4\)"):
        build(out, *SCENE_ARGS, "--seed", "4", "--resume")
    (tmp_path / "stranger").mkdir()
    (tmp_path / "stranger" / "notes.txt").write_text("mine")
    with pytest.raises(SetupError, match=r"no make_data.py run.*notes.txt"):
        build(tmp_path / "stranger", "--n", "5")
    assert folder_bytes(out) == before   # refused before anything was written


def test_second_run_needs_resume_or_overwrite(scene_build, tmp_path):
    """Re-running into a finished build is refused (it used to resume silently); --overwrite rebuilds it;
    --resume and --overwrite together are refused."""
    out = tmp_path / "again"
    shutil.copytree(scene_build, out)
    (out / "images" / "extra.txt").write_text("stale")
    with pytest.raises(SetupError, match="make_data.py run: add --resume .* or --overwrite"):
        build(out, *SCENE_ARGS)
    with pytest.raises(SetupError, match="exclude each other"):
        build(out, *SCENE_ARGS, "--resume", "--overwrite")
    build(out, *SCENE_ARGS, "--workers", "2", "--overwrite")
    assert folder_bytes(out) == folder_bytes(scene_build)
    assert json.loads((out / "run.json").read_text())["prog"] == "make_data.py" and not (out / "config.json").exists()


def test_model_folder_as_out_is_one_short_line(tmp_path):
    """--out pointed at a model folder (its own config.json) is refused in one short line, not by listing the
    model's config as "different settings"; nothing in it is touched."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({f"key_{i}": "x" * 20 for i in range(80)}))
    (model / "model.safetensors").write_bytes(b"weights")
    before = folder_bytes(model)
    run = cli("--out", model, *SMALL, "--n", "5")
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.count("\n") == 1 and len(run.stderr) < 200, run.stderr
    assert run.stderr.startswith("make_data.py: error: --out") and "no make_data.py run" in run.stderr
    assert folder_bytes(model) == before


def small_photos(folder, names, size=(160, 120), seed0=100):
    """JPEG photos rendered from built-in scenes (one per name, seeds seed0, seed0 + 1, …) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.fromarray(scenes.render_scene(seed0 + i, size[1], size[0])[0]).save(folder / name, quality=90)
    return folder


def readme_command(section: str, script: str) -> list:
    """The arguments of the `python <script>` line in the README section `## <section>`, as written."""
    text = (HERE / "README.md").read_text().split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    line = next(ln for ln in text.splitlines() if ln.startswith(f"python {script} "))
    return line.split()[2:]


def rgbd_folder(folder, n, seed0):
    """n built-in scenes as <stem>.png + <stem>_depth.npy (the RGB-D naming rule)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        rgb, depth = scenes.render_scene(seed0 + i, 240, 320)
        Image.fromarray(rgb).save(folder / f"v{i}.png")
        np.save(folder / f"v{i}_depth.npy", depth)


def test_the_readme_own_images_command_runs_as_written(tmp_path):
    """The README's command takes several --rgbd folders; run as written (the folders it names made small here,
    fewer workers), every folder feeds the build and the same file name in two folders is two sources."""
    args = readme_command("Your own images", "make_data.py")
    assert args.count("--rgbd") == 1 and args[args.index("--rgbd") + 2] == "megadepth/imgs/", args
    small_photos(tmp_path / "photos", [f"p{i}.jpg" for i in range(8)])
    rgbd_folder(tmp_path / "diode", 5, 200)
    rgbd_folder(tmp_path / "megadepth" / "imgs", 5, 300)        # the same names as in diode/, other pictures
    run = subprocess.run([sys.executable, str(HERE / "make_data.py"), *args, "--workers", "2", "--no-progress",
                          "--preview", "none"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    sources = {r["source"] for s in ("train", "test", "sft") for r in read_jsonl(tmp_path / "data/mine" / f"{s}.jsonl")}
    for folder in ("photos", "diode", "megadepth/imgs"):
        assert any(src.startswith(str(tmp_path / folder) + "/") or src.startswith(folder + "/") for src in sources), \
            (folder, sorted(sources))


def test_byte_identical_images_are_one_source(tmp_path):
    """scikit-image ships cat.png = chelsea.png: as two sources the split by source could put one picture in
    train and in test. A copy (also one in --rgb of an --rgbd image, which keeps its depth) is left out and
    counted."""
    photos = small_photos(tmp_path / "photos", [f"p{i}.jpg" for i in range(6)])
    shutil.copy(photos / "p0.jpg", photos / "z-copy-of-p0.jpg")
    rgbd_folder(tmp_path / "rgbd", 2, 200)
    shutil.copy(tmp_path / "rgbd" / "v1.png", photos / "v1-again.png")
    sources, notes = make_data.discover_sources([str(photos)], [str(tmp_path / "rgbd")])
    names = sorted(Path(s.path).name for s in sources)
    assert names == ["p0.jpg", "p1.jpg", "p2.jpg", "p3.jpg", "p4.jpg", "p5.jpg", "v0.png", "v1.png"]
    assert notes["same-content-as-another-image"] == 2 and all(s.depth for s in sources if s.path.endswith(".png"))
    stats = build(tmp_path / "out", "--rgb", str(photos), "--n", "12", "--test-fraction", "0", "--sft-size", "0")
    assert stats["sources"]["same-content-as-another-image"] == 1 and stats["sources"]["found"] == 7


def test_scene_size_too_small_says_the_minimum(tmp_path):
    with pytest.raises(SetupError, match=r"--scene-size 10x10: each side must be at least 16 px"):
        build(tmp_path / "o", "--scene-size", "10x10")
    with pytest.raises(SetupError, match="--scene-size wants WxH"):
        build(tmp_path / "o", "--scene-size", "ten")
    assert not (tmp_path / "o").exists()


def test_resume_refuses_a_changed_source_folder(tmp_path):
    """The sources are part of the run's identity: adding images (which used to resume, skipping some new
    images and using old ones twice) or resizing one makes --resume a one-line error with the counts; an
    unchanged folder resumes."""
    photos = small_photos(tmp_path / "photos", [f"p{i}.jpg" for i in range(7)])
    out = tmp_path / "out"
    args = ["--rgb", str(photos), "--n", "6", "--test-fraction", "0", "--sft-size", "0"]
    build(out, *args)
    build(out, *args, "--resume")                       # nothing changed: fine
    before = folder_bytes(out)
    small_photos(photos, ["q0.jpg", "q1.jpg", "q2.jpg"], seed0=150)     # other pictures (copies are not sources)
    with pytest.raises(SetupError, match=r"source folders changed .*\(7 images then, 10 images now"):
        build(out, *args, "--resume")
    for name in ("q0.jpg", "q1.jpg", "q2.jpg"):
        (photos / name).unlink()
    (photos / "p3.jpg").write_bytes((photos / "p3.jpg").read_bytes() + b"\0")
    with pytest.raises(SetupError, match="source folders changed"):
        build(out, *args, "--resume")
    assert folder_bytes(out) == before


def test_a_small_folder_gives_every_split_or_one_line_naming_the_knob(tmp_path):
    """Splits of folder sources have exact counts (at least one source each when asked for): 4 photos whose
    per-source draws send none to test (independent draws gave 0 test examples, exit 2) now give train, test
    and cold-start examples; 2 photos cannot give three splits: one line naming the knobs, nothing written.
    A split short of its quota names --per-source."""
    names = ["photo0.jpg", "photo1.jpg", "photo3.jpg", "photo4.jpg"]   # drawn for neither test nor sft below
    photos = small_photos(tmp_path / "photos", names)
    assert not any(make_data.is_test(0, f"rgb:{n}", 0.05) for n in names)
    share, _ = make_data.sft_plan(make_data.parse_config(["--n", "8", "--sft-size", "2", "--test-fraction", "0.05"]),
                                  dict.fromkeys(tasks.RGB_TASKS, 1.0))
    assert not any(make_data.split_of(0, f"rgb:{n}", 0.05, share) in ("test", "sft") for n in names)
    run = cli("--out", tmp_path / "o1", "--rgb", photos, *SMALL, "--n", "8", "--test-fraction", "0.05",
              "--sft-size", "2")
    assert run.returncode == 0, run.stderr
    assert re.search(r"\d+ train \+ \d+ test \+ \d+ cold-start examples from 2 \+ 1 \+ 1 different", run.stdout), run.stdout
    assert "SHORT of the request" in run.stdout and "at most --per-source 1 example(s) per task" in run.stdout
    for args in (["--test-fraction", "0.05", "--sft-size", "2"], ["--test-fraction", "0.5", "--sft-size", "0"]):
        two = small_photos(tmp_path / "two", names[:2 - (args[-1] == "0")])
        with pytest.raises(SetupError, match=r"source image\(s\) cannot give a train, .* split each: add images or "
                                             r"pass --test-fraction 0"):
            build(tmp_path / "o2", "--rgb", str(two), "--n", "8", *args)
        assert not (tmp_path / "o2").exists()
        shutil.rmtree(two)
    build(tmp_path / "o3", "--rgb", str(photos), "--n", "40", "--test-fraction", "0", "--sft-size", "0")  # short: ok


# ---------------------------------------------------------------------------------------- odd and corrupt inputs
def _jpeg_with_orientation(path, rgb, orientation):
    im = Image.fromarray(rgb)
    exif = im.getexif()
    exif[0x0112] = orientation
    im.save(path, quality=92, exif=exif)


@pytest.fixture(scope="module")
def odd_folders(tmp_path_factory):
    """An --rgb folder and an --rgbd folder full of traps, plus the names of the usable files."""
    root = tmp_path_factory.mktemp("odd")
    rgb_dir, rgbd_dir = root / "rgb", root / "rgbd"
    (rgb_dir / "sub").mkdir(parents=True)
    rgbd_dir.mkdir()
    renders = [scenes.render_scene(s, 240, 320) for s in range(6)]
    img = [Image.fromarray(s[0]) for s in renders]
    img[0].save(rgb_dir / "good.jpg", quality=90)
    data = (rgb_dir / "good.jpg").read_bytes()
    (rgb_dir / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (rgb_dir / "text.png").write_text("this is not a picture")
    (rgb_dir / "notes.txt").write_text("ignored: not an image extension")
    img[1].convert("L").save(rgb_dir / "gray.png")
    img[2].convert("P", palette=Image.Palette.ADAPTIVE).save(rgb_dir / "sub" / "palette.png")
    rgba = img[3].convert("RGBA")
    rgba.putalpha(128)
    rgba.save(rgb_dir / "rgba.png")
    Image.fromarray((np.asarray(img[4].convert("L"), np.uint16) * 257)).save(rgb_dir / "gray16.png")
    img[5].convert("CMYK").save(rgb_dir / "cmyk.jpg")
    _jpeg_with_orientation(rgb_dir / "rotated.jpg", renders[0][0], 6)
    img[1].resize((20, 15)).save(rgb_dir / "tiny.png")
    good_rgb = {"good.jpg", "gray.png", "sub/palette.png", "rgba.png", "gray16.png", "cmyk.jpg", "rotated.jpg"}
    # RGB-D: .npy metres (HxW and HxWx1 + mask), 16-bit PNG millimetres, and three broken depth maps
    for seed, name in zip(depth_friendly_seeds(6), ["a", "b", "c", "wrongsize", "zeros", "badshape"]):
        rgb, depth = scenes.render_scene(seed, 240, 320)
        Image.fromarray(rgb).save(rgbd_dir / f"{name}.png")
        if name == "a":
            np.save(rgbd_dir / "a_depth.npy", depth)
        elif name == "b":
            np.save(rgbd_dir / "b.npy", depth[..., None])
            np.save(rgbd_dir / "b_mask.npy", (np.arange(320)[None, :] > 5).repeat(240, 0).astype(np.float32))
        elif name == "c":
            Image.fromarray(np.round(depth * 1000).astype(np.uint16)).save(rgbd_dir / "c_depth.png")
        elif name == "wrongsize":
            np.save(rgbd_dir / "wrongsize_depth.npy", depth[:100, :100])
        elif name == "zeros":
            np.save(rgbd_dir / "zeros_depth.npy", np.zeros_like(depth))
        else:
            np.save(rgbd_dir / "badshape_depth.npy", np.stack([depth, depth], -1))
    Image.fromarray(scenes.render_scene(999, 240, 320)[0]).save(rgbd_dir / "nodepth.png")  # no depth file: RGB
    return rgb_dir, rgbd_dir, good_rgb, {"a.png", "b.png", "c.png"}


@pytest.mark.parametrize("name", ["gray.png", "sub/palette.png", "rgba.png", "gray16.png", "cmyk.jpg", "rotated.jpg"])
def test_load_image_handles_every_mode(odd_folders, name):
    rgb, stored, orientation = make_data.load_image(odd_folders[0] / name, 1024, 64, jpeg_rescale=False)
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.std() > 5
    if name == "rotated.jpg":  # EXIF orientation 6: stored 320x240, shown 240 wide and 320 tall
        assert stored == (320, 240) and orientation == 6 and rgb.shape[:2] == (320, 240)
    if name == "rgba.png":  # half-transparent: composited on white, so brighter than the opaque pixels
        assert rgb.mean() > np.asarray(Image.open(odd_folders[0] / name).convert("RGB")).mean()


@pytest.mark.parametrize("name,reason", [("truncated.jpg", "truncated"), ("text.png", "not-an-image"),
                                         ("tiny.png", "too-small")])
def test_load_image_rejects_bad_files(odd_folders, name, reason):
    with pytest.raises(Skipped) as e:
        make_data.load_image(odd_folders[0] / name, 1024, 64)
    assert e.value.reason == reason


def test_depth_follows_exif_rotation_and_mask(tmp_path):
    rgb, depth = scenes.render_scene(1, 60, 80)
    _jpeg_with_orientation(tmp_path / "r.jpg", rgb, 8)  # stored 80x60, rotated 90° counter-clockwise to show
    np.save(tmp_path / "r_depth.npy", depth)
    mask = np.ones_like(depth)
    mask[:, :10] = 0
    np.save(tmp_path / "r_mask.npy", mask)
    path = str(tmp_path / "r.jpg")
    src = make_data.Source("rgbd:r.jpg", path, *make_data.find_depth(path), "rgbd")
    assert src.mask.endswith("r_mask.npy")
    img, d = make_data.load_source(src, True, max_side=1024, min_side=16, jpeg_rescale=False)
    assert img.shape[:2] == d.shape == (80, 60)
    np.testing.assert_array_equal(d, np.rot90(np.where(mask > 0, depth, np.nan)))


def test_odd_folder_skips_bad_inputs_by_reason(odd_folders, tmp_path, capsys):
    rgb_dir, rgbd_dir, good_rgb, good_rgbd = odd_folders
    out = tmp_path / "odd"
    build(out, "--rgb", str(rgb_dir), "--rgbd", str(rgbd_dir), "--n", "200", "--workers", "2",
          "--test-fraction", "0", "--sft-size", "0")
    text = capsys.readouterr().out
    stats = json.loads((out / "stats.json").read_text())
    skipped = stats["skipped_sources"]
    bad = {"truncated": rgb_dir / "truncated.jpg", "not-an-image": rgb_dir / "text.png", "too-small": rgb_dir / "tiny.png",
           "depth-size-mismatch": rgbd_dir / "wrongsize.png", "depth-no-valid-pixels": rgbd_dir / "zeros.png",
           "depth-bad-shape": rgbd_dir / "badshape.png"}
    for reason, path in bad.items():              # counted, and named (stats.json and the summary)
        assert skipped.get(reason) == 1, (reason, skipped)
        assert stats["skipped_files"][reason] == [str(path)]
        assert f"  {reason} 1: {path}" in text
    assert stats["sources"]["rgbd-image-without-depth"] == 1 and stats["sources"]["rgbd"] == 6
    records = read_jsonl(out / "train.jsonl")
    used = {r["source"] for r in records}
    expected = {str(rgb_dir / n) for n in good_rgb} | {str(rgbd_dir / n) for n in good_rgbd | {"nodepth.png"}}
    assert used == expected
    for task in tasks.DEPTH_TASKS:  # .npy (HxW, HxWx1 + mask) and 16-bit PNG depth all work
        assert {r["source"] for r in records if r["task"] == task} == {str(rgbd_dir / n) for n in good_rgbd}
    assert stats["shortfall"]  # 11 usable images cannot fill 200 examples: reported, not an error
    for r in records:
        for p in r["images"]:
            assert Image.open(out / p).mode == "RGB"


def test_jpeg_sources_are_resampled_with_their_depth(tmp_path):
    """A JPEG source is resampled by jpeg_scale() (its 8-px block grid no longer sits on the pixel grid);
    the depth map follows onto the same grid."""
    rgb, depth = scenes.render_scene(ROOM_SEED, 120, 160)
    Image.fromarray(rgb).save(tmp_path / "j.jpg", quality=75)
    np.save(tmp_path / "j_depth.npy", depth)
    path = str(tmp_path / "j.jpg")
    f = make_data.jpeg_scale(path)
    assert 0.8 <= f < 0.95 and f == make_data.jpeg_scale(path)
    src = make_data.Source("rgbd:j.jpg", path, *make_data.find_depth(path), "rgbd")
    img, d = make_data.load_source(src, True, max_side=1024, min_side=16)
    assert img.shape[:2] == d.shape == (round(120 * f), round(160 * f))
    want = np.asarray(Image.fromarray(depth).resize((d.shape[1], d.shape[0]), Image.Resampling.NEAREST))
    np.testing.assert_array_equal(d, want)


def test_rgbd_without_any_depth_is_a_clear_error(odd_folders, tmp_path):
    """--rgbd whose images have no depth file stops with the naming rule (it used to build RGB tasks only);
    asking only for RGB tasks is fine."""
    only_rgb = tmp_path / "only_rgb"
    only_rgb.mkdir()
    shutil.copy(odd_folders[0] / "good.jpg", only_rgb / "good.jpg")
    with pytest.raises(SetupError, match="naming rule.*_depth.npy"):
        build(tmp_path / "o1", "--rgbd", str(only_rgb), "--n", "5")
    with pytest.raises(SetupError, match="naming rule"):
        build(tmp_path / "o2", "--rgbd", str(only_rgb), "--n", "5", "--tasks", "depth")
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()   # nothing written
    build(tmp_path / "o3", "--rgbd", str(only_rgb), "--n", "3", "--tasks", "shuffle,flip,crop",
          "--sft-size", "0", "--test-fraction", "0")


def test_partial_depth_says_per_task_how_many_fell_short(odd_folders, tmp_path, capsys):
    rgbd_dir = odd_folders[1]
    build(tmp_path / "p", "--rgbd", str(rgbd_dir), "--n", "40", "--tasks", "depth,position,shuffle",
          "--sft-size", "0", "--test-fraction", "0")
    text = capsys.readouterr().out
    stats = json.loads((tmp_path / "p" / "stats.json").read_text())
    for task in ("depth", "position"):                    # 3 usable depth maps cannot give 13 examples each
        made = stats["counts"][task]["train"]
        assert stats["shortfall"][task] == stats["quota"][task] - made > 0
        assert f"{task} {made} of {stats['quota'][task]} ({stats['shortfall'][task]} short)" in text
    assert "have a depth file" in text and "naming rule" in text


def test_nothing_usable_is_a_clear_error(odd_folders, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("truncated.jpg", "text.png", "tiny.png"):
        shutil.copy(odd_folders[0] / name, bad / name)
    run = cli("--rgb", bad, *SMALL, "--out", tmp_path / "o1")
    assert run.returncode == 2 and "nothing usable" in run.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    run = cli("--rgb", empty, *SMALL, "--out", tmp_path / "o2")
    assert run.returncode == 2 and "no image files" in run.stderr and run.stderr.count("\n") == 1


def test_h5_depth_without_h5py_says_how_to_install(tmp_path):
    try:
        import h5py  # noqa: F401
        pytest.skip("h5py is installed")
    except ImportError:
        pass
    rgb, _ = scenes.render_scene(0, 96, 128)
    Image.fromarray(rgb).save(tmp_path / "x.jpg")
    (tmp_path / "x.h5").write_bytes(b"not really hdf5")
    with pytest.raises(SetupError, match="pip install h5py"):
        make_data.discover_sources((), [str(tmp_path)])


# ---------------------------------------------------------------------------------------- command line
def test_help_lists_every_knob_with_examples_and_exits_zero(tmp_path):
    t0 = time.perf_counter()
    run = cli("--help")
    assert run.returncode == 0 and time.perf_counter() - t0 < 10
    for flag in ("--out", "--rgb", "--rgbd", "--n", "--tasks", "--sft-size", "--test-fraction", "--seed",
                 "--workers", "--preview", "--no-jpeg-rescale", "--no-progress", "--resume", "--overwrite"):
        assert flag in run.stdout
    assert "(default: 500)" in run.stdout and "4.4 % of --n" in run.stdout
    examples = run.stdout.split("examples:", 1)[1]
    assert "python make_data.py --out" in examples and "--resume" in examples and "naming rule" in examples
    bad = cli("--n", "0", "--test-fraction", "1", "--out", tmp_path / "never_written")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--n must be" in bad.stderr
    assert "--test-fraction must be" in bad.stderr and not (tmp_path / "never_written").exists()


def test_shortcut_limits_are_never_above_100_percent(capsys):
    """On a tiny build the text-only prior's limit (chance + 4 SE) used to print as e.g. 145 %: it is capped,
    and a row whose n cannot show a shortcut says "n too small to judge" instead of passing or failing."""
    records = [{"task": "flip", "answer": a} for a in ("1, horizontal", "1, horizontal", "2, vertical")]
    row, = make_data.answer_priors(records)
    assert row["threshold"] <= 1.0 and row["ok"] is None and not row["judged"]
    rows = make_data.depth_shortcuts([{"meta": {"size": [100, 100], "regions": [
        {"center": [50, 90]}, {"center": [20, 50]}, {"center": [70, 10]}]}}] * 3)
    assert rows[1]["judged"] is False and rows[0]["judged"] and rows[0]["ok"] is False   # 3 of 3: flagged
    make_data.print_shortcuts([row] + rows)
    text = capsys.readouterr().out
    limits = [float(x) for x in re.findall(r"(\d+)%\s*(?:n too small|ABOVE|above|$)", text, re.M)]
    assert limits and max(limits) <= 100
    assert "n too small to judge" in text and "ABOVE LIMIT" in text


def test_bench_data_prints_every_task_and_the_renderer(capsys):
    """`python bench.py data` replaced `make_data.py --benchmark` (which is gone)."""
    import bench
    bench.main(["data", "--seconds", "0", "--sizes", "96x64", "--build-n", "0"])
    text = capsys.readouterr().out
    for word in (*tasks.TASKS, "96x64", "512x384", "scenes/s", "target < 20 ms", "target >= 30 scenes/s"):
        assert word in text
    with pytest.raises(SystemExit):
        make_data.parse_config(["--benchmark"])


def test_quota_split_and_task_weights():
    w = make_data.parse_tasks("shuffle:2,depth", tasks.TASKS)
    assert w == {"shuffle": 2.0, "depth": 1.0}
    assert make_data.split_quota(10, w) == {"shuffle": 7, "depth": 3}
    assert sum(make_data.split_quota(81053, dict.fromkeys(tasks.TASKS, 1.0)).values()) == 81053
    assert tuple(make_data.parse_tasks("auto", tasks.RGB_TASKS)) == ("shuffle", "flip", "crop")   # no rotation
    assert tuple(make_data.parse_tasks("auto", tasks.TASKS)) == tasks.DEFAULT_TASKS            # the paper's five
    assert tuple(make_data.parse_tasks("crop,rotation:2", tasks.RGB_TASKS)) == ("crop", "rotation")  # opt-in
    with pytest.raises(SetupError, match="unknown task 'rotate'"):
        make_data.parse_tasks("rotate", tasks.TASKS)
    with pytest.raises(SetupError, match="need depth maps"):
        make_data.parse_tasks("shuffle,depth", tasks.RGB_TASKS)
    assert make_data.source_tasks("estimated", "relative") == ("shuffle", "flip", "crop", "depth", "rotation")
    assert make_data.source_tasks("estimated", "metric") == tasks.TASKS
    assert make_data.source_tasks("rgb") == tasks.RGB_TASKS and make_data.source_tasks("rgbd") == tasks.TASKS


def test_import_has_no_side_effects(tmp_path):
    """Importing make_data writes nothing and imports no torch (only --depth-model's code path does)."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import make_data; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code, str(HERE)], cwd=tmp_path, check=True, timeout=120)
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------- depth from photos
def build_tiny_depth(out_dir: str, metric: bool = False, size: int = 56, seed: int = 0):
    """A randomly initialised tiny Depth Anything (a 2-layer, 16-wide DINOv2 backbone; ~24k parameters) saved to
    out_dir with its DPT image processor (PIL backend, images resized to about size x size), in well under a
    second. metric=False: a "relative" model (its output is read as inverse depth, as Depth Anything V2 Small's);
    metric=True: depth_estimation_type "metric" (sigmoid x max_depth metres). initializer_range 0.2 so the
    random output varies across the image instead of sitting at the head's ReLU floor. Returns out_dir."""
    import torch
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config
    from transformers.models.dpt.image_processing_pil_dpt import DPTImageProcessorPil
    backbone = Dinov2Config(image_size=size, patch_size=14, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=32, out_indices=[1, 2], reshape_hidden_states=False,
                            initializer_range=0.2)
    cfg = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=16, reassemble_factors=[2, 1],
                              neck_hidden_sizes=[8, 16], fusion_hidden_size=8, head_hidden_size=4,
                              initializer_range=0.2, depth_estimation_type="metric" if metric else "relative",
                              max_depth=20 if metric else 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DepthAnythingForDepthEstimation(cfg)
    model.save_pretrained(out_dir)
    DPTImageProcessorPil(size={"height": size, "width": size}, keep_aspect_ratio=True, ensure_multiple_of=14,
                         do_pad=False).save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="module")
def depth_models(tmp_path_factory):
    """Tiny random Depth Anything folders (build_tiny_depth): a relative one and a metric one."""
    root = tmp_path_factory.mktemp("depth_models")
    return {kind: build_tiny_depth(str(root / kind), metric=kind == "metric", size=238)
            for kind in ("relative", "metric")}


def brightness_forward(self, pixel_values=None, **kwargs):
    """A fake depth model's forward: the picture's brightness (its normalised channels' mean), scaled and
    shifted. On the photos of inverse_depth_photos that is the true inverse depth up to scale and shift:
    exactly what a relative depth model outputs (larger = nearer)."""
    from transformers.modeling_outputs import DepthEstimatorOutput
    return DepthEstimatorOutput(predicted_depth=pixel_values.mean(1) * 3.0 + 4.0)


@pytest.fixture(scope="module")
def inverse_depth_photos(tmp_path_factory):
    """Grey PNG photos whose brightness is the inverse of a built-in scene's depth (the sky, with no depth,
    black = farthest), and their true depth maps. Half of them also get the depth as <stem>_depth.npy (an
    --rgbd folder where the depth files win), the other half only as `truth` (their depth must come from
    the model)."""
    folder = tmp_path_factory.mktemp("inverse") / "photos"
    folder.mkdir()
    truth = {}
    for i, seed in enumerate(depth_friendly_seeds(6)):
        _, depth = scenes.render_scene(seed, 240, 320)
        inv = np.nan_to_num(1 / depth, nan=0.0)
        lo, hi = np.percentile(inv[inv > 0], [0.5, 99.5])
        grey = (np.clip((inv - lo) / (hi - lo), 0, 1) * 255).round().astype(np.uint8)
        Image.fromarray(np.repeat(grey[..., None], 3, -1)).save(folder / f"s{i}.png")
        truth[f"s{i}.png"] = depth
        if i % 2:
            np.save(folder / f"s{i}_depth.npy", depth)
    return folder, truth


def true_order(depth, regions):
    """Marker labels from nearest to farthest by the true depth (median over each region's box; the sky, with no
    depth, is the farthest)."""
    sky_far = np.nan_to_num(depth, nan=np.inf)
    med = {r["label"]: float(np.median(sky_far[r["box"][1]:r["box"][3], r["box"][0]:r["box"][2]])) for r in regions}
    return sorted(med, key=med.get), med


def test_estimated_depth_is_read_the_right_way_round(depth_models, inverse_depth_photos, tmp_path, monkeypatch):
    """Re-derived: with a fake model whose output is the photos' true inverse depth (up to scale and shift),
    every depth-ordering answer built from its estimate is the true near-to-far order of the marked regions;
    read as a metric model (the same output taken as depth) every answer is reversed. Depth files win
    where there are some, and each record says where its depth came from (meta and stats.json)."""
    import transformers
    monkeypatch.setattr(transformers.DepthAnythingForDepthEstimation, "forward", brightness_forward)
    folder, truth = inverse_depth_photos
    args = ["--rgbd", str(folder), "--tasks", "depth", "--n", "12", "--per-source", "6", "--test-fraction", "0",
            "--sft-size", "0", "--depth-batch", "2"]
    for kind in ("relative", "metric"):
        out = tmp_path / kind
        build(out, *args, "--depth-model", depth_models[kind])
        records = read_jsonl(out / "train.jsonl")
        sources = {}
        for r in records:
            name = Path(r["source"]).name
            order, med = true_order(truth[name], r["meta"]["regions"])
            got = [int(v) for v in r["answer"].split(",")]
            estimated = not (folder / name.replace(".png", "_depth.npy")).exists()
            sources.setdefault(r["meta"]["depth_source"], set()).add(name)
            if estimated and kind == "metric":
                assert got == order[::-1], (name, got, med)          # the same output read as depth: reversed
            else:
                assert got == order, (name, got, med)
        label = f"model:{depth_models[kind]}"
        assert set(sources) == {"sensor", label} and all(int(n[1]) % 2 for n in sources["sensor"])
        assert not any(int(n[1]) % 2 for n in sources[label]) and len(sources[label]) >= 2
        stats = json.loads((out / "stats.json").read_text())
        assert stats["depth"]["output"] == kind and stats["depth"]["model"] == depth_models[kind]
        assert stats["depth"]["records"] == {s: sum(r["meta"]["depth_source"] == s for r in records) for s in sources}


def test_depth_model_builds_the_same_whatever_the_worker_count(depth_models, inverse_depth_photos, tmp_path,
                                                               monkeypatch):
    """The model runs in the main process in fixed chunks of --depth-batch sources (workers never load it), so
    a build with 2 workers is byte-identical to one with 1, and a resumed build to an uninterrupted one."""
    import transformers
    monkeypatch.setattr(transformers.DepthAnythingForDepthEstimation, "forward", brightness_forward)
    folder = inverse_depth_photos[0]
    args = ["--rgb", str(folder), "--tasks", "depth,shuffle", "--n", "10", "--per-source", "3", "--test-fraction", "0",
            "--sft-size", "0", "--depth-batch", "3", "--depth-model", depth_models["relative"], "--sync-seconds", "0"]
    build(tmp_path / "one", *args, "--workers", "1")
    build(tmp_path / "two", *args, "--workers", "2")
    assert folder_bytes(tmp_path / "one") == folder_bytes(tmp_path / "two")
    shutil.copytree(tmp_path / "one", tmp_path / "resumed")
    journal = (tmp_path / "resumed" / "progress.jsonl").read_bytes().splitlines(keepends=True)
    (tmp_path / "resumed" / "progress.jsonl").write_bytes(b"".join(journal[:len(journal) // 2]))
    (tmp_path / "resumed" / "stats.json").unlink()
    build(tmp_path / "resumed", *args, "--workers", "1", "--resume")
    assert folder_bytes(tmp_path / "resumed") == folder_bytes(tmp_path / "one")


def test_check_depth_reports_agreement_with_the_depth_files(depth_models, inverse_depth_photos, tmp_path,
                                                            monkeypatch, capsys):
    """--check-depth: the fake inverse-depth model agrees with the depth files on every question when read as
    relative depth and on none when (wrongly) read as metric depth; the tiny random model gives some number
    (meaningless by construction). Nothing is written, --out is not touched."""
    folder = inverse_depth_photos[0]
    args = ["--rgbd", str(folder), "--check-depth", "--n", "50"]
    report = build(tmp_path / "never", *args, "--depth-model", depth_models["relative"])
    assert 0 <= report["same_answer"] <= 1 and report["questions"] == 3      # 3 of the 6 photos have depth files
    assert "same answer as the depth file" in capsys.readouterr().out
    import transformers
    monkeypatch.setattr(transformers.DepthAnythingForDepthEstimation, "forward", brightness_forward)
    assert build(tmp_path / "never", *args, "--depth-model", depth_models["relative"])["same_answer"] == 1.0
    wrong = build(tmp_path / "never", *args, "--depth-model", depth_models["metric"])
    assert wrong["same_answer"] == 0.0 and wrong["pairs_same_order"] == 0.0
    assert not (tmp_path / "never").exists()


def test_depth_model_bad_input_is_one_line_and_writes_nothing(depth_models, tmp_path):
    """A model not in the cache (offline: never downloaded), a model that is not a depth model, --depth-model
    on the built-in scenes, --tasks position with a relative model, --check-depth without --rgbd and a
    misspelt option: each one line, exit 2, nothing written."""
    photos = small_photos(tmp_path / "photos", ["a.jpg", "b.jpg"])
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    out = tmp_path / "out"
    cases = [(["--rgb", photos, "--depth-model", "nobody/no-such-depth-model"], "never downloads"),
             (["--rgb", photos, "--depth-model", tmp_path / "gpt2"], "not a depth-estimation model"),
             (["--depth-model", depth_models["relative"]], "give --rgb DIR"),
             (["--rgb", photos, "--depth-model", depth_models["relative"], "--tasks", "depth,position"],
              "--tasks position needs metric depth"),
             (["--rgb", photos, "--depth-model", depth_models["relative"], "--check-depth"], "give both"),
             (["--rgb", photos, "--depth-modle", depth_models["relative"]], "unrecognized arguments")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for args, message in cases:
        run = subprocess.run([sys.executable, str(HERE / "make_data.py"), "--out", str(out), *SMALL, *map(str, args)],
                             capture_output=True, text=True, timeout=120, env=env)
        assert run.returncode == 2 and run.stderr.count("\n") == 1, (args, run.stderr)
        assert run.stderr.startswith("make_data.py: error: ") and message in run.stderr, (args, run.stderr)
        assert not out.exists()
    metric = make_data.prepare(make_data.parse_config(["--out", str(out), "--rgb", str(photos), "--depth-model",
                                                       depth_models["metric"], "--tasks", "depth,position",
                                                       "--test-fraction", "0", "--sft-size", "0"]))
    assert metric.quotas == {"depth": 250, "position": 250} and metric.depth_model.kind == "metric"


# ---------------------------------------------------------------------------------------- rotation in the builder
def test_rotation_is_opt_in_and_reported(tmp_path):
    """rotation is not in --tasks auto (the paper's five) and is built when named: its records are verified by
    tasks.py, its cold-start traces earn the full reward, and the shortcut report has its rows."""
    assert "rotation" not in make_data.parse_tasks("auto", tasks.TASKS)
    out = tmp_path / "rot"
    stats = build(out, "--tasks", "rotation,shuffle", "--n", "16", "--sft-size", "4", "--test-fraction", "0")
    records = [r for s in ("train", "test") for r in read_jsonl(out / f"{s}.jsonl")]
    rotation = [r for r in records if r["task"] == "rotation"]
    assert len(rotation) == 8 and {r["answer"] for r in rotation} <= {"0", "90", "180", "270"}
    sft = [r for r in read_jsonl(out / "sft.jsonl") if r["task"] == "rotation"]
    assert sft
    for r in rotation + sft:
        assert Image.open(out / r["images"][0]).size[0] == Image.open(out / r["images"][0]).size[1]
        if "response" in r:
            assert tasks.reward(r["response"], r["answer"], r["task"]) == pytest.approx(1.0)
    heuristics = {row["heuristic"] for row in stats["shortcuts"] if row["task"] == "rotation"}
    assert len(heuristics) == 3 and any("brightest edge" in h for h in heuristics)


def test_demo_data_options_short_prompts_and_answer_only_traces(tmp_path, capsys):
    """demo.sh's data options: --short-prompts writes each task's short problem (tasks.Task.short: the same
    question and answer format), --answer-only-traces cold-start responses that are only the answer, well formed
    and right by the task's verifier; a task without a short problem is refused in one line."""
    out = tmp_path / "d"
    build(out, "--n", "12", "--tasks", "flip,depth", "--sft-size", "4", "--test-fraction", "0.3", "--short-prompts",
          "--answer-only-traces")
    for split in ("train", "test", "sft"):
        for r in read_jsonl(out / f"{split}.jsonl"):
            assert r["problem"] == tasks.TASK_SPECS[r["task"]].short and r["problem"].count("<image>") == 1
    sft = read_jsonl(out / "sft.jsonl")
    assert sft and all(r["response"] == f"<think></think> \\boxed{{{r['answer']}}}" for r in sft)
    assert all(tasks.reward_terms(r["response"], r["answer"], r["task"], r["problem"]) == (1.0, 1.0, 1.0) for r in sft)
    with pytest.raises(make_data.SetupError, match="crop has no short problem text"):
        build(tmp_path / "e", "--n", "12", "--tasks", "flip,crop", "--short-prompts")
    assert not (tmp_path / "e").exists()


# =============================================================================================
# --release: the authors' formats (EasyR1 parquet, LLaMA-Factory JSON), read back by records.read_records
# =============================================================================================
@pytest.fixture(scope="module")
def release_build(scene_build, tmp_path_factory):
    """scene_build copied, then continued with --resume --release (a finished build adds the release files)."""
    pytest.importorskip("pyarrow")
    out = tmp_path_factory.mktemp("release") / "ds"
    shutil.copytree(scene_build, out)
    build(out, *SCENE_ARGS, "--workers", "1", "--resume", "--release")
    return out


def test_release_parquet_round_trip_and_official_reward(release_build):
    """parquet/{train,test}.parquet (EasyR1's @train / @test files) read back through records.read_records as
    the same records: ids, problem, answer, the image bytes of our files (embedded, with our paths), task
    None (scored by the official exact match) and the pretext folder; the official reward gives 1.0 to
    every canonical answer written."""
    out = release_build
    assert sorted(p.name for p in (out / "parquet").iterdir()) == ["test.parquet", "train.parquet"]
    for split in ("train", "test"):
        ours = read_jsonl(out / f"{split}.jsonl")
        back, root = records.read_records(str(out / "parquet" / f"{split}.parquet"))
        assert ours and root == (out / "parquet").resolve()   # the images are embedded: no root needed
        assert [(r["id"], r["problem"], r["answer"]) for r in back] == [(r["id"], r["problem"], r["answer"])
                                                                        for r in ours]
        assert [[im["bytes"] for im in r["images"]] for r in back] == \
            [[(out / im).read_bytes() for im in r["images"]] for r in ours]
        assert [[im["path"] for im in r["images"]] for r in back] == [r["images"] for r in ours]
        assert all(b["task"] is None and b["pretext"] == r["task"] for b, r in zip(back, ours))
        for r in back:
            records.check_record(r, root, decode=True)
            assert tasks.reward_terms(f"<think>.</think> \\boxed{{{r['answer']}}}", r["answer"], None) == (1.0, 1.0, 1.0)


def test_release_llamafactory_json_round_trip(release_build):
    """SFT-coldstart.json + dataset_info.json: LLaMA-Factory's alpaca records with the CoT instruction in the
    user text and images relative to OUT (its media_dir), registered as "coldstart" with the release's column
    mapping; read_records gives back our ids, problems, responses and images, and the answer it reads from
    the response (the official rule's last \\boxed{}) is the canonical answer, so the cold start teaches
    exactly the strings the exact-match reward compares."""
    out = release_build
    info = json.loads((out / "dataset_info.json").read_text())
    assert info == {"coldstart": {"file_name": "SFT-coldstart.json", "formatting": "alpaca", "columns": {
        "prompt": "instruction", "query": "input", "response": "output", "images": "images"}}}
    rows = json.loads((out / "SFT-coldstart.json").read_text())
    ours = read_jsonl(out / "sft.jsonl")
    assert [r["instruction"] for r in rows] == [tasks.with_cot(r["problem"]) for r in ours]
    assert all(r["input"] == "" and all((out / im).is_file() for im in r["images"]) for r in rows)
    back, root = records.read_records(str(out / "SFT-coldstart.json"))
    assert [(r["id"], r["problem"], r["response"], r["answer"]) for r in back] == \
        [(r["id"], r["problem"], r["response"], r["answer"]) for r in ours]
    assert [[Path(im).read_bytes() for im in r["images"]] for r in back] == \
        [[(out / im).read_bytes() for im in r["images"]] for r in ours]
    assert all(tasks.reward_terms(r["response"], r["answer"], None)[1] == 1.0 for r in back)


def test_release_without_pyarrow_is_one_line(monkeypatch, tmp_path):
    """--release without pyarrow: the usual one-line error before anything is built; the writer says the same."""
    real = make_data.importlib.util.find_spec
    monkeypatch.setattr(make_data.importlib.util, "find_spec", lambda n, *a: None if n == "pyarrow" else real(n, *a))
    with pytest.raises(SetupError, match=r"--release .* needs pyarrow \(pip install pyarrow\)"):
        build(tmp_path / "x", "--n", "4", "--release")
    assert not (tmp_path / "x").exists()
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(SetupError, match=r"needs pyarrow \(pip install pyarrow\)"):
        records.write_parquet(tmp_path / "t.parquet", [], tmp_path)
