"""Greedy evaluation of Spatial-SSRL on the seven spatial benchmarks and on the held-out pretext split.

Stage 4 of Spatial-SSRL (arXiv 2510.27606, §4, Table 1): greedy decoding of a Qwen2.5-VL / Qwen3-VL checkpoint
on each benchmark's released files, rule-based answer extraction (no GPT judge), one score per benchmark, with
the paper's numbers printed beside ours. `pretext` scores our own held-out test.jsonl with tasks.py's verifiers.

    python evaluate.py --model runs/grpo --bench pretext --data pretext=data/ssrl/test.jsonl --out runs/eval
    torchrun --nproc_per_node 8 evaluate.py --model internlm/Spatial-SSRL-7B --bench all --out runs/eval-ssrl7b \\
        --data spatial457=bench/Spatial457.tsv 3dsrbench=bench/3DSRBench.tsv spatialeval=bench/SpatialEval.tsv \\
        qspatial_plus=bench/QSpatial_plus-00000-of-00001.parquet whatsup=bench/whatsup \\
        viewspatial=bench/ViewSpatial-Bench/ViewSpatial-Bench.json vsibench=bench/VSI-Bench/test-00000-of-00001.parquet
    python evaluate.py --model Qwen/Qwen2.5-VL-7B-Instruct --no-cot --paper-quirks ...   # the paper's ✗ rows
    python evaluate.py --help

Rerunning the same command resumes: OUT/<bench>/predictions.jsonl holds one line per item (id, prompt, raw
output, extracted answer, correct); OUT/results.json, OUT/results.md (+ OUT/results.png with matplotlib).

Paper → code
  Table 1 benchmarks, released files             → load_<bench>() (BENCHES), read_tsv(), read_parquet()
  greedy decoding (VLMEvalKit T=0.01/top-k 1)    → run_bench() → generate_texts() → generate(do_sample=False)
  CoT instruction of the released checkpoints    → tasks.COT_PROMPT via cot_suffix(); answer = last \\boxed{}
  VLMEvalKit MCQ rule matching (3.1)             → match_option()
  Spatial457 answer rules, per-level score       → spatial457_correct(), summarize()
  3DSRBench vanilla / flip / circular / both     → dsr_group_scores()
  QSpatial+ δ₂ (δ₁.₅), units → cm                → parse_quantity(), delta_ok()
  What'sUp "A" substring (paper code)            → score_whatsup(paper_quirks=True)
  ViewSpatial per-type accuracy                  → score_viewspatial(), summarize()
  VSI-Bench exact match + MRA(.50:.95)           → mra(), score_vsibench(), vsi_averages()
  pixel budgets per benchmark (paper setups)     → BENCH_PIXELS

Deviations (paper / official evaluation code)
  1. No GPT judge: an answer the rules cannot read is wrong (VLMEvalKit asks chatgpt-0125 when it has a key).
  2. CoT answers are the last balanced \\boxed{} everywhere (the released Spatial457 scorer never extracts it, so
     CoT scores would be ~0 as committed); without a box the whole response is matched.
  3. What'sUp: options are shuffled per item (seeded) and the single extracted letter must be the gold one;
     --paper-quirks restores the official scoring (gold always "A", hit = "A" occurs in the answer).
  4. The CoT instruction is appended once, after one space, to the last text segment; --paper-quirks appends it
     to every text segment with no separator (VLMEvalKit's preproc_content: 3x on Spatial457).
  5. Spatial457's instruction sentences are our own wording of the VLMEvalKit structure (level-specific role
     sentence, image, question, answer-vocabulary sentence). QSpatial+ uses the benchmark's own system prompt and
     templates (the fork's prompt files are not released); \\boxed{1.5 m} is read as 150 cm (the fork reads 0).
  6. VSI-Bench goes in as the official script passes it: one Qwen2.5-VL video item of --vsi-frames (128)
     frames sampled uniformly (round(linspace(0, n-1, 128)), all frames of shorter videos), each frame
     resized at the image bounds qwen-vl-utils gives a frame list (4..16384 ×28², BENCH_PIXELS), temporal
     patches of 2 frames, positions spaced for --vsi-fps 2 (the processor default). Frames come from PyAV
     (the official script uses decord; their frame counts can differ on some files) or a folder of
     pre-extracted frames. --vsi-as-images gives the old frames-as-images input (not comparable with the
     paper). Qwen3-VL has no video path here (its prompts carry timestamps): use --vsi-as-images. The
     option-prefix bug "A. A. …" is fixed unless --paper-quirks.
  7. ViewSpatial images are resized to 420×280 first (as the official script) and then bounded by the processor
     limits; the answer letter is read with match_option (--paper-quirks: first \\b[A-D]\\b, case-insensitive).
  8. Items whose image cannot be read are skipped and counted (reported beside the score), not scored as wrong.
  9. Batches are formed after sorting items by (image count, prompt length); left padding with the attention
     mask makes the outputs independent of the batch in exact arithmetic (bf16 kernels can differ slightly).
"""
import argparse
import ast
import base64
import csv
import hashlib
import io
import json
import math
import os
import random
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

import tasks
from common import all_reduce_sum, barrier, cleanup_dist, config_parser, print0, setup_dist
from engine import RolloutEngine
from vlm import encode, generate, load_model

BENCH_NAMES = ("pretext", "spatial457", "3dsrbench", "spatialeval", "qspatial_plus", "whatsup", "viewspatial",
               "vsibench")
# (min_pixels, max_pixels) per benchmark, as the paper's setups (VLMEvalKit Qwen2VLChat: 1280..16384 ×28²;
# What'sUp: ≤ 512×28²; ViewSpatial: 256..1280 ×28² after a 420×280 resize; VSI-Bench, per frame: the official
# frame list goes through qwen-vl-utils' fetch_image, i.e. the image bounds 4..16384 ×28², then through the
# video processor, which Qwen2.5-VL checkpoints configure from preprocessor_config.json: 3136..16384 ×28²);
# pretext: None = the bounds the checkpoint was trained with (its saved preprocessor_config.json), so a model
# trained on small images is asked on the same sizes.
BENCH_PIXELS = {"pretext": None, "spatial457": (1280 * 784, 16384 * 784),
                "3dsrbench": (1280 * 784, 16384 * 784), "spatialeval": (1280 * 784, 16384 * 784),
                "qspatial_plus": (1280 * 784, 16384 * 784), "whatsup": (56 * 56, 512 * 784),
                "viewspatial": (256 * 784, 1280 * 784), "vsibench": (4 * 784, 16384 * 784)}
PRETEXT_DEFAULT = "data/ssrl/test.jsonl"   # make_data.py's default output
PAPER_ROWS = ("Qwen2.5-VL-3B", "Qwen2.5-VL-3B CoT", "Spatial-SSRL-3B", "Qwen2.5-VL-7B", "Qwen2.5-VL-7B CoT",
              "Spatial-SSRL-7B")
