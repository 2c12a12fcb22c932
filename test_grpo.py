"""Tests of grpo.py: the GRPO math against hand-computed values, the group log-probs against plain full logits,
micro-batch and world-size invariance of the update, edge cases, the CLI, resume, that it learns, and the one
decoder (engine.Engine) against transformers' generate as the oracle.

    python -m pytest -q test_grpo.py

CPU only, tiny random Qwen2.5-VL (0.29M parameters), 56-px images. One test launches `torch.distributed.run`
with 2 gloo ranks; this file is also that launch's worker (`python test_grpo.py grpo-worker DIR`).
"""
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("SPATIAL_SSRL_DEVICE", "cpu")   # the CPU/gloo path also on a GPU machine (common.use_cuda)

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from transformers.utils import logging as hf_logging

import grpo
import common
import engine
import sft
import vlm
import tasks
from test_train import run_two_ranks
from conftest import Killed, killed_after

hf_logging.disable_progress_bar()
HERE = Path(__file__).resolve().parent
CPU = torch.device("cpu")


# ----------------------------------------------------------------------------- fixtures
def letter_records(folder: Path, n: int, answer_of=lambda i: "A", px: int = 56) -> list:
    """Records asking for a letter about a grey image (task 'position': answer A..D); record 1 has two images."""
    records = []
    for i in range(n):
        names = [f"im{i}_{j}.png" for j in range(2 if i == 1 else 1)]
        for j, name in enumerate(names):
            Image.new("RGB", (px, px + 28 * (j % 2)), (90 + 7 * i, 120, 60 + 5 * j)).save(folder / name)
        records.append({"id": f"q{i}", "task": "position", "images": names, "answer": answer_of(i), "meta": {},
                        "problem": "<image>" * len(names) + "Which option? A. Left B. Right C. Front D. Back"})
    return records


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


pytestmark = pytest.mark.usefixtures("one_thread")   # conftest.py


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("grpo_data")
    return write_jsonl(folder / "train.jsonl", letter_records(folder, 8))


def cfg_for(data: Path, out: Path, **kw) -> grpo.Config:
    base = dict(model="tiny", data=str(data), out=str(out), max_steps=2, group_size=4, rollout_batch_size=4,
                update_batch_size=2, max_new_tokens=12, min_pixels=56 * 56, max_pixels=56 * 84, lr=1e-3,
                save_every=0, activation_checkpointing=False)
    return grpo.Config(**{**base, **kw})


def fake_rollout(data: Path, records: list, tok, ip, group_size: int = 3, seed: int = 0) -> tuple:
    """(a Rollout with random completions of different lengths (some end with <|im_end|>, some do not),
    random advantages)."""
    prompts = vlm.encode_records(records, data.parent, tok, ip, response=False)
    g = torch.Generator().manual_seed(seed)
    n, width = len(records) * group_size, 7
    ids = torch.randint(20, 400, (n, width), generator=g)
    lengths = torch.randint(1, width + 1, (n,), generator=g)
    lengths[0] = width
    mask = torch.arange(width)[None] < lengths[:, None]
    ids[torch.arange(n), lengths - 1] = torch.where(lengths % 2 == 0, 2, ids[torch.arange(n), lengths - 1])
    ids[~mask] = tok.pad_token_id
    return grpo.Rollout(records, prompts, group_size, ids, mask), torch.randn(n, generator=g)


# ----------------------------------------------------------------------------- pure math
def test_group_advantages_hand_computed():
    """All-equal groups give exactly 0; one success among 5: +0.8/√0.2 and −0.2/√0.2 (unbiased std √0.2)."""
    a = grpo.group_advantages(torch.tensor([0.1, 0.1, 0.1, 0.1, 0.1, 1.0, 0.0, 0.0, 0.0, 0.0]), 5)
    assert torch.equal(a[:5], torch.zeros(5))
    s = math.sqrt(0.2)
    expected = torch.tensor([0.8 / s, -0.2 / s, -0.2 / s, -0.2 / s, -0.2 / s])
    assert torch.allclose(a[5:], expected, atol=1e-5)
    two = grpo.group_advantages(torch.tensor([1.0, 0.0]), 2, eps=0.0)   # mean 0.5, unbiased std √0.5
    assert torch.allclose(two, torch.tensor([0.5, -0.5]) / math.sqrt(0.5))
    with pytest.raises(ValueError):
        grpo.group_advantages(torch.ones(5), 2)


@pytest.mark.parametrize("group_size", range(2, 9))
def test_group_advantages_all_equal_groups_are_exactly_zero(group_size):
    """A group whose rewards are all equal carries no signal: A = 0 exactly, for every reward value the
    reward can take (float32 mean/std alone leaves ±0.056 for r = 0.9 and G = 3, 6, 7, 8); a mixed group
    beside it still gets its normalised advantages."""
    for value in (0.0, 0.1, 0.9, 1.0):
        r = torch.tensor([value] * group_size + [1.0] + [0.0] * (group_size - 1))
        a = grpo.group_advantages(r, group_size)
        assert torch.equal(a[:group_size], torch.zeros(group_size)), (value, a[:group_size])
        s = math.sqrt(1.0 / group_size)                         # unbiased std of one 1 among G zeros
        assert a[group_size] == pytest.approx((1 - 1 / group_size) / (s + 1e-6), rel=1e-5)


def test_loss_at_ratio_one_without_kl_is_minus_mean_advantage():
    """logp = old_logp, β = 0: L = −Σ A·m / Σ m, and ∂L/∂logp_t = −A·m_t / Σ m (vanilla policy gradient)."""
    g = torch.Generator().manual_seed(0)
    logp = (-torch.rand(3, 5, generator=g)).requires_grad_()
    adv, mask = torch.tensor([1.5, -0.5, 0.25]), torch.rand(3, 5, generator=g) > 0.3
    loss, m = grpo.policy_loss(logp, logp.detach(), None, adv, mask, kl_coef=0.0)
    expected = -(adv[:, None] * mask).sum() / mask.sum()
    assert torch.allclose(loss, expected, atol=1e-6)
    loss.backward()
    assert torch.allclose(logp.grad, -adv[:, None] * mask / mask.sum(), atol=1e-6)
    assert m["tokens"] == int(mask.sum()) and m["ratio"] == pytest.approx(1.0) and m["clip_high"] == 0.0


