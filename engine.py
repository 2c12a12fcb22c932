"""The one decoder: GRPO rollouts (grpo.py) and greedy evaluation (evaluate.py), on CPU and on CUDA, for plain and
FSDP2-sharded models. A short loop of our own, in the shape of nanochat's and gpt-fast's engines:

  prefill   the distinct prompts once (their images through the vision tower once), with the M-RoPE positions of
            get_rope_index; each prompt's keys / values are copied to its n sample rows of a static KV cache
  step      one token for every row: positions continue after each prompt's largest one, one fixed-width
            attention mask (the prompts' padding; later cache slots are hidden by causality)
  sample    vision tokens suppressed; greedy argmax, or logits / τ → top-k → top-p → softmax → one
            torch.multinomial draw for all rows (the draws transformers' sampling makes for the same seed)
  stop      a row ends at its first stop token (eos and <|endoftext|>); the loop ends when every row has ended

    engine = Engine(model)                   # FSDP2 model: a plain copy gathered from the shards (collective)
    engine.refresh(model)                    # after every optimizer step, before the next rollout (collective)
    ids, mask = engine.generate(batch, tok, max_new_tokens=2048, greedy=False, temperature=1.0, n=5)

On CUDA the copy of an FSDP2 policy is bf16 (one all-gather per rollout, then no collective per token: each rank
decodes its own prompts), the step is compiled (torch.compile, CUDA graphs), and shapes are fixed so that it
compiles once per prompt-length bucket: prompts left-padded to a bucket, a fixed number of prompts per call
(filler prompts added), one cache length. On CPU the same loop runs eagerly and without the padding, which only
serves compilation. A plain model in the engine's dtype (evaluation, one-process CPU training) is decoded in
place. transformers' generate() is the tests' oracle only (same tokens for the same seed).

  Engine                        refresh, generate; _prefill, _step (the compiled one), _decode (the loop)
  sample_next                   the sampler
  stop_token_ids, completion_mask   what ends a completion, and the mask through it
  bucket_length, pad_prompts    fixed prompt shapes (vlm.select_prompts takes a call's prompts from a batch)
"""
import copy
import time

import torch
import torch.nn.functional as F

from common import print0
from vlm import VISION_INPUTS, VISION_TOKENS, install_attention, is_fsdp, rope_positions, select_prompts


PROMPT_BUCKETS = (256, 512, 1024, 2048, 4096)


# ----------------------------------------------------------------------------- what ends a completion
def stop_token_ids(tokenizer) -> list:
    """The tokens that end a completion: the tokenizer's eos (<|im_end|> for the chat models) and Qwen's
    end-of-document <|endoftext|> (also the pad token), which Qwen2.5-VL's generation_config.json lists as
    an eos too; read from the tokenizer, so a checkpoint with other special tokens gets its own."""
    ids = [tokenizer.eos_token_id]
    end_of_text = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    if isinstance(end_of_text, int) and end_of_text != tokenizer.unk_token_id and end_of_text not in ids:
        ids.append(end_of_text)
    return [i for i in ids if i is not None]


def completion_mask(ids: torch.Tensor, stop_ids: list, pad_id: int) -> tuple:
    """(ids, mask) for completions (N, L): mask[r, j] is True up to and including the first stop token of row r
    and on all of the row when it has none; ids after it are set to pad_id. The pad token may itself be a
    stop token or be sampled, so the mask comes from the first stop token, never from `ids != pad`."""
    is_stop = torch.isin(ids, torch.tensor(stop_ids, device=ids.device).flatten())
    after = (is_stop.long().cumsum(1) - is_stop.long()) > 0                 # strictly after the first stop
    return ids.masked_fill(after, pad_id), ~after


