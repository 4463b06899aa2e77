"""What ``tongxin chat`` prints, in Simplified Chinese or English.

Two plain dictionaries (no gettext, no Babel: a few dozen lines do not need a
toolchain or compiled catalogues) and the rule that picks one:

* ``TONGXIN_LANG`` when set (``zh``/``zh-CN``/``zh_CN`` or ``en``);
* otherwise the POSIX locale variables in their order of precedence,
  ``LC_ALL``, ``LC_MESSAGES``, ``LANG``: the first one set decides, ``zh*`` is
  Chinese and anything else English;
* nothing set, or ``C``/``POSIX``: English. Operators' terminals and SSH
  sessions into servers are often ``LANG=C``, and there a terminal may not
  even have a CJK font; staff desktops (UOS, Kylin) run ``zh_CN.UTF-8``.

The English lines are the ones ``tongxin chat`` printed before it spoke
Chinese (scripts and the integration tests match them); several already carry
the Chinese phrase first. docs/web-client.md, "The terminal client".
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Final

ZH_CN: Final = "zh-CN"
EN: Final = "en"

_EN: Final[dict[str, str]] = {
    "help": """commands:
  /dm USER              open a direct conversation with USER
  /group NAME USER...   create a group and open it
  /add USER...          add members to the open group
  /open CONV_ID         open a conversation by id
  /list                 list your conversations with unread counts
  /history [N]          show the last N entries of the open conversation
  /recall SEQ           recall your message SEQ
  /edit SEQ TEXT        replace the text of your message SEQ
  /who USER...          show whether users are online
  /quit                 leave
anything else is sent as a message to the open conversation""",
    "conn.lost": "-- 连接已断开，正在重连 (connection to {endpoint} lost; reconnecting)",
    "conn.moved": "-- 已切换到备用入口 {endpoint} (moved to another entry; nothing missed)",
    "conn.back": "-- 已重新连接 {endpoint} (reconnected; nothing missed)",
    "conn.failed": "-- 无法重新连接，请稍后再试 (gave up reconnecting: {error})",
    "device.added": "新设备（已由其用户密钥签名） (new device, signed by their user key)",
    "device.unsigned": "未经其用户密钥签名，不会发给它，也不显示它的消息 (NOT signed by their user key: "
                       "nothing is sent to it and its messages are not shown)",
    "device.unverified": "新设备，该用户尚无用户密钥，无法验证 (new device; the user has no user key, "
                         "so it cannot be verified)",
    "device.removed": "设备已移除 (device removed)",
    "members.first": "-- 首次查看该群成员（按服务器所列） (first look at the members, as the server "
                     "lists them): {names}",
    "escrow.changed": "-- 合规托管密钥已更换 (the compliance escrow key changed): {change}",
    "e2ee.cannot_open": "(无法解密 cannot open: {error})",
    "e2ee.file": "<encrypted file {name}>",
    "body.file": "<file {name}>",
    "body.encrypted": "<encrypted>",
    "line.chat": "{where} {who}: {body}{edited}",
    "line.edited_mark": " (edited)",
    "line.recalled": "{where} {who}: (recalled)",
    "line.unavailable": "{where} {who}: (unavailable: its stored copy failed the server's check)",
    "line.recall": "{where} {who} recalled message {target}",
    "line.edit": "{where} {who} edited message {target}: {text}",
    "system.created": "started the conversation ({names})",
    "system.added": "added {names}",
    "system.removed": "removed {names}",
    "system.left": "left",
    "system.role": "changed the role of {names}",
    "system.renamed": "renamed the group to {name}",
    "list.separator": ", ",
    "receipt.read": "  ({who} read up to #{seq}{where})",
    "receipt.where": " in {label}",
    "typing": "  ({who} is typing...)",
    "presence": "  ({who} is {state})",
    "presence.ONLINE": "online",
    "presence.OFFLINE": "offline",
    "presence.PRESENCE_STATUS_UNSPECIFIED": "presence_status_unspecified",
    "error": "! {code}: {message}",
    "open": "-- now chatting with {label}; type to send, /help for commands",
    "no_conversation": "! no conversation {conversation}",
    "list.row": "{conversation}  {label}  unread {unread}",
    "recalled": "  recalled #{seq}",
    "edited": "  edited #{seq}",
    "who": "  {who}: {state} ({devices} devices)",
    "unknown_command": "? unknown command or missing argument; /help lists commands",
    "open_first": "? open a conversation first: /dm USER or /group NAME USER...",
    "sent": "  sent #{seq}",
    "sent_e2ee": "  sent #{seq} (端到端加密 end-to-end encrypted)",
    "not_sent": "! 未发送 not sent: {error}",
    "e2ee.on": "-- 端到端加密已开启 (end-to-end encryption on{escrow})",
    "e2ee.escrow": "; escrow key {key_id}",
    "e2ee.not_signed": "!! {reason} (set TONGXIN_KEY_BACKUP_PASSPHRASE)",
    "e2ee.failed": "tongxin: end-to-end encryption could not start: {error}",
    "login.failed": "tongxin: {message}",
    "connect.failed": "tongxin: cannot connect: {detail}",
    "logged_in": "logged in as {user}{via}; /help for commands",
    "logged_in.via": " via {endpoint}",
    # What each ErrorCode means (the same words as the web client's catalogue).
    "code.ERROR_CODE_UNSPECIFIED": "unknown error",
    "code.BAD_HEADER": "malformed frame header",
    "code.UNSUPPORTED_VERSION": "protocol version not supported",
    "code.UNKNOWN_TYPE": "unknown frame type",
    "code.LENGTH_MISMATCH": "frame length mismatch",
    "code.PAYLOAD_TOO_LARGE": "the message is too large",
    "code.BAD_COMPRESSION": "the frame could not be decompressed",
    "code.BAD_PAYLOAD": "the request could not be decoded",
    "code.NOT_AUTHENTICATED": "not logged in",
    "code.AUTH_FAILED": "wrong username or password",
    "code.TOKEN_EXPIRED": "your login has expired",
    "code.TOKEN_INVALID": "your login is not valid",
    "code.ACCOUNT_LOCKED": "the account is locked",
    "code.SEQ_GAP": "frames arrived out of order",
    "code.FRAGMENT_TIMEOUT": "a fragmented message did not complete in time",
    "code.FRAGMENT_ERROR": "a fragmented message was malformed",
    "code.RATE_LIMITED": "too many requests, please slow down",
    "code.NOT_FOUND": "not found",
    "code.FORBIDDEN": "you are not allowed to do this",
    "code.CONFLICT": "this conflicts with the current state",
    "code.RECALL_WINDOW_EXPIRED": "too late to recall this message",
    "code.GROUP_FULL": "the group is full",
    "code.INVALID_ARGUMENT": "invalid request",
    "code.UNAVAILABLE": "the service is temporarily unavailable",
    "code.INTERNAL": "internal server error",
    "code.REGISTRATION_DISABLED": "self-registration is disabled",
    "code.TOKEN_REVOKED": "your login was revoked",
    "code.ALREADY_AUTHENTICATED": "already logged in",
    "code.PASSWORD_EXPIRED": "your password has expired",
}

_ZH: Final[dict[str, str]] = {
    "help": """命令：
  /dm 用户名              与该用户单聊
  /group 群名 用户名...   创建群聊并打开
  /add 用户名...          向当前群聊添加成员
  /open 会话ID            按 ID 打开会话
  /list                   列出会话及未读数
  /history [N]            显示当前会话最近 N 条记录
  /recall 序号            撤回你发送的第 序号 条消息
  /edit 序号 文本         修改你发送的第 序号 条消息
  /who 用户名...          查看用户是否在线
  /quit                   退出