PAPER = {  # Table 1 of the paper (official repo assets/exp_result.png), % ; see benchmarks.md §0
    "spatial457": (33.70, 34.82, 46.07, 44.67, 44.88, 53.34), "3dsrbench": (50.30, 49.47, 51.72, 53.39, 54.55, 56.53),
    "spatialeval": (54.65, 50.55, 59.59, 62.37, 61.12, 64.03), "qspatial_plus": (33.66, 30.66, 39.60, 46.53, 46.53, 54.46),
    "whatsup": (85.85, 83.54, 86.71, 86.95, 70.61, 90.61), "viewspatial": (35.38, 34.23, 36.62, 36.83, 36.66, 37.81),
    "vsibench": (27.84, 30.67, 33.49, 38.08, 32.69, 39.29)}
METRIC = {"pretext": "accuracy", "spatial457": "accuracy", "3dsrbench": "accuracy (vanilla)",
          "spatialeval": "accuracy", "qspatial_plus": "δ₂ success", "whatsup": "accuracy",
          "viewspatial": "accuracy", "vsibench": "mean (MC exact, MRA)"}


# ----------------------------------------------------------------------------- config
def _f(default, help):
    return field(default=default, metadata={"help": help})


@dataclass
class Config:
    model: str = _f("tiny", "HF id or local HF dir (Qwen2.5-VL / Qwen3-VL), or 'tiny' / 'tiny-qwen3'")
    bench: list = _f(("pretext",), f"benchmarks: {', '.join(BENCH_NAMES)}, or all (= every one given a --data)")
    data: list = _f((), "BENCH=PATH pairs: the released file (or folder) per benchmark (pretext: "
                        f"{PRETEXT_DEFAULT} unless given)")
    out: str = _f("runs/eval", "output folder: <bench>/predictions.jsonl, results.json, results.md, results.png")
    cot: bool = _f(True, "ask for reasoning + \\boxed{} (the released checkpoints' instruction); --no-cot: answer directly")
    paper_quirks: bool = _f(False, "reproduce the official scripts' prompts/scoring (What'sUp 'A' substring, ...)")
    limit: int = _f(0, "evaluate only the first N items of each benchmark (0: all)")
    batch_size: int = _f(8, "prompts per generate call on one rank")
    max_new_tokens: int = _f(2048, "generation budget per answer (VLMEvalKit: 2048; standalone scripts: 4096)")
    pixels: list = _f((), "BENCH=MIN:MAX pixel bounds overriding BENCH_PIXELS, e.g. pretext=3136:12544")
    vsi_frames: int = _f(128, "frames sampled uniformly from each VSI-Bench video (official: 128)")
    vsi_as_images: bool = _f(False, "give VSI-Bench frames as separate images instead of one video item "
                                    "(not the official input; Qwen3-VL needs it)")
    vsi_fps: float = _f(2.0, "frame rate a VSI-Bench video is declared to have: temporal positions spaced by "
                             "2/fps (official: the processor default, 2)")
    seed: int = _f(0, "seed of the What'sUp option shuffle")
    dtype: str = _f("auto", "model dtype: auto (bf16 on CUDA, fp32 on CPU), bfloat16, float16, float32")
    fast: bool = _f(True, "on CUDA use the rollout engine (engine.py: static cache, compiled decode) (static cache, compiled decode) when available")
    plot: bool = _f(True, "write OUT/results.png (needs matplotlib; skipped with a note otherwise)")
    progress: bool = _f(True, "tqdm progress bar")

    def __post_init__(self):
        if self.batch_size < 1 or self.max_new_tokens < 1 or self.vsi_frames < 1 or self.limit < 0 \
                or not self.vsi_fps > 0:
            raise ValueError("--batch-size, --max-new-tokens, --vsi-frames and --vsi-fps must be positive, "
                             "--limit >= 0")
        unknown = [b for b in self.bench if b not in BENCH_NAMES + ("all",)]
        if unknown:
            raise ValueError(f"unknown --bench {unknown}; expected some of {BENCH_NAMES + ('all',)}")
        self.data_paths()
        self.pixel_bounds("pretext")

    def data_paths(self) -> dict:
        out = {}
        for pair in self.data:
            name, sep, path = pair.partition("=")
            if not sep or name not in BENCH_NAMES or not path:
                raise ValueError(f"--data {pair!r}: expected BENCH=PATH with BENCH one of {BENCH_NAMES}")
            out[name] = path
        out.setdefault("pretext", PRETEXT_DEFAULT)
        return out

    def pixel_bounds(self, bench: str) -> tuple | None:
        """(min, max) pixels for a benchmark: --pixels, else BENCH_PIXELS (None: the model's own bounds)."""
        bounds = dict(BENCH_PIXELS)
        for pair in self.pixels:
            m = re.fullmatch(r"([\w]+)=(\d+):(\d+)", pair)
            if not m or m.group(1) not in BENCH_NAMES or int(m.group(2)) > int(m.group(3)):
                raise ValueError(f"--pixels {pair!r}: expected BENCH=MIN:MAX with MIN <= MAX")
            bounds[m.group(1)] = (int(m.group(2)), int(m.group(3)))
        return bounds[bench]

    def benches(self) -> list:
        if "all" not in self.bench:
            return list(dict.fromkeys(self.bench))
        given = {p.partition("=")[0] for p in self.data}
        return [b for b in BENCH_NAMES if b in given or b == "pretext" and Path(PRETEXT_DEFAULT).is_file()]


def build_parser() -> argparse.ArgumentParser:
    """argparse options generated from Config, with sft.py's conventions (config_parser)."""
    return config_parser(Config, "evaluate.py", __doc__.split("\n")[0])


class DataError(ValueError):
    """A benchmark file is missing or not in the expected format; the message names the file."""


class MissingImage(Exception):
    """One item's image cannot be read: the item is skipped and counted, the run goes on."""


# ----------------------------------------------------------------------------- answer extraction and scoring
def answer_text(raw: str, cot: bool) -> str:
    """What the scorers read: the last \\boxed{} content for CoT (the whole response when there is none)."""
    if cot:
        boxed = tasks.extract_boxed(raw)
        if boxed is not None:
            return boxed
    return raw.strip()


_OPTION_PUNCT = re.compile(r"[.()\[\],:;!*#{}]")


def match_option(text: str, options: dict) -> str | None:
    """VLMEvalKit's rule matcher (can_infer): the option letter a free-text answer names, or None.

    1. Punctuation .()[],:;!*#{} becomes spaces; if exactly one option letter stands alone as a token, that
       letter ("B", "(B)", "B. Right", "\\text{B}" → B). Two or more letters name no option ("A or B" → None).
    2. With no standalone letter: the option whose text (lower-cased) occurs in the answer, if exactly one does.
    options maps letters to option texts (e.g. {"A": "left", "B": "right"})."""
    tokens = _OPTION_PUNCT.sub(" ", text.replace("\\text", " ")).split()
    letters = {t for t in tokens if t in options}
    if len(letters) == 1:
        return letters.pop()
    if letters:
        return None
    low = text.lower()
    hits = [k for k, v in options.items() if v and str(v).strip().lower() in low]
    return hits[0] if len(hits) == 1 else None


_NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten".split())}
_SHAPE_FAMILY = {  # Super-CLEVR shapes → their super-category (Spatial457's scorer accepts the same family)
    **{s: "car" for s in ("car", "sedan", "suv", "wagon", "minivan", "truck")},
    **{s: "bus" for s in ("bus", "school", "articulated", "double", "regular")},
    **{s: "motorbike" for s in ("motorbike", "motorcycle", "chopper", "scooter", "cruiser", "dirtbike")},
    **{s: "aeroplane" for s in ("aeroplane", "airplane", "airliner", "jet", "fighter", "biplane")},
    **{s: "bicycle" for s in ("bicycle", "bike", "utility", "tandem", "road", "mountain")}}


