"""Decoding for GRPO rollouts (grpo.py) and greedy evaluation (evaluate.py): the simple path and the engine.

generate() decodes on the model as it is (CPU, tests, FSDP2): every sampling field explicit, vision tokens
never sampled, (ids, mask through the first stop token) returned; on a plain model it runs its own lean
loop (each prompt prefilled once, its KV cache repeated for the samples) that draws the tokens
transformers' sampling draws for the same seed.

On CUDA, decoding through the FSDP2-sharded training model costs one all-gather per layer per token. The
engine instead keeps a plain bf16 copy of the policy gathered from the shards once per rollout
(`refresh`), decodes with transformers' static KV cache (the decode step is compiled on CUDA), and pads
prompts to a few bucketed shapes so that compilation happens once per run. Each rank decodes its own
prompts: there are no collectives per token. Both paths have the same contract (ids, completion mask).

  generate, generation_config  the simple path; stop_token_ids, completion_mask (what ends a completion)
  bucket_length, pad_prompts   fixed prompt shapes (left padding, filler rows)
  prompt_slice                 prompts lo…hi of an encode() batch with their images and videos
  RolloutEngine                refresh (gather the weights), generate, free
  use_engine                   the --rollout-engine choice (auto / engine / generate)
"""
import copy
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

from common import print0
from vlm import VISION_TOKENS, fast_vision_attention, is_fsdp


VISION_KEYS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts")


ENGINE_CHOICES = ("auto", "engine", "generate")
ENGINE_HELP = ("decoding path: 'engine' = RolloutEngine (plain copy of the model, static KV cache, compiled on "
               "CUDA), 'generate' = engine.generate on the model as it is, 'auto' = engine on CUDA, generate on CPU")


def use_engine(choice: str, device) -> bool:
    """--rollout-engine (grpo.py and evaluate.py): whether to decode with RolloutEngine on `device`."""
    if choice not in ENGINE_CHOICES:
        raise ValueError(f"--rollout-engine must be one of {', '.join(ENGINE_CHOICES)} (got {choice!r})")
    return choice == "engine" or (choice == "auto" and device.type == "cuda")


# ----------------------------------------------------------------------------- generate (the simple path)
def generation_config(tokenizer, max_new_tokens: int = 1024, do_sample: bool = False, temperature: float = 1.0,
                      top_p: float = 1.0, top_k: int = 0, num_return_sequences: int = 1):
    """A GenerationConfig with every decoding field set: plain greedy (do_sample=False) or plain sampling
    with the given temperature / top-p / top-k (0 = off); no repetition penalty, n-gram ban, min-p, typical-p,
    ε/η cutoffs, length constraints or forced tokens; stops at any of stop_token_ids(); vision tokens
    suppressed.
    generate() also swaps it in as model.generation_config for the call, so no field a checkpoint's
    generation_config.json sets (Qwen2.5-VL: repetition_penalty 1.05, top_k 1, ...) is inherited; the
    fields left None (top-k and min-p in greedy mode, where they are unused) take transformers' defaults."""
    from transformers import GenerationConfig
    eos = stop_token_ids(tokenizer)
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


def stop_token_ids(tokenizer) -> list:
    """The tokens that end a completion: the tokenizer's eos (<|im_end|> for the chat models) and Qwen's
    end-of-document <|endoftext|> (also the pad token), which Qwen2.5-VL's generation_config.json lists as
    an eos too; read from the tokenizer, so a checkpoint with other special tokens gets its own."""
    ids = [tokenizer.eos_token_id]
    end_of_text = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    if isinstance(end_of_text, int) and end_of_text != tokenizer.unk_token_id and end_of_text not in ids:
        ids.append(end_of_text)
    return [i for i in ids if i is not None]


def completion_mask(ids: torch.Tensor, eos_id, pad_id: int) -> tuple:
    """(ids, mask) for completions (N, L): mask[r, j] is True up to and including the first stop token
    (eos_id: one id or a list, stop_token_ids) and all of the row when it has none; ids after it are set to
    pad_id. The pad token may itself be a stop token or be sampled, so the mask comes from the position of
    the first stop token, never from `ids != pad`."""
    is_eos = torch.isin(ids, torch.tensor(eos_id, device=ids.device).flatten())
    after = (is_eos.long().cumsum(1) - is_eos.long()) > 0                 # strictly after the first eos
    return ids.masked_fill(after, pad_id), ~after


@torch.no_grad()
def generate(model, batch: dict, tokenizer, *, max_new_tokens: int = 1024, do_sample: bool = False,
             temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, num_return_sequences: int = 1):
    """Completions of a left-padded encode() batch: (ids (N, L), mask (N, L)), N = B · num_return_sequences,
    rows grouped by prompt (rows i·n … i·n+n−1 are prompt i's), L ≤ max_new_tokens.

    mask marks the completion up to and including the first stop token (completion_mask); ids after it are
    the pad id. Every sampling field is explicit (generation_config()), nothing comes from the checkpoint;
    vision tokens are never generated. On an FSDP2 model every unit is kept unsharded for the whole call
    (one all-gather per unit, not per token) and resharded afterwards; ranks stay in step (synced_gpus).
    This is the simple path (CPU, tests); on CUDA use RolloutEngine for rollouts and evaluation. A plain model
    with image prompts and plain sampling or greedy decodes in _plain_decode (each prompt prefilled once, no
    per-token processor machinery; the same tokens as transformers' loop for the same seed)."""
    gc = generation_config(tokenizer, max_new_tokens, do_sample, temperature, top_p, top_k, num_return_sequences)
    inputs = {k: v.to(next(model.parameters()).device) for k, v in batch.items() if k != "labels"}
    units = [m for m in model.modules() if is_fsdp(m)]
    for m in units:
        m.set_reshard_after_forward(False, recurse=False)
    was_training, saved_gc = model.training, model.generation_config
    model.eval()
    model.generation_config = gc
    try:
        if not units and "image_grid_thw" in inputs and "video_grid_thw" not in inputs and gc.top_k in (None, 0) \
                and gc.top_p == 1.0:
            return completion_mask(_plain_decode(model, inputs, gc), gc.eos_token_id, tokenizer.pad_token_id)
        out = model.generate(**inputs, generation_config=gc,
                             synced_gpus=bool(units) and dist.is_initialized() and dist.get_world_size() > 1)
    finally:
        model.generation_config = saved_gc
        model.train(was_training)
        for m in units:
            m.reshard()
            m.set_reshard_after_forward(m is not model, recurse=False)
    return completion_mask(out[:, inputs["input_ids"].shape[1]:], gc.eos_token_id, tokenizer.pad_token_id)


