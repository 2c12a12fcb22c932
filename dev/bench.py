"""Every benchmark table of Spatial-SSRL, one subcommand per stage; each prints the markdown table README.md shows.

    python dev/bench.py data     # pretext generators (ms/sample at 1024x768), scene renders/s, builder throughput
    python dev/bench.py sft      # SFT step: time, tokens/s, MFU, peak memory (tiny, ~6M on CPU; 3B shape on a GPU)
    python dev/bench.py rollout  # the one decoder (engine.Engine): ms per decode step, tokens/s, refresh and first-call
                             # (compile) seconds; on a GPU against the HBM bound (weight bytes / memory bandwidth)
    python dev/bench.py grpo     # GRPO step through grpo.py's own functions: generation / log-probs / update, tokens/s
    python dev/bench.py grpo --vs-trl --trl-python VENV/bin/python   # the same step side by side with TRL's GRPOTrainer
    python dev/bench.py eval     # greedy evaluation throughput (evaluate.answer_batch)
    python dev/bench.py gpu      # a new GPU machine: pytest test_gpu.py, then one table against the targets (< 8 min)
    python dev/bench.py gpu --dry-run   # the same script on CPU with the tiny model (what CI runs, < 1 min)

The stage scripts hold only their stage; the timing code lives here. Speed targets are benchmarks, not tests.
Timings: wall time after a synchronize on a GPU; on a CPU this process's CPU time (one thread unless said), so a
busy shared machine still measures one core's work. dev/performance.md says what each row means; dev/LOG.md
holds the tables measured.
"""
import argparse
import platform
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent                        # the project's modules and test files
sys.path.insert(0, str(ROOT))


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
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    cfg = Qwen2_5_VLConfig(text_config={**shape["text"], "pad_token_id": 0, "bos_token_id": 0, "eos_token_id": 2},
                           vision_config=shape["vision"], image_token_id=12, video_token_id=13,
                           vision_start_token_id=9, vision_end_token_id=10,
                           tie_word_embeddings=shape["tie_word_embeddings"])
    cfg._attn_implementation = "sdpa"
    with torch.device(device):
        return Qwen2_5_VLForConditionalGeneration(cfg)


def machine() -> str:
    """One line naming the machine: CPU model and cores, or the GPU."""
    import torch
    if torch.cuda.is_available() and _use_cuda():
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import os
    return f"{cpu}, {os.cpu_count()} cores (torch {torch.__version__}, CPU)"


def _use_cuda() -> bool:
    import common
    return common.use_cuda()


def bench_device():
    """The device the stages would use (common.use_cuda: a GPU unless SPATIAL_SSRL_DEVICE=cpu)."""
    import torch
    return torch.device("cuda" if _use_cuda() else "cpu")


def clock(device, wall: bool = False) -> float:
    """Seconds for timing: wall time on a GPU (after a synchronize), this process's CPU time on a CPU (the
    CPU benchmarks run on one thread, so a busy machine still measures one core's work); wall=True: wall
    time on both."""
    import time
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() if device.type == "cuda" or wall else time.process_time()


