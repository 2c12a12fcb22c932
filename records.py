"""Dataset files → records: our make_data.py .jsonl and the released Spatial-SSRL-81k files.

sft.py and grpo.py read --data through read_records(), so a user can train on the authors' release as it is
downloaded (internlm/Spatial-SSRL-81k): spatialssrl.parquet (EasyR1's problem / answer / images columns)
for GRPO, SFT-coldstart.json (LLaMA-Factory alpaca or sharegpt) for the cold start; images as paths, as
members of images.zip / images_coldstart.zip next to the data file (no need to unzip), or as bytes. Every
record comes out as {id, task, problem, answer, images[, response]}; the release has no task field, so its
records keep task None and are scored by the official exact-match rule (tasks.accuracy). records.open_image
reads any of the image forms. A separate module because the release formats are about 170 lines of code
that neither the distributed helpers (common.py) nor the model plumbing (vlm.py) should carry. The writers
(write_parquet, write_llamafactory: make_data.py --release) produce exactly what these readers read, so our
data trains with the authors' EasyR1 and LLaMA-Factory copies unchanged.
"""
import functools
import io
import json
import os
import threading
from pathlib import Path

from PIL import Image

from common import BadRecord, SetupError, atomic_write, read_jsonl_lines


IMAGE_PLACEHOLDER = "<image>"        # one per entry of a record's "images", in order
PRETEXT_FOLDERS = ("crop", "depth", "flip", "position", "shuffle")   # images.zip's folders = tasks.TASKS
USER_ROLES, ASSISTANT_ROLES = ("user", "human"), ("assistant", "gpt")


def read_records(path: str, image_root: str | None = None) -> tuple:
    """(records, root) of a data file in any of the formats we train on, each record in our shape
    {id, task, problem, answer, images, pretext} (+ "response" for cold-start files):

      .jsonl    our own records (make_data.py): returned as they are; images stay paths relative to root
      .parquet  the release's spatialssrl.parquet as EasyR1 reads it (columns problem, answer, images; id and
                task when present). Needs pyarrow (optional: pip install pyarrow).
      .json     the release's SFT-coldstart.json in LLaMA-Factory's format: alpaca (instruction, input, output,
                images; the user text is instruction + "\\n" + input as LLaMA-Factory joins them) or sharegpt
                ("messages" with role/content, or "conversations" with from/value, one user turn then one
                assistant turn; a system turn is ignored); the assistant text becomes "response" (what sft.py
                trains on) and its last \\boxed{} the answer. A JSON list of our own records also works.

    root is image_root when given, else the data file's folder. Images of .parquet / .json records are
    resolved here, once: an image given as bytes ({"bytes": ..., "path": ...}, as datasets writes them) stays
    in memory ({"bytes", "path"}; decoded by records.open_image, no temporary files); a path is looked up under
    root and root/images, also with its leading folders dropped (a path written for EasyR1's image_dir, such
    as /data/images/crop/x.jpg, finds root/crop/x.jpg), and becomes an absolute path; a path not found on
    disk is read straight from a .zip next to the data file or in root (images.zip, images_coldstart.zip:
    no need to unzip them) and becomes {"zip", "member", "path"}. An image found nowhere is a BadRecord.

    Ids: a record's own "id", else "<file stem>-<row index>" (stable for a given file; the release has no
    ids). A trailing CoT instruction (tasks.COT_PROMPT) is cut from the problem, since every stage appends it
    (tasks.with_cot); LLaMA-Factory's files carry it inside the user text.

    Task: records without a "task" get task None, which every stage scores with the official rule (the
    stripped content of the last \\boxed{} equals the answer string exactly, tasks.accuracy). This is chosen
    over inferring the task from the image folder because it is the reward the paper trained with: our task
    verifiers parse our own answer formats and accept more ways of writing an answer (option text, synonyms),
    and they reject hedged answers, so they would change the reward; some official answers are not even valid
    for them (the official shuffle labels start at 0). The folder (crop, depth, flip, position, shuffle) is
    kept as "pretext" when every image of the record names the same one (None otherwise), for filtering and
    per-task counts."""
    p = Path(path)
    if not p.is_file():
        raise SetupError(f"--data {path}: no such file")
    root = Path(image_root).resolve() if image_root else p.resolve().parent
    suffix = p.suffix.lower()
    if suffix == ".jsonl":
        lines = read_jsonl_lines(str(p))
        check_unique_ids([(r.get("id"), f"line {i}") for i, r in lines], path)
        return [r for _, r in lines], root
    if suffix == ".parquet":
        rows = _read_parquet(p)
    elif suffix == ".json":
        try:
            rows = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise BadRecord(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); a cut-off file?") from None
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise BadRecord(f"{path}: not a JSON list of records (LLaMA-Factory's alpaca or sharegpt format)")
    else:
        raise SetupError(f"--data {path}: unknown format {suffix or '(no suffix)'}; expected .jsonl (ours), "
                         ".parquet (spatialssrl.parquet) or .json (SFT-coldstart.json)")
    finder = _ImageFinder(root, p.resolve().parent)
    records = [_normalise(r, f"{p.stem}-{i}", finder, f"{path} record {i}") for i, r in enumerate(rows)]
    check_unique_ids([(r["id"], f"record {i}") for i, r in enumerate(records)], path)
    return records, root


