"""Tests of benchmarks.py's two scorers per benchmark: the official one against the official scoring code, item
by item, and the strict one against its documented corrections (S1-S7 in benchmarks.py's docstring).

Every expected score below was worked out by hand, the official column from the official code (read in the public
repo InternLM/Spatial-SSRL: VSI-bench_eval/check_accuracy.py, ViewSpatial_eval/main.py, whatsup_eval/main.py, and
its VLMEvalKit fork: utils/matching_util.py can_infer, dataset/spatial457.py + utils/spatial457.py,
dataset/image_vqa.py QSpatial), never by running our own code. Each row goes through the real call path,
benchmarks.score_item(), once with scoring="official" and once with scoring="strict". Fast, no model, no torch.

    python -m pytest -q test_benchmarks.py
    python test_benchmarks.py        # the official-vs-strict table over these cases (docs/evaluation.md)
"""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import benchmarks as bm

HERE = Path(__file__).resolve().parent


def score(bench: str, truth: dict, raw: str, scoring: str = "official", cot: bool = True) -> float:
    item = bm.Item("1", "cat", ["q"], [], truth)
    return bm.score_item(bench, item, raw, bm.Options(cot=cot, scoring=scoring))["correct"]


def check(bench, truth, raw, official, strict, cot=True):
    assert score(bench, truth, raw, "official", cot) == pytest.approx(official), "official"
    assert score(bench, truth, raw, "strict", cot) == pytest.approx(strict), "strict"


# ----------------------------------------------------------------------------- VSI-Bench (check_accuracy.py)
NUM = lambda gt: {"answer": gt, "options": {}}
MC = {"answer": "B", "options": {"A": "left", "B": "right", "C": "front"}}


VSI_COT = [   # (truth, raw, official, strict)
    (NUM("10"), "<think>count</think> \\boxed{10}", 1.0, 1.0),
    (NUM("10"), "the answer is 10", 0.0, 1.0),              # CoT without a box: '' → float('') fails
    (NUM("3"), "\\boxed{3 meters}", 0.0, 1.0),              # float() of the whole string
    (NUM("3"), "\\boxed{about 3}", 0.0, 1.0),
    (NUM("3"), "\\boxed{3 m}", 0.0, 1.0),
    (NUM("10"), "\\boxed{1e1}", 1.0, 0.0),                  # float('1e1') = 10; ours reads 1
    (NUM("10"), "\\boxed{13}", 0.5, 0.4),                   # 0.3 < 1-(0.5+4·0.05) = 0.30000000000000004
    (NUM("1.0"), "\\boxed{0.8}", 0.6, 0.7),                 # |0.8-1| = 0.19999999999999996 vs cut 0.19999999999999996
    (NUM("10"), "\\boxed{12}", 0.6, 0.6),                   # 0.2 < 0.25, not < 0.19999999999999996
    (NUM("10"), "\\boxed{ 10 }", 1.0, 1.0),                 # float() strips spaces
    (NUM("10"), "\\boxed{15}", 0.0, 0.0),                   # 0.5 < 0.5 is false
    (NUM("10"), "\\boxed{5.5}", 0.1, 0.1),                  # 0.45 < 0.5 only
    (NUM("10"), "\\boxed{nan}", 0.0, 0.0),
    (NUM("10"), "\\boxed{inf}", 0.0, 0.0),
    (NUM("0"), "\\boxed{0}", 0.0, 0.0),                      # ZeroDivisionError → 0
    (NUM("10"), "\\boxed{5} then \\boxed{10}", 1.0, 1.0),     # the last box
    (NUM("4"), "\\boxed{A}", 0.0, 0.0),                      # a letter for a number question
    (MC, "\\boxed{B}", 1.0, 1.0),
    (MC, "\\boxed{b}", 1.0, 0.0),                            # case-insensitive single letter; ours needs 'B'
    (MC, "\\boxed{B.}", 0.0, 1.0),                           # not a single letter → MRA of 'B.' → 0
    (MC, "\\boxed{(B)}", 0.0, 1.0),
    (MC, "\\boxed{\\text{B}}", 0.0, 1.0),                    # regex box gives '\\text{B'
    (MC, "\\boxed{A}", 0.0, 0.0),
    (MC, "I pick B", 0.0, 1.0),                              # no box
]
VSI_NO_COT = [
    (MC, " B\n", 1.0, 1.0),          # vsi_infer.py strips the response
    (NUM("10"), "10.0", 1.0, 1.0),
    (NUM("10"), "10 meters", 0.0, 1.0),
    (MC, "B. right", 0.0, 1.0),
]


