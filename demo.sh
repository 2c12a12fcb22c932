#!/usr/bin/env bash
# The whole Spatial-SSRL pipeline in one command, on CPU, offline, with a tiny model, shaped like the paper: a cold
# start on a small fixed set, then GRPO on more questions, fresh ones from rooms the cold start never saw.
#   make_data.py (built-in RGB-D rooms, the flip task) -> dev/tiny.py (the starting model) -> sft.py (cold start)
#   -> evaluate.py --samples 8 (held-out split) -> torchrun x2 grpo.py -> evaluate.py --samples 8; prints greedy
#   accuracy, mean@8 and pass@8 before and after GRPO with their standard errors, the paired differences (McNemar's
#   p for greedy), the cold start's headroom and the sampled reward curve, and writes OUT/results.png.
#
#   bash demo.sh                 # ~6½ min on a 2-core machine; everything goes to runs/demo (DEMO_OUT=... to move)
#   CONTROLS=1 bash demo.sh      # also the two controls: (a) the cold start trained on with SFT for GRPO's wall
#                                # time, (b) GRPO with a random reward of the same mean (dev/random_reward.py)
#   bash demo.sh --help          # this text
#
# DEMO_OUT must be a new or empty folder, or one an earlier demo.sh made (it holds .made-by-demo.sh): that one is
# deleted and made again; any other folder is refused, so a file of yours is never deleted.
#
# What stands in for what (each is for the tiny model only; the paper's pipeline is unchanged):
#   - dev/tiny.py builds a 0.3M-parameter Qwen2.5-VL with a learned 2-D position table added to its image tokens and
#     warms its vision tower up on the cold-start questions: a pretrained Qwen-VL brings both (positional features,
#     a vision tower that sees); a random tiny one learns neither in minutes.
#   - make_data.py --short-prompts --answer-only-traces: the same flip question in ~30 tokens instead of ~200, and
#     cold-start targets that are the answer alone: the tiny model's time goes into the images, not the text.
#   - 112x112-pixel images: 16 image tokens, each tile of the flip question 2x2 of them.
#   - the cold start fine-tunes every language-model weight (sft.py --lora-rank 0 --max-samples 0; the paper: LoRA
#     rank 128 on <= 4,000 samples): the tiny model's layers are narrower than rank 128, and the sweeps ran this way.
#   - GRPO without the KL term (--kl-coef 0; the paper: 0.01) and at a higher learning rate than the paper's 1e-6.
set -euo pipefail
case "${1:-}" in
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
    "") ;;
    *) echo "demo.sh: takes no arguments (got '$1'); settings come from DEMO_OUT, PYTHON and CONTROLS" \
            "(bash demo.sh --help)" >&2; exit 2 ;;
esac
cd "$(dirname "$0")"
OUT=${DEMO_OUT:-runs/demo}
MARK="$OUT/.made-by-demo.sh"
PY=${PYTHON:-python}
[ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ] && PY=.venv/bin/python   # the install's virtual environment
if [ -e "$MARK" ]; then
    rm -rf "$OUT"                                   # an earlier demo's folder: made again
elif [ -e "$OUT" ] && ! { [ -d "$OUT" ] && [ -z "$(ls -A "$OUT")" ]; }; then
    echo "demo.sh: $OUT exists and was not made by demo.sh; move it away or set DEMO_OUT=a/new/folder" >&2
    exit 2
