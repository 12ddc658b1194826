"""tokenprune.data: on-disk layouts round trip, task metrics, error messages, and one tiny end-to-end run."""

from __future__ import annotations

import json
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from tokenprune.data import (
    CAPTION_PROMPT,
    FORMATS,
    Sample,
    load_samples,
    score_predictions,
    task_of,
    write_synthetic,
)
from tokenprune.errors import DataError
from tokenprune.metrics import parse_letter, parse_yes_no

PARQUET = ["scienceqa", "pope", "caption"]


def _is_rgb(sample: Sample) -> bool:
    return len(sample.images) >= 1 and all(isinstance(i, Image.Image) and i.mode == "RGB" for i in sample.images)


# ------------------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("fmt", ["jsonl", *PARQUET])
def test_write_then_load_round_trip(tmp_path, fmt):
    path = write_synthetic(fmt, tmp_path / fmt, n=7, seed=3)
    samples = load_samples(fmt, str(path))
    assert len(samples) == 7 and all(_is_rgb(s) for s in samples)
    assert all(s.task == task_of(fmt) for s in samples)
    assert len({s.id for s in samples}) == 7
    again = load_samples(fmt, str(path))
    assert [s.prompt for s in again] == [s.prompt for s in samples]
    subset = load_samples(fmt, str(path), limit=3, seed=5)
    assert len(subset) == 3 and subset == load_samples(fmt, str(path), limit=3, seed=5)
    order = [s.id for s in samples]
    assert [order.index(s.id) for s in subset] == sorted(order.index(s.id) for s in subset)  # file order kept
    assert len(load_samples(fmt, str(path), limit=100)) == 7
    first = samples[0]
    if fmt == "jsonl":
        assert first.answer and first.prompt.endswith("?") and first.id == "q0"
    elif fmt == "scienceqa":
        for s in samples:
            assert s.prompt.endswith("\nAnswer with the option's letter from the given choices directly.")
            assert s.answer in "ABCD"[: len(s.choices)]
            assert f"{s.answer}. " in s.prompt and s.choices[" ABCD".index(s.answer) - 1] in s.prompt
        assert samples[1].prompt.startswith("Context: The picture shows some shapes.\nWhat colour is the")
        assert samples[0].prompt.startswith("What colour is the")  # empty hint: no context line
    elif fmt == "pope":
        assert [s.answer for s in samples] == ["yes", "no"] * 3 + ["yes"]
        assert first.prompt.startswith("Is there a ") and first.prompt.endswith(
            " in the image?\nAnswer the question using a single word or phrase."
        )
        assert first.id == "1"  # question_id
    else:
        assert all(s.prompt == CAPTION_PROMPT and len(s.references) == 3 and s.answer is None for s in samples)


def test_parquet_single_file_and_path_images(tmp_path):
    folder = write_synthetic("pope", tmp_path / "pope", n=4)
    files = sorted(folder.glob("*.parquet"))
    assert len(files) == 2
    assert [s.id for s in load_samples("pope", str(files[1]))] == ["3", "4"]
    # images stored as paths only, resolved against image_root
    table = pq.read_table(files[0])
    rows = table.to_pylist()
    (tmp_path / "imgs").mkdir()
    for row in rows:
        (tmp_path / "imgs" / row["image"]["path"]).write_bytes(row["image"]["bytes"])
        row["image"] = {"bytes": None, "path": row["image"]["path"]}
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "paths.parquet")
    loaded = load_samples("pope", str(tmp_path / "paths.parquet"), image_root=str(tmp_path / "imgs"))
    assert len(loaded) == 2 and all(_is_rgb(s) for s in loaded)


def test_jsonl_images_list_question_key_and_image_root(tmp_path):
    Image.new("RGB", (8, 6), (1, 2, 3)).save(tmp_path / "a.png")
    Image.new("L", (5, 5)).save(tmp_path / "b.png")
    data = tmp_path / "sub" / "d.jsonl"
    data.parent.mkdir()
    data.write_text(json.dumps({"images": ["a.png", "b.png"], "question": "Same?"}) + "\n\n")
    (sample,) = load_samples("jsonl", str(data), image_root=str(tmp_path))
    assert sample.prompt == "Same?" and sample.answer is None and sample.id == "1"
    assert len(sample.images) == 2 and _is_rgb(sample)


