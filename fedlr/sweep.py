"""Sweeps: one experiment TOML with a ``[sweep]`` table expands into many runs.

::

    [sweep]
    mode = "grid"                       # default; "zip" pairs the lists position by position
    name = "methods"                    # optional; default: the TOML file's stem
    "method.rank" = [4, 8]              # a dotted config field and the list of its values
    seed = [0, 1]                       # seeds give the error bars of ``fedlr report``

Every point gets its own run directory ``<output.dir>/<sweep name>/<slug>``, the slug naming the
swept values (``rank-4__seed-1``). A run is complete when its ``summary.json`` exists and
has no ``error``; one whose summary has an ``error`` (no round aggregated: nothing trained) has
failed. A sweep started again skips complete runs, resumes an interrupted run from its newest
checkpoint (``fedlr run --resume``) and re-runs from scratch one that has none, and a failed one
(its directory removed first): a failed run is never counted complete, and running it again gives
a failure that came from the machine (replies that missed ``round_timeout_s`` under load) another
chance, while one that comes from the config fails, and is reported, again. Everything that can
be checked before training is checked before the first run: each key must be a config field, each
list non-empty, zip lists of one length, and every expanded point a valid experiment (``ConfigError``, exit code 2).

The expansion is pure (``expand``, ``slug_for``); ``execute_sweep`` is thin glue around a
pluggable ``run_one(exp, run_dir)`` whose default is the real simulation. ``fedlr sweep`` runs it
inside ``fedlr.run.shared_engine.shared_engine``: the runs share one Ray cluster and its workers,
which keep the tokenized data between runs that share it, and the base model where two runs in a
row share one (``keeps_base_model``).
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
import shutil
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from pydantic import BaseModel

from fedlr.config import RESULT_NEUTRAL_FIELDS, ConfigError, Experiment, apply_overrides, experiment_from_dict, read_toml, to_toml
from fedlr.config_paths import flatten, set_dotted
from fedlr.results.console import Console, format_duration
from fedlr.results.rundir import RunDir

SWEEP_TABLE = "sweep"
MODES = ("grid", "zip")
RESERVED_KEYS = ("mode", "name")  # settings of the sweep itself, not config fields
SET_BY_SWEEP = ("output.dir", "output.name")  # every point's run directory is the sweep's choice
MANIFEST = "sweep.json"
MAX_SLUG = 100

RunOne = Callable[..., Any]  # run_one(exp, run_dir: RunDir, resume=False)


# ----------------------------------------------------------------------------- the pure part
@dataclass(frozen=True)
class SweepSpec:
    """What the ``[sweep]`` table asks for: ordered axes (dotted key -> values) and a mode."""

    axes: dict[str, list]
    mode: str = "grid"
    name: str | None = None


@dataclass(frozen=True)
class SweepPoint:
    """One run of a sweep: its swept values, its directory name and its validated experiment."""

    index: int
    params: dict[str, Any]
    slug: str
    experiment: Experiment

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={_show(v)}" for k, v in self.params.items())


@dataclass(frozen=True)
class Sweep:
    name: str
    spec: SweepSpec
    base: Experiment
    root: Path  # <output.dir>/<name>
    points: list[SweepPoint]

    def run_path(self, point: SweepPoint) -> Path:
        return self.root / point.slug

    def status(self, point: SweepPoint) -> str:
        """'complete' (summary.json without an ``error``), 'failed' (a summary with one, or one
        that does not parse), 'partial' (a directory without one) or 'pending'."""
        run = RunDir(self.run_path(point))
        if run.complete:
            return "failed" if run_error(run) is not None else "complete"
        return "partial" if run.path.exists() else "pending"


def run_error(run: RunDir) -> str | None:
    """Why a run that wrote its summary failed (its ``error``: no round aggregated), else None."""
    try:
        return (run.summary() or {}).get("error")
    except (OSError, ValueError) as e:
        return f"{run.summary_path}: unreadable ({e})"


def parse_sweep_table(table: Any) -> SweepSpec:
    """Validate the shape of a ``[sweep]`` table (not yet whether its keys are config fields)."""
    if not isinstance(table, dict):
        raise ConfigError("[sweep] must be a table of dotted config fields and lists of values")
    table = dict(table)
    # RESERVED_KEYS: the sweep's own settings, popped before the rest are read as config fields
    mode = table.pop("mode", "grid")
    if mode not in MODES:
        raise ConfigError(f"sweep.mode: {mode!r} is not allowed; expected one of {list(MODES)}")
    name = table.pop("name", None)
    if name is not None and (not isinstance(name, str) or not _safe_name(name)):
        raise ConfigError(f"sweep.name: {name!r} must be a plain folder name (letters, digits, . _ -)")
    axes = flatten(table)  # TOML's unquoted dotted keys (method.name = [...]) are nested tables
    if not axes:
        raise ConfigError("[sweep] names no config field to sweep (e.g. seed = [0, 1])")
    for key, values in axes.items():
        if not isinstance(values, list):
            raise ConfigError(f"sweep.{key}: expected a list of values, got {values!r}")
        if not values:
            raise ConfigError(f"sweep.{key}: empty list; give at least one value")
    if mode == "zip":
        lengths = {k: len(v) for k, v in axes.items()}
        if len(set(lengths.values())) > 1:
            shown = ", ".join(f"{k} has {n}" for k, n in lengths.items())
            raise ConfigError(f"sweep.mode = \"zip\" needs lists of one length: {shown}")
    return SweepSpec(axes=axes, mode=mode, name=name)


def check_field(key: str, model: type[BaseModel] = Experiment) -> None:
    """Raise ``ConfigError`` unless ``key`` (dotted) names a value field of the experiment."""
    if key in SET_BY_SWEEP:
        raise ConfigError(f"sweep.{key}: set by the sweep (each run's directory is <output.dir>/<sweep name>/<slug>)")
    parts = key.split(".")
    for i, part in enumerate(parts):
        fields = model.model_fields
        here = ".".join(parts[:i]) or "the experiment"
        if part not in fields:
            raise ConfigError(f"sweep.{key}: not a config field ({here} has no '{part}'; "
                              f"its fields are {', '.join(fields)})")
        annotation = fields[part].annotation
        is_section = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        if i < len(parts) - 1:
            if not is_section:
                raise ConfigError(f"sweep.{key}: not a config field ('{'.'.join(parts[:i + 1])}' is a value, "
                                  "not a section)")
            model = annotation
        elif is_section:
            raise ConfigError(f"sweep.{key}: '{key}' is a section; sweep one of its fields "
                              f"({', '.join(key + '.' + f for f in annotation.model_fields)})")


def expand(spec: SweepSpec) -> list[dict[str, Any]]:
    """The points of a sweep, in order: the cartesian product of the axes (grid, last key
    fastest) or their position-by-position pairing (zip)."""
    keys = list(spec.axes)
    if spec.mode == "zip":
        combos: Iterable[tuple] = zip(*spec.axes.values())
    else:
        combos = itertools.product(*spec.axes.values())
    return [dict(zip(keys, combo)) for combo in combos]


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "+".join(_show(v) for v in value)
    return str(value)


def _safe_name(text: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", text))


def axis_labels(keys: Iterable[str]) -> dict[str, str]:
    """Short names for swept keys in slugs: the last part (``train.lr`` -> ``lr``; ``*.name`` ->
    its section, ``method.name`` -> ``method``), or the whole key where short names collide."""
    keys = list(keys)

    def short(k: str) -> str:
        parts = k.split(".")
        return parts[-2] if parts[-1] == "name" and len(parts) > 1 else parts[-1]

    counts: dict[str, int] = {}
    for k in keys:
        counts[short(k)] = counts.get(short(k), 0) + 1
    return {k: short(k) if counts[short(k)] == 1 else k.replace(".", "-") for k in keys}


def slug_for(params: dict[str, Any], labels: dict[str, str] | None = None) -> str:
    """A run directory name from swept values: ``method-fedit__rank-4__seed-0``. Characters other
    than letters, digits and ``. _ + -`` become ``-``; names longer than ``MAX_SLUG`` are cut and
    end in a hash of the full name so they stay unique."""
    labels = labels or axis_labels(params)
    pieces = []
    for key, value in params.items():
        text = re.sub(r"[^A-Za-z0-9._+-]+", "-", _show(value)).strip("-._") or "x"
        pieces.append(f"{labels[key]}-{text}")
    slug = "__".join(pieces)
    if len(slug) > MAX_SLUG:
        digest = hashlib.sha256(slug.encode()).hexdigest()[:10]
        slug = f"{slug[:MAX_SLUG - 11]}-{digest}"
    return slug


def build_sweep(data: dict[str, Any], default_name: str) -> Sweep:
    """Validate a parsed experiment TOML that holds a ``[sweep]`` table and expand it.

    Raises ``ConfigError`` (naming the field) for: no or malformed ``[sweep]``, a key that is not a
    config field, an empty list, zip lists of different lengths, a point that is not a valid
    experiment, two points with one run directory.
    """
    data = copy.deepcopy(data)
    if SWEEP_TABLE not in data:
        raise ConfigError("no [sweep] table: add one whose keys are config fields and values lists, "
                          "e.g. [sweep] seed = [0, 1]")
    spec = parse_sweep_table(data.pop(SWEEP_TABLE))
    for key in spec.axes:
        check_field(key)
    base = experiment_from_dict(data)
    name = spec.name or re.sub(r"[^A-Za-z0-9._-]+", "-", default_name).strip("-.") or "sweep"
    root = Path(base.output.dir) / name
    labels = axis_labels(spec.axes)
    points: list[SweepPoint] = []
    seen: dict[str, dict] = {}
    for index, params in enumerate(expand(spec)):
        slug = slug_for(params, labels)
        if slug in seen:
            raise ConfigError(f"[sweep] two runs would share the directory {slug!r}: {seen[slug]} and {params} "
                              "(a value listed twice?)")
        seen[slug] = params
        point_data = copy.deepcopy(data)
        try:
            for key, value in params.items():
                set_dotted(point_data, key, value)
            set_dotted(point_data, "output.dir", str(root))
            set_dotted(point_data, "output.name", slug)
            exp = experiment_from_dict(point_data)
        except ValueError as e:  # ConfigError, or a swept key under a value (set_dotted)
            shown = ", ".join(f"{k} = {v!r}" for k, v in params.items())
            raise ConfigError(f"[sweep] the run with {shown} is not a valid experiment: {e}") from None
        points.append(SweepPoint(index=index, params=params, slug=slug, experiment=exp))
    return Sweep(name=name, spec=spec, base=base, root=root, points=points)


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> Sweep:
    """Read an experiment TOML with a ``[sweep]`` table; ``--set`` overrides apply before the
    expansion (``--set federation.num_rounds=1``, ``--set sweep.mode=zip``)."""
    data = read_toml(path)
    apply_overrides(data, overrides or [])
    return build_sweep(data, Path(path).stem)


# ----------------------------------------------------------------------------- execution
@dataclass
class SweepResult:
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    durations_s: dict[str, float] = field(default_factory=dict)


def _as_stored(exp: Experiment) -> dict[str, Any]:
    """``exp`` as dotted fields the way its ``config.toml`` holds them (``to_toml``: None left out
    or written as ``"none"``)."""
    return flatten(tomllib.loads(to_toml(exp)))


def config_differences(stored: dict, exp: Experiment) -> list[str]:
    """Dotted fields where a stored run's config (parsed config.toml) differs from ``exp``.
    A field the stored config lacks counts only if ``exp`` sets it off its default, so runs made
    before a config section existed still match experiments that leave that section alone.
    ``RESULT_NEUTRAL_FIELDS`` (where a run keeps its caches) never count."""
    have, want = flatten(stored), _as_stored(exp)
    defaults = _as_stored(Experiment())
    diffs = []
    for key in sorted(have.keys() | want.keys()):
        if have.get(key) == want.get(key) or key in RESULT_NEUTRAL_FIELDS:
            continue
        if key not in have and want.get(key) == defaults.get(key):
            continue
        diffs.append(f"{key}: run has {have.get(key)!r}, sweep wants {want.get(key)!r}")
    return diffs


def check_completed(sweep: Sweep) -> None:
    """A complete run is only skipped if it was made from the same experiment; otherwise its
    results would be reported under the wrong parameters. Raise ``ConfigError`` if not."""
    for point in sweep.points:
        if sweep.status(point) != "complete":
            continue
        stored_path = RunDir(sweep.run_path(point)).config_path
        try:
            stored = tomllib.loads(stored_path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"{stored_path}: cannot read the config of a complete run: {e}") from None
        diffs = config_differences(stored, point.experiment)
        if diffs:
            shown = "; ".join(diffs[:5]) + (f"; and {len(diffs) - 5} more" if len(diffs) > 5 else "")
            raise ConfigError(
                f"{sweep.run_path(point)} is complete but was made from a different config ({shown}). "
                "Delete that directory or give the sweep another name (sweep.name)."
            )


def write_manifest(sweep: Sweep) -> Path:
    """``<root>/sweep.json``: the sweep's axes, mode and every run's parameters and directory."""
    sweep.root.mkdir(parents=True, exist_ok=True)
    manifest = {
        "name": sweep.name, "mode": sweep.spec.mode, "axes": sweep.spec.axes,
        "base_fingerprint": sweep.base.fingerprint(),
        "runs": [{"slug": p.slug, "params": p.params} for p in sweep.points],
    }
    path = sweep.root / MANIFEST
    path.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return path


def keeps_base_model(sweep: Sweep) -> bool:
    """Whether keeping the base model between runs pays (``fedlr.run.shared_engine``'s
    ``keep_base_model``): a process keeps one, so only where two runs to run in a row share one
    (``fedlr.workbench.base_model_source``; a sweep whose seed varies fastest never does)."""
    from fedlr.workbench import base_model_source

    sources = [base_model_source(p.experiment) for p in sweep.points if sweep.status(p) != "complete"]
    return any(a == b for a, b in zip(sources, sources[1:]))


def simulate_runner(console: Console, tensorboard: bool = False) -> RunOne:
    """The default ``run_one``: the real simulation (each starts and stops its own Ray, unless the
    sweep runs inside ``fedlr.run.shared_engine.shared_engine``, as ``fedlr sweep`` does). With
    ``tensorboard``, each round's ledger row is also logged to ``<run dir>/tensorboard/``."""

    def run_one(exp: Experiment, run_dir, resume: bool = False) -> dict:
        from fedlr.run.simulation import simulate

        console.start(exp)
        if not tensorboard:
            return simulate(exp, run_dir, console, resume=resume)
        from fedlr.results.tensorboard import LedgerWriter

        writer = LedgerWriter(run_dir.path / "tensorboard", to_toml(exp))
        console.observers.append(writer.write_row)
        try:
            return simulate(exp, run_dir, console, resume=resume)
        finally:
            console.observers.remove(writer.write_row)
            writer.close()

    return run_one