def check_unique_ids(ids: list, path) -> None:
    """ids = [(id, where), ...] of one file, in order: a BadRecord naming the first id given twice and both
    places. Ids drive the cold-start exclusion, resume and the samples log, so two records must never share
    one; records without an id (None) are not compared."""
    first = {}
    for rid, where in ids:
        if rid is None:
            continue
        key = json.dumps(rid, default=str)
        if key in first:
            raise BadRecord(f"{path}: id {rid!r} is used twice ({first[key]} and {where}); ids must be unique: "
                            "rename one or drop the duplicate")
        first[key] = where


def _read_parquet(p: Path) -> list:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise SetupError(f"--data {p}: reading .parquet needs pyarrow (pip install pyarrow)") from None
    try:
        table = pq.read_table(str(p))
    except Exception as e:   # pyarrow.lib.ArrowInvalid etc.: a cut-off or foreign file
        raise BadRecord(f"{p}: cannot read it as parquet ({' '.join(str(e).split())[:200]})") from None
    missing = [c for c in ("problem", "answer", "images") if c not in table.column_names]
    if missing:
        raise BadRecord(f"{p}: no {', '.join(missing)} column(s) (has {', '.join(table.column_names)}); "
                        "expected the release's spatialssrl.parquet (problem, answer, images)")
    return table.to_pylist()


