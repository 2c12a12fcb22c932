"""The seven spatial benchmarks of Spatial-SSRL (and our held-out pretext split): file readers, prompts, answer
extraction and scoring. No torch, no model: stdlib, numpy, PIL and tasks.py only, so scores can be recomputed
from a predictions.jsonl anywhere.

evaluate.py runs the model (greedy decoding, batching, ranks, reporting) and calls load_bench() / score_item()
/ summarize() here. One protocol: items, prompts, the CoT instruction's placement, option order and the VSI-Bench
video input are the paper's (Spatial-SSRL's VLMEvalKit fork for Spatial457, 3DSRBench, SpatialEval, QSpatial+;
its standalone scripts for What'sUp, ViewSpatial, VSI-Bench). Two scorers per benchmark, side by side in one
table, SCORERS[bench] = (official, strict), chosen by Options.scoring:
  * "official" (default): the official scoring code's rule, item by item; these rows compare with the paper;
  * "strict": our corrected rule, read from the same outputs (one balanced \\boxed{}, one named option, exact
    arithmetic); each correction is listed under "Strict scoring" below.
The pretext split has one scorer, tasks.py's verifier, for both.

Paper → code (official file → our function)
  CoT answer: last \\boxed{…} (`\\\\boxed\\{([^}]*)\\}`), '' when none   → box_regex(), official_text()
    (VSI-bench_eval/check_accuracy.py, ViewSpatial_eval/main.py::extract, whatsup_eval/main.py::extract)
  CoT instruction on every text segment (vlmeval/vlm/base.py)          → cot_suffix()
  VLMEvalKit MCQ prompt (ImageMCQDataset.build_prompt)                 → mcq_prompt()
  VLMEvalKit MCQ (utils/matching_util.py can_infer_option/_text)       → can_infer(), score_mcq_official()
  3DSRBench vanilla / flip / circ / flip-circ (image_mcq.py::_3DSRBench) → dsr_group_scores()
  Spatial457 prompt (spatial457.py::build_subtask_instruction)         → spatial457_vlmeval_texts()
  Spatial457 `Answer': '…'` parse + is_correct (spatial457.py,
    utils/spatial457.py::Spatial457_utils)                             → spatial457_official_answer(),
                                                                          spatial457_official_correct()
  QSpatial+ parse_prediction / get_multiplier / δ (image_vqa.py::QSpatial) → qspatial_official_cm(), qspatial_ok()
  What'sUp prompt and `"A" in answer` (whatsup_eval/main.py)           → whatsup_prompt(), score_whatsup_official()
  ViewSpatial first \\b[A-D]\\b (ViewSpatial_eval/main.py::extract_pred) → viewspatial_letter()
  VSI-Bench prompt (vsi_infer.py::fix_prompt)                          → vsi_prompt()
  VSI-Bench single letter or MRA over 20 θ / 10 (check_accuracy.py)    → vsi_official_score(), mra_official()
  VSI-Bench micro (the paper's script) and task macro (official VSI)   → vsi_averages()
  one scorer pair per benchmark, Options.scoring picks one             → SCORERS, score_item()
  strict rules                                                          → match_option(), answer_text(),
                                                                          spatial457_correct(), parse_quantity(),
                                                                          delta_ok(), mra(), first_number()

Remaining differences of the official scoring from the official code (deviations, documented, not hidden)
  Q1. VLMEvalKit benchmarks with CoT: the released fork matches the *whole* response (its CoT numbers need the GPT
      judge it calls when rules fail); we score the last \\boxed{…} (regex `[^}]*`, as the fork's own scripts),
      or the whole response when there is no box. Without CoT the whole response is scored, as officially.
  Q2. No GPT judge (VLMEvalKit asks chatgpt-0125 when rules fail and a key is set; otherwise 'Z' = wrong, as here).
  Q3. TSV cells are read as text (csv module): pandas' dtype guessing (an all-numeric option column becomes
      "3.0") and its NA strings ("NA", "null", …: an option dropped) are reproduced only for NA strings.
  Q4. QSpatial+ ground truth: the float32 value's shortest decimal (the fork's str()/eval() round trip).
  Q5. VLMEvalKit's VERBOSE env quirk in can_infer_option (a lone 'A' in > 3 tokens rejected) is not reproduced.

Strict scoring: what it corrects (same prompts, same outputs; only the reading of the answer changes)
  S1. The answer is the last *balanced* \\boxed{} (tasks.extract_boxed: \\boxed{\\text{B}} → \\text{B}), and without
      a box the whole response is read (official: '' → wrong). Without a box: VSI-Bench, ViewSpatial, What'sUp;
      nested braces: every benchmark.
  S2. One named option (match_option): one standalone option letter, or exactly one option text when no letter
      stands alone; two letters name no option (VLMEvalKit then tries option texts); no 'Z'/refusal rule; letters
      are upper case. 3DSRBench, SpatialEval; ViewSpatial (official: the first A-D word, so an article "a" is
      option A and "C or B" is C); VSI-Bench ("B." and "(B)" count, "b" does not; official: one bare letter).
  S3. What'sUp: the one named letter must be the gold one (always A in the official option order), where
      officially any capital "A" in the answer is a hit ("B. A cup under a table" is right).
  S4. Spatial457: case, spaces, quotes and a final period ignored; number words for any digit ('zero' answers
      'No'); '0' answers 'no' in any case; shape families with synonyms (bike, motorcycle, airplane); no
      `'Answer': '…'` parse (a JSON-like answer is read whole, so it fails).
  S5. QSpatial+: \\scalar{}+\\distance_unit{} in the boxed answer (then the whole response), else the last
      "number unit" pair (\\boxed{1.5 m} → 150 cm, "about 1 meter"); \\scalar{.9} = 0.9; no \\unit{} / bare {}
      fallbacks; δ without the +1e-8 (exactly 2× fails); more units (km, yard).
  S6. VSI-Bench numbers: the first number in the answer ("about 3 m" → 3; official: float() of the whole answer,
      so '3 m' → 0 and '1e1' → 10); MRA with the thresholds as whole numbers (20·|ŷ−y|/y < 10−k): mra(13, 10)
      = 0.4 and mra(0.8, 1.0) = 0.7 where check_accuracy.py's float cuts 1−(0.5+0.05i) give 0.5 and 0.6.
  S7. 3DSRBench / SpatialEval gold letters are compared stripped (a TSV cell " B" is never matched officially).

Deviations of both scorings (inputs)
  * No GPT judge anywhere; an unreadable answer is wrong. Items whose image cannot be read are skipped and counted.
  * SpatialEval parquet (HF card, not the paper's TSV): options parsed from the text without the sentence's final
    period; VLMEvalKit's MCQ prompt is built from the question stem and those options.
  * VSI-Bench: evaluate.py passes one video item of Options.frames (128) frames, as the official script; with
    --vsi-as-images the frames go in as separate images (Options.vsi_input records which), and that row is
    not comparable with the paper's.
"""
import ast
import base64
import csv
import io
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

