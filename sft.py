"""Cold-start SFT for Spatial-SSRL, and the model plumbing every stage shares.

Stage 2 of Spatial-SSRL (arXiv 2510.27606, §3.2): a short supervised fine-tune on ~3.6k CoT answers so the
model learns the answer format (<think>…</think> then \\boxed{…}); without it GRPO rollouts earn almost no
reward. This file is also the one home of the plumbing grpo.py, evaluate.py and bench.py import. It reads
top to bottom in three blocks:
  shared plumbing  distributed (setup_dist) · load (load_model) · encode (build_messages, encode) ·
                   log-probs (token_logprobs) · shard (fast_vision_attention, enable_activation_checkpointing,
                   shard_model, micro_batches) · generate (generate; RolloutEngine, the fast path on CUDA) ·
                   save (save_hf, save_state, load_state, atomic_write)
  SFT              config · loss and schedule · data checks · loop (train_step, train) · command line
  support          the tiny offline models, the 3B benchmark shape, synthetic records
Multi-rank runs read the weights on rank 0 only: the other ranks build the model on the meta device and
receive their shards and the buffers from rank 0 (load_model(meta=True), shard_model(broadcast_from_rank0=True)).

    python sft.py --model tiny --data data/ssrl/sft.jsonl --out runs/sft-tiny --global-batch-size 8 --lr 6e-3 \\
        --max-steps 200 --max-pixels 12544     # 2 CPU cores: ~45 s of CPU, 0.58 GB; 55/55 test answers well-formed
    torchrun --nproc_per_node 8 sft.py --model Qwen/Qwen2.5-VL-7B-Instruct --data data/ssrl/sft.jsonl --out runs/sft7b
    python sft.py --smoke --out runs/smoke   # CPU smoke run: tiny model, synthetic data, 2 steps

Paper → code (cold start = official training/SFT-coldstart, LLaMA-Factory configs)
  prompt = problem + " " + CoT prompt, <image> items   → build_messages() (tasks.with_cot)
  chat template + image tokens + M-RoPE inputs          → encode(), tokenize_conversation(), collate()
  loss on response tokens only, token mean              → sft_loss(), token_logprobs(), train_step()
  5 epochs, lr 1e-5, cosine, 10% warmup                 → Config, lr_at()
  global batch 256 = 4 per device × 8 accum × 8 GPUs    → Config, micro_batches()
  cutoff 4096 tokens, images ≤ 512² px                  → Config.max_length, PAPER_MAX_PIXELS, prepare_records()
  vision tower + projector frozen                       → freeze_vision()
  bf16 training                                          → shard_model() (FSDP2 MixedPrecisionPolicy)
  merged HF checkpoint for GRPO                          → save_hf()

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
import copy
import dataclasses
import datetime
import functools
import io
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
import types
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

import tasks


IGNORE_INDEX = -100
IMAGE_PLACEHOLDER = "<image>"
VISION_TOKENS = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")


# ============================================================================= shared plumbing
# grpo.py and evaluate.py import this block (and bench.py); the names are an interface: keep them stable.


# ----------------------------------------------------------------------------- distributed
@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def use_cuda() -> bool:
    """True when a GPU is visible, unless SPATIAL_SSRL_DEVICE=cpu (the tests set it, so they run the same
    CPU/gloo code on a GPU machine, and a 2-rank launch works on a 1-GPU machine)."""
    return torch.cuda.is_available() and os.environ.get("SPATIAL_SSRL_DEVICE", "").lower() != "cpu"


def setup_dist(seed: int = 0) -> Dist:
    """torchrun contract (RANK, LOCAL_RANK, WORLD_SIZE) or one local process; NCCL on GPU, gloo on CPU.

    Seeds python, numpy and torch with seed + rank. Creates the process group once per process and reuses
    it on later calls (re-creating a group under torchrun after destroying it can race). On GPU the
    group is bound to this rank's device (device_id), and more local ranks than GPUs is a clear error."""
    cuda = use_cuda()
    d = Dist()
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        d.rank, d.world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        d.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if cuda and d.local_rank >= torch.cuda.device_count():
            raise SetupError(f"local rank {d.local_rank} but only {torch.cuda.device_count()} GPU(s) here: use "
                             f"--nproc_per_node {torch.cuda.device_count()} or fewer (or SPATIAL_SSRL_DEVICE=cpu)")
        if cuda:
            torch.cuda.set_device(d.local_rank)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=30),
                                    device_id=torch.device("cuda", d.local_rank) if cuda else None)
    d.device = torch.device(f"cuda:{d.local_rank}" if cuda else "cpu")
    random.seed(seed + d.rank)
    np.random.seed(seed + d.rank)
    torch.manual_seed(seed + d.rank)
    return d


def cleanup_dist() -> None:
    """Barrier then destroy the process group (if one was created)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def print0(*args) -> None:
    """print on rank 0 only, without breaking a tqdm bar."""
    if is_main():
        tqdm.write(" ".join(str(a) for a in args), file=sys.stdout)
        sys.stdout.flush()


def all_reduce_sum(x: float, device: torch.device) -> float:
    """Sum a Python number over ranks (no-op in one process)."""
    if not dist.is_initialized():
        return float(x)
    t = torch.tensor([float(x)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item())


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


# ----------------------------------------------------------------------------- load
class SetupError(ValueError):
    """A bad command line, model name, data file or output folder: reported in one line, nothing written."""


TINY_MODELS = ("tiny", "tiny-qwen3")
PAPER_MAX_PIXELS = 512 * 512        # cold-start SFT images ≤ 512² px (official LLaMA-Factory config)
TINY_PIXELS = (56 * 56, PAPER_MAX_PIXELS)   # the tiny models' own image bounds


def model_source(name: str) -> dict:
    """from_pretrained keyword arguments for a local HF folder or a Hub id, or a SetupError at once.

    A local folder is used as it is. A Hub id is looked up in the local HF cache first; with HF_HUB_OFFLINE=1,
    or when the Hub is unreachable, a cached model loads with local_files_only=True. Otherwise one quick
    request (no retries) tells an unknown name from a missing connection, instead of transformers' half a
    minute of retries ending in a traceback."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SetupError(f"--model {name}: the folder has no config.json (not a Hugging Face model folder)")
        return {"local_files_only": True}
    from huggingface_hub import constants, model_info, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError
    unknown = f"--model {name}: not a local folder, not a tiny model ({', '.join(TINY_MODELS)})"
    try:
        cached = isinstance(try_to_load_from_cache(name, "config.json"), str)
    except HFValidationError:
        raise SetupError(f"{unknown}, and not a Hugging Face id (org/name)") from None
    if constants.HF_HUB_OFFLINE:
        if cached:
            return {"local_files_only": True}
        raise SetupError(f"{unknown}, and not in the Hugging Face cache ({constants.HF_HUB_CACHE}) "
                         "while HF_HUB_OFFLINE=1")
    try:
        model_info(name, timeout=10)
    except GatedRepoError:
        return {}   # from_pretrained says how to get access
    except RepositoryNotFoundError:
        if cached:
            return {"local_files_only": True}
        raise SetupError(f"{unknown}, and no such model on the Hugging Face Hub (a typo? private or gated "
                         "models need `hf auth login`)") from None
    except Exception as e:   # no connection: httpx errors are not OSErrors
        if cached:
            return {"local_files_only": True}
        reason = " ".join(str(e).split()) or type(e).__name__
        raise SetupError(f"{unknown}, not in the Hugging Face cache ({constants.HF_HUB_CACHE}), and the Hub "
                         f"is unreachable ({reason})") from None
    return {}


def set_pixel_bounds(image_processor, min_pixels: int | None = None, max_pixels: int | None = None) -> None:
    """Set the smart-resize bounds [min_pixels, max_pixels] of a Qwen-VL image processor; None keeps the
    bound it has (the one its preprocessor_config.json saved)."""
    size = image_processor.size
    lo = min_pixels if min_pixels is not None else size["shortest_edge"]
    hi = max_pixels if max_pixels is not None else size["longest_edge"]
    if lo > hi:
        raise SetupError(f"image bounds: min pixels {lo} > max pixels {hi} (--min-pixels / --max-pixels)")
    image_processor.size = {"shortest_edge": lo, "longest_edge": hi}


