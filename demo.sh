#!/usr/bin/env bash
# The whole Spatial-SSRL pipeline in one command, on CPU, offline, with a tiny model that visibly learns:
#   make_data.py (built-in RGB-D rooms, the flip task) -> dev/tiny.py (the starting model) -> sft.py (cold start)
#   -> evaluate.py (held-out split) -> torchrun x2 grpo.py -> evaluate.py; prints the held-out accuracy before and
#   after GRPO with its standard errors, the sampled reward curve, and writes OUT/results.png.
#
#   bash demo.sh                 # ~4.5 min on a 2-core machine; everything goes to runs/demo (DEMO_OUT=... to move)
#
# What stands in for what (each is for the tiny model only; the paper's pipeline is unchanged):
#   - dev/tiny.py builds a 0.3M-parameter Qwen2.5-VL with a learned 2-D position table added to its image tokens and
#     warms its vision tower up on the cold-start answers: a pretrained Qwen-VL brings both (positional features,
#     a vision tower that sees); a random tiny one learns neither in minutes.
#   - make_data.py --short-prompts --answer-only-traces: the same flip question in ~30 tokens instead of ~200, and
#     cold-start targets that are the answer alone: the tiny model's time goes into the images, not the text.
#   - 112x112-pixel images: 16 image tokens, each tile of the flip question 2x2 of them.
set -euo pipefail
cd "$(dirname "$0")"
OUT=${DEMO_OUT:-runs/demo}
PY=${PYTHON:-python}
[ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ] && PY=.venv/bin/python   # the install's virtual environment
PX=12544       # 112x112 pixels per image: 16 image tokens after the 2x2 merge
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1
rm -rf "$OUT"
mkdir -p "$OUT"
stage() { printf '\n== %s  (%ds)\n' "$1" "$SECONDS"; }

stage "1/6 make_data: the flip task on built-in RGB-D rooms (held-out split > 800 questions)"
$PY make_data.py --out "$OUT/data" --n 3000 --tasks flip --scene-size 112x112 --test-fraction 0.3 --sft-size 2000 \
    --short-prompts --answer-only-traces --workers 2 --preview none --no-progress | grep -E "^make_data.py: .*train"

stage "2/6 dev/tiny.py: the starting model (position table, vision tower warmed up on the cold-start answers)"
$PY dev/tiny.py --out "$OUT/start" --data "$OUT/data/sft.jsonl" --pixels $PX

stage "3/6 sft.py: cold start, vision frozen (800 steps of 32)"
$PY sft.py --model "$OUT/start" --trust-remote-code --data "$OUT/data/sft.jsonl" --out "$OUT/sft" --global-batch-size 32 --lr 5e-3 \
    --max-steps 800 --save-every 0 | awk '/^step/ && ($2 % 250 == 0 || $2 == 1) {print; fflush()}'

stage "4/6 evaluate.py: the held-out split after the cold start (greedy)"
$PY evaluate.py --model "$OUT/sft" --trust-remote-code --data "$OUT/data/test.jsonl" --max-new-tokens 16 --batch-size 64 \
    --out "$OUT/eval-sft" --no-progress --no-plot > "$OUT/eval-sft.log" 2>&1 || { tail -5 "$OUT/eval-sft.log"; exit 1; }

stage "5/6 grpo.py on 2 processes (torchrun): 200 steps of 16 prompts x 8 samples, temperature 1"
$PY -m torch.distributed.run --standalone --nproc_per_node 2 grpo.py --model "$OUT/sft" --trust-remote-code \
    --data "$OUT/data/train.jsonl" --out "$OUT/grpo" --max-steps 200 --rollout-batch-size 16 \
    --update-batch-size 16 --group-size 8 --max-new-tokens 24 --lr 1e-4 --min-pixels $PX --max-pixels $PX \
    --save-every 0 > "$OUT/grpo.log" 2>&1 || { tail -20 "$OUT/grpo.log"; exit 1; }

