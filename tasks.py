"""The five Spatial-SSRL pretext tasks: generators, canonical answers, verifiers and the reward.

Stage 1 of Spatial-SSRL (arXiv 2510.27606, §3): ordinary RGB / RGB-D images are turned into questions
whose answers are known by construction, so no human labels are needed. This file is the single source
of truth for what a correct answer is: make_data.py builds the dataset with the generators, sft.py uses
the templated reasoning traces, grpo.py and evaluate.py score responses with reward().

    ex = generate("depth", rgb, depth, np.random.default_rng(0))   # -> Example | Rejected
    reward("<think>...</think> \\boxed{2, 3, 1}", ex.answer, "depth")  # 0.9·accuracy + 0.1·format

| task     | images shown                    | canonical answer (inside \\boxed{})             |
|----------|---------------------------------|-------------------------------------------------|
| shuffle  | shuffled, labelled grid         | labels in original raster order: "2, 4, 1, 3"   |
| flip     | 2×2 labelled grid, one flipped  | tile and direction: "3, horizontal"             |
| crop     | masked image + 4 candidates     | letter of the true patch: "C"                   |
| depth    | image with markers 1-3          | markers from nearest to farthest: "2, 3, 1"     |
| position | image with markers 1, 2         | letter of the relation option: "B"              |

Paper → code
  §3.1 shuffled patch reordering  → make_shuffle()      §3.1 flipped patch recognition → make_flip()
  §3.1 cropped patch inpainting   → make_crop()         §3.1 regional depth ordering   → make_depth()
  §3.1 relative 3D position       → make_position(), relation()
  §3.3 reward r = 0.9·acc + 0.1·fmt → reward(), accuracy(), format_ok(), extract_boxed()
  cold-start CoT data (§3.2)      → reasoning_trace()   CoT instruction → COT_PROMPT, with_cot()

Deviations from the paper / official data scripts (data_process/*.py)
  1. Question texts and answer strings are our own (the official ones are not released as code).
  2. Tile labels and markers are 1-based, drawn with Pillow on the original-resolution image with a
     font sized relative to the image (official: 0-based, matplotlib re-render, tiny default font).
  3. Flip has a ground truth (tile, direction) with both directions equally likely (official: crashes,
     no ground truth). Ambiguous examples (repeated tiles, flip-symmetric tile, look-alike distractors)
     are rejected instead of emitted.
  4. Depth/Position regions are flat grid cells found with vectorised block statistics, not per-pixel
     Python loops; Depth also requires a minimum pixel distance between the markers.
  5. Position thresholds are relative: |Δx| as a fraction of the image width, Δz in robust-normalised
     depth, with a dead band around each threshold so that every answer is unambiguous (official: raw
     150 px and min-max normalised depth). Robust percentiles are computed on a strided subsample.
  6. Reasoning traces are templated from each example's metadata (the paper used LVLM-written traces).
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# ----------------------------------------------------------------------------- constants
TASKS = ("shuffle", "flip", "crop", "depth", "position")
RGB_TASKS = ("shuffle", "flip", "crop")
DEPTH_TASKS = ("depth", "position")

# The CoT instruction the released Spatial-SSRL checkpoints were trained with (EasyR1 math.jinja).
COT_PROMPT = ("You FIRST think about the reasoning process as an internal monologue and then provide the final "
              "answer. The reasoning process MUST BE enclosed within <think> </think> tags. The final answer "
              "MUST BE put in \\boxed{}.")

MIN_TILE = 24            # px: smallest tile side for shuffle / flip
MIN_CROP = 32            # px: smallest masked square for crop
SAME_THRESHOLD = 3.0     # mean |Δ| on 0..255 below which two patches count as the same picture
FLIP_DIRECTIONS = ("horizontal", "vertical")   # horizontal = mirrored left-right, vertical = upside down
CROP_DISTRACTORS = ("rotate_left", "rotate_right", "zoom_in", "expand_quarter", "expand_half")
DEPTH_BANDS = ((0.0, 0.3), (0.35, 0.65), (0.7, 1.0))   # normalised depth bands: near, middle, far
REGION_MAX_RANGE = 0.15  # a marked region is flat: normalised depth range below this
REGION_MIN_GAP = 0.05    # depth regions: gap between their depth intervals above this
POSITION_X_BIG = 0.15    # |Δx| / width above this is a clear left/right offset (official: 150 px)
POSITION_Z_BIG = 0.25    # |Δz| (normalised) above this is a clear front/back offset (official: 0.25)
POSITION_SMALL = 0.5     # an offset counts as negligible below POSITION_SMALL · threshold (dead band between)
FACINGS = ("left", "right", "toward", "away")
FACING_WEIGHTS = (0.3, 0.3, 0.3, 0.1)
SIMPLE_RELATIONS = ("Left", "Right", "Front", "Back")
COMPOUND_RELATIONS = ("Left-Front", "Right-Front", "Right-Back", "Left-Back")
LETTERS = "ABCD"
MAX_ANSWER_CHARS = 200   # no valid boxed answer is longer; longer content is rejected without parsing


@dataclass
class Example:
    """One question: images shown in order, problem text with one <image> per image, canonical answer."""
    task: str
    images: list
    problem: str
    answer: str
    meta: dict = field(default_factory=dict)


@dataclass
class Rejected:
    """This source image cannot give a unique, valid example; reason is a short stable slug."""
    reason: str


def with_cot(problem: str) -> str:
    """The prompt text the model sees: problem, one space, the CoT instruction (as EasyR1's math.jinja)."""
    return problem.strip() + " " + COT_PROMPT


# ----------------------------------------------------------------------------- verification
_BOX_TOKEN = re.compile(r"\\boxed\{|[{}]")
_TEXT_WRAP = re.compile(r"\\(?:text|mathrm|textbf|mathbf)\{([^{}]*)\}")


def _last_box(text: str) -> tuple[int, int] | None:
    """(start, end) of the content of the last balanced \\boxed{…}: the one that opens last.

    One linear pass keeping a brace depth and a stack of the open boxes only, so megabyte strings and
    deep nesting stay fast. A stray '}' at depth 0 is ignored. Braces before the first box cannot change
    which boxes balance, so the scan starts there."""
    depth, open_boxes, best = 0, [], None          # open_boxes: (depth at its opening, content start)
    for m in _BOX_TOKEN.finditer(text, max(0, text.find("\\boxed{"))):
        if m.group() != "}":
            if m.group() != "{":
                open_boxes.append((depth, m.end()))
            depth += 1
        elif depth > 0:
            depth -= 1
            if open_boxes and open_boxes[-1][0] == depth:
                start = open_boxes.pop()[1]
                if best is None or start > best[0]:
                    best = (start, m.start())
    return best


def extract_boxed(text: str) -> str | None:
    """Content of the last balanced \\boxed{…}, stripped; None if there is none."""
    if not isinstance(text, str) or "\\boxed{" not in text:
        return None
    span = _last_box(text)
    return None if span is None else text[span[0]:span[1]].strip()


def format_ok(response: str) -> bool:
    """Format reward: the response starts with <think>, closes it, and then gives a balanced \\boxed{}."""
    if not isinstance(response, str):
        return False
    text = response.strip()
    if not text.startswith("<think>"):
        return False
    close = text.find("</think>")
    span = _last_box(text) if close >= 0 else None
    return span is not None and span[0] > close


def _clean(content: str) -> str:
    """Drop harmless wrappers: \\text{…}, one pair of outer brackets, a trailing full stop."""
    s = _TEXT_WRAP.sub(r"\1", content).strip().rstrip(".").strip()
    if len(s) >= 2 and s[0] + s[-1] in ("[]", "()", "{}"):
        s = s[1:-1].strip()
    return s.rstrip(".").strip()


def parse_sequence(content: str, n: int) -> tuple | None:
    """'2, 4, 1, 3' / '[2 4 1 3]' -> (2, 4, 1, 3) if it is exactly a permutation of 1..n, else None."""
    tokens = [t for t in re.split(r"[\s,;]+", _clean(content)) if t]
    if len(tokens) != n or not all(t.isascii() and t.isdigit() for t in tokens):
        return None
    values = tuple(int(t) for t in tokens)
    return values if sorted(values) == list(range(1, n + 1)) else None


_FLIP_FILLER = {"tile", "patch", "is", "the", "flipped", "flip", "label", "number"}


def parse_flip(content: str) -> tuple | None:
    """'3, horizontal' / 'tile 3 (flipped vertically)' -> (3, 'horizontal'); None unless exactly one tile
    number and exactly one direction are named."""
    words = re.findall(r"[a-z]+|\d+|[^\sa-z\d,;:()\[\].]", _clean(content).lower())
    numbers = [w for w in words if w.isdigit()]
    dirs = [w.removesuffix("ly") for w in words if w.removesuffix("ly") in FLIP_DIRECTIONS]
    others = [w for w in words if not w.isdigit() and w.removesuffix("ly") not in FLIP_DIRECTIONS]
    if len(numbers) != 1 or len(dirs) != 1 or any(w not in _FLIP_FILLER for w in others):
        return None
    return int(numbers[0]), dirs[0]


def parse_letter(content: str) -> str | None:
    """'B' / '(B)' / 'B.' / 'Option B' / '\\text{B}' -> 'B'; anything naming more than a letter -> None."""
    m = re.fullmatch(r"(?:option\s*)?([a-d])\s*[.:)]?", _clean(content), flags=re.IGNORECASE)
    return m.group(1).upper() if m else None


def _parse(task: str, content: str, answer: str):
    if task in ("shuffle", "depth"):
        return parse_sequence(content, len(answer.split(",")))
    if task == "flip":
        return parse_flip(content)
    if task in ("crop", "position"):
        return parse_letter(content)
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")


def accuracy(response: str, answer: str, task: str) -> float:
    """1.0 if the last \\boxed{} parses to the same answer as the ground truth for this task, else 0.0."""
    truth = _parse(task, answer, answer)
    if truth is None:
        raise ValueError(f"ground truth {answer!r} is not a valid {task} answer")
    content = extract_boxed(response)
    if content is None or len(content) > MAX_ANSWER_CHARS:
        return 0.0
    return float(_parse(task, content, answer) == truth)


def reward(response: str, answer: str, task: str) -> float:
    """Spatial-SSRL reward: r = 0.9·accuracy + 0.1·format ∈ {0, 0.1, 0.9, 1.0}."""
    return 0.9 * accuracy(response, answer, task) + 0.1 * float(format_ok(response))


# ----------------------------------------------------------------------------- drawing
@functools.lru_cache(maxsize=64)
def font(size: float) -> ImageFont.ImageFont:
    """Pillow's bundled scalable font at `size` px (a fixed bitmap font if Pillow lacks FreeType)."""
    try:
        return ImageFont.load_default(size=max(8, int(size)))
    except (TypeError, OSError):
        return ImageFont.load_default()


def _draw_tile_label(draw: ImageDraw.ImageDraw, x: int, y: int, text: str, size: int) -> None:
    """White label with a black outline at the top-left corner (x, y) of a tile: legible on any content."""
    pad = max(2, size // 4)
    draw.text((x + pad, y + pad), text, font=font(size), fill=(255, 255, 255),
              stroke_width=max(1, size // 8), stroke_fill=(0, 0, 0))


def _draw_marker(draw: ImageDraw.ImageDraw, cx: float, cy: float, text: str, radius: float) -> None:
    """A numbered marker: white disc with a black rim and a black number, centred on (cx, cy)."""
    draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=(255, 255, 255),
                 outline=(0, 0, 0), width=max(1, int(radius / 6)))
    draw.text((cx, cy), text, font=font(radius * 1.4), fill=(0, 0, 0), anchor="mm")


def _grid_image(tiles: list, rows: int, cols: int, labels: list[str]) -> Image.Image:
    """Assemble equal tiles row-major, draw tile borders and a label on each tile."""
    th, tw = tiles[0].shape[:2]
    canvas = np.concatenate([np.concatenate(tiles[r * cols:(r + 1) * cols], axis=1) for r in range(rows)], axis=0)
    img = Image.fromarray(canvas)
    draw = ImageDraw.Draw(img)
    line = max(2, min(th, tw) // 100)
    size = max(12, min(th, tw) // 7)
    for k, label in enumerate(labels):
        y, x = (k // cols) * th, (k % cols) * tw
        draw.rectangle((x, y, x + tw - 1, y + th - 1), outline=(0, 0, 255), width=line)
        _draw_tile_label(draw, x, y, label, size)
    return img


def _mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


def _thumb(a: np.ndarray, side: int = 16) -> np.ndarray:
    return np.asarray(Image.fromarray(a).resize((side, side), Image.Resampling.BOX), dtype=np.float32)


def _split_tiles(rgb: np.ndarray, rows: int, cols: int) -> list:
    """Cut the image into rows×cols equal tiles, row-major; the remainder at the bottom/right is dropped."""
    th, tw = rgb.shape[0] // rows, rgb.shape[1] // cols
    return [rgb[r * th:(r + 1) * th, c * tw:(c + 1) * tw] for r in range(rows) for c in range(cols)]


def _has_look_alikes(tiles: list) -> bool:
    """True if two tiles are (nearly) the same picture, so the answer would not be unique."""
    thumbs = np.stack([_thumb(t) for t in tiles]).reshape(len(tiles), -1)
    diffs = np.abs(thumbs[:, None] - thumbs[None]).mean(-1)
    return bool((diffs[~np.eye(len(tiles), dtype=bool)] < SAME_THRESHOLD).any())


# ----------------------------------------------------------------------------- task 1: shuffle
def make_shuffle(rgb: np.ndarray, rng: np.random.Generator, grid: tuple = (2, 2)) -> Example | Rejected:
    """Shuffled patch reordering: displayed slot k shows original tile perm[k]; one displayed tile is white.

    Answer = inverse permutation, 1-based: entry i is the label of the tile that belongs at raster
    position i of the original image."""
    rows, cols = grid
    k = rows * cols
    if rows < 1 or cols < 1 or k < 2:
        raise ValueError(f"shuffle needs a grid of at least two tiles, got {rows}x{cols}")
    if rgb.shape[0] // rows < MIN_TILE or rgb.shape[1] // cols < MIN_TILE:
        return Rejected("too-small")
    tiles = _split_tiles(rgb, rows, cols)
    if _has_look_alikes(tiles):
        return Rejected("look-alike-tiles")
    perm = rng.permutation(k)
    while (perm == np.arange(k)).all():
        perm = rng.permutation(k)
    white = int(rng.integers(k))
    shown = [tiles[p] for p in perm]
    shown[white] = np.full_like(tiles[0], 255)
    img = _grid_image(shown, rows, cols, [str(i + 1) for i in range(k)])
    order = [int(i) + 1 for i in np.argsort(perm)]
    problem = (f"<image>\nThis picture was cut into a grid of {rows} rows and {cols} columns, the tiles were "
               f"shuffled, and each tile got a number label from 1 to {k}. One tile was painted plain white, so it "
               f"has to be placed by elimination. Restore the original picture: reading it row by row from the "
               f"top-left corner, which label belongs at each position? Give the {k} labels in that order, "
               f"separated by commas.")
    meta = {"grid": [rows, cols], "tile_size": [int(tiles[0].shape[0]), int(tiles[0].shape[1])],
            "perm": [int(p) for p in perm], "white_label": white + 1, "order": order}
    return Example("shuffle", [img], problem, ", ".join(map(str, order)), meta)


# ----------------------------------------------------------------------------- task 2: flip
def make_flip(rgb: np.ndarray, rng: np.random.Generator) -> Example | Rejected:
    """Flipped patch recognition: one tile of a 2×2 grid is mirrored left-right (horizontal) or turned
    upside down (vertical), each with probability 1/2. Answer = "tile, direction"."""
    if rgb.shape[0] // 2 < MIN_TILE or rgb.shape[1] // 2 < MIN_TILE:
        return Rejected("too-small")
    tiles = _split_tiles(rgb, 2, 2)
    tile = int(rng.integers(4))
    direction = FLIP_DIRECTIONS[int(rng.integers(2))]
    flipped = tiles[tile][:, ::-1] if direction == "horizontal" else tiles[tile][::-1]
    if _mean_abs_diff(flipped, tiles[tile]) < SAME_THRESHOLD:
        return Rejected("flip-symmetric-tile")
    shown = list(tiles)
    shown[tile] = np.ascontiguousarray(flipped)
    img = _grid_image(shown, 2, 2, ["1", "2", "3", "4"])
    problem = ("<image>\nThis picture is split into four numbered tiles: 1 top-left, 2 top-right, 3 bottom-left, "
               "4 bottom-right. Exactly one tile has been flipped, either mirrored left-to-right (horizontal) or "
               "turned upside down (vertical). Which tile is flipped, and how? Answer with the tile number, a "
               "comma, and the word horizontal or vertical.")
    meta = {"tile": tile + 1, "direction": direction, "tile_size": [int(tiles[0].shape[0]), int(tiles[0].shape[1])]}
    return Example("flip", [img], problem, f"{tile + 1}, {direction}", meta)


# ----------------------------------------------------------------------------- task 3: crop
def _resize(a: np.ndarray, side: int) -> np.ndarray:
    return np.asarray(Image.fromarray(a).resize((side, side), Image.Resampling.BILINEAR))


def crop_distractor(rgb: np.ndarray, x: int, y: int, s: int, kind: str) -> np.ndarray:
    """A hard negative for the s×s crop at (x, y): rotated ±90°, a 2× zoom into its centre, or the
    region grown by s/4 or s/2 on every side (clipped to the image), each resized to s×s."""
    crop = rgb[y:y + s, x:x + s]
    if kind == "rotate_left":
        return np.ascontiguousarray(np.rot90(crop, 1))
    if kind == "rotate_right":
        return np.ascontiguousarray(np.rot90(crop, -1))
    if kind == "zoom_in":
        return _resize(crop[s // 4:s - s // 4, s // 4:s - s // 4], s)
    grow = {"expand_quarter": s // 4, "expand_half": s // 2}[kind]
    y0, x0 = max(0, y - grow), max(0, x - grow)
    return _resize(rgb[y0:y + s + grow, x0:x + s + grow], s)


def make_crop(rgb: np.ndarray, rng: np.random.Generator) -> Example | Rejected:
    """Cropped patch inpainting: a square of side min(H, W)/2 is blacked out; 4 candidates are the true
    crop and 3 distinct distractor types. Answer = letter of the true crop."""
    h, w = rgb.shape[:2]
    s = min(h, w) // 2
    if s < MIN_CROP:
        return Rejected("too-small")
    x, y = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
    kinds = [CROP_DISTRACTORS[i] for i in rng.choice(len(CROP_DISTRACTORS), 3, replace=False)]
    slot = int(rng.integers(4))
    kinds.insert(slot, "true")
    patches = [rgb[y:y + s, x:x + s] if k == "true" else crop_distractor(rgb, x, y, s, k) for k in kinds]
    if _has_look_alikes(patches):
        return Rejected("look-alike-candidates")
    masked = rgb.copy()
    masked[y:y + s, x:x + s] = 0
    images = [Image.fromarray(masked)] + [Image.fromarray(np.ascontiguousarray(p)) for p in patches]
    problem = ("<image>\nA square part of this picture has been blacked out. Which of these four patches is "
               "exactly the missing part, at the same scale and orientation?\nA. <image>\nB. <image>\n"
               "C. <image>\nD. <image>\nAnswer with the letter of the correct patch.")
    meta = {"box": [x, y, s], "candidates": kinds, "slot": slot}
    return Example("crop", images, problem, LETTERS[slot], meta)


# ----------------------------------------------------------------------------- depth regions (tasks 4, 5)
def normalise_depth(depth: np.ndarray) -> np.ndarray | Rejected:
    """Robust normalisation: dn = (d − P0.5) / (P99.5 − P0.5) over valid pixels (finite, > 0).

    Invalid pixels and pixels outside [P0.5, P99.5] become NaN. Percentiles come from a strided
    subsample of at most ~100k pixels (exact enough, and fast at any resolution)."""
    d = np.asarray(depth, dtype=np.float32)
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(d) & (d > 0)
    step = max(1, int(np.sqrt(d.size / 100_000)))
    sample = d[::step, ::step][valid[::step, ::step]]
    if sample.size < 64:
        return Rejected("no-valid-depth")
    lo, hi = (float(v) for v in np.percentile(sample, [0.5, 99.5]))
    if hi - lo <= 1e-6 * max(1.0, abs(hi)):
        return Rejected("constant-depth")
    dn = (d - lo) / (hi - lo)
    dn[~valid | (dn < 0) | (dn > 1)] = np.nan
    return dn


def region_size(h: int, w: int) -> int:
    """Side of a square depth region (grid cell) in pixels: 1/20 of the short side, at least 12."""
    return max(12, min(h, w) // 20)


def flat_regions(dn: np.ndarray, cell: int) -> dict:
    """All grid cells (except the outer ring) that are fully valid and flat: max − min < REGION_MAX_RANGE.

    Returns arrays x0, y0 (top-left pixel), lo, hi (normalised depth range) of those cells."""
    gh, gw = dn.shape[0] // cell, dn.shape[1] // cell
    blocks = dn[:gh * cell, :gw * cell].reshape(gh, cell, gw, cell)
    lo, hi = blocks.min(axis=(1, 3)), blocks.max(axis=(1, 3))          # NaN where any pixel is invalid
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(lo) & np.isfinite(hi) & (hi - lo < REGION_MAX_RANGE)
    ok[[0, -1], :] = False
    ok[:, [0, -1]] = False
    ys, xs = np.nonzero(ok)
    return {"x0": xs * cell, "y0": ys * cell, "lo": lo[ys, xs], "hi": hi[ys, xs]}


def _region_info(depth: np.ndarray, dn: np.ndarray, x0: int, y0: int, cell: int, label: int) -> dict:
    """Describe one marked region: its box, centre, and median raw / normalised depth."""
    box = [int(x0), int(y0), int(x0 + cell), int(y0 + cell)]
    return {"label": int(label), "box": box, "center": [x0 + cell / 2, y0 + cell / 2],
            "depth": float(np.median(depth[y0:y0 + cell, x0:x0 + cell])),
            "depth_norm": float(np.median(dn[y0:y0 + cell, x0:x0 + cell]))}


def _marked_image(rgb: np.ndarray, regions: list, cell: int) -> Image.Image:
    img = Image.fromarray(rgb)
    draw = ImageDraw.Draw(img)
    for r in regions:
        _draw_marker(draw, r["center"][0], r["center"][1], str(r["label"]), radius=0.6 * cell)
    return img


# ----------------------------------------------------------------------------- task 4: depth
def _pick_band_regions(cells: dict, min_dist: float, rng: np.random.Generator) -> list | Rejected:
    """One flat region inside each depth band, their depth intervals > REGION_MIN_GAP apart and their
    centres at least min_dist pixels apart. Returns the cell indices, near to far."""
    in_band = [np.nonzero((cells["lo"] >= a) & (cells["hi"] <= b))[0] for a, b in DEPTH_BANDS]
    if any(len(idx) == 0 for idx in in_band):
        return Rejected("no-region-in-band")
    xy = np.stack([cells["x0"], cells["y0"]], 1).astype(np.float64)
    for _ in range(30):
        pick = [int(rng.choice(idx)) for idx in in_band]
        gaps_ok = all(cells["lo"][pick[i + 1]] - cells["hi"][pick[i]] > REGION_MIN_GAP for i in range(2))
        dists = [np.hypot(*(xy[pick[i]] - xy[pick[j]])) for i, j in ((0, 1), (0, 2), (1, 2))]
        if gaps_ok and min(dists) >= min_dist:
            return pick
    return Rejected("regions-too-close")


def make_depth(rgb: np.ndarray, depth: np.ndarray, rng: np.random.Generator) -> Example | Rejected:
    """Regional depth ordering: 3 flat regions in the near / middle / far bands of the robust-normalised
    depth get markers 1-3 in random order. Answer = marker numbers from nearest to farthest."""
    dn = normalise_depth(depth)
    if isinstance(dn, Rejected):
        return dn
    h, w = dn.shape
    cell = region_size(h, w)
    cells = flat_regions(dn, cell)
    pick = _pick_band_regions(cells, min(h, w) / 8, rng)
    if isinstance(pick, Rejected):
        return pick
    labels = [int(v) + 1 for v in rng.permutation(3)]
    regions = [_region_info(depth, dn, cells["x0"][i], cells["y0"][i], cell, lab) for i, lab in zip(pick, labels)]
    problem = ("<image>\nThree points in this picture are marked with the numbers 1, 2 and 3. Order the marked "
               "points by their distance from the camera, from the nearest to the farthest. Answer with the "
               "three numbers in that order, separated by commas.")
    meta = {"regions": regions, "cell": cell}       # regions listed near to far
    return Example("depth", [_marked_image(rgb, regions, cell)], problem, ", ".join(map(str, labels)), meta)


# ----------------------------------------------------------------------------- task 5: position
_FACING_VECTOR = {"left": (-1, 0), "right": (1, 0), "toward": (0, -1), "away": (0, 1)}   # (x right, z away)
FACING_TEXT = {"left": "the left side of the picture", "right": "the right side of the picture",
               "toward": "the camera that took the picture", "away": "away from the camera, into the scene"}


def _offset_sign(v: float, big: float) -> int | None:
    """+1 / −1 for a clear offset (|v| > big), 0 for a negligible one (|v| < POSITION_SMALL·big),
    None inside the dead band between, where the answer would be ambiguous."""
    if abs(v) > big:
        return 1 if v > 0 else -1
    return 0 if abs(v) < POSITION_SMALL * big else None


def relation(dx: float, dz: float, facing: str) -> str | None:
    """Where the target lies for a camera facing `facing`, in the top-down plane (x = picture right,
    z = away from the viewer). With facing vector f and the camera's right vector r = (f_z, −f_x), the
    target offset v = (sign Δx, sign Δz) is Front/Back by sign(v·f) and Right/Left by sign(v·r);
    compound ("Left-Front") when both are clear. dx is a fraction of the image width, dz normalised depth."""
    sx, sz = _offset_sign(dx, POSITION_X_BIG), _offset_sign(dz, POSITION_Z_BIG)
    if sx is None or sz is None or sx == sz == 0:
        return None
    fx, fz = _FACING_VECTOR[facing]
    front, right = sx * fx + sz * fz, sx * fz - sz * fx
    side = "Right" if right > 0 else "Left" if right < 0 else ""
    ahead = "Front" if front > 0 else "Back" if front < 0 else ""
    return "-".join(p for p in (side, ahead) if p)


def _pick_position_pair(cells: dict, dn: np.ndarray, cell: int, facing: str, rng: np.random.Generator):
    """Random (camera, target) flat regions with an unambiguous relation, centres ≥ min(H, W)/8 apart."""
    h, w = dn.shape
    n = len(cells["x0"])
    if n < 2:
        return Rejected("no-flat-regions")
    for _ in range(60):
        i, j = (int(v) for v in rng.choice(n, 2, replace=False))
        dist = np.hypot(cells["x0"][j] - cells["x0"][i], cells["y0"][j] - cells["y0"][i])
        if dist < min(h, w) / 8:
            continue
        zi, zj = (float(np.median(dn[cells["y0"][k]:cells["y0"][k] + cell, cells["x0"][k]:cells["x0"][k] + cell]))
                  for k in (i, j))
        rel = relation((cells["x0"][j] - cells["x0"][i]) / w, zj - zi, facing)
        if rel is not None:
            return i, j, rel
    return Rejected("no-clear-pair")


def make_position(rgb: np.ndarray, depth: np.ndarray, rng: np.random.Generator) -> Example | Rejected:
    """Relative 3D position: a camera stands at region a facing left / right / toward the viewer / away
    (weights .3/.3/.3/.1). Answer = letter of where region b lies for it (4 lettered options)."""
    dn = normalise_depth(depth)
    if isinstance(dn, Rejected):
        return dn
    cell = region_size(*dn.shape)
    cells = flat_regions(dn, cell)
    facing = FACINGS[int(rng.choice(4, p=FACING_WEIGHTS))]
    pair = _pick_position_pair(cells, dn, cell, facing, rng)
    if isinstance(pair, Rejected):
        return pair
    i, j, rel = pair
    a = int(rng.integers(1, 3))
    cam, tgt = (_region_info(depth, dn, cells["x0"][k], cells["y0"][k], cell, lab) for k, lab in ((i, a), (j, 3 - a)))
    vocab = COMPOUND_RELATIONS if "-" in rel else SIMPLE_RELATIONS
    options = [vocab[k] for k in rng.permutation(4)]
    listing = "\n".join(f"{LETTERS[k]}. {o}" for k, o in enumerate(options))
    problem = (f"<image>\nTwo regions of this picture are marked 1 and 2. Imagine you stand at region {a} and face "
               f"{FACING_TEXT[facing]}. From that viewpoint, where is region {3 - a}? Ignore any difference in "
               f"height between the two regions.\n{listing}\nAnswer with the letter of the correct option.")
    meta = {"camera": cam, "target": tgt, "facing": facing, "relation": rel, "options": options, "cell": cell,
            "dx": float((tgt["box"][0] - cam["box"][0]) / dn.shape[1]),
            "dz": tgt["depth_norm"] - cam["depth_norm"]}
    img = _marked_image(rgb, [cam, tgt], cell)
    return Example("position", [img], problem, LETTERS[options.index(rel)], meta)


# ----------------------------------------------------------------------------- entry point
GENERATORS = {"shuffle": make_shuffle, "flip": make_flip, "crop": make_crop,
              "depth": make_depth, "position": make_position}


def generate(task: str, rgb: np.ndarray, depth: np.ndarray | None = None,
             rng: np.random.Generator | None = None, **options) -> Example | Rejected:
    """Make one example of `task` from an RGB image (H, W, 3) uint8 and, for depth tasks, a depth map
    (H, W) with NaN / 0 / inf marking invalid pixels. Everything random comes from `rng`."""
    if task not in GENERATORS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be an (H, W, 3) uint8 array, got {rgb.shape} {rgb.dtype}")
    rng = np.random.default_rng() if rng is None else rng
    if task in RGB_TASKS:
        return GENERATORS[task](rgb, rng, **options)
    if depth is None:
        raise ValueError(f"task {task!r} needs a depth map")
    depth = np.asarray(depth)
    if depth.ndim == 3 and depth.shape[2] == 1:
        depth = depth[..., 0]
    if depth.shape != rgb.shape[:2]:
        return Rejected("depth-size-mismatch")
    return GENERATORS[task](rgb, depth, rng, **options)


# ----------------------------------------------------------------------------- templated reasoning (cold start)
_CANDIDATE_TEXT = {
    "true": "continues the picture around the hole at the right scale and orientation",
    "rotate_left": "has the right content but turned 90° to the left",
    "rotate_right": "has the right content but turned 90° to the right",
    "zoom_in": "shows only the middle of the missing part, enlarged",
    "expand_quarter": "shows a wider area around the hole, shrunk to fit",
    "expand_half": "shows a much wider area around the hole, shrunk to fit"}
_SIDE_TEXT = {1: "to the right in the picture", -1: "to the left in the picture", 0: "at about the same left-right place"}
_DEPTH_TEXT = {1: "farther from the camera", -1: "closer to the camera", 0: "at about the same depth"}
_FRAME_TEXT = {"left": ("toward the left of the picture", "away from the camera"),
               "right": ("toward the right of the picture", "toward the camera"),
               "toward": ("toward the camera", "toward the left of the picture"),
               "away": ("away from the camera", "toward the right of the picture")}


def _trace_shuffle(m: dict) -> str:
    rows, cols = m["grid"]
    lines = "; ".join(f"row {r + 1}: " + ", ".join(map(str, m["order"][r * cols:(r + 1) * cols])) for r in range(rows))
    return (f"The picture is a {rows}×{cols} grid of shuffled tiles labelled 1 to {rows * cols}. Tile "
            f"{m['white_label']} is plain white, so it goes to the one position no other tile fits. Matching the "
            f"edges and content of the other tiles, the original picture reads {lines}.")


def _trace_flip(m: dict) -> str:
    others = ", ".join(str(k) for k in range(1, 5) if k != m["tile"])
    how = ("its left and right sides are swapped, like a mirror image" if m["direction"] == "horizontal"
           else "it is upside down: what should be at the top is at the bottom")
    return (f"I check whether each tile continues the scene naturally. Tiles {others} look right. Tile {m['tile']} "
            f"does not: {how}. So tile {m['tile']} is flipped {m['direction']}ly.")


def _trace_crop(m: dict) -> str:
    parts = [f"candidate {LETTERS[k]} {_CANDIDATE_TEXT[kind]}" for k, kind in enumerate(m["candidates"])]
    return (f"The black square is {m['box'][2]}×{m['box'][2]} pixels. Comparing each candidate with its "
            f"surroundings: " + "; ".join(parts) + f". Only candidate {LETTERS[m['slot']]} fits exactly.")


def _trace_depth(m: dict) -> str:
    parts = [f"marker {r['label']} sits at depth ≈ {r['depth']:.3g}" for r in m["regions"]]
    return ("Looking at the surfaces under the markers: " + ", ".join(parts) + ". From nearest to farthest: "
            + ", ".join(str(r["label"]) for r in m["regions"]) + ".")


def _trace_position(m: dict) -> str:
    sx = _offset_sign(m["dx"], POSITION_X_BIG)
    sz = _offset_sign(m["dz"], POSITION_Z_BIG)
    front, right = _FRAME_TEXT[m["facing"]]
    letter = LETTERS[m["options"].index(m["relation"])]
    return (f"Region {m['target']['label']} is {_SIDE_TEXT[sx]} and {_DEPTH_TEXT[sz]} than region "
            f"{m['camera']['label']}. Standing at region {m['camera']['label']} facing {FACING_TEXT[m['facing']]}, "
            f"my front points {front} and my right hand points {right}. So region {m['target']['label']} is "
            f"{m['relation']} of me, which is option {letter}.")


_TRACES = {"shuffle": _trace_shuffle, "flip": _trace_flip, "crop": _trace_crop,
           "depth": _trace_depth, "position": _trace_position}


def reasoning_trace(example: Example) -> str:
    """A short, deterministic, obviously templated cold-start response built from the example's metadata:
    <think>explanation</think> then the answer in \\boxed{}."""
    return f"<think>{_TRACES[example.task](example.meta)}</think>\nThe answer is \\boxed{{{example.answer}}}."
