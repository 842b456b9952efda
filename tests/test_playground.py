"""The playground page (`/playground`) in a real browser against a real `bentoml serve`: Debian's Chromium driven by
Playwright (never a browser build downloaded at run time). What the page shows must equal what `/v1/rerank` answers,
no request may leave the server's origin, no JavaScript error may be raised, and markup in a document stays text.

Without Chromium these tests skip, and say how to install it; under CI (`CI` set, as `.ci/run` does) they fail instead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import FIXTURE_MODEL_ID, QWEN3_ID, RunningServer, running_server
from tests.fixture_models import build_minilm_cross_encoder

SECOND_MODEL_ID = "test-org/mini-reranker-b"
API_KEY = "playground-secret-key"
NO_BROWSER = "no Chromium: apt-get install chromium (see .ci/run)"
# Flags that let Chromium run as root in a container, with no GPU, and call nobody on its own (update checks, sync,
# QUIC probes): on a closed network those calls are refused, and they are not the page's requests anyway.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
QUERY = "What is machine learning?"
DOCUMENTS = [
    "Machine learning is a branch of artificial intelligence that learns patterns from data.",
    "Python is a popular programming language for data science.",
    "机器学习是人工智能的一个分支，让计算机从数据中学习。",
    "The giant panda lives in the mountains of central China.",
    "大熊猫生活在中国中部的山区。",
    "Gradient descent minimises a loss function step by step.",
]


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"{reason}: under CI the browser tests must run")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def chromium() -> str:
    """The path of Debian's Chromium (skips without it; fails under CI)."""
    found = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if found is None:
        _unavailable(NO_BROWSER)
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _unavailable("no Playwright: pip install -r requirements-dev.txt")
    return found


@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[Any]:
    """One headless Chromium for this module (each test gets a fresh context: no storage shared between tests).

    Module-scoped: Playwright's sync API keeps an event loop running in the thread while it is open, and later test
    modules call asyncio.run."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def second_model(stored_fixture, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A second MiniLM cross-encoder (another seeded head: other scores, another ranking) in the shared store."""
    from rerank_server.importer.sources import import_from_folder

    folder = build_minilm_cross_encoder(tmp_path_factory.mktemp("second") / "model", seed=7)
    return import_from_folder(SECOND_MODEL_ID, folder).stored.model_id


@dataclass
class Watched:
    """A page with everything it did recorded: each request's URL, uncaught errors, console errors."""

    page: Any
    origin: str
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def open(self, path: str = "/playground") -> None:
        self.page.goto(f"{self.origin}{path}")
        if path == "/playground":
            self.page.wait_for_selector("#playground:not([data-state='loading'])")

    def assert_clean(self, expected_errors: tuple[str, ...] = ()) -> None:
        """No request left the server's origin, and no JavaScript error but the `expected_errors` patterns."""
        foreign = [url for url in self.requests if _origin(url) != self.origin]
        assert not foreign, f"requests to other origins: {foreign}"
        unexpected = [e for e in self.errors if not any(re.search(p, e) for p in expected_errors)]
        assert not unexpected, unexpected


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@contextmanager
def watching(browser, origin: str, **options: Any) -> Iterator[Watched]:
    """A fresh browser context (laptop-sized viewport) and page, recorded."""
    context = browser.new_context(viewport={"width": 1366, "height": 768}, **options)
    page = context.new_page()
    watched = Watched(page, origin)
    page.on("request", lambda request: watched.requests.append(request.url))
    page.on("pageerror", lambda error: watched.errors.append(f"page error: {error}"))
    page.on("console", lambda message: message.type == "error" and watched.errors.append(f"console: {message.text}"))
    try:
        yield watched
    finally:
        context.close()


@pytest.fixture()
def page(browser, server: RunningServer) -> Iterator[Watched]:
    with watching(browser, server.url) as watched:
        yield watched


def fill(
    page: Any, model_a: str, model_b: str = "", *, documents: list[str] = DOCUMENTS, query: str = QUERY, top_n: str = ""
) -> None:
    page.fill("#query", query)
    page.fill("#documents", "\n".join(documents))
    page.select_option("#model-a", model_a)
    page.select_option("#model-b", model_b)
    page.fill("#top-n", top_n)


def run(page: Any) -> None:
    page.click("#run")
    page.wait_for_selector("#playground[data-state='done']")


