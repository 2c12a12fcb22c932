"""Tests of sft.py as a new user meets it: the command line, its errors, bad data, the output folder, resume.

    python -m pytest -q test_sft_cli.py

Every error about the input must be one line ("sft.py: error: …"), exit non-zero and leave nothing behind;
a run folder never mixes two runs; a resumed run has the saved run's schedule. Tiny model, tiny images,
in-process calls of sft.main()/sft.train(); one subprocess checks the real command line (a typo'd --model
must fail in seconds, without network retries or a traceback).
"""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("SPATIAL_SSRL_DEVICE", "cpu")   # the CPU path also on a GPU machine (common.use_cuda)

import huggingface_hub
import huggingface_hub.constants
import pytest
import torch
from PIL import Image
from transformers.utils import logging as hf_logging

import common
import sft
import vlm
from test_train import two_colour_records, write_jsonl
from conftest import Killed, killed_after

hf_logging.disable_progress_bar()
HERE = Path(__file__).resolve().parent


# ----------------------------------------------------------------------------- fixtures
def records(folder: Path, n: int = 4) -> list:
    """n valid SFT records (bright image → A, dark → B): test_train's fixture records."""
    return two_colour_records(folder, n)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    return write_jsonl(folder / "sft.jsonl", records(folder))


@pytest.fixture(scope="module")
def tiny_model():
    return vlm.load_model("tiny")


def cfg(data: Path, out: Path, **kw) -> sft.Config:
    base = dict(model="tiny", data=str(data), out=str(out), max_steps=3, lr=1e-3, warmup_ratio=0.0,
                global_batch_size=2, save_every=1,
                activation_checkpointing=False)
    return sft.Config(**{**base, **kw})


@pytest.fixture(scope="module")
def stopped_run(data, tmp_path_factory) -> Path:
    """A 3-step run stopped after step 2 (checkpoint step_00000002, metrics rows 1 and 2)."""
    out = tmp_path_factory.mktemp("runs") / "stopped"
    with pytest.MonkeyPatch.context() as m, pytest.raises(Killed):
        m.setattr(sft, "save_state", killed_after(sft.save_state, 2))
        sft.train(cfg(data, out))
    return out


