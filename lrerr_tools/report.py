"""`lrerr-tools report`: the paper's tables (I–V) from score directories' `metrics.json`, and
the few-label table (AUC against `train-det --label-fraction`, SCL-KD's protocol).

Each score directory is one trained model scored on one test set; its `run` block says
which (schema: `manifests/metrics.schema.json`). A run lands in every table whose protocol
it matches, a cell no run fills shows "—", and a table no run matches is left out with a
note. Values are percentages with two decimals, as in the paper.
"""

from __future__ import annotations

import copy
import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lrerr_tools.atomic_io import atomic_write_bytes
from lrerr_tools.bootstrap import Bootstrap, paired_auc_p_value
from lrerr_tools.errors import LrerrError
from lrerr_tools.manifest import iter_records, read_checked_json, schema
from lrerr_tools.methods import all_methods
from lrerr_tools.metrics import (
    AGGREGATORS,
    HEADLINE,
    LEVELS,
    Aggregation,
    checked_frames,
    video_prob_key,
    video_rows,
)
from lrerr_tools.perturb import LEVELS as PERTURB_LEVELS
from lrerr_tools.perturb import PERTURBATIONS
from lrerr_tools.robustness import robustness_plot

METRICS_FILE = "metrics.json"
FFPP_METHODS = ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures")
SHORT_METHODS = {"Deepfakes": "DF", "Face2Face": "F2F", "FaceSwap": "FS", "NeuralTextures": "NT"}
PAPER_COMPRESSIONS = ("c23", "c40")
LEAVE_ONE_OUT = ("Deepfakes", "Face2Face")  # Table III: GID-DF and GID-F2F
CROSS_DATASETS = {"celebdf": "Celeb-DF-v2", "dfd": "DFD"}
AGGREGATE_WORDS = {"mean": "mean", "median": "median", "max": "maximum", "top_k_mean": "top-k mean",
                   "confident": "DFDC winner's confident mean"}


@dataclass(frozen=True)
class Run:
    """One score directory's metrics.json."""

    path: Path
    metrics: dict
    aggregate: str = HEADLINE  # the aggregator of the video blocks in `metrics`

    @property
    def train(self) -> dict:
        return self.metrics["run"]["train"]

    @property
    def test(self) -> dict:
        return self.metrics["run"]["test"]

    @property
    def detector(self) -> str:
        return self.train["method"]

    @property
    def seed(self) -> int | None:
        """The detector run's seed; None in scores made before score recorded it."""
        return self.train.get("seed")

    def with_video_aggregate(self, aggregator: str) -> Run:
        """This run with its video blocks (overall and per method) scored by `aggregator`."""
        if aggregator == HEADLINE:
            return self
        if "video_aggregates" not in self.metrics:
            raise LrerrError(f"{self.path}: its {METRICS_FILE} has no video aggregates (scored before score "
                             f"wrote them); score it again for --aggregate {aggregator}")
        chosen = self.metrics["video_aggregates"][aggregator]
        metrics = {**self.metrics, "video": chosen["video"],
                   "per_method": {m: {**blocks, "video": chosen["per_method"][m]}
                                  for m, blocks in self.metrics["per_method"].items()}}
        return Run(self.path, metrics, aggregator)

    def video_scores(self, frames: list[dict]) -> list[dict]:
        """This run's videos from its scored `frames`, each video's prob (under the
        `video_prob_key` of `aggregate`) by the aggregators' constants it was scored with."""
        return video_rows(checked_frames(frames), Aggregation(**self.metrics.get("aggregation", {})))

    def describe(self) -> str:
        train, test = self.train, self.test
        caveats = f" ({', '.join(train['caveats'])})" if train.get("caveats") else ""
        seed = "" if self.seed is None else f", seed {self.seed}"
        return (f"{_title(self.detector)}{caveats}, trained on {_data(train)}{seed}, "
                f"tested on {_data(test)} ({test['split']} split)")


def metrics_schema() -> dict:
    """metrics.json's schema, its detector method restricted to the registered methods."""
    checked = copy.deepcopy(schema("metrics"))
    checked["properties"]["run"]["properties"]["train"]["properties"]["method"]["enum"] = list(all_methods())
    return checked