def _s457_norm(s: str) -> str:
    s = s.strip().lower().strip("'\"").rstrip(".").strip()
    s = "no" if s == "none" else s
    return _NUMBER_WORDS.get(s, s)


def spatial457_correct(gt: str, pred: str) -> bool:
    """Spatial457 rules: case-insensitive equality after mapping number words to digits and 'none' to 'no';
    '0' answers a 'No'; a digit 1-9 answers a 'Yes'; vehicle shapes count when they share the super-category
    of their first word ('sedan' vs 'suv': both car)."""
    g, p = _s457_norm(gt), _s457_norm(pred)
    if g == p:
        return True
    if g == "no" and p == "0" or g == "yes" and p in "123456789" and len(p) == 1:
        return True
    gf, pf = _SHAPE_FAMILY.get(g.split(" ")[0]) if g else None, _SHAPE_FAMILY.get(p.split(" ")[0]) if p else None
    return gf is not None and gf == pf


_UNIT_CM = {"m": 100.0, "meter": 100.0, "meters": 100.0, "metre": 100.0, "metres": 100.0, "cm": 1.0,
            "centimeter": 1.0, "centimeters": 1.0, "centimetre": 1.0, "centimetres": 1.0, "mm": 0.1,
            "millimeter": 0.1, "millimeters": 0.1, "ft": 30.48, "foot": 30.48, "feet": 30.48, "in": 2.54,
            "inch": 2.54, "inches": 2.54, "km": 1e5, "yard": 91.44, "yards": 91.44, "yd": 91.44}
_NUM = r"\d+(?:\.\d+)?|\.\d+"


def to_cm(value: float, unit: str) -> float | None:
    """value in unit → centimetres; None for an unknown unit."""
    factor = _UNIT_CM.get(unit.strip().lower().rstrip("."))
    return None if factor is None else value * factor


def parse_quantity(text: str) -> float | None:
    """A distance answer in cm, or None. QSpatial's format first: the mean of the numbers in the last
    \\scalar{…} (a range "1-2" → 1.5) with the unit in the last \\distance_unit{…}; else the last "number unit"
    pair in the text (e.g. the content of \\boxed{1.5 meters}, or "about 30 cm")."""
    scal = re.findall(r"scalar\{([^}]*)\}", text)
    unit = re.findall(r"distance_unit\{([^}]*)\}", text)
    if scal and unit:
        nums = [float(x) for x in re.findall(_NUM, scal[-1])]
        if nums:
            return to_cm(sum(nums) / len(nums), unit[-1])
    pairs = re.findall(rf"({_NUM})\s*(?:\\(?:text|mathrm)\{{)?\s*([a-zA-Z]+)", text)
    for num, u in reversed(pairs):
        cm = to_cm(float(num), u)
        if cm is not None:
            return cm
    return None


def delta_ok(pred_cm: float | None, gt_cm: float, delta: float = 2.0) -> bool:
    """QSpatial success: max(pred/gt, gt/pred) < delta (δ₂ = 2, δ₁.₅ = 1.5); an unreadable answer fails."""
    if pred_cm is None or pred_cm <= 0 or gt_cm <= 0:
        return False
    return max(pred_cm / gt_cm, gt_cm / pred_cm) < delta


MRA_THRESHOLDS = tuple(round(0.50 + 0.05 * i, 2) for i in range(10))   # 0.50, 0.55, …, 0.95


def mra(pred: float | None, gt: float) -> float:
    """Mean relative accuracy (VSI-Bench): mean over θ ∈ {0.50, …, 0.95} of 1[|pred − gt| / gt < 1 − θ]."""
    if pred is None or gt == 0 or not math.isfinite(pred):
        return 0.0
    r20 = 20 * abs(pred - gt) / abs(gt)   # θ_k = 0.50 + 0.05k: rel < 1 - θ_k ⇔ 20·rel < 10 - k (exact in floats)
    return sum(r20 < 10 - k for k in range(len(MRA_THRESHOLDS))) / len(MRA_THRESHOLDS)


def first_number(text: str) -> float | None:
    m = re.search(r"-?(?:\d+(?:\.\d+)?|\.\d+)", text.replace(",", ""))
    return float(m.group()) if m else None


def dsr_group_scores(rows: list) -> dict:
    """3DSRBench settings from (qid, hit) rows, in %: vanilla = mean hit; flip = qid minus '-flip' grouped;
    circular = qid[:8] (qid[:13] for '-flip' ids) grouped; flip_circular = qid[:8] grouped. A group counts
    only if every member is right."""
    def grouped(key):
        groups = {}
        for qid, hit in rows:
            groups.setdefault(key(qid), []).append(hit)
        return 100.0 * sum(all(h) for h in groups.values()) / max(len(groups), 1)
    return {"vanilla": 100.0 * sum(h for _, h in rows) / max(len(rows), 1),
            "flip": grouped(lambda q: q.replace("-flip", "")),
            "circular": grouped(lambda q: q[:13] if "-flip" in q else q[:8]),
            "flip_circular": grouped(lambda q: q[:8])}


def vsi_averages(rows: list) -> dict:
    """VSI-Bench aggregates from (question_type, score) rows, in %: micro = mean over all questions (the
    Spatial-SSRL script); macro = mean over tasks, rel_direction easy/medium/hard merged first (official)."""
    per = {}
    for qt, s in rows:
        key = "object_rel_direction" if qt.startswith("object_rel_direction") else qt
        per.setdefault(key, {}).setdefault(qt, []).append(s)
    task_means = []
    for subs in per.values():
        task_means.append(sum(sum(v) / len(v) for v in subs.values()) / len(subs))
    return {"micro": 100.0 * sum(s for _, s in rows) / max(len(rows), 1),
            "macro": 100.0 * sum(task_means) / max(len(task_means), 1)}


# ----------------------------------------------------------------------------- items and prompts
@dataclass
class Item:
    """One benchmark question: chat content (text/image segments, images in order), image sources, truth."""
    id: str
    category: str
    texts: list               # text segments; an image goes before texts[i] for each i in image_slots
    images: list              # image sources: ("b64", str) | ("path", Path) | ("bytes", bytes) | ("frames", ...)
    truth: dict
    image_slots: list = field(default_factory=list)
    resize: tuple | None = None   # (w, h) every image is resized to first (ViewSpatial)
    error: str = ""               # set when the item cannot be asked (malformed row): skipped and counted

    def prompt_text(self) -> str:
        parts = []
        for i, t in enumerate(self.texts):
            parts += ["<image>"] * self.image_slots.count(i) + [t]
        return "".join(parts)

    def sort_key(self) -> tuple:
        return (len(self.images), len(self.prompt_text()))


