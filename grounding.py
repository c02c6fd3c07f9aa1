"""Is the answer in the passages? The evidence for it, and a check of what it claims.

A small model given the right passage still invents: a number (365 days where the page says
999999999), a function (``venv.Venv``), a command. So after every answer:

- **claims** are taken from it: numbers, code identifiers (``contextlib.chdir``, ``os.walk()``,
  ``snake_case``), and code spans or commands (in backticks or code blocks);
- each claim is **supported** when the retrieved passages contain it (compared without case,
  spacing and quotes; a command's words one by one, placeholders such as ``NAME`` or
  ``/path/to/folder`` aside);
- the answer is **grounded** when no claim is unsupported and enough of its words come from
  the passages; otherwise the unsupported spans are named, and the faces say that the answer
  is not backed by the documents;
- the **evidence** is the passage sentences that best support the answer: what a reader checks.

All of it is text comparison, no model: fast, and the same on every backend.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

# Share of the answer's content words that must appear in the passages: an answer says things
# in its own words (about half of them, measured on the guide's passages), not in other topics'.
MIN_WORD_SUPPORT = 0.3
EVIDENCE_SENTENCES = 3
MIN_EVIDENCE_OVERLAP = 2  # content words shared with the answer, at least

STOPWORDS = frozenset({
    "a", "about", "above", "after", "again", "all", "also", "an", "and", "answer", "any", "are",
    "as", "at", "be", "because", "been", "before", "being", "below", "between", "both", "but",
    "by", "can", "could", "did", "do", "document", "documents", "does", "doing", "down", "during",
    "each", "few", "for", "from", "further", "had", "has", "have", "having", "he", "her", "here",
    "hers", "him", "his", "how", "i", "if", "in", "into", "is", "it", "its", "itself", "just",
    "like", "may", "me", "might", "more", "most", "must", "my", "no", "nor", "not", "now", "of",
    "off", "on", "once", "only", "or", "other", "our", "out", "over", "own", "passage", "question",
    "run", "runs", "same", "she", "should", "so", "some", "such", "than", "that", "the", "their",
    "them", "then", "there", "these", "they", "this", "those", "through", "to", "too", "under",
    "until", "up", "use", "used", "uses", "using", "very", "was", "we", "were", "what", "when",
    "where", "which", "while", "who", "whom", "why", "will", "with", "would", "you", "your",
    "yours", "yourself",
})
PLACEHOLDER = re.compile(
    r"^(<[^>]*>|\[[^\]]*\]|\{[^}]*\}|[A-Z][A-Z0-9_]{2,}|.*path/to.*|.*your[-_].*|.*my[-_].*|"
    r"\.\.\.|…|[-=|]+)$")
FENCE = re.compile(r"```[^\n]*\n(.*?)```", re.DOTALL)
INLINE_CODE = re.compile(r"`([^`\n]+)`")
NUMBER = re.compile(r"(?<![\w.])[-+]?\d[\d,_]*(?:\.\d+)?(?![\w])")
IDENTIFIER = re.compile(
    r"(?<![\w.])(?:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+(?:\(\))?|[A-Za-z_]\w*\(\)|"
    r"[a-z]+(?:_[a-z0-9]+)+|--?[a-z][\w-]+)(?![\w])")
SENTENCE = re.compile(r"[^.!?\n]+(?:[.!?]+|$)", re.MULTILINE)
WORD = re.compile(r"[A-Za-z][A-Za-z0-9_'-]+")


@dataclass
class Evidence:
    """A sentence of a passage that supports the answer. ``source`` is the index of its
    passage among the answer's sources; ``start``/``end`` locate it in that passage's text."""

    source: int
    text: str
    start: int
    end: int
    score: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Verdict:
    grounded: bool
    unsupported: list[str]  # the answer's spans that no passage contains
    claims: int  # how many spans were checked
    word_support: float  # share of the answer's content words found in the passages


def normalized(text: str) -> str:
    """Text compared for support: lower case, one space, plain quotes, no spaces around
    punctuation that code writes either way (``a = 1`` and ``a=1``)."""
    text = text.lower().replace("’", "'").replace("“", '"').replace("”", '"')
    text = re.sub(r"\s+", " ", text)
    return re.sub(r"\s*([=(),:\[\]{}])\s*", r"\1", text).strip()


def content_words(text: str) -> set[str]:
    return {w.lower() for w in WORD.findall(text) if w.lower() not in STOPWORDS and len(w) > 2}


def claims(answer: str) -> list[str]:
    """The spans of an answer a reader would take as facts to copy: code and commands,
    identifiers, numbers (single digits aside: "2 steps" claims little)."""
    found: list[str] = []
    code_blocks = FENCE.findall(answer)
    for block in code_blocks:
        found += [line.strip().removeprefix("$ ").strip() for line in block.splitlines()
                  if line.strip() and not line.strip().startswith("#")]
    prose = FENCE.sub(" ", answer)
    found += [span.strip() for span in INLINE_CODE.findall(prose)]
    prose = INLINE_CODE.sub(" ", prose)
    found += IDENTIFIER.findall(prose)
    found += [n for n in NUMBER.findall(prose) if len(n.strip("+-").replace(",", "")) > 1]
    seen: set[str] = set()
    return [c for c in found if c and not (c in seen or seen.add(c))]  # type: ignore[func-returns-value]


def supported(claim: str, passages: str) -> bool:
    """Whether the (normalized) passages contain the claim, or each word of a command."""
    if normalized(claim) in passages:
        return True
    words = [w.strip("\"'`,;") for w in claim.split()]
    words = [w for w in words if w and not PLACEHOLDER.match(w)]
    if len(words) < 2:
        return not words  # a single word, not found; a span of placeholders only claims none
    return all(normalized(w) in passages for w in words)


def check(answer: str, passages: Sequence[str]) -> Verdict:
    joined = normalized("\n".join(passages))
    spans = claims(answer)
    unsupported = [c for c in spans if not supported(c, joined)]
    words = content_words(FENCE.sub(" ", answer))
    in_passages = content_words(" ".join(passages))
    share = len(words & in_passages) / len(words) if words else 1.0
    return Verdict(grounded=not unsupported and share >= MIN_WORD_SUPPORT,
                   unsupported=unsupported, claims=len(spans), word_support=round(share, 3))


def evidence(answer: str, passages: Sequence[str]) -> list[Evidence]:
    """The passage sentences that share the most with the answer (its content words, its
    claims counted thrice), best first; a sentence sharing too little is no evidence."""
    wanted = content_words(answer)
    spans = [normalized(c) for c in claims(answer)]
    scored: list[Evidence] = []
    for index, text in enumerate(passages):
        for match in SENTENCE.finditer(text):
            sentence = match.group().strip()
            if len(sentence) < 12:
                continue
            shared = len(content_words(sentence) & wanted)
            exact = sum(1 for s in spans if s and s in normalized(sentence))
            score = shared + 3 * exact
            if shared + exact >= MIN_EVIDENCE_OVERLAP:
                start = text.index(sentence, match.start())
                scored.append(Evidence(index, sentence, start, start + len(sentence),
                                       float(score)))
    scored.sort(key=lambda e: (-e.score, e.source, e.start))
    return scored[:EVIDENCE_SENTENCES]