@pytest.mark.parametrize("truth,raw,official,strict", VSI_COT)
def test_vsibench_cot(truth, raw, official, strict):
    check("vsibench", truth, raw, official, strict)


@pytest.mark.parametrize("truth,raw,official,strict", VSI_NO_COT)
def test_vsibench_no_cot(truth, raw, official, strict):
    check("vsibench", truth, raw, official, strict, cot=False)


def test_official_mra_float_cuts():
    assert bm.mra_official("13", "10") == 0.5 and bm.mra_official("0.8", "1.0") == 0.6
    assert bm.mra_official("1_0", "10") == 1.0            # float() accepts digit underscores
    assert bm.mra_official("x", "10") == 0.0 and bm.mra_official("10", "ten") == 0.0


# ----------------------------------------------------------------------------- ViewSpatial (main.py)
VS = {"answer": "C", "answer_text": "C. front", "options": {"A": "back", "B": "back-left", "C": "front",
                                                            "D": "back-right"}}


VIEWSPATIAL = [   # (raw, cot, official, strict)
    ("<think>it faces us</think> \\boxed{C}", True, 1.0, 1.0),
    ("\\boxed{c}", True, 1.0, 0.0),                  # IGNORECASE
    ("\\boxed{C. front}", True, 1.0, 1.0),
    ("so C", True, 0.0, 1.0),                        # no box → '' → None
    ("\\boxed{\\text{C}}", True, 1.0, 1.0),          # '\\text{C' still has a standalone C
    ("\\boxed{a front view}", True, 0.0, 1.0),       # the article 'a' is option A officially
    ("\\boxed{front}", True, 0.0, 1.0),              # no letter; ours reads the option text
    ("\\boxed{C or B}", True, 1.0, 0.0),             # the first letter wins
    ("\\boxed{B or C}", True, 0.0, 0.0),
    ("The answer is C.", False, 1.0, 1.0),
    ("a person facing us: C", False, 0.0, 1.0),      # first standalone letter: the article a (IGNORECASE)
]


@pytest.mark.parametrize("raw,cot,official,strict", VIEWSPATIAL)
def test_viewspatial(raw, cot, official, strict):
    check("viewspatial", VS, raw, official, strict, cot=cot)


# ----------------------------------------------------------------------------- What'sUp (main.py)
WU = {"answer": "A", "options": {"A": "A cup on a table", "B": "A cup under a table", "C": "A cup left of a table",
                                 "D": "A cup right of a table"}}


WHATSUP = [   # (raw, cot, official, strict); the gold is always A (official option order)
    ("<think>x</think> \\boxed{A}", True, 1.0, 1.0),
    ("\\boxed{(A) A cup on a table}", True, 1.0, 1.0),
    ("\\boxed{B}", True, 0.0, 0.0),
    ("\\boxed{a}", True, 0.0, 0.0),                      # 'A' in 'a' is false
    ("A", True, 0.0, 1.0),                               # no box → ''
    ("boxed{A}", True, 1.0, 1.0),                        # the official regex needs no backslash
    ("\\boxed{B. A cup under a table}", True, 1.0, 0.0), # any capital A counts
    ("B. A cup under a table", False, 1.0, 0.0),
    ("b", False, 0.0, 0.0),
]


