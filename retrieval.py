"""Finding the passages for a question: dense, keyword, or both fused; and their neighbours.

``dense`` is the vector store's nearest chunks (cosine similarity of MiniLM embeddings).
``keyword`` is BM25 over the chunks' heading paths and texts (``keywords``). ``hybrid`` fuses
the two: each side is searched ``candidates`` deep, every candidate gets its cosine similarity
(from the embedding Chroma holds, so a chunk found by its words alone is scored like the
others), and candidates are ranked by

    similarity + keyword_weight × (the chunk's BM25 / the best BM25 of this question)

so a passage both sides agree on rises, a passage only the keyword side found must share the
question's rare words *and* be near it in meaning, and a question whose words match nothing
in particular (a flat BM25) leaves the dense order as it is. On the evaluation set (166
questions, the whole Python site and three R manuals indexed) BM25 alone lost to dense on
every figure, naive reciprocal-rank fusion raised hit@4 but not hit@1, and the weighted form
raised hit@1, hit@4, MRR and the facts in the top 4 together: docs/evaluation.md has the table.
Only ``hybrid`` and ``dense`` are settings; the others stay here for the ablation
(bench/retrieval_ablation.py).

``page_support`` (``HEARTH_PAGE_SUPPORT``, off by default) orders the passages the model reads
(not which ones they are) by how many near chunks their page has among the candidates: the
page a question is about usually answers it in several places (``supported``).

Every result keeps its cosine similarity as its score: the relevance gate
(``HEARTH_MIN_RELEVANCE``) means the same thing whatever the mode.

``expansion`` (``HEARTH_QUERY_EXPANSION``): text the dense side embeds with the question, an
answer the model drafted without the documents (HyDE), in the words a passage would use. It
ranks; the scores stay the question's own similarity, so that an invented draft near some
passage cannot lift an unrelated question over the relevance gate. The keyword side keeps the
question's words: a draft's words there lowered every figure (docs/evaluation.md).

A chunk often ends by introducing what the next one holds: "one could use backreferences as
such:" and the code in the next chunk, a glossary's term and its definition, "the numeric
values are given in the following table." and the table. ``continuation`` is what follows a
passage that ends so (``introduces``) or that points to the table after it; the chain adds it
to that passage alone when ``HEARTH_CONTEXT_CONTINUATION_TOKENS`` is set (off by default:
docs/evaluation.md), where neighbours widen every passage both ways.

A ``reranker`` (``HEARTH_RERANKER``, ``rerank``) reads the first RERANK_DEPTH chunks again with a
second model and orders them by its similarity blended with the first score, before the page
support; the scores given back stay the cosine similarities (``reranked``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from langchain_core.documents import Document

from hearth.access import DEFAULT
from hearth.grounding import HEADING_PATH
from hearth.keywords import KeywordIndex, query_terms
from hearth.vectorstore import VectorStore

Hit = tuple[Document, float, str]  # (chunk, score, chunk id), as the vector store gives them


class Mode(StrEnum):
    dense = "dense"
    keyword = "keyword"
    hybrid = "hybrid"  # weighted score fusion (the default)
    rrf = "rrf"  # reciprocal-rank fusion, for comparison


RRF_K = 60


@dataclass(frozen=True)
class Fusion:
    """How the two sides are combined: ``keyword_weight`` scales the keyword side's
    normalised BM25 against the cosine similarity; ``candidates`` is how deep each side is
    searched; ``headings_weight`` is BM25's weight of the heading path against the text."""

    mode: Mode = Mode.hybrid
    keyword_weight: float = 0.15
    candidates: int = 20
    headings_weight: float = 2.0
    # Fuse only for a question with an identifier, a number or a quoted word in it; else dense.
    gated: bool = False
    # k passages from k different pages, each page's other chunks among the first k joined to
    # its best one (``by_page``); off, the k best chunks as they rank.
    by_page: bool = False
    # The first ``passages`` chunks (those the model reads) ordered by their similarity +
    # ``page_support`` × the other chunks of their page among the ``candidates`` best that are
    # within SUPPORT_MARGIN of the best one (``supported``); 0: by their similarity alone.
    page_support: float = 0.0
    passages: int = 4


