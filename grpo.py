"""GRPO with verifiable pretext rewards: the reinforcement-learning stage of Spatial-SSRL.

Stage 3 of Spatial-SSRL (arXiv 2510.27606, §3.3): starting from the cold-start SFT checkpoint, sample G answers
per pretext question, score them with the rule-based reward of tasks.py, normalise the rewards within each
group and push the policy towards the better answers with a clipped ratio and a KL penalty to the start.
Every step reads top to bottom in train(): rollout → reward → advantage → old/ref log-probs → updates.
Model plumbing (loading, encoding, FSDP2, generation, log-probs, checkpoints) comes from sft.py.

    python grpo.py --model runs/sft --data data/ssrl/train.jsonl --out runs/grpo
    torchrun --nproc_per_node 8 grpo.py --model runs/sft7b --data data/ssrl/train.jsonl --out runs/grpo7b
    torchrun --nproc_per_node 8 grpo.py ... --out runs/grpo7b --resume      # continue after a crash / kill
    OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 grpo.py --model runs/sft-tiny --data data/ssrl/train.jsonl \\
        --out runs/grpo-tiny --max-steps 20 --rollout-batch-size 8 --update-batch-size 8 --group-size 4 \\
        --max-new-tokens 192 --min-pixels 3136 --max-pixels 3136 --lr 2e-4    # tiny CPU run, as in demo.sh

Outputs in --out: the final HF checkpoint (model.safetensors, config, tokenizer, image processor),
hf/step_N/ (HF exports every --save-every steps), checkpoints/step_N/ (resumable state), metrics.jsonl
(one row per step), samples.jsonl (prompts, completions, parsed answers, rewards), grpo_config.json.
Log line: reward / accuracy / format overall, then per task; k3 KL; clip fractions low/high/dual; entropy;
response length and truncated fraction; groups with all-equal rewards (no signal); grad norm; seconds spent
in generation / log-probs / update; generated tokens/s.

Paper → code (official code: training/GRPO, an EasyR1 fork; examples/config.yaml + spatial-ssrl_*.sh)
  G = 5 samples per prompt, temperature 1, top-p 1, top-k off    → rollout(), Sampler (generate / RolloutEngine)
  reward r = 0.9·accuracy + 0.1·format (math.py img_score)        → score() via tasks.reward_terms()
  A_i = (r_i − mean_g) / (std_g + 1e-6), unbiased std             → group_advantages()
  old log-probs recomputed by the actor, ref = frozen SFT init    → rollout_logprobs(), setup_models()
    (one update per rollout: on-policy, old = current log-probs detached, the old pass is skipped)
  clipped ratio ε 0.2 / 0.3, dual clip 3, k3 KL · 0.01            → policy_loss()
  token mean over the mini-batch, all ranks (dp_actor.py)          → update() (normalizer = N_global / world)
  256 prompts per rollout, 128 per optimizer step, 1 PPO epoch    → Config, batch_sizes(), update()
  AdamW lr 1e-6 constant, wd 0.01, clip 1.0, skip non-finite      → setup_models(), optimizer_step()
  vision tower trained, gradient checkpointing                    → Config.freeze_vision = False, setup_models()
  10 epochs, save every 5 steps, keep 3                           → Config.epochs / save_every / keep_checkpoints
  images 512² … 2048² px, responses ≤ 2048 tokens                 → Config.min_pixels / max_pixels / max_new_tokens

Deviations from the paper and the official code
  1. Rollouts use engine.generate on the training model (CPU, tests: a lean decode loop drawing the tokens
     transformers' sampling draws for the same seed) or engine.RolloutEngine (a bf16 copy of the policy
     with a static KV cache, CUDA) instead of vLLM; vision tokens are suppressed instead of a −100 logit
     bias on <|image_pad|>.
  2. A completion that hits --max-new-tokens without <|im_end|> gets format 0 (it is still scored for
     accuracy and trained on); the official reward scores the truncated text like any other.
  3. Groups stay on the rank that sampled them (no sequence balancing across ranks); every rank holds
     the same number of prompts, so all ranks run the same number of micro-batches.
  4. Micro-batches hold a fixed number of sequences (sorted by length to limit padding) instead of
     EasyR1's dynamic token-budget batching; the loss is the same global token mean either way.
  5. No prompt-length filter (max_prompt_length 4096): prompt length is bounded by --max-pixels.
     Records used by the cold start (ids in sft.jsonl next to --data) are left out of RL.
  6. The sampling RNG is re-seeded from (seed, step, rank) every step, so --resume continues with exactly
     the samples an uninterrupted run draws; the data order is a pure function of (seed, epoch).
  7. No validation during training (the official val set is the first 10k training rows); use evaluate.py.
"""
import argparse
import dataclasses
import json
import math
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

import tasks
from common import (BadRecord, Dist, SetupError, all_reduce_sum, append_metrics, atomic_write, barrier,
                    checked_checkpoint, cleanup_dist, config_parser, epoch_order, is_main, knob, out_dir_mode,
                    print0, publish_step_folder, read_jsonl, resume_from, save_state, setup_dist, start_out_dir)
from engine import ENGINE_CHOICES, ENGINE_HELP, RolloutEngine, generate, stop_token_ids, use_engine
from records import load_images, read_records   # our train.jsonl or the release's parquet (load_prompts)
from vlm import (IGNORE_INDEX, IMAGE_PLACEHOLDER, TINY_MODELS, build_messages, enable_activation_checkpointing,
                 encode, freeze_vision, is_fsdp, load_model, prefix_logprobs, save_hf, shard_model, token_logprobs)