def test_clip_and_dual_clip_switch_exactly():
    """Per-token values and gradients on both sides of 1−0.2, 1+0.3 and the dual clip 3 (sum, normalizer 1).

    A > 0: pg = −A·min(r, 1.3) (zero gradient above 1.3);  A < 0: pg = −A·max(r, 0.8), capped at −A·3
    (zero gradient below 0.8 and above 3). ∂r/∂logp = r."""
    r = torch.tensor([0.70, 0.79, 0.81, 1.00, 1.29, 1.31, 2.90, 3.10])
    for a in (2.0, -2.0):
        old = torch.zeros(1, 8)
        logp = r.log()[None].clone().requires_grad_()
        loss, m = grpo.policy_loss(logp, old, None, torch.tensor([a]), torch.ones(1, 8, dtype=torch.bool),
                                   kl_coef=0.0, normalizer=1.0)
        loss.backward()
        if a > 0:
            value = -a * torch.minimum(r, torch.tensor(1.3))
            grad = torch.where(r > 1.3, 0.0, -a * r)
            assert m["clip_high"] == pytest.approx(3 / 8) and m["clip_low"] == 0 and m["clip_dual"] == 0
        else:
            value = torch.clamp(-a * torch.maximum(r, torch.tensor(0.8)), max=-a * 3.0)
            grad = torch.where((r < 0.8) | (r > 3.0), 0.0, -a * r)
            assert m["clip_low"] == pytest.approx(2 / 8) and m["clip_dual"] == pytest.approx(1 / 8)
        assert torch.allclose(loss, value.sum(), atol=1e-5), a
        assert torch.allclose(logp.grad[0], grad, atol=1e-5), (a, logp.grad, grad)


def test_kl_k3_values_clamps_and_zero_at_reference():
    """k3 = e^d − d − 1 with d = ref − logp (0.5 → 0.14872); d clamped to ±20 and k3 to ≤ 10; the KL term and
    its gradient vanish when the policy equals the reference."""
    logp = torch.tensor([[0.0, 0.0, -1.0]], requires_grad=True)
    ref = torch.tensor([[0.5, 30.0, -1.0]])
    mask, zero = torch.ones(1, 3, dtype=torch.bool), torch.zeros(1)
    loss, m = grpo.policy_loss(logp, logp.detach(), ref, zero, mask, kl_coef=1.0, normalizer=1.0)
    assert loss.item() == pytest.approx(math.exp(0.5) - 1.5 + 10.0, abs=1e-5)
    loss.backward()
    assert logp.grad[0, 0].item() == pytest.approx(1 - math.exp(0.5), abs=1e-5)   # ∂k3/∂logp = 1 − e^d
    assert logp.grad[0, 1] == 0 and logp.grad[0, 2] == 0                         # clamped, at the reference
    same = torch.randn(2, 4).requires_grad_()
    loss, m = grpo.policy_loss(same, same.detach(), same.detach().clone(), torch.zeros(2), torch.ones(2, 4),
                               kl_coef=0.5)
    loss.backward()
    assert loss.item() == 0.0 and m["kl"] == 0.0 and torch.equal(same.grad, torch.zeros(2, 4))


def test_masked_tokens_get_zero_gradient():
    g = torch.Generator().manual_seed(1)
    logp = (-3 * torch.rand(4, 6, generator=g)).requires_grad_()
    old, ref = -3 * torch.rand(4, 6, generator=g), -3 * torch.rand(4, 6, generator=g)
    mask = torch.rand(4, 6, generator=g) > 0.5
    loss, _ = grpo.policy_loss(logp, old, ref, torch.randn(4, generator=g), mask)
    loss.backward()
    assert torch.equal(logp.grad[~mask], torch.zeros(int((~mask).sum())))
    assert (logp.grad[mask] != 0).all()


def test_batch_sizes_scale_to_data_and_world():
    cfg = grpo.Config(data="x")
    assert grpo.batch_sizes(cfg, 10_000, 8) == (256, 128)
    assert grpo.batch_sizes(cfg, 100, 8) == (96, 96)           # rollout = records rounded to the world
    assert grpo.batch_sizes(grpo.Config(data="x", update_batch_size=40), 100, 8) == (96, 32)
    with pytest.raises(common.BadRecord):
        grpo.batch_sizes(cfg, 3, 4)