# ----------------------------------------------------------------------------- the sampler
def sample_next(logits: torch.Tensor, suppress: torch.Tensor, greedy: bool, temperature: float = 1.0,
                top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """The next token of every row from its logits (rows, V). Vision tokens (`suppress`) get −∞. Greedy: argmax.
    Sampling: z = logits / τ; top-k keeps the k largest z; top-p keeps the smallest set of tokens whose
    probabilities sum past p (sorted ascending, a token is dropped while the mass up to it is ≤ 1 − p; the
    most likely always stays); then one torch.multinomial draw from softmax(z) for all rows."""
    z = logits.float()
    z[:, suppress] = -float("inf")
    if greedy:
        return z.argmax(-1)
    if temperature != 1.0:
        z = z / temperature
    if top_k:
        kth = z.topk(min(top_k, z.shape[-1]), dim=-1).values[:, -1:]
        z = z.masked_fill(z < kth, -float("inf"))
    if top_p < 1.0:
        sorted_z, order = z.sort(dim=-1)
        drop = sorted_z.softmax(-1).cumsum(-1) <= 1.0 - top_p
        drop[:, -1] = False
        z = z.masked_fill(drop.scatter(1, order, drop), -float("inf"))
    return torch.multinomial(z.softmax(-1), num_samples=1).squeeze(1)


# ----------------------------------------------------------------------------- prompt shapes
def bucket_length(n: int, buckets: tuple = PROMPT_BUCKETS) -> int:
    """The smallest bucket ≥ n; beyond the largest, the next multiple of it."""
    for b in sorted(buckets):
        if n <= b:
            return b
    return -(-n // max(buckets)) * max(buckets)


def pad_prompts(batch: dict, length: int, rows: int, pad_id: int) -> dict:
    """A left-padded encode() batch widened to `length` tokens (more left padding) and filled up to `rows`
    prompts with text-only filler prompts (one attended pad token each; their outputs are dropped)."""
    b, t = batch["input_ids"].shape
    out = {k: v for k, v in batch.items() if k in VISION_INPUTS}
    for key in ("input_ids", "attention_mask", "mm_token_type_ids"):
        x = F.pad(batch[key], (length - t, 0), value=pad_id if key == "input_ids" else 0)
        filler = torch.full((rows - b, length), pad_id if key == "input_ids" else 0, dtype=x.dtype)
        if key == "attention_mask":
            filler[:, -1] = 1
        out[key] = torch.cat([x, filler.to(x.device)])
    return out


# ----------------------------------------------------------------------------- the engine
def _plain_class(model):
    """The model's own class (transformers', or a checkpoint's custom code) under FSDP2's FSDP<Class> subclass."""
    from torch.distributed.fsdp import FSDPModule
    return next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule))