def load_run(score_dir: str | Path) -> Run:
    path = Path(score_dir) / METRICS_FILE
    if not path.is_file():
        raise LrerrError(f"{score_dir}: no {METRICS_FILE} — is this a score directory?")
    return Run(Path(score_dir), read_checked_json(path, "metrics", metrics_schema()))


@dataclass(frozen=True)
class Estimate:
    """A metric in a cell: one score's value with its bootstrap interval where metrics.json
    has one, or the mean and std of the scores of one setting trained with several seeds."""

    value: float | None
    interval: list[float] | None = None
    std: float | None = None
    seeds: int = 1

    @classmethod
    def of(cls, block: dict, metric: str) -> Estimate:
        """A block's metric, with its interval where it has one (EER has none)."""
        return cls(block[metric], (block.get("ci") or {}).get(metric))

    @classmethod
    def over_seeds(cls, estimates: Sequence[Estimate]) -> Estimate:
        values = [e.value for e in estimates]
        if len(values) == 1 or None in values:
            return estimates[0] if len(values) == 1 else cls(None)
        return cls(float(np.mean(values)), std=float(np.std(values, ddof=1)), seeds=len(values))


@dataclass(frozen=True)
class Gain:
    """A method's AUC minus its baseline's, with the paired bootstrap p-value where both
    scores' per-face records could be paired."""

    value: float
    p_value: float | None


@dataclass
class Table:
    """A table as rows of cells: a str prints as is, a float or an Estimate as a percentage
    (with its interval, or ± its std over seeds), None as —.

    `needs` says which runs fill it, for the note when none does.
    """

    title: str
    needs: str
    header: list[str]
    rows: list[list[str | float | Estimate | None]] = field(default_factory=list)


class Cells:
    """Estimates by cell key. Runs of one setting trained with other seeds share a cell (its
    mean ± std); any other run that fills a taken cell is noted and left out."""

    def __init__(self, table: str, notes: list[str]):
        self.table, self.notes = table, notes
        self.entries: dict[tuple, list[tuple[Estimate, Run]]] = {}

    def put(self, key: tuple, block: dict, metric: str, run: Run) -> None:
        entries = self.entries.setdefault(key, [])
        seeds = {other.seed for _, other in entries}
        if entries and (run.seed is None or None in seeds or run.seed in seeds):
            first = entries[0][1].path
            same_seed = "" if run.seed is None else f" with the same seed {run.seed}"
            self.notes.append(f"{self.table}: {run.path} fills the same cell {key} as {first}{same_seed}; "
                              f"kept {first}")
            return
        entries.append((Estimate.of(block, metric), run))

    def get(self, key: tuple) -> Estimate | None:
        entries = self.entries.get(key)
        return Estimate.over_seeds([estimate for estimate, _ in entries]) if entries else None

    def runs(self, key: tuple) -> list[Run]:
        return [run for _, run in self.entries.get(key, [])]

    def keys(self, n: int) -> list[tuple]:
        """The distinct first-`n`-field prefixes of the filled keys, in the paper's row order."""
        return sorted({key[:n] for key in self.entries}, key=_row_order)

    def used(self) -> set[Path]:
        return {run.path for entries in self.entries.values() for _, run in entries}


def in_dataset(runs: Sequence[Run], level: str, notes: list[str]) -> tuple[Table, set[Path]]:
    """Table I: trained and tested on the same FF++ methods and compression."""
    cells = Cells("Table I", notes)
    for run in runs:
        if _in_dataset(run):
            block = run.metrics[level]
            for metric in ("acc", "auc"):
                cells.put((run.detector, run.train["compression"], metric), block, metric, run)
    comps = _compressions(cells, at=1)
    table = Table("Table I — in-dataset (FF++)",
                  "trained and tested on the same FF++ methods, all four of " + _methods(FFPP_METHODS),
                  ["Detector"] + [f"{c} {_metric(m)}" for c in comps for m in ("acc", "auc")])
    table.rows = [[_title(detector)] + [cells.get((detector, c, m)) for c in comps for m in ("acc", "auc")]
                  for detector in _detectors(cells)]
    return table, cells.used()


