"""HTTP plumbing both services build their apps from: API key, strict bodies, errors, storage.

pose_analyzer depends on this package, so the two services share one
implementation of the contract in docs/api.md instead of two that drift:

- ``ApiKeyMiddleware``: an optional key on every route, WebSocket, ``/docs``,
  ``/openapi.json`` and static file; ``/health`` (and ``/metrics`` unless told
  otherwise) stay open so process managers and Prometheus keep working. The
  key comes from ``X-API-Key``, ``Authorization: Bearer`` or HTTP Basic (any
  user name; browsers prompt for it and then send it on every request of the
  page); ``?api_key=`` only on WebSocket handshakes, which browsers cannot
  give headers. Keys are compared as bytes in constant time, whatever bytes
  the client sends. A refused WebSocket is accepted and then closed with
  code 4401, so clients see the documented code instead of an HTTP 403.
- ``BodyGuardMiddleware``: every non-multipart body is read up to a limit
  (413 past it) and, when JSON, parsed strictly: NaN, Infinity, numbers that
  overflow a float and integers longer than 4000 digits are a 422 before any
  route sees them.
- ``install_error_handlers``: one error body, ``{"detail": str}``, plus
  ``errors`` (location, message, type) for validation failures; the rejected
  input is never echoed (it may be huge or not encodable).
- storage trouble (``gpu_optimizer.storage.guard.StorageUnavailable``, or a
  driver error) is a 503 naming the reason.
- ``declare_errors``: the statuses every route can return, with the real
  error shape, added to the OpenAPI document.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import math
import re
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from gpu_optimizer.storage.guard import StorageUnavailable

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

WS_UNAUTHORIZED = 4401  # WebSocket close code: missing or wrong API key
WS_NOT_FOUND = 4404  # WebSocket close code: no such resource
MAX_INT_DIGITS = 4000


class ErrorOut(BaseModel):
    """Every 4xx and 5xx body of both services."""

    detail: str


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationErrorOut(BaseModel):
    """A 422: ``detail`` is one line for people, ``errors`` one entry per bad field."""

    detail: str
    errors: list[FieldError] = []


# -- API key ---------------------------------------------------------------------------


def key_matches(expected: str, given: bytes | None) -> bool:
    """Constant-time comparison of the configured key with any bytes a client sent."""
    if given is None:
        return False
    return hmac.compare_digest(expected.encode("utf-8"), given)


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value)
    return None


def presented_keys(scope: Scope) -> list[bytes]:
    """Every credential the request carries, as bytes (no decoding that could fail)."""
    keys: list[bytes] = []
    header = _header(scope, b"x-api-key")
    if header is not None:
        keys.append(header.strip())
    auth = _header(scope, b"authorization")
    if auth is not None:
        kind, _, value = auth.strip().partition(b" ")
        if kind.lower() == b"bearer":
            keys.append(value.strip())
        elif kind.lower() == b"basic":
            try:
                decoded = base64.b64decode(value.strip(), validate=True)
            except (binascii.Error, ValueError):
                decoded = b""
            keys.append(decoded.partition(b":")[2])
    if scope["type"] == "websocket":
        raw = scope.get("query_string", b"")
        # Percent-escapes decode to the bytes the client sent, UTF-8 or not.
        pairs = parse_qsl(raw.decode("latin-1"), keep_blank_values=True, errors="surrogateescape")
        for name, value in pairs:
            if name == "api_key":
                keys.append(value.encode("utf-8", "surrogateescape"))
    return keys


class ApiKeyMiddleware:
    def __init__(
        self, app: ASGIApp, *, key: str | None, open_paths: Iterable[str], realm: str
    ) -> None:
        self.app = app
        self.key = key or None
        self.open_paths = frozenset(open_paths)
        self.realm = realm

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self.key is None
            or scope["type"] not in ("http", "websocket")
            or scope.get("path") in self.open_paths
            or any(key_matches(self.key, k) for k in presented_keys(scope))
        ):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            message = await receive()
            if message["type"] == "websocket.connect":
                await send({"type": "websocket.accept"})
                await send(
                    {
                        "type": "websocket.close",
                        "code": WS_UNAUTHORIZED,
                        "reason": "missing or wrong API key (header X-API-Key or ?api_key=)",
                    }
                )
            return
        response = JSONResponse(
            {"detail": "missing or wrong API key: send it in the X-API-Key header"},
            status_code=401,
            headers={"WWW-Authenticate": f'Basic realm="{self.realm}"'},
        )
        await response(scope, receive, send)


class ScrubSecrets(logging.Filter):
    """Blanks ``api_key=...`` in access-log lines (WebSocket URLs may carry the key)."""

    _pattern = re.compile(r"(api_key=)[^&\s\"']*", re.IGNORECASE)

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(
                self._pattern.sub(r"\1***", a) if isinstance(a, str) else a for a in record.args
            )
        if isinstance(record.msg, str) and "api_key=" in record.msg.lower():
            record.msg = self._pattern.sub(r"\1***", record.msg)
        return True


def scrub_access_logs() -> None:
    """Install ScrubSecrets on uvicorn's loggers once (create_app may run many times)."""
    for name in ("uvicorn.access", "uvicorn.error"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, ScrubSecrets) for f in logger.filters):
            logger.addFilter(ScrubSecrets())


