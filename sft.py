"""Cold-start SFT for Spatial-SSRL.

Stage 2 of Spatial-SSRL (arXiv 2510.27606, §3.2): a short supervised fine-tune on ~3.6k CoT answers so the
model learns the answer format (<think>…</think> then \\boxed{…}); without it GRPO rollouts earn almost no
reward. The model plumbing it shares with grpo.py and evaluate.py (load, encode, log-probs, FSDP2, save) lives
in vlm.py, the data files in records.py, distributed setup, output folder, resume and checkpoints in common.py.
This file reads top to bottom: config · loss and schedule · data · loop (train_step, train) · command line.

    python sft.py --model tiny --data data/ssrl/sft.jsonl --out runs/sft-tiny --global-batch-size 8 --lr 6e-3 \\
        --max-steps 200 --max-pixels 12544 --lora-rank 0   # CPU example, full fine-tune (docs/training.md)
    torchrun --nproc_per_node 8 sft.py --model Qwen/Qwen2.5-VL-7B-Instruct --data data/ssrl/sft.jsonl --out runs/sft7b
    python sft.py --smoke --out runs/smoke   # CPU smoke run: tiny model, synthetic data, 2 steps

Paper → code (cold start = official training/SFT-coldstart, LLaMA-Factory configs)
  prompt = problem + " " + CoT prompt, <image> items   → vlm.build_messages() (tasks.with_cot)
  chat template + image tokens + M-RoPE inputs          → vlm.encode_records(), vlm.encode()
  loss on response tokens only, token mean              → sft_loss(), vlm.token_logprobs(), train_step()
  5 epochs, lr 1e-5, cosine, 10% warmup                 → Config, lr_at()
  global batch 256 = 4 per device × 8 accum × 8 GPUs    → Config, rank_batches()
  cutoff 4096 tokens, images ≤ 512² px                  → Config.max_length, vlm.PAPER_MAX_PIXELS, prepare_records()
  vision tower + projector frozen                       → Config.freeze_vision, vlm.load_trainable()
  LoRA r=128, α=2r, all linear layers of the LM, drop 0  → Config.lora_rank, lora_alpha(), vlm.add_lora(),
                                                           vlm.lora_forward()
  max_samples 4000                                       → Config.max_samples, setup_training()
  bf16 training                                          → vlm.shard_model() (FSDP2 MixedPrecisionPolicy)
  merged HF checkpoint for GRPO (merge_*.yaml)           → vlm.save_hf(), vlm.merge_lora()

Deviations
  1. Images are bounded by the image processor's smart resize (min/max pixels, multiples of 28) instead of
     LLaMA-Factory's PIL pre-resize followed by the processor; sizes can differ by one 28-px step.
  2. The training target is the response followed by <|im_end|>; LLaMA-Factory also trains the "\\n" after it.
  3. bf16 parameters with fp32 master weights and fp32 gradient reduction (FSDP2) on GPU, plain fp32 on CPU;
     the official run used bf16 weights through DeepSpeed/accelerate.
  4. The last, partial global batch of an epoch is kept (like the HF Trainer); ranks left without samples
     run a zero-weight copy so every rank joins the collectives.
  5. Resumable state (model with its LoRA adapters + optimizer + step) is a torch.distributed.checkpoint
     folder; there is no RNG state to restore: the data order is a pure function of (seed, epoch), and
     neither Qwen nor the adapters have dropout.
  6. A LoRA rank above a layer's width (only the tiny test models have such layers) is capped there at
     min(in, out), which spans every update of that layer's shape; the scale stays α / --lora-rank.
  7. Our own run configuration goes to run.json, because config.json is the HF model config.
  8. Micro-batches are cut by a token budget (--micro-batch-tokens, samples sorted by length) instead of 4
     samples per device; the update is the same, because the loss is normalised by the global token count.
"""
import argparse
import dataclasses
import io
import math
import os
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

