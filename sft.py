"""Cold-start SFT for Spatial-SSRL.

Stage 2 of Spatial-SSRL (arXiv 2510.27606, §3.2): a short supervised fine-tune on ~3.6k CoT answers so the
model learns the answer format (<think>…</think> then \\boxed{…}); without it GRPO rollouts earn almost no
reward. The model plumbing it shares with grpo.py and evaluate.py (load, encode, log-probs, FSDP2, save)
lives in vlm.py; distributed setup, config parsing and checkpoints in common.py. This file reads top to
bottom: config · loss and schedule · data · loop (train_step, train) · command line.

    python sft.py --model tiny --data data/ssrl/sft.jsonl --out runs/sft-tiny --global-batch-size 8 --lr 6e-3 \\
        --max-steps 200 --max-pixels 12544     # CPU example (README: its time and memory)
    torchrun --nproc_per_node 8 sft.py --model Qwen/Qwen2.5-VL-7B-Instruct --data data/ssrl/sft.jsonl --out runs/sft7b
    python sft.py --smoke --out runs/smoke   # CPU smoke run: tiny model, synthetic data, 2 steps

Paper → code (cold start = official training/SFT-coldstart, LLaMA-Factory configs)
  prompt = problem + " " + CoT prompt, <image> items   → vlm.build_messages() (tasks.with_cot)
  chat template + image tokens + M-RoPE inputs          → vlm.encode(), encode_records()
  loss on response tokens only, token mean              → sft_loss(), vlm.token_logprobs(), train_step()
  5 epochs, lr 1e-5, cosine, 10% warmup                 → Config, lr_at()
  global batch 256 = 4 per device × 8 accum × 8 GPUs    → Config, rank_micro_batches()
  cutoff 4096 tokens, images ≤ 512² px                  → Config.max_length, vlm.PAPER_MAX_PIXELS, prepare_records()
  vision tower + projector frozen                       → vlm.freeze_vision()
  bf16 training                                          → vlm.shard_model() (FSDP2 MixedPrecisionPolicy)
  merged HF checkpoint for GRPO                          → vlm.save_hf()

Deviations
  1. Full-parameter fine-tune of the language model (embeddings, decoder, lm_head); the official run trained
     LoRA r=128 adapters on the language model's linear layers and merged them (peft is not a dependency).
  2. Images are bounded by the image processor's smart resize (min/max pixels, multiples of 28) instead of
     LLaMA-Factory's PIL pre-resize followed by the processor; sizes can differ by one 28-px step.
  3. The training target is the response followed by <|im_end|>; LLaMA-Factory also trains the "\\n" after it.
  4. bf16 parameters with fp32 master weights and fp32 gradient reduction (FSDP2) on GPU, plain fp32 on CPU;
     the official run used bf16 LoRA through DeepSpeed/accelerate.
  5. The last, partial global batch of an epoch is kept (like the HF Trainer); ranks left without samples
     run a zero-weight copy so every rank joins the collectives.
  6. Resumable state (model + optimizer + step) is a torch.distributed.checkpoint folder; there is no RNG
     state to restore because the data order is a pure function of (seed, epoch) and Qwen has no dropout.
  7. Our own run configuration goes to sft_config.json, because config.json is the HF model config.
  8. Micro-batches can be sized by tokens (--micro-batch-tokens, samples sorted by length) instead of 4
     samples per device; the update is the same, because the loss is normalised by the global token count.
"""
import argparse
import dataclasses
import io
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from tqdm import tqdm

from common import (BadRecord, Dist, SetupError, all_reduce_sum, append_metrics, atomic_write, barrier,
                    checked_checkpoint, cleanup_dist, config_parser, epoch_order, knob, out_dir_mode, print0,
                    resume_from, save_state, setup_dist, start_out_dir)
from records import load_images, open_image, read_records
from vlm import (IGNORE_INDEX, IMAGE_PLACEHOLDER, PAPER_MAX_PIXELS, build_messages, enable_activation_checkpointing,
                 encode, freeze_vision, image_token_count, is_fsdp, load_model, save_hf, set_pixel_bounds,
                 shard_model, token_logprobs, tokenize_conversation)


