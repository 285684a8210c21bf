"""The local corpus: bm25 ranking, re-indexing when files change, and source deduplication."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from graph.providers.corpus import LocalCorpus, split_sections
from tests.conftest import CORPUS_DIR
from tests.helpers import TERMINAL, approve, submit, wait_for_status
from tests.support import corpus_file

SOURDOUGH_PLAN = {
    "steps": [
        {
            "goal": "Find out how a starter works.",
            "queries": ["sourdough starter", "sourdough flour"],
        },
        {"goal": "Find out about the crumb.", "queries": ["sourdough crumb fermentation"]},
    ]
}


@pytest.fixture
async def corpus(tmp_path: Path) -> AsyncIterator[LocalCorpus]:
    index = LocalCorpus(CORPUS_DIR, tmp_path / "corpus.db")
    await index.open()
    yield index
    await index.close()


@pytest.fixture
async def folder_corpus(tmp_path: Path) -> AsyncIterator[tuple[LocalCorpus, Path]]:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "kites.md").write_text("# Kites\n\nA kite flies on a tether in steady wind.\n")
    index = LocalCorpus(folder, tmp_path / "corpus.db")
    await index.open()
    yield index, folder
    await index.close()


async def hit_files(index: LocalCorpus, query: str) -> list[str]:
    return [corpus_file(hit.url) for hit in await index.search(query, 5)]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        pytest.param("sourdough starter lactobacilli", "sourdough.md", id="sourdough"),
        pytest.param("Fresnel lens beacon", "lighthouses.md", id="lighthouses"),
        pytest.param("moraine crevasse calving", "glaciers.md", id="glaciers"),
        pytest.param("varroa mites hive", "beekeeping.md", id="beekeeping"),
        pytest.param("checkpoint snapshot crash", "checkpoints.md", id="checkpoints"),
    ],
)
async def test_search_ranks_distinctive_document(corpus, query, expected):
    files = await hit_files(corpus, query)

    assert files[0] == expected
    assert set(files) == {expected}


async def test_search_ranks_matching_section_first(corpus):
    hits = await corpus.search("Fresnel prisms", 3)

    assert hits[0].url == "corpus/lighthouses.md#the-fresnel-lens"
    assert hits[0].title == "Lighthouses: The Fresnel lens"
    assert "1822" in hits[0].content


async def test_search_stopwords_only_empty(corpus):
    assert await corpus.search("what is the", 3) == []


async def test_reindex_after_file_changes(folder_corpus):
    index, folder = folder_corpus
    assert await hit_files(index, "zeppelin") == []

    (folder / "kites.md").write_text(
        "# Kites\n\nA zeppelin is not a kite, because it floats on gas.\n"
    )

    assert await hit_files(index, "zeppelin") == ["kites.md"]
    assert await hit_files(index, "tether") == []


async def test_reindex_after_file_added(folder_corpus):
    index, folder = folder_corpus

    (folder / "balloons.txt").write_text("A hot air balloon rises because warm air is lighter.\n")

    assert await hit_files(index, "balloon") == ["balloons.txt"]
    assert await hit_files(index, "kite tether") == ["kites.md"]


async def test_reindex_after_file_deleted(folder_corpus):
    index, folder = folder_corpus
    assert await hit_files(index, "kite") == ["kites.md"]

    (folder / "kites.md").unlink()

    assert await hit_files(index, "kite") == []


async def test_reopened_index_drops_deleted_file(folder_corpus, tmp_path: Path):
    index, folder = folder_corpus
    await index.close()
    (folder / "kites.md").unlink()

    reopened = LocalCorpus(folder, tmp_path / "corpus.db")
    await reopened.open()
    try:
        assert await hit_files(reopened, "kite") == []
    finally:
        await reopened.close()


async def test_other_suffixes_not_indexed(folder_corpus):
    index, folder = folder_corpus

    (folder / "notes.html").write_text("<p>A dirigible is a steerable airship.</p>")

    assert await hit_files(index, "dirigible") == []


def test_sections_split_at_headings():
    text = (
        "# Kites\n\nIntro text.\n\n## Flying in wind\n\nWind text.\n\n### Tethers\n\nLine text.\n"
    )

    sections = split_sections("kites.md", text)

    assert [section.anchor for section in sections] == ["kites", "flying-in-wind", "tethers"]
    assert [section.title for section in sections] == [
        "Kites",
        "Kites: Flying in wind",
        "Kites: Tethers",
    ]
    assert sections[1].body == "Wind text."


async def test_job_sources_unique_by_url(client, corpus):
    queries = [query for step in SOURDOUGH_PLAN["steps"] for query in step["queries"]]
    urls_per_query = [[hit.url for hit in await corpus.search(query, 3)] for query in queries]
    assert sum(len(urls) for urls in urls_per_query) > len(set().union(*urls_per_query))

    job_id = await submit(client, "How does sourdough bread rise?")
    await wait_for_status(client, job_id, {"awaiting_approval"})
    await approve(client, job_id, edited_plan=SOURDOUGH_PLAN)
    view = await wait_for_status(client, job_id, TERMINAL)

    urls = [source["url"] for source in view["sources"]]
    assert view["status"] == "done", view
    assert len(urls) == len(set(urls))
    assert set(urls) == set().union(*urls_per_query)
    assert [source["id"] for source in view["sources"]] == list(range(1, len(urls) + 1))
