"""Training curves from a run's TensorBoard event files: ``ppo_dist plot RUN_DIR``.

Data flow: event files under RUN_DIR -> ``read_scalars`` (merged, one value per step)
-> ``plot_run`` (one panel per concept in ``PANELS``, only panels whose tags exist) -> PNG.

Labels are Chinese + English (the seed workflow is Chinese). That needs a font with CJK
glyphs: ``find_cjk_font`` looks for one through matplotlib's font manager; without one
``plot_run`` warns once, naming the package to install, and the Chinese renders as boxes.
"""

from __future__ import annotations

import fnmatch
import functools
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

Scalars = dict[str, tuple[np.ndarray, np.ndarray]]

# ---------------------------------------------------------------------------------------------
# 1. Reading event files
# ---------------------------------------------------------------------------------------------

EVENT_GLOB = "events.out.tfevents.*"


def read_scalars(run_dir: str | Path) -> Scalars:
    """All scalar series under ``run_dir`` (searched recursively), as ``{tag: (steps, values)}``.

    ``steps`` is int64, ``values`` float64, both shape ``(N,)``, sorted by step, one value per
    step. A resumed run appends a new event file (or a new run directory) and re-logs the steps
    after its last checkpoint; when a step appears more than once, the value written LAST
    (by event wall time, then by file name) wins, so duplicated steps are not drawn twice.

    Raises FileNotFoundError if ``run_dir`` does not exist, ValueError (naming the directory)
    if it holds no event files or the event files hold no scalars.
    """
    from tensorboard.backend.event_processing import event_accumulator

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {str(run_dir)!r} does not exist")
    files = sorted(p for p in run_dir.rglob(EVENT_GLOB) if p.is_file())
    if not files:
        raise ValueError(f"no TensorBoard event files ({EVENT_GLOB}) under {str(run_dir)!r}")

    # tag -> list of (wall_time, file_order, step, value); file_order breaks wall-time ties.
    rows: dict[str, list[tuple[float, int, int, float]]] = {}
    for order, path in enumerate(files):
        acc = event_accumulator.EventAccumulator(str(path), size_guidance={event_accumulator.SCALARS: 0})
        acc.Reload()
        for tag in acc.Tags()[event_accumulator.SCALARS]:
            rows.setdefault(tag, []).extend((e.wall_time, order, e.step, e.value) for e in acc.Scalars(tag))
    if not rows:
        raise ValueError(f"the {len(files)} event file(s) under {str(run_dir)!r} contain no scalars")

    scalars: Scalars = {}
    for tag, events in rows.items():
        events.sort(key=lambda r: (r[0], r[1]))  # chronological: later writes come last
        last_by_step = {step: value for _, _, step, value in events}
        steps = np.array(sorted(last_by_step), dtype=np.int64)
        values = np.array([last_by_step[s] for s in steps], dtype=np.float64)
        scalars[tag] = (steps, values)
    return scalars


# ---------------------------------------------------------------------------------------------
# 2. Finding a font with Chinese glyphs
# ---------------------------------------------------------------------------------------------

# Families tried in this order (exact name, then as a prefix); the first whose file has a
# glyph for '中' wins. Any other family that has the glyph is the last resort.
PREFERRED_CJK_FAMILIES = (
    "Noto Sans CJK SC",
    "Noto Sans SC",
    "Source Han Sans SC",
    "Source Han Sans CN",
    "WenQuanYi Zen Hei",
    "WenQuanYi Micro Hei",
    "SimHei",
    "Microsoft YaHei",
    "PingFang SC",
    "Noto Sans CJK",
    "Source Han Sans",
    "Noto Serif CJK SC",
    "Noto Serif CJK",
)
_CJK_PROBE = "中"
_CJK_NAME_HINTS = ("cjk", "han", "hei", "song", "kai", "ming", "gothic", "yahei", "pingfang")


def _has_glyph(fname: str, face_index: int, char: str = _CJK_PROBE) -> bool:
    from matplotlib import ft2font

    try:
        try:
            font = ft2font.FT2Font(fname, face_index=face_index)
        except TypeError:  # matplotlib < 3.10 has no face_index (opens face 0)
            font = ft2font.FT2Font(fname)
        return font.get_char_index(ord(char)) != 0
    except (OSError, RuntimeError, ValueError):
        return False


@functools.lru_cache(maxsize=1)
def _find_cjk_font_cached() -> str | None:
    from matplotlib import font_manager

    entries = font_manager.fontManager.ttflist

    def covered(name_ok) -> str | None:
        for e in entries:
            if name_ok(e.name) and _has_glyph(e.fname, getattr(e, "index", 0)):
                return e.name
        return None

    def search() -> str | None:
        for family in PREFERRED_CJK_FAMILIES:
            found = covered(lambda n, f=family: n == f) or covered(lambda n, f=family: n.startswith(f))
            if found:
                return found
        return covered(lambda n: any(h in n.lower() for h in _CJK_NAME_HINTS))

    found = search()
    if found is None:  # fonts installed after matplotlib cached its font list: add the ones it has not seen
        known = {e.fname for e in entries}
        for path in font_manager.findSystemFonts():
            if path not in known:
                try:
                    font_manager.fontManager.addfont(path)
                except (OSError, RuntimeError, ValueError):
                    continue  # addfont appends to the list `entries` is
        found = search()
    return found


