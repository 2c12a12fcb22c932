"""Greedy evaluation of Spatial-SSRL on the seven spatial benchmarks and on the held-out pretext split.

Stage 4 of Spatial-SSRL (arXiv 2510.27606, §4, Table 1): greedy decoding of a Qwen2.5-VL / Qwen3-VL checkpoint
on each benchmark's released files, rule-based answer extraction (no GPT judge), one score per benchmark, with
the paper's numbers printed beside ours. `pretext` scores our own held-out test.jsonl with tasks.py's verifiers.

    python evaluate.py --model runs/grpo --bench pretext --data pretext=data/ssrl/test.jsonl --out runs/eval
    torchrun --nproc_per_node 8 evaluate.py --model internlm/Spatial-SSRL-7B --bench all --out runs/eval-ssrl7b \\
        --data spatial457=bench/Spatial457.tsv 3dsrbench=bench/3DSRBench.tsv spatialeval=bench/SpatialEval.tsv \\
        qspatial_plus=bench/QSpatial_plus-00000-of-00001.parquet whatsup=bench/whatsup \\
        viewspatial=bench/ViewSpatial-Bench/ViewSpatial-Bench.json vsibench=bench/VSI-Bench/test-00000-of-00001.parquet
    python evaluate.py --model Qwen/Qwen2.5-VL-7B-Instruct --no-cot ...   # the paper's ✗ rows (official scoring)
    python evaluate.py --help

Rerunning the same command with --resume continues where it stopped: OUT/<bench>/predictions.jsonl holds one
line per item (id, prompt, raw output, extracted answer, correct); OUT/results.json, OUT/results.md (+
OUT/results.png with matplotlib); OUT/run.json and OUT/<bench>/run.json the settings a resumed run must share. Each
result row records its scoring (official or strict, CoT or not, VSI-Bench frames as images or a video) and
whether it is comparable with the paper's row. `--bench X --data PATH` (one benchmark) takes a plain path.

`--samples K` adds K answers per item sampled at --temperature / --top-p (seeded by --seed) beside the greedy one:
each prediction line keeps every sample's extracted answer and score; results give greedy accuracy, mean@K (the
average score of the K samples), maj@K (majority vote) and pass@K with their standard errors, overall and per
category, and for the pretext split the headroom report (items with 0, 1…K−1, K samples right; answer entropy),
the check to run on a cold-start checkpoint before spending GPUs on RL (docs/training.md).

This file runs the model; benchmarks.py (torch-free) reads the released files, builds the prompts and scores
the answers (its docstring maps every official scoring rule to a function and lists the deviations).

Paper → code
  Table 1 benchmarks, released files             → benchmarks.load_bench() (LOADERS, read_tsv, read_parquet)
  greedy decoding (VLMEvalKit T=0.01/top-k 1)    → answer_batch() → engine.Engine.generate(greedy=True)
  answer extraction and the official scorers     → benchmarks.score_item() (--scoring official: item by item)
  per-benchmark summaries, paper's numbers       → benchmarks.summarize(), results_markdown()
  pixel budgets per benchmark (paper setups)     → BENCH_PIXELS
  (ours, not in the paper) --samples K            → sample_answers() → engine.Engine.generate(greedy=False, n=K)
    mean@K, maj@K, pass@K and their SEs          → mean_at_k(), maj_at_k(), pass_at_k(), standard_error(), score_table()
    headroom report (before spending on RL)      → headroom(), answer_entropy()
    paired before / after, McNemar's p           → paired_comparison(), paired_se(), mcnemar_p()

Deviations (paper / official evaluation code; the scoring ones are listed in benchmarks.py)
  1. No GPT judge: an answer the rules cannot read is wrong (VLMEvalKit asks chatgpt-0125 when it has a key).
  2. Prompts are the official ones: the CoT instruction is appended to every text segment with no separator
     (VLMEvalKit's preproc_content: 3x on Spatial457); --scoring strict changes only how answers are read.
  3. QSpatial+ uses the benchmark's own system prompt and templates (the fork's prompt files are not released).
  4. VSI-Bench goes in as the official script passes it: one Qwen2.5-VL video item of --vsi-frames (128)
     frames sampled uniformly (round(linspace(0, n-1, 128)), all frames of shorter videos), each frame
     resized at the image bounds qwen-vl-utils gives a frame list (4..16384 ×28², BENCH_PIXELS), temporal
     patches of 2 frames, positions spaced for --vsi-fps 2 (the processor default). Frames come from PyAV
     (the official script uses decord; their frame counts can differ on some files) or a folder of
     pre-extracted frames. --vsi-as-images gives the old frames-as-images input (not comparable with the
     paper; results say vsi_input=images). Qwen3-VL has no video path here (its prompts carry timestamps):
     use --vsi-as-images. The official prompt's option-prefix bug "A. A. …" is kept.
  5. ViewSpatial images are resized to 420×280 first (as the official script) and then bounded by the processor
     limits.
  6. Items whose image cannot be read are skipped and counted (reported beside the score), not scored as wrong.
  7. Batches are formed after sorting items by (image count, prompt length); left padding with the attention
     mask makes the outputs independent of the batch in exact arithmetic (bf16 kernels can differ slightly).
"""
import argparse
import json
import math
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from benchmarks import BENCH_NAMES, PAPER_ROWS, SCORINGS, Item, Options, is_video, load_bench, load_item_images, \
    score_item, summarize
