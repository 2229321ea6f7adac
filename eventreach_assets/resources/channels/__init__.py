"""Channel services: the only code that hands a rendered message to a provider.

One interface per channel (email, push, in-app; `base.py`), each with a local outbox for the
local deployment and tests (`outbox.py`) and real providers: SMTP (`smtp.py`), Amazon SES v2
(`ses.py`), Amazon SNS (`sns.py`), an HTTP webhook (`webhook.py`). `base.py` says what `send`
returns and raises; `pacing.py` paces the sending threads to the provider's rate and slows them
down when it throttles; `pool.py` keeps one reused connection per sending thread.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from eventreach_assets.resources.channels.base import (
    ChannelResource,
    ChannelUnavailableError,
    EmailChannelResource,
    EmailWire,
    InAppChannelResource,
    PacingStats,
    PermanentSendError,
    PushChannelResource,
    ThrottledSendError,
    TokenBucket,
    TransientSendError,
    build_email,
    document_bytes,
    email_bytes,
    message_document,
)
from eventreach_assets.resources.channels.outbox import (
    LocalOutboxEmail,
    LocalOutboxInApp,
    LocalOutboxPush,
    outbox_file_stem,
)
from eventreach_assets.resources.channels.smtp import SmtpEmail
from eventreach_assets.resources.channels.webhook import WebhookInApp
from eventreach_assets.resources.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from eventreach_assets.resources.channels.ses import SesEmail
    from eventreach_assets.resources.channels.sns import SnsPush

__all__ = [
    "ChannelResource",
    "ChannelUnavailableError",
    "EmailChannelResource",
    "EmailWire",
    "InAppChannelResource",
    "LocalOutboxEmail",
    "LocalOutboxInApp",
    "LocalOutboxPush",
    "PacingStats",
    "PermanentSendError",
    "PushChannelResource",
    "SesEmail",
    "SmtpEmail",
    "SnsPush",
    "ThrottledSendError",
    "TokenBucket",
    "TransientSendError",
    "WebhookInApp",
    "build_email",
    "document_bytes",
    "email_bytes",
    "message_document",
    "outbox_file_stem",
]

# Production implementations: imported on first use (lazy_exports.py).
__getattr__ = lazy_exports(__name__, {"SesEmail": "ses", "SnsPush": "sns"})
