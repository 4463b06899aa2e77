"""``tongxin chat`` in Chinese and English (tongxin/cli/chat_text.py)."""

from __future__ import annotations

import re
import string
from typing import Any, cast

import pytest

from tongxin.cli.chat import ChatUI, connection_line
from tongxin.cli.chat_text import CATALOGUES, EN, ZH_CN, Text, language
from tongxin.client import RECONNECTED, Client
from tongxin.client.endpoints import ConnectionEvent
from tongxin.proto import tongxin_pb2 as pb

CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")


@pytest.mark.parametrize(("env", "want"), [
    ({}, EN),
    ({"LANG": "C"}, EN),
    ({"LANG": "POSIX"}, EN),
    ({"LANG": "C.UTF-8"}, EN),
    ({"LANG": "en_US.UTF-8"}, EN),
    ({"LANG": "zh_CN.UTF-8"}, ZH_CN),
    ({"LANG": "zh_TW.UTF-8"}, ZH_CN),
    ({"LANG": "zh_CN.UTF-8", "LC_ALL": "C"}, EN),
    ({"LANG": "C", "LC_MESSAGES": "zh_CN.UTF-8"}, ZH_CN),
    ({"LANG": "C", "LC_ALL": "zh_CN.GB18030"}, ZH_CN),
    ({"LANG": "zh_CN.UTF-8", "TONGXIN_LANG": "en"}, EN),
    ({"LANG": "C", "TONGXIN_LANG": "zh-CN"}, ZH_CN),
    ({"LC_ALL": "", "LANG": "zh_CN.UTF-8"}, ZH_CN),
])
def test_language_from_the_environment(env: dict[str, str], want: str) -> None:
    assert language(env) == want


def _fields(s: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(s) if name}


def test_both_catalogues_have_the_same_keys_and_fields() -> None:
    zh, en = CATALOGUES[ZH_CN], CATALOGUES[EN]
    assert set(zh) == set(en)
    for key in zh:
        assert zh[key].strip() or key == "list.separator", key
        assert en[key], key
        assert _fields(zh[key]) <= _fields(en[key]) | {"text"}, key
        assert _fields(en[key]) <= _fields(zh[key]) | {"text"}, key


def test_the_chinese_catalogue_is_chinese() -> None:
    for key, value in CATALOGUES[ZH_CN].items():
        words = re.sub(r"\{\w*\}", "", value)
        # Commands, the program name and variable names stay as they are typed.
        words = re.sub(r"/\w+|TONGXIN_\w+|\btongxin\b|\bID\b|\bN\b|<|>", "", words)
        if re.search(r"[A-Za-z]{2,}", words):
            assert CJK.search(words), (key, value)


def test_every_error_code_has_a_text() -> None:
    for name in (v.name for v in pb.ErrorCode.DESCRIPTOR.values):
        for lang in (ZH_CN, EN):
            assert f"code.{name}" in CATALOGUES[lang], (lang, name)
    assert Text(ZH_CN).code("AUTH_FAILED") == "用户名或密码错误"


def test_english_lines_are_unchanged_for_scripts() -> None:
    t = Text(EN)
    assert t("open", label="bob") == "-- now chatting with bob; type to send, /help for commands"
    assert t("sent", seq=7) == "  sent #7"
    assert t("line.chat", where="#3", who="bob", body="hi", edited="") == "#3 bob: hi"
    moved = ConnectionEvent(kind=RECONNECTED, endpoint="wss://dc2/ws", previous="wss://dc1/ws")
    assert connection_line(moved, t) == (
        "-- 已切换到备用入口 wss://dc2/ws (moved to another entry; nothing missed)")


async def test_a_chinese_terminal_reads_chinese() -> None:
    t = Text(ZH_CN)
    ui = ChatUI(cast(Client, None), t)
    ui.names.update({"u1": "王建国", "u2": "刘晓丽"})
    ui.current = "c1"
    chat = pb.Message(conversation_id="c1", seq=3, sender_id="u1", kind=pb.CHAT,
                      content=pb.Content(text="你好"), edited_at_ms=1)
    assert await ui.render(chat) == "#3 王建国：你好（已编辑）"
    recalled = pb.Message(conversation_id="c1", seq=4, sender_id="u1", kind=pb.CHAT, recalled=True)
    assert await ui.render(recalled) == "#4 王建国：（已撤回）"
    added = pb.Message(conversation_id="c1", seq=5, sender_id="u2", kind=pb.SYSTEM,
                       system=pb.SystemEvent(kind=pb.SystemEvent.MEMBERS_ADDED, user_ids=["u1", "u1"]))
    assert await ui.render(added) == "#5 刘晓丽 邀请 王建国、王建国 加入了群聊"
    moved = ConnectionEvent(kind=RECONNECTED, endpoint="wss://dc2/ws", previous="wss://dc1/ws")
    assert connection_line(moved, t) == "-- 已切换到备用入口 wss://dc2/ws，没有遗漏任何消息"
    assert ui.error(pb.RATE_LIMITED, "slow down") == "! 操作过于频繁，请稍后再试（RATE_LIMITED：slow down）"
    assert t("help").startswith("命令：")
    printed: list[str] = []
    ui.out = printed.append  # type: ignore[method-assign, assignment]
    ui.current = ""
    await ui.line("hello")
    assert printed == ["? 请先打开一个会话：/dm 用户名 或 /group 群名 用户名..."]


def test_text_follows_the_environment(monkeypatch: Any) -> None:
    monkeypatch.delenv("TONGXIN_LANG", raising=False)
    monkeypatch.delenv("LC_ALL", raising=False)
    monkeypatch.delenv("LC_MESSAGES", raising=False)
    monkeypatch.setenv("LANG", "zh_CN.UTF-8")
    assert Text().lang == ZH_CN
    monkeypatch.setenv("LANG", "C")
    assert Text().lang == EN