class Engine:
    """The decoder of every stage (see the module docstring). `prompts_per_call` bounds the prompts decoded
    together on CUDA (the static cache holds prompts_per_call · n rows); on CPU all prompts go in one call."""

    def __init__(self, model, *, prompts_per_call: int = 8, dtype: torch.dtype | None = None,
                 compile: bool | None = None):
        self.device = next(model.parameters()).device
        cuda = self.device.type == "cuda"
        self.dtype = dtype or (torch.bfloat16 if cuda else torch.float32)
        self.compile = cuda if compile is None else compile      # fixed shapes serve the compiled step only
        self.prompts_per_call = prompts_per_call
        self.shared = not is_fsdp(model) and next(model.parameters()).dtype == self.dtype
        self.cls, self.config, self.model, self.cache = _plain_class(model), model.config, None, None
        self.step_fn = torch.compile(self._step, mode="reduce-overhead", dynamic=False) if self.compile \
            else self._step
        self.refresh(model)

    def _build(self, model):
        """The plain copy, allocated once: parameters in self.dtype, buffers (rotary inv_freq) as the source's."""
        with torch.device("meta"):
            plain = self.cls(copy.deepcopy(self.config))
        plain.to(self.dtype).to_empty(device=self.device).eval().requires_grad_(False)
        plain.tie_weights()   # to_empty gives each module its own tensor: re-tie lm_head to the embeddings
        install_attention(plain)
        src = dict(model.named_buffers())
        for name, _ in list(plain.named_buffers()):
            mod, _, leaf = name.rpartition(".")
            plain.get_submodule(mod)._buffers[leaf] = src[name].detach().clone()
        return plain

    @torch.no_grad()
    def refresh(self, model) -> float:
        """Make the engine decode the current weights of `model`: a plain model in the engine's dtype is used
        as it is; otherwise each parameter is copied into the engine's copy (a sharded one all-gathered: a
        collective, every rank calls it). Returns the seconds it took."""
        t0 = time.perf_counter()
        if self.shared:
            self.model = model
            return 0.0
        if self.model is None:
            self.model = self._build(model)
        dst = dict(self.model.named_parameters())
        for name, p in model.named_parameters():
            dst[name].copy_(p.full_tensor() if hasattr(p, "full_tensor") else p)
        return time.perf_counter() - t0

    @torch.no_grad()
    def generate(self, batch: dict, tokenizer, *, max_new_tokens: int, greedy: bool = True, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, n: int = 1) -> tuple:
        """Completions of a left-padded encode() batch of B prompts: (ids (B·n, L), mask (B·n, L)), rows grouped
        by prompt (rows i·n … i·n+n−1 are prompt i's), L ≤ max_new_tokens; mask through the first stop token
        (completion_mask), pad ids after it. Every sampling setting is an argument: nothing comes from the
        checkpoint's generation_config."""
        model, was_training = self.model, self.model.training
        model.eval()
        stop = stop_token_ids(tokenizer)
        sampling = dict(greedy=greedy, temperature=temperature, top_k=top_k, top_p=top_p,
                        suppress=torch.tensor(tokenizer.convert_tokens_to_ids(list(VISION_TOKENS)), device=self.device))
        b = batch["input_ids"].shape[0]
        per_call = self.prompts_per_call if self.compile else b
        outs = []
        try:
            for lo in range(0, b, per_call):
                part = select_prompts(batch, list(range(lo, min(b, lo + per_call))),
                                      self.config.vision_config.spatial_merge_size)
                k, width = part["input_ids"].shape
                rows, length = (per_call, bucket_length(width)) if self.compile else (k, width)
                inputs = {key: v.to(self.device) for key, v in
                          pad_prompts(part, length, rows, tokenizer.pad_token_id).items()}
                ids = self._decode(inputs, n, max_new_tokens, stop, tokenizer.pad_token_id, sampling)[:k * n]
                outs.append(completion_mask(ids, stop, tokenizer.pad_token_id))
        finally:
            model.train(was_training)
        longest = max(ids.shape[1] for ids, _ in outs)
        ids = torch.cat([F.pad(i, (0, longest - i.shape[1]), value=tokenizer.pad_token_id) for i, _ in outs])
        mask = torch.cat([F.pad(m, (0, longest - m.shape[1]), value=False) for _, m in outs])
        return ids, mask

    def _decode(self, inputs: dict, n: int, max_new_tokens: int, stop: list, pad_id: int, sampling: dict):
        """The loop: prefill, then sample → stop check → step until every row has ended. Returns (rows·n, L)."""
        logits, last = self._prefill(inputs, n, max_new_tokens)
        prompt_mask = inputs["attention_mask"].repeat_interleave(n, 0)
        mask = F.pad(prompt_mask, (0, max_new_tokens), value=1)           # fixed width: the whole cache
        stop = torch.tensor(stop, device=self.device)
        done = torch.zeros(logits.shape[0], dtype=torch.bool, device=self.device)
        out = []
        for t in range(max_new_tokens):
            nxt = sample_next(logits, **sampling)
            nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
            out.append(nxt)
            done |= torch.isin(nxt, stop)
            if t == max_new_tokens - 1 or bool(done.all()):
                break
            pos = (last + 1 + t).view(1, -1, 1).expand(3, -1, -1)
            logits = self._call_step(nxt[:, None], pos, mask)
        return torch.stack(out, 1)

    def _prefill(self, inputs: dict, n: int, max_new_tokens: int) -> tuple:
        """One forward over the distinct prompts (images included) into a growing cache; its keys / values go to
        the n rows of each prompt in the static cache (cache length: prompt width + max_new_tokens, reused while
        that length and the row count stay the same). Returns (last logits (rows·n, V), largest prompt
        position of each row (rows·n,))."""
        from transformers import DynamicCache, StaticCache
        pos = rope_positions(self.model, inputs)
        prompt_cache = DynamicCache(config=self.model.config)
        logits = self.model(**inputs, position_ids=pos, cache=prompt_cache, use_cache=True,
                            logits_to_keep=1).logits[:, -1]
        rows, size = logits.shape[0] * n, inputs["input_ids"].shape[1] + max_new_tokens
        if self.cache is None or (self.cache.layers[0].max_cache_len, getattr(self.cache, "rows", 0)) != (size, rows):
            self.cache = StaticCache(config=self.model.config, max_cache_len=size)
            self.cache.rows = rows
        self.cache.reset()
        for i, layer in enumerate(prompt_cache.layers):
            self.cache.update(layer.keys.repeat_interleave(n, 0), layer.values.repeat_interleave(n, 0), i)
        return logits.repeat_interleave(n, 0), pos.amax(dim=(0, 2)).repeat_interleave(n)

    def _step(self, ids: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """One token per row through the text model and the LM head, on the static cache: logits (rows, V)."""
        h = self.model.model.language_model(input_ids=ids, position_ids=pos, attention_mask=mask, cache=self.cache,
                                            use_cache=True).last_hidden_state
        return self.model.lm_head(h[:, -1])

    def _call_step(self, ids, pos, mask):
        """The compiled step; if torch.compile fails on this platform, say so once and go on eagerly (a rollout
        must not die for a compiler error)."""
        try:
            return self.step_fn(ids, pos, mask)
        except Exception as e:   # torch._dynamo / inductor errors have no common base class
            if self.step_fn == self._step:
                raise
            print0(f"Engine: torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                   "decoding eagerly from now on")
            self.step_fn = self._step
            return self._step(ids, pos, mask)
