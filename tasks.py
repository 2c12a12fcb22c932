"""The five Spatial-SSRL pretext tasks (and one of ours): generators, canonical answers, verifiers and the reward.

Stage 1 of Spatial-SSRL (arXiv 2510.27606, §3): ordinary RGB / RGB-D images are turned into questions
whose answers are known by construction, so no human labels are needed. This file is the single source
of truth for what a correct answer is: make_data.py builds the dataset with the generators, sft.py uses
the templated reasoning traces, grpo.py and evaluate.py score responses with reward_terms().

    ex = make_example("depth", rgb, depth, np.random.default_rng(0))   # -> Example | Rejected
    reward("<think>...</think> \\boxed{2, 3, 1}", ex.answer, "depth")  # 0.9·accuracy + 0.1·format
    reward(response, record["answer"], "position", problem=record["problem"])  # also reads "B. Right"

| task     | images shown                    | canonical answer (inside \\boxed{})             |
|----------|---------------------------------|-------------------------------------------------|
| shuffle  | shuffled, labelled grid         | labels in original raster order: "2, 4, 1, 3"   |
| flip     | 2×2 labelled grid, one flipped  | tile and direction: "3, horizontal"             |
| crop     | masked image + 4 candidates     | letter of the true patch: "C"                   |
| depth    | image with markers 1-3          | markers from nearest to farthest: "2, 3, 1"     |
| position | image with markers 1, 2         | letter of the relation option: "B"              |
| rotation | a square turned by k·90°        | degrees clockwise: "90" (opt-in, not the paper) |

Layout: shared constants and helpers; then one block per task in the paper's order (shuffle, flip, crop,
depth, position), each holding its constants, generator, answer parser and reasoning-trace template, then
the block of the one task beyond the paper (rotation, docs/beyond-the-paper.md); then the registry
TASK_SPECS that every entry point reads; then the shared verifier and reward.

Paper → code
  §3.1 shuffled patch reordering  → make_shuffle(), parse_shuffle(), trace_shuffle()
  §3.1 flipped patch recognition  → make_flip(), parse_flip(), trace_flip()
  §3.1 cropped patch inpainting   → make_crop(), parse_crop(), trace_crop()
  §3.1 regional depth ordering    → make_depth(), parse_depth(), trace_depth()
  §3.1 relative 3D position       → make_position(), relation(), parse_position(), trace_position()
  the five tasks as one table     → tasks.TASK_SPECS, make_example()
  §3.3 reward r = 0.9·acc + 0.1·fmt → reward_terms(), reward(), accuracy(), format_ok(), extract_boxed()
  beyond: PC-GRPO's Rotation puzzle → make_rotation(), parse_rotation(), trace_rotation() (opt-in: default=False)
  beyond: Visual Jigsaw partial credit → accuracy(partial=True), reward_terms(partial=True) (Task.ordering)
  cold-start CoT data (§3.2)      → reasoning_trace()   CoT instruction → COT_PROMPT, with_cot()

Adding your own pretext task: write one block like the five below and add one Task row to TASK_SPECS
(its position there is its place in TASKS); nothing else in this file changes.
  generator  make_<task>(rgb, rng, **options), or make_<task>(rgb, depth, rng, **options) with
             needs_depth=True. make_example has already checked rgb ((H, W, 3) uint8) and depth ((H, W),
             NaN / 0 / inf invalid). Returns Example(task, images, problem, answer, meta), problem holding
             one "<image>" per image in order, or Rejected(reason) with a short stable slug when this
             image cannot give a unique answer. All randomness comes from rng: same seed, same example.
  answer     the canonical answer string, exactly what goes inside \\boxed{}; records without a task field
             are scored by exact match against it, so it must also be the answer's plainest spelling.
  parser     parse_<task>(content, answer, options) -> a comparable value, or None if content is not a
             well-formed answer. content is one stripped box content (at most MAX_ANSWER_CHARS long),
             answer the ground-truth string (e.g. for its length), options the problem's lettered text
             options {"A": "Left", ...} when reads_options=True, else {}. accuracy is 1 when every
             committed box parses to a value equal (==) to the parse of the answer; the parse of the
             answer must not be None (a ValueError says the ground truth is invalid). Never raise.
  trace      trace_<task>(meta) -> the reasoning text for the cold start, built from the example's meta
             alone; reasoning_trace wraps it in <think>…</think> and boxes the answer after it.
  needs_depth  whether make_example passes the depth map; TASKS, RGB_TASKS and DEPTH_TASKS follow it.
  flags      ordering (the parse is a label sequence: partial credit), depth_order_only (the answer survives
             any increasing transform of the depth: a relative depth model may feed it), default (part of
             make_data.py --tasks auto; a task beyond the paper says False and is built when named).
  The builder picks a new row up by itself: make_data.py's seeds (a task's index in TASKS: append new rows
  so the others keep theirs), quotas, split, answer-prior row and per-task counts, and grpo.py's per-task
  metrics read TASKS. Only a 2-D shortcut heuristic of its own is written by hand (make_data.py's shortcut
  report); the rotation block is the worked example (docs/beyond-the-paper.md).

Deviations from the paper / official data scripts (data_process/*.py)
  1. Question texts and answer strings are our own (the official ones are not released as code).
  2. Tile labels and markers are 1-based, drawn with Pillow on the original-resolution image with a
     font sized relative to the image (official: 0-based, matplotlib re-render, tiny default font).
  3. Flip has a ground truth (tile, direction) with both directions equally likely (official: crashes,
     no ground truth). Ambiguous examples (repeated tiles, a flip-symmetric or point-symmetric tile,
     look-alike distractors) are rejected instead of emitted; so is a flip too faint to see (FLIP_VISIBLE).
  4. Depth/Position regions are flat grid cells found with vectorised block statistics, not per-pixel
     Python loops; Depth also requires a minimum pixel distance between the markers.
  5. Position thresholds are relative: |Δx| as a fraction of the image width, Δz in robust-normalised
     depth (official: raw 150 px and min-max normalised depth). Compound options need both offsets clear;
     simple options name the dominant offset (≥ POSITION_DOMINANCE × the other), and the question says so.
  6. Reasoning traces are templated from each example's metadata (the paper used LVLM-written traces) and
     state only relative cues a viewer can see, never metric depths.
  7. Sampling defeats 2-D shortcuts (the official scripts sample uniformly): Depth picks, among random
     valid marker triples, one whose agreement with "lower = nearer" / "edge = nearer" matches a random
     target (_pick_band_regions); Position draws its answer first (uniform given the facing and option
     style, depth-set answers slightly more often than image-x ones) and prefers region pairs the 2-D rule
     gets wrong (_pick_position_pair).
  8. Crop: no rotated distractors (a rotation is a pixel twin of the true crop: a candidate-only cue).
     Distractors are same-size squares from elsewhere, near shifts and zooms, laid out symmetrically
     around the hole or a decoy (crop_layout), and every candidate, the true one included, is resampled
     the same way (resample_candidate), so sharpness, aspect ratio and JPEG grid carry no signal.
  9. Verifier (official: exact match of the last box): full-width characters normalised; "B. Right" /
     "B) Right-Front" / the option text alone accepted for Position when `problem` is given; accuracy 0
     for an unclosed \\boxed{ after the last box (cut-off answer switch) and for different boxed answers
     after </think> (hedging); the same answer boxed twice is fine.
 10. Think tags: whitespace inside them is ignored (`< think >`, `</ think>`), as the official img_score does;
     the official normalisation also strips whitespace around every other <, > and / (inside the box too),
     which no answer of ours contains. Format also needs the box to be balanced and after </think> (official
     regex: any `\\boxed{` … `}` after it).
 11. Beyond the paper, off by default: the rotation task (PC-GRPO, arXiv 2512.14944; opt-in) and partial
     credit for ordering answers (Visual Jigsaw, arXiv 2509.25190; accuracy(partial=True)).
"""
from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# -------------------------------------------------------------------------------------------- shared constants
# The CoT instruction the released Spatial-SSRL checkpoints were trained with (EasyR1 math.jinja).
COT_PROMPT = ("You FIRST think about the reasoning process as an internal monologue and then provide the final "
              "answer. The reasoning process MUST BE enclosed within <think> </think> tags. The final answer "
              "MUST BE put in \\boxed{}.")

