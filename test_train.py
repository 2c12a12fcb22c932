"""Tests of sft.py: encoding, loss math, learning, FSDP2 equivalence, checkpoints, resume.

    python -m pytest -q test_train.py

Everything runs on CPU with tiny random Qwen-VL models (a few hundred thousand parameters) and tiny images.
One test launches `torch.distributed.run` with 2 gloo ranks; this file is also that launch's worker
(`python test_train.py fsdp-worker DIR`).
"""
import copy
import json
import math
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("SPATIAL_SSRL_DEVICE", "cpu")   # gloo/CPU also on a GPU machine (common.use_cuda)

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers.utils import logging as hf_logging

import common
import engine
import sft
import vlm
import tasks
from records import load_images

hf_logging.disable_progress_bar()
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "dev"))
from position_table import POSITION_TABLE, with_position_table   # noqa: E402  (a model class with its own code)
from conftest import Killed, killed_after   # noqa: E402
TWO_RANK_RUN = dict(global_batch_size=3, micro_batch_tokens=64, max_steps=4, save_every=3)
FSDP_TOL = 1e-5   # max |Δw| between 2-rank FSDP2 and 1 process after 4 AdamW steps at lr 1e-3 (fp32)


# ----------------------------------------------------------------------------- fixtures
def run_two_ranks(script: Path, *args: str) -> None:
    """`torchrun --nproc_per_node 2 script args` on CPU (gloo, also on a GPU machine), one thread per rank,
    this folder importable (the caller's PYTHONPATH kept); fails the test with the workers' output."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SPATIAL_SSRL_DEVICE": "cpu",
           "PYTHONPATH": os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script), *args]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def two_colour_records(folder: Path, n: int = 8, px: int = 56) -> list:
    """Records whose answer depends on the image (bright → A, dark → B), with short CoT responses."""
    records = []
    for i in range(n):
        bright = i % 2 == 0
        name = f"im{i}.png"
        value = 220 - 3 * i if bright else 30 + 3 * i
        Image.new("RGB", (px, px + 28 * (i % 3)), (value, value, value)).save(folder / name)
        answer = "A" if bright else "B"
        records.append({"id": f"r{i}", "task": "flip", "images": [name], "answer": answer, "meta": {},
                        "problem": "<image>Is the image bright or dark? A. bright B. dark",
                        "response": f"<think>The image is {'bright' if bright else 'dark'}.</think> "
                                    f"The answer is \\boxed{{{answer}}}"})
    return records


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    return write_jsonl(folder / "sft.jsonl", two_colour_records(folder))


def run_cfg(data: Path, out: Path, **kw) -> sft.Config:
    base = dict(model="tiny", data=str(data), out=str(out), max_steps=3, lr=1e-3, warmup_ratio=0.0,
                global_batch_size=4, micro_batch_tokens=200, save_every=0,
                lora_rank=0)   # the full-parameter fine-tune; the LoRA tests pass their rank
    return sft.Config(**{**base, **kw})


def weights(folder: Path) -> dict:
    return load_file(str(folder / "model.safetensors"))


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


# ----------------------------------------------------------------------------- pure functions
def test_sft_loss_hand_computed():
    """Minus the sum of the supervised tokens' log-probs, divided by the given normalizer."""
    logp = torch.tensor([[0.0, math.log(0.5), math.log(0.25), 0.0]])
    labels = torch.tensor([[-100, 7, 8, -100]])
    loss, m = sft.sft_loss(logp, labels, normalizer=2.0)
    expected = (-math.log(0.5) - math.log(0.25)) / 2
    assert m["tokens"] == 2 and abs(float(loss) - expected) < 1e-6


def full_logits_logprobs(model, batch: dict, labels: torch.Tensor, temperature: float) -> tuple:
    """The plain reference: full (B, T, V) logits, shifted by one, log_softmax(z / τ) gathered at the labels."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    z = model(**inputs, use_cache=False).logits.float() / temperature          # (B, T, V)
    lsm = torch.log_softmax(z[:, :-1], -1)                                      # position t-1 predicts t
    mask = labels[:, 1:] != -100
    got = lsm.gather(-1, labels[:, 1:].clamp(min=0)[..., None]).squeeze(-1) * mask
    ent = -(lsm.exp() * lsm).sum(-1) * mask
    pad = torch.zeros(labels.shape[0], 1)
    return torch.cat([pad, got], 1), torch.cat([pad, ent], 1)


@pytest.mark.parametrize("kind", ["tiny", "tiny-qwen3"])
def test_token_logprobs_equal_full_logits(data, kind):
    """token_logprobs (LM head at supervised positions only, chunked, fp32) equals log_softmax of the full
    logits, with a temperature, entropy included, and so do the gradients; unsupervised positions are 0."""
    model, tok, ip = vlm.load_model(kind)
    recs = common.read_jsonl(data)[:3]
    recs[1] = dict(recs[1], response=recs[1]["response"] + " Done, it is dark indeed.")   # unequal lengths
    batch = vlm.encode_records(recs, data.parent, tok, ip, response=True)
    labels = batch["labels"]
    for tau in (1.0, 0.7):
        ref, ref_ent = full_logits_logprobs(model, batch, labels, tau)
        ref.sum().backward()
        ref_grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        got, ent = vlm.token_logprobs(model, batch, labels, temperature=tau, chunk_size=7, with_entropy=True)
        got.sum().backward()
        assert got.shape == labels.shape and got.dtype == torch.float32 and not ent.requires_grad
        assert bool((got[labels == -100] == 0).all()) and bool((got[labels != -100] < 0).all())
        assert torch.allclose(got, ref, atol=1e-5) and torch.allclose(ent, ref_ent, atol=1e-5)
        for p, g in zip(model.parameters(), ref_grads):
            assert torch.allclose(p.grad, g, atol=1e-5)
        model.zero_grad()


def test_token_logprobs_without_supervised_tokens_is_zero_but_connected(data):
    """A batch without supervised tokens (a zero-weight filler) gives all zeros and still back-propagates to
    the LM head (every FSDP unit must take part in the backward)."""
    model, tok, ip = vlm.load_model("tiny")
    batch = vlm.encode_records(common.read_jsonl(data)[:1], data.parent, tok, ip, response=True)
    logp = vlm.token_logprobs(model, batch, torch.full_like(batch["labels"], -100))
    assert bool((logp == 0).all())
    logp.sum().backward()
    assert model.lm_head.weight.grad is not None and float(model.lm_head.weight.grad.abs().sum()) == 0.0


def test_lr_schedule_matches_cosine_with_warmup():
    """10% linear warmup from 0, then a half cosine to 0 (HF get_cosine_schedule_with_warmup)."""
    lrs = [sft.lr_at(s, 20, 1e-5, 0.1) for s in range(20)]
    assert lrs[0] == 0 and lrs[1] == pytest.approx(0.5e-5) and lrs[2] == pytest.approx(1e-5)
    assert lrs[11] == pytest.approx(0.5e-5) and all(a >= b for a, b in zip(lrs[2:], lrs[3:]))


def test_token_micro_batches_sorted_within_budget():
    """common.token_micro_batches (the rule of SFT and GRPO): rows sorted by length, packed while rows × longest
    stays within the budget (a lone over-long row alone); with `count`, the largest packs are halved and empty
    ones appended until there are `count` of them, every row still in exactly one."""
    lengths = [5, 30, 12, 7, 30, 100, 11]
    assert common.token_micro_batches(lengths, 60) == [[0, 3, 6, 2], [1, 4], [5]]   # 4×12, 2×30, 100 alone
    more = common.token_micro_batches(lengths, 60, count=5)
    assert more == [[0, 3], [6, 2], [1], [4], [5]]
    assert common.token_micro_batches([3], 60, count=2) == [[0], []]


def test_rank_batches_cover_the_batch_with_equal_counts(data):
    """Each rank gets the same number of encoded micro-batches (FSDP2 collectives must match), each within the
    token budget unless a sample alone exceeds it, every sample on exactly one rank; a rank short of samples
    gets zero-weight ones (labels all −100)."""
    _, tok, ip = vlm.load_model("tiny")
    recs, _ = sft.prepare_records(common.read_jsonl(data)[:7], data.parent, tok, ip, 4096, False)
    budget = 2 * max(r["num_tokens"] for r in recs)
    per_rank = [sft.rank_batches(recs, data.parent, tok, ip, common.Dist(rank=r, world_size=2), budget) for r in (0, 1)]
    assert len(per_rank[0]) == len(per_rank[1]) >= 2
    real = [b for mbs in per_rank for b in mbs if (b["labels"] != -100).any()]
    assert sum(b["input_ids"].shape[0] for b in real) == 7
    assert all(b["input_ids"].shape[0] == 1 or b["input_ids"].numel() <= budget for b in real)
    lone = sft.rank_batches(recs[:1], data.parent, tok, ip, common.Dist(rank=1, world_size=2), budget)
    assert len(lone) == 1 and (lone[0]["labels"] == -100).all()


def test_setup_dist_more_local_ranks_than_gpus_is_a_clear_error(monkeypatch):
    """On a 1-GPU machine local rank 1 fails with one line naming the fix (not "invalid device ordinal");
    SPATIAL_SSRL_DEVICE=cpu forces the CPU/gloo path the tests use."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("SPATIAL_SSRL_DEVICE", "cpu")
    assert not common.use_cuda()
    monkeypatch.setenv("SPATIAL_SSRL_DEVICE", "")
    assert common.use_cuda()
    for k, v in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(common.SetupError, match="only 1 GPU"):
        common.setup_dist(0)


