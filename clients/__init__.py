"""fedlr's Flower ClientApp (method-agnostic) — installed as ``fedlr.clients``."""
