"""AWS Secrets Manager: credentials, connection test, fetch.

Stateless: the vault keeps credentials and fetched values in the encrypted vault and hands
them in. Every failure becomes one clear line with a stable code, never carrying a value.
Calls are bounded in time (timeouts, two attempts) because a fetch must not hang a CLI or a
background refresh on an endpoint that accepts and never answers. Sessions, clients and the
classification of AWS errors serve Parameter Store too (ssm.py).

boto3 is imported inside the functions that call AWS: reading a configuration imports this
module for its SCHEMA, and must not cost boto3's import time.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vaultcore.peertext import quoted
from vaultcore.profiles import ProviderConfig, SecretMapping, check_endpoint_url, check_region
from vaultcore.providers.base import FetchResult, Field, Identity, Prompt, ProviderError, Schema, StaticCredentials

if TYPE_CHECKING:
    import boto3.session
    import botocore.config
    import botocore.exceptions

# Both decide where the keys' signatures go (the region names AWS's endpoint and is signed into
# each request): destination fields, for Parameter Store too.
REGION = Field("region", "its AWS region, e.g. us-east-1", check=check_region, required=True, destination=True)
ENDPOINT_URL = Field("endpoint_url", "an AWS-compatible endpoint instead of AWS's, e.g. http://127.0.0.1:4566",
                     check=check_endpoint_url, destination=True)
SOURCES = ("static", "profile", "default")
SCHEMA = Schema(
    fields=(
        REGION,
        ENDPOINT_URL,
        Field("version_stage", "a version stage to fetch instead of the current one, e.g. AWSPREVIOUS", where="secret"),
    ),
    sources=SOURCES,
    credentials="AWS keys",
    secret_id="the secret's name or ARN in Secrets Manager, e.g. prod/db",
    location="region",
    rotation_stage="AWSPENDING",
)

CONNECT_TIMEOUT = 3.0
READ_TIMEOUT = 10.0
BATCH_SIZE = 20  # BatchGetSecretValue's SecretIdList limit

# Error codes as different services and compatible endpoints spell them.
_ACCESS_DENIED = {"AccessDeniedException", "AccessDenied"}
_NOT_FOUND = {"ResourceNotFoundException", "ParameterNotFound", "ParameterVersionNotFound"}
_INVALID_CREDENTIALS = {
    "UnrecognizedClientException", "InvalidClientTokenId", "SignatureDoesNotMatch",
    "InvalidSignatureException", "IncompleteSignature", "AuthFailure", "MissingAuthenticationToken",
}
_EXPIRED_CREDENTIALS = {"ExpiredTokenException", "ExpiredToken", "TokenRefreshRequired"}
_THROTTLED = {"ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded"}
# A batch call failing with one of these is retried one secret at a time: the caller may be
# allowed GetSecretValue but not BatchGetSecretValue, or the endpoint may not implement it.
BATCH_UNAVAILABLE = _ACCESS_DENIED | {
    "UnknownOperationException", "InvalidAction", "NotImplemented", "UnsupportedOperation",
}


def credential_prompts(config: ProviderConfig) -> tuple[Prompt, ...]:
    """Static keys, for `source: static` (the other sources keep nothing in the vault)."""
    if config.credentials_source != "static":
        return ()
    return (
        Prompt("access_key_id", f"AWS access key id for {config.name}", "an access key id", secret=False),
        Prompt("secret_access_key", "AWS secret access key", "a secret access key"),
        Prompt("session_token", "AWS session token (empty if none)", "a session token", required=False),
    )


credentials_from_dict = StaticCredentials.from_dict


def credentials_origin(config: ProviderConfig) -> str:
    """Where credentials come from when the vault keeps none."""
    if config.credentials_source == "profile":
        return f"AWS profile {config.aws_profile!r}"
    return "the default AWS chain (AWS_* variables, ~/.aws, instance role)"


def _credentials_hint(config: ProviderConfig) -> str:
    """How the user fixes credentials, which depends on where they come from."""
    if config.credentials_source == "static":
        return f"fix them with `vaultproxy config set-credentials {config.name}`"
    if config.credentials_source == "profile":
        return f"check AWS profile {config.aws_profile!r} (for SSO: `aws sso login --profile {config.aws_profile}`)"
    return "check the default AWS credential chain (AWS_* variables, ~/.aws, instance role)"


def session_for(config: ProviderConfig, credentials: StaticCredentials | None) -> boto3.session.Session:
    import boto3.session
    import botocore.exceptions

    if config.credentials_source == "static":
        if credentials is None:
            raise ProviderError(
                "missing_credentials",
                f"configuration {config.name} has no AWS keys; "
                f"set them with `vaultproxy config set-credentials {config.name}`",
            )
        return boto3.session.Session(
            aws_access_key_id=credentials.access_key_id,
            aws_secret_access_key=credentials.secret_access_key,
            aws_session_token=credentials.session_token,
            region_name=config.region,
        )
    try:
        if config.credentials_source == "profile":
            return boto3.session.Session(profile_name=config.aws_profile, region_name=config.region)
        return boto3.session.Session(region_name=config.region)
    except botocore.exceptions.ProfileNotFound:
        raise ProviderError(
            "missing_credentials", f"AWS profile {config.aws_profile!r} not found in the AWS config files"
        ) from None


def client_config(*, read_timeout: float = READ_TIMEOUT, max_pool_connections: int = 10) -> botocore.config.Config:
    """Bounded: at most two attempts, each with connect and read timeouts."""
    import botocore.config

    return botocore.config.Config(
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=read_timeout,
        retries={"max_attempts": 2, "mode": "standard"},
        max_pool_connections=max_pool_connections,
    )


def client(service: str, config: ProviderConfig, credentials: StaticCredentials | None, cfg: botocore.config.Config) -> Any:
    """A client of `service` with the configuration's credentials, region and endpoint."""
    import botocore.exceptions

    session = session_for(config, credentials)
    try:
        # Resolving here turns "no credentials anywhere" into one configuration-level error
        # instead of one per secret.
        if session.get_credentials() is None:
            raise ProviderError("missing_credentials", f"no AWS credentials found; {_credentials_hint(config)}")
    except botocore.exceptions.BotoCoreError as exc:
        code, message = classify(exc, config)
        raise ProviderError(code, message) from None
    return session.client(service, endpoint_url=config.endpoint_url, config=cfg)


