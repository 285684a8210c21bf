"""Citation checks of the output rail, shared by the rail and the offline guard model."""

from __future__ import annotations

import re
from collections.abc import Collection

from graph.nodes import CITATION

SOURCES_HEADING = re.compile(
    r"^#{1,6}[ \t]*(?:sources|references|bibliography|works cited)[ \t]*:?[ \t]*$",
    re.IGNORECASE | re.MULTILINE,
)


def report_body(report: str) -> str:
    """Return the report without its closing list of sources, if it has one.

    A list of sources names every source as `[n]`, so only the text above it shows
    whether the report's claims cite anything.
    """
    headings = list(SOURCES_HEADING.finditer(report))
    return report[: headings[-1].start()] if headings else report


def citation_problem(report: str, source_ids: Collection[int]) -> str | None:
    """Describe what is wrong with the report's `[n]` citations, or return None.

    A report fails when it cites a number that is not a gathered source id, when no
    source was gathered, or when the text above its list of sources cites none of them.
    """
    known = set(source_ids)
    unknown = sorted({int(number) for number in CITATION.findall(report)} - known)
    if unknown:
        listed = ", ".join(f"[{number}]" for number in unknown)
        if len(unknown) == 1:
            return f"it cites {listed}, which is not a gathered source"
        return f"it cites {listed}, which are not gathered sources"
    if not known:
        return "no sources were gathered, so nothing in it is supported by a citation"

    cited_in_body = {int(number) for number in CITATION.findall(report_body(report))}
    if not cited_in_body & known:
        return "it cites none of the gathered sources"
    return None
