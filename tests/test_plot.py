"""`ppo_dist plot`: reading (and de-duplicating) TensorBoard scalars, rendering with Chinese
labels, and the CLI's error path. Event files are written by torch's SummaryWriter, as the
trainer's TensorBoard tracker does."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

from ppo_dist import plot
from ppo_dist.cli import main

torch_tb = pytest.importorskip("torch.utils.tensorboard")

STANDARD_TAGS = [
    "env/reward_mean",
    "env/reward_std",
    "objective/kl",
    "objective/kl_coef",
    "ppo/loss/policy",
    "ppo/loss/value",
    "ppo/loss/total",
    "objective/entropy",
]
GLYPH_MISSING = re.compile(r"Glyph .* missing from (current )?font", re.IGNORECASE)


def _value(tag: str, step: int, resumed: bool) -> float:
    """A distinct, recognisable value per (tag, step, run): resumed runs are offset by 1000."""
    return STANDARD_TAGS.index(tag) + 0.01 * step + (1000.0 if resumed else 0.0)


def _write(log_dir, steps, resumed: bool, tags=STANDARD_TAGS) -> None:
    writer = torch_tb.SummaryWriter(log_dir=str(log_dir))
    base = 2_000_000 if resumed else 1_000_000  # resumed run is written later (wall time)
    for step in steps:
        for tag in tags:
            writer.add_scalar(tag, _value(tag, step, resumed), step, walltime=base + step)
    writer.close()


@pytest.fixture
def resumed_run(tmp_path):
    """Steps 0..20 written, then a resumed run (new event file, same dir) re-writes 15..20
    with different values and continues to 25."""
    run = tmp_path / "runs" / "seed_run"
    _write(run, range(0, 21), resumed=False)
    _write(run, range(15, 26), resumed=True)
    assert len(list(run.glob("events.out.tfevents.*"))) == 2
    return run


def test_read_scalars_merges_resumed_run_keeping_last_value_per_step(resumed_run):
    scalars = plot.read_scalars(resumed_run)
    assert sorted(scalars) == sorted(STANDARD_TAGS)
    for tag in STANDARD_TAGS:
        steps, values = scalars[tag]
        np.testing.assert_array_equal(steps, np.arange(26))  # 15..20 once each, not twice
        expected = [_value(tag, s, resumed=s >= 15) for s in range(26)]
        np.testing.assert_allclose(values, expected, rtol=1e-6)  # events store float32


def test_read_scalars_searches_subdirectories(tmp_path):
    # e.g. accelerate's tracker writes to <logging_dir>/<project_name>/events...
    _write(tmp_path / "run" / "project", range(3), resumed=False, tags=["env/reward_mean"])
    steps, values = plot.read_scalars(tmp_path / "run")["env/reward_mean"]
    np.testing.assert_array_equal(steps, [0, 1, 2])


def test_read_scalars_errors_name_the_directory(tmp_path):
    with pytest.raises(ValueError, match=re.escape(str(tmp_path))):
        plot.read_scalars(tmp_path)
    with pytest.raises(FileNotFoundError, match="nope"):
        plot.read_scalars(tmp_path / "nope")


def _assert_nontrivial_png(path) -> None:
    from matplotlib import image

    pixels = image.imread(path)
    height, width = pixels.shape[:2]
    assert width > 600 and height > 400, (width, height)
    assert pixels[..., :3].std() > 0.05  # not a blank canvas


def test_cli_plot_renders_chinese_title_without_missing_glyphs(resumed_run, tmp_path, capsys):
    out = tmp_path / "out" / "曲线.png"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc = main(["plot", str(resumed_run), "-o", str(out), "--title", "PPO 训练曲线 中文标题 test"])
    assert rc == 0
    assert capsys.readouterr().out.strip() == str(out)
    _assert_nontrivial_png(out)

    messages = [str(w.message) for w in caught]
    if plot.find_cjk_font() is None:
        pytest.skip("no CJK font installed; glyph coverage cannot be checked (see next test)")
    assert not [m for m in messages if GLYPH_MISSING.search(m)], messages
    assert plot.NO_CJK_FONT_MESSAGE not in messages


def test_default_output_is_curves_png_in_run_dir(resumed_run, capsys):
    assert main(["plot", str(resumed_run)]) == 0
    assert capsys.readouterr().out.strip() == str(resumed_run / "curves.png")
    _assert_nontrivial_png(resumed_run / "curves.png")


def test_missing_cjk_font_warns_once_with_install_hint(resumed_run, tmp_path, monkeypatch):
    monkeypatch.setattr(plot, "find_cjk_font", lambda: None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plot.plot_run(resumed_run, tmp_path / "boxes.png")
    messages = [str(w.message) for w in caught]
    hints = [m for m in messages if "fonts-noto-cjk" in m and "boxes" in m]
    assert len(hints) == 1, messages
    # the per-character glyph warnings are folded into that one message
    assert not [m for m in messages if GLYPH_MISSING.search(m)], messages
    _assert_nontrivial_png(tmp_path / "boxes.png")


def test_find_cjk_font_returns_a_font_with_chinese_glyphs():
    from matplotlib import font_manager

    name = plot.find_cjk_font()
    if name is None:
        pytest.skip("no CJK font installed (apt-get install fonts-noto-cjk)")
    entries = [e for e in font_manager.fontManager.ttflist if e.name == name]
    assert any(plot._has_glyph(e.fname, getattr(e, "index", 0), "训") for e in entries)


def test_panels_follow_logged_tags_and_tag_selection(resumed_run):
    scalars = plot.read_scalars(resumed_run)
    panels = plot._panels_for(scalars, None)
    assert [p.all_tags for p in panels] == [
        ("env/reward_mean",),
        ("objective/kl", "objective/kl_coef"),
        ("ppo/loss/policy", "ppo/loss/value", "ppo/loss/total"),
        ("objective/entropy",),
    ]
    assert panels[0].band == (("env/reward_mean", "env/reward_std"),)

    only_losses = plot._panels_for(scalars, ["ppo/loss/*"])
    assert [p.all_tags for p in only_losses] == [("ppo/loss/policy", "ppo/loss/value", "ppo/loss/total")]
    # the twin-axis tag alone moves to the main axis, keeping its own label
    (kl_coef_only,) = plot._panels_for(scalars, ["objective/kl_coef"])
    assert (kl_coef_only.tags, kl_coef_only.twin_tags) == (("objective/kl_coef",), ())
    assert kl_coef_only.ylabel == "KL 系数 KL coef"
    # a selected tag outside the standard panels gets its own panel
    assert [p.all_tags for p in plot._panels_for(scalars, ["env/reward_std"])] == [("env/reward_std",)]


def test_cli_unknown_tag_is_a_one_line_error(resumed_run, capsys):
    assert main(["plot", str(resumed_run), "--tags", "env/reward_mean,no/such_tag"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no/such_tag" in err and "env/reward_mean" in err


def test_cli_dir_without_events_is_a_one_line_error(tmp_path, capsys):
    empty = tmp_path / "empty_run"
    empty.mkdir()
    assert main(["plot", str(empty)]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(empty) in err and "Traceback" not in err

    assert main(["plot", str(tmp_path / "missing_run")]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "missing_run" in err


def test_a_cjk_font_installed_after_matplotlib_cached_its_font_list_is_found(monkeypatch):
    from matplotlib import font_manager

    name = plot.find_cjk_font()
    if name is None:
        pytest.skip("no CJK font installed (apt-get install fonts-noto-cjk)")
    entries = font_manager.fontManager.ttflist
    stale = [e for e in entries if not plot._has_glyph(e.fname, getattr(e, "index", 0))]  # no Chinese font left
    monkeypatch.setattr(font_manager.fontManager, "ttflist", stale)  # the cache as it was before the install
    plot._find_cjk_font_cached.cache_clear()
    try:
        assert plot.find_cjk_font() is not None
    finally:
        plot._find_cjk_font_cached.cache_clear()
