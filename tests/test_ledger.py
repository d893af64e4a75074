"""The ledger file: one writer, one reader, one rule for a damaged file (a torn last line is
dropped, anything else is an error that leaves the file as it is), and ``fedlr run --resume`` of a
garbled ledger exits 2 with one line and loses nothing."""

from __future__ import annotations

import json

import pytest

from fedlr import checkpoint
from fedlr.cli import main
from fedlr.config import load_experiment
from fedlr.results import LedgerError, LedgerRow, RunDir, read_ledger
from fedlr.results.ledger import write_ledger


def rows(n: int) -> list[LedgerRow]:
    return [LedgerRow(round=r, clients_sampled=[r, r + 1], clients_replied=2, eval_accuracy=0.5 + r / 10,
                      epsilon=0.1 * r, delta=1e-5, client_epsilon={str(r): 0.1 * r}, wall_time_s=1.25 * r,
                      failures=[{"partition": r, "kind": "timeout", "reason": "late"}]) for r in range(n)]


def test_rows_round_trip_byte_for_byte(tmp_path):
    rd = RunDir(tmp_path)
    for row in rows(3):
        rd.append(row)
    written = rd.ledger_path.read_bytes()
    # the format the server always wrote: one json.dumps(row, sort_keys=True) per line
    assert written == b"".join(json.dumps(r.to_dict(), sort_keys=True).encode() + b"\n" for r in rows(3))
    assert rd.ledger() == rows(3)
    write_ledger(rd.ledger_path, rd.ledger())
    assert rd.ledger_path.read_bytes() == written


def test_a_torn_last_line_is_the_only_thing_dropped(tmp_path):
    rd = RunDir(tmp_path)
    for row in rows(3):
        rd.append(row)
    intact = rd.ledger_path.read_text()
    with rd.ledger_path.open("a") as f:
        f.write(rows(4)[3].to_json()[:25])  # killed mid-write: no newline
    assert read_ledger(rd.ledger_path) == rows(3)
    assert rd.truncate_ledger(5) == rows(3)
    assert rd.ledger_path.read_text() == intact  # the rewrite keeps every complete row


@pytest.mark.parametrize("damage, line", [
    (lambda lines: [lines[0], "{not json", *lines[1:]], 2),  # a bad line in the middle
    (lambda lines: [*lines, "{not json"], 4),  # a bad LAST line that ends in a newline was not torn
    (lambda lines: [lines[0], '{"round": 1, "clients_sampled": [], "bogus": 1}', lines[2]], 2),  # not a row
    (lambda lines: [lines[0], "[1, 2]", lines[2]], 2),
    (lambda lines: [lines[0], '{"clients_sampled": []}', lines[2]], 2),
])
def test_a_garbled_ledger_is_an_error_naming_the_line_and_stays_as_it_is(tmp_path, damage, line):
    rd = RunDir(tmp_path)
    for row in rows(3):
        rd.append(row)
    text = "\n".join(damage(rd.ledger_path.read_text().splitlines())) + "\n"
    rd.ledger_path.write_text(text)
    with pytest.raises(LedgerError, match=f"ledger.jsonl:{line}: not a ledger row"):
        rd.ledger()
    with pytest.raises(LedgerError):
        rd.truncate_ledger(1)
    assert rd.ledger_path.read_text() == text  # never rewritten from what could not be read


def test_resume_of_a_garbled_ledger_exits_2_in_one_line_and_loses_nothing(tmp_path, tiny_path, capsys):
    exp = load_experiment(tiny_path, [f'output.dir="{tmp_path}"', 'output.name="run"'])
    rd = RunDir.create(exp, "run")
    for row in rows(3):
        rd.append(row)
    checkpoint.save(rd.checkpoint_dir, 2, {"round": 2})
    garbled = rd.ledger_path.read_text().replace('"round": 1,', '"round": 1', 1)
    rd.ledger_path.write_text(garbled)
    assert main(["run", "--resume", str(rd.path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ledger.jsonl:2: not a ledger row" in err, err
    assert "Traceback" not in err
    assert rd.ledger_path.read_text() == garbled