SUPPORT_MARGIN = 0.1
# The chunks a reranker reads again, and its similarity's share of their new score.
RERANK_DEPTH = 10
RERANK_WEIGHT = 0.7


class Reranker(Protocol):
    def similarities(self, question: str, passages: Sequence[str]) -> list[float]: ...


def _key(hit: Hit) -> tuple[str, str]:
    return str(hit[0].metadata.get("collection") or DEFAULT), hit[2]


def retrieve(store: VectorStore, question: str, k: int, collections: Sequence[str],
             fusion: Fusion, expansion: str = "", reranker: Reranker | None = None
             ) -> list[Hit]:
    """The k best chunks of ``collections`` for ``question``, best first, scored by cosine
    similarity (``keyword`` mode: the BM25 order, each with its similarity); with
    ``fusion.by_page``, the best passages of k different pages (``by_page``); with an
    ``expansion``, ranked by the question and it together, scored by the question; with a
    ``reranker``, the first RERANK_DEPTH ordered again by it (``reranked``)."""
    if not collections or k < 1:
        return []
    deeper = fusion.by_page or fusion.page_support > 0 or reranker is not None
    depth = max(k, fusion.candidates) if deeper else k
    hits = _ranked(store, question, depth, collections, fusion, expansion.strip())
    similarity = {h[2]: h[1] for h in hits} if reranker is not None else {}
    if reranker is not None:
        hits = reranked(reranker, question, hits)
    if fusion.page_support > 0:
        top = min(k, fusion.passages)
        hits = supported(hits, top, fusion.page_support) + hits[top:]
    if reranker is not None:  # ordered by the blend; scored, as ever, by the similarity
        hits = [(doc, similarity[chunk_id], chunk_id) for doc, _, chunk_id in hits]
    return by_page(hits, k) if fusion.by_page else hits[:k]


def passage_text(doc: Document) -> str:
    """What a reranker reads of a chunk: its title › section, then its text (as
    bench/retrieval_ablation.py read them when it measured e5, so that its cached vectors and
    Hearth's are the same; the keyword index's heading path is built otherwise)."""
    meta = doc.metadata
    headings = HEADING_PATH.join(str(meta[key]) for key in ("title", "section") if meta.get(key))
    return f"{headings}\n{doc.page_content}"


def reranked(reranker: Reranker, question: str, hits: Sequence[Hit]) -> list[Hit]:
    """``hits`` with the first RERANK_DEPTH ordered by RERANK_WEIGHT × the reranker's
    similarity + the rest × their score, and scored so; the others after them as they were.
    On the evaluation set (hybrid), multilingual-e5-small so blended raised hit@4 from 0.892
    to 0.904; on the held-out set hit@1 from 0.750 to 0.786; the 1.5B's answers from the
    passages it chose were worse (docs/evaluation.md)."""
    top = list(hits[:RERANK_DEPTH])
    if len(top) < 2:
        return list(hits)
    second = reranker.similarities(question, [passage_text(doc) for doc, _, _ in top])
    blended = [(doc, (1 - RERANK_WEIGHT) * score + RERANK_WEIGHT * again, chunk_id)
               for (doc, score, chunk_id), again in zip(top, second, strict=True)]
    return sorted(blended, key=lambda h: -h[1]) + list(hits[RERANK_DEPTH:])


def _ranked(store: VectorStore, question: str, k: int, collections: Sequence[str],
            fusion: Fusion, expansion: str = "") -> list[Hit]:
    if not expansion or fusion.mode is Mode.keyword:
        return _ranked_by(store, question, None, k, collections, fusion)
    expanded = store.embeddings.embed_query(f"{question}\n{expansion}")
    hits = _ranked_by(store, question, expanded, k, collections, fusion)
    own = store.similarities(store.embeddings.embed_query(question), [_key(h) for h in hits])
    return [(doc, own[chunk_id], chunk_id) for doc, _, chunk_id in hits if chunk_id in own]


