"""fedlr's Flower ClientApp (method-agnostic) — installed as ``fedlr.clients``."""

if __name__ != "fedlr.clients":  # ``import clients`` from the repository root
    raise ImportError(f"import fedlr.clients, not {__name__}: this folder is installed as fedlr.clients "
                      "(pyproject.toml [tool.setuptools.package-dir]); under its bare name it would load a second "
                      "copy of the ClientApp")