def cross_manipulation(runs: Sequence[Run], level: str, notes: list[str]) -> tuple[Table, set[Path]]:
    """Table II: AUC of a model trained on one FF++ method, on each method's fakes vs all reals."""
    cells = Cells("Table II", notes)
    for run in runs:
        if _same_ffpp(run) and len(run.train["methods"]) == 1:
            row = (run.detector, run.train["methods"][0], run.train["compression"])
            for method, blocks in run.metrics["per_method"].items():
                cells.put((*row, method), blocks[level], "auc", run)
    tests = _ordered({key[3] for key in cells.entries})
    table = Table("Table II — cross-manipulation AUC (FF++)", "trained on a single FF++ method",
                  ["Detector", "Train", "Comp"] + [_short(m) for m in tests] + ["Avg"])
    for detector, train, comp in cells.keys(3):
        values = [cells.get((detector, train, comp, m)) for m in tests]
        points = [None if v is None else v.value for v in values]
        # An average over fewer columns than its neighbours' would not compare with them.
        avg = None if None in points else sum(points) / len(points)
        table.rows.append([_title(detector), _short(train), comp, *values, avg])
    return table, cells.used()


def leave_one_out(runs: Sequence[Run], level: str, notes: list[str]) -> tuple[Table, set[Path]]:
    """Table III: GID-X, trained on the three other FF++ methods; X's fakes vs all reals."""
    cells = Cells("Table III", notes)
    for run in runs:
        if not _same_ffpp(run):
            continue
        for target in LEAVE_ONE_OUT:
            others = set(FFPP_METHODS) - {target}
            if set(run.train["methods"]) == others and target in run.metrics["per_method"]:
                block = run.metrics["per_method"][target][level]
                for metric in ("acc", "auc"):
                    cells.put((run.detector, target, run.train["compression"], metric), block, metric, run)
    columns = [(t, c, m) for t in LEAVE_ONE_OUT for c in _compressions(cells, at=2) for m in ("acc", "auc")]
    table = Table("Table III — leave-one-out (FF++)",
                  "trained on three FF++ methods and tested on the fourth, Deepfakes or Face2Face",
                  ["Detector"] + [f"GID-{_short(t)} {c} {_metric(m)}" for t, c, m in columns])
    table.rows = [[_title(detector)] + [cells.get((detector, *column)) for column in columns]
                  for detector in _detectors(cells)]
    return table, cells.used()


def cross_dataset_cells(runs: Sequence[Run], level: str, notes: list[str], table: str,
                        datasets: Sequence[str]) -> Cells:
    """AUC by (detector, train compression, test dataset) of models trained on all of FF++.

    The test dataset "ffpp" means the in-dataset run: the same methods and compression.
    """
    cells = Cells(table, notes)
    for run in runs:
        dataset = run.test["dataset"]
        if _full_ffpp(run) and dataset in datasets and (dataset != "ffpp" or _in_dataset(run)):
            cells.put((run.detector, run.train["compression"], dataset), run.metrics[level], "auc", run)
    return cells


def cross_dataset(runs: Sequence[Run], level: str, notes: list[str]) -> tuple[Table, set[Path]]:
    """Table IV: trained on FF++, AUC on FF++ itself, Celeb-DF-v2 and DFD."""
    datasets = ["ffpp", *CROSS_DATASETS]
    cells = cross_dataset_cells(runs, level, notes, "Table IV", datasets)
    table = Table("Table IV — cross-dataset AUC (trained on FF++)",
                  "trained on all of FF++ and tested on Celeb-DF-v2 or DFD",
                  ["Detector", "Train comp", "FF++", *CROSS_DATASETS.values()])
    # FF++ alone would only repeat Table I.
    if not any(key[2] in CROSS_DATASETS for key in cells.entries):
        return table, set()
    for detector, comp in cells.keys(2):
        table.rows.append([_title(detector), comp, *(cells.get((detector, comp, d)) for d in datasets)])
    return table, cells.used()


