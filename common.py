"""Small helpers every stage shares: distributed setup, errors, JSON lines and atomic writes, the
dataclass → argparse builder, resumable checkpoints and the resume-identity check, the data order.

Nothing here knows about models: vlm.py is the model plumbing, engine.py the fast rollout engine.

  distributed   Dist, setup_dist, cleanup_dist, is_main, print0, all_reduce_sum, barrier
  errors        SetupError (one-line CLI errors), BadRecord (a data record that cannot be used)
  files         read_jsonl, atomic_write (fsync'd tmp + rename), read_metrics, append_metrics,
                keep_metrics_until
  config        knob, config_parser (every dataclass field becomes a --flag, --help shows the defaults)
  checkpoints   save_state, load_state, latest_checkpoint, publish_step_folder
  output folder out_dir_mode, start_out_dir; resume: checked_checkpoint (identity_diff), resume_from
  data order    epoch_order
"""
import argparse
import dataclasses
import datetime
import json
import os
import random
import shutil
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm


# ----------------------------------------------------------------------------- distributed
@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def use_cuda() -> bool:
    """True when a GPU is visible, unless SPATIAL_SSRL_DEVICE=cpu (the tests set it, so they run the same
    CPU/gloo code on a GPU machine, and a 2-rank launch works on a 1-GPU machine)."""
    return torch.cuda.is_available() and os.environ.get("SPATIAL_SSRL_DEVICE", "").lower() != "cpu"


def setup_dist(seed: int = 0) -> Dist:
    """torchrun contract (RANK, LOCAL_RANK, WORLD_SIZE) or one local process; NCCL on GPU, gloo on CPU.

    Seeds python, numpy and torch with seed + rank. Creates the process group once per process and reuses
    it on later calls (re-creating a group under torchrun after destroying it can race). On GPU the
    group is bound to this rank's device (device_id), and more local ranks than GPUs is a clear error."""
    cuda = use_cuda()
    d = Dist()
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        d.rank, d.world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        d.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if cuda and d.local_rank >= torch.cuda.device_count():
            raise SetupError(f"local rank {d.local_rank} but only {torch.cuda.device_count()} GPU(s) here: use "
                             f"--nproc_per_node {torch.cuda.device_count()} or fewer (or SPATIAL_SSRL_DEVICE=cpu)")
        if cuda:
            torch.cuda.set_device(d.local_rank)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=30),
                                    device_id=torch.device("cuda", d.local_rank) if cuda else None)
    d.device = torch.device(f"cuda:{d.local_rank}" if cuda else "cpu")
    random.seed(seed + d.rank)
    np.random.seed(seed + d.rank)
    torch.manual_seed(seed + d.rank)
    return d