MIN_TILE = 24            # px: smallest tile side for shuffle / flip
SAME_THRESHOLD = 3.0     # mean |Δ| on 0..255 below which two tiles / patches count as the same picture
REGION_MAX_RANGE = 0.15  # a marked region is flat: normalised depth range below this
LETTERS = "ABCD"
MAX_ANSWER_CHARS = 200   # no valid boxed answer is longer; longer content is rejected without parsing


# ----------------------------------------------------------------------------------- shared types and with_cot
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


# --------------------------------------------------------------------- shared drawing, tiles and image helpers
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


# ------------------------------------------------------------------- shared depth regions (depth and position)
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


# ----------------------------------------------- shared answer parsing (the task parsers below build on these)
_TEXT_WRAP = re.compile(r"\\(?:text|mathrm|textbf|mathbf)\{([^{}]*)\}")
_WIDE_PUNCT = str.maketrans({"\u3002": ".", "\u3001": ",", "\u2010": "-", "\u2011": "-", "\u2012": "-",
                             "\u2013": "-", "\u2014": "-", "\u2212": "-", "\u00a0": " "})


def _clean(content: str) -> str:
    """Normalise full-width characters (NFKC: 'Ｂ' -> 'B', '，' -> ','; '。' -> '.'; dashes -> '-') and drop
    harmless wrappers: \\text{…}, one pair of outer brackets, a trailing full stop."""
    s = unicodedata.normalize("NFKC", content).translate(_WIDE_PUNCT)
    s = _TEXT_WRAP.sub(r"\1", s).strip().rstrip(".").strip()
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


_LETTER = re.compile(r"(?:option\s*)?\(?([a-d])\)?(?:\s*[.:)]\s*|\s+)?(.*)", re.IGNORECASE | re.DOTALL)
_OPTION_LINE = re.compile(r"^([A-D])\. (.+)$", re.MULTILINE)


def _option_words(text: str) -> tuple:
    """'Right-Front' / 'front right' / 'the Right' -> ('front', 'right'): an option text as sorted words."""
    return tuple(sorted(w for w in re.split(r"[\s\-_/,]+", text.lower()) if w and w != "the"))


def options_from_problem(problem: str | None) -> dict:
    """{'A': 'Left', ...}: the lettered text options listed in a problem ("A. Left" lines); image options
    ("A. <image>") are not text and are left out."""
    if not isinstance(problem, str):
        return {}
    return {k: v.strip() for k, v in _OPTION_LINE.findall(problem) if "<image>" not in v}


def parse_letter(content: str, options: dict | None = None) -> str | None:
    """'B' / '(B)' / 'B.' / 'Option B' / '\\text{B}' -> 'B'. With the question's text options also
    'B. Right' / 'B) Right-Front' (the letter followed by its own option text) and 'Right' alone when
    exactly one option reads so. Anything else (two letters, a letter with another option's text) -> None."""
    s = _clean(content)
    options = options or {}
    m = _LETTER.fullmatch(s)
    if m:
        letter, rest = m.group(1).upper(), m.group(2).strip().rstrip(".").strip()
        if not rest:
            return letter
        if letter in options and _option_words(rest) == _option_words(options[letter]):
            return letter
    words = _option_words(s)
    hits = [k for k, v in options.items() if words and _option_words(v) == words]
    return hits[0] if len(hits) == 1 else None


# =====================================================================================================
# Task 1 · shuffled patch reordering (§3.1)
#   answer: the labels in the original raster order, '2, 4, 1, 3'; RGB only
# =====================================================================================================
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
    example = _worked_example(k)
    problem = (f"<image>\nThis picture was cut into a grid of {rows} rows and {cols} columns, the tiles were "
               f"shuffled, and each tile got a number label from 1 to {k}. One tile was painted plain white, so it "
               f"has to be placed by elimination. Restore the original picture: reading it row by row from the "
               f"top-left corner, which label belongs at each position? Give the {k} labels in that order, "
               f"separated by commas. For example, the answer {', '.join(map(str, example))} would mean that tile "
               f"{example[0]} belongs at the top-left position, tile {example[1]} at the next position to its "
               f"right, and so on.")
    meta = {"grid": [rows, cols], "tile_size": [int(tiles[0].shape[0]), int(tiles[0].shape[1])],
            "perm": [int(p) for p in perm], "white_label": white + 1, "order": order}
    return Example("shuffle", [img], problem, ", ".join(map(str, order)), meta)


def _worked_example(k: int) -> list:
    """The fixed example order quoted in the shuffle question: the labels from k down to 1."""
    return list(range(k, 0, -1))


def parse_shuffle(content: str, answer: str, options: dict | None = None) -> tuple | None:
    """'2, 4, 1, 3' / '[2 4 1 3]' -> (2, 4, 1, 3): the labels, if content is exactly a permutation of 1..k
    with k the answer's length (parse_sequence), else None."""
    return parse_sequence(content, len(answer.split(",")))


def trace_shuffle(m: dict) -> str:
    """The shuffle reasoning: place the white tile by elimination, then read the restored rows."""
    rows, cols = m["grid"]
    lines = "; ".join(f"row {r + 1}: " + ", ".join(map(str, m["order"][r * cols:(r + 1) * cols])) for r in range(rows))
    return (f"The picture is a {rows}×{cols} grid of shuffled tiles labelled 1 to {rows * cols}. Tile "
            f"{m['white_label']} is plain white, so it goes to the one position no other tile fits. Matching the "
            f"edges and content of the other tiles, the original picture reads {lines}.")


# =====================================================================================================
# Task 2 · flipped patch recognition (§3.1)
#   answer: the flipped tile and the direction, '3, horizontal'; RGB only
# =====================================================================================================
FLIP_DIRECTIONS = ("horizontal", "vertical")   # mirrored left-to-right, mirrored top-to-bottom
# mean |Δ| on 0..255 (3 % of the range) below which a mirrored tile does not visibly show its flip: 4× the
# median and 2.5× the 90th percentile of what JPEG at quality 95 (make_data's default) changes in a 112 px
# built-in scene, so the cue is never of the size of the compression noise. On the built-in 112 px scenes
# it rejects 10 % of the horizontal and 5 % of the vertical draws.
FLIP_VISIBLE = 8.0
FLIP_SHORT = "<image>\nWhich tile (1 top-left, 2 top-right, 3 bottom-left, 4 bottom-right) is flipped, horizontal or vertical?"


def make_flip(rgb: np.ndarray, rng: np.random.Generator) -> Example | Rejected:
    """Flipped patch recognition: one tile of a 2×2 grid is mirrored left-to-right (horizontal) or
    top-to-bottom (vertical), each with probability 1/2. Answer = "tile, direction"."""
    if rgb.shape[0] // 2 < MIN_TILE or rgb.shape[1] // 2 < MIN_TILE:
        return Rejected("too-small")
    tiles = _split_tiles(rgb, 2, 2)
    tile = int(rng.integers(4))
    direction = FLIP_DIRECTIONS[int(rng.integers(2))]
    mirrored = {"horizontal": tiles[tile][:, ::-1], "vertical": tiles[tile][::-1]}
    flipped = mirrored[direction]
    reason = flip_ambiguity(tiles[tile], flipped, mirrored["horizontal"], mirrored["vertical"])
    if reason:
        return Rejected(reason)
    shown = list(tiles)
    shown[tile] = np.ascontiguousarray(flipped)
    img = _grid_image(shown, 2, 2, ["1", "2", "3", "4"])
    problem = ("<image>\nThis picture is split into four numbered tiles: 1 top-left, 2 top-right, 3 bottom-left, "
               "4 bottom-right. Exactly one tile has been flipped, either mirrored left-to-right (horizontal) or "
               "mirrored top-to-bottom (vertical). Which tile is flipped, and how? Answer with the tile number, a "
               "comma, and the word horizontal or vertical.")
    meta = {"tile": tile + 1, "direction": direction, "tile_size": [int(tiles[0].shape[0]), int(tiles[0].shape[1])]}
    return Example("flip", [img], problem, f"{tile + 1}, {direction}", meta)


