"""The vision-language model plumbing every stage shares (sft.py, grpo.py, evaluate.py, engine.py, dev/bench.py).

One implementation of each step that must never differ between training and evaluation:
  load      load_model (HF id, local folder, or the offline "tiny" / "tiny-qwen3" models: build_tiny, a random
            tiny Qwen2.5-VL / Qwen3-VL with its tokenizer, build_tiny_tokenizer), set_pixel_bounds, freeze_vision
  encode    encode_records (dataset records → a batch), build_messages (problem + CoT prompt → chat messages),
            encode (chat template + image tokens + mm_token_type_ids, equal to transformers' own processor);
            Qwen2.5-VL video items (a list of PIL frames: video_inputs, the layout of transformers'
            Qwen2VLVideoProcessor, which itself needs torchvision)
  log-probs token_logprobs: the LM head applied only at the positions that are scored, in chunks, fp32
            log-softmax of logits / τ; no (B, T, V) fp32 tensor (the SFT loss; the full forward).
            group_logprobs: GRPO's completions with each group's prompt and images once (group_batch lays a
            group out as one row, group_attention keeps the completions apart); select_prompts, rope_positions
  train     load_trainable (load → freeze → LoRA adapters → activation checkpointing → place_model → AdamW),
            optimizer_step; add_lora (sft.py's default, plain PyTorch), merged at export by merge_lora;
            fast_vision_attention (one batched attention call instead of a Python loop over windows),
            enable_activation_checkpointing (only on layers that train), shard_model (FSDP2, multi-rank loads
            read the weights on rank 0 only)
  save      save_hf: one consolidated Hugging Face folder (safetensors)
Built without torchvision: inputs come from the tokenizer's chat template and AutoImageProcessor (PIL
backend), never from AutoProcessor. Decoding is engine.py; a record's image files (load_images, open_image)
are records.py.
"""
import copy
import functools
import json
import math
import os
import shutil
import sys
import types
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

import tasks
from common import BadRecord, SetupError, barrier, is_main
from records import IMAGE_PLACEHOLDER, load_images


# ----------------------------------------------------------------------------- constants
IGNORE_INDEX = -100
VISION_TOKENS = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
VISION_INPUTS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts")
TINY_MODELS = ("tiny", "tiny-qwen3")
PAPER_MAX_PIXELS = 512 * 512        # cold-start SFT images ≤ 512² px (official LLaMA-Factory config)
TINY_PIXELS = (56 * 56, PAPER_MAX_PIXELS)   # the tiny models' own image bounds
VIDEO_FPS = 2.0     # the frame rate a frame-list video is taken to have (qwen-vl-utils and transformers default)


# ----------------------------------------------------------------------------- load
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


# ----------------------------------------------------------------------------- the offline tiny models
# Stand-ins for a pretrained Qwen-VL that build in under a second without a download: the tests, sft.py --smoke
# and `--model tiny` / `--model tiny-qwen3` use them; they are nothing of the paper's method.
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


