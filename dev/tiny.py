"""The offline models of the tests, `--smoke`, `--model tiny` and the demo, and the 3B shape of bench.py.

Nothing here is part of the paper's method: these are stand-ins for a pretrained Qwen-VL that build in under a
second without a download.
  build_tiny            a randomly initialised tiny Qwen2.5-VL ('tiny') or Qwen3-VL ('tiny-qwen3'), vlm.load_model's
                        "tiny" names; the tokenizer it uses: build_tiny_tokenizer (byte-level BPE on TINY_CORPUS,
                        the 14 Qwen special tokens at ids 0..13, the official chat templates for image/text turns)
  build_qwen25_vl_shape the published Qwen2.5-VL-3B config with random weights (QWEN25_VL_3B_SHAPE), for timing
  build_tiny_depth      a randomly initialised tiny Depth Anything (relative or metric) with its image processor,
                        saved as a folder, for make_data.py --depth-model (its depth is meaningless)
  demo stand-ins        what a pretrained Qwen-VL brings and a random tiny model lacks, for demo.sh only:
                        add_position_table (a learned 2-D position table added to the merged image tokens; saved
                        and reloaded with the model, vlm.load_model and engine.Engine re-install it) and
                        warm_up_vision (a short supervised warm-up of the vision tower on flip questions, standing
                        in for its pretraining); `python tiny.py --out DIR --data sft.jsonl` builds the starting
                        model
"""
import functools
import json
from dataclasses import dataclass

import torch

import tasks
from common import knob


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


def build_tiny_depth(out_dir: str, metric: bool = False, size: int = 56, seed: int = 0):
    """A randomly initialised tiny Depth Anything (a 2-layer, 16-wide DINOv2 backbone; ~24k parameters) saved to
    out_dir with its DPT image processor (PIL backend, images resized to about size x size), in well under a
    second. metric=False: a "relative" model (its output is read as inverse depth, as Depth Anything V2 Small's);
    metric=True: depth_estimation_type "metric" (sigmoid x max_depth metres). initializer_range 0.2 so the
    random output varies across the image instead of sitting at the head's ReLU floor. Returns out_dir."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config
    from transformers.models.dpt.image_processing_pil_dpt import DPTImageProcessorPil
    backbone = Dinov2Config(image_size=size, patch_size=14, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=32, out_indices=[1, 2], reshape_hidden_states=False,
                            initializer_range=0.2)
    cfg = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=16, reassemble_factors=[2, 1],
                              neck_hidden_sizes=[8, 16], fusion_hidden_size=8, head_hidden_size=4,
                              initializer_range=0.2, depth_estimation_type="metric" if metric else "relative",
                              max_depth=20 if metric else 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DepthAnythingForDepthEstimation(cfg)
    model.save_pretrained(out_dir)
    DPTImageProcessorPil(size={"height": size, "width": size}, keep_aspect_ratio=True, ensure_multiple_of=14,
                         do_pad=False).save_pretrained(out_dir)
    return out_dir


# ----------------------------------------------------------------------------- the demo's stand-ins for pretraining
POSITION_TABLE = "image_position_table"   # config attribute and parameter name: the table's side (0: none)


def add_position_table(model, side: int, std: float = 0.1) -> None:
    """A learned 2-D position table added to the merged image tokens: the token at row r, column c of its image's
    merged grid gets table[r, c] (side × side × hidden; rows and columns beyond the side share its last entry).
    Qwen-VL image tokens carry their position only through M-RoPE in the attention scores; a pretrained vision
    tower also puts it into their features, which a random tiny one does not: this stands in for that. The table
    is a parameter of model.model (it trains with the language model, also when the vision tower is frozen) and
    config.image_position_table records its side, so save_hf saves it and vlm.load_model / engine.Engine's copy
    re-install it (restore_position_table). Idempotent."""
    if hasattr(model.model, POSITION_TABLE):
        return
    hidden = model.config.get_text_config().hidden_size
    weight = torch.randn(side, side, hidden, device=next(model.parameters()).device) * std
    setattr(model.model, POSITION_TABLE, torch.nn.Parameter(weight))
    setattr(model.config, POSITION_TABLE, side)
    model.model.visual.register_forward_hook(functools.partial(_add_positions, model.model), with_kwargs=True)


def _add_positions(owner, visual, args, kwargs, out):
    """Forward hook of the vision tower: its merged tokens (all images, raster order per image) + the table."""
    grid = kwargs["grid_thw"] if "grid_thw" in kwargs else args[1]
    table, merge = getattr(owner, POSITION_TABLE), visual.spatial_merge_size
    rows, cols = [], []
    for t, h, w in grid.tolist():
        i = torch.arange(t * (h // merge) * (w // merge), device=table.device)
        rows.append((i // (w // merge)) % (h // merge))
        cols.append(i % (w // merge))
    side = table.shape[0] - 1
    extra = table[torch.cat(rows).clamp(max=side), torch.cat(cols).clamp(max=side)]
    out.pooler_output = out.pooler_output + extra.to(out.pooler_output.dtype)
    return out


def restore_position_table(model, source: str | None = None, **from_pretrained) -> None:
    """Re-install the table of a model whose config records one (transformers builds the model without it);
    with `source` (a checkpoint folder or id) load its values from the checkpoint's model.safetensors."""
    side = getattr(model.config, POSITION_TABLE, 0)
    if not side:
        return
    add_position_table(model, side)
    if source is not None:
        from safetensors import safe_open
        from transformers.utils import cached_file
        with safe_open(cached_file(source, "model.safetensors", **from_pretrained), "pt") as f:
            value = f.get_tensor(f"model.{POSITION_TABLE}")
        with torch.no_grad():
            getattr(model.model, POSITION_TABLE).copy_(value)


