"""Tests of demo.sh's arguments and output folder, and of its report (dev/demo_report.py) on hand-made predictions.

    python -m pytest -q test_demo.py
"""
import json
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

HERE = Path(__file__).parent


def demo(tmp_path, *args, out=None):
    """bash demo.sh with DEMO_OUT=out and an interpreter that fails at once (the first stage stops the demo)."""
    env = {**os.environ, "DEMO_OUT": str(out or tmp_path / "demo"), "PYTHON": "false"}
    return subprocess.run(["bash", str(HERE / "demo.sh"), *args], capture_output=True, text=True, env=env, timeout=60)


def test_help_prints_the_usage_and_runs_nothing(tmp_path):
    r = demo(tmp_path, "--help")
    assert r.returncode == 0 and "bash demo.sh" in r.stdout and "CONTROLS=1" in r.stdout and "DEMO_OUT" in r.stdout
    assert not (tmp_path / "demo").exists()
    r = demo(tmp_path, "--fast")
    assert r.returncode == 2 and "takes no arguments" in r.stderr and not (tmp_path / "demo").exists()


def test_deletes_only_a_folder_an_earlier_demo_made(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    r = demo(tmp_path, out=mine)
    assert r.returncode == 2 and "was not made by demo.sh" in r.stderr
    assert (mine / "notes.txt").read_text() == "keep me"
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert demo(tmp_path, out=afile).returncode == 2 and afile.read_text() == "x"
    fresh = tmp_path / "fresh"                 # new: made, marked, and the first stage runs (and fails here)
    r = demo(tmp_path, out=fresh)
    assert r.returncode != 0 and (fresh / ".made-by-demo.sh").is_file()
    (fresh / "old-output.txt").write_text("from the earlier demo")
    r = demo(tmp_path, out=fresh)              # an earlier demo's folder: deleted and made again
    assert not (fresh / "old-output.txt").exists() and (fresh / ".made-by-demo.sh").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    demo(tmp_path, out=empty)
    assert (empty / ".made-by-demo.sh").is_file()


def fake_demo_out(root: Path) -> Path:
    """A demo folder with hand-made predictions for 4 held-out items, K = 2: the cold start gets 1 right greedily,
    GRPO 3 (items 1, 2 change from wrong to right)."""
    (root / "data").mkdir(parents=True)
    answers = ["1, vertical", "1, vertical", "1, vertical", "2, horizontal"]
    (root / "data" / "test.jsonl").write_text("".join(json.dumps({"id": f"q{i}", "answer": a}) + "\n"
                                                      for i, a in enumerate(answers)))
    for run, greedy, sampled in (("sft", [1, 0, 0, 0], [[1, 0], [0, 0], [0, 1], [0, 0]]),
                                 ("grpo", [1, 1, 1, 0], [[1, 1], [1, 0], [1, 1], [0, 0]])):
        (root / f"eval-{run}" / "pretext").mkdir(parents=True)
        recs = [{"id": f"q{i}", "category": "flip", "correct": float(g),
                 "samples": [{"raw": "", "extracted": str(c), "correct": float(c)} for c in s]}
                for i, (g, s) in enumerate(zip(greedy, sampled))]
        (root / f"eval-{run}" / "pretext" / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (root / "grpo").mkdir()
    (root / "grpo" / "metrics.jsonl").write_text("".join(json.dumps({"step": s + 1, "reward": 0.2 + 0.01 * s}) + "\n"
                                                         for s in range(20)))
    return root


def test_report_table_and_figure(tmp_path):
    out = fake_demo_out(tmp_path / "demo")
    r = subprocess.run([sys.executable, str(HERE / "dev" / "demo_report.py"), str(out), "sft", "grpo"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    # commonest answer "1, vertical": 3 of 4; cold start greedy 25 ± sqrt(.1875/4), mean@2 25 (items .5, 0, .5, 0)
    assert "commonest answer (1, vertical) 75.0 % ± 21.7" in r.stdout
    assert "| after the cold start (SFT) | 25.0 ± 21.7 | 25.0 ± 12.5 | 50.0 ± 25.0 |" in r.stdout
    assert "| after GRPO | 75.0 ± 21.7 | 62.5 ± 20.7 | 75.0 ± 21.7 |" in r.stdout
    # GRPO mean@2 [1, .5, 1, 0]: 62.5 ± sqrt(.171875 / 4); greedy d = [0, 1, 1, 0]: +50 ± sqrt(1/3 / 4) = 28.9; McNemar b = 2, c = 0: p = 2 / 4
    assert "| grpo − sft, paired | +50.0 ± 28.9 (+1.7 SE)" in r.stdout
    assert "McNemar's exact p, greedy, grpo vs sft: 0.5" in r.stdout
    assert "50.0 % of items with 0 of 2 samples right, 50.0 % with 1–1, 0.0 % with 2" in r.stdout
    assert Image.open(out / "results.png").size == (1000, 420)


def test_random_reward_control_permutes_the_real_rewards():
    """dev/random_reward.py (CONTROLS=1): the step's rewards are grpo.score's, permuted across the samples: the same
    values (so the same mean), another order; the logged accuracy stays the real one."""
    import importlib.util
    import torch
    import grpo
    import vlm
    spec = importlib.util.spec_from_file_location("random_reward", HERE / "dev" / "random_reward.py")
    rr = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rr)
    _, tok, _ = vlm.load_model("tiny", max_pixels=56 * 84)
    rec = {"id": "f", "task": "flip", "answer": "1, vertical", "problem": "<image>\nWhich tile?"}
    texts = [f"<think></think> \\boxed{{{a}}}" for a in ["1, vertical"] * 3 + ["2, vertical"] * 5 + ["x"] * 8]
    rows = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in texts]
    width = max(map(len, rows))
    ids = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])
    mask = torch.tensor([[j < len(r) for j in range(width)] for r in rows])
    ro = grpo.Rollout([rec, rec], {}, 8, ids, mask)
    real = grpo.score(ro, tok)
    torch.manual_seed(0)
    fake = rr.permuted_score(ro, tok)
    assert sorted(fake.rewards.tolist()) == sorted(real.rewards.tolist())
    assert fake.rewards.tolist() != real.rewards.tolist()
    assert fake.accuracy.tolist() == real.accuracy.tolist() == [1.0] * 3 + [0.0] * 13
    r = subprocess.run([sys.executable, str(HERE / "dev" / "random_reward.py"), "--help"], capture_output=True,
                       text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0 and "--group-size" in r.stdout