def flip_ambiguity(tile: np.ndarray, shown: np.ndarray, horizontal: np.ndarray, vertical: np.ndarray) -> str | None:
    """Why a flipped tile has no unique, visible answer, or None. With d = mean |a − b| on 0..255:
      d(shown, tile) < FLIP_VISIBLE            → "flip-symmetric-tile" (the flip barely changes the picture)
      d(horizontal, vertical) < FLIP_VISIBLE   → "flip-ambiguous-direction" (point-symmetric tile: both
                                                 answers show the same picture, e.g. a checkerboard)"""
    if _mean_abs_diff(shown, tile) < FLIP_VISIBLE:
        return "flip-symmetric-tile"
    if _mean_abs_diff(horizontal, vertical) < FLIP_VISIBLE:
        return "flip-ambiguous-direction"
    return None


_FLIP_FILLER = {"tile", "patch", "is", "the", "flipped", "flip", "label", "number"}


def parse_flip(content: str, answer: str = "", options: dict | None = None) -> tuple | None:
    """'3, horizontal' / 'tile 3 (flipped vertically)' -> (3, 'horizontal'); None unless exactly one tile
    number and exactly one direction are named."""
    words = re.findall(r"[a-z]+|\d+|[^\sa-z\d,;:()\[\].]", _clean(content).lower())
    numbers = [w for w in words if w.isdigit()]
    dirs = [w.removesuffix("ly") for w in words if w.removesuffix("ly") in FLIP_DIRECTIONS]
    others = [w for w in words if not w.isdigit() and w.removesuffix("ly") not in FLIP_DIRECTIONS]
    if len(numbers) != 1 or len(dirs) != 1 or any(w not in _FLIP_FILLER for w in others):
        return None
    return int(numbers[0]), dirs[0]


def trace_flip(m: dict) -> str:
    """The flip reasoning: the other tiles continue the scene, the flipped one only after mirroring."""
    others = ", ".join(str(k) for k in range(1, 5) if k != m["tile"])
    how = ("it is mirrored left-to-right: its content continues the neighbouring tiles only after swapping its "
           "left and right sides" if m["direction"] == "horizontal" else
           "it is mirrored top-to-bottom: what belongs at its top edge is at its bottom edge")
    return (f"I check whether each tile continues the scene naturally. Tiles {others} look right. Tile {m['tile']} "
            f"does not: {how}. So tile {m['tile']} is flipped {m['direction']}ly.")


# =====================================================================================================
# Task 3 · cropped patch inpainting (§3.1)
#   answer: the letter of the true patch among four candidates, 'C'; RGB only
# =====================================================================================================
MIN_CROP = 32            # px: smallest masked square for crop
CROP_DISTRACTORS = ("near_shift", "far_shift", "zoom_in", "zoom_out")
CROP_PATTERN_NAMES = ("cluster", "two-pairs", "scattered")
CROP_PATTERNS = (0.3, 0.35, 0.35)   # how the four candidate squares relate (see crop_layout)
CROP_DISPLAY = 0.7       # candidates are shown at this fraction of the hole's side (all downsampled alike)


def _far_box(rng: np.random.Generator, h: int, w: int, avoid: list, s: int) -> tuple | None:
    """A same-size square elsewhere: overlapping each square in `avoid` by at most a quarter of its area."""
    for _ in range(30):
        fx, fy = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
        if all(max(0, s - abs(fx - ax)) * max(0, s - abs(fy - ay)) <= s * s / 4 for ax, ay, *_ in avoid):
            return fx, fy, s
    return None


def crop_region(rng: np.random.Generator, h: int, w: int, x: int, y: int, s: int, kind: str,
                avoid: tuple = ()) -> tuple | None:
    """Source square (x, y, side) of one candidate for the hole (x, y, s); None if it cannot be placed.

    true: the hole itself. near_shift: the same size, moved 30-60 % of a side (overlaps the hole: a hard
    negative). far_shift: the same size from elsewhere (also away from the squares in `avoid`). zoom_in: a
    3/4-size square inside the hole (shown enlarged). zoom_out: a 4/3-size square containing the hole (shown
    shrunk). Squares stay inside the image."""
    if kind == "true":
        return x, y, s
    if kind == "far_shift":
        return _far_box(rng, h, w, [(x, y), *avoid], s)
    if kind == "near_shift":
        for _ in range(20):
            dx, dy = (rng.uniform(0.3, 0.6) * s * rng.choice([-1, 1]) for _ in range(2))
            if rng.random() < 0.5:                         # mostly along one axis
                dx, dy = (dx, dy * rng.uniform(0, 0.3)) if rng.random() < 0.5 else (dx * rng.uniform(0, 0.3), dy)
            nx, ny = int(np.clip(x + dx, 0, w - s)), int(np.clip(y + dy, 0, h - s))
            if max(abs(nx - x), abs(ny - y)) >= 0.25 * s:
                return nx, ny, s
        return None
    r = round(s * 0.75) if kind == "zoom_in" else min(round(s * 4 / 3), h, w)
    if kind == "zoom_in":
        return x + int(rng.integers(0, s - r + 1)), y + int(rng.integers(0, s - r + 1)), r
    lo_x, hi_x = max(0, x + s - r), min(x, w - r)
    lo_y, hi_y = max(0, y + s - r), min(y, h - r)
    if lo_x > hi_x or lo_y > hi_y:
        return None
    return int(rng.integers(lo_x, hi_x + 1)), int(rng.integers(lo_y, hi_y + 1)), r


def resample_candidate(rgb: np.ndarray, region: tuple, side: int) -> np.ndarray:
    """The one resampling path every crop candidate takes, the true one included: the source square is
    resized (antialiased bilinear) to side × side, with side < every source side, so sharpness, aspect ratio
    and the source's JPEG block grid are the same for all candidates and carry no signal."""
    x, y, r = region
    return np.asarray(Image.fromarray(rgb[y:y + r, x:x + r]).resize((side, side), Image.Resampling.BILINEAR))


def crop_layout(rng: np.random.Generator, h: int, w: int, s: int, pattern: str) -> tuple | None:
    """Four candidate squares and which one is the hole, placed so that no statistic of the candidates
    alone singles the hole out. First 2 (or 4) mutually far same-size anchors are drawn, then:
      scattered: the 4 anchors;  cluster: A, two squares derived from A (crop_region), B;
      two-pairs: A, one derived from A, B, one derived from B.
    The hole is a random anchor (any of the 4, or A / B), so "the odd one out", "the one most like the
    others" and the anchors' positions in the frame are the same for the hole and for a distractor.
    Returns (regions, index of the hole, kinds relative to the hole) or None if the squares don't fit."""
    anchors = []
    for _ in range(4 if pattern == "scattered" else 2):
        anchors.append(_far_box(rng, h, w, anchors, s))
        if anchors[-1] is None:
            return None
    if pattern == "scattered":
        regions, owner, kind = anchors, [0, 1, 2, 3], ["anchor"] * 4
    else:
        extra = (["near_shift", str(rng.choice(["near_shift", "zoom_in", "zoom_out"]))] if pattern == "cluster" else
                 [str(rng.choice(["near_shift", "zoom_in", "zoom_out"])) for _ in range(2)])
        of = [0, 0] if pattern == "cluster" else [0, 1]
        derived = [crop_region(rng, h, w, *anchors[o], k) for o, k in zip(of, extra)]
        if any(d is None for d in derived):
            return None
        regions, owner, kind = anchors + derived, [0, 1] + of, ["anchor", "anchor"] + extra
    hole = int(rng.integers(len(anchors)))
    kinds = ["true" if i == hole else "far_shift" if k == "anchor" else k if o == hole else "decoy_" + k
             for i, (k, o) in enumerate(zip(kind, owner))]
    return regions, hole, kinds


