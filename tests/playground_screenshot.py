"""The README's screenshot of the playground, taken in headless Chromium against a real `bentoml serve`.

python -m tests.playground_screenshot [docs/playground.png]

The server runs in a scratch BentoML home (tests.conftest makes one) with two offline fixture cross-encoders (MiniLM
with seeded heads: their scores show the page, not the quality of a real reranker). Chinese text needs a CJK font on
the host (`apt-get install fonts-wqy-microhei`), else it shows as boxes.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.conftest import FIXTURE_MODEL_ID, REPO_ROOT, running_server
from tests.fixture_models import build_minilm_cross_encoder
from tests.test_playground import CHROMIUM_FLAGS, SECOND_MODEL_ID

QUERY = "How does a reranker improve retrieval-augmented generation?"
DOCUMENTS = [
    "A reranker scores each retrieved passage against the query, so the LLM sees the most relevant ones first.",
    "Vector search returns candidates quickly, but its similarity is only an approximation of relevance.",
    "重排序模型对检索到的段落逐一打分，把最相关的内容排在前面。",
    "The Eiffel Tower was completed in 1889 for the World's Fair in Paris.",
    "交叉编码器同时读取查询和文档，因此比双塔模型更准确，但速度更慢。",
    "Cross-encoders read the query and the passage together, which makes them slower but more precise.",
]


def main(target: Path) -> None:
    from playwright.sync_api import sync_playwright

    from rerank_server.importer.sources import import_from_folder

    chromium = shutil.which("chromium")
    if chromium is None:
        sys.exit("error: no Chromium: apt-get install chromium")
    if not subprocess.run(["fc-list", ":lang=zh"], capture_output=True, text=True).stdout.strip():
        print("warning: no CJK font (apt-get install fonts-wqy-microhei): Chinese will show as boxes", file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="playground-screenshot-"))
    import_from_folder(FIXTURE_MODEL_ID, build_minilm_cross_encoder(work / "a"))
    import_from_folder(SECOND_MODEL_ID, build_minilm_cross_encoder(work / "b", seed=7))
    with (
        running_server(work / "serve.log", {"RERANK_DEFAULT_MODEL": FIXTURE_MODEL_ID}) as server,
        sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"{server.url}/playground")
        page.wait_for_selector("#playground[data-state='ready']")
        page.fill("#query", QUERY)
        page.fill("#documents", "\n".join(DOCUMENTS))
        page.select_option("#model-a", FIXTURE_MODEL_ID)
        page.select_option("#model-b", SECOND_MODEL_ID)
        page.click("#run")
        page.wait_for_selector("#playground[data-state='done']")
        page.screenshot(path=str(target), full_page=True)
        browser.close()
    print(f"{target}: {target.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO_ROOT / "docs" / "playground.png")
