"""What the AWS channels (SES, SNS) share: their client settings, and how an AWS error becomes a send error."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from eventreach_assets.domain.delivery import ChannelUnavailableError, PermanentSendError, TransientSendError
from eventreach_assets.resources.aws import aws_client

AWS_TRANSIENT = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "Throttled",
        "TooManyRequestsException",
        "LimitExceededException",
        "KMSThrottlingException",
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


def channel_client(service: str, region_name: str, endpoint_url: str | None, timeout: float) -> Any:
    """The SES / SNS client: `timeout` for connect and read, three retries after the first attempt."""
    return aws_client(service, region_name=region_name, endpoint_url=endpoint_url, max_attempts=4, timeout_s=timeout)


def aws_send_error(error: ClientError, provider: str) -> SendError:
    """Classify an AWS error: throttling and 5xx retry, account/credential problems stop, the rest is this message."""
    code = str(error.response.get("Error", {}).get("Code", ""))
    text = str(error.response.get("Error", {}).get("Message", ""))[:300]
    status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    reason = f"{provider} {code or status}: {text}"
    if code in AWS_UNAVAILABLE:
        return ChannelUnavailableError(reason)
    if code in AWS_TRANSIENT or status >= 500 or status == 429:
        return TransientSendError(reason)
    return PermanentSendError(reason)


def send_through_aws(
    provider: str,
    call: Callable[[], dict[str, Any]],
    classify: Callable[[ClientError], SendError] | None = None,
) -> str:
    """The MessageId `call()` answers; a ClientError classified (by `classify`, else `aws_send_error`),
    anything else botocore raises (no region, connection lost, timeout, retries spent) transient."""
    try:
        response = call()
    except ClientError as error:
        raise (classify(error) if classify else aws_send_error(error, provider)) from None
    except BotoCoreError as error:
        raise TransientSendError(f"{provider}: {type(error).__name__}") from None
    return str(response["MessageId"])
