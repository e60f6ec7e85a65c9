"""The MLflow UI as a user sees it: headless Chromium (Debian's `chromium`, driven by Playwright) opens the links
that `train`, `compare` and `promote` printed against a real `mlflow server` (the session's `local_stack`: two
smoke runs, compare, promote, test) and reads the pages: waits for real elements, never sleeps blindly.

Screenshots are kept: in `--artifacts DIR`/browser when given, else in pytest's tmp directory (printed).
"""

from __future__ import annotations

import contextlib
import re
import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.server

CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags Chromium's own connections are refused by a closed network and slow it.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PAGE_TIMEOUT_MS = 120_000  # the first page loads the UI's JavaScript (~10 MB) from a 1-worker server on 2 cores
ACTIVE_LABEL, INACTIVE_LABEL = "rgb(22, 22, 22)", "rgb(111, 111, 111)"  # the view switch's label colours


@pytest.fixture(scope="module")
def shots(request, tmp_path_factory) -> Path:
    chosen = request.config.getoption("--artifacts")
    path = Path(chosen) / "browser" if chosen else tmp_path_factory.mktemp("browser-screenshots")
    path.mkdir(parents=True, exist_ok=True)
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:  # shown without -s as well
        reporter.write_line(f"\nbrowser screenshots: {path}")
    return path


@pytest.fixture(scope="module")
def page(shots):
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium chromium-driver (see docs/servers.md)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 2100, "height": 1000})  # every column beside the assistant
        page.set_default_timeout(PAGE_TIMEOUT_MS)
        try:
            yield page
        finally:
            browser.close()


@pytest.fixture(scope="module")
def printed(local_stack) -> dict[str, str]:
    """label -> URL, from the `MLflow UI` blocks the commands printed (e.g. 'compare: charts of these runs')."""
    links = {}
    for step, outcome in local_stack.outcomes.items():
        for label, url in re.findall(r"^  (\S.*?)\s{2,}(https?://\S+)$", outcome.out, flags=re.M):
            links[f"{step}: {label}"] = url
    return links


@pytest.fixture(scope="module")
def store_values(local_stack) -> dict[str, dict[str, str]]:
    """What the store holds for each run (read through MLflow's client, not the UI)."""
    client = MlflowClient(local_stack.server.url)
    return {name: {"val_accuracy": repr(client.get_run(run_id).data.metrics["val_accuracy"]),
                   "diagnosis": client.get_run(run_id).data.tags["diagnosis"]}
            for name, run_id in local_stack.runs.items()}


@contextlib.contextmanager
def opened(page, url: str, shot: Path):
    """Open a printed link (the UI shell first, then the test waits for its own elements); the screenshot is
    taken when the block ends, passed or failed."""
    page.goto(url)
    page.get_by_text("Model training", exact=True).first.wait_for()
    try:
        yield
    finally:
        page.screenshot(path=str(shot), full_page=True)


def assert_model_training_view(page) -> None:
    """The switch shows "Model training" selected, the page URL kept the choice, and no GenAI overview."""
    labels = page.evaluate("""() => Object.fromEntries([...document.querySelectorAll('div[role=button] > span')]
        .filter(s => ['GenAI', 'Model training'].includes(s.textContent.trim()))
        .map(s => [s.textContent.trim(), getComputedStyle(s).color]))""")
    assert labels == {"Model training": ACTIVE_LABEL, "GenAI": INACTIVE_LABEL}, labels
    assert "workflowType=machine_learning" in page.url, page.url
    assert page.get_by_text("Detect Issues").count() == 0


def row_text(page, run_name: str) -> str:
    """The whole table row of a run: the grid draws the pinned name column and the other columns as separate
    row elements that share a `row-index`."""
    name_part = page.get_by_role("row").filter(has=page.get_by_role("link", name=run_name, exact=True)).first
    name_part.wait_for()  # a top-level row: nothing to expand
    index = name_part.get_attribute("row-index")
    return " | ".join(page.locator(f'[role=row][row-index="{index}"]').all_inner_texts())


def test_runs_table_shows_both_training_runs_with_their_numbers(page, printed, store_values, shots):
    url = printed["compare: training runs"]
    assert url == printed["train alpha: training runs"] == printed["train beta: training runs"]
    with opened(page, url, shots / "1-runs-table.png"):
        for name, values in store_values.items():
            page.get_by_text(values["val_accuracy"], exact=True).wait_for()
            cells = row_text(page, name)
            assert values["val_accuracy"] in cells and values["diagnosis"] in cells, (name, values, cells)
        assert_model_training_view(page)


def test_run_page_of_a_training_run(page, printed, local_stack, shots):
    with opened(page, printed["train alpha: this run"], shots / "2-run-alpha.png"):
        page.get_by_text("Model metrics", exact=False).first.wait_for()
        page.get_by_text("val_accuracy", exact=True).first.wait_for()
        assert local_stack.runs["alpha"] in page.url
        assert_model_training_view(page)


def test_charts_of_the_compared_runs(page, printed, shots):
    with opened(page, printed["compare: charts of these runs"], shots / "3-charts.png"):
        page.get_by_text("2 matching runs").wait_for()
        page.get_by_placeholder("Search metric charts").fill("val_accuracy")
        for name in ("alpha", "beta"):  # one line per run in the val_accuracy chart's legend
            page.get_by_text(f"{name} (val_accuracy)", exact=True).first.wait_for()
        assert_model_training_view(page)


def test_compare_page_charts_both_runs(page, printed, local_stack, shots):
    with opened(page, printed["compare: compare these runs"], shots / "4-compare.png"):
        page.get_by_text("Comparing 2 Runs from 1 Experiment").wait_for()
        for name, run_id in local_stack.runs.items():
            page.get_by_role("link", name=run_id, exact=True).first.wait_for()
            page.get_by_text(name, exact=True).first.wait_for()
        # The parallel-coordinates chart: one line per run; the ends of its metric axis are the two runs' values.
        plot = page.locator(".js-plotly-plot").first
        plot.wait_for()
        words = plot.inner_text().split()
        client = MlflowClient(local_stack.server.url)
        finals = [client.get_run(run_id).data.metrics for run_id in local_stack.runs.values()]
        (metric,) = [w for w in words if all(w in m for m in finals)]  # the metric axis's title
        for metrics in finals:
            assert f"{metrics[metric]:.5f}" in words, (metric, metrics[metric], words)
        assert_model_training_view(page)


def test_registered_model_page_shows_the_champion_alias(page, printed, shots):
    with opened(page, printed["promote: registered model"], shots / "5-model.png"):
        version = page.get_by_role("row").filter(has=page.get_by_role("link", name="Version 1", exact=True)).first
        version.wait_for()
        version.get_by_text("@ champion").wait_for()  # the alias, in that version's row
        assert_model_training_view(page)
