"""`lrerr-tools report --html`: the report as one self-contained HTML file.

Everything is inside the file: the tables (the Markdown's cells), ROC and PR curves drawn
here from the score directories' frames.csv (every detector tested on a test set overlaid, at
frame and video level), the PNGs `report` wrote, each score directory's own figures
(`FIGURES`) and the frame accounting of the extract directories the scores come from. The
images are base64 data URIs and the style is inline, so the page opens offline and can be
mailed or archived alone. Every string read from a file (paths, video ids, dataset names) is
escaped: they are user input.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lrerr_tools.atomic_io import atomic_write_bytes
from lrerr_tools.errors import LrerrError
from lrerr_tools.extract import counts_by_split
from lrerr_tools.manifest import linked_dir, open_parent, read_manifest
from lrerr_tools.metrics import LEVELS, checked_frames, video_prob_key
from lrerr_tools.report import AGGREGATE_WORDS, Run, Table, _data, _format, _title, explanation

# A score directory's figures, by file pattern, in the order shown: score's own plots, the
# method's figure, then those of `score --perturb` and `score --cam N` where they were made.
FIGURES = ("roc.png", "reliability.png", "attention.png", "perturbations.png", "cam*.png")
FRAMES_CSV = "frames.csv"
# The score → shard → landmarks → extract chain, each stage's manifest naming the next as parent.
PROVENANCE = ("score", "shard", "landmarks", "extract")
ACCOUNTING = (("videos", "Videos"), ("frames_tried", "Frames tried"), ("crops", "Crops"),
              ("no_face", "No face"), ("decode_error", "Decode errors"), ("unreadable", "Unreadable videos"))
STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 80em; color: #222; overflow-wrap: anywhere; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #eee; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.9em; color: #444; margin-top: 0.3em; }
code { font-size: 0.9em; }
"""


@dataclass(frozen=True)
class Figure:
    """An image for the page and the caption that says which run and split it shows."""

    png: bytes
    caption: str


def write_html(path: str | Path, tables: Sequence[Table], notes: Sequence[str], runs: Sequence[Run],
               level: str, aggregate: str, report_pngs: Sequence[Path]) -> Path:
    """Write the report page to `path`; `report_pngs` are the figures `report` itself wrote."""
    path = Path(path)
    notes = list(notes)
    # Both add notes on what they had to leave out.
    curves, accounting = _figures(_curve_figures(runs, notes)), _accounting(runs, notes)
    sections = [
        ("Tables", "".join(_table(table) for table in tables)),
        ("ROC and PR curves", curves),
        ("Report figures", _figures(_report_figures(report_pngs, runs))),
        ("Figures of each score directory", _run_figures(runs)),
        ("Frame accounting", accounting),
        ("Notes", _list(_e(note) for note in notes)),
        ("Score directories", _list(f"<code>{_e(run.path)}</code>: {_e(run.describe())}" for run in runs)),
    ]
    body = "".join(f'<h2 id="s{i}">{title}</h2>\n{content or "<p>None.</p>"}\n'
                   for i, (title, content) in enumerate(sections))
    contents = "".join(f'<li><a href="#s{i}">{title}</a></li>' for i, (title, _) in enumerate(sections))
    page = ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<title>LRErr evaluation report</title>\n"
            f"<style>{STYLE}</style>\n</head>\n<body>\n<h1>LRErr evaluation report</h1>\n"
            f"<p>{_code(_e(explanation(level, aggregate)))}</p>\n<ul>{contents}</ul>\n{body}"
            "</body>\n</html>\n")
    atomic_write_bytes(path, page.encode())
    return path


def _e(text: object) -> str:
    return html.escape(str(text))


def _code(escaped: str) -> str:
    """Markdown's `code` spans of an escaped text as <code>."""
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", escaped)


