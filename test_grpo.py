"""Tests of grpo.py: the GRPO math against hand-computed values, the rollout batch against plain full logits,
micro-batch and world-size invariance of the update, edge cases, the CLI, resume, and that it learns.

    python -m pytest -q test_grpo.py

CPU only, tiny random Qwen2.5-VL (0.29M parameters), 56-px images. One test launches `torch.distributed.run`
with 2 gloo ranks; this file is also that launch's worker (`python test_grpo.py grpo-worker DIR`).
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

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
                update_batch_size=2, micro_batch_size=4, max_new_tokens=12, min_pixels=56 * 56,
                max_pixels=56 * 84, lr=1e-3, save_every=0, save_dtype="float32", activation_checkpointing=False)
    return grpo.Config(**{**base, **kw})


def fake_rollout(data: Path, records: list, tok, ip, group_size: int = 3, seed: int = 0) -> grpo.Rollout:
    """A Rollout with random completions of different lengths (some end with <|im_end|>, some do not)."""
    prompts, n_images = grpo.encode_prompts(records, data.parent, tok, ip)
    g = torch.Generator().manual_seed(seed)
    n, width = len(records) * group_size, 7
    ids = torch.randint(20, 400, (n, width), generator=g)
    lengths = torch.randint(1, width + 1, (n,), generator=g)
    lengths[0] = width
    mask = torch.arange(width)[None] < lengths[:, None]
    ids[torch.arange(n), lengths - 1] = torch.where(lengths % 2 == 0, 2, ids[torch.arange(n), lengths - 1])
    ids[~mask] = tok.pad_token_id
    ro = grpo.Rollout(records, prompts, n_images, group_size, ids, mask)
    ro.advantages = torch.randn(n, generator=g)
    return ro


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
    p = row // ro.group_size
    keep = ro.prompts["attention_mask"][p].bool()
    ids_p, mm_p = ro.prompts["input_ids"][p][keep], ro.prompts["mm_token_type_ids"][p][keep]
    comp = ro.completions[row][ro.mask[row]]
    grid = ro.prompts["image_grid_thw"]
    i0 = sum(ro.images_per_prompt[:p])
    r0 = int(grid[:i0].prod(-1).sum())
    r1 = r0 + int(grid[i0:i0 + ro.images_per_prompt[p]].prod(-1).sum())
    ids = torch.cat([ids_p, comp])[None]
    dtype = next(model.parameters()).dtype
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False,
                   mm_token_type_ids=torch.cat([mm_p, torch.zeros_like(comp)])[None],
                   pixel_values=ro.prompts["pixel_values"][r0:r1].to(dtype),
                   image_grid_thw=grid[i0:i0 + ro.images_per_prompt[p]]).logits[0]
    lp = F.log_softmax(logits.to(torch.promote_types(dtype, torch.float32)) / temperature, -1)[len(ids_p) - 1:-1]
    return lp.gather(-1, comp[:, None])[:, 0]


def test_rollout_logprobs_equal_plain_full_logits(data):
    """The prompt + completion batch (left-padded prompts, right-padded completions, pixels repeated per
    sample, a two-image prompt, micro-batches sorted by length) gives each completion the log-probs of a
    plain unpadded forward with full logits; 0 outside the completion mask."""
    model, tok, ip = vlm.load_model("tiny", max_pixels=56 * 84)
    recs = common.read_jsonl(data)[:3]
    ro = fake_rollout(data, recs, tok, ip)
    assert ro.images_per_prompt == [1, 2, 1] and len(set(ro.mask.sum(1).tolist())) > 2
    cfg = cfg_for(data, data.parent / "unused", logprob_micro_batch_size=4)
    logp = grpo.rollout_logprobs(model, ro, cfg, CPU)
    with torch.no_grad():
        for row in range(len(ro.completions)):
            n = int(ro.mask[row].sum())
            assert torch.allclose(logp[row, :n], plain_logprobs(model, ro, row), atol=2e-5), row
    assert torch.equal(logp[~ro.mask], torch.zeros(int((~ro.mask).sum())))


def sgd_update(ro: grpo.Rollout, micro: int, data: Path) -> tuple:
    """Parameter change of one update() with SGD lr 1 (= −gradient) and the loss metrics."""
    model, tok, ip = vlm.load_model("tiny", max_pixels=56 * 84)
    cfg = cfg_for(data, data.parent / "unused", micro_batch_size=micro, logprob_micro_batch_size=micro,
                  max_grad_norm=1e9)
    ro.old_logp = grpo.rollout_logprobs(model, ro, cfg, CPU) + 0.4 * torch.randn(
        ro.mask.shape, generator=torch.Generator().manual_seed(3)) * ro.mask    # ratios ≠ 1: clipping active
    ro.ref_logp = ro.old_logp - 0.05 * ro.mask
    before = [p.detach().clone() for p in model.parameters()]
    m = grpo.update(model, torch.optim.SGD(model.parameters(), lr=1.0), ro, list(range(len(ro.mask))), cfg, CPU)
    return [p.detach() - b for p, b in zip(model.parameters(), before)], m


def test_micro_batch_split_gives_the_same_update(data):
    """One micro-batch or micro-batches of 1 and of 5 sequences: the same gradient (global token mean)."""
    _, tok, ip = vlm.load_model("tiny", max_pixels=56 * 84)
    ro = fake_rollout(data, common.read_jsonl(data)[:3], tok, ip)
    results = [sgd_update(ro, micro, data) for micro in (9, 1, 5)]
    (u0, m0) = results[0]
    for u, m in results[1:]:
        assert max(float((a - b).abs().max()) for a, b in zip(u0, u)) < 1e-6
        assert m["tokens"] == m0["tokens"] and abs(m["pg_loss"] - m0["pg_loss"]) < 1e-5
    assert m0["clip_high"] + m0["clip_low"] > 0 and max(float(a.abs().max()) for a in u0) > 0
    assert m0["entropy"] / m0["tokens"] > 0.1      # token-weighted sum of the policy's entropy


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
    ro = grpo.Rollout(common.read_jsonl(data)[:1], {}, [1], 4, ids, mask)
    grpo.score(ro, tok)
    assert ro.rewards.tolist() == pytest.approx([1.0, 0.9, 0.0, 0.1])
    assert ro.truncated.tolist() == [False, True, False, False] and ro.texts[2] == ""
    adv = grpo.group_advantages(ro.rewards, 4)
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
    ro = grpo.Rollout([rec], {}, [1], 2, ids, mask)
    grpo.score(ro, tok)
    assert ro.texts == [text, text] and ro.truncated.tolist() == [False, False]
    assert ro.rewards.tolist() == pytest.approx([1.0, 1.0])
    assert tasks.reward(text, "B", "position") == pytest.approx(0.1)      # without the problem: not option B


def test_resume_refuses_other_settings_in_one_line(data, tmp_path):
    """--resume with another lr, KL coefficient, clip, dual clip, group size or image bound is refused
    before anything is written, in one line naming the flag and both values (sft.py does the same)."""
    out = tmp_path / "run"
    grpo.train(cfg_for(data, out, max_steps=2, save_every=1, stop_after_steps=1, exclude="none"))
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    base = ["--data", str(data), "--out", str(out), "--resume", "--max-steps", "2", "--save-every", "1",
            "--group-size", "4", "--rollout-batch-size", "4", "--update-batch-size", "2", "--micro-batch-size", "4",
            "--max-new-tokens", "12", "--min-pixels", str(56 * 56), "--max-pixels", str(56 * 84), "--lr", "1e-3",
            "--exclude", "none", "--no-activation-checkpointing", "--save-dtype", "float32"]
    changes = [("--lr", "2e-3"), ("--kl-coef", "0.05"), ("--clip-low", "0.1"), ("--clip-high", "0.2"),
               ("--dual-clip", "2.0"), ("--group-size", "2"), ("--max-pixels", str(56 * 112))]
    for flag, value in changes:
        with pytest.raises(SystemExit) as e:
            grpo.main(base + [flag, value])
        msg = str(e.value)
        assert msg.startswith("grpo.py: error: --resume:") and "\n" not in msg, msg
        assert (flag if flag != "--max-pixels" else "--max-pixels)") in msg and "(now " in msg, (flag, msg)
        assert sorted(p.relative_to(out) for p in out.rglob("*")) == before, flag


def test_non_finite_gradient_skips_the_step():
    model, _, _ = vlm.load_model("tiny")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    next(model.parameters()).grad[0] = float("nan")
    m = grpo.optimizer_step(model, opt, 1.0)
    assert m["skipped"] == 1 and not math.isfinite(m["grad_norm"])
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    assert all(p.grad is None for p in model.parameters()) and not opt.state


# ----------------------------------------------------------------------------- command line
def test_help_lists_every_knob():
    r = subprocess.run([sys.executable, str(HERE / "grpo.py"), "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    for name in ("--group-size", "--rollout-batch-size", "--update-batch-size", "--kl-coef", "--clip-high",
                 "--max-new-tokens", "--resume", "paper: 5", "paper: 0.3"):
        assert name in r.stdout.replace("\n", " "), name


def test_bad_input_is_one_line_and_writes_nothing(data, tmp_path, capsys):
    out = tmp_path / "out"
    bad = [([], "--data is required"),
           (["--data", str(tmp_path / "nope.jsonl")], "no such file"),
           (["--data", str(data), "--model", "no-such-model"], "unknown --model"),
           (["--data", str(data), "--group-size", "1"], "--group-size"),
           (["--data", str(data), "--min-pixels", "5000", "--max-pixels", "3000"], "--min-pixels")]
    for args, message in bad:
        with pytest.raises(SystemExit) as e:
            grpo.main(["--out", str(out)] + args)
        assert message in str(e.value) and "\n" not in str(e.value), (args, e.value)
        assert not out.exists()
    missing = write_jsonl(data.parent / "missing.jsonl", [dict(common.read_jsonl(data)[0], id="lost", images=["x.png"])])
    with pytest.raises(SystemExit, match="record lost: image .*x.png not found"):
        grpo.main(["--out", str(out), "--data", str(missing)])
    out.mkdir()
    (out / "metrics.jsonl").write_text("")
    with pytest.raises(SystemExit, match="already holds a run"):
        grpo.main(["--out", str(out), "--data", str(data)])
    assert [p.name for p in out.iterdir()] == ["metrics.jsonl"]


# ----------------------------------------------------------------------------- runs
def test_resume_equals_uninterrupted(data, tmp_path):
    """A run stopped after step 2 and resumed ends with the weights of a run that never stopped (same data
    position and samples: the sampling seed is a function of the step); unfinished .tmp folders are ignored.
    Sampling goes through engine.RolloutEngine, refreshed from the updated policy before every rollout."""
    kw = dict(max_steps=3, save_every=2, exclude="none", rollout_engine="engine")   # the CUDA sampler, on CPU
    full = grpo.train(cfg_for(data, tmp_path / "full", **kw))
    grpo.train(cfg_for(data, tmp_path / "cut", stop_after_steps=2, **kw))
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


def test_grpo_raises_the_reward_after_a_cold_start(tmp_path):
    """Cold start: SFT teaches the format with answers A and B half and half (the image does not tell which).
    GRPO on the same questions, where A is always right, must then raise the mean reward clearly within 15
    steps (fixed seeds: 0.25 → ~0.8 here)."""
    recs = letter_records(tmp_path, 8)
    for i, r in enumerate(recs):
        side, letter = ("left", "A") if i % 2 == 0 else ("right", "B")
        r["response"] = f"<think>{side}</think> \\boxed{{{letter}}}"
    sft.train(sft.Config(model="tiny", data=str(write_jsonl(tmp_path / "sft.jsonl", recs)), out=str(tmp_path / "sft"),
                         max_steps=60, lr=1e-2, warmup_ratio=0.0, global_batch_size=8, micro_batch_size=8,
                         activation_checkpointing=False, save_every=0, save_dtype="float32",
                         min_pixels=56 * 56, max_pixels=56 * 84))
    train = write_jsonl(tmp_path / "train.jsonl", [dict(r, id=f"g{i}", answer="A") for i, r in enumerate(recs)])
    rows = grpo.train(cfg_for(train, tmp_path / "grpo", model=str(tmp_path / "sft"), max_steps=15, group_size=4,
                              rollout_batch_size=4, update_batch_size=4, max_new_tokens=16, kl_coef=0.0))
    rewards = [r["reward"] for r in rows]
    start, end = sum(rewards[:3]) / 3, sum(rewards[-5:]) / 5
    assert end > start + 0.25 and end > 0.6, rewards


# ----------------------------------------------------------------------------- FSDP2 (one torchrun launch)
def first_update(ro: grpo.Rollout, model, ref, opt, cfg: grpo.Config) -> dict:
    """Score → advantages (from rewards stored in ro) → old / ref log-probs → one update."""
    ro.advantages = grpo.group_advantages(ro.rewards, ro.group_size)
    ro.old_logp = grpo.rollout_logprobs(model, ro, cfg, CPU)
    ro.ref_logp = grpo.rollout_logprobs(ref, ro, cfg, CPU)
    return grpo.update(model, opt, ro, list(range(len(ro.mask))), cfg, CPU)


def grpo_worker(folder: Path) -> None:
    """Runs under torchrun with 2 ranks: (a) each rank samples its 2 prompts on the sharded tiny model and
    makes the first update (SGD lr 1 = −gradient, random rewards so every group has a signal), saving its
    rollout and the updated weights; (b) the grpo.py training loop: 2 steps with a checkpoint each."""
    import faulthandler
    faulthandler.dump_traceback_later(240, exit=True)   # never hang CI
    torch.set_num_threads(1)
    d = common.setup_dist(0)
    data = folder / "train.jsonl"
    cfg = cfg_for(data, folder / "unused", micro_batch_size=3, logprob_micro_batch_size=5, max_grad_norm=1e9)
    s = grpo.setup_models(cfg, d)
    torch.manual_seed(grpo.step_seed(0, 0, d.rank))
    ro = grpo.rollout(engine.generate, s["model"], common.read_jsonl(data)[2 * d.rank:2 * d.rank + 2], folder,
                      s["tok"], s["ip"], cfg)
    grpo.score(ro, s["tok"])
    ro.rewards = torch.rand(len(ro.rewards))
    first_update(ro, s["model"], s["ref"], torch.optim.SGD(s["model"].parameters(), lr=1.0), cfg)
    (folder / f"rollout{d.rank}.json").write_text(json.dumps(
        {"completions": ro.completions.tolist(), "mask": ro.mask.tolist(), "rewards": ro.rewards.tolist()}))
    vlm.save_hf(s["model"], s["tok"], s["ip"], str(folder / "two_ranks"), dtype=torch.float32)
    grpo.train(cfg_for(data, folder / "run", max_steps=2, save_every=1, exclude="none"))   # destroys the group


def test_two_ranks_first_update_equals_one_process(data, tmp_path):
    """2 gloo ranks with FSDP2: the first update (each rank its own prompts, token mean over both ranks) equals
    the update of one process on all 4 prompts with the same completions; the training loop under torchrun
    completes rollout + update + checkpoint."""
    folder = data.parent
    run_two_ranks(HERE / "test_grpo.py", "grpo-worker", str(folder))
    run = folder / "run"
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert (run / "model.safetensors").exists() and (run / "hf" / "step_00000002" / "model.safetensors").exists()
    assert common.latest_checkpoint(str(run)).name == "step_00000002"
    parts = [json.loads((folder / f"rollout{k}.json").read_text()) for k in range(2)]
    width = max(len(p["completions"][0]) for p in parts)
    pad = lambda rows, v: [row + [v] * (width - len(row)) for row in rows]
    model, tok, ip = vlm.load_model("tiny", max_pixels=56 * 84)
    ref = vlm.load_model("tiny")[0].requires_grad_(False)
    recs = common.read_jsonl(data)[:4]
    prompts, n_images = grpo.encode_prompts(recs, folder, tok, ip)
    ro = grpo.Rollout(recs, prompts, n_images, 4, torch.tensor(sum((pad(p["completions"], 0) for p in parts), [])),
                      torch.tensor(sum((pad(p["mask"], False) for p in parts), [])))
    ro.rewards = torch.tensor(sum((p["rewards"] for p in parts), []))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = cfg_for(data, folder / "unused", max_grad_norm=1e9)
    first_update(ro, model, ref, torch.optim.SGD(model.parameters(), lr=1.0), cfg)
    two = load_file(str(folder / "two_ranks" / "model.safetensors"))
    one = model.state_dict()
    deltas = {k: (two[k] - before[k], one[k] - before[k]) for k in two}
    assert max(float(b.abs().max()) for _, b in deltas.values()) > 1e-3            # the update did something
    assert max(float((a - b).abs().max()) for a, b in deltas.values()) < 1e-5


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "grpo-worker":
    grpo_worker(Path(sys.argv[2]))


# ----------------------------------------------------------------------------- fast paths against the plain ones
@pytest.mark.parametrize("kind", ["tiny", "tiny-qwen3"])
def test_shared_prompt_logprobs_and_gradients_equal_the_full_forward(data, kind):
    """vlm.prefix_logprobs (each distinct prompt once, completions on its keys / values; rows out of group
    order, a two-image prompt, activation checkpointing on) gives the log-probs, entropies and gradients of
    token_logprobs on the concatenated prompt + completion batch (sequence_batch, vision once per prompt)."""
    model, tok, ip = vlm.load_model(kind, max_pixels=56 * 84)
    vlm.enable_activation_checkpointing(model)
    model.train()
    ro = fake_rollout(data, common.read_jsonl(data)[:3], tok, ip)
    rows = [4, 0, 8, 3, 5, 1]
    w = int(ro.mask[rows].sum(1).max())
    weight = torch.randn(len(rows), w, generator=torch.Generator().manual_seed(1))

    def run(fn):
        model.zero_grad(set_to_none=True)
        logp, ent = fn()
        (logp * weight).sum().backward()
        return logp.detach(), ent, [p.grad.clone() for p in model.parameters()]

    def full():
        batch, labels, start = grpo.sequence_batch(ro, rows)
        logp, ent = vlm.token_logprobs(model, batch, labels, with_entropy=True)
        return logp[:, start:], ent[:, start:]

    distinct = list(dict.fromkeys(r // ro.group_size for r in rows))
    shared = lambda: vlm.prefix_logprobs(model, grpo.prompt_batch(ro, distinct),
                                         [distinct.index(r // ro.group_size) for r in rows], ro.completions[rows, :w],
                                         ro.mask[rows, :w], with_entropy=True)
    (lp_a, ent_a, g_a), (lp_b, ent_b, g_b) = run(full), run(shared)
    assert torch.allclose(lp_a, lp_b, atol=1e-5) and torch.allclose(ent_a, ent_b, atol=1e-4)
    assert torch.equal(lp_b[~ro.mask[rows, :w]], torch.zeros(int((~ro.mask[rows, :w]).sum())))
    for a, b in zip(g_a, g_b):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("kind", ["tiny", "tiny-qwen3"])
def test_plain_decode_samples_what_transformers_generate_samples(data, kind, monkeypatch):
    """engine.generate's own decode loop (plain model, image prompts) draws the same tokens as transformers'
    generate for the same seed, sampling G per prompt and greedy."""
    calls = []
    monkeypatch.setattr(engine, "_plain_decode", lambda *a, _f=engine._plain_decode: calls.append(1) or _f(*a))
    model, tok, ip = vlm.load_model(kind, max_pixels=56 * 84)
    prompts, _ = grpo.encode_prompts(common.read_jsonl(data)[:3], data.parent, tok, ip)
    for sample in (dict(do_sample=True, num_return_sequences=3), dict(do_sample=False)):
        torch.manual_seed(0)
        ours, mask = engine.generate(model, prompts, tok, max_new_tokens=10, **sample)
        gc = engine.generation_config(tok, 10, **sample)
        model.generation_config = gc
        torch.manual_seed(0)
        with torch.no_grad():
            theirs = model.eval().generate(**{k: v for k, v in prompts.items()}, generation_config=gc)
        theirs, _ = engine.completion_mask(theirs[:, prompts["input_ids"].shape[1]:], 2, tok.pad_token_id)
        assert torch.equal(ours, theirs), sample
    assert len(calls) == 2


def test_plain_decode_stops_at_any_stop_token(data, monkeypatch):
    """The lean loop ends a row at any of the stop tokens (a list: <|im_end|> and <|endoftext|>) and stops
    decoding once every row has ended, as transformers' loop does: here the first greedy token is made a stop
    token, so both return one column."""
    model, tok, ip = vlm.load_model("tiny", max_pixels=56 * 84)
    prompts, _ = grpo.encode_prompts(common.read_jsonl(data)[:1], data.parent, tok, ip)
    first = int(engine.generate(model, prompts, tok, max_new_tokens=1)[0][0, 0])
    monkeypatch.setattr(engine, "stop_token_ids", lambda t: [tok.eos_token_id, first])
    ours, mask = engine.generate(model, prompts, tok, max_new_tokens=40)
    gc = engine.generation_config(tok, 40)
    assert gc.eos_token_id == [tok.eos_token_id, first]
    model.generation_config = gc
    with torch.no_grad():
        theirs = model.eval().generate(**prompts, generation_config=gc)[:, prompts["input_ids"].shape[1]:]
    assert ours.shape == theirs.shape == (1, 1) and torch.equal(ours, theirs) and mask.all()