def cot_suffix(texts: list, cot: bool, paper_quirks: bool, plain: str = "") -> list:
    """Append the CoT instruction: once, after a space, to the last text (default); to every text with no
    separator (--paper-quirks, VLMEvalKit). Without CoT, append `plain` (if any) to the last text."""
    texts = list(texts)
    if cot and paper_quirks:
        return [t + tasks.COT_PROMPT for t in texts]
    if cot:
        texts[-1] = tasks.with_cot(texts[-1]) if texts[-1].strip() else tasks.COT_PROMPT
    elif plain:
        texts[-1] = texts[-1] + plain
    return texts


def mcq_prompt(question: str, options: dict, hint: str = "") -> str:
    """VLMEvalKit ImageMCQDataset prompt."""
    text = f"Hint: {hint}\n" if hint else ""
    text += f"Question: {question}\nOptions:\n"
    text += "".join(f"{k}. {v}\n" for k, v in options.items())
    return text + "Please select the correct answer from the options above. \n"


S457_FOCUS = {"L1_single": "the attributes of a single object", "L2_objects": "the attributes of several objects",
              "L3_2d_spatial": "the 2D spatial relations between objects as seen from the camera",
              "L4_occ": "which objects occlude or are occluded by others",
              "L4_pose": "the 3D pose (facing direction) of the objects",
              "L5_6d_spatial": "the 3D spatial relations between objects from the objects' own viewpoint",
              "L5_collision": "whether moving objects would collide"}


def spatial457_texts(question: str, level: str) -> list:
    """Our wording of the Spatial457 prompt: role sentence, [image], question, answer-vocabulary sentence."""
    intro = (f"You answer questions about an image of toy vehicles. Look at the image, work out "
             f"{S457_FOCUS.get(level, 'the objects and their relations')}, and answer the question.\n")
    outro = ("\nObjects have a size (small, large), a colour (gray, blue, purple, brown, green, cyan, red, yellow) "
             "and a shape (a car, bus, motorbike, aeroplane or bicycle type such as sedan, school bus, airliner). "
             "Answer with (1) a word or phrase naming an attribute or a direction (left, right, front, back), "
             "or (2) an integer from 0 to 10 for a counting question, or (3) Yes or No.")
    return [intro, question, outro]


QSPATIAL_SYSTEM = ("You will be provided with a question and a 2D image. The question involves measuring the precise "
                   "distance in 3D space through a 2D image. You will answer the question by providing a numeric "
                   "answer consisting of a scalar and a distance unit in the format of "
                   "\"\"\"\\scalar{scalar} \\distance_unit{distance unit}\"\"\" at the end of your response.")
QSPATIAL_COT = "\nLet's thinkg step by step and start by finding good reference objects or object parts in the image."


# ----------------------------------------------------------------------------- reading the released files
def _require(module: str, what: str):
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        raise DataError(f"{what} needs the optional package {module!r}: pip install {'av' if module == 'av' else module}")


def read_tsv(path: Path, required: tuple) -> list:
    """VLMEvalKit TSV rows as dicts (csv module, tab-separated, field size limit raised for base64 images).
    A row whose field count differs from the header's is returned as {"_error": ...}."""
    csv.field_size_limit(min(sys.maxsize, 2 ** 31 - 1))
    if not path.is_file():
        raise DataError(f"{path}: no such file (expected a VLMEvalKit TSV with columns {', '.join(required)})")
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        missing = [c for c in required if header is None or c not in header]
        if missing:
            raise DataError(f"{path}: not a VLMEvalKit TSV with columns {', '.join(required)} (missing {missing})")
        for k, values in enumerate(reader):
            if len(values) != len(header):
                rows.append({"_error": f"row {k + 2}: {len(values)} fields, header has {len(header)}",
                             "index": values[0] if values else f"row{k + 2}"})
            else:
                rows.append(dict(zip(header, values)))
    return rows


def read_parquet(path: Path) -> list:
    """Rows of a parquet file as dicts (pyarrow, optional and imported lazily)."""
    if not path.is_file():
        raise DataError(f"{path}: no such file (expected a Hugging Face parquet file)")
    pq = _require("pyarrow.parquet", f"reading {path}")
    try:
        return pq.read_table(path).to_pylist()
    except Exception as e:   # pyarrow raises its own error types for a file that is not parquet
        raise DataError(f"{path}: not a readable parquet file ({type(e).__name__}: {e})") from None


def read_json(path: Path, what: str):
    if not path.is_file():
        raise DataError(f"{path}: no such file (expected {what})")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e}); expected {what}") from None


def tsv_images(row: dict, by_index: dict) -> list:
    """The image sources of a TSV row: base64, a string list of base64 (multi-image), or the index of another
    row whose image is reused (a short field)."""
    s = (row.get("image") or "").strip()
    if len(s) <= 64 and s in by_index and by_index[s] is not row:
        s = (by_index[s].get("image") or "").strip()
    if s.startswith("["):
        try:
            return [("b64", x) for x in ast.literal_eval(s)]
        except (ValueError, SyntaxError):
            return [("bad", "image field looks like a list but does not parse")]
    return [("b64", s)] if s else [("bad", "empty image field")]


def open_image(src: tuple) -> Image.Image:
    """One RGB PIL image from a source tuple; MissingImage when it cannot be read."""
    kind, value = src
    try:
        if kind == "b64":
            data = base64.b64decode(value, validate=False)
        elif kind == "bytes":
            data = value
        elif kind == "path":
            data = Path(value).read_bytes()
        else:
            raise MissingImage(value)
        with Image.open(io.BytesIO(data)) as im:
            return im.convert("RGB")
    except MissingImage:
        raise
    except Exception as e:
        raise MissingImage(f"{kind} image unreadable ({type(e).__name__}: {e})") from None


def _options(row: dict) -> dict:
    return {k: str(row[k]).strip() for k in "ABCDEFGH" if row.get(k) not in (None, "", "nan", "None")}


def _tsv_items(path: Path, required: tuple, make) -> list:
    rows = read_tsv(path, required)
    by_index = {r.get("index"): r for r in rows}
    items = []
    for r in rows:
        if "_error" in r:
            items.append(Item(str(r["index"]), "?", [""], [], {}, error=f"malformed TSV {r['_error']}"))
        else:
            it = make(r, tsv_images(r, by_index))
            it.image_slots = it.image_slots or [0] * len(it.images)
            items.append(it)
    return items


def load_spatial457(path: Path, cfg: Config) -> list:
    def make(r, ims):
        texts = cot_suffix(spatial457_texts(r["question"], r["category"]), cfg.cot, cfg.paper_quirks,
                           plain="" if cfg.cot else "\nPlease directly give the answer.")
        return Item(r["index"], r["category"], texts, ims, {"answer": r["answer"]}, image_slots=[1] * len(ims))
    return _tsv_items(path, ("index", "image", "question", "answer", "category"), make)


def _mcq_item(r: dict, ims: list, cfg: Config, category: str) -> Item:
    opts = _options(r)
    texts = cot_suffix([mcq_prompt(r["question"], opts, r.get("hint", "") if r.get("hint") != "nan" else "")],
                       cfg.cot, cfg.paper_quirks)
    return Item(r["index"], category, texts, ims, {"answer": r["answer"].strip(), "options": opts,
                                                    "qid": r.get("qid", "")})


def load_3dsrbench(path: Path, cfg: Config) -> list:
    return _tsv_items(path, ("index", "image", "question", "A", "B", "answer", "category"),
                      lambda r, ims: _mcq_item(r, ims, cfg, r["category"]))