def resumable(path: Path, exp: Experiment) -> bool:
    """Whether an interrupted run directory can continue: it ran ``exp`` (same fingerprint) and
    holds a checkpoint that verifies. A ledger that cannot be read raises ``LedgerError``: the
    sweep stops rather than remove the directory."""
    from fedlr import checkpoint

    try:
        run = RunDir.existing(path)
        same = run.experiment().fingerprint() == exp.fingerprint()
    except ConfigError:
        return False
    run.ledger()
    return same and checkpoint.latest(run.checkpoint_dir) is not None


def execute_sweep(sweep: Sweep, run_one: RunOne, console: Console | None = None,
                  check: Callable[[Experiment], Any] | None = None, keep_going: bool = False,
                  clock: Callable[[], float] = time.monotonic) -> SweepResult:
    """Run every point that is not complete, one after another, in this process.

    Before the first run: completed runs are checked against their configs and ``check``
    (default ``fedlr.preflight.preflight``) validates every pending point. A ``partial`` directory
    (an interrupted run) resumes from its newest valid checkpoint when it has one for the same
    experiment (``run_one(exp, run_dir, resume=True)``); otherwise it is removed and the run starts
    over; a ``failed`` one (its summary has an ``error``) is removed and runs again. A run counts
    as complete only if ``run_one`` leaves a ``summary.json`` without an ``error``; otherwise it
    is FAILED. ``KeyboardInterrupt`` stops the sweep after a note on how to resume; a failure
    stops it too, unless ``keep_going``.
    """
    console = console or Console()
    if check is None:
        from fedlr.preflight import preflight as check
    check_completed(sweep)
    pending = [p for p in sweep.points if sweep.status(p) != "complete"]
    result = SweepResult(skipped=[p.slug for p in sweep.points if p not in pending])
    for point in pending:
        try:
            check(point.experiment)
        except ConfigError as e:
            raise ConfigError(f"[sweep] run {point.slug}: {e}") from None
    write_manifest(sweep)
    total = len(sweep.points)
    axes = " x ".join(f"{k} ({len(v)})" for k, v in sweep.spec.axes.items())
    console.print(f"sweep {sweep.name}: {total} runs ({sweep.spec.mode} over {axes}) in {sweep.root}; "
                  f"{len(result.skipped)} complete, {len(pending)} to run")
    started = clock()
    for done, point in enumerate(pending):
        path = sweep.run_path(point)
        failed_before = run_error(RunDir(path)) if sweep.status(point) == "failed" else None
        resume = failed_before is None and path.exists() and resumable(path, point.experiment)
        if resume:
            console.print(f"sweep {sweep.name}: resuming {path} from its newest checkpoint")
        elif failed_before is not None:
            console.print(f"sweep {sweep.name}: removing {path} (it failed: {failed_before}) and running it again")
            shutil.rmtree(path)
        elif path.exists():
            console.print(f"sweep {sweep.name}: removing {path} (left by an interrupted run) and running it again")
            shutil.rmtree(path)
        left = len(pending) - done
        console.print(f"[sweep {point.index + 1}/{total}] start {point.slug} ({left} left; "
                      f"elapsed {format_duration(clock() - started)}, ETA {_eta(result, left)})")
        t0 = clock()
        try:
            if resume:
                run_one(point.experiment, RunDir(path), resume=True)
            else:
                run_dir = RunDir.create(point.experiment, point.slug)
                if run_dir.path != path:  # pragma: no cover - RunDir naming changed under us
                    raise RuntimeError(f"RunDir.create made {run_dir.path}, expected {path}")
                run_one(point.experiment, run_dir)
            if not RunDir(path).complete:
                raise RuntimeError(f"the run finished without writing {RunDir(path).summary_path}")
            if (error := run_error(RunDir(path))) is not None:
                raise RuntimeError(error)
        except KeyboardInterrupt:
            console.print(f"sweep {sweep.name}: interrupted during {point.slug}; "
                          f"{len(result.skipped) + len(result.ran)} of {total} runs complete. "
                          "Run the same command again to run the rest.")
            raise
        except Exception as e:
            result.failed.append((point.slug, f"{type(e).__name__}: {e}"))
            console.print(f"[sweep {point.index + 1}/{total}] FAILED {point.slug}: {type(e).__name__}: {e}")
            if not keep_going:
                raise
            continue
        took = clock() - t0
        result.ran.append(point.slug)
        result.durations_s[point.slug] = took
        left = len(pending) - done - 1
        console.print(f"[sweep {point.index + 1}/{total}] done  {point.slug} in {format_duration(took)}"
                      f"{_final_accuracy(path)} ({left} left; elapsed {format_duration(clock() - started)}, "
                      f"ETA {_eta(result, left)})")
    console.print(f"sweep {sweep.name}: {len(result.ran)} ran, {len(result.skipped)} were complete, "
                  f"{len(result.failed)} failed; report with: fedlr report {sweep.root}")
    return result


