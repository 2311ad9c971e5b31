"""The service's webhook rules, from settings: which URLs are accepted and the secret each API key's
notices are signed with. Used by the API when a job or batch names a URL, and by the notifier."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from visionq.config import WebhookSettings
from visionq.errors import InvalidRequest
from visionq.webhooks import SIGNATURE_HEADER, WebhookPolicy

__all__ = ["SIGNATURE_HEADER", "WebhookRules"]


@dataclass(frozen=True)
class WebhookRules:
    policy: WebhookPolicy
    master_secret: bytes | None
    # SNS topics a job or batch may name instead of a URL (on AWS): only these, since the notifier
    # publishes with its own role.
    sns_topics: frozenset[str] = frozenset()

    @classmethod
    def from_settings(cls, settings: WebhookSettings) -> WebhookRules:
        secret = settings.webhook_secret.get_secret_value().encode() if settings.webhook_secret else None
        policy = WebhookPolicy.parse(
            allowed_hosts=settings.webhook_allowed_hosts,
            allowed_networks=settings.webhook_allowed_networks,
            allow_http_loopback=settings.webhook_allow_http_loopback,
        )
        topics = frozenset(t.strip() for t in settings.webhook_sns_topics.split(",") if t.strip())
        return cls(policy=policy, master_secret=secret, sns_topics=topics)

    @property
    def enabled(self) -> bool:
        return self.master_secret is not None

    def check(self, url: str) -> str:
        """``url`` if a notice may go there; else the reason, as a 400 for the client."""
        if not self.enabled:
            raise _disabled()
        if is_sns_topic(url):
            if url not in self.sns_topics:
                raise InvalidRequest(
                    "this SNS topic is not one the service publishes to (VISIONQ_WEBHOOK_SNS_TOPICS)",
                    code="webhook_topic_not_allowed",
                )
            return url
        return self.policy.check_url(url).url

    def secret_for(self, owner: str) -> str:
        """The signing secret of one API key's notices: derived, so nothing more is stored, and no
        key's secret tells anything about another's."""
        if self.master_secret is None:
            raise _disabled()
        return "whsec_" + hmac.new(self.master_secret, f"webhook:{owner}".encode(), hashlib.sha256).hexdigest()


def _disabled() -> InvalidRequest:
    return InvalidRequest("this service does not send webhooks (no signing secret is set)", code="webhooks_disabled")


def is_sns_topic(target: str) -> bool:
    """A notice's target that is an SNS topic's ARN rather than a URL."""
    return target.startswith("arn:") and ":sns:" in target