@pytest.mark.parametrize("raw,cot,official,strict", WHATSUP)
def test_whatsup(raw, cot, official, strict):
    check("whatsup", WU, raw, official, strict, cot=cot)


# ----------------------------------------------------------------------------- MCQ: VLMEvalKit can_infer
DSR = {"answer": "B", "options": {"A": "glove", "B": "hat"}, "qid": "VIN6MS3J"}
LRFB = {"answer": "A", "options": {"A": "left", "B": "right", "C": "front", "D": "back"}}


MCQ = [   # (truth, raw, cot, official, strict), for 3DSRBench and SpatialEval alike
    (DSR, "<think>x</think> \\boxed{B}", True, 1.0, 1.0),
    (DSR, "\\boxed{A}", True, 0.0, 0.0),
    (DSR, "\\boxed{A or B}", True, 0.0, 0.0),                   # two letters, no option text
    (DSR, "\\boxed{B, the hat}", True, 1.0, 1.0),
    (DSR, "\\boxed{the hat}", True, 1.0, 1.0),                  # no letter → option text
    (DSR, "\\boxed{A or B: the hat}", True, 1.0, 0.0),          # several letters → option-text fallback
    (DSR, "\\boxed{Z}", True, 0.0, 0.0),
    (DSR, "\\boxed{Z. the hat}", True, 0.0, 1.0),               # no choice letter, a 'Z' token → 'Z'
    (DSR, "Cannot determine the answer, maybe B", True, 0.0, 1.0),   # refusal → 'Z'
    (DSR, "\\boxed{Cannot determine the answer}", True, 0.0, 0.0),
    (DSR, "\\boxed{\\text{B}}", True, 1.0, 1.0),                # '\\text{B' → tokens '\\text', 'B'
    (DSR, "\\boxed{b}", True, 0.0, 0.0),
    (DSR, "A is lower than B", True, 0.0, 0.0),                 # no box: the whole response, two letters
    (DSR, "B", False, 1.0, 1.0),
    (DSR, "The answer is B.", False, 1.0, 1.0),
    (DSR, "The hat (B) is higher than the glove (A).", False, 0.0, 0.0),
    (DSR, "the hat, not the glove", False, 0.0, 0.0),           # two option texts
    (DSR, "C", False, 0.0, 0.0),                                 # not a choice of this 2-option item
    (LRFB, "\\boxed{left or right}", True, 0.0, 0.0),
    (LRFB, "\\boxed{Left}", True, 1.0, 1.0),
]


@pytest.mark.parametrize("truth,raw,cot,official,strict", MCQ)
@pytest.mark.parametrize("bench", ["3dsrbench", "spatialeval"])
def test_vlmevalkit_mcq(bench, truth, raw, cot, official, strict):
    check(bench, truth, raw, official, strict, cot=cot)


def test_can_infer_rules():
    ch = {"A": "glove", "B": "hat"}
    assert bm.can_infer("Sorry, I can't help with images of people yet. B", ch) == "Z"
    assert bm.can_infer("Failed to obtain answer via API. hat", ch) == "B"   # skips the letter rule
    assert bm.can_infer("[B]", ch) == "B" and bm.can_infer("*A*", ch) == "A" and bm.can_infer("", ch) is None


