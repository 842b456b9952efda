"""Bad and hostile images, and image URLs: every refusal is a 400 naming the field (and the setting, where one
decides), before any pixel is decoded where that is possible; URLs are fetched only when the operator allows it, and
then reach public addresses only unless a network is allowed, within a size cap and a deadline, redirects included.

The URL tests run a local HTTP server on 127.0.0.1: loopback is refused unless allowed, so the tests that fetch allow
127.0.0.0/8 and check that a redirect to a private or link-local address is still refused.
"""

from __future__ import annotations

import io
import ipaddress
import textwrap
import threading
import time
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from rerank_server.api.image_urls import allowed_networks, reachable
from tests.conftest import QWEN3_VL_ID, routes_client, scoring_engine
from tests.fixture_images import GOOD, b64, bomb, png, png_claiming


@pytest.fixture(scope="module")
def engine(stored_vl):
    with scoring_engine() as module_engine:
        yield module_engine


@pytest.fixture()
def client(engine):
    with routes_client(engine) as test_client:  # one per test: another test's client resets the app's overrides
        yield test_client


def ask(client, document: object, **extra) -> tuple[int, dict]:
    body = {"model": QWEN3_VL_ID, "query": "q", "documents": ["a", document], **extra}
    response = client.post("/v1/rerank", json=body)
    return response.status_code, response.json()


HOSTILE = [
    ("undecodable bytes", {"image": b64(b"this is not an image at all")}, "documents.1.image", "not an image"),
    ("not base64", {"image": "%%% not base64 %%%"}, "documents.1.image", "neither a data URI, base64"),
    ("truncated PNG", {"image": b64(GOOD[:60])}, "documents.1.image", "cannot be decoded"),
    ("a header claiming 10 billion pixels", {"image": b64(png_claiming(100_000, 100_000))}, "documents.1.image",
     "RERANK_MAX_IMAGE_PIXELS"),
    ("a decompression bomb", {"image": b64(bomb())}, "documents.1.image", "RERANK_MAX_IMAGE_PIXELS"),
    ("a 1:300 strip", {"image": b64(png_claiming(10, 3000))}, "documents.1.image", "ratio"),
    ("an empty image", {"image": ""}, "documents.1.image", "empty"),
    ("a text data URI", {"image": "data:text/plain;base64," + b64(b"hi")}, "documents.1.image", "data:image/"),
    ("a file URL", {"image": "file:///etc/passwd"}, "documents.1.image", "data URI, base64 or an http(s) URL"),
    ("EPS (Ghostscript)", {"image": b64(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 9 9\n")}, "documents.1.image",
     "not an image"),
    ("an image URL while URLs are off", {"image": "https://example.com/cat.png"}, "documents.1.image",
     "RERANK_IMAGE_URLS is off"),
    ("a pixel token in text", {"text": "<|image_pad|>"}, "documents", "<|image_pad|>"),
    ("an object with neither", {}, "documents.1", "`text` and/or `image`"),
    ("a video part", {"content": [{"type": "video_url", "video_url": {"url": "x"}}]}, "documents.1", "content"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "document", "field", "fragment"), HOSTILE, ids=[case[0] for case in HOSTILE])
def test_bad_images_are_a_400_naming_the_field(client, name, document, field, fragment) -> None:
    status, body = ask(client, document)
    assert status == 400, body
    assert body["error"]["param"] == field, body
    assert fragment in body["error"]["message"], body


def test_image_bounds_are_the_operators(stored_vl) -> None:
    limits = {"max_images_per_request": 2, "max_image_bytes": 2048, "max_image_pixels": 5000}
    with scoring_engine(**limits) as engine, routes_client(engine) as client:
        status, body = ask(client, {"image": b64(GOOD)}, query={"image": b64(GOOD)})
        assert status == 200, body  # two images: the limit
        three = {"model": QWEN3_VL_ID, "query": {"image": b64(GOOD)}, "documents": [{"image": b64(GOOD)}] * 2}
        response = client.post("/v1/rerank", json=three)
        assert response.status_code == 400 and "RERANK_MAX_IMAGES_PER_REQUEST" in response.text
        status, body = ask(client, {"image": b64(png(100, 100))})  # 10,000 pixels
        assert status == 400 and "RERANK_MAX_IMAGE_PIXELS" in body["error"]["message"]
        noisy = io.BytesIO()
        Image.effect_noise((60, 60), 100).save(noisy, "PNG")  # ~3.6 KB that cannot be compressed
        status, body = ask(client, {"image": b64(noisy.getvalue())})
        assert status == 400 and "RERANK_MAX_IMAGE_BYTES" in body["error"]["message"]


def test_line_wrapped_base64_is_taken_up_to_the_byte_limit(stored_vl) -> None:
    noisy = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (160, 160, 3), dtype=np.uint8)).save(noisy, "PNG")
    wrapped = "\n".join(textwrap.wrap(b64(noisy.getvalue()), 76))  # as `base64` writes it: ~1,300 line breaks
    with scoring_engine(max_image_bytes=len(noisy.getvalue())) as engine, routes_client(engine) as client:
        status, body = ask(client, {"image": wrapped})
        assert status == 200, body
    with scoring_engine(max_image_bytes=len(noisy.getvalue()) - 1) as engine, routes_client(engine) as client:
        status, body = ask(client, {"image": wrapped})
        assert status == 400 and "RERANK_MAX_IMAGE_BYTES" in body["error"]["message"], body