# ----------------------------------------------------------------------------- config
USAGE_EXAMPLES = """examples:
  python grpo.py --model runs/sft-tiny --data data/ssrl/train.jsonl --out runs/grpo-tiny --max-steps 30 \\
      --rollout-batch-size 16 --update-batch-size 16 --group-size 4 --max-new-tokens 320 \\
      --min-pixels 3136 --max-pixels 3136 --lr 1e-4
  torchrun --nproc_per_node 8 grpo.py --model runs/sft7b --data data/ssrl/train.jsonl --out runs/grpo7b
  torchrun --nproc_per_node 8 grpo.py ... --out runs/grpo7b --resume   # continue from OUT/checkpoints

Records whose id is in the cold-start sft.jsonl next to --data are left out (--exclude)."""

@dataclass
class Config:
    model: str = knob("tiny", "cold-start checkpoint: local HF dir, HF id, or 'tiny' / 'tiny-qwen3'")
    data: str = knob("", "REQUIRED: train.jsonl from make_data.py (id, task, problem, answer, images), or the "
                       "release's spatialssrl.parquet (images from images/ or images.zip beside it; needs pyarrow)")
    out: str = knob("runs/grpo", "output folder (new or empty, unless --resume or --overwrite)")
    exclude: str = knob("auto", "jsonl whose ids are left out ('auto': sft.jsonl next to --data; 'none': keep all)")
    epochs: int = knob(10, "passes over the data (paper: 10)")
    max_steps: int = knob(0, "stop after this many rollout steps (0: epochs decide)")
    group_size: int = knob(5, "samples per prompt G (paper: 5)")
    rollout_batch_size: int = knob(256, "prompts per rollout step over all ranks (paper: 256)")
    update_batch_size: int = knob(128, "prompts per optimizer step over all ranks (paper: 128, so 2 updates/rollout)")
    micro_batch_size: int = knob(4, "sequences per forward/backward on one rank in the update")
    logprob_micro_batch_size: int = knob(8, "sequences per forward on one rank for old/ref log-probs")
    sync_every_micro_batch: bool = knob(True, "FSDP2: reduce-scatter gradients after every micro-batch (--no-...: "
                                      "accumulate one full fp32 gradient per rank, ≈ 33 GB for 7B: all 8.3B "
                                      "parameters, the vision tower trains here; reduce once)")
    max_new_tokens: int = knob(2048, "longest completion (paper: 2048)")
    temperature: float = knob(1.0, "sampling temperature, also divides the logits of every log-prob (paper: 1.0)")
    top_p: float = knob(1.0, "nucleus sampling (paper: 1.0 = off)")
    top_k: int = knob(0, "top-k sampling (paper: off = 0)")
    lr: float = knob(1e-6, "AdamW learning rate, constant (paper: 1e-6)")
    weight_decay: float = knob(0.01, "AdamW weight decay (paper: 0.01)")
    adam_betas: tuple = knob((0.9, 0.999), "AdamW betas (paper: 0.9 0.999)")
    max_grad_norm: float = knob(1.0, "gradient-norm clip; a step with a non-finite norm is skipped (paper: 1.0)")
    clip_low: float = knob(0.2, "ratio clip below, 1 − ε_low (paper: 0.2)")
    clip_high: float = knob(0.3, "ratio clip above, 1 + ε_high (paper: 0.3)")
    dual_clip: float = knob(3.0, "dual-clip constant c for negative advantages (paper: 3.0)")
    kl_coef: float = knob(0.01, "coefficient of the k3 KL to the reference model; 0 = no reference (paper: 0.01)")
    adv_eps: float = knob(1e-6, "ε in A = (r − mean) / (std + ε) (paper: 1e-6)")
    min_pixels: int = knob(512 * 512, "smallest image area after resizing (paper: 512²)")
    max_pixels: int = knob(2048 * 2048, "largest image area after resizing (paper: 2048²)")
    freeze_vision: bool = knob(False, "freeze the vision tower (paper: trained during RL)")
    activation_checkpointing: bool = knob(True, "non-reentrant activation checkpointing of the trained blocks")
    bf16: bool = knob(True, "bf16 compute with fp32 master weights (GPU only; CPU stays fp32)")
    fsdp: bool = knob(False, "shard with FSDP2 even in one CPU process (always on for GPU or >1 rank)")
    rollout_engine: str = knob("auto", ENGINE_HELP)
    rollout_prompts_per_call: int = knob(8, "prompts per RolloutEngine call (fixed shape: compiled once)")
    keep_rollout_copy: bool = knob(True, "keep the engine's copy of the policy between rollouts (--no-...: free "
                                 "it after each rollout to save memory; it is rebuilt at the next)")
    logprob_chunk_size: int = knob(1024, "rows of the LM head per chunk in the log-prob computation")
    shuffle: bool = knob(True, "shuffle the prompts every epoch (paper: true)")
    seed: int = knob(1, "seed of the data order and the sampling (paper: 1)")
    save_every: int = knob(5, "HF export + resumable state every N steps, and at the end (paper: 5; 0 = end only)")
    keep_checkpoints: int = knob(3, "HF exports and resumable states kept on disk (paper: 3)")
    sample_every: int = knob(5, "append rank 0's first prompts and completions to samples.jsonl every N steps")
    samples_per_log: int = knob(10, "completions written to samples.jsonl each time (paper: 10)")
    resume: bool = knob(False, "continue from the newest complete checkpoint in OUT/checkpoints (same settings)")
    overwrite: bool = knob(False, "delete an earlier grpo.py run in --out and start over")
    save_dtype: str = knob("bfloat16", "dtype of the exported HF weights (bfloat16 or float32)")
    attn_implementation: str = knob("sdpa", "attention kernel passed to transformers")
    stop_after_steps: int = knob(0, "stop (as if killed) after this many steps, keeping the schedule; for tests")

    def __post_init__(self):
        positive = ("group_size", "rollout_batch_size", "update_batch_size", "micro_batch_size",
                    "logprob_micro_batch_size", "max_new_tokens", "keep_checkpoints", "samples_per_log")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
        if self.group_size < 2:
            raise ValueError("--group-size must be at least 2 (a group of one has no baseline)")
        if not (0 <= self.clip_low < 1 and self.clip_high >= 0 and self.dual_clip > 1):
            raise ValueError("need 0 ≤ --clip-low < 1, --clip-high ≥ 0 and --dual-clip > 1")
        if self.temperature <= 0 or not 0 < self.top_p <= 1 or self.top_k < 0 or self.kl_coef < 0:
            raise ValueError("need --temperature > 0, 0 < --top-p ≤ 1, --top-k ≥ 0, --kl-coef ≥ 0")
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ValueError(f"need 0 < --min-pixels ({self.min_pixels}) ≤ --max-pixels ({self.max_pixels})")
        if self.rollout_engine not in ENGINE_CHOICES:
            raise ValueError(f"--rollout-engine must be one of {', '.join(ENGINE_CHOICES)}")
        if self.save_dtype not in ("bfloat16", "float32"):
            raise ValueError("--save-dtype must be bfloat16 or float32")


