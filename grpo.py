"""GRPO with verifiable pretext rewards: the reinforcement-learning stage of Spatial-SSRL.

Stage 3 of Spatial-SSRL (arXiv 2510.27606, §3.3): starting from the cold-start SFT checkpoint, sample G answers
per pretext question, score them with the rule-based reward of tasks.py, normalise the rewards within each
group and push the policy towards the better answers with a clipped ratio and a KL penalty to the start.
train() reads top to bottom as the phases of a step: rollout → reward → advantage → old / ref log-probs →
updates → log → checkpoint. The plumbing comes from the support modules: engine.Engine (the decoder),
vlm.group_logprobs (log-probs with each group's prompt once), vlm.load_trainable (load, freeze, checkpointing,
FSDP2, AdamW), records (the data files), common (distributed setup, output folder, resume, checkpoints).

    python grpo.py --model runs/sft --data data/ssrl/train.jsonl --out runs/grpo
    torchrun --nproc_per_node 8 grpo.py --model runs/sft7b --data data/ssrl/train.jsonl --out runs/grpo7b
    torchrun --nproc_per_node 8 grpo.py ... --out runs/grpo7b --resume      # continue after a crash / kill

Outputs in --out: the final HF checkpoint, hf/step_N/ (HF exports every --save-every steps), checkpoints/step_N/
(resumable state), metrics.jsonl (one row per step: format_row() prints it), samples.jsonl (prompts, completions,
parsed answers, rewards), run.json (settings). Beyond the paper, off by default: --partial-credit (score()) and
--filter-groups (DAPO's dynamic sampling, keep_groups_with_signal()); docs/beyond-the-paper.md.

Paper → code (official code: training/GRPO, an EasyR1 fork; examples/config.yaml + spatial-ssrl_*.sh)
  G = 5 samples per prompt, temperature 1, top-p 1, top-k off    → rollout() → engine.Engine.generate()
  reward r = 0.9·accuracy + 0.1·format (math.py img_score)        → score() → tasks.reward_terms()
  A_i = (r_i − mean_g) / (std_g + 1e-6), unbiased std             → group_advantages()
  old log-probs recomputed by the actor, ref = frozen SFT init    → rollout_logprobs(), setup_run()
    (one update per rollout: on-policy, old = current log-probs detached, the old pass is skipped)
  clipped ratio ε 0.2 / 0.3, dual clip 3, k3 KL · 0.01            → policy_loss()
  token mean over the mini-batch, all ranks (dp_actor.py)          → update() (normalizer = N_global / world)
  256 prompts per rollout, 128 per optimizer step, 1 PPO epoch    → Config, batch_sizes(), train()
  AdamW lr 1e-6 constant, wd 0.01, clip 1.0, skip non-finite      → vlm.load_trainable(), vlm.optimizer_step()
  vision tower trained, gradient checkpointing                    → Config.freeze_vision = False
  10 epochs, save every 5 steps, keep 3                           → Config.epochs / save_every / keep_checkpoints
  images 512² … 2048² px, responses ≤ 2048 tokens                 → Config.min_pixels / max_pixels / max_new_tokens

Deviations from the paper and the official code
  1. Rollouts come from our own decoder (engine.Engine: on CUDA a bf16 copy of the policy, a static KV cache
     and a compiled step) instead of vLLM; vision tokens are suppressed instead of a −100 logit bias.
  2. Log-probs (old, reference and the update) run each group as one row, the prompt and its images once and
     the G completions after it, each seeing only the prompt and itself (vlm.group_logprobs; EasyR1 repeats
     the prompt per sample). The same numbers up to float rounding, gradients included.
  3. A completion that hits --max-new-tokens without an end token gets format 0 (it is still scored for
     accuracy and trained on); the official reward scores the truncated text like any other.
  4. A group whose G rewards are all equal gets advantages exactly 0 (float32 mean / std would leave ±0.06).
  5. Groups stay on the rank that sampled them (no sequence balancing across ranks). Micro-batches are cut by
     a token budget (--micro-batch-tokens; EasyR1: dynamic batching); the loss is the global token mean either way.
  6. No prompt-length filter (max_prompt_length 4096): prompt length is bounded by --max-pixels. Records used
     by the cold start (ids in sft.jsonl next to --data) are left out of RL.
  7. The sampling RNG is re-seeded from (seed, step, rank) every step, so --resume continues with exactly the
     samples an uninterrupted run draws; the data order is a pure function of (seed, epoch).
  8. No validation during training (the official val set is the first 10k training rows); use evaluate.py.
"""
import argparse
import dataclasses
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

import tasks
from common import (BadRecord, SetupError, all_reduce_max, all_reduce_sum, append_jsonl, cli_main, config_parser,
                    dist_session, epoch_order, is_main, knob, open_run, out_dir_mode, print0, publish_step_folder,
                    read_jsonl, read_run_info, save_state, token_micro_batches)
from engine import Engine, stop_token_ids
from records import check_record, read_records
from vlm import (encode_records, group_logprobs, load_model, load_trainable, optimizer_step, place_model, save_hf,
                 select_prompts)


# ----------------------------------------------------------------------------- config
# Settings with one right value, fixed here instead of offered as options:
ADV_EPS = 1e-6                 # ε in A = (r − mean) / (std + ε), the paper's and EasyR1's: it only keeps A finite
TOP_K = 0                      # rollouts sample the whole distribution (the paper: top-k off, top-p 1, τ 1)
ROLLOUT_PROMPTS_PER_CALL = 8   # prompts decoded together on a GPU: one compiled shape, a KV cache of 8 × G rows
FILTER_TRIES = 3               # --filter-groups: extra rollouts per step at most (then the dropped groups fill in)
SAMPLES_PER_LOG = 10           # completions written to samples.jsonl each time (EasyR1's 10)