# ----------------------------------------------------------------------------- rollout batches on the tiny model
def plain_logprobs(model, ro: grpo.Rollout, row: int, temperature: float = 1.0) -> torch.Tensor:
    """Log-probs of one completion from full logits of the unpadded prompt + completion, its own images only:
    log_softmax(z / τ) in the model's dtype, at least float32 (test_wiring runs it on a float64 copy)."""
    one = vlm.select_prompts(ro.prompts, [row // ro.group_size])            # one prompt: no padding column
    comp = ro.completions[row][ro.mask[row]]
    ids = torch.cat([one["input_ids"][0], comp])[None]
    dtype = next(model.parameters()).dtype
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False,
                   mm_token_type_ids=torch.cat([one["mm_token_type_ids"][0], torch.zeros_like(comp)])[None],
                   pixel_values=one["pixel_values"].to(dtype), image_grid_thw=one["image_grid_thw"]).logits[0]
    n_prompt = one["input_ids"].shape[1]
    lp = F.log_softmax(logits.to(torch.promote_types(dtype, torch.float32)) / temperature, -1)[n_prompt - 1:-1]
    return lp.gather(-1, comp[:, None])[:, 0]


def test_rollout_logprobs_equal_plain_full_logits(data):
    """rollout_logprobs (each group one row: its prompt and images once, the G completions after it; a
    two-image prompt; several micro-batches) gives each completion the log-probs of a plain unpadded forward
    of its own prompt + completion with full logits; 0 outside the completion mask."""
    model, tok, ip = vlm.load_model("tiny", max_pixels=56 * 84)
    ro, _ = fake_rollout(data, common.read_jsonl(data)[:3], tok, ip)
    assert ro.prompts["image_grid_thw"].shape[0] == 4 and len(set(ro.mask.sum(1).tolist())) > 2
    cfg = cfg_for(data, data.parent / "unused", micro_batch_tokens=60)          # one group per micro-batch
    assert len(grpo.micro_batches(ro, [0, 1, 2], cfg, CPU)) == 3
    logp = grpo.rollout_logprobs(model, ro, cfg, CPU)
    with torch.no_grad():
        for row in range(len(ro.completions)):
            n = int(ro.mask[row].sum())
            assert torch.allclose(logp[row, :n], plain_logprobs(model, ro, row), atol=2e-5), row
    assert torch.equal(logp[~ro.mask], torch.zeros(int((~ro.mask).sum())))


def sgd_update(ro: grpo.Rollout, adv: torch.Tensor, budget: int, data: Path) -> tuple:
    """Parameter change of one update() with SGD lr 1 (= −gradient) and the loss metrics."""
    model, tok, ip = vlm.load_model("tiny", max_pixels=56 * 84)
    cfg = cfg_for(data, data.parent / "unused", micro_batch_tokens=budget, max_grad_norm=1e9)
    old = grpo.rollout_logprobs(model, ro, cfg, CPU) + 0.4 * torch.randn(
        ro.mask.shape, generator=torch.Generator().manual_seed(3)) * ro.mask    # ratios ≠ 1: clipping active
    ref = old - 0.05 * ro.mask
    before = [p.detach().clone() for p in model.parameters()]
    groups = list(range(len(ro.records)))
    m = grpo.update(model, torch.optim.SGD(model.parameters(), lr=1.0), ro, groups, adv, old, ref, cfg, CPU)
    return [p.detach() - b for p, b in zip(model.parameters(), before)], m


def test_micro_batch_split_gives_the_same_update(data):
    """All groups in one micro-batch, one group per micro-batch, or two: the same gradient (global token mean) and
    the same logged loss metrics (update_means: pg loss, KL, ratio, clip fractions, entropy)."""
    _, tok, ip = vlm.load_model("tiny", max_pixels=56 * 84)
    ro, adv = fake_rollout(data, common.read_jsonl(data)[:3], tok, ip)
    results = [sgd_update(ro, adv, budget, data) for budget in (10_000, 60, 200)]
    (u0, m0) = results[0]
    for u, m in results[1:]:
        assert max(float((a - b).abs().max()) for a, b in zip(u0, u)) < 1e-6
        assert m["tokens"] == m0["tokens"] and abs(m["pg_loss"] - m0["pg_loss"]) < 1e-5
        logged, logged0 = grpo.update_means([m], CPU), grpo.update_means([m0], CPU)   # what metrics.jsonl shows
        assert all(abs(logged[k] - logged0[k]) < 1e-6 for k in logged0), (logged, logged0)
    assert m0["clip_high"] + m0["clip_low"] > 0 and max(float(a.abs().max()) for a in u0) > 0
    assert m0["entropy"] / m0["tokens"] > 0.1      # token-weighted sum of the policy's entropy


def test_micro_batches_same_count_on_every_rank(data, monkeypatch):
    """Ranks whose groups need fewer micro-batches than another rank's get empty ones (dummies), so every rank
    runs the same number of FSDP2 forwards: the count is the largest over the ranks (all_reduce_max)."""
    _, tok, ip = vlm.load_model("tiny", max_pixels=56 * 84)
    ro, _ = fake_rollout(data, common.read_jsonl(data)[:3], tok, ip)
    cfg = cfg_for(data, data.parent / "unused", micro_batch_tokens=10_000)
    monkeypatch.setattr(grpo, "all_reduce_max", lambda x, device: 4)
    packs = grpo.micro_batches(ro, [0, 1, 2], cfg, CPU)
    assert len(packs) == 4 and sorted(g for p in packs for g in p) == [0, 1, 2] and [] in packs


def test_score_edge_cases(data):
    """Right answer → 1.0; the same text cut by the length limit (no <|im_end|>) → format 0, reward 0.9;
    an empty completion (only <|im_end|>) → 0; right format, wrong answer → 0.1."""
    _, tok, ip = vlm.load_model("tiny", max_pixels=56 * 84)
    texts = ["<think>It is on the left.</think> \\boxed{A}", "<think>It is on the left.</think> \\boxed{A}",
             "", "<think>Right.</think> \\boxed{B}"]
    rows = [tok(t, add_special_tokens=False)["input_ids"] + ([] if i == 1 else [2]) for i, t in enumerate(texts)]
    width = max(map(len, rows))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    mask = torch.tensor([[j < len(r) for j in range(width)] for r in rows])
    ro = grpo.Rollout(common.read_jsonl(data)[:1], {}, 4, ids, mask)
    sc = grpo.score(ro, tok)
    assert sc.rewards.tolist() == pytest.approx([1.0, 0.9, 0.0, 0.1])
    assert sc.truncated.tolist() == [False, True, False, False] and sc.texts[2] == ""
    adv = grpo.group_advantages(sc.rewards, 4)
    assert adv[0] > adv[1] > 0 > adv[3] > adv[2]


def test_score_reads_options_through_the_problem_and_stops_at_endoftext(data):
    """score() uses tasks.reward_terms with the record's problem: for a position question "\\boxed{Right}"
    names option B (right with the problem, wrong without it). <|endoftext|> ends a completion like
    <|im_end|> (Qwen2.5-VL lists both as eos): not truncated, format kept, nothing after it counted."""
    _, tok, ip = vlm.load_model("tiny", max_pixels=56 * 84)
    assert engine.stop_token_ids(tok) == [tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")]
    rec = common.read_jsonl(data)[0] | {"answer": "B", "problem": "<image>Where?\nA. Left\nB. Right\nC. Front\nD. Back"}
    text = "<think>It is on the right.</think> \\boxed{Right}"
    body = tok(text, add_special_tokens=False)["input_ids"]
    endoftext, junk = tok.convert_tokens_to_ids("<|endoftext|>"), tok("A B", add_special_tokens=False)["input_ids"]
    ids, mask = engine.completion_mask(torch.tensor([body + [endoftext] + junk, body + [2] + junk]),
                                    engine.stop_token_ids(tok), tok.pad_token_id)
    assert mask.sum(1).tolist() == [len(body) + 1] * 2
    sc = grpo.score(grpo.Rollout([rec], {}, 2, ids, mask), tok)
    assert sc.texts == [text, text] and sc.truncated.tolist() == [False, False]
    assert sc.rewards.tolist() == pytest.approx([1.0, 1.0])
    assert tasks.reward(text, "B", "position") == pytest.approx(0.1)      # without the problem: not option B


def test_partial_credit_reaches_the_reward(data):
    """--partial-credit: score() passes partial=True to tasks.reward_terms, so a shuffle answer with 2 of 4
    positions right scores accuracy 0.5 (reward 0.9·0.5 + 0.1), a depth answer with 1 of 3 right 1/3; off, both
    score 0 (the paper's reward); a flip answer stays 0/1 either way."""
    _, tok, _ = vlm.load_model("tiny")
    recs = [{"id": "s", "task": "shuffle", "answer": "1, 2, 3, 4", "problem": "<image>Order the tiles."},
            {"id": "d", "task": "depth", "answer": "2, 3, 1", "problem": "<image>Order the marks."},
            {"id": "f", "task": "flip", "answer": "3, vertical", "problem": "<image>Which tile?"}]
    texts = ["<think>t</think> \\boxed{2, 1, 3, 4}", "<think>t</think> \\boxed{2, 1, 3}", "<think>t</think> \\boxed{3, horizontal}"]
    rows = [tok(t, add_special_tokens=False)["input_ids"] + [2] for t in texts for _ in range(2)]
    width = max(map(len, rows))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    mask = torch.tensor([[j < len(r) for j in range(width)] for r in rows])
    ro = grpo.Rollout(recs, {}, 2, ids, mask)
    on, off = grpo.score(ro, tok, partial=True), grpo.score(ro, tok)
    assert on.accuracy.tolist() == pytest.approx([0.5, 0.5, 1 / 3, 1 / 3, 0.0, 0.0])
    assert on.rewards.tolist() == pytest.approx([0.55, 0.55, 0.4, 0.4, 0.1, 0.1])
    assert off.accuracy.tolist() == [0.0] * 6 and off.rewards.tolist() == pytest.approx([0.1] * 6)


def cli_error(capsys, main, argv: list) -> str:
    """The one stderr line of a command that must fail with exit code 2 (common.cli_main)."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2, e.value.code
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def test_resume_refuses_other_settings_in_one_line(data, tmp_path, capsys, monkeypatch):
    """--resume with another lr, KL coefficient, clip, dual clip, group size or image bound is refused
    before anything is written, in one line naming the flag and both values (sft.py does the same)."""
    out = tmp_path / "run"
    monkeypatch.setattr(grpo, "save_checkpoint", killed_after(grpo.save_checkpoint, 1))
    with pytest.raises(Killed):
        grpo.train(cfg_for(data, out, max_steps=2, save_every=1, exclude="none"))
    monkeypatch.undo()
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    base = ["--data", str(data), "--out", str(out), "--resume", "--max-steps", "2", "--save-every", "1",
            "--group-size", "4", "--rollout-batch-size", "4", "--update-batch-size", "2", "--max-new-tokens", "12",
            "--min-pixels", str(56 * 56), "--max-pixels", str(56 * 84), "--lr", "1e-3", "--exclude", "none",
            "--no-activation-checkpointing"]
    changes = [("--lr", "2e-3"), ("--kl-coef", "0.05"), ("--clip-low", "0.1"), ("--clip-high", "0.2"),
               ("--dual-clip", "2.0"), ("--group-size", "2"), ("--max-pixels", str(56 * 112))]
    for flag, value in changes:
        msg = cli_error(capsys, grpo.main, base + [flag, value])
        assert msg.startswith("grpo.py: error: --resume:"), msg
        assert (flag if flag != "--max-pixels" else "--max-pixels)") in msg and "(now " in msg, (flag, msg)
        assert sorted(p.relative_to(out) for p in out.rglob("*")) == before, flag


def test_non_finite_gradient_skips_the_step():
    model, _, _ = vlm.load_model("tiny")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    next(model.parameters()).grad[0] = float("nan")
    m = vlm.optimizer_step(model, opt, 1.0)
    assert m["skipped"] == 1 and not math.isfinite(m["grad_norm"])
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    assert all(p.grad is None for p in model.parameters()) and not opt.state


# ----------------------------------------------------------------------------- command line
def test_help_lists_every_knob():
    r = subprocess.run([sys.executable, str(HERE / "grpo.py"), "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    for name in ("--group-size", "--rollout-batch-size", "--update-batch-size", "--kl-coef", "--clip-high",
                 "--max-new-tokens", "--micro-batch-tokens", "--resume", "paper: 5", "paper: 0.3", "examples:"):
        assert name in r.stdout.replace("\n", " "), name


def test_bad_input_is_one_line_and_writes_nothing(data, tmp_path, capsys):
    out = tmp_path / "out"
    bad = [([], "--data is required"),
           (["--data", str(tmp_path / "nope.jsonl")], "no such file"),
           (["--data", str(data), "--model", "no-such-model"], "--model no-such-model: not a local folder"),
           (["--data", str(data), "--group-size", "1"], "--group-size"),
           (["--data", str(data), "--min-pixels", "5000", "--max-pixels", "3000"], "--min-pixels")]
    for args, message in bad:
        msg = cli_error(capsys, grpo.main, ["--out", str(out)] + args)
        assert msg.startswith("grpo.py: error: ") and message in msg, (args, msg)
        assert msg.count("--model") <= 1, msg
        assert not out.exists()
    missing = write_jsonl(data.parent / "missing.jsonl", [dict(common.read_jsonl(data)[0], id="lost", images=["x.png"])])
    assert re.search("record lost: image .*x.png not found", cli_error(capsys, grpo.main, ["--out", str(out), "--data", str(missing)]))
    rows = common.read_jsonl(data)
    dup = write_jsonl(data.parent / "dup.jsonl", [rows[0], rows[1], dict(rows[2], id=rows[1]["id"])])
    assert f"id {rows[1]['id']!r} is used twice (line 2 and line 3)" in \
        cli_error(capsys, grpo.main, ["--out", str(out), "--data", str(dup), "--exclude", "none"])
    assert not out.exists()
    out.mkdir()
    (out / "metrics.jsonl").write_text("")
    assert "holds files but no grpo.py run" in cli_error(capsys, grpo.main, ["--out", str(out), "--data", str(data)])
    assert [p.name for p in out.iterdir()] == ["metrics.jsonl"]


# ----------------------------------------------------------------------------- runs
def test_resume_equals_uninterrupted(data, tmp_path, monkeypatch):
    """A run stopped after step 2 and resumed ends with the weights of a run that never stopped (same data
    position and samples: the sampling seed is a function of the step; the decoder is refreshed from the
    loaded weights); unfinished .tmp folders and a cut-off metrics row are ignored."""
    kw = dict(max_steps=3, save_every=2, exclude="none")
    full = grpo.train(cfg_for(data, tmp_path / "full", **kw))
    with monkeypatch.context() as m, pytest.raises(Killed):
        m.setattr(grpo, "save_checkpoint", killed_after(grpo.save_checkpoint, 2))
        grpo.train(cfg_for(data, tmp_path / "cut", **kw))
    cut = tmp_path / "cut"
    assert not (cut / "model.safetensors").exists() and (cut / "hf" / "step_00000002" / "model.safetensors").exists()
    (cut / "checkpoints" / "step_00000003.tmp").mkdir()                  # a kill −9 in the middle of a save
    (cut / "hf" / "step_00000003.tmp").mkdir()
    with open(cut / "metrics.jsonl", "a") as f:                          # and a row cut off by the kill
        f.write('{"step": 3, "rew')
    resumed = grpo.train(cfg_for(data, cut, resume=True, **kw))
    a, b = load_file(str(tmp_path / "full" / "model.safetensors")), load_file(str(cut / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [json.loads(x)["step"] for x in (cut / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert resumed[0]["reward"] == full[2]["reward"] and resumed[0]["kl"] == full[2]["kl"]
    rows = [json.loads(x) for x in (cut / "samples.jsonl").read_text().splitlines()]
    assert {r["step"] for r in rows} == {1} and {"completion", "parsed", "reward", "advantage"} <= rows[0].keys()


def parity_score(real_score):
    """score() with the reward replaced by a deterministic function of each completion (its token-sum parity),
    and every group of record q1 or q3 made all-equal: groups with and without signal, the same on a resumed
    run (the tiny random model never answers right, so the real rewards are all 0)."""
    def score(ro, tok, partial=False):
        sc = real_score(ro, tok, partial)
        parity = (ro.completions * ro.mask).sum(1) % 2
        equal = torch.tensor([ro.records[i // ro.group_size]["id"] in ("q1", "q3") for i in range(len(parity))])
        sc.rewards = torch.where(equal, torch.zeros_like(sc.rewards), parity.float())
        return sc
    return score


def test_filter_groups_keeps_the_batch_full_of_groups_with_signal(data, monkeypatch):
    """--filter-groups (DAPO's dynamic sampling): all-equal groups are dropped and fresh prompts rolled out
    until the rank has its full share of groups with signal (or the tries run out: then dropped groups fill
    it); every kept group keeps its own prompt, completions and rewards; the draws are a function of
    (seed, step, rank), so the same call gives the same groups; drawn − needed = dropped."""
    monkeypatch.setattr(grpo, "score", parity_score(grpo.score))
    model, tok, ip = vlm.load_model("tiny", max_pixels=56 * 84)
    cfg = cfg_for(data, data.parent / "unused", filter_groups=True, max_new_tokens=6)
    recs = common.read_jsonl(data)
    run = SimpleNamespace(records=recs, root=data.parent, tok=tok, ip=ip)
    dec = engine.Engine(model)

    def once():
        torch.manual_seed(0)
        ro = grpo.rollout(dec, recs[:4], data.parent, tok, ip, cfg)
        sc = grpo.score(ro, tok)
        return ro, sc, grpo.keep_groups_with_signal(dec, ro, sc, run, cfg, step=3, rank=0)
    ro, sc, (kept, ksc, stats) = once()
    r = ksc.rewards.view(-1, 4)
    assert len(kept.records) == 4 and (r != r[:, :1]).any(1).all(), r
    assert stats["drawn"] > 4 and stats["drawn"] - 4 == stats["dropped"]
    assert torch.equal(kept.prompts["input_ids"], vlm.encode_records(kept.records, data.parent, tok, ip, False)["input_ids"])
    first = [g for g, rec in enumerate(ro.records) if rec["id"] not in ("q1", "q3") and (sc.rewards.view(-1, 4)[g] != sc.rewards.view(-1, 4)[g, 0]).any()]
    for j, g in enumerate(first):                       # groups of the first rollout come first, unchanged
        w = int(ro.mask[g * 4:(g + 1) * 4].sum(1).max())
        assert kept.records[j] is ro.records[g]
        assert torch.equal(kept.completions[j * 4:(j + 1) * 4, :w], ro.completions[g * 4:(g + 1) * 4, :w])
        assert torch.equal(ksc.rewards[j * 4:(j + 1) * 4], sc.rewards[g * 4:(g + 1) * 4])
    _, _, (again, asc, astats) = once()
    assert astats == stats and [x["id"] for x in again.records] == [x["id"] for x in kept.records]
    assert torch.equal(again.completions, kept.completions)


def test_resume_equals_uninterrupted_with_filter_groups(data, tmp_path, monkeypatch):
    """Exact resume holds with --filter-groups: the fresh prompts and their samples are a function of the step."""
    monkeypatch.setattr(grpo, "score", parity_score(grpo.score))
    kw = dict(max_steps=3, save_every=2, exclude="none", filter_groups=True, max_new_tokens=6)
    full = grpo.train(cfg_for(data, tmp_path / "full", **kw))
    with monkeypatch.context() as m, pytest.raises(Killed):
        m.setattr(grpo, "save_checkpoint", killed_after(grpo.save_checkpoint, 2))
        grpo.train(cfg_for(data, tmp_path / "cut", **kw))
    resumed = grpo.train(cfg_for(data, tmp_path / "cut", resume=True, **kw))
    a, b = load_file(str(tmp_path / "full" / "model.safetensors")), load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed[0]["prompts_drawn"] == full[2]["prompts_drawn"] and any(r["groups_dropped"] for r in full)


def test_grpo_names_both_bounds_when_they_differ_from_the_cold_starts(tmp_path, capsys):
    """grpo.py keeps the paper's bounds but says in one line when the cold start (sft.py's run.json) was trained
    at others (it used to go on without a word: format reward 0.06 instead of 0.27); the same bounds: no line.
    The two scripts' --help examples use the same bounds."""
    recs = [dict(r, response="<think>x</think> \\boxed{A}") for r in letter_records(tmp_path, 4)]
    sft.train(sft.Config(model="tiny", data=str(write_jsonl(tmp_path / "sft.jsonl", recs)), out=str(tmp_path / "sft"),
                         max_steps=1, global_batch_size=4, save_every=0, max_pixels=56 * 84))
    train = write_jsonl(tmp_path / "train.jsonl", [dict(r, id=f"g{i}") for i, r in enumerate(recs)])
    capsys.readouterr()
    for px, out in (((56 * 56, 56 * 84), "same"), ((56 * 56, 56 * 56), "other")):
        grpo.train(cfg_for(train, tmp_path / out, model=str(tmp_path / "sft"), max_steps=1, update_batch_size=4,
                           min_pixels=px[0], max_pixels=px[1], exclude="none"))
        notes = [ln for ln in capsys.readouterr().out.splitlines() if "was trained by sft.py" in ln]
        assert notes == ([] if out == "same" else
                         [f"note: images 3136..3136 px (--min-pixels, --max-pixels), but {tmp_path / 'sft'} was trained "
                          "by sft.py at 3136..4704 px; pass --min-pixels 3136 --max-pixels 4704 to keep them"]), notes
    sft_max = int(re.search(r"sft.py --model tiny .*?--max-pixels (\d+)", sft.USAGE_EXAMPLES, re.S)[1])
    lo, hi = map(int, re.search(r"--min-pixels (\d+) --max-pixels (\d+)", grpo.USAGE_EXAMPLES).groups())
    assert (lo, hi) == (3136, sft_max)          # 3136: the tiny model's own smallest, which sft.py keeps


def test_grpo_raises_the_reward_after_a_cold_start(tmp_path):
    """Cold start: SFT teaches the format with answers A and B half and half (the image does not tell which).
    GRPO on the same questions, where A is always right, must then raise the mean reward clearly within 15
    steps (fixed seeds: 0.25 → ~0.8 here)."""
    recs = letter_records(tmp_path, 8)
    for i, r in enumerate(recs):
        side, letter = ("left", "A") if i % 2 == 0 else ("right", "B")
        r["response"] = f"<think>{side}</think> \\boxed{{{letter}}}"
    sft.train(sft.Config(model="tiny", data=str(write_jsonl(tmp_path / "sft.jsonl", recs)), out=str(tmp_path / "sft"),
                         max_steps=60, lr=1e-2, warmup_ratio=0.0, global_batch_size=8,
                         activation_checkpointing=False, save_every=0, min_pixels=56 * 56, max_pixels=56 * 84,
                         lora_rank=0))
    train = write_jsonl(tmp_path / "train.jsonl", [dict(r, id=f"g{i}", answer="A") for i, r in enumerate(recs)])
    rows = grpo.train(cfg_for(train, tmp_path / "grpo", model=str(tmp_path / "sft"), max_steps=15, group_size=4,
                              rollout_batch_size=4, update_batch_size=4, max_new_tokens=16, kl_coef=0.0))
    rewards = [r["reward"] for r in rows]
    start, end = sum(rewards[:3]) / 3, sum(rewards[-5:]) / 5
    assert end > start + 0.25 and end > 0.6, rewards


# ----------------------------------------------------------------------------- FSDP2 (one torchrun launch)
def first_update(ro: grpo.Rollout, rewards: torch.Tensor, model, ref, opt, cfg: grpo.Config) -> dict:
    """Advantages from the rewards → old / ref log-probs → one update on all of the rank's groups."""
    adv = grpo.group_advantages(rewards, ro.group_size)
    old, ref_lp = grpo.rollout_logprobs(model, ro, cfg, CPU), grpo.rollout_logprobs(ref, ro, cfg, CPU)
    return grpo.update(model, opt, ro, list(range(len(ro.records))), adv, old, ref_lp, cfg, CPU)


def grpo_worker(folder: Path) -> None:
    """Runs under torchrun with 2 ranks: (a) each rank samples its 2 prompts with the decoder's copy of the
    sharded tiny model (checked against the shards after refresh) and makes the first update (SGD lr 1 =
    −gradient, random rewards so every group has a signal; group log-probs under FSDP2 with activation
    checkpointing, token budgets that would give the ranks different micro-batch counts), saving its rollout and
    the updated weights; (b) the grpo.py training loop: 2 steps with a checkpoint each."""
    import faulthandler
    faulthandler.dump_traceback_later(240, exit=True)   # never hang CI
    torch.set_num_threads(1)
    d = common.setup_dist(0)
    data = folder / "train.jsonl"
    cfg = cfg_for(data, folder / "unused", max_grad_norm=1e9, activation_checkpointing=True,
                  micro_batch_tokens=150 if d.rank == 0 else 10_000)
    model, tok, ip, _ = vlm.load_trainable("tiny", d, train_vision=True, checkpointing=True, fsdp=True,
                                           lr=1.0, weight_decay=0.0, betas=(0.9, 0.999), min_pixels=cfg.min_pixels,
                                           max_pixels=cfg.max_pixels)
    ref = vlm.place_model(vlm.load_model("tiny")[0].requires_grad_(False).eval(), d, True)
    dec = engine.Engine(model)
    assert not dec.shared and all(torch.equal(dict(dec.model.named_parameters())[k], p.full_tensor())
                                  for k, p in model.named_parameters())
    torch.manual_seed(grpo.step_seed(0, 0, d.rank))
    ro = grpo.rollout(dec, common.read_jsonl(data)[2 * d.rank:2 * d.rank + 2], folder, tok, ip, cfg)
    rewards = torch.rand(len(ro.mask))
    sums = first_update(ro, rewards, model, ref, torch.optim.SGD(model.parameters(), lr=1.0), cfg)
    (folder / f"rollout{d.rank}.json").write_text(json.dumps(
        {"completions": ro.completions.tolist(), "mask": ro.mask.tolist(), "rewards": rewards.tolist(),
         "means": grpo.update_means([sums], d.device)}))
    vlm.save_hf(model, tok, ip, str(folder / "two_ranks"), dtype=torch.float32)
    dec.refresh(model)
    assert all(torch.equal(dict(dec.model.named_parameters())[k], p.full_tensor()) for k, p in model.named_parameters())
    grpo.train(cfg_for(data, folder / "run", max_steps=2, save_every=1, exclude="none"))   # destroys the group


def test_two_ranks_first_update_equals_one_process(data, tmp_path):
    """2 gloo ranks with FSDP2: the first update (each rank its own prompts, token mean over both ranks, group
    log-probs with activation checkpointing, the ranks' micro-batch counts made equal) equals the update of
    one plain process on all 4 prompts with the same completions, and logs the same loss metrics (update_means)
    although the micro-batches differ too; the training loop under torchrun completes rollout + update +
    checkpoint."""
    folder = data.parent
    run_two_ranks(HERE / "test_grpo.py", "grpo-worker", str(folder))
    run = folder / "run"
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert (run / "model.safetensors").exists() and (run / "hf" / "step_00000002" / "model.safetensors").exists()
    assert common.latest_checkpoint(str(run)).name == "step_00000002"
    parts = [json.loads((folder / f"rollout{k}.json").read_text()) for k in range(2)]
    width = max(len(p["completions"][0]) for p in parts)
    pad = lambda rows, v: [row + [v] * (width - len(row)) for row in rows]      # noqa: E731
    model, tok, ip = vlm.load_model("tiny", max_pixels=56 * 84)
    ref = vlm.load_model("tiny")[0].requires_grad_(False)
    recs = common.read_jsonl(data)[:4]
    ro = grpo.Rollout(recs, vlm.encode_records(recs, folder, tok, ip, response=False), 4,
                      torch.tensor(sum((pad(p["completions"], 0) for p in parts), [])),
                      torch.tensor(sum((pad(p["mask"], False) for p in parts), [])))
    rewards = torch.tensor(sum((p["rewards"] for p in parts), []))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = cfg_for(data, folder / "unused", max_grad_norm=1e9, micro_batch_tokens=60)   # one group per micro-batch
    means = grpo.update_means([first_update(ro, rewards, model, ref, torch.optim.SGD(model.parameters(), lr=1.0),
                                            cfg)], CPU)
    # the logged loss metrics are token means over the whole mini-batch: 2 ranks with budgets 150 / 10,000 and
    # 1 process with one group per micro-batch log the same values
    assert parts[0]["means"] == parts[1]["means"] and means["tokens"] == parts[0]["means"]["tokens"]
    assert means.keys() == parts[0]["means"].keys() >= {"pg_loss", "kl", "ratio", "ppo_kl", "clip_high", "clip_low",
                                                         "clip_dual", "entropy"}
    assert all(abs(means[k] - parts[0]["means"][k]) < 1e-5 for k in means), (means, parts[0]["means"])
    assert means["entropy"] > 0.1 and means["ratio"] == pytest.approx(1.0)   # on-policy: the ratio is 1
    two = load_file(str(folder / "two_ranks" / "model.safetensors"))
    one = model.state_dict()
    deltas = {k: (two[k] - before[k], one[k] - before[k]) for k in two}
    assert max(float(b.abs().max()) for _, b in deltas.values()) > 1e-3            # the update did something
    assert max(float((a - b).abs().max()) for a, b in deltas.values()) < 1e-5


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "grpo-worker":
    grpo_worker(Path(sys.argv[2]))


# ----------------------------------------------------------------------------- the one log-prob path, the oracle
def full_logprobs(model, ro: grpo.Rollout, rows: list, with_entropy: bool = True) -> tuple:
    """The oracle: vlm.token_logprobs on prompt + completion rows (each sample repeats its prompt and images),
    the forward group_logprobs replaces. Returns (log-probs, entropies) over the completions' columns."""
    w = max(1, int(ro.mask[rows].sum(1).max()))
    p = vlm.select_prompts(ro.prompts, [r // ro.group_size for r in rows])
    comp, cmask = ro.completions[rows, :w], ro.mask[rows, :w]
    batch = {"input_ids": torch.cat([p["input_ids"], comp], 1),
             "attention_mask": torch.cat([p["attention_mask"], cmask.long()], 1),
             "mm_token_type_ids": torch.cat([p["mm_token_type_ids"], torch.zeros_like(comp)], 1),
             "pixel_values": p["pixel_values"], "image_grid_thw": p["image_grid_thw"]}
    labels = torch.cat([torch.full_like(p["input_ids"], -100), torch.where(cmask, comp, -100)], 1)
    lp, ent = vlm.token_logprobs(model, batch, labels, temperature=TAU, with_entropy=True)
    return lp[:, -w:], ent[:, -w:]


TAU = 0.7


@pytest.mark.parametrize("kind", ["tiny", "tiny-qwen3"])
def test_group_logprobs_and_gradients_equal_the_full_forward(data, kind):
    """vlm.group_logprobs (each group one row: the prompt and its images once, each completion seeing the
    prompt and itself only; a two-image prompt; activation checkpointing on; τ 0.7) gives the log-probs,
    entropies and gradients of the oracle, the full prompt + completion forward per sample; and a completion
    never sees another one (changing one changes no other row's log-probs)."""
    model, tok, ip = vlm.load_model(kind, max_pixels=56 * 84)
    vlm.enable_activation_checkpointing(model)
    model.train()
    ro, _ = fake_rollout(data, common.read_jsonl(data)[:3], tok, ip)
    rows = list(range(9))
    weight = torch.randn(9, ro.mask.shape[1], generator=torch.Generator().manual_seed(1))

    def run(fn):
        model.zero_grad(set_to_none=True)
        logp, ent = fn()
        (logp * weight[:, :logp.shape[1]]).sum().backward()
        return logp.detach(), ent, [p.grad.clone() for p in model.parameters()]

    grouped = lambda: vlm.group_logprobs(model, ro.prompts, ro.completions, ro.mask, 3, TAU, with_entropy=True)  # noqa
    (lp_a, ent_a, g_a), (lp_b, ent_b, g_b) = run(lambda: full_logprobs(model, ro, rows)), run(grouped)
    w = lp_a.shape[1]
    assert torch.allclose(lp_a, lp_b[:, :w], atol=1e-5) and torch.allclose(ent_a, ent_b[:, :w], atol=1e-4)
    assert torch.equal(lp_b[~ro.mask], torch.zeros(int((~ro.mask).sum())))
    for a, b in zip(g_a, g_b):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)
    k = next(r for r in range(3, 6) if ro.mask[r].sum() >= 3)          # a sample of group 1 with 3+ tokens
    other = ro.completions.clone()
    other[k, 1:] = 7
    with torch.no_grad():
        lp_c = vlm.group_logprobs(model, ro.prompts, other, ro.mask, 3, TAU)
    assert torch.equal(lp_c[torch.arange(9) != k], lp_b[torch.arange(9) != k]) and not torch.equal(lp_c[k], lp_b[k])


def test_group_logprobs_of_text_only_prompts(data):
    """Prompts without images take the same path (text positions) and equal the oracle."""
    model, tok, ip = vlm.load_model("tiny")
    prompts = vlm.encode([vlm.build_messages(q) for q in ("Which tile?", "Is the red ball nearer than the box?")],
                         [[], []], tok, ip, padding_side="left")
    prompts.pop("labels")
    comp = torch.randint(20, 400, (4, 5), generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)
    got = vlm.group_logprobs(model, prompts, comp, mask, 2)
    for r in range(4):
        one = vlm.select_prompts(prompts, [r // 2])
        ids = torch.cat([one["input_ids"], comp[r:r + 1, :int(mask[r].sum())]], 1)
        with torch.no_grad():
            logits = model(input_ids=ids, use_cache=False).logits[0]
        want = F.log_softmax(logits.float(), -1)[one["input_ids"].shape[1] - 1:-1].gather(-1, ids[0, one["input_ids"].shape[1]:, None])[:, 0]
        assert torch.allclose(got[r, :int(mask[r].sum())], want, atol=1e-5), r


# ----------------------------------------------------------------------------- the one decoder, the oracle
def hf_generate(model, prompts: dict, tok, max_new_tokens: int, greedy: bool, n: int = 1, **sampling) -> tuple:
    """The oracle: transformers' generate with every decoding field set as the engine's arguments (nothing from
    the checkpoint's generation_config), cut to the completions and masked through the first stop token."""
    from transformers import GenerationConfig
    gc = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=not greedy, num_return_sequences=n,
                          temperature=sampling.get("temperature", 1.0), top_k=sampling.get("top_k", 0),
                          top_p=sampling.get("top_p", 1.0), repetition_penalty=1.0, eos_token_id=engine.stop_token_ids(tok),
                          pad_token_id=tok.pad_token_id, suppress_tokens=tok.convert_tokens_to_ids(list(vlm.VISION_TOKENS)))
    with torch.no_grad():
        out = model.eval().generate(**prompts, generation_config=gc)
    return engine.completion_mask(out[:, prompts["input_ids"].shape[1]:], engine.stop_token_ids(tok), tok.pad_token_id)


@pytest.mark.parametrize("kind", ["tiny", "tiny-qwen3"])
def test_engine_samples_what_transformers_generate_samples(data, kind):
    """engine.Engine (prefill each prompt once, its keys / values copied to its n rows of a static cache, our
    sampler) draws the same tokens as transformers' generate for the same seed: sampling n per prompt, with
    τ / top-k / top-p, and greedy."""
    model, tok, ip = vlm.load_model(kind, max_pixels=56 * 84)
    prompts = vlm.encode_records(common.read_jsonl(data)[:3], data.parent, tok, ip, response=False)
    dec = engine.Engine(model)
    assert dec.shared and not dec.compile
    for greedy, n, sampling in ((False, 3, {}), (True, 1, {}), (False, 2, dict(temperature=0.7, top_k=50, top_p=0.9))):
        torch.manual_seed(0)
        ours = dec.generate(prompts, tok, max_new_tokens=10, greedy=greedy, n=n, **sampling)
        torch.manual_seed(0)
        theirs = hf_generate(model, prompts, tok, 10, greedy, n, **sampling)
        assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1]), (greedy, sampling)


def test_engine_stops_at_any_stop_token(data, monkeypatch):
    """The loop ends a row at any of the stop tokens (<|im_end|> and <|endoftext|>) and stops decoding once
    every row has ended, as transformers' loop does: here the first greedy token is made a stop token, so both
    return one column."""
    model, tok, ip = vlm.load_model("tiny", max_pixels=56 * 84)
    prompts = vlm.encode_records(common.read_jsonl(data)[:1], data.parent, tok, ip, response=False)
    dec = engine.Engine(model)
    first = int(dec.generate(prompts, tok, max_new_tokens=1)[0][0, 0])
    monkeypatch.setattr(engine, "stop_token_ids", lambda t: [tok.eos_token_id, first])
    ours, mask = dec.generate(prompts, tok, max_new_tokens=40)
    theirs, _ = hf_generate(model, prompts, tok, 40, greedy=True)
    assert ours.shape == theirs.shape == (1, 1) and torch.equal(ours, theirs) and mask.all()