def build_parser() -> argparse.ArgumentParser:
    """argparse options generated from Config, with sft.py's conventions (config_parser)."""
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
    """Clipped GRPO surrogate + k3 KL per completion token, summed over tokens and divided by `normalizer`.

    log r = clamp(logp − old_logp, −20, 20),  r = exp(log r),  r̃ = exp(clamp(log r, ln(1−ε_lo), ln(1+ε_hi)))
    pg    = max(−A·r, −A·r̃);  for A < 0 also pg = min(pg, −A·c)                          (dual clip, c > 1)
    d     = clamp(ref − logp, −20, 20),  kl = clamp(exp(d) − d − 1, −10, 10)               (k3, EasyR1 clamps)
    L     = Σ_t mask_t · (pg_t + β·kl_t) / normalizer
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
    mean = lambda x: float((x.detach().float() * m).sum() / n.clamp(min=1.0))
    clipped = pg_clip > pg_plain
    metrics = {"tokens": int(n), "pg_loss": mean(pg), "kl": mean(kl), "ratio": mean(ratio),
               "ppo_kl": mean(-log_r), "clip_high": mean(clipped & (ratio > 1)),
               "clip_low": mean(clipped & (ratio < 1)), "clip_dual": mean((adv < 0) & (pg_ppo > -adv * dual_clip))}
    return loss, metrics


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


# ----------------------------------------------------------------------------- data
def resolve_model(name: str) -> None:
    """Refuse a --model that is neither a tiny model, a local HF folder, nor a HF id (org/name)."""
    if name in TINY_MODELS or (Path(name) / "config.json").is_file():
        return
    if Path(name).exists():
        raise ValueError(f"--model {name}: not a Hugging Face model folder (no config.json)")
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", name):
        raise ValueError(f"unknown --model {name!r}: use tiny, tiny-qwen3, a local HF folder or a HF id")


def check_prompt_record(r: dict, root: Path) -> None:
    """Raise BadRecord naming the record if it cannot be a GRPO prompt (fields, task, answer, images).

    task None (the release's records, records.read_records) is a valid task: it is scored by the official
    rule, the last \\boxed{} equal to the answer string (tasks.accuracy). Images are paths relative to root,
    or the bytes / zip-member entries read_records makes for the release."""
    rid = r.get("id", "?")
    if (r.get("task") is not None and r.get("task") not in tasks.TASKS) or not isinstance(r.get("problem"), str) \
            or r.get("answer") is None:
        raise BadRecord(f"record {rid}: needs problem, answer and a task (one of {', '.join(tasks.TASKS)}, or "
                        "none for the official exact-match reward)")
    images = r.get("images") or []
    if r["problem"].count(IMAGE_PLACEHOLDER) != len(images):
        raise BadRecord(f"record {rid}: {r['problem'].count(IMAGE_PLACEHOLDER)} <image> placeholders "
                        f"but {len(images)} images")
    for ref in images:
        if isinstance(ref, dict) and (ref.get("bytes") is not None or "zip" in ref):
            continue   # decoded from memory / read from the archive (read_records found the member)
        if not isinstance(ref, str) or not (root / ref).is_file():
            raise BadRecord(f"record {rid}: image {root / ref if isinstance(ref, str) else str(ref)[:80]} not found")
    try:
        tasks.accuracy("", str(r["answer"]), r.get("task"))
    except ValueError as e:
        raise BadRecord(f"record {rid}: {e}") from None


def load_prompts(cfg: Config) -> tuple:
    """(records, root, number left out): the prompts of --data minus the cold-start ids, every record checked.

    --data is train.jsonl (make_data.py) or the release's spatialssrl.parquet (records.read_records: records
    without a task get task None, the official reward; images on disk or read from images.zip). The
    cold-start ids come from a .jsonl (--exclude; 'auto': sft.jsonl next to --data). The release needs no
    exclusion: its cold-start set (SFT-coldstart.json) has its own images and no ids shared with the parquet,
    and the official run trained GRPO on every parquet row; 'auto' finds no sft.jsonl in the release folder
    and keeps them all, as the paper did."""
    path = Path(cfg.data)
    if not path.is_file():
        raise BadRecord(f"--data {cfg.data}: no such file")
    records, root = read_records(str(path))
    exclude = path.with_name("sft.jsonl") if cfg.exclude == "auto" else None if cfg.exclude == "none" \
        else Path(cfg.exclude)
    if exclude is not None and exclude.suffix.lower() != ".jsonl":
        raise SetupError(f"--exclude {cfg.exclude}: expected our sft.jsonl (its ids are left out); the release's "
                         "cold-start file shares no ids with spatialssrl.parquet and the official run left "
                         "nothing out: use --exclude none")
    if exclude is not None and exclude.resolve() != path.resolve() and exclude.is_file():
        ids = {r.get("id") for r in read_jsonl(str(exclude))}
        kept = [r for r in records if r.get("id") not in ids]
        left_out = len(records) - len(kept)
        records = kept
    else:
        left_out = 0
    if not records:
        raise BadRecord(f"--data {cfg.data}: no records left (after leaving out {left_out} cold-start ids)")
    for r in records:
        check_prompt_record(r, root)
    return records, root, left_out


def encode_prompts(records: list, root: Path, tok, ip) -> tuple:
    """Left-padded prompt batch for generation and the number of images of each prompt."""
    images = []
    for r in records:
        try:
            images.append(load_images(r, root))
        except OSError as e:
            raise BadRecord(f"record {r.get('id', '?')}: cannot read its images: {e}") from None
    batch = encode([build_messages(r["problem"]) for r in records], images, tok, ip, padding_side="left")
    batch.pop("labels")
    return batch, [len(ims) for ims in images]


# ----------------------------------------------------------------------------- rollout
@dataclass
class Rollout:
    """One rank's share of a rollout step. Row r of every (N, ·) tensor is sample r % G of prompt r // G."""
    records: list                   # the rank's P prompts
    prompts: dict                   # left-padded encode() batch of the prompts (P rows)
    images_per_prompt: list         # images of each prompt (to slice pixel_values / image_grid_thw)
    group_size: int
    completions: torch.Tensor       # (N, L) sampled ids, pad after <|im_end|>
    mask: torch.Tensor              # (N, L) bool: tokens up to and including <|im_end|>
    texts: list = None              # decoded completions
    rewards: torch.Tensor = None    # (N,) 0.9·acc + 0.1·fmt
    accuracy: torch.Tensor = None   # (N,)
    format: torch.Tensor = None     # (N,)
    truncated: torch.Tensor = None  # (N,) no <|im_end|> within --max-new-tokens
    advantages: torch.Tensor = None  # (N,)
    old_logp: torch.Tensor = None   # (N, L)
    ref_logp: torch.Tensor = None   # (N, L) or None without KL