def service_error(exc: botocore.exceptions.ClientError) -> tuple[str, str]:
    """The service's error code and message. Some Secrets Manager-compatible endpoints (moto
    among them) answer auth failures with a query-protocol XML body, which botocore's JSON parser
    reports as code "403" with the XML as message: read the real code out of it."""
    error = exc.response.get("Error", {})
    code, message = str(error.get("Code", "Unknown")), str(error.get("Message") or "")
    xml_code = re.search(r"<Code>([^<]{1,128})</Code>", message)
    if xml_code:
        xml_message = re.search(r"<Message>([^<]*)</Message>", message)
        return quoted(xml_code.group(1)), quoted(html.unescape(xml_message.group(1))) if xml_message else ""
    return quoted(code), quoted(" ".join(message.split()))


def classify(exc: Exception, config: ProviderConfig, secret_id: str | None = None) -> tuple[str, str]:
    """(error_code, one-line message) for a failed call. AWS error messages name resources and
    principals, never secret values, so they are safe to show."""
    import botocore.exceptions

    if isinstance(exc, botocore.exceptions.ClientError):
        code, message = service_error(exc)
        if code in _NOT_FOUND:
            return "not_found", f"secret not found: {secret_id}" if secret_id else f"not found ({code}): {message}"
        if code in _ACCESS_DENIED:
            return "access_denied", f"access denied ({code}): {message}"
        if code in _INVALID_CREDENTIALS:
            return "invalid_credentials", f"credentials rejected ({code}): {_credentials_hint(config)}"
        if code in _EXPIRED_CREDENTIALS:
            return "expired_credentials", f"credentials expired ({code}): {_credentials_hint(config)}"
        if code in _THROTTLED:
            return "throttled", f"throttled by AWS ({code}); try again later"
        return "error", f"{code}: {message}" if message else code
    if isinstance(exc, (botocore.exceptions.ConnectTimeoutError, botocore.exceptions.ReadTimeoutError)):
        return "timeout", f"endpoint did not answer in time: {quoted(str(exc))}"
    if isinstance(exc, (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectionClosedError)):
        return "unreachable", f"endpoint unreachable: {quoted(str(exc))}"
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return "missing_credentials", f"no AWS credentials found; {_credentials_hint(config)}"
    if isinstance(exc, (botocore.exceptions.TokenRetrievalError, botocore.exceptions.SSOTokenLoadError,
                        botocore.exceptions.UnauthorizedSSOTokenError)):
        return "expired_credentials", f"credentials expired ({type(exc).__name__}): {_credentials_hint(config)}"
    return "error", f"{type(exc).__name__}: {quoted(str(exc))}"  # a parser's error quotes the endpoint's body


def test_connection(config: ProviderConfig, credentials: StaticCredentials | None) -> Identity:
    """Who these credentials are (STS GetCallerIdentity, which needs no permission)."""
    import botocore.exceptions

    sts = client("sts", config, credentials, client_config())
    try:
        answer = sts.get_caller_identity()
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
        code, message = classify(exc, config)
        raise ProviderError(code, message) from None
    return Identity(account=answer["Account"], arn=answer["Arn"], user_id=answer["UserId"])


def config_warning(config: ProviderConfig) -> str | None:
    return region_problem(config, "secretsmanager", "AWS Secrets Manager")


def region_problem(config: ProviderConfig, service: str, title: str) -> str | None:
    """A region botocore does not know for `service`: AWS answers one with a connection
    failure that never says the region is the problem. (Compatible endpoints may use names
    of their own, and a new region may be newer than this botocore: a warning, no error.)"""
    import boto3.session

    session = boto3.session.Session()
    known = {
        region for partition in session.get_available_partitions()
        for region in session.get_available_regions(service, partition_name=partition)
    }
    if config.region in known:
        return None
    return (
        f"region {config.region!r} is not one {title} has (e.g. us-east-1, eu-west-1); "
        "fine for a compatible endpoint, or a region newer than your boto3"
    )


