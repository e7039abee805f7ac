"""The durable, signed callback outbox (DESIGN 6 and 7).

A callback is persisted before anyone is told it exists, then delivered
at least once by a worker that any replica may run:

* **Claiming** is a lease in the database (``CallbackStore.claim_due``):
  replicas sharing one database never send the same callback within one lease
  window. A worker that dies mid-request leaves its lease to run out, and the
  callback is sent again afterwards: receivers must honour ``Idempotency-Key``.
* **Signing** reuses ``app.auth``: ``Authorization: Bearer <ms>.<hmac>`` and
  ``X-Sandbox-Signature: t=<ms>,v1=<hmac>`` over the method, the URL's
  ``path?query`` and the sha256 of the exact body bytes, both keyed with
  ``INTERNAL_CALLBACK_SECRET``. No nonce: a control plane that parses the
  documented ``t=,v1=`` form strictly must accept it, and each attempt carries
  a new timestamp anyway.
* **Outcomes** (``classify``): 2xx delivered. 408, 425, 429, 5xx, timeouts and
  connection errors are retried. 401 and 403 are retried too: they usually
  mean the receiver's secret is mid-rotation or misconfigured, which an
  operator fixes, while a dropped build result is lost for good. Any other
  status (3xx, since redirects are never followed; 400, 404, 409, 422, ...)
  is the receiver's definite "no" and the callback is given up at once.
* **Retries** back off exponentially (``base * 2**(attempts-1)``, capped, then
  "equal jitter" of 50-100%), honouring ``Retry-After`` seconds within the cap.
  A callback is given up (``gave_up`` with ``last_error``) when its next try
  would fall after ``deadline_at`` (created + ``SANDBOX_CALLBACK_DEADLINE``),
  or when the deadline passed while no worker ran.
"""

from __future__ import annotations

from app.services.callbacks.outbox import CallbackOutbox
from app.services.callbacks.policy import CallbackPolicy, classify, failure_url
from app.storage.state.callbacks import CallbackRecord

__all__ = ["CallbackOutbox", "CallbackPolicy", "CallbackRecord", "classify", "failure_url"]
