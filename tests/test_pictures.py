"""`tokenprune.pictures` and `tokenprune show`: token grids vs independent layouts, kept masks vs reports, the PNG."""

from __future__ import annotations

import dataclasses
import functools
import io
import types

import pytest
import torch
from PIL import Image
from rich.console import Console

import tokenprune as tp
from tokenprune import cli, pictures
from tokenprune.show import synthetic_image
from tokenprune.tiny import TinySpec, build_model, make_inputs, next_image_tokens

LLAVA = TinySpec(layers=6, family="llava", grid=6)
NEXT = TinySpec(layers=6, family="llava_next", grid=4)  # crops of 8x8 pixels, 4x4 features
# (height, width) in pixels: square, wide, tall, very wide/tall, odd ratios that unpad rows or columns
NEXT_SIZES = [(8, 8), (8, 16), (16, 8), (10, 30), (30, 10), (13, 7), (9, 17)]
SMALL_CLI = "layers=4,hidden=64,heads=4,kv_heads=2,intermediate=128,vocab=512,grid=4"


@functools.lru_cache(maxsize=None)
def model(spec: TinySpec, attn: str = "sdpa"):
    return build_model(dataclasses.replace(spec, attn=attn))


def image_placeholders(vt: tp.VisualTokens, sample: int, image: int) -> torch.Tensor:
    """Prompt positions of an image's placeholders, from the adapter."""
    return ((vt.image_of[sample] == image) & vt.placeholders[sample]).nonzero().flatten()


def pruned_report(m, inputs, strategy: str, **params) -> tp.Report:
    with torch.inference_mode(), tp.prune(m, strategy, **params) as run:
        m.generate(**inputs, max_new_tokens=1, do_sample=False)
    return run.report


# ------------------------------------------------------------------------------------------- grids
def test_llava_grid_is_the_identity_raster_of_each_image():
    # batch of 2 with different text lengths (left padding); sample 1 has two images
    inputs = make_inputs(LLAVA, text_before=[3, 7], text_after=[5, 2], images=[1, 2])
    image_token = model(LLAVA).config.image_token_id
    for sample, image_index in [(0, 0), (1, 0), (1, 1)]:
        (grid,) = pictures.token_grids(model(LLAVA), inputs, sample=sample, image_index=image_index)
        assert (grid.kind, grid.rows, grid.cols) == ("llava", 6, 6)
        assert torch.equal(grid.offsets, torch.arange(36).view(6, 6))
        placeholders = (inputs["input_ids"][sample] == image_token).nonzero().flatten()
        assert torch.equal(grid.positions.flatten(), placeholders[36 * image_index : 36 * (image_index + 1)])


@pytest.mark.parametrize("height,width", NEXT_SIZES)
def test_next_grids_and_newlines_add_up_to_the_processor_count(height, width):
    inputs = make_inputs(NEXT, image_sizes=[[(height, width)]])
    base, tiles = pictures.token_grids(model(NEXT), inputs)
    assert (base.kind, base.rows, base.cols, tiles.kind) == ("base", 4, 4, "tiles")
    assert base.cells + tiles.cells + tiles.rows == next_image_tokens(NEXT, height, width)
    # the tiles cover the image in its aspect ratio (up to one crop's rounding)
    assert abs(tiles.cols / tiles.rows - width / height) <= width / height * 0.5


@pytest.mark.parametrize("sizes", [[(8, 16), (30, 10)], [(13, 7), (8, 8)]])
def test_next_tile_offsets_skip_the_adapters_newlines(sizes):
    """Base + tiles cells are exactly the adapter's prunable tokens of the image (newlines excluded, found
    with transformers' pack_image_features), and every tiles row ends right before a newline."""
    m = model(NEXT)
    inputs = make_inputs(NEXT, text_before=[2, 6], text_after=[4, 3], image_sizes=[sizes, sizes[::-1]])
    vt = tp.resolve_adapter(m).visual_tokens(m, inputs)
    for sample in range(2):
        for image in range(2):
            base, tiles = pictures.token_grids(m, inputs, sample=sample, image_index=image)
            placeholders = image_placeholders(vt, sample, image)
            features = placeholders[vt.prunable[sample, placeholders]]
            newlines = placeholders[~vt.prunable[sample, placeholders]]
            drawn = torch.cat([base.positions.flatten(), tiles.positions.flatten()])
            assert torch.equal(drawn.sort().values, features)
            assert torch.equal(drawn, placeholders[torch.cat([base.offsets.flatten(), tiles.offsets.flatten()])])
            assert len(newlines) == tiles.rows
            assert torch.equal(tiles.positions[:, -1] + 1, newlines)


