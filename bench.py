"""Every benchmark table of Spatial-SSRL, one subcommand per stage; each prints the markdown table README.md shows.

    python bench.py data     # pretext generators (ms/sample at 1024x768), scene renders/s, builder throughput
    python bench.py sft      # SFT step: time, tokens/s, MFU, peak memory (tiny, ~6M on CPU; 3B shape on a GPU)
    python bench.py rollout  # rollout decode speed: engine.generate on FSDP2 vs engine.RolloutEngine (3B shape on a GPU)
    python bench.py grpo     # GRPO step split into generation / log-probs / update (+ rollout paths on a GPU)
    python bench.py grpo --vs-trl --trl-python VENV/bin/python   # the same step side by side with TRL's GRPOTrainer
    python bench.py eval     # greedy evaluation throughput

The stage scripts hold only their stage; the timing code lives here. Speed targets are benchmarks, not tests.
"""
import argparse
import platform
import sys


def machine() -> str:
    """One line naming the machine: CPU model and cores, or the GPU."""
    import torch
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import os
    return f"{cpu}, {os.cpu_count()} cores (torch {torch.__version__}, CPU)"


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
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}   # dense bf16 tensor-core peak per GPU
SMALL_MODELS = (("tiny", {}), ("~6M", dict(hidden=256, layers=4, heads=4, vision_hidden=128, vision_depth=4,
                                           ffn_mult=4)))


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


def clock(device, wall: bool = False) -> float:
    """Seconds for timing: wall time on a GPU (after a synchronize), this process's CPU time on a CPU (the
    CPU benchmarks run on one thread, so a busy machine still measures one core's work); wall=True: wall
    time on both."""
    import time
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() if device.type == "cuda" or wall else time.process_time()


def peak_flops(device) -> float | None:
    """Dense bf16 peak of this GPU from PEAK_BF16_FLOPS (None on CPU or an unlisted GPU: no MFU)."""
    import torch
    if device.type != "cuda":
        return None
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in torch.cuda.get_device_name(device)), None)


