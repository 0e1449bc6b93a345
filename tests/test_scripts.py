"""The protocol scripts on the synthetic samples with tiny settings, sharing one work
directory as users would: each builds on what the scripts before it finished.

ffpp.sh, cross_dataset.sh, few_labels.sh and sclkd.sh run end to end: timm's test_resnet
stands in for Xception to keep the detectors fast on CPU; everything else (extract,
landmarks, shards, the MAE, training, scoring, the report) runs for real. The other table
scripts differ from those only in which detectors they train on which fakes, and where they
score them, so their tests read the commands `--dry-run` prints; test_report.py fills each
table from scores.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from html_page import check_self_contained, markdown_tables, read_page

from lrerr_tools.methods import all_methods
from lrerr_tools.synth import make_celebdf_sample, make_ffpp_sample

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
TINY = {"PROFILE": "tiny", "FRAMES": "2", "DET_ARGS_xception": "--backbone test_resnet",
        "DET_ARGS_sclkd": "--backbone test_efficientnet",
        "DET_ARGS_lrerr": "--backbone test_resnet --attn-layers layer1,layer2 --random-extractor",
        "DET_ARGS_recce": "--width 0.0625"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("protocols")
    ffpp = make_ffpp_sample(root / "ffpp", n_frames=12, size=(160, 120))
    celebdf = make_celebdf_sample(root / "celebdf", n_frames=12, size=(160, 120))
    return {"root": root, "ffpp": ffpp, "celebdf": celebdf, "work": root / "work"}


def run_script(name: str, data: dict, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    command = ["bash", str(SCRIPTS / name), "--ffpp", str(data["ffpp"]), "--celebdf", str(data["celebdf"]),
               "--work", str(data["work"]), *args]
    environ = {**os.environ, **TINY, **(env or {})}
    environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environ['PATH']}"
    return subprocess.run(command, capture_output=True, text=True, env=environ, cwd=data["root"], timeout=600)


def check(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def table(data: dict, report: str, key: str) -> dict[tuple[str, ...], dict[str, str]]:
    """A report table's CSV as {row label cells: {column: value}}."""
    with open(data["work"] / "reports" / f"{report}.{key}.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    labels = [c for c in rows[0] if c in ("Detector", "Train", "Comp", "Train comp")]
    return {tuple(row[c] for c in labels): {c: v for c, v in row.items() if c not in labels} for row in rows}


def percent(value: str) -> float:
    number = float(value)
    assert 0 <= number <= 100
    return number


def stage_hashes(work: Path) -> dict[str, str]:
    return {str(p.relative_to(work)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(work.rglob("manifest.json"))}


def test_ffpp_fills_table_one(data):
    check(run_script("ffpp.sh", data))
    rows = table(data, "in-dataset", "in-dataset")
    lrerr = rows[("LRErr",)]
    percent(lrerr["c23 Acc"]), percent(lrerr["c23 AUC"])
    assert lrerr["c40 AUC"] == "" and ("Xception",) not in rows
    ffpp = data["work"] / "ffpp-c23"
    assert {p.name for p in ffpp.iterdir()} == {"extract", "landmarks", "shards", "mae", "det", "score"}
    extract = json.loads((ffpp / "extract" / "manifest.json").read_text())
    assert extract["config"]["methods"] == ["Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures"]


def test_a_rerun_skips_every_finished_stage(data):
    before = stage_hashes(data["work"])
    output = check(run_script("ffpp.sh", data))
    assert stage_hashes(data["work"]) == before
    assert "complete — nothing to do" in output and "epoch 1/1" not in output


def test_shards_deleted_and_rebuilt_keep_the_trained_models(data):
    # Users delete shards to free disk; rebuilding them must not force a retrained MAE.
    before = stage_hashes(data["work"])
    shutil.rmtree(data["work"] / "ffpp-c23" / "shards")
    output = check(run_script("ffpp.sh", data))
    after = stage_hashes(data["work"])
    assert "epoch 1/1" not in output
    del before["ffpp-c23/shards/manifest.json"], after["ffpp-c23/shards/manifest.json"]
    assert after == before


def test_a_work_dir_moved_whole_is_still_the_same_work(data, tmp_path):
    # e.g. from scratch space to project storage: nothing may point back at the old place.
    moved = tmp_path / "moved"
    shutil.copytree(data["work"], moved, symlinks=True)
    before = stage_hashes(moved)
    hidden = tmp_path / "hidden"
    data["work"].rename(hidden)
    try:
        output = check(run_script("ffpp.sh", {**data, "work": moved}))
        landmarks = moved / "ffpp-c23" / "landmarks"
        verified = subprocess.run([sys.executable, "-m", "lrerr_tools", "verify", str(landmarks)],
                                  capture_output=True, text=True)
    finally:
        hidden.rename(data["work"])
    assert "epoch 1/1" not in output
    assert stage_hashes(moved) == before
    assert verified.returncode == 0, verified.stdout


def test_the_first_failing_stage_stops_the_script(data):
    result = run_script("ffpp.sh", data, env={"FRAMES": "3"})
    assert result.returncode == 2
    assert "error: --out" in result.stderr and "made with another config (differs in frames)" in result.stderr
    assert "ffpp.sh: stopped at 'extract ffpp' (exit 2)" in result.stderr
    assert "== ffpp.sh: landmarks" not in result.stderr


def test_any_registered_method_runs_through_a_script(data):
    # RECCE needs no MAE: the script trains none for it, and reuses the prepared shards.
    output = check(run_script("ffpp.sh", data, "--method", "recce"))
    assert "== ffpp.sh: train-mae" not in output and "== ffpp.sh: extract ffpp" in output
    rows = table(data, "in-dataset", "in-dataset")
    percent(rows[("RECCE",)]["c23 AUC"])
    config = json.loads((data["work"] / "ffpp-c23" / "det" / "recce" / "manifest.json").read_text())["config"]
    assert config["method"] == "recce" and config["options"]["width"] == 0.0625


def test_few_labels_chains_moco_teacher_student_and_the_baseline_into_its_table(data):
    # One fraction: the script's loop is the same for four, and each run costs a process.
    output = check(run_script("few_labels.sh", data, env={"FRACTIONS": "0.5"}))
    assert "== few_labels.sh: train-moco" in output
    rows = table(data, "few-labels", "few-labels")
    assert {row[0] for row in rows} == {"SCL-KD teacher", "SCL-KD", "Xception"}
    assert all(percent(cells["50 %"]) >= 0 for cells in rows.values())
    det = data["work"] / "ffpp-c23" / "det"
    labelled = [json.loads((det / f"{run}-f0.5" / "manifest.json").read_text())["extra"]["labels"]
                for run in ("sclkd-teacher", "sclkd", "xception")]
    labelled = [labels["video_ids"] for labels in labelled]
    assert labelled[0] == labelled[1] == labelled[2]  # one labelled subset for all three


def test_sclkd_trains_the_teacher_from_moco_and_the_student_from_the_teacher(data):
    # After few_labels.sh in the same work directory: its MoCo run is found, not trained again.
    moco = data["work"] / "ffpp-c23" / "moco" / "checkpoints" / "last.pt"
    trained = moco.stat().st_mtime_ns
    output = check(run_script("sclkd.sh", data))
    assert moco.stat().st_mtime_ns == trained and "== sclkd.sh: train-moco" in output
    det = data["work"] / "ffpp-c23" / "det"
    teacher, student = (json.loads((det / run / "manifest.json").read_text())
                        for run in ("sclkd-teacher", "sclkd"))
    assert teacher["config"]["parents"]["init"].endswith("ffpp-c23/moco")
    assert student["config"]["parents"]["teacher"].endswith("det/sclkd-teacher")
    assert teacher["extra"]["labels"]["fraction"] is None and student["extra"]["labels"]["fraction"] is None
    scores = data["work"] / "ffpp-c23" / "score"
    for run in ("sclkd-teacher", "sclkd"):
        metrics = json.loads((scores / run / "ffpp-c23" / "metrics.json").read_text())
        assert metrics["run"]["train"]["method"] == run
    assert (data["work"] / "reports" / "sclkd.md").is_file()


def test_the_scripts_learn_each_methods_parent_stages_and_baseline(tmp_path):
    # A method without a parent stage has two tabs in a row in `methods --tsv` (the rows
    # test_methods.py checks, printed here by a stand-in): its baseline must stay its baseline,
    # or ablation.sh would train no Xception beside RECCE, RLGC or CRL.
    rows = "crl\\t\\txception\\nlrerr\\ttrain-mae\\txception\\nxception\\t\\t\\n"
    (tmp_path / "lrerr-tools").write_text(f"#!/bin/sh\nprintf '{rows}'\n")
    (tmp_path / "lrerr-tools").chmod(0o755)
    snippet = ('SCRIPT=test; source "$1"; methods crl lrerr xception; '
               'for m in "${DETECTORS[@]}"; do echo "$m:${NEEDS[$m]}:${BASELINE[$m]}"; done')
    environ = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", "-c", snippet, "test", str(SCRIPTS / "lib.sh")], capture_output=True,
                            text=True, env=environ, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["crl::xception", "lrerr:train-mae:xception", "xception::"]


def test_an_unknown_method_stops_the_script_before_any_work(data, tmp_path):
    result = run_script("ffpp.sh", {**data, "work": tmp_path / "work"}, "--method", "lrerr,resnet")
    assert result.returncode == 2
    assert f"error: --method must be one of {', '.join(all_methods())} (got 'resnet')" in result.stderr
    assert not (tmp_path / "work").exists()


def plan(data: dict, script: str, tmp_path: Path) -> list[list[str]]:
    """The stage commands `script --dry-run` prints, each split into its words; it must write nothing."""
    work = tmp_path / "planned"
    output = check(run_script(script, {**data, "work": work}, "--dry-run"))
    assert not work.exists()
    return [shlex.split(line) for line in output.splitlines() if line.startswith("lrerr-tools ")]


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def trained_and_scored(commands: list[list[str]]) -> list[tuple[str, str, str]]:
    """(run, its --methods or '', the test shards) of each detector, in the order trained and scored."""
    trained = {Path(option(c, "--out")).name: option(c, "--methods") if "--methods" in c else ""
               for c in commands if c[1] == "train-det"}
    return [(Path(option(c, "--detector")).name, trained[Path(option(c, "--detector")).name],
             Path(c[2]).parent.name) for c in commands if c[1] == "score"]


def test_cross_manip_trains_and_scores_one_detector_per_method(data, tmp_path):
    commands = plan(data, "cross_manip.sh", tmp_path)
    methods = ["Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures"]
    assert trained_and_scored(commands) == [(f"lrerr-{m}", m, "ffpp-c23") for m in methods]
    assert [c[1] for c in commands].index("train-mae") < [c[1] for c in commands].index("train-det")
    report = commands[-1]
    assert report[1] == "report" and option(report, "--out").endswith("reports/cross-manipulation.md")
    assert [Path(d).parent.name for d in report[2:report.index("--out")]] == [f"lrerr-{m}" for m in methods]


def test_gid_leaves_each_target_method_out_of_training(data, tmp_path):
    commands = plan(data, "gid.sh", tmp_path)
    assert trained_and_scored(commands) == [
        ("lrerr-gid-Deepfakes", "Face2Face,FaceSwap,NeuralTextures", "ffpp-c23"),
        ("lrerr-gid-Face2Face", "Deepfakes,FaceSwap,NeuralTextures", "ffpp-c23")]
    assert option(commands[-1], "--out").endswith("reports/leave-one-out.md")


def test_cross_dataset_fills_table_four_and_reuses_the_ffpp_detector(data):
    detector = data["work"] / "ffpp-c23" / "det" / "lrerr"
    trained = (detector / "checkpoints" / "best.pt").stat().st_mtime_ns
    check(run_script("cross_dataset.sh", data))
    assert (detector / "checkpoints" / "best.pt").stat().st_mtime_ns == trained
    cells = table(data, "cross-dataset", "cross-dataset")[("LRErr", "c23")]
    assert [percent(cells[c]) for c in ("FF++", "Celeb-DF-v2", "DFD")]
    # Only Celeb-DF-v2's listed test videos are extracted.
    records = (data["work"] / "celebdf" / "extract" / "records.jsonl").read_text().splitlines()
    assert {json.loads(r)["split"] for r in records} == {"test"}


def test_ablation_trains_the_baseline_beside_the_method_on_every_test_set(data, tmp_path):
    commands = plan(data, "ablation.sh", tmp_path)
    tests = ["ffpp-c23", "celebdf", "dfd-c23"]
    assert trained_and_scored(commands) == [(run, "", t) for run in ("xception", "lrerr") for t in tests]
    report = commands[-1]
    assert option(report, "--out").endswith("reports/ablation.md")
    assert len(report[2:report.index("--out")]) == 6


@pytest.fixture(scope="module")
def compare_plan(data, tmp_path_factory):
    """What compare.sh would run by default (every registered method), and the work directory
    it was planned in."""
    tmp_path = tmp_path_factory.mktemp("compare")
    return plan(data, "compare.sh", tmp_path), tmp_path / "planned"


def test_compare_trains_every_method_after_its_parent_runs_and_scores_it_everywhere(compare_plan):
    commands, _ = compare_plan
    tests = ["ffpp-c23", "celebdf", "dfd-c23"]
    order = [Path(option(c, "--out")).name for c in commands if c[1].startswith("train-")]
    assert sorted(order) == sorted([*all_methods(), "mae", "moco"])
    assert order.index("mae") < order.index("lrerr") and order.index("moco") < order.index("sclkd-teacher")
    assert order.index("sclkd-teacher") < order.index("sclkd")
    student = next(c for c in commands if c[1] == "train-det" and Path(option(c, "--out")).name == "sclkd")
    assert Path(option(student, "--teacher")).name == "sclkd-teacher"
    assert sorted(trained_and_scored(commands)) == sorted((m, "", t) for m in all_methods() for t in tests)
    report = commands[-1]
    assert report[1] == "report" and report[-1] == "--html" and option(report, "--out").endswith("compare.md")


def test_compare_reports_each_method_on_every_test_set_with_intervals_and_the_html_page(data, compare_plan):
    """The planned report, run for real on the scores of it that exist: LRErr's, which ffpp.sh
    and cross_dataset.sh finished in the shared work directory. (Training every method, even
    tiny, would take ten minutes; re-entering the finished stages of two, 2 min.)"""
    commands, planned = compare_plan
    report = commands[-1]
    scores = [data["work"] / Path(d).relative_to(planned) for d in report[2:report.index("--out")]]
    scores = [d for d in scores if d.parent.name == "lrerr"]
    out = data["work"] / "reports" / "compare.md"
    assert len(scores) == 3
    check(subprocess.run([sys.executable, "-m", "lrerr_tools", "report", *map(str, scores), "--out", str(out),
                          *report[report.index("--out") + 2:]], capture_output=True, text=True, timeout=300))
    rows = table(data, "compare", "cross-dataset")
    assert list(rows) == [("LRErr", "c23")]
    interval = r"\d+\.\d\d \[\d+\.\d\d, \d+\.\d\d\]"
    assert re.search(rf"\| LRErr \| c23 \| {interval} \| {interval} \| {interval} \|", out.read_text())
    page = read_page(out.with_suffix(".html"))
    check_self_contained(page)
    for cells in markdown_tables(out):
        assert cells in page.tables
    curves = [image["alt"].split(";")[0] for image in page.images if image["alt"].startswith("ROC and PR")]
    assert curves == ["ROC and PR curves, tested on ffpp c23 [DF, F2F, FS, NT] (test split)",
                      "ROC and PR curves, tested on celebdf [Celeb-synthesis] (test split)",
                      "ROC and PR curves, tested on dfd c23 [DeepFakeDetection] (test split)"]


def test_slurm_array_parts_merge_to_what_the_scripts_extract(data):
    """Three array tasks and the final job give the same records and config as the single
    extract ffpp.sh ran, so the protocol scripts take the result as their own."""
    work = data["root"] / "slurm-work"
    env = {"PATH": f"{REPO / 'tests' / 'fake_slurm'}{os.pathsep}{os.environ['PATH']}",
           "FAKE_SBATCH_LOG": str(data["root"] / "sbatch.log")}
    output = check(run_script("slurm_extract.sh", {**data, "work": work}, "--dataset", "ffpp", "--parts", "3",
                              env=env))
    assert "submitted: array job 1 (3 extract parts), then job 2 (merge, landmarks, shard)" in output
    calls = [json.loads(line) for line in (data["root"] / "sbatch.log").read_text().splitlines()]
    assert calls[0]["--array"] == "1-3" and calls[1]["--dependency"] == "afterok:1"
    single, merged = (w / "ffpp-c23" / "extract" for w in (data["work"], work))
    assert (merged / "records.jsonl").read_bytes() == (single / "records.jsonl").read_bytes()
    manifests = [json.loads((d / "manifest.json").read_text()) for d in (single, merged)]
    assert manifests[0]["config"] == manifests[1]["config"] and manifests[1]["complete"]
    assert (work / "ffpp-c23" / "shards" / "manifest.json").is_file()


@pytest.mark.parametrize("args, message", [
    (["--comp", "c99"], "--comp must be c23 or c40 (got 'c99')"),
    (["--bogus"], "unknown argument '--bogus' (see --help)"),
    (["--profile", "huge"], "--profile must be paper or tiny (got 'huge')"),
])
def test_bad_arguments_are_one_line_errors(data, args, message):
    result = run_script("gid.sh", data, *args)
    assert result.returncode == 2 and result.stderr.strip() == f"gid.sh: {message}"


def test_a_missing_dataset_root_is_named(data, tmp_path):
    result = run_script("cross_dataset.sh", {**data, "celebdf": tmp_path / "nowhere"})
    assert result.returncode == 2
    missing = tmp_path / "nowhere"
    assert result.stderr.strip() == (f"cross_dataset.sh: --celebdf {missing}: not a directory "
                                     "(the Celeb-DF-v2 root)")


def test_slurm_without_sbatch_says_where_to_run_it(data, tmp_path):
    work = tmp_path / "work"
    result = run_script("slurm_extract.sh", {**data, "work": work}, "--dataset", "ffpp", "--parts", "2",
                        env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert result.stderr.strip().startswith("slurm_extract.sh: sbatch not found: run this on a Slurm login")
    assert not work.exists()


def test_an_interrupted_stage_says_rerun_to_resume(data, tmp_path):
    # A stage killed by Ctrl-C or SIGTERM (exit 130 or 143) may print nothing: no "error above".
    fake = tmp_path / "bin"
    fake.mkdir()
    # It answers the scripts' question about the methods, and is interrupted at every stage.
    answer = '[ "$1" = methods ] && printf "lrerr\\ttrain-mae\\t\\n" && exit 0'
    (fake / "lrerr-tools").write_text(f"#!/bin/sh\n{answer}\nexit 130\n")
    (fake / "lrerr-tools").chmod(0o755)
    command = ["bash", str(SCRIPTS / "ffpp.sh"), "--ffpp", str(data["ffpp"]), "--work", str(tmp_path / "w")]
    env = {**os.environ, "PATH": f"{fake}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 130
    assert result.stderr.splitlines()[-1] == ("ffpp.sh: interrupted at 'extract ffpp'. Rerun the same "
                                              "command to resume: finished stages are skipped.")


def test_cross_dataset_checks_every_dataset_before_any_work(data, tmp_path):
    no_list = tmp_path / "celebdf"
    no_list.mkdir()  # a Celeb-DF-v2 root without List_of_testing_videos.txt
    work = tmp_path / "work"
    result = run_script("cross_dataset.sh", {**data, "celebdf": no_list, "work": work})
    assert result.returncode == 2
    assert "error: Celeb-DF test list not found" in result.stderr
    assert "cross_dataset.sh: stopped at 'check celebdf' (exit 2)" in result.stderr
    assert not (work / "ffpp-c23").exists()


def test_a_celebdf_test_list_kept_elsewhere_is_passed_with_celebdf_list(data, tmp_path):
    celebdf = tmp_path / "celebdf"
    shutil.copytree(data["celebdf"], celebdf, ignore=shutil.ignore_patterns("List_of_testing_videos.txt"))
    no_dfd = tmp_path / "no-dfd"
    no_dfd.mkdir()  # so the script stops at the next check, before any work
    test_list = data["celebdf"] / "List_of_testing_videos.txt"
    result = run_script("cross_dataset.sh", {**data, "celebdf": celebdf, "work": tmp_path / "work"},
                        "--celebdf-list", str(test_list), "--dfd", str(no_dfd))
    assert "== cross_dataset.sh: check celebdf" in result.stderr
    assert "cross_dataset.sh: stopped at 'check dfd' (exit 2)" in result.stderr, result.stderr


@pytest.mark.parametrize("setting, message", [
    ({"FRAMES": "abc"}, "FRAMES must be a positive whole number (got 'abc')"),
    ({"JOBS": "-3"}, "JOBS must be a whole number, 0 or more (got '-3')"),
    ({"PRETRAINED": "yes"}, "PRETRAINED must be 0 or 1 (got 'yes')"),
])
def test_bad_settings_stop_the_script_before_any_work(data, tmp_path, setting, message):
    result = run_script("ffpp.sh", {**data, "work": tmp_path / "work"}, env=setting)
    assert result.returncode == 2 and result.stderr.strip() == f"ffpp.sh: {message}"
    assert not (tmp_path / "work").exists()


def test_few_labels_refuses_a_bad_fraction_before_any_work(data, tmp_path):
    result = run_script("few_labels.sh", {**data, "work": tmp_path / "work"}, env={"FRACTIONS": "0.05,1.5"})
    assert result.returncode == 2
    assert result.stderr.strip() == "few_labels.sh: FRACTIONS: '1.5' is not a fraction in (0, 1]"
    assert not (tmp_path / "work").exists()
