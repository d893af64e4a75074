"""``fedlr run | plan | sweep | report | deploy``: the command line.

Every error fedlr raises (``fedlr.errors.FedlrError``) is caught once, in ``main``: one line
``fedlr: error: …`` on stderr and the error's exit code (2: bad config or input, nothing started;
3: a deployment failed while running). Anything else is a bug and keeps its traceback."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fedlr import __version__
from fedlr.config import ConfigError, Experiment, load_experiment
from fedlr.errors import FedlrError
from fedlr.run.simulation import RunInterrupted

DESCRIPTION = "Federated, differentially private fine-tuning with low-rank adapters, on Flower."
EPILOG = ("exit codes: 0 done; 1 a run that did not complete (a sweep with failed runs, a deployed run that "
          "did not finish or whose bytes disagree with Flower's) or an unexpected error; 2 bad config or input, "
          "nothing started; 3 a deployment failed while running; 130 interrupted")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        flwr = version("flwr")
    except PackageNotFoundError:
        flwr = "not installed"
    return f"fedlr {__version__} (Flower {flwr})"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedlr", description=DESCRIPTION, epilog=EPILOG)
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_ in (("run", "simulate an experiment"), ("plan", "communication plan, no training")):
        c = sub.add_parser(name, help=help_)
        if name == "run":
            c.add_argument("experiment", nargs="?", help="experiment TOML file (not with --resume)")
            c.add_argument("--resume", metavar="RUN_DIR", default=None,
                           help="continue a killed run from its newest valid checkpoint (same ledger and model "
                                "as an uninterrupted run)")
        else:
            c.add_argument("experiment", help="experiment TOML file")
        c.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override a field; the value is parsed as TOML (repeatable)")
        if name == "plan":
            c.add_argument("--json", action="store_true", help="print one JSON object")
        else:
            c.add_argument("--quiet", action="store_true", help="print nothing but errors")
    _add_sweep_report(sub)
    from fedlr.deploy.cli import add_deploy_parser

    add_deploy_parser(sub)  # fedlr deploy ...: handlers in fedlr.deploy.cli (func=...)
    return p


def _add_sweep_report(sub) -> None:
    """``fedlr sweep`` and ``fedlr report``: they read their own inputs (a TOML with a [sweep]
    table, a runs folder), so they carry their handler in ``func``."""
    c = sub.add_parser("sweep", help="run every point of an experiment's [sweep] table")
    c.add_argument("experiment", help="experiment TOML file with a [sweep] table")
    c.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a field of the base experiment before the expansion (repeatable)")
    c.add_argument("--dry-run", action="store_true", help="list the runs with their bytes and epsilon; train nothing")
    c.add_argument("--json", action="store_true", help="with --dry-run: print one JSON list")
    c.add_argument("--keep-going", action="store_true", help="go on to the next run when one fails (exit 1 at the end)")
    c.add_argument("--quiet", action="store_true", help="print only the sweep's progress lines, not each round")
    c.add_argument("--tensorboard", action="store_true", help="also log each round to <run dir>/tensorboard/")
    c.set_defaults(func=cmd_sweep)
    c = sub.add_parser("report", help="tables, figures and an HTML page from a folder of runs")
    c.add_argument("runs_dir", help="a folder of run directories (e.g. runs/<sweep name>)")
    c.add_argument("--out", default=None, help="where to write the report (default RUNS_DIR/report)")
    c.add_argument("--no-html", action="store_true", help="write the tables and figures only")
    c.add_argument("--tensorboard", action="store_true", help="also export every ledger to OUT/tensorboard/")
    c.add_argument("--metric", default=None, metavar="NAME",
                   help="what the tables and figures show: accuracy, balanced_accuracy, macro_f1 or roc_auc "
                        "(default: balanced_accuracy where a test set's majority class is >= 60%% of it, else accuracy)")
    c.add_argument("--study", default=None, metavar="NAME", help="table.csv's study column (default: RUNS_DIR's name)")
    c.set_defaults(func=cmd_report)


def cmd_sweep(args) -> int:
    from fedlr.results.console import Console
    from fedlr.sweep import dry_run, execute_sweep, format_dry_run, keeps_base_model, load_sweep, simulate_runner

    sweep = load_sweep(args.experiment, args.overrides)
    if args.dry_run:
        rows = dry_run(sweep)
        print(json.dumps(rows) if args.json else format_dry_run(sweep, rows))
        return 0
    if args.tensorboard:
        from fedlr.results.tensorboard import require_tensorboard

        require_tensorboard()  # TensorBoardUnavailable is a ConfigError: exit 2 before any run
    from fedlr.run.shared_engine import shared_engine

    progress = Console()
    run_console = Console(quiet=args.quiet or sweep.base.output.quiet)
    try:
        with shared_engine(keep_base_model=keeps_base_model(sweep)):  # one Ray cluster and its workers for all runs
            result = execute_sweep(sweep, simulate_runner(run_console, tensorboard=args.tensorboard),
                                   console=progress, keep_going=args.keep_going)
    except KeyboardInterrupt:
        return 130
    return 1 if result.failed else 0


def cmd_report(args) -> int:
    from fedlr.results.report import build_report, write_outputs

    report = build_report(args.runs_dir, args.metric, args.study)
    paths = write_outputs(report, args.out, html=not args.no_html, tensorboard=args.tensorboard)
    print(paths["table_md"].read_text(), end="")
    print(f"metric: {report.metric} ({report.metric_reason})")
    for name, error in report.failed:
        print(f"left out, failed: {name}: {error}")
    for key, path in paths.items():
        print(f"{key}: {path}")
    return 0


def cmd_plan(exp: Experiment, args) -> int:
    from fedlr.plan import communication_plan, format_plan
    from fedlr.tasks import get_task

    _, names = get_task(exp.model.task).load_table(exp.data)
    plan = communication_plan(exp, len(names))
    print(json.dumps(plan) if args.json else format_plan(plan))
    return 0


def cmd_run(exp: Experiment, args) -> int:
    from fedlr.preflight import preflight
    from fedlr.results import RunDir
    from fedlr.results.console import Console
    from fedlr.data.corpora import refuse_client_files
    from fedlr.run.simulation import simulate

    refuse_client_files(exp.data)
    preflight(exp)
    run_dir = RunDir.create(exp, Path(args.experiment).stem)
    console = Console(quiet=args.quiet or exp.output.quiet)
    console.print(f"fedlr: {exp.method.name} on {exp.data.dataset}, {exp.federation.num_clients} clients, "
                  f"run directory {run_dir.path}")
    simulate(exp, run_dir, console)
    return 0


RESUME_COMMAND = {"simulation": "fedlr run --resume", "deployment": "fedlr deploy resume"}


def resumable_run_dir(path: str | Path, engine: str):
    """The run directory ``path``, which ``engine`` can continue from a checkpoint unless it is
    complete (``RunDir.complete``). ConfigError when it is no run directory, has no valid checkpoint,
    or ran on the other engine (naming the command that resumes it): a deployed run's client state
    lives on its SuperNodes, which a simulation would not have."""
    from fedlr import checkpoint
    from fedlr.results import RunDir

    run_dir = RunDir.existing(path)
    run_dir.ledger()  # LedgerError (exit 2) now for a garbled ledger, before any work and untouched
    if run_dir.engine != engine:
        raise ConfigError(f"{run_dir.path} ran on the {run_dir.engine} engine, not the {engine} engine: continuing "
                          f"it there would lose every client's state; resume it with "
                          f"`{RESUME_COMMAND[run_dir.engine]} {run_dir.path}`")
    if run_dir.complete:
        return run_dir
    if checkpoint.latest(run_dir.checkpoint_dir) is None:
        raise ConfigError(f"{RESUME_COMMAND[engine]} {run_dir.path}: no valid checkpoint in {run_dir.checkpoint_dir} "
                          "(was output.checkpoint false, or did the run stop before round 0 ended?)")
    return run_dir


def cmd_resume(args) -> int:
    """``fedlr run --resume RUN_DIR``: the run's own config.toml, its newest valid checkpoint."""
    from fedlr.preflight import preflight
    from fedlr.results.console import Console
    from fedlr.run.simulation import simulate

    if args.experiment is not None or args.overrides:
        raise ConfigError("--resume RUN_DIR continues a run with the configuration it was started with; "
                          "give no experiment file and no --set")
    run_dir = resumable_run_dir(args.resume, "simulation")
    exp = run_dir.experiment()
    preflight(exp)
    console = Console(quiet=args.quiet or exp.output.quiet)
    if run_dir.complete:
        console.print(f"fedlr: {run_dir.path} is complete ({run_dir.summary_path.name} exists); nothing to resume")
        return 0
    simulate(exp, run_dir, console, resume=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    from fedlr.results.console import configure_logging

    configure_logging()
    args = _parser().parse_args(argv)
    try:
        if getattr(args, "func", None) is not None:  # sweep, report
            return args.func(args)
        if args.command == "run" and args.resume is not None:
            return cmd_resume(args)
        if args.experiment is None:
            raise ConfigError("fedlr run: give an experiment TOML file, or --resume RUN_DIR")
        exp = load_experiment(args.experiment, args.overrides)
        return {"run": cmd_run, "plan": cmd_plan}[args.command](exp, args)
    except FedlrError as e:
        print(f"fedlr: error: {e}", file=sys.stderr)
        return e.exit_code
    except RunInterrupted as e:  # one Ctrl-C: the run stopped in order, and can resume
        print(f"fedlr: {e}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