# ----------------------------------------------------------------------------- config
@dataclass
class Config:
    model: str = knob("tiny", "HF id or local HF dir (Qwen2.5-VL / Qwen3-VL), or 'tiny' / 'tiny-qwen3'")
    data: str = knob("", "REQUIRED (except with --smoke): the cold-start file, sft.jsonl from make_data.py "
                       "(records with id, task, problem, answer, images, response) or the release's "
                       "SFT-coldstart.json (LLaMA-Factory format; images from coldstart_SFT_images/ or "
                       "images_coldstart.zip beside it)")
    out: str = knob("runs/sft", "output folder: the HF checkpoint, metrics.jsonl, checkpoints/")
    epochs: int = knob(5, "passes over the data (paper: 5)")
    max_steps: int = knob(0, "stop after this many optimizer steps (0: epochs decide)")
    lr: float = knob(1e-5, "peak learning rate (paper: 1e-5)")
    warmup_ratio: float = knob(0.1, "fraction of steps with linear warmup before the cosine decay")
    weight_decay: float = knob(0.0, "AdamW weight decay (LLaMA-Factory default 0)")
    adam_betas: tuple = knob((0.9, 0.999), "AdamW betas")
    global_batch_size: int = knob(256, "samples per optimizer step over all ranks (paper: 256)")
    micro_batch_size: int = knob(4, "samples per forward/backward on one rank")
    micro_batch_tokens: int = knob(0, "instead of --micro-batch-size: micro-batches of at most this many padded "
                                    "tokens (count x longest), samples sorted by length (e.g. 16384 on a GPU)")
    max_length: int = knob(4096, "max tokens per sample, prompt + image tokens + response (paper: 4096)")
    min_pixels: int | None = knob(None, "smallest image area after resizing, in pixels (default: the model's "
                                      "own bound)")
    max_pixels: int | None = knob(None, "largest image area after resizing, in pixels (default: the model's own "
                                      "bound, at most 512² = 262144 as in the paper)")
    max_grad_norm: float = knob(1.0, "gradient-norm clip")
    freeze_vision: bool = knob(True, "freeze the vision tower and projector (paper: frozen)")
    activation_checkpointing: bool = knob(True, "non-reentrant activation checkpointing of every block")
    bf16: bool = knob(True, "bf16 compute with fp32 master weights and reduction (GPU only; CPU stays fp32)")
    fsdp: bool = knob(False, "shard with FSDP2 even in a single CPU process (always on for GPU or >1 rank)")
    shuffle: bool = knob(True, "shuffle the records every epoch (seeded)")
    seed: int = knob(42, "seed for the data order and the per-rank RNGs")
    skip_bad_records: bool = knob(False, "skip and count bad records instead of stopping with an error")
    save_every: int = knob(15, "write a resumable checkpoint every N steps, and at the end (0: only at the end)")
    keep_checkpoints: int = knob(1, "resumable checkpoints kept on disk")
    resume: bool = knob(False, "continue the run in OUT from its newest complete checkpoint (refused when a "
                             "setting that defines the schedule or the data differs)")
    overwrite: bool = knob(False, "delete the earlier run in OUT (an sft.py output folder) and start over")
    save_dtype: str = knob("bfloat16", "dtype of the exported HF weights (bfloat16 or float32)")
    attn_implementation: str = knob("sdpa", "attention kernel passed to transformers")
    stop_after_steps: int = knob(0, "stop (as if killed) after this many steps, keeping the full schedule; "
                               "for testing --resume")
    smoke: bool = knob(False, "CPU smoke run; overrides --model tiny, --max-steps 2, --global-batch-size 4, "
                            "--micro-batch-size 2, --lr 1e-3, --warmup-ratio 0 and, without --data, uses 8 "
                            "synthetic records written to OUT/smoke_data")

    def __post_init__(self):
        if self.global_batch_size < 1 or self.micro_batch_size < 1:
            raise SetupError("--global-batch-size and --micro-batch-size must be positive")
        if self.micro_batch_tokens < 0:
            raise SetupError("--micro-batch-tokens must be 0 (off) or positive")
        if self.keep_checkpoints < 1:
            raise SetupError("--keep-checkpoints must be at least 1")
        if self.save_dtype not in ("bfloat16", "float32"):
            raise SetupError("--save-dtype must be bfloat16 or float32")
        if self.resume and self.overwrite:
            raise SetupError("--resume and --overwrite exclude each other")
        for name in ("min_pixels", "max_pixels"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise SetupError(f"--{name.replace('_', '-')} must be positive")


USAGE_EXAMPLES = """examples:
  python sft.py --smoke --out runs/smoke            # CPU check: tiny model, synthetic data, 2 steps
  python make_data.py && python sft.py --model tiny --data data/ssrl/sft.jsonl --out runs/sft-tiny \\
      --global-batch-size 8 --lr 6e-3 --max-steps 200 --max-pixels 12544   # learns the answer format
  torchrun --nproc_per_node 8 sft.py --model Qwen/Qwen2.5-VL-7B-Instruct --data data/ssrl/sft.jsonl --out runs/sft7b
  python sft.py ... --out runs/sft7b --resume       # continue a stopped run from OUT/checkpoints

--data is the cold-start file (sft.jsonl, records with a "response"); train.jsonl is for GRPO. An existing
run in --out is never mixed with a new one: pass --resume to continue it or --overwrite to start over."""


def build_parser() -> argparse.ArgumentParser:
    return config_parser(Config, "sft.py", __doc__.split("\n")[0], USAGE_EXAMPLES, {"data": "SFT_JSONL"})


# ----------------------------------------------------------------------------- loss and schedule
def sft_loss(logp: torch.Tensor, labels: torch.Tensor, normalizer: float) -> tuple:
    """Cross entropy of the supervised (response) tokens, summed and divided by a fixed normalizer.

    L = Σ_{t: y_t ≠ -100} −log p(y_t) / normalizer, with logp = token_logprobs(model, batch, labels) (B, T)
    and labels y (B, T), -100 = not supervised. To get the token mean over a global batch split into
    micro-batches and ranks, pass normalizer = N_global / world: the micro-batch losses of a rank then sum
    to Σ_rank / N_global · world, and FSDP's gradient mean over ranks gives exactly the global token mean,
    independent of the split. Returns (loss, {"loss_sum": detached Σ, "tokens": supervised tokens}).
    """
    tok_loss = -logp.sum()              # token_logprobs is 0 where labels = -100
    return tok_loss / normalizer, {"loss_sum": tok_loss.detach(), "tokens": int((labels != IGNORE_INDEX).sum())}


def lr_at(step: int, total_steps: int, peak_lr: float, warmup_ratio: float) -> float:
    """Cosine schedule with linear warmup (as transformers' get_cosine_schedule_with_warmup).

    w = ⌈warmup_ratio · T⌉;  lr(s) = peak · s / w for s < w,  else peak · ½ (1 + cos(π (s − w) / (T − w))),
    for optimizer step s = 0 … T−1 (so the first warmup step has lr 0, as in the HF Trainer).
    """
    warmup = math.ceil(warmup_ratio * total_steps)
    if step < warmup:
        return peak_lr * step / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return peak_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


# ----------------------------------------------------------------------------- data
def check_sft_record(record: dict, root: Path, tokenizer, image_processor, max_length: int) -> int:
    """Validate one SFT record and return its token length; raise BadRecord naming it otherwise."""
    rid = record.get("id", "?")
    if "response" not in record:
        raise BadRecord(f'record {rid}: no "response" field; sft.py trains on the cold-start file sft.jsonl '
                        "that make_data.py writes (train.jsonl and test.jsonl have no responses: they are for "
                        "GRPO and evaluation)")
    if not isinstance(record["response"], str) or not record["response"].strip():
        raise BadRecord(f"record {rid}: empty response")
    if not isinstance(record.get("problem"), str):
        raise BadRecord(f'record {rid}: "problem" is {json.dumps(record.get("problem"))}, not a string')
    images = record.get("images")
    if not isinstance(images, list) or not all(isinstance(x, (str, dict)) for x in images):
        raise BadRecord(f'record {rid}: "images" is {json.dumps(images, default=str)[:200]}, not a list of paths '
                        "(use [] for a text-only record)")
    if record["problem"].count(IMAGE_PLACEHOLDER) != len(images):
        raise BadRecord(f"record {rid}: {record['problem'].count(IMAGE_PLACEHOLDER)} <image> "
                        f"placeholders but {len(images)} images")
    counts = []
    for ref in images:   # a path, or (release files, records.read_records) bytes or a zip member
        name = root / ref if isinstance(ref, str) else ref.get("path") or ref.get("member") or "(bytes)"
        try:
            with open_image(ref, root) as im:
                im.load()   # decode it all: a truncated file has a valid header
                counts.append(image_token_count(im.size, image_processor))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise BadRecord(f"record {rid}: cannot read image {name}: {e}") from None
    p, t = tokenize_conversation(build_messages(record["problem"], record["response"]), counts, tokenizer)
    if len(p) + len(t) > max_length:
        raise BadRecord(f"record {rid}: {len(p) + len(t)} tokens > --max-length {max_length}")
    return len(p) + len(t)


def prepare_records(records: list, root: Path, tokenizer, image_processor, max_length: int,
                    skip_bad: bool) -> tuple:
    """Validate all records up front: (kept records, number skipped). Without skip_bad the first bad
    record stops the run with its error; with it, bad records are dropped and counted (never silently)."""
    kept, skipped, first = [], 0, ""
    for rec in records:
        try:
            kept.append({**rec, "num_tokens": check_sft_record(rec, root, tokenizer, image_processor, max_length)})
        except BadRecord as e:
            if not skip_bad:
                raise
            skipped += 1
            first = first or str(e)
            print0(f"skipping bad record: {e}")
    if not kept:
        raise BadRecord(f"no usable records: all {skipped} are bad, the first: {first}" if skipped
                        else "no records: the data file is empty")
    return kept, skipped


def encode_records(records: list, root: Path, tokenizer, image_processor) -> dict:
    """SFT batch (right padded, labels on the responses) for a list of records."""
    convs = [build_messages(r["problem"], r["response"]) for r in records]
    return encode(convs, [load_images(r, root) for r in records], tokenizer, image_processor, "right")


def pack_by_tokens(lengths: list, max_tokens: int) -> list:
    """Micro-batches (lists of indices into `lengths`) whose padded size, count × longest, stays within
    max_tokens: indices sorted by length, longest first, filled greedily; a sample longer than the budget
    gets a micro-batch of its own. Sorting keeps padding small (neighbours have similar lengths)."""
    out, cur = [], []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if cur and (len(cur) + 1) * lengths[cur[0]] > max_tokens:
            out.append(cur)
            cur = []
        cur.append(i)
    return out + ([cur] if cur else [])


def rank_micro_batches(batch: list, rank: int, world_size: int, micro_batch_size: int, max_tokens: int = 0,
                  lengths: list | None = None) -> list:
    """This rank's micro-batches of one global batch; every rank gets the same number of them.

    By count (max_tokens = 0): the global batch is cut into world_size contiguous shares of ⌈B / world⌉,
    each cut into micro-batches of micro_batch_size. By tokens (max_tokens > 0, lengths[i] = tokens of
    batch[i]): the batch sorted by length is dealt round-robin to the ranks (similar token counts per rank)
    and each share is packed by pack_by_tokens; the number of micro-batches is the largest over the ranks,
    which every rank computes alike from the same batch. A missing micro-batch is returned as [] and the
    caller runs a zero-weight sample in its place, so all ranks issue the same collectives. The loss
    normalisation is global (train_step), so neither choice changes the update.
    """
    if max_tokens > 0:
        order = sorted(range(len(batch)), key=lambda i: -lengths[i])
        shares = [order[r::world_size] for r in range(world_size)]
        packs = [[[share[j] for j in mb] for mb in pack_by_tokens([lengths[i] for i in share], max_tokens)]
                 for share in shares]
        n_micro = max(len(p) for p in packs)
        return [[batch[i] for i in mb] for mb in packs[rank]] + [[]] * (n_micro - len(packs[rank]))
    share = math.ceil(len(batch) / world_size)
    mine = batch[rank * share:(rank + 1) * share]
    n_micro = math.ceil(share / micro_batch_size)
    return [mine[i * micro_batch_size:(i + 1) * micro_batch_size] for i in range(n_micro)]


def rank_batches(batch: list, root: Path, tokenizer, image_processor, d: Dist, micro_batch_size: int,
                 micro_batch_tokens: int = 0) -> list:
    """Encode this rank's micro-batches of a global batch (by count, or by a token budget using the
    records' num_tokens from prepare_records); an empty one becomes a zero-weight sample."""
    out = []
    lengths = [r["num_tokens"] for r in batch] if micro_batch_tokens else None
    for mb in rank_micro_batches(batch, d.rank, d.world_size, micro_batch_size, micro_batch_tokens, lengths):
        enc = encode_records(mb or batch[:1], root, tokenizer, image_processor)
        if not mb:
            enc["labels"].fill_(IGNORE_INDEX)
        out.append(enc)
    return out


# ----------------------------------------------------------------------------- loop
def train_step(model, optimizer, batches: list, lr: float, max_grad_norm: float, device: torch.device,
               sync_every_micro_batch: bool = True) -> dict:
    """One optimizer step over this rank's micro-batches (encoded, labels included).

    The supervised-token count is all-reduced first, so every micro-batch loss is normalised by the
    global count (sft_loss): the update does not depend on how the global batch is split. On an FSDP2
    model the gradients are reduce-scattered after every micro-batch (sync_every_micro_batch), so a rank
    holds only its fp32 gradient shard between micro-batches; with False they are accumulated unsharded
    (one full fp32 gradient of the trained parameters per rank: ≈ 30 GB for 7B, whose language model
    has 7.6B parameters; the vision tower is frozen here) and reduced once after the last micro-batch."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    n_local = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches)
    n_global = max(1.0, all_reduce_sum(n_local, device))
    fsdp, loss_sum, seen = is_fsdp(model), 0.0, 0
    for i, b in enumerate(batches):
        if fsdp:
            model.set_requires_gradient_sync(sync_every_micro_batch or i == len(batches) - 1)
        b = {k: v.to(device) for k, v in b.items()}
        labels = b.pop("labels")
        loss, m = sft_loss(token_logprobs(model, b, labels), labels, n_global / world)
        loss.backward()
        loss_sum += float(m["loss_sum"])
        seen += int(b["attention_mask"].sum())
    params = [p for p in model.parameters() if p.grad is not None]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
    for group in optimizer.param_groups:
        group["lr"] = lr
    if math.isfinite(grad_norm):  # skip the update on a non-finite gradient (as EasyR1 does)
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {"loss": all_reduce_sum(loss_sum, device) / n_global, "grad_norm": grad_norm,
            "tokens": all_reduce_sum(seen, device), "sup_tokens": n_global}


def write_run_info(cfg: Config, out: Path) -> None:
    """sft_config.json: our Config, the command line and the git commit (rank 0)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    info = {"config": dataclasses.asdict(cfg), "argv": sys.argv, "git_commit": commit}
    atomic_write(out / "sft_config.json", json.dumps(info, indent=1))


def setup_training(cfg: Config, d: Dist) -> dict:
    """Model (frozen vision, checkpointing, FSDP2), tokenizer, image processor, validated records, AdamW."""
    from_rank0 = d.world_size > 1   # only rank 0 reads the weights; the others build on the meta device
    model, tok, ip = load_model(cfg.model, min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels,
                                attn_implementation=cfg.attn_implementation, meta=from_rank0 and not d.is_main)
    capped = cfg.max_pixels is None and ip.size["longest_edge"] > PAPER_MAX_PIXELS   # a base model's 12.8M px
    if capped:
        set_pixel_bounds(ip, None, PAPER_MAX_PIXELS)
    given = [flag for flag, v in (("--min-pixels", cfg.min_pixels), ("--max-pixels", cfg.max_pixels)) if v]
    origin = " and ".join(given) + (", the rest the model's own" if len(given) == 1 else "") if given \
        else "the model's own bounds"
    print0(f"images resized into {ip.size['shortest_edge']}..{ip.size['longest_edge']} px ({origin}"
           f"{', the largest capped at the paper’s 512²' if capped else ''})")
    raw, root = read_records(cfg.data)   # sft.jsonl, or the release's SFT-coldstart.json
    records, skipped = prepare_records(raw, root, tok, ip, cfg.max_length, cfg.skip_bad_records)
    trainable = freeze_vision(model) if cfg.freeze_vision else sum(p.numel() for p in model.parameters())
    model.config.use_cache = False
    if cfg.activation_checkpointing:
        enable_activation_checkpointing(model)
    model.train()
    if cfg.fsdp or d.world_size > 1 or d.device.type == "cuda":
        model = shard_model(model, d.device, cfg.bf16, broadcast_from_rank0=from_rank0)
    else:
        model.to(d.device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                  betas=tuple(cfg.adam_betas), weight_decay=cfg.weight_decay)
    print0(f"model {cfg.model} | trainable params {trainable / 1e6:.2f}M | records {len(records)} "
           f"(skipped {skipped}) | world {d.world_size} | device {d.device}")
    return dict(model=model, tok=tok, ip=ip, optimizer=optimizer, records=records, root=root, skipped=skipped)


RUN_MARKERS = ("sft_config.json", "metrics.jsonl", "checkpoints")   # written by sft.py only
SMOKE_DATA = "smoke_data"                                           # --smoke's records, kept across runs


def sft_identity(cfg: Config, num_records: int, total_steps: int, image_processor) -> dict:
    """The settings a resumed run must share with the saved one: those that fix the step → data position
    map (model, batch, records, seed, shuffle), the lr schedule (lr, warmup, total steps) and the update."""
    size = image_processor.size
    return {"model": cfg.model, "global_batch_size": cfg.global_batch_size, "num_records": num_records,
            "seed": cfg.seed, "shuffle": cfg.shuffle, "total_steps": total_steps, "lr": cfg.lr,
            "warmup_ratio": cfg.warmup_ratio, "weight_decay": cfg.weight_decay, "adam_betas": list(cfg.adam_betas),
            "max_grad_norm": cfg.max_grad_norm, "freeze_vision": cfg.freeze_vision, "max_length": cfg.max_length,
            "pixels": [size["shortest_edge"], size["longest_edge"]]}


IDENTITY_LABELS = {"num_records": "usable records in --data", "total_steps": "total steps (--max-steps, or "
                   "--epochs × steps per epoch)", "pixels": "image bounds (--min-pixels, --max-pixels)"}


def out_mode(cfg: Config) -> str:
    """How this run may use --out (common.out_dir_mode with sft.py's markers; --smoke's data is kept)."""
    return out_dir_mode(cfg.out, "sft.py", RUN_MARKERS, cfg.resume, cfg.overwrite, keep=(SMOKE_DATA,))


def train(cfg: Config) -> None:
    """The SFT loop: global batch → micro-batches → train_step → log → periodic resumable checkpoint →
    final resumable state and consolidated HF export in cfg.out."""
    d = setup_dist(cfg.seed)
    try:
        out, mode = Path(cfg.out), out_mode(cfg)   # checks only: nothing is written before the data,
        barrier()                                      # the model and a resumed run's settings are checked
        s = setup_training(cfg, d)
        model, records, B = s["model"], s["records"], cfg.global_batch_size
        steps_per_epoch = math.ceil(len(records) / B)
        total = cfg.max_steps if cfg.max_steps > 0 else cfg.epochs * steps_per_epoch
        ident = sft_identity(cfg, len(records), total, s["ip"])
        ckpt = checked_checkpoint(cfg.out, ident, IDENTITY_LABELS) if mode == "resume" else None
        if d.is_main:
            start_out_dir(cfg.out, mode, keep=(SMOKE_DATA,))
            write_run_info(cfg, out)
        barrier()
        if cfg.resume and ckpt is None:
            print0(f"--resume: no complete checkpoint in {cfg.out}/checkpoints, starting from scratch")
        step = resume_from(s["model"], s["optimizer"], ckpt, cfg.out)["step"]
        bar = tqdm(total=total, initial=step, desc="sft", file=sys.stderr,  # logs to a file stay clean
                   disable=not (d.is_main and sys.stderr.isatty()))

        def encode_step(i: int) -> list:   # this rank's encoded micro-batches of global step i
            epoch, k = divmod(i, steps_per_epoch)
            order = epoch_order(len(records), epoch, cfg.seed, cfg.shuffle)
            return rank_batches([records[j] for j in order[k * B:(k + 1) * B]], s["root"], s["tok"], s["ip"], d,
                                cfg.micro_batch_size, cfg.micro_batch_tokens)
        prefetch = ThreadPoolExecutor(max_workers=1)   # decodes and encodes step i+1 while step i trains
        next_enc = prefetch.submit(encode_step, step)
        while step < total:
            if cfg.stop_after_steps and step >= cfg.stop_after_steps:
                print0(f"stopping after step {step} (--stop-after-steps)")
                prefetch.shutdown(cancel_futures=True)
                return
            epoch = step // steps_per_epoch
            t0 = time.perf_counter()
            enc = next_enc.result()
            if step + 1 < total:
                next_enc = prefetch.submit(encode_step, step + 1)
            lr = lr_at(step, total, cfg.lr, cfg.warmup_ratio)
            m = train_step(model, s["optimizer"], enc, lr, cfg.max_grad_norm, d.device)
            dt = time.perf_counter() - t0
            step += 1
            row = {"step": step, "epoch": epoch, "loss": m["loss"], "lr": lr, "grad_norm": m["grad_norm"],
                   "tokens": m["tokens"], "tok_per_s": m["tokens"] / dt, "dt": dt}
            print0(f"step {step:05d} | epoch {epoch} | loss {m['loss']:.4f} | lr {lr:.2e} | "
                   f"grad_norm {m['grad_norm']:.3f} | tok/s {m['tokens'] / dt:.0f} | dt {dt * 1000:.0f}ms")
            if d.is_main:
                append_metrics(out / "metrics.jsonl", [row])
            bar.update(1)
            if (cfg.save_every and step % cfg.save_every == 0) or step == total:
                ep, k2 = divmod(step, steps_per_epoch)
                save_state(model, s["optimizer"], {"step": step, "epoch": ep, "index_in_epoch": k2 * B, **ident},
                           cfg.out, cfg.keep_checkpoints)
        bar.close()
        prefetch.shutdown()
        save_hf(model, s["tok"], s["ip"], cfg.out, getattr(torch, cfg.save_dtype))
        print0(f"saved HF checkpoint to {cfg.out}")
    finally:
        cleanup_dist()


# ----------------------------------------------------------------------------- command line
SMOKE_OVERRIDES = dict(model="tiny", max_steps=2, global_batch_size=4, micro_batch_size=2, lr=1e-3,
                       warmup_ratio=0.0)


def smoke_config(cfg: Config) -> Config:
    """--smoke: the tiny model for 2 steps of 4 samples (SMOKE_OVERRIDES replace those settings, and it says
    so), on synthetic records written to OUT/smoke_data when no --data is given (works under torchrun too)."""
    if os.environ.get("RANK", "0") == "0":   # no process group yet
        said = ", ".join(f"--{k.replace('_', '-')} {v}" + (f" (not {getattr(cfg, k)})" if getattr(cfg, k) != v
                                                            and getattr(cfg, k) != Config.__dataclass_fields__[k].default
                                                            else "") for k, v in SMOKE_OVERRIDES.items())
        print(f"--smoke: using {said}" + ("" if cfg.data else f", and 8 synthetic records in {cfg.out}/{SMOKE_DATA}"))
    data = cfg.data
    if not data:  # every rank writes the same files atomically (no process group exists yet)
        folder = Path(cfg.out) / "smoke_data"
        folder.mkdir(parents=True, exist_ok=True)
        records = synthetic_records(folder, 8, 56)
        atomic_write(folder / "sft.jsonl", "".join(json.dumps(r) + "\n" for r in records))
        data = str(folder / "sft.jsonl")
    return dataclasses.replace(cfg, data=data, **SMOKE_OVERRIDES)


def main(argv: list | None = None) -> None:
    """The command line: every error about the input (flags, model, data, OUT, a resume that does not
    match) is one line "sft.py: error: …" with a non-zero exit, and nothing is written before the checks."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not (args.data or args.smoke):
        parser.error("--data is required: the cold-start file make_data.py writes, e.g. --data data/ssrl/sft.jsonl")
    try:
        cfg = Config(**{**vars(args), "adam_betas": tuple(args.adam_betas)})
        if cfg.data and not Path(cfg.data).is_file():
            raise SetupError(f"--data {cfg.data}: no such file (python make_data.py writes data/ssrl/sft.jsonl)")
        out_mode(cfg)   # before --smoke writes its data into OUT
        if cfg.smoke:
            cfg = smoke_config(cfg)
        train(cfg)
    except SetupError as e:   # BadRecord too
        if os.environ.get("RANK", "0") == "0":
            print(f"sft.py: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None


def synthetic_records(folder: Path, n: int, image_px: int, seed: int = 0) -> list:
    """n SFT records with random-noise images of image_px², written to folder (benchmarks and tests)."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        name = f"img_{i}.png"
        png = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (image_px, image_px, 3), dtype=np.uint8)).save(png, format="PNG")
        atomic_write(folder / name, png.getvalue())   # ranks of a --smoke run write the same files
        records.append({"id": f"syn-{i}", "task": "flip", "images": [name], "answer": f"{i % 4 + 1}, vertical",
                        "problem": "<image>The image is split into tiles labelled 1, 2, 3 and 4. Which tile is "
                                   "flipped? Answer with the tile and the direction.",
                        "response": "<think>Tile " + str(i % 4 + 1) + " is upside down. " * 4 + "</think> "
                                    f"\\boxed{{{i % 4 + 1}, vertical}}", "meta": {}})
    return records


if __name__ == "__main__":
    main()
