"""Wiring tests: grpo.update() / grpo.train() / sft.train() through their real call paths on the tiny model,
against an independent float64 computation (plain unpadded forwards with full logits, log_softmax(z / τ),
our own clipped objective, k3 KL and token mean), so that an error in the plumbing around the (separately
tested) GRPO / SFT math fails a test; and grpo.train()'s rollouts decode the policy's current weights.

    python -m pytest -q test_wiring.py

Mutations put into a scratch copy of the code (commit 351f9bd) one at a time, all 26 checked to fail here:
the 17 of the earlier code moved to where that logic lives now, then 9 on the shared-prompt log-prob path
(each group one row: group_batch, group_attention, select_prompts), the dummy micro-batches and the decoder's
refresh. "here" are the tests of this file that fail (update = test_update_equals_float64_reference, on the
plain and on the FSDP2 policy in every row; schedule = test_train_schedule_old_ref_and_minibatches; refresh =
test_train_rollouts_decode_the_current_policy; sft = test_sft_train_equals_float64_reference; sft-ranks =
test_sft_train_step_two_ranks_equal_float64_mean); "elsewhere" those of test_grpo.py (g-) and test_train.py
(t-) that fail too (g-split = test_micro_batch_split_gives_the_same_update, g-2ranks =
test_two_ranks_first_update_equals_one_process, g-group = test_group_logprobs_and_gradients_equal_the_full_forward
[tiny, tiny-qwen3], g-text = test_group_logprobs_of_text_only_prompts, g-rollout =
test_rollout_logprobs_equal_plain_full_logits, g-learns = test_grpo_raises_the_reward_after_a_cold_start, t-mb
= test_micro_batch_invariance, t-select = test_select_prompts_and_buckets, test_select_prompts_and_engine_with_videos).

  mutation                                                                 | here             | elsewhere
  -------------------------------------------------------------------------+------------------+-------------------
  update(): clip_low passed as clip_high (cfg.clip_low twice)              | update           |
  update(): clip bounds swapped (clip_high, clip_low)                      | update           |
  update(): KL term dropped (ref_logp None)                                | update           |
  update(): KL term dropped (kl_coef 0)                                    | update           |
  update(): training log-probs at τ 1 (its group_logprobs call at 1)       | update, schedule |
  vlm.optimizer_step(): gradient clipping off (max norm ∞)                 | update, sft      | g-learns
  update(): old_logp ignored (old = logp.detach(), ratio 1)                | update, schedule | g-split
  update(): normalizer N_global instead of N_global / world                | update           | g-2ranks
  train(): old log-probs never computed (old = None)                       | schedule         |
  train(): old log-probs recomputed before every update                    | schedule         |
  train(): every update of a rollout on its first mini-batch               | schedule         |
  setup_run(): reference = the trained policy (ref = model)                | schedule         |
  train(): ref log-probs computed with the policy                          | schedule         |
  rollout_logprobs(): old / ref log-probs at τ 1 (its group_logprobs at 1) | schedule         |
  sft.train_step(): gradient clipping off (optimizer_step(…, ∞, lr))       | sft              | g-learns
  sft.train_step(): token mean per micro-batch                             | sft, sft-ranks   | t-mb
  sft.train_step(): normalizer N_global instead of N_global / world        | sft-ranks        |
  -------------------------------------------------------------------------+------------------+-------------------
  group_rows(): select_prompts(…, groups[::-1]) (each group's              | update           | g-split, g-2ranks
    completions after another group's prompt)                              |                  |
  vlm.select_prompts(): the prompts in batch order, not in the order       | –                | g-split, g-2ranks,
    asked for                                                              |                  | t-select
  vlm.group_logprobs(): the slots of group b built on prompt b+1 (the      | update           | g-group, g-text,
    completions rolled by one group, their rows kept)                      |                  | g-split, g-2ranks
  vlm.group_attention(): slot mask dropped (a slot attends to the          | update, schedule | g-group, g-text,
    earlier slots of its row too)                                          |                  | g-split, g-rollout
  vlm.group_batch(): slot positions off by one (the first completion       | update, schedule | g-group, g-text,
    token at the prompt's largest position, not + 1)                       |                  | g-rollout
  vlm.group_logprobs(): τ only when with_entropy is False (old / ref       | update, schedule | g-group
    at τ, the update at 1)                                                 |                  |
  vlm.group_logprobs(): τ only when with_entropy is True (the update       | schedule         | g-group
    at τ, old / ref at 1)                                                  |                  |
  update(): a dummy micro-batch with weight 1 (`& bool(mb)` dropped)       | update (*)       |
  train(): no run.engine.refresh(model) before a rollout (FSDP2            | refresh (*)      |
    policy: the engine's copy decodes stale weights)                       |                  |

(*) no test caught these two before this file's simulated ranks ran dummy micro-batches and before the refresh
test: a CPU policy without FSDP is decoded in place (nothing to refresh), and test_grpo's two ranks never run a
dummy (token_micro_batches halves a two-group pack before it appends an empty one).

Everything runs on CPU, deterministic (fixed seeds, fp32 code under test, fp64 references).
"""
import copy
import os
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("SPATIAL_SSRL_DEVICE", "cpu")

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers.utils import logging as hf_logging

