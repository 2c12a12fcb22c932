"""GPU checks: every CUDA path the stages take, on one GPU. Skipped where there is no CUDA GPU (CI, the CPU suite).

    python -m pytest -q test_gpu.py      # one H100 or H200: a few minutes
    python dev/bench.py gpu                  # runs this file first, then the performance table (docs/performance.md)

  1. sft.py, grpo.py and evaluate.py end to end under torchrun with one NCCL rank (FSDP2, bf16 compute, the
     compiled decoder) on the tiny model and a pretext split made by `make_data.py --n 40`: SFT stopped after
     2 of 4 steps and resumed, GRPO from that checkpoint stopped after 1 of 2 steps and resumed, evaluate.py on
     the test split of that data.
  2. The decoder on CUDA (tiny FSDP2 policy): its bf16 copy equals the shards after refresh (and after an
     optimizer step); masks run through the first stop token and ids after it are pad, as on CPU; a forced stop
     token ends a row at once; vision tokens are never sampled; after the warm-up, prompts of other lengths,
     fewer prompts (filler prompts) and other sampling settings compile nothing new (dynamo's graph count).
  3. The compiled decoder (fp32 on CUDA) gives the CPU decoder's greedy tokens wherever the CPU's top-2 logit
     gap is at least GAP (below it, float rounding may legitimately pick the other token).
  4. vlm.group_logprobs under FSDP2 on CUDA equals the full forward (vlm.token_logprobs on prompt + completion
     rows) on a ~0.5B random Qwen2.5-VL shape (SHAPE_05B: the 3B shape narrower and shallower): log-probs and
     gradients within TOLERANCES (fp32; and bf16 compute, where CPU bf16 measures a log-prob gap of 0.013 nats at
     most and a gradient error of 1.5 % overall, 2.8 % for the worst tensor: the bounds are about 4x that).
  5. One step of grpo.train on the ~0.5B shape (compiled decoder, reference, 2 updates) peaks below
     GRPO_BYTES_PER_PARAM bytes per parameter + GRPO_RESERVE of GPU memory.

SPATIAL_SSRL_GPU_TWIN=cpu runs the same checks on CPU (gloo, the decoder compiled by inductor, SHAPE_TWIN instead
of the 0.5B shape, no memory bound): how this file is developed and checked on a machine without a GPU. CI does
not run it. SPATIAL_SSRL_DEVICE is set to the device under test for every check (the CPU suite forces "cpu").
"""
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

TWIN = os.environ.get("SPATIAL_SSRL_GPU_TWIN", "").lower() == "cpu"
if not (torch.cuda.is_available() or TWIN):
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import common   # noqa: E402
import engine   # noqa: E402
import grpo     # noqa: E402
import sft      # noqa: E402
import vlm      # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "dev"))
import bench    # noqa: E402  (the 3B shape with random weights)
DEVICE = torch.device("cpu" if TWIN else "cuda")
GAP = 1e-3
_3B = bench.QWEN25_VL_3B_SHAPE
SHAPE_05B = {"text": {**_3B["text"], "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 8,
                      "num_attention_heads": 8, "num_key_value_heads": 2},          # head_dim 128: mrope 16+24+24
             "vision": {**_3B["vision"], "depth": 8, "out_hidden_size": 1024, "fullatt_block_indexes": [3, 7]},
             "tie_word_embeddings": True}                                          # 468M parameters
SHAPE_TWIN = {"text": {**_3B["text"], "vocab_size": 4096, "hidden_size": 128, "intermediate_size": 256,
                       "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                       "rope_parameters": {**_3B["text"]["rope_parameters"], "mrope_section": [4, 6, 6]}},
              "vision": {**_3B["vision"], "depth": 2, "hidden_size": 64, "intermediate_size": 128, "num_heads": 2,
                         "out_hidden_size": 128, "fullatt_block_indexes": [1]},
              "tie_word_embeddings": True}
SHAPE = SHAPE_TWIN if TWIN else SHAPE_05B
# (max |Δ log p| over completion tokens, mean |Δ log p|, ‖Δ grad‖ / ‖grad‖ over all parameters, the worst tensor's)
TOLERANCES = {"fp32": (1e-4, 2e-5, 1e-4, 1e-3), "bf16": (0.05, 0.02, 0.05, 0.15)}
GRPO_BYTES_PER_PARAM, GRPO_RESERVE = 20, 4 * 2**30   # fp32 weight + grad + 2 AdamW moments, bf16 ref, bf16 copy


@pytest.fixture(autouse=True)
def device_under_test(monkeypatch):
    """The stages pick the device through common.use_cuda(): never "cpu" here, whatever the CPU suite set."""
    monkeypatch.setenv("SPATIAL_SSRL_DEVICE", DEVICE.type)


@pytest.fixture
def one_rank():
    """A one-rank process group on the device under test (NCCL; gloo for the twin), destroyed afterwards."""
    import torch.distributed as dist
    if dist.is_initialized():
        dist.destroy_process_group()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo" if TWIN else "nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1,
                            device_id=None if TWIN else torch.device("cuda", torch.cuda.current_device()))
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


