"""Errors every layer raises, and the exit code each one gives ``fedlr`` (kept apart so config
sections in sub-packages can use them without importing ``fedlr.config``).

``fedlr.cli`` catches ``FedlrError`` once: one line ``fedlr: error: …`` on stderr, exit
``exit_code``. Anything else is a bug and keeps its traceback.

| exit | error | meaning |
|---|---|---|
| 1 | ``fedlr.run.simulation.RunFailed`` | a run went through every round but no round aggregated |
| 2 | ``ConfigError`` (``DeployError`` is one) | bad input: nothing was started |
| 3 | ``DeploymentFailed`` | a deployment broke while running: a process died, the SuperLink refused, a timeout |
"""


class FedlrError(Exception):
    """An error ``fedlr`` reports as one line and exits with ``exit_code``."""

    exit_code = 1


class ConfigError(FedlrError, ValueError):
    """A configuration problem, reported to the user with exit code 2 before any work."""

    exit_code = 2


class DeployError(ConfigError):
    """Bad deployment input (certificate, address, node config, a port already taken), reported
    before any process starts."""


class DeploymentFailed(FedlrError, RuntimeError):
    """A deployment that started and then failed: a Flower process exited, the SuperLink refused a
    request, a run did not finish in time."""

    exit_code = 3


def format_validation_error(err, prefix: str = "", model: type | None = None) -> str:
    """A pydantic ``ValidationError`` as lines ``section.field: what is wrong`` (``prefix`` names
    the section when the model is one section, e.g. ``compression``). With ``model`` (the class
    validated), an unknown key names the nearest known one. A model validator's refusal is its
    message alone: its input is the whole section, which says nothing the message does not."""
    lines = []
    for e in err.errors():
        loc = ".".join([*([prefix] if prefix else []), *(str(p) for p in e["loc"])]) or "(top level)"
        if e["type"] == "extra_forbidden":
            near = nearest_key(model, e["loc"])
            lines.append(f"{loc}: unknown key" + (f" (did you mean {near}?)" if near else ""))
        elif e["type"] == "literal_error":
            lines.append(f"{loc}: {e['input']!r} is not allowed; {e['msg'][0].lower() + e['msg'][1:]}")
        elif e["type"] == "value_error" and (prefix or isinstance(e.get("input"), dict)):
            msg = e["msg"].removeprefix("Value error, ")
            named = not (e["loc"] or prefix) or msg.startswith((f"{loc}.", f"{loc}:"))  # the message names its field
            lines.append(msg if named else f"{loc}: {msg}")
        else:
            lines.append(f"{loc}: {e['msg']} (got {e.get('input')!r})")
    return "invalid experiment config:\n  " + "\n  ".join(lines)


def nearest_key(model: type | None, loc: tuple) -> str | None:
    """The dotted name of the field of ``model`` closest to the unknown key at ``loc`` (difflib's
    ratio ≥ 0.6), in the same section; None when nothing is close."""
    import difflib

    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(str(part))
        model = field.annotation if field is not None else None
    names = list(getattr(model, "model_fields", {}))
    match = difflib.get_close_matches(str(loc[-1]), names, n=1)
    return ".".join([*(str(p) for p in loc[:-1]), match[0]]) if match else None
