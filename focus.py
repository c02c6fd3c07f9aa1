"""The passages narrowed to what the question asks (``HEARTH_CONTEXT_FOCUS``).

A small model reads its four passages and answers from the wrong sentence of them: measured on
the evaluation set, every widening of its context (neighbouring chunks, one passage a page)
put more key facts in the passages and fewer in the answers. So the context can be focused:
each passage is cut into its lines and sentences, each scored by its embedding's similarity
to the question's, and the best of all the passages are kept, in their passage's order, up to
a share of the passages' length; what is left out is marked ``…``. A sentence that ends with
``:`` brings the next one (the code or list it introduces). Every passage keeps its heading
and at least its best sentence, so the sources stay the ones retrieval ranked.

The model reads fewer tokens (its first token comes sooner: reading the prompt is 90% of an
answer's time on a CPU), and the grounding check compares the answer with what it read. Off
by default: 28 questions of the evaluation set got better answers from a prompt 28% shorter,
43 others worse ones (docs/evaluation.md, bench/context_focus.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from langchain_core.embeddings import Embeddings

from hearth.grounding import HEADING_PATH, Span, content_words, sentences, wrapped

GAP = " … "
MIN_UNIT_CHARS = 3
WORDS_WEIGHT = 0.2


def units(text: str) -> list[Span]:
    """The spans of ``text``'s lines and sentences, in order, blank ones left out; a sentence
    that a hard-wrapped paragraph (Markdown's) carries on to the next line is one span, and so
    is a fenced code block."""
    return sentences(text, min_chars=MIN_UNIT_CHARS,
                     joined=lambda text, previous, start: wrapped(text, previous, start)
                     or _in_fence(text, previous))


def _in_fence(text: str, previous: Span) -> bool:
    """Whether ``previous`` opens or is inside a fenced code block that goes on: a block is
    one span, kept or left out whole."""
    return text.count("```", 0, previous[1]) % 2 == 1


def _joined(text: str, spans: Sequence[Span], kept: set[int]) -> str:
    """The kept spans in order, adjacent ones with the text between them, gaps as ``GAP``."""
    out: list[str] = []
    last = -1
    for n in sorted(kept):
        start, end = spans[n]
        if out and last == n - 1:
            out.append(text[spans[last][1]:start])
        elif out or start > 0:
            out.append(GAP if out else "… ")
        out.append(text[start:end])
        last = n
    if kept and max(kept) < len(spans) - 1:
        out.append(" …")
    return "".join(out).strip()


@dataclass
class Scored:
    """The passages' sentences (``spans``, per passage; ``flat``: (passage, sentence) in
    order) and their similarity to the question: each alone (``own``), with the sentence
    before and after it (``around``), and the share of the question's content words it has
    (``words``)."""

    spans: list[list[Span]]
    flat: list[tuple[int, int]]
    own: np.ndarray
    around: np.ndarray
    words: np.ndarray

    def scores(self, scoring: str) -> np.ndarray:
        if scoring == "own":
            return self.own
        if scoring == "window":
            return self.around
        both = (self.own + self.around) / 2
        return both + WORDS_WEIGHT * self.words if scoring == "words" else both


def scored(question: str, passages: Sequence[str], embeddings: Embeddings) -> Scored:
    spans = [units(p) for p in passages]
    flat = [(i, n) for i, s in enumerate(spans) for n in range(len(s))]
    texts = [passages[i][slice(*spans[i][n])] for i, n in flat]
    # Each sentence with the ones around it too: a line of numbers or code means little alone
    # ("-999999999 <= days <= 999999999").
    windows = [passages[i][spans[i][max(n - 1, 0)][0]:spans[i][min(n + 1, len(spans[i]) - 1)][1]]
               for i, n in flat]
    vectors = np.asarray(embeddings.embed_documents(texts + windows) if flat else [],
                         dtype=np.float64).reshape(2 * len(flat), -1)
    query = np.asarray(embeddings.embed_query(question), dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=1) * (np.linalg.norm(query) or 1.0)
    similarity = vectors @ query / np.where(norms == 0, 1.0, norms) if flat else np.zeros(0)
    asked = content_words(question)
    words = np.asarray([len(content_words(t) & asked) / len(asked) if asked else 0.0
                        for t in texts])
    return Scored(spans, flat, similarity[:len(flat)], similarity[len(flat):], words)


def focused(question: str, passages: Sequence[str], embeddings: Embeddings,
            share: float, scoring: str = "both") -> list[str]:
    """``passages`` narrowed to their sentences nearest ``question`` in meaning, about
    ``share`` of their characters in all (1 or more: unchanged)."""
    if share >= 1 or not passages:
        return list(passages)
    found = scored(question, passages, embeddings)
    return narrowed(passages, found, found.scores(scoring), share)


def narrowed(passages: Sequence[str], found: Scored, scores: np.ndarray,
             share: float) -> list[str]:
    """The passages' best sentences by ``scores``, about ``share`` of their characters."""
    spans, flat = found.spans, found.flat
    if share >= 1 or not flat:
        return list(passages)
    kept: list[set[int]] = [set() for _ in passages]
    budget = share * sum(len(p) for p in passages)
    used = 0

    def keep(i: int, n: int) -> int:
        if n in kept[i]:
            return 0
        kept[i].add(n)
        start, end = spans[i][n]
        added = end - start
        if passages[i][start:end].rstrip().endswith(":") and n + 1 < len(spans[i]):
            added += keep(i, n + 1)  # what it introduces
        return added

    for i, s in enumerate(spans):
        for n in range(len(s)):
            if HEADING_PATH in passages[i][slice(*s[n])]:
                used += keep(i, n)  # where the passage is: its page's title and section
    best_first = sorted(range(len(flat)), key=lambda m: -scores[m])
    for i in range(len(passages)):  # each passage its best sentence
        m = next((m for m in best_first if flat[m][0] == i and flat[m][1] not in kept[i]), None)
        if m is not None:
            used += keep(*flat[m])
    for m in best_first:
        if used >= budget:
            break
        used += keep(*flat[m])
    return [_joined(p, spans[i], kept[i]) if kept[i] else p for i, p in enumerate(passages)]
