"""Tests of the pretext tasks (tasks.py): generators, verifiers, the reward and the shortcut heuristics.

Each generator is checked against an independent re-derivation from the pixels or the depth map (on a
synthetic textured image and on the built-in procedural rooms), each verifier against hand-written accept /
reject cases and a fuzz of hostile strings; the registry TASK_SPECS is checked to be the one table the entry
points read (a toy sixth task goes through them). The dataset builder's tests are in test_make_data.py.
Run: python -m pytest -q test_tasks.py
"""
import dataclasses
import functools
import inspect
import itertools
import json
import random
import time

import numpy as np
import pytest
from PIL import Image

import make_data
import scenes
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


ROOM_SEED = next(s for s in range(100) if scenes.sample_scene(s)["kind"] == "room")


@functools.lru_cache(maxsize=4)
def depth_friendly_seeds(n, h=240, w=320):
    """Scene seeds whose render gives depth and position examples for every one of a few rngs (not every
    scene does: some have no flat region in one of the depth bands)."""
    found = []
    for seed in range(1000):
        rgb, depth = scenes.render_scene(seed, h, w)
        if all(isinstance(tasks.make_example(t, rgb, depth, np.random.default_rng(k)), tasks.Example)
               for t in tasks.DEPTH_TASKS for k in range(4)):
            found.append(seed)
            if len(found) == n:
                return found
    raise AssertionError("no depth-friendly scenes")


def make(task, scene, seed, **kw):
    rgb, depth = scene
    ex = tasks.make_example(task, rgb, depth, np.random.default_rng(seed), **kw)
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
    ("< think >a</ think > \\boxed{B}", True),              # whitespace inside the tags (official img_score)
    ("<think >a< /think>\\boxed{B}", True),
    ("<thinking>a</thinking> \\boxed{B}", False),           # another tag is not a think tag
    ("<think>a</ think > \\boxed{B} </ think > \\boxed{C}", True),   # the last box, after the first close
])
def test_format_ok(response, ok):
    assert tasks.format_ok(response) is ok


@pytest.mark.parametrize("response,answer,acc", [
    ("<think>x</think> \\boxed{A}", "A", 1.0),
    ("\\boxed{ A }", "A", 1.0),                              # the box content is stripped
    ("\\boxed{a}", "A", 0.0),                                # exact match: case counts
    ("\\boxed{A.}", "A", 0.0),                               # no normalisation at all
    ("\\boxed{A} then \\boxed{B}", "B", 1.0),               # the last box only (no hedging rule)
    ("\\boxed{A} then \\boxed{B", "A", 0.0),                # the last \\boxed{ never closes: no answer
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}", 1.0),          # braces inside are balanced
    ("A", "A", 0.0),
])
def test_taskless_records_use_the_official_exact_match(response, answer, acc):
    """A record with no task (e.g. the released parquet) is scored as the official img_score: the stripped
    content of the last \\boxed{} equals the answer string."""
    assert tasks.accuracy(response, answer, None) == acc
    assert tasks.reward_terms(response, answer, None)[1] == acc


def test_reward_terms_and_cut_off_completions():
    """reward_terms gives (reward, accuracy, format); a completion cut off by the token budget has format 0."""
    good = "<think>r</think> \\boxed{C}"
    assert tasks.reward_terms(good, "C", "crop") == pytest.approx((1.0, 1.0, 1.0))
    assert tasks.reward_terms(good, "C", "crop", finished=False) == pytest.approx((0.9, 1.0, 0.0))
    assert tasks.reward_terms("<think>r</think> \\boxed{A}", "C", "crop") == pytest.approx((0.1, 0.0, 1.0))
    assert tasks.reward(good, "C", "crop", finished=False) == pytest.approx(0.9)


def test_reward_values():
    good = "<think>r</think> \\boxed{C}"
    assert tasks.reward(good, "C", "crop") == pytest.approx(1.0)
    assert tasks.reward("<think>r</think> \\boxed{A}", "C", "crop") == pytest.approx(0.1)
    assert tasks.reward("\\boxed{C}", "C", "crop") == pytest.approx(0.9)
    assert tasks.reward("C", "C", "crop") == 0.0
    assert tasks.reward("<think>r</think> \\boxed{2, 3, 1}", "2, 3, 1", "depth") == pytest.approx(1.0)
    with pytest.raises(ValueError):
        tasks.reward(good, "C", "no-such-task")