def peak_memory_gb(device) -> float:
    """Peak allocated GPU memory, or on CPU the process's max RSS so far (it never decreases)."""
    import resource
    import torch
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def sft_step_row(build, batch: dict, device, train_vision: bool, ckpt: bool, steps: int) -> dict:
    """Median SFT step (train_step, AdamW) of a freshly built model: time, tokens/s, MFU, peak memory.
    On a GPU the model is FSDP2-sharded with bf16 compute as in training; on CPU it stays plain fp32."""
    import numpy as np
    import torch
    import sft
    import vlm
    model = build()
    vlm.fast_vision_attention(model)                  # as vlm.load_model installs it
    if not train_vision:
        vlm.freeze_vision(model)
    if ckpt:
        vlm.enable_activation_checkpointing(model)
    model.train()
    flops = sft_step_flops(model, batch, train_vision)
    model = vlm.shard_model(model, device) if device.type == "cuda" else model.to(device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, m = [], {}
    try:
        for i in range(steps + 2):                                  # two warm-up steps
            t0 = clock(device)
            m = sft.train_step(model, opt, [batch], 1e-5, 1.0, device)
            times.append(clock(device) - t0)
    except torch.OutOfMemoryError:
        return {"step_s": float("nan"), "tok_per_s": float("nan"), "mfu": None, "peak_gb": float("nan"), "oom": True}
    finally:
        del model, opt
        if device.type == "cuda":
            torch.cuda.empty_cache()
    dt = float(np.median(times[2:]))
    peak = peak_flops(device)
    return {"step_s": dt, "tok_per_s": m["tokens"] / dt, "mfu": flops / dt / peak if peak else None,
            "peak_gb": peak_memory_gb(device), "oom": False}


def synthetic_batch(tok, ip, n: int, px: int, max_pixels: int):
    """An SFT micro-batch of n synthetic records (random-noise px² images), encoded as in training."""
    import tempfile
    from pathlib import Path
    import sft
    ip.size = {"shortest_edge": 56 * 56, "longest_edge": max_pixels}
    with tempfile.TemporaryDirectory() as tmp:
        records = sft.synthetic_records(Path(tmp), n, px)
        return sft.encode_records(records, Path(tmp), tok, ip)


def sft_cases(device, args) -> list:
    """(model name, build(), tok, ip, records, image px, [(train_vision, ckpt), ...]) per measured model."""
    import vlm
    tok, ip = vlm.build_tiny("tiny")[1:]
    if device.type == "cuda":
        build = lambda: vlm.build_qwen25_vl_shape(vlm.QWEN25_VL_3B_SHAPE, "cuda")
        settings = [(False, False), (False, True), (True, True), (True, False)]
        return [("Qwen2.5-VL-3B shape", build, tok, ip, args.gpu_records, 512, settings)]
    settings = [(False, False), (False, True), (True, True)]
    return [(name, lambda kw=kw: vlm.build_tiny("tiny", **kw)[0], tok, ip, args.records, args.px, settings)
            for name, kw in SMALL_MODELS]


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
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def bench_sft(args) -> list:
    """SFT step table (frozen / trained vision, with / without activation checkpointing) and the vision
    attention table. CPU: tiny and ~6M fp32; GPU: the Qwen2.5-VL-3B shape, FSDP2 bf16, one micro-batch of
    ≥ 8k tokens."""
    import torch
    import common
    device = torch.device("cuda" if common.use_cuda() else "cpu")
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
    if args.rollout:
        rollout_comparison(device)
    return rows


def print_sft_table(rows: list) -> None:
    """Markdown table; the ratios are the targets' terms: checkpointing cost (vs the same vision setting
    without it) and training the vision tower (vs frozen with the same checkpointing)."""
    step = {(r["vision"], r["ckpt"]): r["step_s"] for r in rows if not r["oom"]}
    ratio = lambda a, b: f"{step[a] / step[b]:.2f}" if a in step and b in step else "n/a"
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
    p.add_argument("--rollout", action="store_true", help="then also the rollout comparison (bench.py rollout)")
    p.add_argument("--threads", type=int, default=1, help="torch threads on CPU (timings are CPU time)")
    p.set_defaults(run=bench_sft)


def rollout_comparison(device=None, prompts: int = 8, group_size: int = 5, new_tokens: int = 256,
                       px: int = 448) -> list:
    """Rollout speed of engine.generate on the FSDP2 model vs engine.RolloutEngine on the same batch: prompts ×
    group_size sampled sequences of up to new_tokens (temperature 1; random weights rarely emit <|im_end|>,
    and a batch decodes until its last row ends). GPU: the Qwen2.5-VL-3B shape; CPU: the tiny model.
    Returns rows with ms per decode step, generated tokens/s (completion tokens up to <|im_end|>), and the
    fast path's gather (refresh) and first-call (compile) seconds. Each path gets one warm-up call."""
    import numpy as np
    import torch
    from PIL import Image
    import common
    import engine
    import vlm
    device = device or torch.device("cuda" if common.use_cuda() else "cpu")
    cuda = device.type == "cuda"
    model, tok, ip = (vlm.build_qwen25_vl_shape(vlm.QWEN25_VL_3B_SHAPE, "cuda"), *vlm.build_tiny("tiny")[1:]) \
        if cuda else vlm.build_tiny("tiny")
    vlm.fast_vision_attention(model)
    model = vlm.shard_model(model, device)
    ip.size = {"shortest_edge": 56 * 56, "longest_edge": px * px}
    rng = np.random.default_rng(0)
    images = [[Image.fromarray(rng.integers(0, 256, (px, px, 3), dtype=np.uint8))] for _ in range(prompts)]
    batch = vlm.encode([vlm.build_messages("<image>Which tile is flipped?")] * prompts, images, tok, ip, "left")
    sample = dict(max_new_tokens=new_tokens, do_sample=True, temperature=1.0, num_return_sequences=group_size)

    def timed(fn):
        t0 = clock(device)
        ids, mask = fn()
        return clock(device) - t0, ids.shape[1], int(mask.sum())

    rows = []
    engine.generate(model, batch, tok, **{**sample, "max_new_tokens": 4})                 # warm-up
    dt, steps, toks = timed(lambda: engine.generate(model, batch, tok, **sample))
    rows.append({"path": "engine.generate on the FSDP2 model", "ms_per_step": dt / steps * 1e3,
                 "tok_per_s": toks / dt, "extra": ""})
    engine = engine.RolloutEngine(model, prompts_per_call=prompts)
    gather = engine.refresh(model)                                                     # timed second gather
    first, _, _ = timed(lambda: engine.generate(batch, tok, **sample))                 # warm-up + compile
    dt, steps, toks = timed(lambda: engine.generate(batch, tok, **sample))
    rows.append({"path": "RolloutEngine (plain copy, static cache" + (", compiled decode)" if cuda else ")"),
                 "ms_per_step": dt / steps * 1e3, "tok_per_s": toks / dt,
                 "extra": f"gather {gather:.2f} s; first call {first:.1f} s"
                          + (f" (compile ≈ {first - dt:.0f} s)" if cuda else "")})
    print(f"rollout on {machine()} ({'wall' if cuda else 'CPU'} time): {prompts} prompts x G {group_size} = "
          f"{prompts * group_size} sequences, "
          f"{new_tokens} sampled tokens, {px}px images, {'Qwen2.5-VL-3B shape bf16' if cuda else 'tiny fp32'}")
    print("| path | ms per decode step | tokens/s | notes |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['path']} | {r['ms_per_step']:.1f} | {r['tok_per_s']:.0f} | {r['extra']} |")
    print(f"speed-up: {rows[1]['tok_per_s'] / rows[0]['tok_per_s']:.2f}x (target >= 3x on a GPU)")
    return rows


def add_rollout_parser(sub) -> None:
    p = sub.add_parser("rollout", help="rollout speed: engine.generate on the FSDP2 model vs engine.RolloutEngine",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--group-size", type=int, default=5)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--px", type=int, default=448, help="image side in pixels")
    p.set_defaults(run=lambda a: rollout_comparison(None, a.prompts, a.group_size, a.new_tokens, a.px))


# ----------------------------------------------------------------------------- grpo


def grpo_models(build, device, kl_coef: float, act_ckpt: bool = True) -> dict:
    """Policy (+ frozen reference when β > 0), arranged as grpo.setup_models does: batched vision attention,
    vision trained, activation checkpointing, CPU plain fp32, CUDA FSDP2 with bf16 compute (reference bf16)."""
    import copy
    import torch
    import vlm
    model, tok, ip = build()
    vlm.fast_vision_attention(model)                  # as vlm.load_model installs it
    ref = copy.deepcopy(model).requires_grad_(False).eval() if kl_coef else None
    model.config.use_cache = False
    if act_ckpt:
        vlm.enable_activation_checkpointing(model)
    model.train()
    if device.type == "cuda":
        model = vlm.shard_model(model, device)
        ref = vlm.shard_model(ref.to(torch.bfloat16), device) if ref is not None else None
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6, weight_decay=0.01)
    return {"model": model, "ref": ref, "tok": tok, "ip": ip, "opt": opt}


