"""``fedlr deploy certs | keys | register | superlink | supernode | submit | resume | local``: thin shells over
the modules of ``fedlr.deploy``. Bad input raises ``DeployError`` (exit 2, nothing started); a
deployment that fails while running raises ``DeploymentFailed`` (exit 3); ``fedlr.cli`` reports
either as one line."""

from __future__ import annotations

import os
from pathlib import Path

from fedlr.deploy.certs import make_certs
from fedlr.deploy.connection import Connection, register_node_keys
from fedlr.deploy.eligibility import refuse_undeployable
from fedlr.deploy.flower_argv import (DEFAULT_DATABASE, IN_MEMORY, SuperLinkOptions, SuperNodeOptions,
                                      check_superlink_ports, flwr_env, superlink_argv, supernode_argv)
from fedlr.deploy.network import CONTROL_PORT, FLEET_PORT, SUPERNODE_RUNTIME_PORT, check_port_free
from fedlr.deploy.node_config import (DATA_PATH_KEY, LABEL_COLUMN_KEY, TEXT_COLUMN_KEY, client_file, data_mismatch,
                                     format_node_config, parse_node_config, section_fingerprints)
from fedlr.deploy.node_keys import make_node_keys
from fedlr.deploy.submission import SubmitResult, submit
from fedlr.errors import DeployError


