"""The service's exception hierarchy.

Every error the service raises on purpose derives from ``SandboxControlError``
and carries the HTTP status and machine ``code`` it is answered with; the one
exception handler in ``app.api.errors`` turns it into the wire envelope
``{"success": false, "error": ..., "code": ...}``. Subclasses also inherit the
built-in exception they mean, so callers can catch ``LookupError`` or
``TimeoutError`` without importing this module.

    SandboxControlError                        500 internal
    ├── BadRequest (ValueError)                400 bad_request
    │   ├── HostNotAllowed                     400 host_not_allowed
    │   ├── UnsupportedSpec                    422 unsupported_spec
    │   └── ReservedEnvNames                   422 reserved_env_name
    │   ├── IsADirectory                       400 is_a_directory
    │   ├── NotADirectory                      400 not_a_directory
    │   ├── NotARegularFile                    400 not_a_regular_file
    │   ├── NameTooLong                        400 name_too_long
    │   ├── PathConflict                       400 path_conflict
    │   └── FileOperationFailed                400 file_error
    ├── Unauthorized (PermissionError)         401 unauthorized
    │   └── PreviewTokenInvalid                401 preview_token_invalid
    │       └── PreviewTokenExpired            401 preview_token_expired
    ├── Forbidden (PermissionError)            403 forbidden
    │   ├── PermissionDenied                   403 permission_denied
    │   ├── ReadOnlyPath                       403 read_only_path
    │   └── PreviewTokenMismatch               403 preview_token_mismatch
    ├── NotFound (LookupError)                 404 not_found
    │   ├── SandboxNotFound                    404 sandbox_not_found
    │   ├── SnapshotNotFound                   404 snapshot_not_found
    │   ├── SandboxFileNotFound                404 file_not_found
    │   ├── BuildNotFound                      404 build_not_found
    │   ├── RepoImageNotFound                  404 repo_image_not_found
    │   ├── ProcessNotFound                    404 process_not_found
    │   ├── PreviewNotFound                    404 preview_not_found
    │   └── ImageMissing*                      404 image_not_found
    ├── Conflict                               409 conflict
    │   ├── SandboxNotRunning                  409 sandbox_not_running
    │   ├── BuildConflict                      409 build_conflict
    │   └── ProcessConflict                    409 process_conflict
    ├── CommandTimedOut (TimeoutError)         408 exec_timeout
    ├── PayloadTooLarge                        413 payload_too_large
    │   └── NoSpace                            413 no_space
    ├── ProviderError                          502 provider_error
    │   ├── ProviderAuthError                  502 provider_auth
    │   ├── GitHubTokenError*                  502 github_token_error
    │   └── DaytonaConflict*                   502 provider_error
    ├── PreviewUnsupported                     501 preview_unsupported
    ├── PreviewUpstreamUnreachable             502 preview_upstream_unreachable
    ├── NotSupported (NotImplementedError)     501 not_supported
    ├── NotConfigured                          503 not_configured
    ├── ProviderUnavailable (ConnectionError)  503 provider_unavailable
    ├── StorageUnavailable (ConnectionError)   503 storage_unavailable
    └── SnapshotCorrupt (ValueError)           422 snapshot_corrupt
        └── UnsafeEntry*                       422 snapshot_unsafe_entry

    * defined next to the code that raises it: ImageMissing in the docker
      provider's engine boundary, GitHubTokenError in the GitHub token minter,
      DaytonaConflict in the Daytona error boundary, UnsafeEntry in the snapshot
      extractor.
"""

from __future__ import annotations

from typing import Any, ClassVar


class SandboxControlError(Exception):
    """Root of every deliberate error; carries its HTTP status and code."""

    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "internal"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class BadRequest(SandboxControlError, ValueError):
    """The request is well-formed JSON but asks for something invalid."""

    status_code = 400
    code = "bad_request"


class HostNotAllowed(BadRequest):
    """A callback or control-plane URL points at a host not on the allow list."""

    code = "host_not_allowed"


class UnsupportedSpec(BadRequest):
    """The provider cannot honour a requested field (e.g. ``gpu`` on local)."""

    status_code = 422
    code = "unsupported_spec"

    def __init__(self, field: str, provider: str, reason: str = "") -> None:
        text = f"provider {provider!r} does not support {field!r}"
        super().__init__(f"{text}: {reason}" if reason else text, field=field, provider=provider)
        self.field = field
        self.provider = provider


class IsADirectory(BadRequest):
    """A file operation named a directory."""

    code = "is_a_directory"


class NotADirectory(BadRequest):
    """A parent of the path is a file, not a directory."""

    code = "not_a_directory"


class NotARegularFile(BadRequest):
    """Only regular files are read: not devices, fifos, sockets or directories."""

    code = "not_a_regular_file"


class NameTooLong(BadRequest):
    """A path component is longer than the filesystem allows (255 bytes)."""

    code = "name_too_long"