def make_crop(rgb: np.ndarray, rng: np.random.Generator) -> Example | Rejected:
    """Cropped patch inpainting: a square of side s = min(H, W)/2 is blacked out; the 4 candidates are the
    true square and 3 distractors laid out by crop_layout, all resampled alike to CROP_DISPLAY·s pixels
    (resample_candidate). Answer = letter of the true crop."""
    h, w = rgb.shape[:2]
    s = min(h, w) // 2
    if s < MIN_CROP:
        return Rejected("too-small")
    layout = None
    for _ in range(4):
        pattern = CROP_PATTERN_NAMES[int(rng.choice(len(CROP_PATTERN_NAMES), p=CROP_PATTERNS))]
        layout = crop_layout(rng, h, w, s, pattern)
        if layout is not None and len(set(layout[0])) == 4:
            break
    else:
        return Rejected("no-room-for-distractors")
    regions, hole, kinds = layout
    order = rng.permutation(4)
    regions, kinds = [regions[k] for k in order], [kinds[k] for k in order]
    slot = kinds.index("true")
    x, y, _ = regions[slot]
    side = max(16, round(s * CROP_DISPLAY))
    patches = [resample_candidate(rgb, r, side) for r in regions]
    if _has_look_alikes(patches):
        return Rejected("look-alike-candidates")
    masked = rgb.copy()
    masked[y:y + s, x:x + s] = 0
    images = [Image.fromarray(masked)] + [Image.fromarray(p) for p in patches]
    problem = ("<image>\nA square part of this picture has been blacked out. Which of these four patches is "
               "exactly the missing part, at the same scale and orientation? (The patches are shown smaller "
               "than the hole; compare their content, not their size.)\nA. <image>\nB. <image>\n"
               "C. <image>\nD. <image>\nAnswer with the letter of the correct patch.")
    meta = {"box": [x, y, s], "candidates": kinds, "regions": [list(r) for r in regions], "slot": slot,
            "display": side, "pattern": pattern}
    return Example("crop", images, problem, LETTERS[slot], meta)


def parse_crop(content: str, answer: str = "", options: dict | None = None) -> str | None:
    """The candidate's letter: 'C' / '(C)' / 'Option C' -> 'C' (the candidates are images: no option text)."""
    return parse_letter(content)


_CANDIDATE_TEXT = {
    "true": "continues the edges and textures around the hole at the same scale and orientation",
    "near_shift": "shows a neighbouring part of the picture: its content is offset from what the hole's borders need",
    "far_shift": "comes from another part of the picture and does not continue the hole's borders",
    "zoom_in": "shows the right area but enlarged: its textures are too coarse for the surroundings",
    "zoom_out": "shows a wider area shrunk to fit: its textures are too fine and it contains more than the hole",
    "decoy_near_shift": "comes from another part of the picture and does not continue the hole's borders",
    "decoy_zoom_in": "comes from another part of the picture, enlarged, and does not continue the hole's borders",
    "decoy_zoom_out": "comes from another part of the picture, shrunk, and does not continue the hole's borders"}


def trace_crop(m: dict) -> str:
    """The crop reasoning: why each candidate does or does not continue the hole's borders (its kind)."""
    parts = [f"candidate {LETTERS[k]} {_CANDIDATE_TEXT[kind]}" for k, kind in enumerate(m["candidates"])]
    return ("Comparing each candidate with the picture around the black square: " + "; ".join(parts)
            + f". Only candidate {LETTERS[m['slot']]} fits exactly.")


# =====================================================================================================
# Task 4 · regional depth ordering (§3.1)
#   answer: the markers from nearest to farthest, '2, 3, 1'; needs a depth map
# =====================================================================================================
DEPTH_BANDS = ((0.0, 0.3), (0.35, 0.65), (0.7, 1.0))   # normalised depth bands: near, middle, far
REGION_MIN_GAP = 0.05    # depth regions: gap between their depth intervals above this
DEPTH_EDGE_TARGETS = (0.35, 0.3, 0.2, 0.15)  # distribution of the "edge = nearer" agreement targets (0..3 pairs)
DEPTH_TRIES = 128        # random marker triples scored per depth example (pick the one matching the targets)
DEPTH_SHORT = "<image>\nOrder the marked points 1, 2 and 3 from the nearest to the farthest."


def pair_agreement(order_xy: np.ndarray, h: int, w: int) -> tuple:
    """For markers listed near to far with centres (x, y): how many of the 3 pairs the two 2-D rules get
    right: "lower in the picture = nearer" and "farther from the picture centre = nearer". Works on a
    (..., 3, 2) array; returns two integer arrays."""
    xy = np.asarray(order_xy, np.float64)
    ys = xy[..., 1]
    edge = np.hypot(xy[..., 0] - w / 2, xy[..., 1] - h / 2)
    pairs = ((0, 1), (0, 2), (1, 2))                      # (nearer, farther)
    lower = sum((ys[..., i] > ys[..., j]).astype(int) for i, j in pairs)
    outer = sum((edge[..., i] > edge[..., j]).astype(int) for i, j in pairs)
    return lower, outer


def _pick_band_regions(cells: dict, min_dist: float, shape: tuple, rng: np.random.Generator) -> list | Rejected:
    """One flat region inside each depth band, their depth intervals > REGION_MIN_GAP apart and their
    centres at least min_dist pixels apart. Among DEPTH_TRIES random valid triples, take the one whose
    agreement with the two 2-D rules (pair_agreement) is closest to random targets of 0..3 pairs (uniform
    for "lower = nearer", DEPTH_EDGE_TARGETS for "edge = nearer", whose agreeing triples are more common),
    so that over a dataset those rules are right about half the time pairwise and rarely in full.
    Returns the cell indices, near to far."""
    in_band = [np.nonzero((cells["lo"] >= a) & (cells["hi"] <= b))[0] for a, b in DEPTH_BANDS]
    if any(len(idx) == 0 for idx in in_band):
        return Rejected("no-region-in-band")
    pick = np.stack([idx[rng.integers(0, len(idx), DEPTH_TRIES)] for idx in in_band], 1)     # (T, 3)
    xy = np.stack([cells["x0"], cells["y0"]], 1).astype(np.float64)[pick]                    # (T, 3, 2)
    gaps_ok = (cells["lo"][pick[:, 1]] - cells["hi"][pick[:, 0]] > REGION_MIN_GAP) & \
              (cells["lo"][pick[:, 2]] - cells["hi"][pick[:, 1]] > REGION_MIN_GAP)
    dist = np.stack([np.hypot(*(xy[:, i] - xy[:, j]).T) for i, j in ((0, 1), (0, 2), (1, 2))], 1).min(1)
    ok = np.nonzero(gaps_ok & (dist >= min_dist))[0]
    if len(ok) == 0:
        return Rejected("regions-too-close")
    lower, outer = pair_agreement(xy[ok], *shape)
    target_lower = rng.integers(0, 4)
    target_outer = rng.choice(4, p=DEPTH_EDGE_TARGETS)       # skewed low: edge-near triples are the common ones
    cost = np.abs(lower - target_lower) + np.abs(outer - target_outer) + rng.random(len(ok)) * 0.1
    return [int(v) for v in pick[ok[int(np.argmin(cost))]]]


def make_depth(rgb: np.ndarray, depth: np.ndarray, rng: np.random.Generator) -> Example | Rejected:
    """Regional depth ordering: 3 flat regions in the near / middle / far bands of the robust-normalised
    depth get markers 1-3 in random order. Answer = marker numbers from nearest to farthest."""
    dn = normalise_depth(depth)
    if isinstance(dn, Rejected):
        return dn
    h, w = dn.shape
    cell = region_size(h, w)
    cells = flat_regions(dn, cell)
    pick = _pick_band_regions(cells, min(h, w) / 8, (h, w), rng)
    if isinstance(pick, Rejected):
        return pick
    labels = [int(v) + 1 for v in rng.permutation(3)]
    regions = [_region_info(depth, dn, cells["x0"][i], cells["y0"][i], cell, lab) for i, lab in zip(pick, labels)]
    problem = ("<image>\nThree points in this picture are marked with the numbers 1, 2 and 3. Order the marked "
               "points by their distance from the camera, from the nearest to the farthest. Answer with the "
               "three numbers in that order, separated by commas.")
    meta = {"regions": regions, "cell": cell, "size": [h, w]}       # regions listed near to far
    return Example("depth", [_marked_image(rgb, regions, cell)], problem, ", ".join(map(str, labels)), meta)