def test_atomic_write_replaces_whole_files(tmp_path):
    """atomic_write leaves the old content or the new one, never a mix, and no temporary file behind."""
    target = tmp_path / "metrics.jsonl"
    common.atomic_write(target, "old\n")
    common.atomic_write(target, b"new\n")
    assert target.read_text() == "new\n" and [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]


def test_cli_smoke_run(tmp_path):
    """`python sft.py --smoke` wires the command line to the loop and writes the documented outputs."""
    sft.main(["--smoke", "--out", str(tmp_path)])
    for name in ("model.safetensors", "config.json", "tokenizer.json", "preprocessor_config.json",
                 "metrics.jsonl", "run.json", "checkpoints/step_00000002/trainer_state.json"):
        assert (tmp_path / name).exists(), name
    info = json.loads((tmp_path / "run.json").read_text())
    assert info["prog"] == "sft.py" and info["config"]["max_steps"] == 2 and info["identity"]["total_steps"] == 2


def test_help_exits_zero():
    r = subprocess.run([sys.executable, str(HERE / "sft.py"), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--global-batch-size" in r.stdout and "--resume" in r.stdout


# ----------------------------------------------------------------------------- encoding
def image_only_processor(kind: str, tok, ip):
    """transformers' own Qwen2.5-VL / Qwen3-VL processor without its video half (which needs torchvision
    in transformers 5.x): a subclass whose __init__ has no video_processor argument (platform-notes §2a)."""
    from transformers import Qwen2_5_VLProcessor, Qwen3VLProcessor
    from transformers.processing_utils import ProcessorMixin
    base = Qwen3VLProcessor if kind == "tiny-qwen3" else Qwen2_5_VLProcessor

    class ImageOnlyProcessor(base):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
            self.vision_start_token, self.vision_end_token = "<|vision_start|>", "<|vision_end|>"
            for name in ("image", "video", "vision_start", "vision_end"):
                setattr(self, f"{name}_token_id", tokenizer.convert_tokens_to_ids(getattr(self, f"{name}_token")))
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    return ImageOnlyProcessor(image_processor=ip, tokenizer=tok, chat_template=tok.chat_template)


@pytest.mark.parametrize("kind,grids", [("tiny", [[1, 6, 8], [1, 10, 14], [1, 4, 4]]),
                                        ("tiny-qwen3", [[1, 6, 8], [1, 10, 12], [1, 4, 4]])])
def test_encoding_equals_hf_processor(kind, grids):
    """Our encoder (used by SFT, GRPO and eval) gives the same model inputs as transformers' processor:
    image-token expansion, pixel patches, grids, mm_token_type_ids and left padding."""
    _, tok, ip = vlm.load_model(kind, min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 64)
    rng = np.random.default_rng(0)
    noise = lambda h, w: Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    images = [[noise(84, 112)], [noise(150, 200), noise(60, 60)]]
    convs = [vlm.build_messages("<image>Which tile is flipped?"),
             vlm.build_messages("Compare <image> and <image>: which one is closer?")]
    ours = vlm.encode(convs, images, tok, ip, padding_side="left")
    texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in convs]
    tok.padding_side = "left"
    ref = image_only_processor(kind, tok, ip)(text=texts, images=[i for ims in images for i in ims],
                                              padding=True, return_tensors="pt")
    for key in ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw"):
        assert torch.equal(ours[key], ref[key]), key
    assert ours["image_grid_thw"].tolist() == grids


def test_prompt_text_and_labels():
    """Prompt = with_cot(problem) with an image item per <image>; labels = response + <|im_end|> only."""
    _, tok, ip = vlm.load_model("tiny")
    msgs = vlm.build_messages("<image> Which is closer?", "<think>x</think> \\boxed{A}")
    assert msgs[0]["content"][0] == {"type": "image"}
    assert msgs[0]["content"][1]["text"] == tasks.with_cot("<image> Which is closer?")[len("<image>"):]
    im = Image.new("RGB", (56, 56))
    right = vlm.encode([msgs, msgs[:1]], [[im], [im]], tok, ip, padding_side="right")
    left = vlm.encode([msgs], [[im]], tok, ip, padding_side="left")
    lab = right["labels"][0]
    target = lab[lab != -100].tolist()
    assert tok.decode(target) == "<think>x</think> \\boxed{A}<|im_end|>"
    assert (right["labels"][1] == -100).all()          # no assistant turn → nothing supervised
    n = int(right["attention_mask"][0].sum())
    assert torch.equal(right["input_ids"][0, :n], left["input_ids"][0, -n:])
    text = tok.decode(right["input_ids"][1][right["attention_mask"][1].bool()])
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                           "<|vision_start|><|image_pad|>") and text.endswith("<|im_start|>assistant\n")


