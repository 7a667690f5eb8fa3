"""The email every run sends, on success and on failure (as Amplitude's own cohort syncs do,
docs/api-facts.md, A5).

Plain ``smtplib`` to the configured server: STARTTLS or SMTPS (``ssl``), and a login with a
password *reference* (``env:NAME`` / Secret Manager, read through ``transforms.secrets``) only
over TLS: the config refuses a password without it, and ``send_email`` refuses again, so the
password never travels in clear. Subject and body are scrubbed of every key the process read
and of the keys passed in (``transforms.scrub``). The subject
says success or failure, the sync, the cohort and the counts; the body lists the run's errors
and where the report is. A notification that cannot be sent is logged and recorded in the
report; it never turns a successful sync into a failed one (``send_run_email`` does not raise).
"""
from __future__ import annotations

import email.message
import email.utils
import logging
import smtplib
import ssl
from typing import Callable, Optional

from transforms.cohorts.model import EmailSettings
from transforms.scrub import remember_secret, scrub
from transforms.secrets import SecretError, resolve_api_key

__all__ = ["NotifyError", "compose", "send_email", "send_run_email"]

_LOG = logging.getLogger(__name__)
_MAX_LISTED_ERRORS = 20


class NotifyError(RuntimeError):
    pass


def compose(report: dict, report_paths=()) -> tuple:
    """``(subject, text body)`` for a run report."""
    c = report["counts"]
    status = "succeeded" if report["status"] == "success" else "FAILED"
    subject = (f"[amplitude-braze] Cohort sync {report['sync']} {status}: {report['cohort_name']} "
               f"({report['cohort_id']}) → {report['target']}: +{c['added']} -{c['removed']} "
               f"skipped {c['skipped']} failed {c['failed']}")
    lines = [
        f"Cohort sync {report['sync']} {status}.",
        "",
        f"Cohort:   {report['cohort_name']} ({report['cohort_id']})",
        f"Target:   {report['target']} ({report['delivery']} delivery, {report['user_mapping']} mapping)",
        f"Run:      {report['run_id']} ({report['mode']}, cadence {report['cadence']})",
        f"Started:  {report['started_at']}",
        f"Finished: {report['finished_at']}",
        "",
        f"Added {c['added']}, removed {c['removed']}, skipped {c['skipped']}, failed {c['failed']}, "
        f"unchanged {c['unchanged']}.",
    ]
    if report.get("errors"):
        lines += ["", "Errors:"] + [f"  - {e}" for e in report["errors"][:_MAX_LISTED_ERRORS]]
        if len(report["errors"]) > _MAX_LISTED_ERRORS:
            lines.append(f"  ... and {len(report['errors']) - _MAX_LISTED_ERRORS} more")
    if report["status"] != "success":
        lines += ["", "The last successful membership was kept: the next run sends these changes again."]
    if report_paths:
        lines += ["", "Report:"] + [f"  {p}" for p in report_paths]
    return subject, "\n".join(lines) + "\n"


def send_email(settings: EmailSettings, subject: str, body: str,
               resolve_key: Callable[[str], str] = resolve_api_key) -> None:
    """Send one message; raises ``NotifyError`` (never with the password in it)."""
    if settings.password and not (settings.starttls or settings.ssl):
        raise NotifyError("refused to log in without TLS: set starttls or ssl in notifications.email")
    message = email.message.EmailMessage()
    message["Subject"] = subject
    message["From"] = settings.sender
    message["To"] = ", ".join(settings.recipients)
    message["Date"] = email.utils.formatdate(localtime=False)
    message["Message-ID"] = email.utils.make_msgid(domain="amplitude-braze")
    message.set_content(body)
    password = None
    if settings.password:
        try:
            password = resolve_key(settings.password)
        except SecretError as e:
            raise NotifyError(f"cannot read the SMTP password: {e}") from None
        remember_secret(password)
    try:
        if settings.ssl:
            connection = smtplib.SMTP_SSL(settings.smtp_host, settings.smtp_port, timeout=settings.timeout_seconds,
                                          context=ssl.create_default_context())
        else:
            connection = smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=settings.timeout_seconds)
        with connection as smtp:
            if settings.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if settings.username:
                smtp.login(settings.username, password or "")
            refused = smtp.send_message(message, from_addr=settings.sender, to_addrs=list(settings.recipients))
    except (smtplib.SMTPException, OSError) as e:
        text = scrub(str(e), (password,))
        raise NotifyError(f"SMTP {settings.smtp_host}:{settings.smtp_port}: {type(e).__name__}: {text}") from None
    if refused:
        raise NotifyError(f"the SMTP server refused recipients: {', '.join(sorted(refused))}")


def send_run_email(settings: Optional[EmailSettings], report: dict, report_paths=(),
                   resolve_key: Callable[[str], str] = resolve_api_key, secrets=()) -> dict:
    """Send the run's email; returns ``{"sent": bool, "error": str}`` for the report. Never raises."""
    if settings is None:
        return {"sent": False, "error": "not configured"}
    subject, body = compose(report, report_paths)
    subject, body = scrub(subject, secrets), scrub(body, secrets)
    try:
        send_email(settings, subject, body, resolve_key)
    except NotifyError as e:
        _LOG.error("sync %s: the notification email was not sent: %s", report.get("sync"), e)
        return {"sent": False, "error": str(e), "subject": subject}
    except Exception as e:  # noqa: BLE001 - a notification must never fail the sync
        _LOG.exception("sync %s: the notification email was not sent", report.get("sync"))
        return {"sent": False, "error": f"{type(e).__name__}: {e}", "subject": subject}
    return {"sent": True, "error": "", "subject": subject, "recipients": list(settings.recipients)}