@pytest.mark.parametrize("response,answer,task,acc", [
    # shuffle 2x2, answer 2, 4, 1, 3: positions right / 4 (a permutation of 4 is never 3/4 right)
    (boxed("2, 4, 1, 3"), "2, 4, 1, 3", "shuffle", 1.0),
    (boxed("2, 4, 3, 1"), "2, 4, 1, 3", "shuffle", 0.5),            # positions 1, 2 right
    (boxed("3, 4, 1, 2"), "2, 4, 1, 3", "shuffle", 0.5),            # positions 2, 3 right
    (boxed("2, 1, 3, 4"), "2, 4, 1, 3", "shuffle", 0.25),           # position 1 right
    (boxed("4, 2, 3, 1"), "2, 4, 1, 3", "shuffle", 0.0),            # a derangement: nothing right
    (boxed("2, 4, 1"), "2, 4, 1, 3", "shuffle", 0.0),               # not a permutation of 1..4: unparseable
    (boxed("2, 4, 1, 1"), "2, 4, 1, 3", "shuffle", 0.0),
    (boxed("2, 4, 1, 3") + " or \\boxed{2, 4, 3, 1}", "2, 4, 1, 3", "shuffle", 0.0),   # hedging
    ("<think>r</think> \\boxed{2, 4, 3, 1} then \\boxed{2, 4, 1", "2, 4, 1, 3", "shuffle", 0.0),   # cut-off switch
    ("2, 4, 3, 1", "2, 4, 1, 3", "shuffle", 0.0),                    # no box
    (boxed("1, 2, 3, 4, 5, 6, 7, 9, 8"), "1, 2, 3, 4, 5, 6, 7, 8, 9", "shuffle", 7 / 9),   # 3x3
    # depth, answer 2, 3, 1: positions right / 3
    (boxed("2, 1, 3"), "2, 3, 1", "depth", 1 / 3),
    (boxed("3, 2, 1"), "2, 3, 1", "depth", 1 / 3),
    (boxed("1, 2, 3"), "2, 3, 1", "depth", 0.0),
    (boxed("2, 3, 1"), "2, 3, 1", "depth", 1.0),
    # not ordering tasks: the usual 0 / 1
    (boxed("3, vertical"), "3, horizontal", "flip", 0.0),
    (boxed("C"), "C", "crop", 1.0), (boxed("A"), "C", "crop", 0.0),
    (boxed("90"), "270", "rotation", 0.0),
    (boxed("2, 4, 3, 1"), "2, 4, 1, 3", None, 0.0),                 # taskless records: exact match
])
def test_partial_credit_is_the_fraction_of_positions_right(response, answer, task, acc):
    """Visual Jigsaw's partial credit (accuracy(partial=True)), hand-computed; off by default."""
    assert tasks.accuracy(response, answer, task, partial=True) == pytest.approx(acc)
    assert tasks.accuracy(response, answer, task) == float(acc == 1.0)


def test_partial_credit_keeps_the_reward_formula():
    """r = 0.9·accuracy + 0.1·format with the partial accuracy; off by default."""
    text = "<think>r</think> \\boxed{2, 1, 3, 4}"
    assert tasks.reward_terms(text, "2, 4, 1, 3", "shuffle", partial=True) == pytest.approx((0.325, 0.25, 1.0))
    assert tasks.reward_terms(text, "2, 4, 1, 3", "shuffle") == pytest.approx((0.1, 0.0, 1.0))
    assert tasks.reward("\\boxed{2, 1, 3}", "2, 3, 1", "depth", partial=True) == pytest.approx(0.3)
    assert tasks.reward(text, "2, 4, 1, 3", "shuffle", finished=False, partial=True) == pytest.approx(0.225)
    assert list(inspect.signature(tasks.reward_terms).parameters) == ["response", "answer", "task", "problem",
                                                                       "finished", "partial"]


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


POSITION_PROBLEM = "<image>\nWhere is spot 2?\nA. Left\nB. Right-Front\nC. Back\nD. Front\nAnswer with the letter."


@pytest.mark.parametrize("response,acc", [
    ("<think>r</think> \\boxed{B}", 1.0),
    ("<think>r</think> \\boxed{B} so again \\boxed{B}.", 1.0),               # the same answer repeated: fine
    ("<think>r</think> \\boxed{B} or maybe \\boxed{C}", 0.0),                # hedging after </think>
    ("<think>r</think> \\boxed{C} no wait \\boxed{B}", 0.0),                 # hedging, right answer last
    ("<think>maybe \\boxed{C}</think> \\boxed{B}", 1.0),                     # boxes inside <think> are drafts
    ("\\boxed{C} \\boxed{B}", 0.0),                                         # no </think>: all boxes count
    ("<think>r</think> \\boxed{B} then \\boxed{C", 0.0),                     # cut-off answer switch
    ("<think>r</think> \\boxed{B} then \\boxed{B", 0.0),                     # unclosed box after the last one
    ("<think>r</think> \\boxed{\\boxed{B}}", 1.0),                             # nested: one answer
    ("<think>r</think> \\boxed{Ｂ}", 1.0),                                     # full-width letter
    ("<think>r</think> \\boxed{（B）}", 1.0),                                   # full-width brackets
    ("<think>r</think> \\boxed{B. Right-Front}", 1.0),                          # letter + its own option text
    ("<think>r</think> \\boxed{B) Right-Front}", 1.0),
    ("<think>r</think> \\boxed{B: front right}", 1.0),                          # same words, other order
    ("<think>r</think> \\boxed{Right-Front}", 1.0),                             # the option text alone
    ("<think>r</think> \\boxed{\\text{Right–Front}}", 1.0),                      # en dash
    ("<think>r</think> \\boxed{B. Back}", 0.0),                                 # letter + another option's text
    ("<think>r</think> \\boxed{Right}", 0.0),                                   # not an option here
    ("<think>r</think> \\boxed{Front}", 0.0),                                   # option D's text
    ("<think>r</think> \\boxed{B or D}", 0.0),
    (None, 0.0), ("", 0.0), (b"\\boxed{B}", 0.0),
])
def test_position_verifier_cases(response, acc):
    assert tasks.accuracy(response, "B", "position", problem=POSITION_PROBLEM) == acc