USAGE_EXAMPLES = """examples:
  python grpo.py --model runs/sft-tiny --data data/ssrl/train.jsonl --out runs/grpo-tiny --max-steps 30 \\
      --rollout-batch-size 16 --update-batch-size 16 --group-size 4 --max-new-tokens 320 \\
      --min-pixels 3136 --max-pixels 12544 --lr 1e-4
  torchrun --nproc_per_node 8 grpo.py --model runs/sft7b --data data/ssrl/train.jsonl --out runs/grpo7b
  torchrun --nproc_per_node 8 grpo.py ... --out runs/grpo7b --resume   # continue from OUT/checkpoints

Records whose id is in the cold-start sft.jsonl next to --data are left out (--exclude)."""


@dataclass
class Config:
    model: str = knob("tiny", "cold-start checkpoint: local HF dir, HF id, or 'tiny' / 'tiny-qwen3'")
    trust_remote_code: bool = knob(False, "run the model folder's own model code (config.json auto_map); off by "
                                          "default, as in transformers")
    data: str = knob("", "REQUIRED: train.jsonl from make_data.py (id, task, problem, answer, images), or the "
                       "release's spatialssrl.parquet (images from images/ or images.zip beside it; needs pyarrow)")
    out: str = knob("runs/grpo", "output folder (new or empty, unless --resume or --overwrite)")
    exclude: str = knob("auto", "jsonl whose ids are left out ('auto': sft.jsonl next to --data; 'none': keep all)")
    epochs: int = knob(10, "passes over the data (paper: 10)")
    max_steps: int = knob(0, "stop after this many rollout steps (0: epochs decide)")
    group_size: int = knob(5, "samples per prompt G (paper: 5)")
    rollout_batch_size: int = knob(256, "prompts per rollout step over all ranks (paper: 256)")
    update_batch_size: int = knob(128, "prompts per optimizer step over all ranks (paper: 128, so 2 updates/rollout)")
    micro_batch_tokens: int = knob(16384, "tokens per forward on one rank (groups × padded group length)")
    max_new_tokens: int = knob(2048, "longest completion (paper: 2048)")
    temperature: float = knob(1.0, "sampling temperature, also divides the logits of every log-prob (paper: 1.0)")
    top_p: float = knob(1.0, "nucleus sampling (paper: 1.0 = off)")
    lr: float = knob(1e-6, "AdamW learning rate, constant (paper: 1e-6)")
    weight_decay: float = knob(0.01, "AdamW weight decay (paper: 0.01)")
    adam_betas: tuple = knob((0.9, 0.999), "AdamW betas (paper: 0.9 0.999)")
    max_grad_norm: float = knob(1.0, "gradient-norm clip; a step with a non-finite norm is skipped (paper: 1.0)")
    clip_low: float = knob(0.2, "ratio clip below, 1 − ε_low (paper: 0.2)")
    clip_high: float = knob(0.3, "ratio clip above, 1 + ε_high (paper: 0.3)")
    dual_clip: float = knob(3.0, "dual-clip constant c for negative advantages (paper: 3.0)")
    kl_coef: float = knob(0.01, "coefficient of the k3 KL to the reference model; 0 = no reference (paper: 0.01)")
    min_pixels: int = knob(512 * 512, "smallest image area after resizing (paper: 512²)")
    max_pixels: int = knob(2048 * 2048, "largest image area after resizing (paper: 2048²)")
    freeze_vision: bool = knob(False, "freeze the vision tower (paper: trained during RL)")
    activation_checkpointing: bool = knob(True, "non-reentrant activation checkpointing of the trained blocks")
    fsdp: bool = knob(False, "shard with FSDP2 in one CPU process too (always on for GPU or >1 rank)")
    partial_credit: bool = knob(False, "Visual Jigsaw's partial credit (arXiv 2509.25190; not in the paper): shuffle and "
                                       "depth answers score the fraction of positions right")
    filter_groups: bool = knob(False, "DAPO's dynamic sampling (arXiv 2503.14476; not in the paper): drop the groups "
                                      "whose G rewards are all equal and refill from fresh prompts")
    shuffle: bool = knob(True, "shuffle the prompts every epoch (paper: true)")
    seed: int = knob(1, "seed of the data order and the sampling (paper: 1)")
    save_every: int = knob(5, "HF export + resumable state every N steps, and at the end (paper: 5; 0 = end only)")
    keep_checkpoints: int = knob(3, "HF exports and resumable states kept on disk (paper: 3)")
    sample_every: int = knob(5, "append rank 0's first prompts and completions to samples.jsonl every N steps")
    resume: bool = knob(False, "continue from the newest complete checkpoint in OUT/checkpoints (same settings)")
    overwrite: bool = knob(False, "delete an earlier grpo.py run in --out and start over")

    def __post_init__(self):
        for name in ("group_size", "rollout_batch_size", "update_batch_size", "micro_batch_tokens", "max_new_tokens",
                     "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise SetupError(f"--{name.replace('_', '-')} must be at least 1")
        if self.group_size < 2:
            raise SetupError("--group-size must be at least 2 (a group of one has no baseline)")
        if not (0 <= self.clip_low < 1 and self.clip_high >= 0 and self.dual_clip > 1):
            raise SetupError("need 0 ≤ --clip-low < 1, --clip-high ≥ 0 and --dual-clip > 1")
        if self.temperature <= 0 or not 0 < self.top_p <= 1 or self.kl_coef < 0:
            raise SetupError("need --temperature > 0, 0 < --top-p ≤ 1, --kl-coef ≥ 0")
        if not 0 < self.min_pixels <= self.max_pixels:
            raise SetupError(f"need 0 < --min-pixels ({self.min_pixels}) ≤ --max-pixels ({self.max_pixels})")
        if not (math.isfinite(self.lr) and self.lr >= 0):          # torch would say so only after loading the model
            raise SetupError(f"--lr {self.lr}: must be a number ≥ 0 (paper: 1e-6)")
        if not self.data:
            raise SetupError("--data is required (train.jsonl from make_data.py)")


def build_parser() -> argparse.ArgumentParser:
    return config_parser(Config, "grpo.py", __doc__.split("\n")[0], USAGE_EXAMPLES, {"data": "TRAIN_JSONL"})


# ----------------------------------------------------------------------------- pure math
def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """GRPO advantage of every completion from the rewards of its group.

    A_i = (r_i − mean_g r) / (std_g r + eps), std with Bessel's correction (n − 1), as verl/EasyR1.
    rewards: (N,) with groups in consecutive rows (rows i·G … i·G+G−1 = prompt i). Returns (N,) fp32.
    A group whose rewards are all equal gets A = 0 exactly (no learning signal)."""
    if group_size < 2 or rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards cannot be split into groups of {group_size} (need G ≥ 2)")
    r = rewards.float().view(-1, group_size)                       # (P, G)
    a = (r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + eps)
    equal = (r == r[:, :1]).all(1, keepdim=True)                   # float32 mean/std would leave ±0.056
    return torch.where(equal, torch.zeros_like(a), a).view(-1)


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor | None,
                advantages: torch.Tensor, mask: torch.Tensor, clip_low: float = 0.2, clip_high: float = 0.3,
                dual_clip: float = 3.0, kl_coef: float = 0.01, normalizer: float | None = None) -> tuple:
    """The paper's objective (§3.3), maximised over the policy π_θ for G completions o_i of each question q:

        J(θ) = E[ 1 / Σ_i |o_i| · Σ_i Σ_t ( min(r_it·A_i, clip(r_it, 1 − ε_lo, 1 + ε_hi)·A_i) − β·KL_t ) ]
        r_it = π_θ(o_it | q, o_i,<t) / π_old(o_it | q, o_i,<t),   A_i from group_advantages (unbiased std)

    written as a loss to minimise, per completion token: the sign flips, −min(r·A, r̃·A) = max(−A·r, −A·r̃),
    and β·KL is added. With EasyR1's clamps and its dual clip (c > 1 bounds the loss of a negative advantage):

    log r = clamp(logp − old_logp, −20, 20),  r = exp(log r),  r̃ = exp(clamp(log r, ln(1−ε_lo), ln(1+ε_hi)))
    pg    = max(−A·r, −A·r̃);  for A < 0 also pg = min(pg, −A·c)                          (dual clip, c > 1)
    d     = clamp(ref − logp, −20, 20),  kl = clamp(exp(d) − d − 1, −10, 10)               (k3 estimator of KL)
    L     = Σ_t mask_t · (pg_t + β·kl_t) / normalizer                       (Σ_i |o_i|: the token mean)
    logp, old_logp, ref_logp, mask: (B, T); advantages: (B,) (one per sequence) or (B, T). normalizer
    defaults to the number of masked tokens (token mean); pass N_global / world_size to get the token mean of
    a mini-batch split over micro-batches and ranks (FSDP averages gradients over ranks). ref_logp None or
    kl_coef 0 drops the KL term. Returns (loss, metrics): masked means over this batch's tokens of pg,
    k3 KL, ratio, −log r (ppo_kl), the fractions clipped above / below / by the dual clip, and "tokens"."""
    m = mask.to(logp.dtype)
    adv = (advantages[:, None] if advantages.dim() == 1 else advantages).to(logp.dtype).expand_as(logp)
    log_r = (logp - old_logp).clamp(-20.0, 20.0)
    ratio = log_r.exp()
    ratio_clipped = log_r.clamp(math.log(1.0 - clip_low), math.log(1.0 + clip_high)).exp()
    pg_plain, pg_clip = -adv * ratio, -adv * ratio_clipped
    pg_ppo = torch.maximum(pg_plain, pg_clip)
    pg = torch.where(adv < 0, torch.minimum(pg_ppo, -adv * dual_clip), pg_ppo)
    kl = torch.zeros_like(logp)
    if ref_logp is not None and kl_coef:
        d = (ref_logp - logp).clamp(-20.0, 20.0)
        kl = (d.exp() - d - 1.0).clamp(-10.0, 10.0)
    n = m.sum()
    loss = ((pg + kl_coef * kl) * m).sum() / (n.clamp(min=1.0) if normalizer is None else normalizer)
    mean = lambda x: float((x.detach().float() * m).sum() / n.clamp(min=1.0))   # noqa: E731
    clipped = pg_clip > pg_plain
    metrics = {"tokens": int(n), "pg_loss": mean(pg), "kl": mean(kl), "ratio": mean(ratio),
               "ppo_kl": mean(-log_r), "clip_high": mean(clipped & (ratio > 1)),
               "clip_low": mean(clipped & (ratio < 1)), "clip_dual": mean((adv < 0) & (pg_ppo > -adv * dual_clip))}
    return loss, metrics


