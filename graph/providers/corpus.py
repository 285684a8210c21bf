"""Local corpus search: a SQLite FTS5 index, ranked by bm25, over a folder of Markdown and text.

The index lives in its own database file. It is built on first use and brought up
to date whenever a file in the folder is added, changed or removed.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import aiosqlite

from graph.providers.base import SearchHit
from graph.providers.text import keywords

logger = logging.getLogger(__name__)

SUFFIXES = (".md", ".markdown", ".txt")
MAX_SECTION_CHARS = 2400
HEADING = re.compile(r"^(#{1,3})\s+(.+?)\s*#*\s*$", re.MULTILINE)

SCHEMA = """
CREATE TABLE IF NOT EXISTS corpus_files (
    path TEXT PRIMARY KEY, mtime_ns INTEGER NOT NULL, size INTEGER NOT NULL
);
CREATE VIRTUAL TABLE IF NOT EXISTS corpus_sections USING fts5(
    path UNINDEXED, anchor UNINDEXED, title, body, tokenize = 'porter unicode61'
);
"""


@dataclass(frozen=True, slots=True)
class Section:
    """A heading and the text under it, the unit the index returns."""

    anchor: str
    title: str
    body: str


class LocalCorpus:
    """Searches a folder of documents; results carry `corpus/<path>#<anchor>` as their url."""

    name = "local"

    def __init__(self, corpus_dir: Path, index_path: Path) -> None:
        self.corpus_dir = corpus_dir
        self.index_path = index_path
        self._db: aiosqlite.Connection | None = None
        self._signature: tuple[tuple[str, int, int], ...] | None = None
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        """Open the index and bring it up to date with the folder."""
        self.index_path.parent.mkdir(parents=True, exist_ok=True)
        self._db = await aiosqlite.connect(self.index_path)
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.executescript(SCHEMA)
        await self.refresh()

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def search(self, query: str, max_results: int) -> list[SearchHit]:
        """Return the best sections for `query`; any of its words may match."""
        if self._db is None:
            await self.open()
        await self.refresh()
        assert self._db is not None

        words = keywords(query)
        if not words:
            return []
        match = " OR ".join('"' + word.replace('"', "") + '"' for word in words)
        cursor = await self._db.execute(
            "SELECT path, anchor, title, body FROM corpus_sections"
            " WHERE corpus_sections MATCH ? ORDER BY bm25(corpus_sections, 0, 0, 4.0, 1.0)"
            " LIMIT ?",
            (match, max_results),
        )
        rows = await cursor.fetchall()
        return [
            SearchHit(url=f"corpus/{path}#{anchor}", title=title, content=body)
            for path, anchor, title, body in rows
        ]

    async def refresh(self) -> None:
        """Re-index the files whose size or modification time changed since the last look."""
        signature = self._scan()
        if signature == self._signature:
            return
        async with self._lock:
            if signature != self._signature:
                await self._reindex(signature)
                self._signature = signature

    def _scan(self) -> tuple[tuple[str, int, int], ...]:
        if not self.corpus_dir.is_dir():
            return ()
        entries = []
        for path in sorted(self.corpus_dir.rglob("*")):
            if path.suffix.lower() in SUFFIXES and path.is_file():
                stat = path.stat()
                relative = path.relative_to(self.corpus_dir).as_posix()
                entries.append((relative, stat.st_mtime_ns, stat.st_size))
        return tuple(entries)

    async def _reindex(self, signature: tuple[tuple[str, int, int], ...]) -> None:
        assert self._db is not None
        cursor = await self._db.execute("SELECT path, mtime_ns, size FROM corpus_files")
        indexed = {row[0]: (row[1], row[2]) for row in await cursor.fetchall()}
        current = {path: (mtime, size) for path, mtime, size in signature}

        stale = [path for path in indexed if indexed[path] != current.get(path)]
        fresh = [path for path in current if indexed.get(path) != current[path]]
        for path in stale:
            await self._db.execute("DELETE FROM corpus_sections WHERE path = ?", (path,))
            await self._db.execute("DELETE FROM corpus_files WHERE path = ?", (path,))
        for path in fresh:
            text = (self.corpus_dir / path).read_text(encoding="utf-8", errors="replace")
            await self._db.executemany(
                "INSERT INTO corpus_sections (path, anchor, title, body) VALUES (?, ?, ?, ?)",
                [(path, s.anchor, s.title, s.body) for s in split_sections(path, text)],
            )
            await self._db.execute(
                "INSERT INTO corpus_files (path, mtime_ns, size) VALUES (?, ?, ?)",
                (path, *current[path]),
            )
        await self._db.commit()
        if stale or fresh:
            logger.info(
                "corpus index updated: dir=%s files=%d reindexed=%d removed=%d",
                self.corpus_dir,
                len(current),
                len(fresh),
                len(set(stale) - set(fresh)),
            )


def split_sections(path: str, text: str) -> list[Section]:
    """Split a document at its level 1-3 headings; long sections are cut at paragraph breaks."""
    doc_title = _document_title(path, text)
    headings = list(HEADING.finditer(text))
    spans = [(None, 0, headings[0].start() if headings else len(text))]
    spans += [
        (h.group(2), h.end(), headings[i + 1].start() if i + 1 < len(headings) else len(text))
        for i, h in enumerate(headings)
    ]

    sections = []
    for heading, start, end in spans:
        body = text[start:end].strip()
        if not body:
            continue
        title = doc_title if heading is None or heading == doc_title else f"{doc_title}: {heading}"
        anchor = _slug(heading) if heading else "top"
        for number, part in enumerate(_cut(body), start=1):
            sections.append(Section(anchor if number == 1 else f"{anchor}-{number}", title, part))
    return sections


def _document_title(path: str, text: str) -> str:
    first = HEADING.search(text)
    if first and first.group(1) == "#":
        return first.group(2)
    return Path(path).stem.replace("-", " ").replace("_", " ").capitalize()


def _slug(heading: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", heading.lower()).strip("-") or "section"


def _cut(body: str) -> list[str]:
    parts, current = [], ""
    for paragraph in re.split(r"\n\s*\n", body):
        if current and len(current) + len(paragraph) > MAX_SECTION_CHARS:
            parts.append(current)
            current = ""
        current = f"{current}\n\n{paragraph}" if current else paragraph
    if current:
        parts.append(current)
    return parts