import grpo
import common
import sft
import vlm
from test_grpo import cfg_for, fake_rollout, plain_logprobs, write_jsonl
from test_grpo import data  # noqa: F401,F811  (a pytest fixture, used by name)
from test_train import two_colour_records

hf_logging.disable_progress_bar()
CPU = torch.device("cpu")
TAU = 0.7          # sampling temperature ≠ 1 everywhere here
KL = 0.5           # large β so that the KL term is a sizable part of the gradient


pytestmark = pytest.mark.usefixtures("one_thread")   # conftest.py




# ----------------------------------------------------------------------------- float64 references
def f64(model):
    """A float64 copy of a model (the reference never shares a parameter with the model under test)."""
    return copy.deepcopy(model).double()


def logprobs64(model, ro: grpo.Rollout, row: int, temperature: float) -> torch.Tensor:
    """log p of one completion's tokens under a float64 model: one unpadded forward of its own prompt + the
    completion, its own images only, full logits, log_softmax(z / τ) in float64 (differentiable;
    test_grpo.plain_logprobs)."""
    lp = plain_logprobs(model, ro, row, temperature)
    assert lp.dtype == torch.float64
    return lp


def all_logprobs64(model, ro: grpo.Rollout, temperature: float) -> torch.Tensor:
    """(N, L) float64 log-probs of every completion, 0 outside the mask (no grad)."""
    out = torch.zeros(ro.mask.shape, dtype=torch.float64)
    with torch.no_grad():
        for row in range(len(ro.mask)):
            out[row, :int(ro.mask[row].sum())] = logprobs64(model, ro, row, temperature)
    return out


def grpo_loss64(model, ro: grpo.Rollout, rows: list, adv, old, ref, c: grpo.Config) -> torch.Tensor:
    """Our own GRPO objective in float64: PPO clip (1 − ε_lo, 1 + ε_hi), dual clip for A < 0, k3 KL to
    `ref` with β, summed over the completion tokens of `rows` and divided by their count."""
    total, n = torch.zeros((), dtype=torch.float64), int(ro.mask[rows].sum())
    for row in rows:
        k = int(ro.mask[row].sum())
        lp = logprobs64(model, ro, row, c.temperature)
        o, r, a = old[row, :k].double(), ref[row, :k].double(), float(adv[row])
        ratio = torch.exp(torch.clamp(lp - o, -20, 20))
        surrogate = torch.maximum(-a * ratio, -a * torch.clamp(ratio, 1 - c.clip_low, 1 + c.clip_high))
        if a < 0:
            surrogate = torch.minimum(surrogate, torch.full_like(surrogate, -a * c.dual_clip))
        d = torch.clamp(r - lp, -20, 20)
        total = total + (surrogate + c.kl_coef * torch.clamp(torch.exp(d) - d - 1, max=10)).sum()
    return total / n


def gradient64(model, loss_fn) -> list:
    model.zero_grad(set_to_none=True)
    loss_fn().backward()
    return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in model.parameters()]


def clipped_sgd_delta(grads: list, max_norm: float) -> list:
    """Parameter change of SGD lr 1 after torch's clip_grad_norm_: −g · min(1, c / (‖g‖ + 1e-6))."""
    norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
    coef = min(1.0, max_norm / (float(norm) + 1e-6))
    return [-coef * g for g in grads]


def rel_err(got: list, want: list) -> float:
    """max |got − want| / max |want| over all parameters (got fp32, want fp64)."""
    scale = max(float(w.abs().max()) for w in want)
    return max(float((g.double() - w).abs().max()) for g, w in zip(got, want)) / scale


