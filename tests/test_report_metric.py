"""``fedlr report --metric`` and ``--study``: which metric a report uses and why, the majority
baseline and 95 % intervals in ``table.csv`` (checked against the ledgers with scipy), its
leading columns, one row per (corpus, method, ε, …) group, and runs from before the metrics."""

import csv
import json
import math
import statistics

import pytest
import scipy.stats
from PIL import Image

from fedlr.cli import main
from fedlr.config import experiment_from_dict
from fedlr.results import LedgerRow, RunDir
from fedlr.results.plots import PIXELS
from fedlr.results.report import ReportError, build_report, write_report
from fedlr.results.stats import wilson_interval

LEADING = ["study", "corpus", "method", "epsilon", "codec", "n_seeds", "metric", "mean", "ci95", "majority",
           "bytes_total"]
SPAM, REVIEWS = [870, 130], [500, 500]  # test-set class counts: SMS spam's imbalance, balanced reviews


def scored_run(root, name, *, dataset="sms_spam", method="fedit", seed=0, epsilon=None, support=SPAM, lr=None,
               score=0.8, up=1000, legacy=False):
    """A complete run whose evaluations have every metric (or, ``legacy``, only accuracy), its
    figures drifting with ``score`` and ``seed``."""
    data = {"seed": seed, "data": {"dataset": dataset}, "method": {"name": method, "init": "random"},
            "output": {"dir": str(root), "name": name, "export_peft": False}}
    if epsilon is not None:
        data["privacy"] = {"mode": "sample", "target_epsilon": epsilon}
    if lr is not None:
        data["train"] = {"lr": lr}
    run = RunDir.create(experiment_from_dict(data), name)
    for rnd in range(3):
        s = score * rnd / 2 + 0.5 * (1 - rnd / 2) + 0.013 * seed
        metrics = {} if legacy else dict(eval_balanced_accuracy=s - 0.05, eval_macro_f1=s - 0.1, eval_roc_auc=s + 0.05,
                                         eval_class_support=support, eval_class_predicted=support)
        run.append(LedgerRow(round=rnd, clients_sampled=[0, 1], eval_loss=0.5, eval_accuracy=s, uplink_bytes=up * rnd,
                             downlink_bytes=up // 2 * rnd, **metrics))
    summary = {"epsilon": epsilon * 0.99, "delta": 1e-5} if epsilon is not None and math.isfinite(epsilon) else {}
    run.write_summary({"method": method, "wall_time_s": 1.0, **summary})
    return run.path


def ledger(path):
    return [json.loads(line) for line in (path / "ledger.jsonl").read_text().splitlines()]


@pytest.fixture
def study(tmp_path):
    """Two corpora × two methods × ε ∈ {3, ∞} × three seeds, and one single-seed group."""
    root = tmp_path / "privacy_study"
    for dataset, support in (("sms_spam", SPAM), ("rotten_tomatoes", REVIEWS)):
        for method, score in (("fedit", 0.8), ("ffa_lora", 0.9)):
            for eps in (3.0, math.inf):
                for seed in (0, 1, 2):
                    scored_run(root, f"{dataset}__{method}__eps-{eps}__seed-{seed}", dataset=dataset, method=method,
                               seed=seed, epsilon=eps, support=support, score=score - (0.1 if eps == 3 else 0))
    scored_run(root, "single", dataset="sms_spam", method="fedit", epsilon=3.0, lr=0.05, score=0.7)
    return root


def test_the_metric_is_chosen_from_the_test_sets_balance_and_said(study, tmp_path):
    report = build_report(study)
    assert report.metric == "balanced_accuracy" and "87.0%" in report.metric_reason
    balanced = tmp_path / "reviews"
    for seed in (0, 1):
        scored_run(balanced, f"s{seed}", dataset="rotten_tomatoes", seed=seed, support=REVIEWS)
    report = build_report(balanced)
    assert report.metric == "accuracy" and "50.0%" in report.metric_reason
    assert build_report(balanced, metric="roc_auc").metric_reason == "asked for with --metric"
    scored_run(balanced, "skewed", dataset="rotten_tomatoes", support=[60, 40])  # share 0.6: imbalanced
    assert build_report(balanced).metric == "balanced_accuracy"


def test_a_bad_metric_is_one_line_naming_the_valid_ones(study, capsys):
    assert main(["report", str(study), "--metric", "f1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["fedlr: error: --metric 'f1': not a metric; choose one of accuracy, balanced_accuracy, "
                   "macro_f1, roc_auc"]
    assert not (study / "report").exists()


def test_runs_from_before_the_metrics_report_accuracy_only(tmp_path, capsys):
    for seed in (0, 1):
        scored_run(tmp_path, f"old{seed}", seed=seed, legacy=True)
    report = build_report(tmp_path)
    assert report.metric == "accuracy" and "predate" in report.metric_reason
    with pytest.raises(ReportError, match="recorded before fedlr recorded balanced accuracy"):
        build_report(tmp_path, metric="macro_f1")
    assert main(["report", str(tmp_path), "--metric", "balanced_accuracy"]) == 2
    assert "--metric accuracy" in capsys.readouterr().err
    table = list(csv.DictReader(write_report(tmp_path)["table_csv"].open()))
    assert table[0]["majority"] == "" and table[0]["metric"] == "accuracy"  # no class counts recorded


def test_table_csv_columns_intervals_and_baselines_match_the_ledgers(study, capsys):
    assert main(["report", str(study), "--study", "privacy", "--out", str(study / "out")]) == 0
    assert "metric: balanced_accuracy (imbalanced test set" in capsys.readouterr().out
    page = (study / "out" / "report.html").read_text()
    assert "Metric: <b>balanced_accuracy</b> (imbalanced test set: its majority class is 87.0%" in page
    assert page.count('src="data:image/png;base64,') == 3
    with (study / "out" / "table.csv").open() as f:
        header = next(csv.reader(f))
    assert header[:len(LEADING)] == LEADING and header[len(LEADING)] == "train.lr"  # the one other varying field
    rows = list(csv.DictReader((study / "out" / "table.csv").open()))
    assert len(rows) == 2 * 2 * 2 + 1  # one per (corpus, method, ε) and the single-seed lr group
    assert {r["study"] for r in rows} == {"privacy"} and {r["metric"] for r in rows} == {"balanced_accuracy"}
    assert {r["epsilon"] for r in rows} == {"3.0", "inf"} and {r["codec"] for r in rows} == {"none"}
    for r in rows:
        if r["n_seeds"] == "1":
            continue
        runs = [study / name for name in r["runs"].split()]
        assert r["n_seeds"] == "3" and {p.name.split("__")[0] for p in runs} == {r["corpus"]}
        finals = [ledger(p)[-1]["eval_balanced_accuracy"] for p in runs]
        low, high = scipy.stats.t.interval(0.95, 2, loc=statistics.fmean(finals), scale=scipy.stats.sem(finals))
        assert float(r["mean"]) == pytest.approx(statistics.fmean(finals))
        assert float(r["ci95"]) == pytest.approx((high - low) / 2) and r["interval"] == "t"
        assert float(r["majority"]) == 0.5  # always "ham" (or "negative"): recall 1 and 0, on two classes
        totals = [sum(x["uplink_bytes"] + x["downlink_bytes"] for x in ledger(p)) for p in runs]
        assert float(r["bytes_total"]) == pytest.approx(statistics.fmean(totals))
    # ROC AUC's baseline is 0.5, accuracy's the majority share of each corpus
    write_report(study, out=study / "acc", metric="accuracy", figures=False, html=False)
    rows = list(csv.DictReader((study / "acc" / "table.csv").open()))
    assert {(r["corpus"], float(r["majority"])) for r in rows} == {("sms_spam", 0.87), ("rotten_tomatoes", 0.5)}
    assert [r["study"] for r in rows][0] == "privacy_study"  # the folder's name without --study


def test_one_seed_gets_the_wilson_interval_for_accuracy_and_none_for_other_metrics(study):
    single = [study / "single"]
    for metric in ("accuracy", "roc_auc"):
        paths = write_report(study, out=study / metric, metric=metric, html=False)
        row = [r for r in csv.DictReader(paths["table_csv"].open()) if r["train.lr"] == "0.05"][0]
        value = ledger(single[0])[-1][f"eval_{metric}"]
        assert row["n_seeds"] == "1" and float(row["mean"]) == pytest.approx(value)
        md = [line for line in paths["table_md"].read_text().splitlines() if "| 0.05 |" in line][0]
        if metric == "accuracy":
            low, high = wilson_interval(value, sum(SPAM))
            assert (float(row["ci_low"]), float(row["ci_high"])) == pytest.approx((low, high))
            assert float(row["ci95"]) == pytest.approx(max(value - low, high - value)) and row["interval"] == "wilson"
            assert f"[{low:.4f}, {high:.4f}] (n=1, Wilson)" in md
        else:
            assert row["ci95"] == row["ci_low"] == row["interval"] == "" and "(n=1, no interval)" in md
            assert float(row["majority"]) == 0.5
        for name in (f"{metric}_vs_bytes.png", f"{metric}_vs_epsilon.png", f"{metric}_per_round.png"):
            with Image.open(study / metric / name) as img:
                assert img.size == PIXELS


def test_a_run_without_privacy_has_no_epsilon(tmp_path):
    scored_run(tmp_path / "np", "a")
    scored_run(tmp_path / "np", "b", epsilon=8.0, seed=1)
    rows = list(csv.DictReader(write_report(tmp_path / "np", html=False, figures=False)["table_csv"].open()))
    assert sorted(r["epsilon"] for r in rows) == ["", "8.0"]
    assert all(r["ci95"] == "" for r in rows)  # one seed each, balanced accuracy: no interval