def run(*cmd: str, launcher: tuple = (), timeout: int = 600) -> str:
    """A stage script in a subprocess on the device under test; fails the test with the tail of its output."""
    env = {**os.environ, "SPATIAL_SSRL_DEVICE": DEVICE.type, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)}
    r = subprocess.run([sys.executable, *launcher, *cmd], capture_output=True, text=True, env=env, timeout=timeout,
                       cwd=HERE)
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"{' '.join(cmd[:2])} exited with {r.returncode}:\n{out[-4000:]}"
    return out


def torchrun(script: str, *args: str) -> str:
    """`torchrun --standalone --nproc_per_node 1 script args`: one NCCL rank (gloo for the twin)."""
    return run(str(HERE / script), *args, launcher=("-m", "torch.distributed.run", "--standalone",
                                                    "--nproc_per_node", "1"))


# ----------------------------------------------------------------------------- 1. the stages end to end
SFT_ARGS = ("--model", "tiny", "--max-steps", "4", "--global-batch-size", "8", "--micro-batch-tokens", "2048",
            "--save-every", "2", "--lr", "1e-3", "--max-pixels", "12544")
GRPO_ARGS = ("--max-steps", "2", "--save-every", "1", "--group-size", "4", "--rollout-batch-size", "4",
             "--update-batch-size", "2", "--max-new-tokens", "24", "--min-pixels", "3136", "--max-pixels", "12544",
             "--exclude", "none", "--lr", "1e-4")


@pytest.fixture(scope="module")
def pretext(tmp_path_factory) -> Path:
    """A small pretext dataset (train / test / sft.jsonl) from make_data.py's built-in scenes."""
    out = tmp_path_factory.mktemp("gpu") / "data"
    run(str(HERE / "make_data.py"), "--out", str(out), "--n", "40", "--workers", "2", "--preview", "none",
        "--no-progress", "--scene-size", "256x192")
    return out


@pytest.fixture(scope="module")
def sft_run(pretext) -> tuple:
    """sft.py on the cold-start split: stopped after 2 of 4 steps (checkpoint at 2), then --resume to the end."""
    out = pretext.parent / "sft"
    common_args = ("--data", str(pretext / "sft.jsonl"), "--out", str(out), *SFT_ARGS)
    return out, torchrun("test_gpu.py", "killed-after", "sft", "2", *common_args) + torchrun("sft.py", *common_args,
                                                                                          "--resume")


@pytest.fixture(scope="module")
def grpo_run(sft_run, pretext) -> tuple:
    """grpo.py from the SFT checkpoint: stopped after 1 of 2 steps (checkpoint at 1), then --resume to the end."""
    out = pretext.parent / "grpo"
    common_args = ("--model", str(sft_run[0]), "--data", str(pretext / "train.jsonl"), "--out", str(out), *GRPO_ARGS)
    return out, torchrun("test_gpu.py", "killed-after", "grpo", "1", *common_args) + torchrun("grpo.py", *common_args,
                                                                                            "--resume")


def test_sft_trains_saves_and_resumes(sft_run):
    out, log = sft_run
    assert f"device {DEVICE.type}" in log and "resumed from" in log
    rows = common.read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all(math.isfinite(r["loss"]) for r in rows), rows
    assert common.latest_checkpoint(str(out)).name == "step_00000004"
    model = vlm.load_model(str(out))[0]
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_grpo_trains_saves_and_resumes(grpo_run):
    out, log = grpo_run
    assert f"device {DEVICE.type}" in log and "resumed from" in log
    rows = common.read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2], rows
    for r in rows:
        assert r["updates"] == 2 and r["response_length"] > 0 and math.isfinite(r["kl"]) and r["time_gen"] > 0, r
    assert (out / "hf" / "step_00000002" / "model.safetensors").exists() and (out / "model.safetensors").exists()
    assert common.latest_checkpoint(str(out)).name == "step_00000002"