def _normalise(r: dict, default_id: str, finder, where: str) -> dict:
    """One .parquet / .json row → our record shape (see read_records)."""
    import tasks
    rec = {"id": r.get("id") if r.get("id") is not None else default_id, "task": r.get("task")}
    if "problem" in r:                                              # EasyR1 parquet, or our records in JSON
        rec.update(problem=r["problem"], answer=r.get("answer"))
        if "response" in r:
            rec["response"] = r["response"]
    elif "instruction" in r:                                        # LLaMA-Factory alpaca
        if r.get("history"):
            raise BadRecord(f"{where}: multi-turn history is not supported (one question, one answer)")
        rec.update(problem="\n".join(x for x in (r.get("instruction"), r.get("input")) if x), response=r.get("output"))
    elif isinstance(r.get("messages", r.get("conversations")), list):   # LLaMA-Factory sharegpt
        turns = [t for t in r.get("messages", r.get("conversations")) if isinstance(t, dict)
                 and t.get("role", t.get("from")) != "system"]
        roles = [t.get("role", t.get("from")) for t in turns]
        if len(turns) != 2 or roles[0] not in USER_ROLES or roles[1] not in ASSISTANT_ROLES:
            raise BadRecord(f"{where}: expected one user turn then one assistant turn, got roles {roles}")
        rec.update(problem=turns[0].get("content", turns[0].get("value")),
                   response=turns[1].get("content", turns[1].get("value")))
    else:
        raise BadRecord(f"{where}: neither an EasyR1 row (problem, answer, images) nor a LLaMA-Factory record "
                        f"(instruction/output, messages or conversations); keys {sorted(r)[:8]}")
    if isinstance(rec["problem"], str) and rec["problem"].rstrip().endswith(tasks.COT_PROMPT):
        rec["problem"] = rec["problem"].rstrip()[:-len(tasks.COT_PROMPT)].rstrip()
    if "response" in rec and rec.get("answer") is None:
        rec["answer"] = tasks.official_boxed(rec["response"])
    if rec["answer"] is not None and not isinstance(rec["answer"], str):
        rec["answer"] = str(rec["answer"])
    images = r.get("images")
    images = [] if images is None else [images] if isinstance(images, (str, dict)) else list(images)
    rec["images"] = [finder.find(im, f"{where} (id {rec['id']})") for im in images]
    folders = {next((f for f in Path(_image_path(im) or "").parts if f in PRETEXT_FOLDERS), None) for im in images}
    rec["pretext"] = folders.pop() if len(folders) == 1 else None
    return rec


def _image_path(im) -> str | None:
    return im if isinstance(im, str) else im.get("path") if isinstance(im, dict) else None


class _ImageFinder:
    """Resolves the image entries of release records (see read_records): on disk first, then in the .zip files
    next to the data file and in root; remembers which (base, number of leading folders dropped) worked."""

    def __init__(self, root: Path, data_dir: Path):
        self.bases = [root, root / "images"]
        self.zip_dirs = list(dict.fromkeys([data_dir, root]))
        self.zips = None          # {suffix: (zip path, member)}, built on the first miss
        self.last = None          # (base, k) that found the previous image

    def find(self, im, where: str):
        if isinstance(im, dict):
            if im.get("bytes") is not None:
                return {"bytes": bytes(im["bytes"]), "path": im.get("path")}
            if not isinstance(im.get("path"), str):
                raise BadRecord(f"{where}: image {str(im)[:80]} has neither bytes nor a path")
            im = im["path"]
        if not isinstance(im, str) or not im:
            raise BadRecord(f"{where}: image {im!r} is not a path")
        p = Path(im)
        if p.is_absolute() and p.is_file():
            return str(p)
        parts = p.parts[1:] if p.is_absolute() else p.parts
        tails = [parts[k:] for k in range(max(1, len(parts) - 1))]   # keep the folder: crop/0.jpg ≠ depth/0.jpg
        tries = ([(self.last[0], tails[self.last[1]])] if self.last and self.last[1] < len(tails) else []) + \
            [(b, t) for t in tails for b in self.bases]
        for base, tail in tries:
            cand = base.joinpath(*tail)
            if cand.is_file():
                self.last = (base, tails.index(tail))
                return str(cand)
        for tail in tails:
            hit = self._zip_index().get("/".join(tail))
            if hit:
                return {"zip": str(hit[0]), "member": hit[1], "path": im}
        zips = sorted({str(z) for z, _ in self._zip_index().values()})
        raise BadRecord(f"{where}: image {im} not found under {self.bases[0]} (nor {self.bases[1]}, nor in "
                        f"{', '.join(zips) if zips else 'a .zip next to the data file'})")

    def _zip_index(self) -> dict:
        if self.zips is None:
            import zipfile
            self.zips = {}
            for folder in self.zip_dirs:
                for z in sorted(folder.glob("*.zip")):
                    try:
                        names = zipfile.ZipFile(z).namelist()
                    except (OSError, zipfile.BadZipFile) as e:
                        raise SetupError(f"{z}: cannot read it as a zip ({e}); a cut-off download?") from None
                    for name in names:
                        if name.endswith("/"):
                            continue
                        parts = name.split("/")
                        for k in range(max(1, len(parts) - 1)):
                            self.zips.setdefault("/".join(parts[k:]), (z.resolve(), name))
        return self.zips


