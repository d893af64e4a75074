"""``fedlr run | plan``: the command line. Config problems exit with code 2 before any work."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from fedlr.config import ConfigError, Experiment, load_experiment

EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedlr", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_ in (("run", "simulate an experiment"), ("plan", "communication plan, no training")):
        c = sub.add_parser(name, help=help_)
        c.add_argument("experiment", help="experiment TOML file")
        c.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override a field; the value is parsed as TOML (repeatable)")
        if name == "plan":
            c.add_argument("--json", action="store_true", help="print one JSON object")
        else:
            c.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return p


def cmd_plan(exp: Experiment, args) -> int:
    from fedlr.data.corpora import load_table
    from fedlr.plan import communication_plan, format_plan

    _, names = load_table(exp.data)
    plan = communication_plan(exp, len(names))
    print(json.dumps(plan) if args.json else format_plan(plan))
    return 0


def cmd_run(exp: Experiment, args) -> int:
    from fedlr.preflight import preflight
    from fedlr.results import RunDir
    from fedlr.results.console import Console
    from fedlr.run.simulation import simulate

    preflight(exp)
    run_dir = RunDir.create(exp, Path(args.experiment).stem)
    console = Console(quiet=args.quiet or exp.output.quiet)
    console.print(f"fedlr: {exp.method.name} on {exp.data.dataset}, {exp.federation.num_clients} clients, "
                  f"run directory {run_dir.path}")
    simulate(exp, run_dir, console)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s fedlr: %(message)s"))
    logging.getLogger("fedlr").addHandler(handler)
    try:
        exp = load_experiment(args.experiment, args.overrides)
        return {"run": cmd_run, "plan": cmd_plan}[args.command](exp, args)
    except ConfigError as e:
        print(f"fedlr: error: {e}", file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