def sequence_batch(ro: Rollout, rows: list) -> tuple:
    """(batch, labels, prompt width) of prompt + completion for the given rows of a rollout.

    input_ids = [left-padded prompt | right-padded completion]; attention_mask = [prompt mask | completion
    mask]; mm_token_type_ids = [prompt's | 0]; image_grid_thw = each row's own prompt images (the same grid
    the completion was sampled with); pixel_values = the images of each distinct prompt once, image_index =
    which of them each row's image is (vlm.token_logprobs runs the vision tower once per distinct image and
    repeats its features over the G rows of a group); labels = completion ids where the mask is on, −100
    elsewhere. Columns that are padding in every selected row are cut at both ends."""
    p_idx = [r // ro.group_size for r in rows]
    amask = ro.prompts["attention_mask"][p_idx]
    start = int(amask.any(0).nonzero()[0])                      # first column any row uses
    width = max(1, int(ro.mask[rows].sum(1).max()))             # longest completion among the rows
    comp, cmask = ro.completions[rows, :width], ro.mask[rows, :width]
    labels_c = torch.where(cmask, comp, torch.full_like(comp, IGNORE_INDEX))
    ids_p = ro.prompts["input_ids"][p_idx, start:]
    batch = {"input_ids": torch.cat([ids_p, comp], 1),
             "attention_mask": torch.cat([amask[:, start:], cmask.long()], 1),
             "mm_token_type_ids": torch.cat([ro.prompts["mm_token_type_ids"][p_idx, start:],
                                             torch.zeros_like(comp)], 1)}
    if "image_grid_thw" in ro.prompts:
        distinct = list(dict.fromkeys(p_idx))    # each prompt's pixels once: the G rows of a group share them
        batch["pixel_values"], _ = prompt_images(ro, distinct)
        batch["image_grid_thw"] = torch.cat([ro.prompts["image_grid_thw"][a:b] for a, b in image_spans(ro, p_idx)])
        first, n = {}, 0                         # index of each distinct prompt's first image in pixel_values
        for q in distinct:
            first[q], n = n, n + ro.images_per_prompt[q]
        batch["image_index"] = torch.tensor([first[p] + j for p in p_idx for j in range(ro.images_per_prompt[p])],
                                            dtype=torch.long)
    labels = torch.cat([torch.full_like(ids_p, IGNORE_INDEX), labels_c], 1)
    return batch, labels, ids_p.shape[1]


def micro_batches(ro: Rollout, rows: list, size: int) -> list:
    """The rows cut into micro-batches of `size` after sorting by total length (less padding per forward)."""
    length = ro.prompts["attention_mask"].sum(1)[[r // ro.group_size for r in rows]] + ro.mask[rows].sum(1)
    order = [rows[i] for i in torch.argsort(length, stable=True).tolist()]
    return [order[i:i + size] for i in range(0, len(order), size)]


def rollout(sampler, model, records: list, root: Path, tok, ip, cfg: Config) -> Rollout:
    """Sample G completions for each of this rank's prompts (every sampling field explicit)."""
    prompts, n_images = encode_prompts(records, root, tok, ip)
    ids, mask = sampler(model, prompts, tok, max_new_tokens=cfg.max_new_tokens, do_sample=True,
                        temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                        num_return_sequences=cfg.group_size)
    return Rollout(records, prompts, n_images, cfg.group_size, ids.cpu(), mask.cpu().bool())


def score(ro: Rollout, tok) -> None:
    """Rewards of every completion with tasks.reward_terms: r = 0.9·accuracy + 0.1·format, the problem text
    passed (position options); format is 0 for a completion cut off without an end token."""
    stop = torch.tensor(stop_token_ids(tok))
    ro.texts = tok.batch_decode(torch.where(ro.mask, ro.completions, tok.pad_token_id), skip_special_tokens=True)
    ro.truncated = ~(torch.isin(ro.completions, stop) & ro.mask).any(1)
    terms = [tasks.reward_terms(text, str(rec["answer"]), rec.get("task"), rec.get("problem"),
                                finished=not bool(ro.truncated[i]))
             for i, text in enumerate(ro.texts) for rec in [ro.records[i // ro.group_size]]]
    ro.rewards, ro.accuracy, ro.format = (torch.tensor(t, dtype=torch.float32) for t in zip(*terms))


def prompt_batch(ro: Rollout, prompts: list) -> dict:
    """The left-padded encode() batch of the given prompts with their images; columns that are padding in
    every one of them are cut."""
    amask = ro.prompts["attention_mask"][prompts]
    start = int(amask.any(0).nonzero()[0])
    batch = {k: ro.prompts[k][prompts, start:] for k in ("input_ids", "attention_mask", "mm_token_type_ids")}
    if "image_grid_thw" in ro.prompts:
        batch["pixel_values"], batch["image_grid_thw"] = prompt_images(ro, prompts)
    return batch


def image_spans(ro: Rollout, prompts: list) -> list:
    """(first image, end image) of each given prompt among the rollout's images (they follow the prompts)."""
    ends = torch.tensor(ro.images_per_prompt).cumsum(0).tolist()
    return [(ends[p] - ro.images_per_prompt[p], ends[p]) for p in prompts]


def prompt_images(ro: Rollout, prompts: list) -> tuple:
    """(pixel_values, image_grid_thw) of the given prompts' images, in that order: image j of the rollout
    has prod(grid_j) rows of pixel_values."""
    grid = ro.prompts["image_grid_thw"]
    rows = [0] + grid.prod(-1).cumsum(0).tolist()
    spans = image_spans(ro, prompts)
    return (torch.cat([ro.prompts["pixel_values"][rows[a]:rows[b]] for a, b in spans]),
            torch.cat([grid[a:b] for a, b in spans]))


def group_logprobs(model, ro: Rollout, rows: list, cfg: Config, with_entropy: bool = False) -> tuple:
    """(vlm.prefix_logprobs of the rows' completions, their width): each distinct prompt among the rows (and
    its images) runs once, the G completions of a group on its keys and values."""
    distinct = list(dict.fromkeys(r // ro.group_size for r in rows))
    w = max(1, int(ro.mask[rows].sum(1).max()))
    out = prefix_logprobs(model, prompt_batch(ro, distinct), [distinct.index(r // ro.group_size) for r in rows],
                          ro.completions[rows, :w], ro.mask[rows, :w], cfg.temperature, cfg.logprob_chunk_size,
                          with_entropy=with_entropy)
    return out, w


@torch.no_grad()
def rollout_logprobs(model, ro: Rollout, cfg: Config, device: torch.device) -> torch.Tensor:
    """Per-token log-probs (N, L) of the sampled completions under `model` (logits / temperature, fp32
    log-softmax, LM head only at completion positions); 0 outside the completion mask. Each micro-batch runs
    its distinct prompts once and the completions on their KV cache (vlm.prefix_logprobs: the G samples of a
    prompt share its prompt and image work); text-only rollouts take the plain prompt + completion forward."""
    n, width = ro.completions.shape
    logp = torch.zeros(n, width)
    for rows in micro_batches(ro, list(range(n)), cfg.logprob_micro_batch_size):
        if "image_grid_thw" in ro.prompts:
            lp, w = group_logprobs(model, ro, rows, cfg)
            logp[rows, :w] = lp.float().cpu()
            continue
        batch, labels, start = sequence_batch(ro, rows)
        lp = token_logprobs(model, {k: v.to(device) for k, v in batch.items()}, labels.to(device),
                                temperature=cfg.temperature, chunk_size=cfg.logprob_chunk_size)
        logp[rows, :labels.shape[1] - start] = lp[:, start:].float().cpu()
    return logp


# ----------------------------------------------------------------------------- update
def update(model, optimizer, ro: Rollout, rows: list, cfg: Config, device: torch.device) -> dict:
    """One optimizer step on the given rows (this rank's share of one mini-batch). ro.old_logp None means
    the policy has not changed since the rollout: old log-probs = the current ones, detached (ratio 1).

    The completion-token count of the whole mini-batch is all-reduced first; each micro-batch's loss is
    divided by N_global / world, so after FSDP's gradient mean over ranks the step follows the token mean
    over the global mini-batch, whatever the micro-batch size or the number of ranks."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    n_global = max(1.0, all_reduce_sum(int(ro.mask[rows].sum()), device))
    chunks = micro_batches(ro, rows, cfg.micro_batch_size)
    sums, fsdp = {}, is_fsdp(model)
    for i, mb in enumerate(chunks):
        if fsdp:  # reduce-scatter after every micro-batch (only a gradient shard is held), or only after the last
            model.set_requires_gradient_sync(cfg.sync_every_micro_batch or i == len(chunks) - 1)
        if "image_grid_thw" in ro.prompts and not fsdp:   # the group's prompt once (FSDP2: not yet measured)
            (logp, ent), w = group_logprobs(model, ro, mb, cfg, with_entropy=True)
        else:
            batch, labels, start = sequence_batch(ro, mb)
            logp, ent = token_logprobs(model, {k: v.to(device) for k, v in batch.items()}, labels.to(device),
                                       temperature=cfg.temperature, chunk_size=cfg.logprob_chunk_size,
                                       with_entropy=True)
            logp, ent, w = logp[:, start:], ent[:, start:], logp.shape[1] - start
        on = lambda x: None if x is None else x[mb, :w].to(device)
        old = logp.detach() if ro.old_logp is None else on(ro.old_logp)    # None: this update is on-policy
        loss, m = policy_loss(logp, old, on(ro.ref_logp), ro.advantages[mb].to(device), on(ro.mask),
                              clip_low=cfg.clip_low, clip_high=cfg.clip_high, dual_clip=cfg.dual_clip,
                              kl_coef=cfg.kl_coef, normalizer=n_global / world)
        loss.backward()
        m["entropy"] = float((ent * on(ro.mask)).sum()) / max(1, m["tokens"])
        for k, v in m.items():  # token-weighted sums, turned into means over the mini-batch in log_row()
            sums[k] = sums.get(k, 0.0) + (v if k == "tokens" else v * m["tokens"])
    sums.update(optimizer_step(model, optimizer, cfg.max_grad_norm))
    return sums


def optimizer_step(model, optimizer, max_grad_norm: float) -> dict:
    """Clip the gradient norm and step, unless the norm is non-finite: then the step is skipped (the
    weights stay untouched) and reported."""
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm) if params else torch.tensor(0.0)
    norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
    ok = math.isfinite(norm)
    if ok:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {"grad_norm": norm, "skipped": 0 if ok else 1}


# ----------------------------------------------------------------------------- metrics
def reduce_sums(sums: dict, device: torch.device) -> dict:
    """Sum a dict of numbers over ranks (every rank passes the same keys)."""
    keys = sorted(sums)
    if not dist.is_initialized():
        return {k: float(sums[k]) for k in keys}
    t = torch.tensor([float(sums[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist()))


def rollout_sums(ro: Rollout) -> dict:
    """This rank's rollout statistics as sums (reward / accuracy / format overall and per task, lengths,
    truncations, groups with all-equal rewards)."""
    lengths, r = ro.mask.sum(1).float(), ro.rewards.view(-1, ro.group_size)
    s = {"seqs": len(ro.rewards), "reward": ro.rewards.sum(), "accuracy": ro.accuracy.sum(),
         "format": ro.format.sum(), "truncated": ro.truncated.sum(), "length": lengths.sum(),
         "groups": r.shape[0], "equal_groups": (r.max(1).values == r.min(1).values).sum()}
    task_of = [ro.records[i // ro.group_size]["task"] for i in range(len(ro.rewards))]
    for t in tasks.TASKS:
        sel = torch.tensor([x == t for x in task_of])
        for k, v in (("n", sel.float()), ("reward", ro.rewards), ("accuracy", ro.accuracy), ("format", ro.format)):
            s[f"{t}/{k}"] = (v * sel).sum()
    return {k: float(v) for k, v in s.items()}


def log_row(step: int, epoch: int, ro_sums: dict, up_sums: dict, ups: list, times: dict) -> dict:
    """One metrics.jsonl row from the all-reduced sums of a step."""
    n, tok = max(1.0, ro_sums["seqs"]), max(1.0, up_sums["tokens"])
    row = {"step": step, "epoch": epoch, "reward": ro_sums["reward"] / n, "accuracy": ro_sums["accuracy"] / n,
           "format": ro_sums["format"] / n, "truncated": ro_sums["truncated"] / n,
           "response_length": ro_sums["length"] / n, "equal_groups": ro_sums["equal_groups"] / ro_sums["groups"]}
    for k in ("kl", "pg_loss", "ratio", "ppo_kl", "clip_high", "clip_low", "clip_dual", "entropy"):
        row[k] = up_sums[k] / tok
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
    return (f"step {r['step']:05d} | reward {r['reward']:.3f} acc {r['accuracy']:.3f} fmt {r['format']:.3f} | "
            f"{per_task} | kl {r['kl']:.4f} | clip {r['clip_low']:.3f}/{r['clip_high']:.3f}/{r['clip_dual']:.3f} | "
            f"ent {r['entropy']:.3f} | len {r['response_length']:.0f} trunc {r['truncated']:.2f} | "
            f"equal groups {r['equal_groups']:.2f} | gnorm {r['grad_norm']:.3f}{skipped} | "
            f"gen {r['time_gen']:.1f}s lp {r['time_logprob']:.1f}s upd {r['time_update']:.1f}s | "
            f"gen tok/s {r['gen_tok_per_s']:.0f}")


def sample_rows(ro: Rollout, step: int, n: int) -> list:
    """samples.jsonl rows: prompt, completion, parsed answer, reward parts and advantage."""
    rows = []
    for i in range(min(n, len(ro.texts))):
        rec = ro.records[i // ro.group_size]
        rows.append({"step": step, "id": rec.get("id"), "task": rec["task"], "problem": rec["problem"],
                     "answer": rec["answer"], "completion": ro.texts[i], "parsed": tasks.extract_boxed(ro.texts[i]),
                     "reward": float(ro.rewards[i]), "accuracy": float(ro.accuracy[i]),
                     "format": float(ro.format[i]), "truncated": bool(ro.truncated[i]),
                     "advantage": float(ro.advantages[i])})
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
    sampler: "Sampler"
    records: list                   # usable prompts, cold-start ids left out
    root: Path                      # images are relative to this folder
    rollout_bs: int                 # prompts per rollout, all ranks
    update_bs: int                  # prompts per optimizer step, all ranks
    identity: dict                  # settings a resumed run must share (grpo_identity)
    step: int                       # first step to run (after --resume)


RUN_MARKERS = ("grpo_config.json", "metrics.jsonl", "samples.jsonl", "checkpoints", "hf")   # grpo.py's files


def setup_models(cfg: Config, d: Dist) -> dict:
    """Policy (trained incl. vision unless --freeze-vision, checkpointing, FSDP2), frozen reference (only when
    kl_coef > 0; bf16 on GPU), tokenizer, image processor and AdamW. Multi-rank runs read the weights on
    rank 0 only (load_model(meta=True) + shard_model(broadcast_from_rank0=True))."""
    from_rank0, cuda = d.world_size > 1, d.device.type == "cuda"
    shard = cfg.fsdp or from_rank0 or cuda

    def load(dtype):
        try:
            return load_model(cfg.model, min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels, dtype=dtype,
                                  attn_implementation=cfg.attn_implementation, meta=from_rank0 and not d.is_main)
        except (OSError, ValueError) as e:
            raise ValueError(f"--model {cfg.model}: cannot load it: {str(e).splitlines()[0]}") from None

    model, tok, ip = load(torch.float32)
    if cfg.freeze_vision:
        freeze_vision(model)
    model.config.use_cache = False
    if cfg.activation_checkpointing:
        enable_activation_checkpointing(model)   # the layers that train only (call after freeze_vision)
    model.train()
    model = shard_model(model, d.device, cfg.bf16, broadcast_from_rank0=from_rank0) if shard \
        else model.to(d.device)
    ref = None
    if cfg.kl_coef > 0:
        ref = load(torch.bfloat16 if cfg.bf16 and cuda else torch.float32)[0].requires_grad_(False).eval()
        ref = shard_model(ref, d.device, cfg.bf16, broadcast_from_rank0=from_rank0) if shard \
            else ref.to(d.device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                  betas=tuple(cfg.adam_betas), weight_decay=cfg.weight_decay)
    return dict(model=model, ref=ref, tok=tok, ip=ip, optimizer=optimizer)


class Sampler:
    """Rollout sampling with generate()'s contract: generate on the (sharded) training model, or
    RolloutEngine, whose plain copy of the policy (bf16 on CUDA) is refreshed from the shards before every
    rollout (a collective: every rank calls it) and, with --no-keep-rollout-copy, freed after it."""

    def __init__(self, model, cfg: Config, device: torch.device):
        use = use_engine(cfg.rollout_engine, device)
        self.engine = RolloutEngine(model, prompts_per_call=cfg.rollout_prompts_per_call) if use else None
        self.keep, self.refresh_s = cfg.keep_rollout_copy, 0.0

    def __call__(self, model, batch: dict, tok, **sampling) -> tuple:
        if self.engine is None:
            return generate(model, batch, tok, **sampling)
        self.refresh_s = self.engine.refresh(model)
        out = self.engine.generate(batch, tok, **sampling)
        if not self.keep:
            self.engine.free()
        return out


def grpo_identity(cfg: Config, num_records: int, rollout_bs: int, update_bs: int, image_processor) -> dict:
    """What a resumed run must share with the saved one: the step → data position map (model, records,
    batch sizes, G, seed, shuffle, epochs), the sampling, the objective, the optimizer and the image bounds."""
    keys = ("model", "group_size", "seed", "shuffle", "epochs", "max_steps", "max_new_tokens", "temperature",
            "top_p", "top_k", "lr", "weight_decay", "adam_betas", "max_grad_norm", "clip_low", "clip_high",
            "dual_clip", "kl_coef", "adv_eps", "freeze_vision")
    size = image_processor.size
    return {**{k: getattr(cfg, k) for k in keys}, "num_records": num_records, "rollout_batch_size": rollout_bs,
            "update_batch_size": update_bs, "pixels": [size["shortest_edge"], size["longest_edge"]]}


IDENTITY_LABELS = {"num_records": "usable records in --data", "rollout_batch_size": "prompts per rollout "
                   "(--rollout-batch-size, scaled to the data and ranks)", "update_batch_size": "prompts per "
                   "update (--update-batch-size)", "pixels": "image bounds (--min-pixels, --max-pixels)"}


def save_checkpoint(run: Run, cfg: Config, state: dict) -> None:
    """HF export OUT/hf/step_N and resumable state OUT/checkpoints/step_N, each written under a .tmp name
    and renamed when complete (a kill −9 mid-save leaves only a .tmp folder); keeps the newest K of each."""
    hf = Path(cfg.out) / "hf"
    final = hf / f"step_{state['step']:08d}"
    tmp = final.with_name(final.name + ".tmp")
    if is_main():
        shutil.rmtree(tmp, ignore_errors=True)
    save_hf(run.model, run.tok, run.ip, str(tmp), getattr(torch, cfg.save_dtype))
    if is_main():
        publish_step_folder(tmp, final, cfg.keep_checkpoints)
    save_state(run.model, run.optimizer, state, cfg.out, cfg.keep_checkpoints)


def setup_run(cfg: Config, d: Dist) -> Run:
    """Checks (before anything is written), prompts, models, then the output folder and the resume point."""
    mode = out_dir_mode(cfg.out, "grpo.py", RUN_MARKERS, cfg.resume, cfg.overwrite)
    resolve_model(cfg.model)
    records, root, left_out = load_prompts(cfg)
    rollout_bs, update_bs = batch_sizes(cfg, len(records), d.world_size)
    m = setup_models(cfg, d)
    identity = grpo_identity(cfg, len(records), rollout_bs, update_bs, m["ip"])
    ckpt = checked_checkpoint(cfg.out, identity, IDENTITY_LABELS) if mode == "resume" else None
    barrier()   # every rank has passed the checks before rank 0 writes anything
    if d.is_main:
        start_out_dir(cfg.out, mode)
        info = {"config": dataclasses.asdict(cfg), "argv": sys.argv, "rollout_batch_size": rollout_bs,
                "update_batch_size": update_bs, "world_size": d.world_size, "left_out": left_out}
        atomic_write(Path(cfg.out) / "grpo_config.json", json.dumps(info, indent=1))
    if cfg.resume and ckpt is None:
        print0(f"--resume: no complete checkpoint in {cfg.out}/checkpoints, starting from scratch")
    step = resume_from(m["model"], m["optimizer"], ckpt, cfg.out, logs=("metrics.jsonl", "samples.jsonl"))["step"]
    run = Run(**m, sampler=Sampler(m["model"], cfg, d.device), records=records, root=root, rollout_bs=rollout_bs,
              update_bs=update_bs, identity=identity, step=step)
    print0(f"model {cfg.model} | prompts {len(records)} (left out {left_out} cold-start ids) | "
           f"rollout {rollout_bs} × G {cfg.group_size} | update {update_bs} prompts | world {d.world_size} | "
           f"images {identity['pixels'][0]}..{identity['pixels'][1]} px | "
           f"reference {'yes' if run.ref is not None else 'no (kl_coef 0)'} | device {d.device}")
    return run


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


# ----------------------------------------------------------------------------- training loop
def train(cfg: Config) -> list:
    """The GRPO loop. Each step: rollout → reward → advantage → old / ref log-probs → updates → log →
    checkpoint. Returns the metrics rows of the steps it ran."""
    d = setup_dist(cfg.seed)
    try:
        run = setup_run(cfg, d)
        model, ref, tok, opt, dev = run.model, run.ref, run.tok, run.optimizer, d.device
        R, U, G, step, out, rows_logged = run.rollout_bs, run.update_bs, cfg.group_size, run.step, Path(cfg.out), []
        steps_per_epoch = len(run.records) // R
        total = cfg.max_steps if cfg.max_steps > 0 else cfg.epochs * steps_per_epoch
        bar = tqdm(total=total, initial=step, desc="grpo", file=sys.stderr,
                   disable=not (d.is_main and sys.stderr.isatty()))
        while step < total:
            if cfg.stop_after_steps and step >= cfg.stop_after_steps:
                print0(f"stopping after step {step} (--stop-after-steps)")
                return rows_logged
            epoch, k = divmod(step, steps_per_epoch)
            order = epoch_order(len(run.records), epoch, cfg.seed, cfg.shuffle)[k * R:(k + 1) * R]
            mine = [run.records[i] for i in order[d.rank * R // d.world_size:(d.rank + 1) * R // d.world_size]]
            torch.manual_seed(step_seed(cfg.seed, step, d.rank))
            t0 = _now(dev)
            # 1-3. rollout, reward, group-normalised advantage
            ro = rollout(run.sampler, model, mine, run.root, tok, run.ip, cfg)
            score(ro, tok)
            ro.advantages = group_advantages(ro.rewards, G, eps=cfg.adv_eps)
            t1 = _now(dev)
            # 4. log-probs before the update ("old"; not needed when one update uses the rollout: it is
            #    on-policy) and under the frozen reference
            ro.old_logp = rollout_logprobs(model, ro, cfg, dev) if R > U else None
            ro.ref_logp = rollout_logprobs(ref, ro, cfg, dev) if ref is not None else None
            t2 = _now(dev)
            # 5. R / U optimizer steps, each on this rank's share of one mini-batch
            per = U // d.world_size * G
            ups = [update(model, opt, ro, list(range(j * per, (j + 1) * per)), cfg, dev) for j in range(R // U)]
            t3 = _now(dev)
            step += 1
            up_sums = reduce_sums({k: sum(u[k] for u in ups) for k in ups[0] if k not in ("grad_norm", "skipped")}, dev)
            row = log_row(step, epoch, reduce_sums(rollout_sums(ro), dev), up_sums, ups,
                          {"gen": t1 - t0, "logprob": t2 - t1, "update": t3 - t2, "step": t3 - t0,
                           "refresh": run.sampler.refresh_s})
            rows_logged.append(row)
            print0(format_row(row))
            if d.is_main:
                append_metrics(out / "metrics.jsonl", [row])
                if cfg.sample_every and (step % cfg.sample_every == 0 or step == 1):
                    append_metrics(out / "samples.jsonl", sample_rows(ro, step, cfg.samples_per_log))
            bar.update(1)
            if (cfg.save_every and step % cfg.save_every == 0) or step == total:
                save_checkpoint(run, cfg, {"step": step, "epoch": step // steps_per_epoch, **run.identity})
        bar.close()
        save_hf(model, tok, run.ip, cfg.out, getattr(torch, cfg.save_dtype))
        print0(f"saved HF checkpoint to {cfg.out}")
        return rows_logged
    finally:
        cleanup_dist()


def main(argv: list | None = None) -> None:
    """The command line: bad input (flags, model, data, --out, a resume that does not match) is one line
    "grpo.py: error: …" with a non-zero exit, and nothing is written before the checks pass."""
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()   # "Loading weights" bars on every rank
    args = build_parser().parse_args(argv)
    try:
        cfg = Config(**{**vars(args), "adam_betas": tuple(args.adam_betas)})
        if not cfg.data:
            raise ValueError("--data is required (train.jsonl from make_data.py)")
        train(cfg)
    except (ValueError, BadRecord) as e:   # bad input: one line, nothing written
        raise SystemExit(f"grpo.py: error: {e}") from None


if __name__ == "__main__":
    main()