import tasks
from common import SetupError, Skipped, read_jsonl_lines
from records import check_unique_ids

BENCH_NAMES = ("pretext", "spatial457", "3dsrbench", "spatialeval", "qspatial_plus", "whatsup", "viewspatial",
               "vsibench")
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


SCORINGS = ("official", "strict")


@dataclass
class Options:
    """What the loaders and scorers need to know about a run (evaluate.Config.options() builds one)."""
    cot: bool = True              # reasoning + \boxed{} instruction; False: answer directly
    scoring: str = "official"     # "official": the paper's scoring code, item by item; "strict": our corrected rules
    limit: int = 0                # first N items per benchmark (0: all)
    frames: int = 128             # VSI-Bench frames sampled per video (official: 128)
    vsi_input: str = "video"      # how VSI-Bench frames reach the model: "video" (one item, official) or "images"

    def __post_init__(self):
        if self.scoring not in SCORINGS:
            raise ValueError(f"scoring must be one of {', '.join(SCORINGS)}, not {self.scoring!r}")


# ----------------------------------------------------------------------------- answer extraction
def answer_text(raw: str, cot: bool) -> str:
    """Strict scoring (S1): the last balanced \\boxed{} content for CoT (the whole response when there is none)."""
    if cot:
        boxed = tasks.extract_boxed(raw)
        if boxed is not None:
            return boxed
    return raw.strip()


_BOX_RE = re.compile(r"\\boxed\{([^}]*)\}")


def box_regex(raw: str) -> str | None:
    """The official scripts' CoT extraction: the last match of `\\boxed\\{([^}]*)\\}` (no nesting: \\boxed{\\text{B}}
    gives '\\text{B'), None when there is none."""
    found = _BOX_RE.findall(raw)
    return found[-1] if found else None


def official_text(raw: str, cot: bool) -> str:
    """What the official VLMEvalKit-fork scorers read: the raw response, or for CoT its last \\boxed{} (box_regex)
    when there is one (deviation Q1)."""
    boxed = box_regex(raw) if cot else None
    return raw if boxed is None else boxed


# ----------------------------------------------------------------------------- multiple choice
_OPTION_PUNCT = re.compile(r"[.()\[\],:;!*#{}]")
VLMEVAL_REFUSALS = ("Sorry, I can't help with images of people yet.", "I can't process this file.",
                    "I'm sorry, but without the image provided", "Cannot determine the answer")


def can_infer_option(answer: str, choices: dict) -> str | None:
    """VLMEvalKit's letter rule: a refusal sentence → 'Z'; else .()[],:;!*#{} become spaces and the answer is
    split on whitespace; exactly one choice letter among the tokens → that letter; no letter but a 'Z' token →
    'Z'; otherwise None ("Failed to obtain answer via API" in the answer → None as well)."""
    if "Failed to obtain answer via API" in answer:
        return None
    if any(r in answer for r in VLMEVAL_REFUSALS):
        return "Z"
    tokens = _OPTION_PUNCT.sub(" ", answer).split()
    named = [c for c in choices if c in tokens]
    if len(named) == 1:
        return named[0]
    if not named and "Z" in tokens:
        return "Z"
    return None


def can_infer_text(answer: str, choices: dict) -> str | None:
    """VLMEvalKit's text rule: the one choice whose text (lower-cased) occurs in the lower-cased answer."""
    low = answer.lower()
    hits = [k for k, v in choices.items() if str(v).lower() in low]
    return hits[0] if len(hits) == 1 else None


def can_infer(answer: str, choices: dict) -> str | None:
    """VLMEvalKit can_infer: the letter rule, then (when it finds nothing) the text rule. 'Z' means refused."""
    answer = str(answer)
    return can_infer_option(answer, choices) or can_infer_text(answer, choices)