fi
mkdir -p "$OUT"
echo "made by demo.sh: the next demo.sh run into this folder deletes it" > "$MARK"
PX=12544       # 112x112 pixels per image: 16 image tokens after the 2x2 merge
K=8            # sampled answers per held-out question
SFT_STEPS=800  # the cold start's length, chosen by pass@8 on fresh questions (docs/training.md, "The CPU demo")
GRPO=(--max-steps 200 --rollout-batch-size 16 --update-batch-size 16 --group-size 8 --lr 3e-4 --kl-coef 0)
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1
stage() { printf '\n== %s  (%ds)\n' "$1" "$SECONDS"; }
evaluate() {   # evaluate MODEL NAME: greedy and K sampled answers on the held-out split, 2 processes
    $PY -m torch.distributed.run --standalone --nproc_per_node 2 evaluate.py --model "$1" --trust-remote-code \
        --data "$OUT/data/test.jsonl" --samples $K --max-new-tokens 16 --batch-size 64 --out "$OUT/eval-$2" \
        --no-progress --no-plot > "$OUT/eval-$2.log" 2>&1 || { tail -5 "$OUT/eval-$2.log"; exit 1; }
    grep -E "^\| all|^headroom" "$OUT/eval-$2.log"
}
grpo() {       # grpo SCRIPT NAME: GRPO from the cold start on the fresh questions, 2 processes
    $PY -m torch.distributed.run --standalone --nproc_per_node 2 "$1" --model "$OUT/sft" --trust-remote-code \
        --data "$OUT/data/train.jsonl" --out "$OUT/$2" "${GRPO[@]}" --max-new-tokens 16 --min-pixels $PX \
        --max-pixels $PX --save-every 0 > "$OUT/$2.log" 2>&1 || { tail -20 "$OUT/$2.log"; exit 1; }
}

stage "1/6 make_data: 2,000 cold-start questions; fresh questions for GRPO and the held-out split from other rooms"
$PY make_data.py --out "$OUT/data" --n 10000 --tasks flip --scene-size 112x112 --test-fraction 0.45 --sft-size 2000 \
    --seed 1 --short-prompts --answer-only-traces --workers 2 --preview none --no-progress \
    | grep -E "^make_data.py: .*train|^flip +most common"

stage "2/6 dev/tiny.py: the starting model (position table, vision tower warmed up on the cold-start questions)"
$PY dev/tiny.py --out "$OUT/start" --data "$OUT/data/sft.jsonl" --pixels $PX

stage "3/6 sft.py: the cold start, vision frozen ($SFT_STEPS steps of 32 on the 2,000 questions)"
T0=$SECONDS
$PY sft.py --model "$OUT/start" --trust-remote-code --lora-rank 0 --max-samples 0 --data "$OUT/data/sft.jsonl" --out "$OUT/sft" --global-batch-size 32 --lr 5e-3 \
    --max-steps $SFT_STEPS --save-every 0 | awk '/^step/ && ($2 % 200 == 0 || $2 == 1) {print; fflush()}'
SFT_S=$((SECONDS - T0))

stage "4/6 evaluate.py: the held-out split after the cold start (greedy and $K samples at temperature 1)"
evaluate "$OUT/sft" sft

stage "5/6 grpo.py on 2 processes (torchrun): ${GRPO[*]}, temperature 1"
T0=$SECONDS
grpo grpo.py grpo
GRPO_S=$((SECONDS - T0))

stage "6/6 evaluate.py: the held-out split after GRPO"
evaluate "$OUT/grpo" grpo

RUNS=(sft grpo)
if [ "${CONTROLS:-0}" = 1 ]; then
    STEPS=$((SFT_STEPS * GRPO_S / (SFT_S > 0 ? SFT_S : 1)))
    stage "control (a): the cold start trained on with SFT for GRPO's ${GRPO_S}s ($STEPS more steps on its own data)"
    # a fifth of the cold start's peak lr: restarting its schedule at 5e-3 would jolt the converged model
    $PY sft.py --model "$OUT/sft" --trust-remote-code --lora-rank 0 --max-samples 0 --data "$OUT/data/sft.jsonl" --out "$OUT/sft-more" --global-batch-size 32 \
        --lr 1e-3 --max-steps $STEPS --save-every 0 | awk '/^step/ && $2 % 200 == 0'
    evaluate "$OUT/sft-more" sft-more
    stage "control (b): GRPO with a random reward of the same mean (rewards permuted across each step's samples)"
    grpo dev/random_reward.py grpo-random
    evaluate "$OUT/grpo-random" grpo-random
    RUNS+=(sft-more grpo-random)
fi

$PY dev/demo_report.py "$OUT" "${RUNS[@]}"
printf '\ndone in %ds; outputs in %s\n' "$SECONDS" "$OUT"