def perturbed(model, scale: float, seed: int):
    """A copy of the model with every weight moved by Gaussian noise (a reference ≠ the policy)."""
    m = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return m.requires_grad_(False)


def full(t: torch.Tensor) -> torch.Tensor:
    """A parameter as a plain tensor (an FSDP2 DTensor gathered)."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


# ----------------------------------------------------------------------------- update()
# log r per token: below 1 − ε_lo (0.9) and below 1 − ε_hi (0.5), inside, between 1 + ε_lo and 1 + ε_hi, above
# 1 + ε_hi (1.5) and above the dual clip 3 (log 1.0986); with the advantages below every case meets both signs
LOG_RATIOS = (-0.4, 0.25, 1.2, -0.8, 0.6, 0.05, -0.2)


def designed_rollout(data: Path, model, tok, ip, c: grpo.Config) -> tuple:
    """A fixed rollout (3 prompts × G 3, ragged completions) and its (advantages, old, ref) log-probs: the old
    ones put the per-token ratios through LOG_RATIOS (both PPO clips and the dual clip active), ref from a
    separate perturbed model, advantages of both signs."""
    ro, _ = fake_rollout(data, common.read_jsonl(data)[:3], tok, ip)
    now = all_logprobs64(f64(model), ro, c.temperature)
    grid = torch.tensor(LOG_RATIOS, dtype=torch.float64)
    rows, cols = torch.meshgrid(torch.arange(ro.mask.shape[0]), torch.arange(ro.mask.shape[1]), indexing="ij")
    log_r = grid[(cols + 2 * rows) % len(grid)] * ro.mask                # row r, token t: LOG_RATIOS[t + 2r]
    old = ((now - log_r) * ro.mask).float()
    ref = all_logprobs64(f64(perturbed(model, 0.05, seed=11)), ro, c.temperature).float()
    adv = torch.tensor([1.5, -1.2, 0.4, -0.7, 2.0, -2.2, 0.9, -0.3, 0.6])
    return ro, adv, old, ref


@pytest.mark.parametrize("fsdp", [False, True])
def test_update_equals_float64_reference(data, monkeypatch, fsdp):
    """update() with ratio ≠ 1 (old log-probs given), KL to a separate reference (β 0.5), temperature 0.7,
    asymmetric clips, uneven micro-batches ([1, 2]: two groups, then [0]) and a gradient
    norm 3× the clip threshold moves the weights (SGD lr 1) exactly as −clip(∇L64), L64 our float64 objective
    over the whole mini-batch. The same groups split over 2 simulated ranks (world 2, all-reduced token count;
    3 micro-batches on each, as if a third rank needed them: rank 0 runs [1], [0] and a dummy, rank 1 [2] and
    two dummies, which must weigh 0) give −∇L64 unclipped as the FSDP mean of the two ranks' updates. Both on a
    plain policy and on an FSDP2-sharded one (one gloo rank, activation checkpointing: the path of every GPU
    run), so group_logprobs is checked on a sharded policy too."""
    model, tok, ip = vlm.load_model("tiny", max_pixels=56 * 84)
    c = cfg_for(data, data.parent / "unused", temperature=TAU, kl_coef=KL, clip_low=0.1, clip_high=0.5,
                micro_batch_tokens=240)
    ro, adv, old, ref = designed_rollout(data, model, tok, ip, c)
    assert grpo.micro_batches(ro, [0, 1, 2], c, CPU) == [[1, 2], [0]]     # two groups, then one
    rows = list(range(len(ro.mask)))
    m64 = f64(model)
    grads = gradient64(m64, lambda: grpo_loss64(m64, ro, rows, adv, old, ref, c))
    norm = float(torch.sqrt(sum((g ** 2).sum() for g in grads)))
    c.max_grad_norm = norm / 3                                           # the clip is active
    want = clipped_sgd_delta(grads, c.max_grad_norm)

    def policy_copy():
        policy = copy.deepcopy(model)
        if fsdp:
            vlm.enable_activation_checkpointing(policy)
            policy = vlm.place_model(policy.train(), common.Dist(), fsdp=True)
        return policy

    policy = policy_copy()
    before = [full(p).detach().clone() for p in policy.parameters()]
    m = grpo.update(policy, torch.optim.SGD(policy.parameters(), lr=1.0), ro, [0, 1, 2], adv, old, ref, c, CPU)
    got = [full(p).detach() - b for p, b in zip(policy.parameters(), before)]
    tok_n = m["tokens"]
    assert tok_n == int(ro.mask.sum())
    assert m["clip_high"] > 0 and m["clip_low"] > 0 and m["clip_dual"] > 0 and m["kl"] > 0.01 * tok_n
    assert abs(m["grad_norm"] - norm) < 1e-4 * norm
    assert rel_err(got, want) < 1e-4, rel_err(got, want)

    # two simulated ranks: rank 0 holds groups 0-1, rank 1 group 2, and a third rank is said to need 3
    # micro-batches, so rank 0 runs [1], [0], a dummy and rank 1 [2], two dummies; no clipping (it acts on the mean)
    c.max_grad_norm = 1e9
    n_global = float(ro.mask.sum())
    monkeypatch.setattr(grpo, "dist", SimpleNamespace(is_initialized=lambda: True, get_world_size=lambda: 2))
    monkeypatch.setattr(grpo, "all_reduce_sum", lambda x, device: n_global)
    monkeypatch.setattr(grpo, "all_reduce_max", lambda x, device: 3)
    assert grpo.micro_batches(ro, [0, 1], c, CPU) == [[1], [0], []]
    assert grpo.micro_batches(ro, [2], c, CPU) == [[2], [], []]
    deltas = []
    for share in ([0, 1], [2]):
        policy = policy_copy()
        m = grpo.update(policy, torch.optim.SGD(policy.parameters(), lr=1.0), ro, share, adv, old, ref, c, CPU)
        assert m["tokens"] == int(ro.mask[[r for g in share for r in range(3 * g, 3 * g + 3)]].sum())
        deltas.append([full(p).detach() - b for p, b in zip(policy.parameters(), before)])
    mean = [(a + b) / 2 for a, b in zip(*deltas)]
    assert rel_err(mean, [-g for g in grads]) < 1e-4, rel_err(mean, [-g for g in grads])


# ----------------------------------------------------------------------------- train(): the step schedule
def test_train_schedule_old_ref_and_minibatches(data, tmp_path, monkeypatch):
    """grpo.train() with 2 updates per rollout, KL on and τ 0.7, for 2 steps, recording every update() call:
    each rollout feeds 2 updates over disjoint halves of its groups; its old log-probs are computed once,
    before the first update, and equal the float64 log-probs (at τ) of the policy at rollout time, so the
    first update has ratio 1 and the second does not; its ref log-probs are those of the initial weights
    (at step 2 they differ from the policy's); the reference is a separate, frozen, unchanged model."""
    c = cfg_for(data, tmp_path / "run", max_steps=2, rollout_batch_size=4, update_batch_size=2, group_size=3,
                micro_batch_tokens=150, max_new_tokens=8, temperature=TAU, kl_coef=0.1, lr=1e-2, exclude="none")
    orig_setup, orig_update, seen, calls = grpo.setup_run, grpo.update, {}, []

    def setup_run(cfg, d):
        seen["run"] = orig_setup(cfg, d)
        return seen["run"]

    def update(model, optimizer, ro, groups, adv, old, ref, cfg, device):
        clone = lambda x: None if x is None else x.clone()                  # noqa: E731
        calls.append(dict(ro=ro, groups=list(groups), old=clone(old), ref=clone(ref),
                          before={k: v.detach().clone() for k, v in model.state_dict().items()}))
        calls[-1]["m"] = orig_update(model, optimizer, ro, groups, adv, old, ref, cfg, device)
        return calls[-1]["m"]

    def score(ro, tok, partial=False):   # the tiny random model never answers right: random rewards, signal
        sc = orig_score(ro, tok, partial)
        sc.rewards = torch.rand(len(sc.rewards), generator=rewards_rng)
        return sc
    orig_score, rewards_rng = grpo.score, torch.Generator().manual_seed(5)
    monkeypatch.setattr(grpo, "score", score)
    monkeypatch.setattr(grpo, "setup_run", setup_run)
    monkeypatch.setattr(grpo, "update", update)
    grpo.train(c)

    initial = vlm.load_model("tiny")[0]
    ref64 = f64(initial)
    assert len(calls) == 4, "2 steps × 2 updates per rollout"
    for first, second in (calls[0:2], calls[2:4]):
        ro, n = first["ro"], len(first["ro"].mask)
        assert second["ro"] is ro and n == 2 * c.group_size * 2
        assert sorted(first["groups"] + second["groups"]) == list(range(4)), "two distinct halves of the rollout"
        assert len(first["groups"]) == len(second["groups"]) == 2
        assert first["old"] is not None, "old log-probs must be computed when a rollout feeds 2 updates"
        assert torch.equal(first["old"], second["old"]), "old log-probs are computed once per rollout"
        policy_then, policy_mid = f64(initial), f64(initial)
        policy_then.load_state_dict(first["before"])
        policy_mid.load_state_dict(second["before"])
        at_rollout, mid = all_logprobs64(policy_then, ro, TAU), all_logprobs64(policy_mid, ro, TAU)
        assert float((first["old"].double() - at_rollout).abs().max()) < 1e-5, "old = policy at rollout time"
        assert float((mid - at_rollout).abs().max()) > 1e-3, "the first update changed the policy"
        ratio = lambda m: m["ratio"] / m["tokens"]                           # noqa: E731
        assert abs(ratio(first["m"]) - 1) < 1e-5 and abs(ratio(second["m"]) - 1) > 1e-4
        assert first["ref"] is not None and torch.equal(first["ref"], second["ref"])
        assert float((first["ref"].double() - all_logprobs64(ref64, ro, TAU)).abs().max()) < 1e-5
    assert float((calls[2]["old"] - calls[2]["ref"]).abs().max()) > 1e-3, "ref ≠ policy after a step"

    policy, ref = seen["run"].model, seen["run"].ref
    assert ref is not policy and not {p.data_ptr() for p in ref.parameters()} & {p.data_ptr() for p in policy.parameters()}
    assert not any(p.requires_grad for p in ref.parameters())
    assert all(torch.equal(p, q) for p, q in zip(ref.parameters(), initial.parameters())), "ref never changes"
    assert not all(torch.equal(p, q) for p, q in zip(policy.parameters(), initial.parameters()))


# ----------------------------------------------------------------------------- train(): the decoder follows the policy
def test_train_rollouts_decode_the_current_policy(data, tmp_path, monkeypatch):
    """grpo.train() with fsdp=True in one process (an FSDP2-sharded policy, so the engine decodes its own plain
    copy, as on every GPU run) for 2 steps: at each rollout the engine's copy equals the policy's full weights,
    and the policy at the second rollout is not the one of the first (step 1's update reached the decoder)."""
    c = cfg_for(data, tmp_path / "run", max_steps=2, rollout_batch_size=2, update_batch_size=2, group_size=2,
                max_new_tokens=4, kl_coef=0.0, lr=1e-2, fsdp=True, exclude="none")
    orig_setup, orig_rollout, orig_score, seen, at_rollout = grpo.setup_run, grpo.rollout, grpo.score, {}, []

    def setup_run(cfg, d):
        seen["run"] = orig_setup(cfg, d)
        return seen["run"]

    def rollout(engine, records, root, tok, ip, cfg):
        run = seen["run"]
        assert engine is run.engine and not engine.shared and vlm.is_fsdp(run.model)
        policy = {k: full(p).detach().clone() for k, p in run.model.named_parameters()}
        decoded = dict(engine.model.named_parameters())
        at_rollout.append((max(float((decoded[k] - v).abs().max()) for k, v in policy.items()), policy))
        return orig_rollout(engine, records, root, tok, ip, cfg)

    def score(ro, tok, partial=False):   # random rewards: every group has a signal, so step 1 changes the policy
        sc = orig_score(ro, tok, partial)
        sc.rewards = torch.rand(len(sc.rewards), generator=rng)
        return sc
    rng = torch.Generator().manual_seed(3)
    monkeypatch.setattr(grpo, "setup_run", setup_run)
    monkeypatch.setattr(grpo, "rollout", rollout)
    monkeypatch.setattr(grpo, "score", score)
    grpo.train(c)
    assert len(at_rollout) == 2
    assert [diff for diff, _ in at_rollout] == [0.0, 0.0], "the engine decodes the policy's current weights"
    (_, first), (_, second) = at_rollout
    assert max(float((first[k] - second[k]).abs().max()) for k in first) > 1e-3, "step 1 changed the policy"


# ----------------------------------------------------------------------------- sft: global token mean
SFT_BUDGET = 360   # tokens per micro-batch: the 5 records of sft_data (120-194 tokens) as 2, 2, 1


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory) -> Path:
    """5 records with responses of 5 different lengths (uneven micro-batches of 2, 2, 1)."""
    folder = tmp_path_factory.mktemp("wiring_sft")
    recs = two_colour_records(folder, 5)
    recs = [dict(r, response=r["response"] + " Indeed." * (3 * i)) for i, r in enumerate(recs)]
    return write_jsonl(folder / "sft.jsonl", recs)


