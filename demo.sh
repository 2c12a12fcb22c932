#!/usr/bin/env bash
# The whole Spatial-SSRL pipeline in one command, on CPU, offline, with the tiny test model:
#   make_data.py (built-in procedural RGB-D rooms) -> sft.py (cold start) -> evaluate.py pretext (before)
#   -> torchrun x2 grpo.py -> evaluate.py pretext (after); prints the reward curve and accuracy before/after.
#
#   bash demo.sh                 # ~4 min on a 2-core machine; everything goes to runs/demo (DEMO_OUT=... to move)
#
# Sizes: the tiny model (~0.3M parameters) sees 56x56-pixel images (4 image tokens) and learns the answer format
# in the cold start (greedy: every answer well-formed). The demo uses the three tasks whose reasoning traces are
# shortest (position, flip, shuffle: ~150 tokens) to keep rollouts short. GRPO then raises the sampled reward
# (temperature 1) over 60 steps, mostly through the format rate of the samples and the answer priors; a model
# that cannot see the markers or tiles stays near chance on the held-out split, so the before/after accuracy
# moves by noise. Real gains need a real model: the README's 8-GPU commands.
set -euo pipefail
cd "$(dirname "$0")"
OUT=${DEMO_OUT:-runs/demo}
PY=${PYTHON:-python}
[ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ] && PY=.venv/bin/python   # the install's virtual environment
PX=3136        # 56x56 pixels per image: 4 image tokens after the 2x2 merge
TOKENS=192     # longest answer: the templated traces of these tasks are 140-180 tiny-tokenizer tokens
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
rm -rf "$OUT"
mkdir -p "$OUT"
stage() { printf '\n== %s  (%ds)\n' "$1" "$SECONDS"; }

stage "1/5 make_data: 450 examples from built-in RGB-D rooms"
$PY make_data.py --out "$OUT/data" --n 450 --tasks position,flip,shuffle --scene-size 256x192 --sft-size 150 \
    --workers 2 --preview none --no-progress | grep -E "^make_data: .*train|^task +quota|^(position|flip|shuffle) +[0-9]+ +[0-9]+ "

stage "2/5 sft.py: cold start of the tiny model (250 steps of 8)"
$PY sft.py --model tiny --data "$OUT/data/sft.jsonl" --out "$OUT/sft" --global-batch-size 8 \
    --lr 3e-3 --max-steps 250 --min-pixels $PX --max-pixels $PX --save-every 0 --save-dtype float32 \
    | awk '/^step/ && ($2 % 50 == 0 || $2 == 1) {split($0, f, "|"); print f[1] "|" f[3]; fflush()}'

stage "3/5 evaluate.py pretext: after the cold start (greedy)"
$PY evaluate.py --model "$OUT/sft" --data "pretext=$OUT/data/test.jsonl" --pixels pretext=$PX:$PX \
    --max-new-tokens $TOKENS --batch-size 16 --out "$OUT/eval-sft" --no-progress --no-plot > "$OUT/eval-sft.log" 2>&1
grep -E "items/s" "$OUT/eval-sft.log"

stage "4/5 grpo.py on 2 processes (torchrun): 60 steps of 16 prompts x 4 samples at temperature 1"
OMP_NUM_THREADS=1 $PY -m torch.distributed.run --standalone --nproc_per_node 2 grpo.py --model "$OUT/sft" \
    --data "$OUT/data/train.jsonl" --out "$OUT/grpo" --max-steps 60 --rollout-batch-size 16 --update-batch-size 16 \
    --group-size 4 --max-new-tokens $TOKENS --min-pixels $PX --max-pixels $PX --lr 1e-4 --save-every 0 \
    --save-dtype float32 > "$OUT/grpo.log" 2>&1 || { tail -20 "$OUT/grpo.log"; exit 1; }
$PY - "$OUT/grpo/metrics.jsonl" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
mean = lambda xs: sum(xs) / len(xs)
print("sampled reward per step (64 samples), mean of the last 6 steps as a bar; accuracy and format likewise")
print("step  reward  mean6                                     accuracy  format")
for k, r in enumerate(rows):
    last = rows[max(0, k - 5):k + 1]
    if r["step"] % 3 == 0 or k == 0:
        avg = mean([x["reward"] for x in last])
        print(f"{r['step']:4d}  {r['reward']:.3f}  {avg:.3f} {'#' * round(150 * avg):<35s} "
              f"{mean([x['accuracy'] for x in last]):.3f}     {mean([x['format'] for x in last]):.3f}")
EOF

stage "5/5 evaluate.py pretext: after GRPO (greedy)"
$PY evaluate.py --model "$OUT/grpo" --data "pretext=$OUT/data/test.jsonl" --pixels pretext=$PX:$PX \
    --max-new-tokens $TOKENS --batch-size 16 --out "$OUT/eval-grpo" --no-progress --no-plot > "$OUT/eval-grpo.log" 2>&1
$PY - "$OUT/eval-sft/results.json" "$OUT/eval-grpo/results.json" <<'EOF'
import json, sys
a, b = (json.load(open(p))["pretext"] for p in sys.argv[1:])
print(f"held-out pretext test split ({a['n']} questions), greedy\n")
print("| task | after SFT | after GRPO |\n|---|---|---|")
for task in a["categories"]:
    print(f"| {task} accuracy | {a['categories'][task]:.1f} | {b['categories'].get(task, 0):.1f} |")
print(f"| all accuracy | {a['score']:.1f} | {b['score']:.1f} |")
print(f"| well-formed (<think>…</think> \\boxed{{}}) | {a['format']:.1f} | {b['format']:.1f} |")
print(f"| mean reward | {a['reward']:.3f} | {b['reward']:.3f} |")
EOF
printf '\ndone in %ds; outputs in %s (predictions: %s/eval-*/pretext/predictions.jsonl)\n' "$SECONDS" "$OUT" "$OUT"