def ablation(runs: Sequence[Run], level: str, notes: list[str]) -> tuple[Table, set[Path]]:
    """Table V: each method against the baseline it declares (LRErr, RECCE: the plain
    Xception), on the cross-dataset AUCs."""
    cells = cross_dataset_cells(runs, level, notes, "Table V", list(CROSS_DATASETS))
    table = Table("Table V — ablation: each method against its baseline (AUC, trained on FF++)",
                  "of a method and its baseline (LRErr and Xception), trained on all of FF++ and tested on "
                  "Celeb-DF-v2 or DFD", ["Detector", "Train comp", *CROSS_DATASETS.values()])
    used: set[Path] = set()
    pairs = [(name, m.baseline) for name, m in all_methods().items() if m.baseline]
    for comp in sorted({key[1] for key in cells.entries}, key=str):
        for method, baseline in pairs:
            ours, base = ([cells.get((detector, comp, dataset)) for dataset in CROSS_DATASETS]
                          for detector in (method, baseline))
            if all(v is None for v in ours) or all(v is None for v in base):
                continue
            gain = [_gain(cells, (method, comp, dataset), (baseline, comp, dataset), level, notes)
                    for dataset in CROSS_DATASETS]
            table.rows += [[_title(baseline), comp, *base], [_title(method), comp, *ours],
                           [f"{_title(method)} − {_title(baseline)}", comp, *gain]]
            used |= {run.path for key in cells.entries if key[1] == comp and key[0] in (method, baseline)
                     for run in cells.runs(key)}
    return table, used


def _gain(cells: Cells, ours: tuple, base: tuple, level: str, notes: list[str]) -> Gain | None:
    """The AUC gain of one cell over another, and its paired bootstrap p-value on the first
    score of each cell."""
    a, b = cells.get(ours), cells.get(base)
    if a is None or b is None or a.value is None or b.value is None:
        return None
    run_a, run_b = cells.runs(ours)[0], cells.runs(base)[0]
    try:
        p_value = paired_p_value(run_a, run_b, level)
    except LrerrError as e:
        notes.append(f"Table V: no p-value for {run_a.path} against {run_b.path}: {e}")
        p_value = None
    if len(cells.runs(ours)) > 1 or len(cells.runs(base)) > 1:
        notes.append(f"Table V: the p-value of {ours} against {base} pairs the first seed's scores, "
                     f"{run_a.path} and {run_b.path}")
    return Gain(a.value - b.value, p_value)


def paired_p_value(run_a: Run, run_b: Run, level: str) -> float:
    """The paired bootstrap p-value of "A's AUC equals B's" on the faces both scored, at `level`
    (videos scored by each run's aggregator), resampled by video as in metrics.json."""
    a, b = (_level_scores(run, level) for run in (run_a, run_b))
    if a.keys() != b.keys():
        raise LrerrError(f"they scored different {'faces' if level == 'frame' else 'videos'}")
    keys = sorted(a)
    if any(a[k][:2] != b[k][:2] for k in keys):
        raise LrerrError("their labels or fake methods differ")
    video_ids = sorted({a[k][3] for k in keys})
    index = {v: i for i, v in enumerate(video_ids)}
    strata = {a[k][3]: ("" if a[k][0] == 0 else a[k][1]) for k in keys}
    return paired_auc_p_value(np.array([a[k][2] for k in keys]), np.array([b[k][2] for k in keys]),
                              np.array([a[k][0] for k in keys]), np.array([index[a[k][3]] for k in keys]),
                              np.array([strata[v] for v in video_ids]), Bootstrap())


def _level_scores(run: Run, level: str) -> dict[tuple, tuple]:
    """{sample key: (label, method, prob, video_id)} from a score directory's records: each
    face by (video_id, frame_index), or each video by its id and the run's aggregator."""
    if not (run.path / "records.jsonl").is_file():
        raise LrerrError("a score directory has no records.jsonl to pair")
    frames = list(iter_records(run.path))
    if level == "frame":
        return {(f["video_id"], f["frame_index"]): (f["label"], f["method"], f["prob"], f["video_id"])
                for f in frames}
    key = video_prob_key(run.aggregate)
    return {(v["video_id"],): (v["label"], v["method"], v[key], v["video_id"])
            for v in run.video_scores(frames)}


