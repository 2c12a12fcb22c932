"""Tests of training on the released Spatial-SSRL-81k files (records.read_records, records.open_image, sft.py and
grpo.py --data): tiny fixtures in the release's formats, built here.

    python -m pytest -q test_release.py

  spatialssrl.parquet   EasyR1's columns problem, answer, images; images as {"bytes", "path"} structs (bytes
                        for some rows, null bytes + a path for others, as the datasets library writes them)
  paths.parquet         images as plain path strings, one of them EasyR1-style absolute (/data/images/...)
  images/ + images.zip  some images unzipped under images/crop/, others only inside images.zip (depth/)
  SFT-coldstart.json    LLaMA-Factory alpaca + sharegpt records; coldstart_SFT_images/ and images_coldstart.zip
CPU only, tiny random Qwen2.5-VL, 56-px images. The parquet tests need pyarrow (optional dependency).
"""
import io
import json
import os
import zipfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("SPATIAL_SSRL_DEVICE", "cpu")

import pytest
import torch
from PIL import Image

import common
import records
import grpo
import sft
import tasks
import vlm

pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402

COLOURS = {"crop": (200, 30, 30), "depth": (30, 200, 30), "flip": (30, 30, 200), "shuffle": (200, 200, 30),
           "img_0": (90, 90, 90), "img_1": (160, 160, 160), "img_2": (20, 120, 220)}


def png(colour, size=(56, 56)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


pytestmark = pytest.mark.usefixtures("one_thread")   # conftest.py


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    """A miniature data/release folder as `huggingface-cli download internlm/Spatial-SSRL-81k` leaves it,
    with images.zip half unzipped (crop/ on disk, depth/ only in the zip)."""
    d = tmp_path_factory.mktemp("release")
    (d / "images" / "crop").mkdir(parents=True)
    (d / "images" / "crop" / "c0.png").write_bytes(png(COLOURS["crop"]))
    with zipfile.ZipFile(d / "images.zip", "w") as z:
        z.writestr("crop/c0.png", png(COLOURS["crop"]))
        z.writestr("depth/d0.png", png(COLOURS["depth"], (56, 84)))
    q = "<image>Which patch fits the black hole? A. 1 B. 2 C. 3 D. 4"
    struct_rows = [   # as datasets writes an Image feature: bytes, or null bytes and a path
        {"problem": q, "answer": "B", "images": [{"bytes": None, "path": "crop/c0.png"}]},
        {"problem": "<image>Order the marked points from near to far.", "answer": "[1 3 2]",
         "images": [{"bytes": None, "path": "depth/d0.png"}]},
        {"problem": "<image>Which tile is flipped, and how?", "answer": "2, vertical",
         "images": [{"bytes": png(COLOURS["flip"]), "path": "flip/f0.png"}]},
        {"problem": "<image><image>Restore the order of the tiles.", "answer": "[1 2 0 3]",
         "images": [{"bytes": png(COLOURS["shuffle"]), "path": "shuffle/s0.png"},
                    {"bytes": png(COLOURS["shuffle"], (84, 56)), "path": "shuffle/s1.png"}]},
    ]
    pq.write_table(pa.Table.from_pylist(struct_rows), d / "spatialssrl.parquet")
    pq.write_table(pa.Table.from_pylist([
        {"problem": q, "answer": "B", "images": ["/data/images/crop/c0.png"]},   # EasyR1's image_dir=/ layout
        {"problem": q + " " + tasks.COT_PROMPT, "answer": "C", "images": ["depth/d0.png"]},
    ]), d / "paths.parquet")
    (d / "coldstart_SFT_images").mkdir()
    (d / "coldstart_SFT_images" / "img_0.png").write_bytes(png(COLOURS["img_0"]))
    with zipfile.ZipFile(d / "images_coldstart.zip", "w") as z:
        z.writestr("coldstart_SFT_images/img_1.png", png(COLOURS["img_1"]))
        z.writestr("coldstart_SFT_images/img_2.png", png(COLOURS["img_2"]))
    think = "<think>The hole matches patch {0}.</think> The answer is \\boxed{{{0}}}"
    cold = [
        {"instruction": q + " " + tasks.COT_PROMPT, "input": "", "output": think.format("B"),
         "images": ["coldstart_SFT_images/img_0.png"]},
        {"messages": [{"role": "system", "content": "You are a helpful assistant."},
                      {"role": "user", "content": q + " " + tasks.COT_PROMPT},
                      {"role": "assistant", "content": think.format("A")}],
         "images": ["coldstart_SFT_images/img_1.png"]},
        {"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": think.format("D")}],
         "images": ["coldstart_SFT_images/img_2.png"]},
        {"instruction": "<image>Which tile is flipped?", "input": "Answer with its number.",
         "output": think.format("3"), "images": ["coldstart_SFT_images/img_0.png"]},
    ]
    (d / "SFT-coldstart.json").write_text(json.dumps(cold))
    return d


