"""Plain-text helpers shared by the offline model and the local corpus."""

from __future__ import annotations

import re

WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9_+.-]*[A-Za-z0-9]|[A-Za-z0-9]")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9`\"'(\[])")
TOKEN = re.compile(r"\S+\s*|\s+")

STOPWORDS = frozenset(
    """a about above after again against all am an and any are as at be because been
    before being below between both but by can could did do does doing down during each
    few for from further had has have having he her here hers how i if in into is it its
    itself just me more most my no nor not now of off on once only or other our out over
    own same she should so some such than that the their them then there these they this
    those through to too under until up very was we were what when where which while who
    whom why will with would you your yours explain describe tell give show please also""".split()
)


def keywords(text: str) -> list[str]:
    """Return the distinct lower-cased content words of `text`, in order of appearance."""
    seen: dict[str, None] = {}
    for match in WORD.finditer(text):
        word = match.group().lower().strip(".-")
        if len(word) > 1 and word not in STOPWORDS:
            seen.setdefault(word, None)
    return list(seen)


def sentences(text: str) -> list[str]:
    """Split prose into sentences, dropping Markdown headings, code fences and list markers."""
    prose: list[str] = []
    for block in re.split(r"\n\s*\n", text):
        block = block.strip()
        if not block or block.startswith(("#", "```", "|")):
            continue
        block = re.sub(r"^\s*(?:[-*+]|\d+\.)\s+", "", block, flags=re.MULTILINE)
        prose.append(" ".join(block.split()))
    return [part.strip() for chunk in prose for part in SENTENCE_END.split(chunk) if part.strip()]


def tokens(text: str) -> list[str]:
    """Split text into streamable tokens: each word keeps the whitespace that follows it."""
    return TOKEN.findall(text)