class PathConflict(BadRequest):
    """Something in the way of the path (e.g. a dangling symlink where a directory must be created)."""

    code = "path_conflict"


class FileOperationFailed(BadRequest):
    """A file operation failed for a reason the caller can fix (the message quotes the system's)."""

    code = "file_error"


class Unauthorized(SandboxControlError, PermissionError):
    """Missing, malformed, expired or wrong credentials."""

    status_code = 401
    code = "unauthorized"


class Forbidden(SandboxControlError, PermissionError):
    """The caller may not do this (in the sandbox: a path the sandbox user may not touch)."""

    status_code = 403
    code = "forbidden"


class PermissionDenied(Forbidden):
    code = "permission_denied"


class ReadOnlyPath(Forbidden):
    """The path is on a read-only filesystem of the sandbox (its system directories)."""

    code = "read_only_path"


class NotFound(SandboxControlError, LookupError):
    """A named resource does not exist."""

    status_code = 404
    code = "not_found"


class SandboxNotFound(NotFound):
    code = "sandbox_not_found"


class SnapshotNotFound(NotFound):
    code = "snapshot_not_found"


class SandboxFileNotFound(NotFound):
    code = "file_not_found"


class BuildNotFound(NotFound):
    code = "build_not_found"


class RepoImageNotFound(NotFound):
    code = "repo_image_not_found"


class ProcessNotFound(NotFound):
    """No background process with that handle in the sandbox."""

    code = "process_not_found"


class PreviewNotFound(NotFound):
    """No live preview with that id: never made, revoked, expired or gone with its sandbox."""

    code = "preview_not_found"


class PreviewTokenInvalid(Unauthorized):
    """A preview token that is malformed or does not carry a valid signature."""

    code = "preview_token_invalid"


class PreviewTokenExpired(PreviewTokenInvalid):
    code = "preview_token_expired"


class PreviewTokenMismatch(Forbidden):
    """A valid preview token presented for another preview's host (other sandbox or port)."""

    code = "preview_token_mismatch"


class PreviewUnsupported(SandboxControlError):
    """The provider cannot say how to reach a sandbox port."""

    status_code = 501
    code = "preview_unsupported"


class PreviewUpstreamUnreachable(SandboxControlError):
    """Nothing answers on the previewed port (no server listening, or it went away)."""

    status_code = 502
    code = "preview_upstream_unreachable"


class Conflict(SandboxControlError):
    """The resource exists but is in a state that forbids the operation."""

    status_code = 409
    code = "conflict"


class SandboxNotRunning(Conflict):
    code = "sandbox_not_running"


class BuildConflict(Conflict):
    """The same build id was submitted again with a different request."""

    code = "build_conflict"


class ProcessConflict(Conflict):
    """The process cannot take this now (it exited, or its stdin is closed or full)."""

    code = "process_conflict"


class NotSupported(SandboxControlError, NotImplementedError):
    """An operation this service knows of but does not serve (named in the message)."""

    status_code = 501
    code = "not_supported"


class CommandTimedOut(SandboxControlError, TimeoutError):
    """A command hit its deadline where the wire format makes that an error (Daytona's toolbox);
    ``/v1`` reports it as a result instead (``timed_out``, exit 124)."""

    status_code = 408
    code = "exec_timeout"


class NotConfigured(SandboxControlError):
    """A feature needs configuration this service does not have (e.g. a callback secret)."""

    status_code = 503
    code = "not_configured"


class PayloadTooLarge(SandboxControlError):
    status_code = 413
    code = "payload_too_large"


class NoSpace(PayloadTooLarge):
    """The sandbox's disk (or quota) is full."""

    code = "no_space"


class ProviderError(SandboxControlError):
    """The provider answered, but with a failure that retrying will not fix."""

    status_code = 502
    code = "provider_error"


class ProviderAuthError(ProviderError):
    """The provider refused our credentials; fail fast, never retry."""

    code = "provider_auth"


class ProviderUnavailable(SandboxControlError, ConnectionError):
    """The provider is down or overloaded; the caller may retry later."""

    status_code = 503
    code = "provider_unavailable"


class StorageUnavailable(SandboxControlError, ConnectionError):
    """The blob store (S3/MinIO) or state store is unreachable."""

    status_code = 503
    code = "storage_unavailable"


class SnapshotCorrupt(SandboxControlError, ValueError):
    """A snapshot blob failed verification or holds a hostile entry."""

    status_code = 422
    code = "snapshot_corrupt"


class ReservedEnvNames(BadRequest):
    """User env vars try to set names the in-sandbox runtime reserves."""

    status_code = 422
    code = "reserved_env_name"

    def __init__(self, names: list[str]) -> None:
        super().__init__(f"reserved environment variable names may not be set: {', '.join(names)}", names=names)
        self.names = names