def pixels(im: Image.Image) -> tuple:
    return im.size, im.getpixel((5, 5))


# ----------------------------------------------------------------------------- reading and normalisation
def test_parquet_records_images_as_paths_zip_members_and_bytes(release):
    recs, root = records.read_records(str(release / "spatialssrl.parquet"))
    assert root == release.resolve()
    assert [r["id"] for r in recs] == [f"spatialssrl-{i}" for i in range(4)]
    assert [r["task"] for r in recs] == [None] * 4
    assert [r["answer"] for r in recs] == ["B", "[1 3 2]", "2, vertical", "[1 2 0 3]"]
    assert set(recs[0]) == {"id", "task", "problem", "answer", "images", "pretext"}
    assert recs[0]["images"] == [str(release.resolve() / "images" / "crop" / "c0.png")]   # unzipped: on disk
    assert recs[1]["images"] == [{"zip": str((release / "images.zip").resolve()), "member": "depth/d0.png",
                                  "path": "depth/d0.png"}]                                 # only in the zip
    assert recs[2]["images"][0]["bytes"] == png(COLOURS["flip"])                           # in memory
    got = [[pixels(im) for im in records.load_images(r, root)] for r in recs]
    assert got == [[((56, 56), COLOURS["crop"])], [((56, 84), COLOURS["depth"])], [((56, 56), COLOURS["flip"])],
                   [((56, 56), COLOURS["shuffle"]), ((84, 56), COLOURS["shuffle"])]]


def test_plain_path_parquet_absolute_easyr1_paths_and_cot_suffix(release):
    recs, root = records.read_records(str(release / "paths.parquet"))
    assert recs[0]["images"] == [str(release.resolve() / "images" / "crop" / "c0.png")]    # /data/images/crop/…
    assert recs[1]["images"][0]["member"] == "depth/d0.png"
    assert recs[1]["problem"] == recs[0]["problem"] and not recs[1]["problem"].endswith(tasks.COT_PROMPT)
    assert vlm.build_messages(recs[1]["problem"])[0]["content"][-1]["text"].count(tasks.COT_PROMPT) == 1


def test_llama_factory_cold_start_alpaca_and_sharegpt(release):
    recs, root = records.read_records(str(release / "SFT-coldstart.json"))
    assert [r["id"] for r in recs] == [f"SFT-coldstart-{i}" for i in range(4)]
    assert [r["answer"] for r in recs] == ["B", "A", "D", "3"]
    assert all(r["response"].startswith("<think>") and r["task"] is None and r["pretext"] is None for r in recs)
    assert recs[0]["problem"] == recs[1]["problem"] == recs[2]["problem"]             # CoT suffix cut once
    assert recs[3]["problem"] == "<image>Which tile is flipped?\nAnswer with its number."  # instruction + "\n" + input
    assert recs[0]["images"] == [str(release.resolve() / "coldstart_SFT_images" / "img_0.png")]
    assert recs[1]["images"][0]["member"] == "coldstart_SFT_images/img_1.png"          # images_coldstart.zip
    assert [pixels(records.load_images(r, root)[0])[1] for r in recs[:3]] == \
        [COLOURS["img_0"], COLOURS["img_1"], COLOURS["img_2"]]


def test_pretext_from_the_image_folder_task_stays_none_unless_given(release, tmp_path):
    recs, _ = records.read_records(str(release / "spatialssrl.parquet"))
    assert [r["pretext"] for r in recs] == ["crop", "depth", "flip", "shuffle"]
    assert [r["task"] for r in recs] == [None] * 4       # scored by the official rule, not our verifiers
    with pytest.raises(ValueError):                      # why: the official 0-based shuffle labels are not valid
        tasks.accuracy("", recs[3]["answer"], "shuffle")  # for our shuffle verifier
    mixed = tmp_path / "mixed.parquet"                   # images from two folders, and a task column given
    pq.write_table(pa.Table.from_pylist([{"problem": "<image><image>?", "answer": "A", "task": "crop", "id": "x7",
                                          "images": ["/data/images/crop/c0.png", "depth/d0.png"]}]), mixed)
    (r,), _ = records.read_records(str(mixed), image_root=str(release))
    assert (r["id"], r["task"], r["pretext"]) == ("x7", "crop", None)