def steps(out: Path) -> list:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def snapshot(folder: Path) -> dict:
    """{relative path: bytes} of every file in folder (to prove a refused command wrote nothing)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def cli_error(capsys, argv: list) -> str:
    """Run sft.main(argv), expect exit code 2 (bad input, common.cli_main) and return its one stderr line."""
    with pytest.raises(SystemExit) as e:
        sft.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("sft.py: error: "), err
    return err


# ----------------------------------------------------------------------------- --model
def test_model_typo_fails_at_once_with_one_line(monkeypatch, tmp_path, tiny_model):
    """An unknown --model fails in well under a second (once transformers is imported: the `tiny_model` fixture)
    with a message saying why, whether the Hub is unreachable, says 'no such model', or HF_HUB_OFFLINE=1;
    no transformers retries."""
    def unreachable(*a, **k):
        raise ConnectionError("[Errno -2] Name or service not known")

    def not_found(*a, **k):   # what model_info raises for an unknown name; built without an HTTP response
        err = huggingface_hub.errors.RepositoryNotFoundError.__new__(huggingface_hub.errors.RepositoryNotFoundError)
        Exception.__init__(err, "404 Client Error")   # (its __init__ needs the HTTP client's response type,
        raise err                                      #  which differs between huggingface_hub versions)

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    for lookup, expected in ((unreachable, "the Hub is unreachable"), (not_found, "no such model on the Hugging Face Hub")):
        monkeypatch.setattr(huggingface_hub, "model_info", lookup)
        for name in ("tiny2", "Qwen/Qwen2.5-VL-7B-Instuct"):
            t0 = time.perf_counter()
            with pytest.raises(common.SetupError, match=expected) as e:
                vlm.load_model(name)
            assert time.perf_counter() - t0 < 1.0
            assert f"--model {name}: not a local folder, not a tiny model" in str(e.value)
            assert "\n" not in str(e.value)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(common.SetupError, match="not in the Hugging Face cache .* while HF_HUB_OFFLINE=1"):
        vlm.load_model("Qwen/Qwen2.5-VL-7B-Instuct")
    with pytest.raises(common.SetupError, match="not a Hugging Face id"):
        vlm.load_model("runs/sft-tiny/typo")             # a mistyped path is no Hub id either
    (tmp_path / "empty").mkdir()
    with pytest.raises(common.SetupError, match="has no config.json"):
        vlm.load_model(str(tmp_path / "empty"))


def test_unloadable_model_folder_is_one_line(tmp_path):
    """A folder with a config.json that is no image-text model, or one without weights: a SetupError."""
    (tmp_path / "text-only").mkdir()
    (tmp_path / "text-only" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    vlm.build_tiny("tiny")[0].config.save_pretrained(tmp_path / "no-weights")
    for name, reason in (("text-only", "Unrecognized configuration class"), ("no-weights", "no file named")):
        with pytest.raises(common.SetupError, match=f"cannot load it as a Qwen-VL model: .*{reason}") as e:
            vlm.load_model(str(tmp_path / name))
        assert "\n" not in str(e.value) and len(str(e.value)) < 500


def test_cached_hub_model_loads_without_network(monkeypatch, tmp_path):
    """A real name still works for a user who has it: from the HF cache, offline or with the Hub unreachable."""
    snapshot_dir = tmp_path / "models--someorg--tiny-vl" / "snapshots" / ("a" * 40)
    vlm.build_tiny("tiny", out_dir=str(snapshot_dir))
    (tmp_path / "models--someorg--tiny-vl" / "refs").mkdir()
    (tmp_path / "models--someorg--tiny-vl" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    for offline in (True, False):
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", offline)
        monkeypatch.setattr(huggingface_hub, "model_info", lambda *a, **k: (_ for _ in ()).throw(OSError("down")))
        model, tok, ip = vlm.load_model("someorg/tiny-vl")
        assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration" and tok.chat_template


def test_cli_model_typo_subprocess(tmp_path, data):
    """The real command line with a typo'd model and the Hub unreachable (online mode, the endpoint a closed
    local port; no real network use): one line on stderr, exit 2, seconds (not 30–50 s of retries), no
    traceback, no output folder."""
    env = {**{k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}, "HF_ENDPOINT": "http://127.0.0.1:9"}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, str(HERE / "sft.py"), "--model", "Qwen/Qwen2.5-VL-7B-Instuct",
                        "--data", str(data), "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and time.perf_counter() - t0 < 30
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sft.py: error: --model Qwen/Qwen2.5-VL-7B-Instuct: not a local "
                                                "folder, not a tiny model"), r.stderr
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- --data
def test_data_missing_or_the_grpo_file_is_one_line_and_writes_nothing(capsys, tmp_path, data):
    out = tmp_path / "out"
    assert "--data is required" in cli_error(capsys, ["--out", str(out)])
    assert "no such file" in cli_error(capsys, ["--data", str(tmp_path / "nope.jsonl"), "--out", str(out)])
    train = write_jsonl(data.parent / "train.jsonl",        # what make_data.py writes for GRPO: no responses
                        [{k: v for k, v in r.items() if k != "response"} for r in common.read_jsonl(data)])
    err = cli_error(capsys, ["--data", str(train), "--out", str(out)])
    assert 'no "response" field' in err and "sft.jsonl" in err
    err = cli_error(capsys, ["--data", str(train), "--out", str(out), "--skip-bad-records"])
    assert "no usable records: all 4 are bad" in err and "sft.jsonl" in err
    assert not out.exists()
    assert "--resume and --overwrite" in cli_error(capsys, ["--data", str(data), "--out", str(out),
                                                            "--resume", "--overwrite"])
    assert not out.exists()


def test_read_only_out_and_a_bad_lr_are_one_line_before_anything_loads(capsys, read_only_dir, data):
    """A read-only --out used to be an OSError traceback (make_data, sft, evaluate), a negative or NaN --lr
    torch's ValueError after the model had loaded."""
    import evaluate
    import grpo
    import make_data
    out = str(read_only_dir / "out")
    for main, argv in [(make_data.main, ["--n", "4"]), (sft.main, ["--data", str(data)]),
                       (grpo.main, ["--data", str(data)]), (evaluate.main, ["--data", f"pretext={data}"])]:
        with pytest.raises(SystemExit) as e:
            main(argv + ["--out", out])
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and f"--out {out}: cannot write in {read_only_dir}" in err and "\n" not in err, err
    for lr in ("-1e-5", "nan"):
        for main in (sft.main, grpo.main):
            with pytest.raises(SystemExit) as e:
                main(["--data", str(data), f"--lr={lr}", "--out", out])
            assert e.value.code == 2 and f"--lr {float(lr)}: must be a number ≥ 0" in capsys.readouterr().err