def cleanup_dist() -> None:
    """Barrier then destroy the process group (if one was created)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def print0(*args) -> None:
    """print on rank 0 only, without breaking a tqdm bar."""
    if is_main():
        tqdm.write(" ".join(str(a) for a in args), file=sys.stdout)
        sys.stdout.flush()


def all_reduce_sum(x: float, device: torch.device) -> float:
    """Sum a Python number over ranks (no-op in one process)."""
    if not dist.is_initialized():
        return float(x)
    t = torch.tensor([float(x)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item())


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


# ----------------------------------------------------------------------------- errors and files
class SetupError(ValueError):
    """A bad command line, model name, data file or output folder: reported in one line, nothing written."""


class BadRecord(SetupError):
    """A dataset record that cannot be trained on; the message names the record."""


def read_jsonl(path: str) -> list:
    """The JSON objects of a .jsonl file, one a line (blank lines skipped); a line that is not a JSON
    object raises BadRecord naming the file and line."""
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise BadRecord(f"{path} line {i}: not valid JSON ({e.msg}); a cut-off file?") from None
            if not isinstance(out[-1], dict):
                raise BadRecord(f"{path} line {i}: a JSON {type(out[-1]).__name__}, not a record object")
    return out


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write a file that is either complete or absent: the data goes to .NAME.PID.tmp beside it, is flushed
    to disk and renamed over `path` (atomic on POSIX); ranks writing the same file do not collide."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- resumable checkpoints
def _state_dicts(model, optimizer) -> dict:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict
    return {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)}


def save_state(model, optimizer, trainer_state: dict, out_dir: str, keep: int = 1) -> Path:
    """Resumable checkpoint OUT/checkpoints/step_XXXXXXXX: sharded model + optimizer
    (torch.distributed.checkpoint) and trainer_state.json (step, data position).

    Atomic: written to step_X.tmp, then renamed by rank 0 after every rank finished; a folder without the
    .tmp suffix is always complete. Older checkpoints beyond `keep` are deleted afterwards."""
    import torch.distributed.checkpoint as dcp
    root = Path(out_dir) / "checkpoints"
    final = root / f"step_{trainer_state['step']:08d}"
    tmp = final.with_name(final.name + ".tmp")
    if is_main():
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    with warnings.catch_warnings():  # "assuming the intent is to save in a single process": yes
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save(_state_dicts(model, optimizer), checkpoint_id=str(tmp))
    barrier()
    if is_main():
        atomic_write(tmp / "trainer_state.json", json.dumps(trainer_state, indent=1))
        publish_step_folder(tmp, final, keep)
    barrier()
    return final


def publish_step_folder(tmp: Path, final: Path, keep: int) -> None:
    """Rename a finished step_X.tmp folder to step_X (replacing an older one of that name), then delete all
    but the newest `keep` complete step_* folders beside it. Rank 0 only; .tmp folders are never counted."""
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in sorted(p for p in final.parent.glob("step_*") if p.suffix != ".tmp")[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(out_dir: str) -> Path | None:
    """The newest complete checkpoint folder in OUT/checkpoints (ignores unfinished *.tmp folders)."""
    done = sorted(p for p in (Path(out_dir) / "checkpoints").glob("step_*")
                  if p.suffix != ".tmp" and (p / "trainer_state.json").exists())
    return done[-1] if done else None


def load_state(model, optimizer, ckpt: Path) -> dict:
    """Load a save_state() folder into the (possibly sharded) model and optimizer; returns trainer_state."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict
    sd = _state_dicts(model, optimizer)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(sd, checkpoint_id=str(ckpt))
    set_model_state_dict(model, sd["model"])
    set_optimizer_state_dict(model, optimizer, sd["optim"])
    with open(ckpt / "trainer_state.json") as f:
        return json.load(f)


