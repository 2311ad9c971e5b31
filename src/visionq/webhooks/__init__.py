"""Webhook delivery: completion notifications as signed JSON POSTs (``signing``, ``policy``,
``delivery``, ``events``; the names below are the package's interface).

A pure library: no store, no settings, no scheduling. The service decides *when* to call
:func:`deliver` (first attempt, then retries spaced by :func:`next_delay`, at most
:data:`MAX_ATTEMPTS`) and where to record the :class:`DeliveryAttempt`\\ s; this module decides
*what* is sent and *whether* a URL may be called at all.

- **Signing** (:func:`sign`, :func:`signature_header`, :func:`build_headers`, :func:`verify`):
  HMAC-SHA256 over ``f"{timestamp}.".encode() + body``, sent as
  ``visionq-signature: t=<unix seconds>,v1=<hex>``. Sign every attempt afresh: a retry that
  re-used the first attempt's header would be refused as stale by a receiver that checks the time.
- **URL policy** (:class:`WebhookPolicy`): https only (plain http only to loopback, and only on a
  local stack), no credentials in the URL, and no host that resolves to a private, loopback,
  link-local, CGNAT, multicast, reserved or unspecified address unless the operator allowlisted it.
- **Delivery** (:func:`deliver`): the policy is checked again at delivery time and the connection
  goes to the very address that was checked (no second DNS lookup, so no DNS-rebinding window);
  the TLS certificate is verified against the URL's host name. Redirects are not followed. Network
  problems never raise: they come back as a failed attempt with a short error.
- **Events** (:func:`job_event`, :func:`batch_event`): compact JSON with an event id that is a pure
  function of what happened, so every attempt (and every duplicate) of one event carries the same
  id and receivers can de-duplicate (delivery is at-least-once).
"""

from __future__ import annotations

from visionq.webhooks.delivery import (
    DEFAULT_BASE_DELAY_SECONDS,
    DEFAULT_MAX_DELAY_SECONDS,
    MAX_ATTEMPTS,
    DeliveryAttempt,
    deliver,
    next_delay,
)
from visionq.webhooks.events import (
    BATCH_COMPLETED,
    JOB_FAILED,
    JOB_SUCCEEDED,
    batch_event,
    batch_event_id,
    job_event,
    job_event_id,
)
from visionq.webhooks.policy import (
    FORBIDDEN_ADDRESS,
    INSECURE_SCHEME,
    INVALID_URL,
    MAX_URL_LENGTH,
    UNRESOLVABLE,
    Resolver,
    ValidatedUrl,
    WebhookPolicy,
    WebhookRejected,
    system_resolver,
)
from visionq.webhooks.signing import (
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    USER_AGENT,
    build_headers,
    sign,
    signature_header,
    verify,
)

__all__ = [
    "BATCH_COMPLETED",
    "DEFAULT_BASE_DELAY_SECONDS",
    "DEFAULT_MAX_DELAY_SECONDS",
    "EVENT_ID_HEADER",
    "FORBIDDEN_ADDRESS",
    "INSECURE_SCHEME",
    "INVALID_URL",
    "JOB_FAILED",
    "JOB_SUCCEEDED",
    "MAX_ATTEMPTS",
    "MAX_URL_LENGTH",
    "SIGNATURE_HEADER",
    "UNRESOLVABLE",
    "USER_AGENT",
    "DeliveryAttempt",
    "Resolver",
    "ValidatedUrl",
    "WebhookPolicy",
    "WebhookRejected",
    "batch_event",
    "batch_event_id",
    "build_headers",
    "deliver",
    "job_event",
    "job_event_id",
    "next_delay",
    "sign",
    "signature_header",
    "system_resolver",
    "verify",
]