def few_labels(runs: Sequence[Run], level: str, notes: list[str]) -> tuple[Table, set[Path]]:
    """AUC against the share of train videos labelled: one row per detector and test data, one
    column per fraction, from the runs that record a --label-fraction."""
    cells = Cells("Few-label table", notes)
    for run in runs:
        if "label_fraction" in run.train:
            key = (run.detector, _data(run.train), _data(run.test), run.train["label_fraction"])
            cells.put(key, run.metrics[level], "auc", run)
    fractions = sorted({key[3] for key in cells.entries})
    table = Table("Few-label table — AUC against the labelled share of train videos",
                  "of detectors trained with --label-fraction (scripts/few_labels.sh)",
                  ["Detector", "Trained on", "Tested on", *(f"{100 * f:g} %" for f in fractions)])
    rows = sorted({key[:3] for key in cells.entries}, key=lambda k: (list(all_methods()).index(k[0]), k[1:]))
    table.rows = [[_title(detector), train, test, *(cells.get((detector, train, test, f)) for f in fractions)]
                  for detector, train, test in rows]
    return table, cells.used()


def _all_labels(run: Run) -> bool:
    """Trained with every train label, as the paper's tables are (and runs from before
    --label-fraction were)."""
    return run.train.get("label_fraction", 1) == 1


BUILDERS = {
    "in-dataset": in_dataset,
    "cross-manipulation": cross_manipulation,
    "leave-one-out": leave_one_out,
    "cross-dataset": cross_dataset,
    "ablation": ablation,
    "few-labels": few_labels,
}


def other_scores(runs: Sequence[Run], level: str) -> Table:
    """Every score no paper table takes (a folder dataset, two FF++ methods of four, a val
    split, ...), so that a report always answers: trained on → tested on, with every metric,
    overall and per fake method."""
    metrics = ("auc", "acc", "ap", "eer")
    table = Table("Other scores — trained on → tested on", "", [
        "Detector", "Trained on", "Tested on", "Split", "Fakes", "Faces",
        *(name.upper() if name != "acc" else "Acc" for name in metrics)])
    for run in runs:
        blocks = [("all", run.metrics[level])] + [(_short(method), per[level])
                                                 for method, per in run.metrics["per_method"].items()]
        for fakes, block in blocks:
            table.rows.append([_title(run.detector), _data(run.train), _data(run.test), run.test["split"],
                               fakes, str(block["n"]), *(Estimate.of(block, name) for name in metrics)])
    return table


OTHER = "other"  # the file key of the table of scores no paper table takes
ROBUSTNESS = "robustness"  # ... and of the robustness table (and its plot)


def robustness(runs: Sequence[Run], level: str) -> Table:
    """AUC of each score made with `score --perturb`, clean and under each perturbation at each
    level, and the mean over the levels: one row per score and perturbation."""
    table = Table("Robustness — AUC under perturbations", "scored with `score --perturb`", [
        "Detector", "Trained on", "Tested on", "Perturbation", "Clean", *map(str, PERTURB_LEVELS), "Mean"])
    for run in runs:
        scored = run.metrics.get("robustness", {})  # absent without --perturb
        for name in [name for name in PERTURBATIONS if name in scored]:
            aucs = [Estimate.of(_perturbed_block(run, scored[name][str(n)], level), "auc")
                    for n in PERTURB_LEVELS]
            values = [auc.value for auc in aucs]
            table.rows.append([_title(run.detector), _data(run.train), _data(run.test), name,
                               Estimate.of(run.metrics[level], "auc"), *aucs,
                               None if None in values else float(np.mean(values))])
    return table


def _perturbed_block(run: Run, blocks: dict, level: str) -> dict:
    """One perturbation level's block at `level`, its videos scored by the run's aggregator."""
    return blocks["video_aggregates"][run.aggregate]["video"] if level == "video" else blocks[level]


def robustness_curves(table: Table) -> dict[str, dict[str, list[float | None]]]:
    """The robustness table as robustness_plot's curves: per perturbation, each score's AUC at
    clean and levels 1 to 5."""
    curves: dict[str, dict[str, list[float | None]]] = {}
    for detector, _, tested, name, *aucs, _mean in table.rows:
        curves.setdefault(name, {})[f"{detector} on {tested}"] = [auc.value for auc in aucs]
    return curves