def _eta(result: SweepResult, left: int) -> str:
    from fedlr.results.console import eta_seconds

    eta = eta_seconds(list(result.durations_s.values()), left)
    return "?" if eta is None else format_duration(eta)


def _final_accuracy(path: Path) -> str:
    try:
        acc = (RunDir(path).summary() or {}).get("final_accuracy")
    except (OSError, ValueError):
        return ""
    return "" if acc is None else f", final accuracy {acc:.4f}"


# ----------------------------------------------------------------------------- dry run
def dry_run(sweep: Sweep, check: Callable[[Experiment], int] | None = None) -> list[dict]:
    """Each point's status and communication plan (``fedlr plan``), without training.
    ``epsilon`` is the plan's ``epsilon`` where the plan has one (privacy), else None."""
    from fedlr.plan import communication_plan

    if check is None:
        from fedlr.preflight import preflight as check
    rows = []
    for point in sweep.points:
        try:
            num_labels = check(point.experiment)
        except ConfigError as e:
            raise ConfigError(f"[sweep] run {point.slug}: {e}") from None
        plan = communication_plan(point.experiment, num_labels)
        rows.append({
            "run": point.index + 1, "slug": point.slug, "params": point.params, "status": sweep.status(point),
            "path": str(sweep.run_path(point)), "method": plan.get("method"), "rank": plan.get("rank"),
            "total_uplink_bytes": plan["total_uplink_bytes"], "total_downlink_bytes": plan["total_downlink_bytes"],
            "total_bytes": plan["total_bytes"], "epsilon": plan.get("epsilon"), "delta": plan.get("delta"),
            "frozen_prefix_cache": plan["frozen_prefix_cache"], "frozen_prefix_reason": plan["frozen_prefix_reason"],
        })
    return rows