def test_image_pixel_bounds_and_token_count():
    """Images are resized into [min_pixels, max_pixels] (paper: ≤ 512² px for SFT), and the token count
    predicted from the image size (used to check lengths up front) equals the processed grid's."""
    _, tok, ip = vlm.load_model("tiny", min_pixels=56 * 56, max_pixels=512 * 512)
    for size in [(1000, 800), (30, 20), (333, 777)]:
        grid = ip(images=[Image.new("RGB", size)], return_tensors="pt")["image_grid_thw"][0]
        assert 56 * 56 <= int(grid.prod()) * 14 * 14 <= 512 * 512
        assert vlm.image_token_count(size, ip) == int(grid.prod()) // 4


# ----------------------------------------------------------------------------- video encoding
def hf_video_processor_code() -> dict:
    """smart_resize, and Qwen2VLVideoProcessor.patchify / get_num_of_video_patches, taken verbatim (by ast) from
    the installed transformers' video_processing_qwen2_vl.py: that class needs torchvision (not installed), its
    patch layout and token count are plain torch / Python."""
    import ast
    import math
    import transformers
    path = Path(transformers.__file__).parent / "models" / "qwen2_vl" / "video_processing_qwen2_vl.py"
    tree, ns = ast.parse(path.read_text()), {"torch": torch, "math": math}
    picked = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "smart_resize"]
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Qwen2VLVideoProcessor")
    picked += [n for n in cls.body if isinstance(n, ast.FunctionDef)
               and n.name in ("patchify", "get_num_of_video_patches")]
    assert len(picked) == 3
    exec(compile(ast.Module(body=picked, type_ignores=[]), str(path), "exec"), ns)
    return ns


def noise_frames(n: int, w: int = 112, h: int = 84, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for _ in range(n)]


def video_conv(frames, text="What happens?", **extra) -> list:
    return [{"role": "user", "content": [{"type": "video", "video": frames, **extra}, {"type": "text", "text": text}]}]


def test_video_encoding_equals_hf_video_processor():
    """A video item (list of PIL frames) gives the model inputs transformers' Qwen2.5-VL processor gives:
    pixel_values_videos from HF's own patchify (its source, run on frames resized as qwen-vl-utils resizes a
    frame list: PIL bicubic to smart_resize, then CLIP-normalised), video_grid_thw and the token count from
    HF's get_num_of_video_patches (5 frames → padded to 6 → 3 temporal patches), second_per_grid_ts = 2 / fps,
    and the token expansion + mm_token_type_ids (2 on video tokens) of the processor itself, in a left-padded
    batch that also holds an image."""
    _, tok, ip = vlm.load_model("tiny")
    hf = hf_video_processor_code()
    frames, image = noise_frames(5, 130, 100), noise_frames(1, 60, 60, seed=1)[0]   # resized to 140×112
    lo, hi = 4 * 784, 64 * 784
    convs = [video_conv(frames, min_pixels=lo, max_pixels=hi, fps=1.0),
             [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "And this?"}]}]]
    ours = vlm.encode(convs, [[], [image]], tok, ip, padding_side="left")
    # pixels: frames resized and normalised independently of the image processor, patchified by HF's code
    h, w = hf["smart_resize"](100, 130, factor=28, min_pixels=lo, max_pixels=hi)
    mean, std = np.array(ip.image_mean, np.float32), np.array(ip.image_std, np.float32)
    x = np.stack([(np.asarray(f.resize((w, h), Image.BICUBIC), np.float32) / 255 - mean) / std for f in frames])
    ref_pix, t, gh, gw = hf["patchify"](None, torch.from_numpy(x).permute(0, 3, 1, 2)[None], 14, 2, 2)
    assert (t, gh, gw) == (3, h // 14, w // 14) and ours["video_grid_thw"].tolist() == [[3, gh, gw]]
    assert (h, w) == (112, 140) and torch.equal(ours["pixel_values_videos"], ref_pix[0])
    settings = types.SimpleNamespace(size={"shortest_edge": lo, "longest_edge": hi}, patch_size=14, merge_size=2,
                                     temporal_patch_size=2)
    n_tokens = hf["get_num_of_video_patches"](settings, 5, 100, 130, {}) // 4
    assert torch.equal(ours["second_per_grid_ts"], torch.tensor([2.0]))        # temporal_patch_size / fps
    # the rest from transformers' Qwen2_5_VLProcessor.__call__ itself, its video processor replaced by a stand-in
    # returning the reference pixels above and the frame rate (the processor expands <|video_pad|>, derives
    # second_per_grid_ts from the fps, builds mm_token_type_ids)
    from transformers.video_utils import VideoMetadata

    class StandInVideoProcessor:
        merge_size, temporal_patch_size = 2, 2

        def __call__(self, videos, **kwargs):
            return {"pixel_values_videos": ref_pix[0], "video_grid_thw": torch.tensor([[t, gh, gw]]),
                    "video_metadata": [VideoMetadata(total_num_frames=5, fps=1.0)]}

    texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in convs]
    tok.padding_side = "left"
    proc = image_only_processor("tiny", tok, ip)
    proc.video_processor = StandInVideoProcessor()
    ref = proc(text=texts, images=[image], videos=[frames], padding=True, return_tensors="pt")
    assert torch.equal(ref["second_per_grid_ts"], torch.tensor([2.0]))
    for key in ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw",
                "video_grid_thw"):
        assert torch.equal(ours[key], ref[key]), key
    assert int((ours["mm_token_type_ids"] == 2).sum()) == n_tokens == 3 * gh * gw // 4
    with pytest.raises(ValueError, match="differ in size"):
        vlm.encode([video_conv(frames[:1] + noise_frames(1, 56, 56))], [[]], tok, ip)


def test_video_token_counts_differ_from_images():
    """Frames as one video are 2 frames per temporal patch: 2 frames → 1 patch (half the tokens of the same 2
    frames as images), 3 frames → padded to 4 → 2 patches, 4 frames → 2 patches."""
    _, tok, ip = vlm.load_model("tiny")
    frames = noise_frames(4)
    per_image = vlm.image_token_count(frames[0].size, ip)
    as_images = vlm.encode([vlm.build_messages("<image><image>Same?")], [frames[:2]], tok, ip)
    assert int((as_images["mm_token_type_ids"] == 1).sum()) == 2 * per_image
    for n, patches in ((1, 1), (2, 1), (3, 2), (4, 2)):
        b = vlm.encode([video_conv(frames[:n])], [[]], tok, ip)
        assert b["video_grid_thw"][0, 0] == patches and "pixel_values" not in b
        assert int((b["mm_token_type_ids"] == 2).sum()) == patches * per_image
        assert int((b["input_ids"] == 13).sum()) == patches * per_image      # <|video_pad|>


