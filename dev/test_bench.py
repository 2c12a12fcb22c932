"""Tests of bench.py: its FLOP count and memory rule, that every table's rows run on the tiny model (the GPU rows
run the same functions at other sizes), and that `python dev/bench.py gpu --dry-run` (what CI runs of the GPU
command) writes its one table with every row.

    python -m pytest -q dev/test_bench.py        # CPU, well under a minute
"""
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("SPATIAL_SSRL_DEVICE", "cpu")   # the CPU path also on a GPU machine (common.use_cuda)

import pytest
import torch
from transformers.utils import logging as hf_logging

import bench
import common
import vlm

hf_logging.disable_progress_bar()
HERE = Path(__file__).resolve().parent
CPU = torch.device("cpu")
GPU_TABLE_ROWS = ("card", "commit", "command", "test_gpu.py", "SFT step, vision frozen", "SFT step, vision trained",
                  "rollout decode", "rollout refresh / compile", "GRPO generation", "GRPO log-probs", "GRPO update",
                  "GRPO step, tokens/s per GPU", "wall time of this command")

pytestmark = pytest.mark.usefixtures("one_thread")   # conftest.py


def test_sft_flops_add_the_vision_backward_only_when_it_trains():
    """bench.py's SFT FLOP count adds the vision backward (2 → 6 FLOPs per parameter and patch) only when the
    tower trains; the SFT row runs (train_step on the tiny model, two warm-up steps) and has no MFU on CPU."""
    model, tok, ip = vlm.build_tiny("tiny")
    batch = bench.synthetic_batch(tok, ip, 2, 56, 56 * 56)
    n_vis = sum(p.numel() for p in model.model.visual.parameters())
    patches = int(batch["image_grid_thw"].prod(-1).sum())
    assert bench.sft_step_flops(model, batch, True) - bench.sft_step_flops(model, batch, False) == 4 * n_vis * patches
    row = bench.sft_step_row(lambda: vlm.build_tiny("tiny")[0], batch, CPU, False, True, steps=1)
    assert row["step_s"] > 0 and row["tok_per_s"] > 0 and not row["oom"] and row["mfu"] is None


def test_card_tables_and_the_memory_rule():
    """GPU names find their bandwidth and peak (the more specific name first); the 3B shape keeps its 36 layers
    for SFT on an 80 GB H100, is cut for GRPO there (20 bytes per parameter), and keeps them all on an H200."""
    assert bench.spec_for(bench.HBM_BYTES_PER_S, "NVIDIA H100 80GB HBM3") == 3.35e12
    assert bench.spec_for(bench.HBM_BYTES_PER_S, "NVIDIA H100 PCIe") == 2.0e12
    assert bench.spec_for(bench.HBM_BYTES_PER_S, "NVIDIA H200") == 4.8e12
    assert bench.spec_for(bench.PEAK_BF16_FLOPS, "NVIDIA H100 PCIe") == 756e12
    assert bench.spec_for(bench.PEAK_BF16_FLOPS, "NVIDIA GeForce RTX 4090") is None
    h100, h200 = int(79.19 * 2**30), int(139.8 * 2**30)
    assert bench.fit_layers(h100, bench.SFT_BYTES_PER_PARAM) == 36
    assert 20 <= bench.fit_layers(h100, bench.GRPO_BYTES_PER_PARAM) < 36
    assert bench.fit_layers(h200, bench.GRPO_BYTES_PER_PARAM) == 36
    assert "28 of 36" in bench.model_label("3B", 28) and bench.model_label("3B", 36) == "Qwen2.5-VL-3B shape"