def _plain_decode(model, inputs: dict, gc) -> torch.Tensor:
    """transformers' sampling / greedy loop for a plain model and image prompts, without its per-token
    machinery: the distinct prompts are prefilled once and their KV cache repeated num_return_sequences times
    (rows grouped by prompt), then one token per step for every row: vision tokens suppressed, logits / τ
    (sampling), softmax and one torch.multinomial draw per step (greedy: argmax), rows past a stop token get
    the pad id; stops when every row has ended. M-RoPE positions continue after each prompt's largest one, as
    transformers' rope deltas give them. Only plain sampling (no top-k / top-p) and greedy: generate() takes
    transformers' loop otherwise. Returns the new ids (N, L)."""
    from transformers import DynamicCache
    n, am = gc.num_return_sequences, inputs["attention_mask"]
    pos, _ = model.model.get_rope_index(inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"],
                                        image_grid_thw=inputs["image_grid_thw"], attention_mask=am)
    cache = DynamicCache(config=model.config)
    logits = model(**inputs, position_ids=pos, cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
    last = pos.amax(dim=(0, 2))
    if n > 1:
        cache.batch_repeat_interleave(n)
        logits, am, last = (x.repeat_interleave(n, 0) for x in (logits, am, last))
    suppress = torch.tensor(gc.suppress_tokens or [], dtype=torch.long, device=logits.device)
    stop = torch.tensor(gc.eos_token_id, dtype=torch.long, device=logits.device).flatten()   # one id or a list
    done = torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)
    out = []
    for t in range(gc.max_new_tokens):
        z = logits.float()
        z[:, suppress] = -float("inf")
        if gc.do_sample:
            probs = F.softmax(z / gc.temperature if gc.temperature != 1.0 else z, dim=-1)
            nxt = torch.multinomial(probs, num_samples=1).squeeze(1)
        else:
            nxt = z.argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, gc.pad_token_id), nxt)
        out.append(nxt)
        done |= torch.isin(nxt, stop)
        if bool(done.all()) or t == gc.max_new_tokens - 1:
            break
        am = torch.cat([am, torch.ones_like(am[:, :1])], 1)
        step_pos = (last + 1 + t).view(1, -1, 1).expand(3, -1, -1)
        logits = model(input_ids=nxt[:, None], attention_mask=am, position_ids=step_pos, cache=cache,
                       use_cache=True, logits_to_keep=1).logits[:, -1]
    return torch.stack(out, 1)


# ----------------------------------------------------------------------------- shapes
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
    out = {k: v for k, v in batch.items() if k in VISION_KEYS}
    for key in ("input_ids", "attention_mask", "mm_token_type_ids"):
        x = F.pad(batch[key], (length - t, 0), value=pad_id if key == "input_ids" else 0)
        filler = torch.full((rows - b, length), pad_id if key == "input_ids" else 0, dtype=x.dtype)
        if key == "attention_mask":
            filler[:, -1] = 1
        out[key] = torch.cat([x, filler.to(x.device)])
    return out


def prompt_slice(batch: dict, lo: int, hi: int, merge_size: int = 2) -> dict:
    """Prompts lo … hi−1 of an encode() batch, with their images' pixel rows and grids, and their videos'
    (pixel_values_videos, video_grid_thw, second_per_grid_ts). Images follow the prompts' order; image j has
    prod(grid_j) / merge² tokens and belongs to the prompt whose running count of image tokens
    (mm_token_type_ids 1) it falls in; videos likewise with the video tokens (mm_token_type_ids 2)."""
    out = {k: batch[k][lo:hi] for k in ("input_ids", "attention_mask", "mm_token_type_ids")}
    for mm_type, pixels, grids, extra in ((1, "pixel_values", "image_grid_thw", None),
                                          (2, "pixel_values_videos", "video_grid_thw", "second_per_grid_ts")):
        if pixels not in batch:
            continue
        patches = batch[grids].prod(-1)                                             # (items,)
        ends = (patches // merge_size ** 2).cumsum(0)                               # vision tokens so far
        owner = torch.searchsorted((batch["mm_token_type_ids"] == mm_type).sum(1).cumsum(0), ends)  # its prompt
        mine = ((owner >= lo) & (owner < hi)).nonzero().flatten()
        if len(mine):
            rows = torch.cat([torch.zeros(1, dtype=torch.long), patches.cumsum(0)])
            a, z = int(mine[0]), int(mine[-1]) + 1
            out[pixels] = batch[pixels][int(rows[a]):int(rows[z])]
            out[grids] = batch[grids][a:z]
            if extra in batch:
                out[extra] = batch[extra][a:z]
    return out


# ----------------------------------------------------------------------------- engine
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

    generate() has generate()'s contract (rows grouped by prompt, mask through the first stop token, every
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
