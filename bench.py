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
    for add_parser in (add_eval_parser,):   # each stage section defines add_<stage>_parser(sub); list them here in stage order
        add_parser(sub)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main(sys.argv[1:])