def _ranked_by(store: VectorStore, question: str, vector: Sequence[float] | None, k: int,
               collections: Sequence[str], fusion: Fusion) -> list[Hit]:
    """The ranking of ``fusion``: ``vector`` (by default the question's embedding) on the
    dense side, ``question``'s words on the keyword side."""
    if fusion.mode is Mode.dense or (fusion.gated and not any(
            weight > 1 for _, weight in query_terms(question))):
        return store.search(question, k, collections, vector=vector)
    depth = max(k, fusion.candidates)
    words = store.keyword_search(question, depth, collections,
                                 headings_weight=fusion.headings_weight)
    if vector is None:
        vector = store.embeddings.embed_query(question)
    if fusion.mode is Mode.keyword:
        return _with_similarity(store, vector, words[:k])
    dense = store.search(question, depth, collections, vector=vector)
    if fusion.mode is Mode.rrf:
        return _rrf(store, vector, dense, words, k)
    return _weighted(store, vector, dense, words, k, fusion.keyword_weight)


def _page_of(hit: Hit) -> tuple[str, str, Any]:
    meta = hit[0].metadata
    return (str(meta.get("collection") or DEFAULT), str(meta.get("source") or ""),
            meta.get("page") or 0)


def supported(hits: Sequence[Hit], k: int, weight: float) -> list[Hit]:
    """The first k of ``hits`` ordered by their score + ``weight`` × the number of other
    chunks of the same page among ``hits`` that score within SUPPORT_MARGIN of the best: a
    page that several near chunks come from is more likely the page the question is about
    than one chunk alone. Only the order of the k changes, not which k they are; the scores
    stay the similarities. On the evaluation set (dense, 166 questions) the expected page came
    first for 0.633 of the questions instead of 0.554, hit@4 unchanged (docs/evaluation.md);
    a support without the margin let a long page's many middling chunks outrank a PDF page's
    one close match. Whatever ranked the k (the fusion, an expansion), they are ordered by
    their similarity and support: with hybrid, hit@1 0.608 to 0.633. Off by default
    (``HEARTH_PAGE_SUPPORT``): the answers did not gain, and a PDF page's several near chunks
    can outrank the page that answers."""
    if not hits:
        return []
    floor = max(h[1] for h in hits) - SUPPORT_MARGIN
    near = [_page_of(h) for h in hits if h[1] >= floor]
    support = [near.count(_page_of(h)) - (h[1] >= floor) for h in hits[:k]]
    order = sorted(range(len(support)), key=lambda i: (-(hits[i][1] + weight * support[i]), i))
    return [hits[i] for i in order]


def by_page(hits: Sequence[Hit], k: int) -> list[Hit]:
    """One passage for each of the first k pages (document and page) that ``hits`` reach, in
    their order: the page's best chunk, joined by its other chunks that rank among the first
    k. Four chunks of one page used to fill all four places: on the
    evaluation set the expected page was then among the four in 0.831 of the questions (hybrid),
    and 0.892 with one place a page, the key facts in the passages rising with it (0.799 to
    0.824), since the chunks that share a page are kept (docs/evaluation.md)."""
    pages: dict[tuple[str, str, Any], list[Hit]] = {}
    for rank, hit in enumerate(hits):
        page = _page_of(hit)
        if page in pages:
            if rank < k:
                pages[page].append(hit)
        elif len(pages) < k:
            pages[page] = [hit]
    return [_joined(chunks) for chunks in pages.values()]


