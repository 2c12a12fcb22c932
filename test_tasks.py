"""Tests of the pretext tasks (tasks.py) and the dataset builder (make_data.py).

Each generator is checked against an independent re-derivation from the pixels or the depth map, each
verifier against hand-written accept / reject cases and a fuzz of hostile strings.
"""
import itertools
import random
import time

import numpy as np
import pytest

import tasks


# ----------------------------------------------------------------------------- fixtures
def textured_scene(h=240, w=320, seed=0):
    """A smooth-but-busy RGB image (no two tiles alike) and a depth map: a floor whose depth grows toward
    the top of the image, plus a near box and a far box with flat fronts."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([xx / w * 255, yy / h * 255, 128 + 100 * np.sin(xx / 11) * np.cos(yy / 7)], -1)
    rgb = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
    depth = (1.0 + 9.0 * (1 - yy / h)).astype(np.float32)
    depth[h // 2:h // 2 + 60, 20:120] = 2.0        # a near flat front
    depth[20:80, w - 130:w - 30] = 9.5             # a far flat front
    depth[:4, :] = np.nan                          # some invalid pixels
    return rgb, depth


@pytest.fixture(scope="module")
def scene():
    return textured_scene()


def make(task, scene, seed, **kw):
    rgb, depth = scene
    ex = tasks.generate(task, rgb, depth, np.random.default_rng(seed), **kw)
    assert isinstance(ex, tasks.Example), ex
    return ex


def boxed(content):
    return f"<think>reasoning</think> so \\boxed{{{content}}}"


# ----------------------------------------------------------------------------- extraction, format, reward
def test_extract_boxed_takes_last_balanced():
    assert tasks.extract_boxed("\\boxed{A} then \\boxed{B}") == "B"
    assert tasks.extract_boxed("x \\boxed{ \\frac{1}{2} } y") == "\\frac{1}{2}"
    assert tasks.extract_boxed("\\boxed{A} and an unclosed \\boxed{B") == "A"
    assert tasks.extract_boxed("\\boxed{\\boxed{C}}") == "C"
    assert tasks.extract_boxed("}}} \\boxed{D} {{") == "D"
    assert tasks.extract_boxed("no box here") is None
    assert tasks.extract_boxed("\\boxed{") is None
    assert tasks.extract_boxed(None) is None


@pytest.mark.parametrize("response,ok", [
    ("<think>a</think> \\boxed{B}", True),
    ("  \n<think>a</think>\\boxed{B} done", True),
    ("<think></think>\\boxed{}", True),
    ("answer <think>a</think> \\boxed{B}", False),          # must start with <think>
    ("<think>a \\boxed{B}", False),                          # think never closed
    ("<think>\\boxed{B}</think> B", False),                  # the answer box is inside the reasoning
    ("<think>a</think> \\boxed{B", False),                   # unbalanced box
    ("<think>a</think> B", False),
    ("", False),
])
def test_format_ok(response, ok):
    assert tasks.format_ok(response) is ok


def test_reward_values():
    good = "<think>r</think> \\boxed{C}"
    assert tasks.reward(good, "C", "crop") == pytest.approx(1.0)
    assert tasks.reward("<think>r</think> \\boxed{A}", "C", "crop") == pytest.approx(0.1)
    assert tasks.reward("\\boxed{C}", "C", "crop") == pytest.approx(0.9)
    assert tasks.reward("C", "C", "crop") == 0.0
    assert tasks.reward("<think>r</think> \\boxed{2, 3, 1}", "2, 3, 1", "depth") == pytest.approx(1.0)
    with pytest.raises(ValueError):
        tasks.reward(good, "C", "no-such-task")


@pytest.mark.parametrize("content,ok", [
    ("2, 4, 1, 3", True), ("[2, 4, 1, 3]", True), ("2 4 1 3", True), ("(2,4,1,3).", True),
    ("\\text{2, 4, 1, 3}", True), ("2;4;1;3", True),
    ("2, 4, 1", False), ("2, 4, 1, 3, 1", False), ("2, 2, 1, 3", False), ("1, 3, 0, 2", False),
    ("2, 4, 1, 3 or 1, 2, 3, 4", False), ("2, 4, 1, 3, 2, 4, 1, 3", False), ("٢, ٤, ١, ٣", False),
    ("2413", False), ("", False),
])
def test_sequence_answers(content, ok):
    assert (tasks.reward(boxed(content), "2, 4, 1, 3", "shuffle") == 1.0) is ok


@pytest.mark.parametrize("content,ok", [
    ("3, horizontal", True), ("3 horizontal", True), ("tile 3, flipped horizontally", True), ("(3, Horizontal)", True),
    ("3, vertical", False), ("2, horizontal", False), ("3, horizontal or vertical", False),
    ("3, 4, horizontal", False), ("horizontal", False), ("3", False), ("3, diagonal", False),
    ("3, horizontal, not vertical", False),
])
def test_flip_answers(content, ok):
    assert (tasks.reward(boxed(content), "3, horizontal", "flip") == 1.0) is ok


@pytest.mark.parametrize("content,ok", [
    ("B", True), ("b", True), ("(B)", True), ("B.", True), ("Option B", True), ("\\text{B}", True), (" B ", True),
    ("A", False), ("B or C", False), ("BC", False), ("A, B", False), ("B. Left, or A", False), ("E", False), ("", False),
])
def test_letter_answers(content, ok):
    assert (tasks.reward(boxed(content), "B", "position") == 1.0) is ok


def test_with_cot_appends_the_released_instruction():
    assert tasks.with_cot("  Q? <image> ") == "Q? <image> " + tasks.COT_PROMPT
    assert tasks.COT_PROMPT.startswith("You FIRST think") and tasks.COT_PROMPT.endswith("put in \\boxed{}.")


# ----------------------------------------------------------------------------- every task: determinism and answer space
@pytest.mark.parametrize("task", tasks.TASKS)
def test_same_seed_same_example(task, scene):
    a, b = make(task, scene, 7), make(task, scene, 7)
    assert (a.problem, a.answer, a.meta) == (b.problem, b.answer, b.meta)
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a.images, b.images))
    assert a.problem.count("<image>") == len(a.images)
    answers = {make(task, scene, s).answer for s in range(12)}
    assert len(answers) > 1, "the answer should vary with the seed"


def all_answers(task, ex):
    """Every well-formed answer of this example's answer space."""
    if task in ("shuffle", "depth"):
        truth = [int(v) for v in ex.answer.split(",")]
        if len(truth) <= 6:
            perms = itertools.permutations(truth)
        else:                                  # 9! is too many: every swap of two labels + random orders
            rnd = random.Random(0)
            swaps = [tuple(truth[k] if k not in (i, j) else truth[i + j - k] for k in range(len(truth)))
                     for i, j in itertools.combinations(range(len(truth)), 2)]
            perms = [tuple(truth)] + swaps + [tuple(rnd.sample(truth, len(truth))) for _ in range(300)]
        return list(dict.fromkeys(", ".join(map(str, p)) for p in perms))
    if task == "flip":
        return [f"{t}, {d}" for t in range(1, 5) for d in tasks.FLIP_DIRECTIONS]
    return list(tasks.LETTERS)


