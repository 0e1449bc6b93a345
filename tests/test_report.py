import csv
import html
import json

import cv2
import numpy as np
import pytest
from html_page import check_self_contained, markdown_tables, read_page
from typer.testing import CliRunner

from lrerr_tools.cli import app
from lrerr_tools.errors import LrerrError
from lrerr_tools.metrics import compute_metrics
from lrerr_tools.report import write_report

FFPP = ["Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures"]


def block(acc, auc):
    return {"n": 10, "n_real": 5, "n_fake": 5, "acc": acc, "auc": auc, "ap": auc, "eer": 0.1}


def score_dir(root, name, detector, train_methods, test, acc=0.5, auc=0.5, per_method=None,
              comp="c23", split="test"):
    """A score directory whose frame-level metrics are `acc`/`auc`; video-level ones are 0."""
    per_method = per_method or {}
    metrics = {
        "run": {"train": {"dataset": "ffpp", "methods": train_methods, "compression": comp,
                          "method": detector},
                "test": {"dataset": test, "split": split, "compression": comp if test != "celebdf" else None,
                         "methods": list(per_method) or ["Deepfakes"]}},
        "threshold": 0.5, "frame": block(acc, auc), "video": block(0.0, 0.0),
        "per_method": {m: {"frame": block(*v), "video": block(0.0, 0.0)} for m, v in per_method.items()},
        "notes": [],
    }
    path = root / name
    path.mkdir()
    (path / "metrics.json").write_text(json.dumps(metrics))
    return path


@pytest.fixture
def dirs(tmp_path):
    root = tmp_path / "scores"
    root.mkdir()
    return {
        "in23": score_dir(root, "in23", "lrerr", FFPP, "ffpp", 0.9178, 0.974, {m: (0.9, 0.97) for m in FFPP}),
        "in40": score_dir(root, "in40", "xception", FFPP, "ffpp", 0.8, 0.85, {m: (0.8, 0.85) for m in FFPP},
                          comp="c40"),
        "df": score_dir(root, "df", "lrerr", ["Deepfakes"], "ffpp", per_method={
            "Deepfakes": (0.9, 0.9985), "Face2Face": (0.6, 0.70), "FaceSwap": (0.5, 0.4138),
            "NeuralTextures": (0.6, 0.7142)}),
        "fs_partial": score_dir(root, "fs", "xception", ["FaceSwap"], "ffpp",
                                per_method={"FaceSwap": (0.9, 0.99)}),
        "gid_df": score_dir(root, "gid", "lrerr", FFPP[1:], "ffpp",
                            per_method={"Deepfakes": (0.7928, 0.879)}),
        "celeb": score_dir(root, "celeb", "lrerr", FFPP, "celebdf", auc=0.7747),
        "dfd": score_dir(root, "dfd", "lrerr", FFPP, "dfd", auc=0.9523),
        "celeb_base": score_dir(root, "celeb_base", "xception", FFPP, "celebdf", auc=0.70),
        "val": score_dir(root, "val", "lrerr", FFPP, "ffpp", split="val"),
    }


def test_tables_hold_the_expected_cells(dirs, tmp_path):
    out = tmp_path / "report" / "paper.md"
    written = write_report(list(dirs.values()), out)
    text = out.read_text()
    expected = [
        "| Detector | c23 Acc | c23 AUC | c40 Acc | c40 AUC |",
        "| LRErr | 91.78 | 97.40 | — | — |",
        "| Xception | — | — | 80.00 | 85.00 |",
        "| Detector | Train | Comp | DF | F2F | FS | NT | Avg |",
        "| LRErr | DF | c23 | 99.85 | 70.00 | 41.38 | 71.42 | 70.66 |",
        "| Xception | FS | c23 | — | — | 99.00 | — | — |",
        "| LRErr | 79.28 | 87.90 | — | — | — | — | — | — |",
        "| Detector | Train comp | FF++ | Celeb-DF-v2 | DFD |",
        "| LRErr | c23 | 97.40 | 77.47 | 95.23 |",
        "| Xception | c23 | — | 70.00 | — |",
        "| Xception | c40 | 85.00 | — | — |",
        "| LRErr − Xception | c23 | +7.47 | — |",
        f"- {dirs['val']}: scored on the val split; the tables use test scores",
    ]
    for line in expected:
        assert line in text
    assert "GID-DF c23 Acc | GID-DF c23 AUC | GID-DF c40 Acc" in text
    assert "Notes" in text and "left out" not in text
    names = sorted(p.name for p in written)
    assert names == ["paper.ablation.csv", "paper.cross-dataset.csv", "paper.cross-manipulation.csv",
                     "paper.in-dataset.csv", "paper.leave-one-out.csv", "paper.md", "paper.other.csv"]
    # the val score fits no paper table, and still has its row
    with open(out.parent / "paper.other.csv", newline="") as f:
        assert list(csv.reader(f)) == [
            ["Detector", "Trained on", "Tested on", "Split", "Fakes", "Faces", "AUC", "Acc", "AP", "EER"],
            ["LRErr", "ffpp c23 [DF, F2F, FS, NT]", "ffpp c23 [DF]", "val", "all", "10", "50.00", "50.00",
             "50.00", "10.00"]]
    assert (out.parent / "paper.in-dataset.csv").read_text().splitlines() == [
        "Detector,c23 Acc,c23 AUC,c40 Acc,c40 AUC", "LRErr,91.78,97.40,,", "Xception,,,80.00,85.00"]