def _joined(chunks: Sequence[Hit]) -> Hit:
    """The chunks of one page as one passage, best first, scored and named by the best: a
    chunk that follows the one before it on the page without the text they share, another
    after " … ". The joined passage has no position of its own: it is not widened with
    neighbours again."""
    best = chunks[0]
    if len(chunks) == 1:
        return best
    text, previous = "", None
    for doc, _, _ in chunks:
        body, position = doc.page_content, _position(doc)
        if not text:
            text = body
        elif previous is not None and position == previous + 1:
            text = _stitched(text, _without_heading(body, text))
        else:
            text = f"{text} … {body}"
        previous = position
    metadata = {key: value for key, value in best[0].metadata.items() if key != "chunk"}
    metadata["joined"] = len(chunks)
    return Document(page_content=text, metadata=metadata), best[1], best[2]


def _position(doc: Document) -> int | None:
    position = doc.metadata.get("chunk")
    return position if isinstance(position, int) and not isinstance(position, bool) else None


def _with_similarity(store: VectorStore, vector: Sequence[float], hits: Sequence[Hit]
                     ) -> list[Hit]:
    """The hits with their cosine similarity; one the vector store does not hold (a keyword
    index left behind by a vector store deleted by hand) is dropped, never shown."""
    scores = store.similarities(vector, [_key(h) for h in hits])
    return [(doc, scores[chunk_id], chunk_id) for doc, _, chunk_id in hits if chunk_id in scores]


def _weighted(store: VectorStore, vector: Sequence[float], dense: Sequence[Hit],
              words: Sequence[Hit], k: int, weight: float) -> list[Hit]:
    similarity = {_key(h): h[1] for h in dense}
    missing = [_key(h) for h in words if _key(h) not in similarity]
    if missing:
        found = store.similarities(vector, missing)
        similarity |= {key: found[key[1]] for key in missing if key[1] in found}
    words = [h for h in words if _key(h) in similarity]  # held by the vector store
    best = max((h[1] for h in words), default=0.0)
    keyword = {_key(h): h[1] / best for h in words} if best > 0 else {}
    chunks: dict[tuple[str, str], Hit] = {}
    for hit in [*dense, *words]:
        key = _key(hit)
        chunks.setdefault(key, (hit[0], similarity[key], hit[2]))
    ranked = sorted(chunks, key=lambda key: -(similarity[key] + weight * keyword.get(key, 0.0)))
    return [chunks[key] for key in ranked[:k]]


def _rrf(store: VectorStore, vector: Sequence[float], dense: Sequence[Hit],
         words: Sequence[Hit], k: int) -> list[Hit]:
    fused: dict[tuple[str, str], float] = {}
    chunks: dict[tuple[str, str], Hit] = {}
    for hits in (dense, words):
        for rank, hit in enumerate(hits, 1):
            key = _key(hit)
            fused[key] = fused.get(key, 0.0) + 1.0 / (RRF_K + rank)
            chunks.setdefault(key, hit)
    similarity = {_key(h): h[1] for h in dense}
    scored = _with_similarity(store, vector, [h for h in words if _key(h) not in similarity])
    similarity |= {_key(h): h[1] for h in scored}
    ranked = [key for key in sorted(fused, key=lambda key: -fused[key]) if key in similarity]
    return [(chunks[key][0], similarity[key], key[1]) for key in ranked[:k]]


def with_neighbours(store: VectorStore, hit: Hit, before: int, after: int) -> str:
    """The chunk's text with up to ``before`` and ``after`` chunks of the same document (and
    page) around it, in document order, each neighbour's heading line and the text it shares
    with the chunk before it left out. The chunk's own text when its position is unknown (an
    index from before chunks recorded it)."""
    doc, _, _ = hit
    meta: dict[str, Any] = doc.metadata
    position = meta.get("chunk")
    if not isinstance(position, int) or isinstance(position, bool) or (before + after) < 1:
        return doc.page_content
    page = meta.get("page")
    around = store.keywords.neighbours(
        str(meta.get("collection") or DEFAULT), str(meta.get("source") or ""),
        int(page) if isinstance(page, int | float) else 0, position, before, after)
    if len(around) < 2:
        return doc.page_content
    text = ""
    for n, body in around:
        body = doc.page_content if n == position else body
        if text:
            body = _without_heading(body, doc.page_content)
        text = _stitched(text, body) if text else body
    return text