def grpo_step(s: dict, sampler, records: list, root, cfg, device) -> dict:
    """One GRPO step through grpo.py's own phases; seconds per phase and token counts."""
    import time
    import grpo
    c0, t0 = time.process_time(), clock(device, wall=True)
    ro = grpo.rollout(sampler, s["model"], records, root, s["tok"], s["ip"], cfg)
    grpo.score(ro, s["tok"])
    ro.advantages = grpo.group_advantages(ro.rewards, cfg.group_size)
    t1 = clock(device, wall=True)
    n_updates = cfg.rollout_batch_size // cfg.update_batch_size
    ro.old_logp = grpo.rollout_logprobs(s["model"], ro, cfg, device) if n_updates > 1 else None
    ro.ref_logp = grpo.rollout_logprobs(s["ref"], ro, cfg, device) if s["ref"] is not None else None
    t2 = clock(device, wall=True)
    per = len(ro.mask) // n_updates
    ups = [grpo.update(s["model"], s["opt"], ro, list(range(j * per, (j + 1) * per)), cfg, device)
           for j in range(n_updates)]
    t3 = clock(device, wall=True)
    prompt_tokens = ro.prompts["attention_mask"].sum(1).repeat_interleave(cfg.group_size)
    patches = int(ro.prompts["image_grid_thw"].prod(-1).sum()) * cfg.group_size if "image_grid_thw" in ro.prompts else 0
    return {"gen": t1 - t0, "logprob": t2 - t1, "update": t3 - t2, "step": t3 - t0, "cpu": time.process_time() - c0,
            "refresh": getattr(sampler, "refresh_s", 0.0),
            "new_tokens": int(ro.mask.sum()), "seq_tokens": int(prompt_tokens.sum() + ro.mask.sum()),
            "patches": patches, "logprob_passes": (n_updates > 1) + (s["ref"] is not None), "skipped": sum(u["skipped"] for u in ups)}