# ----------------------------------------------------------------------------- schedule and data
def batch_sizes(cfg: Config, num_records: int, world: int) -> tuple:
    """(prompts per rollout, prompts per update), both over all ranks, scaled down to the data and world.

    rollout = min(--rollout-batch-size, records) rounded down to a multiple of the world size; update =
    the largest size ≤ --update-batch-size that divides the rollout and is a multiple of the world size,
    so every rank holds the same number of prompts in every phase."""
    if num_records < world:
        raise BadRecord(f"{num_records} prompts for {world} ranks: every rank needs at least one")
    rollout = min(cfg.rollout_batch_size, num_records) // world * world
    update = max(u for u in range(world, min(cfg.update_batch_size, rollout) + 1, world) if rollout % u == 0)
    return rollout, update


def step_seed(seed: int, step: int, rank: int) -> int:
    """Sampling seed of one rank at one step: the samples of step s never depend on how the run got there."""
    return (seed * 1_000_003 + step * 7_919 + rank) % 2**63


def load_prompts(cfg: Config) -> tuple:
    """(records, root, number left out): the prompts of --data minus the cold-start ids, every record checked
    (records.check_record). --data is train.jsonl (make_data.py) or the release's spatialssrl.parquet (task
    None: the official exact-match reward). The cold-start ids come from --exclude ('auto': sft.jsonl next to
    --data); the release's cold-start file shares no ids with its parquet, and the official run trained GRPO
    on every parquet row, so 'auto' keeps them all there."""
    path = Path(cfg.data)
    if not path.is_file():
        raise SetupError(f"--data {cfg.data}: no such file")
    records, root = read_records(str(path))
    exclude = path.with_name("sft.jsonl") if cfg.exclude == "auto" else None if cfg.exclude == "none" \
        else Path(cfg.exclude)
    if exclude is not None and exclude.suffix.lower() != ".jsonl":
        raise SetupError(f"--exclude {cfg.exclude}: expected our sft.jsonl (its ids are left out); the release's "
                         "cold-start file shares no ids with spatialssrl.parquet: use --exclude none")
    left_out = 0
    if exclude is not None and exclude.resolve() != path.resolve() and exclude.is_file():
        ids = {r.get("id") for r in read_jsonl(exclude)}
        kept = [r for r in records if r.get("id") not in ids]
        left_out, records = len(records) - len(kept), kept
    if not records:
        raise BadRecord(f"--data {cfg.data}: no records left (after leaving out {left_out} cold-start ids)")
    for r in records:
        check_record(r, root)
    return records, root, left_out


