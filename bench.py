"""Every benchmark table of Spatial-SSRL, one subcommand per stage; each prints the markdown table README.md shows.

    python bench.py data     # pretext generators (ms/sample at 1024x768), scene renders/s, builder throughput
    python bench.py sft      # SFT step: time, tokens/s, MFU, peak memory (tiny, ~6M on CPU; + 3B shape on a GPU)
    python bench.py grpo     # GRPO step split into generation / log-probs / update (+ rollout paths on a GPU)
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


def _bench_generators(seconds: float) -> list:
    """ms per example of every pretext generator (and with JPEG encoding of its images) on built-in scenes."""
    import io
    import numpy as np
    import scenes
    import tasks
    rows = []
    for w, h in ((512, 384), (1024, 768)):
        renders = [scenes.render_scene(s, h, w) for s in range(6)]
        for task in tasks.TASKS:
            accepted = []

            def gen(i, save=False):
                rgb, depth = renders[i % len(renders)]
                ex = tasks.generate(task, rgb, depth if task in tasks.DEPTH_TASKS else None, np.random.default_rng(i))
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
    rows = _bench_generators(args.seconds)
    print("| input | task | gen ms (CPU) | gen ms (wall) | gen + JPEG ms (CPU) | accepted |\n|---|---|---|---|---|---|")
    for size, task, cpu, wall, cpu_s, ok in rows:
        print(f"| {size} | {task} | {cpu:.1f} | {wall:.1f} | {cpu_s:.1f} | {ok:.0%} |")
    slow = [t for size, t, cpu, *_ in rows if size == "1024x768" and cpu > 20]
    print("\ntarget < 20 ms per sample at 1024x768: " + ("met" if not slow else "MISSED by " + ", ".join(slow)))
    print("\n| scene size | ms (CPU) | scenes/s (one core) | ms (wall) |\n|---|---|---|---|")
    renders = {}
    for w, h in ((256, 192), (512, 384), (1024, 768)):
        cpu, wall = _per_call(lambda i: scenes.render_scene(1000 + i, h, w), args.seconds)
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
    p.add_argument("--build-n", type=int, default=300, help="examples in the end-to-end build (0 = skip)")
    p.add_argument("--workers", type=int, default=1, help="worker processes of the end-to-end build")
    p.set_defaults(run=bench_data)


# ----------------------------------------------------------------------------- sft
# ----------------------------------------------------------------------------- grpo
# ----------------------------------------------------------------------------- eval
def eval_cases(device) -> list:
    """(name, build() -> (model, tok, ip), items, batch size, image px, new tokens) per measured setup."""
    import sft
    cases = [("tiny", lambda: sft.build_tiny("tiny"), 32, 8, 224, 64)]
    if device.type == "cuda":
        import torch
        cases.append(("Qwen2.5-VL-3B shape", lambda: (sft.build_qwen25_vl_shape(
            sft.QWEN25_VL_3B_SHAPE, "cuda").to(torch.bfloat16), *sft.build_tiny("tiny")[1:]), 64, 16, 448, 256))
    return cases


def eval_throughput(model, tok, ip, n_items: int, batch_size: int, px: int, new_tokens: int, fast: bool) -> dict:
    """Greedy evaluate.py generation over n_items synthetic one-image questions: items/s, generated tokens/s.
    One warm-up batch first (compilation on the fast path is not timed)."""
    import numpy as np
    import torch
    from PIL import Image
    import time
    import evaluate as ev
    import sft
    device = next(model.parameters()).device
    cfg = ev.Config(model="bench", max_new_tokens=new_tokens, batch_size=batch_size, fast=fast)
    gen = ev.Generator(model.eval(), tok, cfg, device)
    ip.size = {"shortest_edge": px * px // 2, "longest_edge": px * px}
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (px, px, 3), dtype=np.uint8))
    conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Which tile is flipped? "
                                                                                      + sft.tasks.COT_PROMPT}]}]
    batch = sft.encode([conv] * batch_size, [[image]] * batch_size, tok, ip, padding_side="left")
    gen(batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0, tokens = time.perf_counter(), 0
    for _ in range(-(-n_items // batch_size)):
        tokens += sum(gen(batch)[1])
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    n = -(-n_items // batch_size) * batch_size
    import resource
    peak = torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6   # CPU: peak RSS of the process
    return {"prompt_tokens": batch["input_ids"].shape[1], "items_s": n / dt, "tok_s": tokens / dt,
            "new_per_item": tokens / n, "path": "fast" if gen.engine is not None else "sft.generate", "peak_gb": peak}


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
    for add_parser in (add_data_parser, add_eval_parser,):   # each stage section defines add_<stage>_parser(sub); list them here in stage order
        add_parser(sub)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main(sys.argv[1:])