stage "6/6 evaluate.py: the held-out split after GRPO (greedy)"
$PY evaluate.py --model "$OUT/grpo" --trust-remote-code --data "$OUT/data/test.jsonl" --max-new-tokens 16 --batch-size 64 \
    --out "$OUT/eval-grpo" --no-progress --no-plot > "$OUT/eval-grpo.log" 2>&1 || { tail -5 "$OUT/eval-grpo.log"; exit 1; }

$PY - "$OUT" <<'EOF'
import json, math, sys
from pathlib import Path
from PIL import Image, ImageDraw
out = Path(sys.argv[1])
preds = [{r["id"]: r["correct"] for r in map(json.loads, open(out / f"eval-{s}/pretext/predictions.jsonl"))}
         for s in ("sft", "grpo")]
ids = sorted(set(preds[0]) & set(preds[1]))
n, chance = len(ids), 1 / 8                                  # flip: 4 tiles x 2 directions
acc = [sum(p[i] for i in ids) / n for p in preds]
se = [math.sqrt(a * (1 - a) / n) for a in acc]
diff = [preds[1][i] - preds[0][i] for i in ids]              # paired: the same questions before and after
d = sum(diff) / n
d_se = math.sqrt(sum((x - d) ** 2 for x in diff) / (n - 1) / n)
rows = [json.loads(line) for line in open(out / "grpo/metrics.jsonl")]
print(f"\nheld-out flip questions: n {n}, chance {chance:.1%} (greedy answers, tasks.py's verifier)\n")
print("| model | accuracy | SE | above chance |\n|---|---|---|---|")
for name, a, s in (("after the cold start (SFT)", acc[0], se[0]), ("after GRPO", acc[1], se[1])):
    print(f"| {name} | {a:.1%} | {s:.1%} | {(a - chance) / s:+.1f} SE |")
print(f"| GRPO − SFT, paired | {d:+.1%} | {d_se:.1%} | {d / d_se:+.1f} SE |")
mean = lambda xs: sum(xs) / len(xs)
print("\nsampled reward per GRPO step (16 prompts x 8 samples), mean of the last 10 steps:")
for k in range(9, len(rows), max(10, len(rows) // 10)):
    last = rows[k - 9:k + 1]
    r = mean([x["reward"] for x in last])
    print(f"  step {rows[k]['step']:4d}  reward {r:.3f}  accuracy {mean([x['accuracy'] for x in last]):.3f}  "
          f"{'#' * round(60 * r)}")
W, H, M = 720, 300, 40
im = Image.new("RGB", (W, H), "white")
g = ImageDraw.Draw(im)
g.text((M, 8), "sampled reward per GRPO step (grey), 10-step mean (blue); held-out accuracy, right", fill="black")
pts = [(M + (W - 260) * i / max(1, len(rows) - 1), H - M - (H - 2 * M) * r["reward"]) for i, r in enumerate(rows)]
avg = [(x, H - M - (H - 2 * M) * mean([q["reward"] for q in rows[max(0, i - 9):i + 1]])) for i, (x, _) in enumerate(pts)]
g.line([(M, H - M), (W - 220, H - M)], fill="black")
g.line([(M, M), (M, H - M)], fill="black")
for v in (0.0, 0.5, 1.0):
    g.text((M - 28, H - M - (H - 2 * M) * v - 6), f"{v:.1f}", fill="black")
g.line(pts, fill=(180, 180, 180))
g.line(avg, fill=(30, 80, 200), width=2)
for j, (name, a, colour) in enumerate((("chance", chance, "grey"), ("SFT", acc[0], (200, 120, 30)),
                                       ("GRPO", acc[1], (30, 150, 60)))):
    x = W - 190 + 60 * j
    g.rectangle([x, H - M - (H - 2 * M) * a, x + 40, H - M], fill=colour)
    g.text((x, H - M + 6), f"{name}\n{a:.1%}", fill="black")
im.save(out / "results.png")
print(f"\nwrote {out / 'results.png'}")
EOF
printf '\ndone in %ds; outputs in %s\n' "$SECONDS" "$OUT"
