"""Request bodies, validated by pydantic; their JSON schemas also describe the API."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

from graph.plan import ResearchPlan

CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class ResearchRequest(BaseModel):
    """Body of POST /research."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    question: str = Field(min_length=1, description="The research question, in plain language.")

    @field_validator("question")
    @classmethod
    def _no_control_characters(cls, question: str) -> str:
        found = CONTROL_CHARACTERS.search(question)
        if found:
            raise ValueError(
                f"contains the control character {found.group()!r}; send plain text "
                "(tabs and line breaks are fine)"
            )
        return question


class ApprovalRequest(BaseModel):
    """Body of POST /research/{job_id}/approve; it is also the graph's resume value."""

    model_config = ConfigDict(extra="forbid")

    approved: StrictBool = Field(
        description="true runs the plan; false rejects it and ends the job."
    )
    edited_plan: ResearchPlan | None = Field(
        default=None, description="A plan that replaces the draft; only with approved=true."
    )

    def resume_value(self) -> dict[str, object]:
        """Return the exact resume payload: {"approved": bool, "edited_plan": plan | None}."""
        plan = self.edited_plan.model_dump() if self.edited_plan is not None else None
        return {"approved": self.approved, "edited_plan": plan}