def find_cjk_font() -> str | None:
    """Name of an installed font family (as matplotlib knows it) with Chinese glyphs, or None.

    Preference: ``PREFERRED_CJK_FAMILIES``; coverage is checked by looking up the glyph for
    '中' in the font file, not trusted from the name. The result is cached per process.
    """
    return _find_cjk_font_cached()


NO_CJK_FONT_MESSAGE = (
    "ppo_dist plot: no font with Chinese (CJK) glyphs found by matplotlib; the Chinese parts of "
    "titles and labels will render as boxes. Install one, e.g. `apt-get install fonts-noto-cjk` "
    "(Debian/Ubuntu) or Noto Sans CJK SC from https://github.com/notofonts/noto-cjk, then delete "
    "matplotlib's font cache (~/.cache/matplotlib/fontlist-*.json) so it is rescanned."
)


# ---------------------------------------------------------------------------------------------
# 3. Panels and rendering
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Panel:
    """One subplot: ``tags`` on the left axis, ``twin_tags`` on a right-hand twin axis.

    ``band`` maps a tag to the tag of its standard deviation, drawn as a ±1 std band.
    """

    title: str
    ylabel: str
    tags: tuple[str, ...]
    twin_tags: tuple[str, ...] = ()
    twin_ylabel: str = ""
    band: tuple[tuple[str, str], ...] = ()

    @property
    def all_tags(self) -> tuple[str, ...]:
        return self.tags + self.twin_tags


# PPO's panels first, then those of the TRL stages (sft, rm, dpo: ``train/*`` and ``eval/*`` tags);
# a run shows the panels whose tags it logged.
PANELS = (
    Panel(
        title="奖励 reward",
        ylabel="奖励 reward",
        tags=("env/reward_mean",),
        band=(("env/reward_mean", "env/reward_std"),),
    ),
    Panel(
        title="KL 散度 KL divergence",
        ylabel="KL",
        tags=("objective/kl",),
        twin_tags=("objective/kl_coef",),
        twin_ylabel="KL 系数 KL coef",
    ),
    Panel(
        title="损失 loss",
        ylabel="损失 loss",
        tags=("ppo/loss/policy", "ppo/loss/value", "ppo/loss/total", "train/loss", "eval/loss"),
    ),
    Panel(
        title="熵 entropy",
        ylabel="熵 entropy",
        tags=("objective/entropy", "train/entropy", "eval/entropy"),
    ),
    Panel(
        title="偏好准确率 preference accuracy",
        ylabel="准确率 accuracy",
        tags=(
            "train/accuracy",  # rm: chosen scored above rejected
            "eval/accuracy",
            "train/rewards/accuracies",  # dpo: implicit reward of chosen above rejected
            "eval/rewards/accuracies",
        ),
    ),
    Panel(
        title="词元准确率 token accuracy",
        ylabel="准确率 accuracy",
        tags=("train/mean_token_accuracy", "eval/mean_token_accuracy"),  # next-token accuracy (sft, dpo)
    ),
    Panel(
        title="奖励差 reward margin (chosen − rejected)",
        ylabel="奖励差 margin",
        tags=("train/margin", "eval/margin", "train/rewards/margins", "eval/rewards/margins"),
    ),
    Panel(
        title="隐式奖励 implicit reward (DPO)",
        ylabel="奖励 reward",
        tags=("train/rewards/chosen", "train/rewards/rejected", "eval/rewards/chosen", "eval/rewards/rejected"),
    ),
)
# A tag only one kind of run logs -> the name in the default title.
RUN_KINDS = (
    ("env/reward_mean", "PPO"),
    ("train/rewards/margins", "DPO"),
    ("train/margin", "RM"),
    ("train/mean_token_accuracy", "SFT"),
)
STEP_LABEL = "步数 step"


def _select_tags(available: Scalars, patterns: list[str]) -> set[str]:
    """Tags matching ``patterns`` (exact names or shell globs); every pattern must match."""
    chosen: set[str] = set()
    for pattern in patterns:
        matched = fnmatch.filter(available, pattern)
        if not matched:
            raise ValueError(
                f"tag {pattern!r} matches no scalar in the run; available tags: {', '.join(sorted(available))}"
            )
        chosen.update(matched)
    return chosen


