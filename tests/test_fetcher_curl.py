"""CurlClient: libcurl on the asyncio loop — handles, cancellation, close, many at once."""

from __future__ import annotations

import asyncio
import json

import pycurl
import pytest

from spiderflow.fetcher.body import ResponseSink
from spiderflow.fetcher.curl import CurlClient, CurlError


async def _get(client: CurlClient, url: str, method: str = "GET", body: bytes | None = None,
               headers: dict[str, str] | None = None, timeout: float = 10.0) -> tuple[int, ResponseSink]:
    sink = ResponseSink(1 << 20, decode=True)
    status = await client.fetch(url, method, headers or {"User-Agent": "t"}, body, timeout, timeout, True, None,
                                sink.prepare_curl)
    return status, sink


def test_many_requests_on_few_handles_and_their_reuse(httpbin):
    async def main():
        client = CurlClient(max_clients=2)
        try:
            # ten at once on a pool of two: none waits for another, all complete
            results = await asyncio.gather(*[_get(client, f"{httpbin.url}/get?n={i}") for i in range(10)])
            assert [json.loads(sink.body())["args"]["n"] for _, sink in results] == [str(i) for i in range(10)]
            assert {status for status, _ in results} == {200}
            assert len(client._idle) == 2 and not client._running      # idle handles kept: max_clients
            # a reused handle carries nothing of the last request: no body, no method, no header
            await _get(client, f"{httpbin.url}/anything", "PUT", b"payload", {"X-One": "1"})
            status, sink = await _get(client, f"{httpbin.url}/anything")
            echo = json.loads(sink.body())
            assert status == 200 and echo["method"] == "GET" and echo["data"] == "" and "X-One" not in echo["headers"]
        finally:
            client.close()
    asyncio.run(main())


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_methods_and_bodies(httpbin, method):
    async def main():
        client = CurlClient()
        try:
            status, sink = await _get(client, f"{httpbin.url}/anything", method, b"a=1&b=2",
                                      {"Content-Type": "application/x-www-form-urlencoded"})
            echo = json.loads(sink.body())
            assert status == 200 and echo["method"] == method
            assert (echo["form"] == {"a": "1", "b": "2"}) or echo["data"] == "a=1&b=2"
            status, sink = await _get(client, f"{httpbin.url}/get", "HEAD")
            assert status == 200 and sink.body() == b"" and sink.headers["Content-Type"].startswith("application/json")
        finally:
            client.close()
    asyncio.run(main())


def test_bad_requests_raise_before_anything_is_sent(httpbin):
    async def main():
        client = CurlClient()
        try:
            with pytest.raises(ValueError, match="Body must be None for GET"):
                await _get(client, f"{httpbin.url}/get", "GET", b"x")
            with pytest.raises(ValueError, match="CR or LF"):
                await _get(client, f"{httpbin.url}/get", headers={"X-Evil": "a\r\nInjected: 1"})
            assert not client._running and len(client._idle) == 1   # the handle went back
            status, _ = await _get(client, f"{httpbin.url}/get")
            assert status == 200
        finally:
            client.close()
    asyncio.run(main())


def test_timeout_is_a_curl_error(httpbin):
    async def main():
        client = CurlClient()
        try:
            with pytest.raises(CurlError) as info:
                await _get(client, f"{httpbin.url}/delay/3", timeout=0.3)
            assert info.value.errno == pycurl.E_OPERATION_TIMEDOUT
            assert str(info.value).endswith(f"(curl error {pycurl.E_OPERATION_TIMEDOUT})")
        finally:
            client.close()
    asyncio.run(main())


def test_cancelled_fetch_frees_its_handle(httpbin):
    async def main():
        client = CurlClient()
        try:
            task = asyncio.ensure_future(_get(client, f"{httpbin.url}/delay/5"))
            await asyncio.sleep(0.2)
            assert len(client._running) == 1
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert not client._running and len(client._idle) == 1
            status, _ = await _get(client, f"{httpbin.url}/get")     # the client goes on working
            assert status == 200
        finally:
            client.close()
    asyncio.run(main())


def test_close_fails_running_fetches_and_refuses_new_ones(httpbin):
    async def main():
        client = CurlClient()
        task = asyncio.ensure_future(_get(client, f"{httpbin.url}/delay/5"))
        await asyncio.sleep(0.2)
        client.close()
        with pytest.raises(RuntimeError, match="closed"):
            await asyncio.wait_for(task, 2)
        with pytest.raises(RuntimeError, match="closed"):
            await _get(client, f"{httpbin.url}/get")
        assert not client._fds and client._timer is None
        client.close()  # twice is fine
    asyncio.run(main())