# ----------------------------------------------------------------------------- Spatial457 (VLMEvalKit)
SPATIAL457 = [   # (gold, raw, cot, official, strict)
    ("purple", "\\boxed{Purple}", True, 1.0, 1.0),
    ("purple", "\\boxed{Purple.}", True, 0.0, 1.0),              # nothing is stripped officially
    ("purple", "\\boxed{ purple}", True, 0.0, 1.0),
    ("No", "\\boxed{zero}", True, 0.0, 1.0),                     # 'zero' → '0', compared with 'No'
    ("No", "\\boxed{0}", True, 1.0, 1.0),
    ("no", "\\boxed{0}", True, 0.0, 1.0),                        # only exactly 'No'
    ("No", "\\boxed{none}", True, 1.0, 1.0),
    ("3", "\\boxed{Three}", True, 1.0, 1.0),
    ("3", "\\boxed{3}", True, 1.0, 1.0),
    ("Yes", "\\boxed{2}", True, 1.0, 1.0),
    ("Yes", "\\boxed{0}", True, 0.0, 0.0),
    ("Yes", "\\boxed{10}", True, 0.0, 0.0),
    ("road bike", "\\boxed{bike}", True, 0.0, 1.0),              # 'bike' is no official shape word
    ("road bike", "\\boxed{mountain bike}", True, 1.0, 1.0),     # same family (first words)
    ("suv", "\\boxed{Sedan car}", True, 1.0, 1.0),
    ("airliner", "\\boxed{airplane}", True, 0.0, 1.0),
    ("red", "{'Reasoning': 'it is red', 'Answer': 'red'}", True, 1.0, 0.0),   # the Answer parse
    ("red", '{"Reasoning": "it is red", "Answer": "red"}', True, 1.0, 0.0),
    ("3", "{'Reasoning': 'three', 'Answer': 3}", True, 1.0, 0.0),
    ("red", "{'Answer': 'Red.'}", True, 0.0, 0.0),
    ("red", "The color is red", True, 0.0, 0.0),
    ("red", "Red", False, 1.0, 1.0),
    ("red", "Red\n", False, 0.0, 1.0),
]


@pytest.mark.parametrize("gt,raw,cot,official,strict", SPATIAL457)
def test_spatial457(gt, raw, cot, official, strict):
    check("spatial457", {"answer": gt}, raw, official, strict, cot=cot)


def test_spatial457_prompt_is_vlmevalkits():
    intro, question, outro = bm.spatial457_vlmeval_texts("How many buses?", "L4_pose")
    assert intro == ("You are an intelligent chatbot designed to answer questions based on an image. Your task is to "
                     "analyze the images, identify attributes of multiple objects and their facing direction in 3D "
                     "space from the camera view, and then determine the answer to the question.\n")
    assert question == "How many buses?"
    assert outro.startswith("First, you should identify the related objects refered in the questions, including")
    assert ("options: Small, Large, Airliner, Dirtbike, Road bike, Tandem bike, Suv, Wagon, Scooter, Mountain bike, "
            "Minivan, Sedan, School bus, Fighter, Chopper, Double bus, Truck, Articulated bus, Cruiser, Jet, Utility "
            "bike, Regular bus, Biplane, Gray, Blue, Purple, Brown, Green, Cyan, Red, Yellow, Left, Right, Front, "
            "Back, or (2) an integer [0-10]") in outro
    assert outro.endswith("choose the best answer that fits the question.\n\n")
    assert "objects\u2019 perspective" in bm.spatial457_vlmeval_texts("q", "L5_6d_spatial")[0]
    assert bm.spatial457_vlmeval_texts("q", "L9")[0] == ""
    cot = bm.cot_suffix([intro, question, outro], True)
    assert all(t.endswith(bm.tasks.COT_PROMPT) for t in cot) and cot[1] == question + bm.tasks.COT_PROMPT
    plain = bm.cot_suffix([intro, question, outro], False, plain="Please directly give the answer.")
    assert all(t.endswith("answer.") for t in plain) and plain[1] == "How many buses?Please directly give the answer."


