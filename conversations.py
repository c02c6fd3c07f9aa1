"""A conversation and its turns, as Hearth stores and shows them (the stores: ``history``)."""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from hearth.errors import HearthError

# What a conversation id may be: letters, digits and . _ : - (no /, no control characters),
# starting with a letter or digit, at most 64 characters.
CONVERSATION_ID = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"
# A user id is any text of at most 128 characters without control characters or /.
USER_ID = r"^[^\x00-\x1f\x7f/]{1,128}$"


# What a user id must be, said once for every face that checks one.
USER_ID_RULE = "1 to 128 characters, without a slash or a control character"


def user_id_of(value: str) -> str | None:
    """``value`` as every route reads a user id (stripped), or None when no user could be
    named so (USER_ID_RULE)."""
    stripped = value.strip()
    return stripped if re.fullmatch(USER_ID, stripped) else None


def valid_conversation_id(conversation_id: str) -> bool:
    return re.fullmatch(CONVERSATION_ID, conversation_id) is not None


class ConversationNotFound(HearthError):
    """No such conversation for this user (another user's counts as none)."""

    code = "conversation_not_found"
    status = 404

    def __init__(self, conversation_id: str, user_id: str | None = None) -> None:
        super().__init__(f"no conversation {conversation_id!r}"
                         + (f" for user {user_id!r}" if user_id else ""))
        self.conversation_id = conversation_id


@dataclass
class Turn:
    question: str
    answer: str
    sources: list[dict[str, Any]] = field(default_factory=list)
    model: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    usage: dict[str, int] = field(default_factory=dict)
    standalone_question: str = ""
    created_at: float = field(default_factory=time.time)
    evidence: list[dict[str, Any]] = field(default_factory=list)
    grounded: bool = True
    unsupported: list[str] = field(default_factory=list)
    # The model's answer when it was withheld; ``answer`` then says why.
    draft: str = ""
    # The collections the question read; a turn from before collections read ``default``.
    collections: list[str] = field(default_factory=lambda: ["default"])
    # The user's verdict on the answer: {"rating": "helpful" | "wrong", "comment", "at"}.
    feedback: dict[str, Any] | None = None
    # How sure the model was of its words (``Answer.confidence``); None where the backend
    # does not say, and for a turn from before it was stored.
    confidence: float | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Turn:
        """A stored turn: the fields this version knows; a field a later migration added and
        this version dropped would be ignored rather than fail every read."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class Conversation:
    id: str
    user_id: str
    title: str
    created_at: float
    updated_at: float
    turns: list[Turn] = field(default_factory=list)
    # Set when the conversation is listed without its turns.
    turn_count: int | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id, "user_id": self.user_id, "title": self.title,
            "created_at": self.created_at, "updated_at": self.updated_at,
            "turn_count": len(self.turns) if self.turn_count is None else self.turn_count,
        }

    def to_dict(self) -> dict[str, Any]:
        return {**self.summary(), "turns": [asdict(t) for t in self.turns]}


def title_of(question: str) -> str:
    line = " ".join(question.split())
    return line if len(line) <= 80 else line[:77].rstrip() + "..."