def load_spatialeval(path: Path, cfg: Config) -> list:
    if path.suffix == ".parquet":
        return spatialeval_parquet_items(read_parquet(path), cfg)
    return _tsv_items(path, ("index", "image", "question", "A", "B", "answer"),
                      lambda r, ims: _mcq_item(r, ims, cfg, r.get("category") or r.get("l2-category") or "all"))


def _parquet_image(v) -> tuple:
    if isinstance(v, dict) and v.get("bytes"):
        return ("bytes", v["bytes"])
    if isinstance(v, (bytes, bytearray)):
        return ("bytes", bytes(v))
    return ("bad", "no image bytes in the parquet row")


def spatialeval_parquet_items(rows: list, cfg: Config) -> list:
    """HF MilaWang/SpatialEval rows (id, text with the options inside, image, oracle_option)."""
    items = []
    for r in rows:
        opts = dict(re.findall(r"^\s*([A-H])\.\s*(.+?)\s*$", r.get("text", ""), flags=re.M))
        texts = cot_suffix([r["text"]], cfg.cot, cfg.paper_quirks)
        items.append(Item(str(r["id"]), str(r["id"]).split(".")[0], texts, [_parquet_image(r.get("image"))],
                          {"answer": str(r["oracle_option"]).strip(), "options": opts}, image_slots=[0]))
    return items


def load_qspatial_plus(path: Path, cfg: Config) -> list:
    rows = read_parquet(path)
    items = []
    for k, r in enumerate(rows):
        if "QSpatial_scannet" in str(r.get("image_path", "")):
            continue
        text = f"{QSPATIAL_SYSTEM}\nQuestion: {r['question']}" + (QSPATIAL_COT if cfg.cot else "")
        gt = to_cm(float(r["answer_value"]), str(r["answer_unit"]))
        items.append(Item(str(r.get("id", k)), str(r.get("question_type", "all")), [text],
                          [_parquet_image(r.get("image"))], {"answer_cm": gt, "answer": f"{r['answer_value']} "
                                                             f"{r['answer_unit']}"}, image_slots=[0]))
    return items


WHATSUP_FILES = {"A": "controlled_images_dataset.json", "B": "controlled_clevr_dataset.json"}


def _find_file(root: Path, rel: str) -> Path:
    """A released relative path under root (or its parent), else by folder/name under root."""
    p = Path(rel)
    for cand in (root / p, root.parent / p, root / p.parent.name / p.name, root / p.name):
        if cand.is_file():
            return cand
    return root / p


def load_whatsup(path: Path, cfg: Config) -> list:
    """What'sUp Controlled_Images_A/B: a folder holding the two JSON files (and the image folders), or one JSON."""
    files = [("A" if "images" in path.name else "B", path)] if path.suffix == ".json" else \
        [(s, path / f) for s, f in WHATSUP_FILES.items() if (path / f).is_file()]
    if not files:
        raise DataError(f"{path}: expected {' and/or '.join(WHATSUP_FILES.values())} (What'sUp release) in it")
    items = []
    for subset, f in files:
        for k, r in enumerate(read_json(f, "a JSON list of {image_path, caption_options}")):
            caps = r["caption_options"]
            order = list(range(len(caps)))
            if not cfg.paper_quirks:
                random.Random(f"{cfg.seed}:{subset}:{k}").shuffle(order)
            opts = {"ABCD"[i]: caps[j] for i, j in enumerate(order)}
            caption_text = "\n".join(f"{L}: {c}" for L, c in opts.items())
            head = "Based on the image, choose the correct option from the list below."
            if cfg.cot:
                text = head + tasks.COT_PROMPT + caption_text if cfg.paper_quirks else \
                    f"{head}\n\n{caption_text}\n{tasks.COT_PROMPT}"
            else:
                text = f"{head} Only respond the corresponding letter (e.g., C).\n\n{caption_text}"
            items.append(Item(f"{subset}-{k}", f"Controlled_Images_{subset}", [text],
                              [("path", _find_file(f.parent, r["image_path"]))],
                              {"answer": "ABCD"[order.index(0)], "options": opts}, image_slots=[0]))
    return items


def load_viewspatial(path: Path, cfg: Config) -> list:
    """ViewSpatial-Bench.json; image paths are relative to the JSON's folder (or its parent)."""
    items = []
    for k, r in enumerate(read_json(path, "ViewSpatial-Bench.json: a JSON list of {question_type, image_path, "
                                          "question, answer, choices}")):
        opts = dict(re.findall(r"^\s*([A-D])\.\s*(.+?)\s*$", r["choices"], flags=re.M))
        if cfg.cot:
            tail = "\nThe final answer should be the option letter from the given choices.\n" + tasks.COT_PROMPT
        else:
            tail = "\nReply only to the corresponding option.\nAnswer:"
        ims = [("path", _find_file(path.parent, p)) for p in r["image_path"]]
        items.append(Item(str(k), r["question_type"], [f"{r['question']}\n{r['choices']}{tail}"], ims,
                          {"answer": r["answer"].split(".")[0].strip(), "options": opts},
                          image_slots=[0] * len(ims), resize=(420, 280)))
    return items


VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".mov", ".webm")


def load_vsibench(path: Path, cfg: Config) -> list:
    """VSI-Bench questions (HF parquet, or Spatial-SSRL's flattened JSON) + {dataset}/{scene}.mp4 videos (or a
    folder {dataset}/{scene}/ of pre-extracted frames) under the data file's folder."""
    rows = read_parquet(path) if path.suffix == ".parquet" else \
        read_json(path, "a JSON list of VSI-Bench questions (mp4_path/question_type/question/answer/A-D)")
    items = []
    for k, r in enumerate(rows):
        if "mp4_path" in r:   # Spatial-SSRL's vsi_bench.json: absolute paths on the authors' cluster
            mp4 = Path(r["mp4_path"])
            video = mp4 if mp4.exists() else path.parent / mp4.parent.name / mp4.name
            opts = [r[L] for L in "ABCD" if r.get(L)]
            gt = str(r["answer"])
        else:
            video = path.parent / str(r["dataset"]) / f"{r['scene_name']}.mp4"
            opts, gt = list(r.get("options") or []), str(r["ground_truth"])
        items.append(Item(str(r.get("id", k)), r["question_type"], [vsi_prompt(r["question"], opts, cfg)],
                          [("frames", video)], {"answer": gt, "options": {o[0]: o[2:].strip() for o in opts}}))
    return items


def vsi_prompt(question: str, options: list, cfg: Config) -> str:
    """Spatial-SSRL's VSI-Bench prompt (its typo and "A. A. …" option bug only with --paper-quirks)."""
    mc = bool(options)
    if cfg.paper_quirks:
        text = "Watch the given video and anser the following question.\n\n" + question
        text += "".join(f"{o[0]}. {o}" for o in options)
    else:
        text = "Watch the given video and answer the following question.\n\n" + question
        text += "".join(f"\n{o}" for o in options)
    kind = "the option letter from the given choices" if mc else "a number(integer or decimal)"
    if cfg.cot:
        return text + f"\nThe final answer should be {kind}.\n" + tasks.COT_PROMPT
    return text + ("\nAnswer directly with the option letter from the given choices." if mc
                   else "\nAnswer directly with a number(integer or decimal).")


