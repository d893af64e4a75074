"""Real deployment on Flower's Deployment Engine (flwr 1.39): a SuperLink, one SuperNode per client
connected over gRPC-rere, and ``flwr run`` of the same ServerApp, ClientApp and experiment TOML a
simulation uses (docs/deployment.md). One idea per module:

- ``network`` — addresses, ports, and probes: unreachable SuperLink, TLS on one side only, a port
  already taken (and by whom), a client pointed at the wrong SuperLink API;
- ``certs`` — test CA and server certificate; certificate checks before any process starts;
- ``node_keys`` — SuperNode authentication key pairs (OpenSSH ECDSA P-384);
- ``node_config`` — a SuperNode's ``--node-config``: partition id, the experiment it checked;
- ``flower_argv`` — ``flower-superlink`` / ``flower-supernode`` command lines and environment;
- ``connection`` — reaching the SuperLink's Control API with the ``flwr`` CLI; key registration;
- ``submission`` — ``flwr run`` of a throw-away app, waiting, the byte-ledger cross-check;
- ``eligibility`` — what a deployment refuses to run;
- ``processes`` — ``ProcessTree``: start processes, track every descendant, stop them by pid;
- ``local`` — a whole federation on loopback (``fedlr deploy local`` and the tests);
- ``supernode`` — a SuperNode in the foreground with its warm worker;
- ``server_app`` — the ServerApp ``flwr run`` starts (``fedlr.deploy.server_app:server_app``);
- ``warm_worker`` — one long-lived process executing a SuperNode's ClientApp tasks;
- ``cli`` — the ``fedlr deploy`` commands.
"""