def sft_gradient64(model, sft_data: Path) -> tuple:
    """∇ of the token mean of −log p over all supervised tokens of the whole file (float64, each record in
    its own unpadded forward with full logits, vision frozen as sft's default) and the token count."""
    _, tok, ip = vlm.load_model("tiny")
    m64 = f64(model)
    vlm.freeze_vision(m64)
    encoded = [vlm.encode_records([r], sft_data.parent, tok, ip, response=True) for r in common.read_jsonl(sft_data)]
    n = sum(int((b["labels"][:, 1:] != -100).sum()) for b in encoded)

    def loss():
        total = torch.zeros((), dtype=torch.float64)
        for b in encoded:
            inputs = {k: v for k, v in b.items() if k != "labels"}
            inputs["pixel_values"] = inputs["pixel_values"].double()
            logits = m64(**inputs, use_cache=False).logits[0, :-1]
            assert logits.dtype == torch.float64
            y = b["labels"][0, 1:]
            lp = F.log_softmax(logits, -1).gather(-1, y.clamp(min=0)[:, None])[:, 0]
            total = total - (lp * (y != -100)).sum()
        return total / n
    return gradient64(m64, loss), n


def test_sft_train_equals_float64_reference(sft_data, tmp_path, monkeypatch):
    """sft.train() for one step over the whole file (global batch 5 in micro-batches of 2, 2, 1, default
    frozen vision and activation checkpointing, the gradient norm 2× the clip) with SGD lr 1 in place of
    AdamW: the exported weights are the initial ones − clip(∇L64), L64 the float64 token mean over all 5."""
    model = vlm.load_model("tiny")[0]
    grads, _ = sft_gradient64(model, sft_data)
    norm = float(torch.sqrt(sum((g ** 2).sum() for g in grads)))
    want = clipped_sgd_delta(grads, norm / 2)
    monkeypatch.setattr(torch.optim, "AdamW", lambda params, lr, **kw: torch.optim.SGD(params, lr=lr))
    sft.train(sft.Config(model="tiny", data=str(sft_data), out=str(tmp_path / "run"), max_steps=1, lr=1.0,
                         warmup_ratio=0.0, global_batch_size=5, micro_batch_tokens=SFT_BUDGET, max_grad_norm=norm / 2,
                         save_every=0, lora_rank=0))   # --lora-rank 0: every LM weight
    saved = load_file(str(tmp_path / "run" / "model.safetensors"))
    names = [k for k, _ in model.named_parameters()]
    got = [saved[k] - p.detach() for k, p in zip(names, model.parameters())]
    assert any(float(w.abs().max()) == 0 for w in want) and any(float(w.abs().max()) > 0 for w in want)
    assert rel_err(got, want) < 1e-4, rel_err(got, want)


