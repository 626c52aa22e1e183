"""Notifications against real local receivers: an aiohttp webhook and an asyncio SMTP sink."""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from switchctl.deploy.config import EnvFile, Notify, Smtp, Webhook
from switchctl.deploy.notify import Report, notify

FAILED = Report(
    event="rollback",
    app="shop",
    release_id="20261126T140000-abc123",
    image="shop:abc123",
    duration_s=42.4,
    color="green",
    failed_step="canary 25%",
    why="green error rate 12.0% > 1.0%",
    todo="read `docker logs shop-server-green`",
)


@pytest.fixture
async def webhook() -> AsyncIterator[tuple[str, list[Any]]]:
    received: list[Any] = []

    async def hook(request: web.Request) -> web.Response:
        received.append((request.headers["Content-Type"], await request.json()))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hooks/T000/B000", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}/hooks/T000/B000", received
    await runner.cleanup()


@dataclass
class SmtpSink:
    """Just enough SMTP (RFC 5321) to receive one message per session, with AUTH PLAIN."""

    messages: list[tuple[str, list[str], bytes]] = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        def say(line: str) -> None:
            writer.write(line.encode() + b"\r\n")

        say("220 sink ESMTP")
        sender, rcpts = "", []
        while line := (await reader.readline()).decode().rstrip("\r\n"):
            verb = line.split(" ", 1)[0].upper()
            if verb == "EHLO":
                say("250-sink")
                say("250 AUTH PLAIN")
            elif verb == "AUTH":
                _, user, password = base64.b64decode(line.split()[2]).split(b"\0")
                self.logins.append((user.decode(), password.decode()))
                say("235 ok")
            elif verb == "MAIL":
                sender = line.split(":", 1)[1].strip("<> ")
                say("250 ok")
            elif verb == "RCPT":
                rcpts.append(line.split(":", 1)[1].strip("<> "))
                say("250 ok")
            elif verb == "DATA":
                say("354 go on")
                data = b""
                while (chunk := await reader.readline()) != b".\r\n":
                    data += chunk
                self.messages.append((sender, rcpts, data))
                say("250 queued")
            elif verb == "QUIT":
                say("221 bye")
                break
            else:
                say("250 ok")
            await writer.drain()
        await writer.drain()
        writer.close()
        await writer.wait_closed()


@pytest.fixture
async def smtp_sink() -> AsyncIterator[tuple[int, SmtpSink]]:
    sink = SmtpSink()
    server = await asyncio.start_server(sink.session, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield port, sink
    server.close()
    await server.wait_closed()


async def test_webhook_gets_a_slack_compatible_post_with_release_duration_and_failing_step(
    webhook: tuple[str, list[Any]],
) -> None:
    url, received = webhook
    problems = await asyncio.to_thread(notify, Notify(webhook=Webhook(url=url)), FAILED)
    assert problems == []
    [(ctype, body)] = received
    assert ctype == "application/json"
    assert body["text"].splitlines()[0] == (
        "shop: release 20261126T140000-abc123 rolled back at step 'canary 25%' after 42s"
    )
    assert "why: green error rate 12.0% > 1.0%" in body["text"]
    assert (body["release"], body["failed_step"], body["duration_s"]) == (
        "20261126T140000-abc123",
        "canary 25%",
        42.4,
    )


async def test_email_is_sent_over_smtp_with_the_password_from_the_env_file(
    smtp_sink: tuple[int, SmtpSink], tmp_path: Path
) -> None:
    port, sink = smtp_sink
    cfg = Smtp(
        host="127.0.0.1",
        port=port,
        starttls=False,
        username="deploy",
        password_env="SMTP_PASSWORD",
        from_addr="deploy@shop.test",
        to=["ops@shop.test"],
    )
    env = EnvFile(tmp_path / "app.env", {"SMTP_PASSWORD": "hunter2"})
    problems = await asyncio.to_thread(notify, Notify(smtp=cfg), FAILED, env)
    assert problems == []
    assert sink.logins == [("deploy", "hunter2")]
    [(sender, rcpts, data)] = sink.messages
    assert (sender, rcpts) == ("deploy@shop.test", ["ops@shop.test"])
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert msg["Subject"] == FAILED.title
    assert isinstance(msg, email.message.EmailMessage)
    body = msg.get_body()
    assert body is not None
    assert "what to do: read `docker logs shop-server-green`" in body.get_content()


async def test_an_unreachable_channel_is_reported_and_the_other_still_gets_the_message(
    webhook: tuple[str, list[Any]],
) -> None:
    url, received = webhook
    dead = Smtp(host="127.0.0.1", port=1, starttls=False, from_addr="a@b", to=["c@d"], timeout=2)
    problems = await asyncio.to_thread(notify, Notify(webhook=Webhook(url=url), smtp=dead), FAILED)
    assert len(problems) == 1
    assert problems[0].startswith("smtp 127.0.0.1:1: ")
    assert len(received) == 1


async def test_events_not_listed_are_not_sent(webhook: tuple[str, list[Any]]) -> None:
    url, received = webhook
    cfg = Notify(webhook=Webhook(url=url), events=["failure", "rollback"])
    ok = Report(event="success", app="shop", release_id="r", image="i", duration_s=1, color="blue")
    assert await asyncio.to_thread(notify, cfg, ok) == []
    assert received == []
    assert json.dumps(ok.payload())
