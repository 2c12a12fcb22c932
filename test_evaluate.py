"""Tests of evaluate.py (and benchmarks.py's strict rules): every scoring rule against hand-computed cases, each
benchmark's released file format (built here: tiny images, a few rows, the odd cases) end to end on the tiny
model, resume, bad input as a new user meets it. The official scorers are tested item by item in
test_benchmarks.py.

    python -m pytest -q test_evaluate.py
"""
import base64
import csv
import importlib.util
import io
import json
import sys
from pathlib import Path

import pytest
from PIL import Image

import benchmarks as bm
import common
import evaluate as ev
import vlm
from common import SetupError, Skipped

TINY_PIXELS = [f"{b}=784:3136" for b in ev.BENCH_NAMES]


def cfg(tmp_path, **kw):
    base = dict(model="tiny", bench=["pretext"], data=[], out=str(tmp_path / "out"), max_new_tokens=3,
                batch_size=4, pixels=TINY_PIXELS, progress=False, plot=False)
    base.update(kw)
    return ev.Config(**base)


def png_bytes(color=(200, 30, 30), size=(28, 28), fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, fmt)
    return buf.getvalue()


def b64(color=(200, 30, 30)) -> str:
    return base64.b64encode(png_bytes(color)).decode()


def write_tsv(path: Path, header: list, rows: list) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(header)
        w.writerows(rows)
    return path


# ----------------------------------------------------------------------------- scoring rules
@pytest.mark.parametrize("text,expected", [
    ("B", "B"), ("(B)", "B"), ("B. right", "B"), ("\\text{C}", "C"), ("Answer: D.", "D"),
    ("A or B", None),                  # several letters name no option
    ("the object is on the right", "B"),   # no letter: the one option text that occurs
    ("left or right", None),           # two option texts
    ("a", None), ("", None), ("E", None)])
def test_match_option(text, expected):
    assert bm.match_option(text, {"A": "left", "B": "right", "C": "front", "D": "back"}) == expected


def test_answer_text_takes_last_box_for_cot():
    assert bm.answer_text("<think>\\boxed{A}</think> so \\boxed{B}", cot=True) == "B"
    assert bm.answer_text("  no box here ", cot=True) == "no box here"
    assert bm.answer_text("\\boxed{B}", cot=False) == "\\boxed{B}"


@pytest.mark.parametrize("gt,pred,ok", [
    ("3", "three", True), ("3", "Three.", True), ("No", "0", True), ("No", "none", True), ("Yes", "2", True),
    ("Yes", "0", False), ("Yes", "no", False), ("red", "Red", True), ("red", "blue", False),
    ("suv", "sedan", True), ("school bus", "bus", True), ("suv", "airliner", False), ("4", "5", False)])
def test_spatial457_correct(gt, pred, ok):
    assert bm.spatial457_correct(gt, pred) is ok


@pytest.mark.parametrize("text,cm", [
    ("so \\scalar{1-2} \\distance_unit{meters}", 150.0),      # range → mean 1.5 m
    ("\\scalar{3} \\distance_unit{feet}", 3 * 30.48),
    ("1.5 meters", 150.0), ("about 30 cm", 30.0), ("12 inches", 12 * 2.54), ("2 \\text{m}", 200.0),
    ("no idea", None), ("3 parsecs", None)])
def test_parse_quantity(text, cm):
    got = bm.parse_quantity(text)
    assert (got is None and cm is None) or got == pytest.approx(cm)


def test_delta_thresholds():
    assert bm.delta_ok(150, 100) and not bm.delta_ok(150, 100, 1.5)     # ratio 1.5: δ₂ yes, δ₁.₅ no (strict)
    assert not bm.delta_ok(200, 100)                                     # ratio exactly 2 fails
    assert bm.delta_ok(60, 100) and not bm.delta_ok(60, 100, 1.5)        # 100/60 = 1.67
    assert not bm.delta_ok(None, 100) and not bm.delta_ok(0, 100)
    assert bm.to_cm(2, "Feet") == pytest.approx(60.96) and bm.to_cm(1, "parsec") is None


@pytest.mark.parametrize("pred,gt,score", [
    (10, 10, 1.0),    # rel 0: all ten thresholds
    (12, 10, 0.6),    # rel .2 < 1-θ for θ = .50 … .75
    (13, 10, 0.4),    # rel .3: θ = .50 … .65 (θ = .70 is a tie, strict)
    (8, 10, 0.6), (15, 10, 0.0), (None, 10, 0.0), (3, 0, 0.0)])
def test_mra(pred, gt, score):
    assert bm.mra(pred, gt) == pytest.approx(score)


def test_vsi_macro_and_micro():
    rows = [("object_counting", 1.0), ("object_counting", 0.5), ("object_rel_direction_easy", 1.0),
            ("object_rel_direction_hard", 0.0), ("route_planning", 0.0)]
    got = bm.vsi_averages(rows)
    assert got["micro"] == pytest.approx(100 * 2.5 / 5)
    assert got["macro"] == pytest.approx(100 * (0.75 + 0.5 + 0.0) / 3)   # easy/hard merged first


def test_3dsrbench_circular_and_flip():
    rows = [("VIN6MS3J", True), ("VIN6MS3J-1", True), ("VIN6MS3J-flip", True), ("VIN6MS3J-flip-1", False),
            ("ABCDEFGH", True)]
    got = bm.dsr_group_scores(rows)
    assert got["vanilla"] == pytest.approx(80.0)
    assert got["flip"] == pytest.approx(100 * 2 / 3)           # {base, flip}, {-1, flip-1}✗, {ABCDEFGH}
    assert got["circular"] == pytest.approx(100 * 2 / 3)       # {base, -1}, {flip, flip-1}✗, {ABCDEFGH}
    assert got["flip_circular"] == pytest.approx(50.0)         # {all four}✗, {ABCDEFGH}


