"""``fedlr report``: numbers from the ledgers, grouping over seeds, figures drawn headless at the
expected size, a self-contained HTML page checked in headless Chromium, and the progress console."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from fedlr.cli import main
from fedlr.config import experiment_from_dict
from fedlr.results import LedgerRow, RunDir
from fedlr.results.console import Console, eta_seconds, format_duration
from fedlr.results.plots import PIXELS
from fedlr.results.report import ReportError, build_report, run_row, varying_fields, write_report

MIB = 2**20


def make_run(root: Path, name: str, method="fedit", rank=4, seed=0, accs=(0.5, 0.6, 0.7), up=1000, down=500,
             summary_extra: dict | None = None, lr: float | None = None, complete=True) -> Path:
    """A run directory as the simulation leaves it: config.toml, ledger rows, summary.json."""
    data = {"seed": seed, "method": {"name": method, "rank": rank},
            "output": {"dir": str(root), "name": name, "export_peft": False}}
    if lr is not None:
        data["train"] = {"lr": lr}
    exp = experiment_from_dict(data)
    run = RunDir.create(exp, name)
    cum_up = cum_down = 0
    for rnd, acc in enumerate(accs):
        u, d = (up * rnd, down * rnd)
        cum_up, cum_down = cum_up + u, cum_down + d
        run.append(LedgerRow(round=rnd, clients_sampled=[0, 1], clients_replied=2, eval_loss=0.6, eval_accuracy=acc,
                             uplink_bytes=u, downlink_bytes=d, cumulative_uplink_bytes=cum_up,
                             cumulative_downlink_bytes=cum_down, cumulative_bytes=cum_up + cum_down,
                             wall_time_s=1.0 + rnd))
    if complete:
        evaluated = [a for a in accs if a is not None]
        run.write_summary({"method": method, "rank": rank, "final_accuracy": accs[-1],
                           "best_accuracy": max(evaluated, default=None),
                           "uplink_bytes": cum_up, "downlink_bytes": cum_down, "total_bytes": cum_up + cum_down,
                           "wall_time_s": 10.0 + seed, "run_dir": str(run.path), **(summary_extra or {})})
    return run.path


@pytest.fixture
def study(tmp_path) -> Path:
    """Two methods x two ε x two seeds, made by hand, ε as a finished private run reports it. Until
    the privacy section exists, ``train.lr`` stands in for the config field that sets ε."""
    root = tmp_path / "study"
    for method, base in (("fedit", 0.6), ("fed_sb", 0.7)):
        for eps in (1.0, 8.0):
            for seed in (0, 1):
                accs = (0.5, base + 0.01 * eps, base + 0.02 * eps + 0.01 * seed)
                make_run(root, f"{method}__eps-{eps:g}__seed-{seed}", method=method, seed=seed, accs=accs,
                         up=2000 if method == "fedit" else 500, down=1000, lr=eps * 1e-3,
                         summary_extra={"epsilon": eps + 0.001 * seed, "delta": 1e-5})
    return root


def test_rows_come_from_the_ledger_and_privacy_from_the_summary(tmp_path):
    path = make_run(tmp_path, "r", accs=(0.5, 0.9, 0.7), up=100, down=40, summary_extra={"epsilon": 2.5, "delta": 1e-5})
    # make the summary disagree with its ledger: the report must follow the ledger
    summary = json.loads((path / "summary.json").read_text())
    summary.update(final_accuracy=0.0, best_accuracy=0.0, uplink_bytes=1)
    ledger = [LedgerRow.from_dict(json.loads(x)) for x in (path / "ledger.jsonl").read_text().splitlines()]
    config = {"seed": 0, "method": {"name": "fedit", "rank": 4}}
    row = run_row(config, summary, ledger)
    assert row["final_accuracy"] == 0.7 and row["best_accuracy"] == 0.9
    assert row["uplink_bytes"] == 100 + 200 and row["downlink_bytes"] == 40 + 80 and row["total_bytes"] == 420
    assert row["epsilon"] == 2.5 and row["delta"] == 1e-5 and row["wall_time_s"] == 10.0
    assert row["codec"] == "none" and row["rank"] == 4 and row["rounds"] == 2
    # codec from config when the compression section exists; ε from the ledger when only it has one
    ledger[-1].epsilon = 3.0
    row = run_row({**config, "compression": {"codec": "int8"}}, {}, ledger)
    assert row["codec"] == "int8" and row["epsilon"] == 3.0 and row["delta"] is None
    assert run_row({"method": {"name": "full_ft", "rank": 16}}, {}, ledger)["rank"] is None
    # the non-private column of a privacy study: target ε = ∞, no ε in summary or ledger
    ledger[-1].epsilon = None
    no_dp = run_row({**config, "privacy": {"mode": "sample", "target_epsilon": float("inf")}}, {"epsilon": None}, ledger)
    assert no_dp["epsilon"] == float("inf")


def test_groups_average_over_seeds_only(study):
    report = build_report(study)
    assert report.incomplete == [] and report.varying == ["method.name", "train.lr"]
    assert [(g.method, g.params["train.lr"], [r["seed"] for r in g.runs]) for g in report.groups] == [
        ("fed_sb", 0.001, [0, 1]), ("fed_sb", 0.008, [0, 1]), ("fedit", 0.001, [0, 1]), ("fedit", 0.008, [0, 1])]
    eps_mean, eps_std, n = report.groups[1].stats["epsilon"]
    assert eps_mean == pytest.approx(8.0005) and eps_std == pytest.approx(0.001 / 2**0.5) and n == 2
    final_mean, final_std, _ = report.groups[3].stats["final_accuracy"]  # fedit, ε 8: 0.76 and 0.77
    assert final_mean == pytest.approx(0.765) and final_std == pytest.approx(0.01 / 2**0.5)
    assert report.labels()[0] == "fed_sb r4 lr=0.001"
    assert varying_fields([{"seed": 0, "method": {"name": "a"}, "output": {"name": "x"}},
                           {"seed": 1, "method": {"name": "b"}, "output": {"name": "y"}}]) == ["method.name"]
    assert varying_fields([{"train": {"lr": 1}}, {"train": {"lr": 1}, "compression": {"codec": "fp16"}}]) == [
        "compression.codec"]
    # a run made before a section existed is that section at its defaults
    defaults = {"train.lr": 0.002, "privacy.mode": "none"}
    assert varying_fields([{"train": {"lr": 1}}, {"train": {"lr": 1}, "privacy": {"mode": "none"}}], defaults) == []
    assert varying_fields([{"train": {"lr": 1}}, {"train": {"lr": 1}, "privacy": {"mode": "sample"}}],
                          defaults) == ["privacy.mode"]


def test_extra_varying_fields_get_columns_and_labels(tmp_path):
    root = tmp_path / "lr"
    for lr in (0.001, 0.01):
        for seed in (0, 1, 2):
            make_run(root, f"lr-{lr}__seed-{seed}", lr=lr, seed=seed, accs=(0.5, 0.6 + lr + 0.01 * seed))
    make_run(root, "broken", lr=0.1, complete=False)
    paths = write_report(root)
    table = list(csv.DictReader(paths["table_csv"].open()))
    assert [(r["train.lr"], r["n_seeds"], r["seeds"]) for r in table] == [("0.001", "3", "0 1 2"), ("0.01", "3", "0 1 2")]
    assert float(table[1]["final_accuracy_mean"]) == pytest.approx(0.6 + 0.01 + 0.01)
    assert float(table[1]["final_accuracy_std"]) == pytest.approx(0.01)
    md = paths["table_md"].read_text()
    assert md.startswith("| train.lr | method | rank | codec | ε | δ | seeds | final accuracy |")
    report = build_report(root)
    assert report.incomplete == ["broken"]
    assert report.labels() == ["fedit r4 lr=0.001", "fedit r4 lr=0.01"]
    html = paths["html"].read_text()
    assert "Incomplete runs" in html and "broken" in html


def test_figures_are_png_of_the_expected_size(study):
    paths = write_report(study)
    for key in ("fig_bytes", "fig_epsilon", "fig_rounds"):
        path = paths[key]
        assert path.stat().st_size > 10_000, key
        with Image.open(path) as img:
            assert img.format == "PNG" and img.size == PIXELS == (800, 500)
            colors = img.convert("RGB").getcolors(maxcolors=1_000_000)
            assert len(colors) > 50, f"{key} looks blank"


def test_figures_without_epsilon_or_evaluation_still_draw(tmp_path):
    make_run(tmp_path, "a", accs=(None, None))
    paths = write_report(tmp_path)
    for key in ("fig_bytes", "fig_epsilon", "fig_rounds"):
        with Image.open(paths[key]) as img:
            assert img.size == PIXELS


def test_report_errors(tmp_path, capsys):
    with pytest.raises(ReportError, match="not a directory"):
        build_report(tmp_path / "missing")
    with pytest.raises(ReportError, match="no run directories"):
        build_report(tmp_path)
    make_run(tmp_path, "only", complete=False)
    with pytest.raises(ReportError, match="none complete"):
        build_report(tmp_path)
    assert main(["report", str(tmp_path)]) == 2
    assert "none complete" in capsys.readouterr().err


def test_html_is_self_contained(study):
    paths = write_report(study)
    html = paths["html"].read_text()
    assert html.count('src="data:image/png;base64,') == 3
    assert not re.search(r'(src|href)="(?!data:)', html)  # nothing fetched from anywhere
    assert "<script" not in html
    assert "fed_sb" in html and "±" in html


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


PROBE = """<script>
window.addEventListener("load", () => {
  const p = document.createElement("pre");
  p.id = "fedlr-probe";
  p.textContent = JSON.stringify([...document.images].map(i => [i.complete, i.naturalWidth, i.naturalHeight]));
  document.body.appendChild(p);
});
</script>"""


def test_page_loads_and_shows_its_images_in_headless_chromium(study, tmp_path):
    browser = _chromium()
    if browser is None and os.environ.get("FEDLR_NO_BROWSER"):  # scripts/test.sh tried to install it and says why not
        pytest.skip(os.environ["FEDLR_NO_BROWSER"])
    assert browser is not None, "this test needs Chromium (Debian: apt-get install chromium; scripts/test.sh does)"
    page = write_report(study)["html"]
    probed = tmp_path / "probed.html"  # the report plus a script that writes each image's decoded size
    probed.write_text(page.read_text().replace("</body>", PROBE + "\n</body>"))
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'chromium-profile'}", "--dump-dom", probed.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = re.search(r'<pre id="fedlr-probe">(.*?)</pre>', proc.stdout)
    assert found, f"the page did not finish loading:\n{proc.stdout[:2000]}\n{proc.stderr[-2000:]}"
    images = json.loads(found.group(1))
    assert len(images) == 3
    assert all(complete and (w, h) == PIXELS for complete, w, h in images), images
    assert "<table>" in proc.stdout and "fedit" in proc.stdout


# ----------------------------------------------------------------------------- console
ROW = LedgerRow(round=1, clients_sampled=[0, 1], clients_replied=2, train_loss=0.69, eval_loss=0.7, eval_accuracy=0.5,
                uplink_bytes=MIB, downlink_bytes=MIB // 2, cumulative_bytes=3 * MIB, wall_time_s=12.0)


def _rows():
    r0 = replace(ROW, round=0, train_loss=None, wall_time_s=10.0)
    return [r0, ROW, replace(ROW, round=2, wall_time_s=14.0, epsilon=1.234)]


def test_console_plain_log_lines_when_not_a_terminal():
    buf = io.StringIO()
    con = Console(stream=buf, total_rounds=4)
    assert con.tty is False
    con.header()
    for row in _rows():
        con.round(row)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 3  # no table header off a terminal
    assert re.fullmatch(r"\d\d:\d\d:\d\d fedlr round=0/4 clients=2/2 train_loss=- .* eta=\?", lines[0])
    assert "round=1/4" in lines[1] and "test_acc=0.5000" in lines[1] and "up_MB=1.000" in lines[1]
    assert "total_MB=3.000" in lines[1] and "eta=6s" in lines[1]  # round 1 took 2 s, 3 rounds left
    assert "eps=1.23" in lines[2] and "eta=4s" in lines[2]


def test_console_table_with_progress_columns_on_a_terminal():
    buf = io.StringIO()
    con = Console(stream=buf, tty=True)
    con.start(experiment_from_dict({"federation": {"num_rounds": 2}}))
    con.header()
    for row in _rows():
        con.round(row)
    lines = buf.getvalue().splitlines()
    assert lines[0].split() == ["round", "clients", "train_loss", "val_acc", "test_loss", "test_acc", "up_MB",
                                "down_MB", "total_MB", "time_s", "eps", "left", "ETA"]
    assert lines[2].split()[-3:] == ["-", "1/2", "2s"]
    assert lines[3].split()[-3:] == ["1.23", "2/2", "0s"]
    quiet = io.StringIO()
    Console(stream=quiet, quiet=True).round(ROW)
    assert quiet.getvalue() == ""


def test_duration_and_eta():
    assert [format_duration(s) for s in (None, 0, 42.4, 185, 3720)] == ["?", "0s", "42s", "3m05s", "1h02m"]
    assert eta_seconds([], 3) is None
    assert eta_seconds([10.0, 20.0], 2) == 30.0
    assert eta_seconds([10.0], 0) == 0.0


# ----------------------------------------------------------------------------- TensorBoard
def test_ledgers_export_to_tensorboard(study, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from fedlr.results.tensorboard import LedgerWriter, scalars_of

    assert main(["report", str(study), "--out", str(tmp_path / "out"), "--no-html", "--tensorboard"]) == 0
    run = "fedit__eps-8__seed-1"
    acc = EventAccumulator(str(tmp_path / "out" / "tensorboard" / run))
    acc.Reload()
    ledger = [json.loads(x) for x in (study / run / "ledger.jsonl").read_text().splitlines()]
    test_acc = acc.Scalars("accuracy/test")
    assert [e.step for e in test_acc] == [0, 1, 2]
    assert [e.value for e in test_acc] == pytest.approx([r["eval_accuracy"] for r in ledger])
    assert acc.Scalars("bytes/cumulative_MiB")[-1].value == pytest.approx(ledger[-1]["cumulative_bytes"] / MIB)
    assert "privacy/epsilon" not in acc.Tags()["scalars"]  # this ledger has no per-round ε
    assert scalars_of(LedgerRow(round=3, clients_sampled=[], epsilon=1.5))["privacy/epsilon"] == 1.5

    # live: a Console observer, as `fedlr sweep --tensorboard` wires it
    writer = LedgerWriter(tmp_path / "live")
    con = Console(stream=io.StringIO(), quiet=True, observers=[writer.write_row])
    for row in _rows():
        con.round(row)
    writer.close()
    live = EventAccumulator(str(tmp_path / "live"))
    live.Reload()
    assert [e.step for e in live.Scalars("accuracy/test")] == [0, 1, 2]
    assert [e.value for e in live.Scalars("privacy/epsilon")] == pytest.approx([1.234])


def test_non_private_reference_runs_show_epsilon_infinity(study):
    for seed in (0, 1):  # the ε = ∞ column of a privacy study: same method, no noise
        make_run(study, f"fedit__eps-inf__seed-{seed}", method="fedit", seed=seed, lr=0.05, accs=(0.5, 0.9),
                 summary_extra={"epsilon": float("inf"), "delta": 1e-5})
    report = build_report(study)
    inf_group = [g for g in report.groups if g.params["train.lr"] == 0.05][0]
    assert inf_group.stats["epsilon"][0] == float("inf") and inf_group.stats["epsilon"][1] is None
    paths = write_report(study)
    row = [line for line in paths["table_md"].read_text().splitlines() if line.startswith("| 0.05 |")][0]
    assert "| ∞ |" in row
    with Image.open(paths["fig_epsilon"]) as img:
        assert img.size == PIXELS


@pytest.mark.slow
def test_a_run_prints_each_warning_once(tmp_path, tiny_path):
    """A tiny run with a void δ and injected client failures, through the real CLI and Ray: the δ
    warning and each failed or rejected client are printed once, in fedlr's format, with no
    date-stamped copy (Opacus's root handler), no Flower echo of the client's exception and no
    third-party FutureWarning; the summary's wall time is the ledger's."""
    cmd = [sys.executable, "-m", "fedlr.cli", "run", str(tiny_path), "--set", f'output.dir="{tmp_path}"',
           "--set", 'output.name="w"', "--set", 'privacy.mode="sample"', "--set", "privacy.noise_multiplier=1.0",
           "--set", "privacy.delta=0.1", "--set", 'method.init="random"', "--set", "faults.fraction=0.5",
           "--set", 'faults.kinds=["raise", "garbage"]']
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert out.count("privacy.delta = 0.1 is larger than 1/n") == 1, out
    assert out.count("WARNING fedlr: privacy.delta") == 1
    assert not re.search(r"\d\d/\d\d/\d{4} \d\d:\d\d:\d\d:WARNING", out), out
    assert "FutureWarning" not in out and "An exception was raised when processing a message" not in out, out
    run = RunDir(tmp_path / "w")
    ledger = run.ledger()
    failures = [(row.round, f["partition"], f["kind"]) for row in ledger for f in row.failures]
    assert failures, "seed 0 with fraction 0.5 injects at least one failure"
    for rnd, pid, kind in failures:
        said = (f"round {rnd}: client {pid} failed" if kind != "rejected"
                else f"round {rnd}: rejected update from partition {pid}")
        assert out.count(said) == 1, (said, out)
    assert run.summary()["wall_time_s"] == ledger[-1].wall_time_s


def test_the_prefix_cache_knobs_do_not_split_groups():
    from fedlr.results.report import group_key

    plain = {"method": {"name": "fedit"}, "seed": 0}
    on_disk = {"method": {"name": "fedit"}, "seed": 1, "model": {"prefix_cache_dir": "runs/prefix-cache",
                                                                 "prefix_cache_bytes": 0}}
    other_rank = {"method": {"name": "fedit", "rank": 2}, "seed": 0}
    assert group_key(plain) == group_key(on_disk) != group_key(other_rank)


def test_a_failed_run_is_left_out_and_named(tmp_path):
    """A run in which no round aggregated writes a summary with an ``error`` and the untrained
    model's figures: counting it would pull its group's mean toward the untrained model."""
    root = tmp_path / "failed"
    for seed in (0, 1):
        make_run(root, f"seed-{seed}", seed=seed, accs=(0.5, 0.8))
    make_run(root, "seed-2", seed=2, accs=(0.5,),
             summary_extra={"error": "no round aggregated: in all 1 rounds fewer than 2 clients replied"})
    report = build_report(root)
    assert [r["run"] for g in report.groups for r in g.runs] == ["seed-0", "seed-1"]
    assert report.groups[0].final.mean == pytest.approx(0.8)
    assert report.incomplete == []
    assert report.failed == [("seed-2", "no round aggregated: in all 1 rounds fewer than 2 clients replied")]
    html = write_report(root)["html"].read_text()
    assert "Failed runs" in html and "seed-2" in html and "no round aggregated" in html