def add_deploy_parser(sub) -> None:
    """``fedlr deploy certs | keys | register | superlink | supernode | submit | resume | local``."""
    d = sub.add_parser("deploy", help="run an experiment on a real SuperLink and SuperNodes (gRPC, TLS)",
                       description="Deployment on Flower's Deployment Engine; see docs/deployment.md.")
    dsub = d.add_subparsers(dest="deploy_command", required=True)

    def tls_client(c, default_address: str, what: str) -> None:
        c.add_argument("--superlink", default=default_address, metavar="HOST:PORT",
                       help=f"the SuperLink's {what} (default {default_address})")
        g = c.add_mutually_exclusive_group()
        g.add_argument("--root-certificates", metavar="CA.crt", help="CA certificate that signed the SuperLink's")
        g.add_argument("--insecure", action="store_true", help="no TLS (only if the SuperLink runs --insecure)")

    def control_client(c) -> None:
        tls_client(c, f"127.0.0.1:{CONTROL_PORT}", "Control API, HTTP(S)")
        c.add_argument("--connection", metavar="NAME",
                       help="use the SuperLink connection NAME of your own $FLWR_HOME/config.toml instead")

    def experiment_args(c, required: bool = True) -> None:
        if required:
            c.add_argument("experiment", help="experiment TOML file")
        else:
            c.add_argument("--experiment", help="experiment TOML file: checks the partition against num_clients "
                                                "and the model and data here; warns if the server's differs")
        c.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override a field; the value is parsed as TOML (repeatable)")

    c = dsub.add_parser("certs", help="make a test CA and a server certificate (SAN localhost, 127.0.0.1)")
    c.add_argument("dir", help="output folder: ca.crt, ca.key, server.pem, server.key")
    c.add_argument("--host", action="append", default=[], metavar="NAME_OR_IP",
                   help="another name or address clients use to reach the SuperLink (repeatable)")
    c.add_argument("--days", type=int, default=365)
    c.add_argument("--force", action="store_true", help="overwrite existing files")
    c.set_defaults(func=cmd_certs)

    c = dsub.add_parser("keys", help="make ECDSA key pairs for SuperNode authentication (and register them)")
    c.add_argument("dir", help="output folder: NAME (private) and NAME.pub per SuperNode")
    c.add_argument("--nodes", type=int, default=None, help="make node-0 .. node-(N-1)")
    c.add_argument("--name", action="append", default=[], help="make a pair with this name (repeatable)")
    c.add_argument("--force", action="store_true", help="overwrite existing keys")
    c.add_argument("--register", action="store_true", help="register the public keys with the SuperLink")
    control_client(c)
    c.set_defaults(func=cmd_keys)

    c = dsub.add_parser("register", help="register SuperNode public keys with a SuperLink started with --auth")
    c.add_argument("public_keys", nargs="+", help="NAME.pub files")
    control_client(c)
    c.set_defaults(func=cmd_register)

    c = dsub.add_parser("superlink", help="start a SuperLink (foreground; runtime dependency installation off)")
    g = c.add_mutually_exclusive_group()
    g.add_argument("--certs", metavar="DIR", help="folder from `fedlr deploy certs` (server.pem, server.key, ca.crt)")
    g.add_argument("--insecure", action="store_true", help="no TLS: only on a trusted network")
    c.add_argument("--ssl-certfile")
    c.add_argument("--ssl-keyfile")
    c.add_argument("--ssl-ca-certfile")
    c.add_argument("--fleet-address", default=f"0.0.0.0:{FLEET_PORT}",
                   help=f"where SuperNodes connect, gRPC (default 0.0.0.0:{FLEET_PORT})")
    c.add_argument("--host", default="127.0.0.1",
                   help="interface of the HTTP Control/Runtime API (default 127.0.0.1; 0.0.0.0 to submit "
                        "from another machine)")
    c.add_argument("--port", type=int, default=CONTROL_PORT,
                   help=f"HTTP Control/Runtime API port (default {CONTROL_PORT})")
    c.add_argument("--auth", action="store_true", help="accept only registered SuperNodes (needs TLS)")
    c.add_argument("--database", default=DEFAULT_DATABASE,
                   help=f"SQLite file for the SuperLink's state (default ./{DEFAULT_DATABASE}): registered keys, node "
                        f"ids and runs survive a restart; {IN_MEMORY} keeps it in memory")
    c.add_argument("--log-file")
    c.add_argument("--public-host", action="append", default=[], metavar="NAME_OR_IP",
                   help="a name clients use; checked against the certificate's SAN (repeatable)")
    c.add_argument("--dry-run", action="store_true", help="validate and print the command; start nothing")
    c.set_defaults(func=cmd_superlink)

    c = dsub.add_parser("supernode", help="start a SuperNode serving one client's partition (foreground)")
    tls_client(c, f"127.0.0.1:{FLEET_PORT}", "Fleet API, gRPC")
    c.add_argument("--partition-id", type=int, help="this client's index (0 .. num_clients-1): its partition of "
                                                    "the corpus, or with --data only its place in the federation")
    c.add_argument("--data", metavar="FILE", help="this client's own labelled table (.csv/.json/.jsonl/.parquet), "
                                                  "for an experiment with data.dataset = 'client-files'")
    c.add_argument("--text-column", help="--data's text column (default: the experiment's data.text_column)")
    c.add_argument("--label-column", help="--data's label column (default: the experiment's data.label_column)")
    c.add_argument("--node-config", help="Flower node config, e.g. \"partition-id=0 num-partitions=3\"")
    experiment_args(c, required=False)
    c.add_argument("--auth-key", metavar="PRIVATE_KEY", help="this node's private key (from `fedlr deploy keys`)")
    c.add_argument("--port", type=int, default=SUPERNODE_RUNTIME_PORT,
                   help=f"this SuperNode's local Runtime API port (default {SUPERNODE_RUNTIME_PORT}; one per "
                        "SuperNode)")
    c.add_argument("--cold", action="store_true",
                   help="Flower's stock executor: a new flwr-clientapp process per message (slower)")
    c.add_argument("--max-retries", type=int, help="give up connecting after N tries (default: retry forever)")
    c.add_argument("--max-wait-time", type=float,
                   help="give up connecting after S seconds; also how long a SuperNode the SuperLink refuses at "
                        "start (a restart within its grace period) tries again (default 300)")
    c.add_argument("--dry-run", action="store_true", help="validate and print the command; start nothing")
    c.set_defaults(func=cmd_supernode)

    c = dsub.add_parser("submit", help="submit an experiment to a running SuperLink and wait for the result")
    experiment_args(c)
    control_client(c)
    c.add_argument("--run-dir", help="run directory to create, on the SuperLink's machine (absolute)")
    c.add_argument("--no-wait", action="store_true", help="return after submitting")
    c.add_argument("--timeout", type=float, default=None,
                   help="seconds to wait for the run (default: federation.enroll_timeout_s + round_timeout_s "
                        "x (num_rounds + 2))")
    c.set_defaults(func=cmd_submit)

    c = dsub.add_parser("resume", help="continue a deployed run from its newest checkpoint (after a SuperLink "
                                       "or ServerApp crash) and wait for it")
    c.add_argument("run_dir", help="the run directory on this machine, which the SuperLink shares")
    control_client(c)
    c.add_argument("--timeout", type=float, default=None, help="seconds to wait for the run (default as submit)")
    c.set_defaults(func=cmd_resume)

    c = dsub.add_parser("local", help="SuperLink + one SuperNode per client on this machine (loopback), run, stop")
    experiment_args(c)
    c.add_argument("--insecure", action="store_true", help="no TLS (default: TLS with certificates made here)")
    c.add_argument("--auth", action="store_true", help="SuperNode authentication with keys made here")
    c.add_argument("--cold", action="store_true", help="Flower's stock per-message ClientApp processes")
    c.add_argument("--workdir", help="where certificates, keys and logs go, kept (default: a temp folder, "
                                     "removed at the end)")
    c.set_defaults(func=cmd_local)


