"""demo.sh's report: the held-out table before and after GRPO (and the controls), and results.png.

    python dev/demo_report.py runs/demo sft grpo [sft-more grpo-random]

Reads OUT/eval-<run>/pretext/predictions.jsonl (evaluate.py --samples K), OUT/data/test.jsonl and
OUT/grpo/metrics.jsonl; every statistic is evaluate.py's (score_table, paired_comparison, headroom, standard_error).
The first run is the cold start, the baseline of every paired difference.
"""
import json
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import read_jsonl  # noqa: E402
from evaluate import headroom, paired_comparison, score_table, standard_error  # noqa: E402

NAMES = {"sft": "after the cold start (SFT)", "grpo": "after GRPO",
         "sft-more": "control (a): more SFT, GRPO's wall time", "grpo-random": "control (b): GRPO, random reward"}
METRICS = ("greedy", "mean@K", "pass@K")


def commonest_answer(test: list) -> tuple:
    """Accuracy (%) and SE of always giving the split's commonest answer (the text-only prior)."""
    top = Counter(str(r["answer"]) for r in test).most_common(1)[0][0]
    hits = [float(str(r["answer"]) == top) for r in test]
    return 100.0 * sum(hits) / len(hits), 100.0 * standard_error(hits), top


def print_table(out: Path, runs: list, preds: dict, k: int) -> None:
    """Greedy, mean@K, pass@K (± SE) per run; each later run minus the cold start, paired; the cold start's headroom."""
    base, base_se, top = commonest_answer(read_jsonl(out / "data" / "test.jsonl"))
    tables = {r: score_table(preds[r]) for r in runs}
    n = tables[runs[0]]["n"]
    label = lambda m: m.replace("K", str(k))  # noqa: E731
    print(f"\nheld-out flip questions: n {n}; chance 12.5 %; always answering the commonest answer ({top}) "
          f"{base:.1f} % ± {base_se:.1f}\n")
    print("| model | " + " | ".join(f"{label(m)} (% ± SE)" for m in METRICS) + " |\n|---|---|---|---|")
    for r in runs:
        print(f"| {NAMES.get(r, r)} | " + " | ".join(f"{tables[r][m]['score']:.1f} ± {tables[r][m]['se']:.1f}"
                                                  for m in METRICS) + " |")
    for r in runs[1:]:
        c = paired_comparison(preds[runs[0]], preds[r])
        cells = [f"{c[m]['diff']:+.1f} ± {c[m]['se']:.1f} ({c[m]['z']:+.1f} SE)" for m in METRICS]
        print(f"| {r} − sft, paired | " + " | ".join(cells) + " |")
    g = tables[runs[0]]["greedy"]
    print(f"\ncold start vs the commonest answer: {(g['score'] - base) / g['se']:+.1f} SE")
    for r in runs[1:]:
        print(f"McNemar's exact p, greedy, {r} vs sft: {paired_comparison(preds[runs[0]], preds[r])['greedy']['mcnemar_p']:.2g}")
    h = headroom(preds[runs[0]])
    print(f"cold-start headroom: {h['none']:.1f} % of items with 0 of {k} samples right, {h['some']:.1f} % with "
          f"1–{k - 1}, {h['all']:.1f} % with {k}; answer entropy {h['entropy_bits']:.2f} bits")


def reward_curve(rows: list) -> list:
    """10-step running mean of the sampled reward per GRPO step."""
    return [sum(x["reward"] for x in rows[max(0, i - 9):i + 1]) / len(rows[max(0, i - 9):i + 1])
            for i in range(len(rows))]