def test_video_forward_matches_image_path():
    """The tiny Qwen2.5-VL's forward through the video path: a video of 2 identical frames is one temporal
    patch with exactly the image's pixel rows (the HF image processor's, resize included), so its logits
    equal the image's;
    a 4-frame video gets temporal positions spaced by tokens_per_second · 2 / fps, and the batched vision
    attention (fast_vision_attention) gives the logits of transformers' own loop over windows."""
    model, tok, ip = vlm.load_model("tiny")
    im = noise_frames(1, 130, 100)[0]           # resized to 140×112 by both paths
    img = vlm.encode([[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Which?"}]}]],
                     [[im]], tok, ip)
    vid = vlm.encode([video_conv([im, im], text="Which?")], [[]], tok, ip)
    assert torch.equal(vid["pixel_values_videos"], img["pixel_values"])
    assert torch.equal(vid["video_grid_thw"], img["image_grid_thw"])
    assert torch.equal(vid["mm_token_type_ids"] // 2, img["mm_token_type_ids"])
    run = lambda m, b: m(**{k: v for k, v in b.items() if k != "labels"}).logits
    with torch.no_grad():
        torch.testing.assert_close(run(model, vid), run(model, img), atol=1e-5, rtol=1e-5)
        four = vlm.encode([video_conv(noise_frames(4), fps=1.0)], [[]], tok, ip)
        pos, _ = model.model.get_rope_index(four["input_ids"], four["mm_token_type_ids"],
                                            video_grid_thw=four["video_grid_thw"],
                                            second_per_grid_ts=four["second_per_grid_ts"],
                                            attention_mask=four["attention_mask"])
        video_t = pos[0, 0][four["mm_token_type_ids"][0] == 2]
        step = model.config.vision_config.tokens_per_second * 2 / 1.0
        assert video_t.unique().tolist() == [int(video_t[0]), int(video_t[0] + step)]
        plain, _, _ = vlm.build_tiny("tiny")          # transformers' per-window attention loop
        torch.testing.assert_close(run(model, four), run(plain, four), atol=1e-5, rtol=1e-5)
        two_fps = vlm.encode([video_conv(noise_frames(4), fps=2.0)], [[]], tok, ip)
        assert not torch.allclose(run(model, four), run(model, two_fps))   # fps moves the temporal positions


def test_bad_records_error_or_skip(tmp_path):
    """Missing image, no response, over-long sample: an error naming the record, or skip-and-count."""
    good = two_colour_records(tmp_path, n=2)
    bad = [dict(good[0], id="no-image", images=["missing.png"]), dict(good[0], id="no-response", response=""),
           dict(good[0], id="too-long", response="word " * 300)]
    _, tok, ip = vlm.load_model("tiny")
    for rec in bad:
        with pytest.raises(common.BadRecord, match=rec["id"]):
            sft.prepare_records(good + [rec], tmp_path, tok, ip, max_length=256, skip_bad=False)
    kept, skipped = sft.prepare_records(good + bad, tmp_path, tok, ip, max_length=256, skip_bad=True)
    assert [r["id"] for r in kept] == ["r0", "r1"] and skipped == 3


def prompt_batch(tok, ip) -> dict:
    return vlm.encode([vlm.build_messages("<image>Which?"), vlm.build_messages("Why <image>?")],
                      [[Image.new("RGB", (56, 56))], [Image.new("RGB", (84, 56), (200, 10, 10))]], tok, ip, "left")


def test_engine_never_emits_vision_tokens():
    """The decoder suppresses <|image_pad|> & co. even when the model prefers them (a sampled image token would
    break the next log-prob forward); sampling returns n rows per prompt."""
    model, tok, ip = vlm.load_model("tiny")
    vision_ids = tok.convert_tokens_to_ids(list(vlm.VISION_TOKENS))
    bias = torch.zeros(model.config.get_text_config().vocab_size)
    bias[vision_ids] = 50.0
    model.lm_head.register_forward_hook(lambda mod, inp, out: out + bias)
    batch = prompt_batch(tok, ip)
    dec = engine.Engine(model)
    greedy, _ = dec.generate(batch, tok, max_new_tokens=5)
    sampled, _ = dec.generate(batch, tok, max_new_tokens=5, greedy=False, n=3)
    assert greedy.shape == (2, 5) and sampled.shape == (6, 5)
    assert not any(t in vision_ids for t in greedy.flatten().tolist() + sampled.flatten().tolist())


def test_completion_mask_runs_through_the_first_stop_token():
    """The mask covers the completion up to and including the first stop token (here 2 or 9); a sampled pad
    token (0) before it is part of the completion; everything after it is masked and set to pad."""
    ids = torch.tensor([[5, 0, 2, 7, 2], [5, 6, 7, 8, 1], [2, 4, 0, 0, 0], [5, 9, 2, 3, 3]])
    out, mask = engine.completion_mask(ids, [2, 9], pad_id=0)
    assert mask.tolist() == [[True, True, True, False, False], [True] * 5, [True, False, False, False, False],
                             [True, True, False, False, False]]
    assert out.tolist() == [[5, 0, 2, 0, 0], [5, 6, 7, 8, 1], [2, 0, 0, 0, 0], [5, 9, 0, 0, 0]]


def manual_greedy(model, batch: dict, n: int, banned: list) -> torch.Tensor:
    """Independent greedy decoding: full forward each step, argmax of the last logits (banned ids masked)."""
    b = {k: v for k, v in batch.items() if k != "labels"}
    out = []
    for _ in range(n):
        z = model(**b, use_cache=False).logits[:, -1]
        z[:, banned] = -float("inf")
        nxt = z.argmax(-1, keepdim=True)
        out.append(nxt)
        b["input_ids"] = torch.cat([b["input_ids"], nxt], 1)
        for key in ("attention_mask", "mm_token_type_ids"):
            b[key] = torch.cat([b[key], torch.full_like(nxt, 1 if key == "attention_mask" else 0)], 1)
    return torch.cat(out, 1)


def test_engine_ignores_the_checkpoints_sampling_settings():
    """Sampling fields planted in model.generation_config (as a checkpoint's generation_config.json would set
    them: Qwen2.5-VL ships repetition_penalty 1.05) change nothing: greedy equals an independent argmax loop
    without a KV cache, and seeded sampling is the same with and without them. transformers' own generate does
    read them (so this test can fail)."""
    from transformers import GenerationConfig
    model, tok, ip = vlm.load_model("tiny")
    batch = prompt_batch(tok, ip)
    banned = tok.convert_tokens_to_ids(list(vlm.VISION_TOKENS))
    dec = engine.Engine(model)
    clean_greedy, mask = dec.generate(batch, tok, max_new_tokens=12)
    torch.manual_seed(0)
    clean_sampled, _ = dec.generate(batch, tok, max_new_tokens=12, greedy=False, n=2)
    assert torch.equal(clean_greedy[mask], manual_greedy(model, batch, 12, banned)[mask])
    plant = dict(repetition_penalty=5.0, no_repeat_ngram_size=2, top_k=1, temperature=0.05, min_new_tokens=12,
                 do_sample=True, typical_p=0.5, min_p=0.9)
    for k, v in plant.items():
        setattr(model.generation_config, k, v)
    planted_greedy, _ = dec.generate(batch, tok, max_new_tokens=12)
    torch.manual_seed(0)
    planted_sampled, _ = dec.generate(batch, tok, max_new_tokens=12, greedy=False, n=2)
    assert torch.equal(planted_greedy, clean_greedy) and torch.equal(planted_sampled, clean_sampled)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    naive = model.generate(**inputs, generation_config=GenerationConfig(max_new_tokens=12, do_sample=False,
                                                                        pad_token_id=0, eos_token_id=2))
    assert not torch.equal(naive[:, batch["input_ids"].shape[1]:], clean_greedy)   # the plant bites there


@pytest.mark.parametrize("kind", ["tiny", "tiny-qwen3"])
def test_fast_vision_attention_equals_transformers_loop(kind):
    """The batched vision attention (segment_attention: one sdpa call per window length) gives the vision
    tower's output and input gradient of transformers' per-window loop within 1e-5 (fp32), on images whose
    sizes make windows of several lengths; load_model installs it on every vision attention module."""
    fast, _, ip = vlm.load_model(kind)
    plain = vlm.build_tiny(kind)[0]                                  # same seed, transformers' own forward
    assert all("forward" in vars(b.attn) for b in fast.model.visual.blocks)
    assert not any("forward" in vars(b.attn) for b in plain.model.visual.blocks)
    rng = np.random.default_rng(0)
    ims = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in [(224, 168), (140, 308),
                                                                                          (112, 112), (224, 168)]]
    px = ip(images=ims, return_tensors="pt")
    outs = []
    for model in (plain, fast):
        x = px["pixel_values"].clone().requires_grad_(True)
        y = model.model.visual(x, grid_thw=px["image_grid_thw"]).pooler_output
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        outs.append((y.detach(), x.grad))
    (y0, g0), (y1, g1) = outs
    assert torch.allclose(y0, y1, atol=1e-5) and torch.allclose(g0, g1, atol=1e-5)


def test_segment_attention_hand_computed():
    """Attention never crosses a segment: with v = one-hot segment ids, every output row is its own
    segment's one-hot; with equal scores each output is its segment's mean of v."""
    cu = torch.tensor([0, 2, 5, 7, 8])
    q, k = torch.zeros(8, 1, 2), torch.zeros(8, 1, 2)
    seg = torch.tensor([0, 0, 1, 1, 1, 2, 2, 3])
    v = torch.nn.functional.one_hot(seg, 4).float()[:, None, :]       # (8, 1, 4)
    out = vlm.segment_attention(q, k, v, cu, scale=1.0)
    assert torch.allclose(out, v)
    v2 = torch.arange(8.0).view(8, 1, 1)
    out2 = vlm.segment_attention(q, k, v2, cu, scale=1.0).flatten()
    assert torch.allclose(out2, torch.tensor([0.5, 0.5, 3, 3, 3, 5.5, 5.5, 7]))
    out3 = vlm.segment_attention(q, k, v2, torch.tensor([0, 4, 8]), scale=1.0).flatten()   # equal lengths
    assert torch.allclose(out3, torch.tensor([1.5] * 4 + [5.5] * 4))


@pytest.mark.parametrize("train_vision", [False, True])
def test_activation_checkpointing_only_where_it_trains(data, train_vision):
    """Decoder layers are always checkpointed (recomputed in the backward); the vision blocks only when the
    vision tower trains (GRPO), never when it is frozen (SFT). Counted by the calls of each block's
    attention during one forward + backward: 2 = recomputed, 1 = not."""
    model, tok, ip = vlm.load_model("tiny")
    if not train_vision:
        vlm.freeze_vision(model)
    names = vlm.enable_activation_checkpointing(model)
    model.train()
    calls = {}
    for name, m in model.named_modules():
        if name.endswith(".attn") or name.endswith(".self_attn"):
            m.register_forward_hook(lambda mod, i, o, name=name: calls.__setitem__(name, calls.get(name, 0) + 1))
    batch = vlm.encode_records(common.read_jsonl(data)[:2], data.parent, tok, ip, response=True)
    labels = batch.pop("labels")
    vlm.token_logprobs(model, batch, labels).sum().backward()
    vision = {n: c for n, c in calls.items() if ".visual." in n}
    text = {n: c for n, c in calls.items() if ".language_model." in n}
    assert len(vision) == 2 and len(text) == 2
    assert set(text.values()) == {2} and set(vision.values()) == {2 if train_vision else 1}
    assert sum(".visual." in n for n in names) == (2 if train_vision else 0)
    twin = copy.deepcopy(model)   # e.g. a reference model: its layers must run themselves, not the original's
    layer = twin.model.language_model.layers[0]
    assert layer.forward.__self__ is layer


def mixed_prompts(tok, ip) -> tuple:
    """Four prompts with 1, 2, 0 and 1 images of different sizes (convs, images, left-padded batch)."""
    rng = np.random.default_rng(0)
    noise = lambda w, h: Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    convs = [vlm.build_messages("<image>Which?"), vlm.build_messages("Why <image> and <image>?"),
             vlm.build_messages("Text only?"), vlm.build_messages("<image>Last?")]
    ims = [[noise(56, 56)], [noise(84, 56), noise(56, 112)], [], [noise(112, 84)]]
    return convs, ims, vlm.encode(convs, ims, tok, ip, "left")


def test_select_prompts_and_buckets():
    """Selecting prompts out of a batch (any order) keeps exactly their images (pixel rows and grids) and cuts
    the columns that are padding in all of them, as encoding them alone does; prompt lengths round up to the
    buckets."""
    _, tok, ip = vlm.load_model("tiny")
    convs, ims, batch = mixed_prompts(tok, ip)
    for rows in ([0], [1], [1, 2], [2], [3], [0, 1, 2, 3], [3, 0], [2, 1, 3]):
        part = vlm.select_prompts(batch, rows)
        ref = vlm.encode([convs[r] for r in rows], [ims[r] for r in rows], tok, ip, "left")
        assert torch.equal(part["input_ids"], ref["input_ids"]) and torch.equal(part["attention_mask"], ref["attention_mask"])
        assert ("pixel_values" in part) == ("pixel_values" in ref)
        for key in ("pixel_values", "image_grid_thw"):
            assert key not in ref or torch.equal(part[key], ref[key])
    assert [engine.bucket_length(n, (256, 512)) for n in (1, 256, 257, 512, 513, 1100)] == [256, 256, 512, 512,
                                                                                         1024, 1536]


def fixed_shape_engine(model, monkeypatch, **kw) -> engine.Engine:
    """The engine as it runs on CUDA (prompts padded to a bucket, a fixed number of prompts per call with filler
    prompts) with torch.compile replaced by the identity: the shapes of the GPU path at CPU speed."""
    monkeypatch.setattr(engine.torch, "compile", lambda fn, **_: fn)
    return engine.Engine(model, compile=True, **kw)


def test_select_prompts_and_engine_with_videos(monkeypatch):
    """Video batches: selecting prompts keeps exactly their videos (pixel_values_videos rows, video_grid_thw,
    second_per_grid_ts) and images, as encoding them alone does; the fixed-shape engine (bucket padding, filler
    prompts) decodes a batch mixing videos, images and text to the same greedy ids as the plain one."""
    model, tok, ip = vlm.load_model("tiny")
    image = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Which?"}]}]
    both = [{"role": "user", "content": [{"type": "image"}, {"type": "video", "video": noise_frames(2, 56, 56, 3)},
                                         {"type": "text", "text": "Both?"}]}]
    convs = [video_conv(noise_frames(4), fps=1.0), image, vlm.build_messages("Text only?"), both,
             video_conv(noise_frames(3, 84, 56, 5))]
    ims = [[], noise_frames(1, 56, 84, 1), [], noise_frames(1, 84, 84, 2), []]
    batch = vlm.encode(convs, ims, tok, ip, "left")
    assert batch["video_grid_thw"][:, 0].tolist() == [2, 1, 2] and batch["second_per_grid_ts"].tolist() == [2, 1, 1]
    keys = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts")
    for rows in ([0], [1], [2], [3], [4], [1, 2, 3], [0, 1, 2, 3, 4], [4, 0]):
        part = vlm.select_prompts(batch, rows)
        ref = vlm.encode([convs[r] for r in rows], [ims[r] for r in rows], tok, ip, "left")
        assert torch.equal(part["input_ids"], ref["input_ids"])
        assert {k for k in keys if k in part} == {k for k in keys if k in ref}
        for key in keys:
            assert key not in ref or torch.equal(part[key], ref[key]), (rows, key)
    ids, mask = engine.Engine(model).generate(batch, tok, max_new_tokens=5)
    e_ids, e_mask = fixed_shape_engine(model, monkeypatch, prompts_per_call=2).generate(batch, tok, max_new_tokens=5)
    assert torch.equal(ids, e_ids) and torch.equal(mask, e_mask)


def test_fixed_shape_engine_equals_the_plain_one(monkeypatch):
    """The GPU shapes (a bf16-style separate copy, prompts padded to a bucket, 3 prompts per call with filler
    prompts in the second call, one cache length) give the plain engine's greedy ids and masks; sampling keeps
    rows grouped by prompt. A plain model in the engine's dtype is decoded in place; a torch.compile failure
    is reported once and decoding goes on eagerly."""
    model, tok, ip = vlm.load_model("tiny")
    _, _, batch = mixed_prompts(tok, ip)
    batch.pop("labels")
    plain = engine.Engine(model)
    assert plain.shared and plain.model is model
    ids, mask = plain.generate(batch, tok, max_new_tokens=6)
    fixed = fixed_shape_engine(model, monkeypatch, prompts_per_call=3, dtype=torch.float32)
    fixed.shared, fixed.model = False, None
    fixed.refresh(model)                                       # a separate copy, as of an FSDP2 policy
    assert fixed.model is not model and all(torch.equal(a, b) for a, b in
                                            zip(fixed.model.state_dict().values(), model.state_dict().values()))
    e_ids, e_mask = fixed.generate(batch, tok, max_new_tokens=6)
    assert torch.equal(ids, e_ids) and torch.equal(mask, e_mask)
    assert fixed.cache.layers[0].max_cache_len == engine.bucket_length(batch["input_ids"].shape[1]) + 6
    s_ids, s_mask = fixed.generate(batch, tok, max_new_tokens=6, greedy=False, n=2)
    assert s_ids.shape[0] == 8 and torch.equal(s_mask, engine.completion_mask(s_ids, engine.stop_token_ids(tok), 0)[1])
    calls = []

    def flaky(*args):
        calls.append(1)
        raise RuntimeError("inductor: no C++ compiler")
    fixed.step_fn = flaky
    assert torch.equal(fixed.generate(batch, tok, max_new_tokens=6)[0], ids) and calls == [1]
    assert fixed.step_fn == fixed._step


# ----------------------------------------------------------------------------- training
def test_micro_batch_invariance(data):
    """One global batch as 1 micro-batch, as 2, or cut by a token budget gives the same gradient (token mean
    over the global batch, not a mean of micro-batch means). SGD with lr 1 makes the update −gradient."""
    _, tok, ip = vlm.load_model("tiny")
    recs = common.read_jsonl(data)[:4]
    recs[1] = dict(recs[1], response=recs[1]["response"] + " Done, it is dark indeed.")   # unequal lengths
    lengths = [len(vlm.encode_records([r], data.parent, tok, ip, response=True)["input_ids"][0]) for r in recs]
    by_tokens = [[recs[i] for i in mb] for mb in common.token_micro_batches(lengths, 2 * max(lengths))]
    assert [len(mb) for mb in by_tokens] == [2, 2]
    updates = []
    for split in ([recs], [recs[:1], recs[1:]], by_tokens):
        model, _, _ = vlm.load_model("tiny")
        before = [p.detach().clone() for p in model.parameters()]
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        batches = [vlm.encode_records(mb, data.parent, tok, ip, response=True) for mb in split]
        m = sft.train_step(model, opt, batches, 1.0, 1e9, torch.device("cpu"))
        updates.append(([p.detach() - b for p, b in zip(model.parameters(), before)], m["loss"]))
    (u1, l1) = updates[0]
    for u2, l2 in updates[1:]:
        assert abs(l1 - l2) < 1e-6
        assert max(float((a - b).abs().max()) for a, b in zip(u1, u2)) < 1e-6


def greedy_answers(model_dir: str, records: list, root: Path) -> list:
    from transformers import AutoModelForImageTextToText
    from transformers import AutoImageProcessor, AutoTokenizer
    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    tok, ip = AutoTokenizer.from_pretrained(model_dir), AutoImageProcessor.from_pretrained(model_dir)
    batch = vlm.encode([vlm.build_messages(r["problem"]) for r in records],
                       [load_images(r, root) for r in records], tok, ip, padding_side="left")
    out, _ = engine.Engine(model).generate(batch, tok, max_new_tokens=24)
    return tok.batch_decode(out, skip_special_tokens=True)


def test_tiny_model_learns_the_format(data, tmp_path):
    """SFT drives the loss down and greedy decoding of the saved checkpoint then answers in the
    <think>…</think> … \\boxed{…} format (what the cold start is for)."""
    out = tmp_path / "run"
    sft.train(run_cfg(data, out, max_steps=60, lr=1e-2, warmup_ratio=0.1, global_batch_size=8,
                      activation_checkpointing=False))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 60 and rows[-1]["loss"] < 0.1 * rows[0]["loss"]
    recs = common.read_jsonl(data)
    answers = greedy_answers(str(out), recs[:4], data.parent)
    assert all(tasks.format_ok(a) for a in answers), answers


def test_save_load_round_trip(data, tmp_path):
    """save_hf writes a folder AutoModelForImageTextToText loads back to the same weights."""
    from transformers import AutoModelForImageTextToText
    model, tok, ip = vlm.load_model("tiny")
    vlm.save_hf(model, tok, ip, str(tmp_path), dtype=torch.float32)
    loaded = AutoModelForImageTextToText.from_pretrained(str(tmp_path))
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not list(tmp_path.glob("*.tmp")) and (tmp_path / "preprocessor_config.json").exists()
    _, tok2, ip2 = vlm.load_model(str(tmp_path))     # tokenizer + image processor come back identical
    conv, ims = [vlm.build_messages("<image>Which?", "<think>a</think> \\boxed{B}")], [[Image.new("RGB", (90, 60))]]
    a, b = vlm.encode(conv, ims, tok, ip), vlm.encode(conv, ims, tok2, ip2)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_equals_uninterrupted(data, tmp_path):
    """A run stopped after step 2 and resumed ends with the same weights as a run that never stopped;
    unfinished (.tmp) checkpoint folders are ignored."""
    kw = dict(max_steps=4, save_every=2, global_batch_size=3, micro_batch_tokens=150, warmup_ratio=0.5)
    sft.train(run_cfg(data, tmp_path / "full", **kw))
    with pytest.MonkeyPatch.context() as m, pytest.raises(Killed):
        m.setattr(sft, "save_state", killed_after(sft.save_state, 2))
        sft.train(run_cfg(data, tmp_path / "cut", **kw))
    assert not (tmp_path / "cut" / "model.safetensors").exists()
    (tmp_path / "cut" / "checkpoints" / "step_00000004.tmp").mkdir()      # a crash mid-save
    assert common.latest_checkpoint(str(tmp_path / "cut")).name == "step_00000002"
    sft.train(run_cfg(data, tmp_path / "cut", resume=True, **kw))
    assert max_diff(weights(tmp_path / "full"), weights(tmp_path / "cut")) == 0.0
    steps = [json.loads(line)["step"] for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


# ----------------------------------------------------------------------------- LoRA (sft.py's default)
def logits(model, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits


@pytest.mark.parametrize("kind", ["tiny", "tiny-qwen3"])
def test_lora_starts_at_the_base_model_and_exports_merged(data, tmp_path, capsys, kind):
    """add_lora: adapters on the 7 linear layers of each decoder layer only, rank capped at min(in, out) on the
    tiny model's narrow layers (said in one line); a fresh adapter's forward is the base model's; after its
    B is moved off 0, save_hf writes a plain model (no lora keys; transformers loads it with no adapter code)
    whose logits equal the adapted model's, and whose non-adapted weights are the base ones."""
    from transformers import AutoModelForImageTextToText
    model, tok, ip = vlm.load_model(kind)
    base_sd = {k: v.clone() for k, v in model.state_dict().items()}
    batch = vlm.encode_records(common.read_jsonl(data)[:2], data.parent, tok, ip, response=True)
    before = logits(model, batch)
    names = vlm.add_lora(model, 128, 256.0)
    assert "LoRA rank 128 capped at min(in, out)" in capsys.readouterr().out
    layers = len(model.model.language_model.layers)
    assert len(names) == 7 * layers and all(n.startswith("layers.") for n in names)
    assert {n.rsplit(".", 1)[-1] for n in names} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                     "up_proj", "down_proj"}
    k = model.model.language_model.layers[0].self_attn.k_proj
    assert k.lora_A.shape[0] == min(k.in_features, k.out_features) and k.lora_scaling == 2.0
    trains = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trains and all(n.endswith((".lora_A", ".lora_B")) for n in trains)
    assert torch.equal(logits(model, batch), before)                             # B = 0: the base model
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith(".lora_B"):
                p.normal_(0, 0.05)
    adapted = logits(model, batch)
    assert float((adapted - before).abs().max()) > 1e-3
    vlm.save_hf(model, tok, ip, str(tmp_path), dtype=torch.float32)
    saved = weights(tmp_path)
    assert saved.keys() == base_sd.keys()                                        # no adapter entries
    changed = {k for k in saved if not torch.equal(saved[k], base_sd[k])}
    assert changed == {f"model.language_model.{n}.weight" for n in names}
    merged = AutoModelForImageTextToText.from_pretrained(str(tmp_path))
    assert torch.allclose(logits(merged, batch), adapted, atol=1e-5, rtol=1e-5)


def test_lora_trains_only_the_adapters_and_max_samples(data, tmp_path, monkeypatch):
    """sft.train with LoRA: only the adapter parameters get gradients and change (checked on the model
    sft.train builds, after its steps), so the export differs from the base exactly in the adapted weights;
    --max-samples keeps the first N records; run.json records rank and α (a resume must match them)."""
    model, _, _ = vlm.load_model("tiny")
    base = {k: v.clone() for k, v in model.state_dict().items()}
    seen = {"grads": []}
    real_step = sft.optimizer_step

    def spy(model, *a):   # the parameters holding a gradient when sft.train_step steps
        seen["model"] = model
        seen["grads"].append({n for n, p in model.named_parameters() if p.grad is not None})
        return real_step(model, *a)
    monkeypatch.setattr(sft, "optimizer_step", spy)
    sft.train(run_cfg(data, tmp_path / "run", lora_rank=8, max_steps=3, lr=1e-2, max_samples=5))
    trained = {n: p.detach() for n, p in seen["model"].named_parameters()}
    adapters = {n for n in trained if n.endswith((".lora_A", ".lora_B"))}
    assert len(seen["grads"]) == 3 and all(g == adapters for g in seen["grads"])
    assert all(torch.equal(trained[n], base[n]) for n in base if n in trained)          # base weights frozen
    assert all(not torch.equal(p, 0 * p) for n, p in trained.items() if n.endswith(".lora_B"))   # B moved off 0
    saved = weights(tmp_path / "run")
    changed = {k for k in saved if not torch.equal(saved[k], base[k])}
    assert changed == {n[:-len("lora_A")] + "weight" for n in trained if n.endswith(".lora_A")}
    identity = json.loads((tmp_path / "run" / "run.json").read_text())["identity"]
    assert identity["num_records"] == 5 and identity["lora_rank"] == 8 and identity["lora_alpha"] == 16.0


# ----------------------------------------------------------------------------- FSDP2 (one torchrun launch)
def save_tiny_source(folder: Path, kind: str, seed: int, tie: bool, table: int = 0) -> Path:
    """A saved tiny HF directory with non-default random weights (and tied embeddings if `tie`; if table > 0, a
    model class with its own code: the demo's image position table of side `table`)."""
    model, tok, ip = vlm.build_tiny(kind, seed=seed)
    if tie:
        model.config.tie_word_embeddings = True
        model.tie_weights()
    if table:
        model = with_position_table(model, table, std=0.5)
    vlm.save_hf(model, tok, ip, str(folder / f"src-{kind}"), dtype=torch.float32)
    return folder / f"src-{kind}"


def load_through_rank0(src: Path, d) -> tuple:
    """(plain 1-process load, the same loaded the multi-rank way: rank 0 reads the weights, rank 1 builds on
    the meta device, fully_shard, fill from rank 0) and a dict of checks that they are the same model."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    ref, tok, ip = vlm.load_model(str(src), trust_remote_code=True)
    model, _, _ = vlm.load_model(str(src), meta=d.rank > 0, trust_remote_code=True)
    on_meta = all(p.is_meta for p in model.parameters()) == (d.rank > 0)
    for m in (ref, model):
        vlm.freeze_vision(m)
    vlm.enable_activation_checkpointing(model)
    model = vlm.shard_model(model, d.device, broadcast_from_rank0=True)
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))   # on every rank
    same = lambda a, b: a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    tied = lambda m: m.lm_head.weight is m.model.language_model.embed_tokens.weight
    grads = lambda m: {n: p.requires_grad for n, p in m.named_parameters()}
    checks = {"built_on_meta": on_meta, "state_dict": same(full, ref.state_dict()),
              "buffers": same(dict(model.named_buffers()), dict(ref.named_buffers())),
              "inv_freq": sum("inv_freq" in n for n, _ in model.named_buffers()) >= 2,
              "requires_grad": grads(model) == grads(ref), "tied": tied(model) == tied(ref)}
    return ref, model, tok, ip, checks


def fsdp_worker(folder: Path) -> None:
    """Runs under torchrun with 2 ranks: (a) saved tiny Qwen2.5-VL and tied Qwen3-VL loaded the multi-rank
    way equal a plain load (weights, buffers, flags); the sharded Qwen3-VL gives the log-probs of the plain
    one, its engine.Engine copy gathered from the shards equals the weights (before and after a train step)
    and decodes what the plain model decodes (the ranks stop at different lengths: no collective per token);
    a consolidated save; (b) the SFT CLI
    path (sft.train) with FSDP2. One process group for all: re-creating a group under torchrun can race."""
    import faulthandler
    faulthandler.dump_traceback_later(int(os.environ.get("FSDP_WORKER_TIMEOUT", "240")), exit=True)  # no hangs
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    FULL = StateDictOptions(full_state_dict=True)
    same = lambda a, b: a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    data = folder / "sft.jsonl"
    d = common.setup_dist(0)
    checks = {"qwen25": load_through_rank0(folder / "src-tiny", d)[-1]}
    ref, model, tok, ip, checks["qwen3"] = load_through_rank0(folder / "src-tiny-qwen3", d)
    recs = common.read_jsonl(data)[d.rank * 2:d.rank * 2 + 2]
    batch = vlm.encode([vlm.build_messages(r["problem"]) for r in recs],
                       [load_images(r, folder) for r in recs], tok, ip, padding_side="left")
    n_new = 6 if d.rank == 0 else 10                      # the ranks decode different lengths: no collectives
    expected = engine.Engine(ref).generate(batch, tok, max_new_tokens=n_new)
    train_batch = vlm.encode_records(recs, folder, tok, ip, response=True)
    ref_logp = vlm.token_logprobs(ref, train_batch, train_batch["labels"], temperature=0.7, chunk_size=5)
    logp = vlm.token_logprobs(model, train_batch, train_batch["labels"], temperature=0.7, chunk_size=5)
    eng = engine.Engine(model)                                                      # a copy gathered from the shards
    engine_equal = {"copy": not eng.shared, "weights": same(eng.model.state_dict(), ref.state_dict()),
                    "generate": all(torch.equal(a, b) for a, b in
                                    zip(expected, eng.generate(batch, tok, max_new_tokens=n_new)))}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    m = sft.train_step(model, opt, [train_batch], 1e-3, 1.0, d.device)
    eng.refresh(model)                                                             # after the update
    engine_equal["refreshed"] = same(eng.model.state_dict(), get_model_state_dict(model, options=FULL))
    vlm.save_hf(model, tok, ip, str(folder / "qwen3"), dtype=torch.float32)
    result = {"logprobs_equal": torch.allclose(logp.detach(), ref_logp.detach(), atol=1e-5),
              "engine_equal": engine_equal,
              "loss": m["loss"], "checks": checks,
              "units": sum(vlm.is_fsdp(x) for x in model.modules())}
    (folder / f"rank{d.rank}.json").write_text(json.dumps(result))
    sft.save_state = killed_after(sft.save_state, 3)    # this worker process ends after it (no undo needed)
    try:
        sft.train(run_cfg(data, folder / "fsdp", **TWO_RANK_RUN))   # destroys the group
    except Killed:
        pass


def test_fsdp2_two_ranks_equal_one_process(data, tmp_path):
    """2 gloo ranks with FSDP2 reach the same weights as one process on the same global batches (the Qwen3-VL source
    carries the demo's image position table: loaded on rank 0 only, sharded, gathered into the decoder's copy)
    (tolerance FSDP_TOL: only the summation order differs); generation on the sharded Qwen3-VL matches.
    A global batch of 3 gives rank 1 one sample and one zero-weight filler micro-batch. Both runs and the
    sharded Qwen3-VL load the weights on rank 0 only (rank 1 on the meta device), which must give exactly
    the weights, buffers (rotary inv_freq), requires_grad flags and tying of a plain load."""
    folder = data.parent
    save_tiny_source(folder, "tiny", seed=2, tie=False)
    save_tiny_source(folder, "tiny-qwen3", seed=1, tie=True, table=3)   # with the demo's position table
    run_two_ranks(HERE / "test_train.py", "fsdp-worker", str(folder))
    for rank in range(2):
        res = json.loads((folder / f"rank{rank}.json").read_text())
        assert all(ok for c in res["checks"].values() for ok in c.values()), (rank, res["checks"])
        assert res["logprobs_equal"] and math.isfinite(res["loss"])
        assert all(res["engine_equal"].values()), res["engine_equal"]
        assert res["units"] == 2 + 1 + 2 + 1   # vision blocks, vision tower, decoder layers, root
    with pytest.MonkeyPatch.context() as m, pytest.raises(Killed):
        m.setattr(sft, "save_state", killed_after(sft.save_state, 3))
        sft.train(run_cfg(data, tmp_path / "single", **TWO_RANK_RUN))
    from transformers import AutoModelForImageTextToText
    qwen3 = AutoModelForImageTextToText.from_pretrained(str(folder / "qwen3"), trust_remote_code=True)
    assert type(qwen3).__name__ == "PositionTableQwen3VL" and getattr(qwen3.model, POSITION_TABLE).shape[0] == 3
    assert qwen3.lm_head.weight is qwen3.model.language_model.embed_tokens.weight   # its source was tied
    # the sharded 2-rank state after 3 steps resumes in one process (resharding) for the 4th step and ends
    # where the 1-process run does (any difference in the 2-rank steps would show here)
    shutil.copytree(folder / "fsdp", tmp_path / "fsdp")
    for name in ("fsdp", "single"):
        sft.train(run_cfg(data, tmp_path / name, **TWO_RANK_RUN, resume=True))
    assert max_diff(weights(tmp_path / "fsdp"), weights(tmp_path / "single")) < FSDP_TOL


LORA_RUN = dict(TWO_RANK_RUN, lora_rank=8, lr=1e-2)


def test_fsdp2_two_ranks_lora_trains_and_resumes_like_one_process(data, tmp_path):
    """sft.py's LoRA default under FSDP2 on 2 gloo ranks (adapters built on rank 1's meta model, filled from
    rank 0, sharded with their layers): stopped after 3 steps, its sharded state resumed in one process for
    the 4th, it ends where an uninterrupted 1-process LoRA run ends (FSDP_TOL), and has trained."""
    run_two_ranks(HERE / "test_train.py", "lora-worker", str(data), str(tmp_path / "fsdp"))
    assert not (tmp_path / "fsdp" / "model.safetensors").exists()
    sft.train(run_cfg(data, tmp_path / "fsdp", **LORA_RUN, resume=True))
    sft.train(run_cfg(data, tmp_path / "single", **LORA_RUN))
    assert max_diff(weights(tmp_path / "fsdp"), weights(tmp_path / "single")) < FSDP_TOL
    base = vlm.load_model("tiny")[0].state_dict()
    assert max_diff(weights(tmp_path / "single"), base) > 100 * FSDP_TOL


if __name__ == "__main__" and sys.argv[1:2] == ["fsdp-worker"]:
    fsdp_worker(Path(sys.argv[2]))
if __name__ == "__main__" and sys.argv[1:2] == ["lora-worker"]:
    sft.save_state = killed_after(sft.save_state, 3)
    try:
        sft.train(run_cfg(Path(sys.argv[2]), Path(sys.argv[3]), **LORA_RUN))
    except Killed:
        pass