def build_tables(runs: Sequence[Run], level: str) -> tuple[dict[str, Table], list[str]]:
    """The tables some run fills, by file key, and notes on what was left out and why."""
    if level not in LEVELS:
        raise LrerrError(f"level must be one of {', '.join(LEVELS)}, got {level}")
    notes: list[str] = []
    tested = []
    for run in runs:
        if run.test["split"] == "test":
            tested.append(run)
        else:
            notes.append(f"{run.path}: scored on the {run.test['split']} split; the tables use test scores")
    tables, used = {}, set()
    for key, build in BUILDERS.items():
        # A model trained on a few labels answers only the few-label table.
        table, paths = build(tested if build is few_labels else [r for r in tested if _all_labels(r)],
                             level, notes)
        used |= paths
        if table.rows:
            tables[key] = table
        elif build is not few_labels:  # a protocol of its own: no note in reports of the paper's
            notes.append(f"{table.title}: left out — it needs score directories {table.needs}")
    robust = robustness(tested, level)
    if robust.rows:
        tables[ROBUSTNESS] = robust
    others = [run for run in runs if run.path not in used]
    if others:
        tables[OTHER] = other_scores(others, level)
        notes += [f"{run.path}: in no paper table, so in {tables[OTHER].title.split(' —')[0]} "
                  f"({run.describe()})" for run in others if run in tested]
    return tables, notes


def explanation(level: str, aggregate: str = HEADLINE) -> str:
    """What the tables' cells are: the paragraph that heads the report."""
    scored = f" (a video's prob: the {AGGREGATE_WORDS[aggregate]} of its frames')" if level == "video" else ""
    return (f"{level.capitalize()}-level AUC and Acc in %{scored}. Acc counts prob ≥ the threshold in each "
            "metrics.json as fake; per-method cells score that method's fakes against all reals. "
            "`97.40 [96.80, 98.00]`: a score and its bootstrap 95 % interval (metrics.json's `bootstrap`); "
            "`97.40 ± 0.30`: the mean and standard deviation over the seeds of one setting. "
            f"Table V's p: a two-sided paired bootstrap of the AUC difference on the same test set "
            f"({Bootstrap().resamples} resamples by video, seed {Bootstrap().seed}). "
            "— marks a cell no score directory fills.")


def render_markdown(tables: Sequence[Table], notes: Sequence[str], runs: Sequence[Run], level: str,
                    aggregate: str = HEADLINE) -> str:
    lines = ["# LRErr evaluation report", "", explanation(level, aggregate), ""]
    for table in tables:
        lines += [f"## {table.title}", "", _md_row(table.header), _md_row(["---"] * len(table.header))]
        lines += [_md_row([_format(cell, "—") for cell in row]) for row in table.rows]
        lines.append("")
    if notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in notes] + [""]
    lines += ["## Score directories", ""] + [f"- `{run.path}`: {run.describe()}" for run in runs]
    return "\n".join(lines) + "\n"


def table_csv(table: Table) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(table.header)
    # The point values alone, so that every cell stays a number; the Markdown has the rest.
    writer.writerows([_format(cell, "", plain=True) for cell in row] for row in table.rows)
    return buffer.getvalue()


def write_report(score_dirs: Sequence[str | Path], out: str | Path, level: str = "frame",
                 aggregate: str = HEADLINE, html: bool = False) -> list[Path]:
    """Write the Markdown report to `out` and each table as `<out stem>.<table>.csv` beside it;
    with `html`, the self-contained page `<out stem>.html` too (report_html.py).
    `aggregate` names the video aggregator of the video-level tables."""
    if not score_dirs:
        raise LrerrError("no score directories given")
    if aggregate not in AGGREGATORS:
        raise LrerrError(f"--aggregate must be one of {', '.join(AGGREGATORS)}, got {aggregate}")
    if aggregate != HEADLINE and level != "video":
        raise LrerrError(f"--aggregate {aggregate} scores videos: add --level video")
    out = Path(out)
    if out.is_dir():
        raise LrerrError(f"--out {out}: is a directory; name the Markdown file to write, e.g. "
                         f"{out / 'report.md'}")
    runs = [load_run(d).with_video_aggregate(aggregate) for d in score_dirs]
    tables, notes = build_tables(runs, level)
    atomic_write_bytes(out, render_markdown(list(tables.values()), notes, runs, level, aggregate).encode())
    written = [out]
    for key in (*BUILDERS, OTHER, ROBUSTNESS):
        path = out.with_name(f"{out.stem}.{key}.csv")
        if key in tables:
            atomic_write_bytes(path, table_csv(tables[key]).encode())
            written.append(path)
        else:
            # Left from an earlier report, it would pass for part of this one.
            path.unlink(missing_ok=True)
    plot = out.with_name(f"{out.stem}.{ROBUSTNESS}.png")
    if ROBUSTNESS in tables:
        title = f"{level.capitalize()}-level AUC against perturbation level"
        robustness_plot(robustness_curves(tables[ROBUSTNESS]), plot, title)
        written.append(plot)
    else:
        plot.unlink(missing_ok=True)
    # Last: the page embeds every PNG written above.
    if html:
        from lrerr_tools.report_html import write_html

        pngs = [path for path in written if path.suffix == ".png"]
        written.append(write_html(out.with_suffix(".html"), list(tables.values()), notes, runs, level,
                                  aggregate, pngs))
    return written


