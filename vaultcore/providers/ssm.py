"""AWS Systems Manager Parameter Store: String, StringList and SecureString parameters.

A mapping names one parameter (`/app/db/password`; StringList values come as their comma-
separated text, SecureString values decrypted), or a path ending in "/" (`/app/prod/`):
every parameter under it, recursively, becomes a member of one JSON object keyed by its name
below the path, so `mode: json` gives each its key (`<<vault:app.db/password>>`).

Credentials, sessions, timeouts and error messages are AWS's, shared with aws.py. Single
parameters are fetched with GetParameters, 10 names a call (the API's limit); a caller not
allowed GetParameters falls back to GetParameter one by one. A path is one paginated
GetParametersByPath walk. Calls run one after another: Parameter Store's default quota is
40 calls a second, and a refresh must not take it from the applications that share it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from vaultcore.profiles import ProviderConfig, SecretMapping
from vaultcore.providers import aws
from vaultcore.providers.base import FetchResult, Problem, Schema, StaticCredentials

BATCH_SIZE = 10  # GetParameters' Names limit
PAGE_SIZE = 10  # GetParametersByPath's MaxResults limit


def _validate(config: ProviderConfig) -> Problem | None:
    for i, m in enumerate(config.secrets):
        if m.secret_id.endswith("/") and not m.secret_id.startswith("/"):
            return Problem(f"secrets[{i}].secret_id", f"a path must start with / (got {m.secret_id!r})")
        if m.secret_id.endswith("/") and m.mode != "json":
            return Problem(f"secrets[{i}].mode", "a path (ending in /) fetches every parameter under it as "
                                                 "ALIAS.NAME: set mode: json")
    return None


SCHEMA = Schema(
    fields=(aws.REGION, aws.ENDPOINT_URL),
    sources=aws.SOURCES,
    credentials="AWS keys",
    secret_id="a parameter name, e.g. /app/db/password, or a path ending in / for every parameter under it",
    location="region",
    validate=_validate,
)


# The same AWS credentials as Secrets Manager's, kept and tested the same way.
credential_prompts = aws.credential_prompts
credentials_from_dict = StaticCredentials.from_dict
credentials_origin = aws.credentials_origin
test_connection = aws.test_connection


def config_warning(config: ProviderConfig) -> str | None:
    return aws.region_problem(config, "ssm", "AWS Systems Manager")


def fetch(
    config: ProviderConfig,
    mappings: Sequence[SecretMapping],
    credentials: StaticCredentials | None,
    *,
    use_batch: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, FetchResult]:
    """The values of `mappings` by alias; a failed parameter or path is an error row. Raises
    ProviderError only when nothing can be tried (no credentials)."""
    if not mappings:
        return {}
    client = aws.client("ssm", config, credentials, aws.client_config())
    results: dict[str, FetchResult] = {}

    def done(found: list[FetchResult]) -> None:
        for result in found:
            results[result.alias] = result
            if progress is not None:
                progress(len(results), len(mappings))

    paths = [m for m in mappings if m.secret_id.endswith("/")]
    names = [m for m in mappings if not m.secret_id.endswith("/")]
    if use_batch:
        for group in aws.chunks(names, BATCH_SIZE):
            done(_get_batch(client, config, group))
    else:
        done([_get_one(client, config, m) for m in names])
    for m in paths:
        done([_get_path(client, config, m)])
    return results


def _get_one(client: Any, config: ProviderConfig, mapping: SecretMapping) -> FetchResult:
    import botocore.exceptions

    try:
        answer = client.get_parameter(Name=mapping.secret_id, WithDecryption=True)["Parameter"]
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
        return aws.failed(mapping, exc, config)
    return FetchResult(mapping.alias, answer["Value"], str(answer.get("Version", "")) or None)


def _get_batch(client: Any, config: ProviderConfig, group: list[SecretMapping]) -> list[FetchResult]:
    import botocore.exceptions

    requested = list(dict.fromkeys(m.secret_id for m in group))  # two aliases may share a parameter
    try:
        answer = client.get_parameters(Names=requested, WithDecryption=True)
    except botocore.exceptions.ClientError as exc:
        if aws.service_error(exc)[0] in aws.BATCH_UNAVAILABLE:
            return [_get_one(client, config, m) for m in group]
        return [aws.failed(m, exc, config) for m in group]
    except botocore.exceptions.BotoCoreError as exc:
        return [aws.failed(m, exc, config) for m in group]
    found = {}
    for parameter in answer.get("Parameters", []):
        # A selector (name:3, name:label) comes back as the name and the selector apart.
        found[parameter["Name"] + parameter.get("Selector", "")] = parameter
        found.setdefault(parameter["Name"], parameter)
    results = []
    for m in group:
        parameter = found.get(m.secret_id) or found.get("/" + m.secret_id)
        if parameter is None:
            results.append(FetchResult(m.alias, error=f"parameter not found: {m.secret_id}", error_code="not_found"))
        else:
            results.append(FetchResult(m.alias, parameter["Value"], str(parameter.get("Version", "")) or None))
    return results


def _get_path(client: Any, config: ProviderConfig, mapping: SecretMapping) -> FetchResult:
    """Every parameter under the path, as one JSON object of their names below it."""
    import botocore.exceptions

    members: dict[str, str] = {}
    request: dict[str, Any] = {"Path": mapping.secret_id.rstrip("/") or "/", "Recursive": True,
                               "WithDecryption": True, "MaxResults": PAGE_SIZE}
    try:
        while True:
            page = client.get_parameters_by_path(**request)
            for parameter in page.get("Parameters", []):
                members[parameter["Name"].removeprefix(mapping.secret_id)] = parameter["Value"]
            if not page.get("NextToken"):
                break
            request["NextToken"] = page["NextToken"]
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
        return aws.failed(mapping, exc, config)
    if not members:
        return FetchResult(mapping.alias, error=f"no parameters under {mapping.secret_id}", error_code="not_found")
    return FetchResult(mapping.alias, json.dumps(dict(sorted(members.items()))))
