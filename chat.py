"""The chat service: the one place where a question becomes an answer and a stored turn.

Every face asks through here: ``/api/question`` (JSON and SSE), ``/v1/chat/completions`` (JSON
and stream), ``hearth ask`` and the evaluation runner. For each question it checks the
question's length and who may continue the conversation, names a new conversation, takes a
place in the generation queue, runs the chain, and stores exactly one complete turn — or none,
when the answer fails, the client leaves, or nothing is to be stored (no user, or the
evaluation runner). Conversations are read and deleted here too, under the same rule of who
may see them, so the faces never touch the history store.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field

from hearth.auth import MissingUser, Principal
from hearth.conversations import (
    Conversation,
    ConversationNotFound,
    Turn,
    valid_conversation_id,
)
from hearth.errors import HearthError
from hearth.model import Answer, QuestionTooLong, Token
from hearth.services import Services
from hearth.throttle import Hold

log = logging.getLogger("hearth.chat")


class TurnNotFound(HearthError):
    code = "turn_not_found"
    status = 404


@dataclass(frozen=True)
class Ask:
    question: str
    # Whose history the turn goes into; None stores nothing (OpenAI clients without `user`).
    user_id: str | None = None
    # Continue this conversation: it must exist and be the user's, else ConversationNotFound.
    conversation_id: str | None = None
    # The conversation so far when the face carries it (OpenAI clients resend every message);
    # None reads it from the stored conversation.
    turns: Sequence[Turn] | None = None
    # The id a new conversation gets (default: a random one), or how to name it from its first
    # turn; when an id given up front exists and is the user's, the turn is added to it.
    new_conversation_id: str | Callable[[Turn], str] | None = None
    # False: answer only (the evaluation runner), whoever asks.
    store: bool = True
    # The collections to read, each of which the user must be able to read; None: those the
    # conversation read so far (still readable), or for a new one all the user may read.
    collections: Sequence[str] | None = None
    # Read every collection whoever the user is: an administrator, the operator at the
    # terminal, the evaluation runner.
    everything: bool = False
    # Whom the question counts as at the model's gate when it has no user (OpenAI clients
    # without `user`: their address), so that anonymous clients do not share one user's places.
    queue_as: str | None = None
    # How many of the likeliest tokens to record at each drawn token's place (OpenAI's
    # top_logprobs): the answer's tokens always carry their own log-probability.
    alternatives: int = 0
    # Whether the client has left (the server's word for it): a question still waiting for
    # the model is dropped then, its places given up.
    gone: Callable[[], bool] | None = None
    # Whether the server has stopped waiting for the request (its grace period after SIGTERM
    # is over): a question still waiting for the model is refused then (ShuttingDown).
    stopping: Callable[[], bool] | None = None


@dataclass
class Reply:
    answer: Answer
    conversation_id: str | None  # where the turn was stored; None when nothing was


@dataclass
class _Prepared:
    ask: Ask
    turns: Sequence[Turn]
    conversation_id: str | None
    collections: Sequence[str] = ()
    existing: bool = False  # the conversation was stored already: it must still be, to add to
    asked: float = field(default_factory=time.time)  # a question erased after is not stored


class ReplyStream:
    """The answer's tokens as they come, then the Reply. The model's place in the queue is held
    until the stream ends or is closed, however it ends; a closed stream stores nothing."""

    def __init__(self, events: Generator[Token | Reply, None, None],
                 release: Callable[[], None]) -> None:
        self._events = events
        self._release = release
        self._released = False

    def __iter__(self) -> Iterator[Token | Reply]:
        return self

    def __next__(self) -> Token | Reply:
        try:
            return next(self._events)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        try:
            self._events.close()
        finally:
            if not self._released:
                self._released = True
                self._release()


class Chat:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.settings = services.settings

    # -- asking --------------------------------------------------------------------------------

    def _prepare(self, ask: Ask) -> _Prepared:
        prepared = self._conversation_of(ask)
        # Turns a face carries (OpenAI clients resend the chat) do not say what they read.
        stored = () if ask.turns is not None else prepared.turns
        prepared.collections = self._collections(ask, stored)
        return prepared

    def _collections(self, ask: Ask, turns: Sequence[Turn]) -> list[str]:
        """What the question reads: those named, else what the stored conversation read so
        far, else all the user may read. Checked on every question, so a grant revoked since
        the conversation began is gone from its next follow-up."""
        access = self.services.access
        if ask.collections is not None or not turns:
            return access.choose(ask.user_id, ask.collections, everything=ask.everything)
        readable = {c.name for c in access.readable(ask.user_id, everything=ask.everything)}
        return [c for c in turns[-1].collections if c in readable]

    def _conversation_of(self, ask: Ask) -> _Prepared:
        limit = self.settings.max_question_chars
        if len(ask.question) > limit:
            raise QuestionTooLong(f"the question has {len(ask.question)} characters; the limit "
                                  f"is {limit}")
        storing = ask.store and ask.user_id is not None
        if not storing:
            if ask.conversation_id is not None and ask.store:
                raise MissingUser("user: a conversation_id needs the user it belongs to")
            return _Prepared(ask, ask.turns or (), None)
        assert ask.user_id is not None
        store = self.services.history
        store.ping()  # a history store that is down fails now, before the model spends any time
        if ask.conversation_id is not None:
            conversation = store.get(ask.conversation_id)
            if conversation is None or conversation.user_id != ask.user_id:
                raise ConversationNotFound(ask.conversation_id, ask.user_id)
            turns = conversation.turns if ask.turns is None else ask.turns
            return _Prepared(ask, turns, ask.conversation_id, existing=True)
        name = ask.new_conversation_id
        if isinstance(name, str):
            existing = store.get(name)
            if existing is not None and existing.user_id != ask.user_id:
                raise ConversationNotFound(name, ask.user_id)
            return _Prepared(ask, ask.turns or (), name, existing=existing is not None)
        return _Prepared(ask, ask.turns or (), None if callable(name) else uuid.uuid4().hex)

    def _save(self, prepared: _Prepared, answer: Answer) -> Reply:
        ask = prepared.ask
        if not ask.store or ask.user_id is None:
            return Reply(answer, None)
        turn = answer.turn(ask.question)
        conversation_id = prepared.conversation_id
        if conversation_id is None:
            assert callable(ask.new_conversation_id)
            conversation_id = ask.new_conversation_id(turn)
        try:
            self.services.history.add_turn(conversation_id, ask.user_id, turn,
                                           new=not prepared.existing, asked_at=prepared.asked)
        except ConversationNotFound:
            # Deleted while its question was answered (the user's history erased, the
            # conversation deleted, by another request): the answer is given, not stored,
            # and the conversation is not made again.
            log.info("the conversation was deleted while its question was answered: the "
                     "answer is not stored")
            return Reply(answer, None)
        return Reply(answer, conversation_id)

    def _hold(self, ask: Ask) -> Hold:
        """The question's place at the gate, by user (or by address, for a client that names
        no user)."""
        return Hold(self.services.gate, ask.user_id or ask.queue_as or "", ask.gone,
                    ask.stopping)

    def answer(self, ask: Ask) -> Reply:
        """The whole answer, stored."""
        hold = self._hold(ask)
        hold.check()  # busy: refused before any work
        prepared = self._prepare(ask)
        try:
            answer = self.services.assistant.answer(ask.question, prepared.turns,
                                                    prepared.collections, hold.take,
                                                    ask.alternatives)
        finally:
            hold.release()
        return self._save(prepared, answer)

    def stream(self, ask: Ask) -> ReplyStream:
        """Tokens, then the Reply once the turn is stored.

        The first event is computed before this returns, so a model or store that is down
        raises here, where a face can still answer with an error status instead of a stream
        that opens and fails.
        """
        hold = self._hold(ask)
        hold.check()  # busy: refused before any work
        prepared = self._prepare(ask)
        try:
            events = self.services.assistant.stream(ask.question, prepared.turns,
                                                    prepared.collections, hold.take,
                                                    ask.alternatives)
            first = next(events)
        except BaseException:
            hold.release()
            raise
        return ReplyStream(self._relay(prepared, events, first), hold.release)

    def _relay(self, prepared: _Prepared, events: Generator[Token | Answer, None, None],
               first: Token | Answer) -> Generator[Token | Reply, None, None]:
        event, sent = first, 0
        try:
            while isinstance(event, Token):
                yield event
                sent += 1
                event = next(events)
            yield self._save(prepared, event)
        except GeneratorExit:
            log.info("the client left after %d tokens: generation stopped, nothing stored", sent)
            raise
        finally:
            events.close()  # a client gone mid-stream stops the generation

    # -- reading and deleting ------------------------------------------------------------------

    def conversations(self, user_id: str) -> list[Conversation]:
        return self.services.history.list(user_id)

    def conversation(self, conversation_id: str, viewer: Principal | None,
                     user_id: str | None = None) -> Conversation:
        """A conversation the viewer may see (its owner, an admin, anyone with keys off),
        of ``user_id`` when given; anything else is indistinguishable from a missing one."""
        if not valid_conversation_id(conversation_id):
            raise ConversationNotFound(conversation_id)
        conversation = self.services.history.get(conversation_id)
        hidden = conversation is None or (
            viewer is not None and not viewer.admin and conversation.user_id != viewer.user_id
        ) or (user_id is not None and conversation.user_id != user_id)
        if hidden or conversation is None:
            raise ConversationNotFound(conversation_id)
        return conversation

    def delete_conversation(self, conversation_id: str, viewer: Principal | None,
                            user_id: str | None = None) -> bool:
        self.conversation(conversation_id, viewer, user_id)
        if not self.services.history.delete(conversation_id):
            raise ConversationNotFound(conversation_id)  # deleted meanwhile, by another request
        return True

    def erase_history(self, user_id: str) -> int:
        return self.services.history.delete_user(user_id)

    # -- feedback ------------------------------------------------------------------------------

    def feedback(self, conversation_id: str, turn: int | None, user_id: str, rating: str,
                 comment: str = "") -> tuple[int, Turn]:
        """Mark an answer of the user's conversation helpful or wrong (``turn``: its position,
        from 0; None: the last); marking it again replaces the mark. Returns (position, turn)."""
        conversation = self.conversation(conversation_id, None, user_id)
        position = len(conversation.turns) - 1 if turn is None else turn
        if not 0 <= position < len(conversation.turns):
            raise TurnNotFound(f"conversation {conversation_id!r} has no turn {turn} (it has "
                               f"{len(conversation.turns)}, counted from 0)")
        mark = {"rating": rating, "comment": comment.strip(), "at": time.time()}
        if not self.services.history.set_feedback(conversation_id, position, mark):
            raise TurnNotFound(f"conversation {conversation_id!r} has no turn {position}")
        marked = conversation.turns[position]
        marked.feedback = mark
        return position, marked

    def marked_turns(self) -> Sequence[tuple[Conversation, int]]:
        """Every answer a user marked, with its conversation (for ``hearth eval feedback``)."""
        return self.services.history.marked()