def parse_depth(content: str, answer: str, options: dict | None = None) -> tuple | None:
    """'2, 3, 1' -> (2, 3, 1): the marker numbers, if content is exactly a permutation of 1..n with n the
    answer's length (parse_sequence), else None."""
    return parse_sequence(content, len(answer.split(",")))


def trace_depth(m: dict) -> str:
    """The depth reasoning, with only relative cues a viewer can see: which marked surface is in front of
    which, and, where the picture's height would mislead, that it does."""
    regs = m["regions"]                                 # near to far
    near, mid, far = (r["label"] for r in regs)
    notes = []
    for a, b in ((0, 1), (1, 2), (0, 2)):
        ra, rb = regs[a], regs[b]
        if ra["center"][1] < rb["center"][1]:           # the nearer one is higher in the picture
            notes.append(f"marker {ra['label']} is higher in the picture than marker {rb['label']} but its surface "
                         f"is nearer, so height in the picture is misleading here")
    return (f"Following the surfaces under the markers and how they recede (their perspective, texture scale and "
            f"what stands in front of what): marker {near} is on the nearest surface, marker {mid} lies behind it, "
            f"and marker {far} is the farthest away. " + ("; ".join(notes).capitalize() + ". " if notes else "")
            + f"From nearest to farthest: {near}, {mid}, {far}.")


# =====================================================================================================
# Task 5 · relative 3D position (§3.1)
#   answer: the letter of the relation option, 'B' (the problem lists the options); needs a depth map
# =====================================================================================================
POSITION_X_BIG = 0.15    # |Δx| / width above this is a clear left/right offset (official: 150 px)
POSITION_Z_BIG = 0.25    # |Δz| (normalised) above this is a clear front/back offset (official: 0.25)
POSITION_SMALL = 0.5     # an offset counts as negligible below POSITION_SMALL · threshold (dead band between)
FACINGS = ("left", "right", "toward", "away")
FACING_WEIGHTS = (0.3, 0.3, 0.3, 0.1)
SIMPLE_RELATIONS = ("Left", "Right", "Front", "Back")
COMPOUND_RELATIONS = ("Left-Front", "Right-Front", "Right-Back", "Left-Back")
RELATIONS = SIMPLE_RELATIONS + COMPOUND_RELATIONS
POSITION_DOMINANCE = 2.0  # simple options: the dominant offset ≥ this many times the other (in threshold units)
POSITION_Y_2D = 0.1      # the 2-D shortcut's unit of "higher in the picture" (fraction of the image height)
POSITION_TRIES = 2048    # random region pairs scored per position example
POSITION_DEPTH_SHARE = 0.62  # simple options: share of answers set by the depth offset (the rest by image x)
POSITION_FOOL = 0.75     # probability of preferring a pair the 2-D shortcuts get wrong
_FACING_VECTOR = {"left": (-1, 0), "right": (1, 0), "toward": (0, -1), "away": (0, 1)}   # (x right, z away)
FACING_TEXT = {"left": "the left side of the picture", "right": "the right side of the picture",
               "toward": "the camera that took the picture", "away": "away from the camera, into the scene"}


def turn(sx: int, sz: int, facing: str) -> str | None:
    """The relation name of a top-down offset with signs (sx, sz) (x = picture right, z = away from the
    viewer) for someone facing `facing`. With facing vector f and right vector r = (f_z, −f_x): Front/Back by
    sign(v·f), Right/Left by sign(v·r), compound ("Left-Front") when both are non-zero."""
    if sx == sz == 0:
        return None
    fx, fz = _FACING_VECTOR[facing]
    front, right = sx * fx + sz * fz, sx * fz - sz * fx
    side = "Right" if right > 0 else "Left" if right < 0 else ""
    ahead = "Front" if front > 0 else "Back" if front < 0 else ""
    return "-".join(p for p in (side, ahead) if p)


def relation(dx: float, dz: float, facing: str, style: str | None = None) -> str | None:
    """Where the target lies for a camera facing `facing`; dx is a fraction of the image width, dz
    normalised depth, both measured in units of their thresholds (ux = dx / POSITION_X_BIG, uz = dz /
    POSITION_Z_BIG). style "compound": both offsets clear (|u| > 1). style "simple": the dominant offset,
    clear and at least POSITION_DOMINANCE times the other. style None (the official table): compound when
    both are clear, simple when one is clear and the other negligible (|u| < POSITION_SMALL); else None."""
    code = relation_codes(np.array([dx]), np.array([dz]), facing, style)[0]
    return None if code < 0 else RELATIONS[code]


@functools.lru_cache(maxsize=8)
def _turn_table(facing: str) -> np.ndarray:
    """RELATIONS index of turn(sx, sz, facing) at [(sx + 1) · 3 + sz + 1]; −1 for (0, 0)."""
    return np.array([-1 if sx == sz == 0 else RELATIONS.index(turn(sx, sz, facing))
                     for sx in (-1, 0, 1) for sz in (-1, 0, 1)])


def relation_codes(dx: np.ndarray, dz: np.ndarray, facing: str, style: str | None) -> np.ndarray:
    """Vectorised relation(): RELATIONS indices, −1 where the relation is not clear for that style."""
    ux, uz = np.abs(dx) / POSITION_X_BIG, np.abs(dz) / POSITION_Z_BIG
    if style == "compound":
        xs, zs, ok = ux > 1, uz > 1, (ux > 1) & (uz > 1)
    elif style == "simple":
        xs = (ux > 1) & (ux >= POSITION_DOMINANCE * uz)
        zs = (uz > 1) & (uz >= POSITION_DOMINANCE * ux)
        ok = xs | zs
    else:
        xs, zs = ux > 1, uz > 1
        ok = ((ux > 1) | (ux < POSITION_SMALL)) & ((uz > 1) | (uz < POSITION_SMALL)) & (xs | zs)
    sx, sz = np.sign(dx).astype(int) * xs, np.sign(dz).astype(int) * zs
    return np.where(ok, _turn_table(facing)[(sx + 1) * 3 + sz + 1], -1)


def position_2d_guess(dx: np.ndarray, vy: np.ndarray, facing: str, style: str) -> np.ndarray:
    """The 2-D shortcut for Position (never looks at depth): image-x for left/right and "higher in the
    picture = farther" (vy = how much higher the target is, as a fraction of the image height) for
    front/back, turned by the facing. Compound options: both signs; simple options: the larger of
    |dx| / POSITION_X_BIG and |vy| / POSITION_Y_2D. Returns RELATIONS indices."""
    ux, uy = np.abs(dx) / POSITION_X_BIG, np.abs(vy) / POSITION_Y_2D
    sx, sz = np.where(dx >= 0, 1, -1), np.where(vy >= 0, 1, -1)
    if style == "simple":
        xdom = ux >= uy
        sx, sz = sx * xdom, sz * ~xdom
    return _turn_table(facing)[(sx + 1) * 3 + sz + 1]


def position_x_guess(dx: np.ndarray, facing: str) -> np.ndarray:
    """The image-x-only shortcut for simple options: the target's left/right side in the picture."""
    return _turn_table(facing)[(np.where(dx >= 0, 1, -1) + 1) * 3 + 1]


def _position_target(rng: np.random.Generator, facing: str) -> tuple:
    """(style, relation index, index of its mirror image: the fallback) to aim for: compound or simple
    options with probability 1/2; compound relations uniform; simple ones from the depth offset with
    probability POSITION_DEPTH_SHARE (so the picture's x alone is right less than half the time), each of
    its two directions alike."""
    if rng.random() < 0.5:
        sx, sz = (int(v) for v in rng.choice([-1, 1], 2))
        return "compound", RELATIONS.index(turn(sx, sz, facing)), RELATIONS.index(turn(-sx, -sz, facing))
    sign = int(rng.choice([-1, 1]))
    sx, sz = (0, sign) if rng.random() < POSITION_DEPTH_SHARE else (sign, 0)
    return "simple", RELATIONS.index(turn(sx, sz, facing)), RELATIONS.index(turn(-sx, -sz, facing))


