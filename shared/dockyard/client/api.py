"""Calls to the scheduler API and the log relay's HTTP endpoints; any failure is a ClientError."""

from __future__ import annotations

import json
from types import TracebackType
from typing import Any
from urllib.parse import quote

import aiohttp

from dockyard.client.target import Target

_TIMEOUT = aiohttp.ClientTimeout(total=30, connect=10)


class ClientError(Exception):
    """Raised for anything the user should read as one line: unreachable, refused, rejected."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code


class ApiClient:
    """One HTTP session for one CLI command."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ApiClient:
        self._session = aiohttp.ClientSession(timeout=_TIMEOUT, headers=self.auth_headers())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use ApiClient as `async with`"
        return self._session

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.target.token}"} if self.target.token else {}

    # -- jobs ---------------------------------------------------------------------------------

    async def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        return await self._json("POST", self._api("/v1/jobs"), body=spec)

    async def job(self, job_id: str) -> dict[str, Any]:
        return await self._json("GET", self._api(f"/v1/jobs/{_seg(job_id)}"))

    async def jobs(self, params: dict[str, str]) -> dict[str, Any]:
        return await self._json("GET", self._api("/v1/jobs"), params=params)

    async def cancel(self, job_id: str) -> dict[str, Any]:
        return await self._json("POST", self._api(f"/v1/jobs/{_seg(job_id)}/cancel"))

    async def events(self, job_id: str) -> dict[str, Any]:
        return await self._json("GET", self._api(f"/v1/jobs/{_seg(job_id)}/events"))

    async def log_page(self, job_id: str, after: int, limit: int = 1000) -> dict[str, Any]:
        url = f"{self.target.logs_url}/v1/jobs/{_seg(job_id)}/logs"
        return await self._json("GET", url, params={"after": str(after), "limit": str(limit)})

    # -- schedules ----------------------------------------------------------------------------

    async def schedules(self) -> dict[str, Any]:
        return await self._json("GET", self._api("/v1/schedules"))

    async def create_schedule(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._json("POST", self._api("/v1/schedules"), body=body)

    async def delete_schedule(self, name: str) -> None:
        await self._json("DELETE", self._api(f"/v1/schedules/{_seg(name)}"))

    # -- plumbing -----------------------------------------------------------------------------

    def _api(self, path: str) -> str:
        return self.target.api_url + path

    async def _json(
        self,
        method: str,
        url: str,
        *,
        body: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        try:
            async with self.session.request(method, url, json=body, params=params) as response:
                text = await response.text()
                if response.status >= 400:
                    raise error_from(response.status, text, url)
                if not text:
                    return {}
                data = json.loads(text)
        except aiohttp.ClientConnectorError as error:
            reason = (error.os_error.strerror or _reason(error)).lower()
            raise ClientError(
                f"cannot reach {_origin(url)} ({reason}); is the stack running (`dockyard up`)?"
            ) from None
        except aiohttp.ClientConnectionError as error:
            raise ClientError(f"lost the connection to {_origin(url)}: {_reason(error)}") from None
        except (aiohttp.ClientError, TimeoutError) as error:
            raise ClientError(f"{method} {url} failed: {_reason(error)}") from None
        except json.JSONDecodeError:
            raise ClientError(f"{url} answered something that is not JSON") from None
        if not isinstance(data, dict):
            raise ClientError(f"{url} answered an unexpected document")
        return data


def error_from(status: int, text: str, url: str) -> ClientError:
    """The API's `{"error": {"code", "message", "details"}}` as one readable line."""
    try:
        error = json.loads(text)["error"]
        message = str(error["message"])
        code = str(error.get("code", ""))
        field = (error.get("details") or {}).get("field")
    except (ValueError, KeyError, TypeError):
        hint = " (check DOCKYARD_TOKEN)" if status == 401 else ""
        return ClientError(f"{_origin(url)} answered HTTP {status}{hint}", status=status)
    if field and str(field) not in message:
        message = f"{field}: {message}"
    if status == 401:
        message += " (set DOCKYARD_TOKEN, or run `dockyard up` which writes a dev token)"
    return ClientError(message, status=status, code=code)


def _seg(value: str) -> str:
    return quote(value, safe="")


def _origin(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}"


def _reason(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text.splitlines()[0]