def test_video_level_uses_the_video_blocks(dirs, tmp_path):
    write_report([dirs["in23"]], tmp_path / "r.md", level="video")
    assert "| LRErr | 0.00 | 0.00 | — | — |" in (tmp_path / "r.md").read_text()
    with pytest.raises(LrerrError, match="level must be one of frame, video"):
        write_report([dirs["in23"]], tmp_path / "r.md", level="clip")


def test_unmatched_tables_are_left_out_with_a_note(dirs, tmp_path):
    out = tmp_path / "r.md"
    write_report(list(dirs.values()), out)
    write_report([dirs["in23"], dirs["in23"]], out)
    text = out.read_text()
    assert "Table I — in-dataset" in text and "## Table II" not in text
    assert "Table V — ablation: each method against its baseline (AUC, trained on FF++): left out" in text
    assert f"fills the same cell ('lrerr', 'c23', 'acc') as {dirs['in23']}" in text
    assert sorted(p.name for p in tmp_path.glob("r.*")) == ["r.in-dataset.csv", "r.md"]  # stale CSVs gone


def test_a_run_in_no_table_is_named(tmp_path):
    celeb_to_ffpp = score_dir(tmp_path, "odd", "lrerr", ["Deepfakes", "FaceSwap"], "celebdf")
    write_report([celeb_to_ffpp], tmp_path / "r.md")
    text = (tmp_path / "r.md").read_text()
    assert (f"{celeb_to_ffpp}: in no paper table, so in Other scores (LRErr, trained on ffpp c23 [DF, FS], "
            "tested on celebdf [DF]") in text
    assert "## Other scores — trained on → tested on" in text
    row = "| LRErr | ffpp c23 [DF, FS] | celebdf [DF] | test | all | 10 | 50.00 | 50.00 | 50.00 | 10.00 |"
    assert row in text


def test_real_metrics_output_is_accepted(tmp_path):
    metrics = compute_metrics([dict(video_id="youtube/0", method="youtube", label=0, prob=0.2),
                               dict(video_id="Deepfakes/0", method="Deepfakes", label=1, prob=0.9)])
    side = {"dataset": "ffpp", "compression": "c23", "methods": ["Deepfakes"]}
    metrics["run"] = {"train": {**side, "method": "xception"}, "test": {**side, "split": "test"}}
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "metrics.json").write_text(json.dumps(metrics))
    write_report([tmp_path / "s"], tmp_path / "r.md")
    assert "| Xception | DF | c23 | 100.00 | 100.00 |" in (tmp_path / "r.md").read_text()


def test_cli_reports_and_rejects_bad_dirs(dirs, tmp_path):
    runner = CliRunner()
    out = ["--out", str(tmp_path / "r.md")]
    result = runner.invoke(app, ["report", str(dirs["in23"]), str(dirs["df"]), *out])
    assert result.exit_code == 0, result.output
    assert "r.cross-manipulation.csv" in result.output
    result = runner.invoke(app, ["report", str(tmp_path), *out])
    assert result.exit_code == 2 and "no metrics.json" in result.output
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metrics.json").write_text(json.dumps({"run": {}}))
    result = runner.invoke(app, ["report", str(bad), *out])
    assert result.exit_code == 2 and "metrics.json: invalid metrics at top level" in result.output


