"""The proxy's own answer to a request it will not send.

Plain text naming the key and the fix (never a value), `X-Vaultproxy-Error: <code>` for
scripts, and `nosniff`. A web page reads an answer only when it carries CORS headers for the
page's origin: a page whose origin the refused key allows gets them, so it can tell its user
why; any other page still learns nothing from a refusal (see SecretIndex.check).
"""

from __future__ import annotations

from mitmproxy import http

from vaultcore.hostrules import origin_matches
from vaultcore.index import POLICY_CODES, SecretIndex
from vaultcore.oauth import TOKEN_REFUSED, TOKEN_UNAVAILABLE
from vaultcore.placeholders import SubstitutionError

ERROR_HEADER = "X-Vaultproxy-Error"


# The codes that are neither policy (403) nor a bad request (400): too much growth, and no
# token, because the token endpoint refused (502: its answer is the problem) or could not be
# asked (503: try again later).
OTHER_STATUSES = {"too_large": 413, TOKEN_REFUSED: 502, TOKEN_UNAVAILABLE: 503}


def status(error: SubstitutionError) -> int:
    """403 for where-may-it-go refusals, 502/503 when no token could be minted, 413 for too
    much growth, 400 for the rest."""
    return 403 if error.code in POLICY_CODES else OTHER_STATUSES.get(error.code, 400)


def readable_by(request: http.Request, error: SubstitutionError, index: SecretIndex) -> str | None:
    """The origin of the page that sent `request`, when the key refused is allowed for it."""
    origin = request.headers.get("origin")
    secret = index.get(error.key) if error.key else None
    return origin if origin is not None and secret is not None and origin_matches(origin, secret.origins) else None


def refusal(error: SubstitutionError, origin: str | None = None) -> http.Response:
    """The answer to a refused request; `origin`: the page that may read it (`readable_by`)."""
    headers = {"Content-Type": "text/plain; charset=utf-8", "X-Content-Type-Options": "nosniff", ERROR_HEADER: error.code}
    if origin is not None:
        headers |= {"Access-Control-Allow-Origin": origin, "Vary": "Origin", "Access-Control-Expose-Headers": ERROR_HEADER}
    return http.Response.make(status(error), f"vaultproxy refused this request: {error}\n".encode(), headers)