# ----------------------------------------------------------------------------- config
def knob(default, help):
    """A dataclass field with a one-line --help text."""
    return field(default=default, metadata={"help": help})


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse whose errors are one line ("sft.py: error: ..."), not the whole usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows "(default: X)" only where a default means something (not for "", None or off switches)."""

    def _get_help_string(self, action):
        if any(action.default is x for x in ("", None, False, argparse.SUPPRESS)):
            return action.help
        return action.help + " (default: %(default)s)"


def config_parser(config_cls, prog: str, description: str, epilog: str = "", metavars: dict | None = None):
    """argparse options generated from a Config dataclass (sft.py, grpo.py, evaluate.py): --dash-names, the
    field's help, defaults shown where they mean something; switches that are off by default are plain
    flags (store_true), those on by default get a --no- form; tuples take that many floats, lists any
    number of strings; errors are one line."""
    p = OneLineErrorParser(prog=prog, description=description, epilog=epilog, formatter_class=HelpFormatter)
    for f in dataclasses.fields(config_cls):
        name, kw = "--" + f.name.replace("_", "-"), {"default": f.default, "help": f.metadata["help"]}
        typ = next((t for t in getattr(f.type, "__args__", ()) if t is not type(None)), f.type)  # int | None
        if typ is bool:
            kw["action"] = argparse.BooleanOptionalAction if f.default else "store_true"
        elif typ is tuple:
            kw.update(type=float, nargs=len(f.default))
        elif typ is list:
            kw.update(nargs="*", default=list(f.default))
        else:
            kw["type"] = typ
        if f.name in (metavars or {}):
            kw["metavar"] = metavars[f.name]
        p.add_argument(name, **kw)
    return p


# ----------------------------------------------------------------------------- data order
def epoch_order(n: int, epoch: int, seed: int, shuffle: bool) -> list:
    """Record order of one epoch: a permutation seeded by (seed, epoch), identical on every rank."""
    if not shuffle:
        return list(range(n))
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


# ----------------------------------------------------------------------------- metrics files
def read_metrics(path: Path) -> list:
    """The rows of a log like metrics.jsonl; a cut-off last line (a run killed while writing it) is dropped."""
    rows = []
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1 and line.strip():
                raise SetupError(f"{path} line {i + 1} is not JSON (only the last line may be cut off)") from None
    return rows


def append_metrics(path: Path, rows: list) -> None:
    """Append rows to a JSON-lines log (metrics.jsonl, samples.jsonl, evaluate.py's predictions.jsonl) in one
    write, flushed and fsynced: a kill can cut off at most the last line, which the readers drop."""
    if not rows:
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        f.flush()
        os.fsync(f.fileno())


def keep_metrics_until(path: Path, step: int) -> None:
    """On resume, drop the rows of a log logged after the checkpoint's `step` (and a cut-off last row);
    the file is rewritten atomically. Rank 0 only."""
    if path.exists():
        rows = [r for r in read_metrics(path) if r["step"] <= step]
        atomic_write(path, "".join(json.dumps(r) + "\n" for r in rows))


# ----------------------------------------------------------------------------- output folder and resume
def out_dir_mode(out: str, prog: str, markers: tuple, resume: bool, overwrite: bool, keep: tuple = ()) -> str:
    """How a run may use its output folder: 'fresh' (new or empty), 'resume' or 'overwrite'. Read-only;
    raises a SetupError instead of mixing two runs (an earlier run without --resume / --overwrite) or
    writing into a non-empty folder that holds no run of `prog` (none of its `markers`). Entries in `keep`
    (e.g. --smoke's data) are ignored."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise SetupError(f"--out {out} is a file, not a folder")
    entries = sorted(p.name for p in path.iterdir() if p.name not in keep) if path.is_dir() else []
    ours = [e for e in entries if e in markers]
    if entries and not ours:
        raise SetupError(f"--out {out} is not empty and holds no {prog} run ({', '.join(entries[:4])}"
                         f"{', …' if len(entries) > 4 else ''}): choose a new or empty folder")
    if resume:
        return "resume"
    if not entries:
        return "fresh"
    if overwrite:
        return "overwrite"
    raise SetupError(f"--out {out} already holds a run ({', '.join(ours)}): add --resume to continue it or "
                     "--overwrite to delete it and start over")


def start_out_dir(out: str, mode: str, keep: tuple = ()) -> None:
    """Create the output folder; with mode 'overwrite' first delete everything in it but `keep` (rank 0)."""
    path = Path(out)
    if mode == "overwrite":
        for p in path.iterdir():
            if p.name not in keep:
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    path.mkdir(parents=True, exist_ok=True)


def identity_diff(saved: dict, now: dict, labels: dict | None = None) -> list:
    """The settings of `now` that differ from `saved`, each as "<flag> <saved> (now <value>)". Values are
    compared as JSON (a tuple equals the list it was saved as); a flag's label is --name unless `labels`
    names it otherwise."""
    now = json.loads(json.dumps(now))
    labels = labels or {}
    return [f"{labels.get(k, '--' + k.replace('_', '-'))} {saved.get(k, 'not saved')} (now {v})"
            for k, v in now.items() if saved.get(k) != v]


def checked_checkpoint(out: str, identity: dict, labels: dict | None = None) -> Path | None:
    """The newest complete checkpoint in OUT/checkpoints (None: there is none), or a SetupError naming
    every setting that differs from the run that saved it (resuming would silently change the run)."""
    ckpt = latest_checkpoint(out)
    if ckpt is None:
        return None
    try:
        saved = json.loads((ckpt / "trainer_state.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SetupError(f"--resume: cannot read {ckpt / 'trainer_state.json'}: {e}") from None
    diff = identity_diff(saved, identity, labels)
    if diff:
        raise SetupError(f"--resume: {ckpt} was saved by a run with other settings: {'; '.join(diff)}. "
                         "Resume with the same settings, or start over with --overwrite")
    return ckpt


def resume_from(model, optimizer, ckpt: Path | None, out: str, logs: tuple = ("metrics.jsonl",)) -> dict:
    """Load a checked checkpoint (checked_checkpoint) into the model and optimizer and keep the rows of
    the `logs` files up to its step (rows logged after it will be logged again; a cut-off last row goes);
    returns its trainer state ({"step": 0} without a checkpoint)."""
    state = load_state(model, optimizer, ckpt) if ckpt is not None else {"step": 0}
    if is_main():
        for name in logs:
            keep_metrics_until(Path(out) / name, state["step"])
    barrier()
    if ckpt is not None:
        print0(f"resumed from {ckpt} (step {state['step']})")
    return state
