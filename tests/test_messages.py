"""The neutral chat data model: the conveniences a caller relies on."""

from __future__ import annotations

from duckagents import open_router
from duckagents.messages import Message, TextPart


def test_plain_text_content_is_one_text_part_not_its_characters() -> None:
    assert Message(role="user", content="hello").content == (TextPart("hello"),)
    assert Message("user", [TextPart("a"), TextPart("b")]).content == (TextPart("a"), TextPart("b"))
    assert Message.user("hello") == Message(role="user", content="hello")


async def test_a_message_built_with_plain_text_is_answered() -> None:
    async with open_router() as router:
        response = await router.complete([Message(role="user", content="hello there")])
    assert response.content