def grpo_flops(model, t: dict) -> tuple:
    """(update FLOPs, one log-prob pass FLOPs) of a step (matmuls only, recomputation not counted):
    update 6·N_dec·T + 6·N_vis·P + 6·V·H·S (vision trained), log-prob pass 2·N_dec·T + 2·N_vis·P + 2·V·H·S;
    T = tokens of every prompt + completion, P = image patches of every sequence, S = completion tokens."""
    lm, visual = model.model.language_model, model.model.visual
    n_dec = sum(p.numel() for n, p in lm.named_parameters() if "embed_tokens" not in n)
    n_vis = sum(p.numel() for p in visual.parameters())
    vocab, hidden = model.lm_head.weight.shape
    fwd = n_dec * t["seq_tokens"] + n_vis * t["patches"] + vocab * hidden * t["new_tokens"]
    return 6 * fwd, 2 * fwd


def grpo_bench_case(name: str, build, device, args, n_prompts: int, new_tokens: int, px: int) -> dict:
    """Median seconds per phase over args.steps GRPO steps (after one warm-up step) for one model."""
    import tempfile
    from pathlib import Path
    import numpy as np
    import torch
    import grpo
    import sft
    cuda = device.type == "cuda"
    micro = args.micro_batch_size or (4 if cuda else n_prompts * args.group_size)
    big_gpu = cuda and torch.cuda.get_device_properties(device).total_memory > 100 * 2**30
    cfg = grpo.Config(data="bench", group_size=args.group_size, rollout_batch_size=n_prompts * args.updates,
                      update_batch_size=n_prompts, micro_batch_size=micro, logprob_micro_batch_size=micro * 2,
                      max_new_tokens=new_tokens, kl_coef=args.kl_coef, rollout_engine="engine" if cuda else "generate",
                      keep_rollout_copy=big_gpu or not cuda)   # 80 GB: free the bf16 copy before the update
    s = grpo_models(build, device, cfg.kl_coef, args.act_ckpt)
    s["ip"].size = {"shortest_edge": 56 * 56, "longest_edge": px * px}
    with tempfile.TemporaryDirectory() as tmp:
        records = sft.synthetic_records(Path(tmp), cfg.rollout_batch_size, px)
        sampler = grpo.Sampler(s["model"], cfg, device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        runs = []
        for i in range(args.steps + 1):
            torch.manual_seed(i)
            runs.append(grpo_step(s, sampler, records, Path(tmp), cfg, device))
    med = {k: float(np.median([r[k] for r in runs[1:]])) for k in runs[1]}
    n_params = sum(p.numel() for p in s["model"].parameters())
    f_update, f_lp = grpo_flops(s["model"], med)
    peak = peak_flops(device)
    return {"model": name, "params_M": n_params / 1e6, "prompts": n_prompts * args.updates, "px": px,
            "new": new_tokens, **med, "gen_tok_s": med["new_tokens"] / med["gen"],
            "lp_tok_s": med["seq_tokens"] * med["logprob_passes"] / med["logprob"] if med["logprob"] else float("nan"),
            "mfu": f_update / med["update"] / peak if peak else None, "peak_gb": peak_memory_gb(device)}


def grpo_cases(device) -> list:
    """(name, build, prompts, new tokens, image px): tiny and ~6M on CPU (the TRL comparison's work), the
    Qwen2.5-VL-3B shape (random weights, published config) on a GPU."""
    import vlm
    if device.type == "cuda":
        return [("Qwen2.5-VL-3B shape", lambda: (vlm.build_qwen25_vl_shape(vlm.QWEN25_VL_3B_SHAPE, "cuda"),
                                                 *vlm.build_tiny("tiny")[1:]), 8, 256, 512)]
    return [(name, lambda kind=kind: vlm.build_tiny("tiny", **kind), 8, 48, 112) for name, kind in SMALL_MODELS]


def run_grpo(args) -> None:
    import torch
    import common
    if args.vs_trl:
        return grpo_vs_trl(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if common.use_cuda() else "cpu")
    where = "FSDP2 bf16 compute, rollouts from engine.RolloutEngine" if device.type == "cuda" else \
        f"{torch.get_num_threads()} threads, fp32, rollouts from engine.generate"
    print(f"GRPO step (grpo.py phases), {machine()}; {where}; G {args.group_size}, β {args.kl_coef}, activation "
          f"checkpointing {'on' if args.act_ckpt else 'off'}, "
          f"{args.updates} update(s) per rollout, median of {args.steps} steps after 1 warm-up step\n")
    print("| model | params | prompts × G | image px | max new tokens | generation s | log-probs s | update s | "
          "step s | CPU s/step | generated tok/s | log-prob tok/s | update MFU | peak GB (GPU alloc / CPU RSS) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    tiny_step = None
    for name, build, n, new, px in grpo_cases(device):
        try:
            r = grpo_bench_case(name, build, device, args, n, args.new_tokens or new, px)
        except torch.OutOfMemoryError:
            print(f"| {name} | out of memory |")
            continue
        tiny_step = (r["step"], r["cpu"]) if name == "tiny" else tiny_step
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
        print(f"| {name} | {r['params_M']:.2f}M | {r['prompts']} × {args.group_size} | {px}² | {r['new']} | "
              f"{r['gen']:.3f} | {r['logprob']:.3f} | {r['update']:.3f} | {r['step']:.3f} | {r['cpu']:.3f} | {r['gen_tok_s']:.0f} | "
              f"{r['lp_tok_s']:.0f} | {mfu} | {r['peak_gb']:.1f} |")
        __import__("gc").collect()        # FSDP modules hold reference cycles: free the GPU before the next model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if tiny_step is not None:
        print("\nTRL's GRPOTrainer on the same work, measured side by side: python bench.py grpo --vs-trl")
    print()
    rollout_comparison(device, 8, args.group_size, args.rollout_tokens or (256 if device.type == "cuda" else 48),
                       448 if device.type == "cuda" else 112)   # both samplers, the sft section's table
    common.cleanup_dist()


def add_grpo_parser(sub) -> None:
    p = sub.add_parser("grpo", help="GRPO step: generation / log-probs / update (+ rollout paths)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--steps", type=int, default=5, help="timed steps per model (after one warm-up step)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--group-size", type=int, default=5, help="samples per prompt G")
    p.add_argument("--updates", type=int, default=1, help="optimizer steps per rollout (1 = on-policy, as TRL's default)")
    p.add_argument("--micro-batch-size", type=int, default=0,
                   help="sequences per update forward, log-probs twice that (0: all 40 on CPU, 4 on a GPU)")
    p.add_argument("--kl-coef", type=float, default=0.01, help="β; > 0 adds the frozen reference's log-prob pass")
    p.add_argument("--act-ckpt", action=argparse.BooleanOptionalAction, default=True,
                   help="activation checkpointing of the trained layers (grpo.py's default: on)")
    p.add_argument("--new-tokens", type=int, default=0, help="max new tokens per step (0: 48 on CPU, 256 on a GPU)")
    p.add_argument("--rollout-tokens", type=int, default=0, help="new tokens in the rollout table (0: 48 CPU, 256 GPU)")
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


def vs_trl_records(folder, n: int, sides=(56, 70, 84, 98, 112), seed: int = 0) -> list:
    """n one-image Flip prompts with random-noise images whose sides cycle through `sides` (3,136 … 12,544 px)."""
    import numpy as np
    from PIL import Image
    rng, records = np.random.default_rng(seed), []
    for i in range(n):
        side = sides[i % len(sides)]
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(f"{folder}/img_{i}.png")
        records.append({"id": f"vs-{i}", "task": "flip", "images": [f"img_{i}.png"], "answer": f"{i % 4 + 1}, vertical",
                        "problem": "<image>The image is split into tiles labelled 1, 2, 3 and 4. Which tile is "
                                   "flipped? Answer with the tile and the direction."})
    return records


def trl_inputs(args, dataset_cls) -> tuple:
    """(processor, dataset) for TRL's side of --vs-trl: Qwen2.5-VL's processor without its video processor
    (which needs torchvision, not a dependency) and one row per prompt (chat prompt, answer, task, image)."""
    import json
    import os
    from PIL import Image
    from transformers import AutoImageProcessor, AutoTokenizer, Qwen2_5_VLProcessor
    from transformers.processing_utils import ProcessorMixin
    import vlm

    class ImageOnlyProcessor(Qwen2_5_VLProcessor):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    tok = AutoTokenizer.from_pretrained(args.model_dir)
    ip = AutoImageProcessor.from_pretrained(args.model_dir, backend="pil")
    ip.size = {"shortest_edge": args.min_pixels, "longest_edge": args.max_pixels}
    processor = ImageOnlyProcessor(image_processor=ip, tokenizer=tok, chat_template=tok.chat_template)
    rows = [json.loads(line) for line in open(args.data)]
    root = os.path.dirname(args.data)
    data = dataset_cls.from_list([{"prompt": vlm.build_messages(r["problem"]), "answer": r["answer"],
                                   "task": r["task"], "image": Image.open(f"{root}/{r['images'][0]}").convert("RGB")}
                                  for r in rows])
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


def trl_worker(args) -> None:
    """TRL's side of --vs-trl (runs under --trl-python): GRPOTrainer on the tiny model saved in --model-dir,
    one optimizer step per "go" line on stdin; after each, one JSON line on stdout (TRL_TAG + wall / CPU
    seconds of the step and its phases). Phases: generate = everything in _generate_and_score_completions but
    the no-grad log-prob passes (prompt processing, generate, rewards, advantages), logprob = those passes
    (reference; old log-probs are skipped with one iteration per generation), update = the rest of the step."""
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
                 f"`pip install {TRL_PIN}`, then pass --trl-python VENV/bin/python (README, Performance)")
        print(TRL_TAG + json.dumps({"error": error}), flush=True)
        return
    from transformers import TrainerCallback
    processor, data = trl_inputs(args, Dataset)
    cfg = trl_config(trl, args, processor.tokenizer)
    t = {}

    class Timed(trl.GRPOTrainer):
        def _generate_and_score_completions(self, inputs):
            t0 = time.perf_counter()
            out = super()._generate_and_score_completions(inputs)
            t["prepare"] = t.get("prepare", 0.0) + time.perf_counter() - t0
            t["new_tokens"] = int(out["completion_mask"].sum())
            return out

        def _get_per_token_logps_and_entropies(self, *a, **k):
            t0 = time.perf_counter()
            out = super()._get_per_token_logps_and_entropies(*a, **k)
            if not torch.is_grad_enabled():
                t["logprob"] = t.get("logprob", 0.0) + time.perf_counter() - t0
            return out

    clock = {}

    def go() -> None:
        if sys.stdin.readline().strip() != "go":
            os._exit(0)                      # "stop" or the parent is gone: no final save
        t.clear()
        clock.update(wall=time.perf_counter(), cpu=time.process_time())

    class Lockstep(TrainerCallback):
        def on_train_begin(self, *a, **k):
            print(TRL_TAG + json.dumps({"ready": True, "trl": trl.__version__}), flush=True)
            go()

        def on_step_end(self, *a, **k):
            wall, cpu = time.perf_counter() - clock["wall"], time.process_time() - clock["cpu"]
            lp = t.get("logprob", 0.0)
            print(TRL_TAG + json.dumps({"step": wall, "cpu": cpu, "gen": t.get("prepare", 0.0) - lp, "logprob": lp,
                                        "update": wall - t.get("prepare", 0.0), "new_tokens": t.get("new_tokens", 0)}),
                  flush=True)
            go()

    Timed(model=args.model_dir, reward_funcs=trl_reward, args=cfg, train_dataset=data, processing_class=processor,
          callbacks=[Lockstep()]).train()


def start_trl_worker(args, tmp: str, threads: int, P: int, G: int, new: int) -> tuple:
    """The TRL worker process (trl-worker under --trl-python) on the tiny model and prompts saved in tmp, and
    a function reading its next JSON message (an error message from it ends the benchmark with one line)."""
    import json
    import os
    import subprocess
    cmd = [args.trl_python, os.path.abspath(__file__), "trl-worker", "--model-dir", f"{tmp}/model", "--data",
           f"{tmp}/train.jsonl", "--out-dir", f"{tmp}/trl", "--steps", str(args.steps + 1), "--threads",
           str(threads), "--group-size", str(G), "--new-tokens", str(new), "--kl-coef", str(args.kl_coef),
           "--prompts-per-step", str(P), "--min-pixels", str(56 * 56), "--max-pixels", str(112 * 112)] \
        + ([] if args.act_ckpt else ["--no-act-ckpt"])
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false",
           "PYTHONWARNINGS": "ignore::FutureWarning", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    worker = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                              cwd=os.path.dirname(os.path.abspath(__file__)))

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
    """The --vs-trl table: medians (after the warm-up step) of each phase, wall and CPU seconds, and the ratio."""
    import os
    import numpy as np
    med = lambda runs, k: float(np.median([r[k] for r in runs[1:]]))
    print(f"GRPO step, grpo.py vs TRL {trl_version} GRPOTrainer, alternating steps in one run; {machine()}; "
          f"{threads} thread(s) each, fp32; tiny Qwen2.5-VL (same weights), {P} prompts × G {G} per step from "
          f"{args.prompts}, images 56²…112² px, ≤ {new} new tokens, β {args.kl_coef}, lr 1e-6, one update per "
          f"rollout, activation checkpointing {'on' if args.act_ckpt else 'off'}; median of {args.steps} steps "
          f"after 1 warm-up step each; load average {os.getloadavg()[0]:.1f} at the end\n")
    print("| trainer | generation s | log-probs s | update s | step s (wall) | CPU s/step | new tokens/step |")
    print("|---|---|---|---|---|---|---|")
    for name, runs in (("grpo.py", ours), (f"TRL {trl_version}", theirs)):
        print(f"| {name} | {med(runs, 'gen'):.3f} | {med(runs, 'logprob'):.3f} | {med(runs, 'update'):.3f} | "
              f"{med(runs, 'step'):.3f} | {med(runs, 'cpu'):.3f} | {med(runs, 'new_tokens'):.0f} |")
    print(f"\ngrpo.py is {med(theirs, 'step') / med(ours, 'step'):.2f}× TRL's speed in wall time, "
          f"{med(theirs, 'cpu') / med(ours, 'cpu'):.2f}× in CPU time")


