"""Small helpers every stage shares (make_data.py, sft.py, grpo.py, evaluate.py): one implementation of each.

Nothing here knows about models: vlm.py is the model plumbing, engine.py the decoder. torch is imported only by
the functions that need it, so the torch-free modules (make_data.py, records.py, benchmarks.py) use the rest.

  distributed   Dist, dist_session (setup, seeds, CPU threads, teardown), is_main, print0, all_reduce_sum,
                all_reduce_max, barrier
  errors        SetupError (bad input: one line "prog: error: …", exit 2, nothing written), BadRecord (a data
                record that cannot be used), Skipped (one source image or benchmark item skipped and counted);
                cli_main (the exit-code convention of every script: 2 bad input, 130 Ctrl-C with the resume hint)
  files         read_jsonl (a data file strictly, or a log whose cut-off last line is dropped), append_jsonl
                (fsynced), rewrite_jsonl, atomic_write (fsynced temp file + rename)
  config        knob, config_parser (every dataclass field becomes a --flag; --help shows defaults and examples)
  output folder out_dir_mode (read-only, first), then open_run (check_identity, start_out_dir, resume_from): one rule for all four scripts (run.json, read with
                read_run_info and written with write_run_info, names the script and the settings a resumed run
                must share; a lock refuses a second run into the folder)
  checkpoints   save_state, load_state, latest_checkpoint, publish_step_folder, resume_from
  batching      epoch_order, token_micro_batches (the one micro-batch rule of SFT and GRPO: a token budget)
"""
import argparse
import contextlib
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

from tqdm import tqdm


# ----------------------------------------------------------------------------- distributed
@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: object = "cpu"          # a torch.device after setup_dist

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _dist():
    """torch.distributed when a process group exists, else None (without importing torch: a process that never
    imported it has no group)."""
    d = sys.modules.get("torch.distributed")
    return d if d is not None and d.is_available() and d.is_initialized() else None


def use_cuda() -> bool:
    """True when a GPU is visible, unless SPATIAL_SSRL_DEVICE=cpu (the tests set it, so they run the same
    CPU/gloo code on a GPU machine, and a 2-rank launch works on a 1-GPU machine)."""
    import torch
    return torch.cuda.is_available() and os.environ.get("SPATIAL_SSRL_DEVICE", "").lower() != "cpu"


def setup_dist(seed: int = 0) -> Dist:
    """torchrun contract (RANK, LOCAL_RANK, WORLD_SIZE) or one local process; NCCL on GPU, gloo on CPU.

    Seeds python, numpy and torch with seed + rank. On CPU a process uses one thread unless OMP_NUM_THREADS
    says otherwise: the tiny models' small matrices run slower on two threads, and much slower on a shared
    machine. Creates the process group once per process and reuses it on later calls (re-creating a group
    under torchrun after destroying it can race). On GPU the group is bound to this rank's device."""
    import numpy as np
    import torch
    import torch.distributed as dist
    cuda = use_cuda()
    d = Dist()
    if not cuda and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)
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


@contextlib.contextmanager
def dist_session(seed: int = 0):
    """`with dist_session(seed) as d:` setup_dist, then at the end the output folder's lock released, a barrier
    and the process group destroyed; after an error or Ctrl-C the group is destroyed without the barrier (the
    other ranks may be gone)."""
    d = setup_dist(seed)
    try:
        yield d
    except BaseException:
        release_out_dirs()
        if _dist():
            _dist().destroy_process_group()
        raise
    release_out_dirs()
    if _dist():
        _dist().barrier()
        _dist().destroy_process_group()


def is_main() -> bool:
    return _dist() is None or _dist().get_rank() == 0


def print0(*args) -> None:
    """print on rank 0 only, without breaking a tqdm bar."""
    if is_main():
        tqdm.write(" ".join(str(a) for a in args), file=sys.stdout)
        sys.stdout.flush()


def all_reduce_sum(x, device):
    """Sum a Python number, or each value of a dict of numbers (every rank passes the same keys), over ranks in
    one all-reduce; the input as floats in one process."""
    keys = sorted(x) if isinstance(x, dict) else None
    values = [float(x[k]) for k in keys] if keys is not None else [float(x)]
    if _dist() is not None:
        import torch
        t = torch.tensor(values, dtype=torch.float64, device=device)
        _dist().all_reduce(t)
        values = t.tolist()
    return dict(zip(keys, values)) if keys is not None else values[0]


