"""Evaluation data: samples (images + the exact prompt + gold answers) and task metrics.

Formats (`load_samples(format, path)`):

- ``jsonl``: one JSON object per line: ``image`` (a path, relative to the JSONL file's folder or to
  ``image_root``) or ``images`` (a list of paths), ``prompt`` (or ``question``; given to the model as is),
  optional ``answer`` (free text, scored by exact match) and ``id``. Task "open".
- ``scienceqa``: ScienceQA-IMG as parquet (lmms-lab/ScienceQA, config ScienceQA-IMG): columns ``image``,
  ``question``, ``choices`` (list of str), ``answer`` (int index into choices), optional ``hint`` (other
  columns such as task, grade, subject are ignored). Prompt as in LLaVA's evaluation: "Context: {hint}"
  when there is a hint, the question, options "A. ...", then "Answer with the option's letter from the
  given choices directly." Gold: the option letter. Task "multiple_choice".
- ``pope``: POPE as parquet (lmms-lab/POPE): ``question``, ``answer`` ("yes"/"no"), ``image``, optional
  ``question_id``, ``category``, ``image_source``. Prompt: the question + "\\nAnswer the question using a
  single word or phrase." Task "yes_no".
- ``caption``: captioning sets as parquet: ``image`` plus references in ``answer`` (lmms-lab/COCO-Caption2017,
  COCO-Caption), ``caption`` (lmms-lab/flickr30k) or ``annotations_captions`` (lmms-lab/NoCaps), each a list
  of str; id from ``question_id``, ``id``, ``img_id`` or ``image_id``. Prompt: "Provide a one-sentence
  caption for the provided image." Task "caption" (CIDEr).
- ``synthetic``: no files; generated shape images with open questions ("What colour is the square?"),
  deterministic from ``seed``. Enough to run the tiny random model end to end.

Parquet ``path`` is a .parquet file or a folder whose ``*.parquet`` files (sorted, not recursive) are
read in order, so give the folder of one split. Images are the ``datasets`` Image feature, a struct
``{bytes, path}``: the bytes are decoded, or without bytes the path is opened (relative to ``image_root``
or the parquet file's folder). Images are decoded to RGB when loaded: use ``limit`` for big sets.

``limit`` picks a random subset of that many rows (the same for the same ``seed``), kept in file order:
benchmark files are often sorted (POPE by category), so the first rows would not be representative.

Every problem raises `DataError` naming the file, the row (1-based line of a JSONL file, 0-based row
index within a parquet file) and the field.
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from . import metrics
from .errors import DataError

FORMATS = ("jsonl", "scienceqa", "pope", "caption", "synthetic")
TASKS = ("open", "multiple_choice", "yes_no", "caption")
_TASK_OF = {
    "jsonl": "open",
    "scienceqa": "multiple_choice",
    "pope": "yes_no",
    "caption": "caption",
    "synthetic": "open",
}

SCIENCEQA_INSTRUCTION = "Answer with the option's letter from the given choices directly."
SHORT_ANSWER_INSTRUCTION = "Answer the question using a single word or phrase."
CAPTION_PROMPT = "Provide a one-sentence caption for the provided image."
LETTERS = "ABCDE"


@dataclass(frozen=True)
class Sample:
    id: str
    images: tuple  # PIL images (RGB), usually one
    prompt: str  # exactly the text given to the model, task instruction included
    answer: str | None = None  # gold: option letter (ScienceQA), "yes"/"no" (POPE), free text (JSONL)
    references: tuple[str, ...] = ()  # reference captions
    choices: tuple[str, ...] = ()
    task: str = "open"  # "open" | "multiple_choice" | "yes_no" | "caption"


def task_of(format: str) -> str:
    """The task (and so the metrics) of a data format."""
    _check_format(format)
    return _TASK_OF[format]


def _check_format(format: str) -> None:
    if format not in FORMATS:
        raise DataError(f"unknown data format {format!r}; use one of {', '.join(FORMATS)}")


# ------------------------------------------------------------------------------------------- loading
def load_samples(
    format: str,
    path: str | None = None,
    *,
    limit: int | None = None,
    seed: int = 0,
    image_root: str | None = None,
) -> list[Sample]:
    """Samples of a dataset in `format` (see the module docstring for the layouts)."""
    _check_format(format)
    if limit is not None and limit < 1:
        raise DataError(f"limit must be >= 1 (or None for every sample), not {limit}")
    if format == "synthetic":
        if path is not None:
            raise DataError(f"the synthetic format is generated and takes no path (got {path!r})")
        return [_synthetic_sample(scene) for scene in _scenes(limit or 8, seed)]
    if path is None:
        raise DataError(
            f"format {format!r} needs a path "
            f"({'a .jsonl file' if format == 'jsonl' else 'a .parquet file or a folder of them'})"
        )
    if format == "jsonl":
        return _load_jsonl(Path(path), limit, seed, image_root)
    return _load_parquet(format, Path(path), limit, seed, image_root)


def _where(file: Path, row: str | None = None, field: str | None = None) -> str:
    parts = [str(file)] + ([row] if row else []) + ([f"field {field!r}"] if field else [])
    return ": ".join(parts)


def _subset(total: int, limit: int | None, seed: int) -> list[int]:
    if limit is None or limit >= total:
        return list(range(total))
    return sorted(random.Random(seed).sample(range(total), limit))


def load_image(path: str | Path):
    """The image file at `path` as RGB; a missing or unreadable file is a DataError naming it."""
    file = Path(path)
    if not file.exists():
        raise DataError(f"image file not found: {path}")
    if not file.is_file():
        raise DataError(f"image path {path} is a directory, not an image file")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as img:
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from None


def _open_image(source: bytes | Path, where: str):
    from PIL import Image, UnidentifiedImageError

    if isinstance(source, Path) and not source.is_file():
        raise DataError(f"{where}: image file not found: {source}")
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"{where}: cannot read image: {exc}") from None


def _text(value: Any, where: str, required: bool = True) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise DataError(f"{where}: missing or empty")
        return None
    if isinstance(value, (dict, list)):
        raise DataError(f"{where}: expected text, got {type(value).__name__}")
    return str(value)


def _load_jsonl(file: Path, limit: int | None, seed: int, image_root: str | None) -> list[Sample]:
    if not file.exists():
        raise DataError(f"{file}: file not found")
    if not file.is_file():
        raise DataError(f"{file}: is a folder; the jsonl format needs a .jsonl file")
    rows: list[tuple[int, dict]] = []
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{file}: cannot read: {exc}") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{_where(file, f'line {number}')}: invalid JSON: {exc.msg}") from None
        if not isinstance(obj, dict):
            raise DataError(f"{_where(file, f'line {number}')}: expected a JSON object, got {type(obj).__name__}")
        rows.append((number, obj))
    if not rows:
        raise DataError(f"{file}: empty dataset (no JSON lines)")
    root = Path(image_root) if image_root else file.parent
    parsed = [_jsonl_row(file, number, obj) for number, obj in rows]  # fields of every row, images of the chosen
    samples = []
    for index in _subset(len(parsed), limit, seed):
        number, sample_id, paths, prompt, answer = parsed[index]
        where = _where(file, f"line {number}", "images" if len(paths) > 1 else "image")
        images = tuple(_open_image(p if Path(p).is_absolute() else root / p, where) for p in map(Path, paths))
        samples.append(Sample(id=sample_id, images=images, prompt=prompt, answer=answer, task="open"))
    return samples


def _jsonl_row(file: Path, number: int, obj: dict) -> tuple[int, str, list[str], str, str | None]:
    row = f"line {number}"
    if "images" in obj:
        paths = obj["images"]
        if not isinstance(paths, list) or not paths or not all(isinstance(p, str) and p for p in paths):
            raise DataError(f"{_where(file, row, 'images')}: must be a non-empty list of image paths")
    elif "image" in obj:
        paths = [_text(obj["image"], _where(file, row, "image"))]
    else:
        raise DataError(f"{_where(file, row, 'image')}: missing (give 'image' or a list 'images')")
    key = "prompt" if "prompt" in obj else "question" if "question" in obj else None
    if key is None:
        raise DataError(f"{_where(file, row, 'prompt')}: missing (give 'prompt' or 'question')")
    prompt = _text(obj[key], _where(file, row, key))
    answer = _text(obj.get("answer"), _where(file, row, "answer"), required=False)
    sample_id = _text(obj.get("id"), _where(file, row, "id"), required=False) or str(number)
    return number, sample_id, paths, prompt, answer


# Columns each parquet layout needs; for "caption" the references may sit under any of several names.
_REQUIRED = {
    "scienceqa": ("image", "question", "choices", "answer"),
    "pope": ("image", "question", "answer"),
    "caption": ("image",),
}
_ID_COLUMNS = {
    "scienceqa": ("id",),
    "pope": ("question_id", "id"),
    "caption": ("question_id", "id", "img_id", "image_id"),
}
_CAPTION_REFERENCES = ("answer", "caption", "annotations_captions")


def _parquet_files(path: Path) -> list[Path]:
    if not path.exists():
        raise DataError(f"{path}: file or folder not found")
    if path.is_file():
        return [path]
    files = sorted(p for p in path.glob("*.parquet") if p.is_file())
    if not files:
        raise DataError(f"{path}: no .parquet files in this folder (give a .parquet file or the folder of one split)")
    return files


def _load_parquet(format: str, path: Path, limit: int | None, seed: int, image_root: str | None) -> list[Sample]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    handles = []
    for file in _parquet_files(path):
        try:
            handle = pq.ParquetFile(file)
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"{file}: not a readable parquet file: {exc}") from None
        found = handle.schema_arrow.names
        columns = _columns(format, file, found)
        handles.append((file, handle, columns))
    total = sum(h.metadata.num_rows for _, h, _ in handles)
    if total == 0:
        raise DataError(f"{path}: empty dataset (0 rows)")
    chosen = set(_subset(total, limit, seed))
    samples = []
    offset = 0
    for file, handle, columns in handles:
        start = 0  # row index within this file
        for group in range(handle.metadata.num_row_groups):
            size = handle.metadata.row_group(group).num_rows
            wanted = [i for i in range(size) if offset + start + i in chosen]
            if wanted:
                table = handle.read_row_group(group, columns=list(columns.values()))
                rows = table.take(wanted).to_pylist()
                root = Path(image_root) if image_root else file.parent
                for i, row in zip(wanted, rows, strict=True):
                    values = {name: row[column] for name, column in columns.items()}
                    samples.append(_parquet_sample(format, file, start + i, values, root))
            start += size
        offset += start
    return samples


def _columns(format: str, file: Path, found: list[str]) -> dict[str, str]:
    """Field name -> column name of this file; a missing required column is an error naming what was found."""
    columns = {}
    for name in _REQUIRED[format]:
        if name not in found:
            raise DataError(
                f"{_where(file, field=name)}: missing column for the {format} layout "
                f"(columns found: {', '.join(found)})"
            )
        columns[name] = name
    if format == "caption":
        refs = next((c for c in _CAPTION_REFERENCES if c in found), None)
        if refs is None:
            raise DataError(
                f"{_where(file, field='answer')}: no reference captions column ({' / '.join(_CAPTION_REFERENCES)}); "
                f"columns found: {', '.join(found)}"
            )
        columns["references"] = refs
    id_column = next((c for c in _ID_COLUMNS[format] if c in found), None)
    if id_column:
        columns["id"] = id_column
    if format == "scienceqa" and "hint" in found:
        columns["hint"] = "hint"
    return columns


def _parquet_image(value: Any, where: str, root: Path):
    if isinstance(value, dict):  # the `datasets` Image feature
        if value.get("bytes"):
            return _open_image(bytes(value["bytes"]), where)
        if value.get("path"):
            path = Path(value["path"])
            return _open_image(path if path.is_absolute() else root / path, where)
    elif isinstance(value, (bytes, bytearray)) and value:
        return _open_image(bytes(value), where)
    elif isinstance(value, str) and value:
        return _open_image(Path(value) if Path(value).is_absolute() else root / value, where)
    raise DataError(f"{where}: missing or empty (expected image bytes or a path)")


def _parquet_sample(format: str, file: Path, index: int, values: dict, root: Path) -> Sample:
    row = f"row {index}"
    image = _parquet_image(values["image"], _where(file, row, "image"), root)
    sample_id = _text(values.get("id"), "", required=False) or f"{file.stem}:{index}"
    if format == "scienceqa":
        question = _text(values["question"], _where(file, row, "question"))
        choices = values["choices"]
        if not isinstance(choices, list) or not choices or len(choices) > len(LETTERS):
            raise DataError(
                f"{_where(file, row, 'choices')}: expected a list of 1 to {len(LETTERS)} options, got {choices!r}"
            )
        answer = values["answer"]
        if isinstance(answer, bool) or not isinstance(answer, int):
            raise DataError(f"{_where(file, row, 'answer')}: expected an option index, got {answer!r}")
        if not 0 <= answer < len(choices):
            raise DataError(f"{_where(file, row, 'answer')}: index {answer} is out of range for {len(choices)} choices")
        return Sample(
            id=sample_id,
            images=(image,),
            prompt=scienceqa_prompt(question, choices, values.get("hint")),
            answer=LETTERS[answer],
            choices=tuple(map(str, choices)),
            task="multiple_choice",
        )
    if format == "pope":
        question = _text(values["question"], _where(file, row, "question"))
        answer = (_text(values["answer"], _where(file, row, "answer")) or "").strip().lower()
        if answer not in ("yes", "no"):
            raise DataError(f"{_where(file, row, 'answer')}: expected 'yes' or 'no', got {values['answer']!r}")
        return Sample(
            id=sample_id,
            images=(image,),
            prompt=f"{question}\n{SHORT_ANSWER_INSTRUCTION}",
            answer=answer,
            task="yes_no",
        )
    refs = values["references"]
    if isinstance(refs, str):
        refs = [refs]
    if not isinstance(refs, list) or not refs or not all(isinstance(r, str) and r.strip() for r in refs):
        raise DataError(
            f"{_where(file, row, 'references')}: expected a non-empty list of reference captions, got {refs!r}"
        )
    return Sample(id=sample_id, images=(image,), prompt=CAPTION_PROMPT, references=tuple(refs), task="caption")


def scienceqa_prompt(question: str, choices: Iterable[str], hint: str | None = None) -> str:
    """LLaVA's ScienceQA prompt: optional context, the question, lettered options, the instruction."""
    options = "\n".join(f"{letter}. {choice}" for letter, choice in zip(LETTERS, choices, strict=False))
    context = f"Context: {hint.strip()}\n" if hint and hint.strip() else ""
    return f"{context}{question}\n{options}\n{SCIENCEQA_INSTRUCTION}"