def _table(table: Table) -> str:
    header = "".join(f"<th>{_e(cell)}</th>" for cell in table.header)
    rows = "".join("<tr>" + "".join(f"<td>{_e(_format(cell, '—'))}</td>" for cell in row) + "</tr>\n"
                   for row in table.rows)
    return f"<h3>{_e(table.title)}</h3>\n{_html_table(header, rows)}"


def _html_table(header: str, rows: str) -> str:
    return f"<table>\n<thead><tr>{header}</tr></thead>\n<tbody>\n{rows}</tbody>\n</table>\n"


def _list(items) -> str:
    items = list(items)
    return "<ul>\n" + "".join(f"<li>{item}</li>\n" for item in items) + "</ul>\n" if items else ""


def _figures(figures: Sequence[Figure]) -> str:
    return "".join(f'<figure><img src="data:image/png;base64,{base64.b64encode(f.png).decode()}" '
                   f'alt="{_e(f.caption)}"><figcaption>{_e(f.caption)}</figcaption></figure>\n'
                   for f in figures)


def _report_figures(pngs: Sequence[Path], runs: Sequence[Run]) -> list[Figure]:
    sources = "; ".join(f"{run.path}: {run.describe()}" for run in runs)
    return [Figure(p.read_bytes(), f"{p.name}, written by this report from {sources}") for p in pngs]


def _run_figures(runs: Sequence[Run]) -> str:
    parts = []
    for run in runs:
        found = [png for pattern in FIGURES for png in sorted(run.path.glob(pattern))]
        if found:
            figures = [Figure(png.read_bytes(), f"{png.name} of {run.path}: {run.describe()}")
                       for png in found]
            parts.append(f"<h3>{_e(run.describe())}</h3>\n<p><code>{_e(run.path)}</code></p>\n"
                         f"{_figures(figures)}")
    return "".join(parts)


@dataclass(frozen=True)
class Curve:
    """One run's scores at one level: what a ROC or PR curve is drawn from."""

    label: str
    labels: np.ndarray
    probs: np.ndarray


def _curve_figures(runs: Sequence[Run], notes: list[str]) -> list[Figure]:
    """One figure per test set (data and split): ROC and PR, frame and video level, with a
    curve for every run tested on it."""
    by_test: dict[str, list[Run]] = {}
    for run in runs:
        by_test.setdefault(f"{_data(run.test)} ({run.test['split']} split)", []).append(run)
    figures = []
    for test, tested in by_test.items():
        curves: dict[str, list[Curve]] = {level: [] for level in LEVELS}
        drawn = []
        for run in tested:
            try:
                frames = _read_frames(run.path / FRAMES_CSV)
            except LrerrError as e:
                notes.append(f"ROC and PR curves: {run.path} left out: {e}")
                continue
            label = _curve_label(run, tested)
            for level, (labels, probs) in _level_scores(run, frames).items():
                curves[level].append(Curve(label, labels, probs))
            drawn.append(run)
        if drawn:
            caption = (f"ROC and PR curves, tested on {test}; "
                       + "; ".join(f"{_curve_label(run, tested)}: {run.path}" for run in drawn))
            figures.append(Figure(_plot_curves(curves, test, drawn[0].aggregate), caption))
    return figures


def _curve_label(run: Run, tested: Sequence[Run]) -> str:
    """The detector's title, and the score directory's name where two runs of one detector
    share the test set."""
    title = _title(run.detector)
    twins = [other for other in tested if other.detector == run.detector]
    if len(twins) == 1:
        return title
    return f"{title} ({run.path.name}{'' if run.seed is None else f', seed {run.seed}'})"


def _read_frames(path: Path) -> list[dict]:
    if not path.is_file():
        raise LrerrError(f"no {path.name}")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    try:
        return checked_frames({**row, "label": int(row["label"])} for row in rows)
    except (KeyError, ValueError, TypeError):
        raise LrerrError(f"{path}: not a score's {path.name} (video_id, method, label, frame_index, "
                         "prob)") from None