def test_option_text_needs_the_problem():
    """Without the question's options only the letter forms are read (nothing to check 'Right' against)."""
    assert tasks.accuracy("<think>r</think> \\boxed{B. Right-Front}", "B", "position") == 0.0
    assert tasks.accuracy("<think>r</think> \\boxed{(B)}", "B", "position") == 1.0
    assert tasks.options_from_problem(POSITION_PROBLEM) == {"A": "Left", "B": "Right-Front", "C": "Back", "D": "Front"}
    assert tasks.options_from_problem("Q\nA. <image>\nB. <image>") == {}


@pytest.mark.parametrize("content,answer,task,acc", [
    ("２，４，１，３", "2, 4, 1, 3", "shuffle", 1.0),         # full-width digits and commas
    ("2、4、1、3。", "2, 4, 1, 3", "shuffle", 1.0),           # ideographic comma and full stop
    ("３，ｈｏｒｉｚｏｎｔａｌ", "3, horizontal", "flip", 1.0),
    ("٢, ٤, ١, ٣", "2, 4, 1, 3", "shuffle", 0.0),             # other digit systems are not normalised
    ("Ｃ", "C", "crop", 1.0), ("C. ", "C", "crop", 1.0),
])
def test_full_width_answers(content, answer, task, acc):
    assert tasks.accuracy(f"<think>r</think> \\boxed{{{content}}}", answer, task) == acc


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
    if task == "rotation":
        return [str(d) for d in tasks.ROTATIONS]
    return list(tasks.LETTERS)


@pytest.mark.parametrize("task,kw", [("shuffle", {}), ("shuffle", {"grid": (3, 3)}), ("flip", {}),
                                     ("crop", {}), ("depth", {}), ("position", {}), ("rotation", {})])
def test_verifier_accepts_truth_and_rejects_every_other_answer(task, kw, scene):
    ex = make(task, scene, 3, **kw)
    space = all_answers(task, ex)
    assert ex.answer in space
    for cand in space:
        assert tasks.accuracy(boxed(cand), ex.answer, task) == float(cand == ex.answer)
    assert tasks.reward(tasks.reasoning_trace(ex), ex.answer, task) == pytest.approx(1.0)


# ----------------------------------------------------------------------------- the registry
def test_registry_is_the_single_source_in_paper_order():
    """TASKS, RGB_TASKS, DEPTH_TASKS and DEFAULT_TASKS come from TASK_SPECS; each row points to its own block's
    make_, parse_ and trace_ (in that order in the file, blocks in the paper's order, then rotation); no other
    table keyed by task, and the entry points name no task."""
    assert tasks.TASKS == tuple(tasks.TASK_SPECS) == ("shuffle", "flip", "crop", "depth", "position", "rotation")
    assert tasks.DEFAULT_TASKS == ("shuffle", "flip", "crop", "depth", "position")       # the paper's five
    assert tasks.RGB_TASKS == ("shuffle", "flip", "crop", "rotation") and tasks.DEPTH_TASKS == ("depth", "position")
    assert [n for n, spec in tasks.TASK_SPECS.items() if spec.ordering] == ["shuffle", "depth"]
    assert [n for n, spec in tasks.TASK_SPECS.items() if spec.depth_order_only] == ["depth"]
    assert tasks.DEPTH_TASKS == tuple(n for n, spec in tasks.TASK_SPECS.items() if spec.needs_depth)
    blocks = []
    for name, spec in tasks.TASK_SPECS.items():
        fns = (spec.make, spec.parse, spec.trace)
        assert spec.name == name and all(callable(f) for f in fns)
        assert [f.__name__ for f in fns] == [f"make_{name}", f"parse_{name}", f"trace_{name}"]
        lines = [inspect.getsourcelines(f)[1] for f in fns]
        assert lines == sorted(lines), name
        blocks.append(lines)
    assert all(a[-1] < b[0] for a, b in zip(blocks, blocks[1:])), "one contiguous block per task, in order"
    tables = [k for k, v in vars(tasks).items() if isinstance(v, dict) and set(v) == set(tasks.TASKS)]
    assert tables == ["TASK_SPECS"]
    for fn in (tasks.task_spec, tasks.make_example, tasks.reasoning_trace, tasks.accuracy, tasks.reward_terms):
        assert not any(f'"{t}"' in inspect.getsource(fn) for t in tasks.TASKS), fn.__name__


