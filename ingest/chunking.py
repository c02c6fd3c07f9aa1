"""Parsed documents into chunks the embedding model in use reads whole.

A chunk is at most ``min(HEARTH_CHUNK_TOKENS, the model's window)`` tokens, counted the way the
model counts them (``hearth.embeddings``: its own tokenizer for MiniLM, an over-estimate for a
model whose tokenizer is out of reach), special tokens included: no text is ever dropped by the
model. Each chunk starts with its document's title and section; a table is cut between rows,
with its header row repeated at the top of every piece.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from hearth.config import Settings
from hearth.embeddings import EmbeddingModel, TokenCounter, embedding_model
from hearth.ingest.documents import Block, Parsed

if TYPE_CHECKING:
    from langchain_core.documents import Document

# The heading line (title and section) put before each chunk's text, at most this long.
HEADING_TOKENS = 40
# Bump when the way documents become chunks changes, so re-ingesting reports "updated".
# 2: chunks carry their position in the document ("chunk") and heading path ("headings").
CHUNKING_VERSION = 2
# Below this, a chunk holds too little text around its heading to be worth retrieving.
MIN_CHUNK_TOKENS = 64


class Chunker:
    """Splits parsed documents into chunks of at most ``max_tokens`` tokens of the embedding
    model, special tokens included, so no text is ever dropped; neighbours share ``overlap``
    tokens (at most a quarter of a chunk)."""

    def __init__(self, model: EmbeddingModel, max_tokens: int, overlap: int) -> None:
        max_tokens = min(max_tokens, model.max_tokens)
        if max_tokens < MIN_CHUNK_TOKENS:
            raise ValueError(f"chunks must allow at least {MIN_CHUNK_TOKENS} tokens")
        self.model = model
        self.max_tokens = max_tokens
        self.overlap = min(overlap, max_tokens // 4)
        self._tokens: TokenCounter = model.tokens
        self._splitters: dict[int, Any] = {}

    def count(self, text: str) -> int:
        """Tokens the embedding model reads for ``text``, special tokens included."""
        return self._count_plain(text) + self._tokens.special_tokens

    def _count_plain(self, text: str) -> int:
        return len(self._tokens.offsets(text))

    def _splitter(self, budget: int) -> Any:
        if budget not in self._splitters:
            from langchain_text_splitters import RecursiveCharacterTextSplitter

            self._splitters[budget] = RecursiveCharacterTextSplitter(
                chunk_size=budget, chunk_overlap=min(self.overlap, budget // 4),
                length_function=self._count_plain, separators=["\n\n", "\n", ". ", " ", ""],
                keep_separator="end", strip_whitespace=True,
            )
        return self._splitters[budget]

    def _truncate(self, text: str, tokens: int) -> str:
        offsets = self._tokens.offsets(text)
        if len(offsets) <= tokens:
            return text
        return text[: offsets[tokens - 1][1]].rstrip() + "…"

    def _hard_split(self, text: str, budget: int) -> list[str]:
        """Cut at token boundaries: the last resort for text the splitter left too long."""
        offsets, parts = self._tokens.offsets(text), []
        for start in range(0, len(offsets), budget):
            piece = offsets[start:start + budget]
            parts.append(text[piece[0][0]:piece[-1][1]])
        return [p for p in parts if p.strip()]

    def _fit(self, heading: str, pieces: Iterable[str], budget: int) -> Iterator[str]:
        for piece in pieces:
            text = heading + piece
            if self.count(text) <= self.max_tokens:
                yield text
                continue
            for part in self._hard_split(piece, max(16, budget - 8)):
                yield heading + part

    def _table_pieces(self, text: str, budget: int) -> list[str]:
        """Whole rows only, and the header row again at the top of every piece."""
        rows = [r for r in text.split("\n") if r.strip()]
        if not rows:
            return []
        header, body = rows[0], rows[1:]
        pieces: list[str] = []
        current: list[str] = [header]
        used = self._count_plain(header)
        for row in body:
            cost = self._count_plain(row) + 1
            if len(current) > 1 and used + cost > budget:
                pieces.append("\n".join(current))
                current, used = [header], self._count_plain(header)
            current.append(row)
            used += cost
        pieces.append("\n".join(current))
        return pieces

    def split(self, doc: Parsed, root: str) -> list[Document]:
        from langchain_core.documents import Document

        blocks = merge_blocks(doc.blocks)
        doc_hash = sha256(json.dumps(
            [CHUNKING_VERSION, self.max_tokens, self.overlap, doc.title, doc.kind,
             [[b.text, b.page, b.section, b.table, b.headings] for b in blocks]]))
        chunks: list[Document] = []
        for block in blocks:
            heading = doc.title.strip()
            if block.section and block.section.strip() not in heading:
                heading = f"{heading} › {block.section.strip()}" if heading else block.section
            heading = self._truncate(heading, HEADING_TOKENS) + "\n" if heading else ""
            budget = self.max_tokens - self._tokens.special_tokens - self._count_plain(heading)
            pieces = (self._table_pieces(block.text, budget) if block.table
                      else self._splitter(budget).split_text(block.text))
            for text in self._fit(heading, pieces, budget):
                chunks.append(Document(page_content=text, metadata={
                    "source": doc.source, "root": root, "title": doc.title,
                    "page": block.page, "section": block.section, "table": block.table,
                    "headings": block.headings or block.section, "chunk": len(chunks),
                    "kind": doc.kind, "hash": sha256(text), "doc_hash": doc_hash,
                }))
        return chunks


def merge_blocks(blocks: Iterable[Block]) -> list[Block]:
    """Join neighbouring text blocks of the same page and section; tables stay apart."""
    merged: list[Block] = []
    for block in blocks:
        text = block.text.strip()
        if not text:
            continue
        last = merged[-1] if merged else None
        if (last and not block.table and not last.table and last.page == block.page
                and last.section == block.section and last.headings == block.headings):
            last.text += "\n\n" + text
        else:
            merged.append(Block(text, block.page, block.section, block.table, block.headings))
    return merged


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def chunker_for(settings: Settings) -> Chunker:
    """The chunker for the embedding model the settings choose."""
    return Chunker(embedding_model(settings), settings.chunk_tokens,
                   settings.chunk_overlap_tokens)
