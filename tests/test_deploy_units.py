"""Deployment helpers without a SuperLink: certificates, node keys, node config, the generated
Flower app and Flower config (read back with Flower's own parsers), the ServerApp's run config,
the traffic cross-check, and the CLI refusing bad input before it starts anything."""

from __future__ import annotations

import socket
import ssl
import threading

import pytest

from fedlr.cli import main
from fedlr.config import ConfigError, load_experiment
from fedlr.deploy.certs import check_ca_cert, check_server_certs, make_certs
from fedlr.deploy.connection import CONNECTION_NAME, write_flower_config
from fedlr.deploy.flower_argv import SuperLinkOptions, superlink_argv
from fedlr.deploy.network import check_tls_endpoint, free_port, parse_address
from fedlr.deploy.node_config import format_node_config, parse_node_config
from fedlr.deploy.node_keys import check_node_key, make_node_keys
from fedlr.deploy.cli import _report
from fedlr.deploy.submission import SubmitResult, traffic_check, write_app_dir
from fedlr.errors import DeployError
from fedlr.results import LedgerRow


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("certs"), hosts=["fl.example.org", "10.1.2.3"])


@pytest.fixture(scope="module")
def other_certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("other"))


# ------------------------------------------------------------------------------------ certificates
def test_certs_have_the_sans_and_verify(certs):
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(certs.server_cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "fl.example.org"}
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "10.1.2.3"}
    assert check_server_certs(certs.server_cert, certs.server_key, certs.ca_cert,
                                     hosts=["localhost", "10.1.2.3"])
    assert oct(certs.server_key.stat().st_mode & 0o777) == "0o600"
    with pytest.raises(DeployError, match="refusing to overwrite"):
        make_certs(certs.ca_cert.parent)