# ----------------------------------------------------------------------------- QSpatial+ (image_vqa.py QSpatial)
QSPATIAL = [   # (gold cm, raw, official δ₂, strict δ₂, official δ₁.₅); CoT or not, the same
    (100.0, "\\scalar{1} \\distance_unit{m}", 1.0, 1.0, 1.0),
    (100.0, "\\scalar{2} \\distance_unit{meters}", 1.0, 0.0, 0.0),   # exactly 2×: (200+1e-8)/(100+1e-8) < 2
    (100.0, "\\scalar{50} \\distance_unit{cm}", 1.0, 0.0, 0.0),      # exactly ½×
    (100.0, "\\scalar{150} \\distance_unit{cm}", 1.0, 1.0, 1.0),     # δ1.5 passes too (1.4999999999…)
    (90.0, "\\scalar{.9} \\distance_unit{m}", 0.0, 1.0, 0.0),        # `\\d+\\.?\\d*` reads '.9' as 9
    (100.0, "It is about 1 meter.", 0.0, 1.0, 0.0),                  # no \\scalar{}: IndexError → 1e-8
    (100.0, "\\boxed{1 m}", 0.0, 1.0, 0.0),                          # rewritten to \\scalar{1} m, unit 'scalar'
    (100.0, "<think>x</think> \\boxed{\\scalar{1} \\distance_unit{m}}", 1.0, 1.0, 1.0),
    (100.0, "\\scalar{1} \\unit{m}", 1.0, 0.0, 1.0),                 # unit{} fallback
    (100.0, "\\scalar{1} {m}", 1.0, 0.0, 1.0),                       # bare {} fallback
    (150.0, "\\scalar{1-2} \\distance_unit{m}", 1.0, 1.0, 1.0),      # mean of the numbers
    (100.0, "\\scalar{3} \\distance_unit{parsecs}", 0.0, 0.0, 0.0),  # unknown unit → × 0
    (100.0, "\\scalar{1} \\distance_unit{m} or \\scalar{3} \\distance_unit{m}", 0.0, 0.0, 0.0),   # the last
    (100.0, "\\scalar{about} \\distance_unit{m}", 0.0, 0.0, 0.0),    # no number: nan
    (30.48, "\\scalar{1} \\distance_unit{Foot}", 1.0, 1.0, 1.0),
]


@pytest.mark.parametrize("gt,raw,official,strict,official15", QSPATIAL)
def test_qspatial(gt, raw, official, strict, official15):
    item = bm.Item("1", "cat", ["q"], [], {"answer_cm": gt})
    got = bm.score_item("qspatial_plus", item, raw, bm.Options(scoring="official"))
    assert (got["correct"], got["delta_1_5"]) == (official, official15)
    assert bm.score_item("qspatial_plus", item, raw, bm.Options(scoring="strict"))["correct"] == strict


def test_qspatial_ground_truth():
    """One ground truth for both scorings, the fork's: float32 → shortest decimal, the fork's unit table."""
    v = float(np.float32(0.3))                     # what pyarrow hands us for the card's 0.3
    assert v != 0.3 and bm.qspatial_gt_cm(v, "m", "x") == 0.3 * 100   # the fork's str/eval round trip
    with pytest.raises(bm.SetupError, match="row 7: ground-truth unit 'parsec'"):
        bm.qspatial_gt_cm(1.0, "parsec", "q.parquet row 7")
    with pytest.raises(bm.SetupError, match="not a known distance unit"):
        bm.qspatial_gt_cm(1.0, "yard", "q.parquet row 7")   # get_multiplier knows no yards
    assert bm.qspatial_gt_cm(1.0, "Feet", "x") == pytest.approx(30.48)


# ----------------------------------------------------------------------------- SpatialEval parquet, module
def test_spatialeval_card_options_lose_the_final_period():
    text = "Where is X relative to Y? Available options:\nA. Northeast\nB. Northwest\nC. Southwest\nD. Southeast."
    stem, opts = bm.spatialeval_options(text)
    assert stem == "Where is X relative to Y?" and opts["D"] == "Southeast" and len(opts) == 4
    items = bm.spatialeval_parquet_items([{"id": "spatialmap.vqa.1.0", "text": text, "oracle_option": "D",
                                           "image": None}], bm.Options())
    assert items[0].texts[0].startswith("Question: Where is X relative to Y?\nOptions:\nA. Northeast\n")
    assert "D. Southeast\nPlease select" in items[0].texts[0]
    assert score("spatialeval", items[0].truth, "\\boxed{southeast}") == 1.0
    assert score("spatialeval", items[0].truth, "\\boxed{southeast}", "strict") == 1.0


