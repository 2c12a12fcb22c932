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
# ----------------------------------------------------------------------------- main
def main(argv: list | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="stage", required=True)
    for add_parser in ():   # each stage section defines add_<stage>_parser(sub); list them here in stage order
        add_parser(sub)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main(sys.argv[1:])