def load_model(name: str, *, min_pixels: int | None = None, max_pixels: int | None = None,
               attn_implementation: str = "sdpa", dtype: torch.dtype = torch.float32, meta: bool = False):
    """(model, tokenizer, image_processor) for 'tiny', 'tiny-qwen3', a HF id or a local HF directory.

    The image processor is the PIL backend (identical pixels with or without torchvision). Its smart-resize
    bounds are the saved ones (a checkpoint keeps what it was trained with; the tiny models have 56²…512²)
    unless min_pixels / max_pixels override them. An unknown name fails at once with a SetupError
    (model_source). meta=True builds the same model from the same config on the meta device and reads no
    weights: the ranks > 0 of a multi-rank run, which shard_model(..., broadcast_from_rank0=True) then fills
    from rank 0 (no full copy per rank)."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer
    from transformers import GenerationConfig
    if name in TINY_MODELS:
        model, tok, ip = build_tiny(name, device="meta" if meta else "cpu")
        model.to(dtype)
        set_pixel_bounds(ip, *TINY_PIXELS)
    else:
        src = model_source(name)
        try:   # a folder without weights, a text-only model, … : one line, not a traceback
            if meta:
                with torch.device("meta"):
                    model = AutoModelForImageTextToText.from_config(
                        AutoConfig.from_pretrained(name, **src), dtype=dtype, attn_implementation=attn_implementation)
                model.eval()   # as from_pretrained leaves it
                try:           # from_pretrained reads generation_config.json when there is one
                    model.generation_config = GenerationConfig.from_pretrained(name, **src)
                except OSError:
                    pass
            else:
                model = AutoModelForImageTextToText.from_pretrained(name, dtype=dtype, **src,
                                                                    attn_implementation=attn_implementation)
            tok = AutoTokenizer.from_pretrained(name, **src)
            ip = AutoImageProcessor.from_pretrained(name, backend="pil", **src)
        except (OSError, ValueError) as e:
            reason = " ".join(str(e).split())
            raise SetupError(f"--model {name}: cannot load it as a Qwen-VL model: "
                             f"{reason[:300]}{'…' if len(reason) > 300 else ''}") from e
        if tok.chat_template is None:
            raise SetupError(f"--model {name}: the tokenizer has no chat template (need tokenizer_config.json "
                             "or chat_template.jinja with the Qwen-VL template)")
    set_pixel_bounds(ip, min_pixels, max_pixels)
    fast_vision_attention(model)   # one batched attention call per window size, not a Python loop per window
    return model, tok, ip


def freeze_vision(model) -> int:
    """Freeze the vision tower incl. its projector (merger, and Qwen3-VL's deepstack mergers).

    Returns the number of trainable parameters left."""
    model.model.visual.requires_grad_(False)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ----------------------------------------------------------------------------- encode
def build_messages(problem: str, response: str | None = None) -> list:
    """Chat messages for one record: with_cot(problem) split on <image> into image/text items (empty text
    dropped), one user turn, no system turn; plus an assistant turn when a response is given."""
    content = []
    for i, part in enumerate(tasks.with_cot(problem).split(IMAGE_PLACEHOLDER)):
        if i > 0:
            content.append({"type": "image"})
        if part:
            content.append({"type": "text", "text": part})
    messages = [{"role": "user", "content": content}]
    if response is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": response}]})
    return messages


def tokenize_conversation(messages: list, image_token_counts: list, tokenizer) -> tuple:
    """(prompt_ids, target_ids) for one conversation.

    The prompt is every message except a final assistant turn, rendered with the tokenizer's chat template
    and the generation prompt; each <|image_pad|> is expanded to its image's token count. The target is the
    final assistant text followed by <|im_end|> (empty when the conversation ends with a user turn)."""
    has_target = messages[-1]["role"] == "assistant"
    prompt = messages[:-1] if has_target else messages
    text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    image_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    n_pads = sum(1 for t in ids if t == image_id)
    if n_pads != len(image_token_counts):
        raise ValueError(f"prompt has {n_pads} image placeholders but {len(image_token_counts)} images")
    counts = iter(image_token_counts)
    prompt_ids = [t for tok in ids for t in ([tok] * next(counts) if tok == image_id else [tok])]
    target_ids = []
    if has_target:
        content = messages[-1]["content"]
        answer = content if isinstance(content, str) else "".join(c.get("text", "") for c in content)
        target_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        target_ids.append(tokenizer.convert_tokens_to_ids("<|im_end|>"))
    return prompt_ids, target_ids


def image_token_count(size: tuple, image_processor) -> int:
    """Image tokens for a (width, height) image after smart resize: patches / merge_size²."""
    w, h = size
    patches = image_processor.get_number_of_image_patches(h, w, {})
    return patches // image_processor.merge_size ** 2


def collate(samples: list, pad_id: int, image_id: int, padding_side: str = "right") -> dict:
    """Pad (prompt_ids, target_ids) pairs into a batch.

    input_ids, attention_mask, mm_token_type_ids (1 on image tokens: M-RoPE needs it), labels (-100 on the
    prompt and the padding): all (B, T) long tensors."""
    rows = [p + t for p, t in samples]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, IGNORE_INDEX)
    for i, ((p, t), r) in enumerate(zip(samples, rows)):
        s = width - len(r) if padding_side == "left" else 0
        ids[i, s:s + len(r)] = torch.tensor(r)
        mask[i, s:s + len(r)] = 1
        if t:
            labels[i, s + len(p):s + len(r)] = torch.tensor(t)
    return {"input_ids": ids, "attention_mask": mask, "mm_token_type_ids": (ids == image_id).long(),
            "labels": labels}


def encode(conversations: list, images: list, tokenizer, image_processor, padding_side: str = "right") -> dict:
    """The one encoder of every stage: chat conversations + their PIL images → model inputs.

    conversations[i] is a message list (build_messages); images[i] its images in placeholder order. Returns
    input_ids, attention_mask, mm_token_type_ids, labels (B, T); pixel_values (Σ patches, C·t·p·p) and
    image_grid_thw (num_images, 3) when there are images. Use padding_side="left" for generation."""
    flat = [im for ims in images for im in ims]
    vision = {}
    if flat:
        vision = dict(image_processor(images=flat, return_tensors="pt"))
    grid = vision.get("image_grid_thw", torch.zeros((0, 3), dtype=torch.long))
    counts = (grid.prod(-1) // image_processor.merge_size ** 2).tolist()
    samples, k = [], 0
    for msgs, ims in zip(conversations, images):
        samples.append(tokenize_conversation(msgs, counts[k:k + len(ims)], tokenizer))
        k += len(ims)
    batch = collate(samples, tokenizer.pad_token_id, tokenizer.convert_tokens_to_ids("<|image_pad|>"),
                    padding_side)
    batch.update({k: v for k, v in vision.items() if k in ("pixel_values", "image_grid_thw")})
    return batch


def read_jsonl(path: str) -> list:
    """The JSON objects of a .jsonl file, one a line (blank lines skipped); a line that is not a JSON
    object raises BadRecord naming the file and line."""
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise BadRecord(f"{path} line {i}: not valid JSON ({e.msg}); a cut-off file?") from None
            if not isinstance(out[-1], dict):
                raise BadRecord(f"{path} line {i}: a JSON {type(out[-1]).__name__}, not a record object")
    return out


def load_images(record: dict, root: Path) -> list:
    """The record's images as RGB PIL images (paths relative to the jsonl folder)."""
    out = []
    for rel in record["images"]:
        with Image.open(root / rel) as im:
            out.append(im.convert("RGB"))
    return out


# ----------------------------------------------------------------------------- log-probs
def _head_logprobs(h: torch.Tensor, weight: torch.Tensor, bias, targets: torch.Tensor, temperature: float,
                   with_entropy: bool) -> tuple:
    """log p(target) and entropy for rows of hidden states h (n, H): z = (h Wᵀ + b) / τ in fp32,
    log p = z[y] − logsumexp(z), entropy = −Σ softmax(z) log softmax(z) (detached)."""
    z = F.linear(h, weight, bias).float() / temperature                    # (n, V) fp32
    logz = torch.logsumexp(z, dim=-1)                                       # (n,)
    logp = z.gather(-1, targets[:, None]).squeeze(-1) - logz               # (n,)
    ent = torch.zeros_like(logp)
    if with_entropy:
        with torch.no_grad():
            lsm = z.detach() - logz.detach()[:, None]
            ent = -(lsm.exp() * lsm).sum(-1)
    return logp, ent


def chunked_head_logprobs(h: torch.Tensor, weight: torch.Tensor, bias, targets: torch.Tensor,
                          temperature: float = 1.0, chunk_size: int = 1024, with_entropy: bool = False) -> tuple:
    """(log p, entropy) of `targets` (n,) under the LM head applied to hidden rows h (n, H), chunk_size rows
    at a time, so at most chunk_size × V fp32 logits exist at once. With grad enabled every chunk is
    activation-checkpointed: its logits are recomputed in the backward instead of kept (n × V never lives)."""
    from torch.utils.checkpoint import checkpoint
    grad = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)
    logps, ents = [], []
    for i in range(0, h.shape[0], chunk_size):
        args = (h[i:i + chunk_size], weight, bias, targets[i:i + chunk_size], temperature, with_entropy)
        lp, ent = checkpoint(_head_logprobs, *args, use_reentrant=False) if grad else _head_logprobs(*args)
        logps.append(lp)
        ents.append(ent.detach())
    return torch.cat(logps), torch.cat(ents)