# ----------------------------------------------------------------------------- the phases of a step
@dataclass
class Rollout:
    """One rank's share of a rollout step: row r of the (N, ·) tensors is sample r % G of prompt r // G."""
    records: list                   # the rank's P prompts
    prompts: dict                   # their left-padded encode() batch (P rows, images included)
    group_size: int
    completions: torch.Tensor       # (N, L) sampled ids, pad after the first stop token
    mask: torch.Tensor              # (N, L) bool: tokens up to and including the first stop token


@dataclass
class Scores:
    """score()'s result for the N completions of a Rollout."""
    texts: list                     # decoded completions
    rewards: torch.Tensor           # (N,) 0.9·accuracy + 0.1·format
    accuracy: torch.Tensor          # (N,)
    format: torch.Tensor            # (N,)
    truncated: torch.Tensor         # (N,) bool: no stop token within --max-new-tokens


def rollout(engine: Engine, records: list, root: Path, tok, ip, cfg: Config) -> Rollout:
    """Sample G completions for each of this rank's prompts with the policy's sampling settings."""
    prompts = encode_records(records, root, tok, ip, response=False)
    ids, mask = engine.generate(prompts, tok, max_new_tokens=cfg.max_new_tokens, greedy=False,
                                temperature=cfg.temperature, top_p=cfg.top_p, top_k=TOP_K, n=cfg.group_size)
    return Rollout(records, prompts, cfg.group_size, ids.cpu(), mask.cpu().bool())


