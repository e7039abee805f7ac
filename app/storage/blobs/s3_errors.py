"""S3 failures, classified once: transient (retry), missing, refused credentials, anything else."""

from __future__ import annotations

from collections.abc import Callable

from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError, IncompleteReadError, NoCredentialsError
from botocore.exceptions import ConnectionError as BotoConnectionError

from app.errors import SandboxControlError, StorageUnavailable
from app.storage.blobs.base import blob_not_found

TRANSIENT_CODES = {
    "SlowDown", "RequestTimeout", "RequestTimeoutException", "Throttling", "ThrottlingException",
    "RequestLimitExceeded", "TooManyRequests", "InternalError", "ServiceUnavailable", "OperationAborted",
}  # fmt: skip
AUTH_CODES = {
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
    "InvalidSecurity", "AuthorizationHeaderMalformed", "AccountProblem", "AllAccessDisabled",
}  # fmt: skip
MISSING_CODES = {"NoSuchKey", "404", "NotFound", "NoSuchUpload"}


def error_code(exc: ClientError) -> tuple[str, int]:
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return str(error.get("Code", "")), int(status or 0)


def is_transient(exc: BaseException) -> bool:
    """True for failures that a later attempt may not meet."""
    if isinstance(exc, (BotoConnectionError, HTTPClientError, IncompleteReadError)):
        return True
    if isinstance(exc, ClientError):
        code, status = error_code(exc)
        return code in TRANSIENT_CODES or status >= 500 or status == 429
    return False


def translate(
    exc: BaseException, what: str, *, bucket: str, where: Callable[..., str], key: str | None
) -> SandboxControlError:
    """The one error the store raises for ``exc`` (never echoing credentials)."""
    if isinstance(exc, SandboxControlError):
        return exc
    if isinstance(exc, NoCredentialsError):
        return StorageUnavailable(f"no S3 credentials configured for {where()}: set S3_ACCESS_KEY and S3_SECRET_KEY")
    if isinstance(exc, ClientError):
        code, status = error_code(exc)
        if code in MISSING_CODES and key is not None:
            return blob_not_found(key)
        if code == "NoSuchBucket":
            return StorageUnavailable(f"S3 bucket {bucket!r} does not exist ({where()})")
        if code in AUTH_CODES or status == 403:
            # The error body may quote the access key id; report only the code.
            return StorageUnavailable(
                f"S3 refused the credentials for {where()} ({code or status}): "
                "check S3_ACCESS_KEY, S3_SECRET_KEY and the bucket policy"
            )
        return StorageUnavailable(f"S3 {what} failed for {where(key)}: {code or status}")
    if isinstance(exc, BotoCoreError):
        return StorageUnavailable(f"S3 {what} failed for {where(key)}: {exc}")
    return StorageUnavailable(f"S3 {what} failed for {where(key)}: {type(exc).__name__}: {exc}")