@pytest.mark.parametrize("task,kw", [("shuffle", {}), ("shuffle", {"grid": (3, 3)}), ("flip", {}),
                                     ("crop", {}), ("depth", {}), ("position", {})])
def test_verifier_accepts_truth_and_rejects_every_other_answer(task, kw, scene):
    ex = make(task, scene, 3, **kw)
    space = all_answers(task, ex)
    assert ex.answer in space
    for cand in space:
        assert tasks.accuracy(boxed(cand), ex.answer, task) == float(cand == ex.answer)
    assert tasks.reward(tasks.reasoning_trace(ex), ex.answer, task) == pytest.approx(1.0)


# ----------------------------------------------------------------------------- independent re-derivation from pixels
def tile_view(img, r, c, th, tw):
    """The part of a displayed tile that no label or border touches: its bottom-right quadrant, inset."""
    inset = max(2, min(th, tw) // 100) + 1
    return img[r * th + th // 2:(r + 1) * th - inset, c * tw + tw // 2:(c + 1) * tw - inset]


@pytest.mark.parametrize("grid", [(2, 2), (3, 3), (2, 3)])
def test_shuffle_answer_restores_the_original(grid, scene):
    rgb = scene[0]
    rows, cols = grid
    th, tw = rgb.shape[0] // rows, rgb.shape[1] // cols
    for seed in range(4):
        ex = make("shuffle", scene, seed, grid=grid)
        shown = np.asarray(ex.images[0])
        assert shown.shape == (rows * th, cols * tw, 3)
        labels = [int(v) for v in ex.answer.split(",")]
        for pos, label in enumerate(labels):              # original raster position pos is shown at slot label-1
            r, c = divmod(pos, cols)
            sr, sc = divmod(label - 1, cols)
            got = tile_view(shown, sr, sc, th, tw)
            if (got == 255).all():
                white = label
                continue
            want = tile_view(rgb[:rows * th, :cols * tw], r, c, th, tw)
            assert np.array_equal(got, want), f"seed {seed}: position {pos} not restored by label {label}"
        assert white == ex.meta["white_label"]


def test_flip_unflipping_the_named_tile_restores_the_original(scene):
    rgb = scene[0]
    th, tw = rgb.shape[0] // 2, rgb.shape[1] // 2
    seen = set()
    for seed in range(16):
        ex = make("flip", scene, seed)
        shown = np.asarray(ex.images[0])
        tile, direction = tasks.parse_flip(ex.answer)
        seen.add(direction)
        for k in range(4):
            r, c = divmod(k, 2)
            orig = rgb[r * th:(r + 1) * th, c * tw:(c + 1) * tw]
            if k + 1 == tile:
                orig = orig[:, ::-1] if direction == "horizontal" else orig[::-1]
            # the displayed tile equals the original (or its flip, for the named tile) away from the overlay
            assert np.array_equal(tile_view(shown, r, c, th, tw), tile_view(orig, 0, 0, th, tw)), (seed, k)
    assert seen == {"horizontal", "vertical"}


def test_crop_true_candidate_is_the_masked_pixels(scene):
    rgb = scene[0]
    for seed in range(6):
        ex = make("crop", scene, seed)
        x, y, s = ex.meta["box"]
        assert s == min(rgb.shape[:2]) // 2
        masked = np.asarray(ex.images[0])
        assert (masked[y:y + s, x:x + s] == 0).all()
        outside = np.ones(rgb.shape[:2], bool)
        outside[y:y + s, x:x + s] = False
        assert np.array_equal(masked[outside], rgb[outside])
        hole = rgb[y:y + s, x:x + s]
        matches = [k for k, im in enumerate(ex.images[1:]) if np.array_equal(np.asarray(im), hole)]
        assert matches == [tasks.LETTERS.index(ex.answer)]
        assert sorted(ex.meta["candidates"]).count("true") == 1 and len(set(ex.meta["candidates"])) == 4


def test_crop_distractors_are_what_they_claim():
    rgb = textured_scene()[0]
    x, y, s = 100, 60, 64
    crop = rgb[y:y + s, x:x + s]
    assert np.array_equal(tasks.crop_distractor(rgb, x, y, s, "rotate_left")[0, :], crop[:, -1])   # top row = old right column
    assert np.array_equal(tasks.crop_distractor(rgb, x, y, s, "rotate_right")[:, -1], crop[0, :])  # right column = old top row
    for kind in ("zoom_in", "expand_quarter", "expand_half"):
        assert tasks.crop_distractor(rgb, x, y, s, kind).shape == (s, s, 3)


def marker_pixels(ex, rgb):
    return np.abs(np.asarray(ex.images[0]).astype(int) - rgb.astype(int)).sum(-1) > 0


def check_markers(ex, rgb, regions):
    """Markers are drawn exactly around the regions' centres, and nowhere else."""
    changed = marker_pixels(ex, rgb)
    yy, xx = np.nonzero(changed)
    radius = 0.6 * ex.meta["cell"] + 2
    near = np.zeros(len(yy), bool)
    for reg in regions:
        cx, cy = reg["center"]
        inside = np.hypot(xx - cx, yy - cy) <= radius
        assert inside.sum() > 0.3 * np.pi * radius ** 2, "marker missing"
        near |= inside
    assert near.all(), "pixels changed away from the markers"


def test_depth_answer_matches_the_depth_map(scene):
    rgb, depth = scene
    dn = tasks.normalise_depth(depth)
    for seed in range(6):
        ex = make("depth", scene, seed)
        regions = ex.meta["regions"]
        by_label = {r["label"]: r for r in regions}
        true_depth = {lab: float(np.median(depth[r["box"][1]:r["box"][3], r["box"][0]:r["box"][2]]))
                      for lab, r in by_label.items()}
        order = [int(v) for v in ex.answer.split(",")]
        assert sorted(order) == [1, 2, 3]
        assert true_depth[order[0]] < true_depth[order[1]] < true_depth[order[2]]
        for r in regions:                                   # each region flat, in its band
            box = dn[r["box"][1]:r["box"][3], r["box"][0]:r["box"][2]]
            assert np.isfinite(box).all() and box.max() - box.min() < tasks.REGION_MAX_RANGE
        check_markers(ex, rgb, regions)


def position_by_rotation(dx, dz, facing):
    """Independent recomputation: rotate the target offset into the camera frame with a complex number
    (forward = real axis, left = positive imaginary axis) and read the sectors off the signs."""
    def sign(v, big):
        return 0 if abs(v) < tasks.POSITION_SMALL * big else (1 if v > 0 else -1)
    v = complex(sign(dx, tasks.POSITION_X_BIG), sign(dz, tasks.POSITION_Z_BIG))
    heading = {"left": 1j * 1j, "right": 1, "toward": -1j, "away": 1j}[facing]   # unit vector in the x-z plane
    local = v / heading
    ahead = {1: "Front", -1: "Back", 0: ""}[int(np.sign(local.real))]
    side = {1: "Left", -1: "Right", 0: ""}[int(np.sign(local.imag))]
    return "-".join(p for p in (side, ahead) if p)


def test_position_answer_agrees_with_geometry():
    seen = set()
    for k in range(3):
        rgb, depth = textured_scene(seed=k)
        dn = tasks.normalise_depth(depth)
        w = rgb.shape[1]
        for seed in range(10):
            ex = tasks.generate("position", rgb, depth, np.random.default_rng(seed))
            if isinstance(ex, tasks.Rejected):
                continue
            m = ex.meta
            cam, tgt = m["camera"], m["target"]
            med = lambda b, a: float(np.median(a[b[1]:b[3], b[0]:b[2]]))
            dx = (tgt["center"][0] - cam["center"][0]) / w
            dz = med(tgt["box"], dn) - med(cam["box"], dn)
            assert np.sign(dz) == np.sign(med(tgt["box"], depth) - med(cam["box"], depth)) or abs(dz) < 1e-6
            rel = position_by_rotation(dx, dz, m["facing"])
            assert m["options"][tasks.LETTERS.index(ex.answer)] == rel
            assert f"stand at region {cam['label']}" in ex.problem and f"where is region {tgt['label']}" in ex.problem
            assert np.hypot(*(np.subtract(tgt["center"], cam["center"]))) >= min(rgb.shape[:2]) / 8
            check_markers(ex, rgb, [cam, tgt])
            seen.add(m["relation"])
    assert len(seen) >= 4, seen


def test_relation_table_matches_the_official_one():
    """The official Position.py table (facing × offsets), here with clear offsets of ±0.5."""
    b = 0.5
    assert [tasks.relation(b, 0, f) for f in tasks.FACINGS] == ["Back", "Front", "Left", "Right"]
    assert [tasks.relation(0, b, f) for f in tasks.FACINGS] == ["Right", "Left", "Back", "Front"]
    assert [tasks.relation(b, b, f) for f in tasks.FACINGS] == ["Right-Back", "Left-Front", "Left-Back", "Right-Front"]
    assert [tasks.relation(-b, -b, f) for f in tasks.FACINGS] == ["Left-Front", "Right-Back", "Right-Front", "Left-Back"]
    assert tasks.relation(0.01, 0.01, "left") is None                     # no clear offset
    assert tasks.relation(0.8 * tasks.POSITION_X_BIG, 0.5, "away") is None  # dead band: ambiguous


# ----------------------------------------------------------------------------- rejections
def test_rejections_say_why():
    rng = np.random.default_rng(0)
    flat = np.full((200, 200, 3), 90, np.uint8)
    assert tasks.generate("shuffle", flat, rng=rng).reason == "look-alike-tiles"
    assert tasks.generate("flip", flat, rng=rng).reason == "flip-symmetric-tile"
    assert tasks.generate("crop", flat, rng=rng).reason == "look-alike-candidates"
    tiny = np.zeros((30, 30, 3), np.uint8)
    assert tasks.generate("shuffle", tiny, rng=rng).reason == "too-small"
    assert tasks.generate("crop", tiny, rng=rng).reason == "too-small"
    rgb, depth = textured_scene()
    assert tasks.generate("depth", rgb, np.zeros_like(depth), rng).reason == "no-valid-depth"
    assert tasks.generate("depth", rgb, np.full_like(depth, 3.0), rng).reason == "constant-depth"
    assert tasks.generate("position", rgb, depth[:-1], rng).reason == "depth-size-mismatch"
    noisy = np.random.default_rng(1).uniform(1, 10, depth.shape).astype(np.float32)   # nothing flat
    assert tasks.generate("depth", rgb, noisy, rng).reason == "no-region-in-band"
    assert tasks.generate("position", rgb, noisy, rng).reason == "no-flat-regions"
    with pytest.raises(ValueError):
        tasks.generate("depth", rgb, None, rng)
    with pytest.raises(ValueError):
        tasks.generate("flip", rgb.astype(np.float32), rng=rng)


# ----------------------------------------------------------------------------- fuzz
FUZZ_PIECES = ["\\boxed{", "{", "}", "<think>", "</think>", "\\text{", " ", ",", "1", "2", "3", "4", "A", "B",
               "D", "horizontal", "vertical", "or", "é", "😀", "\u202e", "\x00", "\\", "[", "]", "(", ")", "\n"]


def test_fuzz_verifiers_never_raise_and_never_accept_a_missing_answer():
    """Random strings built without the token the right answer needs (here 'C', the tile number '3' or
    the label '3') can never score accuracy 1: no false positive, and no exception."""
    rnd = random.Random(0)
    cases = [("crop", "C"), ("flip", "3, horizontal"), ("depth", "2, 3, 1"), ("shuffle", "2, 4, 1, 3")]
    for task, answer in cases:
        pieces = [p for p in FUZZ_PIECES if "3" not in p] if task != "crop" else FUZZ_PIECES
        for _ in range(400):
            s = "".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 40)))
            r = tasks.reward(s, answer, task)
            assert r in (0.0, 0.1)
    for _ in range(300):                      # any string at all: never raises, reward in the allowed set
        s = "".join(rnd.choice(FUZZ_PIECES + ["C", "3"]) for _ in range(rnd.randint(0, 60)))
        for task, answer in cases:
            assert tasks.reward(s, answer, task) in (0.0, 0.1, 0.9, 1.0)


@pytest.mark.parametrize("hostile", [
    "\\boxed{" * 200_000,
    "{" * 1_000_000 + "\\boxed{C}",
    "<think>" + "}" * 1_000_000 + "</think>\\boxed{C}",
    "\\boxed{" * 50_000 + "C" + "}" * 50_000,
    "<think>" + "x" * 2_000_000 + "</think>\\boxed{" + "C" * 1_000_000 + "}",
    "\\boxed{\\boxed{\\boxed{" + "😀" * 300_000,
])
def test_hostile_strings_are_fast(hostile):
    t0 = time.perf_counter()
    for task, answer in [("crop", "C"), ("shuffle", "2, 4, 1, 3"), ("flip", "3, vertical")]:
        tasks.reward(hostile, answer, task)
    assert time.perf_counter() - t0 < 3.0


def test_deeply_nested_box_is_read_correctly():
    s = "<think>t</think>" + "\\boxed{" * 50_000 + "C" + "}" * 50_000
    assert tasks.extract_boxed(s) == "C"
    assert tasks.reward(s, "C", "crop") == pytest.approx(1.0)
