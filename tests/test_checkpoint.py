"""Checkpoint files (atomic, digest-checked), client snapshots and the fault schedule: unit tests."""

import os

import pytest
import torch
from flwr.app import ConfigRecord, RecordDict

from fedlr import checkpoint
from fedlr.config import ConfigError, load_experiment
from fedlr.faults import InjectedFault, fault_for, fault_schedule, garbage, inject
from fedlr.results import LedgerRow, RunDir
from fedlr.run import client_snapshots
from fedlr.run.records import from_record, to_record
from fedlr.validation import expected_of, update_problem


def payload(r):
    return {"round": r, "state": {"w": torch.full((2, 3), float(r))}, "has_once": [1, 2], "acc": None}


def test_checkpoint_round_trips_and_keeps_the_newest(tmp_path):
    for r in range(5):
        checkpoint.save(tmp_path, r, payload(r), keep=2)
    assert checkpoint.rounds(tmp_path) == [3, 4]
    r, got = checkpoint.latest(tmp_path)
    assert r == 4 and torch.equal(got["state"]["w"], torch.full((2, 3), 4.0)) and got["has_once"] == [1, 2]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty", "garbage"])
def test_a_corrupt_newest_checkpoint_falls_back_to_the_one_before(tmp_path, damage, caplog):
    for r in range(3):
        checkpoint.save(tmp_path, r, payload(r), keep=3)
    path = checkpoint.path_for(tmp_path, 2)
    data = path.read_bytes()
    damaged = {"truncate": data[: len(data) // 2], "flip": data[:-10] + bytes([data[-10] ^ 1]) + data[-9:],
               "empty": b"", "garbage": os.urandom(300)}[damage]
    path.write_bytes(damaged)
    with pytest.raises(checkpoint.CorruptCheckpoint):
        checkpoint.load(tmp_path, 2)
    r, got = checkpoint.latest(tmp_path)
    assert r == 1 and got["round"] == 1
    assert "unusable" in caplog.text


def test_prune_and_discard(tmp_path):
    for r in (1, 3, 4, 7, 9):
        checkpoint.save(tmp_path, r, payload(r))
    checkpoint.prune(tmp_path, floor=5)  # a resume from round >= 5 needs round 4 and newer
    assert checkpoint.rounds(tmp_path) == [4, 7, 9]
    checkpoint.discard_after(tmp_path, 7)
    assert checkpoint.rounds(tmp_path) == [4, 7]
    assert checkpoint.latest(tmp_path, at_most=5)[0] == 4


def client_state(round_):
    state = RecordDict()
    state["fedlr.accountant"] = ConfigRecord({"accountant": "rdp", "noise_multiplier": [1.0], "sample_rate": [0.1],
                                              "steps": [round_ * 2]})
    state["fedlr.compression"] = to_record({"ef": torch.full((3,), float(round_))})
    state["fedlr"] = ConfigRecord({"experiment": "{}"})
    return state


def test_client_snapshot_restores_the_state_of_the_resumed_round(tmp_path):
    for r in (1, 3, 5):
        client_snapshots.save(tmp_path, 7, r, client_state(r), skip=("fedlr",), keep_from=None)
    fresh = RecordDict()
    assert client_snapshots.restore(tmp_path, 7, 4, fresh, "fedlr.accountant", keep_newest_accountant=False) == 3
    assert fresh["fedlr.accountant"]["steps"] == [6]
    assert torch.equal(from_record(fresh["fedlr.compression"])["ef"], torch.full((3,), 3.0))
    assert "fedlr" not in fresh  # the experiment is re-sent at enrollment, never snapshotted
    assert checkpoint.rounds(client_snapshots.folder_for(tmp_path, 7)) == [1, 3]  # round 5 is replayed


def test_secure_noise_keeps_the_newest_accountant_on_resume(tmp_path):
    """A replay with OS noise is a fresh release: the steps of the rolled-back round stay spent."""
    for r in (1, 3, 5):
        client_snapshots.save(tmp_path, 0, r, client_state(r), skip=("fedlr",), keep_from=None)
    fresh = RecordDict()
    client_snapshots.restore(tmp_path, 0, 4, fresh, "fedlr.accountant", keep_newest_accountant=True)
    assert fresh["fedlr.accountant"]["steps"] == [10]
    assert torch.equal(from_record(fresh["fedlr.compression"])["ef"], torch.full((3,), 3.0))


def test_a_corrupt_client_snapshot_is_refused_not_replaced_by_an_older_one(tmp_path):
    for r in (1, 3):
        client_snapshots.save(tmp_path, 0, r, client_state(r), skip=("fedlr",), keep_from=None)
    path = checkpoint.path_for(client_snapshots.folder_for(tmp_path, 0), 3)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(client_snapshots.SnapshotMissing, match="under-count"):
        client_snapshots.restore(tmp_path, 0, 3, RecordDict(), "fedlr.accountant", keep_newest_accountant=False)


def test_snapshots_are_pruned_to_what_a_resume_can_need(tmp_path):
    for r in (1, 2, 4, 6):
        client_snapshots.save(tmp_path, 0, r, client_state(r), skip=("fedlr",), keep_from=r - 2)
    assert checkpoint.rounds(client_snapshots.folder_for(tmp_path, 0)) == [4, 6]


def test_ledger_truncation_drops_replayed_rounds_and_a_torn_line(tmp_path):
    rd = RunDir(tmp_path)
    for r in range(4):
        rd.append(LedgerRow(round=r, clients_sampled=[r]))
    with rd.ledger_path.open("a") as f:
        f.write('{"round": 4, "x"')  # killed mid-write
    assert [row.round for row in rd.truncate_ledger(2)] == [0, 1, 2]
    assert [row.round for row in rd.truncate_ledger(2)] == [0, 1, 2]


def test_fault_schedule_is_seeded_and_hits_the_fraction(tiny_path):
    exp = load_experiment(tiny_path, ["faults.fraction=0.3"])
    draws = [fault_for(exp, r, pid) for r in range(1, 201) for pid in range(10)]
    assert draws == [fault_for(exp, r, pid) for r in range(1, 201) for pid in range(10)]
    failing = [d for d in draws if d is not None]
    assert 0.25 < len(failing) / len(draws) < 0.35
    assert {d: failing.count(d) for d in set(failing)}.keys() == {"raise", "hang", "garbage"}
    assert fault_schedule(load_experiment(tiny_path), 1, list(range(10))) == {}


def test_injected_faults_act_and_garbage_is_rejected(tiny_path):
    exp = load_experiment(tiny_path, ["faults.fraction=1.0", "faults.hang_s=0.01"])
    with pytest.raises(InjectedFault, match="raised"):
        inject("raise", exp, 1, 0)
    with pytest.raises(InjectedFault, match="hung"):
        inject("hang", exp, 1, 0)
    update = {"a": torch.zeros(2, 3), "b": torch.zeros(4)}
    assert update_problem(garbage(update), expected_of(update)) is not None


@pytest.mark.parametrize("override, field", [
    ("faults.fraction=1.5", "faults.fraction"), ('faults.kinds=["explode"]', "faults.kinds"),
    ("faults.kinds=[]", "faults.kinds"), ("federation.min_replies=9", "min_replies"),
    ("output.keep_checkpoints=1", "output.keep_checkpoints"), ('privacy.noise_source="dev-random"', "noise_source"),
])
def test_bad_reliability_config_fails_before_work(tiny_path, override, field):
    with pytest.raises(ConfigError, match=field):
        load_experiment(tiny_path, [override])