def load_model(name: str, *, min_pixels: int | None = None, max_pixels: int | None = None,
               dtype: torch.dtype = torch.float32, meta: bool = False, trust_remote_code: bool = False):
    """(model, tokenizer, image_processor) for 'tiny', 'tiny-qwen3', a HF id or a local HF directory.

    The image processor is the PIL backend (identical pixels with or without torchvision). Its smart-resize
    bounds are the saved ones (a checkpoint keeps what it was trained with; the tiny models have 56²…512²)
    unless min_pixels / max_pixels override them. An unknown name fails at once with a SetupError
    (model_source). meta=True builds the same model from the same config on the meta device and reads no
    weights: the ranks > 0 of a multi-rank run, which shard_model(..., broadcast_from_rank0=True) then fills
    from rank 0 (no full copy per rank). trust_remote_code runs a checkpoint's own model code (its config's
    auto_map), which transformers refuses by default."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer
    from transformers import GenerationConfig
    if name in TINY_MODELS:
        model, tok, ip = build_tiny(name, device="meta" if meta else "cpu")
        model.to(dtype)
        set_pixel_bounds(ip, *TINY_PIXELS)
    else:
        src = dict(model_source(name), trust_remote_code=trust_remote_code)
        try:   # a folder without weights, a text-only model, custom code not trusted, … : one line, not a traceback
            if meta:
                with torch.device("meta"):
                    model = AutoModelForImageTextToText.from_config(
                        AutoConfig.from_pretrained(name, **src), dtype=dtype, attn_implementation="sdpa",
                        trust_remote_code=trust_remote_code)
                model.eval()   # as from_pretrained leaves it
                try:           # from_pretrained reads generation_config.json when there is one
                    model.generation_config = GenerationConfig.from_pretrained(name, **src)
                except OSError:
                    pass
            else:
                model = AutoModelForImageTextToText.from_pretrained(name, dtype=dtype, **src,
                                                                    attn_implementation="sdpa")
            tok = AutoTokenizer.from_pretrained(name, **src)
            ip = AutoImageProcessor.from_pretrained(name, backend="pil", **src)
        except (OSError, ValueError) as e:
            reason = " ".join(str(e).split())
            if "trust_remote_code" in reason:
                raise SetupError(f"--model {name}: the folder brings its own model code (config.json auto_map), "
                                 "which runs only with --trust-remote-code") from e
            raise SetupError(f"--model {name}: cannot load it as a Qwen-VL model: "
                             f"{reason[:300]}{'…' if len(reason) > 300 else ''}") from e
        if tok.chat_template is None:
            raise SetupError(f"--model {name}: the tokenizer has no chat template (need tokenizer_config.json "
                             "or chat_template.jinja with the Qwen-VL template)")
    set_pixel_bounds(ip, min_pixels, max_pixels)
    install_attention(model)
    return model, tok, ip


def install_attention(model) -> None:
    """The attention of every stage: the vision tower's in one batched call per window size (not a Python loop
    per window), the text model's sdpa that also reads a GRPO group row's layout. load_model() calls it."""
    fast_vision_attention(model)
    install_group_attention(model)


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


def tokenize_conversation(messages: list, image_token_counts: list, tokenizer, video_token_counts: list = ()) -> tuple:
    """(prompt_ids, target_ids) for one conversation.

    The prompt is every message except a final assistant turn, rendered with the tokenizer's chat template
    and the generation prompt; each <|image_pad|> is expanded to its image's token count and each
    <|video_pad|> to its video's (as transformers' Qwen2.5-VL processor does). The target is the final
    assistant text followed by <|im_end|> (empty when the conversation ends with a user turn)."""
    has_target = messages[-1]["role"] == "assistant"
    prompt = messages[:-1] if has_target else messages
    text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    counts = {}
    for kind, given in (("image", image_token_counts), ("video", video_token_counts)):
        pad = tokenizer.convert_tokens_to_ids(f"<|{kind}_pad|>")
        n_pads = sum(1 for t in ids if t == pad)
        if n_pads != len(given):
            raise ValueError(f"prompt has {n_pads} {kind} placeholders but {len(given)} {kind}s")
        counts[pad] = iter(given)
    prompt_ids = [t for tok in ids for t in ([tok] * next(counts[tok]) if tok in counts else [tok])]
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


def collate(samples: list, pad_id: int, image_id: int, padding_side: str = "right",
            video_id: int | None = None) -> dict:
    """Pad (prompt_ids, target_ids) pairs into a batch.

    input_ids, attention_mask, mm_token_type_ids (1 on image tokens, 2 on video tokens: M-RoPE needs it),
    labels (-100 on the prompt and the padding): all (B, T) long tensors."""
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
    mm = (ids == image_id).long()
    if video_id is not None:
        mm = mm.masked_fill(ids == video_id, 2)
    return {"input_ids": ids, "attention_mask": mask, "mm_token_type_ids": mm, "labels": labels}


def video_inputs(frames: list, image_processor, min_pixels: int | None = None,
                 max_pixels: int | None = None) -> tuple:
    """(pixel rows (t·h·w, C·T·p·p), grid [t, h, w]) of one video given as a list of PIL frames, laid out
    as transformers' Qwen2VLVideoProcessor lays them out (its class needs torchvision; this does not).

    Every frame is resized (smart_resize into [min_pixels, max_pixels], default: the image processor's
    bounds, as transformers configures a Qwen2.5-VL video processor from preprocessor_config.json), rescaled
    and normalised with the image processor's settings and arithmetic (PIL resample, as qwen-vl-utils'
    fetch_image; float64 rescale, float32 normalise: the PIL image processor's pixels exactly); an odd frame
    count is padded by repeating the last frame; frames 2k and 2k+1 form temporal patch k. Rows are ordered
    (t, h/merge, w/merge, merge, merge), columns (C, T, p, p), as the HF video processor's patchify."""
    import numpy as np
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize
    if not frames:
        raise ValueError("a video needs at least one frame")
    if len({f.size for f in frames}) > 1:
        raise ValueError(f"video frames differ in size: {sorted({f.size for f in frames})}")
    ip = image_processor
    tps, p, m = ip.temporal_patch_size, ip.patch_size, ip.merge_size
    w, h = frames[0].size
    if ip.do_resize:
        h, w = smart_resize(h, w, factor=p * m,
                            min_pixels=ip.size["shortest_edge"] if min_pixels is None else min_pixels,
                            max_pixels=ip.size["longest_edge"] if max_pixels is None else max_pixels)
    mean, std = np.asarray(ip.image_mean, np.float32), np.asarray(ip.image_std, np.float32)
    n = len(frames) + (-len(frames) % tps)
    x = np.empty((n, h, w, 3), np.float32)
    for i, f in enumerate(frames):   # one frame at a time: no float64 copy of the whole video
        f = f.convert("RGB")
        a = np.asarray(f.resize((w, h), ip.resample) if f.size != (w, h) else f)
        a = (a.astype(np.float64) * ip.rescale_factor).astype(np.float32) if ip.do_rescale else a.astype(np.float32)
        x[i] = (a - mean) / std if ip.do_normalize else a
    x[len(frames):] = x[len(frames) - 1]
    t, gh, gw = n // tps, h // p, w // p
    v = torch.from_numpy(x).view(t, tps, gh // m, m, p, gw // m, m, p, 3)
    v = v.permute(0, 2, 5, 3, 6, 8, 1, 4, 7)                  # (t, h/m, w/m, m, m, C, T, p, p)
    return v.reshape(t * gh * gw, 3 * tps * p * p), [t, gh, gw]


def encode(conversations: list, images: list, tokenizer, image_processor, padding_side: str = "right") -> dict:
    """The one encoder of every stage: chat conversations + their PIL images (and videos) → model inputs.

    conversations[i] is a message list (build_messages); images[i] its images in placeholder order. Returns
    input_ids, attention_mask, mm_token_type_ids, labels (B, T); pixel_values (Σ patches, C·t·p·p) and
    image_grid_thw (num_images, 3) when there are images. Use padding_side="left" for generation.

    Videos (Qwen2-VL / Qwen2.5-VL) are content items {"type": "video", "video": [PIL frames], optional
    "fps" (default VIDEO_FPS), "min_pixels" / "max_pixels" (default: the image processor's bounds)}, as
    qwen-vl-utils takes them; they add pixel_values_videos, video_grid_thw (video_inputs) and
    second_per_grid_ts = temporal_patch_size / fps (Qwen2.5-VL's temporal position spacing), and video
    tokens get mm_token_type_ids 2."""
    flat = [im for ims in images for im in ims]
    vision = {}
    if flat:
        vision = dict(image_processor(images=flat, return_tensors="pt"))
    grid = vision.get("image_grid_thw", torch.zeros((0, 3), dtype=torch.long))
    merge = image_processor.merge_size ** 2
    counts = (grid.prod(-1) // merge).tolist()
    samples, k, vid_pix, vid_grid, vid_sec = [], 0, [], [], []
    for msgs, ims in zip(conversations, images):
        vcounts = []
        for m in msgs:
            for c in m["content"] if isinstance(m["content"], list) else []:
                if c.get("type") == "video":
                    x, g = video_inputs(c["video"], image_processor, c.get("min_pixels"), c.get("max_pixels"))
                    vid_pix.append(x)
                    vid_grid.append(g)
                    vid_sec.append(image_processor.temporal_patch_size / c.get("fps", VIDEO_FPS))
                    vcounts.append(g[0] * g[1] * g[2] // merge)
        samples.append(tokenize_conversation(msgs, counts[k:k + len(ims)], tokenizer, vcounts))
        k += len(ims)
    batch = collate(samples, tokenizer.pad_token_id, tokenizer.convert_tokens_to_ids("<|image_pad|>"),
                    padding_side, video_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"))
    batch.update({k: v for k, v in vision.items() if k in ("pixel_values", "image_grid_thw")})
    if vid_pix:
        batch.update(pixel_values_videos=torch.cat(vid_pix), video_grid_thw=torch.tensor(vid_grid),
                     second_per_grid_ts=torch.tensor(vid_sec, dtype=torch.float32))
    return batch


def encode_records(records: list, root, tokenizer, image_processor, response: bool) -> dict:
    """The encode() batch of dataset records: each problem (+ the CoT instruction) with its images, and with
    response=True its "response" as the target (SFT: right padding, labels on the response), else the prompt
    alone (rollouts: left padding, no labels). An image that cannot be read is a BadRecord naming the record."""
    images = []
    for r in records:
        try:
            images.append(load_images(r, root))
        except OSError as e:
            raise BadRecord(f"record {r.get('id', '?')}: cannot read its images: {e}") from None
    convs = [build_messages(r["problem"], r["response"] if response else None) for r in records]
    batch = encode(convs, images, tokenizer, image_processor, padding_side="right" if response else "left")
    if not response:
        batch.pop("labels")
    return batch


# ----------------------------------------------------------------------------- log-probs
def head_logprobs(h: torch.Tensor, weight: torch.Tensor, bias, targets: torch.Tensor, temperature: float = 1.0,
                  chunk_size: int = 1024, with_entropy: bool = False) -> tuple:
    """(log p, entropy) of `targets` (n,) under the LM head on hidden rows h (n, H), chunk_size rows at a time:

        z = (h Wᵀ + b) / τ  in fp32,   log p = z[y] − logsumexp(z),   entropy = −Σ softmax(z) · log softmax(z)

    At most chunk_size × V fp32 logits exist at once; with grad enabled every chunk is activation-checkpointed
    (its logits are recomputed in the backward instead of kept). The entropy is detached."""
    from torch.utils.checkpoint import checkpoint

    def chunk(h, y):
        z = F.linear(h, weight, bias).float() / temperature                    # (n, V) fp32
        logz = torch.logsumexp(z, dim=-1)
        logp = z.gather(-1, y[:, None]).squeeze(-1) - logz                     # the log-softmax at y
        ent = torch.zeros_like(logp)
        if with_entropy:
            with torch.no_grad():
                lsm = z.detach() - logz.detach()[:, None]
                ent = -(lsm.exp() * lsm).sum(-1)
        return logp, ent
    grad = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)
    parts = [checkpoint(chunk, h[i:i + chunk_size], targets[i:i + chunk_size], use_reentrant=False) if grad
             else chunk(h[i:i + chunk_size], targets[i:i + chunk_size]) for i in range(0, h.shape[0], chunk_size)]
    return torch.cat([lp for lp, _ in parts]), torch.cat([ent.detach() for _, ent in parts])


def token_logprobs(model, batch: dict, labels: torch.Tensor, temperature: float = 1.0, chunk_size: int = 1024,
                   with_entropy: bool = False):
    """Per-token log-probs of `labels` under the model: (B, T) fp32, 0 where labels = -100.

    logp[b, t] = log_softmax(lm_head(h[b, t−1]) / τ)[labels[b, t]], h = the last hidden states of one forward
    of the model body on `batch` (an encode() batch; its "labels" key is ignored). The LM head runs only at
    the supervised positions (logits_to_keep mask), in chunks (head_logprobs), with an fp32 log-softmax: no
    (B, T, V) logits tensor. Differentiable when grad is enabled. with_entropy=True also returns the
    (detached) entropy of each of those distributions, (B, T). A batch without supervised tokens still
    runs the head on one position with weight 0 (every rank's backward must reach every FSDP unit).
    Extra batch keys go to the model's forward: a GRPO group batch (group_batch) brings its positions and
    its `group` layout, which group_attention reads."""
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
        logp, extra["entropy"] = head_logprobs(h, head.weight, head.bias, targets, temperature, chunk_size,
                                               with_entropy)
        return logp
    inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items() if k != "labels"}
    # FSDP2 unshards the root's parameters (embeddings, final norm, LM head) only inside the root module's own
    # forward, so the head runs there: its forward is swapped for this call (on a plain model this equals
    # head_logprobs(model.model(**inputs).last_hidden_state[keep], …)).
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


# ----------------------------------------------------------------------------- GRPO groups: each prompt once
def select_prompts(batch: dict, rows: list, merge_size: int = 2) -> dict:
    """Prompts `rows` (in that order) of a left-padded encode() batch, with their images' pixel rows and grids
    and their videos' (pixel_values_videos, video_grid_thw, second_per_grid_ts); columns that are padding in
    every selected prompt are cut. Images follow the prompts' order: image j has prod(grid_j) / merge² tokens
    and belongs to the prompt whose running count of image tokens (mm_token_type_ids 1) it falls in; videos
    likewise with the video tokens (mm_token_type_ids 2)."""
    mm = batch["mm_token_type_ids"]
    start = int(batch["attention_mask"][rows].any(0).nonzero()[0])
    out = {k: batch[k][rows, start:] for k in ("input_ids", "attention_mask", "mm_token_type_ids")}
    for mm_type, pixels, grids, extra in ((1, "pixel_values", "image_grid_thw", None),
                                          (2, "pixel_values_videos", "video_grid_thw", "second_per_grid_ts")):
        if pixels not in batch:
            continue
        patches = batch[grids].prod(-1)                                              # (items,)
        ends = (patches // merge_size ** 2).cumsum(0)                                # vision tokens so far
        owner = torch.searchsorted((mm == mm_type).sum(1).cumsum(0), ends).tolist()  # the prompt of each item
        first = [0] + patches.cumsum(0).tolist()                                     # its first pixel row
        items = [j for r in rows for j, o in enumerate(owner) if o == r]
        if items:
            out[pixels] = torch.cat([batch[pixels][first[j]:first[j + 1]] for j in items])
            out[grids] = batch[grids][items]
            if extra in batch:
                out[extra] = batch[extra][items]
    return out


def rope_positions(model, prompts: dict) -> torch.Tensor:
    """The M-RoPE positions (3, B, T) of a left-padded encode() batch, as the model's forward computes them."""
    grids = {k: prompts[k] for k in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts") if k in prompts}
    pos, _ = model.model.get_rope_index(prompts["input_ids"], mm_token_type_ids=prompts["mm_token_type_ids"],
                                        attention_mask=prompts["attention_mask"], **grids)
    return pos


def group_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, group=None, **kwargs):
    """transformers' sdpa attention, and with `group` = (prompt_mask (B, P), n) the layout of group_batch's rows
    [prompt | slot_1 | … | slot_n] (slots of S tokens): prompt tokens attend causally to the prompt's real
    tokens; a slot's tokens attend to the prompt's real tokens and causally within their slot, never to another
    slot: the arithmetic of n separate prompt + completion rows, with the prompt computed once. query (B, H, L, d),
    key / value (B, H_kv, L, d) → (B, L, H, d)."""
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
    if group is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    prompt_mask, n = group
    rep = query.shape[1] // key.shape[1]      # GQA: repeated, since CUDA's sdpa takes a mask with GQA only in math
    key, value = repeat_kv(key, rep), repeat_kv(value, rep)
    b, p, dev = query.shape[0], prompt_mask.shape[1], query.device
    s = (query.shape[2] - p) // n
    causal = lambda k: torch.ones(k, k, dtype=torch.bool, device=dev).tril()                    # noqa: E731
    mask_p = (causal(p) & prompt_mask[:, None, :]) | torch.eye(p, dtype=torch.bool, device=dev)  # pad rows: self
    out_p = F.scaled_dot_product_attention(query[:, :, :p], key[:, :, :p], value[:, :, :p], attn_mask=mask_p[:, None],
                                           scale=scaling)
    slots = lambda x: x[:, :, p:].unflatten(2, (n, s)).transpose(1, 2).flatten(0, 1)           # noqa: E731
    with_prompt = lambda x: torch.cat([x[:, :, :p].repeat_interleave(n, 0), slots(x)], 2)       # noqa: E731
    mask_s = torch.cat([prompt_mask.repeat_interleave(n, 0)[:, None, :].expand(-1, s, -1),
                        causal(s).expand(b * n, -1, -1)], 2)
    out_s = F.scaled_dot_product_attention(slots(query), with_prompt(key), with_prompt(value), attn_mask=mask_s[:, None],
                                           scale=scaling)
    out_s = out_s.unflatten(0, (b, n)).transpose(1, 2).flatten(2, 3)                            # (B, H, n·S, d)
    return torch.cat([out_p, out_s], 2).transpose(1, 2).contiguous(), None


def install_group_attention(model) -> None:
    """Make the text model's attention group_attention (registered with transformers as "sdpa_groups", with sdpa's
    mask function): the same as sdpa except in a group_batch forward. load_model() calls it."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
    AttentionInterface.register("sdpa_groups", group_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register("sdpa_groups", sdpa_mask)
    model.model.language_model.config._attn_implementation = "sdpa_groups"


def group_batch(model, prompts: dict, completions: torch.Tensor, completion_mask: torch.Tensor, n: int) -> tuple:
    """GRPO groups as rows (the layout of PrefixGrouper, arXiv 2506.05433): prompt i and its n completions
    become one row [prompt_i without its last token | last_i c_i1 | … | last_i c_in], each slot opened by the
    prompt's last token so that it predicts its completion exactly as a prompt + completion row does. Positions:
    the prompt's own M-RoPE positions (also for the last token opening each slot), then completion token k at the
    prompt's largest position + 1 + k, as in the decoder (engine.Engine). Labels: the
    completion tokens where completion_mask is on, −100 elsewhere. prompts: left-padded encode() batch of B
    prompts (images included: the vision tower runs once per prompt); completions, completion_mask: (B·n, W),
    grouped by prompt. Returns (batch for token_logprobs, labels (B, P − 1 + n·(W + 1)))."""
    dev = next(model.parameters()).device
    prompts = {k: v.to(dev) for k, v in prompts.items()}
    ids, b, w = prompts["input_ids"], prompts["input_ids"].shape[0], completions.shape[1]
    pos = rope_positions(model, prompts)                                                   # (3, B, P)
    slots = torch.cat([ids[:, -1:, None].expand(b, n, 1), completions.to(dev).view(b, n, w)], 2)   # (B, n, W+1)
    after = pos.amax(dim=(0, 2)).view(1, b, 1, 1) + torch.arange(1, w + 1, device=dev)       # completion tokens
    slot_pos = torch.cat([pos[:, :, -1:, None].expand(3, b, 1, 1), after.expand(3, b, 1, w)], 3)  # last prompt token
    slot_pos = slot_pos.expand(3, b, n, w + 1).flatten(2)
    on = torch.cat([torch.zeros(b, n, 1, dtype=torch.bool, device=dev), completion_mask.to(dev).bool().view(b, n, w)], 2)
    labels = torch.cat([torch.full_like(ids[:, :-1], IGNORE_INDEX), slots.masked_fill(~on, IGNORE_INDEX).flatten(1)], 1)
    batch = {"input_ids": torch.cat([ids[:, :-1], slots.flatten(1)], 1), "position_ids": torch.cat([pos[:, :, :-1], slot_pos], 2),
             "group": (prompts["attention_mask"][:, :-1].bool(), n)}
    batch.update({k: prompts[k] for k in VISION_INPUTS if k in prompts})
    return batch, labels


def group_logprobs(model, prompts: dict, completions: torch.Tensor, completion_mask: torch.Tensor, n: int,
                   temperature: float = 1.0, chunk_size: int = 1024, with_entropy: bool = False):
    """Per-token log-probs (B·n, W) fp32 of GRPO completions under `model`, each group's prompt and images run
    once (group_batch, group_attention): log p(c_t | prompt, c_<t) of logits / τ where completion_mask is on, 0
    elsewhere; with with_entropy also the (detached) entropies. Equal to token_logprobs on the n·B prompt +
    completion rows up to float rounding, gradients included (FSDP2 and activation checkpointing as for any
    forward)."""
    if model.model.language_model.config._attn_implementation != "sdpa_groups":
        install_group_attention(model)
    batch, labels = group_batch(model, prompts, completions, completion_mask, n)
    out = token_logprobs(model, batch, labels, temperature, chunk_size, with_entropy)
    b, w, p = prompts["input_ids"].shape[0], completions.shape[1], prompts["input_ids"].shape[1] - 1
    unpack = lambda x: x[:, p:].view(b, n, w + 1)[:, :, 1:].reshape(b * n, w)             # noqa: E731
    return (unpack(out[0]), unpack(out[1])) if with_entropy else unpack(out)

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
    block saves nothing: its activations are not kept for a backward anyway. Returns the names of the
    checkpointed layers.

    Each layer's forward is wrapped at instance level (checkpointed_forward), so parameter names and state
    dicts stay those of the HF model and FSDP2's hooks stay outside the recomputed region. transformers'
    own activation_checkpointing_enable was slower on FSDP2 (docs/performance.md)."""
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

    The vision tower is its own unit so that its weights are gathered once per forward, not with the root's.
    bf16 params with fp32 reduction on GPU, fp32 on CPU. A one-token forward right after sharding initialises
    the FSDP root; the root is resharded after it, so model.parameters() are the sharded DTensors the optimizer
    must hold.
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
    if not dist.is_initialized():  # FSDP2 needs a process group even for one rank: a local one, on a free port
        store = dist.TCPStore("127.0.0.1", 0, 1, is_master=True)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=store, rank=0, world_size=1)
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


# ----------------------------------------------------------------------------- the trained model
def load_trainable(name: str, d, *, min_pixels: int | None = None, max_pixels: int | None = None,
                   trust_remote_code: bool = False, **training) -> tuple:
    """(model, tokenizer, image processor, AdamW) for sft.py and grpo.py: load_model (with several ranks only
    rank 0 reads the weights; the others build on the meta device), then make_trainable(model, d, **training)."""
    model, tok, ip = load_model(name, min_pixels=min_pixels, max_pixels=max_pixels,
                                meta=d.world_size > 1 and not d.is_main, trust_remote_code=trust_remote_code)
    model, optimizer = make_trainable(model, d, **training)
    return model, tok, ip, optimizer


def make_trainable(model, d, *, train_vision: bool, checkpointing: bool, fsdp: bool, lr: float,
                   weight_decay: float, betas: tuple = (0.9, 0.999), lora_rank: int = 0,
                   lora_alpha: float | None = None) -> tuple:
    """(model, AdamW) from a loaded model: the vision tower frozen unless it trains (lora_rank > 0: every
    weight frozen and LoRA adapters added, add_lora), activation checkpointing on the layers that train,
    place_model, AdamW over the trainable parameters."""
    if not train_vision:
        freeze_vision(model)
    if lora_rank:
        add_lora(model, lora_rank, 2.0 * lora_rank if lora_alpha is None else lora_alpha)
    model.config.use_cache = False
    if checkpointing:
        enable_activation_checkpointing(model)     # after freeze_vision: only the layers that train
    model = place_model(model.train(), d, fsdp)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, betas=tuple(betas),
                                  weight_decay=weight_decay)
    return model, optimizer


def place_model(model, d, fsdp: bool = False):
    """FSDP2-sharded (shard_model: bf16 compute on GPU) on GPU, with several ranks, or when fsdp=True (a CPU
    process run as a GPU run is); otherwise moved to the device as it is."""
    device = torch.device(d.device)
    if fsdp or d.world_size > 1 or device.type == "cuda":
        return shard_model(model, device, broadcast_from_rank0=d.world_size > 1)
    return model.to(device)


def optimizer_step(model, optimizer, max_grad_norm: float, lr: float | None = None) -> dict:
    """Clip the gradient norm to max_grad_norm and step (at `lr` when given), unless the norm is not finite:
    then the step is skipped, the weights stay as they are, and the caller reports it (as EasyR1 does).
    Gradients are cleared either way. Returns {"grad_norm", "skipped"}."""
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm) if params else torch.tensor(0.0)
    norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
    ok = math.isfinite(norm)
    if lr is not None:
        for group in optimizer.param_groups:
            group["lr"] = lr
    if ok:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {"grad_norm": norm, "skipped": 0 if ok else 1}