def grpo_vs_trl(args) -> None:
    """grpo.py and TRL's GRPOTrainer on the same work, alternating steps in one run (so both see the same machine
    load): the tiny Qwen2.5-VL (same weights, saved for TRL), args.prompts prompts 8 per step, G, 48 new tokens,
    β, lr 1e-6, one update per rollout, both fp32 on CPU with args.threads threads (1 when 0). Prints medians
    of wall and CPU seconds per phase over args.steps steps after one warm-up step each."""
    import json
    import tempfile
    from pathlib import Path
    import torch
    import grpo
    import vlm
    threads = args.threads or 1
    torch.set_num_threads(threads)
    device, P, G, new = torch.device("cpu"), 8, args.group_size, args.new_tokens or 48
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        vlm.build_tiny("tiny", out_dir=f"{tmp}/model")
        records = vs_trl_records(tmp, args.prompts)
        with open(f"{tmp}/train.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
        worker, trl_line = start_trl_worker(args, tmp, threads, P, G, new)
        try:
            info = trl_line()
            cfg = grpo.Config(data="bench", group_size=G, rollout_batch_size=P, update_batch_size=P,
                              micro_batch_size=args.micro_batch_size or P * G,
                              logprob_micro_batch_size=(args.micro_batch_size or P * G) * 2, max_new_tokens=new,
                              kl_coef=args.kl_coef, rollout_engine="generate", min_pixels=56 * 56,
                              max_pixels=112 * 112)
            s = grpo_models(lambda: vlm.build_tiny("tiny"), device, cfg.kl_coef, args.act_ckpt)
            s["ip"].size = {"shortest_edge": cfg.min_pixels, "longest_edge": cfg.max_pixels}
            sampler = grpo.Sampler(s["model"], cfg, device)
            ours, theirs = [], []
            for i in range(args.steps + 1):
                torch.manual_seed(i)
                batch = [records[(i * P + j) % len(records)] for j in range(P)]
                ours.append(grpo_step(s, sampler, batch, Path(tmp), cfg, device))
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
    """(name, build() -> (model, tok, ip), items, batch size, image px, new tokens) per measured setup."""
    import vlm
    cases = [("tiny", lambda: vlm.build_tiny("tiny"), 32, 8, 224, 64)]
    if device.type == "cuda":
        import torch
        cases.append(("Qwen2.5-VL-3B shape", lambda: (vlm.build_qwen25_vl_shape(
            vlm.QWEN25_VL_3B_SHAPE, "cuda").to(torch.bfloat16), *vlm.build_tiny("tiny")[1:]), 64, 16, 448, 256))
    return cases


def eval_throughput(model, tok, ip, n_items: int, batch_size: int, px: int, new_tokens: int, fast: bool) -> dict:
    """Greedy evaluate.py generation over n_items synthetic one-image questions: items/s, generated tokens/s.
    One warm-up batch first (compilation on the fast path is not timed)."""
    import numpy as np
    import torch
    from PIL import Image
    import evaluate as ev
    import tasks
    import vlm
    device = next(model.parameters()).device
    cfg = ev.Config(model="bench", max_new_tokens=new_tokens, batch_size=batch_size,
                    rollout_engine="engine" if fast else "generate")
    gen = ev.Generator(model.eval(), tok, cfg, device)
    ip.size = {"shortest_edge": px * px // 2, "longest_edge": px * px}
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (px, px, 3), dtype=np.uint8))
    conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Which tile is flipped? "
                                                                                      + tasks.COT_PROMPT}]}]
    batch = vlm.encode([conv] * batch_size, [[image]] * batch_size, tok, ip, padding_side="left")
    gen(batch)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0, tokens = clock(device, wall=True), 0
    for _ in range(-(-n_items // batch_size)):
        tokens += sum(gen(batch)[1])
    dt = clock(device, wall=True) - t0
    n = -(-n_items // batch_size) * batch_size
    peak = peak_memory_gb(device)
    return {"prompt_tokens": batch["input_ids"].shape[1], "items_s": n / dt, "tok_s": tokens / dt,
            "new_per_item": tokens / n, "path": "fast" if gen.engine is not None else "engine.generate", "peak_gb": peak}


def run_eval(args) -> None:
    import torch
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"Greedy evaluation throughput (evaluate.Generator), {machine()}\n")
    print("| model | path | batch | image px | prompt tokens | new tokens/item | items/s | generated tokens/s | peak GB (GPU alloc / CPU RSS) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, build, n, bs, px, new in eval_cases(device):
        model, tok, ip = build()
        for fast in ((False, True) if device.type == "cuda" else (False,)):
            r = eval_throughput(model.to(device), tok, ip, args.items or n, bs, px, new, fast)
            print(f"| {name} | {r['path']} | {bs} | {px}² | {r['prompt_tokens']} | {r['new_per_item']:.0f} | "
                  f"{r['items_s']:.2f} | {r['tok_s']:.0f} | {r['peak_gb']:.1f} |")
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()


def add_eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="greedy evaluation throughput (tiny on CPU; + the 3B shape on a GPU)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--items", type=int, default=0, help="items per setup (0: 32 tiny, 64 for the 3B shape)")
    p.set_defaults(run=run_eval)


# ----------------------------------------------------------------------------- main
def main(argv: list | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="stage", required=True)
    for add_parser in (add_data_parser, add_sft_parser, add_rollout_parser, add_grpo_parser,
                       add_eval_parser, add_trl_worker_parser):   # each stage section defines add_<stage>_parser(sub); list them here in stage order
        add_parser(sub)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main(sys.argv[1:])