from common import (SetupError, Skipped, all_reduce_sum, append_jsonl, atomic_write, barrier, check_identity, cli_main,
                    config_parser, dist_session, knob, open_run, out_dir_mode, print0, read_jsonl, read_run_info,
                    rewrite_jsonl, write_run_info)
from engine import Engine
from vlm import encode, load_model, set_pixel_bounds

# (min_pixels, max_pixels) per benchmark, as the paper's setups (VLMEvalKit Qwen2VLChat: 1280..16384 ×28²;
# What'sUp: ≤ 512×28²; ViewSpatial: 256..1280 ×28² after a 420×280 resize; VSI-Bench, per frame: the official
# frame list goes through qwen-vl-utils' fetch_image, i.e. the image bounds 4..16384 ×28², then through the
# video processor, which Qwen2.5-VL checkpoints configure from preprocessor_config.json: 3136..16384 ×28²);
# pretext: None = the bounds the checkpoint was trained with (its saved preprocessor_config.json), so a model
# trained on small images is asked on the same sizes.
BENCH_PIXELS = {"pretext": None, "spatial457": (1280 * 784, 16384 * 784),
                "3dsrbench": (1280 * 784, 16384 * 784), "spatialeval": (1280 * 784, 16384 * 784),
                "qspatial_plus": (1280 * 784, 16384 * 784), "whatsup": (56 * 56, 512 * 784),
                "viewspatial": (256 * 784, 1280 * 784), "vsibench": (4 * 784, 16384 * 784)}
PRETEXT_DEFAULT = "data/ssrl/test.jsonl"   # make_data.py's default output
USAGE_EXAMPLES = """examples:
  python evaluate.py --model runs/grpo-tiny --bench pretext --data data/ssrl/test.jsonl --out runs/eval-tiny
  python evaluate.py ... --out runs/eval-tiny --resume          # continue after a kill (same settings)
  python evaluate.py --model runs/sft-tiny --data data/ssrl/test.jsonl --samples 8 --out runs/eval-sft-k8
                                                    # + mean@8, maj@8, pass@8 and the headroom report
  torchrun --nproc_per_node 8 evaluate.py --model internlm/Spatial-SSRL-7B --bench all --out runs/eval7b \\
      --data spatial457=bench/Spatial457.tsv whatsup=bench/whatsup vsibench=bench/VSI-Bench/test.parquet
  python evaluate.py --model Qwen/Qwen2.5-VL-7B-Instruct --no-cot --bench all --data ...   # the paper's ✗ rows"""