# ----------------------------------------------------------------------------- LoRA (the paper's cold start)
def lora_forward(self, x: torch.Tensor) -> torch.Tensor:
    """y = x Wᵀ + b + (α / r) · (x Aᵀ) Bᵀ: the frozen linear layer plus its low-rank adapter (dropout 0).
    A (r × in) and B (out × r) are parameters of the layer itself, so W keeps its HF name and FSDP2 shards
    the adapter with its layer."""
    return F.linear(x, self.weight, self.bias) + self.lora_scaling * F.linear(F.linear(x, self.lora_A), self.lora_B)


def add_lora(model, rank: int, alpha: float) -> list:
    """Freeze the whole model, then give every nn.Linear of the language model (q, k, v, o, gate, up, down of
    each decoder layer; not the vision tower, its merger, the embeddings or lm_head) a trainable adapter:
    A ~ nn.Linear's own init (Kaiming uniform), B = 0, so the first forward is the base model's. A layer
    narrower than the rank gets rank min(in, out), which already spans every update of its shape (said in one
    line); every layer is scaled by α / rank. Works on the meta device (ranks > 0 fill from rank 0).
    Returns the adapted layers' names."""
    model.requires_grad_(False)
    names, capped = [], set()
    for name, m in model.model.language_model.named_modules():
        if not isinstance(m, torch.nn.Linear):
            continue
        r = min(rank, m.in_features, m.out_features)
        if r < rank:
            capped.add(f"{name.rsplit('.', 1)[-1]} {m.in_features}→{m.out_features}")
        a = torch.empty(r, m.in_features, device=m.weight.device, dtype=m.weight.dtype)
        torch.nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        m.lora_A = torch.nn.Parameter(a)
        m.lora_B = torch.nn.Parameter(torch.zeros(m.out_features, r, device=m.weight.device, dtype=m.weight.dtype))
        m.lora_scaling = alpha / rank
        m.forward = types.MethodType(lora_forward, m)   # bound per instance, like checkpointed_forward
        names.append(name)
    if capped and is_main():
        print(f"LoRA rank {rank} capped at min(in, out) on the layers narrower than it ({', '.join(sorted(capped))})")
    return names