def _connection(args) -> Connection:
    return Connection(args.superlink, args.root_certificates, args.insecure, args.connection)


def cmd_certs(args) -> int:
    paths = make_certs(args.dir, args.host, args.days, args.force)
    for key, path in vars(paths).items():
        print(f"{key}: {path}")
    print("keep ca.key and server.key private; give ca.crt to every SuperNode and CLI user")
    return 0


def cmd_keys(args) -> int:
    names = list(args.name) + ([f"node-{i}" for i in range(args.nodes)] if args.nodes else [])
    if not names:
        raise DeployError("say which keys to make: --nodes N or --name NAME")
    pairs = make_node_keys(args.dir, names, args.force)
    for priv, pub in pairs:
        print(f"{priv}  {pub}")
    if args.register:
        for (_, pub), node in zip(pairs, register_node_keys([p for _, p in pairs], _connection(args))):
            print(f"registered {pub}: {node}")
    return 0


def cmd_register(args) -> int:
    for pub, node in zip(args.public_keys, register_node_keys(args.public_keys, _connection(args))):
        print(f"registered {pub}: {node}")
    return 0


def cmd_superlink(args) -> int:
    database = args.database if args.database == IN_MEMORY else str(Path(args.database).expanduser().resolve())
    opts = SuperLinkOptions(insecure=args.insecure, certs_dir=args.certs, ssl_certfile=args.ssl_certfile,
                            ssl_keyfile=args.ssl_keyfile, ssl_ca_certfile=args.ssl_ca_certfile,
                            fleet_address=args.fleet_address, host=args.host, port=args.port, auth=args.auth,
                            database=database, log_file=args.log_file, hosts=args.public_host)
    argv = superlink_argv(opts)
    if not args.dry_run:
        check_superlink_ports(opts)
    print(" ".join(argv), flush=True)
    if args.dry_run:
        return 0
    os.execve(argv[0], argv, flwr_env())
    return 1  # not reached


def cmd_supernode(args) -> int:
    num = sections = None
    own = _own_data(args)
    if args.experiment:  # this node can load the experiment's model and data, and serves one of its clients
        from fedlr.config import load_experiment
        from fedlr.preflight import preflight

        exp = load_experiment(args.experiment, args.overrides)
        refuse_undeployable(exp)
        num = exp.federation.num_clients
        config = parse_node_config(f"{args.node_config or ''} {own} "
                                   f"{'' if args.partition_id is None else f'partition-id={args.partition_id}'}", num)
        if (problem := data_mismatch(config, exp)) is not None:
            raise DeployError(problem)
        if (mine := client_file(config)) is not None:
            mine.load(exp)
        preflight(exp)
        sections = section_fingerprints(exp)  # the ClientApp warns if the server's experiment differs
    node_config = f"{args.node_config or ''} {own}".strip() or None
    opts = SuperNodeOptions(superlink=args.superlink, node_config=node_config, partition_id=args.partition_id,
                            num_partitions=num, insecure=args.insecure, root_certificates=args.root_certificates,
                            auth_key=args.auth_key, port=args.port, max_retries=args.max_retries,
                            max_wait_time=args.max_wait_time, experiment_sections=sections)
    argv = supernode_argv(opts)
    if not args.dry_run:
        check_port_free("127.0.0.1", args.port, "--port")  # the SuperNode's local Runtime API
    print(" ".join(argv), flush=True)
    if args.dry_run:
        return 0
    from fedlr.deploy.supernode import REJOIN_WINDOW_S, serve_supernode

    window = args.max_wait_time if args.max_wait_time is not None else REJOIN_WINDOW_S
    return serve_supernode(argv, args.port, warm=not args.cold, rejoin_window_s=window)