def test_synthetic_is_deterministic():
    a, b = load_samples("synthetic", seed=1), load_samples("synthetic", seed=1)
    assert (
        len(a) == 8
        and [s.prompt for s in a] == [s.prompt for s in b]
        and [s.answer for s in a] == [s.answer for s in b]
    )
    assert a[0].images[0].tobytes() == b[0].images[0].tobytes() and _is_rgb(a[0])
    assert len(load_samples("synthetic", limit=3)) == 3
    c = load_samples("synthetic", seed=2)
    assert [s.images[0].tobytes() for s in a] != [s.images[0].tobytes() for s in c]
    assert all(s.task == "open" and s.answer for s in a)


# ------------------------------------------------------------------------------------------- metrics
def _samples(task: str, answers: list) -> list[Sample]:
    return [Sample(id=str(i), images=(), prompt="", answer=a, task=task) for i, a in enumerate(answers)]


@pytest.mark.parametrize(
    "text, letter",
    [
        ("B", "B"),
        ("(B)", "B"),
        ("B.", "B"),
        ("The answer is C.", "C"),
        ("(D) cat", "D"),
        ("E)", "E"),
        ("Bee", None),
        ("b", None),
        ("", None),
        ("F", None),
        ("ABC", None),
        ("A. dog, B. cat", "A"),
    ],
)
def test_parse_letter(text, letter):
    assert parse_letter(text) == letter


@pytest.mark.parametrize(
    "text, answer",
    [
        ("Yes", "yes"),
        ("no.", "no"),
        ("NO, there is not", "no"),
        ("I think yes, no", "yes"),
        ("Nothing", None),
        ("yesterday", None),
        ("", None),
    ],
)
def test_parse_yes_no(text, answer):
    assert parse_yes_no(text) == answer


def test_multiple_choice_accuracy():
    samples = _samples("multiple_choice", ["A", "B", "C", "D"])
    result = score_predictions("multiple_choice", ["A", "(B) dog", "I do not know", "C."], samples)
    assert result == {"n": 4, "accuracy": 0.5, "parse_rate": 0.75}


def test_yes_no_confusion_matrix():
    # gold yes x5, no x5; predictions: TP 3, FN 1 (+1 unparsable gold yes), FP 1, TN 3 (+1 unparsable gold no)
    gold = ["yes"] * 5 + ["no"] * 5
    preds = ["Yes", "yes.", "YES", "No", "maybe", "yes", "no", "No.", "no, it is not", "???"]
    result = score_predictions("yes_no", preds, _samples("yes_no", gold))
    tp, fp, fn = 3, 1, 2
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    assert result["accuracy"] == pytest.approx(6 / 10)
    assert result["precision"] == pytest.approx(precision)
    assert result["recall"] == pytest.approx(recall)
    assert result["f1"] == pytest.approx(2 * precision * recall / (precision + recall))
    assert result["yes_ratio"] == pytest.approx(4 / 10) and result["parse_rate"] == pytest.approx(8 / 10)
    none_yes = score_predictions("yes_no", ["no", "no"], _samples("yes_no", ["yes", "no"]))
    assert none_yes["precision"] is None and none_yes["recall"] == 0.0 and none_yes["f1"] is None


def test_open_exact_and_contains():
    samples = _samples("open", ["red", "Two shapes", "blue", None])
    result = score_predictions("open", ["Red.", "two  SHAPES!", "It is blue", "anything"], samples)
    assert result == {"n": 3, "accuracy": pytest.approx(2 / 3), "contains": 1.0}
    assert score_predictions("open", ["x"], _samples("open", [None])) == {}
    assert score_predictions("open", ["reddish"], _samples("open", ["red"]))["contains"] == 0.0


def test_cider_matches_pycocoevalcap_and_ranks_captions():
    from pycocoevalcap.cider.cider import Cider

    refs = [
        ("A red square on a white background.", "A red square."),
        ("Two dogs play in the park.", "Dogs playing."),
        ("A man rides a horse.", "A person on a horse."),
        ("A bowl of fruit.", "Fruit in a bowl."),
    ]
    samples = [Sample(id=str(i), images=(), prompt="", references=r, task="caption") for i, r in enumerate(refs)]
    same = score_predictions("caption", [r[0] for r in refs], samples)
    unrelated = score_predictions("caption", ["The stock market fell today."] * 4, samples)
    assert same["cider"] > unrelated["cider"] >= 0 and same["n"] == 4
    own, _ = Cider().compute_score(
        {
            0: ["a red square on a white background", "a red square"],
            1: ["two dogs play in the park", "dogs playing"],
            2: ["a man rides a horse", "a person on a horse"],
            3: ["a bowl of fruit", "fruit in a bowl"],
        },
        {0: ["a red square"], 1: ["a dog"], 2: ["a horse"], 3: ["fruit"]},
    )
    assert score_predictions("caption", ["A red square!", "A dog", "a horse.", "Fruit"], samples)[
        "cider"
    ] == pytest.approx(float(own))
    assert score_predictions("caption", ["x"], _samples("caption", ["x"])) == {}


