"""Notifications: a Slack-compatible webhook (POST JSON) and SMTP email."""

from __future__ import annotations

import json
import smtplib
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Literal

from switchctl.deploy.config import EnvFile, Notify, Smtp, Webhook, process_env_or_file

Event = Literal["success", "failure", "rollback"]


@dataclass(frozen=True)
class Report:
    event: Event
    app: str
    release_id: str
    image: str
    duration_s: float
    color: str | None = None
    failed_step: str | None = None
    why: str | None = None
    todo: str | None = None

    @property
    def title(self) -> str:
        if self.event == "success":
            return (
                f"{self.app}: release {self.release_id} is live on {self.color} "
                f"({self.duration_s:.0f}s)"
            )
        what = "rolled back" if self.event == "rollback" else "failed"
        return (
            f"{self.app}: release {self.release_id} {what} at step "
            f"'{self.failed_step}' after {self.duration_s:.0f}s"
        )

    def text(self) -> str:
        lines = [self.title, f"image: {self.image}"]
        if self.why:
            lines.append(f"why: {self.why}")
        if self.todo:
            lines.append(f"what to do: {self.todo}")
        return "\n".join(lines)

    def payload(self) -> dict[str, object]:
        """Slack's `text` plus the fields as data for other receivers."""
        return {
            "text": self.text(),
            "event": self.event,
            "app": self.app,
            "release": self.release_id,
            "image": self.image,
            "color": self.color,
            "duration_s": round(self.duration_s, 1),
            "failed_step": self.failed_step,
        }


def send_webhook(cfg: Webhook, report: Report) -> None:
    body = json.dumps(report.payload()).encode()
    req = urllib.request.Request(
        cfg.url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=cfg.timeout) as resp:
        resp.read()


def send_email(cfg: Smtp, report: Report, env: EnvFile | None) -> None:
    msg = EmailMessage()
    msg["Subject"] = report.title
    msg["From"] = cfg.from_addr
    msg["To"] = ", ".join(cfg.to)
    msg.set_content(report.text() + "\n")
    with smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout) as smtp:
        if cfg.starttls:
            smtp.starttls()
        if cfg.username:
            password = process_env_or_file(cfg.password_env, env) if cfg.password_env else None
            smtp.login(cfg.username, password or "")
        smtp.send_message(msg)


def notify(cfg: Notify, report: Report, env: EnvFile | None = None) -> list[str]:
    """Send to every configured channel; return one problem line per channel that failed."""
    if report.event not in cfg.events:
        return []
    problems = []
    if cfg.webhook is not None:
        try:
            send_webhook(cfg.webhook, report)
        except (urllib.error.URLError, OSError) as e:
            problems.append(f"webhook {cfg.webhook.url}: {e}")
    if cfg.smtp is not None:
        try:
            send_email(cfg.smtp, report, env)
        except (smtplib.SMTPException, OSError) as e:
            problems.append(f"smtp {cfg.smtp.host}:{cfg.smtp.port}: {e}")
    return problems