# -- bodies ----------------------------------------------------------------------------


class BadJson(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise BadJson(f"{name} is not allowed: numbers must be finite")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadJson(f"number {text[:40]} is out of range: numbers must be finite")
    return value


def _bounded_int(text: str) -> int:
    if len(text) > MAX_INT_DIGITS:
        raise BadJson(f"integer of {len(text)} digits is out of range (at most {MAX_INT_DIGITS})")
    return int(text)


def strict_json(body: bytes) -> Any:
    """The JSON document in ``body``; BadJson for NaN/Infinity/overflow and bad syntax."""
    try:
        return json.loads(
            body,
            parse_constant=_refuse_constant,
            parse_float=_finite_float,
            parse_int=_bounded_int,
        )
    except BadJson:
        raise
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BadJson(f"the body is not valid JSON: {exc}") from None


class BodyGuardMiddleware:
    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        content_type = (_header(scope, b"content-type") or b"").split(b";")[0].strip().lower()
        if scope["type"] != "http" or content_type == b"multipart/form-data":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if body and (content_type == b"application/json" or content_type.endswith(b"+json")):
            try:
                strict_json(body)
            except BadJson as exc:
                response = JSONResponse(
                    {
                        "detail": str(exc),
                        "errors": [{"loc": ["body"], "msg": str(exc), "type": "json_invalid"}],
                    },
                    status_code=422,
                )
                await response(scope, receive, send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse(
            {"detail": f"request body larger than {self.max_bytes} bytes"}, status_code=413
        )
        await response(scope, receive, send)


# -- errors ----------------------------------------------------------------------------


_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _loc(parts: Any) -> list[str | int]:
    """Field names and indexes only: pydantic adds union and validator tags to locations."""
    out: list[str | int] = []
    for part in parts:
        index = isinstance(part, int) and not isinstance(part, bool)
        if index or (isinstance(part, str) and _FIELD.match(part)):
            out.append(part)
    return out


def validation_body(exc: RequestValidationError) -> dict[str, Any]:
    errors = [
        {
            "loc": _loc(err.get("loc", ())),
            "msg": str(err.get("msg", "invalid")),
            "type": str(err.get("type", "value_error")),
        }
        for err in exc.errors()
    ]
    lines: dict[str, list[str]] = {}
    for e in errors:
        lines.setdefault(".".join(str(p) for p in e["loc"]), []).append(str(e["msg"]))
    summary = "; ".join(f"{k}: {' or '.join(v)}" for k, v in list(lines.items())[:5])
    return {"detail": summary or "invalid request", "errors": errors}


def allowed_methods(app: FastAPI, scope: Scope) -> list[str]:
    from starlette.routing import Match, Route

    methods: set[str] = set()
    for route in app.router.routes:
        if isinstance(route, Route) and route.methods:
            match, _ = route.matches({**scope, "method": next(iter(route.methods))})
            if match is Match.FULL:
                methods |= route.methods
    return sorted(methods)


def install_error_handlers(app: FastAPI, *, storage_message: str) -> None:
    """One error shape for every failure a request can meet, none of them a 500."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(validation_body(exc), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # Starlette names only the first route's methods; list every method the path has.
            headers["Allow"] = ", ".join(allowed_methods(app, request.scope))
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(StorageUnavailable)
    async def _storage(_request: Request, exc: StorageUnavailable) -> JSONResponse:
        log.error("storage unavailable: %s", exc)
        return JSONResponse({"detail": f"{storage_message}: {exc}"}, status_code=503)

    @app.exception_handler(DBAPIError)
    async def _database(_request: Request, exc: DBAPIError) -> JSONResponse:
        log.error("database error: %s", exc)
        reason = str(exc.orig) if exc.orig is not None else type(exc).__name__
        return JSONResponse({"detail": f"{storage_message}: {reason}"}, status_code=503)


def _error_response(description: str, model: type[BaseModel] = ErrorOut) -> dict[str, Any]:
    return {
        "description": description,
        "content": {
            "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
        },
    }


def declare_errors(app: FastAPI, *, api_key: bool) -> None:
    """Add the statuses the middleware and handlers return to every operation's responses."""
    from fastapi.openapi.utils import get_openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (ErrorOut, FieldError, ValidationErrorOut):
            components[model.__name__] = model.model_json_schema(
                ref_template="#/components/schemas/{model}"
            )
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
        for path, item in schema.get("paths", {}).items():
            for operation in item.values():
                responses = operation.setdefault("responses", {})
                responses["422"] = _error_response(
                    "the request does not match the schema", ValidationErrorOut
                )
                if "requestBody" in operation:
                    responses.setdefault("413", _error_response("the request body is too large"))
                if api_key and path != "/health":
                    responses.setdefault("401", _error_response("missing or wrong API key"))
                responses.setdefault("503", _error_response("the database is unavailable"))
                if api_key:
                    operation.setdefault("security", [{"APIKeyHeader": []}])
        if api_key:
            schema["components"]["securitySchemes"] = {
                "APIKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"}
            }
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
