"""Errors every layer raises (kept apart so config sections in sub-packages can use them without
importing ``fedlr.config``)."""


class ConfigError(ValueError):
    """A configuration problem, reported to the user with exit code 2 before any work."""


def format_validation_error(err, prefix: str = "") -> str:
    """A pydantic ``ValidationError`` as lines ``section.field: what is wrong`` (``prefix`` names
    the section when the model is one section, e.g. ``compression``)."""
    lines = []
    for e in err.errors():
        loc = ".".join([*([prefix] if prefix else []), *(str(p) for p in e["loc"])]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"{loc}: unknown key")
        elif e["type"] == "literal_error":
            lines.append(f"{loc}: {e['input']!r} is not allowed; {e['msg'][0].lower() + e['msg'][1:]}")
        elif e["type"] == "value_error" and prefix:
            lines.append(f"{loc}: {e['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"{loc}: {e['msg']} (got {e.get('input')!r})")
    return "invalid experiment config:\n  " + "\n  ".join(lines)