def sample_indices(n: int, k: int) -> list:
    """k frame indices spread uniformly over n frames (all of them when n <= k): round(linspace(0, n-1, k))."""
    if n <= k:
        return list(range(n))
    return [round(i * (n - 1) / (k - 1)) if k > 1 else 0 for i in range(k)]


def video_frames(video: Path, k: int) -> list:
    """k uniformly sampled RGB frames: from a folder of pre-extracted frames (video path without its suffix,
    files sorted by name) or by decoding the video with PyAV."""
    folder = video.with_suffix("")
    if folder.is_dir():
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))
        if not files:
            raise MissingImage(f"{folder}: no frame images")
        return [open_image(("path", files[i])) for i in sample_indices(len(files), k)]
    if not video.is_file():
        raise MissingImage(f"{video}: no such video (nor a folder {folder} of frames)")
    av = _require("av", f"decoding {video} (or extract its frames into {folder}/)")
    try:
        with av.open(str(video)) as container:
            n = container.streams.video[0].frames   # the header's count; 0 when the container has none
        if n <= 0:
            n = _decode_frames(av, video, set())[1]
        frames, decoded = _decode_frames(av, video, set(sample_indices(n, k)))
        if decoded < n:   # the header overstated the count: sample from the frames there are
            frames, _ = _decode_frames(av, video, set(sample_indices(decoded, k)))
    except (getattr(getattr(av, "error", None), "FFmpegError", OSError), OSError, ValueError, IndexError) as e:
        raise MissingImage(f"{video}: cannot decode ({type(e).__name__}: {e})") from None
    if not frames:
        raise MissingImage(f"{video}: no frames decoded")
    return frames


def _decode_frames(av, video: Path, keep: set) -> tuple:
    """(the RGB frames whose index is in keep, in order; the number of frames decoded). Decoding stops after
    the last kept frame; with keep empty it runs to the end (counting)."""
    frames, n, last = [], 0, max(keep, default=None)
    with av.open(str(video)) as container:
        for n, f in enumerate(container.decode(video=0), 1):
            if n - 1 in keep:
                frames.append(f.to_image().convert("RGB"))
            if last is not None and n - 1 >= last:
                break
    return frames, n


def load_pretext(path: Path, cfg: Config) -> list:
    """Our held-out test.jsonl (make_data.py); prompts exactly as in training (build_messages)."""
    if not path.is_file():
        raise DataError(f"{path}: no such file (expected make_data.py's test.jsonl)")
    items = []
    with open(path, encoding="utf-8") as f:
        for k, line in enumerate(f):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
                texts = tasks.with_cot(r["problem"]).split("<image>")
                ims = [("path", path.parent / p) for p in r["images"]]
                slots = list(range(1, len(texts)))
                items.append(Item(str(r["id"]), r["task"], texts, ims, {"answer": r["answer"], "task": r["task"]},
                                  image_slots=slots))
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                items.append(Item(f"line{k + 1}", "?", [""], [], {}, error=f"malformed record ({e})"))
    return items


def is_video(item: Item) -> bool:
    """A VSI-Bench item: its one image source is a video (or a folder of its frames)."""
    return bool(item.images) and item.images[0][0] == "frames"


def load_item_images(item: Item, cfg: Config) -> tuple:
    """(images, image_slots) of one item, videos expanded to frames; MissingImage if any is unreadable."""
    if is_video(item):
        frames = video_frames(Path(item.images[0][1]), cfg.vsi_frames)
        return frames, [0] * len(frames)
    ims = [open_image(s) for s in item.images]
    if item.resize:
        ims = [im.resize(item.resize, Image.BICUBIC) for im in ims]
    return ims, item.image_slots


LOADERS = {"pretext": load_pretext, "spatial457": load_spatial457, "3dsrbench": load_3dsrbench,
           "spatialeval": load_spatialeval, "qspatial_plus": load_qspatial_plus, "whatsup": load_whatsup,
           "viewspatial": load_viewspatial, "vsibench": load_vsibench}


def load_bench(name: str, path: str, cfg: Config) -> list:
    """The benchmark's items, ids made unique, first --limit of them."""
    items = LOADERS[name](Path(path), cfg)
    seen = {}
    for it in items:
        n = seen.get(it.id, 0)
        seen[it.id] = n + 1
        if n:
            it.id = f"{it.id}#{n}"
    return items[:cfg.limit] if cfg.limit else items


# ----------------------------------------------------------------------------- scoring per benchmark
def score_item(bench: str, item: Item, raw: str, cfg: Config) -> dict:
    """{'extracted', 'correct' (0..1), extra fields for the summary} for one model output."""
    ans = answer_text(raw, cfg.cot)
    t = item.truth
    if bench == "pretext":
        acc = tasks.accuracy(raw, t["answer"], t["task"])
        return {"extracted": tasks.extract_boxed(raw), "correct": acc, "format": float(tasks.format_ok(raw)),
                "reward": tasks.reward(raw, t["answer"], t["task"])}
    if bench == "spatial457":
        return {"extracted": ans, "correct": float(spatial457_correct(t["answer"], ans))}
    if bench in ("3dsrbench", "spatialeval", "viewspatial"):
        if bench == "viewspatial" and cfg.paper_quirks:
            m = re.search(r"\b([A-D])\b", tasks.extract_boxed(raw) or "" if cfg.cot else raw, flags=re.I)
            letter = m.group(1).upper() if m else None
        else:
            letter = match_option(ans, t["options"])
        return {"extracted": letter, "correct": float(letter == t["answer"]), "qid": t.get("qid", "")}
    if bench == "qspatial_plus":
        cm = parse_quantity(ans)
        cm = parse_quantity(raw) if cm is None else cm
        return {"extracted": cm, "correct": float(delta_ok(cm, t["answer_cm"])),
                "delta_1_5": float(delta_ok(cm, t["answer_cm"], 1.5))}
    if bench == "whatsup":
        return score_whatsup(raw, t, cfg)
    if bench == "vsibench":
        return score_vsibench(ans, t, cfg)
    raise ValueError(bench)


def score_whatsup(raw: str, truth: dict, cfg: Config) -> dict:
    """Default: the one letter the answer names must be the gold one. --paper-quirks (official main.py): the
    gold is always A and any "A" in the answer (last boxed{} for CoT, '' without one) is a hit."""
    if cfg.paper_quirks:
        ans = (re.findall(r"boxed\{([^}]*)\}", raw) or [""])[-1] if cfg.cot else raw
        return {"extracted": ans, "correct": float("A" in ans)}
    letter = match_option(answer_text(raw, cfg.cot), truth["options"])
    return {"extracted": letter, "correct": float(letter == truth["answer"])}


def score_vsibench(ans: str, truth: dict, cfg: Config) -> dict:
    """Multiple choice: exact letter (--paper-quirks: the answer must be a single letter); numbers: MRA."""
    if truth["options"]:
        if cfg.paper_quirks:
            letter = ans.strip().upper() if len(ans.strip()) == 1 and ans.strip().isalpha() else None
        else:
            letter = match_option(ans, truth["options"])
        return {"extracted": letter, "correct": float(letter == truth["answer"].strip().upper())}
    pred = first_number(ans)
    return {"extracted": pred, "correct": mra(pred, float(truth["answer"]))}


