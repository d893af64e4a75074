"""``[compression]``: which codec every update travels through, its parameters, error feedback,
L-GreCo and the downlink. A pydantic section like those of ``fedlr.config`` (unknown keys and bad
values fail before any work, naming the field); it mounts as ``Experiment.compression``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from fedlr.errors import ConfigError, format_validation_error

CODECS = ("none", "fp16", "qsgd", "topk", "powersgd")
ADAPTIVE_CODECS = ("qsgd", "topk", "powersgd")  # the families with a per-tensor parameter
SECTION = "compression"


class CompressionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    codec: Literal["none", "fp16", "qsgd", "topk", "powersgd"] = Field(
        "none", description="none (fp32, the uncompressed record), fp16, qsgd (bits), topk (density), "
        "powersgd (rank)")
    rank: int = Field(1, gt=0, description="powersgd: rank r of each matrix's approximation")
    power_iterations: int = Field(2, gt=0, description="powersgd: local power iterations per round "
                                  "(warm-started from the client's previous Q)")
    min_compression_rate: float = Field(2.0, ge=1.0, description="powersgd: compress a matrix only if "
                                        "(n+m)·r·rate < n·m, else it travels dense")
    density: float = Field(0.01, gt=0, le=1, description="topk: fraction k/n of each tensor's entries kept")
    bits: Literal[2, 3, 4, 5, 6, 7, 8] = Field(4, description="qsgd: bits per value incl. sign "
                                               "(s = 2^(bits-1) - 1 levels); 8 = int8")
    bucket_size: int = Field(128, gt=0, description="qsgd: values per fp32 norm")
    error_feedback: bool = Field(True, description="keep each client's residual and add it next time")
    error_decay: float = Field(1.0, gt=0, le=1, description="memory × error_decay per round it sat idle "
                               "(1: keep stale memory as is)")
    warmup_rounds: int = Field(0, ge=0, description="rounds 1..warmup_rounds travel uncompressed")
    adaptive: Literal["none", "lgreco"] = Field("none", description="lgreco: per-tensor parameter "
                                                "chosen by dynamic programming")
    error_budget: float = Field(1.0, gt=0, description="lgreco: alpha; total error <= alpha x that of "
                                "the uniform parameter")
    reselect_every: int = Field(5, gt=0, description="lgreco: re-choose every K rounds")
    downlink: bool = Field(False, description="also compress the server's broadcast (the change of the "
                           "global model, with the server's error feedback)")

    @field_validator("adaptive")
    @classmethod
    def _adaptive_needs_a_family(cls, value: str, info: ValidationInfo) -> str:
        codec = info.data.get("codec")  # validated before (declared first); absent if it was invalid
        if value == "lgreco" and codec is not None and codec not in ADAPTIVE_CODECS:
            raise ValueError(f"'lgreco' chooses a per-tensor rank, density or bits: it needs codec "
                             f"{' | '.join(ADAPTIVE_CODECS)}, not {codec!r}")
        return value

    @property
    def active(self) -> bool:
        return self.codec != "none"


def compression_config(data: dict[str, Any] | None = None) -> CompressionConfig:
    """Validate a ``[compression]`` table; raises ConfigError naming ``compression.<field>``."""
    try:
        return CompressionConfig.model_validate(data or {})
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, SECTION, CompressionConfig)) from None