def test_whatsup_both_scorings():
    truth = {"answer": "A", "options": {"A": "a cup on a table", "B": "a cup under a table",
                                        "C": "a cup left of a table", "D": "a cup right of a table"}}
    assert bm.score_whatsup_strict("<think>x</think> \\boxed{A}", truth, True)["correct"] == 1.0
    assert bm.score_whatsup_strict("<think>x</think> \\boxed{C}", truth, True)["correct"] == 0.0
    assert bm.score_whatsup_strict("\\boxed{A or C}", truth, True)["correct"] == 0.0
    # official scoring: gold is always A, any "A" inside the last boxed{} is a hit; no box → ''
    assert bm.score_whatsup_official("<think>x</think> \\boxed{A}", truth, True)["correct"] == 1.0
    assert bm.score_whatsup_official("\\boxed{(A) a cup}", truth, True)["correct"] == 1.0
    assert bm.score_whatsup_official("A is my answer", truth, True)["correct"] == 0.0
    assert bm.score_whatsup_official("A cup on a table", truth, False)["correct"] == 1.0   # lenient substring


def test_vsibench_both_scorings():
    mc = {"answer": "B", "options": {"A": "left", "B": "right"}}
    assert bm.score_vsibench_strict("B.", mc, True)["correct"] == 1.0
    assert bm.score_vsibench_official("\\boxed{B.}", mc, True)["correct"] == 0.0
    assert bm.score_vsibench_official("\\boxed{b}", mc, True)["correct"] == 1.0
    assert bm.score_vsibench_official("b", mc, True)["correct"] == 0.0   # CoT without a box: ''
    assert bm.score_vsibench_official("b", mc, False)["correct"] == 1.0
    num = {"answer": "10", "options": {}}
    assert bm.score_vsibench_strict("about 12 m", num, True)["correct"] == pytest.approx(0.6)


def test_sample_indices_uniform():
    assert bm.sample_indices(5, 8) == [0, 1, 2, 3, 4]
    assert bm.sample_indices(10, 4) == [0, 3, 6, 9]