def token_logprobs(model, batch: dict, labels: torch.Tensor, temperature: float = 1.0, chunk_size: int = 1024,
                   with_entropy: bool = False):
    """Per-token log-probs of `labels` under the model: (B, T) fp32, 0 where labels = -100.

    logp[b, t] = log_softmax(lm_head(h[b, t−1]) / τ)[labels[b, t]], h = the last hidden states of one forward
    of the model body on `batch` (an encode() batch; its "labels" key is ignored). The LM head runs only at
    the supervised positions (logits_to_keep mask), in chunks (chunked_head_logprobs), with an fp32
    log-softmax: no (B, T, V) logits tensor. It runs inside the model's own forward (the head's forward is
    swapped for the call), so it works on an FSDP2-sharded model (root parameters unsharded by its hooks)
    and a plain one, and is differentiable when grad is enabled. with_entropy=True also returns the
    (detached) entropy of each of those distributions, (B, T). A batch without supervised tokens still
    runs the head on one position with weight 0 (every rank's backward must reach every FSDP unit)."""
    device = next(model.parameters()).device
    labels = labels.to(device)
    keep = torch.zeros_like(labels, dtype=torch.bool)                      # keep[b, t]: h[b, t] predicts t+1
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    empty = not bool(keep.any())
    if empty:
        keep[0, 0] = True
    targets = labels[:, 1:][keep[:, :-1]] if not empty else torch.zeros(1, dtype=torch.long, device=device)
    head, extra = model.get_output_embeddings(), {}

    def head_forward(h):                                                    # h: (N, H) at kept positions
        logp, extra["entropy"] = chunked_head_logprobs(h, head.weight, head.bias, targets, temperature,
                                                       chunk_size, with_entropy)
        return logp
    inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
    head.forward = head_forward
    try:
        logp = model(**inputs, use_cache=False, logits_to_keep=keep).logits                      # (N,)
    finally:
        del head.forward
    shifted = torch.zeros_like(keep)
    shifted[:, 1:] = keep[:, :-1]
    if empty:
        logp, shifted = logp * 0.0, keep                                   # connected to the graph, all zero
    out = torch.zeros(labels.shape, dtype=torch.float32, device=device).masked_scatter(shifted, logp)
    if not with_entropy:
        return out
    ent = torch.zeros(labels.shape, dtype=torch.float32, device=device).masked_scatter(shifted, extra["entropy"])
    return out, (ent * 0.0 if empty else ent)


# ----------------------------------------------------------------------------- shard
# vision attention in one call per window size, checkpointing of what trains, FSDP2, micro-batches.
def segment_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                      scale: float) -> torch.Tensor:
    """Bidirectional softmax attention inside each segment [cu_seqlens[i], cu_seqlens[i+1]) of a packed
    sequence, nothing across segments: out_s = Σ_{s' in seg(s)} softmax_s'(q_s·k_s' · scale) v_s'.

    q, k: (S, heads, d); v, out: (S, heads, d_v). The segments (the vision tower's attention windows, or
    whole images in its full-attention blocks) are grouped by length and each group runs as one batched
    scaled_dot_product_attention call: a handful of calls instead of one per window, the same arithmetic."""
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    starts = cu_seqlens[:-1]
    out = q.new_empty(*q.shape[:-1], v.shape[-1])
    if bool((lengths == lengths[0]).all()):          # one length (e.g. one image): a view, no gather
        n = int(lengths[0])
        qs, ks, vs = (x.unflatten(0, (-1, n)).transpose(1, 2) for x in (q, k, v))              # (w, h, n, d)
        return F.scaled_dot_product_attention(qs, ks, vs, scale=scale).transpose(1, 2).flatten(0, 1)
    for n in torch.unique(lengths).tolist():
        if n == 0:
            continue
        idx = (starts[lengths == n][:, None] + torch.arange(n, device=q.device)).reshape(-1)   # (w·n,)
        qs, ks, vs = (x[idx].unflatten(0, (-1, n)).transpose(1, 2) for x in (q, k, v))        # (w, h, n, d)
        o = F.scaled_dot_product_attention(qs, ks, vs, scale=scale)
        out = out.index_copy(0, idx, o.transpose(1, 2).flatten(0, 1))
    return out