# ----------------------------------------------------------------------------- writing the release formats
LLAMAFACTORY_FILE, LLAMAFACTORY_NAME = "SFT-coldstart.json", "coldstart"   # the release's file and dataset name
LLAMAFACTORY_ENTRY = {"file_name": LLAMAFACTORY_FILE, "formatting": "alpaca",       # its dataset_info.json entry
                      "columns": {"prompt": "instruction", "query": "input", "response": "output", "images": "images"}}


def write_parquet(path, records: list, root, rows_per_group: int = 256) -> int:
    """Our records → an EasyR1 parquet that read_records reads back: columns id, problem, answer, images, the
    images embedded as {"bytes", "path"} structs (the datasets Image storage EasyR1's process_image opens),
    so the file is self-contained on every node. problem without the CoT instruction (EasyR1's format_prompt
    appends it), no task column (EasyR1 scores by exact match). Written in row groups: 81k records never sit
    in memory as images. Needs pyarrow. Returns the number of rows."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise SetupError(f"writing {path} needs pyarrow (pip install pyarrow)") from None
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([("id", pa.string()), ("problem", pa.string()), ("answer", pa.string()),
                        ("images", pa.list_(image))])
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(f"{path}.tmp")
    with pq.ParquetWriter(str(tmp), schema) as writer:
        for i in range(0, max(1, len(records)), rows_per_group):
            rows = [{"id": str(r["id"]), "problem": r["problem"], "answer": str(r["answer"]),
                     "images": [{"bytes": (Path(root) / im).read_bytes(), "path": im} for im in r["images"]]}
                    for r in records[i:i + rows_per_group]]
            writer.write_table(pa.Table.from_pylist(rows, schema=schema))
    os.replace(tmp, path)
    return len(records)


def write_llamafactory(root, records: list) -> Path:
    """Our cold-start records → root/SFT-coldstart.json in LLaMA-Factory's alpaca format (instruction = the
    problem with the CoT instruction, as the model sees it; output = the response; images = paths relative
    to root, LLaMA-Factory's media_dir when dataset_dir is root) and root/dataset_info.json registering it
    as "coldstart" with the release's column mapping, so the official sft_scripts train it with
    dataset_dir: root. An "id" key is kept (LLaMA-Factory ignores it; read_records reads it)."""
    import tasks
    rows = [{"id": str(r["id"]), "instruction": tasks.with_cot(r["problem"]), "input": "", "output": r["response"],
             "images": list(r["images"])} for r in records]
    atomic_write(Path(root) / LLAMAFACTORY_FILE, json.dumps(rows, ensure_ascii=False, indent=1) + "\n")
    atomic_write(Path(root) / "dataset_info.json", json.dumps({LLAMAFACTORY_NAME: LLAMAFACTORY_ENTRY}, indent=1) + "\n")
    return Path(root) / LLAMAFACTORY_FILE


# ----------------------------------------------------------------------------- checking a record
def check_record(record: dict, root: Path, response: bool = False, decode: bool = False) -> list:
    """Raise BadRecord naming the record when it cannot be trained on (sft.py: response=True, grpo.py: False).

    Every record: a problem string with one <image> per entry of a list "images" (paths relative to root, or the
    bytes / zip-member entries read_records makes for the release). A cold-start record also needs a non-empty
    response (the training target); a GRPO prompt an answer its task's verifier can read, and a task of
    tasks.TASKS or none (the release's records: the official exact-match reward). decode=True reads every image
    to its last byte (a truncated file has a valid header) and returns their (width, height); otherwise only
    the files' presence is checked (81k prompts) and [] is returned."""
    import tasks
    rid = record.get("id", "?")
    if response and "response" not in record:
        raise BadRecord(f'record {rid}: no "response" field; the cold start trains on sft.jsonl from make_data.py '
                        "(train.jsonl and test.jsonl have no responses: they are for GRPO and evaluation)")
    if response and (not isinstance(record["response"], str) or not record["response"].strip()):
        raise BadRecord(f"record {rid}: empty response")
    if not isinstance(record.get("problem"), str):
        raise BadRecord(f'record {rid}: "problem" is {json.dumps(record.get("problem"), default=str)[:80]}, not a string')
    if not response and record.get("task") not in (None, *tasks.TASKS):
        raise BadRecord(f"record {rid}: unknown task {json.dumps(record.get('task'), default=str)[:40]}; expected one "
                        f"of {', '.join(tasks.TASKS)}, or no task for the official exact-match reward")
    if not response and record.get("answer") is None:
        raise BadRecord(f"record {rid}: no answer")
    images = record.get("images")
    if not isinstance(images, list) or not all(isinstance(x, (str, dict)) for x in images):
        raise BadRecord(f'record {rid}: "images" is {json.dumps(images, default=str)[:200]}, not a list of paths '
                        "(use [] for a text-only record)")
    if record["problem"].count(IMAGE_PLACEHOLDER) != len(images):
        raise BadRecord(f"record {rid}: {record['problem'].count(IMAGE_PLACEHOLDER)} <image> placeholders but "
                        f"{len(images)} images")
    if not response:
        try:
            tasks.accuracy("", str(record["answer"]), record.get("task"))
        except ValueError as e:
            raise BadRecord(f"record {rid}: {e}") from None
    return [_checked_image(ref, root, rid, decode) for ref in images]


def _checked_image(ref, root: Path, rid, decode: bool):
    """(width, height) of one image entry read to its last byte (decode), or None once its file is found."""
    name = Path(root) / ref if isinstance(ref, str) else ref.get("path") or ref.get("member") or "(bytes)"
    if not decode:
        if isinstance(ref, str) and not (Path(root) / ref).is_file():
            raise BadRecord(f"record {rid}: image {name} not found")
        return None
    try:
        with open_image(ref, root) as im:
            im.load()
            return im.size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise BadRecord(f"record {rid}: cannot read image {name}: {e}") from None


# ----------------------------------------------------------------------------- a record's images
def load_images(record: dict, root: Path) -> list:
    """The record's images as RGB PIL images (each entry as open_image reads it)."""
    out = []
    for ref in record["images"]:
        with open_image(ref, root) as im:
            out.append(im.convert("RGB"))
    return out


def open_image(ref, root: Path) -> Image.Image:
    """Open one image entry of a record (use it in a `with`): a path (relative to root, or absolute), a bytes
    dict {"bytes": ...} decoded in memory (the release's parquet may embed its images), or a zip member
    {"zip": ..., "member": ...} read straight from the archive (records.read_records makes these when the
    release's images are still in images.zip). Raises OSError (or a PIL error) when it cannot be read."""
    if isinstance(ref, str):
        return Image.open(Path(root) / ref)
    if isinstance(ref, dict) and ref.get("bytes") is not None:
        return Image.open(io.BytesIO(ref["bytes"]))
    if isinstance(ref, dict) and "zip" in ref:
        try:
            data = _zip_handle(ref["zip"], os.getpid(), threading.get_ident()).read(ref["member"])
        except KeyError:
            raise OSError(f"{ref['zip']} has no member {ref['member']}") from None
        return Image.open(io.BytesIO(data))
    raise OSError(f"not an image entry: {str(ref)[:80]} (expected a path, bytes or a zip member)")


@functools.lru_cache(maxsize=64)
def _zip_handle(path: str, pid: int, thread: int):
    """One open ZipFile per archive, process and thread (a ZipFile handle is not shared across threads)."""
    import zipfile
    return zipfile.ZipFile(path)