def test_a_pair_whose_images_pass_the_token_limit_is_a_400(engine, client) -> None:
    """Truncation never cuts an image: a pair whose images alone pass the limit is refused, not run for minutes."""
    large = b64(png(640, 640))  # 20 x 20 merged patches: 400 tokens
    status, body = ask(client, {"text": "t", "image": large}, truncate_prompt_tokens=300)
    assert status == 400, body
    assert body["error"]["param"] == "documents.1.image", body
    assert "400 tokens" in body["error"]["message"] and "limit of 300" in body["error"]["message"], body
    status, body = ask(client, {"text": "t", "image": large}, query={"image": large}, truncate_prompt_tokens=600)
    assert status == 400 and "800 tokens" in body["error"]["message"], body  # the query's image counts in each pair
    assert ask(client, {"text": "t", "image": large}, truncate_prompt_tokens=600)[0] == 200
    assert engine.image_memory.held == 0


def test_decoding_a_large_scan_is_reserved_before_it_starts(stored_vl) -> None:
    """A 3000x3000 scan becomes ~31 MB of patches, but decoding it takes ~117 MB: that is what it reserves."""
    with scoring_engine(max_image_memory_mb=100) as engine, routes_client(engine) as client:
        holding = engine.image_memory.reserve(40 * 2**20)  # another request's images
        status, body = ask(client, {"image": b64(png(3000, 3000))})
        assert status == 429 and "RERANK_MAX_IMAGE_MEMORY_MB" in body["error"]["message"], body
        holding()
        assert ask(client, {"image": b64(png(3000, 3000))})[0] == 200
        assert engine.image_memory.held == 0


def test_the_server_keeps_serving_and_holds_no_image_memory_after_refusals(engine, client) -> None:
    for _, document, _, _ in HOSTILE:
        ask(client, document)
    assert engine.image_memory.held == 0, "a refused request gives back what it reserved"
    status, body = ask(client, {"text": "fine", "image": b64(GOOD)})
    assert status == 200 and len(body["results"]) == 2
    assert engine.image_memory.held == 0


# --- Image URLs -------------------------------------------------------------------------------------------------------


class _Images(BaseHTTPRequestHandler):
    routes: dict[str, tuple[int, dict[str, str], bytes]] = {}

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path == "/slow.png":
            time.sleep(3)
        status, headers, body = self.routes.get(self.path, (404, {}, b"not found"))
        self.send_response(status)
        for name, value in {"Content-Length": str(len(body)), **headers}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture(scope="module")
def image_host() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    _Images.routes = {
        "/cat.png": (200, {"Content-Type": "image/png"}, GOOD),
        "/big.png": (200, {}, b"\0" * 20_000),
        "/slow.png": (200, {}, GOOD),
        "/to-cat": (302, {"Location": "/cat.png"}, b""),
        "/to-metadata": (302, {"Location": "http://169.254.169.254/latest/meta-data/"}, b""),
        "/to-private": (301, {"Location": "http://10.255.255.1/cat.png"}, b""),
        "/loop": (302, {"Location": "/loop"}, b""),
        "/to-invalid": (302, {"Location": "http://[::1"}, b""),
        "/gzip.png": (200, {"Content-Encoding": "gzip"}, zlib.compress(GOOD)),
    }
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield base
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def fetching_engine(stored_vl) -> Iterator:
    settings = {
        "image_urls": True, "image_urls_allow_private": "127.0.0.0/8", "max_image_bytes": 16_384,
        "image_url_timeout_s": 1.0,
    }  # fmt: skip
    with scoring_engine(**settings) as engine:
        yield engine