def _result(mapping: SecretMapping, answer: dict[str, Any]) -> FetchResult:
    value = answer.get("SecretString")
    if value is None:
        value = answer.get("SecretBinary")
    if value is None:
        return FetchResult(mapping.alias, error=f"secret has no value: {mapping.secret_id}", error_code="error")
    return FetchResult(mapping.alias, value=value, version_id=answer.get("VersionId"))


def failed(mapping: SecretMapping, exc: Exception, config: ProviderConfig) -> FetchResult:
    code, message = classify(exc, config, mapping.secret_id)
    return FetchResult(mapping.alias, error=message, error_code=code)


def _get_one(client: Any, config: ProviderConfig, mapping: SecretMapping) -> FetchResult:
    import botocore.exceptions

    kwargs = {"SecretId": mapping.secret_id}
    if mapping.version_stage is not None:
        kwargs["VersionStage"] = mapping.version_stage
    try:
        return _result(mapping, client.get_secret_value(**kwargs))
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
        return failed(mapping, exc, config)


@dataclass(frozen=True)
class _Retry:
    """Mappings of a batch that must be fetched one by one."""

    mappings: list[SecretMapping]


def _get_batch(client: Any, config: ProviderConfig, group: list[SecretMapping]) -> list[FetchResult] | _Retry:
    import botocore.exceptions

    ids = list(dict.fromkeys(m.secret_id for m in group))  # two aliases may share a secret
    answers: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    request: dict[str, Any] = {"SecretIdList": ids}
    try:
        while True:
            page = client.batch_get_secret_value(**request)
            answers += page.get("SecretValues", [])
            errors += page.get("Errors", [])
            if not page.get("NextToken"):
                break
            request["NextToken"] = page["NextToken"]
    except botocore.exceptions.ClientError as exc:
        if service_error(exc)[0] in BATCH_UNAVAILABLE:
            return _Retry(group)
        return [failed(m, exc, config) for m in group]
    except botocore.exceptions.BotoCoreError as exc:
        return [failed(m, exc, config) for m in group]

    results: list[FetchResult] = []
    unmatched: list[SecretMapping] = []
    for m in group:
        answer = next((a for a in answers if m.secret_id in (a.get("ARN"), a.get("Name"))), None)
        error = next((e for e in errors if e.get("SecretId") == m.secret_id), None)
        if answer is not None:
            results.append(_result(m, answer))
        elif error is not None:
            exc = botocore.exceptions.ClientError(
                {"Error": {"Code": error.get("ErrorCode", "Unknown"), "Message": error.get("Message", "")}},
                "BatchGetSecretValue",
            )
            results.append(failed(m, exc, config))
        else:
            # E.g. a partial ARN: the answer names the secret differently from the request.
            unmatched.append(m)
    return results + [_get_one(client, config, m) for m in unmatched]


def chunks(items: list[SecretMapping], size: int) -> Iterator[list[SecretMapping]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def fetch(
    config: ProviderConfig,
    mappings: Sequence[SecretMapping],
    credentials: StaticCredentials | None,
    *,
    use_batch: bool = True,
    max_workers: int = 8,
    progress: Callable[[int, int], None] | None = None,
    read_timeout: float = READ_TIMEOUT,
) -> dict[str, FetchResult]:
    """Fetch the raw current values of `mappings`, keyed by alias; one failed secret is an error
    row, not an exception. Raises ProviderError only when nothing can be tried (no credentials).

    Secrets without a version stage go through BatchGetSecretValue, 20 at a time; a batch the
    caller may not use falls back to GetSecretValue per secret. Calls run `max_workers` at a
    time on one shared client (boto3 clients are thread-safe, sessions are not).
    `progress(done, total)` is called from the calling thread after each secret."""
    if max_workers < 1:
        raise ValueError("max_workers must be at least 1")
    total = len(mappings)
    if total == 0:
        return {}
    shared = client(
        "secretsmanager", config, credentials,
        client_config(read_timeout=read_timeout, max_pool_connections=max(10, max_workers)),
    )
    batched = [m for m in mappings if use_batch and m.version_stage is None]
    single = [m for m in mappings if not (use_batch and m.version_stage is None)]
    results: dict[str, FetchResult] = {}
    done = 0
    with ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="vaultproxy-fetch") as pool:
        pending: set[Future[Any]] = {pool.submit(_get_batch, shared, config, g) for g in chunks(batched, BATCH_SIZE)}
        pending |= {pool.submit(_get_one, shared, config, m) for m in single}
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                outcome = future.result()
                if isinstance(outcome, _Retry):
                    pending |= {pool.submit(_get_one, shared, config, m) for m in outcome.mappings}
                    continue
                for result in outcome if isinstance(outcome, list) else [outcome]:
                    results[result.alias] = result
                    done += 1
                    if progress is not None:
                        progress(done, total)
    return results