@pytest.mark.parametrize(
    "family,size,expected",
    [("llava", None, 576), ("llava_next", (336, 336), 1176), ("llava_next", (480, 640), 2340)],
)
def test_real_model_layouts_from_the_config_alone(family, size, expected):
    """LLaVA-1.5-7B / NeXT-7B token layouts (documented counts), from a config: no weights are built."""
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaNextConfig

    vision = CLIPVisionConfig(image_size=336, patch_size=14)
    config = (LlavaConfig if family == "llava" else LlavaNextConfig)(vision_config=vision, image_token_id=32000)
    stub = types.SimpleNamespace(config=config)
    ids = torch.tensor([[1, 5, *[32000] * expected, 7, 8]])
    inputs = {"input_ids": ids, "pixel_values": torch.empty(1, 5, 3, 1, 1)}
    if size:
        inputs["image_sizes"] = torch.tensor([size])
    grids = pictures.token_grids(stub, inputs)
    assert (grids[0].rows, grids[0].cols) == (24, 24)
    assert grids[0].positions[0, 0] == 2
    if family == "llava_next":
        tiles = grids[1]
        assert (tiles.rows, tiles.cols) == ((24, 24) if size == (336, 336) else (36, 48))
        assert 576 + tiles.cells + tiles.rows == expected
        assert tiles.positions[-1, -1] == 2 + expected - 2  # the last feature, before the last newline


def test_bad_sample_or_image_index_is_refused():
    inputs = make_inputs(LLAVA)
    short = {**inputs, "input_ids": inputs["input_ids"][:, 8:]}  # a few placeholders fewer than the image gives
    with pytest.raises(tp.UnsupportedInputError, match="whole images"):
        pictures.token_grids(model(LLAVA), short)
    with pytest.raises(tp.InvalidParameterError, match="image_index 1"):
        pictures.token_grids(model(LLAVA), inputs, image_index=1)
    with pytest.raises(tp.InvalidParameterError, match="sample 3"):
        pictures.token_grids(model(LLAVA), inputs, sample=3)


# ------------------------------------------------------------------------------------------- kept masks
@pytest.mark.parametrize("spec", [LLAVA, NEXT], ids=["llava15", "next"])
def test_kept_masks_count_what_the_report_keeps_per_image(spec):
    m = model(spec)
    sizes = [[(8, 16)], [(16, 8), (10, 30)]] if spec is NEXT else None
    inputs = make_inputs(spec, text_before=[3, 5], text_after=[6, 2], images=[1, 2], image_sizes=sizes)
    report = pruned_report(m, inputs, "st3", start_layer=1, stride=2, ratio=0.3)
    assert sorted(report.kept_visual) == [1, 3, 5]
    for sample, images in enumerate([1, 2]):
        for image in range(images):
            grids = pictures.token_grids(m, inputs, sample=sample, image_index=image)
            masks = pictures.kept_masks(report, grids, sample=sample)
            assert sorted(masks) == [1, 3, 5]
            assert sum(g.cells for g in grids) == report.visual_tokens_per_image[sample][image]
            for layer, per_grid in masks.items():
                assert [mask.shape for mask in per_grid] == [(g.rows, g.cols) for g in grids]
                kept = sum(int(mask.sum()) for mask in per_grid)
                assert kept == report.kept_visual_per_image[layer][sample][image]
                previous = masks.get(layer - 2)  # progressive: a token once removed stays removed
                if previous is not None:
                    assert all(bool((now <= before).all()) for now, before in zip(per_grid, previous, strict=True))


def test_fastv_keeps_the_top_k_cells_of_the_last_query_attention():
    """Independent of the engine: eager attention of layer k-1, last prompt token, mean over heads."""
    m = model(LLAVA, attn="eager")
    inputs = make_inputs(LLAVA, text_before=4, text_after=6)
    with torch.inference_mode():
        attentions = m(**inputs, output_attentions=True).attentions
    report = pruned_report(m, inputs, "fastv", k=2, ratio=0.5)
    (grid,) = pictures.token_grids(m, inputs)
    scores = attentions[1][0, :, -1].mean(0)[grid.positions]  # (6, 6) attention each cell's token receives
    expected = torch.zeros(36, dtype=torch.bool)
    expected[scores.flatten().topk(18).indices] = True
    (mask,) = pictures.kept_masks(report, [grid])[2]
    assert torch.equal(mask.flatten(), expected)
    kept_positions = set(report.kept_visual[2][0])
    for row, col in [(0, 0), (2, 3), (5, 5)] + [tuple(i) for i in mask.nonzero()[:3].tolist()]:
        assert bool(mask[row, col]) == (int(grid.positions[row, col]) in kept_positions)