def test_cider_without_pycocoevalcap(monkeypatch):
    monkeypatch.setitem(sys.modules, "pycocoevalcap.cider.cider", None)  # import then raises ImportError
    samples = [Sample(id="0", images=(), prompt="", references=("a cat",), task="caption")]
    result = score_predictions("caption", ["a cat"], samples)
    assert result["cider"] is None and "pip install tokenprune[caption]" in result["note"]


def test_score_errors():
    with pytest.raises(DataError, match="multiple_choice"):
        score_predictions("vqa", [], [])
    with pytest.raises(DataError, match="2 predictions for 1 samples"):
        score_predictions("open", ["a", "b"], _samples("open", ["a"]))


# ------------------------------------------------------------------------------------------- errors
def _jsonl(tmp_path, *lines: str):
    Image.new("RGB", (4, 4)).save(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    file = tmp_path / "d.jsonl"
    file.write_text("\n".join(lines) + "\n")
    return str(file)


OK_LINE = json.dumps({"image": "ok.png", "prompt": "Q?"})


@pytest.mark.parametrize(
    "line, pattern",
    [
        ("{not json", r"line 2: invalid JSON"),
        ("[1, 2]", r"line 2: expected a JSON object"),
        (json.dumps({"prompt": "Q?"}), r"line 2: field 'image': missing"),
        (json.dumps({"image": "ok.png"}), r"line 2: field 'prompt': missing"),
        (json.dumps({"image": "ok.png", "prompt": " "}), r"line 2: field 'prompt': missing or empty"),
        (json.dumps({"images": [], "prompt": "Q?"}), r"line 2: field 'images': must be a non-empty list"),
        (json.dumps({"image": "gone.png", "prompt": "Q?"}), r"line 2: field 'image': image file not found: .*gone.png"),
        (json.dumps({"image": "bad.png", "prompt": "Q?"}), r"line 2: field 'image': cannot read image"),
    ],
)
def test_jsonl_errors_name_file_line_and_field(tmp_path, line, pattern):
    path = _jsonl(tmp_path, OK_LINE, line)
    with pytest.raises(DataError, match=r"d\.jsonl: " + pattern):
        load_samples("jsonl", path)


def test_general_errors(tmp_path):
    with pytest.raises(DataError, match="unknown data format 'coco'; use one of " + ", ".join(FORMATS)):
        load_samples("coco", "x")
    with pytest.raises(DataError, match="limit must be >= 1"):
        load_samples("synthetic", limit=0)
    with pytest.raises(DataError, match=r"missing\.jsonl: file not found"):
        load_samples("jsonl", str(tmp_path / "missing.jsonl"))
    with pytest.raises(DataError, match="is a folder"):
        load_samples("jsonl", str(tmp_path))
    with pytest.raises(DataError, match="needs a path"):
        load_samples("pope")
    with pytest.raises(DataError, match="takes no path"):
        load_samples("synthetic", str(tmp_path))
    (tmp_path / "empty.jsonl").write_text("\n \n")
    with pytest.raises(DataError, match=r"empty\.jsonl: empty dataset"):
        load_samples("jsonl", str(tmp_path / "empty.jsonl"))
    with pytest.raises(DataError, match=r"nowhere: file or folder not found"):
        load_samples("pope", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="no .parquet files"):
        load_samples("pope", str(tmp_path))
    with pytest.raises(DataError, match="no files to write"):
        write_synthetic("synthetic", tmp_path)
    with pytest.raises(DataError, match="unknown data format"):
        task_of("vqa")


def _parquet(tmp_path, rows: list[dict], name: str = "x.parquet") -> str:
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / name)
    return str(tmp_path / name)


def _good_rows(tmp_path, fmt: str) -> list[dict]:
    (row,) = pq.read_table(write_synthetic(fmt, tmp_path / "src", n=1) / "test-00000-of-00001.parquet").to_pylist()
    return [dict(row) for _ in range(3)]