def test_missing_images_and_bad_files_are_one_line_errors(release, tmp_path):
    bad = tmp_path / "spatialssrl.parquet"
    pq.write_table(pa.Table.from_pylist([{"problem": "<image>?", "answer": "A", "images": ["flip/nope.png"]}]), bad)
    with pytest.raises(common.BadRecord, match=r"record 0 \(id spatialssrl-0\): image flip/nope.png not found"):
        records.read_records(str(bad))
    pq.write_table(pa.Table.from_pylist([{"question": "?", "answer": "A"}]), bad)
    with pytest.raises(common.BadRecord, match="no problem, images column"):
        records.read_records(str(bad))
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(common.SetupError, match="unknown format .csv"):
        records.read_records(str(tmp_path / "x.csv"))
    pq.write_table(pa.Table.from_pylist([{"problem": "<image>?", "answer": "A", "images": ["crop/c0.png"], "id": i}
                                         for i in ("a", "b", "a")]), bad)
    with pytest.raises(common.BadRecord, match=r"id 'a' is used twice \(record 0 and record 2\)"):
        records.read_records(str(bad), image_root=str(release))
    (tmp_path / "two.json").write_text(json.dumps([{"conversations": [{"from": "human", "value": "a"}]}]))
    with pytest.raises(common.BadRecord, match="one user turn then one assistant turn"):
        records.read_records(str(tmp_path / "two.json"))


def test_parquet_without_pyarrow_says_pip_install(release, monkeypatch):
    import builtins
    real = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name))
                        if name.startswith("pyarrow") else real(name, *a, **k))
    with pytest.raises(common.SetupError, match=r"pip install pyarrow"):
        records.read_records(str(release / "spatialssrl.parquet"))


# ----------------------------------------------------------------------------- GRPO: prompts and reward
def test_grpo_load_prompts_and_official_reward_for_task_less_records(release):
    cfg = grpo.Config(data=str(release / "spatialssrl.parquet"))
    records, root, left_out = grpo.load_prompts(cfg)      # 'auto' exclusion: no sft.jsonl in the release folder
    assert len(records) == 4 and left_out == 0
    with pytest.raises(common.SetupError, match="--exclude none"):
        grpo.load_prompts(grpo.Config(data=cfg.data, exclude=str(release / "SFT-coldstart.json")))
    _, tok, ip = vlm.load_model("tiny", max_pixels=56 * 84)
    prompts = vlm.encode_records(records, root, tok, ip, response=False)
    assert prompts["image_grid_thw"].shape[0] == 5 and vlm.select_prompts(prompts, [3])["image_grid_thw"].shape[0] == 2
    rec = records[3]                                      # answer "[1 2 0 3]", task None: exact match of the box
    texts = ["<think>t</think> \\boxed{[1 2 0 3]}", "<think>t</think> \\boxed{ [1 2 0 3] }",
             "<think>t</think> \\boxed{1, 2, 0, 3}", "\\boxed{[1 2 0 3]}"]
    rows = [tok(t, add_special_tokens=False)["input_ids"] + [2] for t in texts]
    width = max(map(len, rows))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    mask = torch.tensor([[j < len(r) for j in range(width)] for r in rows])
    sc = grpo.score(grpo.Rollout([rec], {}, 4, ids, mask), tok)
    assert sc.rewards.tolist() == pytest.approx([1.0, 1.0, 0.1, 0.9])
    assert sc.accuracy.tolist() == [1.0, 1.0, 0.0, 1.0]


def test_check_record_accepts_task_none_and_rejects_unknown_tasks(release, tmp_path):
    recs, root = records.read_records(str(release / "spatialssrl.parquet"))
    for r in recs:
        records.check_record(r, root)
    with pytest.raises(common.BadRecord, match="unknown task \"crops\"; expected one of .*or no task for the official"):
        records.check_record(dict(recs[0], task="crops"), root)
    with pytest.raises(common.BadRecord, match="no answer"):
        records.check_record(dict(recs[0], answer=None), root)
    with pytest.raises(common.BadRecord, match="not a valid shuffle answer"):
        records.check_record(dict(recs[3], task="shuffle"), root)


# ----------------------------------------------------------------------------- end to end
def test_sft_then_grpo_on_the_release_files(release, tmp_path):
    """sft.py on SFT-coldstart.json (2 steps), then grpo.py from that checkpoint on spatialssrl.parquet
    (1 step): both read the release's files directly (zip members, bytes, paths)."""
    sft.train(sft.Config(model="tiny", data=str(release / "SFT-coldstart.json"), out=str(tmp_path / "sft"),
                         max_steps=2, lr=1e-3, warmup_ratio=0.0, global_batch_size=2,
                         save_every=0, max_pixels=56 * 84))
    rows = [json.loads(x) for x in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(r["loss"] > 0 for r in rows)
    out = grpo.train(grpo.Config(model=str(tmp_path / "sft"), data=str(release / "spatialssrl.parquet"),
                                 out=str(tmp_path / "grpo"), max_steps=1, group_size=2, rollout_batch_size=4,
                                 update_batch_size=4, max_new_tokens=8, min_pixels=56 * 56,
                                 max_pixels=56 * 84, lr=1e-3, save_every=0, activation_checkpointing=False))
    assert len(out) == 1 and 0.0 <= out[0]["reward"] <= 1.0
    assert (tmp_path / "grpo" / "model.safetensors").exists()
    samples = [json.loads(x) for x in (tmp_path / "grpo" / "samples.jsonl").read_text().splitlines()]
    assert samples and all(s["task"] is None for s in samples)
