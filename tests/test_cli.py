"""The `tokenprune` command line: the demo on a tiny model, its errors, and the timing helper."""

from __future__ import annotations

import contextlib
import io
import json
import re

import pytest
import torch
from rich.console import Console

from tokenprune import cli, timing
from tokenprune.demo import parse_tiny_spec, run_length
from tokenprune.metrics import agreement

SMALL = "layers=4,hidden=64,heads=4,kv_heads=2,intermediate=128,vocab=512,grid=6"
METHODS = ["baseline", "fastv", "vtw", "st3"]


def run_cli(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    code = cli.main(argv, console=Console(file=out, width=200, color_system=None))
    return code, out.getvalue()


def table_rows(text: str) -> dict[str, list[str]]:
    """First line of every table row, keyed by method name, split into cells."""
    rows = {}
    for line in text.splitlines():
        if not line.startswith("│"):
            continue
        cells = [c.strip() for c in line.strip("│").split("│")]
        if cells[0] in METHODS:
            rows[cells[0]] = cells
    return rows


def test_demo_prints_one_row_per_method(tmp_path):
    report_file = tmp_path / "reports.json"
    code, text = run_cli(
        ["demo", "--tiny-spec", SMALL, "--max-new-tokens", "4", "--repeats", "1", "--json", str(report_file)]
    )
    assert code == 0, text
    rows = table_rows(text)
    assert list(rows) == METHODS, text
    header = next(line for line in text.splitlines() if "Prefill FLOPs" in line)
    assert "TTFT" in header and "Visual KV" in header and "Agree" in header and "Equiv. visual" in header
    # baseline: all 36 visual tokens in all 4 layers, 100 % of everything, ratio 1.00 to itself
    _, tokens, flops, equivalent, visual_kv, total_kv, ttft, decode, agree, kl = rows["baseline"]
    assert tokens == "36x4" and equivalent == "36"
    assert flops == visual_kv == total_kv == agree == "100%"
    assert ttft == decode == "1.00x"
    # FastV default: cut at layer 2 keeping round(36 * 0.5) = 18; VTW k = 4 // 2 = 2 withdraws everything
    assert rows["fastv"][1] == "36x2 18x2"
    assert rows["vtw"][1] == "36x2 0x2"
    # equivalent visual tokens: (2 * 36 + 2 * 18) / 4 = 27 and (2 * 36 + 2 * 0) / 4 = 18
    assert rows["fastv"][3] == "27" and rows["vtw"][3] == "18"
    for name in ("fastv", "vtw", "st3"):
        assert float(rows[name][2].rstrip("%")) < 100  # pruning saves prefill FLOPs
        assert float(rows[name][3]) < 36
        assert re.fullmatch(r"\d+\.\d\dx", rows[name][6])

    saved = json.loads(report_file.read_text())
    assert [m["name"] for m in saved["methods"]] == METHODS
    base = saved["methods"][0]
    assert base["report"] is None and base["agreement"] == 1.0 and base["timing"]["ttft_ratio"] == 1.0
    for m in saved["methods"][1:]:
        assert m["report"]["strategy"]["name"] == m["name"]
        assert len(m["tokens"]) == 4  # the tiny model decodes the full length
        assert len(m["report"]["equivalent_visual_tokens"]) == 1
        assert 0.0 <= m["agreement"] <= 1.0


QWEN_SMALL = "layers=4,hidden=64,heads=4,kv_heads=2,intermediate=128,vocab=256,patch_size=16"


def test_demo_on_a_tiny_qwen_family_through_its_image_processor(tmp_path):
    report_file = tmp_path / "reports.json"
    argv = ["demo", "--family", "qwen2_5_vl", "--tiny-spec", QWEN_SMALL, "--max-new-tokens", "4", "--repeats", "1"]
    code, text = run_cli([*argv, "--json", str(report_file)])
    assert code == 0, text
    assert "tiny random Qwen2.5-VL (4 layers, hidden 64), 70 visual + " in text
    rows = table_rows(text)
    assert list(rows) == METHODS, text
    # the synthetic 480x360 picture scaled to 320x224 pixels: 14x20 patches of 16, 2x2 merge: 70 tokens
    assert rows["baseline"][1] == "70x4"
    assert rows["fastv"][1] == "70x2 35x2" and rows["vtw"][1] == "70x2 0x2"
    assert rows["st3"][1].startswith("70x2 ") and float(rows["st3"][2].rstrip("%")) < 100
    saved = json.loads(report_file.read_text())
    assert saved["model"]["family"] == "qwen2_5_vl" and saved["model"]["visual_tokens"] == 70
    assert all(len(m["tokens"]) == 4 and isinstance(m["text"], str) for m in saved["methods"])


def test_missing_image_exits_2_naming_the_file(tmp_path, capsys):
    missing = tmp_path / "no-such-picture.png"
    code = cli.main(["demo", "--model", str(tmp_path), "--image", str(missing), "--prompt", "what is this?"])
    assert code == 2
    err = capsys.readouterr().err
    assert str(missing) in err
    assert "not found" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["demo", "--model", "{tmp}/absent", "--image", "{img}", "--prompt", "hi"], "model directory not found"),
        (["demo", "--model", "{tmp}", "--image", "{img}", "--prompt", "hi"], "no config.json"),
        (["demo", "--model", "{tmp}", "--image", "{bad}", "--prompt", "hi"], "cannot read image"),
        (["demo", "--image", "{img}"], "need all three"),
        (["demo", "--tiny-spec", "layers=x"], "not an integer"),
        (["demo", "--max-new-tokens", "1"], "--max-new-tokens"),
        (["demo", "--model", "{tmp}", "--image", "{img}", "--prompt", "hi", "--family", "qwen2_vl"], "tiny model only"),
        (["demo", "--family", "qwen2_vl", "--tiny-spec", "grid=4"], "allowed: family, layers"),
    ],
)
def test_user_errors_exit_2_without_traceback(tmp_path, capsys, argv, expected):
    from PIL import Image

    img = tmp_path / "ok.png"
    Image.new("RGB", (8, 8)).save(img)
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    if "no config.json" != expected:
        (tmp_path / "config.json").write_text("{}")  # a directory that passes the config check
    argv = [a.format(tmp=tmp_path, img=img, bad=bad) for a in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


def test_bad_arguments_exit_2():
    with pytest.raises(SystemExit) as exc:
        cli.main(["demo", "--attn", "flash"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        cli.main([])
    assert exc.value.code == 2


def test_helpers():
    assert run_length([576, 576, 288, 288, 288]) == "576x2 288x3"
    assert run_length([]) == ""
    assert agreement([1, 2, 3, 4], [1, 2, 0, 4]) == 0.75
    assert agreement([1, 2], [1, 2, 3, 4]) == 0.5  # positions one run lacks count as different
    assert agreement([], []) == 1.0
    assert parse_tiny_spec("layers=2,grid=3").visual_tokens == 9


def test_timing_interleaves_and_reports_ratios():
    calls: list[str] = []
    active: list[str] = []

    def method(name):
        @contextlib.contextmanager
        def factory():
            active.append(name)
            yield
            active.pop()

        return name, factory

    def generate(n, stopping_criteria):
        calls.append(active[-1] if active else "baseline")
        ids = torch.zeros(1, 1, dtype=torch.long)
        for _ in range(n):  # what generate() does after every new token
            stopping_criteria(ids, None)

    result = timing.measure(
        [timing.baseline_method(), method("a"), method("b")], generate, new_tokens=5, repeats=2, warmup=1
    )
    assert calls == ["baseline", "a", "b"] * 3  # warm-up, then two interleaved repeats
    assert all(len(t.ttft_s) == 2 and t.produced == [5, 5] for t in result.values())
    rel = timing.ratios(result)
    assert rel["baseline"]["ttft_ratio"] == 1.0 and rel["baseline"]["decode_ratio"] == 1.0
    assert set(rel["a"]) == {"ttft_ratio", "decode_ratio", "end_to_end_ratio"}
    t = timing.Timing("x", new_tokens=3)
    for start, stamps, end in [(0.0, [1.0, 2.0, 3.0], 3.5), (0.0, [2.0, 3.0, 4.0], 4.0), (0.0, [3.0, 6.0, 9.0], 9.0)]:
        t.add(start, stamps, end)
    assert t.ttft == 2.0 and t.decode_per_token == 1.0 and t.end_to_end == 4.0  # medians


def test_token_clock_times_a_real_generate():
    from tokenprune.tiny import TinySpec, build_model, make_inputs

    spec = TinySpec(layers=2, grid=3)
    model, data = build_model(spec), make_inputs(spec)

    def generate(n, stopping_criteria):
        model.generate(**data, max_new_tokens=n, min_new_tokens=n, do_sample=False, stopping_criteria=stopping_criteria)

    result = timing.measure([timing.baseline_method()], generate, new_tokens=4, repeats=2)
    t = result["baseline"]
    assert t.produced == [4, 4]
    assert all(0 < ttft <= full for ttft, full in zip(t.ttft_s, t.full_s, strict=True))
    assert all(d > 0 for d in t.decode_s)


# ----------------------------------------------------------------------------------------- docs in sync
ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent
DEMO_LINE = "pip install torch==2.13.0 && pip install -e . && tokenprune demo"
TEST_LINE = 'pip install -e ".[test]" torch==2.13.0 && pip uninstall -y torchvision && python -m pytest -q'


def test_readme_setup_lines_and_ci_script_agree():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
    setup = [b.strip() for b in blocks if b.strip().startswith("pip install")]
    assert setup == [DEMO_LINE, TEST_LINE]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "set -euo pipefail" in ci
    assert [line for line in ci.splitlines() if "pip install" in line] == [TEST_LINE]


@pytest.mark.parametrize("doc", ["README.md", "docs/usage.md"])
def test_docs_list_every_strategy_parameter_with_its_default(doc):
    import tokenprune as tp
    from tokenprune import registry

    readme = (ROOT / doc).read_text()
    for name in tp.available_strategies():
        assert f"| `{name}` |" in readme, f"strategy {name} missing from the table in {doc}"
        for field_name, info in registry.strategy_factory(name).params.model_fields.items():
            default = info.default
            shown = f'"{default}"' if isinstance(default, str) else repr(default)
            assert re.search(rf"\| `{field_name}` \| `{re.escape(shown)}` \|", readme), (
                f"{doc}: parameter {name}.{field_name} with default {shown} is missing or outdated"
            )


def save_local_llava(directory) -> None:
    """A tiny LLaVA checkpoint with a real processor (tokenizer, image processor, chat template) on disk."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import CLIPImageProcessor, LlavaProcessor, PreTrainedTokenizerFast

    from tokenprune.tiny import TinySpec, build_model

    spec = TinySpec(layers=3, grid=6)
    words = ["<pad>", "<s>", "</s>", "<unk>", "USER:", "ASSISTANT:"] + [f"w{i}" for i in range(spec.vocab - 7)]
    vocab = {w: i for i, w in enumerate(words)} | {"<image>": spec.vocab - 1}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )
    side = spec.grid * 2
    image_processor = CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    template = (
        "{% for m in messages %}USER: {% for c in m['content'] %}{% if c['type'] == 'image' %}<image> "
        "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endfor %} ASSISTANT:"
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=2,
        vision_feature_select_strategy="default",
        chat_template=template,
        num_additional_image_tokens=1,
    )
    build_model(spec).save_pretrained(directory)
    processor.save_pretrained(directory)


def test_demo_on_local_weights_through_processor_and_chat_template(tmp_path):
    from PIL import Image

    save_local_llava(tmp_path / "model")
    image = tmp_path / "cat.png"
    Image.new("RGB", (40, 30), (200, 120, 40)).save(image)
    report_file = tmp_path / "reports.json"
    code, text = run_cli(
        [
            "demo",
            "--model",
            str(tmp_path / "model"),
            "--image",
            str(image),
            "--prompt",
            "w1 w2 w3",
            "--max-new-tokens",
            "4",
            "--repeats",
            "1",
            "--json",
            str(report_file),
        ]
    )
    assert code == 0, text
    rows = table_rows(text)
    assert set(rows) == set(METHODS)
    assert rows["baseline"][1] == "36x3"  # the processor expanded <image> to 6x6 = 36 placeholders
    assert report_file.exists()
