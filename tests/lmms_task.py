"""A local lmms-eval task for the tests: a YAML file, a JSONL file of documents and generated PNG images, with an
exact-match metric computed by the task itself, so lmms-eval runs it with no network at all."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

TASK = "tokenprune_shapes"
COLORS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40)}

YAML = """\
task: {task}
dataset_path: json
dataset_kwargs:
  data_files: {data}
test_split: train
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: {max_new_tokens}
  until: {until}
process_results: !function utils.process_results
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""

UTILS = """\
from PIL import Image


def doc_to_visual(doc):
    return [Image.open(path).convert("RGB") for path in doc["images"]]


def doc_to_text(doc):
    return doc["question"]


def process_results(doc, results):
    return {"exact_match": float(results[0].strip().lower() == doc["answer"].strip().lower())}
"""


def write_task(root: Path, samples: int = 4, max_new_tokens: int = 6, images_per_doc=None, until=("\n\n",)) -> Path:
    """The task folder (give it to lmms-eval's --include_path): `samples` documents, each a picture of a
    colored shape of its own size (so the samples' prompts differ) and a question about its color."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    names = list(COLORS)
    rows = []
    for i in range(samples):
        color = names[i % len(names)]
        count = 1 if images_per_doc is None else images_per_doc[i]
        paths = []
        for j in range(count):
            size = (64 + 24 * i + 8 * j, 48 + 16 * ((i + j) % 3))
            picture = Image.new("RGB", size, (245, 245, 245))
            ImageDraw.Draw(picture).ellipse([4, 4, size[0] - 4, size[1] - 4], fill=COLORS[color])
            path = root / "images" / f"doc{i}_{j}.png"
            picture.save(path)
            paths.append(str(path))
        rows.append({"id": i, "images": paths, "question": "What color is the shape?", "answer": color})
    data = root / "docs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / f"{TASK}.yaml").write_text(
        YAML.format(task=TASK, data=data, max_new_tokens=max_new_tokens, until=json.dumps(list(until)))
    )
    (root / "utils.py").write_text(UTILS)
    return root