def _level_scores(run: Run, frames: list[dict]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{level: (labels, probs)}: the frames, and the videos as the run's aggregator scores them."""
    videos = run.video_scores(frames)
    key = video_prob_key(run.aggregate)
    return {"frame": (np.array([f["label"] for f in frames]), np.array([f["prob"] for f in frames])),
            "video": (np.array([v["label"] for v in videos]), np.array([v[key] for v in videos]))}


def _plot_curves(curves: dict[str, list[Curve]], test: str, aggregate: str) -> bytes:
    from matplotlib.figure import Figure as PlotFigure  # no pyplot: no global backend, no display
    from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve

    fig = PlotFigure(figsize=(11, 10), dpi=90)
    axes = fig.subplots(2, 2)
    for column, level in enumerate(LEVELS):
        roc, pr = axes[0][column], axes[1][column]
        roc.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1)
        for curve in curves[level]:
            if len(set(curve.labels)) < 2:
                roc.plot([], [], " ", label=f"{curve.label}: one class, no curve")
                continue
            fpr, tpr, _ = roc_curve(curve.labels, curve.probs)
            roc.plot(fpr, tpr, label=f"{curve.label} (AUC = {auc(fpr, tpr):.4f})")
            precision, recall, _ = precision_recall_curve(curve.labels, curve.probs)
            pr.plot(recall, precision, drawstyle="steps-post",
                    label=f"{curve.label} (AP = {average_precision_score(curve.labels, curve.probs):.4f})")
        scored = f", the {AGGREGATE_WORDS[aggregate]} of its frames" if level == "video" else ""
        roc.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate", ylabel="true positive rate",
                title=f"ROC, {level} level{scored}")
        pr.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="recall (fakes found)", ylabel="precision",
               title=f"PR, {level} level{scored}")
        for ax in (roc, pr):
            if ax.get_legend_handles_labels()[0]:
                ax.legend(loc="lower right" if ax is roc else "lower left", fontsize=8)
    fig.suptitle(f"tested on {test}")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def extract_dir(score_dir: Path) -> Path:
    """The extract directory a score's faces come from, through each stage's parent."""
    here = score_dir
    for stage in PROVENANCE:
        manifest = read_manifest(here)
        if manifest.stage != stage:
            raise LrerrError(f"{here} is a '{manifest.stage}' directory where the chain has '{stage}'")
        if stage == PROVENANCE[-1]:
            return here
        if manifest.parent is None:
            raise LrerrError(f"{here}: its manifest names no parent")
        here = linked_dir(here, manifest.parent)
    return here


def _accounting(runs: Sequence[Run], notes: list[str]) -> str:
    """Each extract directory's frames per dataset and split: tried, cropped, and why not."""
    users: dict[Path, list[Run]] = {}
    for run in runs:
        try:
            users.setdefault(extract_dir(run.path), []).append(run)
        except LrerrError as e:
            notes.append(f"Frame accounting: {run.path} left out: {e}")
    header = "".join(f"<th>{name}</th>" for name in ("Dataset", "Split", *(title for _, title in ACCOUNTING)))
    parts = []
    for directory, scored in users.items():
        try:
            extract = open_parent(directory, "extract")
        except LrerrError as e:
            notes.append(f"Frame accounting: {e}")
            continue
        rows = "".join("<tr>" + "".join(f"<td>{_e(cell)}</td>" for cell in (
            dataset, split, *(counts[key] for key, _ in ACCOUNTING))) + "</tr>\n"
            for (dataset, split), counts in counts_by_split(list(extract.records()),
                                                             extract.manifest.config["frames"]).items())
        missing = extract.manifest.counts.get("videos_missing", 0)
        lost = f" {missing} videos named in the split lists are not on disk." if missing else ""
        parts.append(f"<h3><code>{_e(directory)}</code></h3>\n<p>The extract directory of "
                     f"{_e(', '.join(str(run.path) for run in scored))}.{_e(lost)}</p>\n"
                     + _html_table(header, rows))
    return "".join(parts)
