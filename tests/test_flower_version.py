"""fedlr pins Flower 1.39.0: the newest release whose SuperNodes reach the SuperLink over gRPC
(gRPC-rere, Fleet API on port 9092). From 1.40 on that traffic is HTTPS on port 8000 and the
SuperNode has no gRPC transport, so an upgrade would silently break ``fedlr deploy``: fail
loudly here instead (see docs/deployment.md before changing the pin)."""

from importlib.metadata import version

import flwr


def test_flower_is_exactly_1_39_0():
    assert flwr.__version__ == "1.39.0"
    assert version("flwr") == "1.39.0"


def test_the_supernode_still_has_the_grpc_rere_transport():
    from flwr.common.constant import TRANSPORT_TYPE_GRPC_RERE
    from flwr.supernode.cli.flower_supernode import _parse_args_run_supernode

    args = _parse_args_run_supernode().parse_args(["--insecure"])
    assert args.transport == TRANSPORT_TYPE_GRPC_RERE == "grpc-rere"
    assert args.superlink.endswith(":9092")  # the gRPC Fleet API's port (default 0.0.0.0:9092)
