"""demo.sh's starting model: a tiny Qwen-VL with two stand-ins for what a pretrained Qwen-VL brings and a random tiny
model lacks. Nothing here is part of the paper's method or of the stage scripts.

  position table   position_table.py: a learned 2-D position table added to the merged image tokens, a model class
                   of its own (its code travels with the checkpoint; the stages load it with --trust-remote-code)
  warm_up_vision   a short supervised warm-up of the vision tower on flip questions, standing in for its pretraining

    python dev/tiny.py --out DIR --data sft.jsonl      # what demo.sh runs
"""
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # the project's modules
import tasks                                          # noqa: E402
from common import knob                               # noqa: E402
from position_table import POSITION_TABLE, with_position_table   # noqa: E402


def flip_token_targets(record: dict, side: int) -> torch.Tensor:
    """Per-token labels of one flip question on a side × side token grid: 0 outside the flipped tile, 1 / 2 on its
    tokens for a horizontal / vertical flip (tiles 1..4 are the grid's quarters, row by row)."""
    tile, half = record["meta"]["tile"] - 1, side // 2
    target = torch.zeros(side, side, dtype=torch.long)
    row, col = divmod(tile, 2)
    target[row * half:(row + 1) * half, col * half:(col + 1) * half] = 1 + tasks.FLIP_DIRECTIONS.index(
        record["meta"]["direction"])
    return target.flatten()


def warm_up_vision(model, records: list, root, image_processor, steps: int, batch_size: int = 32, lr: float = 3e-3,
                   seed: int = 0) -> dict:
    """The demo's stand-in for a pretrained vision tower, on flip questions: `steps` steps of AdamW train the vision
    tower (and the position table) so that each merged image token says whether its tile is the flipped one and
    how, a per-token linear probe on labels made from the cold-start answers and the tile layout
    (flip_token_targets). A random tower's features say nothing a language model could learn from in minutes;
    a pretrained one's describe each patch's content, mirrored or not. The probe is dropped afterwards. The records
    need one image each, of one square size after resizing (an even side of tokens); the last tenth is held out
    to report how often the probe's strongest tile and direction are the answer."""
    from records import load_images
    held = max(1, len(records) // 10)
    train, test = records[:-held], records[-held:]

    def features(batch):
        px = image_processor(images=[load_images(r, root)[0] for r in batch], return_tensors="pt")
        return model.model.visual(px["pixel_values"], grid_thw=px["image_grid_thw"]).pooler_output.view(len(batch), -1,
                                                                                                       model.config.get_text_config().hidden_size)
    if any(r.get("task") != "flip" or len(r.get("images") or []) != 1 for r in records):
        raise ValueError("the vision warm-up takes flip questions (one image each)")
    with torch.no_grad():
        tokens = features(records[:1]).shape[1]
    side = int(tokens ** 0.5)
    if side % 2 or side * side != tokens:
        raise ValueError(f"the vision warm-up needs square images of an even token side ({tokens} tokens: --pixels)")
    torch.manual_seed(seed)
    probe = torch.nn.Linear(model.config.get_text_config().hidden_size, 3)
    params = list(model.model.visual.parameters()) + list(probe.parameters()) + \
        [p for n, p in model.model.named_parameters(recurse=False) if n == POSITION_TABLE]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    for step in range(steps):
        batch = [train[(step * batch_size + j) % len(train)] for j in range(batch_size)]
        target = torch.stack([flip_token_targets(r, side) for r in batch])
        loss = torch.nn.functional.cross_entropy(probe(features(batch)).flatten(0, 1), target.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        right = 0
        for k in range(0, len(test), 64):
            part = test[k:k + 64]
            p = probe(features(part)).softmax(-1)[..., 1:]                       # (B, tokens, direction)
            per_tile = torch.stack([p[:, flip_token_targets({"meta": {"tile": t + 1, "direction": "horizontal"}},
                                                            side).bool()].mean(1) for t in range(4)], 1)   # (B, 4, 2)
            guess = per_tile.flatten(1).argmax(1)
            truth = torch.tensor([(r["meta"]["tile"] - 1) * 2 + tasks.FLIP_DIRECTIONS.index(r["meta"]["direction"])
                                  for r in part])
            right += int((guess == truth).sum())
    return {"train": len(train), "held_out": held, "probe_accuracy": right / held}


def build_demo_start(cfg) -> dict:
    """demo.sh's starting model: a tiny model with the position table, its image bounds fixed, the vision tower
    warmed up on --data's answers, saved to --out as a Hugging Face folder (sft.py --model takes it)."""
    from common import SetupError, read_jsonl
    from vlm import build_tiny, install_attention, save_hf, set_pixel_bounds
    model, tok, ip = build_tiny(cfg.kind, hidden=cfg.hidden, layers=cfg.layers, seed=cfg.seed)
    model = with_position_table(model, cfg.position_table)
    install_attention(model)
    set_pixel_bounds(ip, cfg.pixels, cfg.pixels)
    data = Path(cfg.data)
    try:
        report = warm_up_vision(model, read_jsonl(data), data.parent, ip, cfg.warm_up_steps, seed=cfg.seed)
    except ValueError as e:
        raise SetupError(f"--data {cfg.data}: {e}") from None
    save_hf(model, tok, ip, cfg.out, torch.float32)
    print(f"dev/tiny.py: {cfg.kind} (hidden {cfg.hidden}, {cfg.layers} layers, position table {cfg.position_table}²), "
          f"vision warmed up for {cfg.warm_up_steps} steps on {report['train']} flip images of {cfg.data}: its "
          f"probe names tile and direction for {report['probe_accuracy']:.1%} of {report['held_out']} held out "
          f"(chance 12.5%) -> {cfg.out}")
    return report


@dataclass
class DemoStart:
    out: str = knob("runs/demo/start", "output folder (a Hugging Face model folder)")
    data: str = knob("", "REQUIRED: the cold-start file (one image per record, one size after resizing)")
    kind: str = knob("tiny", "tiny (Qwen2.5-VL) or tiny-qwen3")
    hidden: int = knob(64, "language model width")
    layers: int = knob(2, "language model layers")
    position_table: int = knob(16, "side of the learned position table of the merged image tokens")
    pixels: int = knob(112 * 112, "every image resized to this many pixels")
    warm_up_steps: int = knob(700, "vision warm-up steps of 32 images")
    seed: int = knob(0, "seed of the weights and the warm-up")


TINY_EXAMPLES = """examples:
  python make_data.py --out runs/demo/data --tasks flip --scene-size 112x112 --sft-size 2000
  python dev/tiny.py --out runs/demo/start --data runs/demo/data/sft.jsonl --pixels 12544   # as demo.sh runs it
  python sft.py --model runs/demo/start --data runs/demo/data/sft.jsonl --out runs/demo/sft --max-pixels 12544 \\
      --trust-remote-code --lora-rank 0"""


def main(argv: list | None = None) -> None:
    """`python dev/tiny.py --out DIR --data sft.jsonl`: build_demo_start from the command line."""
    from common import SetupError, cli_main, config_parser, setup_dist
    args = config_parser(DemoStart, "dev/tiny.py", "demo.sh's starting model: a tiny Qwen-VL with the stand-ins for "
                         "pretraining (position table, vision warm-up)", TINY_EXAMPLES).parse_args(argv)

    def run():
        if not args.data:
            raise SetupError("--data is required: the cold-start file, e.g. runs/demo/data/sft.jsonl")
        setup_dist(args.seed)      # one CPU thread unless OMP_NUM_THREADS says otherwise
        build_demo_start(args)
    cli_main("dev/tiny.py", run)


if __name__ == "__main__":
    main()