# ----------------------------------------------------------------------------- fixtures in the released formats
def make_fixtures(root: Path) -> dict:
    """One small dataset per benchmark in its real file format, each with an odd case."""
    root.mkdir(parents=True, exist_ok=True)
    data = {}
    # pretext: make_data's test.jsonl layout; one record's image is missing
    (root / "pre").mkdir()
    Image.new("RGB", (40, 30), (10, 200, 10)).save(root / "pre" / "a.jpg")
    recs = [{"id": "crop-1", "task": "crop", "problem": "<image>\nWhich patch? Options: A B C D", "answer": "B",
             "images": ["a.jpg"]},
            {"id": "depth-1", "task": "depth", "problem": "<image>\nOrder markers 1-3.", "answer": "2, 3, 1",
             "images": ["a.jpg"]},
            {"id": "flip-1", "task": "flip", "problem": "<image>\nWhich tile?", "answer": "3, horizontal",
             "images": ["missing.jpg"]}]
    (root / "pre" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    data["pretext"] = root / "pre" / "test.jsonl"
    # Spatial457 TSV: base64, an index reference to row 0, a quoted question, one corrupt row
    data["spatial457"] = write_tsv(root / "Spatial457.tsv", ["index", "image", "question", "answer", "category"], [
        ["0", b64(), "How many red buses?", "1", "L1_single"],
        ["1", "0", 'Is there a "large" bus?', "Yes", "L2_objects"],
        ["2", b64((0, 0, 255)), "What color is the suv?", "blue", "L4_pose"],
        ["3", "broken row"]])
    # 3DSRBench circular TSV: qid suffixes, 2 options (C/D empty), a multi-image row
    hdr = ["index", "qid", "question", "A", "B", "C", "D", "answer", "category", "image"]
    data["3dsrbench"] = write_tsv(root / "3DSRBench.tsv", hdr, [
        ["0", "VIN6MS3J", "Which is higher?", "glove", "hat", "", "", "B", "height_higher", b64()],
        ["1", "VIN6MS3J-1", "Which is higher?", "hat", "glove", "", "", "A", "height_higher", "0"],
        ["2", "VIN6MS3J-flip", "Which is higher?", "glove", "hat", "", "", "B", "height_higher", b64((9, 9, 9))],
        ["3", "VIN6MS3J-flip-1", "Which is higher?", "hat", "glove", "", "", "A", "height_higher",
         str([b64(), b64((0, 90, 0))])]])
    # SpatialEval TSV: A-D options, a bad base64 image (skipped, not fatal)
    hdr = ["index", "image", "question", "A", "B", "C", "D", "answer", "category"]
    data["spatialeval"] = write_tsv(root / "SpatialEval.tsv", hdr, [
        ["10", b64(), "Where is X?", "Northeast", "Northwest", "Southwest", "Southeast", "A", "spatialmap"],
        ["11", "bm90IGFuIGltYWdl", "Where is Y?", "Northeast", "Northwest", "Southwest", "Southeast", "C",
         "mazenav"]])
    # What'sUp: folder with both JSONs (paths as released: data/controlled_images/...) and a missing image
    for sub, name in (("controlled_images", "controlled_images_dataset.json"),
                      ("controlled_clevr", "controlled_clevr_dataset.json")):
        (root / "whatsup" / sub).mkdir(parents=True)
        Image.new("RGB", (30, 30), (50, 50, 50)).save(root / "whatsup" / sub / "cup_on_table.jpeg")
        items = [{"image_path": f"data/{sub}/cup_on_table.jpeg",
                  "caption_options": ["A cup on a table", "A cup under a table", "A cup to the left of a table",
                                      "A cup to the right of a table"]},
                 {"image_path": f"data/{sub}/gone.jpeg", "caption_options": ["a", "b", "c", "d"]}]
        (root / "whatsup" / name).write_text(json.dumps(items))
    data["whatsup"] = root / "whatsup"
    # ViewSpatial: JSON inside ViewSpatial-Bench/, image paths relative to its parent; one 2-image item
    vs = root / "vs" / "ViewSpatial-Bench"
    (vs / "val2017").mkdir(parents=True)
    (vs / "scannetv2_val" / "scene0011_00" / "original_images").mkdir(parents=True)
    Image.new("RGB", (64, 48), (1, 2, 3)).save(vs / "val2017" / "000000000285.jpg")
    for k in (1, 2):
        Image.new("RGB", (64, 48), (k, 2, 3)).save(vs / "scannetv2_val" / "scene0011_00" / "original_images" / f"{k}.jpg")
    items = [{"question_type": "Person perspective - Object View Orientation",
              "image_path": ["ViewSpatial-Bench/val2017/000000000285.jpg"],
              "question": "As the bear, where do you face?", "answer": "C. front",
              "choices": "A. back\nB. back-left\nC. front\nD. back-right"},
             {"question_type": "Person perspective - Scene Simulation Relative Direction",
              "image_path": [f"ViewSpatial-Bench/scannetv2_val/scene0011_00/original_images/{k}.jpg" for k in (1, 2)],
              "question": "Where is the counter?", "answer": "A. right", "choices": "A. right\nB. left"}]
    (vs / "ViewSpatial-Bench.json").write_text(json.dumps(items))
    data["viewspatial"] = vs / "ViewSpatial-Bench.json"
    # VSI-Bench: Spatial-SSRL's JSON (cluster paths remapped), frames pre-extracted; one video missing
    frames = root / "vsi" / "arkitscenes" / "41069025"
    frames.mkdir(parents=True)
    for k in range(6):
        Image.new("RGB", (32, 32), (k * 40, 0, 0)).save(frames / f"{k:05d}.jpg")
    items = [{"mp4_path": "/cluster/VSIBench/arkitscenes/41069025.mp4", "question_type": "object_rel_direction_hard",
              "question": "Is the tv to my front-left or back-right?", "answer": "A", "A": "A. front-left",
              "B": "B. back-right", "C": None, "D": None},
             {"mp4_path": "/cluster/VSIBench/arkitscenes/41069025.mp4", "question_type": "room_size_estimation",
              "question": "What is the size of this room (in square meters)?", "answer": "26.4", "A": None,
              "B": None, "C": None, "D": None},
             {"mp4_path": "/cluster/VSIBench/scannet/nope.mp4", "question_type": "object_counting",
              "question": "How many chairs?", "answer": "4", "A": None, "B": None, "C": None, "D": None}]
    (root / "vsi" / "vsi_bench.json").write_text(json.dumps(items))
    data["vsibench"] = root / "vsi" / "vsi_bench.json"
    return data


def test_loaders_read_the_odd_cases(tmp_path):
    data = make_fixtures(tmp_path / "d")
    c = bm.Options()
    s457 = bm.load_bench("spatial457", str(data["spatial457"]), c)
    assert [it.id for it in s457] == ["0", "1", "2", "3"] and "malformed" in s457[3].error
    assert s457[1].images == s457[0].images                                # index reference resolved
    assert s457[1].texts[1].startswith('Is there a "large" bus?') and s457[0].image_slots == [1]
    assert all(t.endswith(bm.tasks.COT_PROMPT) for t in s457[0].texts)   # VLMEvalKit: every text segment
    assert sum(t.count("MUST BE") for t in s457[0].texts) == 6
    dsr = bm.load_bench("3dsrbench", str(data["3dsrbench"]), c)
    assert len(dsr[3].images) == 2 and dsr[0].truth["options"] == {"A": "glove", "B": "hat"}
    assert "C." not in dsr[0].texts[0] and dsr[2].truth["qid"] == "VIN6MS3J-flip"
    wu = bm.load_bench("whatsup", str(data["whatsup"]), c)
    assert len(wu) == 4 and {it.category for it in wu} == {"Controlled_Images_A", "Controlled_Images_B"}
    for it in wu:   # the released option order: the gold caption is always A
        assert it.truth["answer"] == "A" and it.truth["options"]["A"] in ("A cup on a table", "a")
    vs = bm.load_bench("viewspatial", str(data["viewspatial"]), c)
    ims, slots = bm.load_item_images(vs[1], 32)
    assert [im.size for im in ims] == [(420, 280)] * 2 and vs[0].truth["answer"] == "C"
    vsi = bm.load_bench("vsibench", str(data["vsibench"]), c)
    frames, _ = bm.load_item_images(vsi[0], 4)
    assert len(frames) == 4 and frames[-1].getpixel((0, 0))[0] > 180    # frames 0, 2, 3, 5 of 6
    assert "A. A. front-left" in vsi[0].texts[0]   # the official prompt's option prefix, kept


def test_end_to_end_all_benchmarks_on_tiny_model(tmp_path, capsys):
    data = make_fixtures(tmp_path / "d")
    c = cfg(tmp_path, bench=["all"], data=[f"{k}={v}" for k, v in data.items()])
    results = ev.evaluate(c)
    assert set(results) == set(data)
    skipped = {b: r["skipped"] for b, r in results.items()}
    assert skipped == {"pretext": 1, "spatial457": 1, "3dsrbench": 0, "spatialeval": 1, "whatsup": 2,
                       "viewspatial": 0, "vsibench": 1}
    for b, r in results.items():
        assert 0.0 <= r["score"] <= 100.0 and r["n"] + r["skipped"] > 0
        lines = (tmp_path / "out" / b / "predictions.jsonl").read_text().splitlines()
        recs = [json.loads(x) for x in lines]
        assert len(recs) == r["n"] + r["skipped"]
        assert all({"id", "prompt"} <= set(x) for x in recs)
        assert all({"raw", "extracted", "correct"} <= set(x) for x in recs if not x.get("skipped"))
    assert set(results["3dsrbench"]["settings"]) == {"vanilla", "flip", "circular", "flip_circular"}
    assert results["spatial457"]["paper"]["Spatial-SSRL-7B"] == 53.34
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["vsibench"]["n"] == 2 and "macro" in saved["vsibench"]["settings"]
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| spatial457 |" in md and "| Spatial-SSRL-7B |" in md.splitlines()[0]
    # rerun with --resume: everything is done, nothing is asked again
    capsys.readouterr()
    ev.evaluate(cfg(tmp_path, bench=["all"], data=[f"{k}={v}" for k, v in data.items()], resume=True))
    assert "0 to ask" in capsys.readouterr().out


def test_resume_after_kill_drops_half_line(tmp_path, capsys):
    data = make_fixtures(tmp_path / "d")
    c = cfg(tmp_path, data=[f"pretext={data['pretext']}"])
    ev.evaluate(c)
    preds = tmp_path / "out" / "pretext" / "predictions.jsonl"
    lines = preds.read_text().splitlines(keepends=True)
    assert len(lines) == 3
    preds.write_text("".join(lines[:2]) + lines[2][: len(lines[2]) // 2])     # kill -9 mid-line
    assert len(common.read_jsonl(preds, torn_tail_ok=True)) == 2
    preds.write_text("".join(lines[:2]) + lines[2][:-1])                      # complete JSON, no newline
    capsys.readouterr()
    with pytest.raises(SetupError, match="add --resume"):
        ev.evaluate(c)
    ev.evaluate(cfg(tmp_path, data=[f"pretext={data['pretext']}"], resume=True))
    assert "1 to ask" in capsys.readouterr().out
    assert len(preds.read_text().splitlines()) == 3
    with pytest.raises(SetupError, match="other settings: --cot / --no-cot True"):
        ev.evaluate(cfg(tmp_path, data=[f"pretext={data['pretext']}"], cot=False, resume=True))


def test_pretext_scored_with_tasks_verifiers(tmp_path):
    data = make_fixtures(tmp_path / "d")
    c = bm.Options()
    item = bm.load_bench("pretext", str(data["pretext"]), c)[1]
    got = bm.score_item("pretext", item, "<think>2 is nearest</think> \\boxed{2, 3, 1}", c)
    assert (got["correct"], got["format"], got["reward"]) == (1.0, 1.0, 1.0)
    got = bm.score_item("pretext", item, "\\boxed{1, 2, 3}", c)
    assert (got["correct"], got["format"], got["reward"]) == (0.0, 0.0, 0.0)
    assert item.prompt_text().startswith("<image>\nOrder markers") and item.texts[-1].endswith("\\boxed{}.")


def test_bad_files_give_one_line_errors(tmp_path, capsys):
    with pytest.raises(SetupError, match="nope.tsv: no such file"):
        bm.load_bench("spatial457", str(tmp_path / "nope.tsv"), bm.Options())
    bad = write_tsv(tmp_path / "x.tsv", ["index", "question"], [["0", "q"]])
    with pytest.raises(SetupError, match=r"x.tsv: not a VLMEvalKit TSV .*missing \['image'"):
        bm.load_bench("spatial457", str(bad), bm.Options())
    (tmp_path / "v.json").write_text("{not json")
    with pytest.raises(SetupError, match="v.json: not valid JSON"):
        bm.load_bench("viewspatial", str(tmp_path / "v.json"), bm.Options())
    with pytest.raises(SetupError, match="controlled_images_dataset.json"):
        bm.load_bench("whatsup", str(tmp_path), bm.Options())
    with pytest.raises(SystemExit) as e:
        ev.main(["--bench", "spatial457", "--data", "pretext=x.jsonl"])
    assert e.value.code == 2 and "no --data for ['spatial457']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ev.main(["--data", "nonsense"])
    with pytest.raises(SystemExit):   # a plain path needs exactly one --bench
        ev.main(["--bench", "pretext", "spatial457", "--data", "x.jsonl"])


def test_one_bench_takes_a_plain_data_path(tmp_path):
    """`--bench pretext --data test.jsonl` (no BENCH= prefix) evaluates that file."""
    data = make_fixtures(tmp_path / "d")
    args = ev.build_parser().parse_args(["--bench", "pretext", "--data", str(data["pretext"])])
    c = ev.Config(**{**vars(args), "out": str(tmp_path / "out"), "max_new_tokens": 2, "pixels": TINY_PIXELS,
                     "progress": False, "plot": False})
    assert c.data_paths()["pretext"] == str(data["pretext"])
    assert ev.Config(bench=["spatial457"], data=["a=b.tsv"]).data_paths()["spatial457"] == "a=b.tsv"
    results = ev.evaluate(c)
    assert results["pretext"]["n"] == 2 and results["pretext"]["scoring"] == "official"


def test_video_without_pyav_or_frames(tmp_path):
    (tmp_path / "scannet").mkdir()
    (tmp_path / "scannet" / "s.mp4").write_bytes(b"\x00" * 16)
    if importlib.util.find_spec("av") is None:
        with pytest.raises(SetupError, match="pip install av"):
            bm.video_frames(tmp_path / "scannet" / "s.mp4", 4)
    with pytest.raises(Skipped):
        bm.video_frames(tmp_path / "scannet" / "none.mp4", 4)


def test_parquet_without_pyarrow_names_the_package(tmp_path, monkeypatch):
    for name in ("pyarrow", "pyarrow.parquet"):
        monkeypatch.setitem(sys.modules, name, None)   # as if it were not installed
    (tmp_path / "q.parquet").write_bytes(b"PAR1")
    with pytest.raises(SetupError, match="pip install pyarrow"):
        bm.load_bench("qspatial_plus", str(tmp_path / "q.parquet"), bm.Options())


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is None, reason="needs pyarrow")
def test_parquet_benchmarks_end_to_end(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    img = {"bytes": png_bytes(), "path": None}
    pq.write_table(pa.Table.from_pylist([
        {"question": "Distance between the mugs?", "answer_value": 96.0, "answer_unit": "cm",
         "question_type": "distance", "image_path": "QSpatial_plus/a.jpg", "image": img},
        {"question": "Height of the door?", "answer_value": 2.0, "answer_unit": "m",
         "question_type": "height", "image_path": "QSpatial_plus/b.jpg", "image": img}]), tmp_path / "qs.parquet")
    pq.write_table(pa.Table.from_pylist([
        {"id": "spatialmap.vqa.2000.0", "text": "Where?\nAvailable options:\nA. Northeast\nB. Northwest",
         "image": img, "oracle_answer": "Northeast", "oracle_option": "A", "oracle_full_answer": "A. Northeast"}]),
        tmp_path / "se.parquet")
    c = cfg(tmp_path, bench=["qspatial_plus", "spatialeval"],
            data=[f"qspatial_plus={tmp_path / 'qs.parquet'}", f"spatialeval={tmp_path / 'se.parquet'}"])
    items = bm.load_bench("qspatial_plus", str(tmp_path / "qs.parquet"), c)
    assert items[1].truth["answer_cm"] == pytest.approx(200.0) and items[0].texts[0].startswith(bm.QSPATIAL_SYSTEM)
    se = bm.load_bench("spatialeval", str(tmp_path / "se.parquet"), c)
    assert se[0].category == "spatialmap" and se[0].truth["options"] == {"A": "Northeast", "B": "Northwest"}
    results = ev.evaluate(c)
    assert results["qspatial_plus"]["n"] == 2 and results["spatialeval"]["n"] == 1


def test_two_ranks_shard_and_gather(tmp_path):
    """torchrun ×2 (gloo): each rank answers its shard, rank 0 writes every item exactly once, and the answers
    equal one process's (greedy, fp32; left padding makes them independent of the batch)."""
    import os
    import subprocess
    import sys
    data = make_fixtures(tmp_path / "d")
    flags = ["--bench", "pretext", "spatial457", "--data", f"pretext={data['pretext']}",
              f"spatial457={data['spatial457']}", "--max-new-tokens", "3", "--batch-size", "1", "--pixels",
              *TINY_PIXELS, "--no-progress", "--no-plot"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}   # gloo on CPU, also on a GPU box
    here = Path(ev.__file__).parent
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(here / "evaluate.py"), *flags, "--out", str(tmp_path / "two")]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=here)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    r = subprocess.run([sys.executable, str(here / "evaluate.py"), *flags, "--out", str(tmp_path / "one")],
                       capture_output=True, text=True, env=env, timeout=300, cwd=here)
    assert r.returncode == 0, r.stderr[-2000:]
    for bench in ("pretext", "spatial457"):
        two = [json.loads(x) for x in (tmp_path / "two" / bench / "predictions.jsonl").read_text().splitlines()]
        one = {x["id"]: x for x in common.read_jsonl(tmp_path / "one" / bench / "predictions.jsonl")}
        assert sorted(x["id"] for x in two) == sorted(one)
        assert all(x.get("raw") == one[x["id"]].get("raw") for x in two)


def test_gpu_shapes_answer_like_the_plain_engine(tmp_path, monkeypatch):
    """The decoder with the GPU's fixed shapes (prompts padded to a bucket, batch_size prompts per call with
    filler prompts; torch.compile replaced by the identity on CPU) gives the plain engine's greedy answers on
    a batch of mixed lengths."""
    from test_train import fixed_shape_engine
    data = make_fixtures(tmp_path / "d")
    c = ev.Config(bench=["3dsrbench"], max_new_tokens=6, batch_size=3, pixels=TINY_PIXELS)
    items = bm.load_bench("3dsrbench", str(data["3dsrbench"]), c.options())
    model, tok, ip = vlm.load_model("tiny")
    ip.size = {"shortest_edge": 784, "longest_edge": 3136}
    recs_plain, n_plain = ev.answer_batch("3dsrbench", items, ev.Engine(model), tok, ip, c)
    fixed = fixed_shape_engine(model, monkeypatch, prompts_per_call=3)
    recs_fixed, n_fixed = ev.answer_batch("3dsrbench", items, fixed, tok, ip, c)
    assert len(items) > 3 and [r["raw"] for r in recs_plain] == [r["raw"] for r in recs_fixed] and n_plain == n_fixed > 0


def test_plot_is_optional(tmp_path):
    results = {"whatsup": bm.summarize("whatsup", [{"id": "1", "category": "A", "correct": 1.0}])}
    msg = ev.plot_results(results, tmp_path / "results.png")
    if importlib.util.find_spec("matplotlib") is None:
        assert "pip install matplotlib" in msg and not (tmp_path / "results.png").exists()
    else:
        assert (tmp_path / "results.png").stat().st_size > 0
    assert results["whatsup"]["score"] == 100.0 and results["whatsup"]["paper"]["Spatial-SSRL-7B"] == 90.61


def test_pretext_uses_the_checkpoints_own_pixel_bounds(monkeypatch, tmp_path):
    """The pretext split is asked at the image bounds the checkpoint was trained with (its saved image
    processor), not a fixed 512²: a tiny model cold-started on 56×56 images saw 4 image tokens per image."""
    own = (3136, 3136)
    assert ev.Config().pixel_bounds("pretext", own) == own
    assert ev.Config(pixels=["pretext=784:3136"]).pixel_bounds("pretext", own) == (784, 3136)
    assert ev.Config().pixel_bounds("whatsup", own) == ev.BENCH_PIXELS["whatsup"]
    both = ev.Config(min_pixels=1000, max_pixels=2000, pixels=["whatsup=10:20"])   # one rule for every benchmark
    assert [both.pixel_bounds(b, own) for b in ("pretext", "spatial457", "whatsup")] == [(1000, 2000)] * 2 + [(10, 20)]
    assert ev.Config(max_pixels=5000).pixel_bounds("pretext", own) == (3136, 5000)
    with pytest.raises(ValueError, match="min pixels"):
        ev.Config(max_pixels=100).pixel_bounds("spatial457", own)
    model, tok, ip = vlm.load_model("tiny", min_pixels=3136, max_pixels=3136)
    vlm.save_hf(model, tok, ip, str(tmp_path / "ckpt"))
    folder = tmp_path / "data"
    folder.mkdir()
    Image.new("RGB", (224, 224), (90, 90, 90)).save(folder / "a.png")
    rec = {"id": "p0", "task": "crop", "problem": "<image>Which? A. x B. y C. z D. w", "answer": "A",
           "images": ["a.png"]}
    (folder / "test.jsonl").write_text(json.dumps(rec) + "\n")
    cfg = ev.Config(model=str(tmp_path / "ckpt"), data=[f"pretext={folder / 'test.jsonl'}"], out=str(tmp_path / "out"),
                    max_new_tokens=2, batch_size=1, progress=False, plot=False)
    seen = []
    real_encode = vlm.encode
    def spy(convs, images, tokenizer, image_processor, padding_side="right"):
        seen.append(dict(image_processor.size))
        return real_encode(convs, images, tokenizer, image_processor, padding_side)
    monkeypatch.setattr(ev, "encode", spy)   # evaluate.py's own name for vlm.encode
    ev.evaluate(cfg)
    assert seen and all(s == {"shortest_edge": 3136, "longest_edge": 3136} for s in seen)


# ----------------------------------------------------------------------------- VSI-Bench as video
def test_vsibench_video_end_to_end(tmp_path, monkeypatch):
    """Default VSI-Bench input = the official one: all sampled frames as ONE video item (pixel_values_videos,
    frames/2 temporal patches, mm_token_type_ids 2, second_per_grid_ts 2/fps), recorded in run.json and the
    results; --vsi-as-images gives the frames as separate images, and cannot resume a video run."""
    data = make_fixtures(tmp_path / "d")
    seen = []
    real_encode = vlm.encode

    def spy(convs, images, tokenizer, image_processor, padding_side="right"):
        seen.append(real_encode(convs, images, tokenizer, image_processor, padding_side))
        return seen[-1]
    monkeypatch.setattr(ev, "encode", spy)
    c = cfg(tmp_path, bench=["vsibench"], data=[f"vsibench={data['vsibench']}"])
    assert c.vsi_frames == 128 and not c.vsi_as_images and c.vsi_fps == 2.0
    res = ev.evaluate(c)["vsibench"]
    assert res["n"] == 2 and res["skipped"] == 1 and res["vsi_input"] == "video" and res["frames"] == 128
    run = json.loads((tmp_path / "out" / "vsibench" / "run.json").read_text())["identity"]
    assert run["vsi_as_images"] is False and run["vsi_frames"] == 128 and run["vsi_fps"] == 2.0
    saved = json.loads((tmp_path / "out" / "results.json").read_text())["vsibench"]
    assert saved["vsi_input"] == "video"
    b = seen[0]
    assert "pixel_values" not in b and b["video_grid_thw"].tolist() == [[3, 2, 2]] * 2   # 6 frames → 3 patches
    assert b["second_per_grid_ts"].tolist() == [1.0, 1.0]
    assert ((b["mm_token_type_ids"] == 2).sum(1) == 3).all() and (b["mm_token_type_ids"] != 1).all()
    with pytest.raises(SetupError, match=r"--vsi-as-images False \(now True\)"):
        ev.evaluate(cfg(tmp_path, bench=["vsibench"], data=[f"vsibench={data['vsibench']}"], vsi_as_images=True,
                        resume=True))
    seen.clear()
    res = ev.evaluate(cfg(tmp_path, bench=["vsibench"], data=[f"vsibench={data['vsibench']}"], vsi_as_images=True,
                          vsi_frames=4, out=str(tmp_path / "img")))["vsibench"]
    assert res["vsi_input"] == "images" and "pixel_values_videos" not in seen[0]
    assert seen[0]["image_grid_thw"].shape[0] == 8 and ((seen[0]["mm_token_type_ids"] == 1).sum(1) == 4).all()
    args = ev.build_parser().parse_args(["--vsi-as-images", "--vsi-fps", "1", "--vsi-frames", "16"])
    assert args.vsi_as_images and args.vsi_fps == 1.0 and args.vsi_frames == 16
    with pytest.raises(ValueError, match="vsi-fps"):
        ev.Config(vsi_fps=0)


def test_vsibench_video_needs_qwen25(tmp_path):
    """Qwen3-VL has no video path here (its video prompts carry timestamps): a clear error naming the flag."""
    data = make_fixtures(tmp_path / "d")
    with pytest.raises(SetupError, match="--vsi-as-images"):
        ev.evaluate(cfg(tmp_path, model="tiny-qwen3", bench=["vsibench"], data=[f"vsibench={data['vsibench']}"]))


def test_pyav_decodes_only_the_sampled_frames(tmp_path, monkeypatch):
    """PyAV path (a stand-in av module: PyAV is an optional extra): the header's frame count picks
    round(linspace(0, n-1, k)), decoding stops after the last one; a count the header lacks (0) or overstates
    is taken from the frames actually decoded."""
    import sys
    import types

    def fake_av(n_real: int, header: int, decoded: list):
        class Frame:
            def __init__(self, i):
                self.i = i

            def to_image(self):
                return Image.new("RGB", (8, 8), (self.i, 0, 0))

        class Container:
            streams = types.SimpleNamespace(video=[types.SimpleNamespace(frames=header)])

            def __enter__(self):
                return self

            def __exit__(self, *a):
                return False

            def decode(self, video=0):
                for i in range(n_real):
                    decoded.append(i)
                    yield Frame(i)
        mod = types.ModuleType("av")
        mod.open = lambda path: Container()
        return mod

    video = tmp_path / "scene.mp4"
    video.write_bytes(b"\x00")
    for n_real, header in ((100, 100), (100, 0), (100, 130)):
        decoded = []
        monkeypatch.setitem(sys.modules, "av", fake_av(n_real, header, decoded))
        frames = bm.video_frames(video, 5)
        assert [f.getpixel((0, 0))[0] for f in frames] == [0, 25, 50, 74, 99]
        if header == 100:
            assert len(decoded) == 100 and decoded[-1] == 99      # one pass, stopped at the last sampled frame
    decoded = []
    monkeypatch.setitem(sys.modules, "av", fake_av(10, 10, decoded))
    assert len(bm.video_frames(video, 128)) == 10 and len(decoded) == 10   # short video: every frame


# ----------------------------------------------------------------------------- as a new user meets it
def cli(capsys, argv: list) -> tuple:
    """(exit code, stderr) of evaluate.py's command line."""
    with pytest.raises(SystemExit) as e:
        ev.main(argv)
    return e.value.code, capsys.readouterr().err.strip()


def test_bad_input_is_refused_in_one_line_like_sft_and_grpo(tmp_path, capsys):
    """The lenient cases a user met are errors with exit 2 (sft.py and grpo.py's convention), nothing written:
    a broken JSON line in the pretext file (it was counted as "skipped", exit 0), an empty test file (it printed
    accuracy 0.00 for 0 items), --out pointing at a make_data dataset folder (it wrote into it), a typo'd model
    (exit 2 everywhere now)."""
    data = make_fixtures(tmp_path / "d")
    base = ["--bench", "pretext", "--max-new-tokens", "2", "--no-progress", "--no-plot", "--pixels", *TINY_PIXELS]
    broken = tmp_path / "broken.jsonl"
    lines = data["pretext"].read_text().splitlines()
    broken.write_text(lines[0] + "\n" + lines[1][:30] + "\n" + lines[2] + "\n")
    (tmp_path / "d" / "empty.jsonl").write_text("")
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / "train.jsonl").write_text(lines[0] + "\n")
    dup = tmp_path / "dup.jsonl"
    dup.write_text(lines[0] + "\n" + lines[0] + "\n")
    dup_id = json.loads(lines[0])["id"]
    cases = [(["--data", str(broken), "--out", str(tmp_path / "o1")], f"{broken} line 2: not valid JSON"),
             (["--data", str(dup), "--out", str(tmp_path / "o4")], f"id {dup_id!r} is used twice (line 1 and line 2)"),
             (["--data", str(tmp_path / "d" / "empty.jsonl"), "--out", str(tmp_path / "o2")], "no pretext items"),
             (["--data", str(data["pretext"]), "--out", str(dataset)], "holds files but no evaluate.py run"),
             (["--data", str(data["pretext"]), "--out", str(tmp_path / "o3"), "--model", "no-such-model"],
              "--model no-such-model: not a local folder")]
    for argv, message in cases:
        code, err = cli(capsys, base + argv)
        assert code == 2 and err.startswith("evaluate.py: error: ") and message in err and "\n" not in err, err
    assert [p.name for p in dataset.iterdir()] == ["train.jsonl"]
    assert not any((tmp_path / o / "pretext" / "predictions.jsonl").exists() for o in ("o1", "o2", "o3", "o4"))