# ------------------------------------------------------------------------------------------- drawing
@pytest.mark.parametrize("spec,views", [(LLAVA, 1), (NEXT, 2)], ids=["llava15", "next"])
def test_png_has_one_panel_per_strategy_and_cut_layer(tmp_path, spec, views):
    m = model(spec)
    inputs = make_inputs(spec, image_sizes=[[(12, 16)]] if spec is NEXT else None)
    runs = [
        ("st3", pruned_report(m, inputs, "st3")),  # cuts at 2 and 5
        ("fastv", pruned_report(m, inputs, "fastv")),  # cut at 2
        ("vtw", pruned_report(m, inputs, "vtw", k=3)),  # cut at 3, keeps nothing
    ]
    image = synthetic_image(160, 120)
    fig = pictures.kept_tokens_figure(image, runs, inputs, m, title="test")
    # 3 input panels + (2 + 1 + 1) cut panels of `views` stacked views; columns: input + layers {2, 3, 5}
    assert len(fig.axes) == 3 + 4 * views
    assert fig.axes[0].get_subplotspec().get_gridspec().get_geometry() == (3 * views, 4)
    vtw_panels = [ax for ax in fig.axes if ax.get_subplotspec().colspan.start == 2]  # layer 3: only VTW cuts
    assert len(vtw_panels) == views
    assert vtw_panels[0].get_title().startswith("layer 3")
    assert all("kept 0/" in ax.get_title() for ax in vtw_panels)
    path = pictures.draw_kept_tokens(image, runs, inputs, m, tmp_path / "kept.png", title="test")
    with Image.open(path) as png:
        assert png.format == "PNG"
        width, height = fig.get_size_inches() * pictures.DPI
        assert abs(png.size[0] - width) <= 1 and abs(png.size[1] - height) <= 1
        assert png.size[0] <= pictures.MAX_FIGURE_WIDTH * pictures.DPI + 1


def test_render_runs_names_dicts_and_pairs(tmp_path):
    m = model(LLAVA)
    inputs = make_inputs(LLAVA)
    path = pictures.render(
        m, inputs, synthetic_image(), ["fastv", {"name": "st3", "ratio": 0.5}, ("vtw", {"k": 4})], tmp_path / "r.png"
    )
    with Image.open(path) as png:
        assert png.size[0] > 400 and png.size[1] > 300


