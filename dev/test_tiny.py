"""Tests of demo.sh's starting model (tiny.py, position_table.py): a model class with its own code that the stage
scripts load with --trust-remote-code and the decoder copies like any other model.

    python -m pytest -q dev/test_tiny.py
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import engine
import make_data
import tiny
import vlm
from common import SetupError
from position_table import POSITION_TABLE, with_position_table
from test_train import fixed_shape_engine, mixed_prompts

HERE = Path(__file__).resolve().parent
pytestmark = pytest.mark.usefixtures("one_thread")   # conftest.py


def test_demo_position_table_is_saved_reloaded_and_decoded(tmp_path, monkeypatch):
    """position_table.with_position_table (the demo's stand-in for a pretrained tower's positional features): it
    changes the image features (so it is wired in) and nothing else (same seed, same RNG draws: the demo's numbers);
    save_hf + vlm.load_model bring it back with its values only with trust_remote_code (without it: one line);
    the loaded model gives the same log-probs (full and group forward) and, through the decoder's separate copy
    with the GPU shapes, the same greedy tokens."""
    model, tok, ip = vlm.load_model("tiny")
    _, _, batch = mixed_prompts(tok, ip)
    batch.pop("labels")
    before = model(**batch).logits
    torch.manual_seed(5)
    model = with_position_table(model, 3, std=0.5)
    vlm.install_attention(model)
    torch.manual_seed(5)
    assert torch.equal(getattr(model.model, POSITION_TABLE), torch.randn(3, 3, 64) * 0.5)
    assert not torch.allclose(before, model(**batch).logits)
    vlm.save_hf(model, tok, ip, str(tmp_path / "m"), dtype=torch.float32)
    assert (tmp_path / "m" / "position_table.py").is_file()
    with pytest.raises(SetupError, match="runs only with --trust-remote-code"):
        vlm.load_model(str(tmp_path / "m"))
    loaded, tok2, ip2 = vlm.load_model(str(tmp_path / "m"), trust_remote_code=True)
    table = lambda m: getattr(m.model, POSITION_TABLE)                       # noqa: E731
    assert torch.equal(table(loaded), table(model)) and loaded.config.image_position_table == 3
    comp = torch.randint(20, 400, (8, 5), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(8, 5, dtype=torch.bool)
    a, b = (vlm.group_logprobs(m, batch, comp, mask, 2) for m in (model, loaded))
    assert torch.allclose(a, b, atol=1e-6)
    ids, _ = engine.Engine(model).generate(batch, tok, max_new_tokens=6)
    copy = fixed_shape_engine(loaded, monkeypatch, prompts_per_call=3)
    copy.shared, copy.model = False, None
    copy.refresh(loaded)
    assert type(copy.model) is type(loaded) and torch.equal(table(copy.model), table(model))
    assert torch.equal(copy.generate(batch, tok2, max_new_tokens=6)[0], ids)


def test_demo_start_model_flip_targets_and_cli(tmp_path):
    """tiny.flip_token_targets marks the flipped tile's tokens with its direction (hand-checked on a 4×4 grid);
    `python dev/tiny.py` (demo.sh's starting model) warms the vision tower up on flip questions and saves a model
    that vlm.load_model loads with its position table; other tasks are refused in one line."""
    t = tiny.flip_token_targets({"meta": {"tile": 3, "direction": "vertical"}}, 4).view(4, 4)
    assert t.tolist() == [[0, 0, 0, 0], [0, 0, 0, 0], [2, 2, 0, 0], [2, 2, 0, 0]]
    make_data.run(make_data.parse_config(["--out", str(tmp_path / "d"), "--n", "10", "--tasks", "flip", "--sft-size",
                                          "12", "--scene-size", "112x112", "--test-fraction", "0.2", "--no-progress",
                                          "--preview", "none", "--short-prompts", "--answer-only-traces"]))
    r = subprocess.run([sys.executable, str(HERE / "tiny.py"), "--out", str(tmp_path / "m"), "--data",
                        str(tmp_path / "d" / "sft.jsonl"), "--warm-up-steps", "2"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and "probe names tile and direction" in r.stdout, r.stderr[-2000:]
    model, _, ip = vlm.load_model(str(tmp_path / "m"), trust_remote_code=True)
    assert model.config.image_position_table == 16 and ip.size["longest_edge"] == 112 * 112
    (tmp_path / "other.jsonl").write_text(json.dumps({"id": "x", "task": "depth", "images": [], "problem": "",
                                                      "answer": "1, 2, 3"}) + "\n")
    r = subprocess.run([sys.executable, str(HERE / "tiny.py"), "--out", str(tmp_path / "m2"), "--data",
                        str(tmp_path / "other.jsonl")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.strip().startswith("dev/tiny.py: error: --data"), r.stderr[-1000:]
    r = subprocess.run([sys.executable, str(HERE / "tiny.py"), "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "examples:\n  python make_data.py" in r.stdout, r.stdout