def summarize(bench: str, records: list) -> dict:
    """Overall score (%), counts, per-category scores and the benchmark's extra settings."""
    scored = [r for r in records if not r.get("skipped")]
    mean = lambda xs: 100.0 * sum(xs) / len(xs) if xs else 0.0
    cats = {}
    for r in scored:
        cats.setdefault(r["category"], []).append(r["correct"])
    out = {"metric": METRIC[bench], "score": mean([r["correct"] for r in scored]), "n": len(scored),
           "skipped": len(records) - len(scored), "categories": {c: mean(v) for c, v in sorted(cats.items())},
           "paper": dict(zip(PAPER_ROWS, PAPER[bench])) if bench in PAPER else {}}
    if bench == "pretext":
        out["format"] = mean([r["format"] for r in scored])
        out["reward"] = mean([r["reward"] for r in scored]) / 100.0
    if bench == "3dsrbench" and all(r.get("qid") for r in scored):
        out["settings"] = dsr_group_scores([(r["qid"], r["correct"] == 1.0) for r in scored])
    if bench == "qspatial_plus":
        out["delta_1_5"] = mean([r["delta_1_5"] for r in scored])
    if bench == "vsibench":
        out["settings"] = vsi_averages([(r["category"], r["correct"]) for r in scored])
    return out


# ----------------------------------------------------------------------------- predictions file (resumable)
def read_predictions(path: Path, repair: bool = True) -> dict:
    """id → record of a predictions.jsonl. A last line cut by a kill (no newline, or not JSON) is not trusted:
    with repair the file is truncated to the last complete line, so the item is asked again."""
    if not path.is_file():
        return {}
    data = path.read_bytes()
    done, good_end = {}, 0
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            break
        done[rec["id"]] = rec
        good_end += len(line)
    if repair and good_end < len(data):
        with open(path, "r+b") as f:
            f.truncate(good_end)
    return done


def append_predictions(path: Path, records: list) -> None:
    """One line per record, flushed and fsynced (a kill loses at most the line being written)."""
    if not records:
        return
    with open(path, "a", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def vsi_input(cfg: Config) -> str:
    """How VSI-Bench frames reach the model: "video" (one video item, official) or "images"."""
    return "images" if cfg.vsi_as_images else "video"


def run_identity(bench: str, path: str, cfg: Config) -> dict:
    """Settings that change the predictions; a resumed run must match them."""
    vsi = bench == "vsibench"
    return {"model": cfg.model, "data": str(path), "cot": cfg.cot, "paper_quirks": cfg.paper_quirks,
            "max_new_tokens": cfg.max_new_tokens, "pixels": list(cfg.pixel_bounds(bench) or ()),
            "vsi_frames": cfg.vsi_frames if vsi else None, "vsi_input": vsi_input(cfg) if vsi else None,
            "vsi_fps": cfg.vsi_fps if vsi and not cfg.vsi_as_images else None, "seed": cfg.seed}


def check_identity(bench_dir: Path, ident: dict) -> None:
    f = bench_dir / "run.json"
    if f.is_file():
        old = json.loads(f.read_text())
        diff = {k: (old.get(k), v) for k, v in ident.items() if old.get(k) != v}
        if diff:
            raise DataError(f"{bench_dir} holds predictions made with other settings {diff} (old, new); "
                            "use another --out or delete that folder")
    else:
        bench_dir.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(ident, indent=1))


# ----------------------------------------------------------------------------- generation
class Generator:
    """Greedy completions for encode() batches through the shared generation path (vlm.generate, or engine.RolloutEngine).

    Every sampling field is explicit (do_sample False, temperature 1, top_p 1, top_k 0), so nothing comes from
    the checkpoint's generation_config. On CUDA (--fast) the batches go through RolloutEngine: the loaded
    bf16 model decoded in place (no second copy), static KV cache, compiled decode, prompts padded to length
    buckets and batch_size rows per call, so compilation happens once per bucket. Elsewhere generate.
    engine=True forces the engine (its CPU twin runs without compilation; the tests compare the two)."""

    def __init__(self, model, tokenizer, cfg: Config, device, engine: bool | None = None):
        self.model, self.tok, self.cfg, self.device = model, tokenizer, cfg, device
        self.model_type = model.config.model_type   # video items: Qwen2.5-VL only
        use = cfg.fast and device.type == "cuda" if engine is None else engine
        self.engine = RolloutEngine(model, prompts_per_call=cfg.batch_size) if use else None
        if self.engine is not None:
            self.model = None   # the engine holds its own copy

    def __call__(self, batch: dict) -> tuple:
        """(texts, generated token counts) for a left-padded batch."""
        greedy = dict(max_new_tokens=self.cfg.max_new_tokens, do_sample=False, temperature=1.0, top_p=1.0,
                      top_k=0)
        if self.engine is not None:
            out = self.engine.generate(batch, self.tok, **greedy)
        else:
            out = generate(self.model, batch, self.tok, **greedy)
        ids, mask = (t.cpu() for t in out)
        texts = [self.tok.decode(ids[i][mask[i]].tolist(), skip_special_tokens=True) for i in range(len(ids))]
        return texts, [int(m.sum()) for m in mask]


def to_messages(item: Item, n_images_slots: list, video: dict | None = None) -> list:
    """One user turn: item.texts with an image item before texts[i] for each i in n_images_slots; a video
    item ({"type": "video", "video": frames, ...}, vlm.encode) goes first."""
    content = [video] if video else []
    for i, t in enumerate(item.texts):
        content += [{"type": "image"}] * n_images_slots.count(i)
        if t:
            content.append({"type": "text", "text": t})
    return [{"role": "user", "content": content}]


def answer_batch(bench: str, items: list, gen: Generator, ip, cfg: Config) -> tuple:
    """Prediction records for a batch: unreadable items become skipped records; the rest are generated
    together and scored. Returns (records, generated tokens)."""
    records, convs, images, asked = [], [], [], []
    for it in items:
        base = {"id": it.id, "category": it.category, "prompt": it.prompt_text()}
        if it.error:
            records.append({**base, "skipped": it.error})
            continue
        try:
            ims, slots = load_item_images(it, cfg)
        except MissingImage as e:
            records.append({**base, "skipped": f"image: {e}"})
            continue
        if is_video(it) and not cfg.vsi_as_images:   # one video item of all the frames (official input)
            convs.append(to_messages(it, [], {"type": "video", "video": ims, "fps": cfg.vsi_fps}))
            images.append([])
        else:
            convs.append(to_messages(it, slots))
            images.append(ims)
        asked.append((it, base))
    if not asked:
        return records, 0
    batch = encode(convs, images, gen.tok, ip, padding_side="left")
    texts, ntok = gen(batch)
    for (it, base), raw in zip(asked, texts):
        records.append({**base, "raw": raw, **score_item(bench, it, raw, cfg)})
    return records, sum(ntok)


# ----------------------------------------------------------------------------- one benchmark, all ranks
def gather_records(records: list) -> list:
    """Every rank's records on every rank (all_gather_object); the input itself in one process."""
    import torch.distributed as dist
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return records
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, records)
    return [r for part in out for r in part]