def flip_token_targets(record: dict, side: int) -> torch.Tensor:
    """Per-token labels of one flip question on a side × side token grid: 0 outside the flipped tile, 1 / 2 on its
    tokens for a horizontal / vertical flip (tiles 1..4 are the grid's quarters, row by row)."""
    tile, half = record["meta"]["tile"] - 1, side // 2
    target = torch.zeros(side, side, dtype=torch.long)
    row, col = divmod(tile, 2)
    target[row * half:(row + 1) * half, col * half:(col + 1) * half] = 1 + tasks.FLIP_DIRECTIONS.index(
        record["meta"]["direction"])
    return target.flatten()


def warm_up_vision(model, records: list, root, image_processor, steps: int, batch_size: int = 32, lr: float = 3e-3,
                   seed: int = 0) -> dict:
    """The demo's stand-in for a pretrained vision tower, on flip questions: `steps` steps of AdamW train the vision
    tower (and the position table) so that each merged image token says whether its tile is the flipped one and
    how, a per-token linear probe on labels made from the cold-start answers and the tile layout
    (flip_token_targets). A random tower's features say nothing a language model could learn from in minutes;
    a pretrained one's describe each patch's content, mirrored or not. The probe is dropped afterwards. The records
    need one image each, of one square size after resizing (an even side of tokens); the last tenth is held out
    to report how often the probe's strongest tile and direction are the answer."""
    from records import load_images
    held = max(1, len(records) // 10)
    train, test = records[:-held], records[-held:]

    def features(batch):
        px = image_processor(images=[load_images(r, root)[0] for r in batch], return_tensors="pt")
        return model.model.visual(px["pixel_values"], grid_thw=px["image_grid_thw"]).pooler_output.view(len(batch), -1,
                                                                                                       model.config.get_text_config().hidden_size)
    if any(r.get("task") != "flip" or len(r.get("images") or []) != 1 for r in records):
        raise ValueError("the vision warm-up takes flip questions (one image each)")
    with torch.no_grad():
        tokens = features(records[:1]).shape[1]
    side = int(tokens ** 0.5)
    if side % 2 or side * side != tokens:
        raise ValueError(f"the vision warm-up needs square images of an even token side ({tokens} tokens: --pixels)")
    torch.manual_seed(seed)
    probe = torch.nn.Linear(model.config.get_text_config().hidden_size, 3)
    params = list(model.model.visual.parameters()) + list(probe.parameters()) + \
        [p for n, p in model.model.named_parameters(recurse=False) if n == POSITION_TABLE]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    for step in range(steps):
        batch = [train[(step * batch_size + j) % len(train)] for j in range(batch_size)]
        target = torch.stack([flip_token_targets(r, side) for r in batch])
        loss = torch.nn.functional.cross_entropy(probe(features(batch)).flatten(0, 1), target.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        right = 0
        for k in range(0, len(test), 64):
            part = test[k:k + 64]
            p = probe(features(part)).softmax(-1)[..., 1:]                       # (B, tokens, direction)
            per_tile = torch.stack([p[:, flip_token_targets({"meta": {"tile": t + 1, "direction": "horizontal"}},
                                                            side).bool()].mean(1) for t in range(4)], 1)   # (B, 4, 2)
            guess = per_tile.flatten(1).argmax(1)
            truth = torch.tensor([(r["meta"]["tile"] - 1) * 2 + tasks.FLIP_DIRECTIONS.index(r["meta"]["direction"])
                                  for r in part])
            right += int((guess == truth).sum())
    return {"train": len(train), "held_out": held, "probe_accuracy": right / held}


def build_demo_start(cfg) -> dict:
    """demo.sh's starting model: a tiny model with the position table, its image bounds fixed, the vision tower
    warmed up on --data's answers, saved to --out as a Hugging Face folder (sft.py --model takes it)."""
    from pathlib import Path
    from common import SetupError, read_jsonl
    from vlm import install_attention, save_hf, set_pixel_bounds
    model, tok, ip = build_tiny(cfg.kind, hidden=cfg.hidden, layers=cfg.layers, seed=cfg.seed)
    install_attention(model)
    add_position_table(model, cfg.position_table)
    set_pixel_bounds(ip, cfg.pixels, cfg.pixels)
    data = Path(cfg.data)
    try:
        report = warm_up_vision(model, read_jsonl(data), data.parent, ip, cfg.warm_up_steps, seed=cfg.seed)
    except ValueError as e:
        raise SetupError(f"--data {cfg.data}: {e}") from None
    save_hf(model, tok, ip, cfg.out, torch.float32)
    print(f"tiny.py: {cfg.kind} (hidden {cfg.hidden}, {cfg.layers} layers, position table {cfg.position_table}²), "
          f"vision warmed up for {cfg.warm_up_steps} steps on {report['train']} flip images of {cfg.data}: its "
          f"probe names tile and direction for {report['probe_accuracy']:.1%} of {report['held_out']} held out "
          f"(chance 12.5%) -> {cfg.out}")
    return report


@dataclass
class DemoStart:
    out: str = knob("runs/demo/start", "output folder (a Hugging Face model folder)")
    data: str = knob("", "REQUIRED: the cold-start file (one image per record, one size after resizing)")
    kind: str = knob("tiny", "tiny (Qwen2.5-VL) or tiny-qwen3")
    hidden: int = knob(64, "language model width")
    layers: int = knob(2, "language model layers")
    position_table: int = knob(16, "side of the learned position table of the merged image tokens")
    pixels: int = knob(112 * 112, "every image resized to this many pixels")
    warm_up_steps: int = knob(700, "vision warm-up steps of 32 images")
    seed: int = knob(0, "seed of the weights and the warm-up")


def main(argv: list | None = None) -> None:
    """`python tiny.py --out DIR --data sft.jsonl`: build_demo_start from the command line."""
    from common import SetupError, cli_main, config_parser, setup_dist
    args = config_parser(DemoStart, "tiny.py", "demo.sh's starting model: a tiny Qwen-VL with the stand-ins for "
                         "pretraining (position table, vision warm-up)").parse_args(argv)

    def run():
        if not args.data:
            raise SetupError("--data is required: the cold-start file, e.g. runs/demo/data/sft.jsonl")
        setup_dist(args.seed)      # one CPU thread unless OMP_NUM_THREADS says otherwise
        build_demo_start(args)
    cli_main("tiny.py", run)


if __name__ == "__main__":
    main()