def reset_peak_memory(device) -> None:
    """Start a new peak-memory window: CUDA's allocator statistics, or on Linux the process's peak RSS (VmHWM,
    reset by writing 5 to /proc/self/clear_refs; without it the CPU peak stays the process's peak so far)."""
    import torch
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_memory_gb(device) -> float:
    """Peak allocated GPU memory since reset_peak_memory, or on CPU the peak RSS (GiB)."""
    import re
    import resource
    import torch
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    try:
        with open("/proc/self/status") as f:
            return int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1)) / 2**20
    except (OSError, AttributeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def free_memory(device) -> None:
    """Drop what the last model left: FSDP modules hold reference cycles, so collect before emptying the cache."""
    import gc
    import torch
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- models
SMALL_MODELS = {"tiny": {}, "~6M": dict(hidden=256, layers=4, heads=4, vision_hidden=128, vision_depth=4, ffn_mult=4)}


def shape_with_layers(layers: int | None) -> dict:
    """The Qwen2.5-VL-3B shape (QWEN25_VL_3B_SHAPE) with `layers` text layers (None: all 36)."""
    import vlm
    shape = QWEN25_VL_3B_SHAPE
    return {**shape, "text": {**shape["text"], "num_hidden_layers": layers or shape["text"]["num_hidden_layers"]}}


def model_builder(name: str, device, layers: int | None = None):
    """build() -> (model, tokenizer, image processor) for 'tiny' / '~6M' (tiny.build_tiny, on CPU) or '3B' (the
    published Qwen2.5-VL-3B config with random weights, `layers` text layers, created on `device`, the tiny
    tokenizer). Seeded: two builds hold the same weights (a policy and its reference)."""
    import torch
    import vlm
    if name == "3B":
        def build():
            torch.manual_seed(0)
            return (build_qwen25_vl_shape(shape_with_layers(layers), str(device)), *vlm.build_tiny("tiny")[1:])
        return build
    return lambda: vlm.build_tiny("tiny", **SMALL_MODELS[name])


def model_label(name: str, layers: int | None) -> str:
    """How a table names a model: the 3B shape says when it has fewer text layers than the published 36."""
    import vlm
    full = QWEN25_VL_3B_SHAPE["text"]["num_hidden_layers"]
    if name != "3B":
        return name
    return "Qwen2.5-VL-3B shape" if layers in (None, full) else \
        f"Qwen2.5-VL-3B shape, {layers} of {full} text layers (to fit memory)"


def trainable(model, device, train_vision: bool, ckpt: bool, fsdp: bool, lr: float = 1e-6,
              weight_decay: float = 0.01) -> tuple:
    """(model, AdamW) of a built model as sft.py / grpo.py arrange a loaded one: vlm.install_attention (what
    vlm.load_model installs), vlm.make_trainable (FSDP2 with bf16 compute on a GPU; with fsdp=True on a CPU too,
    gloo, one rank)."""
    import common
    import vlm
    vlm.install_attention(model)
    return vlm.make_trainable(model, common.Dist(device=device), train_vision=train_vision, checkpointing=ckpt,
                              fsdp=fsdp, lr=lr, weight_decay=weight_decay)


def reference(model, device, fsdp: bool):
    """The frozen GRPO reference as grpo.setup_run places it: bf16 on a GPU (only ever run forward), fp32 on CPU."""
    import torch
    import common
    import vlm
    vlm.install_attention(model)
    model = model.to(torch.bfloat16 if device.type == "cuda" else torch.float32).requires_grad_(False).eval()
    return vlm.place_model(model, common.Dist(device=device), fsdp=fsdp)


def fixed_shape_engine(model, prompts_per_call: int):
    """engine.Engine with the CUDA path's fixed shapes (prompts padded to a bucket, prompts_per_call prompts per
    call with filler prompts, one cache length) and torch.compile replaced by the identity: the GPU code path at
    CPU speed (as test_train.fixed_shape_engine)."""
    from unittest import mock
    import engine
    with mock.patch.object(engine.torch, "compile", lambda fn, **_: fn):
        return engine.Engine(model, prompts_per_call=prompts_per_call, compile=True)


def make_engine(model, prompts_per_call: int, mode: str | None = None):
    """The decoder as the stages make it (mode None: compiled on CUDA, eager on CPU), 'identity' (fixed shapes,
    no compiler: fixed_shape_engine) or 'compile' (torch.compile on CPU too)."""
    import engine
    if mode == "identity":
        return fixed_shape_engine(model, prompts_per_call)
    return engine.Engine(model, prompts_per_call=prompts_per_call, compile=True if mode == "compile" else None)


def compiled_graphs() -> int:
    """Graphs torch.compile has compiled in this process so far (dynamo's unique_graphs counter)."""
    from torch._dynamo.utils import counters
    return int(counters["stats"]["unique_graphs"])


def synthetic_prompts(tok, ip, folder, n: int, px: int, seed: int = 0) -> tuple:
    """(records, their left-padded prompts as grpo.rollout encodes them) for n synthetic one-image records with
    px² random-noise images, written to `folder`."""
    import sft
    import vlm
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    records = sft.synthetic_records(folder, n, px, seed)
    return records, vlm.encode_records(records, folder, tok, ip, response=False)


# ----------------------------------------------------------------------------- data
def _per_call(fn, seconds: float, min_reps: int = 3) -> tuple:
    """(CPU seconds, wall seconds) per call of fn(i), repeated for about `seconds` of wall time. CPU time
    is this process's own: on a busy machine it still measures one core's work."""
    import time
    c0, t0, reps = time.process_time(), time.perf_counter(), 0
    while reps < min_reps or time.perf_counter() - t0 < seconds:
        fn(reps)
        reps += 1
    return (time.process_time() - c0) / reps, (time.perf_counter() - t0) / reps


def _bench_generators(seconds: float, sizes: list) -> list:
    """ms per example of every pretext generator (and with JPEG encoding of its images) on built-in scenes."""
    import io
    import numpy as np
    import scenes
    import tasks
    rows = []
    for w, h in sizes:
        renders = [scenes.render_scene(s, h, w) for s in range(6)]
        for task in tasks.TASKS:
            accepted = []

            def gen(i, save=False):
                rgb, depth = renders[i % len(renders)]
                ex = tasks.make_example(task, rgb, depth if task in tasks.DEPTH_TASKS else None, np.random.default_rng(i))
                accepted.append(isinstance(ex, tasks.Example))
                for im in ex.images if save and accepted[-1] else []:
                    im.save(io.BytesIO(), format="JPEG", quality=95)
            cpu, wall = _per_call(gen, seconds)
            cpu_s, _ = _per_call(lambda i: gen(i, True), seconds)
            rows.append((f"{w}x{h}", task, cpu * 1e3, wall * 1e3, cpu_s * 1e3, float(np.mean(accepted))))
    return rows


def bench_data(args) -> None:
    """Pretext generators, scene renders and a small end-to-end build; markdown tables."""
    import tempfile
    import time
    import make_data
    import scenes
    print(f"machine: {machine()}\n")
    sizes = [tuple(int(v) for v in wh.split("x")) for wh in args.sizes.split(",")]
    rows = _bench_generators(args.seconds, sizes)
    print("| input | task | gen ms (CPU) | gen ms (wall) | gen + JPEG ms (CPU) | accepted |\n|---|---|---|---|---|---|")
    for size, task, cpu, wall, cpu_s, ok in rows:
        print(f"| {size} | {task} | {cpu:.1f} | {wall:.1f} | {cpu_s:.1f} | {ok:.0%} |")
    slow = [t for size, t, cpu, *_ in rows if size == "1024x768" and cpu > 20]
    print("\ntarget < 20 ms per sample at 1024x768: " + ("met" if not slow else "MISSED by " + ", ".join(slow)))
    print("\n| scene size | ms (CPU) | scenes/s (one core) | ms (wall) |\n|---|---|---|---|")
    renders = {}
    for w, h in sorted(set(sizes) | {(256, 192), (512, 384)}):
        cpu, wall = _per_call(lambda i: scenes.render_scene(i, h, w), args.seconds, min_reps=40 if w <= 512 else 5)
        renders[(w, h)] = 1 / cpu
        print(f"| {w}x{h} | {cpu * 1e3:.1f} | {1 / cpu:.1f} | {wall * 1e3:.1f} |")
    print("\ntarget >= 30 scenes/s at 512x384 on one core: " + ("met" if renders[(512, 384)] >= 30 else "MISSED"))
    if args.build_n:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            make_data.main(["--out", tmp + "/d", "--n", str(args.build_n), "--workers", str(args.workers),
                            "--no-progress", "--preview", "none"])
            wall = time.perf_counter() - t0
            made = sum(len(open(f"{tmp}/d/{s}.jsonl").readlines()) for s in make_data.SPLITS)
        print(f"\n| build: make_data.py --n {args.build_n} --workers {args.workers} (512x384 scenes) | examples | "
              f"seconds | examples/s |\n|---|---|---|---|\n| train + test + cold start, images, stats, shortcut "
              f"report | {made} | {wall:.1f} | {made / wall:.1f} |")


def add_data_parser(sub) -> None:
    p = sub.add_parser("data", help="pretext generators, scene renders/s, builder throughput",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seconds", type=float, default=1.0, help="time budget per timing cell")
    p.add_argument("--sizes", default="512x384,1024x768", help="WxH list of generator inputs (and scene sizes)")
    p.add_argument("--build-n", type=int, default=300, help="examples in the end-to-end build (0 = skip)")
    p.add_argument("--workers", type=int, default=1, help="worker processes of the end-to-end build")
    p.set_defaults(run=bench_data)


# ----------------------------------------------------------------------------- sft
PEAK_BF16_FLOPS = (("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("H800", 989e12),
                   ("A100", 312e12))       # dense bf16 tensor-core peak per GPU; the first name contained wins


def spec_for(table: tuple, name: str) -> float | None:
    """The value of the first (name part, value) of `table` whose name part is in the GPU name (None: unlisted)."""
    return next((v for k, v in table if k in name), None)


def card_spec(table: tuple, device) -> float | None:
    """spec_for this GPU (None on CPU)."""
    import torch
    return spec_for(table, torch.cuda.get_device_name(device)) if device.type == "cuda" else None


def sft_step_flops(model, batch: dict, vision_trains: bool) -> float:
    """Model FLOPs of one SFT step (no recomputation counted; the GPU's useful work).

    F = 6·N_dec·T + 6·L·d·Σ_b T_b² + 6·V·H·S + (6 if the vision tower trains else 2)·N_vis·P:
    decoder (non-embedding) parameters over all T tokens, causal attention scores (QKᵀ and AV, half the
    square, forward + backward), the LM head at the S supervised positions only, the vision tower over
    P patches (its merger, which sees P/4 tokens, is over-counted: ~5 % of the tower; window attention
    scores are not counted: < 1 %)."""
    lm, visual = model.model.language_model, model.model.visual
    n_dec = sum(p.numel() for n, p in lm.named_parameters() if "embed_tokens" not in n)
    n_vis = sum(p.numel() for p in visual.parameters())
    vocab, hidden = model.lm_head.weight.shape
    lengths = batch["attention_mask"].sum(1).double()
    cfg = model.config.get_text_config()
    attn = 6 * cfg.num_hidden_layers * cfg.hidden_size * float((lengths ** 2).sum())
    supervised = int((batch["labels"][:, 1:] != -100).sum())
    patches = int(batch["image_grid_thw"].prod(-1).sum()) if "image_grid_thw" in batch else 0
    return (6 * n_dec * float(lengths.sum()) + attn + 6 * vocab * hidden * supervised
            + (6 if vision_trains else 2) * n_vis * patches)


def sft_step_row(build, batch: dict, device, train_vision: bool, ckpt: bool, steps: int,
                 fsdp: bool | None = None) -> dict:
    """Median SFT step (sft.train_step, AdamW) of a freshly built model: time, tokens/s, MFU, peak memory.
    The model is arranged as sft.py arranges it (trainable: FSDP2 with bf16 compute on a GPU; fsdp=True on a
    CPU too); two warm-up steps first."""
    import numpy as np
    import torch
    import sft
    model = build()
    flops = sft_step_flops(model, batch, train_vision)
    model, opt = trainable(model, device, train_vision, ckpt, device.type == "cuda" if fsdp is None else fsdp,
                           lr=1e-5, weight_decay=0.0)
    reset_peak_memory(device)
    times, m = [], {}
    try:
        for _ in range(steps + 2):
            t0 = clock(device)
            m = sft.train_step(model, opt, [batch], 1e-5, 1.0, device)
            times.append(clock(device) - t0)
    except torch.OutOfMemoryError:
        return {"step_s": float("nan"), "tok_per_s": float("nan"), "mfu": None, "peak_gb": float("nan"), "oom": True}
    finally:
        del model, opt
        free_memory(device)
    dt = float(np.median(times[2:]))
    peak = card_spec(PEAK_BF16_FLOPS, device)
    return {"step_s": dt, "tok_per_s": m["tokens"] / dt, "mfu": flops / dt / peak if peak else None,
            "peak_gb": peak_memory_gb(device), "oom": False}


def synthetic_batch(tok, ip, n: int, px: int, max_pixels: int):
    """An SFT micro-batch of n synthetic records (random-noise px² images), encoded as in training."""
    import tempfile
    import sft
    import vlm
    vlm.set_pixel_bounds(ip, min(56 * 56, max_pixels), max_pixels)
    with tempfile.TemporaryDirectory() as tmp:
        records = sft.synthetic_records(Path(tmp), n, px)
        return vlm.encode_records(records, Path(tmp), tok, ip, response=True)


# Memory rule of the GPU rows: the training state of a parameter is 16 bytes (fp32 weight, gradient, two AdamW
# moments); GRPO adds 2 for the bf16 reference and 2 for the decoder's bf16 copy; the rest of the card must hold
# activations, all-gather buffers, logits chunks, the KV cache and allocator slack (MEMORY_RESERVE: the H200
# runs of the 3B shape peaked 14-15 GiB above their state).
SFT_BYTES_PER_PARAM, GRPO_BYTES_PER_PARAM, MEMORY_RESERVE = 16, 20, 16 * 2**30


def fit_layers(total_bytes: int, bytes_per_param: int, reserve: int = MEMORY_RESERVE) -> int:
    """The most text layers of the 3B shape (same width) whose state fits a card of total_bytes:
    bytes_per_param · N(layers) + reserve ≤ 95 % of the card (parameters counted on the meta device)."""
    import vlm
    count = lambda n: sum(p.numel() for p in build_qwen25_vl_shape(shape_with_layers(n), "meta").parameters())
    one, two = count(1), count(2)
    per_layer, rest = two - one, one - (two - one)
    layers = int((0.95 * total_bytes - reserve) / bytes_per_param - rest) // per_layer
    return max(1, min(QWEN25_VL_3B_SHAPE["text"]["num_hidden_layers"], layers))


def sft_cases(device, args) -> list:
    """(label, build() -> model, tok, ip, records, image px, [(train_vision, ckpt), ...]) per measured model."""
    import torch
    import vlm
    tok, ip = vlm.build_tiny("tiny")[1:]
    if device.type == "cuda":
        layers = fit_layers(torch.cuda.get_device_properties(device).total_memory, SFT_BYTES_PER_PARAM)
        build = model_builder("3B", device, layers)
        settings = [(False, False), (False, True), (True, True), (True, False)]
        return [(model_label("3B", layers), lambda: build()[0], tok, ip, args.gpu_records, 512, settings)]
    settings = [(False, False), (False, True), (True, True)]
    return [(name, lambda name=name: model_builder(name, device)()[0], tok, ip, args.records, args.px, settings)
            for name in SMALL_MODELS]


def vision_attention_row(build, batch: dict, device, steps: int) -> dict:
    """Vision tower forward + backward: transformers' per-window loop vs vlm.fast_vision_attention (median s)."""
    import numpy as np
    import torch
    import vlm
    model = build().to(device)
    visual, x, grid = model.model.visual, batch["pixel_values"].to(device), batch["image_grid_thw"].to(device)
    if device.type == "cuda":
        visual.to(torch.bfloat16)
        x = x.to(torch.bfloat16)
    out = {}
    for name in ("loop", "batched"):
        if name == "batched":
            vlm.fast_vision_attention(model)
        times = []
        for _ in range(steps + 1):
            t0 = clock(device)
            visual(x, grid_thw=grid).pooler_output.float().sum().backward()
            times.append(clock(device) - t0)
        out[name] = float(np.median(times[1:]))
    del model, visual
    free_memory(device)
    return out


def bench_sft(args) -> list:
    """SFT step table (frozen / trained vision, with / without activation checkpointing) and the vision
    attention table. CPU: tiny and ~6M fp32; GPU: the Qwen2.5-VL-3B shape (fewer layers where its state does
    not fit), FSDP2 bf16, one micro-batch of ≥ 8k tokens."""
    import torch
    device = bench_device()
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    print(f"machine: {machine()}; " + ("wall time" if device.type == "cuda" else
                                      f"CPU time of this process, {torch.get_num_threads()} thread(s)") + "\n")
    rows = []
    for name, build, tok, ip, n, px, settings in sft_cases(device, args):
        batch = synthetic_batch(tok, ip, n, px, max(px * px, 56 * 56))
        tokens = int(batch["attention_mask"].sum())
        for train_vision, ckpt in settings:
            r = sft_step_row(build, batch, device, train_vision, ckpt, args.steps)
            rows.append({"model": name, "records": n, "tokens": tokens, "vision": "trained" if train_vision
                         else "frozen", "ckpt": ckpt, **r})
        print_sft_table([r for r in rows if r["model"] == name])
        va = vision_attention_row(build, batch, device, args.steps)
        patches = int(batch["image_grid_thw"].prod(-1).sum())
        print(f"\n| vision tower fwd+bwd, {name}, {n} images {px}px ({patches} patches) | transformers loop (s) | "
              f"batched (s) | speed-up |\n|---|---|---|---|\n| {'bf16' if device.type == 'cuda' else 'fp32'} | "
              f"{va['loop']:.3f} | {va['batched']:.3f} | {va['loop'] / va['batched']:.1f}x |\n")
    return rows


def print_sft_table(rows: list) -> None:
    """Markdown table; the ratios are the targets' terms: checkpointing cost (vs the same vision setting
    without it) and training the vision tower (vs frozen with the same checkpointing)."""
    step = {(r["vision"], r["ckpt"]): r["step_s"] for r in rows if not r["oom"]}
    ratio = lambda a, b: f"{step[a] / step[b]:.2f}" if a in step and b in step else "n/a"   # noqa: E731
    print(f"SFT step, {rows[0]['model']}: one micro-batch of {rows[0]['records']} records = {rows[0]['tokens']} "
          "tokens; median of the steps after 2 warm-up steps; MFU counts vision fwd (+ bwd when it trains)")
    print("| vision | act. ckpt | step (s) | × without ckpt | × frozen vision | tokens/s | MFU | peak mem (GB) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r["oom"]:
            print(f"| {r['vision']} | {'on' if r['ckpt'] else 'off'} | out of memory | | | | | |")
            continue
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
        key = (r["vision"], r["ckpt"])
        print(f"| {r['vision']} | {'on' if r['ckpt'] else 'off'} | {r['step_s']:.3f} | "
              f"{ratio(key, (r['vision'], False))} | {ratio(key, ('frozen', r['ckpt']))} | "
              f"{r['tok_per_s']:.0f} | {mfu} | {r['peak_gb']:.1f} |")


def add_sft_parser(sub) -> None:
    p = sub.add_parser("sft", help="SFT step time, tokens/s, MFU, peak memory; vision attention loop vs batched",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--steps", type=int, default=3, help="timed steps per row (after 2 warm-up steps)")
    p.add_argument("--records", type=int, default=8, help="records per micro-batch on CPU")
    p.add_argument("--px", type=int, default=224, help="image side in pixels on CPU")
    p.add_argument("--gpu-records", type=int, default=18,
                   help="records per micro-batch for the 3B shape on a GPU (18 x ~470 tokens = ~8.5k tokens)")
    p.add_argument("--threads", type=int, default=1, help="torch threads on CPU (timings are CPU time)")
    p.set_defaults(run=bench_sft)


# ----------------------------------------------------------------------------- rollout
HBM_BYTES_PER_S = (("H200", 4.8e12), ("H100 PCIe", 2.0e12), ("H100 NVL", 3.9e12), ("H100", 3.35e12),
                   ("H800", 3.35e12), ("A100-SXM4-80GB", 2.039e12), ("A100 80GB PCIe", 1.935e12),
                   ("A100", 1.555e12))     # HBM bandwidth per GPU (vendor data sheets); the first name contained wins


def decode_weight_bytes(model) -> int:
    """Bytes of weights one decode step reads: the text decoder, its final norm and the LM head (the embedding
    lookup reads one row per sequence and is not counted; a tied LM head is counted once); the vision tower
    does not run while decoding."""
    lm = model.model.language_model
    return sum(p.numel() * p.element_size() for n, p in lm.named_parameters() if "embed_tokens" not in n) \
        + model.lm_head.weight.numel() * model.lm_head.weight.element_size()


def kv_cache_bytes(eng) -> int:
    """Bytes of the decoder's static KV cache (every decode step attends over all of it, masked)."""
    layers = getattr(eng.cache, "layers", [])
    return sum(t.numel() * t.element_size() for layer in layers
               for t in (getattr(layer, "keys", None), getattr(layer, "values", None)) if t is not None)


def decode_call(eng, batch: dict, tok, device, new_tokens: int, n: int, seed: int = 0) -> tuple:
    """(seconds, decode steps, generated tokens) of one sampled rollout call (temperature 1, n per prompt)."""
    import torch
    torch.manual_seed(seed)
    t0 = clock(device)
    ids, mask = eng.generate(batch, tok, max_new_tokens=new_tokens, greedy=False, temperature=1.0, n=n)
    return clock(device) - t0, ids.shape[1], int(mask.sum())


def rollout_row(policy, tok, ip, device, prompts: int, group_size: int, new_tokens: int, px: int,
                mode: str | None = None, eng=None) -> dict:
    """The one decoder on a policy as GRPO uses it: refresh seconds (the copy gathered from the shards again),
    the first call (compilation and CUDA-graph capture included), a second call on the same prompts (ms per
    decode step, prefill amortised; generated tokens/s up to each row's stop token), then a call with other
    prompt lengths and one prompt fewer (filler prompt), counting graphs compiled after the warm-up; on a GPU
    the HBM bound of a step = decode weight bytes / the card's bandwidth. Random weights rarely emit a stop
    token, so most rows decode all new_tokens. `eng`: a decoder already made for the policy (a GRPO session's)."""
    import tempfile
    import vlm
    bounds = dict(ip.size)
    eng = eng or make_engine(policy, prompts, mode)
    t0 = clock(device, wall=True)
    eng.refresh(policy)
    refresh = clock(device, wall=True) - t0
    vlm.set_pixel_bounds(ip, 56 * 56, (px + 28) ** 2)
    with tempfile.TemporaryDirectory() as tmp:
        batch = synthetic_prompts(tok, ip, f"{tmp}/a", prompts, px)[1]
        other = synthetic_prompts(tok, ip, f"{tmp}/b", max(1, prompts - 1), px - 56 if px >= 224 else px + 28, 1)[1]
    before = compiled_graphs()
    first = decode_call(eng, batch, tok, device, new_tokens, group_size)[0]
    warm = compiled_graphs()
    dt, steps, tokens = decode_call(eng, batch, tok, device, new_tokens, group_size, seed=1)
    decode_call(eng, other, tok, device, new_tokens, group_size, seed=2)
    bandwidth = card_spec(HBM_BYTES_PER_S, device)
    weights, kv = decode_weight_bytes(eng.model), kv_cache_bytes(eng)
    out = {"sequences": prompts * group_size, "new_tokens": new_tokens, "px": px, "steps": steps,
           "prompt_width": batch["input_ids"].shape[1], "ms_per_step": dt / steps * 1e3, "tok_per_s": tokens / dt,
           "refresh_s": refresh, "first_s": first, "compile_s": max(0.0, first - dt) if eng.compile else 0.0,
           "graphs": warm - before, "new_graphs": compiled_graphs() - warm, "compiled": eng.compile,
           "weight_gb": weights / 1e9, "kv_gb": kv / 1e9, "bandwidth": bandwidth,
           "bound_ms": weights / bandwidth * 1e3 if bandwidth else None,
           "bound_kv_ms": (weights + kv) / bandwidth * 1e3 if bandwidth else None}
    ip.size = bounds
    return out


def print_rollout_table(label: str, r: dict, device) -> None:
    """The rollout table: one row, the bound and the compile counts beside it."""
    bound = f"{r['bound_ms']:.2f} ({r['weight_gb']:.2f} GB at {r['bandwidth'] / 1e12:.2f} TB/s)" \
        if r["bound_ms"] else "n/a (CPU)"
    times = "wall time" if device.type == "cuda" else "CPU time of this process"
    print(f"rollout on {machine()} ({times}): {label}, {r['sequences']} sequences, ≤ {r['new_tokens']} sampled "
          f"tokens, {r['px']}px images (prompt width {r['prompt_width']})")
    print("| ms per decode step | tokens/s | HBM bound ms (weights) | × bound | bound with KV cache (ms) | "
          "refresh s | first call s | compile s | graphs compiled: first call / after |")
    print("|---|---|---|---|---|---|---|---|---|")
    times_bound = f"{r['ms_per_step'] / r['bound_ms']:.1f}×" if r["bound_ms"] else "n/a"
    kv = f"{r['bound_kv_ms']:.2f}" if r["bound_kv_ms"] else "n/a"
    print(f"| {r['ms_per_step']:.2f} | {r['tok_per_s']:.0f} | {bound} | {times_bound} | {kv} | {r['refresh_s']:.3f} | "
          f"{r['first_s']:.2f} | {r['compile_s']:.2f} | {r['graphs']} / {r['new_graphs']} |")


def bench_rollout(args) -> dict:
    """Rollout speed of the policy's decoder: GPU the 3B shape as an FSDP2 policy (bf16 copy, compiled step);
    CPU the tiny model as a one-rank FSDP2 (gloo) policy, so refresh gathers as on a GPU (eager fp32 decoding,
    or --compile identity / compile)."""
    import torch
    import common
    with common.dist_session(0):
        device = bench_device()
        if device.type == "cpu":
            torch.set_num_threads(args.threads)
        name = "3B" if device.type == "cuda" else "tiny"
        model, tok, ip = model_builder(name, device)()
        policy, _ = trainable(model, device, train_vision=True, ckpt=True, fsdp=True)
        px = args.px or (448 if device.type == "cuda" else 112)
        new = args.new_tokens or (256 if device.type == "cuda" else 48)
        mode = None if args.compile == "auto" else args.compile
        r = rollout_row(policy, tok, ip, device, args.prompts, args.group_size, new, px, mode)
        print_rollout_table(model_label(name, None), r, device)
        return r


def add_rollout_parser(sub) -> None:
    p = sub.add_parser("rollout", help="the decoder: ms per decode step, tokens/s, refresh, compile, HBM bound",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--group-size", type=int, default=5)
    p.add_argument("--new-tokens", type=int, default=0, help="0: 256 on a GPU, 48 on CPU")
    p.add_argument("--px", type=int, default=0, help="image side in pixels (0: 448 on a GPU, 112 on CPU)")
    p.add_argument("--compile", choices=("auto", "identity", "compile"), default="auto",
                   help="auto: as the stages (compiled on CUDA, eager on CPU); identity: CUDA's fixed shapes without "
                        "a compiler; compile: torch.compile on CPU too")
    p.add_argument("--threads", type=int, default=1, help="torch threads on CPU (timings are CPU time)")
    p.set_defaults(run=bench_rollout)


# ----------------------------------------------------------------------------- grpo
def grpo_setup(build, device, p: dict) -> dict:
    """What grpo.setup_run builds, from a model object: the policy (vision trained, checkpointing as
    p["act_ckpt"], FSDP2 on a GPU or with p["fsdp"]), the frozen reference (β > 0), the decoder (engine.Engine,
    all of its prompts in one call; p["mode"] as make_engine) and the grpo.Config of the work
    (p: prompts per rollout, group_size, updates per rollout, new_tokens, px, kl_coef)."""
    import grpo
    import vlm
    fsdp = p.get("fsdp", device.type == "cuda")
    model, tok, ip = build()
    policy, opt = trainable(model, device, True, p["act_ckpt"], fsdp)
    ref = reference(build()[0], device, fsdp) if p["kl_coef"] else None
    cfg = grpo.Config(data="bench", group_size=p["group_size"], rollout_batch_size=p["prompts"],
                      update_batch_size=p["prompts"] // p["updates"], max_new_tokens=p["new_tokens"],
                      kl_coef=p["kl_coef"], min_pixels=56 * 56, max_pixels=p["px"] ** 2)
    vlm.set_pixel_bounds(ip, cfg.min_pixels, cfg.max_pixels)
    eng = make_engine(policy, p["prompts"], p.get("mode"))
    return {"model": policy, "opt": opt, "ref": ref, "tok": tok, "ip": ip, "engine": eng, "cfg": cfg}


def grpo_step(s: dict, records: list, root, device) -> dict:
    """One GRPO step through grpo.py's own functions in grpo.train's order: refresh, rollout, score and advantages
    (generation); old log-probs (only with more than one update per rollout) and the reference's (log-probs);
    the updates. Per phase: wall seconds, CPU seconds (_cpu) and peak memory (_peak_gb); tokens as EasyR1 counts
    them for its throughput: every sequence's prompt + response tokens (seq_tokens)."""
    import time
    import grpo
    cfg, model, G = s["cfg"], s["model"], s["cfg"].group_size
    R, U = cfg.rollout_batch_size, cfg.update_batch_size
    marks, peaks = [], []

    def mark():
        if marks:
            peaks.append(peak_memory_gb(device))
        marks.append((clock(device, wall=True), time.process_time()))
        reset_peak_memory(device)
    mark()
    s["engine"].refresh(model)
    ro = grpo.rollout(s["engine"], records, root, s["tok"], s["ip"], cfg)
    adv = grpo.group_advantages(grpo.score(ro, s["tok"], cfg.partial_credit).rewards, G, eps=grpo.ADV_EPS)
    mark()
    old = grpo.rollout_logprobs(model, ro, cfg, device) if R > U else None
    ref = grpo.rollout_logprobs(s["ref"], ro, cfg, device) if s["ref"] is not None else None
    mark()
    ups = [grpo.update(model, s["opt"], ro, list(range(j * U, (j + 1) * U)), adv, old, ref, cfg, device)
           for j in range(R // U)]
    mark()
    out = {}
    for k, (a, b), peak in zip(("gen", "logprob", "update", "step"), list(zip(marks, marks[1:])) +
                               [(marks[0], marks[-1])], peaks + [max(peaks)]):
        out.update({k: b[0] - a[0], f"{k}_cpu": b[1] - a[1], f"{k}_peak_gb": peak})
    prompt = ro.prompts["attention_mask"].sum(1).repeat_interleave(G)
    return {**out, "new_tokens": int(ro.mask.sum()), "seq_tokens": int(prompt.sum() + ro.mask.sum()),
            "skipped": sum(u["skipped"] for u in ups)}


def grpo_bench_case(build, device, p: dict, steps: int, s: dict | None = None) -> dict:
    """Medians over `steps` GRPO steps after one warm-up step (compilation) on p["prompts"] synthetic one-image
    records with p["px"]² images; `s` a session from grpo_setup (made here when None). Phase seconds "t_*" are
    wall time on a GPU, CPU time on a CPU; tokens/s per GPU = prompt + response tokens / step seconds / ranks."""
    import tempfile
    import numpy as np
    import torch
    import sft
    s = s or grpo_setup(build, device, p)
    with tempfile.TemporaryDirectory() as tmp:
        records = sft.synthetic_records(Path(tmp), p["prompts"], p["px"])
        runs = []
        for i in range(steps + 1):
            torch.manual_seed(i)
            runs.append(grpo_step(s, records, Path(tmp), device))
    med = {k: float(np.median([r[k] for r in runs[1:]])) for k in runs[1]}
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    for k in ("gen", "logprob", "update", "step"):
        med[f"t_{k}"] = med[k] if device.type == "cuda" else med[f"{k}_cpu"]
    return {**med, "params_M": sum(q.numel() for q in s["model"].parameters()) / 1e6, "world": world,
            "tok_s_gpu": med["seq_tokens"] / med["t_step"] / world, "gen_tok_s": med["new_tokens"] / med["t_gen"]}


def grpo_cases(device, args) -> list:
    """(model name, text layers, work) per measured model: tiny and ~6M on CPU (the TRL comparison's work, plain
    fp32 as a one-process CPU run), the Qwen2.5-VL-3B shape on a GPU (fewer layers where its state does not fit)."""
    import torch
    work = dict(group_size=args.group_size, updates=args.updates, kl_coef=args.kl_coef, act_ckpt=args.act_ckpt)
    if device.type == "cuda":
        layers = fit_layers(torch.cuda.get_device_properties(device).total_memory, GRPO_BYTES_PER_PARAM)
        return [("3B", layers, dict(work, prompts=8 * args.updates, new_tokens=args.new_tokens or 256, px=448))]
    return [(name, None, dict(work, prompts=8 * args.updates, new_tokens=args.new_tokens or 48, px=112, fsdp=False))
            for name in SMALL_MODELS]


def run_grpo(args) -> None:
    import torch
    import common
    if args.vs_trl:
        return grpo_vs_trl(args)
    with common.dist_session(0):
        device = bench_device()
        if device.type == "cpu":
            torch.set_num_threads(args.threads or 1)
        where = "FSDP2 bf16 compute, wall time" if device.type == "cuda" else \
            f"{torch.get_num_threads()} thread(s), fp32, CPU time of this process"
        print(f"GRPO step (grpo.py's functions), {machine()}; {where}; β {args.kl_coef}, activation checkpointing "
              f"{'on' if args.act_ckpt else 'off'}, {args.updates} update(s) per rollout, median of {args.steps} "
              f"steps after 1 warm-up step; tokens/s per GPU = (prompt + response tokens) / step / GPUs (EasyR1)\n")
        print("| model | params | prompts × G | image px | max new tokens | generation s | log-probs s | update s | "
              "step s | tokens/step | tokens/s per GPU | generated tok/s | peak GB gen / lp / update |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for name, layers, p in grpo_cases(device, args):
            try:
                r = grpo_bench_case(model_builder(name, device, layers), device, p, args.steps)
            except torch.OutOfMemoryError:
                print(f"| {model_label(name, layers)} | out of memory |")
                continue
            finally:
                free_memory(device)
            print(f"| {model_label(name, layers)} | {r['params_M']:.1f}M | {p['prompts']} × {p['group_size']} | "
                  f"{p['px']}² | {p['new_tokens']} | {r['t_gen']:.3f} | {r['t_logprob']:.3f} | {r['t_update']:.3f} | "
                  f"{r['t_step']:.3f} | {r['seq_tokens']:,.0f} | {r['tok_s_gpu']:,.0f} | {r['gen_tok_s']:,.0f} | "
                  f"{r['gen_peak_gb']:.1f} / {r['logprob_peak_gb']:.1f} / {r['update_peak_gb']:.1f} |")
    print("\nTRL's GRPOTrainer on the same work, side by side: python dev/bench.py grpo --vs-trl --trl-python VENV/bin/python")


def add_grpo_parser(sub) -> None:
    p = sub.add_parser("grpo", help="GRPO step: generation / log-probs / update, tokens/s per GPU",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--steps", type=int, default=5, help="timed steps per model (after one warm-up step)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: one)")
    p.add_argument("--group-size", type=int, default=5, help="samples per prompt G")
    p.add_argument("--updates", type=int, default=1, help="optimizer steps per rollout of 8 × updates prompts (1 = "
                                                          "on-policy, the old log-prob pass skipped, as TRL's default)")
    p.add_argument("--kl-coef", type=float, default=0.01, help="β; > 0 adds the frozen reference's log-prob pass")
    p.add_argument("--act-ckpt", action=argparse.BooleanOptionalAction, default=True,
                   help="activation checkpointing of the trained layers (grpo.py's default: on)")
    p.add_argument("--new-tokens", type=int, default=0, help="max new tokens per step (0: 48 on CPU, 256 on a GPU)")
    p.add_argument("--vs-trl", action="store_true",
                   help="tiny model only, side by side with TRL's GRPOTrainer: steps alternate between grpo.py and "
                        "a TRL worker process (wall and CPU seconds per step, per phase)")
    p.add_argument("--trl-python", default=sys.executable,
                   help=f"--vs-trl: the Python of a venv with TRL ({TRL_PIN}) and the project's torch/transformers")
    p.add_argument("--prompts", type=int, default=64, help="--vs-trl: prompts, 8 per step, images 56²…112² px")
    p.set_defaults(run=run_grpo)


# ----------------------------------------------------------------------------- grpo vs TRL
TRL_PIN = "trl==1.16.0"
TRL_TAG = "@@trl "     # the worker's result lines on stdout (transformers may print there too)
VS_TRL_SIDES = (56, 70, 84, 98, 112)    # image sides the prompts cycle through (3,136 … 12,544 px)


def trl_inputs(args, dataset_cls) -> tuple:
    """(processor, dataset) for TRL's side of --vs-trl: Qwen2.5-VL's processor without its video processor
    (which needs torchvision, not a dependency) and one row per prompt (chat prompt, answer, task, image)."""
    from transformers import AutoImageProcessor, AutoTokenizer, Qwen2_5_VLProcessor
    from transformers.processing_utils import ProcessorMixin
    import common
    import records
    import vlm

    class ImageOnlyProcessor(Qwen2_5_VLProcessor):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    tok = AutoTokenizer.from_pretrained(args.model_dir)
    ip = AutoImageProcessor.from_pretrained(args.model_dir, backend="pil")
    vlm.set_pixel_bounds(ip, args.min_pixels, args.max_pixels)
    processor = ImageOnlyProcessor(image_processor=ip, tokenizer=tok, chat_template=tok.chat_template)
    rows, root = common.read_jsonl(args.data), Path(args.data).parent
    data = dataset_cls.from_list([{"prompt": vlm.build_messages(r["problem"]), "answer": r["answer"],
                                   "task": r["task"], "image": records.load_images(r, root)[0]} for r in rows])
    return processor, data


def trl_reward(prompts, completions, answer, task, **kw) -> list:
    """TRL's reward function: grpo.score's 0.9·accuracy + 0.1·format (tasks.reward_terms)."""
    import tasks
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [tasks.reward_terms(t, str(a), k)[0] for t, a, k in zip(texts, answer, task)]


def trl_config(trl, args, tok):
    """GRPOConfig doing grpo.py's work (README, Performance: the settings and what differs)."""
    import torch
    import vlm
    return trl.GRPOConfig(
        output_dir=args.out_dir, per_device_train_batch_size=args.prompts_per_step * args.group_size,
        num_generations=args.group_size, gradient_accumulation_steps=1, steps_per_generation=1, num_iterations=1,
        max_completion_length=args.new_tokens, temperature=1.0, top_p=1.0, top_k=0, beta=args.kl_coef,
        learning_rate=1e-6, weight_decay=0.01, lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0,
        epsilon=0.2, epsilon_high=0.3, loss_type="dapo", scale_rewards="group", gradient_checkpointing=args.act_ckpt,
        bf16=False, use_cpu=True, max_steps=args.steps, logging_steps=10**6, save_strategy="no", report_to="none",
        disable_tqdm=True, seed=0, dataloader_num_workers=0, model_init_kwargs={"dtype": torch.float32},
        generation_kwargs={"suppress_tokens": tok.convert_tokens_to_ids(list(vlm.VISION_TOKENS))})


def timed_trainer(trl, t: dict):
    """TRL's GRPOTrainer with its phases timed into t (wall and CPU seconds): "prepare" =
    _generate_and_score_completions (prompt processing, generate, rewards, advantages and the no-grad log-prob
    passes), "logprob" = those no-grad passes (the reference; old log-probs are skipped with one iteration per
    generation)."""
    import time
    import torch

    def add(key: str, t0: tuple) -> None:
        t[key] = t.get(key, 0.0) + time.perf_counter() - t0[0]
        t[key + "_cpu"] = t.get(key + "_cpu", 0.0) + time.process_time() - t0[1]

    class Timed(trl.GRPOTrainer):
        def _generate_and_score_completions(self, inputs):
            t0 = (time.perf_counter(), time.process_time())
            out = super()._generate_and_score_completions(inputs)
            add("prepare", t0)
            t["new_tokens"] = int(out["completion_mask"].sum())
            return out

        def _get_per_token_logps_and_entropies(self, *a, **k):
            t0 = (time.perf_counter(), time.process_time())
            out = super()._get_per_token_logps_and_entropies(*a, **k)
            if not torch.is_grad_enabled():
                add("logprob", t0)
            return out
    return Timed


def trl_worker(args) -> None:
    """TRL's side of --vs-trl (runs under --trl-python): GRPOTrainer on the tiny model saved in --model-dir,
    one optimizer step per "go" line on stdin; after each, one JSON line on stdout (TRL_TAG + wall and CPU
    seconds of the step and of its phases, grpo_step's keys). Phases: generation = the prepare phase minus its
    no-grad log-prob passes, log-probs = those passes, update = the rest of the step (timed_trainer)."""
    import json
    import os
    import time
    import torch
    torch.set_num_threads(args.threads)
    try:
        import trl
        from datasets import Dataset
    except ImportError as e:
        error = (f"no TRL in {sys.executable} ({e}): create a separate venv with the project's requirements and "
                 f"`pip install {TRL_PIN}`, then pass --trl-python VENV/bin/python (dev/performance.md)")
        print(TRL_TAG + json.dumps({"error": error}), flush=True)
        return
    from transformers import TrainerCallback
    processor, data = trl_inputs(args, Dataset)
    t, clock0 = {}, {}

    def go() -> None:
        if sys.stdin.readline().strip() != "go":
            os._exit(0)                      # "stop" or the parent is gone: no final save
        t.clear()
        clock0.update(wall=time.perf_counter(), cpu=time.process_time())

    class Lockstep(TrainerCallback):
        def on_train_begin(self, *a, **k):
            print(TRL_TAG + json.dumps({"ready": True, "trl": trl.__version__}), flush=True)
            go()

        def on_step_end(self, *a, **k):
            wall, cpu = time.perf_counter() - clock0["wall"], time.process_time() - clock0["cpu"]
            g = lambda k: t.get(k, 0.0)      # noqa: E731
            print(TRL_TAG + json.dumps({"step": wall, "step_cpu": cpu, "gen": g("prepare") - g("logprob"),
                                        "gen_cpu": g("prepare_cpu") - g("logprob_cpu"), "logprob": g("logprob"),
                                        "logprob_cpu": g("logprob_cpu"), "update": wall - g("prepare"),
                                        "update_cpu": cpu - g("prepare_cpu"), "new_tokens": t.get("new_tokens", 0)}),
                  flush=True)
            go()

    timed_trainer(trl, t)(model=args.model_dir, reward_funcs=trl_reward, args=trl_config(trl, args, processor.tokenizer),
                          train_dataset=data, processing_class=processor, callbacks=[Lockstep()]).train()


def start_trl_worker(args, tmp: str, threads: int, P: int, G: int, new: int) -> tuple:
    """The TRL worker process (trl-worker under --trl-python) on the tiny model and prompts saved in tmp, and
    a function reading its next JSON message (an error message from it ends the benchmark with one line)."""
    import json
    import os
    import subprocess
    cmd = [args.trl_python, str(HERE / "bench.py"), "trl-worker", "--model-dir", f"{tmp}/model", "--data",
           f"{tmp}/train.jsonl", "--out-dir", f"{tmp}/trl", "--steps", str(args.steps + 1), "--threads",
           str(threads), "--group-size", str(G), "--new-tokens", str(new), "--kl-coef", str(args.kl_coef),
           "--prompts-per-step", str(P), "--min-pixels", str(56 * 56), "--max-pixels", str(112 * 112)] \
        + ([] if args.act_ckpt else ["--no-act-ckpt"])
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false",
           "PYTHONWARNINGS": "ignore::FutureWarning", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    worker = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=HERE)

    def trl_line() -> dict:
        for line in worker.stdout:
            if line.startswith(TRL_TAG):
                msg = json.loads(line[len(TRL_TAG):])
                if "error" in msg:
                    raise SystemExit(f"bench.py grpo --vs-trl: {msg['error']}")
                return msg
        raise SystemExit(f"bench.py grpo --vs-trl: the TRL worker ({args.trl_python}) exited with code "
                         f"{worker.wait()} (its error is above)")
    return worker, trl_line


def print_vs_trl(args, trl_version: str, ours: list, theirs: list, threads: int, P: int, G: int, new: int) -> None:
    """The --vs-trl table: medians (after the warm-up step) of each phase, wall and CPU seconds, and the ratios."""
    import os
    import numpy as np
    med = lambda runs, k: float(np.median([r[k] for r in runs[1:]]))     # noqa: E731
    print(f"GRPO step, grpo.py vs TRL {trl_version} GRPOTrainer, alternating steps in one run; {machine()}; "
          f"{threads} thread(s) each, fp32; tiny Qwen2.5-VL (same weights), {P} prompts × G {G} per step from "
          f"{args.prompts}, images 56²…112² px, ≤ {new} new tokens, β {args.kl_coef}, lr 1e-6, one update per "
          f"rollout, activation checkpointing {'on' if args.act_ckpt else 'off'}; median of {args.steps} steps "
          f"after 1 warm-up step each; load average {os.getloadavg()[0]:.1f} at the end\n")
    print("| trainer | generation s (wall / CPU) | log-probs s (wall / CPU) | update s (wall / CPU) | step s (wall) | "
          "CPU s/step | new tokens/step |")
    print("|---|---|---|---|---|---|---|")
    for name, runs in (("grpo.py", ours), (f"TRL {trl_version}", theirs)):
        phases = " | ".join(f"{med(runs, k):.3f} / {med(runs, k + '_cpu'):.3f}" for k in ("gen", "logprob", "update"))
        print(f"| {name} | {phases} | {med(runs, 'step'):.3f} | {med(runs, 'step_cpu'):.3f} | "
              f"{med(runs, 'new_tokens'):.0f} |")
    print(f"\ngrpo.py is {med(theirs, 'step') / med(ours, 'step'):.2f}× TRL's speed in wall time, "
          f"{med(theirs, 'step_cpu') / med(ours, 'step_cpu'):.2f}× in CPU time")


def grpo_vs_trl(args) -> None:
    """grpo.py and TRL's GRPOTrainer on the same work, alternating steps in one run (so both see the same machine
    load): the tiny Qwen2.5-VL (same weights, saved for TRL), args.prompts prompts 8 per step, G, 48 new tokens,
    β, lr 1e-6, one update per rollout, both fp32 on CPU with args.threads threads (1 when 0). Prints medians
    of wall and CPU seconds per phase over args.steps steps after one warm-up step each."""
    import tempfile
    import torch
    from transformers.utils import logging as hf_logging
    import common
    import sft
    import vlm
    threads = args.threads or 1
    torch.set_num_threads(threads)
    device, P, G, new = torch.device("cpu"), 8, args.group_size, args.new_tokens or 48
    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        vlm.build_tiny("tiny", out_dir=f"{tmp}/model")
        records = sft.synthetic_records(Path(tmp), args.prompts, VS_TRL_SIDES)   # one-image flip prompts
        common.rewrite_jsonl(f"{tmp}/train.jsonl", records)
        worker, trl_line = start_trl_worker(args, tmp, threads, P, G, new)
        try:
            info = trl_line()
            s = grpo_setup(model_builder("tiny", device), device, dict(
                prompts=P, group_size=G, updates=1, new_tokens=new, px=112, kl_coef=args.kl_coef,
                act_ckpt=args.act_ckpt, fsdp=False))
            ours, theirs = [], []
            for i in range(args.steps + 1):
                torch.manual_seed(i)
                ours.append(grpo_step(s, [records[(i * P + j) % len(records)] for j in range(P)], Path(tmp), device))
                worker.stdin.write("go\n")
                worker.stdin.flush()
                theirs.append(trl_line())
            worker.stdin.write("stop\n")
            worker.stdin.flush()
        finally:
            try:
                worker.stdin.close()
            except OSError:
                pass
            worker.wait(timeout=60)
    print_vs_trl(args, info["trl"], ours, theirs, threads, P, G, new)


def add_trl_worker_parser(sub) -> None:
    p = sub.add_parser("trl-worker", help="(internal) TRL's side of bench.py grpo --vs-trl")
    for name, typ, default in (("model-dir", str, ""), ("data", str, ""), ("out-dir", str, ""), ("steps", int, 6),
                               ("threads", int, 1), ("group-size", int, 5), ("new-tokens", int, 48),
                               ("kl-coef", float, 0.01), ("prompts-per-step", int, 8), ("min-pixels", int, 3136),
                               ("max-pixels", int, 12544)):
        p.add_argument(f"--{name}", type=typ, default=default)
    p.add_argument("--act-ckpt", action=argparse.BooleanOptionalAction, default=True)
    p.set_defaults(run=trl_worker)


# ----------------------------------------------------------------------------- eval
def eval_cases(device) -> list:
    """(name, build() -> (model, tok, ip) on the device in the evaluation dtype, items, batch size, image px, new
    tokens) per measured setup: tiny everywhere, the 3B shape in bf16 on a GPU."""
    import torch
    cases = [("tiny", lambda: model_builder("tiny", device)(), 32, 8, 224, 64)]
    if device.type == "cuda":
        def build():
            model, tok, ip = model_builder("3B", device)()
            return model.to(torch.bfloat16), tok, ip
        cases.append((model_label("3B", None), build, 64, 16, 448, 256))
    return cases


def eval_throughput(model, tok, ip, n_items: int, batch_size: int, px: int, new_tokens: int) -> dict:
    """Greedy evaluation as evaluate.py runs it (evaluate.answer_batch: images read, prompts encoded, the decoder,
    answers scored) over n_items synthetic one-image pretext questions, batch_size per call: items/s and generated
    tokens/s. One warm-up batch first (compilation on a GPU is not timed)."""
    import tempfile
    import benchmarks
    import common
    import engine
    import evaluate as ev
    import sft
    import vlm
    device = next(model.parameters()).device
    vlm.set_pixel_bounds(ip, 56 * 56, px * px)
    eng = engine.Engine(model.eval(), prompts_per_call=batch_size)     # evaluate.py's decoder (in place)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "test.jsonl"
        common.rewrite_jsonl(path, sft.synthetic_records(Path(tmp), batch_size, px))
        cfg = ev.Config(model="bench", data=[f"pretext={path}"], max_new_tokens=new_tokens, batch_size=batch_size,
                        plot=False, progress=False)
        items = benchmarks.load_bench("pretext", str(path), cfg.options())
        ev.answer_batch("pretext", items, eng, tok, ip, cfg)
        reset_peak_memory(device)
        rounds, tokens, t0 = -(-n_items // batch_size), 0, clock(device)
        for _ in range(rounds):
            tokens += ev.answer_batch("pretext", items, eng, tok, ip, cfg)[1]
        dt = clock(device) - t0
    n = rounds * batch_size
    return {"items_s": n / dt, "tok_s": tokens / dt, "new_per_item": tokens / n, "peak_gb": peak_memory_gb(device),
            "compiled": eng.compile}


def run_eval(args) -> None:
    import torch
    device = bench_device()
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    times = "wall time" if device.type == "cuda" else f"CPU time of this process, {torch.get_num_threads()} thread(s)"
    print(f"Greedy evaluation throughput (evaluate.answer_batch), {machine()}; {times}\n")
    print("| model | decoder | batch | image px | new tokens/item | items/s | generated tokens/s | peak GB |")
    print("|---|---|---|---|---|---|---|---|")
    for name, build, n, bs, px, new in eval_cases(device):
        model, tok, ip = build()
        r = eval_throughput(model.to(device), tok, ip, args.items or n, bs, px, new)
        print(f"| {name} | {'compiled' if r['compiled'] else 'eager'} | {bs} | {px}² | {r['new_per_item']:.0f} | "
              f"{r['items_s']:.2f} | {r['tok_s']:.0f} | {r['peak_gb']:.1f} |")
        del model
        free_memory(device)


def add_eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="greedy evaluation throughput (tiny on CPU; + the 3B shape on a GPU)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--items", type=int, default=0, help="items per setup (0: 32 tiny, 64 for the 3B shape)")
    p.add_argument("--threads", type=int, default=1, help="torch threads on CPU (timings are CPU time)")
    p.set_defaults(run=run_eval)


# ----------------------------------------------------------------------------- gpu: one command for a new machine
GPU_TARGETS = {"sft_mfu": 0.35, "vision_ratio": 1.4, "decode_bound": 2.0, "grpo_tok_s": 3600.0, "minutes": 8}


def gpu_plan(device, args) -> dict:
    """What `bench.py gpu` measures. GPU: the 3B shape with the most text layers whose state fits the card
    (fit_layers, for SFT and for GRPO), one SFT micro-batch of 18 records with 512² px images (~8.5k tokens),
    rollouts and GRPO steps of 8 prompts × G 5 with 448² px images and ≤ 256 new tokens, 2 updates per rollout
    (the paper's 256 / 128 prompts, so the old log-prob pass runs), β 0.01, activation checkpointing (the stages'
    defaults). --dry-run: the same code on CPU with the tiny model at tiny sizes, FSDP2 on one gloo rank, the
    decoder's fixed shapes with torch.compile replaced by the identity."""
    import torch
    grpo = dict(prompts=8, group_size=5, updates=2, kl_coef=0.01, act_ckpt=True, fsdp=True)
    if args.dry_run:
        return {"sft": dict(model="tiny", layers=None, records=4, px=112, steps=1),
                "grpo": dict(grpo, model="tiny", layers=None, new_tokens=16, px=56, steps=1, mode="identity")}
    total = torch.cuda.get_device_properties(device).total_memory
    return {"sft": dict(model="3B", layers=fit_layers(total, SFT_BYTES_PER_PARAM), records=18, px=512,
                        steps=args.sft_steps),
            "grpo": dict(grpo, model="3B", layers=fit_layers(total, GRPO_BYTES_PER_PARAM), new_tokens=256, px=448,
                         steps=args.grpo_steps)}


def gpu_sft(p: dict, device) -> dict:
    """The SFT step with the vision tower frozen and trained (activation checkpointing on, as sft.py and grpo.py)."""
    import vlm
    build = model_builder(p["model"], device, p["layers"])
    batch = synthetic_batch(*vlm.build_tiny("tiny")[1:], p["records"], p["px"], p["px"] ** 2)
    rows = {tv: sft_step_row(lambda: build()[0], batch, device, tv, True, p["steps"], fsdp=True) for tv in (False, True)}
    return {"frozen": rows[False], "trained": rows[True], "tokens": int(batch["attention_mask"].sum())}


def gpu_grpo(p: dict, device) -> tuple:
    """(rollout_row, grpo_bench_case) of one GRPO session: the decoder measured first (its first call compiles),
    then the GRPO steps on the same policy, reference and decoder. (None, None) when it runs out of memory."""
    import torch
    build = model_builder(p["model"], device, p["layers"])
    try:
        s = grpo_setup(build, device, p)
        ro = rollout_row(s["model"], s["tok"], s["ip"], device, p["prompts"], p["group_size"], p["new_tokens"],
                         p["px"], eng=s["engine"])
        return ro, grpo_bench_case(build, device, p, p["steps"], s)
    except torch.OutOfMemoryError:
        return None, None


def verdict(ok, dry: bool) -> str:
    return "n/a (dry run)" if dry else "n/a" if ok is None else "met" if ok else "**not met**"


def precision(dry: bool) -> str:
    return "FSDP2 fp32 (one gloo rank)" if dry else "FSDP2 bf16 compute (one NCCL rank)"


def gpu_sft_rows(r: dict, p: dict, dry: bool) -> list:
    """Table rows (check, measured, target, verdict, setup) of the SFT steps."""
    f, t = r["frozen"], r["trained"]

    def measured(x):
        mfu = f"{x['mfu']:.1%}" if x["mfu"] is not None else "n/a"
        return "out of memory" if x["oom"] else \
            f"{x['step_s']:.3f} s, {x['tok_per_s']:,.0f} tokens/s, MFU {mfu}, peak {x['peak_gb']:.1f} GiB"
    ratio = t["step_s"] / f["step_s"] if not (f["oom"] or t["oom"]) else None
    setup = (f"{model_label(p['model'], p['layers'])}, {p['records']} records = {r['tokens']:,} tokens, {p['px']}² px "
             f"images, activation checkpointing, {precision(dry)}, AdamW; median of {p['steps']} step(s) after 2 warm-up")
    mfu_ok = f["mfu"] >= GPU_TARGETS["sft_mfu"] if f["mfu"] is not None else None
    return [("SFT step, vision frozen", measured(f), f"MFU ≥ {GPU_TARGETS['sft_mfu']:.0%}", verdict(mfu_ok, dry), setup),
            ("SFT step, vision trained", measured(t) + (f"; {ratio:.2f}× the frozen step" if ratio else ""),
             f"≤ {GPU_TARGETS['vision_ratio']}× the frozen step", verdict(ratio <= GPU_TARGETS["vision_ratio"]
                                                                          if ratio else None, dry),
             "the same model and batch, the vision blocks trained and checkpointed too")]


def gpu_rollout_rows(r: dict | None, p: dict, dry: bool) -> list:
    """Table rows of the decoder: ms per decode step against the HBM bound, refresh, compile, recompilation."""
    work = f"{p['prompts']} prompts × G {p['group_size']} = {p['prompts'] * p['group_size']} sequences, ≤ " \
           f"{p['new_tokens']} sampled tokens, {p['px']}² px images, {model_label(p['model'], p['layers'])}"
    if r is None:
        return [("rollout decode", "out of memory", "", "", work)]
    bound = f"≤ {GPU_TARGETS['decode_bound']:.0f}× the HBM bound" + (
        f" {r['bound_ms']:.2f} ms ({r['weight_gb']:.2f} GB of weights / {r['bandwidth'] / 1e12:.2f} TB/s)"
        if r["bound_ms"] else " (no bound on CPU)")
    ok = r["ms_per_step"] <= GPU_TARGETS["decode_bound"] * r["bound_ms"] if r["bound_ms"] else None
    times = f"; {r['ms_per_step'] / r['bound_ms']:.1f}× the bound" if r["bound_ms"] else ""
    kv = f"; the bound with the KV cache ({r['kv_gb']:.2f} GB) read too: {r['bound_kv_ms']:.2f} ms" \
        if r["bound_kv_ms"] else ""
    how = "bf16 copy of the FSDP2 policy, compiled step" if r["compiled"] and not dry else \
        "copy of the FSDP2 policy, fixed shapes, torch.compile replaced by the identity" if dry else "eager"
    compile_ok = r["new_graphs"] == 0 if r["compiled"] and not dry else None
    return [("rollout decode", f"{r['ms_per_step']:.2f} ms per step, {r['tok_per_s']:,.0f} tokens/s ({r['steps']} "
             f"steps){times}", bound, verdict(ok, dry), f"{work}; {how}; prefill amortised{kv}"),
            ("rollout refresh / compile", f"refresh {r['refresh_s']:.3f} s; first call {r['first_s']:.1f} s (compile "
             f"≈ {r['compile_s']:.1f} s, {r['graphs']} graph(s)); {r['new_graphs']} new graph(s) after the warm-up",
             "no new graph after the warm-up", verdict(compile_ok, dry),
             "refresh = the copy gathered from the shards again; then a call with other prompt lengths and one "
             "prompt fewer (a filler prompt)")]


def gpu_grpo_rows(r: dict | None, p: dict, dry: bool) -> list:
    """Table rows of the GRPO step: its three phases with their peak memory, then tokens/s per GPU."""
    u = p["prompts"] // p["updates"]
    setup = (f"{model_label(p['model'], p['layers'])}, {p['prompts']} prompts × G {p['group_size']}, ≤ "
             f"{p['new_tokens']} new tokens, {p['px']}² px, {p['updates']} updates of {u} prompts, β {p['kl_coef']}, "
             f"vision trained, activation checkpointing, {precision(dry)}; median of {p['steps']} step(s) after 1 warm-up")
    if r is None:
        return [("GRPO step", "out of memory", "", "", setup)]
    target = GPU_TARGETS["grpo_tok_s"]
    return [("GRPO generation", f"{r['t_gen']:.3f} s, peak {r['gen_peak_gb']:.1f} GiB", "", "",
             "refresh + rollout (encode, decode) + rewards + advantages"),
            ("GRPO log-probs", f"{r['t_logprob']:.3f} s, peak {r['logprob_peak_gb']:.1f} GiB", "", "",
             "old (more than one update per rollout) + reference, vlm.group_logprobs"),
            ("GRPO update", f"{r['t_update']:.3f} s, peak {r['update_peak_gb']:.1f} GiB", "", "",
             f"{p['updates']} optimizer steps (grpo.update)"),
            ("GRPO step, tokens/s per GPU", f"{r['t_step']:.3f} s, {r['seq_tokens']:,.0f} tokens (prompt + response) "
             f"→ {r['tok_s_gpu']:,.0f} tokens/s per GPU", f"≥ {target:,.0f} (2× EasyR1's 1,800, Qwen2.5-VL-3B, 8×H100)",
             verdict(r["tok_s_gpu"] >= target, dry), setup)]


def git_commit() -> tuple:
    """(short commit, whether tracked files differ from it) of this checkout; ('unknown', False) outside git."""
    import subprocess
    try:
        def git(*a):
            return subprocess.run(["git", *a], cwd=HERE, capture_output=True, text=True, timeout=30).stdout.strip()
        return git("rev-parse", "--short", "HEAD") or "unknown", bool(git("status", "--porcelain", "-uno"))
    except (OSError, subprocess.SubprocessError):
        return "unknown", False


def gpu_header_rows(device, args, tests: tuple) -> list:
    """The rows naming the card, the commit, the command and the outcome of test_gpu.py."""
    import torch
    commit, dirty = git_commit()
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        card = f"{props.name}, {props.total_memory / 2**30:.1f} GiB"
    else:
        card = f"none (dry run on CPU: {machine()})"
    return [("card", card, "", "", f"torch {torch.__version__}, CUDA {torch.version.cuda}"),
            ("commit", commit + (" + uncommitted changes" if dirty else ""), "", "", ""),
            ("command", f"`{args.command}`", "", "", ""),
            ("test_gpu.py", tests[0], "all pass", "n/a (no CUDA: skipped)" if args.dry_run else verdict(tests[1], False),
             "`python -m pytest -q test_gpu.py`")]


def markdown_table(rows: list) -> str:
    cells = lambda r: "| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |"   # noqa: E731
    return "\n".join([cells(("check", "measured", "target", "verdict", "setup")), "|---|---|---|---|---|"]
                     + [cells(r) for r in rows]) + "\n"


def run_gpu_tests(args) -> tuple:
    """`python -m pytest -q test_gpu.py`, its output streamed; bench.py gpu stops when it fails. --dry-run hides the
    GPUs (CUDA_VISIBLE_DEVICES=""), so the module reports itself skipped. Returns (summary line, passed or None)."""
    import os
    import subprocess
    if args.skip_tests:
        return "not run (--skip-tests)", None
    env = {k: v for k, v in os.environ.items() if k not in ("SPATIAL_SSRL_DEVICE", "SPATIAL_SSRL_GPU_TWIN")}
    if args.dry_run:
        env["CUDA_VISIBLE_DEVICES"] = ""
    print("$ python -m pytest -q test_gpu.py", flush=True)
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "test_gpu.py"], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    last = ""
    for line in proc.stdout:
        print(line, end="", flush=True)
        last = line.strip().strip("=").strip() or last
    rc = proc.wait()
    if rc != 0 and not (args.dry_run and rc == 5):      # 5: nothing ran (the module skips itself without CUDA)
        raise SystemExit(f"bench.py gpu: test_gpu.py did not pass ({last}, exit {rc}); nothing was measured")
    return last, "passed" in last and "failed" not in last and "error" not in last


def run_gpu(args) -> Path:
    """pytest test_gpu.py, then the SFT, rollout and GRPO measurements (gpu_plan), then ONE markdown table of them
    against the targets, printed and written to --out/<card>-<commit>.md."""
    import os
    import re
    import time
    import common
    t0 = time.perf_counter()
    if args.dry_run:
        os.environ["SPATIAL_SSRL_DEVICE"] = "cpu"
    device = bench_device()
    if device.type != "cuda" and not args.dry_run:
        raise SystemExit("bench.py gpu: no CUDA GPU visible here; on a CPU run `python dev/bench.py gpu --dry-run`")
    tests = run_gpu_tests(args)
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    with common.dist_session(0):
        plan = gpu_plan(device, args)
        sft = gpu_sft(plan["sft"], device)
        free_memory(device)
        ro, gr = gpu_grpo(plan["grpo"], device)
    minutes = (time.perf_counter() - t0) / 60
    rows = gpu_header_rows(device, args, tests) + gpu_sft_rows(sft, plan["sft"], args.dry_run) \
        + gpu_rollout_rows(ro, plan["grpo"], args.dry_run) + gpu_grpo_rows(gr, plan["grpo"], args.dry_run) \
        + [("wall time of this command", f"{minutes:.1f} min", f"≤ {GPU_TARGETS['minutes']} min on one H100 / H200",
            verdict(minutes <= GPU_TARGETS["minutes"], args.dry_run), "")]
    table = markdown_table(rows)
    card = "cpu-dry-run" if args.dry_run else re.sub(r"[^a-z0-9]+", "-", rows[0][1].split(",")[0].lower()).strip("-")
    path = Path(args.out) / f"{card}-{git_commit()[0]}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(table)
    print("\n" + table + f"\nwrote {path}")
    return path


def add_gpu_parser(sub) -> None:
    p = sub.add_parser("gpu", help="a new GPU machine: pytest test_gpu.py, then one table against the targets",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="the same script on CPU with the tiny model (CI)")
    p.add_argument("--out", default="runs/bench-gpu", help="folder of the table file <card>-<commit>.md")
    p.add_argument("--skip-tests", action="store_true", help="do not run test_gpu.py first (the table says so)")
    p.add_argument("--sft-steps", type=int, default=3, help="timed SFT steps per row (after 2 warm-up steps)")
    p.add_argument("--grpo-steps", type=int, default=2, help="timed GRPO steps (after 1 warm-up step)")
    p.set_defaults(run=run_gpu)


# ----------------------------------------------------------------------------- main
def main(argv: list | None = None) -> None:
    import shlex
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="stage", required=True)
    for add_parser in (add_data_parser, add_sft_parser, add_rollout_parser, add_grpo_parser, add_eval_parser,
                       add_gpu_parser, add_trl_worker_parser):   # one add_<stage>_parser(sub) per section, stage order
        add_parser(sub)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    args.command = "python dev/bench.py " + " ".join(shlex.quote(a) for a in argv)
    args.run(args)


if __name__ == "__main__":
    main(sys.argv[1:])