def test_import_without_torch():
    """benchmarks.py must import (and score) with torch unavailable."""
    code = ("import sys; sys.modules['torch'] = None; import benchmarks as b; "
            "assert b.mra_official('13', '10') == 0.5; print('ok')")
    r = subprocess.run([sys.executable, "-c", code], cwd=HERE, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_summary_records_the_scoring():
    recs = [{"id": "1", "category": "object_counting", "correct": 0.5}]
    s = bm.summarize("vsibench", recs, bm.Options(frames=16, vsi_input="images"))
    assert (s["scoring"], s["vsi_input"], s["frames"], s["comparable"]) == ("official", "images", 16, False)
    assert bm.summarize("vsibench", recs, bm.Options(vsi_input="video"))["comparable"]
    assert bm.summarize("whatsup", recs, bm.Options())["comparable"]
    strict = bm.summarize("whatsup", recs, bm.Options(scoring="strict"))
    assert strict["scoring"] == "strict" and not strict["comparable"]
    with pytest.raises(ValueError, match="scoring must be one of official, strict"):
        bm.Options(scoring="paper-quirks")


def test_one_table_two_scorers():
    """Every benchmark has an (official, strict) pair in SCORERS; only the pretext split shares one function."""
    assert set(bm.SCORERS) == set(bm.BENCH_NAMES)
    same = sorted(b for b, (official, strict) in bm.SCORERS.items() if official is strict)
    assert same == ["pretext"]


# ----------------------------------------------------------------------------- official vs strict, over the cases
def all_cases() -> list:
    """(bench, truth, raw, cot) of every hand-derived case above (the MCQ table once per MCQ benchmark)."""
    cases = [("vsibench", t, raw, True) for t, raw, *_ in VSI_COT]
    cases += [("vsibench", t, raw, False) for t, raw, *_ in VSI_NO_COT]
    cases += [("viewspatial", VS, raw, cot) for raw, cot, *_ in VIEWSPATIAL]
    cases += [("whatsup", WU, raw, cot) for raw, cot, *_ in WHATSUP]
    cases += [(b, t, raw, cot) for b in ("3dsrbench", "spatialeval") for t, raw, cot, *_ in MCQ]
    cases += [("spatial457", {"answer": gt}, raw, cot) for gt, raw, cot, *_ in SPATIAL457]
    cases += [("qspatial_plus", {"answer_cm": gt}, raw, True) for gt, raw, *_ in QSPATIAL]
    return cases


def official_vs_strict() -> str:
    """A markdown table: per benchmark, the mean score of the cases under each scoring (through score_item) and
    how many cases the two scorings score differently."""
    rows = {}
    for bench, truth, raw, cot in all_cases():
        o, s = score(bench, truth, raw, "official", cot), score(bench, truth, raw, "strict", cot)
        rows.setdefault(bench, []).append((o, s))
    lines = ["| benchmark | cases | official % | strict % | strict − official | cases scored differently |",
             "|---|---|---|---|---|---|"]
    for bench in bm.BENCH_NAMES:
        if bench in rows:
            r = rows[bench]
            o, s = 100 * sum(x for x, _ in r) / len(r), 100 * sum(y for _, y in r) / len(r)
            diff = sum(abs(x - y) > 1e-9 for x, y in r)
            lines.append(f"| {bench} | {len(r)} | {o:.1f} | {s:.1f} | {s - o:+.1f} | {diff} |")
    return "\n".join(lines)


def test_official_vs_strict_table_is_the_documented_one():
    """docs/evaluation.md shows the table this file computes (regenerate it with `python test_benchmarks.py`)."""
    doc = HERE / "docs" / "evaluation.md"
    assert official_vs_strict() in doc.read_text(encoding="utf-8"), "docs/evaluation.md: table out of date"


if __name__ == "__main__":
    print(official_vs_strict())