# A last sentence that ends by leading on: "in the following table.", "as follows.", "below."
LEADS_ON = re.compile(r"\b(?:the following(?:\s+\w+){0,2}|as follows|below)[.:]$", re.IGNORECASE)
# A lone last line of at most this many words without an ending: a term, a heading, "Note".
TERM_WORDS = 6
# A sentence that points to a table after it (a table is a chunk of its own).
TABLE_AHEAD = re.compile(r"\b(?:the following table|the table below)\b", re.IGNORECASE)
ENDED = tuple(".!?;,)]}\"'”’|")


def introduces(text: str) -> bool:
    """Whether the passage ends by introducing something it does not hold: its last line
    ends in ":", points to what follows, or is a term or heading alone in its paragraph
    (after the passage's heading line and at least one more line)."""
    lines = text.rstrip().split("\n")
    last = lines[-1].strip()
    if len(lines) < 2 or not last:
        return False
    if last.endswith(":") or LEADS_ON.search(last):
        return True
    alone = len(lines) > 2 and not lines[-2].strip()  # a paragraph of its own
    return (alone and len(last.split()) <= TERM_WORDS and not last.endswith(ENDED)
            and " | " not in last and not last.startswith(">>>"))


def continuation(keywords: KeywordIndex, hit: Hit) -> str:
    """What the chunk introduces and leaves to the next one: that chunk's text, without its
    heading line and the text the two share, when the chunk ends by introducing it
    (``introduces``), or when it is the table the chunk's text points to ("given in the
    following table", a sentence or two before its end). Empty otherwise, at the document's
    end, or when the chunk's position is unknown."""
    doc, _, _ = hit
    text = doc.page_content
    meta: dict[str, Any] = doc.metadata
    position = meta.get("chunk")
    ends_introducing = introduces(text)
    if (not isinstance(position, int) or isinstance(position, bool)
            or not (ends_introducing or TABLE_AHEAD.search(text))):
        return ""
    body = keywords.following(
        str(meta.get("collection") or DEFAULT), str(meta.get("source") or ""), position)
    if not body:
        return ""
    body = _without_heading(body, text)
    if not ends_introducing and " | " not in body.partition("\n")[0]:
        return ""  # the table pointed to is not the next chunk
    shared = _overlap(text, body)
    last = text.rstrip().rsplit("\n", 1)[-1].strip()
    if not shared and last and body.startswith(last):  # an overlap of a short line alone
        shared = len(last)
    return body[shared:].strip()


def leading(text: str, tokens: int, count: Callable[[str], int]) -> str:
    """The paragraphs at the start of ``text`` that fit in ``tokens`` (``count``), or the
    lines of the first paragraph that do: whole paragraphs and lines only."""
    kept = ""
    for part in text.split("\n\n"):
        longer = f"{kept}\n\n{part}" if kept else part
        if count(longer) > tokens:
            break
        kept = longer
    if kept:
        return kept
    for line in text.split("\n"):
        longer = f"{kept}\n{line}" if kept else line
        if count(longer) > tokens:
            break
        kept = longer
    return kept


def _stitched(text: str, body: str) -> str:
    """``body`` after ``text`` where it follows on: without the text they share, or on a new
    line where they share none."""
    shared = _overlap(text, body)
    return text + body[shared:] if shared else f"{text}\n{body}"


def _without_heading(body: str, chunk: str) -> str:
    """A neighbour's text without the heading line every chunk of a section starts with."""
    first, _, rest = body.partition("\n")
    return rest if rest and chunk.startswith(first + "\n") else body


def _overlap(before: str, after: str, longest: int = 400) -> int:
    """Characters at the start of ``after`` that end ``before`` (the chunks' overlap)."""
    for size in range(min(longest, len(before), len(after)), 15, -1):
        if before.endswith(after[:size]):
            return size
    return 0