def _batched_vision_attention_forward(self, hidden_states: torch.Tensor, cu_seqlens: torch.Tensor,
                                      position_embeddings: tuple | None = None, max_seqlen=None, **kwargs):
    """Qwen2.5-VL / Qwen3-VL vision attention (qkv → 2-D rotary → attention per window → proj), with the
    per-window Python loop of transformers' non-flash path replaced by segment_attention()."""
    rotary = sys.modules[type(self).__module__].apply_rotary_pos_emb_vision
    s = hidden_states.shape[0]
    q, k, v = self.qkv(hidden_states).reshape(s, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    cos, sin = position_embeddings
    q, k = rotary(q, k, cos, sin)
    return self.proj(segment_attention(q, k, v, cu_seqlens, self.scaling).reshape(s, -1))


def fast_vision_attention(model) -> int:
    """Install the batched vision attention on every vision attention module of a Qwen2.5-VL / Qwen3-VL
    model (instance-level forward; nothing changes with flash-attention, which already runs varlen).
    Returns how many modules were patched. load_model() calls it."""
    from transformers.utils.generic import is_flash_attention_requested
    n = 0
    for m in model.model.visual.modules():
        if type(m).__name__ in ("Qwen2_5_VLVisionAttention", "Qwen3VLVisionAttention") \
                and not is_flash_attention_requested(m.config):
            m.forward = types.MethodType(_batched_vision_attention_forward, m)
            n += 1
    return n


def enable_activation_checkpointing(model) -> list:
    """Non-reentrant activation checkpointing on the layers that train: every decoder layer, and the vision
    blocks only when they have trainable parameters (call it after freeze_vision). Recomputing a frozen
    block saves nothing worth its cost: its activations are not kept for a backward anyway (measured on an
    H200, 3B shape: 4x slower steps). Returns the names of the checkpointed layers.

    Each layer's forward is wrapped at instance level (checkpointed_forward), so parameter names and state
    dicts stay those of the HF model and FSDP2's hooks stay outside the recomputed region. We do not use
    transformers' activation_checkpointing_enable: on FSDP2 it measured 1.65x the step without
    checkpointing against 1.09x for this wrapper (tiny model, CPU, same gradients); on an H200 (3B shape,
    8.5k tokens, frozen vision) 1.51x against 1.16x."""
    from transformers.modeling_layers import GradientCheckpointingLayer
    names = []
    for name, m in model.named_modules():
        if isinstance(m, GradientCheckpointingLayer) and any(p.requires_grad for p in m.parameters()):
            m.forward = types.MethodType(checkpointed_forward, m)   # bound: a deepcopy stays self-contained
            names.append(name)
    return names


def checkpointed_forward(self, *args, **kwargs):
    """The layer's own forward (its class's), recomputed in the backward instead of keeping its activations
    (training with grad only). preserve_rng_state=False: Qwen-VL layers draw no random numbers (no
    dropout), and saving/restoring the CUDA RNG state per layer costs time for nothing."""
    from torch.utils.checkpoint import checkpoint
    forward = functools.partial(type(self).forward, self)
    if self.training and torch.is_grad_enabled():
        return checkpoint(forward, *args, use_reentrant=False, preserve_rng_state=False, **kwargs)
    return forward(*args, **kwargs)


def shard_model(model, device: torch.device, bf16: bool = True, broadcast_from_rank0: bool = False):
    """FSDP2: fully_shard each vision block, the vision tower, each decoder layer, then the root.

    The vision tower is its own unit because transformers 5.x generate() computes image features outside
    the root forward (platform-notes §5). bf16 params with fp32 reduction on GPU, fp32 on CPU. A one-token
    forward right after sharding initialises the FSDP root, so generate() may be the first call; the root is
    resharded after it, so model.parameters() are the sharded DTensors the optimizer must hold.
    broadcast_from_rank0: only rank 0's model holds the weights, the others may be on the meta device
    (load_model(meta=True)); every rank ends with its shard of rank 0's weights and rank 0's buffers."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    # FSDP2 warns that the root "returned a view tensor": those views are the per-image vision features
    # (image_outputs, split from one tensor) the model returns beside the logits. Only an in-place op on
    # them could skip FSDP's pre-backward hook, and nothing writes to them; the 2-rank test shows the
    # gradients equal a one-process run (test_fsdp2_two_ranks_equal_one_process).
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(.*\) returned a view tensor")
    world = dist.get_world_size() if dist.is_initialized() else 1
    if not dist.is_initialized():  # FSDP2 needs a process group even for one rank
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)
    mesh = init_device_mesh(device.type, (world,))
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if (bf16 and device.type == "cuda") else MixedPrecisionPolicy()
    full_sd = model.state_dict() if broadcast_from_rank0 and is_main() else {}   # before it is sharded
    visual, lm = model.model.visual, model.model.language_model
    for block in visual.blocks:
        fully_shard(block, mesh=mesh, mp_policy=mp)
    fully_shard(visual, mesh=mesh, mp_policy=mp)
    for layer in lm.layers:
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    if broadcast_from_rank0:
        fill_from_rank0(model, full_sd, device)
    with torch.no_grad():
        model(input_ids=torch.zeros((1, 1), dtype=torch.long, device=device), use_cache=False)
    model.reshard()  # the root stays unsharded after a forward; the optimizer must see the sharded params
    return model


def fill_from_rank0(model, full_sd: dict, device: torch.device) -> None:
    """Materialise a sharded model on ranks > 0 and copy rank 0's weights and buffers into every rank.

    Parameters and persistent buffers come from rank 0's full state dict (`full_sd`, {} elsewhere), each
    rank keeping only its shard. Non-persistent buffers (the rotary inv_freq of the text and vision
    towers) are not in any state dict and are garbage after to_empty, so every buffer (FSDP2 does not
    shard buffers) is broadcast from rank 0, whose model was never emptied."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    if not is_main():
        model.to_empty(device=device)
    set_model_state_dict(model, full_sd, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    with torch.no_grad():
        for buf in model.buffers():
            dist.broadcast(buf, src=0)


def is_fsdp(model) -> bool:
    from torch.distributed.fsdp import FSDPModule
    return isinstance(model, FSDPModule)


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


def micro_batches(batch: list, rank: int, world_size: int, micro_batch_size: int, max_tokens: int = 0,
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


# ----------------------------------------------------------------------------- generate
# generate(): the simple path (CPU, tests); RolloutEngine: the fast path for rollouts and evaluation on CUDA.
def generation_config(tokenizer, max_new_tokens: int = 1024, do_sample: bool = False, temperature: float = 1.0,
                      top_p: float = 1.0, top_k: int = 0, num_return_sequences: int = 1):
    """A GenerationConfig with every decoding field set: plain greedy (do_sample=False) or plain sampling
    with the given temperature / top-p / top-k (0 = off); no repetition penalty, n-gram ban, min-p, typical-p,
    ε/η cutoffs, length constraints or forced tokens; stops at <|im_end|>; vision tokens suppressed.
    generate() also swaps it in as model.generation_config for the call, so no field a checkpoint's
    generation_config.json sets (Qwen2.5-VL: repetition_penalty 1.05, top_k 1, ...) is inherited; the
    fields left None (top-k and min-p in greedy mode, where they are unused) take transformers' defaults."""
    from transformers import GenerationConfig
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    return GenerationConfig(
        max_new_tokens=max_new_tokens, min_new_tokens=0, do_sample=do_sample, num_beams=1,
        num_return_sequences=num_return_sequences, temperature=temperature if do_sample else 1.0,
        top_p=top_p if do_sample else 1.0, top_k=top_k if do_sample else None, min_p=None, typical_p=1.0,
        epsilon_cutoff=0.0, eta_cutoff=0.0, repetition_penalty=1.0, encoder_repetition_penalty=1.0,
        no_repeat_ngram_size=0, encoder_no_repeat_ngram_size=0, length_penalty=1.0, renormalize_logits=False,
        bad_words_ids=None, sequence_bias=None, forced_bos_token_id=None, forced_eos_token_id=None,
        exponential_decay_length_penalty=None, begin_suppress_tokens=None, remove_invalid_values=False,
        suppress_tokens=tokenizer.convert_tokens_to_ids(list(VISION_TOKENS)), eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=None, use_cache=True,
        output_scores=False, return_dict_in_generate=False)


def completion_mask(ids: torch.Tensor, eos_id: int, pad_id: int) -> tuple:
    """(ids, mask) for completions (N, L): mask[r, j] is True up to and including the first eos (all of
    the row when it has none); ids after it are set to pad_id. The pad token itself may be sampled, so the
    mask comes from the eos position, never from `ids != pad`."""
    is_eos = ids == eos_id
    after = (is_eos.long().cumsum(1) - is_eos.long()) > 0                 # strictly after the first eos
    return ids.masked_fill(after, pad_id), ~after


@torch.no_grad()
def generate(model, batch: dict, tokenizer, *, max_new_tokens: int = 1024, do_sample: bool = False,
             temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, num_return_sequences: int = 1):
    """Completions of a left-padded encode() batch: (ids (N, L), mask (N, L)), N = B · num_return_sequences,
    rows grouped by prompt (rows i·n … i·n+n−1 are prompt i's), L ≤ max_new_tokens.

    mask marks the completion up to and including the first <|im_end|> (completion_mask); ids after it are
    the pad id. Every sampling field is explicit (generation_config()), nothing comes from the checkpoint;
    vision tokens are never generated. On an FSDP2 model every unit is kept unsharded for the whole call
    (one all-gather per unit, not per token) and resharded afterwards; ranks stay in step (synced_gpus).
    This is the simple path (CPU, tests); on CUDA use RolloutEngine for rollouts and evaluation."""
    gc = generation_config(tokenizer, max_new_tokens, do_sample, temperature, top_p, top_k, num_return_sequences)
    inputs = {k: v.to(next(model.parameters()).device) for k, v in batch.items() if k != "labels"}
    units = [m for m in model.modules() if is_fsdp(m)]
    for m in units:
        m.set_reshard_after_forward(False, recurse=False)
    was_training, saved_gc = model.training, model.generation_config
    model.eval()
    model.generation_config = gc
    try:
        out = model.generate(**inputs, generation_config=gc,
                             synced_gpus=bool(units) and dist.is_initialized() and dist.get_world_size() > 1)
    finally:
        model.generation_config = saved_gc
        model.train(was_training)
        for m in units:
            m.reshard()
            m.set_reshard_after_forward(m is not model, recurse=False)
    return completion_mask(out[:, inputs["input_ids"].shape[1]:], gc.eos_token_id, tokenizer.pad_token_id)


def bucket_length(n: int, buckets: tuple) -> int:
    """The smallest bucket ≥ n; beyond the largest, the next multiple of it. Prompts are left-padded to their
    bucket so the prefill shapes repeat."""
    for b in sorted(buckets):
        if n <= b:
            return b
    top = max(buckets)
    return -(-n // top) * top


def pad_prompts(batch: dict, length: int, rows: int, pad_id: int) -> dict:
    """A left-padded encode() batch widened to `length` tokens (more left padding) and filled up to `rows`
    prompts with text-only filler rows (one attended pad token each; their outputs are dropped), so every
    generate call of a run has the same number of sequences."""
    b, t = batch["input_ids"].shape
    out = {k: v for k, v in batch.items() if k in ("pixel_values", "image_grid_thw")}
    for key in ("input_ids", "attention_mask", "mm_token_type_ids"):
        x = F.pad(batch[key], (length - t, 0), value=pad_id if key == "input_ids" else 0)
        filler = torch.full((rows - b, length), pad_id if key == "input_ids" else 0, dtype=x.dtype)
        if key == "attention_mask":
            filler[:, -1] = 1
        out[key] = torch.cat([x, filler.to(x.device)])
    return out


def prompt_slice(batch: dict, lo: int, hi: int, merge_size: int = 2) -> dict:
    """Prompts lo … hi−1 of an encode() batch, with their images' pixel rows and grids (images follow the
    prompts' order; image j has prod(grid_j) / merge² tokens and belongs to the prompt whose running count
    of image tokens it falls in)."""
    out = {k: batch[k][lo:hi] for k in ("input_ids", "attention_mask", "mm_token_type_ids")}
    if "pixel_values" in batch:
        patches = batch["image_grid_thw"].prod(-1)                                  # (images,)
        ends = (patches // merge_size ** 2).cumsum(0)                               # image tokens so far
        owner = torch.searchsorted((batch["mm_token_type_ids"] == 1).sum(1).cumsum(0), ends)   # prompt of image
        mine = ((owner >= lo) & (owner < hi)).nonzero().flatten()
        if len(mine):
            rows = torch.cat([torch.zeros(1, dtype=torch.long), patches.cumsum(0)])
            a, z = int(mine[0]), int(mine[-1]) + 1
            out["pixel_values"] = batch["pixel_values"][int(rows[a]):int(rows[z])]
            out["image_grid_thw"] = batch["image_grid_thw"][a:z]
    return out


def _plain_class(model):
    """The transformers class under FSDP2's dynamic FSDP<Class> subclass."""
    return next(c for c in type(model).__mro__ if c.__module__.startswith("transformers.models."))


class RolloutEngine:
    """Fast sampling for GRPO rollouts and evaluation: a plain (unsharded) copy of the policy in `dtype`,
    gathered from the FSDP2 shards (or copied from a plain model), decoding with transformers' static KV
    cache; on CUDA transformers compiles the decode step (torch.compile) the first time it sees a shape.

    Shapes repeat so compilation happens once per run: every call decodes `prompts_per_call` prompts ×
    num_return_sequences rows (filler rows added, bigger batches split), prompts are left-padded to a
    bucket (`prompt_buckets`), and the cache length is fixed at the largest bucket seen + max_new_tokens
    (it only grows). Each rank decodes its own prompts with its own copy: no collectives per token.

        engine = RolloutEngine(model)          # collective: every rank gathers the full weights
        engine.refresh(model)                  # after each optimizer step (collective), before a rollout
        ids, mask = engine.generate(batch, tok, max_new_tokens=2048, do_sample=True, num_return_sequences=5)
        engine.free()                          # give the copy's memory back (refresh() rebuilds it)

    generate() has generate()'s contract (rows grouped by prompt, mask through the first <|im_end|>, every
    sampling field explicit, no vision tokens). On CPU the same code runs without compilation (fp32 by
    default): that is what the tests check, against generate() on the sharded model. share_weights (default:
    when `model` is a plain model already in `dtype`, as in evaluation) decodes with `model` itself instead
    of a copy; an FSDP2 model is always copied."""

    def __init__(self, model, *, prompts_per_call: int = 8, prompt_buckets: tuple = (256, 512, 1024, 2048, 4096),
                 dtype: torch.dtype | None = None, compile: bool = True, share_weights: bool | None = None):
        self.prompts_per_call, self.prompt_buckets, self.compile = prompts_per_call, tuple(prompt_buckets), compile
        self.device = next(model.parameters()).device
        self.dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        plain = not is_fsdp(model) and next(model.parameters()).dtype == self.dtype
        self.shared = plain if share_weights is None else (share_weights and plain)
        self.cls, self.config, self.copy, self.max_cache_len = _plain_class(model), model.config, None, 0
        self.refresh(model)

    def _build(self, model):
        """The plain model, allocated once: parameters in self.dtype, buffers (rotary inv_freq) as the source's."""
        with torch.device("meta"):
            plain = self.cls(copy.deepcopy(self.config))
        plain.to(self.dtype).to_empty(device=self.device).eval().requires_grad_(False)
        plain.tie_weights()   # to_empty gives each module its own tensor: re-tie lm_head to the embeddings
        fast_vision_attention(plain)
        src = dict(model.named_buffers())
        for name, buf in list(plain.named_buffers()):
            mod, _, leaf = name.rpartition(".")
            plain.get_submodule(mod)._buffers[leaf] = src[name].detach().clone()
        return plain

    @torch.no_grad()
    def refresh(self, model) -> float:
        """Copy the current weights of `model` (FSDP2-sharded or plain) into the rollout copy, one parameter
        at a time (each sharded one all-gathered: a collective, every rank calls it). Returns seconds."""
        t0 = time.perf_counter()
        if self.shared:
            self.copy = model
            fast_vision_attention(model)
            return 0.0
        if self.copy is None:
            self.copy = self._build(model)
        dst = dict(self.copy.named_parameters())
        for name, p in model.named_parameters():
            dst[name].copy_(p.full_tensor() if hasattr(p, "full_tensor") else p)
        return time.perf_counter() - t0

    def free(self) -> None:
        """Drop the rollout copy (and transformers' cached static KV cache with it)."""
        self.copy = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    @torch.no_grad()
    def generate(self, batch: dict, tokenizer, *, max_new_tokens: int = 1024, do_sample: bool = False,
                 temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, num_return_sequences: int = 1):
        """generate()'s contract on the rollout copy: (ids (N, L), mask (N, L)), N = B · num_return_sequences."""
        if self.copy is None:
            raise RuntimeError("RolloutEngine.generate after free(): call refresh(model) first")
        gc = generation_config(tokenizer, max_new_tokens, do_sample, temperature, top_p, top_k, num_return_sequences)
        length = bucket_length(batch["input_ids"].shape[1], self.prompt_buckets)
        self.max_cache_len = max(self.max_cache_len, length + max_new_tokens)
        gc.cache_implementation, gc.max_cache_len, gc.disable_compile = "static", self.max_cache_len, not self.compile
        saved, was_training = self.copy.generation_config, self.copy.training   # a shared model gets them back
        self.copy.generation_config = gc
        self.copy.eval()
        n, b, outs = num_return_sequences, batch["input_ids"].shape[0], []
        try:
            for lo in range(0, b, self.prompts_per_call):
                part = prompt_slice(batch, lo, min(b, lo + self.prompts_per_call),
                                    self.config.vision_config.spatial_merge_size)
                k = part["input_ids"].shape[0]
                inputs = {key: v.to(self.device) for key, v in
                          pad_prompts(part, length, self.prompts_per_call, tokenizer.pad_token_id).items()}
                out = self._decode(inputs, gc)[:k * n, length:]
                outs.append(completion_mask(out, gc.eos_token_id, tokenizer.pad_token_id))
        finally:
            self.copy.generation_config = saved
            self.copy.train(was_training)
        width = max(ids.shape[1] for ids, _ in outs)
        ids = torch.cat([F.pad(i, (0, width - i.shape[1]), value=tokenizer.pad_token_id) for i, _ in outs])
        mask = torch.cat([F.pad(m, (0, width - m.shape[1]), value=False) for _, m in outs])
        return ids, mask

    def _decode(self, inputs: dict, gc):
        """transformers' generate on the copy; if torch.compile fails on this platform, say so once and go on
        uncompiled (a rollout must not die for a compiler error)."""
        from torch._dynamo.exc import TorchDynamoException
        try:
            return self.copy.generate(**inputs, generation_config=gc)
        except TorchDynamoException as e:
            if gc.disable_compile:
                raise
            print0(f"RolloutEngine: torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                   "decoding uncompiled from now on")
            self.compile, gc.disable_compile = False, True
            return self.copy.generate(**inputs, generation_config=gc)


# ----------------------------------------------------------------------------- save
def atomic_write(path: Path, data: str | bytes) -> None:
    """Write a file that is either complete or absent: the data goes to .NAME.PID.tmp beside it, is flushed
    to disk and renamed over `path` (atomic on POSIX); ranks writing the same file do not collide."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_hf(model, tokenizer, image_processor, out_dir: str, dtype: torch.dtype = torch.bfloat16) -> None:
    """Consolidated HF directory from rank 0: model.safetensors, config.json, generation_config.json,
    tokenizer and image-processor files; loadable with AutoModelForImageTextToText.from_pretrained.

    Collective (every rank calls it). Files go to a temporary folder first and are moved in with the
    weights last, so a folder with weights always has its config and tokenizer."""
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if is_main():
        out, seen = Path(out_dir), set()
        tmp = out / ".export.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        weights = {}
        for k, v in sd.items():  # tied weights share storage: keep the first name only
            if v.data_ptr() in seen and model.config.get_text_config().tie_word_embeddings:
                continue
            seen.add(v.data_ptr())
            weights[k] = v.detach().to(dtype).contiguous()
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        config = copy.deepcopy(model.config)   # the live model keeps its training settings
        config.dtype = dtype
        config.use_cache = True
        config.save_pretrained(tmp)
        model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        image_processor.save_pretrained(tmp)
        names = sorted(p.name for p in tmp.iterdir())
        for name in [n for n in names if n != "model.safetensors"] + ["model.safetensors"]:
            os.replace(tmp / name, out / name)
        tmp.rmdir()
    barrier()


def _state_dicts(model, optimizer) -> dict:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict
    return {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)}


def save_state(model, optimizer, trainer_state: dict, out_dir: str, keep: int = 1) -> Path:
    """Resumable checkpoint OUT/checkpoints/step_XXXXXXXX: sharded model + optimizer
    (torch.distributed.checkpoint) and trainer_state.json (step, data position).

    Atomic: written to step_X.tmp, then renamed by rank 0 after every rank finished; a folder without the
    .tmp suffix is always complete. Older checkpoints beyond `keep` are deleted afterwards."""
    import torch.distributed.checkpoint as dcp
    root = Path(out_dir) / "checkpoints"
    final = root / f"step_{trainer_state['step']:08d}"
    tmp = final.with_name(final.name + ".tmp")
    if is_main():
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    with warnings.catch_warnings():  # "assuming the intent is to save in a single process": yes
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save(_state_dicts(model, optimizer), checkpoint_id=str(tmp))
    barrier()
    if is_main():
        atomic_write(tmp / "trainer_state.json", json.dumps(trainer_state, indent=1))
        publish_step_folder(tmp, final, keep)
    barrier()
    return final


def publish_step_folder(tmp: Path, final: Path, keep: int) -> None:
    """Rename a finished step_X.tmp folder to step_X (replacing an older one of that name), then delete all
    but the newest `keep` complete step_* folders beside it. Rank 0 only; .tmp folders are never counted."""
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in sorted(p for p in final.parent.glob("step_*") if p.suffix != ".tmp")[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(out_dir: str) -> Path | None:
    """The newest complete checkpoint folder in OUT/checkpoints (ignores unfinished *.tmp folders)."""
    done = sorted(p for p in (Path(out_dir) / "checkpoints").glob("step_*")
                  if p.suffix != ".tmp" and (p / "trainer_state.json").exists())
    return done[-1] if done else None


def load_state(model, optimizer, ckpt: Path) -> dict:
    """Load a save_state() folder into the (possibly sharded) model and optimizer; returns trainer_state."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict
    sd = _state_dicts(model, optimizer)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(sd, checkpoint_id=str(ckpt))
    set_model_state_dict(model, sd["model"])
    set_optimizer_state_dict(model, optimizer, sd["optim"])
    with open(ckpt / "trainer_state.json") as f:
        return json.load(f)


# ============================================================================= SFT


# ----------------------------------------------------------------------------- config
def _f(default, help):
    """A dataclass field with a one-line --help text."""
    return field(default=default, metadata={"help": help})


@dataclass
class Config:
    model: str = _f("tiny", "HF id or local HF dir (Qwen2.5-VL / Qwen3-VL), or 'tiny' / 'tiny-qwen3'")
    data: str = _f("", "REQUIRED (except with --smoke): the cold-start file make_data.py writes, sft.jsonl "
                       "(records with id, task, problem, answer, images, response)")
    out: str = _f("runs/sft", "output folder: the HF checkpoint, metrics.jsonl, checkpoints/")
    epochs: int = _f(5, "passes over the data (paper: 5)")
    max_steps: int = _f(0, "stop after this many optimizer steps (0: epochs decide)")
    lr: float = _f(1e-5, "peak learning rate (paper: 1e-5)")
    warmup_ratio: float = _f(0.1, "fraction of steps with linear warmup before the cosine decay")
    weight_decay: float = _f(0.0, "AdamW weight decay (LLaMA-Factory default 0)")
    adam_betas: tuple = _f((0.9, 0.999), "AdamW betas")
    global_batch_size: int = _f(256, "samples per optimizer step over all ranks (paper: 256)")
    micro_batch_size: int = _f(4, "samples per forward/backward on one rank")
    micro_batch_tokens: int = _f(0, "instead of --micro-batch-size: micro-batches of at most this many padded "
                                    "tokens (count x longest), samples sorted by length (e.g. 16384 on a GPU)")
    max_length: int = _f(4096, "max tokens per sample, prompt + image tokens + response (paper: 4096)")
    min_pixels: int | None = _f(None, "smallest image area after resizing, in pixels (default: the model's "
                                      "own bound)")
    max_pixels: int | None = _f(None, "largest image area after resizing, in pixels (default: the model's own "
                                      "bound, at most 512² = 262144 as in the paper)")
    max_grad_norm: float = _f(1.0, "gradient-norm clip")
    freeze_vision: bool = _f(True, "freeze the vision tower and projector (paper: frozen)")
    activation_checkpointing: bool = _f(True, "non-reentrant activation checkpointing of every block")
    bf16: bool = _f(True, "bf16 compute with fp32 master weights and reduction (GPU only; CPU stays fp32)")
    fsdp: bool = _f(False, "shard with FSDP2 even in a single CPU process (always on for GPU or >1 rank)")
    shuffle: bool = _f(True, "shuffle the records every epoch (seeded)")
    seed: int = _f(42, "seed for the data order and the per-rank RNGs")
    skip_bad_records: bool = _f(False, "skip and count bad records instead of stopping with an error")
    save_every: int = _f(15, "write a resumable checkpoint every N steps, and at the end (0: only at the end)")
    keep_checkpoints: int = _f(1, "resumable checkpoints kept on disk")
    resume: bool = _f(False, "continue the run in OUT from its newest complete checkpoint (refused when a "
                             "setting that defines the schedule or the data differs)")
    overwrite: bool = _f(False, "delete the earlier run in OUT (an sft.py output folder) and start over")
    save_dtype: str = _f("bfloat16", "dtype of the exported HF weights (bfloat16 or float32)")
    attn_implementation: str = _f("sdpa", "attention kernel passed to transformers")
    stop_after_steps: int = _f(0, "stop (as if killed) after this many steps, keeping the full schedule; "
                               "for testing --resume")
    smoke: bool = _f(False, "CPU smoke run; overrides --model tiny, --max-steps 2, --global-batch-size 4, "
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


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse whose errors are one line ("sft.py: error: ..."), not the whole usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows "(default: X)" only where a default means something (not for "", None or off switches)."""

    def _get_help_string(self, action):
        if any(action.default is x for x in ("", None, False, argparse.SUPPRESS)):
            return action.help
        return action.help + " (default: %(default)s)"


def config_parser(config_cls, prog: str, description: str, epilog: str = "", metavars: dict | None = None):
    """argparse options generated from a Config dataclass (sft.py, grpo.py, evaluate.py): --dash-names, the
    field's help, defaults shown where they mean something; switches that are off by default are plain
    flags (store_true), those on by default get a --no- form; tuples take that many floats, lists any
    number of strings; errors are one line."""
    p = OneLineErrorParser(prog=prog, description=description, epilog=epilog, formatter_class=HelpFormatter)
    for f in dataclasses.fields(config_cls):
        name, kw = "--" + f.name.replace("_", "-"), {"default": f.default, "help": f.metadata["help"]}
        typ = next((t for t in getattr(f.type, "__args__", ()) if t is not type(None)), f.type)  # int | None
        if typ is bool:
            kw["action"] = argparse.BooleanOptionalAction if f.default else "store_true"
        elif typ is tuple:
            kw.update(type=float, nargs=len(f.default))
        elif typ is list:
            kw.update(nargs="*", default=list(f.default))
        else:
            kw["type"] = typ
        if f.name in (metavars or {}):
            kw["metavar"] = metavars[f.name]
        p.add_argument(name, **kw)
    return p


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


def epoch_order(n: int, epoch: int, seed: int, shuffle: bool) -> list:
    """Record order of one epoch: a permutation seeded by (seed, epoch), identical on every rank."""
    if not shuffle:
        return list(range(n))
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


# ----------------------------------------------------------------------------- data
class BadRecord(SetupError):
    """A dataset record that cannot be trained on; the message names the record."""


def check_record(record: dict, root: Path, tokenizer, image_processor, max_length: int) -> int:
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
    if not isinstance(images, list) or not all(isinstance(x, str) for x in images):
        raise BadRecord(f'record {rid}: "images" is {json.dumps(images)}, not a list of paths '
                        "(use [] for a text-only record)")
    if record["problem"].count(IMAGE_PLACEHOLDER) != len(images):
        raise BadRecord(f"record {rid}: {record['problem'].count(IMAGE_PLACEHOLDER)} <image> "
                        f"placeholders but {len(images)} images")
    counts = []
    for rel in images:
        try:
            with Image.open(root / rel) as im:
                im.load()   # decode it all: a truncated file has a valid header
                counts.append(image_token_count(im.size, image_processor))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise BadRecord(f"record {rid}: cannot read image {root / rel}: {e}") from None
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
            kept.append({**rec, "num_tokens": check_record(rec, root, tokenizer, image_processor, max_length)})
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


# ----------------------------------------------------------------------------- loop
def train_step(model, optimizer, batches: list, lr: float, max_grad_norm: float, device: torch.device,
               sync_every_micro_batch: bool = True) -> dict:
    """One optimizer step over this rank's micro-batches (encoded, labels included).

    The supervised-token count is all-reduced first, so every micro-batch loss is normalised by the
    global count (sft_loss): the update does not depend on how the global batch is split. On an FSDP2
    model the gradients are reduce-scattered after every micro-batch (sync_every_micro_batch), so a rank
    holds only its fp32 gradient shard between micro-batches; with False they are accumulated unsharded
    (one full fp32 gradient per rank, ≈ 30 GB for 7B) and reduced once after the last micro-batch."""
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


def rank_batches(batch: list, root: Path, tokenizer, image_processor, d: Dist, micro_batch_size: int,
                 micro_batch_tokens: int = 0) -> list:
    """Encode this rank's micro-batches of a global batch (by count, or by a token budget using the
    records' num_tokens from prepare_records); an empty one becomes a zero-weight sample."""
    out = []
    lengths = [r["num_tokens"] for r in batch] if micro_batch_tokens else None
    for mb in micro_batches(batch, d.rank, d.world_size, micro_batch_size, micro_batch_tokens, lengths):
        enc = encode_records(mb or batch[:1], root, tokenizer, image_processor)
        if not mb:
            enc["labels"].fill_(IGNORE_INDEX)
        out.append(enc)
    return out


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
    if cfg.max_pixels is None and ip.size["longest_edge"] > PAPER_MAX_PIXELS:   # a base model's 12.8M px
        set_pixel_bounds(ip, None, PAPER_MAX_PIXELS)
    root = Path(cfg.data).resolve().parent
    records, skipped = prepare_records(read_jsonl(cfg.data), root, tok, ip, cfg.max_length,
                                       cfg.skip_bad_records)
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


def out_dir_mode(cfg: Config) -> str:
    """How this run may use OUT: 'fresh' (new or empty), 'resume' or 'overwrite'. Read-only; raises a
    SetupError instead of mixing two runs (an earlier run without --resume/--overwrite) or writing into a
    non-empty folder that holds no sft.py run."""
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise SetupError(f"--out {out} is a file, not a folder")
    entries = sorted(p.name for p in out.iterdir() if p.name != SMOKE_DATA) if out.is_dir() else []
    ours = [e for e in entries if e in RUN_MARKERS]
    if entries and not ours:
        raise SetupError(f"--out {out} is not empty and holds no sft.py run ({', '.join(entries[:4])}"
                         f"{', …' if len(entries) > 4 else ''}): choose a new or empty folder")
    if cfg.resume:
        return "resume"
    if not entries:
        return "fresh"
    if cfg.overwrite:
        return "overwrite"
    raise SetupError(f"--out {out} already holds a run ({', '.join(ours)}): add --resume to continue it or "
                     "--overwrite to delete it and start over")


def start_out_dir(out: Path, mode: str) -> None:
    """Create OUT; with mode 'overwrite' first delete everything in it but --smoke's data (rank 0)."""
    if mode == "overwrite":
        for p in out.iterdir():
            if p.name != SMOKE_DATA:
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    out.mkdir(parents=True, exist_ok=True)


def run_identity(cfg: Config, num_records: int, total_steps: int, image_processor) -> dict:
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


def checked_checkpoint(cfg: Config, ident: dict) -> Path | None:
    """The newest complete checkpoint to resume from (None: there is none), or a SetupError naming every
    setting that differs from the run that saved it (resuming would silently change the schedule)."""
    ckpt = latest_checkpoint(cfg.out)
    if ckpt is None:
        return None
    try:
        saved = json.loads((ckpt / "trainer_state.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SetupError(f"--resume: cannot read {ckpt / 'trainer_state.json'}: {e}") from None
    diff = [f"{IDENTITY_LABELS.get(k, '--' + k.replace('_', '-'))} {saved.get(k, 'not saved')} (now {v})"
            for k, v in ident.items() if saved.get(k) != v]
    if diff:
        raise SetupError(f"--resume: {ckpt} was saved by a run with other settings: {'; '.join(diff)}. "
                         "Resume with the same settings, or start over with --overwrite")
    return ckpt


def read_metrics(path: Path) -> list:
    """The rows of a log like metrics.jsonl; a cut-off last line (a run killed while writing it) is dropped."""
    rows = []
    lines = path.read_text().splitlines() if path.exists() else []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1 and line.strip():
                raise SetupError(f"{path} line {i + 1} is not JSON (only the last line may be cut off)") from None
    return rows


def append_metrics(path: Path, rows: list) -> None:
    """Append rows to a log like metrics.jsonl in one write, flushed (a kill can cut off at most the last line)."""
    with open(path, "a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
        f.flush()


def keep_metrics_until(path: Path, step: int) -> None:
    """On resume, drop the rows of a log logged after the checkpoint's `step` (and a cut-off last row);
    the file is rewritten atomically. Rank 0 only."""
    if path.exists():
        rows = [r for r in read_metrics(path) if r["step"] <= step]
        atomic_write(path, "".join(json.dumps(r) + "\n" for r in rows))


def resume_step(cfg: Config, s: dict, ckpt: Path | None) -> int:
    """Load the checkpoint (from checked_checkpoint) into the model and optimizer and keep the metrics rows
    up to its step; returns the first step to run (0 without a checkpoint)."""
    if cfg.resume and ckpt is None:
        print0(f"--resume: no complete checkpoint in {cfg.out}/checkpoints, starting from scratch")
    state = load_state(s["model"], s["optimizer"], ckpt) if ckpt is not None else {"step": 0}
    if is_main():
        keep_metrics_until(Path(cfg.out) / "metrics.jsonl", state["step"])
    barrier()
    if ckpt is not None:
        print0(f"resumed from {ckpt} (step {state['step']}, epoch {state['epoch']}, "
               f"record {state['index_in_epoch']} of the epoch)")
    return state["step"]


def train(cfg: Config) -> None:
    """The SFT loop: global batch → micro-batches → train_step → log → periodic resumable checkpoint →
    final resumable state and consolidated HF export in cfg.out."""
    d = setup_dist(cfg.seed)
    try:
        out, mode = Path(cfg.out), out_dir_mode(cfg)   # checks only: nothing is written before the data,
        barrier()                                      # the model and a resumed run's settings are checked
        s = setup_training(cfg, d)
        model, records, G = s["model"], s["records"], cfg.global_batch_size
        steps_per_epoch = math.ceil(len(records) / G)
        total = cfg.max_steps if cfg.max_steps > 0 else cfg.epochs * steps_per_epoch
        ident = run_identity(cfg, len(records), total, s["ip"])
        ckpt = checked_checkpoint(cfg, ident) if mode == "resume" else None
        if d.is_main:
            start_out_dir(out, mode)
            write_run_info(cfg, out)
        barrier()
        step = resume_step(cfg, s, ckpt)
        bar = tqdm(total=total, initial=step, desc="sft", file=sys.stderr,  # logs to a file stay clean
                   disable=not (d.is_main and sys.stderr.isatty()))

        def encode_step(i: int) -> list:   # this rank's encoded micro-batches of global step i
            epoch, k = divmod(i, steps_per_epoch)
            order = epoch_order(len(records), epoch, cfg.seed, cfg.shuffle)
            return rank_batches([records[j] for j in order[k * G:(k + 1) * G]], s["root"], s["tok"], s["ip"], d,
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
                save_state(model, s["optimizer"], {"step": step, "epoch": ep, "index_in_epoch": k2 * G, **ident},
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
        out_dir_mode(cfg)   # before --smoke writes its data into OUT
        if cfg.smoke:
            cfg = smoke_config(cfg)
        train(cfg)
    except SetupError as e:   # BadRecord too
        if os.environ.get("RANK", "0") == "0":
            print(f"sft.py: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None


# ============================================================================= support
# the tiny offline models (tests, --smoke), the 3B shape and synthetic records (bench.py).
QWEN_SPECIAL_TOKENS = (  # ids 0..13 in the tiny tokenizer; same order as the real Qwen2.5 vocab (151643 + i)
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>")
# Chat templates of the tiny models: they render exactly like the official Qwen2-VL/2.5-VL template (default
# system prompt) and the Qwen3-VL template (no default system prompt) for image/text user turns.
_TEMPLATE_BODY = (
    "{%- for m in messages -%}"
    "{{- '<|im_start|>' + m['role'] + '\\n' -}}"
    "{%- if m['content'] is string -%}{{- m['content'] -}}{%- else -%}{%- for c in m['content'] -%}"
    "{%- if c['type'] == 'image' -%}{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif c['type'] == 'video' -%}{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif 'text' in c -%}{{- c['text'] -}}{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}")
QWEN2_VL_TEMPLATE = ("{%- if messages[0]['role'] != 'system' -%}"
                     "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' -}}{%- endif -%}"
                     + _TEMPLATE_BODY)
QWEN3_VL_TEMPLATE = _TEMPLATE_BODY
TINY_CORPUS = (  # the tiny tokenizer's BPE training text: the phrases our prompts and answers are made of
    "Look at the image. The image is split into tiles labelled 1, 2, 3 and 4. Which tile is flipped?",
    "<think>The top left tile is upside down, so tile 3 is flipped vertically.</think> \\boxed{3, vertical}",
    "<think>Marker 2 is nearest and marker 1 is farthest from the camera.</think> The answer is \\boxed{2, 3, 1}",
    "Options: A. Left B. Right C. Front D. Back. Left-Front Right-Front Left-Back Right-Back horizontal",
    "Which patch fills the black square? Reading the tiles in raster order restores the original picture.",
    "Assume a camera at region 1 facing the left of the image. Where is region 2? 0 1 2 3 4 5 6 7 8 9",
    "You are a helpful assistant. <|im_start|>system user assistant The answer is A B C D E.")


def build_tiny_tokenizer(chat_template: str = QWEN2_VL_TEMPLATE):
    """Byte-level BPE (≤ 1024 tokens) trained on TINY_CORPUS, wrapped in transformers' Qwen2Tokenizer.

    The 14 Qwen special tokens get ids 0..13 (<|endoftext|>=0 pad, <|im_end|>=2 eos, <|image_pad|>=12)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1024, special_tokens=list(QWEN_SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(list(TINY_CORPUS) + [tasks.COT_PROMPT] * 4, trainer)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
              for m in json.loads(bpe.to_str())["model"]["merges"]]
    return Qwen2Tokenizer(vocab=bpe.get_vocab(), merges=merges, unk_token=None, bos_token=None,
                          eos_token="<|im_end|>", pad_token="<|endoftext|>",
                          additional_special_tokens=list(QWEN_SPECIAL_TOKENS[1:]), chat_template=chat_template)


def build_tiny(kind: str = "tiny", hidden: int = 64, layers: int = 2, heads: int = 4, vision_hidden: int = 32,
               vision_depth: int = 2, ffn_mult: int = 2, seed: int = 0, out_dir: str | None = None,
               device: str = "cpu"):
    """A randomly initialised tiny Qwen2.5-VL ('tiny') or Qwen3-VL ('tiny-qwen3'), offline, in < 1 s.

    Returns (model, tokenizer, image_processor); the same seed gives the same weights on every rank.
    With out_dir, it is also saved there as a normal HF directory. device='meta' builds the same
    architecture without weights (load_model(meta=True))."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen3VLConfig
    from transformers import Qwen3VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    qwen3 = kind == "tiny-qwen3"
    head_dim = hidden // heads
    rope = {"rope_type": "default", "rope_theta": 1e6,
            "mrope_section": [head_dim // 4, head_dim // 8, head_dim // 8]}   # sums to head_dim / 2
    text = dict(vocab_size=1024, hidden_size=hidden, intermediate_size=ffn_mult * hidden, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=max(1, heads // 2), max_position_embeddings=8192,
                rope_parameters=rope, pad_token_id=0, bos_token_id=0, eos_token_id=2)
    vision = dict(depth=vision_depth, hidden_size=vision_hidden, intermediate_size=ffn_mult * vision_hidden,
                  num_heads=2, out_hidden_size=hidden, spatial_merge_size=2, temporal_patch_size=2)
    ids = dict(image_token_id=12, video_token_id=13, vision_start_token_id=9, vision_end_token_id=10,
               tie_word_embeddings=False)
    if qwen3:
        text.update(head_dim=head_dim, rope_parameters={**rope, "mrope_interleaved": True})
        vision.update(patch_size=16, num_position_embeddings=64, deepstack_visual_indexes=[0])
        cfg, cls = Qwen3VLConfig(text_config=text, vision_config=vision, **ids), Qwen3VLForConditionalGeneration
        ip = Qwen2VLImageProcessorPil(patch_size=16, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    else:
        vision.update(patch_size=14, window_size=112, fullatt_block_indexes=[vision_depth - 1])
        cfg, cls = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids), Qwen2_5_VLForConditionalGeneration
        ip = Qwen2VLImageProcessorPil()
    cfg._attn_implementation = "sdpa"
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        model = cls(cfg)
    tok = build_tiny_tokenizer(QWEN3_VL_TEMPLATE if qwen3 else QWEN2_VL_TEMPLATE)
    model.generation_config.pad_token_id, model.generation_config.eos_token_id = 0, 2
    if out_dir:
        model.save_pretrained(out_dir)
        tok.save_pretrained(out_dir)
        ip.save_pretrained(out_dir)
    return model, tok, ip


QWEN25_VL_3B_SHAPE = {  # published config.json values of Qwen/Qwen2.5-VL-3B-Instruct (weights stay random)
    "text": dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                 num_attention_heads=16, num_key_value_heads=2, max_position_embeddings=128000, rms_norm_eps=1e-6,
                 rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}),
    "vision": dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                   patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                   fullatt_block_indexes=[7, 15, 23, 31]),
    "tie_word_embeddings": True}


def build_qwen25_vl_shape(shape: dict, device: str = "cpu"):
    """A random Qwen2.5-VL with the given config values, created directly on `device` ('meta' to count).

    Token ids follow the tiny tokenizer (image 12, video 13, vision start/end 9/10), so it runs with it."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    cfg = Qwen2_5_VLConfig(text_config={**shape["text"], "pad_token_id": 0, "bos_token_id": 0, "eos_token_id": 2},
                           vision_config=shape["vision"], image_token_id=12, video_token_id=13,
                           vision_start_token_id=9, vision_end_token_id=10,
                           tie_word_embeddings=shape["tie_word_embeddings"])
    cfg._attn_implementation = "sdpa"
    with torch.device(device):
        return Qwen2_5_VLForConditionalGeneration(cfg)


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