def make_halves(rgb, depth, rng):
    """A toy sixth task written to the block contract: which half of the picture is nearer to the camera?"""
    w = depth.shape[1]
    left, right = (float(np.nanmedian(np.where(d > 0, d, np.nan))) for d in (depth[:, :w // 2], depth[:, w // 2:]))
    if left == right:
        return tasks.Rejected("halves-tie")
    options = [("Left half", "Right half")[k] for k in rng.permutation(2)]
    truth = "Left half" if left < right else "Right half"
    listing = "\n".join(f"{tasks.LETTERS[k]}. {o}" for k, o in enumerate(options))
    problem = f"<image>\nWhich half of this picture is nearer to the camera?\n{listing}\nAnswer with the letter."
    return tasks.Example("halves", [Image.fromarray(rgb)], problem, tasks.LETTERS[options.index(truth)],
                         {"options": options, "truth": truth})


def parse_halves(content, answer, options):
    return tasks.parse_letter(content, options)


def trace_halves(meta):
    return f"The surfaces in the {meta['truth'].lower()} are closer, so that half is nearer."


def test_a_sixth_task_is_one_block_and_one_registry_row(monkeypatch, scene):
    """Registering the toy task in a copy of the table is all it takes: make_example generates it (with
    the depth map, as needs_depth says), accuracy / reward_terms verify it through its parser (with the
    problem's options, as reads_options says) and reasoning_trace uses its trace."""
    spec = tasks.Task("halves", make_halves, parse_halves, trace_halves, needs_depth=True, reads_options=True)
    monkeypatch.setattr(tasks, "TASK_SPECS", {**tasks.TASK_SPECS, "halves": spec})
    rgb, depth = scene
    examples = [tasks.make_example("halves", rgb, depth, np.random.default_rng(seed)) for seed in range(8)]
    assert all(isinstance(ex, tasks.Example) for ex in examples)
    assert {ex.answer for ex in examples} == {"A", "B"}
    for ex in examples:
        wrong = "AB".replace(ex.answer, "")
        assert tasks.accuracy(boxed(ex.answer), ex.answer, "halves") == 1.0
        assert tasks.accuracy(boxed(wrong), ex.answer, "halves") == 0.0
        assert tasks.accuracy(boxed(ex.meta["truth"]), ex.answer, "halves", problem=ex.problem) == 1.0
        trace = tasks.reasoning_trace(ex)
        assert trace_halves(ex.meta) in trace
        assert tasks.reward_terms(trace, ex.answer, "halves") == pytest.approx((1.0, 1.0, 1.0))
    monkeypatch.setitem(tasks.TASK_SPECS, "halves", dataclasses.replace(spec, reads_options=False))
    assert tasks.accuracy(boxed(ex.meta["truth"]), ex.answer, "halves", problem=ex.problem) == 0.0
    with pytest.raises(ValueError, match="needs a depth map"):
        tasks.make_example("halves", rgb, None)
    with pytest.raises(ValueError, match="'halves'"):                   # the known tasks come from the table
        tasks.make_example("seventh", rgb)
    depth_ex = make("depth", scene, 0)                                 # the five rows still work beside it
    assert tasks.reward(tasks.reasoning_trace(depth_ex), depth_ex.answer, "depth") == pytest.approx(1.0)


# ----------------------------------------------------------------------------- independent re-derivation from pixels
def tile_view(img, r, c, th, tw):
    """The part of a displayed tile that no label or border touches: its bottom-right quadrant, inset."""
    inset = max(2, min(th, tw) // 100) + 1
    return img[r * th + th // 2:(r + 1) * th - inset, c * tw + tw // 2:(c + 1) * tw - inset]


def mirror(tile, direction):
    return tile[:, ::-1] if direction == "horizontal" else tile[::-1]


def test_flip_rejects_a_point_symmetric_tile_whose_two_answers_show_the_same_picture():
    # every tile is a 2×2 checkerboard: mirrored either way it is the same picture, different from the tile
    cell = np.kron(np.array([[1, 0], [0, 1]]), np.ones((32, 32)))
    board = np.kron(np.ones((2, 2)), cell)[..., None] * np.array([200, 120, 40]) + 20
    rgb = board.astype(np.uint8)
    tile = tasks._split_tiles(rgb, 2, 2)[0]
    assert np.array_equal(mirror(tile, "horizontal"), mirror(tile, "vertical"))
    assert np.abs(mirror(tile, "vertical").astype(int) - tile).mean() > 50
    reasons = {tasks.make_example("flip", rgb, rng=np.random.default_rng(s)).reason for s in range(8)}
    assert reasons == {"flip-ambiguous-direction"}


def test_flip_answer_is_visible_and_unique_on_the_built_in_scenes():
    """Re-derived from pixels on the demo's 112 px scenes: the picture the answer describes is the one shown,
    and it differs (mean |Δ| ≥ FLIP_VISIBLE over the tile) from the unflipped picture and from the picture
    the other direction would show."""
    emitted = 0
    for seed in range(150):
        rgb = scenes.render_scene(seed, 112, 112)[0]
        ex = tasks.make_example("flip", rgb, rng=np.random.default_rng(seed))
        if isinstance(ex, tasks.Rejected):
            continue
        emitted += 1
        k, direction = tasks.parse_flip(ex.answer)
        r, c = divmod(k - 1, 2)
        orig = rgb[r * 56:(r + 1) * 56, c * 56:(c + 1) * 56].astype(np.float32)
        answer = mirror(orig, direction)
        other = mirror(orig, "vertical" if direction == "horizontal" else "horizontal")
        assert np.array_equal(tile_view(np.asarray(ex.images[0]), r, c, 56, 56), tile_view(answer, 0, 0, 56, 56))
        assert np.abs(answer - orig).mean() >= tasks.FLIP_VISIBLE, (seed, "flip barely visible")
        assert np.abs(answer - other).mean() >= tasks.FLIP_VISIBLE, (seed, "the other direction looks the same")
    assert emitted > 100


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
    """The hole is blacked out and nothing else changes; the true candidate is exactly the hole's pixels
    through the shared resampling path (re-derived here with Pillow directly); every other candidate differs."""
    rgb = scene[0]
    patterns = set()
    for seed in range(12):
        ex = make("crop", scene, seed)
        x, y, s = ex.meta["box"]
        assert s == min(rgb.shape[:2]) // 2
        masked = np.asarray(ex.images[0])
        assert (masked[y:y + s, x:x + s] == 0).all()
        outside = np.ones(rgb.shape[:2], bool)
        outside[y:y + s, x:x + s] = False
        assert np.array_equal(masked[outside], rgb[outside])
        side = ex.meta["display"]
        assert side == round(s * tasks.CROP_DISPLAY)
        want = np.asarray(Image.fromarray(rgb[y:y + s, x:x + s]).resize((side, side), Image.Resampling.BILINEAR))
        matches = [k for k, im in enumerate(ex.images[1:]) if np.array_equal(np.asarray(im), want)]
        assert matches == [tasks.LETTERS.index(ex.answer)] == [ex.meta["slot"]]
        assert ex.meta["candidates"].count("true") == 1 and ex.meta["regions"][ex.meta["slot"]] == [x, y, s]
        assert len({tuple(r) for r in ex.meta["regions"]}) == 4
        assert all(np.asarray(im).shape == (side, side, 3) for im in ex.images[1:])   # one size for all
        assert any(k.endswith("shift") for k in ex.meta["candidates"])      # a same-size square from elsewhere
        patterns.add(ex.meta["pattern"])
    assert patterns == set(tasks.CROP_PATTERN_NAMES)


def overlap(a, b):
    """Intersection area of two squares (x, y, side)."""
    return max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])) * max(0, min(a[1] + a[2], b[1] + b[2]) - max(a[1], b[1]))


def test_crop_regions_are_what_they_claim():
    h, w, x, y, s = 240, 320, 100, 60, 100
    for seed in range(20):
        rng = np.random.default_rng(seed)
        near = tasks.crop_region(rng, h, w, x, y, s, "near_shift")
        far = tasks.crop_region(rng, h, w, x, y, s, "far_shift", avoid=((0, 0, s),))
        zin = tasks.crop_region(rng, h, w, x, y, s, "zoom_in")
        zout = tasks.crop_region(rng, h, w, x, y, s, "zoom_out")
        for r in (near, far, zin, zout):
            assert 0 <= r[0] and r[0] + r[2] <= w and 0 <= r[1] and r[1] + r[2] <= h    # inside the image
        assert near[2] == s and max(abs(near[0] - x), abs(near[1] - y)) >= s / 4 and overlap(near, (x, y, s)) > 0
        assert far[2] == s and overlap(far, (x, y, s)) <= s * s / 4 and overlap(far, (0, 0, s)) <= s * s / 4
        assert zin[2] == round(0.75 * s) and overlap(zin, (x, y, s)) == zin[2] ** 2        # inside the hole
        assert zout[2] == round(4 * s / 3) and overlap(zout, (x, y, s)) == s * s            # contains the hole
        assert min(r[2] for r in (near, far, zin, zout)) > round(tasks.CROP_DISPLAY * s)  # all downsampled


def test_crop_layout_puts_the_hole_on_a_random_anchor():
    """In every pattern the hole is drawn among interchangeable anchors: each anchor role is the hole about
    equally often, so no layout statistic singles it out."""
    for pattern, anchors in (("scattered", 4), ("cluster", 2), ("two-pairs", 2)):
        holes = []
        for seed in range(200):
            got = tasks.crop_layout(np.random.default_rng(seed), 240, 320, 120, pattern)
            if got is None:
                continue
            regions, hole, kinds = got
            assert kinds[hole] == "true" and len(kinds) == 4 and hole < anchors
            holes.append(hole)
        counts = np.bincount(holes, minlength=anchors)
        assert len(holes) > 50 and counts.min() > 0.6 * len(holes) / anchors, (pattern, counts)


def test_resample_path_hides_sharpness_and_the_jpeg_grid():
    """All candidates pass through resample_candidate with a downscale, so the true crop is no sharper than
    a same-size distractor, and a source's 8-px JPEG grid does not survive in it."""
    yy, xx = np.mgrid[0:256, 0:256]
    smooth = np.stack([128 + 60 * np.sin(xx / 13 + yy / 17), 128 + 60 * np.cos(xx / 9), 100 + 50 * np.sin(yy / 7)], -1)
    smooth = np.clip(smooth + np.random.default_rng(0).normal(0, 6, smooth.shape), 0, 255).astype(np.uint8)
    buf = __import__("io").BytesIO()
    Image.fromarray(smooth).save(buf, format="JPEG", quality=30)
    src = np.asarray(Image.open(buf).convert("RGB"))

    def grid(a):                                          # mean |Δ| across every 8th column / mean |Δ|
        g = np.abs(np.diff(a.astype(float).mean(-1), axis=1)).mean(0)
        return g[7::8].mean() / g.mean()
    assert grid(src[:128, :128]) > 1.4                     # the raw, grid-aligned crop shows the block grid
    true = tasks.resample_candidate(src, (0, 0, 128), 90)
    assert abs(grid(true) - 1) < 0.15                      # the resampled one does not
    other = tasks.resample_candidate(src, (120, 120, 128), 90)
    sharp = lambda a: np.abs(np.diff(a.astype(float), axis=1)).mean()  # noqa: E731
    assert abs(sharp(true) - sharp(other)) < 0.05 * sharp(other)


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


@pytest.mark.parametrize("source", ["textured", "room"])
def test_depth_answer_matches_the_depth_map(source, scene):
    if source == "room":
        scene = scenes.render_scene(ROOM_SEED, 240, 320)
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


def position_by_rotation(dx, dz, facing, style):
    """Independent recomputation: pick the offset components the option style names (compound: both;
    simple: the larger in threshold units), rotate into the viewer's frame with a complex number
    (forward = real axis, left = positive imaginary axis) and read the sectors off the signs."""
    ux, uz = dx / tasks.POSITION_X_BIG, dz / tasks.POSITION_Z_BIG
    if style == "simple":
        ux, uz = (ux, 0) if abs(ux) > abs(uz) else (0, uz)
    v = complex(np.sign(ux), np.sign(uz))
    heading = {"left": 1j * 1j, "right": 1, "toward": -1j, "away": 1j}[facing]   # unit vector in the x-z plane
    local = v / heading
    ahead = {1: "Front", -1: "Back", 0: ""}[int(np.sign(round(local.real, 9)))]
    side = {1: "Left", -1: "Right", 0: ""}[int(np.sign(round(local.imag, 9)))]
    return "-".join(p for p in (side, ahead) if p)


def test_position_answer_agrees_with_geometry():
    seen, styles = set(), set()
    for k in range(6):
        rgb, depth = textured_scene(seed=k) if k < 3 else scenes.render_scene(depth_friendly_seeds(3)[k - 3], 240, 320)
        dn = tasks.normalise_depth(depth)
        w = rgb.shape[1]
        for seed in range(16):
            ex = tasks.make_example("position", rgb, depth, np.random.default_rng(seed))
            if isinstance(ex, tasks.Rejected):
                continue
            m = ex.meta
            cam, tgt = m["camera"], m["target"]
            med = lambda b, a: float(np.median(a[b[1]:b[3], b[0]:b[2]]))  # noqa: E731
            dx = (tgt["center"][0] - cam["center"][0]) / w
            dz = med(tgt["box"], dn) - med(cam["box"], dn)
            assert np.sign(dz) == np.sign(med(tgt["box"], depth) - med(cam["box"], depth)) or abs(dz) < 1e-6
            ux, uz = abs(dx) / tasks.POSITION_X_BIG, abs(dz) / tasks.POSITION_Z_BIG
            if m["style"] == "compound":
                assert ux > 1 and uz > 1
            else:
                assert max(ux, uz) > 1 and max(ux, uz) >= tasks.POSITION_DOMINANCE * min(ux, uz)
                assert "mostly lies in" in ex.problem
            assert set(m["options"]) == set(tasks.COMPOUND_RELATIONS if m["style"] == "compound"
                                             else tasks.SIMPLE_RELATIONS)
            rel = position_by_rotation(dx, dz, m["facing"], m["style"])
            assert m["options"][tasks.LETTERS.index(ex.answer)] == rel
            assert f"stand at spot {cam['label']}" in ex.problem and f"where is spot {tgt['label']}" in ex.problem
            assert np.hypot(*(np.subtract(tgt["center"], cam["center"]))) >= min(rgb.shape[:2]) / 8
            check_markers(ex, rgb, [cam, tgt])
            seen.add(m["relation"])
            styles.add(m["style"])
    assert len(seen) >= 5 and styles == {"simple", "compound"}, seen


def test_relation_table_matches_the_official_one():
    """The official Position.py table (facing × offsets), here with clear offsets of ±0.5."""
    b = 0.5
    assert [tasks.relation(b, 0, f) for f in tasks.FACINGS] == ["Back", "Front", "Left", "Right"]
    assert [tasks.relation(0, b, f) for f in tasks.FACINGS] == ["Right", "Left", "Back", "Front"]
    assert [tasks.relation(b, b, f) for f in tasks.FACINGS] == ["Right-Back", "Left-Front", "Left-Back", "Right-Front"]
    assert [tasks.relation(-b, -b, f) for f in tasks.FACINGS] == ["Left-Front", "Right-Back", "Right-Front", "Left-Back"]
    assert tasks.relation(0.01, 0.01, "left") is None                     # no clear offset
    assert tasks.relation(0.8 * tasks.POSITION_X_BIG, 0.5, "away") is None  # dead band: ambiguous


@pytest.mark.parametrize("source", ["textured", "room"])
def test_rotation_turning_back_restores_the_square(source, scene):
    """Re-derived from the pixels: turning the shown square back by the answer (counter-clockwise) gives the
    source square exactly, and no other turn does; every answer occurs; the square's side and place are
    within ROTATION_PATCH of the short side."""
    rgb = scene[0] if source == "textured" else scenes.render_scene(ROOM_SEED, 240, 320)[0]
    seen = set()
    for seed in range(12):
        ex = tasks.make_example("rotation", rgb, rng=np.random.default_rng(seed))
        assert isinstance(ex, tasks.Example), ex
        shown = np.asarray(ex.images[0])
        x, y, s = ex.meta["box"]
        assert shown.shape == (s, s, 3) and ex.problem.count("<image>") == 1
        assert tasks.ROTATION_PATCH[0] * 240 - 1 <= s <= tasks.ROTATION_PATCH[1] * 240
        source_square = rgb[y:y + s, x:x + s]
        back = [q for q in range(4) if np.array_equal(np.rot90(shown, q), source_square)]   # q quarter turns back
        assert back == [int(ex.answer) // 90], (seed, back, ex.answer)
        assert ex.meta["rotation"] == int(ex.answer)
        seen.add(ex.answer)
    assert seen == {"0", "90", "180", "270"}


def test_rotation_balances_the_bright_edge_cue(scene):
    """The square's own brightest edge band (side_means, recomputed here from the pixels) is its top in about
    a quarter of the questions (ROTATION_BRIGHT_TOP) over varied scenes; an image bright at the top
    everywhere (a sky) gives only those questions, and is rejected for the other three quarters."""
    tops = []
    for seed in range(120):
        rgb = scenes.render_scene(20_000 + seed, 96, 128)[0]
        ex = tasks.make_example("rotation", rgb, rng=np.random.default_rng(seed))
        if isinstance(ex, tasks.Rejected):
            continue
        x, y, s = ex.meta["box"]
        sq = rgb[y:y + s, x:x + s].astype(float).mean(-1)
        b = max(1, round(s * tasks.ROTATION_BAND))
        bands = [sq[:b].mean(), sq[:, -b:].mean(), sq[-b:].mean(), sq[:, :b].mean()]
        assert tasks.ROTATION_SIDES[int(np.argmax(bands))] == ex.meta["brightest_side"]
        tops.append(int(np.argmax(bands)) == 0)
    assert len(tops) > 100
    assert abs(np.mean(tops) - tasks.ROTATION_BRIGHT_TOP) < 0.1, np.mean(tops)
    rgb = scene[0].copy()
    rgb[:, :, :] = np.clip(rgb.astype(int) // 3 + np.linspace(255, 0, rgb.shape[0])[:, None, None], 0, 255)
    got = [tasks.make_example("rotation", rgb, rng=np.random.default_rng(seed)) for seed in range(40)]
    kept = [ex for ex in got if isinstance(ex, tasks.Example)]
    assert {ex.meta["brightest_side"] for ex in kept} == {"top"}
    assert {ex.reason for ex in got if isinstance(ex, tasks.Rejected)} == {"bright-top-edge"}
    assert 0.05 < len(kept) / len(got) < 0.5


@pytest.mark.parametrize("content,ok", [
    ("90", True), ("90°", True), ("90^\\circ", True), ("90^{\\circ}", True), ("90 degrees", True),
    ("90 degrees clockwise", True), ("\\text{90}", True), ("９０", True), ("90.", True),
    ("270", False), ("-90", False), ("450", False), ("90 or 180", False), ("ninety", False), ("9 0", False),
    ("45", False), ("", False), ("90, 180", False),
])
def test_rotation_answers(content, ok):
    assert (tasks.reward(boxed(content), "90", "rotation") == 1.0) is ok


# ----------------------------------------------------------------------------- 2-D shortcuts stay near chance
SHORTCUT_SCENES = 300


@pytest.fixture(scope="module")
def shortcut_rows():
    """The shortcut report on a few hundred depth / position / crop / rotation examples from built-in scenes
    (fixed seeds, 256x192), images JPEG-encoded as the builder saves them."""
    import io
    records, store = [], {}
    for seed in range(SHORTCUT_SCENES):
        rgb, depth = scenes.render_scene(50_000 + seed, 192, 256)
        for task in ("depth", "position", "crop", "rotation"):
            ex = tasks.make_example(task, rgb, depth if task in tasks.DEPTH_TASKS else None, np.random.default_rng(seed))
            if isinstance(ex, tasks.Rejected):
                continue
            keys = []
            for i, im in enumerate(ex.images if task in ("crop", "rotation") else []):
                buf = io.BytesIO()
                im.save(buf, format="JPEG", quality=95)
                keys.append(f"{task}{seed}_{i}")
                store[keys[-1]] = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
            meta = json.loads(json.dumps(make_data._json_safe(ex.meta)))
            records.append({"task": task, "answer": ex.answer, "meta": meta, "images": keys})
    by = {t: [r for r in records if r["task"] == t] for t in tasks.TASKS}
    return (make_data.answer_priors(records) + make_data.depth_shortcuts(by["depth"])
            + make_data.position_shortcuts(by["position"]) + make_data.crop_shortcuts(by["crop"], store.__getitem__)
            + make_data.rotation_shortcuts(by["rotation"], store.__getitem__))


def test_shortcut_heuristics_stay_under_their_thresholds(shortcut_rows):
    """Statistical test: each heuristic's accuracy must not exceed its threshold by more than two standard
    errors (n ≈ 150-300 per task, so the tolerance is about 5-8 points). Fixed seeds: deterministic."""
    names = {(r["task"], r["heuristic"]) for r in shortcut_rows}
    assert len([n for n in names if n[0] == "depth"]) >= 5 and len([n for n in names if n[0] == "crop"]) >= 4
    assert len([n for n in names if n[0] == "position"]) >= 4 and len([n for n in names if n[0] == "rotation"]) >= 3
    for r in shortcut_rows:
        assert r["n"] >= 100, r
        se = np.sqrt(max(r["accuracy"] * (1 - r["accuracy"]), 0.01) / r["n"])
        assert r["accuracy"] <= r["threshold"] + 2 * se, r


def test_shortcut_report_catches_a_shortcut():
    """The report is not blind: on depth questions ordered by image height it reports "lower = nearer" at
    100 %, and a crop set whose true crop is always the sharpest is caught by the candidate-only model."""
    rows = make_data.depth_shortcuts([{"meta": {"size": [100, 100], "regions": [
        {"center": [50, 90]}, {"center": [20, 50]}, {"center": [70, 10]}]}}] * 20)
    assert rows[0]["accuracy"] == 1.0 and not rows[0]["ok"] and rows[1]["accuracy"] == 1.0
    rng = np.random.default_rng(0)
    store, records = {}, []
    for q in range(60):
        truth = int(rng.integers(4))
        for k in range(4):
            img = rng.integers(0, 256, (24, 24, 3)).astype(np.uint8)
            if k != truth:
                img = np.asarray(Image.fromarray(img).resize((6, 6)).resize((24, 24), Image.Resampling.BILINEAR))
            store[f"{q}_{k}"] = Image.fromarray(img)
        records.append({"answer": tasks.LETTERS[truth], "images": ["masked"] + [f"{q}_{k}" for k in range(4)]})
    rows = make_data.crop_shortcuts(records, store.__getitem__)
    assert rows[0]["accuracy"] > 0.9 and not rows[0]["ok"]


# ----------------------------------------------------------------------------- rejections
def test_rejections_say_why():
    rng = np.random.default_rng(0)
    flat = np.full((200, 200, 3), 90, np.uint8)
    assert tasks.make_example("shuffle", flat, rng=rng).reason == "look-alike-tiles"
    assert tasks.make_example("flip", flat, rng=rng).reason == "flip-symmetric-tile"
    assert tasks.make_example("crop", flat, rng=rng).reason == "look-alike-candidates"
    tiny = np.zeros((30, 30, 3), np.uint8)
    assert tasks.make_example("shuffle", tiny, rng=rng).reason == "too-small"
    assert tasks.make_example("crop", tiny, rng=rng).reason == "too-small"
    assert tasks.make_example("rotation", tiny, rng=rng).reason == "too-small"
    assert tasks.make_example("rotation", flat, rng=rng).reason == "rotation-symmetric-square"
    rgb, depth = textured_scene()
    assert tasks.make_example("depth", rgb, np.zeros_like(depth), rng).reason == "no-valid-depth"
    assert tasks.make_example("depth", rgb, np.full_like(depth, 3.0), rng).reason == "constant-depth"
    assert tasks.make_example("position", rgb, depth[:-1], rng).reason == "depth-size-mismatch"
    noisy = np.random.default_rng(1).uniform(1, 10, depth.shape).astype(np.float32)   # nothing flat
    assert tasks.make_example("depth", rgb, noisy, rng).reason == "no-region-in-band"
    assert tasks.make_example("position", rgb, noisy, rng).reason == "no-flat-regions"
    with pytest.raises(ValueError):
        tasks.make_example("depth", rgb, None, rng)
    with pytest.raises(ValueError):
        tasks.make_example("flip", rgb.astype(np.float32), rng=rng)
    with pytest.raises(ValueError):
        tasks.make_example("shuffle", rgb, rng=rng, grid=(1, 1))


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
    # linear parsing takes ~1 s on a busy 2-core machine; a quadratic one takes hours on these lengths
    assert time.perf_counter() - t0 < 10.0


def test_deeply_nested_box_is_read_correctly():
    s = "<think>t</think>" + "\\boxed{" * 50_000 + "C" + "}" * 50_000
    assert tasks.extract_boxed(s) == "C"
    assert tasks.reward(s, "C", "crop") == pytest.approx(1.0)