def test_parquet_errors_name_file_row_and_field(tmp_path):
    rows = _good_rows(tmp_path, "scienceqa")
    missing = [{k: v for k, v in r.items() if k != "choices"} for r in rows]
    with pytest.raises(
        DataError, match=r"x\.parquet: field 'choices': missing column .*columns found: image, question, answer"
    ):
        load_samples("scienceqa", _parquet(tmp_path, missing))
    bad = [dict(r) for r in rows]
    bad[2]["answer"] = 7
    with pytest.raises(DataError, match=r"x\.parquet: row 2: field 'answer': index 7 is out of range for \d choices"):
        load_samples("scienceqa", _parquet(tmp_path, bad))
    bad = [dict(r) for r in rows]
    bad[1]["image"] = {"bytes": b"garbage", "path": None}
    with pytest.raises(DataError, match=r"x\.parquet: row 1: field 'image': cannot read image"):
        load_samples("scienceqa", _parquet(tmp_path, bad))
    bad[1]["image"] = None
    with pytest.raises(DataError, match=r"x\.parquet: row 1: field 'image': missing or empty"):
        load_samples("scienceqa", _parquet(tmp_path, bad))
    bad[1]["image"] = {"bytes": None, "path": "lost.png"}
    with pytest.raises(DataError, match=r"x\.parquet: row 1: field 'image': image file not found: .*lost\.png"):
        load_samples("scienceqa", _parquet(tmp_path, bad))

    pope = _good_rows(tmp_path, "pope")
    pope[1]["answer"] = "maybe"
    with pytest.raises(DataError, match=r"x\.parquet: row 1: field 'answer': expected 'yes' or 'no'"):
        load_samples("pope", _parquet(tmp_path, pope))
    pope[1]["answer"] = None
    with pytest.raises(DataError, match=r"x\.parquet: row 1: field 'answer': missing"):
        load_samples("pope", _parquet(tmp_path, pope))

    caption = [{k: v for k, v in r.items() if k != "answer"} for r in _good_rows(tmp_path, "caption")]
    with pytest.raises(DataError, match=r"x\.parquet: field 'answer': no reference captions column .*columns found"):
        load_samples("caption", _parquet(tmp_path, caption))
    caption = _good_rows(tmp_path, "caption")
    caption[0]["answer"] = []
    with pytest.raises(DataError, match=r"x\.parquet: row 0: field 'references': expected a non-empty list"):
        load_samples("caption", _parquet(tmp_path, caption))

    empty = pa.Table.from_pylist(rows).slice(0, 0)
    pq.write_table(empty, tmp_path / "empty.parquet")
    with pytest.raises(DataError, match=r"empty\.parquet: empty dataset"):
        load_samples("scienceqa", str(tmp_path / "empty.parquet"))
    (tmp_path / "junk.parquet").write_text("nope")
    with pytest.raises(DataError, match=r"junk\.parquet: not a readable parquet file"):
        load_samples("scienceqa", str(tmp_path / "junk.parquet"))


def test_flickr_and_nocaps_reference_columns(tmp_path):
    rows = _good_rows(tmp_path, "caption")
    flickr = [{"image": r["image"], "caption": r["answer"], "img_id": str(i)} for i, r in enumerate(rows)]
    assert [s.id for s in load_samples("caption", _parquet(tmp_path, flickr, "f.parquet"))] == ["0", "1", "2"]
    nocaps = [{"image": r["image"], "annotations_captions": r["answer"], "image_id": i} for i, r in enumerate(rows)]
    samples = load_samples("caption", _parquet(tmp_path, nocaps, "n.parquet"))
    assert samples[2].id == "2" and len(samples[2].references) == 3


# ------------------------------------------------------------------------------------------- end to end
def test_tiny_model_end_to_end():
    from tokenprune.models import load_model

    loaded = load_model("tiny", tiny=dict(layers=2, hidden=32, heads=2, kv_heads=1, intermediate=64, vocab=256, grid=4))
    samples = load_samples("synthetic", limit=2)
    predictions = []
    for sample in samples:
        inputs = loaded.inputs(sample.images, sample.prompt)
        assert int((inputs["input_ids"] == 255).sum()) == 16
        with torch.inference_mode():
            out = loaded.model.generate(**inputs, max_new_tokens=3, do_sample=False)
        predictions.append(loaded.decode(out[0, inputs["input_ids"].shape[1] :]))
    result = score_predictions("open", predictions, samples)
    assert result["n"] == 2 and 0.0 <= result["accuracy"] <= 1.0