def print_curve(rows: list) -> None:
    avg = reward_curve(rows)
    print("\nsampled reward per GRPO step (mean of the last 10 steps):")
    for i in range(9, len(rows), max(10, len(rows) // 10)):
        print(f"  step {rows[i]['step']:4d}  reward {avg[i]:.3f}  {'#' * round(60 * avg[i])}")


def axes(g, box: tuple, xlim: tuple, ylim: tuple, xlabel: str, ylabel: str, yticks: list):
    """Draw a frame with y ticks and both axis labels in box (x0, y0, x1, y1); return data → pixel mapping."""
    x0, y0, x1, y1 = box
    g.rectangle(box, outline="black")
    to_px = lambda x, y: (x0 + (x1 - x0) * (x - xlim[0]) / (xlim[1] - xlim[0]),  # noqa: E731
                          y1 - (y1 - y0) * (y - ylim[0]) / (ylim[1] - ylim[0]))
    for v in yticks:
        _, py = to_px(xlim[0], v)
        g.line([(x0 - 4, py), (x0, py)], fill="black")
        g.text((x0 - 34, py - 6), f"{v:g}", fill="black")
    g.text(((x0 + x1) / 2 - 3 * len(xlabel), y1 + 22), xlabel, fill="black")
    g.text((x0 - 40, y0 - 18), ylabel, fill="black")
    return to_px


def plot(out: Path, runs: list, preds: dict, rows: list, k: int) -> Path:
    """results.png: the sampled reward per GRPO step (and its 10-step mean), and held-out greedy accuracy and
    mean@K per run with ± 1 SE bars, chance marked."""
    from PIL import Image, ImageDraw
    W, H = 1000, 420
    im = Image.new("RGB", (W, H), "white")
    g = ImageDraw.Draw(im)
    n = score_table(preds[runs[0]])["n"]
    g.text((20, 8), f"Spatial-SSRL CPU demo, flip task: GRPO's sampled reward (left) and accuracy on {n} held-out "
                    f"questions before and after GRPO (right), +- 1 standard error", fill="black")
    avg = reward_curve(rows)
    top = max(0.5, max(r["reward"] for r in rows) + 0.05)
    to_px = axes(g, (70, 60, 450, 360), (0, len(rows)), (0, top), "GRPO step", "sampled reward (mean of the step)",
                 [round(0.1 * i, 1) for i in range(int(top * 10) + 1)])
    for s in (0, len(rows) // 2, len(rows)):
        x, y = to_px(s, 0)
        g.text((x - 8, y + 6), str(s), fill="black")
    g.line([to_px(i + 1, r["reward"]) for i, r in enumerate(rows)], fill=(180, 180, 180))
    g.line([to_px(i + 1, a) for i, a in enumerate(avg)], fill=(30, 80, 200), width=2)
    g.text((80, 66), "grey: each step; blue: 10-step mean", fill=(30, 80, 200))
    tables = {r: score_table(preds[r]) for r in runs}
    ymax = 10 * (int(max(t[m]["score"] + t[m]["se"] for t in tables.values() for m in ("greedy", "mean@K")) / 10) + 1)
    to_px = axes(g, (560, 60, 980, 360), (0, len(runs)), (0, ymax), "", "held-out accuracy (%)",
                 list(range(0, ymax + 1, 10)))
    colours = {"greedy": (200, 120, 30), "mean@K": (30, 150, 60)}
    for i, r in enumerate(runs):
        for j, m in enumerate(("greedy", "mean@K")):
            v, se = tables[r][m]["score"], tables[r][m]["se"]
            xa, ya = to_px(i + 0.15 + 0.35 * j, v)
            xb, yb = to_px(i + 0.45 + 0.35 * j, 0)
            g.rectangle([xa, ya, xb, yb], fill=colours[m])
            xm = (xa + xb) / 2
            g.line([(xm, to_px(0, v + se)[1]), (xm, to_px(0, v - se)[1])], fill="black", width=2)
            g.text((xa, ya - 14), f"{v:.1f}", fill="black")
        g.text((to_px(i + 0.1, 0)[0], 366), r, fill="black")
    cy = to_px(0, 12.5)[1]
    g.line([(560, cy), (980, cy)], fill=(120, 120, 120))
    g.text((900, cy - 14), "chance 12.5", fill=(120, 120, 120))
    g.text((570, 396), f"orange: greedy accuracy; green: mean@{k} (temperature 1)", fill="black")
    im.save(out / "results.png")
    return out / "results.png"


def main(argv: list) -> None:
    out, runs = Path(argv[0]), argv[1:]
    preds = {r: read_jsonl(out / f"eval-{r}" / "pretext" / "predictions.jsonl") for r in runs}
    k = len(next(p["samples"] for p in preds[runs[0]] if p.get("samples")))
    print_table(out, runs, preds, k)
    rows = read_jsonl(out / "grpo" / "metrics.jsonl")
    print_curve(rows)
    print(f"\nwrote {plot(out, runs, preds, rows, k)}")


if __name__ == "__main__":
    main(sys.argv[1:])