def test_rollout_row_on_a_sharded_policy():
    """The rollout row on a one-rank FSDP2 (gloo) policy, as on a GPU: the decoder's copy is refreshed from the
    shards, the fixed shapes run (torch.compile as the identity, so nothing is compiled), tokens are counted,
    the decode weight bytes are the text model's and there is no HBM bound on CPU."""
    with common.dist_session(0):
        model, tok, ip = vlm.build_tiny("tiny")
        policy, _ = bench.trainable(model, CPU, train_vision=True, ckpt=True, fsdp=True)
        r = bench.rollout_row(policy, tok, ip, CPU, 2, 2, 3, 56, mode="identity")
    assert r["sequences"] == 4 and r["tok_per_s"] > 0 and 1 <= r["steps"] <= 3 and r["refresh_s"] >= 0
    assert r["graphs"] == r["new_graphs"] == 0 and r["bound_ms"] is None and r["kv_gb"] > 0
    text = sum(p.numel() for n, p in model.model.language_model.named_parameters() if "embed_tokens" not in n)
    assert r["weight_gb"] * 1e9 == 4 * (text + model.lm_head.weight.numel())


def test_grpo_step_through_grpo_functions():
    """The GRPO case (policy, reference, decoder, 2 updates per rollout so the old log-prob pass runs) on a sharded
    tiny policy: every phase is timed, tokens are counted as EasyR1 counts them (prompt + response)."""
    p = dict(prompts=2, group_size=2, updates=2, new_tokens=4, px=56, kl_coef=0.01, act_ckpt=True, fsdp=True,
             mode="identity")
    with common.dist_session(0):
        r = bench.grpo_bench_case(bench.model_builder("tiny", CPU), CPU, p, steps=1)
    assert all(r[f"t_{k}"] > 0 and r[f"{k}_peak_gb"] > 0 for k in ("gen", "logprob", "update", "step"))
    assert r["seq_tokens"] > r["new_tokens"] > 0 and r["tok_s_gpu"] == r["seq_tokens"] / r["t_step"]
    assert r["world"] == 1 and r["skipped"] == 0


def test_eval_row_runs_evaluates_own_path():
    """The evaluation row goes through evaluate.answer_batch (images read, decoded, scored)."""
    model, tok, ip = vlm.build_tiny("tiny")
    r = bench.eval_throughput(model, tok, ip, 4, 2, 56, 4)
    assert r["items_s"] > 0 and r["tok_s"] > 0 and 0 < r["new_per_item"] <= 4 and not r["compiled"]


def test_gpu_dry_run_writes_one_table_with_every_row(tmp_path):
    """`python dev/bench.py gpu --dry-run` (the GPU command's code on CPU with the tiny model): test_gpu.py runs first
    and is skipped (no CUDA), then one markdown table is printed and written to --out/cpu-dry-run-<commit>.md
    with every row and the targets beside the numbers."""
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT")}   # set by vlm.shard_model
    env["OMP_NUM_THREADS"] = "1"                                                         # in this process: its port
    r = subprocess.run([sys.executable, str(HERE / "bench.py"), "gpu", "--dry-run", "--out", str(tmp_path)], cwd=HERE,
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    files = list(tmp_path.glob("cpu-dry-run-*.md"))
    assert len(files) == 1
    table = files[0].read_text()
    assert table in r.stdout and table.count("\n") == len(GPU_TABLE_ROWS) + 2
    for row in GPU_TABLE_ROWS:
        assert f"| {row} |" in table, row
    assert "skipped" in table and "MFU ≥ 35%" in table and "≥ 3,600" in table and "≤ 1.4×" in table
    assert "--dry-run" in table and "tokens/s per GPU" in table


def test_benchmark_3b_shape_has_the_published_size():
    """The GPU benchmark's random Qwen2.5-VL-3B is built from the published config: 3.75B parameters,
    0.67B of them in the vision tower (counted on the meta device, no memory used)."""
    model = bench.build_qwen25_vl_shape(bench.QWEN25_VL_3B_SHAPE, "meta")
    total = sum(p.numel() for p in model.parameters())
    vision = sum(p.numel() for p in model.model.visual.parameters())
    assert abs(total / 1e9 - 3.75) < 0.01 and abs(vision / 1e9 - 0.67) < 0.01
