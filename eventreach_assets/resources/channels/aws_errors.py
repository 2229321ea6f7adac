"""What the AWS channels (SES, SNS) share: their client settings, and how an AWS error becomes a send error.

The send clients make one attempt per call (`max_attempts=1`). botocore's own retries would
retry a throttled call after a backoff of their own, unseen by the channel's token bucket, which
would then never slow down (and 32 threads would each sleep botocore's backoff in silence); and
they would stack a second retry policy under the send loop's (`domain/sending.py`), which already
retries transient failures and records them. So a throttling answer is a `ThrottledSendError`
the channel retries through its bucket (the provider refused it: nothing was delivered), and
every other transient failure (5xx, timeouts, lost connections) goes straight to the loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from eventreach_assets.domain.delivery import (
    ChannelUnavailableError,
    PermanentSendError,
    ThrottledSendError,
    TransientSendError,
)
from eventreach_assets.resources.aws import aws_client

# botocore's own list (retries/standard.py ThrottledRetryableChecker) and SNS's "Throttled", KMS's.
AWS_THROTTLING = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "Throttled",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "LimitExceededException",
        "SlowDown",
        "PriorRequestNotComplete",
        "KMSThrottlingException",
    }
)
AWS_TRANSIENT = frozenset(
    {
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalFailure",
        "InternalError",
        "InternalServerError",
        "ServiceUnavailable",
        "ServiceUnavailableException",
    }
)
AWS_UNAVAILABLE = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "AuthorizationError",
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "ExpiredToken",
        "ExpiredTokenException",
        "SignatureDoesNotMatch",
        "AccountSuspendedException",
        "SendingPausedException",
        "MailFromDomainNotVerifiedException",
        "ConfigurationSetDoesNotExist",
        "PlatformApplicationDisabled",
        "KMSDisabled",
        "KMSAccessDenied",
    }
)

SendError = TransientSendError | PermanentSendError


def channel_client(
    service: str, region_name: str, endpoint_url: str | None, timeout: float, concurrency: int, max_attempts: int = 1
) -> Any:
    """The SES / SNS client, shared by the channel's sending threads (boto3 clients are thread-safe): one
    attempt per call (see above), `timeout` for connect and read, a connection for each thread in flight."""
    return aws_client(
        service,
        region_name=region_name,
        endpoint_url=endpoint_url,
        max_attempts=max_attempts,
        timeout_s=timeout,
        max_pool_connections=max(10, concurrency),
    )


def aws_send_error(error: ClientError, provider: str) -> SendError:
    """Classify an AWS error: throttling slows down and retries, 5xx is transient, account/credential
    problems stop the channel, the rest is this message's."""
    return aws_error_of(
        str(error.response.get("Error", {}).get("Code", "")),
        str(error.response.get("Error", {}).get("Message", "")),
        int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0),
        provider,
    )


def aws_error_of(code: str, text: str, status: int, provider: str) -> SendError:
    """`aws_send_error`'s rule on the parts of an error: also for the failed entries of a batch call."""
    reason = f"{provider} {code or status}: {text[:300]}"
    if code in AWS_UNAVAILABLE:
        return ChannelUnavailableError(reason)
    if code in AWS_THROTTLING or status == 429:
        return ThrottledSendError(reason)
    if code in AWS_TRANSIENT or status >= 500:
        return TransientSendError(reason)
    return PermanentSendError(reason)


def send_through_aws(
    provider: str,
    call: Callable[[], dict[str, Any]],
    classify: Callable[[ClientError], SendError] | None = None,
) -> str:
    """The MessageId `call()` answers; errors as `aws_call` says."""
    return str(aws_call(provider, call, classify)["MessageId"])


def aws_call(
    provider: str,
    call: Callable[[], dict[str, Any]],
    classify: Callable[[ClientError], SendError] | None = None,
) -> dict[str, Any]:
    """What `call()` answers; a ClientError classified (by `classify`, else `aws_send_error`), anything
    else botocore raises (no region, connection lost, timeout, retries spent) transient."""
    try:
        return call()
    except ClientError as error:
        raise (classify(error) if classify else aws_send_error(error, provider)) from None
    except BotoCoreError as error:
        raise TransientSendError(f"{provider}: {type(error).__name__}") from None