def all_reduce_max(x: int, device) -> int:
    """The largest of a Python int over ranks (no-op in one process)."""
    if _dist() is None:
        return int(x)
    import torch
    t = torch.tensor([int(x)], dtype=torch.long, device=device)
    _dist().all_reduce(t, op=_dist().ReduceOp.MAX)
    return int(t.item())


def barrier() -> None:
    if _dist():
        _dist().barrier()


# ----------------------------------------------------------------------------- errors
class SetupError(ValueError):
    """Bad input (a flag, model name, data file or output folder): one line "prog: error: …", exit 2, nothing
    written."""


class BadRecord(SetupError):
    """A dataset record that cannot be used; the message names the file or the record."""


class Skipped(Exception):
    """One source image (make_data.py) or benchmark item (evaluate.py) that cannot be used: it is skipped and
    counted by its reason, and the run goes on. `reason` is a short stable slug for the counts."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def quiet_progress_bars() -> None:
    """No Hugging Face download / "Loading weights" progress bars when stderr is not a terminal (a log file, a
    pipe), where each redraw is a new line; interactive runs keep them."""
    if sys.stderr.isatty():
        return
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"       # read when huggingface_hub is imported later
    if "transformers" in sys.modules:                      # already imported: it read the setting then
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()


def cli_main(prog: str, run, *args) -> None:
    """Run a script's main function with the exit-code convention of every script: bad input (SetupError) is
    one line "prog: error: …" and exit 2 (as argparse's own errors), Ctrl-C one line saying how to continue
    and exit 130; anything else is a bug and keeps its traceback. Under torchrun only rank 0 prints."""
    rank0 = os.environ.get("RANK", "0") == "0"
    quiet_progress_bars()
    try:
        run(*args)
    except SetupError as e:
        if rank0:
            print(f"{prog}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        if rank0:
            print(f"\n{prog}: interrupted; run the same command with --resume to continue", file=sys.stderr)
        raise SystemExit(130) from None


# ----------------------------------------------------------------------------- files
def read_jsonl(path, torn_tail_ok: bool = False) -> list:
    """The JSON objects of a .jsonl file, one a line (blank lines skipped). A line that is not a JSON object
    is a BadRecord naming the file and the line. With torn_tail_ok (a log that a killed run may have been
    appending to: metrics, predictions, journals) a missing file is empty and a cut-off last line (no
    newline, or not JSON) is dropped; an unreadable line before it is still an error."""
    return [row for _, row in read_jsonl_lines(path, torn_tail_ok)]


def read_jsonl_lines(path, torn_tail_ok: bool = False) -> list:
    """read_jsonl with each object's 1-based line number: [(line, object), ...] (for messages naming lines)."""
    path = Path(path)
    if torn_tail_ok and not path.exists():
        return []
    data = path.read_bytes()
    lines = [(i, line) for i, line in enumerate(data.split(b"\n"), 1) if line.strip()]
    out = []
    for k, (i, line) in enumerate(lines):
        torn = torn_tail_ok and k == len(lines) - 1            # the last line of a log may be cut off
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            if torn:
                break
            raise BadRecord(f"{path} line {i}: not valid JSON ({getattr(e, 'msg', e)}); a cut-off or edited "
                            "file?") from None
        if torn and not data.endswith(b"\n"):
            break
        if not isinstance(row, dict):
            raise BadRecord(f"{path} line {i}: a JSON {type(row).__name__}, not a record object")
        out.append((i, row))
    return out


def _jsonl(rows: list) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def append_jsonl(path, rows: list) -> None:
    """Append rows to a JSON-lines file in one write, flushed and fsynced: a kill can cut off at most the last
    line, which read_jsonl(torn_tail_ok=True) drops."""
    if not rows:
        return
    with open(path, "ab") as f:
        f.write(_jsonl(rows))
        f.flush()
        os.fsync(f.fileno())


def rewrite_jsonl(path, rows: list) -> None:
    """Replace a JSON-lines file by `rows` atomically (a resumed run drops what it will write again)."""
    atomic_write(Path(path), _jsonl(rows))


def atomic_write(path, data: str | bytes) -> None:
    """Write a file that is either complete or absent: the data goes to .NAME.PID.tmp beside it, is flushed
    to disk and renamed over `path` (atomic on POSIX); ranks writing the same file do not collide."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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
        if action.help == argparse.SUPPRESS or any(action.default is x for x in ("", None, False, argparse.SUPPRESS)):
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


# ----------------------------------------------------------------------------- output folder and resume
RUN_FILE = "run.json"      # {"prog", "identity", ...}: which script made the folder and with which settings
LOCK_FILE = ".lock"        # held by the run writing the folder (fcntl lock, released when the process ends)
_HELD_LOCKS = {}


def read_run_info(folder) -> dict | None:
    """The run.json of a folder (None when there is none or it cannot be read)."""
    try:
        info = json.loads((Path(folder) / RUN_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return info if isinstance(info, dict) else None


def write_run_info(folder, prog: str, identity: dict, info: dict | None = None) -> None:
    """Write folder/run.json atomically: {prog, identity, git_commit, **info} (read back by read_run_info)."""
    atomic_write(Path(folder) / RUN_FILE, json.dumps({"prog": prog, "identity": identity, "git_commit": git_commit(),
                                                      **(info or {})}, indent=1))


def out_dir_mode(out: str, prog: str, resume: bool, overwrite: bool, keep: tuple = ()) -> str:
    """How a run may use its output folder, decided before anything is loaded or written (read-only):
    'fresh' (new or empty; also --resume with nothing to resume), 'resume' or 'overwrite'. A folder with
    files but no run.json of `prog` is never written into; an earlier run of `prog` is continued only with
    --resume and deleted only with --overwrite. Entries in `keep` (e.g. --smoke's data) are ignored."""
    path = Path(out)
    if resume and overwrite:
        raise SetupError("--resume and --overwrite exclude each other")
    if path.exists() and not path.is_dir():
        raise SetupError(f"--out {out} is a file, not a folder")
    check_writable(out)
    entries = sorted(p.name for p in path.iterdir() if p.name not in keep + (LOCK_FILE,)) if path.is_dir() else []
    if not entries:
        return "fresh"
    info = read_run_info(path)
    if info is None or info.get("prog") != prog:
        what = f"a {info['prog']} run" if info and info.get("prog") else f"files but no {prog} run"
        listing = ", ".join(entries[:4]) + (", …" if len(entries) > 4 else "")
        raise SetupError(f"--out {out} holds {what} ({listing}): choose a new or empty folder")
    if resume:
        return "resume"
    if overwrite:
        return "overwrite"
    raise SetupError(f"--out {out} already holds an earlier {prog} run: add --resume to continue it or --overwrite to "
                     "delete it and start over")


def check_writable(out: str) -> None:
    """SetupError unless a file can be made in --out (or in the nearest folder above it that exists, where
    --out will be made): tried with a temporary file that is removed at once, since permission bits say
    nothing on a read-only mount or to root."""
    import tempfile
    folder = Path(out).absolute()
    while not folder.exists():
        folder = folder.parent
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise SetupError(f"--out {out}: cannot write in {folder} ({e.strerror}); choose a folder you can write "
                         "to") from None


def identity_diff(saved: dict, now: dict, labels: dict | None = None) -> list:
    """The settings of `now` that differ from `saved`, each as "<flag> <saved> (now <value>)". Values are
    compared as JSON (a tuple equals the list it was saved as); a setting's label is --name unless `labels`
    names it otherwise."""
    now = json.loads(json.dumps(now))
    labels = labels or {}
    return [f"{labels.get(k, '--' + k.replace('_', '-'))} {saved.get(k, 'not saved')} (now {v})"
            for k, v in now.items() if saved.get(k) != v]


def check_identity(folder, identity: dict, labels: dict | None = None) -> None:
    """A resumed run must share the settings saved in folder/run.json ("identity"): otherwise one SetupError
    naming every setting that differs (resuming would silently mix two runs). No run.json: nothing to check."""
    info = read_run_info(folder)
    if info is None:
        return
    diff = identity_diff(info.get("identity", {}), identity, labels)
    if diff:
        raise SetupError(f"--resume: {folder} was made with other settings: {'; '.join(diff)}. Resume with the "
                         "same settings, or start over with --overwrite")


def release_out_dirs() -> None:
    """Release the locks this process holds on output folders (its run has ended)."""
    while _HELD_LOCKS:
        _HELD_LOCKS.popitem()[1].close()


def git_commit() -> str:
    """The commit of this code (recorded in run.json), '' outside a git checkout."""
    import subprocess
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def start_out_dir(out: str, prog: str, mode: str, identity: dict, info: dict | None = None,
                  keep: tuple = ()) -> None:
    """Rank 0, after the checks passed: take the folder's lock (a second run into the same folder is refused
    while this one lives), delete an earlier run with mode 'overwrite', create the folder and write run.json
    {prog, identity, git_commit, **info} (a resumed run keeps its own)."""
    import fcntl
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    if str(path.resolve()) not in _HELD_LOCKS:          # this process may already hold it (tests, notebooks)
        lock = open(path / LOCK_FILE, "a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            raise SetupError(f"--out {out} is being written by another run right now; wait for it to end or "
                             "choose another folder") from None
        _HELD_LOCKS[str(path.resolve())] = lock
    if mode == "overwrite":
        for p in path.iterdir():
            if p.name not in keep + (LOCK_FILE,):
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    if mode != "resume" or read_run_info(path) is None:
        write_run_info(path, prog, identity, info)


def open_run(out: str, prog: str, mode: str, identity: dict, info: dict | None = None, *,
             labels: dict | None = None, keep: tuple = (), state: tuple = (), logs: tuple = ("metrics.jsonl",)) -> int:
    """Open the output folder of a run whose input checks all passed; `mode` is out_dir_mode's, read before
    anything was loaded. Every run opens its folder this one way: a resumed run's identity must match run.json
    (check_identity), every rank waits until all passed their checks, rank 0 takes the folder (start_out_dir:
    the lock, --overwrite's delete, run.json), and a resumed run with `state` = (model, optimizer) loads its
    newest checkpoint (resume_from). Returns the step to continue from (0 for a fresh run)."""
    if mode == "resume":
        check_identity(out, identity, labels)
    barrier()
    if is_main():
        start_out_dir(out, prog, mode, identity, info, keep)
    return resume_from(*state, out, logs) if state and mode == "resume" else 0


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


def resume_from(model, optimizer, out: str, logs: tuple = ("metrics.jsonl",)) -> int:
    """Load the newest complete checkpoint in OUT/checkpoints into the model and optimizer and keep the rows of
    the `logs` files up to its step (rows logged after it are logged again; a cut-off last row goes). Returns
    the step to continue from (0 without a checkpoint)."""
    ckpt = latest_checkpoint(out)
    step = load_state(model, optimizer, ckpt)["step"] if ckpt is not None else 0
    if is_main():
        for name in logs:
            log = Path(out) / name
            if log.exists():
                rewrite_jsonl(log, [r for r in read_jsonl(log, torn_tail_ok=True) if r["step"] <= step])
    barrier()
    print0(f"resumed from {ckpt} (step {step})" if ckpt else f"--resume: no complete checkpoint in {out}/checkpoints, "
           "starting from step 0")
    return step


# ----------------------------------------------------------------------------- batching
def epoch_order(n: int, epoch: int, seed: int, shuffle: bool) -> list:
    """Record order of one epoch: a permutation seeded by (seed, epoch), identical on every rank."""
    if not shuffle:
        return list(range(n))
    import torch
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def token_micro_batches(lengths: list, budget: int, count: int | None = None) -> list:
    """Row indices cut into micro-batches of at most `budget` padded tokens (rows × longest row) after sorting
    by length (less padding); a row longer than the budget forms a micro-batch of its own. With `count`, the
    largest micro-batches are halved until there are `count` of them, then empty ones are appended: under
    FSDP2 every rank must run the same number of forward / backward passes (an empty one runs a zero-weight
    dummy). The one micro-batch rule of sft.py and grpo.py."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    packs, cur = [], []
    for i in order:
        if cur and (len(cur) + 1) * lengths[i] > budget:
            packs.append(cur)
            cur = []
        cur.append(i)
    if cur:
        packs.append(cur)
    while count is not None and len(packs) < count and any(len(p) > 1 for p in packs):
        big = max((p for p in packs if len(p) > 1), key=lambda p: len(p) * max(lengths[i] for i in p))
        k = packs.index(big)
        packs[k:k + 1] = [big[:len(big) // 2], big[len(big) // 2:]]
    return packs + [[] for _ in range(max(0, (count or 0) - len(packs)))]
