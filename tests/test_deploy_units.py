"""Deployment helpers without a SuperLink: certificates, node keys, node config, the generated
Flower app and Flower config (read back with Flower's own parsers), the ServerApp's run config,
the traffic cross-check, and the CLI refusing bad input before it starts anything."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import tomllib
from pathlib import Path

import pytest

from fedlr.cli import main
from fedlr.config import ConfigError, load_experiment
from fedlr.run import deploy
from fedlr.run.deploy import DeployError


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return deploy.make_certs(tmp_path_factory.mktemp("certs"), hosts=["fl.example.org", "10.1.2.3"])


@pytest.fixture(scope="module")
def other_certs(tmp_path_factory):
    return deploy.make_certs(tmp_path_factory.mktemp("other"))


# ------------------------------------------------------------------------------------ certificates
def test_certs_have_the_sans_and_verify(certs):
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(certs.server_cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "fl.example.org"}
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "10.1.2.3"}
    assert deploy.check_server_certs(certs.server_cert, certs.server_key, certs.ca_cert,
                                     hosts=["localhost", "10.1.2.3"])
    assert oct(certs.server_key.stat().st_mode & 0o777) == "0o600"
    with pytest.raises(DeployError, match="refusing to overwrite"):
        deploy.make_certs(certs.ca_cert.parent)


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
        deploy.check_tls_endpoint("127.0.0.1", port, certs.ca_cert, "SuperLink Fleet API")
        deploy.check_tls_endpoint("localhost", port, certs.ca_cert, "SuperLink Fleet API")
        with pytest.raises(DeployError, match="mismatched certificate.*does not accept"):
            deploy.check_tls_endpoint("127.0.0.1", port, other_certs.ca_cert, "SuperLink Fleet API")
    finally:
        done.set()
        t.join(timeout=5)
        listener.close()


def test_mismatched_server_certificates_are_named(certs, other_certs):
    with pytest.raises(DeployError, match="not signed by --ssl-ca-certfile"):
        deploy.check_server_certs(certs.server_cert, certs.server_key, other_certs.ca_cert)
    with pytest.raises(DeployError, match="is not the key of --ssl-certfile"):
        deploy.check_server_certs(certs.server_cert, other_certs.server_key, certs.ca_cert)
    with pytest.raises(DeployError, match="does not name 192.0.2.7"):
        deploy.check_server_certs(certs.server_cert, certs.server_key, certs.ca_cert, hosts=["192.0.2.7"])
    with pytest.raises(DeployError, match="missing certificate: --ssl-keyfile .*does not exist"):
        deploy.check_server_certs(certs.server_cert, certs.ca_cert.parent / "nope.key", certs.ca_cert)
    with pytest.raises(DeployError, match="not a PEM certificate"):
        deploy.check_ca_cert(certs.server_key)


# ------------------------------------------------------------------------------------- node keys
def test_node_keys_load_the_way_flower_loads_them(tmp_path):
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

    (priv, pub), = deploy.make_node_keys(tmp_path, ["node-0"])
    key = load_ssh_private_key(priv.read_bytes(), None)  # what flower-supernode does
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    assert pub.read_text().startswith("ecdsa-sha2-nistp384 ")
    assert load_ssh_public_key(pub.read_bytes()).public_numbers() == key.public_key().public_numbers()
    assert deploy.check_node_key(priv) == priv
    with pytest.raises(DeployError, match="not an unencrypted OpenSSH private key"):
        deploy.check_node_key(pub)


# ----------------------------------------------------------------------------------- node config
def test_node_config_needs_a_partition_in_range():
    assert deploy.parse_node_config("partition-id=2 num-partitions=3") == {"partition-id": 2, "num-partitions": 3}
    assert deploy.parse_node_config("partition-id=1", num_partitions=4) == {"partition-id": 1, "num-partitions": 4}
    with pytest.raises(DeployError, match="has no partition-id"):
        deploy.parse_node_config("num-partitions=3")
    with pytest.raises(DeployError, match="has no partition-id"):
        deploy.parse_node_config(None)
    with pytest.raises(DeployError, match="out of range for 3 partitions"):
        deploy.parse_node_config("partition-id=3 num-partitions=3")
    with pytest.raises(DeployError, match="non-negative integer"):
        deploy.parse_node_config('partition-id="zero"')
    with pytest.raises(DeployError, match="num_clients = 4"):
        deploy.parse_node_config("partition-id=0 num-partitions=3", num_partitions=4)
    cfg = {"partition-id": 0, "num-partitions": 3, "data-path": "/data/x.csv"}
    assert deploy.parse_node_config(deploy.format_node_config(cfg)) == cfg


def test_addresses():
    assert deploy.parse_address("10.0.0.5:9092") == ("10.0.0.5", 9092)
    assert deploy.parse_address("fl.example.org", 9092) == ("fl.example.org", 9092)
    assert deploy.parse_address("[::1]:8000") == ("::1", 8000)
    with pytest.raises(DeployError, match="HOST:PORT"):
        deploy.parse_address("host:99999")


# ------------------------------------------------------------------ the generated app and config
def test_generated_app_passes_flowers_validation_and_has_no_federations(tmp_path):
    from flwr.cli.config_utils import load_and_validate

    app = deploy.write_app_dir(tmp_path / "app")
    config, warnings = load_and_validate(app / "pyproject.toml")  # checks the component modules too
    assert config["project"]["dependencies"] == []  # never torch: uv would fetch a CUDA build
    assert config["tool"]["flwr"]["app"]["components"] == {
        "serverapp": "fedlr.run.deploy_app:server_app", "clientapp": "fedlr.clients.app:app"}
    assert set(config["tool"]["flwr"]["app"]["config"]) == {"experiment", "run-dir", "run-name"}
    assert "federations" not in config["tool"]["flwr"]
    assert not warnings


def test_flwr_run_has_nothing_to_migrate_in_the_generated_app(tmp_path, monkeypatch):
    """`flwr run` first "migrates" the app's pyproject.toml (rewriting a federations table);
    the generated app gives it nothing to rewrite."""
    from flwr.cli.config_migration import migrate

    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "home"))
    app = deploy.write_app_dir(tmp_path / "app")
    before = (app / "pyproject.toml").read_bytes()
    migrate(str(app), [], ignore_legacy_usage=True)
    assert (app / "pyproject.toml").read_bytes() == before
    # control: the same app with a legacy federations table does get rewritten
    legacy = deploy.write_app_dir(tmp_path / "legacy") / "pyproject.toml"
    legacy.write_text(legacy.read_text() + '\n[tool.flwr.federations]\ndefault = "sim"\n\n'
                      '[tool.flwr.federations.sim]\noptions.num-supernodes = 3\n')
    text = legacy.read_text()
    migrate(str(legacy.parent), [], ignore_legacy_usage=True)
    assert legacy.read_text() != text and "# [tool.flwr.federations]" in legacy.read_text()


def test_flower_config_is_read_by_flower(tmp_path, monkeypatch, certs):
    from flwr.cli.flower_config import read_superlink_connection

    deploy.write_flower_config(tmp_path / "home", "127.0.0.1:8000", certs.ca_cert, insecure=False)
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "home"))
    conn = read_superlink_connection(None)
    assert conn.name == deploy.CONNECTION_NAME and conn.address == "127.0.0.1:8000"
    assert conn.root_certificates == str(certs.ca_cert.resolve()) and not conn.insecure


def test_argv_disables_runtime_installs_and_requires_tls_for_auth(certs):
    argv = deploy.superlink_argv(deploy.SuperLinkOptions(certs_dir=str(certs.ca_cert.parent), auth=True))
    assert "--disable-runtime-dependency-installation" in argv and "--enable-supernode-auth" in argv
    assert argv[argv.index("--ssl-certfile") + 1] == str(certs.server_cert.resolve())
    assert argv[argv.index("--fleet-api-address") + 1] == "0.0.0.0:9092"
    with pytest.raises(DeployError, match="requires TLS"):
        deploy.superlink_argv(deploy.SuperLinkOptions(insecure=True, auth=True))


# -------------------------------------------------------------------------- ServerApp run config
def test_run_config_to_experiment_and_run_dir(tmp_path, tiny_path):
    from fedlr.run.deploy_app import experiment_from_run_config, run_dir_for

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


def test_traffic_check():
    rows = [{"cumulative_uplink_bytes": 10, "cumulative_downlink_bytes": 5},
            {"cumulative_uplink_bytes": 100, "cumulative_downlink_bytes": 50}]
    info = {"network-traffic": {"inbound-bytes": 130, "outbound-bytes": 49}}
    t = deploy.traffic_check(rows, info)
    assert (t["uplink_overhead_bytes"], t["downlink_overhead_bytes"], t["consistent"]) == (30, -1, False)


# ------------------------------------------------------------------------ CLI: errors, nothing run
def _closed_port() -> int:
    return deploy.free_port()  # bound and released: nothing listens there


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
    assert deploy.check_server_certs(tmp_path / "c/server.pem", tmp_path / "c/server.key", tmp_path / "c/ca.crt",
                                     hosts=["fl.example.org", "127.0.0.1"])
    assert main(["deploy", "keys", str(tmp_path / "k"), "--nodes", "2"]) == 0
    assert sorted(p.name for p in (tmp_path / "k").iterdir()) == ["node-0", "node-0.pub", "node-1", "node-1.pub"]
    assert main(["deploy", "keys", str(tmp_path / "k"), "--nodes", "2"]) == 2  # no silent overwrite
    assert "refusing to overwrite" in capsys.readouterr().err