def score(ro: Rollout, tok, partial: bool = False) -> Scores:
    """Rewards of every completion with tasks.reward_terms: r = 0.9·accuracy + 0.1·format, the problem text
    passed (position options); format is 0 for a completion cut off without a stop token; partial: accuracy of
    an ordering answer = the fraction of positions right (--partial-credit)."""
    texts = tok.batch_decode(torch.where(ro.mask, ro.completions, tok.pad_token_id), skip_special_tokens=True)
    truncated = ~(torch.isin(ro.completions, torch.tensor(stop_token_ids(tok))) & ro.mask).any(1)
    terms = [tasks.reward_terms(text, str(rec["answer"]), rec.get("task"), rec.get("problem"),
                                finished=not bool(truncated[i]), partial=partial)
             for i, text in enumerate(texts) for rec in [ro.records[i // ro.group_size]]]
    rewards, accuracy, fmt = (torch.tensor(t, dtype=torch.float32) for t in zip(*terms))
    return Scores(texts, rewards, accuracy, fmt, truncated)


def sample_and_score(run, records: list, cfg: Config, step: int, rank: int) -> tuple:
    """Steps 1-2 of a GRPO step: G completions per prompt (rollout) and their rewards (score); then, beyond the
    paper and only with --filter-groups, groups without signal replaced (keep_groups_with_signal). Returns
    (rollout, scores, {"drawn": prompts rolled out, "dropped": groups not used})."""
    ro = rollout(run.engine, records, run.root, run.tok, run.ip, cfg)
    sc = score(ro, run.tok, cfg.partial_credit)
    if cfg.filter_groups:
        return keep_groups_with_signal(run.engine, ro, sc, run, cfg, step, rank)
    return ro, sc, {"drawn": len(records), "dropped": 0}


def rank_share(order: list, rank: int, world: int) -> list:
    """This rank's prompts of a step: rank r of W takes order[r·R/W : (r+1)·R/W] (R = len(order), a multiple of W)."""
    return order[rank * len(order) // world:(rank + 1) * len(order) // world]


def update_shares(rollout_bs: int, update_bs: int, world: int) -> list:
    """This rank's groups (indices into its share of the rollout) for each of the R / U optimizer steps: every
    rank holds R / W prompts and gives U / W of them to each step, in order."""
    per = update_bs // world
    return [list(range(j * per, (j + 1) * per)) for j in range(rollout_bs // update_bs)]


def micro_batches(ro: Rollout, groups: list, cfg: Config, device) -> list:
    """This rank's groups cut by the token budget (common.token_micro_batches; a row = the longest prompt + G slots
    of the group's longest completion + 1: within budget), as many on every rank (empty ones: a dummy)."""
    G, prompt = ro.group_size, int(ro.prompts["attention_mask"][groups].sum(1).max())
    lengths = [prompt + G * (int(ro.mask[p * G:(p + 1) * G].sum(1).max()) + 1) for p in groups]
    packs = token_micro_batches(lengths, cfg.micro_batch_tokens)
    packs = token_micro_batches(lengths, cfg.micro_batch_tokens, all_reduce_max(len(packs), device))
    return [[groups[i] for i in mb] for mb in packs]


def group_rows(ro: Rollout, groups: list) -> tuple:
    """The groups' sample rows, their completions' width and vlm.group_logprobs' inputs (the groups' prompts, each
    once, and their completions)."""
    G = ro.group_size
    rows = [p * G + j for p in groups for j in range(G)]
    w = max(1, int(ro.mask[rows].sum(1).max()))
    return rows, w, (select_prompts(ro.prompts, groups), ro.completions[rows, :w], ro.mask[rows, :w], G)


@torch.no_grad()
def rollout_logprobs(model, ro: Rollout, cfg: Config, device) -> torch.Tensor:
    """Per-token log-probs (N, L) of the sampled completions under `model` (logits / τ, fp32 log-softmax), 0
    outside the completion masks."""
    logp = torch.zeros(ro.mask.shape)
    for mb in micro_batches(ro, list(range(len(ro.records))), cfg, device):
        rows, w, inputs = group_rows(ro, mb or [0])               # an empty micro-batch: a dummy forward
        lp = group_logprobs(model, *inputs, cfg.temperature)
        if mb:
            logp[rows, :w] = lp.float().cpu()
    return logp


def update(model, optimizer, ro: Rollout, groups: list, adv: torch.Tensor, old: torch.Tensor | None,
           ref: torch.Tensor | None, cfg: Config, device) -> dict:
    """One optimizer step on `groups` (this rank's share of a mini-batch). adv: (N,) advantages; old / ref:
    (N, L) log-probs of the policy at rollout time and of the reference; old None means the policy has not
    changed since the rollout (on-policy: old = the current log-probs, detached; ratio 1).

    The completion-token count of the whole mini-batch is all-reduced first; each micro-batch's loss is
    divided by N_global / world, so after FSDP's gradient mean over ranks the step follows the token mean over
    the global mini-batch, whatever the micro-batches or the number of ranks."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    G = ro.group_size
    n_global = max(1.0, all_reduce_sum(int(sum(ro.mask[p * G:(p + 1) * G].sum() for p in groups)), device))
    sums = {}
    for mb in micro_batches(ro, groups, cfg, device):
        rows, w, inputs = group_rows(ro, mb or groups[:1])
        # Each group one row, its prompt and images once. The plain equivalent, one row per sample (the tests'
        # oracle, test_grpo.test_rollout_logprobs_equal_plain_full_logits):
        #   logits = model(prompt_i + completion_i).logits[P_i - 1:-1] / τ
        #   logp_i = logits.float().log_softmax(-1).gather(-1, completion_i[:, None]).squeeze(-1)
        logp, ent = group_logprobs(model, *inputs, cfg.temperature, with_entropy=True)
        on = lambda x: None if x is None else x[rows, :w].to(device)      # noqa: E731
        mask = on(ro.mask) & bool(mb)                                     # a dummy micro-batch weighs 0
        loss, m = policy_loss(logp, logp.detach() if old is None else on(old), on(ref), adv[rows].to(device), mask,
                              clip_low=cfg.clip_low, clip_high=cfg.clip_high, dual_clip=cfg.dual_clip,
                              kl_coef=cfg.kl_coef, normalizer=n_global / world)
        loss.backward()
        m["entropy"] = float((ent * mask).sum()) / max(1, m["tokens"])
        for k, v in m.items():  # token-weighted sums, turned into means over the mini-batch in log_row()
            sums[k] = sums.get(k, 0.0) + (v if k == "tokens" else v * m["tokens"])
    return sums | optimizer_step(model, optimizer, cfg.max_grad_norm)


# ----------------------------------------------------------------------------- beyond the paper: --filter-groups
def merge_groups(parts: list, root: Path, tok, ip) -> tuple:
    """One (Rollout, Scores) from groups of several rollouts: parts = [(rollout, scores, group index), …]; the
    prompts are encoded again together (encode_records is deterministic), the completions right-padded."""
    G = parts[0][0].group_size
    rows = [[ro, sc, range(p * G, (p + 1) * G)] for ro, sc, p in parts]
    width = max(int(ro.mask[list(r)].sum(1).max()) for ro, _, r in rows)
    pad = lambda x, v: torch.nn.functional.pad(x[:, :width], (0, max(0, width - x.shape[1])), value=v)  # noqa: E731
    records = [ro.records[p] for ro, _, p in parts]
    ro = Rollout(records, encode_records(records, root, tok, ip, response=False), G,
                 torch.cat([pad(ro.completions[list(r)], tok.pad_token_id) for ro, _, r in rows]),
                 torch.cat([pad(ro.mask[list(r)], False) for ro, _, r in rows]))
    cat = lambda field: torch.cat([getattr(sc, field)[list(r)] for _, sc, r in rows])   # noqa: E731
    texts = [sc.texts[i] for _, sc, r in rows for i in r]
    return ro, Scores(texts, cat("rewards"), cat("accuracy"), cat("format"), cat("truncated"))


def keep_groups_with_signal(engine: Engine, ro: Rollout, sc: Scores, run, cfg: Config, step: int, rank: int) -> tuple:
    """--filter-groups, DAPO's dynamic sampling (arXiv 2503.14476): the groups whose G rewards are all equal carry
    no signal (advantage 0); they are dropped and the rank rolls out fresh prompts, drawn from all records by a
    generator seeded with (seed, step, rank) so that a resumed run draws the same ones, at most FILTER_TRIES
    more times; groups still missing are taken from the dropped ones, so every update sees its full batch.
    Returns (rollout, scores, {"drawn": prompts rolled out, "dropped": groups not used})."""
    need, kept, dropped, drawn = len(ro.records), [], [], len(ro.records)
    g = torch.Generator().manual_seed(step_seed(cfg.seed + 1, step, rank))
    for tries in range(FILTER_TRIES + 1):
        r = sc.rewards.view(-1, ro.group_size)
        for p, signal in enumerate((r != r[:, :1]).any(1).tolist()):
            (kept if signal else dropped).append((ro, sc, p))
        if len(kept) >= need or tries == FILTER_TRIES:
            break
        fresh = [run.records[i] for i in torch.randint(len(run.records), (need - len(kept),), generator=g).tolist()]
        ro = rollout(engine, fresh, run.root, run.tok, run.ip, cfg)
        sc, drawn = score(ro, run.tok, cfg.partial_credit), drawn + len(fresh)
    chosen = (kept + dropped)[:need]
    return (*merge_groups(chosen, run.root, run.tok, run.ip), {"drawn": drawn, "dropped": drawn - need})



# ----------------------------------------------------------------------------- metrics
def rollout_sums(ro: Rollout, sc: Scores) -> dict:
    """This rank's rollout statistics as sums (reward / accuracy / format overall and per task, lengths,
    truncations, groups with all-equal rewards)."""
    r = sc.rewards.view(-1, ro.group_size)
    s = {"seqs": len(sc.rewards), "reward": sc.rewards.sum(), "accuracy": sc.accuracy.sum(),
         "format": sc.format.sum(), "truncated": sc.truncated.sum(), "length": ro.mask.sum(),
         "groups": r.shape[0], "equal_groups": (r.max(1).values == r.min(1).values).sum()}
    task_of = [ro.records[i // ro.group_size]["task"] for i in range(len(sc.rewards))]
    for t in tasks.TASKS:
        sel = torch.tensor([x == t for x in task_of])
        for k, v in (("n", sel.float()), ("reward", sc.rewards), ("accuracy", sc.accuracy), ("format", sc.format)):
            s[f"{t}/{k}"] = (v * sel).sum()
    return {k: float(v) for k, v in s.items()}


def update_means(ups: list, device) -> dict:
    """The loss metrics of a step's updates (pg_loss, kl, ratio, ppo_kl, clip fractions, entropy) as token means
    over all of its mini-batches on all ranks: update() returns token-weighted sums, summed here over the updates
    and the ranks and divided by the tokens, so no micro-batch split or rank count moves them."""
    sums = all_reduce_sum({k: sum(u[k] for u in ups) for k in ups[0] if k not in ("grad_norm", "skipped")}, device)
    tokens = max(1.0, sums["tokens"])
    return {k: v if k == "tokens" else v / tokens for k, v in sums.items()}


def log_row(step: int, epoch: int, ro_sums: dict, up_means: dict, ups: list, times: dict) -> dict:
    """One metrics.jsonl row from the all-reduced sums of a step's rollouts and update_means."""
    n = max(1.0, ro_sums["seqs"])
    row = {"step": step, "epoch": epoch, "reward": ro_sums["reward"] / n, "accuracy": ro_sums["accuracy"] / n,
           "format": ro_sums["format"] / n, "truncated": ro_sums["truncated"] / n,
           "response_length": ro_sums["length"] / n, "equal_groups": ro_sums["equal_groups"] / ro_sums["groups"],
           "prompts_drawn": int(ro_sums["drawn"]), "groups_dropped": int(ro_sums["dropped"])}
    for k in ("kl", "pg_loss", "ratio", "ppo_kl", "clip_high", "clip_low", "clip_dual", "entropy"):
        row[k] = up_means[k]
    row.update(grad_norm=sum(u["grad_norm"] for u in ups) / len(ups), skipped_updates=sum(u["skipped"] for u in ups),
               updates=len(ups), **{f"time_{k}": v for k, v in times.items()})
    row["gen_tok_per_s"] = ro_sums["length"] / max(1e-9, times["gen"])
    row["tasks"] = {t: {k: ro_sums[f"{t}/{k}"] / ro_sums[f"{t}/n"] for k in ("reward", "accuracy", "format")}
                    | {"n": int(ro_sums[f"{t}/n"])} for t in tasks.TASKS if ro_sums[f"{t}/n"]}
    return row


def format_row(r: dict) -> str:
    """The one log line of a step."""
    per_task = " ".join(f"{t} {v['reward']:.2f}/{v['accuracy']:.2f}/{v['format']:.2f}" for t, v in r["tasks"].items())
    skipped = f" | SKIPPED {r['skipped_updates']} non-finite" if r["skipped_updates"] else ""
    dropped = f" (drew {r['prompts_drawn']}, dropped {r['groups_dropped']})" if r["groups_dropped"] else ""
    return (f"step {r['step']:05d} | reward {r['reward']:.3f} acc {r['accuracy']:.3f} fmt {r['format']:.3f} | "
            f"{per_task} | kl {r['kl']:.4f} | clip {r['clip_low']:.3f}/{r['clip_high']:.3f}/{r['clip_dual']:.3f} | "
            f"ent {r['entropy']:.3f} | len {r['response_length']:.0f} trunc {r['truncated']:.2f} | "
            f"equal groups {r['equal_groups']:.2f}{dropped} | gnorm {r['grad_norm']:.3f}{skipped} | "
            f"gen {r['time_gen']:.1f}s lp {r['time_logprob']:.1f}s upd {r['time_update']:.1f}s | "
            f"gen tok/s {r['gen_tok_per_s']:.0f}")


def sample_rows(ro: Rollout, sc: Scores, adv: torch.Tensor, step: int, n: int) -> list:
    """samples.jsonl rows: prompt, completion, parsed answer, reward parts and advantage."""
    rows = []
    for i in range(min(n, len(sc.texts))):
        rec = ro.records[i // ro.group_size]
        rows.append({"step": step, "id": rec.get("id"), "task": rec["task"], "problem": rec["problem"],
                     "answer": rec["answer"], "completion": sc.texts[i], "parsed": tasks.extract_boxed(sc.texts[i]),
                     "reward": float(sc.rewards[i]), "accuracy": float(sc.accuracy[i]),
                     "format": float(sc.format[i]), "truncated": bool(sc.truncated[i]), "advantage": float(adv[i])})
    return rows


# ----------------------------------------------------------------------------- setup and checkpoints
@dataclass
class Run:
    """What train() works with, built by setup_run()."""
    model: torch.nn.Module          # the policy (FSDP2-sharded on GPU / several ranks)
    ref: torch.nn.Module | None     # frozen reference (None when kl_coef is 0)
    tok: object                     # tokenizer
    ip: object                      # image processor (pixel bounds set)
    optimizer: torch.optim.Optimizer
    engine: Engine                  # the decoder, refreshed from the policy before every rollout
    records: list                   # usable prompts, cold-start ids left out
    root: Path                      # images are relative to this folder
    rollout_bs: int                 # prompts per rollout, all ranks
    update_bs: int                  # prompts per optimizer step, all ranks
    step: int                       # first step to run (after --resume)


IDENTITY_LABELS = {"num_records": "usable records in --data", "rollout_batch_size": "prompts per rollout "
                   "(--rollout-batch-size, scaled to the data and ranks)", "update_batch_size": "prompts per "
                   "update (--update-batch-size)", "pixels": "image bounds (--min-pixels, --max-pixels)"}


def grpo_identity(cfg: Config, num_records: int, rollout_bs: int, update_bs: int, image_processor) -> dict:
    """What a resumed run must share with the saved one: the step → data position map (model, records,
    batch sizes, G, seed, shuffle, epochs), the sampling, the objective, the optimizer and the image bounds."""
    keys = ("model", "group_size", "seed", "shuffle", "epochs", "max_steps", "max_new_tokens", "temperature",
            "top_p", "lr", "weight_decay", "adam_betas", "max_grad_norm", "clip_low", "clip_high",
            "dual_clip", "kl_coef", "freeze_vision", "partial_credit", "filter_groups")
    size = image_processor.size
    return {**{k: getattr(cfg, k) for k in keys}, "num_records": num_records, "rollout_batch_size": rollout_bs,
            "update_batch_size": update_bs, "pixels": [size["shortest_edge"], size["longest_edge"]]}


def bounds_note(model: str, pixels: list) -> str | None:
    """One line when this run's image bounds differ from those the cold start in `model` (an sft.py output
    folder: its run.json) was trained with; the paper's RL bounds differ from its SFT bounds by design, so it
    is said, not refused. None otherwise."""
    info = read_run_info(model) if Path(model).is_dir() else None
    trained = (info or {}).get("identity", {}).get("pixels") if (info or {}).get("prog") == "sft.py" else None
    if not trained or list(trained) == list(pixels):
        return None
    return (f"note: images {pixels[0]}..{pixels[1]} px (--min-pixels, --max-pixels), but {model} was trained by "
            f"sft.py at {trained[0]}..{trained[1]} px; pass --min-pixels {trained[0]} --max-pixels {trained[1]} "
            "to keep them")


def setup_run(cfg: Config, d) -> Run:
    """Checks (nothing is written before they pass), prompts, policy, reference, decoder, then the output folder
    and the resume point."""
    mode = out_dir_mode(cfg.out, "grpo.py", cfg.resume, cfg.overwrite)
    records, root, left_out = load_prompts(cfg)
    rollout_bs, update_bs = batch_sizes(cfg, len(records), d.world_size)
    model, tok, ip, optimizer = load_trainable(
        cfg.model, d, train_vision=not cfg.freeze_vision, checkpointing=cfg.activation_checkpointing,
        fsdp=cfg.fsdp, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.adam_betas, min_pixels=cfg.min_pixels,
        max_pixels=cfg.max_pixels, trust_remote_code=cfg.trust_remote_code)
    ref = None
    if cfg.kl_coef > 0:   # bf16 on GPU: it is only ever run forward
        dtype = torch.bfloat16 if d.device.type == "cuda" else torch.float32
        ref = load_model(cfg.model, dtype=dtype, meta=d.world_size > 1 and not d.is_main,
                         trust_remote_code=cfg.trust_remote_code)[0]
        ref = place_model(ref.requires_grad_(False).eval(), d, cfg.fsdp)
    identity = grpo_identity(cfg, len(records), rollout_bs, update_bs, ip)
    note = bounds_note(cfg.model, identity["pixels"])
    if note:
        print0(note)
    step = open_run(cfg.out, "grpo.py", mode, identity, {"config": dataclasses.asdict(cfg), "argv": sys.argv,
                    "world_size": d.world_size, "left_out": left_out}, labels=IDENTITY_LABELS,
                    state=(model, optimizer), logs=("metrics.jsonl", "samples.jsonl"))
    print0(f"model {cfg.model} | prompts {len(records)} (left out {left_out} cold-start ids) | "
           f"rollout {rollout_bs} × G {cfg.group_size} | update {update_bs} prompts | world {d.world_size} | "
           f"images {identity['pixels'][0]}..{identity['pixels'][1]} px | "
           f"reference {'yes' if ref is not None else 'no (kl_coef 0)'} | device {d.device}")
    engine = Engine(model, prompts_per_call=ROLLOUT_PROMPTS_PER_CALL)
    return Run(model, ref, tok, ip, optimizer, engine, records, root, rollout_bs, update_bs, step)


def save_checkpoint(run: Run, cfg: Config, state: dict) -> None:
    """HF export OUT/hf/step_N and resumable state OUT/checkpoints/step_N, each written under a .tmp name
    and renamed when complete (a kill −9 mid-save leaves only a .tmp folder); keeps the newest K of each."""
    final = Path(cfg.out) / "hf" / f"step_{state['step']:08d}"
    tmp = final.with_name(final.name + ".tmp")
    if is_main():
        shutil.rmtree(tmp, ignore_errors=True)
    save_hf(run.model, run.tok, run.ip, str(tmp))
    if is_main():
        publish_step_folder(tmp, final, cfg.keep_checkpoints)
    save_state(run.model, run.optimizer, state, cfg.out, cfg.keep_checkpoints)


def _now(device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


# ----------------------------------------------------------------------------- training loop
def train(cfg: Config) -> list:
    """The GRPO loop. Returns the metrics rows of the steps it ran."""
    with dist_session(cfg.seed) as d:
        run = setup_run(cfg, d)
        model, dev, G, R, U, step = run.model, d.device, cfg.group_size, run.rollout_bs, run.update_bs, run.step
        steps_per_epoch = len(run.records) // R
        total = cfg.max_steps if cfg.max_steps > 0 else cfg.epochs * steps_per_epoch
        bar = tqdm(total=total, initial=step, desc="grpo", file=sys.stderr, disable=not (d.is_main and sys.stderr.isatty()))
        rows_logged = []
        while step < total:
            epoch, k = divmod(step, steps_per_epoch)
            order = epoch_order(len(run.records), epoch, cfg.seed, cfg.shuffle)[k * R:(k + 1) * R]
            mine = [run.records[i] for i in rank_share(order, d.rank, d.world_size)]
            t0 = _now(dev)
            refresh_s = run.engine.refresh(model)                           # the decoder follows the policy
            torch.manual_seed(step_seed(cfg.seed, step, d.rank))
            ro, sc, filt = sample_and_score(run, mine, cfg, step, d.rank)   # 1-2. G samples per prompt, rewards
            adv = group_advantages(sc.rewards, G, eps=ADV_EPS)              # 3. group-normalised advantages
            t1 = _now(dev)
            # 4. old log-probs: with one update per rollout (R = U) the policy that sampled is the one updated, so
            # old = the current log-probs, detached, and the ratio is 1 (on-policy; update() gets None); with
            # R > U the later updates are off-policy and need the log-probs of the sampling policy, taken now.
            old = rollout_logprobs(model, ro, cfg, dev) if R > U else None
            ref = rollout_logprobs(run.ref, ro, cfg, dev) if run.ref is not None else None
            t2 = _now(dev)
            ups = [update(model, run.optimizer, ro, groups, adv, old, ref, cfg, dev)   # 5. R / U optimizer steps
                   for groups in update_shares(R, U, d.world_size)]
            t3 = _now(dev)
            step += 1
            row = log_row(step, epoch, all_reduce_sum(rollout_sums(ro, sc) | filt, dev), update_means(ups, dev), ups,
                          {"gen": t1 - t0, "logprob": t2 - t1, "update": t3 - t2, "step": t3 - t0, "refresh": refresh_s})
            rows_logged.append(row)
            print0(format_row(row))
            if d.is_main:
                append_jsonl(Path(cfg.out) / "metrics.jsonl", [row])
                if cfg.sample_every and (step % cfg.sample_every == 0 or step == 1):
                    append_jsonl(Path(cfg.out) / "samples.jsonl", sample_rows(ro, sc, adv, step, SAMPLES_PER_LOG))
            bar.update(1)
            if (cfg.save_every and step % cfg.save_every == 0) or step == total:
                save_checkpoint(run, cfg, {"step": step, "epoch": step // steps_per_epoch})
        bar.close()
        save_hf(model, run.tok, run.ip, cfg.out)
        print0(f"saved HF checkpoint to {cfg.out}")
        return rows_logged


def main(argv: list | None = None) -> None:
    """The command line: bad input (flags, model, data, --out, a resume that does not match) is one line
    "grpo.py: error: …" with exit 2, and nothing is written before the checks pass (common.cli_main)."""
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()   # "Loading weights" bars on every rank
    args = build_parser().parse_args(argv)
    cli_main("grpo.py", lambda: train(Config(**{**vars(args), "adam_betas": tuple(args.adam_betas)})))


if __name__ == "__main__":
    main()