# ------------------------------------------------------------------------------------------- synthetic
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 160, 60),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 30),
    "orange": (250, 140, 20),
    "purple": (140, 50, 170),
}
BACKGROUNDS = {"white": (250, 250, 250), "black": (10, 10, 10), "grey": (128, 128, 128)}
SHAPES = ("square", "circle", "triangle")
SIZES = ((64, 64), (48, 96), (96, 48), (60, 80))  # (height, width): several aspect ratios for LLaVA-NeXT
NUMBERS = ("zero", "one", "two", "three")


@dataclass(frozen=True)
class _Scene:
    index: int
    image: Any
    background: str
    objects: tuple[tuple[str, str], ...]  # (colour, shape); shapes and colours all differ
    missing: tuple[str, str]  # a (colour, shape) that is not in the picture


def _scenes(n: int, seed: int) -> list[_Scene]:
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    scenes = []
    for index in range(n):
        height, width = SIZES[rng.randrange(len(SIZES))]
        background = rng.choice(sorted(BACKGROUNDS))
        count = rng.randint(1, 3)
        shapes = rng.sample(SHAPES, count)
        colours = rng.sample(sorted(COLOURS), count)
        image = Image.new("RGB", (width, height), BACKGROUNDS[background])
        draw = ImageDraw.Draw(image)
        for slot, (colour, shape) in enumerate(zip(colours, shapes, strict=True)):
            side = min(height, width // count) * 3 // 4  # one column per shape, so they never overlap
            x0 = slot * (width // count) + rng.randint(0, max(0, width // count - side))
            y0 = rng.randint(0, max(0, height - side))
            box = (x0, y0, x0 + side - 1, y0 + side - 1)
            fill = COLOURS[colour]
            if shape == "square":
                draw.rectangle(box, fill=fill)
            elif shape == "circle":
                draw.ellipse(box, fill=fill)
            else:
                draw.polygon([(x0 + side // 2, y0), (x0, y0 + side - 1), (x0 + side - 1, y0 + side - 1)], fill=fill)
        drawn = tuple(zip(colours, shapes, strict=True))
        absent = [(c, s) for c in sorted(COLOURS) for s in SHAPES if (c, s) not in drawn]
        scenes.append(_Scene(index, image, background, drawn, rng.choice(absent)))
    return scenes


def _synthetic_question(scene: _Scene) -> tuple[str, str]:
    colour, shape = scene.objects[0]
    kind = scene.index % 3
    if kind == 0:
        return f"What colour is the {shape}?", colour
    if kind == 1:
        return f"What shape is the {colour} one?", shape
    return "How many shapes are there?", NUMBERS[len(scene.objects)]


def _synthetic_sample(scene: _Scene) -> Sample:
    question, answer = _synthetic_question(scene)
    return Sample(
        id=f"synthetic-{scene.index}",
        images=(scene.image,),
        prompt=f"{question}\n{SHORT_ANSWER_INSTRUCTION}",
        answer=answer,
        task="open",
    )


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_synthetic(format: str, directory: str | Path, n: int = 8, seed: int = 0) -> Path:
    """Write `n` generated samples to `directory` in the on-disk layout of `format`; returns the path to
    give `load_samples` (the .jsonl file, or the folder of parquet files, split in two when n > 1)."""
    _check_format(format)
    if format == "synthetic":
        raise DataError(
            "the synthetic format is generated in memory; call load_samples('synthetic') (no files to write)"
        )
    if n < 1:
        raise DataError(f"n must be >= 1, not {n}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    scenes = _scenes(n, seed)
    rng = random.Random(seed + 1)
    if format == "jsonl":
        (directory / "images").mkdir(exist_ok=True)
        lines = []
        for scene in scenes:
            name = f"images/{scene.index:04d}.png"
            scene.image.save(directory / name)
            question, answer = _synthetic_question(scene)
            lines.append(json.dumps({"id": f"q{scene.index}", "image": name, "prompt": question, "answer": answer}))
        file = directory / "data.jsonl"
        file.write_text("\n".join(lines) + "\n")
        return file
    rows = [_parquet_row(format, scene, rng) for scene in scenes]
    _write_parquet_split(directory, rows)
    return directory


def _parquet_row(format: str, scene: _Scene, rng: random.Random) -> dict:
    image = {"bytes": _png(scene.image), "path": f"{scene.index:04d}.png"}
    colour, shape = scene.objects[0]
    if format == "scienceqa":
        distractors = rng.sample([c for c in sorted(COLOURS) if c != colour], rng.randint(1, 3))
        choices = distractors + [colour]
        rng.shuffle(choices)
        return {
            "image": image,
            "question": f"What colour is the {shape}?",
            "choices": choices,
            "answer": choices.index(colour),
            "hint": "The picture shows some shapes." if scene.index % 2 else "",
            "task": "closed choice",
            "grade": "grade1",
            "subject": "natural science",
            "topic": "colours",
            "category": "Shapes",
            "skill": "Identify colours",
            "lecture": "",
            "solution": "",
        }
    if format == "pope":
        present = scene.index % 2 == 0  # balanced yes/no
        asked_colour, asked_shape = (colour, shape) if present else scene.missing
        return {
            "id": str(scene.index),
            "question_id": str(scene.index + 1),
            "question": f"Is there a {asked_colour} {asked_shape} in the image?",
            "answer": "yes" if present else "no",
            "image_source": f"synthetic_{scene.index}",
            "image": image,
            "category": ("adversarial", "popular", "random")[scene.index % 3],
        }
    listed = " and ".join(_a(f"{c} {s}") for c, s in scene.objects)
    return {
        "question_id": f"{scene.index:04d}.png",
        "image": image,
        "question": CAPTION_PROMPT,
        "answer": [
            f"{listed.capitalize()} on a {scene.background} background.",
            f"A picture of {NUMBERS[len(scene.objects)]} {'shape' if len(scene.objects) == 1 else 'shapes'}.",
            f"{_a(f'{colour} {shape}').capitalize()}.",
        ],
        "id": scene.index,
        "file_name": f"{scene.index:04d}.png",
    }


def _a(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def _write_parquet_split(directory: Path, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    parts = [rows] if len(rows) < 2 else [rows[: len(rows) // 2], rows[len(rows) // 2 :]]
    for i, part in enumerate(parts):
        table = pa.Table.from_pylist(part)
        table = table.set_column(table.schema.get_field_index("image"), "image", table.column("image").cast(image_type))
        # small row groups, so that reading by row group is exercised as in the real (large) files
        pq.write_table(table, directory / f"test-{i:05d}-of-{len(parts):05d}.parquet", row_group_size=3)


# ------------------------------------------------------------------------------------------- metrics
def score_predictions(task: str, predictions: list[str], samples: list[Sample]) -> dict[str, Any]:
    """Task metrics of `predictions` (model outputs, one per sample) against the samples' gold answers.

    multiple_choice: accuracy (first standalone option letter), parse_rate. yes_no: accuracy, precision,
    recall, f1 (of "yes"), yes_ratio, parse_rate; unparsable answers count as wrong. open: accuracy (exact
    match after normalising case, punctuation and whitespace), contains (the answer occurs as words in the
    prediction). caption: CIDEr. Only samples with a gold answer (references for caption) count (`n`);
    none gives {}. The formulas are in `tokenprune.metrics`.
    """
    if task not in TASKS:
        raise DataError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
    if len(predictions) != len(samples):
        raise DataError(f"{len(predictions)} predictions for {len(samples)} samples; give one per sample")
    if task == "caption":
        pairs = [(p or "", s.references) for p, s in zip(predictions, samples, strict=True) if s.references]
        return metrics.cider([p for p, _ in pairs], [r for _, r in pairs]) if pairs else {}
    pairs = [(p or "", s.answer) for p, s in zip(predictions, samples, strict=True) if s.answer is not None]
    if not pairs:
        return {}
    scorer = {"multiple_choice": metrics.choice_scores, "yes_no": metrics.yes_no_scores, "open": metrics.open_scores}[
        task
    ]
    return scorer([p for p, _ in pairs], [g for _, g in pairs])