def shown(page: Any, side: str) -> list[dict[str, Any]]:
    """The ranking the page shows in `#results-<side>`, in order."""
    return page.eval_on_selector_all(
        f"#results-{side} > li",
        """items => items.map(li => ({
            index: Number(li.dataset.index), score: Number(li.dataset.score), rank: Number(li.dataset.rank),
            text: li.querySelector('.text').textContent, change: li.dataset.rankChange,
        }))""",
    )


def api_rerank(url: str, body: dict[str, Any], key: str | None = None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = httpx.post(f"{url}/v1/rerank", json=body, headers=headers, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def assert_same_ranking(page_items: list[dict[str, Any]], answer: dict[str, Any], documents: list[str]) -> None:
    assert [item["index"] for item in page_items] == [r["index"] for r in answer["results"]]
    for item, result in zip(page_items, answer["results"], strict=True):
        assert item["score"] == pytest.approx(result["relevance_score"], abs=1e-6)
        assert item["text"] == documents[result["index"]]


# --- served as a page should be -----------------------------------------------------------------------------------


def test_the_page_and_its_assets_carry_a_strict_content_security_policy(server: RunningServer) -> None:
    page = httpx.get(f"{server.url}/playground")
    assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "require-trusted-types-for 'script'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    # No inline script (the policy would refuse it anyway), and nothing addressed outside the server.
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", page.text, re.S)
    assert scripts and all("src=" in attributes and not body.strip() for attributes, body in scripts)
    for asset in ("playground.js", "playground.css", "favicon.svg"):
        response = httpx.get(f"{server.url}/playground-assets/{asset}")
        assert response.status_code == 200, asset
        assert response.headers["content-security-policy"] == policy
        text = response.text.replace('xmlns="http://www.w3.org/2000/svg"', "")
        assert not re.search(r"https?://|//[a-z]", text), asset
    assert not re.search(r"(src|href)=\"(https?:)?//", page.text)


def test_browsers_get_a_landing_page_at_the_root_and_programs_keep_their_json(server: RunningServer) -> None:
    home = httpx.get(f"{server.url}/", headers={"accept": "text/html,application/xhtml+xml"})
    assert home.headers["content-type"].startswith("text/html") and 'href="playground"' in home.text
    assert 'href="docs"' in home.text and 'href="bentoml"' in home.text
    status = httpx.get(f"{server.url}/").json()
    assert status["status"] == "running" and FIXTURE_MODEL_ID in status["supported_models"]
    # BentoML's own UI, moved off `/`, keeps working, with its third-party tag manager refused.
    bentoml_ui = httpx.get(f"{server.url}/bentoml")
    assert bentoml_ui.status_code == 200 and "swagger-ui" in bentoml_ui.text
    assert "script-src 'self'" in bentoml_ui.headers["content-security-policy"]


def test_models_name_their_recipe_for_the_page(server: RunningServer) -> None:
    card = next(m for m in httpx.get(f"{server.url}/v1/models").json()["data"] if m["id"] == FIXTURE_MODEL_ID)
    assert card["recipe"] == "cross-encoder" and card["backend"] == "torch"


# --- in the browser -------------------------------------------------------------------------------------------------


def test_two_models_side_by_side_show_what_the_api_answers(page: Watched, server: RunningServer, second_model) -> None:
    page.open()
    fill(page.page, FIXTURE_MODEL_ID, second_model)
    run(page.page)
    answers = {}
    for side, model in (("a", FIXTURE_MODEL_ID), ("b", second_model)):
        answers[side] = api_rerank(server.url, {"model": model, "query": QUERY, "documents": DOCUMENTS})
        assert_same_ranking(shown(page.page, side), answers[side], DOCUMENTS)
        assert page.page.text_content(f"#name-{side}") == model
        tokens = page.page.get_attribute(f"#tokens-{side}", "data-tokens")
        assert int(tokens) == answers[side]["usage"]["prompt_tokens"]
        assert float(page.page.get_attribute(f"#latency-{side}", "data-latency-ms")) > 0
    order_a = [r["index"] for r in answers["a"]["results"]]
    order_b = [r["index"] for r in answers["b"]["results"]]
    assert order_a != order_b, "the two models should rank differently, or the rank change shows nothing"
    expected_changes = [str(order_a.index(index) - rank) for rank, index in enumerate(order_b)]
    assert [item["change"] for item in shown(page.page, "b")] == expected_changes
    assert not page.page.is_visible("#error")
    # Side by side on a laptop screen, and nothing wider than it.
    box_a, box_b = page.page.locator("#column-a").bounding_box(), page.page.locator("#column-b").bounding_box()
    assert box_b["x"] >= box_a["x"] + box_a["width"] and abs(box_a["y"] - box_b["y"]) < 1
    assert page.page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.assert_clean()


def test_chinese_text_round_trips(page: Watched, server: RunningServer) -> None:
    documents = ["机器学习是人工智能的一个分支", "Python是编程语言", "今天天气很好 ☀️"]
    page.open()
    fill(page.page, FIXTURE_MODEL_ID, documents=documents, query="什么是机器学习？")
    run(page.page)
    answer = api_rerank(server.url, {"model": FIXTURE_MODEL_ID, "query": "什么是机器学习？", "documents": documents})
    assert_same_ranking(shown(page.page, "a"), answer, documents)
    assert page.page.evaluate("document.characterSet") == "UTF-8"
    page.assert_clean()


def test_markup_in_a_document_stays_text(page: Watched, server: RunningServer) -> None:
    documents = ['<img src=x onerror="window.__xss=1">', "<b>bold</b> & <script>window.__xss=2</script>", "plain"]
    page.open()
    fill(page.page, FIXTURE_MODEL_ID, documents=documents)
    run(page.page)
    assert sorted(item["text"] for item in shown(page.page, "a")) == sorted(documents)
    assert page.page.locator("#results-a img, #results-a b, #results-a script").count() == 0
    page.page.wait_for_load_state("networkidle")  # an image's onerror would have fired by now
    assert page.page.evaluate("window.__xss") is None
    assert not [url for url in page.requests if urlsplit(url).path == "/x"]
    page.assert_clean()


def test_top_n_and_the_apis_own_error_words(page: Watched, server: RunningServer, second_model) -> None:
    page.open()
    fill(page.page, FIXTURE_MODEL_ID, second_model, top_n="2")
    run(page.page)
    for side, model in (("a", FIXTURE_MODEL_ID), ("b", second_model)):
        answer = api_rerank(server.url, {"model": model, "query": QUERY, "documents": DOCUMENTS, "top_n": 2})
        assert len(shown(page.page, side)) == 2
        assert_same_ranking(shown(page.page, side), answer, DOCUMENTS)
    page.page.fill("#top-n", "-1")
    run(page.page)
    refused = httpx.post(f"{server.url}/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS, "top_n": -1})
    assert refused.status_code == 400
    error = page.page.text_content("#error")
    assert refused.json()["error"]["message"] in error and "(400)" in error
    assert page.page.is_visible("#error")
    page.assert_clean(expected_errors=("status of 400",))


def test_copy_as_curl_runs_the_same_request(page: Watched, server: RunningServer, second_model) -> None:
    page.page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    documents = [*DOCUMENTS, 'It\'s a "quoted" line with $HOME and `backticks`']
    page.open()
    fill(page.page, FIXTURE_MODEL_ID, second_model, documents=documents, top_n="3")
    run(page.page)
    for side in ("a", "b"):
        command = page.page.text_content(f"#curl-{side}")
        assert command.startswith(f"curl -X POST '{server.url}/v1/rerank'") and "Authorization" not in command
        page.page.click(f"#copy-{side}")
        # Selectors, not wait_for_function: the page's policy refuses the eval that a string predicate needs.
        page.page.wait_for_selector(f"#copied-{side}:not(:empty)")
        assert page.page.evaluate("navigator.clipboard.readText()") == command
        answer = json.loads(subprocess.run(["bash", "-c", command], capture_output=True, text=True, check=True).stdout)
        assert_same_ranking(shown(page.page, side), answer, documents)
    page.assert_clean()


def test_the_page_works_from_the_keyboard(page: Watched) -> None:
    page.open()
    page.page.focus("#query")
    for _ in range(12):
        if page.page.evaluate("document.activeElement.id") == "run":
            break
        page.page.keyboard.press("Tab")
    assert page.page.evaluate("document.activeElement.id") == "run"
    outline = page.page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    width = page.page.evaluate("parseFloat(getComputedStyle(document.activeElement).outlineWidth)")
    assert outline != "none" and width >= 2, "focus must be visible"
    page.page.focus("#documents")
    page.page.keyboard.press("Control+Enter")
    page.page.wait_for_selector("#playground[data-state='done']")
    assert len(shown(page.page, "a")) == 4  # the example documents the page opens with
    page.assert_clean()


def _luminance(color: str) -> float:
    red, green, blue = (int(c) / 255 for c in re.findall(r"\d+", color)[:3])
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in (red, green, blue)]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def _contrast(first: str, second: str) -> float:
    light, dark = sorted((_luminance(first), _luminance(second)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def test_dark_mode_is_dark_and_readable(browser, server: RunningServer) -> None:
    colors = {}
    for scheme in ("light", "dark"):
        with watching(browser, server.url, color_scheme=scheme) as watched:
            watched.open()
            fill(watched.page, FIXTURE_MODEL_ID, documents=DOCUMENTS[:2])
            run(watched.page)
            style = "el => [getComputedStyle(el).color, getComputedStyle(el).backgroundColor]"
            colors[scheme] = {
                "body": watched.page.eval_on_selector("body", style),
                "input": watched.page.eval_on_selector("#documents", style),
                "result": [
                    watched.page.eval_on_selector("#results-a .text", "el => getComputedStyle(el).color"),
                    watched.page.eval_on_selector("#column-a", "el => getComputedStyle(el).backgroundColor"),
                ],
            }
            watched.assert_clean()
    assert colors["light"]["body"][1] != colors["dark"]["body"][1]
    assert _luminance(colors["dark"]["body"][1]) < 0.1 < _luminance(colors["light"]["body"][1])
    for scheme, pairs in colors.items():
        for name, (text, background) in pairs.items():
            assert _contrast(text, background) >= 4.5, (scheme, name, text, background)


def test_the_instruction_field_is_for_llm_rerankers(page: Watched, server: RunningServer, qwen3_dir: Path) -> None:
    from rerank_server.importer.sources import import_from_folder

    qwen3 = import_from_folder(QWEN3_ID, qwen3_dir).stored.model_id
    page.open()
    fill(page.page, FIXTURE_MODEL_ID)
    assert not page.page.is_visible("#instruction")
    page.page.select_option("#model-b", qwen3)
    assert page.page.is_visible("#instruction")
    instruction = "Given a question, find the passage that answers it"
    page.page.fill("#instruction", instruction)
    run(page.page)
    body = {"model": qwen3, "query": QUERY, "documents": DOCUMENTS, "instruction": instruction}
    assert_same_ranking(shown(page.page, "b"), api_rerank(server.url, body), DOCUMENTS)
    # The cross-encoder has no instruction: its request (and its curl command) carries none.
    assert "instruction" not in page.page.text_content("#curl-a")
    assert instruction in page.page.text_content("#curl-b")
    page.assert_clean()


def test_the_landing_page_leads_to_the_playground(page: Watched) -> None:
    page.open("/")
    page.page.click("#link-playground")
    page.page.wait_for_selector("#playground[data-state='ready']")
    assert urlsplit(page.page.url).path == "/playground"
    page.assert_clean()


def test_bentomls_ui_reaches_no_other_origin(browser, server: RunningServer) -> None:
    """BentoML's page asks for a tag manager and badges from elsewhere: the policy it is served with refuses them."""
    with watching(browser, server.url) as watched:
        refused: list[str] = []
        # Refused by the policy, not merely unreachable (as every other origin is from a closed network).
        watched.page.on(
            "requestfailed", lambda request: "csp" in (request.failure or "").lower() and refused.append(request.url)
        )
        watched.page.goto(f"{server.url}/bentoml")
        watched.page.wait_for_selector("#swagger-ui .opblock", state="attached")
        watched.page.wait_for_load_state("networkidle")
        foreign = [url for url in watched.requests if _origin(url) != server.url]
        assert set(foreign) <= set(refused), set(foreign) - set(refused)


# --- with RERANK_API_KEY --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def secured(stored_fixture, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    env = {"RERANK_DEFAULT_MODEL": FIXTURE_MODEL_ID, "RERANK_API_KEY": API_KEY}
    with running_server(tmp_path_factory.mktemp("playground-secured") / "serve.log", env) as running:
        yield running


def test_with_an_api_key_the_page_loads_and_asks_for_the_key(browser, chromium, secured: RunningServer) -> None:
    for path in ("/playground", "/playground-assets/playground.js", "/"):
        assert httpx.get(f"{secured.url}{path}", headers={"accept": "text/html"}).status_code == 200, path
    with watching(browser, secured.url) as watched:
        page = watched.page
        watched.open()
        assert page.is_visible("#error") and "API key" in page.text_content("#error")
        assert page.is_visible("#api-key")
        run(page)  # still without a key
        error = page.text_content("#error")
        assert "(401)" in error and "Missing or invalid API key" in error and "API key field" in error
        page.fill("#api-key", API_KEY)
        page.press("#api-key", "Tab")
        page.wait_for_selector(f"#model-a option[value='{FIXTURE_MODEL_ID}']", state="attached")
        fill(page, FIXTURE_MODEL_ID)
        run(page)
        assert not page.is_visible("#error")
        answer = api_rerank(secured.url, {"model": FIXTURE_MODEL_ID, "query": QUERY, "documents": DOCUMENTS}, API_KEY)
        assert_same_ranking(shown(page, "a"), answer, DOCUMENTS)
        # The key lives in this tab's sessionStorage only.
        assert page.evaluate("Object.values(sessionStorage)") == [API_KEY]
        assert page.evaluate("localStorage.length") == 0 and page.context.cookies() == []
        assert API_KEY not in page.url and not [url for url in watched.requests if API_KEY in url]
        # A reload in the same tab keeps it; the curl command names the variable, never the key.
        page.reload()
        page.wait_for_selector("#playground[data-state='ready']")
        assert page.input_value("#api-key") == API_KEY and not page.is_visible("#error")
        fill(page, FIXTURE_MODEL_ID)
        run(page)
        command = page.text_content("#curl-a")
        assert API_KEY not in command and '"Authorization: Bearer $RERANK_API_KEY"' in command
        env = {**os.environ, "RERANK_API_KEY": API_KEY}
        output = subprocess.run(["bash", "-c", command], capture_output=True, text=True, check=True, env=env).stdout
        assert_same_ranking(shown(page, "a"), json.loads(output), DOCUMENTS)
        watched.assert_clean(expected_errors=("status of 401",))


def test_the_page_says_whether_scores_are_calibrated_and_flags_non_commercial_licenses(
    page: Watched, server: RunningServer, fixture_model_dir: Path, tmp_path: Path
) -> None:
    import import_models
    from rerank_server.importer.sources import import_from_folder

    folder = shutil.copytree(fixture_model_dir, tmp_path / "nc")
    (folder / "README.md").write_text("---\nlicense: cc-by-nc-4.0\n---\n# A reranker\n", encoding="utf-8")
    model = import_from_folder("test-org/nc-calibrated", folder).stored.model_id
    assert import_models.main([model, "--logit-scale", "0.5", "--logit-bias", "1.5"]) == 0
    page.open()
    assert "calibrated" in page.page.text_content(f"#model-a option[value='{model}']")
    assert "non-commercial license" in page.page.text_content(f"#model-a option[value='{model}']")
    fill(page.page, model, FIXTURE_MODEL_ID)
    run(page.page)
    answer = api_rerank(server.url, {"model": model, "query": QUERY, "documents": DOCUMENTS})
    assert_same_ranking(shown(page.page, "a"), answer, DOCUMENTS)
    assert page.page.get_attribute("#scoring-a", "data-score-kind") == "calibrated"
    assert "sigmoid(0.5000" in page.page.text_content("#scoring-a")
    assert page.page.is_visible("#license-a") and "cc-by-nc-4.0: non-commercial" in page.page.text_content("#license-a")
    assert page.page.get_attribute("#scoring-b", "data-score-kind") == "sigmoid"
    assert page.page.text_content("#scoring-b").startswith("not calibrated")
    assert not page.page.is_visible("#license-b")
    page.assert_clean()


# --- a new user's second hour (issue #32): what the page shows beside its results ----------------------------------


def test_a_model_that_fails_keeps_nothing_of_the_last_run_beside_its_error(page: Watched, second_model) -> None:
    page.open()
    fill(page.page, FIXTURE_MODEL_ID, second_model)
    run(page.page)
    assert page.page.text_content("#tokens-b").endswith("tokens seen")
    # A model that fails on the next run (one the store does not hold: a 404).
    page.page.evaluate("""() => { const o = document.createElement('option'); o.value = 'no-org/gone';
                                  o.textContent = 'gone'; document.getElementById('model-b').append(o); }""")
    page.page.select_option("#model-b", "no-org/gone")
    run(page.page)
    assert "no-org/gone" in page.page.text_content("#error")
    assert page.page.text_content("#tokens-b") == "" and page.page.text_content("#latency-b") == ""
    assert not page.page.is_visible("#figures-b") and page.page.get_attribute("#tokens-b", "data-tokens") is None
    assert page.page.text_content("#tokens-a").endswith("tokens seen")  # A, which worked, shows its own
    page.assert_clean(expected_errors=("status of 404",))


def test_documents_keep_their_line_and_a_blank_line_can_separate_paragraphs(
    page: Watched, server: RunningServer
) -> None:
    page.open()
    fill(page.page, FIXTURE_MODEL_ID)
    page.page.fill("#documents", "first\n\nsecond\n\n\nthird")
    run(page.page)
    positions = page.page.eval_on_selector_all(
        "#results-a .position", "els => els.map(e => [e.textContent, e.dataset.line])"
    )
    assert sorted(positions) == [["doc 1", "1"], ["doc 2 (line 3)", "3"], ["doc 3 (line 6)", "6"]]

    chunks = ["A chunk of two paragraphs.\nIts second paragraph.", "Another chunk,\non two lines,\nand three.", "One."]
    page.page.select_option("#separator", "blank")
    page.page.fill("#documents", "\n\n".join(chunks) + "\n")
    run(page.page)
    answer = api_rerank(server.url, {"model": FIXTURE_MODEL_ID, "query": QUERY, "documents": chunks})
    assert_same_ranking(shown(page.page, "a"), answer, chunks)
    page.assert_clean()


def test_a_long_document_is_collapsed_and_says_where_the_model_stopped_reading(page: Watched) -> None:
    long_document = " ".join(f"word{i}" for i in range(3000))
    page.open()
    fill(page.page, FIXTURE_MODEL_ID, documents=["short one", long_document])
    run(page.page)
    max_length = httpx.get(f"{page.origin}/v1/models").json()["data"]
    (limit,) = [card["max_length"] for card in max_length if card["id"] == FIXTURE_MODEL_ID]
    item = page.page.locator("#results-a li[data-index='1']")
    assert f"truncated at {limit} tokens" in item.locator(".truncated").text_content()
    assert page.page.locator("#results-a li[data-index='0'] .more").count() == 0  # a short one says nothing
    assert page.page.evaluate("document.documentElement.scrollHeight") < 2000  # not 5,800 px of one document
    collapsed = item.locator(".text").bounding_box()["height"]
    item.locator(".more button").click()
    assert item.locator(".text").bounding_box()["height"] > 3 * collapsed
    assert item.locator(".text").text_content() == long_document  # all of it is there, only shown short
    page.assert_clean()


def test_model_b_opens_on_another_stored_model(page: Watched, second_model) -> None:
    page.open()
    chosen_a, chosen_b = page.page.input_value("#model-a"), page.page.input_value("#model-b")
    assert chosen_a == FIXTURE_MODEL_ID and chosen_b not in ("", chosen_a)
    page.page.select_option("#model-b", "")  # "(none)" stays a choice
    run(page.page)
    assert not page.page.is_visible("#column-b")
    page.assert_clean()


def test_a_threshold_draws_a_line_through_the_results(page: Watched) -> None:
    page.open()
    fill(page.page, FIXTURE_MODEL_ID)
    run(page.page)
    scores = [item["score"] for item in shown(page.page, "a")]
    threshold = (scores[1] + scores[2]) / 2  # two above, the rest below
    requests = len(page.requests)
    page.page.fill("#threshold", f"{threshold:.6f}")
    below = page.page.eval_on_selector_all("#results-a li", "els => els.map(e => e.classList.contains('below'))")
    assert below == [False, False] + [True] * (len(scores) - 2)
    first_below = page.page.locator("#results-a li.first-below")
    assert first_below.get_attribute("data-rank") == "3"
    assert float(first_below.get_attribute("data-threshold")) == pytest.approx(threshold, abs=1e-6)
    assert len(page.requests) == requests  # drawn on the results shown, without asking again
    page.page.fill("#threshold", "")
    assert page.page.locator("#results-a li.below").count() == 0
    page.assert_clean()
