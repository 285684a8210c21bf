"""Guardrails on the research graph: input, source and output rails (NeMo Guardrails)."""

from graph.guardrails.rails import (
    CONFIG_DIR,
    GuardrailError,
    Guardrails,
    GuardrailUnavailable,
    QuestionRejected,
    ReportRejected,
    Verdict,
)

__all__ = [
    "CONFIG_DIR",
    "GuardrailError",
    "GuardrailUnavailable",
    "Guardrails",
    "QuestionRejected",
    "ReportRejected",
    "Verdict",
]