def test_a_bad_benchmark_file_writes_nothing_so_the_fixed_rerun_needs_no_resume(tmp_path, capsys):
    """Every benchmark file is read before --out is touched: a file missing a column used to leave .lock and
    run.json behind, and the rerun with the file fixed was refused ("add --resume")."""
    data = make_fixtures(tmp_path / "d")
    bad = write_tsv(tmp_path / "bad.tsv", ["index", "question"], [["0", "q"]])
    out = tmp_path / "out"
    argv = ["--bench", "pretext", "spatial457", "--max-new-tokens", "2", "--no-progress", "--no-plot", "--pixels",
            *TINY_PIXELS, "--out", str(out), "--data", f"pretext={data['pretext']}"]
    code, err = cli(capsys, argv + [f"spatial457={bad}"])
    assert code == 2 and "missing ['image'" in err and not out.exists(), err
    ev.main(argv + [f"spatial457={data['spatial457']}"])
    assert (out / "spatial457" / "predictions.jsonl").is_file()


def test_results_md_of_the_pretext_split_has_no_empty_paper_columns(tmp_path):
    data = make_fixtures(tmp_path / "d")
    ev.evaluate(cfg(tmp_path, data=[f"pretext={data['pretext']}"], max_new_tokens=2))
    head, rule, row = (tmp_path / "out" / "results.md").read_text().splitlines()[:3]
    assert head == "| benchmark | metric | scoring | comparable | ours | n (skipped) |" and rule == "|" + "---|" * 6
    assert row.startswith("| pretext |") and row.count("|") == 7 and "–" not in row