def _full_ffpp(run: Run) -> bool:
    return run.train["dataset"] == "ffpp" and set(FFPP_METHODS) <= set(run.train["methods"])


def _in_dataset(run: Run) -> bool:
    return _full_ffpp(run) and _same_ffpp(run) and set(run.test["methods"]) == set(run.train["methods"])


def _same_ffpp(run: Run) -> bool:
    train, test = run.train, run.test
    return train["dataset"] == test["dataset"] == "ffpp" and train["compression"] == test["compression"]


def _compressions(cells: Cells, at: int) -> list[str]:
    """The paper's c23 and c40 columns, then any other compression a run used (key field `at`)."""
    seen = {key[at] for key in cells.entries}
    return list(PAPER_COMPRESSIONS) + sorted(c for c in seen - set(PAPER_COMPRESSIONS) if c)


def _ordered(methods: set[str]) -> list[str]:
    """FF++ methods in the paper's order, then any others by name."""
    return [m for m in FFPP_METHODS if m in methods] + sorted(methods - set(FFPP_METHODS))


def _row_order(key: tuple) -> tuple:
    """Rows go by train method (paper order) or compression, then by detector name."""
    detector, *rest = key
    ranks = [(FFPP_METHODS.index(v), "") if v in FFPP_METHODS else (len(FFPP_METHODS), v or "") for v in rest]
    return (*ranks, list(all_methods()).index(detector))


def _detectors(cells: Cells) -> list[str]:
    """The detector methods with a filled cell, in registry order: one table row each."""
    return [name for name in all_methods() if any(key[0] == name for key in cells.entries)]


def _title(method: str) -> str:
    return all_methods()[method].title


def _metric(name: str) -> str:
    return {"acc": "Acc", "auc": "AUC"}[name]


def _short(method: str) -> str:
    return SHORT_METHODS.get(method, method)


def _methods(methods: Sequence[str]) -> str:
    return "[" + ", ".join(_short(m) for m in methods) + "]"


def _data(side: dict) -> str:
    """"ffpp c23 [DF, F2F]": a run block's dataset, compression and methods."""
    return " ".join(filter(None, [side["dataset"], side["compression"], _methods(side["methods"])]))


def _p(value: float) -> str:
    """A bootstrap p-value: 0 says only that no resample crossed 0."""
    return f"p < {1 / Bootstrap().resamples:g}" if value == 0 else f"p = {value:.3f}"


def _format(cell: str | float | Estimate | Gain | None, missing: str, plain: bool = False) -> str:
    if isinstance(cell, Gain):
        p = "" if plain or cell.p_value is None else f" ({_p(cell.p_value)})"
        return f"{100 * cell.value:+.2f}{p}"
    if isinstance(cell, Estimate):
        if cell.value is None:
            return missing
        if plain:
            return f"{100 * cell.value:.2f}"
        if cell.std is not None:
            return f"{100 * cell.value:.2f} ± {100 * cell.std:.2f}"
        if cell.interval is not None:
            low, high = cell.interval
            return f"{100 * cell.value:.2f} [{100 * low:.2f}, {100 * high:.2f}]"
        return f"{100 * cell.value:.2f}"
    if cell is None:
        return missing
    return cell if isinstance(cell, str) else f"{100 * cell:.2f}"


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"