def format_dry_run(sweep: Sweep, rows: list[dict]) -> str:
    mib = 2**20
    head = ["#", "status", "run", "method", "rank", "up_MiB", "down_MiB", "total_MiB", "epsilon", "prefix_cache"]
    body = [[str(r["run"]), r["status"], r["slug"], str(r["method"]), "-" if r["rank"] is None else str(r["rank"]),
             f"{r['total_uplink_bytes'] / mib:.3f}", f"{r['total_downlink_bytes'] / mib:.3f}",
             f"{r['total_bytes'] / mib:.3f}", "n/a" if r["epsilon"] is None else f"{r['epsilon']:.3g}",
             "on" if r["frozen_prefix_cache"] else "off"]
            for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    lines = [f"sweep {sweep.name}: {len(rows)} runs ({sweep.spec.mode}) in {sweep.root}; "
             f"{sum(r['status'] == 'complete' for r in rows)} complete"]
    for cells in [head, *body]:
        lines.append("  ".join(c.ljust(w) if i == 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))))
    for reason in sorted({r["frozen_prefix_reason"] for r in rows if not r["frozen_prefix_cache"]}):
        runs = ", ".join(str(r["run"]) for r in rows if not r["frozen_prefix_cache"] and r["frozen_prefix_reason"] == reason)
        lines.append(f"prefix_cache off (runs {runs}): {reason}")
    total = sum(r["total_bytes"] for r in rows if r["status"] != "complete")
    lines.append(f"to run: {sum(r['status'] != 'complete' for r in rows)} runs, {total / mib:.2f} MiB on the wire in all")
    return "\n".join(lines)