from common import (BadRecord, Dist, SetupError, all_reduce_sum, append_jsonl, atomic_write, cli_main, config_parser,
                    dist_session, epoch_order, knob, open_run, out_dir_mode, print0, rewrite_jsonl, save_state,
                    token_micro_batches)
from records import check_record, read_records
from vlm import (IGNORE_INDEX, PAPER_MAX_PIXELS, build_messages, encode_records, image_token_count, load_trainable,
                 optimizer_step, save_hf, set_pixel_bounds, token_logprobs, tokenize_conversation)


# ----------------------------------------------------------------------------- config
@dataclass
class Config:
    model: str = knob("tiny", "HF id or local HF dir (Qwen2.5-VL / Qwen3-VL), or 'tiny' / 'tiny-qwen3'")
    trust_remote_code: bool = knob(False, "run the model folder's own model code (config.json auto_map); off by "
                                          "default, as in transformers")
    data: str = knob("", "REQUIRED (except with --smoke): the cold-start file, sft.jsonl from make_data.py "
                       "(records with id, task, problem, answer, images, response) or the release's "
                       "SFT-coldstart.json (LLaMA-Factory format; images from coldstart_SFT_images/ or "
                       "images_coldstart.zip beside it)")
    out: str = knob("runs/sft", "output folder: the HF checkpoint, metrics.jsonl, checkpoints/")
    epochs: int = knob(5, "passes over the data (paper: 5)")
    max_steps: int = knob(0, "stop after this many optimizer steps (0: epochs decide)")
    lr: float = knob(1e-5, "peak learning rate (paper: 1e-5)")
    warmup_ratio: float = knob(0.1, "fraction of steps with linear warmup before the cosine decay (paper: 0.1)")
    weight_decay: float = knob(0.0, "AdamW weight decay (LLaMA-Factory default 0)")
    adam_betas: tuple = knob((0.9, 0.999), "AdamW betas")
    global_batch_size: int = knob(256, "samples per optimizer step over all ranks (paper: 256)")
    micro_batch_tokens: int = knob(16384, "tokens per forward / backward on one rank (samples × longest sample)")
    max_length: int = knob(4096, "max tokens per sample, prompt + image tokens + response (paper: 4096)")
    min_pixels: int | None = knob(None, "smallest image area after resizing, in pixels (default: the model's "
                                      "own bound)")
    max_pixels: int | None = knob(None, "largest image area after resizing, in pixels (default: the model's own "
                                      "bound, at most 512² = 262144 as in the paper)")
    max_grad_norm: float = knob(1.0, "gradient-norm clip")
    lora_rank: int = knob(128, "LoRA rank r of the adapters on every linear layer of the language model, merged "
                               "into the weights at export (paper: 128); 0 = full-parameter fine-tune")
    lora_alpha: float | None = knob(None, "LoRA α: the adapter's update is scaled by α / r (default: 2 × rank, "
                                          "256 for rank 128 as in the paper)")
    max_samples: int = knob(4000, "train on the first N records of --data (paper: 4000); 0 = all")
    freeze_vision: bool = knob(True, "freeze the vision tower and projector (paper: frozen; with LoRA always)")
    activation_checkpointing: bool = knob(True, "non-reentrant activation checkpointing of every trained block")
    fsdp: bool = knob(False, "shard with FSDP2 in one CPU process too (always on for GPU or >1 rank)")
    shuffle: bool = knob(True, "shuffle the records every epoch (seeded)")
    seed: int = knob(42, "seed for the data order and the per-rank RNGs")
    skip_bad_records: bool = knob(False, "skip and count bad records instead of stopping with an error")
    save_every: int = knob(15, "write a resumable checkpoint every N steps, and at the end (0: only at the end)")
    keep_checkpoints: int = knob(1, "resumable checkpoints kept on disk")
    resume: bool = knob(False, "continue the run in OUT from its newest complete checkpoint (refused when a "
                             "setting that defines the schedule or the data differs)")
    overwrite: bool = knob(False, "delete the earlier run in OUT (an sft.py output folder) and start over")
    smoke: bool = knob(False, "CPU smoke run; overrides --model tiny, --max-steps 2, --global-batch-size 4, "
                            "--lr 1e-3, --warmup-ratio 0 and, without --data, uses 8 synthetic records written "
                            "to OUT/smoke_data")

    def __post_init__(self):
        if self.global_batch_size < 1 or self.micro_batch_tokens < 1 or self.keep_checkpoints < 1:
            raise SetupError("--global-batch-size, --micro-batch-tokens and --keep-checkpoints must be positive")
        if self.lora_rank < 0 or self.max_samples < 0 or (self.lora_alpha is not None and self.lora_alpha <= 0):
            raise SetupError("--lora-rank and --max-samples must be ≥ 0 (0: full fine-tune / all records), "
                             "--lora-alpha positive")
        if self.lora_alpha is not None and not self.lora_rank:
            raise SetupError("--lora-alpha scales LoRA adapters, and --lora-rank 0 trains without them: drop one")
        if self.lora_rank and not self.freeze_vision:
            raise SetupError("--no-freeze-vision trains the vision tower in full, which LoRA does not: "
                             "add --lora-rank 0 (full-parameter fine-tune) or drop --no-freeze-vision")
        if not (math.isfinite(self.lr) and self.lr >= 0):          # torch would say so only after loading the model
            raise SetupError(f"--lr {self.lr}: must be a number ≥ 0 (paper: 1e-5)")
        for name in ("min_pixels", "max_pixels"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise SetupError(f"--{name.replace('_', '-')} must be positive")
        if not (self.data or self.smoke):
            raise SetupError("--data is required: the cold-start file make_data.py writes, e.g. "
                             "--data data/ssrl/sft.jsonl")
        if self.data and not Path(self.data).is_file():
            raise SetupError(f"--data {self.data}: no such file (python make_data.py writes data/ssrl/sft.jsonl)")


USAGE_EXAMPLES = """examples:
  python sft.py --smoke --out runs/smoke            # CPU check: tiny model, synthetic data, 2 steps
  python make_data.py && python sft.py --model tiny --data data/ssrl/sft.jsonl --out runs/sft-tiny \\
      --global-batch-size 8 --lr 6e-3 --max-steps 200 --max-pixels 12544 --lora-rank 0   # learns the format
  torchrun --nproc_per_node 8 sft.py --model Qwen/Qwen2.5-VL-7B-Instruct --data data/ssrl/sft.jsonl --out runs/sft7b
  python sft.py ... --out runs/sft7b --resume       # continue a stopped run from OUT/checkpoints

--data is the cold-start file (sft.jsonl, records with a "response"); train.jsonl is for GRPO. The default is
the paper's LoRA (rank 128, α 256, merged into the exported weights); --lora-rank 0 fine-tunes every weight of
the language model. An existing run in --out is never mixed with a new one: pass --resume to continue it or
--overwrite to start over."""


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
def record_length(record: dict, root: Path, tokenizer, image_processor, max_length: int) -> int:
    """Token length of one cold-start record (prompt + image tokens + response + <|im_end|>), checked by
    records.check_record (response present, images readable) and against --max-length; BadRecord otherwise."""
    sizes = check_record(record, root, response=True, decode=True)
    counts = [image_token_count(size, image_processor) for size in sizes]
    p, t = tokenize_conversation(build_messages(record["problem"], record["response"]), counts, tokenizer)
    if len(p) + len(t) > max_length:
        raise BadRecord(f"record {record.get('id', '?')}: {len(p) + len(t)} tokens > --max-length {max_length}")
    return len(p) + len(t)


def prepare_records(records: list, root: Path, tokenizer, image_processor, max_length: int,
                    skip_bad: bool) -> tuple:
    """Validate all records up front: (kept records with their "num_tokens", number skipped). Without skip_bad
    the first bad record stops the run with its error; with it, bad records are dropped and counted."""
    kept, skipped, first = [], 0, ""
    for rec in records:
        try:
            kept.append({**rec, "num_tokens": record_length(rec, root, tokenizer, image_processor, max_length)})
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


def rank_batches(batch: list, root: Path, tokenizer, image_processor, d: Dist, budget: int) -> list:
    """This rank's encoded micro-batches of one global batch. The batch sorted by length is dealt round-robin
    to the ranks (similar token counts per rank); each share is cut by common.token_micro_batches with the
    same number of micro-batches on every rank (the largest any rank needs, which every rank computes alike
    from the same batch). An empty micro-batch is a zero-weight sample, so all ranks issue the same
    collectives; the loss normalisation is global (train_step), so the split does not change the update."""
    order = sorted(range(len(batch)), key=lambda i: -batch[i]["num_tokens"])
    shares = [[batch[i] for i in order[r::d.world_size]] for r in range(d.world_size)]
    count = max(len(token_micro_batches([x["num_tokens"] for x in s], budget)) for s in shares)
    mine = shares[d.rank]
    out = []
    for mb in token_micro_batches([x["num_tokens"] for x in mine], budget, count):
        enc = encode_records([mine[i] for i in mb] or batch[:1], root, tokenizer, image_processor, response=True)
        if not mb:
            enc["labels"].fill_(IGNORE_INDEX)
        out.append(enc)
    return out


# ----------------------------------------------------------------------------- loop
def train_step(model, optimizer, batches: list, lr: float, max_grad_norm: float, device: torch.device) -> dict:
    """One optimizer step over this rank's micro-batches (encoded, labels included).

    The supervised-token count is all-reduced first, so every micro-batch loss is normalised by the global
    count (sft_loss): the update does not depend on how the global batch is split. On an FSDP2 model the
    gradients are reduce-scattered after every micro-batch, so a rank holds only its fp32 gradient shard."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    n_local = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches)
    n_global = max(1.0, all_reduce_sum(n_local, device))
    loss_sum, seen = 0.0, 0
    for b in batches:
        b = {k: v.to(device) for k, v in b.items()}
        labels = b.pop("labels")
        loss, m = sft_loss(token_logprobs(model, b, labels), labels, n_global / world)
        loss.backward()
        loss_sum += float(m["loss_sum"])
        seen += int(b["attention_mask"].sum())
    step = optimizer_step(model, optimizer, max_grad_norm, lr)
    return {"loss": all_reduce_sum(loss_sum, device) / n_global, "grad_norm": step["grad_norm"],
            "skipped": step["skipped"], "tokens": all_reduce_sum(seen, device), "sup_tokens": n_global}


SMOKE_DATA = "smoke_data"      # --smoke's records, kept across runs
IDENTITY_LABELS = {"num_records": "usable records in --data", "total_steps": "total steps (--max-steps, or "
                   "--epochs × steps per epoch)", "pixels": "image bounds (--min-pixels, --max-pixels)"}


def sft_identity(cfg: Config, num_records: int, total_steps: int, image_processor) -> dict:
    """The settings a resumed run must share with the saved one: those that fix the step → data position
    map (model, batch, records, seed, shuffle), the lr schedule (lr, warmup, total steps) and the update."""
    size = image_processor.size
    return {"model": cfg.model, "global_batch_size": cfg.global_batch_size, "num_records": num_records,
            "seed": cfg.seed, "shuffle": cfg.shuffle, "total_steps": total_steps, "lr": cfg.lr,
            "warmup_ratio": cfg.warmup_ratio, "weight_decay": cfg.weight_decay, "adam_betas": list(cfg.adam_betas),
            "max_grad_norm": cfg.max_grad_norm, "freeze_vision": cfg.freeze_vision, "max_length": cfg.max_length,
            "lora_rank": cfg.lora_rank, "lora_alpha": lora_alpha(cfg),
            "pixels": [size["shortest_edge"], size["longest_edge"]]}


def lora_alpha(cfg: Config) -> float | None:
    """α of the LoRA adapters: --lora-alpha, else 2 × rank (LLaMA-Factory's default); None without LoRA."""
    return None if not cfg.lora_rank else float(cfg.lora_alpha or 2 * cfg.lora_rank)


def setup_training(cfg: Config, d: Dist) -> dict:
    """Model (vlm.load_trainable: frozen vision, LoRA adapters, checkpointing, FSDP2, AdamW), tokenizer, image
    processor (bounds said), validated records (the first --max-samples)."""
    model, tok, ip, optimizer = load_trainable(
        cfg.model, d, train_vision=not cfg.freeze_vision, checkpointing=cfg.activation_checkpointing,
        fsdp=cfg.fsdp, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.adam_betas, min_pixels=cfg.min_pixels,
        max_pixels=cfg.max_pixels, lora_rank=cfg.lora_rank, lora_alpha=lora_alpha(cfg),
        trust_remote_code=cfg.trust_remote_code)
    capped = cfg.max_pixels is None and ip.size["longest_edge"] > PAPER_MAX_PIXELS   # a base model's 12.8M px
    if capped:
        set_pixel_bounds(ip, None, PAPER_MAX_PIXELS)
    given = [flag for flag, v in (("--min-pixels", cfg.min_pixels), ("--max-pixels", cfg.max_pixels)) if v]
    origin = " and ".join(given) + (", the rest the model's own" if len(given) == 1 else "") if given \
        else "the model's own bounds"
    print0(f"images resized into {ip.size['shortest_edge']}..{ip.size['longest_edge']} px ({origin}"
           f"{', the largest capped at the paper’s 512²' if capped else ''})")
    raw, root = read_records(cfg.data)   # sft.jsonl, or the release's SFT-coldstart.json
    raw = raw[:cfg.max_samples] if cfg.max_samples else raw   # LLaMA-Factory's max_samples: the first N
    records, skipped = prepare_records(raw, root, tok, ip, cfg.max_length, cfg.skip_bad_records)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    mode = f"LoRA r={cfg.lora_rank} α={lora_alpha(cfg):g}" if cfg.lora_rank else "full fine-tune"
    print0(f"model {cfg.model} | {mode} | trainable params {trainable / 1e6:.2f}M | records {len(records)} "
           f"(skipped {skipped}) | world {d.world_size} | device {d.device}")
    return dict(model=model, tok=tok, ip=ip, optimizer=optimizer, records=records, root=root, skipped=skipped)


def train(cfg: Config) -> None:
    """The SFT loop: global batch → micro-batches → train_step → log → periodic resumable checkpoint →
    final resumable state and consolidated HF export in cfg.out."""
    with dist_session(cfg.seed) as d:
        out = Path(cfg.out)
        mode = out_dir_mode(cfg.out, "sft.py", cfg.resume, cfg.overwrite, keep=(SMOKE_DATA,))   # checks only
        s = setup_training(cfg, d)
        model, records, B = s["model"], s["records"], cfg.global_batch_size
        steps_per_epoch = math.ceil(len(records) / B)
        total = cfg.max_steps if cfg.max_steps > 0 else cfg.epochs * steps_per_epoch
        identity = sft_identity(cfg, len(records), total, s["ip"])
        step = open_run(cfg.out, "sft.py", mode, identity, {"config": dataclasses.asdict(cfg), "argv": sys.argv},
                        labels=IDENTITY_LABELS, keep=(SMOKE_DATA,), state=(model, s["optimizer"]))
        bar = tqdm(total=total, initial=step, desc="sft", file=sys.stderr, disable=not (d.is_main and sys.stderr.isatty()))

        def encode_step(i: int) -> list:   # this rank's encoded micro-batches of global step i
            epoch, k = divmod(i, steps_per_epoch)
            order = epoch_order(len(records), epoch, cfg.seed, cfg.shuffle)
            return rank_batches([records[j] for j in order[k * B:(k + 1) * B]], s["root"], s["tok"], s["ip"], d,
                                cfg.micro_batch_tokens)
        prefetch = ThreadPoolExecutor(max_workers=1)   # decodes and encodes step i+1 while step i trains
        next_enc = prefetch.submit(encode_step, step)
        while step < total:
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
                   "skipped": m["skipped"], "tokens": m["tokens"], "tok_per_s": m["tokens"] / dt, "dt": dt}
            print0(f"step {step:05d} | epoch {epoch} | loss {m['loss']:.4f} | lr {lr:.2e} | grad_norm "
                   f"{m['grad_norm']:.3f}{' SKIPPED (non-finite)' if m['skipped'] else ''} | tok/s "
                   f"{m['tokens'] / dt:.0f} | dt {dt * 1000:.0f}ms")
            if d.is_main:
                append_jsonl(out / "metrics.jsonl", [row])
            bar.update(1)
            if (cfg.save_every and step % cfg.save_every == 0) or step == total:
                save_state(model, s["optimizer"], {"step": step, "epoch": step // steps_per_epoch}, cfg.out,
                           cfg.keep_checkpoints)
        bar.close()
        prefetch.shutdown(cancel_futures=True)
        save_hf(model, s["tok"], s["ip"], cfg.out)
        print0(f"saved HF checkpoint to {cfg.out}")


# ----------------------------------------------------------------------------- command line
SMOKE_OVERRIDES = dict(model="tiny", max_steps=2, global_batch_size=4, lr=1e-3, warmup_ratio=0.0)


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
        folder = Path(cfg.out) / SMOKE_DATA
        folder.mkdir(parents=True, exist_ok=True)
        records = synthetic_records(folder, 8, 56)
        rewrite_jsonl(folder / "sft.jsonl", records)
        data = str(folder / "sft.jsonl")
    return dataclasses.replace(cfg, data=data, **SMOKE_OVERRIDES)


def run(args) -> None:
    """Config from the parsed flags, --smoke's data (after the output-folder check), then train()."""
    cfg = Config(**{**vars(args), "adam_betas": tuple(args.adam_betas)})
    if cfg.smoke:
        out_dir_mode(cfg.out, "sft.py", cfg.resume, cfg.overwrite, keep=(SMOKE_DATA,))   # before writing its data
        cfg = smoke_config(cfg)
    train(cfg)


def main(argv: list | None = None) -> None:
    """The command line: every error about the input (flags, model, data, OUT, a resume that does not
    match) is one line "sft.py: error: …" with exit 2, and nothing is written before the checks."""
    cli_main("sft.py", run, build_parser().parse_args(argv))


def synthetic_records(folder: Path, n: int, image_px: int | tuple, seed: int = 0) -> list:
    """n SFT records with random-noise images of image_px² (a tuple of sides: image i has side
    image_px[i % len]), written to folder (--smoke, benchmarks and tests)."""
    rng = np.random.default_rng(seed)
    sides = image_px if isinstance(image_px, tuple) else (image_px,)
    records = []
    for i in range(n):
        name, side = f"img_{i}.png", sides[i % len(sides)]
        png = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(png, format="PNG")
        atomic_write(folder / name, png.getvalue())   # ranks of a --smoke run write the same files
        records.append({"id": f"syn-{i}", "task": "flip", "images": [name], "answer": f"{i % 4 + 1}, vertical",
                        "problem": "<image>The image is split into tiles labelled 1, 2, 3 and 4. Which tile is "
                                   "flipped? Answer with the tile and the direction.",
                        "response": "<think>Tile " + str(i % 4 + 1) + " is upside down. " * 4 + "</think> "
                                    f"\\boxed{{{i % 4 + 1}, vertical}}", "meta": {}})
    return records


if __name__ == "__main__":
    main()