其他输入都会作为消息发送到当前会话""",
    "conn.lost": "-- 连接已断开，正在重连（{endpoint}）",
    "conn.moved": "-- 已切换到备用入口 {endpoint}，没有遗漏任何消息",
    "conn.back": "-- 已重新连接 {endpoint}，没有遗漏任何消息",
    "conn.failed": "-- 无法重新连接，请稍后再试（{error}）",
    "device.added": "新设备（已由其用户密钥签名）",
    "device.unsigned": "未经其用户密钥签名：不会向它发送任何内容，也不显示它的消息",
    "device.unverified": "新设备：该用户尚无用户密钥，无法验证",
    "device.removed": "设备已移除",
    "members.first": "-- 首次查看该群成员（按服务器所列）：{names}",
    "escrow.changed": "-- 合规托管密钥已更换：{change}",
    "e2ee.cannot_open": "（无法解密：{error}）",
    "e2ee.file": "<加密文件 {name}>",
    "body.file": "<文件 {name}>",
    "body.encrypted": "<加密消息>",
    "line.chat": "{where} {who}：{body}{edited}",
    "line.edited_mark": "（已编辑）",
    "line.recalled": "{where} {who}：（已撤回）",
    "line.unavailable": "{where} {who}：（无法显示：存储副本未通过服务器校验）",
    "line.recall": "{where} {who} 撤回了消息 #{target}",
    "line.edit": "{where} {who} 编辑了消息 #{target}：{text}",
    "system.created": "发起了会话（{names}）",
    "system.added": "邀请 {names} 加入了群聊",
    "system.removed": "将 {names} 移出了群聊",
    "system.left": "退出了群聊",
    "system.role": "更改了 {names} 的角色",
    "system.renamed": "将群名称修改为“{name}”",
    "list.separator": "、",
    "receipt.read": "  （{who} 已读至 #{seq}{where}）",
    "receipt.where": "，会话：{label}",
    "typing": "  （{who} 正在输入…）",
    "presence": "  （{who} {state}）",
    "presence.ONLINE": "在线",
    "presence.OFFLINE": "离线",
    "presence.PRESENCE_STATUS_UNSPECIFIED": "状态未知",
    "error": "! {text}（{code}：{message}）",
    "open": "-- 正在与 {label} 聊天；直接输入即可发送，/help 查看命令",
    "no_conversation": "! 没有这个会话：{conversation}",
    "list.row": "{conversation}  {label}  未读 {unread}",
    "recalled": "  已撤回 #{seq}",
    "edited": "  已编辑 #{seq}",
    "who": "  {who}：{state}（{devices} 台设备）",
    "unknown_command": "? 未知命令或缺少参数；/help 查看命令",
    "open_first": "? 请先打开一个会话：/dm 用户名 或 /group 群名 用户名...",
    "sent": "  已发送 #{seq}",
    "sent_e2ee": "  已发送 #{seq}（端到端加密）",
    "not_sent": "! 未发送：{error}",
    "e2ee.on": "-- 端到端加密已开启{escrow}",
    "e2ee.escrow": "（托管密钥 {key_id}）",
    "e2ee.not_signed": "!! {reason}（请设置环境变量 TONGXIN_KEY_BACKUP_PASSPHRASE）",
    "e2ee.failed": "tongxin：端到端加密无法启动：{error}",
    "login.failed": "tongxin：{text}（{message}）",
    "connect.failed": "tongxin：无法连接：{detail}",
    "logged_in": "已登录：{user}{via}；/help 查看命令",
    "logged_in.via": "（经由 {endpoint}）",
    "code.ERROR_CODE_UNSPECIFIED": "未知错误",
    "code.BAD_HEADER": "帧头格式错误",
    "code.UNSUPPORTED_VERSION": "不支持的协议版本",
    "code.UNKNOWN_TYPE": "未知的帧类型",
    "code.LENGTH_MISMATCH": "帧长度不一致",
    "code.PAYLOAD_TOO_LARGE": "消息过大",
    "code.BAD_COMPRESSION": "帧解压失败",
    "code.BAD_PAYLOAD": "请求内容无法解析",
    "code.NOT_AUTHENTICATED": "尚未登录",
    "code.AUTH_FAILED": "用户名或密码错误",
    "code.TOKEN_EXPIRED": "登录已过期",
    "code.TOKEN_INVALID": "登录凭证无效",
    "code.ACCOUNT_LOCKED": "账号已被锁定",
    "code.SEQ_GAP": "帧序号不连续",
    "code.FRAGMENT_TIMEOUT": "分片消息未能按时收齐",
    "code.FRAGMENT_ERROR": "分片消息格式错误",
    "code.RATE_LIMITED": "操作过于频繁，请稍后再试",
    "code.NOT_FOUND": "未找到",
    "code.FORBIDDEN": "您没有执行此操作的权限",
    "code.CONFLICT": "与当前状态冲突",
    "code.RECALL_WINDOW_EXPIRED": "已超过可撤回的时间",
    "code.GROUP_FULL": "群成员已满",
    "code.INVALID_ARGUMENT": "请求参数无效",
    "code.UNAVAILABLE": "服务暂时不可用",
    "code.INTERNAL": "服务器内部错误",
    "code.REGISTRATION_DISABLED": "未开放自助注册",
    "code.TOKEN_REVOKED": "登录已被注销",
    "code.ALREADY_AUTHENTICATED": "已经登录",
    "code.PASSWORD_EXPIRED": "密码已过期",
}

CATALOGUES: Final[dict[str, dict[str, str]]] = {ZH_CN: _ZH, EN: _EN}


def _pick(value: str) -> str:
    return ZH_CN if value.strip().lower().startswith("zh") else EN


def language(env: Mapping[str, str] | None = None) -> str:
    """``zh-CN`` or ``en`` for this process's environment (see the module's docstring)."""
    env = os.environ if env is None else env
    explicit = env.get("TONGXIN_LANG", "").strip()
    if explicit:
        return _pick(explicit)
    for var in ("LC_ALL", "LC_MESSAGES", "LANG"):
        value = env.get(var, "").strip()
        if value:
            return _pick(value)
    return EN


class Text:
    """``text("key", name=...)``: the catalogue line for ``key``, filled in."""

    def __init__(self, lang: str | None = None) -> None:
        self.lang = lang if lang in CATALOGUES else language()
        self.messages = CATALOGUES[self.lang]

    def __call__(self, key: str, **values: object) -> str:
        return self.messages[key].format(**values)

    def code(self, code_name: str) -> str:
        """What a server ErrorCode means, in this language."""
        return self.messages.get(f"code.{code_name}", code_name)