def _pick_position_pair(cells: dict, med: np.ndarray, cell: int, shape: tuple, facing: str,
                        rng: np.random.Generator):
    """Random (camera, target) flat regions ≥ min(H, W)/8 apart with a clear relation. Of POSITION_TRIES
    random pairs it keeps those with the drawn target relation (_position_target; other targets if none)
    and among them, with probability POSITION_FOOL, keeps those the 2-D shortcuts (position_2d_guess and, for
    simple options, position_x_guess) get wrong, where there are such."""
    h, w = shape
    n = len(cells["x0"])
    if n < 2:
        return Rejected("no-flat-regions")
    cx, cy = cells["x0"] + cell / 2, cells["y0"] + cell / 2
    style, target, mirror = _position_target(rng, facing)
    i, j = rng.integers(0, n, POSITION_TRIES), rng.integers(0, n, POSITION_TRIES)
    by_x = np.argsort(cx, kind="stable")                  # some tries: pairs at a similar image x
    rank = np.empty(n, int)
    rank[by_x] = np.arange(n)
    near = max(1, n // 12)
    depth_set = style == "simple" and RELATIONS[target] in (turn(0, 1, facing), turn(0, -1, facing))
    part = POSITION_TRIES * 3 // 4 if depth_set else POSITION_TRIES // 4
    j[:part] = by_x[np.clip(rank[i[:part]] + rng.integers(-near, near + 1, part), 0, n - 1)]
    far = np.hypot(cx[j] - cx[i], cy[j] - cy[i]) >= min(h, w) / 8
    dx, dz, vy = (cx[j] - cx[i]) / w, med[j] - med[i], (cy[i] - cy[j]) / h
    for st in (style, "simple" if style == "compound" else "compound"):
        codes = np.where(far, relation_codes(dx, dz, facing, st), -1)
        order = [target, mirror] if st == style else []
        order += [c for c in rng.permutation(len(RELATIONS)) if c not in order]
        for code in order:
            match = np.nonzero(codes == code)[0]
            if len(match):
                break
        else:
            continue
        pool = match
        if rng.random() < POSITION_FOOL:                 # else: any matching pair, at its natural rate
            fooled = position_2d_guess(dx[match], vy[match], facing, st) != code
            both = fooled & (position_x_guess(dx[match], facing) != code) if st == "simple" else fooled
            pool = match[both] if both.any() else match[fooled] if fooled.any() else match
        k = int(rng.choice(pool))
        return int(i[k]), int(j[k]), RELATIONS[code], st
    return Rejected("no-clear-pair")


def make_position(rgb: np.ndarray, depth: np.ndarray, rng: np.random.Generator) -> Example | Rejected:
    """Relative 3D position: a viewer stands at region a facing left / right / toward the camera / away
    (weights .3/.3/.3/.1). Answer = letter of where region b lies for it (4 lettered options, all simple
    or all compound)."""
    dn = normalise_depth(depth)
    if isinstance(dn, Rejected):
        return dn
    cell = region_size(*dn.shape)
    cells = flat_regions(dn, cell)
    med = _cell_medians(dn, cells, cell)
    facing = FACINGS[int(rng.choice(4, p=FACING_WEIGHTS))]
    pair = _pick_position_pair(cells, med, cell, dn.shape, facing, rng)
    if isinstance(pair, Rejected):
        return pair
    i, j, rel, style = pair
    a = int(rng.integers(1, 3))
    cam, tgt = (_region_info(depth, dn, cells["x0"][k], cells["y0"][k], cell, lab) for k, lab in ((i, a), (j, 3 - a)))
    vocab = COMPOUND_RELATIONS if style == "compound" else SIMPLE_RELATIONS
    options = [vocab[k] for k in rng.permutation(4)]
    listing = "\n".join(f"{LETTERS[k]}. {o}" for k, o in enumerate(options))
    note = (" If spot {b} lies diagonally, choose the direction it mostly lies in." if style == "simple"
            else "").format(b=3 - a)
    problem = (f"<image>\nTwo spots in this picture are marked 1 and 2. Imagine you stand at spot {a} (if it is "
               f"on a wall or an object, stand on the ground right there) and face {FACING_TEXT[facing]}. From "
               f"that viewpoint, where is spot {3 - a}? Ignore any difference in height between the two spots."
               f"{note}\n{listing}\nAnswer with the letter of the correct option.")
    meta = {"camera": cam, "target": tgt, "facing": facing, "relation": rel, "style": style, "options": options,
            "cell": cell, "size": list(dn.shape), "dx": float((tgt["center"][0] - cam["center"][0]) / dn.shape[1]),
            "dz": float(med[j] - med[i]), "vy": float((cam["center"][1] - tgt["center"][1]) / dn.shape[0])}
    img = _marked_image(rgb, [cam, tgt], cell)
    return Example("position", [img], problem, LETTERS[options.index(rel)], meta)


def _cell_medians(dn: np.ndarray, cells: dict, cell: int) -> np.ndarray:
    """Median normalised depth of each flat cell."""
    if not len(cells["x0"]):
        return np.zeros(0)
    blocks = np.stack([dn[y:y + cell, x:x + cell] for x, y in zip(cells["x0"], cells["y0"])])
    return np.median(blocks.reshape(len(blocks), -1), axis=1)


def parse_position(content: str, answer: str = "", options: dict | None = None) -> str | None:
    """The option's letter, also read from 'B. Right' or the option text alone ('Right') given the
    problem's options (parse_letter)."""
    return parse_letter(content, options)


_SIDE_TEXT = {1: "to the right in the picture", -1: "to the left in the picture",
              0: "at about the same left-right place"}
_DEPTH_TEXT = {1: "farther from the camera", -1: "closer to the camera",
               0: "at about the same distance from the camera"}
_FRAME_TEXT = {"left": ("toward the left of the picture", "away from the camera"),
               "right": ("toward the right of the picture", "toward the camera"),
               "toward": ("toward the camera", "toward the left of the picture"),
               "away": ("away from the camera", "toward the right of the picture")}


def trace_position(m: dict) -> str:
    """The position reasoning: the target's offset in the picture and in depth, then turned into the
    viewer's frame."""
    ux, uz = m["dx"] / POSITION_X_BIG, m["dz"] / POSITION_Z_BIG
    sx = 0 if abs(ux) < POSITION_SMALL else int(np.sign(ux))
    sz = 0 if abs(uz) < POSITION_SMALL else int(np.sign(uz))
    front, right = _FRAME_TEXT[m["facing"]]
    letter = LETTERS[m["options"].index(m["relation"])]
    cam, tgt = m["camera"]["label"], m["target"]["label"]
    dominant = ""
    if m.get("style") == "simple" and sx and sz:
        dominant = (" The offset is mostly " + ("sideways" if abs(ux) > abs(uz) else "in depth")
                    + ", so I take that direction.")
    return (f"Compared with spot {cam}, spot {tgt} is {_SIDE_TEXT[sx]} and {_DEPTH_TEXT[sz]}.{dominant} "
            f"Standing at spot {cam} facing {FACING_TEXT[m['facing']]}, my front points {front} and my right "
            f"hand points {right}. "
            f"So spot {tgt} is {m['relation']} of me, which is option {letter}.")


# =====================================================================================================
# Task 6 · patch rotation (beyond the paper: the Rotation puzzle of PC-GRPO, arXiv 2512.14944; opt-in, not in
#   the paper's five that --tasks auto builds)
#   answer: how far the shown square was turned clockwise, '90'; RGB only
# =====================================================================================================
ROTATIONS = (0, 90, 180, 270)           # degrees clockwise; the answer space
ROTATION_SIDES = ("top", "right", "bottom", "left")   # a clockwise quarter turn moves each edge to the next
ROTATION_PATCH = (0.6, 0.9)             # the square's side as a fraction of the image's short side
ROTATION_BAND = 0.25                    # the brightness cue's bands: the outer quarter along each edge
ROTATION_BRIGHT_TOP = 0.25              # share of questions whose square is brightest along its own top edge
ROTATION_TRIES = 32                     # random squares scored per rotation example
ROTATION_SHORT = "<image>\nBy how many degrees (0, 90, 180 or 270) was this picture turned clockwise?"


def side_means(gray: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Mean brightness of the ROTATION_BAND-wide band along each edge (ROTATION_SIDES order) of every
    square (x, y, side) in boxes (N, 3), from one integral image: the "bright sky at the top" cue.
    Returns (N, 4)."""
    ii = np.pad(np.asarray(gray, np.float64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    x, y, s = (np.asarray(boxes, np.int64)[:, k] for k in range(3))
    b = np.maximum(1, np.round(s * ROTATION_BAND).astype(np.int64))

    def mean(x0, y0, x1, y1):
        return (ii[y1, x1] - ii[y0, x1] - ii[y1, x0] + ii[y0, x0]) / ((x1 - x0) * (y1 - y0))
    return np.stack([mean(x, y, x + s, y + b), mean(x + s - b, y, x + s, y + s),
                     mean(x, y + s - b, x + s, y + s), mean(x, y, x + b, y + s)], 1)


def _pick_rotation_square(rgb: np.ndarray, rng: np.random.Generator) -> tuple | Rejected:
    """A random square of side ROTATION_PATCH × the short side. Among ROTATION_TRIES random squares, keep
    those whose brightest edge band (side_means) is their own top with probability ROTATION_BRIGHT_TOP (any
    square if none is) and those where it is another edge otherwise; an image whose squares are all
    brightest at the top (a sky) cannot give the latter and is rejected. So "turn the brightest edge to the
    top" is right about as often as chance (1/4) over a dataset that mixes such images with others (over
    sky photos alone it still is always right: the shortcut report shows it). Returns (x, y, side,
    brightest edge)."""
    h, w = rgb.shape[:2]
    side = (rng.uniform(*ROTATION_PATCH, ROTATION_TRIES) * min(h, w)).astype(np.int64)
    x = (rng.random(ROTATION_TRIES) * (w - side + 1)).astype(np.int64)
    y = (rng.random(ROTATION_TRIES) * (h - side + 1)).astype(np.int64)
    boxes = np.stack([x, y, side], 1)
    means = side_means(rgb.mean(-1), boxes)
    brightest, top = means.argmax(1), means[:, 0] > means[:, 1:].max(1)     # top: strictly the brightest
    agree = rng.random() < ROTATION_BRIGHT_TOP
    pool = np.nonzero(top == agree)[0]
    if not len(pool) and not agree:
        return Rejected("bright-top-edge")
    k = int(rng.choice(pool if len(pool) else np.arange(ROTATION_TRIES)))
    return int(x[k]), int(y[k]), int(side[k]), int(brightest[k])


def make_rotation(rgb: np.ndarray, rng: np.random.Generator) -> Example | Rejected:
    """Patch rotation: a square cut from the image (_pick_rotation_square) is shown turned clockwise by
    0, 90, 180 or 270 degrees, each with probability 1/4. Answer = the degrees. Square, so the aspect ratio
    says nothing; a square whose four turns look alike (_has_look_alikes) is rejected."""
    if min(rgb.shape[:2]) * ROTATION_PATCH[0] < MIN_CROP:
        return Rejected("too-small")
    pick = _pick_rotation_square(rgb, rng)
    if isinstance(pick, Rejected):
        return pick
    x, y, s, brightest = pick
    square = rgb[y:y + s, x:x + s]
    if _has_look_alikes([np.rot90(square, -q) for q in range(4)]):
        return Rejected("rotation-symmetric-square")
    turn_q = int(rng.integers(4))
    shown = np.ascontiguousarray(np.rot90(square, -turn_q))          # k = -q: q clockwise quarter turns
    problem = ("<image>\nThis square picture may have been turned clockwise by 0, 90, 180 or 270 degrees. By how "
               "many degrees clockwise was it turned? Answer with one number: 0, 90, 180 or 270.")
    meta = {"rotation": ROTATIONS[turn_q], "box": [x, y, s], "size": [int(rgb.shape[0]), int(rgb.shape[1])],
            "brightest_side": ROTATION_SIDES[brightest]}
    return Example("rotation", [Image.fromarray(shown)], problem, str(ROTATIONS[turn_q]), meta)


_DEGREES = re.compile(r"(\d{1,3})\s*(?:°|\^\s*\{?\s*\\circ\s*\}?|degrees?|deg)?(?:\s*clockwise)?")


def parse_rotation(content: str, answer: str = "", options: dict | None = None) -> int | None:
    """'90' / '90°' / '90^\\circ' / '90 degrees clockwise' -> 90; None unless exactly one of ROTATIONS."""
    m = _DEGREES.fullmatch(_clean(content).lower())
    value = int(m.group(1)) if m else None
    return value if value in ROTATIONS else None


def trace_rotation(m: dict) -> str:
    """The rotation reasoning: where the picture's own "up" points now, turned into degrees clockwise."""
    deg = m["rotation"]
    up = ROTATION_SIDES[ROTATIONS.index(deg)]
    turn_text = ("so it was not turned" if deg == 0 else
                 f"and carrying the top edge to the {up} edge is a clockwise turn of {deg} degrees")
    return ("I look for the picture's own up direction: which way objects stand, where floor, walls, ceiling or "
            f"sky are, and how the surfaces recede. Its top is now at the {up} edge of the picture, {turn_text}.")


# =====================================================================================================
# The registry: one row per task, the paper's five in its order, then ours. make_example, accuracy and
# reasoning_trace read it; TASKS, RGB_TASKS, DEPTH_TASKS and DEFAULT_TASKS are derived from it.
# =====================================================================================================
@dataclass(frozen=True)
class Task:
    """One pretext task's entry points (the block contract is in the module docstring).

    make(rgb, rng, **options) or, with needs_depth, make(rgb, depth, rng, **options) -> Example | Rejected;
    parse(content, answer, options) -> comparable value | None; trace(meta) -> reasoning text.
    reads_options: the parser gets the problem's lettered text options (options_from_problem), else {}.
    ordering: the parse is a sequence of labels, so accuracy(..., partial=True) can give the fraction of
      positions right (Visual Jigsaw's partial credit).
    depth_order_only: (needs_depth) the answer depends only on the order of the depths: any increasing
      function of the depth map gives the same answer, so a relative (affine-invariant) depth model may feed
      it (make_data.py --depth-model).
    default: one of the paper's five, built by make_data.py --tasks auto; False = opt-in by name.
    short: a short problem text with the same question and answer format, for demo.sh's tiny model (make_data.py
      --short-prompts; its prompts cost it more than its images); "" = the task has none (its problem varies)."""
    name: str
    make: Callable
    parse: Callable
    trace: Callable
    needs_depth: bool = False
    reads_options: bool = False
    ordering: bool = False
    depth_order_only: bool = False
    default: bool = True
    short: str = ""


TASK_SPECS = {spec.name: spec for spec in (
    Task("shuffle", make_shuffle, parse_shuffle, trace_shuffle, ordering=True),
    Task("flip", make_flip, parse_flip, trace_flip, short=FLIP_SHORT),
    Task("crop", make_crop, parse_crop, trace_crop),
    Task("depth", make_depth, parse_depth, trace_depth, needs_depth=True, ordering=True, depth_order_only=True,
         short=DEPTH_SHORT),
    Task("position", make_position, parse_position, trace_position, needs_depth=True, reads_options=True),
    Task("rotation", make_rotation, parse_rotation, trace_rotation, default=False, short=ROTATION_SHORT),
)}
TASKS = tuple(TASK_SPECS)
RGB_TASKS = tuple(name for name, spec in TASK_SPECS.items() if not spec.needs_depth)
DEPTH_TASKS = tuple(name for name, spec in TASK_SPECS.items() if spec.needs_depth)
DEFAULT_TASKS = tuple(name for name, spec in TASK_SPECS.items() if spec.default)        # the paper's five


def task_spec(task: str) -> Task:
    """The registry row of `task`; a ValueError naming the known tasks if there is none."""
    spec = TASK_SPECS.get(task) if isinstance(task, str) else None
    if spec is None:
        raise ValueError(f"unknown task {task!r}; expected one of {tuple(TASK_SPECS)}")
    return spec


def make_example(task: str, rgb: np.ndarray, depth: np.ndarray | None = None,
                 rng: np.random.Generator | None = None, **options) -> Example | Rejected:
    """Make one example of `task` from an RGB image (H, W, 3) uint8 and, for depth tasks, a depth map
    (H, W) with NaN / 0 / inf marking invalid pixels. Everything random comes from `rng`."""
    spec = task_spec(task)
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be an (H, W, 3) uint8 array, got {rgb.shape} {rgb.dtype}")
    rng = np.random.default_rng() if rng is None else rng
    if not spec.needs_depth:
        return spec.make(rgb, rng, **options)
    if depth is None:
        raise ValueError(f"task {task!r} needs a depth map")
    depth = np.asarray(depth)
    if depth.ndim == 3 and depth.shape[2] == 1:
        depth = depth[..., 0]
    if depth.shape != rgb.shape[:2]:
        return Rejected("depth-size-mismatch")
    return spec.make(rgb, depth, rng, **options)


def reasoning_trace(example: Example) -> str:
    """A short, deterministic, obviously templated cold-start response built from the example's metadata:
    <think>explanation</think> then the answer in \\boxed{}."""
    return f"<think>{TASK_SPECS[example.task].trace(example.meta)}</think>\nThe answer is \\boxed{{{example.answer}}}."


# =====================================================================================================
# Shared verifier: the boxed answer, the format check, accuracy and the reward (§3.3)
#   accuracy dispatches to the task's parser through TASK_SPECS
# =====================================================================================================
_BOX_TOKEN = re.compile(r"\\boxed\{|[{}]")


class _Boxes:
    """One linear scan of all \\boxed{…} in a text (see _scan_boxes)."""
    __slots__ = ("last", "leaves", "open_after_last")

    def __init__(self, last, leaves, open_after_last):
        self.last, self.leaves, self.open_after_last = last, leaves, open_after_last


def _scan_boxes(text: str) -> _Boxes:
    """Spans (content start, end) of the balanced boxes of `text`, in one linear pass keeping a brace depth
    and a stack of the open boxes only (megabyte strings and deep nesting stay fast).

    last: the last balanced box (the one that opens last) or None; leaves: every balanced box with no box
    inside it, in closing order; open_after_last: a box opened after `last` ended never closes (a cut-off
    answer switch). A stray '}' at depth 0 is ignored. Braces before the first box cannot change which
    boxes balance, so the scan starts there."""
    depth, stack, last, leaves = 0, [], None, []    # stack entries: [depth at opening, content start, has child]
    for m in _BOX_TOKEN.finditer(text, max(0, text.find("\\boxed{"))):
        tok = m.group()
        if tok != "}":
            if tok != "{":
                if stack:
                    stack[-1][2] = True
                stack.append([depth, m.end(), False])
            depth += 1
        elif depth > 0:
            depth -= 1
            if stack and stack[-1][0] == depth:
                _, start, has_child = stack.pop()
                if not has_child:
                    leaves.append((start, m.start()))
                if last is None or start > last[0]:
                    last = (start, m.start())
    open_after = last is not None and any(start > last[1] for _, start, _ in stack)
    return _Boxes(last, leaves, open_after)


def _last_box(text: str) -> tuple[int, int] | None:
    """(start, end) of the content of the last balanced \\boxed{…}: the one that opens last."""
    return _scan_boxes(text).last


def extract_boxed(text: str) -> str | None:
    """Content of the last balanced \\boxed{…}, stripped; None if there is none."""
    if not isinstance(text, str) or "\\boxed{" not in text:
        return None
    span = _last_box(text)
    return None if span is None else text[span[0]:span[1]].strip()


_THINK_TAG = re.compile(r"<\s*(/?)\s*think\s*>")


def normalise_tags(text: str) -> str:
    """`< think >`, `</ think>`, `< /think >` → `<think>` / `</think>`: whitespace inside the think tags does
    not count against a response (the official img_score strips whitespace around every <, > and /)."""
    return _THINK_TAG.sub(r"<\1think>", text)


def official_boxed(text: str) -> str | None:
    """The official verifier's prediction (mathruler's extract_boxed_content): the stripped content of the
    last `\\boxed{` when it closes, else None (an unclosed last box is no answer)."""
    if not isinstance(text, str) or "\\boxed{" not in text:
        return None
    boxes = _scan_boxes(text)
    if boxes.last is None or boxes.open_after_last:
        return None
    return text[boxes.last[0]:boxes.last[1]].strip()


def format_ok(response: str) -> bool:
    """Format reward: the response starts with <think>, closes it, and then gives a balanced \\boxed{}
    (whitespace inside the think tags ignored, normalise_tags)."""
    if not isinstance(response, str):
        return False
    text = normalise_tags(response.strip())
    if not text.startswith("<think>"):
        return False
    close = text.find("</think>")
    span = _last_box(text) if close >= 0 else None
    return span is not None and span[0] > close


def _committed(response: str, answer: str, spec: Task, options: dict):
    """The parsed answer a response commits to, or None: the last balanced \\boxed{} parses with the task's
    parser, no \\boxed{ opened after it is left unclosed (a cut-off answer switch), and every box after the
    last </think> (the whole text if there is none) parses to that same value (several different boxed
    answers are hedging)."""
    if not isinstance(response, str) or "\\boxed{" not in response:
        return None
    response = normalise_tags(response)
    boxes = _scan_boxes(response)
    if boxes.last is None or boxes.open_after_last:
        return None
    close = response.rfind("</think>")
    contents = {response[a:b].strip() for a, b in boxes.leaves if a > close}
    contents.add(response[boxes.last[0]:boxes.last[1]].strip())
    value = None
    for k, content in enumerate(contents):            # stops at the first box that does not agree
        parsed = spec.parse(content, answer, options) if len(content) <= MAX_ANSWER_CHARS else None
        if parsed is None or (k and parsed != value):
            return None
        value = parsed
    return value


def accuracy(response: str, answer: str, task: str | None, problem: str | None = None,
             partial: bool = False) -> float:
    """1.0 if the response commits to the ground truth (_committed, with the task's parser from TASK_SPECS),
    else 0.0. `problem` (optional) supplies the text options so that 'B. Right' and 'Right' are read as
    option B. partial=True (Visual Jigsaw, arXiv 2509.25190: partial credit for ordering answers): for an
    `ordering` task (shuffle, depth) the fraction of positions at which the committed order equals the
    answer's, so 1.0 only when fully right and 0.0 when nothing parses (or the response hedges); other
    tasks stay 0/1. task None (a record from another source, e.g. the released Spatial-SSRL-81k parquet,
    which has no task field): the official rule, the stripped content of the last box equals the answer
    string exactly. Linear time; never raises on any response."""
    if task is None:
        return float(official_boxed(response) == str(answer))
    spec = task_spec(task)
    options = options_from_problem(problem) if spec.reads_options else {}
    truth = spec.parse(answer, answer, options)
    if truth is None:
        raise ValueError(f"ground truth {answer!r} is not a valid {task} answer")
    value = _committed(response, answer, spec, options)
    if value is None:
        return 0.0
    if partial and spec.ordering:
        return sum(a == b for a, b in zip(value, truth)) / len(truth)
    return float(value == truth)


def reward_terms(response: str, answer: str, task: str | None, problem: str | None = None,
                 finished: bool = True, partial: bool = False) -> tuple:
    """(reward, accuracy, format) of one response: r = 0.9·accuracy + 0.1·format ∈ {0, 0.1, 0.9, 1.0}
    (with partial=True the accuracy of an ordering task is the fraction of positions right, so r takes the
    values in between). finished=False (the completion hit the token budget without an end token) gives
    format 0: a cut-off response is not well formed, whatever its prefix looks like. grpo.py and
    evaluate.py call this."""
    acc = accuracy(response, answer, task, problem, partial)
    fmt = float(format_ok(response) and finished)
    return 0.9 * acc + 0.1 * fmt, acc, fmt


def reward(response: str, answer: str, task: str | None, problem: str | None = None, finished: bool = True,
           partial: bool = False) -> float:
    """Spatial-SSRL reward: r = 0.9·accuracy + 0.1·format ∈ {0, 0.1, 0.9, 1.0} (reward_terms)."""
    return reward_terms(response, answer, task, problem, finished, partial)[0]