def _own_data(args) -> str:
    """``--data`` and its column names as node config entries ('' without ``--data``); the file must
    be readable here, and hold the named columns."""
    if args.data is None:
        if args.text_column or args.label_column:
            raise DeployError("--text-column and --label-column name --data's columns: give --data FILE")
        return ""
    from fedlr.data.corpora import read_table_file

    path = Path(args.data).expanduser().resolve()
    table = read_table_file(path, "--data")
    config = {DATA_PATH_KEY: str(path)}
    for flag, key, column in (("--text-column", TEXT_COLUMN_KEY, args.text_column),
                              ("--label-column", LABEL_COLUMN_KEY, args.label_column)):
        if column is not None:
            if column not in table.columns:
                raise DeployError(f"{flag}: column {column!r} not in {path} (columns: {list(table.columns)})")
            config[key] = column
    return format_node_config(config)


def cmd_submit(args) -> int:
    from fedlr.config import load_experiment

    exp = load_experiment(args.experiment, args.overrides)
    res = submit(exp, _connection(args), run_dir=args.run_dir, run_name=Path(args.experiment).stem,
                 wait=not args.no_wait, timeout_s=args.timeout, echo=print)
    return _report(res)


def cmd_resume(args) -> int:
    """``fedlr deploy resume RUN_DIR``: the run's own experiment submitted again with ``resume``;
    the ServerApp continues from the newest checkpoint, the SuperNodes from their ``state-dir``."""
    from fedlr.cli import resumable_run_dir

    run_dir = resumable_run_dir(args.run_dir, "deployment")
    if run_dir.complete:
        print(f"fedlr: {run_dir.path} is complete ({run_dir.summary_path.name} exists); nothing to resume")
        return 0
    res = submit(run_dir.experiment(), _connection(args), run_dir=run_dir.path.resolve(), timeout_s=args.timeout,
                 echo=print, resume=True)
    return _report(res)


def _report(res: SubmitResult) -> int:
    if res.status == "submitted":
        return 0
    print(f"fedlr: Flower run {res.run_id}: {res.status}; run directory {res.run_dir}")
    t = res.traffic
    if t and t["consistent"] is None:
        print(f"fedlr: bytes not checked: the SuperLink no longer knows Flower run(s) "
              f"{', '.join(t['unknown_flwr_run_ids'])} of this run")
    elif t:
        print(f"fedlr: bytes, ledger vs Flower's count: up {t['ledger_uplink_bytes']:,} / in "
              f"{t['flower_inbound_bytes']:,}, down {t['ledger_downlink_bytes']:,} / out "
              f"{t['flower_outbound_bytes']:,} ({'consistent' if t['consistent'] else 'INCONSISTENT'})")
    return 0 if res.completed and (t is None or t["consistent"] is not False) else 1


def cmd_local(args) -> int:
    from fedlr.config import load_experiment
    from fedlr.deploy.local import run_local
    from fedlr.preflight import preflight

    exp = load_experiment(args.experiment, args.overrides)
    refuse_undeployable(exp)
    preflight(exp)
    res = run_local(exp, Path(args.experiment).stem, insecure=args.insecure, auth=args.auth, warm=not args.cold,
                    workdir=args.workdir, echo=lambda text: print(text, flush=True))
    return _report(res)