def test_a_second_run_into_the_same_out_is_refused_while_the_first_lives(tmp_path, capsys):
    """Two evaluations into one --out used to interleave their predictions: the folder's lock (held by the
    run writing it; here by another process) refuses the second one in one line."""
    import subprocess
    import sys
    import time
    data = make_fixtures(tmp_path / "d")
    argv = ["--bench", "pretext", "--data", str(data["pretext"]), "--max-new-tokens", "2", "--no-progress",
            "--no-plot", "--pixels", *TINY_PIXELS, "--out", str(tmp_path / "out")]
    ev.main(argv)                                             # a finished run: the lock is gone with it
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); "
                               "fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB); print('locked', flush=True); time.sleep(60)",
                               str(tmp_path / "out" / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = (tmp_path / "out" / "pretext" / "predictions.jsonl").read_text()
        t0 = time.perf_counter()
        code, err = cli(capsys, argv + ["--resume"])
        assert code == 2 and "is being written by another run" in err and time.perf_counter() - t0 < 30
        assert (tmp_path / "out" / "pretext" / "predictions.jsonl").read_text() == before
    finally:
        holder.kill()


# ----------------------------------------------------------------------------- --samples: mean@K, maj@K, pass@K
def sampled_records():
    """Four items, K = 4, hand-made: per item (greedy, the K answers and their scores)."""
    def rec(i, greedy, answers, right):
        return {"id": f"q{i}", "category": "flip" if i < 2 else "depth", "correct": float(greedy),
                "samples": [{"raw": str(a), "extracted": a, "correct": float(c)} for a, c in zip(answers, right)]}
    return [rec(0, 1, ["A", "A", "B", None], [1, 1, 0, 0]),    # mean .5, pass 1, maj A → 1, H 1.5 bits
            rec(1, 0, ["B", "C", "C", "B"], [0, 1, 1, 0]),     # mean .5, pass 1, maj tie → B (drawn first) → 0
            rec(2, 0, ["B"] * 4, [0] * 4),                     # mean 0, pass 0, maj 0, H 0
            rec(3, 1, ["A"] * 4, [1] * 4)]                     # mean 1, pass 1, maj 1, H 0


def test_sampled_metrics_and_their_ses_by_hand():
    recs = sampled_records()
    assert [ev.mean_at_k(r["samples"]) for r in recs] == [0.5, 0.5, 0.0, 1.0]
    assert [ev.pass_at_k(r["samples"]) for r in recs] == [1.0, 1.0, 0.0, 1.0]
    assert [ev.maj_at_k(r["samples"]) for r in recs] == [1.0, 0.0, 0.0, 1.0]
    assert [ev.answer_entropy(r["samples"]) for r in recs] == [1.5, 1.0, 0.0, 0.0]
    assert ev.maj_at_k([{"extracted": None, "correct": 0.0}] * 3) == 0.0
    t = ev.score_table(recs)
    assert t["n"] == 4
    # greedy [1,0,0,1]: 50 ± sqrt(.25/4); mean@K [.5,.5,0,1]: 50 ± sqrt(.125/4); pass [1,1,0,1]: 75 ± sqrt(.1875/4)
    for metric, score, se in (("greedy", 50, 25.0), ("mean@K", 50, 100 * (0.125 / 4) ** 0.5),
                              ("maj@K", 50, 25.0), ("pass@K", 75, 100 * (0.1875 / 4) ** 0.5)):
        assert t[metric]["score"] == pytest.approx(score) and t[metric]["se"] == pytest.approx(se), metric
    assert ev.score_table([{"id": "g", "category": "c", "correct": 1.0}]) == {
        "n": 1, "greedy": {"score": 100.0, "se": 0.0}}             # greedy-only runs: no sampled metrics


def test_headroom_report_by_hand():
    h = ev.headroom(sampled_records())
    # right of 4: [2, 2, 0, 4] → shares of c = 0..4: 25, 0, 50, 0, 25
    assert h["right_of_k"] == [25.0, 0.0, 50.0, 0.0, 25.0]
    assert (h["k"], h["n"], h["none"], h["some"], h["all"]) == (4, 4, 25.0, 50.0, 25.0)
    assert h["entropy_bits"] == pytest.approx(0.625)            # (1.5 + 1 + 0 + 0) / 4
    assert h["pass_minus_greedy"] == pytest.approx(25.0)         # item q1: pass 1, greedy 0
    s = ev.sampled_summary(sampled_records())
    assert set(s["table_categories"]) == {"flip", "depth"} and s["table_categories"]["depth"]["pass@K"]["score"] == 50
    md = "\n".join(ev.sampled_markdown("pretext", {**s, "sampling": {"k": 4, "temperature": 1.0, "top_p": 1.0,
                                                                        "seed": 0}}))
    assert "| all | 4 | 50.00 ± 25.00 | 50.00 ± 17.68 | 50.00 ± 25.00 | 75.00 ± 21.65 |" in md
    assert "0 of 4 samples right 25.0 %, 1–3 of 4 50.0 %, 4 of 4 25.0 %; answer entropy 0.62 bits" in md


def test_paired_comparison_and_mcnemar_by_hand():
    before = sampled_records()
    after = [dict(r, correct=float(g)) for r, g in zip(sampled_records(), [1, 1, 1, 0])]
    c = ev.paired_comparison(before, after + [{"id": "only-after", "category": "flip", "correct": 1.0}])
    assert c["n"] == 4
    g = c["greedy"]
    # d = [0, 1, 1, −1]: mean .25, Σ(d − d̄)² = .0625 + .5625 + .5625 + 1.5625 = 2.75, SE = sqrt(2.75 / 3 / 4)
    assert (g["before"], g["after"], g["diff"]) == (50.0, 75.0, 25.0)
    assert g["se"] == pytest.approx(100 * (2.75 / 3 / 4) ** 0.5)
    assert g["mcnemar_p"] == 1.0                                   # b = 2, c = 1: 2 · (1 + 3) / 8 capped at 1
    assert c["mean@K"]["diff"] == 0.0 and c["mean@K"]["se"] == 0.0
    assert ev.mcnemar_p([0] * 10, [1] * 10) == pytest.approx(2 / 1024)
    assert ev.mcnemar_p([0] * 5 + [1], [1] * 5 + [0]) == pytest.approx(2 * 7 / 64)
    assert ev.mcnemar_p([1, 0], [1, 0]) == 1.0
    big = ev.mcnemar_p([0] * 1000 + [1] * 800, [1] * 1000 + [0] * 800)    # 2^1800: exact, no overflow
    assert 1e-6 < big < 1e-5                                        # normal approximation: z = 200 / sqrt(1800)
    assert ev.standard_error([]) == 0.0 and ev.paired_se([1.0]) == 0.0


def test_sampled_evaluation_end_to_end_seeded_and_resumable(tmp_path, capsys):
    """--samples through the real path (engine.Engine): K answers per item kept in predictions.jsonl, the same
    seed gives the same answers, another seed other ones, a near-zero temperature the greedy answer; a kill
    mid-line resumes asking only the lost item, and a resume with other sampling settings is refused."""
    data = make_fixtures(tmp_path / "d")
    flags = dict(data=[f"pretext={data['pretext']}"], samples=3, max_new_tokens=6)
    res = ev.evaluate(cfg(tmp_path, **flags))["pretext"]
    preds = tmp_path / "out" / "pretext" / "predictions.jsonl"
    recs = common.read_jsonl(preds)
    scored = [r for r in recs if not r.get("skipped")]
    assert len(scored) == 2 and all(len(r["samples"]) == 3 for r in scored)
    assert res["table"]["n"] == 2 and {"mean@K", "maj@K", "pass@K"} <= set(res["table"])
    assert res["headroom"]["k"] == 3 and res["sampling"]["k"] == 3
    assert "greedy and 3 sampled answers" in (tmp_path / "out" / "results.md").read_text()
    raws = lambda p: [[s["raw"] for s in r["samples"]] for r in common.read_jsonl(p) if "samples" in r]  # noqa: E731
    ev.evaluate(cfg(tmp_path, **flags, out=str(tmp_path / "again")))
    assert raws(tmp_path / "again" / "pretext" / "predictions.jsonl") == raws(preds)
    ev.evaluate(cfg(tmp_path, **flags, seed=1, out=str(tmp_path / "seed1")))
    assert raws(tmp_path / "seed1" / "pretext" / "predictions.jsonl") != raws(preds)
    ev.evaluate(cfg(tmp_path, **flags, temperature=1e-4, out=str(tmp_path / "cold")))
    cold = [r for r in common.read_jsonl(tmp_path / "cold" / "pretext" / "predictions.jsonl") if "samples" in r]
    assert all(s["raw"] == r["raw"] for r in cold for s in r["samples"])
    lines = preds.read_text().splitlines(keepends=True)
    preds.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])          # kill -9 mid-line
    capsys.readouterr()
    ev.evaluate(cfg(tmp_path, **flags, resume=True))
    assert "1 to ask" in capsys.readouterr().out
    assert sorted(r["id"] for r in common.read_jsonl(preds)) == sorted(r["id"] for r in recs)
    for other in (dict(samples=4), dict(temperature=0.5), dict(seed=3)):
        with pytest.raises(SetupError, match="other settings"):
            ev.evaluate(cfg(tmp_path, **{**flags, **other}, resume=True))
    with pytest.raises(SetupError, match="--samples >= 0"):
        cfg(tmp_path, samples=-1)