def test_no_loading_bars_in_a_log(tmp_path, tiny_model):
    """Every script's cli_main turns Hugging Face's progress bars off when stderr is not a terminal (a log
    filled with "Loading weights" redraws before)."""
    vlm.save_hf(*tiny_model[:3], str(tmp_path / "m"), torch.float32)
    code = ("import common, vlm, sys; common.cli_main('x', lambda: vlm.load_model(sys.argv[1])); "
            "print('loaded')")
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m")], capture_output=True, text=True,
                         cwd=Path(__file__).parent, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0 and run.stdout.strip() == "loaded", run.stderr
    assert "Loading weights" not in run.stderr and "it/s" not in run.stderr, run.stderr


def test_an_id_used_twice_is_one_line_naming_it_and_both_lines(capsys, tmp_path, data):
    rows = common.read_jsonl(data)
    dup = data.parent / "dup.jsonl"
    dup.write_text("\n".join(json.dumps(r) for r in [rows[0], rows[1], dict(rows[2], id=rows[0]["id"])]) + "\n\n")
    err = cli_error(capsys, ["--data", str(dup), "--out", str(tmp_path / "out")])
    assert f"id {rows[0]['id']!r} is used twice (line 1 and line 3)" in err and "\n" not in err.strip()
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- bad records
def test_bad_records_error_naming_them_or_counted_skip(tmp_path, tiny_model):
    """A truncated PNG (valid header, cut data), problem: null, no images, images: null, a non-JSON line:
    each an error that names the record (and the file), or a counted skip with --skip-bad-records."""
    _, tok, ip = tiny_model
    good = records(tmp_path, n=2)
    Image.new("RGB", (56, 56), (90, 20, 200)).save(tmp_path / "whole.png")
    raw = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(raw[:len(raw) // 2])
    with Image.open(tmp_path / "cut.png") as im:
        assert im.size == (56, 56)                           # the header alone looks fine
    no_images = {k: v for k, v in good[0].items() if k != "images"}
    bad = [dict(good[0], id="cut-png", images=["cut.png"]), dict(good[0], id="null-problem", problem=None),
           dict(no_images, id="no-images"), dict(good[0], id="null-images", images=None)]
    messages = {"cut-png": "cut.png", "null-problem": '"problem" is null', "no-images": '"images" is null',
                "null-images": '"images" is null'}
    for rec in bad:
        with pytest.raises(common.BadRecord, match=f"record {rec['id']}: .*{messages[rec['id']]}"):
            sft.prepare_records(good + [rec], tmp_path, tok, ip, max_length=512, skip_bad=False)
    kept, skipped = sft.prepare_records(good + bad, tmp_path, tok, ip, max_length=512, skip_bad=True)
    assert [r["id"] for r in kept] == ["r0", "r1"] and skipped == 4
    path = tmp_path / "cut.jsonl"
    path.write_text(json.dumps(good[0]) + "\n" + json.dumps(good[1])[:40] + "\n")
    with pytest.raises(common.BadRecord, match="cut.jsonl line 2: not valid JSON"):
        common.read_jsonl(str(path))


def test_truncated_image_run_fails_before_writing(capsys, tmp_path):
    """Through the CLI: a truncated PNG stops the run up front (not after 2 steps), and nothing is written."""
    recs = records(tmp_path)
    raw = (tmp_path / "im1.png").read_bytes()
    (tmp_path / "im1.png").write_bytes(raw[:len(raw) // 2])
    data = write_jsonl(tmp_path / "sft.jsonl", recs)
    err = cli_error(capsys, ["--data", str(data), "--out", str(tmp_path / "out"), "--max-steps", "2"])
    assert "record r1: cannot read image" in err and "im1.png" in err
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- output folder and resume
def test_out_never_mixes_two_runs(capsys, data, stopped_run, tmp_path):
    """Re-running into a folder with a run: refused (nothing changes) unless --resume or --overwrite;
    --overwrite starts clean (metrics 1…n only). A non-empty folder without a run is refused too."""
    out = tmp_path / "run"
    shutil.copytree(stopped_run, out)
    before = snapshot(out)
    err = cli_error(capsys, ["--data", str(data), "--out", str(out)])
    assert "already holds an earlier sft.py run" in err and "--resume" in err and "--overwrite" in err
    assert snapshot(out) == before
    sft.train(cfg(data, out, max_steps=2, save_every=0, overwrite=True))
    assert steps(out) == [1, 2]
    assert json.loads((out / "run.json").read_text())["config"]["max_steps"] == 2
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_00000002"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    for flags in ([], ["--overwrite"], ["--resume"]):
        assert "holds files but no sft.py run" in cli_error(capsys, ["--data", str(data), "--out", str(other), *flags])
    assert [p.name for p in other.iterdir()] == ["notes.txt"]


def test_resume_refuses_another_schedule(capsys, data, stopped_run, tmp_path):
    """--resume with a different --max-steps or --lr (or batch) is refused naming each differing setting,
    and writes nothing."""
    out = tmp_path / "run"
    shutil.copytree(stopped_run, out)
    before = snapshot(out)
    for kw, named in ((dict(max_steps=5), "total steps (--max-steps, or --epochs × steps per epoch) 3 (now 5)"),
                      (dict(lr=2e-3), "--lr 0.001 (now 0.002)"),
                      (dict(lr=2e-3, global_batch_size=1), "--global-batch-size 2 (now 1)")):
        with pytest.raises(common.SetupError, match="other settings") as e:
            sft.train(cfg(data, out, resume=True, **kw))
        assert named in str(e.value), str(e.value)
        assert snapshot(out) == before
    err = cli_error(capsys, ["--model", "tiny", "--data", str(data), "--out", str(out), "--resume",
                             "--max-steps", "4", "--lr", "1e-3", "--global-batch-size", "2"])
    assert "--resume:" in err and "(now 4)" in err and "--warmup-ratio 0.0 (now 0.1)" in err


def test_resume_after_a_cut_off_metrics_row(data, stopped_run, tmp_path):
    """A run killed while writing metrics.jsonl leaves a partial last line; --resume drops it (and the rows
    after the checkpoint) and continues: rows 1, 2, 3, each once."""
    out = tmp_path / "run"
    shutil.copytree(stopped_run, out)
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "epoch": 1, "lo')
    sft.train(cfg(data, out, resume=True))
    assert steps(out) == [1, 2, 3] and (out / "model.safetensors").exists()


# ----------------------------------------------------------------------------- pixel bounds
def test_checkpoint_keeps_its_pixel_bounds(data, tmp_path):
    """load_model(checkpoint) keeps the saved image bounds unless told otherwise; SFT from a base model
    whose processor allows 12.8M px uses the paper's 512², and a checkpoint's smaller bound is kept."""
    for name, bounds in (("small", (3136, 12544)), ("base", (3136, 12845056))):
        model, tok, ip = vlm.build_tiny("tiny")
        vlm.set_pixel_bounds(ip, *bounds)
        for x in (model, tok, ip):
            x.save_pretrained(tmp_path / name)
    size = lambda ip: (ip.size["shortest_edge"], ip.size["longest_edge"])
    assert size(vlm.load_model(str(tmp_path / "small"))[2]) == (3136, 12544)
    assert size(vlm.load_model(str(tmp_path / "small"), max_pixels=50176)[2]) == (3136, 50176)
    assert size(vlm.load_model("tiny")[2]) == (56 * 56, 512 * 512)
    for name, expected in (("small", (3136, 12544)), ("base", (3136, 512 * 512))):
        s = sft.setup_training(cfg(data, tmp_path / "unused", model=str(tmp_path / name)), common.Dist())
        assert size(s["ip"]) == expected, name
    s = sft.setup_training(cfg(data, tmp_path / "unused", model=str(tmp_path / "base"), max_pixels=100352),
                           common.Dist())
    assert size(s["ip"]) == (3136, 100352)
    assert not (tmp_path / "unused").exists()


# ----------------------------------------------------------------------------- --help and --smoke
def test_help_reads_well():
    """--data shows it is required (no "(default: )"), usage examples, --smoke names what it overrides,
    off-by-default switches have no --no- form, on-by-default ones do."""
    text = sft.build_parser().format_help()
    assert "(default: )" not in text and "(default: None)" not in text
    data_help = text[text.index("\n  --data SFT_JSONL"):text.index("\n  --out OUT")]
    assert "REQUIRED" in data_help and "sft.jsonl" in data_help
    assert "examples:" in text and "python sft.py --smoke" in text and "torchrun" in text
    smoke_help = " ".join(text[text.index("  --smoke"):].split())
    for flag in ("--model tiny", "--max-steps 2", "--global-batch-size 4", "--lr 1e-3"):
        assert flag in smoke_help, flag
    for odd in ("--no-smoke", "--no-benchmark", "--no-resume", "--no-overwrite", "--no-skip-bad-records"):
        assert odd not in text, odd
    assert "--no-freeze-vision" in text and "--no-shuffle" in text
    assert "(default: 0)" in text and "(default: runs/sft)" in text


def test_lora_settings_that_cannot_work_are_one_line(capsys, data, tmp_path):
    """LoRA leaves the vision tower frozen, and α without adapters means nothing: one line each, nothing written."""
    out = tmp_path / "o"
    base = ["--data", str(data), "--out", str(out)]
    assert "--lora-rank 0" in cli_error(capsys, [*base, "--no-freeze-vision"])
    assert "--lora-alpha" in cli_error(capsys, [*base, "--lora-rank", "0", "--lora-alpha", "16"])
    assert "must be ≥ 0" in cli_error(capsys, [*base, "--lora-rank", "-1"])
    assert not out.exists()


def test_help_shows_the_papers_lora_defaults():
    """The paper's cold start is the default: LoRA rank 128, α = 2 × rank = 256, the first 4000 records;
    --lora-rank 0 is named as the full-parameter fine-tune."""
    text = " ".join(sft.build_parser().format_help().split())
    lora = text[text.index("--lora-rank LORA_RANK L"):text.index("--freeze-vision, --no")]
    assert "(paper: 128)" in lora and "(default: 128)" in lora and "0 = full-parameter fine-tune" in lora
    assert "2 × rank, 256 for rank 128" in lora and "(paper: 4000)" in lora and "(default: 4000)" in lora
    assert sft.lora_alpha(sft.Config(smoke=True)) == 256.0 and sft.lora_alpha(sft.Config(smoke=True, lora_rank=0)) is None


def test_smoke_says_what_it_overrides(capsys, tmp_path):
    c = sft.smoke_config(sft.Config(out=str(tmp_path), lr=5e-3, global_batch_size=64, smoke=True))
    said = capsys.readouterr().out
    assert "--smoke: using --model tiny" in said and "--lr 0.001 (not 0.005)" in said
    assert "--global-batch-size 4 (not 64)" in said and "synthetic records" in said
    assert (c.model, c.lr, c.global_batch_size, c.max_steps) == ("tiny", 1e-3, 4, 2)
    assert Path(c.data).is_file()


# ----------------------------------------------------------------------------- Ctrl-C and threads
def test_ctrl_c_is_one_line_with_the_resume_hint_and_resumes(tmp_path, data):
    """Ctrl-C in a training run used to print 110–270 lines of traceback and no hint: now one line saying how
    to continue, exit 130; and --resume continues from the last checkpoint."""
    import signal
    out = tmp_path / "run"
    cmd = [sys.executable, str(HERE / "sft.py"), "--data", str(data), "--out", str(out), "--max-steps", "100000",
           "--global-batch-size", "2", "--save-every", "1", "--no-activation-checkpointing", "--lr", "1e-3",
           "--warmup-ratio", "0"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in p.stdout:
        if line.startswith("step 00003"):
            break
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    lines = [x for x in err.strip().splitlines() if x.strip()]
    assert lines == ["sft.py: interrupted; run the same command with --resume to continue"], err
    assert common.latest_checkpoint(str(out)) is not None
    last = common.read_jsonl(out / "metrics.jsonl", torn_tail_ok=True)[-1]["step"]
    with pytest.MonkeyPatch.context() as m, pytest.raises(Killed):
        m.setattr(sft, "save_state", killed_after(sft.save_state, last + 1))
        sft.train(cfg(data, out, resume=True, max_steps=100000, save_every=1))
    assert steps(out) == list(range(1, len(steps(out)) + 1))


def test_cpu_runs_use_one_thread_unless_told_otherwise():
    """A shared 2-core machine ran the README's commands 2.5–8× slower on torch's default two threads: setup_dist
    sets one thread on CPU unless OMP_NUM_THREADS is set."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import torch, common; torch.set_num_threads(2); "
            "common.setup_dist(0); print(torch.get_num_threads())")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    one = subprocess.run([sys.executable, "-c", code, str(HERE)], capture_output=True, text=True, env=env, timeout=120)
    two = subprocess.run([sys.executable, "-c", code, str(HERE)], capture_output=True, text=True,
                         env={**env, "OMP_NUM_THREADS": "2"}, timeout=120)
    assert one.stdout.split() == ["1"] and two.stdout.split() == ["2"], (one.stderr, two.stderr)