def aggregated_score_dir(root, name):
    """A real metrics.json of 2 real and 2 fake videos whose mean and max rank them differently."""
    frames = [("youtube/0", 0, [0.1, 0.2, 0.9]), ("youtube/1", 0, [0.3, 0.3, 0.3]),
              ("Deepfakes/0", 1, [0.4, 0.4, 0.4]), ("Deepfakes/1", 1, [0.6, 0.1, 0.1])]
    metrics = compute_metrics([dict(video_id=v, method=v.split("/")[0], label=y, prob=p)
                               for v, y, probs in frames for p in probs])
    side = {"dataset": "ffpp", "compression": "c23", "methods": ["Deepfakes"]}
    metrics["run"] = {"train": {**side, "method": "xception"}, "test": {**side, "split": "test"}}
    (root / name).mkdir()
    (root / name / "metrics.json").write_text(json.dumps(metrics))
    return root / name


def test_aggregate_picks_the_video_aggregator_of_the_tables(tmp_path, dirs):
    scores = aggregated_score_dir(tmp_path, "agg")
    # Video means: reals 0.4, 0.3; fakes 0.4, 0.267 → AUC (0.5 + 1 + 0 + 0) / 4. Maxes: reals 0.9,
    # 0.3; fakes 0.4, 0.6 → AUC (0 + 1 + 0 + 1) / 4.
    for aggregate, auc in (("mean", "37.50"), ("max", "50.00")):
        write_report([scores], tmp_path / "r.md", level="video", aggregate=aggregate)
        text = (tmp_path / "r.md").read_text()
        assert f"| Xception | DF | c23 | {auc} | {auc} |" in text
    assert "a video's prob: the maximum of its frames'" in text
    with pytest.raises(LrerrError, match="--aggregate max scores videos: add --level video"):
        write_report([scores], tmp_path / "r.md", aggregate="max")
    with pytest.raises(LrerrError, match="--aggregate must be one of mean, median, max, top_k_mean, conf"):
        write_report([scores], tmp_path / "r.md", level="video", aggregate="mode")
    with pytest.raises(LrerrError, match="has no video aggregates .*score it again for --aggregate median"):
        write_report([dirs["in23"]], tmp_path / "r.md", level="video", aggregate="median")


def test_cells_show_intervals_and_seeds_show_mean_and_std(tmp_path):
    seeds = []
    for seed, auc in ((0, 0.90), (1, 0.94), (2, 0.92)):
        path = score_dir(tmp_path, f"s{seed}", "lrerr", FFPP, "celebdf", auc=auc)
        metrics = json.loads((path / "metrics.json").read_text())
        metrics["run"]["train"]["seed"] = seed
        metrics["frame"]["ci"] = {"acc": [0.4, 0.6], "auc": [auc - 0.02, auc + 0.01], "ap": None}
        (path / "metrics.json").write_text(json.dumps(metrics))
        seeds.append(path)
    write_report(seeds[:1], tmp_path / "one.md")
    assert "| LRErr | c23 | — | 90.00 [88.00, 91.00] | — |" in (tmp_path / "one.md").read_text()
    write_report([*seeds, seeds[1]], tmp_path / "three.md")
    text = (tmp_path / "three.md").read_text()
    assert "| LRErr | c23 | — | 92.00 ± 2.00 | — |" in text  # mean and sample std of 90, 94, 92
    assert (f"{seeds[1]} fills the same cell ('lrerr', 'c23', 'celebdf') as {seeds[0]} with the same seed 1"
            in text)
    assert "trained on ffpp c23 [DF, F2F, FS, NT], seed 2, tested on celebdf" in text