# ------------------------------------------------------------------------------------------- CLI
def run_cli(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    code = cli.main(argv, console=Console(file=out, width=200, color_system=None))
    return code, out.getvalue()


@pytest.mark.parametrize("family", ["llava", "llava_next"])
def test_show_writes_the_png_and_prints_its_path(tmp_path, family):
    out = tmp_path / "show.png"
    source = tmp_path / "photo.png"
    synthetic_image(200, 120).save(source)
    code, text = run_cli(
        [
            "show",
            "--out",
            str(out),
            "--family",
            family,
            "--tiny-spec",
            SMALL_CLI,
            "--image",
            str(source),
            "--strategies",
            "fastv,vtw",
        ]  # vtw: k = 2 on the 4-layer model (demo rule), not the default 16
    )
    assert code == 0, text
    assert text.strip() == str(out)
    with Image.open(out) as png:
        assert png.format == "PNG"


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["--image", "{tmp}/missing.jpg"], "image file not found: {tmp}/missing.jpg"),
        (["--image", "{tmp}/not-an-image.png"], "cannot read image {tmp}/not-an-image.png"),
        (["--strategies", "fastv,nope"], "unknown strategy 'nope'"),
        (["--out", "{tmp}/no/such/dir/x.png"], "folder {tmp}/no/such/dir does not exist"),
        (["--model", "{tmp}", "--family", "llava_next"], "--family applies to the tiny model only"),
    ],
)
def test_show_errors_exit_2_with_one_line(tmp_path, capsys, argv, expected):
    (tmp_path / "not-an-image.png").write_text("hello")
    argv = [a.format(tmp=tmp_path) for a in argv]
    out = [] if "--out" in argv else ["--out", str(tmp_path / "x.png")]
    code, _ = run_cli(["show", *out, "--tiny-spec", SMALL_CLI, *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert expected.format(tmp=tmp_path) in " ".join(err.split())
    assert "Traceback" not in err
    assert not (tmp_path / "x.png").exists()


# ------------------------------------------------------------------------------------------- Qwen-VL
QWEN_FAMILIES = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"]
# images of uneven grids (patches: 6x10 wide, 8x4 tall), videos of 4 and 2 temporal patches, two samples
QWEN_SAMPLES = [
    [("text", 3), ("image", (6, 10)), ("text", 2), ("video", (8, 4, 6)), ("text", 4)],
    [("text", 5), ("video", (4, 6, 4)), ("image", (8, 4)), ("image", (4, 4)), ("text", 2)],
]
SMALL_QWEN_CLI = "layers=4,hidden=64,heads=4,kv_heads=2,intermediate=128,vocab=512,vision_hidden=32,patch_size=16"


@functools.lru_cache(maxsize=None)
def qwen_model(family: str):
    from tokenprune.tiny_qwen import QwenSpec, build_qwen_model

    return build_qwen_model(QwenSpec(family=family, layers=6))


def qwen_inputs(family: str) -> dict:
    from tokenprune.tiny_qwen import QwenSpec, make_qwen_inputs

    return make_qwen_inputs(QwenSpec(family=family, layers=6), QWEN_SAMPLES)


def rope_positions(m, inputs) -> torch.Tensor:
    """(3, B, L) temporal / height / width positions, from the model's own get_rope_index."""
    keys = ("image_grid_thw", "video_grid_thw", "second_per_grid_ts", "mm_token_type_ids")
    rope, _ = m.model.get_rope_index(
        inputs["input_ids"], attention_mask=inputs["attention_mask"], **{k: inputs[k] for k in keys if k in inputs}
    )
    return rope


@pytest.mark.parametrize("family", QWEN_FAMILIES)
def test_qwen_grids_follow_the_models_own_3d_positions(family):
    """Independent of the grids' arithmetic: in every grid (and every temporal patch of a video strip), a
    cell's row and column are its token's height and width rotary positions minus the block's first ones,
    and the temporal position grows from one patch to the next."""
    m, inputs = qwen_model(family), qwen_inputs(family)
    t_pos, h_pos, w_pos = rope_positions(m, inputs)
    items = [(0, {"image_index": 0}), (0, {"video_index": 0}), (1, {"video_index": 0})]
    items += [(1, {"image_index": 0}), (1, {"image_index": 1})]
    shapes = []
    for sample, where in items:
        (grid,) = pictures.token_grids(m, inputs, sample=sample, **where)
        shapes.append((grid.kind, grid.rows, grid.cols, grid.blocks))
        width = grid.cols // grid.blocks
        firsts = []
        for block in range(grid.blocks):
            cells = grid.positions[:, block * width : (block + 1) * width]
            h, w, t = (p[sample][cells] for p in (h_pos, w_pos, t_pos))
            assert torch.equal(h - h.min(), torch.arange(grid.rows)[:, None].expand_as(h))
            assert torch.equal(w - w.min(), torch.arange(width)[None, :].expand_as(w))
            firsts.append(int(t.min()))
        assert firsts == sorted(firsts) and (grid.blocks == 1 or firsts[-1] > firsts[0])
    # merged 2x2: 6x10 patches -> 3x5 tokens; 8 frames of 4x6 -> 4 temporal patches of 2x3
    assert shapes[:3] == [("image", 3, 5, 1), ("video", 2, 12, 4), ("video", 3, 4, 2)]
    assert shapes[3:] == [("image", 4, 2, 1), ("image", 2, 2, 1)]


@pytest.mark.parametrize("family", QWEN_FAMILIES)
def test_qwen_grids_hold_exactly_the_adapters_visual_tokens(family):
    m, inputs = qwen_model(family), qwen_inputs(family)
    vt = tp.resolve_adapter(m).visual_tokens(m, inputs)
    for sample, images, videos in [(0, 1, 1), (1, 2, 1)]:
        for image in range(images):
            (grid,) = pictures.token_grids(m, inputs, sample=sample, image_index=image)
            assert torch.equal(grid.positions.flatten().sort().values, image_placeholders(vt, sample, image))
        for video in range(videos):
            (grid,) = pictures.token_grids(m, inputs, sample=sample, video_index=video)
            expected = ((vt.video_of[sample] == video) & vt.placeholders[sample]).nonzero().flatten()
            assert torch.equal(grid.positions.flatten().sort().values, expected)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_qwen_kept_masks_count_what_the_report_keeps_per_image_and_video(family):
    m, inputs = qwen_model(family), qwen_inputs(family)
    report = pruned_report(m, inputs, "st3", start_layer=1, stride=2, ratio=0.3)
    assert sorted(report.kept_visual) == [1, 3, 5]
    for sample, images in [(0, 1), (1, 2)]:
        (video,) = pictures.token_grids(m, inputs, sample=sample, video_index=0)
        for layer, (mask,) in pictures.kept_masks(report, [video], sample=sample).items():
            assert int(mask.sum()) == report.kept_visual_per_video[layer][sample][0]
        for image in range(images):
            (grid,) = pictures.token_grids(m, inputs, sample=sample, image_index=image)
            for layer, (mask,) in pictures.kept_masks(report, [grid], sample=sample).items():
                assert int(mask.sum()) == report.kept_visual_per_image[layer][sample][image]


def test_qwen_bad_picture_requests_are_refused():
    m, inputs = qwen_model("qwen2_vl"), qwen_inputs("qwen2_vl")
    with pytest.raises(tp.InvalidParameterError, match="video_index 1 does not exist: sample 0 has 1 video"):
        pictures.token_grids(m, inputs, video_index=1)
    no_video = {k: v for k, v in inputs.items() if k not in ("pixel_values_videos", "video_grid_thw")}
    with pytest.raises(tp.UnsupportedInputError, match="no video_grid_thw: there is no video to picture"):
        pictures.token_grids(m, no_video, video_index=0)
    with pytest.raises(tp.UnsupportedInputError, match="take no videos"):
        pictures.token_grids(model(LLAVA), make_inputs(LLAVA), video_index=0)
    (grid,) = pictures.token_grids(m, inputs, video_index=0)  # 4 temporal patches of 2 frames
    assert grid.view([synthetic_image(40, 30)] * 8).size == grid.view([synthetic_image(40, 30)] * 4).size
    with pytest.raises(tp.InvalidParameterError, match="give its 8 frames \\(or one per temporal patch\\), not 5"):
        grid.view([synthetic_image(40, 30)] * 5)


def test_qwen_video_strip_png(tmp_path):
    m, inputs = qwen_model("qwen3_vl"), qwen_inputs("qwen3_vl")
    frames = [synthetic_image(120, 90) for _ in range(8)]
    runs = [("st3", pruned_report(m, inputs, "st3")), ("fastv", pruned_report(m, inputs, "fastv"))]
    fig = pictures.kept_tokens_figure(frames, runs, inputs, m, video_index=0)
    # the input strip, then st3's cuts at 2 and 5 and fastv's at 2, one strip each
    titles = [ax.get_title(loc="left") for ax in fig.axes]
    assert titles[0] == "input: 4 temporal patches, 24 tokens"
    assert [t.split(":")[0] for t in titles[1:]] == ["layer 2", "layer 5", "layer 2"]
    assert [ax.get_ylabel() for ax in fig.axes] == ["input", "st3", "", "fastv"]
    path = pictures.draw_kept_tokens(frames, runs, inputs, m, tmp_path / "video.png", video_index=0)
    with Image.open(path) as png:
        assert png.format == "PNG" and png.size[0] <= pictures.MAX_FIGURE_WIDTH * pictures.DPI + 1


@pytest.mark.parametrize("family", QWEN_FAMILIES)
def test_show_draws_qwen_images_and_videos(tmp_path, family):
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, frame in enumerate(synthetic_image(64, 48).rotate(10 * i) for i in range(3)):
        frame.save(frames / f"{i:02d}.png")
    for picture in (["--video", str(frames)], ["--video", "synthetic"], []):
        out = tmp_path / "show.png"
        argv = ["show", "--out", str(out), "--family", family, "--tiny-spec", SMALL_QWEN_CLI, "--strategies", "fastv"]
        code, text = run_cli(argv + picture)
        assert code == 0, text
        with Image.open(out) as png:
            assert png.format == "PNG"
        out.unlink()


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["--family", "llava", "--video", "synthetic"], "--video needs a model that takes videos"),
        (["--family", "qwen2_vl", "--video", "{tmp}/none"], "--video {tmp}/none: not a folder of frames"),
        (["--family", "qwen2_vl", "--video", "{tmp}"], "the folder holds no image files"),
    ],
)
def test_show_video_errors(tmp_path, capsys, argv, expected):
    argv = [a.format(tmp=tmp_path) for a in argv]
    code, _ = run_cli(["show", "--out", str(tmp_path / "x.png"), "--tiny-spec", "layers=2", *argv])
    err = capsys.readouterr().err
    assert code == 2 and expected.format(tmp=tmp_path) in " ".join(err.split())
    assert not (tmp_path / "x.png").exists()