def test_sft_train_step_two_ranks_equal_float64_mean(sft_data, monkeypatch):
    """sft.rank_batches + sft.train_step on 2 simulated ranks (world 2, all-reduced token count; rank 1's one
    pack is split to match rank 0's two micro-batches): the mean of the two ranks' SGD lr 1 updates (FSDP's gradient mean) is
    −∇L64 of the whole batch."""
    model, tok, ip = vlm.load_model("tiny")
    vlm.freeze_vision(model)
    grads, n = sft_gradient64(model, sft_data)
    monkeypatch.setattr(sft, "dist", SimpleNamespace(is_initialized=lambda: True, get_world_size=lambda: 2))
    monkeypatch.setattr(sft, "all_reduce_sum", lambda x, device: float(n))   # only the token count matters
    recs, _ = sft.prepare_records(common.read_jsonl(sft_data), sft_data.parent, tok, ip, 4096, False)
    deltas = []
    for rank in (0, 1):
        batches = sft.rank_batches(recs, sft_data.parent, tok, ip, common.Dist(rank=rank, world_size=2), SFT_BUDGET)
        assert len(batches) == 2
        policy = copy.deepcopy(model)
        sft.train_step(policy, torch.optim.SGD([p for p in policy.parameters() if p.requires_grad], lr=1.0),
                       batches, 1.0, 1e9, CPU)
        deltas.append([p.detach() - q.detach() for p, q in zip(policy.parameters(), model.parameters())])
    mean = [(a + b) / 2 for a, b in zip(*deltas)]
    assert rel_err(mean, [-g for g in grads]) < 1e-4, rel_err(mean, [-g for g in grads])