# ----------------------------------------------------------------------------- config
@dataclass
class Config:
    model: str = knob("tiny", "HF id or local HF dir (Qwen2.5-VL / Qwen3-VL), or 'tiny' / 'tiny-qwen3'")
    trust_remote_code: bool = knob(False, "run the model folder's own model code (config.json auto_map); off by "
                                          "default, as in transformers")
    bench: list = knob(("pretext",), f"benchmarks: {', '.join(BENCH_NAMES)}, or all (= every one given a --data)")
    data: list = knob((), "BENCH=PATH pairs: the released file (or folder) per benchmark (pretext: "
                        f"{PRETEXT_DEFAULT} unless given); with one --bench a plain PATH")
    out: str = knob("runs/eval", "output folder: <bench>/predictions.jsonl, results.json, results.md, results.png")
    cot: bool = knob(True, "ask for reasoning + \\boxed{} (the released checkpoints' instruction); --no-cot: answer directly")
    scoring: str = knob("official", "official: the official scripts' scoring, item by item (comparable with the "
                                    "paper); strict: our corrected rules (benchmarks.py, 'Strict scoring')")
    limit: int = knob(0, "evaluate only the first N items of each benchmark (0: all)")
    batch_size: int = knob(8, "prompts decoded together on one rank")
    max_new_tokens: int = knob(2048, "generation budget per answer (VLMEvalKit: 2048; standalone scripts: 4096)")
    min_pixels: int | None = knob(None, "smallest image area after resizing, for every benchmark (default: each "
                                        "benchmark's own, BENCH_PIXELS; pretext: the checkpoint's)")
    max_pixels: int | None = knob(None, "largest image area after resizing, for every benchmark (default: as "
                                        "--min-pixels)")
    pixels: list = knob((), "per-benchmark override of the bounds, BENCH=MIN:MAX (e.g. pretext=3136:12544); wins "
                            "over --min-pixels / --max-pixels")
    vsi_frames: int = knob(128, "frames sampled uniformly from each VSI-Bench video (official: 128)")
    vsi_as_images: bool = knob(False, "give VSI-Bench frames as separate images instead of one video item "
                                    "(not the official input; Qwen3-VL needs it)")
    vsi_fps: float = knob(2.0, "frame rate a VSI-Bench video is declared to have: temporal positions spaced by "
                             "2/fps (official: the processor default, 2)")
    samples: int = knob(0, "also draw K sampled answers per item beside the greedy one: mean@K, maj@K, pass@K with "
                           "their SEs and, for the pretext split, the headroom report (0: greedy only)")
    temperature: float = knob(1.0, "sampling temperature of the --samples answers")
    top_p: float = knob(1.0, "nucleus sampling of the --samples answers (1.0 = off)")
    seed: int = knob(0, "seed of the --samples draws (each batch seeded from it and its item ids)")
    dtype: str = knob("auto", "model dtype: auto (bf16 on CUDA, fp32 on CPU), bfloat16, float16, float32")
    plot: bool = knob(True, "write OUT/results.png (needs matplotlib; skipped with a note otherwise)")
    progress: bool = knob(True, "tqdm progress bar")
    resume: bool = knob(False, "continue the evaluation in OUT (same model and settings): items already answered "
                             "are kept")
    overwrite: bool = knob(False, "delete an earlier evaluate.py run in OUT and start over")

    def __post_init__(self):
        if self.batch_size < 1 or self.max_new_tokens < 1 or self.vsi_frames < 1 or self.limit < 0 \
                or not self.vsi_fps > 0:
            raise SetupError("--batch-size, --max-new-tokens, --vsi-frames and --vsi-fps must be positive, "
                             "--limit >= 0")
        if self.samples < 0 or not self.temperature > 0 or not 0 < self.top_p <= 1:
            raise SetupError("need --samples >= 0, --temperature > 0 and 0 < --top-p <= 1")
        unknown = [b for b in self.bench if b not in BENCH_NAMES + ("all",)]
        if unknown:
            raise SetupError(f"unknown --bench {unknown}; expected some of {BENCH_NAMES + ('all',)}")
        if self.scoring not in SCORINGS:
            raise SetupError(f"--scoring must be one of {', '.join(SCORINGS)}, not {self.scoring!r}")
        if self.dtype not in ("auto", "bfloat16", "float16", "float32"):
            raise SetupError("--dtype must be auto, bfloat16, float16 or float32")
        for name in ("min_pixels", "max_pixels"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise SetupError(f"--{name.replace('_', '-')} must be positive")
        self.data_paths()
        self.pixel_bounds("pretext", (1, 1))

    def data_paths(self) -> dict:
        """Benchmark → data path from --data: BENCH=PATH pairs, or one plain PATH when one benchmark is asked."""
        single = self.bench[0] if len(set(self.bench)) == 1 and self.bench[0] != "all" else None
        out = {}
        for pair in self.data:
            name, sep, path = pair.partition("=")
            if sep and name in BENCH_NAMES and path:
                out[name] = path
            elif single and len(self.data) == 1:
                out[single] = pair
            else:
                raise SetupError(f"--data {pair!r}: expected BENCH=PATH with BENCH one of {BENCH_NAMES}"
                                 " (a plain PATH only with one --bench)")
        out.setdefault("pretext", PRETEXT_DEFAULT)
        return out

    def options(self) -> Options:
        """What benchmarks.py's loaders and scorers need from this run."""
        return Options(cot=self.cot, scoring=self.scoring, limit=self.limit, frames=self.vsi_frames,
                       vsi_input="images" if self.vsi_as_images else "video")

    def pixel_bounds(self, bench: str, own: tuple) -> tuple:
        """(min, max) image pixels for a benchmark, one rule: --pixels BENCH=MIN:MAX if given; else
        --min-pixels / --max-pixels where given; else BENCH_PIXELS[bench]; else (pretext) `own`, the bounds
        the checkpoint saved. The image processor is set to exactly this before the benchmark runs."""
        lo, hi = BENCH_PIXELS[bench] or own
        lo, hi = self.min_pixels or lo, self.max_pixels or hi
        for pair in self.pixels:
            m = re.fullmatch(r"([\w]+)=(\d+):(\d+)", pair)
            if not m or m.group(1) not in BENCH_NAMES or int(m.group(2)) > int(m.group(3)):
                raise SetupError(f"--pixels {pair!r}: expected BENCH=MIN:MAX with MIN <= MAX")
            if m.group(1) == bench:
                lo, hi = int(m.group(2)), int(m.group(3))
        if lo > hi:
            raise SetupError(f"{bench}: min pixels {lo} > max pixels {hi} (--min-pixels / --max-pixels / --pixels)")
        return lo, hi

    def benches(self) -> list:
        if "all" not in self.bench:
            return list(dict.fromkeys(self.bench))
        given = {p.partition("=")[0] for p in self.data}
        return [b for b in BENCH_NAMES if b in given or b == "pretext" and Path(PRETEXT_DEFAULT).is_file()]


def build_parser() -> argparse.ArgumentParser:
    return config_parser(Config, "evaluate.py", __doc__.split("\n")[0], USAGE_EXAMPLES)


# ----------------------------------------------------------------------------- what a resumed run must share
def eval_identity(cfg: Config) -> dict:
    """Settings of the whole run that change every prediction (OUT/run.json)."""
    sampled = cfg.samples > 0
    return {"model": cfg.model, "cot": cfg.cot, "scoring": cfg.scoring, "max_new_tokens": cfg.max_new_tokens,
            "dtype": cfg.dtype, "samples": cfg.samples, "temperature": cfg.temperature if sampled else None,
            "top_p": cfg.top_p if sampled else None, "seed": cfg.seed if sampled else None}


def bench_identity(bench: str, path: str, cfg: Config, bounds: tuple) -> dict:
    """Settings of one benchmark that change its predictions (OUT/<bench>/run.json)."""
    vsi = bench == "vsibench"
    return {"data": str(path), "pixels": list(bounds), "limit": cfg.limit,
            "vsi_frames": cfg.vsi_frames if vsi else None, "vsi_as_images": cfg.vsi_as_images if vsi else None,
            "vsi_fps": cfg.vsi_fps if vsi and not cfg.vsi_as_images else None}


IDENTITY_LABELS = {"data": "--data", "pixels": "image bounds (--min-pixels / --max-pixels / --pixels)",
                   "cot": "--cot / --no-cot"}


# ----------------------------------------------------------------------------- asking the model
def to_messages(item: Item, n_images_slots: list, video: dict | None = None) -> list:
    """One user turn: item.texts with an image item before texts[i] for each i in n_images_slots; a video
    item ({"type": "video", "video": frames, ...}, vlm.encode) goes first."""
    content = [video] if video else []
    for i, t in enumerate(item.texts):
        content += [{"type": "image"}] * n_images_slots.count(i)
        if t:
            content.append({"type": "text", "text": t})
    return [{"role": "user", "content": content}]


def answer_batch(bench: str, items: list, engine: Engine, tok, ip, cfg: Config) -> tuple:
    """Prediction records for a batch: unreadable items become skipped records; the rest are decoded
    greedily together (engine.Engine) and scored. Returns (records, generated tokens)."""
    records, convs, images, asked = [], [], [], []
    for it in items:
        base = {"id": it.id, "category": it.category, "prompt": it.prompt_text()}
        if it.error:
            records.append({**base, "skipped": it.error})
            continue
        try:
            ims, slots = load_item_images(it, cfg.vsi_frames)
        except Skipped as e:
            records.append({**base, "skipped": str(e)})
            continue
        if is_video(it) and not cfg.vsi_as_images:   # one video item of all the frames (official input)
            convs.append(to_messages(it, [], {"type": "video", "video": ims, "fps": cfg.vsi_fps}))
            images.append([])
        else:
            convs.append(to_messages(it, slots))
            images.append(ims)
        asked.append((it, base))
    if not asked:
        return records, 0
    batch = encode(convs, images, tok, ip, padding_side="left")
    batch.pop("labels")
    ids, mask = engine.generate(batch, tok, max_new_tokens=cfg.max_new_tokens, greedy=True)
    texts = [tok.decode(row[m].tolist(), skip_special_tokens=True) for row, m in zip(ids.cpu(), mask.cpu())]
    ntok = int(mask.sum())
    for (it, base), raw in zip(asked, texts):
        records.append({**base, "raw": raw, **score_item(bench, it, raw, cfg.options())})
    if cfg.samples:
        samples, n = sample_answers(bench, [it for it, _ in asked], batch, engine, tok, cfg)
        ntok += n
        for rec, sampled in zip(records[-len(asked):], samples):
            rec["samples"] = sampled
    return records, ntok


def batch_seed(seed: int, ids: list) -> int:
    """The seed of one batch's sampled answers: a hash of --seed and its item ids (the same batch of the same run
    draws the same answers; a resumed run forms other batches and so draws other, equally valid, ones)."""
    import hashlib
    return int.from_bytes(hashlib.blake2b(json.dumps([seed, ids]).encode(), digest_size=8).digest(), "little") >> 1


def sample_answers(bench: str, items: list, batch: dict, engine: Engine, tok, cfg: Config) -> tuple:
    """cfg.samples answers per item at --temperature / --top-p through the one decoder (engine.Engine, n = K),
    each kept as {'raw', 'extracted', 'correct'}. Returns (per-item lists of K answers, generated tokens)."""
    import torch
    torch.manual_seed(batch_seed(cfg.seed, [it.id for it in items]))
    ids, mask = engine.generate(batch, tok, max_new_tokens=cfg.max_new_tokens, greedy=False,
                                temperature=cfg.temperature, top_p=cfg.top_p, n=cfg.samples)
    out, k = [], cfg.samples
    for i, it in enumerate(items):
        rows = zip(ids[i * k:(i + 1) * k].cpu(), mask[i * k:(i + 1) * k].cpu())
        raws = [tok.decode(r[m].tolist(), skip_special_tokens=True) for r, m in rows]
        scored = [score_item(bench, it, raw, cfg.options()) for raw in raws]
        out.append([{"raw": raw, "extracted": sc["extracted"], "correct": sc["correct"]}
                    for raw, sc in zip(raws, scored)])
    return out, int(mask.sum())


# ----------------------------------------------------------------------------- statistics of greedy and sampled answers
def standard_error(xs: list) -> float:
    """SE of a mean over n items, SE = sqrt(Σ(x_i − x̄)² / n) / √n: for 0/1 scores the binomial sqrt(p(1 − p) / n)
    (greedy accuracy, pass@K, maj@K); for mean@K, x_i is item i's mean over its K samples."""
    n = len(xs)
    if n == 0:
        return 0.0
    m = sum(xs) / n
    return math.sqrt(sum((x - m) ** 2 for x in xs) / n / n)


def paired_se(diffs: list) -> float:
    """SE of a mean paired difference d_i = after_i − before_i on the same items: sqrt(Σ(d_i − d̄)² / (n − 1)) / √n."""
    n = len(diffs)
    if n < 2:
        return 0.0
    m = sum(diffs) / n
    return math.sqrt(sum((d - m) ** 2 for d in diffs) / (n - 1) / n)


def mcnemar_p(before: list, after: list) -> float:
    """McNemar's exact two-sided test of paired right/wrong answers: with b items wrong before and right after, c the
    reverse, p = min(1, 2 · Σ_{i ≤ min(b, c)} C(b + c, i) / 2^(b + c)) (1 when no item changed)."""
    b = sum(1 for x, y in zip(before, after) if x < 1 <= y)
    c = sum(1 for x, y in zip(before, after) if y < 1 <= x)
    if b + c == 0:
        return 1.0
    tail = Fraction(sum(math.comb(b + c, i) for i in range(min(b, c) + 1)), 2 ** (b + c))
    return float(min(Fraction(1), 2 * tail))


def mean_at_k(samples: list) -> float:
    """One item's mean@K: (1/K) Σ_j c_j, the average score of its K sampled answers."""
    return sum(s["correct"] for s in samples) / len(samples)


def pass_at_k(samples: list) -> float:
    """One item's pass@K: max_j c_j (1 when any of its K sampled answers is right)."""
    return max(s["correct"] for s in samples)


def maj_at_k(samples: list) -> float:
    """One item's maj@K: the score of the answer drawn most often (ties: the one drawn first); answers the rules
    cannot read do not vote, and an item with none scores 0."""
    votes = [s for s in samples if s["extracted"] not in (None, "")]
    if not votes:
        return 0.0
    counts = answer_counts(votes)
    top = max(counts.values())
    return next(s["correct"] for s in votes if counts[answer_key(s)] == top)


def answer_entropy(samples: list) -> float:
    """Entropy of one item's K sampled answers in bits, H = −Σ_a p_a log2 p_a with p_a the share of samples giving
    answer a (an unreadable answer counts as one more answer): 0 when all K agree, log2 K when all differ."""
    k = len(samples)
    return -sum(c / k * math.log2(c / k) for c in answer_counts(samples).values())


def answer_key(sample: dict) -> str:
    """A sampled answer's extracted value as a comparable key (lists and numbers included)."""
    return json.dumps(sample["extracted"])


def answer_counts(samples: list) -> Counter:
    """How many of the samples gave each answer (answer_key)."""
    return Counter(answer_key(s) for s in samples)


def item_scores(record: dict) -> dict:
    """greedy, mean@K, maj@K and pass@K of one prediction record (the last three only with samples)."""
    out = {"greedy": record["correct"]}
    if record.get("samples"):
        s = record["samples"]
        out.update({"mean@K": mean_at_k(s), "maj@K": maj_at_k(s), "pass@K": pass_at_k(s)})
    return out


def score_table(records: list) -> dict:
    """Metric → {'score', 'se'} in %, over the scored records (greedy accuracy; with samples mean@K, maj@K,
    pass@K), and n."""
    per_item = [item_scores(r) for r in records if not r.get("skipped")]
    out = {"n": len(per_item)}
    for metric in (per_item[0] if per_item else {}):
        xs = [x[metric] for x in per_item]
        out[metric] = {"score": 100.0 * sum(xs) / len(xs), "se": 100.0 * standard_error(xs)}
    return out


def headroom(records: list) -> dict:
    """What RL can convert (the check to run on a cold start before RL): the share of items with c of K sampled
    answers right for c = 0 … K, the shares with none, some (1 … K − 1) and all right, the mean answer entropy
    (bits) and pass@K − greedy (percentage points)."""
    scored = [r for r in records if not r.get("skipped") and r.get("samples")]
    if not scored:
        return {}
    k, n = len(scored[0]["samples"]), len(scored)
    right = [sum(1 for s in r["samples"] if s["correct"] >= 1) for r in scored]
    shares = [100.0 * right.count(c) / n for c in range(k + 1)]
    return {"k": k, "n": n, "right_of_k": shares, "none": shares[0], "some": sum(shares[1:k]), "all": shares[k],
            "entropy_bits": sum(answer_entropy(r["samples"]) for r in scored) / n,
            "pass_minus_greedy": 100.0 * sum(pass_at_k(r["samples"]) - r["correct"] for r in scored) / n}


def sampled_summary(records: list) -> dict:
    """The benchmark's score table (greedy and, with samples, mean@K / maj@K / pass@K, each with its SE) overall
    and per category, and the headroom report when there are samples."""
    scored = [r for r in records if not r.get("skipped")]
    cats = {}
    for r in scored:
        cats.setdefault(r["category"], []).append(r)
    out = {"table": score_table(scored), "table_categories": {c: score_table(v) for c, v in sorted(cats.items())}}
    if any(r.get("samples") for r in scored):
        out["headroom"] = headroom(scored)
    return out


def paired_comparison(before: list, after: list) -> dict:
    """Two evaluations of the same items (prediction records, matched by id): per metric the two scores and the
    paired difference after − before with its SE (paired_se) and z = d / SE, in %; McNemar's p for greedy."""
    a = {r["id"]: item_scores(r) for r in before if not r.get("skipped")}
    b = {r["id"]: item_scores(r) for r in after if not r.get("skipped")}
    ids = sorted(set(a) & set(b))
    out = {"n": len(ids)}
    for metric in (a[ids[0]] if ids else {}):
        if metric not in b[ids[0]]:
            continue
        x, y = [a[i][metric] for i in ids], [b[i][metric] for i in ids]
        d = [q - p for p, q in zip(x, y)]
        diff, se = 100.0 * sum(d) / len(d), 100.0 * paired_se(d)
        out[metric] = {"before": 100.0 * sum(x) / len(x), "after": 100.0 * sum(y) / len(y), "diff": diff, "se": se,
                       "z": diff / se if se else 0.0}
    if ids:
        out["greedy"]["mcnemar_p"] = mcnemar_p([a[i]["greedy"] for i in ids], [b[i]["greedy"] for i in ids])
    return out


# ----------------------------------------------------------------------------- one benchmark, all ranks
def gather_records(records: list) -> list:
    """Every rank's records on every rank (all_gather_object); the input itself in one process."""
    import torch.distributed as dist
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return records
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, records)
    return [r for part in out for r in part]