def test_a_real_tls_handshake_with_the_made_certs(certs, other_certs):
    """A real TLS server with the made pair passes standard X.509 verification (chain, SAN
    hostname match) for 127.0.0.1 and localhost, and ``check_tls_endpoint`` names a wrong CA as
    a mismatched certificate."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(certs.server_cert, certs.server_key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    listener.settimeout(0.2)
    done = threading.Event()

    def serve():  # accept until the test ends: each check also opens a plain TCP probe
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except (socket.timeout, OSError):
                continue
            try:
                conn.settimeout(5)
                with server_ctx.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        check_tls_endpoint("127.0.0.1", port, certs.ca_cert, "SuperLink Fleet API")
        check_tls_endpoint("localhost", port, certs.ca_cert, "SuperLink Fleet API")
        with pytest.raises(DeployError, match="mismatched certificate.*does not accept"):
            check_tls_endpoint("127.0.0.1", port, other_certs.ca_cert, "SuperLink Fleet API")
    finally:
        done.set()
        t.join(timeout=5)
        listener.close()


def test_mismatched_server_certificates_are_named(certs, other_certs):
    with pytest.raises(DeployError, match="not signed by --ssl-ca-certfile"):
        check_server_certs(certs.server_cert, certs.server_key, other_certs.ca_cert)
    with pytest.raises(DeployError, match="is not the key of --ssl-certfile"):
        check_server_certs(certs.server_cert, other_certs.server_key, certs.ca_cert)
    with pytest.raises(DeployError, match="does not name 192.0.2.7"):
        check_server_certs(certs.server_cert, certs.server_key, certs.ca_cert, hosts=["192.0.2.7"])
    with pytest.raises(DeployError, match="missing certificate: --ssl-keyfile .*does not exist"):
        check_server_certs(certs.server_cert, certs.ca_cert.parent / "nope.key", certs.ca_cert)
    with pytest.raises(DeployError, match="not a PEM certificate"):
        check_ca_cert(certs.server_key)


# ------------------------------------------------------------------------------------- node keys
def test_node_keys_load_the_way_flower_loads_them(tmp_path):
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

    (priv, pub), = make_node_keys(tmp_path, ["node-0"])
    key = load_ssh_private_key(priv.read_bytes(), None)  # what flower-supernode does
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    assert pub.read_text().startswith("ecdsa-sha2-nistp384 ")
    assert load_ssh_public_key(pub.read_bytes()).public_numbers() == key.public_key().public_numbers()
    assert check_node_key(priv) == priv
    with pytest.raises(DeployError, match="not an unencrypted OpenSSH private key"):
        check_node_key(pub)


# ----------------------------------------------------------------------------------- node config
def test_node_config_needs_a_partition_in_range():
    assert parse_node_config("partition-id=2 num-partitions=3") == {"partition-id": 2, "num-partitions": 3}
    assert parse_node_config("partition-id=1", num_partitions=4) == {"partition-id": 1, "num-partitions": 4}
    with pytest.raises(DeployError, match="has no partition-id"):
        parse_node_config("num-partitions=3")
    with pytest.raises(DeployError, match="has no partition-id"):
        parse_node_config(None)
    with pytest.raises(DeployError, match="out of range for 3 partitions"):
        parse_node_config("partition-id=3 num-partitions=3")
    with pytest.raises(DeployError, match="non-negative integer"):
        parse_node_config('partition-id="zero"')
    with pytest.raises(DeployError, match="num_clients = 4"):
        parse_node_config("partition-id=0 num-partitions=3", num_partitions=4)
    cfg = {"partition-id": 0, "num-partitions": 3, "data-path": "/data/x.csv"}
    assert parse_node_config(format_node_config(cfg)) == cfg


def test_addresses():
    assert parse_address("10.0.0.5:9092") == ("10.0.0.5", 9092)
    assert parse_address("fl.example.org", 9092) == ("fl.example.org", 9092)
    assert parse_address("[::1]:8000") == ("::1", 8000)
    with pytest.raises(DeployError, match="HOST:PORT"):
        parse_address("host:99999")


# ------------------------------------------------------------------ the generated app and config
def test_generated_app_passes_flowers_validation_and_has_no_federations(tmp_path):
    from flwr.cli.config_utils import load_and_validate

    app = write_app_dir(tmp_path / "app")
    config, warnings = load_and_validate(app / "pyproject.toml")  # checks the component modules too
    assert config["project"]["dependencies"] == []  # never torch: uv would fetch a CUDA build
    assert config["tool"]["flwr"]["app"]["components"] == {
        "serverapp": "fedlr.deploy.server_app:server_app", "clientapp": "fedlr.clients.app:app"}
    assert set(config["tool"]["flwr"]["app"]["config"]) == {"experiment", "run-dir", "run-name", "resume"}
    assert "federations" not in config["tool"]["flwr"]
    assert not warnings


def test_flwr_run_has_nothing_to_migrate_in_the_generated_app(tmp_path, monkeypatch):
    """`flwr run` first "migrates" the app's pyproject.toml (rewriting a federations table);
    the generated app gives it nothing to rewrite."""
    from flwr.cli.config_migration import migrate

    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "home"))
    app = write_app_dir(tmp_path / "app")
    before = (app / "pyproject.toml").read_bytes()
    migrate(str(app), [], ignore_legacy_usage=True)
    assert (app / "pyproject.toml").read_bytes() == before
    # control: the same app with a legacy federations table does get rewritten
    legacy = write_app_dir(tmp_path / "legacy") / "pyproject.toml"
    legacy.write_text(legacy.read_text() + '\n[tool.flwr.federations]\ndefault = "sim"\n\n'
                      '[tool.flwr.federations.sim]\noptions.num-supernodes = 3\n')
    text = legacy.read_text()
    migrate(str(legacy.parent), [], ignore_legacy_usage=True)
    assert legacy.read_text() != text and "# [tool.flwr.federations]" in legacy.read_text()


def test_flower_config_is_read_by_flower(tmp_path, monkeypatch, certs):
    from flwr.cli.flower_config import read_superlink_connection

    write_flower_config(tmp_path / "home", "127.0.0.1:8000", certs.ca_cert, insecure=False)
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "home"))
    conn = read_superlink_connection(None)
    assert conn.name == CONNECTION_NAME and conn.address == "127.0.0.1:8000"
    assert conn.root_certificates == str(certs.ca_cert.resolve()) and not conn.insecure


def test_argv_disables_runtime_installs_and_requires_tls_for_auth(certs):
    argv = superlink_argv(SuperLinkOptions(certs_dir=str(certs.ca_cert.parent), auth=True))
    assert "--disable-runtime-dependency-installation" in argv and "--enable-supernode-auth" in argv
    assert argv[argv.index("--ssl-certfile") + 1] == str(certs.server_cert.resolve())
    assert argv[argv.index("--fleet-api-address") + 1] == "0.0.0.0:9092"
    with pytest.raises(DeployError, match="requires TLS"):
        superlink_argv(SuperLinkOptions(insecure=True, auth=True))


# -------------------------------------------------------------------------- ServerApp run config
def test_run_config_to_experiment_and_run_dir(tmp_path, tiny_path):
    from fedlr.deploy.server_app import experiment_from_run_config, run_dir_for

    exp = load_experiment(tiny_path)
    assert experiment_from_run_config({"experiment": exp.to_json()}) == exp
    assert experiment_from_run_config({"experiment": str(tiny_path)}) == exp
    with pytest.raises(ConfigError, match="no 'experiment'"):
        experiment_from_run_config({"experiment": ""})
    exp2, run_dir = run_dir_for(exp, {"run-dir": str(tmp_path / "runs" / "dep")})
    assert run_dir.path == tmp_path / "runs" / "dep"
    assert exp2 == exp  # what the clients get: the experiment as submitted
    assert load_experiment(run_dir.path / "config.toml") == exp
    with pytest.raises(ConfigError, match="absolute"):
        run_dir_for(exp, {"run-dir": "relative/dir"})


def test_a_run_resumes_only_on_the_engine_it_ran_on(tmp_path, tiny_path, capsys):
    """``fedlr run --resume`` on a deployed run directory would continue it as a simulation,
    without the SuperNodes' client state: exit 2 naming ``fedlr deploy resume``; the reverse too."""
    from fedlr.deploy.server_app import run_dir_for

    _, deployed = run_dir_for(load_experiment(tiny_path), {"run-dir": str(tmp_path / "deployed")})
    deployed.deployment_path.write_text('{"flwr_run_id": 7, "engine": "deployment"}\n')
    assert deployed.engine == "deployment"
    assert main(["run", "--resume", str(deployed.path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedlr: error: ") and f"`fedlr deploy resume {deployed.path}`" in err, err
    assert not (deployed.path / "ledger.jsonl").exists()  # nothing ran

    simulated = tmp_path / "simulated"
    simulated.mkdir()
    (simulated / "config.toml").write_text(tiny_path.read_text())
    assert main(["deploy", "resume", str(simulated), "--insecure"]) == 2
    err = capsys.readouterr().err
    assert f"`fedlr run --resume {simulated}`" in err, err


def _traffic(run_id: int, inbound: int, outbound: int) -> dict:
    return {"run-id": str(run_id), "network-traffic": {"inbound-bytes": inbound, "outbound-bytes": outbound}}


def test_traffic_check_catches_a_ledger_that_claims_more_than_flower_counted():
    rows = [LedgerRow(round=0, clients_sampled=[], cumulative_uplink_bytes=10, cumulative_downlink_bytes=5),
            LedgerRow(round=1, clients_sampled=[], cumulative_uplink_bytes=100, cumulative_downlink_bytes=50)]
    t = traffic_check(rows, [_traffic(7, 130, 49)])
    assert (t["uplink_overhead_bytes"], t["downlink_overhead_bytes"], t["consistent"]) == (30, -1, False)
    t = traffic_check(rows, [_traffic(7, 99, 50)])
    assert (t["uplink_overhead_bytes"], t["downlink_overhead_bytes"], t["consistent"]) == (-1, 0, False)
    assert traffic_check(rows, [_traffic(7, 100, 50)])["consistent"] is True


# Measured (tests/test_deploy_restart.py, 3 rounds of 2 × 10,464 B up and down): the interrupted Flower
# run's SuperNodes replied to round 2 after the SuperLink came back, their replies (46 objects, 28,148 B
# beside the two Message objects) stayed unconsumed in the SuperLink's object store, and the resumed
# run's byte-identical round 2 replies were never pushed again: 38,152 B inbound for 41,856 B of uplink.
RESUMED_LEDGER = [LedgerRow(round=r, clients_sampled=[], cumulative_uplink_bytes=20928 * r,
                            cumulative_downlink_bytes=20928 * r) for r in range(4)]
INTERRUPTED, RESUMED = _traffic(11290682486797985894, 66300, 67054), _traffic(1982614006929830852, 38152, 73204)


def test_traffic_check_of_a_resumed_run_counts_every_flower_run_that_carried_it():
    t = traffic_check(RESUMED_LEDGER, [INTERRUPTED, RESUMED])
    assert t["consistent"] is True
    assert (t["ledger_uplink_bytes"], t["flower_inbound_bytes"]) == (62784, 66300 + 38152)
    assert (t["ledger_downlink_bytes"], t["flower_outbound_bytes"]) == (62784, 67054 + 73204)
    assert t["flwr_run_ids"] == ["11290682486797985894", "1982614006929830852"]
    # the resumed Flower run alone carried less than the ledger's rounds 2-3 (41,856 B): the check can
    # only be made over the whole ledger and every Flower run of it
    assert RESUMED["network-traffic"]["inbound-bytes"] < 41856
    # and it still catches a ledger that claims more than all of them counted
    inflated = [*RESUMED_LEDGER[:3], LedgerRow(round=3, clients_sampled=[], cumulative_uplink_bytes=66300 + 38152 + 1,
                                               cumulative_downlink_bytes=62784)]
    assert traffic_check(inflated, [INTERRUPTED, RESUMED])["consistent"] is False
    assert traffic_check(RESUMED_LEDGER, [RESUMED])["consistent"] is False


def test_traffic_check_is_not_made_when_the_superlink_forgot_an_earlier_run(tmp_path, capsys):
    t = traffic_check(RESUMED_LEDGER, [RESUMED], unknown=[11290682486797985894])
    assert t["consistent"] is None and t["unknown_flwr_run_ids"] == ["11290682486797985894"]

    def exit_code(traffic: dict) -> int:
        return _report(SubmitResult(1, tmp_path, "finished:completed", {}, traffic))

    assert exit_code(t) == 0
    assert "bytes not checked: the SuperLink no longer knows Flower run(s) 11290682486797985894" in capsys.readouterr().out
    assert exit_code(traffic_check(RESUMED_LEDGER, [RESUMED])) == 1
    assert "(INCONSISTENT)" in capsys.readouterr().out
    assert exit_code(traffic_check(RESUMED_LEDGER, [INTERRUPTED, RESUMED])) == 0


# ------------------------------------------------------------------------ CLI: errors, nothing run
def _closed_port() -> int:
    return free_port()  # bound and released: nothing listens there


@pytest.mark.parametrize("args, message", [
    (["superlink", "--certs", "{empty}", "--dry-run"], "missing certificate: --ssl-certfile"),
    (["superlink", "--ssl-certfile", "{cert}", "--ssl-keyfile", "{key}", "--ssl-ca-certfile", "{other_ca}",
      "--dry-run"], "mismatched certificate"),
    (["supernode", "--root-certificates", "{empty}/ca.crt", "--partition-id", "0", "--dry-run"],
     "missing certificate: --root-certificates"),
    (["supernode", "--insecure", "--node-config", "num-partitions=3", "--dry-run"], "has no partition-id"),
    (["supernode", "--insecure", "--partition-id", "5", "--experiment", "{tiny}", "--dry-run"],
     "out of range for 4 partitions"),
    (["supernode", "--insecure", "--superlink", "127.0.0.1:{port}", "--partition-id", "0", "--dry-run"],
     "cannot reach the SuperLink Fleet API at 127.0.0.1:{port}: connection refused"),
    (["supernode", "--superlink", "127.0.0.1:{port}", "--root-certificates", "{ca}", "--partition-id", "0",
      "--dry-run"], "cannot reach the SuperLink Fleet API"),
    (["submit", "{tiny}", "--superlink", "127.0.0.1:{port}", "--insecure"],
     "cannot reach the SuperLink Control API at 127.0.0.1:{port}"),
    (["submit", "{tiny}", "--root-certificates", "{empty}/ca.crt"], "missing certificate: --root-certificates"),
    (["keys", "{empty}"], "--nodes N or --name NAME"),
])
def test_bad_input_is_a_clear_error(args, message, certs, other_certs, tmp_path, tiny_path, capsys):
    port = _closed_port()
    fill = {"empty": tmp_path, "cert": certs.server_cert, "key": certs.server_key, "ca": certs.ca_cert,
            "other_ca": other_certs.ca_cert, "tiny": tiny_path, "port": port}
    assert main(["deploy", *[a.format(**fill) for a in args]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedlr: error: ") and message.format(**fill) in err, err


def test_dry_run_prints_the_flower_command(certs, capsys):
    assert main(["deploy", "superlink", "--certs", str(certs.ca_cert.parent), "--auth", "--dry-run"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.split()[0].endswith("flower-superlink") and "--enable-supernode-auth" in line
    assert "--disable-runtime-dependency-installation" in line


def test_certs_and_keys_commands(tmp_path, capsys):
    assert main(["deploy", "certs", str(tmp_path / "c"), "--host", "fl.example.org"]) == 0
    assert check_server_certs(tmp_path / "c/server.pem", tmp_path / "c/server.key", tmp_path / "c/ca.crt",
                                     hosts=["fl.example.org", "127.0.0.1"])
    assert main(["deploy", "keys", str(tmp_path / "k"), "--nodes", "2"]) == 0
    assert sorted(p.name for p in (tmp_path / "k").iterdir()) == ["node-0", "node-0.pub", "node-1", "node-1.pub"]
    assert main(["deploy", "keys", str(tmp_path / "k"), "--nodes", "2"]) == 2  # no silent overwrite
    assert "refusing to overwrite" in capsys.readouterr().err


# ------------------------------------------------------------------ refused experiments: seeded DP noise
def _dp(mode: str, *more: str) -> list[str]:
    sets = ['method.name="fedit"', f'privacy.mode="{mode}"', "privacy.noise_multiplier=1.0", *more]
    return [a for s in sets for a in ("--set", s)]


@pytest.mark.parametrize("mode", ["sample", "client_central", "client_local"])
@pytest.mark.parametrize("command", ["submit", "local", "supernode"])
def test_deploy_refuses_seeded_noise_under_dp(command, mode, tiny_path, capsys):
    """Seeded noise can be regenerated from the config and subtracted: every command that starts or
    submits a run refuses it, exit 2, before contacting anything (the SuperLink address is closed,
    so any later check would fail with another message)."""
    closed = f"127.0.0.1:{free_port()}"
    args = {"submit": ["submit", str(tiny_path), "--superlink", closed, "--insecure"],
            "local": ["local", str(tiny_path), "--insecure"],
            "supernode": ["supernode", "--experiment", str(tiny_path), "--partition-id", "0", "--insecure",
                          "--superlink", closed]}[command]
    assert main(["deploy", *args, *_dp(mode)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fedlr: error: privacy.noise_source = 'seeded' under privacy.mode '{mode}'"), err
    assert "privacy.noise_source = 'secure'" in err and err.count("\n") == 1


def test_secure_noise_and_no_noise_are_deployable(tiny_path):
    from fedlr.deploy.eligibility import deployment_refusal
    from fedlr.deploy.server_app import experiment_from_run_config

    def exp(*sets):
        return load_experiment(tiny_path, ['method.name="fedit"', *sets])

    for mode in ("sample", "client_central", "client_local"):
        dp = ['privacy.mode="' + mode + '"', "privacy.noise_multiplier=1.0"]
        assert deployment_refusal(exp(*dp, 'privacy.noise_source="secure"')) is None
        assert "privacy.noise_source" in deployment_refusal(exp(*dp))
        # the deployed ServerApp refuses it too, whatever submitted it
        with pytest.raises(ConfigError, match="privacy.noise_source = 'seeded'"):
            experiment_from_run_config({"experiment": exp(*dp).to_json()})
    assert deployment_refusal(exp()) is None  # no DP: no noise to regenerate
    # epsilon = inf trains without clipping or noise: nothing to regenerate either
    assert deployment_refusal(exp('privacy.mode="client_central"', "privacy.target_epsilon=inf")) is None


# ------------------------------------------------------------------ a SuperNode's own --experiment
def test_a_different_server_experiment_is_named_by_section(tiny_path):
    from fedlr.deploy.node_config import experiment_mismatch, section_fingerprints

    mine = load_experiment(tiny_path)
    node_config = parse_node_config(format_node_config({"partition-id": 1, "experiment-sections":
                                                        section_fingerprints(mine)}))
    assert experiment_mismatch(node_config, mine.to_json()) is None
    # where the server writes is not what the node trains
    assert experiment_mismatch(node_config, load_experiment(tiny_path, ["output.dir='/srv/runs'"]).to_json()) is None
    other = load_experiment(tiny_path, ["train.local_steps=7", "seed=3"])
    message = experiment_mismatch(node_config, other.to_json())
    assert message.startswith("the server's experiment differs from this SuperNode's --experiment in seed, train:")
    assert experiment_mismatch({"partition-id": 1}, other.to_json()) is None  # started without --experiment


def test_the_client_app_warns_at_enrollment_when_the_experiments_differ(tiny_path, caplog):
    from flwr.app import ConfigRecord, Context, Message, MessageType, Metadata, RecordDict

    from fedlr.clients.app import enroll
    from fedlr.deploy.node_config import section_fingerprints

    mine = load_experiment(tiny_path)
    meta = Metadata(run_id=1, message_id="q", src_node_id=0, dst_node_id=7, reply_to_message_id="", group_id="",
                    created_at=0.0, ttl=60.0, message_type=MessageType.QUERY)
    for server_exp, warned in ((mine, False), (load_experiment(tiny_path, ["train.batch_size=4"]), True)):
        msg = Message(RecordDict({"config": ConfigRecord({"experiment": server_exp.to_json()})}), metadata=meta)
        context = Context(run_id=1, node_id=7, node_config={"partition-id": 2, "experiment-sections":
                                                           section_fingerprints(mine)},
                          state=RecordDict(), run_config={})
        caplog.clear()
        with caplog.at_level("WARNING", logger="fedlr"):
            reply = enroll(msg, context)
        assert reply.content["metrics"]["partition-id"] == 2  # enrollment goes on: the server's experiment rules
        assert ("partition 2: the server's experiment differs from this SuperNode's --experiment in train"
                in caplog.text) is warned, caplog.text


# ------------------------------------------------------------------------ ports already taken
def test_a_taken_port_is_one_line_naming_the_port_and_its_holder():
    from fedlr.deploy.network import check_port_free

    with socket.create_server(("127.0.0.1", 0)) as holder:
        port = holder.getsockname()[1]
        with pytest.raises(DeployError) as err:
            check_port_free("127.0.0.1", port, "--port")
        with pytest.raises(DeployError, match=f"--fleet-address: port {port} is already in use"):
            check_port_free("0.0.0.0", port, "--fleet-address")  # all interfaces include the taken one
    import os

    assert str(err.value).startswith(f"--port: port {port} is already in use by pid {os.getpid()} (")
    assert "\n" not in str(err.value)
    check_port_free("127.0.0.1", port, "--port")  # released: free again


# ------------------------------------------------------------------ client-owned data (issue 21.1)
def _client_files_experiment(tiny_path, tmp_path, *overrides: str):
    test_file = tmp_path / "server-test.csv"
    test_file.write_text("text,label\ngreat film,pos\nawful film,neg\n")
    return load_experiment(tiny_path, ["data.dataset='client-files'", "data.labels=['neg', 'pos']",
                                       f"data.test_file='{test_file}'", *overrides])


def test_client_files_config_is_checked(tiny_path, tmp_path):
    exp = _client_files_experiment(tiny_path, tmp_path)
    assert exp.data.client_files and exp.data.labels == ["neg", "pos"]
    for overrides, message in (
        (["data.dataset='client-files'"], "data.labels: with data.dataset = 'client-files'"),
        (["data.labels=['a', 'b']"], "data.labels: only with data.dataset = 'client-files'"),
        ([f"data.test_file='{tmp_path}/t.csv'"], "data.test_file: only with data.dataset = 'client-files'"),
        (["data.dataset='client-files'", "data.labels=['a', 'b']"], "give it its own test file"),
        (["data.dataset='client-files'", "data.labels=['a', 'a']"], "names repeat"),
    ):
        with pytest.raises(ConfigError, match=message):
            load_experiment(tiny_path, overrides)
    assert load_experiment(tiny_path, ["data.dataset='client-files'", "data.labels=['a', 'b']",
                                       "evaluation.central=false"]).data.test_file is None
    # DP is planned from the sizes the clients report at enrollment (tests/test_deploy_client_data.py)
    assert _client_files_experiment(tiny_path, tmp_path, "privacy.mode='client_central'", "method.name='fedit'",
                                    "privacy.noise_multiplier=1.0").privacy.enabled


def test_a_client_receives_its_part_of_the_privacy_plan_only(tiny_path):
    """Under client-owned data the server sends each client the plan it trains under
    (``PrivacyPlan.seen_by``): its own σ_k and q_k, nothing of another client's size."""
    import math

    from fedlr.privacy.planning import epsilon_of_client, plan_privacy

    exp = load_experiment(tiny_path, ["method.name='fedit'", "privacy.mode='sample'", "privacy.target_epsilon=8.0",
                                      "privacy.delta=1e-3", "privacy.calibration='per_client'"])
    plan = plan_privacy(exp, [40, 10, 25, 60])
    view = plan.seen_by(1)
    assert view.client_noise(1) == plan.client_noise(1) and view.sample_rates == [0.0, plan.sample_rates[1], 0.0, 0.0]
    assert view.client_noise_multipliers == [None, plan.client_noise_multipliers[1], None, None]
    assert view.client_epsilon_planned == [0.0, plan.client_epsilon_planned[1], 0.0, 0.0]
    assert view.smallest_client is None and view.warnings == [] and math.isnan(view.epsilon)
    assert view.round_refusal(1, 0) == plan.round_refusal(1, 0) and view.client_rounds == plan.client_rounds
    assert plan.client_epsilon_planned[1] == epsilon_of_client(exp, 10, plan.client_noise(1), plan.client_rounds[1])


def test_a_client_sees_its_own_file_and_the_server_only_its_test_file(tiny_path, tmp_path):
    from fedlr.data import ClientFile, FederatedData

    exp = _client_files_experiment(tiny_path, tmp_path, "data.val_fraction=0.25")
    mine = tmp_path / "mine.csv"
    mine.write_text("review,sentiment\n" + "".join(f"text {i},{'pos' if i % 3 else 'neg'}\n" for i in range(8)))
    client = FederatedData(exp, own=ClientFile(str(mine), "review", "sentiment"))
    train, val = client.client_rows(1)
    assert (len(train), len(val)) == (6, 2) and sorted([*train, *val]) == list(range(8))
    assert client.table["label"].tolist() == [0 if i % 3 == 0 else 1 for i in range(8)]  # class order of data.labels
    assert len(client.test_rows) == 0

    server = FederatedData(exp)
    assert server.table["label"].tolist() == [1, 0] and len(server.central_test_rows) == 2
    assert server.majority_rate() is None  # no training labels on the server
    with pytest.raises(RuntimeError, match="holds no client's data"):
        server.client_rows(0)

    mine.write_text("review,sentiment\nx,pos\ny,meh\n")
    with pytest.raises(ConfigError, match=r"has labels \['meh'\] that data.labels \['neg', 'pos'\] does not name"):
        ClientFile(str(mine), "review", "sentiment").load(exp)
    with pytest.raises(ConfigError, match="text-column: column 'text' not in"):
        ClientFile(str(mine)).load(exp)


def test_client_files_need_deployment_and_a_file_per_node(tiny_path, tmp_path, capsys):
    from fedlr.config import to_toml
    from fedlr.deploy.node_config import data_mismatch

    exp = _client_files_experiment(tiny_path, tmp_path)
    (tmp_path / "cf.toml").write_text(to_toml(exp))
    assert main(["run", str(tmp_path / "cf.toml")]) == 2
    assert "only `fedlr deploy` runs it" in capsys.readouterr().err
    assert "start it with --data FILE" in data_mismatch({"partition-id": 0}, exp)
    assert "the experiment partitions" in data_mismatch({"partition-id": 0, "data-path": "/x.csv"},
                                                        load_experiment(tiny_path))
    assert data_mismatch({"partition-id": 0, "data-path": "/x.csv"}, exp) is None


def test_supernode_with_its_own_data(tiny_path, tmp_path, capsys):
    mine = tmp_path / "mine.csv"
    mine.write_text("review,sentiment\ngood,pos\nbad,neg\n")
    base = ["deploy", "supernode", "--insecure", "--partition-id", "0", "--dry-run"]
    port = _closed_port()
    assert main([*base, "--superlink", f"127.0.0.1:{port}", "--data", str(mine), "--text-column", "nope"]) == 2
    assert "--text-column: column 'nope' not in" in capsys.readouterr().err
    assert main([*base, "--data", str(tmp_path / "none.csv")]) == 2
    assert "--data: file not found" in capsys.readouterr().err
    assert main([*base, "--label-column", "sentiment"]) == 2
    assert "give --data FILE" in capsys.readouterr().err
    assert main([*base, "--data", str(mine), "--experiment", str(tiny_path)]) == 2  # the experiment partitions
    assert "the experiment partitions data.dataset = 'rotten_tomatoes'" in capsys.readouterr().err


def test_a_refused_supernode_backs_off_within_its_window():
    from fedlr.deploy.supernode import backoff

    assert backoff([0.0], 120) == 5 and backoff([0.0, 6.0], 120) == 10 and backoff([0.0, 6, 17, 38], 120) == 40
    assert backoff([0.0, 6, 17, 38, 79], 200) == 60  # doubling stops at a minute
    assert backoff([0.0, 6, 17, 38, 79], 120) is None  # the next try would come after the window
    assert backoff([0.0], 3) is None  # --max-wait-time 3: no second try


def test_the_warm_worker_gives_up_a_message_the_supernode_abandoned():
    """Flower's own object puller, fed by the warm worker's guarded PullObject: a message whose content
    is 'not available yet' is waited for while the SuperNode has no newer task (it may still be pulling
    it), and given up as soon as it has one (issue 21.3: a message of a run killed with the SuperLink)."""
    import time

    from flwr.proto.message_pb2 import PullObjectResponse  # pylint: disable=no-name-in-module
    from flwr.proto.node_pb2 import Node  # pylint: disable=no-name-in-module
    from flwr.supercore.inflatable.inflatable_protobuf_utils import make_pull_object_fn_protobuf
    from flwr.supercore.inflatable.inflatable_utils import pull_objects

    from fedlr.deploy.warm_worker import AbandonedMessage, abandoned_guard

    asked = []
    newer = threading.Event()

    def newer_task_pending():
        asked.append(time.monotonic())
        if len(asked) == 2:  # the SuperNode takes its next message while we wait
            newer.set()
        return newer.is_set()

    def pending(request):
        return PullObjectResponse(object_found=True, object_available=False)

    pull = make_pull_object_fn_protobuf(abandoned_guard(pending, newer_task_pending), Node(node_id=1), 7)
    started = time.monotonic()
    with pytest.raises(AbandonedMessage, match="gave up this message"):
        pull_objects(["a" * 64], pull, initial_backoff=0.05, backoff_cap=0.1, max_time=60)
    assert len(asked) == 2 and time.monotonic() - started < 30  # waited once, then gave up: not max_time

    def available(request):
        return PullObjectResponse(object_found=True, object_available=True, object_content=b"payload")

    asked.clear()
    pull = make_pull_object_fn_protobuf(abandoned_guard(available, newer_task_pending), Node(node_id=1), 7)
    assert pull_objects(["b" * 64], pull) == {"b" * 64: b"payload"} and asked == []  # content at hand: no question


def test_submit_waits_for_the_run_when_the_log_stream_ends_early():
    """A relaunched ServerApp ends the first launch's log stream while the run goes on: the
    ledger is read only once ``flwr list`` says the run finished, or at the deadline."""
    import time

    from fedlr.deploy.submission import wait_until_finished

    statuses = iter(["running", "running", "finished:completed"])
    said = []
    info = wait_until_finished(lambda: {"status": next(statuses)}, time.monotonic() + 60, said.append, poll_s=0)
    assert info == {"status": "finished:completed"}
    assert said == ["fedlr: the log stream ended before the run; waiting for it to finish"]

    calls = []
    info = wait_until_finished(lambda: calls.append(1) or {"status": "running"}, time.monotonic() + 0.05,
                               said.append, poll_s=0.01)
    assert info == {"status": "running"} and 2 <= len(calls)

    said.clear()
    info = wait_until_finished(lambda: {"status": "finished:failed"}, time.monotonic() + 60, said.append)
    assert info == {"status": "finished:failed"} and said == []