def merge_lora(state_dict: dict, scalings: dict) -> dict:
    """The plain model's weights: W ← W + (α / r) · B A for each adapted layer (computed in fp32), the lora_A /
    lora_B entries dropped. scalings = {layer name: α / r} (lora_scalings)."""
    out = {k: v for k, v in state_dict.items() if not k.endswith((".lora_A", ".lora_B"))}
    for name, s in scalings.items():
        w, a, b = (state_dict[f"{name}.{k}"] for k in ("weight", "lora_A", "lora_B"))
        out[f"{name}.weight"] = (w.float() + s * (b.float() @ a.float())).to(w.dtype)
    return out


def lora_scalings(model) -> dict:
    """{full layer name: α / r} of the model's LoRA layers ({} without adapters)."""
    return {name: m.lora_scaling for name, m in model.named_modules() if hasattr(m, "lora_scaling")}


# ----------------------------------------------------------------------------- save
def save_hf(model, tokenizer, image_processor, out_dir: str, dtype: torch.dtype | None = None) -> None:
    """Consolidated HF directory from rank 0: model.safetensors, config.json, generation_config.json,
    tokenizer and image-processor files; loadable with AutoModelForImageTextToText.from_pretrained. LoRA
    adapters are merged into their weights (merge_lora): no adapter code is needed to load it. The weights
    in `dtype`, by default the one the run computed in: bf16 on a GPU (as the released checkpoints), fp32 on CPU.

    Collective (every rank calls it). Files go to a temporary folder first and are moved in with the
    weights last, so a folder with weights always has its config and tokenizer."""
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    dtype = dtype or (torch.bfloat16 if next(model.parameters()).device.type == "cuda" else torch.float32)
    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if is_main():
        sd = merge_lora(sd, lora_scalings(model))   # LoRA adapters merged: the export is a plain model
        out, seen = Path(out_dir), set()
        tied = getattr(model.config, "tie_word_embeddings", False) or \
            getattr(model.config.get_text_config(), "tie_word_embeddings", False)
        tmp = out / ".export.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        weights = {}
        for k, v in sd.items():  # tied weights share storage: keep the first name only
            if v.data_ptr() in seen and tied:
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