def match_option(text: str, options: dict) -> str | None:
    """Strict scoring (S2): the option letter a free-text answer names, or None.

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


def viewspatial_letter(text: str) -> str | None:
    """ViewSpatial_eval/main.py extract_option: the first standalone A-D, case-insensitive, upper-cased."""
    m = re.search(r"\b([A-D])\b", text, flags=re.I)
    return m.group(1).upper() if m else None


# ----------------------------------------------------------------------------- Spatial457
_NUMBER_WORDS = {w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}
_SHAPE_FAMILY = {  # strict scoring: Super-CLEVR shapes → super-category, with a few synonyms
    **{s: "car" for s in ("car", "sedan", "suv", "wagon", "minivan", "truck")},
    **{s: "bus" for s in ("bus", "school", "articulated", "double", "regular")},
    **{s: "motorbike" for s in ("motorbike", "motorcycle", "chopper", "scooter", "cruiser", "dirtbike")},
    **{s: "aeroplane" for s in ("aeroplane", "airplane", "airliner", "jet", "fighter", "biplane")},
    **{s: "bicycle" for s in ("bicycle", "bike", "utility", "tandem", "road", "mountain")}}
S457_FAMILY_OFFICIAL = {  # VLMEvalKit utils/spatial457.py SUPERCLRVER_sub_shape, inverted
    **{s: "car" for s in ("suv", "wagon", "minivan", "sedan", "truck", "addi", "car")},
    **{s: "bus" for s in ("articulated", "regular", "double", "school", "bus")},
    **{s: "motorbike" for s in ("chopper", "dirtbike", "scooter", "cruiser", "motorbike")},
    **{s: "aeroplane" for s in ("jet", "fighter", "biplane", "airliner", "aeroplane")},
    **{s: "bicycle" for s in ("road", "utility", "mountain", "tandem", "bicycle")}}


def _s457_norm(s: str) -> str:
    s = s.strip().lower().strip("'\"").rstrip(".").strip()
    s = "no" if s == "none" else s
    return _NUMBER_WORDS.get(s, s)


def spatial457_correct(gt: str, pred: str) -> bool:
    """Strict scoring (S4): case-insensitive equality after mapping number words to digits and 'none' to 'no'
    (spaces, quotes and a final period ignored); '0' answers a 'No'; a digit 1-9 answers a 'Yes'; vehicle shapes
    count when they share the super-category of their first word ('sedan' vs 'suv': both car)."""
    g, p = _s457_norm(gt), _s457_norm(pred)
    if g == p:
        return True
    if g == "no" and p == "0" or g == "yes" and p in "123456789" and len(p) == 1:
        return True
    gf, pf = _SHAPE_FAMILY.get(g.split(" ")[0]) if g else None, _SHAPE_FAMILY.get(p.split(" ")[0]) if p else None
    return gf is not None and gf == pf


def spatial457_official_answer(prediction: str) -> str:
    """spatial457.py evaluate(): the first `Answer': '…'`, else `Answer": "…"`, else `Answer': <digit>`
    (non-greedy, within one line); without any, the whole prediction (ROBUST mode)."""
    for pattern in (r"Answer': '(.*?)'", r'Answer": "(.*?)"', r"Answer': (\d)"):
        m = re.search(pattern, prediction)
        if m:
            return m.group(1)
    return prediction


def spatial457_official_correct(gt: str, pred: str) -> bool:
    """Spatial457_utils.is_correct: 'none' → 'no'; case-insensitive equality (nothing stripped: 'Purple.' is
    wrong); '0' answers exactly 'No'; a number word answers its digit string ('zero' does not answer 'No'); a
    single digit 1-9 answers 'yes' (any case); or the first words (split on ' ') are shapes of one family."""
    gt, pred = str(gt), str(pred)
    if pred.lower() == "none":
        pred = "no"
    if pred.lower() == gt.lower() or pred == "0" and gt == "No":
        return True
    if _NUMBER_WORDS.get(pred.lower()) == gt:
        return True
    if gt.lower() == "yes" and pred in ("1", "2", "3", "4", "5", "6", "7", "8", "9"):
        return True
    pf = S457_FAMILY_OFFICIAL.get(pred.lower().split(" ")[0])
    return pf is not None and pf == S457_FAMILY_OFFICIAL.get(gt.lower().split(" ")[0])


# ----------------------------------------------------------------------------- QSpatial+
_UNIT_CM = {"m": 100.0, "meter": 100.0, "meters": 100.0, "metre": 100.0, "metres": 100.0, "cm": 1.0,
            "centimeter": 1.0, "centimeters": 1.0, "centimetre": 1.0, "centimetres": 1.0, "mm": 0.1,
            "millimeter": 0.1, "millimeters": 0.1, "ft": 30.48, "foot": 30.48, "feet": 30.48, "in": 2.54,
            "inch": 2.54, "inches": 2.54, "km": 1e5, "yard": 91.44, "yards": 91.44, "yd": 91.44}
_UNIT_CM_OFFICIAL = {  # image_vqa.py QSpatial.get_multiplier (anything else: 0)
    **dict.fromkeys(("meters", "meter", "m", "metre", "metres"), 100), **dict.fromkeys(("centimeters", "centimeter",
    "cm"), 1), **dict.fromkeys(("feet", "foot", "ft"), 30.48), **dict.fromkeys(("inch", "inches", "in"), 2.54),
    "mm": 0.1}
_NUM = r"\d+(?:\.\d+)?|\.\d+"


def to_cm(value: float, unit: str) -> float | None:
    """Strict scoring: value in unit → centimetres; None for an unknown unit."""
    factor = _UNIT_CM.get(unit.strip().lower().rstrip("."))
    return None if factor is None else value * factor


def parse_quantity(text: str) -> float | None:
    """Strict scoring (S5): a distance answer in cm, or None. QSpatial's format first: the mean of the numbers in
    the last \\scalar{…} (a range "1-2" → 1.5) with the unit in the last \\distance_unit{…}; else the last
    "number unit" pair in the text (e.g. the content of \\boxed{1.5 meters}, or "about 30 cm")."""
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
    """Strict QSpatial success (S5): max(pred/gt, gt/pred) < delta (δ₂ = 2, δ₁.₅ = 1.5), strictly: exactly 2×
    fails; an unreadable answer fails."""
    if pred_cm is None or pred_cm <= 0 or gt_cm <= 0:
        return False
    return max(pred_cm / gt_cm, gt_cm / pred_cm) < delta


def qspatial_official_unit_cm(unit: str) -> float:
    """QSpatial.get_multiplier: centimetres per unit (lower-cased, stripped); 0 for an unknown unit."""
    return float(_UNIT_CM_OFFICIAL.get(unit.lower().strip(), 0.0))


def _qspatial_rewrite_box(s: str) -> str:
    """The fork's repair of a \\boxed{} answer: every 'boxed{' becomes 'scalar{'; a '}' goes before the first space
    after the first 'scalar{'; the last '}' of the text is deleted (\\boxed{1.5 m} → \\scalar{1.5} m)."""
    s = s.replace("boxed{", "scalar{")
    space = s.find(" ", s.find("scalar{"))
    if space != -1:
        s = s[:space] + "}" + s[space:]
    last = s.rfind("}")
    return s if last == -1 else s[:last] + s[last + 1:]


def _floatable(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def qspatial_official_cm(response: str) -> float | None:
    """QSpatial.parse_prediction on the whole response, in cm; None where it raises IndexError (scored as 1e-8).

    Scalar: the numbers (`\\d+\\.?\\d*`: '.9' → 9, '1-2' → 1, 2) in the last `scalar{…}`, averaged (none → nan).
    Unit: the last `distance_unit{…}`, else the last `unit{…}`, else the last bare `{…}`; a unit that parses as a
    float is replaced by the letters after the response's last backslash. cm = scalar × get_multiplier(unit)."""
    if "boxed{" in response:
        response = _qspatial_rewrite_box(response)
    scalars = re.findall(r"scalar\{([^}]*)\}", response)
    if not scalars:
        return None
    nums = re.findall(r"\d+\.?\d*", scalars[-1])
    value = float(np.array(nums).astype(float).mean()) if nums else math.nan
    units = (re.findall(r"distance_unit\{([^}]*)\}", response) or re.findall(r"unit\{([^}]*)\}", response)
             or re.findall(r"\{([^}]*)\}", response))
    if not units:
        return None
    unit = units[-1]
    if _floatable(unit):
        tail = response.rsplit("\\", 1)[-1] if "\\" in response else ""
        unit = re.match(r"[a-zA-Z]*", tail).group(0)
    return value * qspatial_official_unit_cm(unit)


def qspatial_ok(pred_cm: float | None, gt_cm: float, delta: float = 2.0) -> bool:
    """The fork's δ test: pred and gt both + 1e-8 (an unparsed pred is 1e-8 first), max(pred/gt, gt/pred) < delta;
    nan fails. Exactly 2× (or ½×) passes: (2g + 1e-8) / (g + 1e-8) < 2."""
    p = (1e-8 if pred_cm is None else pred_cm) + 1e-8
    g = gt_cm + 1e-8
    ratio = max(p / g, g / p)
    return not (math.isnan(p) or math.isnan(ratio)) and ratio < delta


def qspatial_gt_cm(value, unit: str, where: str) -> float:
    """Ground truth in cm, as the fork reads it: the float32 value's shortest decimal (its str/eval round trip,
    deviation Q4) times get_multiplier(unit); DataError for a unit the fork does not know (it would give 0)."""
    factor = qspatial_official_unit_cm(str(unit))
    if not factor:
        raise SetupError(f"{where}: ground-truth unit {unit!r} is not a known distance unit "
                        f"(expected one of {sorted(_UNIT_CM_OFFICIAL)})")
    return float(str(np.float32(value))) * factor


# ----------------------------------------------------------------------------- VSI-Bench and 3DSRBench numbers
MRA_THRESHOLDS = tuple(round(0.50 + 0.05 * i, 2) for i in range(10))   # 0.50, 0.55, …, 0.95


def mra(pred: float | None, gt: float) -> float:
    """Strict MRA (S6): mean over θ ∈ {0.50, …, 0.95} of 1[|pred − gt| / gt < 1 − θ] at exact 5 % steps."""
    if pred is None or gt == 0 or not math.isfinite(pred):
        return 0.0
    r20 = 20 * abs(pred - gt) / abs(gt)   # θ_k = 0.50 + 0.05k: rel < 1 - θ_k ⇔ 20·rel < 10 - k (exact in floats)
    return sum(r20 < 10 - k for k in range(len(MRA_THRESHOLDS))) / len(MRA_THRESHOLDS)


# check_accuracy.py: θ_i = 0.5 + i·0.05 for i < 20, hit if rel < 1 − θ_i, sum / 10; the cuts as floats compute them
# (1 − (0.5 + 4·0.05) = 0.30000000000000004, so rel 0.3 still counts; θ ≥ 1 never does).
SSRL_MRA_CUTS = tuple(1 - (0.5 + i * 0.05) for i in range(20))


def mra_official(pred: str, gt: str) -> float:
    """check_accuracy.py mra(): float() of the whole strings ('3 m' → 0, '1e1' → 10, ' 3\\n' → 3); any error
    (not a number, gt 0) → 0; else the number of cuts with |p − g| / g < cut, divided by 10."""
    try:
        g = float(gt)
        rel = abs(float(pred) - g) / g
    except (ValueError, TypeError, ZeroDivisionError, OverflowError):
        return 0.0
    return sum(rel < cut for cut in SSRL_MRA_CUTS) / 10


def vsi_official_score(pred: str, gt: str) -> float:
    """check_accuracy.py per item: a single alphabetic character is compared with the answer case-insensitively;
    anything else goes through mra_official (so 'A.' or 'B) right' score 0)."""
    if len(pred) == 1 and pred.isalpha():
        return float(pred.lower() == str(gt).lower())
    return mra_official(pred, str(gt))


def first_number(text: str) -> float | None:
    m = re.search(r"-?(?:\d+(?:\.\d+)?|\.\d+)", text.replace(",", ""))
    return float(m.group()) if m else None


def dsr_group_scores(rows: list) -> dict:
    """3DSRBench settings from (qid, hit) rows, in %: vanilla = mean hit; flip = qid minus '-flip' grouped;
    circular = qid[:8] (qid[:13] for '-flip' ids) grouped; flip_circular = qid[:8] grouped. A group counts
    only if every member is right (image_mcq.py _3DSRBench.evaluate)."""
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


def cot_suffix(texts: list, cot: bool, plain: str = "") -> list:
    """The CoT instruction appended to every text segment with no separator (VLMEvalKit's preproc_content: 3x on
    Spatial457); without CoT, `plain` (if any) appended the same way (the fork's base-model line)."""
    add = tasks.COT_PROMPT if cot else plain
    return [t + add for t in texts]


def mcq_prompt(question: str, options: dict, hint: str = "") -> str:
    """VLMEvalKit ImageMCQDataset prompt."""
    text = f"Hint: {hint}\n" if hint else ""
    text += f"Question: {question}\n"
    if options:
        text += "Options:\n" + "".join(f"{k}. {v}\n" for k, v in options.items())
        text += "Please select the correct answer from the options above. \n"
    return text


# VLMEvalKit Spatial457.build_subtask_instruction: what each level's role sentence asks to identify
S457_VLMEVAL_WHAT = {
    "L1_single": "the objects", "L2_objects": "multiple objects",
    "L3_2d_spatial": "multiple objects and their spatial relationship from 2D projected camera view",
    "L4_occ": "multiple objects and their occlusion relationships",
    "L4_pose": "multiple objects and their facing direction in 3D space from the camera view",
    "L5_6d_spatial": "multiple objects and their spatial relationship from objects\u2019 perspective in 3D space",
    "L5_collision": "multiple objects and their potential collision given the assumption of moving direction in "
                    "3D space"}
S457_ATTRIBUTES = (("small", "large"),
                   ("airliner", "dirtbike", "road bike", "tandem bike", "suv", "wagon", "scooter", "mountain bike",
                    "minivan", "sedan", "school bus", "fighter", "chopper", "double bus", "truck", "articulated bus",
                    "cruiser", "jet", "utility bike", "regular bus", "biplane"),
                   ("gray", "blue", "purple", "brown", "green", "cyan", "red", "yellow"),
                   ("left", "right", "front", "back"))
S457_VLMEVAL_OUTRO = (
    "First, you should identify the related objects refered in the questions, including their shape, color, size; "
    "then add a brief reasoning process about the questions. Each object in the image has a shape (e.g., "
    "'airliner'), a size (only can be 'small' or 'large'), a color (e.g. 'blue'). The size of the object is either "
    "'small' or 'large'. The color of the object is one of the following: 'gray', 'blue', 'purple', 'brown', "
    "'green', 'cyan', 'red', 'yellow'. The direction of the object is one of the following: 'left', 'right', "
    "'front', 'back'.\n\nSecond, give the answer based on the reasoning process. The answer should only be (1) a "
    "phrase chosen from the following options: {}, or (2) an integer [0-10] when asked for 'How many' or 'What is "
    "the number of', or (3) 'Yes' or 'No' when asked for 'Is there'. If you think there are no possible answers "
    "or the question is not clear, choose the best answer that fits the question.\n\n")


def spatial457_vlmeval_texts(question: str, level: str) -> list:
    """VLMEvalKit's Spatial457 message texts [role sentence, question, instructions] (the image goes
    before the question); the fork comments out the JSON-template line. An unknown level has no role sentence."""
    what = S457_VLMEVAL_WHAT.get(level)
    intro = "" if what is None else (
        "You are an intelligent chatbot designed to answer questions based on an image. Your task is to analyze "
        f"the images, identify attributes of {what}, and then determine the answer to the question.\n")
    vocabulary = ", ".join(", ".join(w.capitalize() for w in group) for group in S457_ATTRIBUTES)
    return [intro, question, S457_VLMEVAL_OUTRO.format(vocabulary)]


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
        raise SetupError(f"{what} needs the optional package {module!r}: pip install {module.split('.')[0]}")


def read_tsv(path: Path, required: tuple) -> list:
    """VLMEvalKit TSV rows as dicts (csv module, tab-separated, field size limit raised for base64 images).
    A row whose field count differs from the header's is returned as {"_error": ...}."""
    csv.field_size_limit(min(sys.maxsize, 2 ** 31 - 1))
    if not path.is_file():
        raise SetupError(f"{path}: no such file (expected a VLMEvalKit TSV with columns {', '.join(required)})")
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        missing = [c for c in required if header is None or c not in header]
        if missing:
            raise SetupError(f"{path}: not a VLMEvalKit TSV with columns {', '.join(required)} (missing {missing})")
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
        raise SetupError(f"{path}: no such file (expected a Hugging Face parquet file)")
    pq = _require("pyarrow.parquet", f"reading {path}")
    try:
        return pq.read_table(path).to_pylist()
    except Exception as e:   # pyarrow raises its own error types for a file that is not parquet
        raise SetupError(f"{path}: not a readable parquet file ({type(e).__name__}: {e})") from None


def read_json(path: Path, what: str):
    if not path.is_file():
        raise SetupError(f"{path}: no such file (expected {what})")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SetupError(f"{path}: not valid JSON ({e}); expected {what}") from None


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
    """One RGB PIL image from a source tuple; Skipped when it cannot be read."""
    kind, value = src
    try:
        if kind == "b64":
            data = base64.b64decode(value, validate=False)
        elif kind == "bytes":
            data = value
        elif kind == "path":
            data = Path(value).read_bytes()
        else:
            raise Skipped("image", value)
        with Image.open(io.BytesIO(data)) as im:
            return im.convert("RGB")
    except Skipped:
        raise
    except Exception as e:
        raise Skipped("image", f"{kind} image unreadable ({type(e).__name__}: {e})") from None


# pandas.read_csv's default NA strings: VLMEvalKit drops an option cell holding one of them
PANDAS_NA = {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>",
             "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"}


def _options(row: dict) -> dict:
    """Option letter → text of a TSV row, cells as pandas keeps them: not stripped, pandas' NA strings dropped."""
    return {k: row[k] for k in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if k in row and row[k] not in PANDAS_NA}


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


def _parquet_image(v) -> tuple:
    if isinstance(v, dict) and v.get("bytes"):
        return ("bytes", v["bytes"])
    if isinstance(v, (bytes, bytearray)):
        return ("bytes", bytes(v))
    return ("bad", "no image bytes in the parquet row")


def _find_file(root: Path, rel: str) -> Path:
    """A released relative path under root (or its parent), else by folder/name under root."""
    p = Path(rel)
    for cand in (root / p, root.parent / p, root / p.parent.name / p.name, root / p.name):
        if cand.is_file():
            return cand
    return root / p


# ----------------------------------------------------------------------------- loaders, one per benchmark
def load_spatial457(path: Path, opts: Options) -> list:
    """VLMEvalKit Spatial457.tsv (index, image, question, answer, category = level), VLMEvalKit's prompt."""
    plain = "" if opts.cot else "Please directly give the answer."

    def make(r, ims):
        texts = cot_suffix(spatial457_vlmeval_texts(r["question"], r["category"]), opts.cot, plain)
        return Item(r["index"], r["category"], texts, ims, {"answer": r["answer"]}, image_slots=[1] * len(ims))
    return _tsv_items(path, ("index", "image", "question", "answer", "category"), make)


def _mcq_item(r: dict, ims: list, opts: Options, category: str) -> Item:
    options = _options(r)
    hint = r.get("hint", "")
    hint = "" if hint in PANDAS_NA else hint
    texts = cot_suffix([mcq_prompt(r["question"], options, hint)], opts.cot)
    truth = {"answer": r["answer"], "options": options, "qid": r.get("qid", "")}
    return Item(r["index"], category, texts, ims, truth)


def load_3dsrbench(path: Path, opts: Options) -> list:
    """VLMEvalKit 3DSRBench.tsv (the flip + circular TSV; qid suffixes give the grouped settings)."""
    return _tsv_items(path, ("index", "image", "question", "A", "B", "answer", "category"),
                      lambda r, ims: _mcq_item(r, ims, opts, r["category"]))


def load_spatialeval(path: Path, opts: Options) -> list:
    """VLMEvalKit SpatialEval.tsv (the paper's file), or the HF MilaWang/SpatialEval parquet."""
    if path.suffix == ".parquet":
        return spatialeval_parquet_items(read_parquet(path), opts)
    return _tsv_items(path, ("index", "image", "question", "A", "B", "answer"),
                      lambda r, ims: _mcq_item(r, ims, opts, r.get("category") or r.get("l2-category") or "all"))


def spatialeval_options(text: str) -> tuple:
    """(question stem, options) of a SpatialEval card text "…? Available options:\\nA. Northeast\\n…\\nD. Southeast.":
    the options without the sentence's final period, the stem without the options block
    (a deviation of both scorings)."""
    opts = {k: v.rstrip(".").strip() for k, v in re.findall(r"^\s*([A-H])\.\s*(.+?)\s*$", text, flags=re.M)}
    first = re.search(r"^\s*A\.", text, flags=re.M)
    stem = text[:first.start()] if first else text
    stem = re.sub(r"\s*Available options:\s*$", "", stem.rstrip()).strip()
    return stem, opts


def spatialeval_parquet_items(rows: list, opts: Options) -> list:
    """HF MilaWang/SpatialEval rows (id, text with the options inside, image, oracle_option), asked with
    VLMEvalKit's MCQ prompt built from the stem and the options."""
    items = []
    for r in rows:
        stem, options = spatialeval_options(r.get("text", ""))
        texts = cot_suffix([mcq_prompt(stem, options)], opts.cot)
        items.append(Item(str(r["id"]), str(r["id"]).split(".")[0], texts, [_parquet_image(r.get("image"))],
                          {"answer": str(r["oracle_option"]).strip(), "options": options}, image_slots=[0]))
    return items


def load_qspatial_plus(path: Path, opts: Options) -> list:
    """HF andrewliao11/Q-Spatial-Bench QSpatial_plus parquet (question, answer_value, answer_unit, image)."""
    items = []
    for k, r in enumerate(read_parquet(path)):
        if "QSpatial_scannet" in str(r.get("image_path", "")):
            continue
        text = f"{QSPATIAL_SYSTEM}\nQuestion: {r['question']}" + (QSPATIAL_COT if opts.cot else "")
        gt = qspatial_gt_cm(r["answer_value"], r["answer_unit"], f"{path} row {k}")
        items.append(Item(str(r.get("id", k)), str(r.get("question_type", "all")), [text],
                          [_parquet_image(r.get("image"))], {"answer_cm": gt, "answer": f"{r['answer_value']} "
                                                             f"{r['answer_unit']}"}, image_slots=[0]))
    return items


WHATSUP_FILES = {"A": "controlled_images_dataset.json", "B": "controlled_clevr_dataset.json"}
WHATSUP_HEAD = "Based on the image, choose the correct option from the list below."


def whatsup_prompt(caption_text: str, opts: Options) -> str:
    """whatsup_eval/main.py's prompt (CoT: the suffix glued on with no separator, as there)."""
    if not opts.cot:
        return f"{WHATSUP_HEAD} Only respond the corresponding letter (e.g., C).\n\n{caption_text}"
    return WHATSUP_HEAD + tasks.COT_PROMPT + caption_text


def load_whatsup(path: Path, opts: Options) -> list:
    """What'sUp Controlled_Images_A/B: a folder holding the two JSON files (and the image folders), or one JSON.
    Options in the released order, so the gold caption is always A (as the official script)."""
    files = [("A" if "images" in path.name else "B", path)] if path.suffix == ".json" else \
        [(s, path / f) for s, f in WHATSUP_FILES.items() if (path / f).is_file()]
    if not files:
        raise SetupError(f"{path}: expected {' and/or '.join(WHATSUP_FILES.values())} (What'sUp release) in it")
    items = []
    for subset, f in files:
        for k, r in enumerate(read_json(f, "a JSON list of {image_path, caption_options}")):
            options = {"ABCD"[i]: c for i, c in enumerate(r["caption_options"])}
            text = whatsup_prompt("\n".join(f"{L}: {c}" for L, c in options.items()), opts)
            items.append(Item(f"{subset}-{k}", f"Controlled_Images_{subset}", [text],
                              [("path", _find_file(f.parent, r["image_path"]))],
                              {"answer": "A", "options": options}, image_slots=[0]))
    return items


def load_viewspatial(path: Path, opts: Options) -> list:
    """ViewSpatial-Bench.json; image paths are relative to the JSON's folder (or its parent)."""
    items = []
    for k, r in enumerate(read_json(path, "ViewSpatial-Bench.json: a JSON list of {question_type, image_path, "
                                          "question, answer, choices}")):
        options = dict(re.findall(r"^\s*([A-D])\.\s*(.+?)\s*$", r["choices"], flags=re.M))
        if opts.cot:
            tail = "\nThe final answer should be the option letter from the given choices.\n" + tasks.COT_PROMPT
        else:
            tail = "\nReply only to the corresponding option.\nAnswer:"
        ims = [("path", _find_file(path.parent, p)) for p in r["image_path"]]
        items.append(Item(str(k), r["question_type"], [f"{r['question']}\n{r['choices']}{tail}"], ims,
                          {"answer": r["answer"].split(".")[0].strip(), "answer_text": r["answer"],
                           "options": options}, image_slots=[0] * len(ims), resize=(420, 280)))
    return items


def load_vsibench(path: Path, opts: Options) -> list:
    """VSI-Bench questions (HF parquet, or Spatial-SSRL's flattened JSON) + {dataset}/{scene}.mp4 videos (or a
    folder {dataset}/{scene}/ of pre-extracted frames) under the data file's folder."""
    rows = read_parquet(path) if path.suffix == ".parquet" else \
        read_json(path, "a JSON list of VSI-Bench questions (mp4_path/question_type/question/answer/A-D)")
    items = []
    for k, r in enumerate(rows):
        if "mp4_path" in r:   # Spatial-SSRL's vsi_bench.json: absolute paths on the authors' cluster
            mp4 = Path(r["mp4_path"])
            video = mp4 if mp4.exists() else path.parent / mp4.parent.name / mp4.name
            options = [r[L] for L in "ABCD" if r.get(L)]
            gt = str(r["answer"])
        else:
            video = path.parent / str(r["dataset"]) / f"{r['scene_name']}.mp4"
            options, gt = list(r.get("options") or []), str(r["ground_truth"])
        items.append(Item(str(r.get("id", k)), r["question_type"], [vsi_prompt(r["question"], options, opts)],
                          [("frames", video)], {"answer": gt, "options": {o[0]: o[2:].strip() for o in options}}))
    return items


def vsi_prompt(question: str, options: list, opts: Options) -> str:
    """Spatial-SSRL's VSI-Bench prompt (vsi_infer.py fix_prompt), its "anser" typo and its option lines included:
    each option already starts with "A. ", the script prefixes another one ("A. A. …") and joins them with no
    newline."""
    mc = bool(options)
    text = "Watch the given video and anser the following question.\n\n" + question
    text += "".join(f"{'ABCD'[i]}. {o}" for i, o in enumerate(options))
    kind = "the option letter from the given choices" if mc else "a number(integer or decimal)"
    if opts.cot:
        return text + f"\nThe final answer should be {kind}.\n" + tasks.COT_PROMPT
    return text + ("\nAnswer directly with the option letter from the given choices." if mc
                   else "\nAnswer directly with a number(integer or decimal).")


def load_pretext(path: Path, opts: Options) -> list:
    """Our held-out test.jsonl (make_data.py); prompts exactly as in training (vlm.build_messages)."""
    if not path.is_file():
        raise SetupError(f"{path}: no such file (expected make_data.py's test.jsonl)")
    items = []
    lines = read_jsonl_lines(path)                  # a line that is not JSON: one error naming it
    check_unique_ids([(r.get("id"), f"line {i}") for i, r in lines], path)
    for k, (_, r) in enumerate(lines, 1):
        if not isinstance(r.get("problem"), str) or not isinstance(r.get("images"), list) or "answer" not in r:
            raise SetupError(f"{path} record {k}: needs problem, answer and images (make_data.py's test.jsonl)")
        texts = tasks.with_cot(r["problem"]).split("<image>")
        truth = {"answer": r["answer"], "task": r.get("task"), "problem": r["problem"]}
        items.append(Item(str(r.get("id", k)), r.get("task") or "?", texts, [("path", path.parent / p) for p in r["images"]],
                          truth, image_slots=list(range(1, len(texts)))))
    return items


LOADERS = {"pretext": load_pretext, "spatial457": load_spatial457, "3dsrbench": load_3dsrbench,
           "spatialeval": load_spatialeval, "qspatial_plus": load_qspatial_plus, "whatsup": load_whatsup,
           "viewspatial": load_viewspatial, "vsibench": load_vsibench}


def load_bench(name: str, path: str, opts: Options) -> list:
    """The benchmark's items, first opts.limit of them. Our own test.jsonl with an id twice is refused
    (load_pretext); a released benchmark file cannot be edited by its user, so an id it repeats gets #1, #2, …
    (ids only key the resumable predictions)."""
    items = LOADERS[name](Path(path), opts)
    seen = {}
    for it in items:
        n = seen.get(it.id, 0)
        seen[it.id] = n + 1
        if n:
            it.id = f"{it.id}#{n}"
    return items[:opts.limit] if opts.limit else items


# ----------------------------------------------------------------------------- images and video frames
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
            raise Skipped("image", f"{folder}: no frame images")
        return [open_image(("path", files[i])) for i in sample_indices(len(files), k)]
    if not video.is_file():
        raise Skipped("image", f"{video}: no such video (nor a folder {folder} of frames)")
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
        raise Skipped("image", f"{video}: cannot decode ({type(e).__name__}: {e})") from None
    if not frames:
        raise Skipped("image", f"{video}: no frames decoded")
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


def is_video(item: Item) -> bool:
    """A VSI-Bench item: its one image source is a video (or a folder of its frames)."""
    return bool(item.images) and item.images[0][0] == "frames"


def load_item_images(item: Item, frames: int) -> tuple:
    """(images, image_slots) of one item, a video expanded to `frames` frames; Skipped if any is unreadable."""
    if is_video(item):
        ims = video_frames(Path(item.images[0][1]), frames)
        return ims, [0] * len(ims)
    ims = [open_image(s) for s in item.images]
    if item.resize:
        ims = [im.resize(item.resize, Image.BICUBIC) for im in ims]
    return ims, item.image_slots


# ----------------------------------------------------------------------------- scoring: two rules per benchmark
# Each scorer: (raw model output, item.truth, cot) → {'extracted', 'correct' (0..1), extra summary fields}.
def score_pretext(raw: str, truth: dict, cot: bool) -> dict:
    """Both scorings: tasks.py's verifier and reward, as grpo.score (the pretext prompt always asks for CoT)."""
    reward, acc, fmt = tasks.reward_terms(raw, truth["answer"], truth["task"], truth.get("problem"))
    return {"extracted": tasks.extract_boxed(raw), "correct": acc, "format": fmt, "reward": reward}


def score_spatial457_official(raw: str, truth: dict, cot: bool) -> dict:
    """VLMEvalKit: the `Answer': '…'` parse of official_text, then Spatial457_utils.is_correct."""
    pred = spatial457_official_answer(official_text(raw, cot))
    return {"extracted": pred, "correct": float(spatial457_official_correct(truth["answer"], pred))}


def score_spatial457_strict(raw: str, truth: dict, cot: bool) -> dict:
    """S1 + S4: the balanced box (or the whole response), spatial457_correct."""
    ans = answer_text(raw, cot)
    return {"extracted": ans, "correct": float(spatial457_correct(truth["answer"], ans))}


def score_mcq_official(raw: str, truth: dict, cot: bool) -> dict:
    """3DSRBench / SpatialEval, VLMEvalKit: can_infer on official_text; no letter found or 'Z' → wrong (the
    exact_matching policy)."""
    letter = can_infer(official_text(raw, cot), dict(truth["options"]))
    hit = letter is not None and letter == truth["answer"]
    return {"extracted": letter, "correct": float(hit), "qid": truth.get("qid", "")}


def score_mcq_strict(raw: str, truth: dict, cot: bool) -> dict:
    """3DSRBench / SpatialEval, S1 + S2 + S7: match_option on the balanced box; the gold letter stripped."""
    letter = match_option(answer_text(raw, cot), truth["options"])
    hit = letter is not None and letter == str(truth["answer"]).strip()
    return {"extracted": letter, "correct": float(hit), "qid": truth.get("qid", "")}


def score_viewspatial_official(raw: str, truth: dict, cot: bool) -> dict:
    """ViewSpatial_eval/main.py: CoT → the last regex box ('' without one); the first \\b[A-D]\\b (any case) must
    equal the gold answer's."""
    letter = viewspatial_letter((box_regex(raw) or "") if cot else raw)
    return {"extracted": letter, "correct": float(letter == viewspatial_letter(truth["answer_text"]))}


def score_viewspatial_strict(raw: str, truth: dict, cot: bool) -> dict:
    """S1 + S2: match_option on the balanced box (or the whole response)."""
    letter = match_option(answer_text(raw, cot), truth["options"])
    return {"extracted": letter, "correct": float(letter == truth["answer"])}


def score_qspatial_official(raw: str, truth: dict, cot: bool) -> dict:
    """image_vqa.py QSpatial: parse_prediction on the whole response (CoT or not), the fork's δ (+1e-8)."""
    cm, gt = qspatial_official_cm(raw), truth["answer_cm"]
    return {"extracted": cm, "correct": float(qspatial_ok(cm, gt)), "delta_1_5": float(qspatial_ok(cm, gt, 1.5))}


def score_qspatial_strict(raw: str, truth: dict, cot: bool) -> dict:
    """S1 + S5: parse_quantity on the balanced box, then on the whole response; δ without +1e-8."""
    cm, gt = parse_quantity(answer_text(raw, cot)), truth["answer_cm"]
    cm = parse_quantity(raw) if cm is None else cm
    return {"extracted": cm, "correct": float(delta_ok(cm, gt)), "delta_1_5": float(delta_ok(cm, gt, 1.5))}


def score_whatsup_official(raw: str, truth: dict, cot: bool) -> dict:
    """whatsup_eval/main.py: the gold is always A and any "A" in the answer (the last `boxed{…}` for CoT, no
    backslash needed, '' without one) is a hit."""
    ans = (re.findall(r"boxed\{([^}]*)\}", raw) or [""])[-1] if cot else raw
    return {"extracted": ans, "correct": float("A" in ans)}


def score_whatsup_strict(raw: str, truth: dict, cot: bool) -> dict:
    """S1 + S2 + S3: exactly one named option, and it is the gold one."""
    letter = match_option(answer_text(raw, cot), truth["options"])
    return {"extracted": letter, "correct": float(letter == truth["answer"])}


def score_vsibench_official(raw: str, truth: dict, cot: bool) -> dict:
    """check_accuracy.py: the stripped response, or for CoT its last regex box ('' without one), scored by
    vsi_official_score (one letter, else float() and the float-cut MRA)."""
    pred = raw.strip()
    pred = (box_regex(pred) or "") if cot else pred
    return {"extracted": pred, "correct": vsi_official_score(pred, truth["answer"])}


def score_vsibench_strict(raw: str, truth: dict, cot: bool) -> dict:
    """S1 + S2 for multiple choice (match_option); S6 for numbers (the first number, exact MRA steps)."""
    ans = answer_text(raw, cot)
    if truth["options"]:
        letter = match_option(ans, truth["options"])
        return {"extracted": letter, "correct": float(letter == truth["answer"].strip().upper())}
    pred = first_number(ans)
    return {"extracted": pred, "correct": mra(pred, float(truth["answer"]))}


SCORERS = {  # benchmark → (official scorer, strict scorer); the pretext split has one rule for both
    "pretext": (score_pretext, score_pretext),
    "spatial457": (score_spatial457_official, score_spatial457_strict),
    "3dsrbench": (score_mcq_official, score_mcq_strict),
    "spatialeval": (score_mcq_official, score_mcq_strict),
    "qspatial_plus": (score_qspatial_official, score_qspatial_strict),
    "whatsup": (score_whatsup_official, score_whatsup_strict),
    "viewspatial": (score_viewspatial_official, score_viewspatial_strict),
    "vsibench": (score_vsibench_official, score_vsibench_strict)}


def score_item(bench: str, item: Item, raw: str, opts: Options) -> dict:
    """{'extracted', 'correct' (0..1), extra fields for the summary} for one model output, by the scorer of
    opts.scoring ("official" or "strict") in SCORERS."""
    if bench not in SCORERS:
        raise ValueError(f"unknown benchmark {bench!r}")
    official, strict = SCORERS[bench]
    return (strict if opts.scoring == "strict" else official)(raw, item.truth, opts.cot)


def comparable_with_paper(bench: str, opts: Options) -> bool:
    """Whether a row can sit beside the paper's: official scoring, and for VSI-Bench the frames as a video."""
    return bench in PAPER and opts.scoring == "official" and (bench != "vsibench" or opts.vsi_input == "video")


def summarize(bench: str, records: list, opts: Options | None = None) -> dict:
    """Overall score (%), counts, per-category scores, the benchmark's extra settings and the run's scoring."""
    scored = [r for r in records if not r.get("skipped")]
    mean = lambda xs: 100.0 * sum(xs) / len(xs) if xs else 0.0
    cats = {}
    for r in scored:
        cats.setdefault(r["category"], []).append(r["correct"])
    out = {"metric": METRIC[bench], "score": mean([r["correct"] for r in scored]), "n": len(scored),
           "skipped": len(records) - len(scored), "categories": {c: mean(v) for c, v in sorted(cats.items())},
           "paper": dict(zip(PAPER_ROWS, PAPER[bench])) if bench in PAPER else {}}
    if opts is not None:
        out.update(scoring=opts.scoring, cot=opts.cot, comparable=comparable_with_paper(bench, opts))
        if bench == "vsibench":
            out.update(vsi_input=opts.vsi_input, frames=opts.frames)
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