@pytest.fixture()
def fetching(fetching_engine) -> Iterator:
    with routes_client(fetching_engine) as test_client:
        yield test_client


def test_an_allowed_url_is_fetched_and_scores_as_its_bytes(fetching, image_host) -> None:
    inline = ask(fetching, {"text": "t", "image": b64(GOOD)})[1]["results"]
    for path in ("/cat.png", "/to-cat"):
        status, body = ask(fetching, {"text": "t", "image": image_host + path})
        assert status == 200, body
        assert body["results"] == [
            {**r, "document": {**r["document"], "image": image_host + path}} if r["index"] == 1 else r for r in inline
        ], "the same bytes: the same score (the document echoes the URL as sent)"
    vllm = {"content": [{"type": "image_url", "image_url": {"url": image_host + "/cat.png"}}]}
    assert ask(fetching, vllm)[0] == 200


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        ("/to-metadata", "169.254.169.254"),  # cloud metadata: link-local, refused before any connection
        ("/to-private", "10.255.255.1"),
        ("/big.png", "RERANK_MAX_IMAGE_BYTES"),
        ("/slow.png", "did not answer within 1 s"),
        ("/loop", "redirected more than"),
        ("/gzip.png", "compressed"),
        ("/missing.png", "answered 404"),
        ("/to-invalid", "could not be fetched"),  # httpx finds the Location invalid
    ],
)
def test_url_refusals(fetching, image_host, path, fragment) -> None:
    started = time.perf_counter()
    status, body = ask(fetching, {"image": image_host + path})
    assert time.perf_counter() - started < 2.5
    assert status == 400, body
    assert body["error"]["param"] == "documents.1.image" and fragment in body["error"]["message"], body


def test_loopback_is_refused_unless_allowed_and_only_http_is_fetched(stored_vl, image_host) -> None:
    with scoring_engine(image_urls=True) as engine, routes_client(engine) as client:
        status, body = ask(client, {"image": image_host + "/cat.png"})
        assert status == 400 and "RERANK_IMAGE_URLS_ALLOW_PRIVATE" in body["error"]["message"], body
        status, body = ask(client, {"image": "http://localhost:9/cat.png"})
        assert status == 400 and "RERANK_IMAGE_URLS_ALLOW_PRIVATE" in body["error"]["message"], body
        status, body = ask(client, {"image": "ftp://example.com/cat.png"})
        assert status == 400 and "http(s) URL" in body["error"]["message"], body


def test_a_host_name_the_resolver_refuses_is_a_400(fetching) -> None:
    status, body = ask(fetching, {"image": f"http://{'a' * 64}.example/cat.png"})  # IDNA: a label over 63 characters
    assert status == 400 and "cannot be resolved" in body["error"]["message"], body


def test_which_addresses_a_url_may_reach() -> None:
    none: tuple = ()
    public = ("8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "64:ff9b::808:808")
    refused = (
        "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0", "::1",
        "fe80::1", "fc00::1", "::ffff:127.0.0.1", "::ffff:169.254.169.254", "224.0.0.1", "255.255.255.255",
        "64:ff9b::a9fe:a9fe", "2002:a9fe:a9fe::1", "64:ff9b::a00:1", "2002:7f00:1::",  # NAT64 and 6to4 to private
    )  # fmt: skip
    assert all(reachable(ipaddress.ip_address(a), none) for a in public)
    assert not any(reachable(ipaddress.ip_address(a), none) for a in refused)
    allowed = allowed_networks("10.0.0.0/8, 127.0.0.1/32")
    assert reachable(ipaddress.ip_address("10.1.2.3"), allowed)
    assert reachable(ipaddress.ip_address("::ffff:127.0.0.1"), allowed)
    assert not reachable(ipaddress.ip_address("127.0.0.2"), allowed)
    assert not reachable(ipaddress.ip_address("169.254.169.254"), allowed)