def shard_batches(todo: list, rank: int, world: int, batch_size: int) -> tuple:
    """Length-bucketed batches of this rank's shard, and the number of rounds every rank runs.

    Items are sorted by (image count, prompt length) and dealt round-robin, so each rank's batches hold
    prompts of similar length; ranks with fewer batches run empty rounds (they still join the gather)."""
    order = sorted(todo, key=Item.sort_key)
    mine = order[rank::world]
    batches = [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]
    per_rank = -(-len(order) // world) if order else 0
    return batches, -(-per_rank // batch_size)


def bench_items(bench: str, path: str, cfg: Config) -> list:
    """A benchmark's items, read before the model loads and before --out is touched; none is an error."""
    items = load_bench(bench, path, cfg.options())
    if not items:
        raise SetupError(f"--data {path}: no {bench} items in it (an empty file?)")
    return items


def check_bench(bench: str, path: str, cfg: Config, own_bounds: tuple, model_type: str, mode: str) -> None:
    """The checks that need the loaded model, done before --out is written: a resumed benchmark's folder was
    made with these settings (common.check_identity), VSI-Bench as video has a Qwen2.5-VL model."""
    bench_dir = Path(cfg.out) / bench
    if mode == "resume" and read_run_info(bench_dir) is not None:
        check_identity(bench_dir, bench_identity(bench, path, cfg, cfg.pixel_bounds(bench, own_bounds)),
                       IDENTITY_LABELS)
    if bench == "vsibench" and not cfg.vsi_as_images and model_type != "qwen2_5_vl":
        raise SetupError(f"VSI-Bench as video needs a Qwen2.5-VL model ({cfg.model} is {model_type}); "
                         "use --vsi-as-images")


def open_bench(bench: str, path: str, cfg: Config, own_bounds: tuple, d) -> tuple:
    """(image bounds, answered ids) of a checked benchmark (check_bench): its folder started, a prediction
    line cut off by a kill dropped (rank 0)."""
    bench_dir = Path(cfg.out) / bench
    bounds = cfg.pixel_bounds(bench, own_bounds)
    barrier()
    if d.is_main:
        bench_dir.mkdir(parents=True, exist_ok=True)
        if read_run_info(bench_dir) is None:
            write_run_info(bench_dir, "evaluate.py", bench_identity(bench, path, cfg, bounds))
        preds = bench_dir / "predictions.jsonl"
        rewrite_jsonl(preds, read_jsonl(preds, torn_tail_ok=True))
    barrier()
    done = {r["id"] for r in read_jsonl(bench_dir / "predictions.jsonl", torn_tail_ok=True)}
    return bounds, done


def run_bench(bench: str, path: str, items: list, cfg: Config, engine: Engine, tok, ip, d, own_bounds: tuple) -> dict:
    """Ask every item not yet in OUT/<bench>/predictions.jsonl, append the answers, return the summary."""
    from tqdm import tqdm
    bounds, done = open_bench(bench, path, cfg, own_bounds, d)
    todo = [it for it in items if it.id not in done]
    batches, rounds = shard_batches(todo, d.rank, d.world_size, cfg.batch_size)
    set_pixel_bounds(ip, *bounds)                                        # this benchmark's bounds, said below
    mode = f", {cfg.vsi_frames} frames as {cfg.options().vsi_input}" if bench == "vsibench" else ""
    print0(f"{bench}: {len(items)} items{mode}, images {bounds[0]}..{bounds[1]} px, {len(done)} done before, "
           f"{len(todo)} to ask ({d.world_size} rank(s), {rounds} rounds of <= {cfg.batch_size})")
    preds, t0, ntok, nasked = Path(cfg.out) / bench / "predictions.jsonl", time.time(), 0, 0
    bar = tqdm(total=len(todo), desc=bench, disable=not (d.is_main and cfg.progress), dynamic_ncols=True)
    for k in range(rounds):
        recs, n = answer_batch(bench, batches[k], engine, tok, ip, cfg) if k < len(batches) else ([], 0)
        ntok += n
        recs = gather_records(recs)
        nasked += len(recs)
        if d.is_main:
            append_jsonl(preds, recs)
        bar.update(len(recs))
    bar.close()
    barrier()
    ntok, dt = int(all_reduce_sum(ntok, d.device)), time.time() - t0
    if todo:
        print0(f"{bench}: {nasked} items in {dt:.1f} s ({nasked / max(dt, 1e-9):.2f} items/s, "
               f"{ntok / max(dt, 1e-9):.0f} generated tokens/s)")
    ids = {it.id for it in items}
    records = [r for r in read_jsonl(preds, torn_tail_ok=True) if r["id"] in ids]
    out = {**summarize(bench, records, cfg.options()), **sampled_summary(records)}
    if cfg.samples:
        out["sampling"] = {"k": cfg.samples, "temperature": cfg.temperature, "top_p": cfg.top_p, "seed": cfg.seed}
    return out


# ----------------------------------------------------------------------------- reporting
def mode_label(r: dict) -> str:
    """How a result row was produced: scoring (official or strict), CoT or not, VSI-Bench frames as images or a
    video."""
    label = f"{r['scoring']}, {'CoT' if r['cot'] else 'no CoT'}"
    if "vsi_input" in r:
        label += f", {r['frames']} frames as {r['vsi_input']}"
    return label


def results_markdown(results: dict) -> str:
    """The headline table (ours beside the paper's rows, with the scoring that produced each row and whether it
    is comparable with the paper's) and one per-category table per benchmark."""
    rows = PAPER_ROWS if any(r["paper"] for r in results.values()) else ()   # the pretext split alone: none
    head = "| benchmark | metric | scoring | comparable | ours | n (skipped) | " + "".join(f"{p} | " for p in rows)
    lines = [head.rstrip(), "|" + "---|" * (6 + len(rows))]
    for b, r in results.items():
        paper = "".join(f"{v:.2f} | " for v in r["paper"].values()) if r["paper"] else "– | " * len(rows)
        comparable = {True: "yes", False: "no"}.get(r.get("comparable"), "?")
        lines.append(f"| {b} | {r['metric']} | {mode_label(r)} | {comparable} | **{r['score']:.2f}** | "
                     f"{r['n']} ({r['skipped']}) | {paper}".rstrip())
    lines += ["", "comparable = scored exactly as the official code (--scoring official; VSI-Bench also needs its "
                  "frames as one video); see docs/evaluation.md."]
    for b, r in results.items():
        extra = {k: r[k] for k in ("format", "reward", "delta_1_5") if k in r}
        extra.update(r.get("settings", {}))
        lines += ["", f"**{b}** per category" + "".join(f"; {k} {v:.2f}" for k, v in extra.items()), "",
                  "| category | score |", "|---|---|"]
        lines += [f"| {c} | {v:.2f} |" for c, v in r["categories"].items()]
    for b, r in results.items():
        if "sampling" in r:
            lines += ["", *sampled_markdown(b, r)]
    return "\n".join(lines) + "\n"


def sampled_markdown(bench: str, r: dict) -> list:
    """Greedy, mean@K, maj@K and pass@K (± SE, %) overall and per category, and the headroom report."""
    sp = r["sampling"]
    metrics = ("greedy", "mean@K", "maj@K", "pass@K")
    cell = lambda t, m: f"{t[m]['score']:.2f} ± {t[m]['se']:.2f}" if m in t else "–"   # noqa: E731
    lines = [f"**{bench}** greedy and {sp['k']} sampled answers per item (temperature {sp['temperature']}, top-p "
             f"{sp['top_p']}, seed {sp['seed']}), % ± SE", "",
             "| category | n | " + " | ".join(m.replace("K", str(sp["k"])) for m in metrics) + " |", "|---" * 6 + "|"]
    for name, t in (("all", r["table"]), *r["table_categories"].items()):
        lines.append(f"| {name} | {t['n']} | " + " | ".join(cell(t, m) for m in metrics) + " |")
    h = r.get("headroom")
    if h:
        k = h["k"]
        lines += ["", f"headroom: items with 0 of {k} samples right {h['none']:.1f} %, 1–{k - 1} of {k} {h['some']:.1f} %, "
                      f"{k} of {k} {h['all']:.1f} %; answer entropy {h['entropy_bits']:.2f} bits (max "
                      f"{math.log2(k):.2f}); pass@{k} − greedy {h['pass_minus_greedy']:+.1f} pp"]
    return lines


def plot_results(results: dict, path: Path) -> str:
    """Per-benchmark bars, ours beside the paper's base and Spatial-SSRL rows (matplotlib, optional)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "results.png skipped: pip install matplotlib for the bar chart"
    names = list(results)
    series = [("ours", [results[b]["score"] for b in names])]
    for row in ("Qwen2.5-VL-3B", "Spatial-SSRL-3B", "Qwen2.5-VL-7B", "Spatial-SSRL-7B"):
        series.append((row, [results[b]["paper"].get(row, 0.0) for b in names]))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(names)), 4))
    w = 0.8 / len(series)
    for k, (label, vals) in enumerate(series):
        ax.bar([i + (k - (len(series) - 1) / 2) * w for i in range(len(names))], vals, w, label=label)
    ax.set_xticks(range(len(names)), names, rotation=20)
    ax.set_ylabel("score (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"wrote {path}"


def write_results(results: dict, cfg: Config) -> None:
    """results.json (merged with benchmarks evaluated earlier into the same --out), results.md, results.png."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    f = out / "results.json"
    merged = json.loads(f.read_text()) if f.is_file() else {}
    merged.update(results)
    atomic_write(f, json.dumps(merged, indent=1))       # read back by the next run into this --out
    md = results_markdown(merged)
    atomic_write(out / "results.md", md)
    print(md)
    if cfg.plot:
        print(plot_results(merged, out / "results.png"))


# ----------------------------------------------------------------------------- main
def load_for_eval(cfg: Config, device):
    """Model (eval mode, on device), tokenizer, image processor."""
    import torch
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}.get(
        cfg.dtype, torch.bfloat16 if device.type == "cuda" else torch.float32)
    model, tok, ip = load_model(cfg.model, dtype=dtype, trust_remote_code=cfg.trust_remote_code)
    return model.to(device).eval(), tok, ip


def evaluate(cfg: Config) -> dict:
    """Check the data and the output folder, load the model once, run every benchmark, write the results."""
    with dist_session(0) as d:
        paths, benches = cfg.data_paths(), cfg.benches()
        missing = [b for b in benches if b not in paths]
        if missing or not benches:
            raise SetupError(f"no --data for {missing or 'any benchmark'} (give BENCH=PATH, see --help)")
        absent = [f"{b}={paths[b]}" for b in benches if not Path(paths[b]).exists()]
        if absent:   # before loading a model for minutes
            raise SetupError(f"--data {' '.join(absent)}: no such file or folder")
        mode = out_dir_mode(cfg.out, "evaluate.py", cfg.resume, cfg.overwrite)
        if mode == "resume":
            check_identity(cfg.out, eval_identity(cfg), IDENTITY_LABELS)
        items = {b: bench_items(b, paths[b], cfg) for b in benches}   # every input checked before --out is touched
        model, tok, ip = load_for_eval(cfg, d.device)
        engine = Engine(model, prompts_per_call=cfg.batch_size)   # decodes the loaded model in place
        own_bounds = (ip.size["shortest_edge"], ip.size["longest_edge"])   # the checkpoint's saved bounds
        for b in benches:
            check_bench(b, paths[b], cfg, own_bounds, engine.config.model_type, mode)
        open_run(cfg.out, "evaluate.py", mode, eval_identity(cfg), {"argv": sys.argv}, labels=IDENTITY_LABELS)
        results = {b: run_bench(b, paths[b], items[b], cfg, engine, tok, ip, d, own_bounds) for b in benches}
        if d.is_main:
            write_results(results, cfg)
        return results


def main(argv: list | None = None) -> None:
    cli_main("evaluate.py", lambda: evaluate(Config(**vars(build_parser().parse_args(argv)))))


if __name__ == "__main__":
    main(sys.argv[1:])