def test_evaluate_on_a_pretext_split(grpo_run, pretext, tmp_path):
    out = tmp_path / "eval"
    torchrun("evaluate.py", "--model", str(grpo_run[0]), "--bench", "pretext", "--data",
             f"pretext={pretext / 'test.jsonl'}", "--out", str(out), "--limit", "8", "--max-new-tokens", "24",
             "--batch-size", "4", "--no-plot", "--no-progress")
    asked = min(8, len(common.read_jsonl(pretext / "test.jsonl")))
    result = json.loads((out / "results.json").read_text())["pretext"]
    assert asked > 0 and result["n"] + result["skipped"] == asked and 0 <= result["score"] <= 100
    assert len(common.read_jsonl(out / "pretext" / "predictions.jsonl")) == asked


# ----------------------------------------------------------------------------- 2, 3. the decoder
def make_prompts(tok, ip, specs: list) -> dict:
    """A left-padded prompt batch; specs = [((w, h) or None for no image, question), ...], noise images."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    convs = [vlm.build_messages(("<image>" if size else "") + q) for size, q in specs]
    images = [[Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))] if size else []
              for size, _ in specs]
    batch = vlm.encode(convs, images, tok, ip, padding_side="left")
    batch.pop("labels")
    return batch


def assert_copy_equals_shards(eng, model) -> None:
    copy = dict(eng.model.named_parameters())
    for name, p in model.named_parameters():
        full = (p.full_tensor() if hasattr(p, "full_tensor") else p).detach()
        assert torch.equal(copy[name], full.to(copy[name].dtype)), name


def assert_completions(ids, mask, tok) -> None:
    """Masks through the first stop token, pad after it, no vision token anywhere."""
    want_ids, want_mask = engine.completion_mask(ids, engine.stop_token_ids(tok), tok.pad_token_id)
    assert torch.equal(mask, want_mask) and torch.equal(ids, want_ids)
    vision = torch.tensor(tok.convert_tokens_to_ids(list(vlm.VISION_TOKENS)), device=ids.device)
    assert not torch.isin(ids, vision).any()


def test_decoder_on_the_device(one_rank, monkeypatch, tmp_path):
    from torch._dynamo.utils import counters
    model, tok, ip, opt = vlm.load_trainable("tiny", common.Dist(device=DEVICE), train_vision=True, checkpointing=True,
                                             fsdp=True, lr=1e-3, weight_decay=0.0, betas=(0.9, 0.999),
                                             min_pixels=56 * 56, max_pixels=140 * 140)
    eng = engine.Engine(model, prompts_per_call=4, compile=True)       # compile=True: the default on CUDA
    assert eng.compile and not eng.shared and eng.dtype == (torch.float32 if TWIN else torch.bfloat16)
    assert_copy_equals_shards(eng, model)
    batch = make_prompts(tok, ip, [((56, 56), "Which tile is flipped?"), ((112, 84), "Where is region 2?"),
                                   (None, "No image here. Which is closer?")])
    graphs = counters["stats"]["unique_graphs"]
    ids, mask = eng.generate(batch, tok, max_new_tokens=12, n=3)       # greedy, the warm-up
    warm = counters["stats"]["unique_graphs"]
    assert warm > graphs and ids.shape[0] == 9 and ids.is_cuda != TWIN
    assert_completions(ids, mask, tok)
    other = make_prompts(tok, ip, [((140, 84), "A longer question: which of the marked points is nearest?"),
                                   (None, "Text?")])
    torch.manual_seed(0)
    s_ids, s_mask = eng.generate(other, tok, max_new_tokens=12, greedy=False, temperature=0.7, top_k=50, top_p=0.9, n=3)
    assert s_ids.shape[0] == 6 and counters["stats"]["unique_graphs"] == warm, "recompiled after the warm-up"
    assert_completions(s_ids, s_mask, tok)
    first = int(ids[0, 0])
    with monkeypatch.context() as m:                                  # prompt 0's first greedy token ends it
        m.setattr(engine, "stop_token_ids", lambda t: [t.eos_token_id, first])
        f_ids, f_mask = eng.generate(batch, tok, max_new_tokens=12, n=3)
    assert f_mask[:3, 0].all() and not f_mask[:3, 1:].any() and (f_ids[:3, 1:] == tok.pad_token_id).all()
    before = {k: v.clone() for k, v in eng.model.named_parameters()}
    records = sft.synthetic_records(tmp_path, 2, 56)
    sft.train_step(model, opt, [vlm.encode_records(records, tmp_path, tok, ip, response=True)], 1e-3, 1.0, DEVICE)
    eng.refresh(model)
    assert_copy_equals_shards(eng, model)
    assert any(not torch.equal(before[k], v) for k, v in eng.model.named_parameters())


def greedy_gaps(model, batch: dict, ids: torch.Tensor, tok) -> torch.Tensor:
    """(B, L) top-1 − top-2 logit gap (vision tokens suppressed, as the sampler) at each greedy step of `ids`,
    from one full forward of prompt + completion without a cache."""
    full = torch.cat([batch["input_ids"], ids], 1)
    with torch.no_grad():
        logits = model(input_ids=full, attention_mask=torch.cat([batch["attention_mask"], torch.ones_like(ids)], 1),
                       mm_token_type_ids=torch.cat([batch["mm_token_type_ids"], torch.zeros_like(ids)], 1),
                       pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"]).logits
    z = logits[:, batch["input_ids"].shape[1] - 1:-1].float()
    z[..., tok.convert_tokens_to_ids(list(vlm.VISION_TOKENS))] = -float("inf")
    top = z.topk(2, dim=-1).values
    return top[..., 0] - top[..., 1]


def test_compiled_decoder_gives_the_cpu_decoders_greedy_tokens(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)    # the vision tower's conv in full fp32
    cpu_model, tok, ip = vlm.load_model("tiny", max_pixels=112 * 112)
    batch = make_prompts(tok, ip, [((56, 56), "Which tile is flipped?"), ((112, 84), "Where is region 2?"),
                                   ((84, 56), "Which is closer, A or B?")])
    want, want_mask = engine.Engine(cpu_model).generate(batch, tok, max_new_tokens=16)
    gaps = greedy_gaps(cpu_model, batch, want, tok)
    model = vlm.load_model("tiny", max_pixels=112 * 112)[0].to(DEVICE)
    eng = engine.Engine(model, dtype=torch.float32, compile=True)
    assert eng.shared and eng.compile
    ids, mask = eng.generate(batch, tok, max_new_tokens=16)
    compared = 0
    for r in range(len(want)):
        low = (gaps[r] < GAP).nonzero()
        k = int(low[0]) if len(low) else want.shape[1]                  # steps before the first near tie
        assert torch.equal(ids[r, :k].cpu(), want[r, :k]) and torch.equal(mask[r, :k].cpu(), want_mask[r, :k]), r
        compared += k
    assert compared >= want.numel() // 2, f"only {compared} of {want.numel()} tokens had a clear greedy choice"


# ----------------------------------------------------------------------------- 4, 5. log-probs, memory
def shape_model(seed: int = 0):
    """A random model of SHAPE as load_model arranges one (batched vision attention, group attention)."""
    torch.manual_seed(seed)
    model = bench.build_qwen25_vl_shape(SHAPE, DEVICE.type)
    vlm.fast_vision_attention(model)
    vlm.install_group_attention(model)
    return model


def full_logprobs(model, prompts: dict, comp: torch.Tensor, mask: torch.Tensor, n: int) -> torch.Tensor:
    """The oracle: vlm.token_logprobs on one prompt + completion row per sample (prompt and images repeated)."""
    rows = list(range(len(comp)))
    p = vlm.select_prompts(prompts, [r // n for r in rows])
    batch = {"input_ids": torch.cat([p["input_ids"], comp], 1),
             "attention_mask": torch.cat([p["attention_mask"], mask.long()], 1),
             "mm_token_type_ids": torch.cat([p["mm_token_type_ids"], torch.zeros_like(comp)], 1),
             "pixel_values": p["pixel_values"], "image_grid_thw": p["image_grid_thw"]}
    labels = torch.cat([torch.full_like(p["input_ids"], -100), torch.where(mask, comp, -100)], 1)
    return vlm.token_logprobs(model, batch, labels)[:, -comp.shape[1]:]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_group_logprobs_equal_the_full_forward_under_fsdp2(one_rank, monkeypatch, precision):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    model = shape_model()
    vlm.enable_activation_checkpointing(model)
    model = vlm.shard_model(model.train(), DEVICE, bf16=precision == "bf16")
    tok, ip = vlm.build_tiny("tiny")[1:]
    vlm.set_pixel_bounds(ip, 56 * 56, 112 * 112)
    prompts = make_prompts(tok, ip, [((56, 56), "Which tile is flipped?"), ((112, 84), "Where is region 2?")])
    g = torch.Generator().manual_seed(0)
    n, w = 3, 9
    comp = torch.randint(20, 1000, (2 * n, w), generator=g)
    mask = torch.arange(w)[None] < torch.tensor([9, 4, 7, 1, 9, 5])[:, None]
    comp[~mask] = tok.pad_token_id
    weight = torch.randn(2 * n, w, generator=g).to(DEVICE)

    def run_once(fn):
        model.zero_grad(set_to_none=True)
        logp = fn()
        (logp * weight).sum().backward()
        grads = {k: p.grad.full_tensor().float() if hasattr(p.grad, "full_tensor") else p.grad.float()
                 for k, p in model.named_parameters() if p.grad is not None}
        return logp.detach().float().cpu(), grads
    lp_a, g_a = run_once(lambda: full_logprobs(model, prompts, comp, mask, n))
    lp_b, g_b = run_once(lambda: vlm.group_logprobs(model, prompts, comp, mask, n))
    max_tol, mean_tol, grad_tol, each_tol = TOLERANCES[precision]
    d = (lp_a - lp_b).abs()[mask]
    assert float(d.max()) <= max_tol and float(d.mean()) <= mean_tol, (float(d.max()), float(d.mean()))
    assert torch.equal(lp_b[~mask], torch.zeros(int((~mask).sum())))
    assert g_a.keys() == g_b.keys() and len(g_a) == len(list(model.parameters()))
    norm = math.sqrt(sum(float(x.pow(2).sum()) for x in g_a.values()))
    total = math.sqrt(sum(float((g_a[k] - g_b[k]).pow(2).sum()) for k in g_a)) / norm
    each = max(float((g_a[k] - g_b[k]).norm() / g_a[k].norm()) for k in g_a if g_a[k].norm() > 1e-6 * norm)
    assert total <= grad_tol and each <= each_tol, (total, each)


def test_grpo_step_peak_memory(tmp_path, monkeypatch):
    """One step of grpo.train (vision trained, activation checkpointing, reference, 2 updates per rollout, the
    compiled decoder) on the ~0.5B shape saved as a checkpoint: peak GPU memory (setup and the step; the run stops
    after it, before any save) below GRPO_BYTES_PER_PARAM · parameters + GRPO_RESERVE."""
    model = shape_model()
    n_params = sum(p.numel() for p in model.parameters())
    tok, ip = vlm.build_tiny("tiny")[1:]
    model.to(torch.bfloat16).save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    ip.save_pretrained(tmp_path / "model")
    del model
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sft.synthetic_records(data, 4, 112)))
    cfg = grpo.Config(model=str(tmp_path / "model"), data=str(data / "train.jsonl"), out=str(tmp_path / "out"),
                      max_steps=1, group_size=4, rollout_batch_size=4, update_batch_size=2, max_new_tokens=32,
                      min_pixels=56 * 56, max_pixels=112 * 112, save_every=0, exclude="none")
    if not TWIN:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    monkeypatch.setattr(grpo, "save_checkpoint", lambda *a: None)   # the step alone: no checkpoint or export
    monkeypatch.setattr(grpo, "save_hf", lambda *a, **k: None)
    rows = grpo.train(cfg)
    assert len(rows) == 1 and rows[0]["updates"] == 2 and math.isfinite(rows[0]["kl"])
    if TWIN:
        return                                   # CPU: no allocator statistics to bound
    peak, bound = torch.cuda.max_memory_allocated(), GRPO_BYTES_PER_PARAM * n_params + GRPO_RESERVE
    assert peak <= bound, f"peak {peak / 2**30:.2f} GiB > bound {bound / 2**30:.2f} GiB ({n_params / 1e6:.0f}M params)"


if __name__ == "__main__" and sys.argv[1:2] == ["killed-after"]:
    # `torchrun test_gpu.py killed-after sft|grpo STEP ARGS…`: the stage's own command line, killed right after
    # the checkpoint of STEP is written (conftest.killed_after), as a kill −9 would leave the run
    from conftest import Killed, killed_after
    stage, step, argv = sys.argv[2], int(sys.argv[3]), sys.argv[4:]
    if stage == "sft":
        sft.save_state = killed_after(sft.save_state, step)
    else:
        grpo.save_checkpoint = killed_after(grpo.save_checkpoint, step)
    try:
        (sft if stage == "sft" else grpo).main(argv)
    except Killed:
        pass