def shard_batches(todo: list, rank: int, world: int, batch_size: int) -> tuple:
    """Length-bucketed batches of this rank's shard, and the number of rounds every rank runs.

    Items are sorted by (image count, prompt length) and dealt round-robin, so each rank's batches hold
    prompts of similar length; ranks with fewer batches run empty rounds (they still join the gather)."""
    order = sorted(todo, key=Item.sort_key)
    mine = order[rank::world]
    batches = [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]
    per_rank = -(-len(order) // world) if order else 0
    return batches, -(-per_rank // batch_size)


def run_bench(bench: str, path: str, cfg: Config, gen: Generator, ip, d, own_bounds: tuple) -> dict:
    """Ask every item not yet in OUT/<bench>/predictions.jsonl, append the answers, return the summary."""
    from tqdm import tqdm
    bench_dir = Path(cfg.out) / bench
    preds = bench_dir / "predictions.jsonl"
    items = load_bench(bench, path, cfg)
    if d.is_main:
        check_identity(bench_dir, run_identity(bench, path, cfg))
        read_predictions(preds, repair=True)
    barrier()
    done = read_predictions(preds, repair=False)
    todo = [it for it in items if it.id not in done]
    if bench == "vsibench" and not cfg.vsi_as_images and gen.model_type != "qwen2_5_vl":
        raise DataError(f"VSI-Bench as video needs a Qwen2.5-VL model ({cfg.model} is {gen.model_type}); "
                        "use --vsi-as-images")
    ip.size = dict(zip(("shortest_edge", "longest_edge"), cfg.pixel_bounds(bench) or own_bounds))
    batches, rounds = shard_batches(todo, d.rank, d.world_size, cfg.batch_size)
    mode = f", {cfg.vsi_frames} frames as {vsi_input(cfg)}" if bench == "vsibench" else ""
    print0(f"{bench}: {len(items)} items{mode}, {len(done)} done before, {len(todo)} to ask "
               f"({d.world_size} rank(s), {rounds} rounds of <= {cfg.batch_size})")
    t0, ntok, nasked = time.time(), 0, 0
    bar = tqdm(total=len(todo), desc=bench, disable=not (d.is_main and cfg.progress), dynamic_ncols=True)
    for k in range(rounds):
        recs, n = answer_batch(bench, batches[k], gen, ip, cfg) if k < len(batches) else ([], 0)
        ntok += n
        recs = gather_records(recs)
        nasked += len(recs)
        if d.is_main:
            append_predictions(preds, recs)
        bar.update(len(recs))
    bar.close()
    barrier()
    ntok = int(all_reduce_sum(ntok, d.device))
    dt = time.time() - t0
    if todo:
        print0(f"{bench}: {nasked} items in {dt:.1f} s ({nasked / max(dt, 1e-9):.2f} items/s, "
                   f"{ntok / max(dt, 1e-9):.0f} generated tokens/s)")
    records = [r for r in read_predictions(preds, repair=False).values()]
    ids = {it.id for it in items}
    summary = summarize(bench, [r for r in records if r["id"] in ids])
    if bench == "vsibench":   # which input produced these numbers (run.json holds the same)
        summary.update(vsi_input=vsi_input(cfg), vsi_frames=cfg.vsi_frames)
    return summary


# ----------------------------------------------------------------------------- reporting
def results_markdown(results: dict) -> str:
    """The headline table (ours beside the paper's rows) and one per-category table per benchmark."""
    head = "| benchmark | metric | ours | n (skipped) | " + " | ".join(PAPER_ROWS) + " |"
    lines = [head, "|" + "---|" * (4 + len(PAPER_ROWS))]
    for b, r in results.items():
        paper = " | ".join(f"{v:.2f}" for v in r["paper"].values()) if r["paper"] else " | ".join("–" * 6)
        lines.append(f"| {b} | {r['metric']} | **{r['score']:.2f}** | {r['n']} ({r['skipped']}) | {paper} |")
    for b, r in results.items():
        extra = {k: r[k] for k in ("format", "reward", "delta_1_5") if k in r}
        extra.update(r.get("settings", {}))
        lines += ["", f"**{b}** per category" + "".join(f"; {k} {v:.2f}" for k, v in extra.items()), "",
                  "| category | score |", "|---|---|"]
        lines += [f"| {c} | {v:.2f} |" for c, v in r["categories"].items()]
    return "\n".join(lines) + "\n"


def plot_results(results: dict, path: Path) -> str:
    """Per-benchmark bars, ours beside the paper's base and Spatial-SSRL rows (matplotlib, optional)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "results.png skipped: pip install matplotlib for the bar chart"
    names = list(results)
    series = [("ours", [results[b]["score"] for b in names])]
    for row in ("Qwen2.5-VL-3B", "Spatial-SSRL-3B", "Qwen2.5-VL-7B", "Spatial-SSRL-7B"):
        series.append((row, [results[b]["paper"].get(row, 0.0) for b in names]))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(names)), 4))
    w = 0.8 / len(series)
    for k, (label, vals) in enumerate(series):
        ax.bar([i + (k - (len(series) - 1) / 2) * w for i in range(len(names))], vals, w, label=label)
    ax.set_xticks(range(len(names)), names, rotation=20)
    ax.set_ylabel("score (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"wrote {path}"


def write_results(results: dict, cfg: Config) -> None:
    """results.json (merged with benchmarks evaluated earlier into the same --out), results.md, results.png."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    f = out / "results.json"
    merged = json.loads(f.read_text()) if f.is_file() else {}
    merged.update(results)
    f.write_text(json.dumps(merged, indent=1))
    md = results_markdown(merged)
    (out / "results.md").write_text(md)
    print(md)
    if cfg.plot:
        print(plot_results(merged, out / "results.png"))


# ----------------------------------------------------------------------------- main
def load_for_eval(cfg: Config, device):
    """Model (eval mode, on device), tokenizer, image processor."""
    import torch
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}.get(
        cfg.dtype, torch.bfloat16 if device.type == "cuda" else torch.float32)
    model, tok, ip = load_model(cfg.model, dtype=dtype)
    return model.to(device).eval(), tok, ip


def evaluate(cfg: Config) -> dict:
    d = setup_dist(cfg.seed)
    try:
        paths = cfg.data_paths()
        benches = cfg.benches()
        missing = [b for b in benches if b not in paths]
        if missing or not benches:
            raise DataError(f"no --data for {missing or 'any benchmark'} (give BENCH=PATH, see --help)")
        absent = [f"{b}={paths[b]}" for b in benches if not Path(paths[b]).exists()]
        if absent:   # before loading a model for minutes
            raise DataError(f"--data {' '.join(absent)}: no such file or folder")
        model, tok, ip = load_for_eval(cfg, d.device)
        gen = Generator(model, tok, cfg, d.device)
        own_bounds = (ip.size["shortest_edge"], ip.size["longest_edge"])   # the checkpoint's saved bounds
        del model   # on the fast path the engine holds the only copy
        results = {b: run_bench(b, paths[b], cfg, gen, ip, d, own_bounds) for b in benches}
        if d.is_main:
            write_results(results, cfg)
        return results
    finally:
        cleanup_dist()


def main(argv: list | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        cfg = Config(**vars(args))
        evaluate(cfg)
    except (DataError, ValueError) as e:
        print(f"evaluate.py: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv[1:])