def _panels_for(scalars: Scalars, tags: list[str] | None) -> list[Panel]:
    """The panels of ``PANELS`` that have data; with ``tags``, restricted to those tags, and
    any selected tag no standard panel owns gets a panel of its own."""
    if tags is None:
        wanted = set(scalars)
        extra: list[str] = []
    else:
        wanted = _select_tags(scalars, tags)
        owned = {t for p in PANELS for t in p.all_tags}
        extra = sorted(wanted - owned)

    def keep(ts: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(t for t in ts if t in wanted and t in scalars)

    panels = []
    for p in PANELS:
        main, twin = keep(p.tags), keep(p.twin_tags)
        ylabel = p.ylabel
        if not main and twin:  # e.g. only kl_coef selected: draw it on the main axis
            main, twin, ylabel = twin, (), p.twin_ylabel
        if main:
            panels.append(
                Panel(
                    p.title,
                    ylabel,
                    main,
                    twin,
                    p.twin_ylabel,
                    tuple(b for b in p.band if b[0] in main and b[1] in scalars),
                )
            )
    panels += [Panel(title=t, ylabel=t, tags=(t,)) for t in extra]
    return panels


def _draw_panel(ax, panel: Panel, scalars: Scalars) -> None:
    bands = dict(panel.band)
    lines = []
    for tag in panel.tags:
        steps, values = scalars[tag]
        (line,) = ax.plot(steps, values, label=tag, marker="." if len(steps) < 50 else None)
        lines.append(line)
        if tag in bands:
            std_steps, std = scalars[bands[tag]]
            common, i, j = np.intersect1d(steps, std_steps, return_indices=True)
            ax.fill_between(
                common,
                values[i] - std[j],
                values[i] + std[j],
                color=line.get_color(),
                alpha=0.2,
                label=f"± {bands[tag].rsplit('/', 1)[-1]}",
            )
    ax.set_title(panel.title)
    ax.set_xlabel(STEP_LABEL)
    ax.set_ylabel(panel.ylabel)
    ax.grid(True, alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    legend_ax = ax
    if panel.twin_tags:
        twin = ax.twinx()
        for k, tag in enumerate(panel.twin_tags):
            steps, values = scalars[tag]
            twin.plot(steps, values, label=f"{tag} (右轴 right axis)", linestyle="--", color=f"C{len(panel.tags) + k}")
        twin.set_ylabel(panel.twin_ylabel)
        h2, l2 = twin.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
        legend_ax = twin  # drawn last, so the legend box covers the lines of both axes
    legend_ax.legend(handles, labels, fontsize="small", loc="best", framealpha=0.9)


def plot_run(
    run_dir: str | Path,
    out_path: str | Path,
    title: str | None = None,
    tags: list[str] | None = None,
) -> Path:
    """Render the training curves of ``run_dir`` to the PNG ``out_path``; returns its path.

    Panels (each only if its tags were logged): reward (``env/reward_mean`` ± ``env/reward_std``),
    KL (``objective/kl``, ``objective/kl_coef`` on a twin axis), losses (``ppo/loss/*``, or the
    sft/rm/dpo stages' ``train/loss`` and ``eval/loss``), entropy, and for those stages accuracy,
    reward margin and DPO's implicit rewards (see ``PANELS``). ``tags`` (names or globs) restricts
    the plot to those tags; selected tags outside the standard panels get a panel each. Default
    title: ``"<PPO|SFT|RM|DPO> 训练曲线 — <run dir name>"``.
    """
    # A bare Figure on an Agg canvas: no pyplot, so the caller's backend and figures are untouched.
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    run_dir = Path(run_dir)
    scalars = read_scalars(run_dir)
    panels = _panels_for(scalars, tags)
    if not panels:
        raise ValueError(
            f"none of the plotted tags ({', '.join(t for p in PANELS for t in p.all_tags)}) "
            f"is in {str(run_dir)!r}; it has: {', '.join(sorted(scalars))}. "
            f"Pass --tags to plot others."
        )
    if title is None:
        kind = next((name for tag, name in RUN_KINDS if tag in scalars), "")
        title = f"{kind} 训练曲线 — {run_dir.resolve().name}".strip()

    rc: dict = {"axes.unicode_minus": False}
    font = find_cjk_font()
    if font is not None:
        rc["font.family"] = "sans-serif"
        rc["font.sans-serif"] = [font, *matplotlib.rcParams["font.sans-serif"]]
    else:
        warnings.warn(NO_CJK_FONT_MESSAGE, UserWarning, stacklevel=2)

    ncols = 1 if len(panels) == 1 else 2
    nrows = math.ceil(len(panels) / ncols)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), matplotlib.rc_context(rc):
        if font is None:
            # Already explained once above; do not repeat it for every missing character.
            warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from")
        fig = Figure(figsize=(7 * ncols, 4.2 * nrows))
        FigureCanvasAgg(fig)
        axes = fig.subplots(nrows, ncols, squeeze=False)
        for ax, panel in zip(axes.flat, panels, strict=False):
            _draw_panel(ax, panel, scalars)
        for ax in list(axes.flat)[len(panels) :]:
            ax.set_visible(False)
        fig.suptitle(title, fontsize="x-large")
        fig.tight_layout()
        fig.savefig(out_path, dpi=120, format="png")
    return out_path