def scored_celebdf(root, name, detector, frames):
    """A score directory of a detector trained on all of FF++, tested on Celeb-DF-v2: its
    metrics.json and its records, from (video_id, label, frame probs)."""
    records = [dict(video_id=v, method=v.split("/")[0], label=y, frame_index=i, prob=p)
               for v, y, probs in frames for i, p in enumerate(probs)]
    metrics = compute_metrics(records)
    metrics["run"] = {"train": {"dataset": "ffpp", "compression": "c23", "methods": FFPP, "method": detector},
                      "test": {"dataset": "celebdf", "compression": None, "methods": ["Celeb-synthesis"],
                               "split": "test"}}
    (root / name).mkdir()
    (root / name / "metrics.json").write_text(json.dumps(metrics))
    (root / name / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root / name


def videos(seed, separation, n=30):
    rng = np.random.default_rng(seed)
    return [(f"{'Celeb-synthesis' if y else 'Celeb-real'}/{v}", y,
             list(np.clip(rng.normal(0.5 + separation * (y - 0.5), 0.2, 3), 0, 1)))
            for v in range(n) for y in (0, 1)]


def test_ablation_gains_carry_a_paired_bootstrap_p_value(tmp_path):
    strong = scored_celebdf(tmp_path, "lrerr", "lrerr", videos(0, separation=0.5))
    weak = scored_celebdf(tmp_path, "xception", "xception", videos(0, separation=0.0))
    write_report([strong, weak], tmp_path / "r.md")
    gain = [line for line in (tmp_path / "r.md").read_text().splitlines() if line.startswith("| LRErr − ")][0]
    assert gain.endswith("(p < 0.001) | — |")  # a clear gain on 60 videos: no resample of 1000 crosses 0
    csv_gain = (tmp_path / "r.ablation.csv").read_text().splitlines()[-1]
    assert "p =" not in csv_gain and float(csv_gain.split(",")[2]) > 0  # the CSV stays numeric
    # The same scores twice: every resample's difference is 0, so p = 1.
    same = scored_celebdf(tmp_path, "same", "xception", videos(0, separation=0.5))
    write_report([strong, same], tmp_path / "same.md")
    assert "| LRErr − Xception | c23 | +0.00 (p = 1.000) | — |" in (tmp_path / "same.md").read_text()
    # Other videos cannot be paired: the gain is shown, with a note instead of p.
    other = scored_celebdf(tmp_path, "other", "xception", videos(1, separation=0.0, n=20))
    write_report([strong, other], tmp_path / "other.md", level="video")
    text = (tmp_path / "other.md").read_text()
    assert f"Table V: no p-value for {strong} against {other}: they scored different videos" in text


def test_the_few_label_table_takes_runs_that_record_a_label_fraction(tmp_path):
    root = tmp_path / "scores"
    root.mkdir()
    runs = []
    for detector, fraction, auc in (("sclkd", 0.05, 0.8), ("sclkd", 1.0, 0.9), ("xception", 0.05, 0.7)):
        path = score_dir(root, f"{detector}-{fraction}", detector, FFPP, "ffpp", 0.5, auc,
                         {m: (0.5, auc) for m in FFPP})
        metrics = json.loads((path / "metrics.json").read_text())
        metrics["run"]["train"]["label_fraction"] = fraction
        (path / "metrics.json").write_text(json.dumps(metrics))
        runs.append(path)
    written = write_report(runs, tmp_path / "r.md")
    text = (tmp_path / "r.md").read_text()
    assert "| Detector | Trained on | Tested on | 5 % | 100 % |" in text
    assert "| SCL-KD | ffpp c23 [DF, F2F, FS, NT] | ffpp c23 [DF, F2F, FS, NT] | 80.00 | 90.00 |" in text
    assert "| Xception | ffpp c23 [DF, F2F, FS, NT] | ffpp c23 [DF, F2F, FS, NT] | 70.00 | — |" in text
    assert tmp_path / "r.few-labels.csv" in written
    # Only the run with every label lands in the paper's Table I as well.
    with open(tmp_path / "r.in-dataset.csv", newline="") as f:
        assert [row["Detector"] for row in csv.DictReader(f)] == ["SCL-KD"]


def test_the_html_report_escapes_paths_and_names_what_it_could_not_draw(tmp_path):
    # A user's folder names reach the page: as text, never as markup.
    root = tmp_path / 'odd <img src=x onerror="alert(1)"> & co'
    root.mkdir()
    celeb = score_dir(root, "celeb", "lrerr", FFPP, "celebdf", auc=0.7747)
    (celeb / "roc.png").write_bytes(cv2.imencode(".png", np.full((8, 8, 3), 255, np.uint8))[1].tobytes())
    write_report([celeb], root / "r.md", html=True)
    page_text = (root / "r.html").read_text()
    page = read_page(root / "r.html")
    assert [image["alt"].split(": ")[0] for image in page.images] == [f"roc.png of {celeb}"]
    check_self_contained(page)
    assert '<img src=x onerror="alert(1)">' not in page_text and "odd &lt;img src=x onerror=" in page_text
    assert markdown_tables(root / "r.md")[0] in page.tables
    assert f"ROC and PR curves: {celeb} left out: no frames.csv" in html.unescape(page_text)
    assert f"Frame accounting: {celeb} left out: {celeb}: no manifest.json" in html.unescape(page_text)
