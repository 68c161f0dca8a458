"""End to end in a real browser: what a notebook user does, click by click.

Headless Chromium (Debian's /usr/bin/chromium, driven by Playwright; no
browser is downloaded) logs in, is refused a bad bind with the reason alone,
picks a node and a bind in the form (and, where several are offered, an
image), starts,
watches the spawn page's steps, reaches JupyterLab through the proxy and
stops the server from the home page. On failure it saves a screenshot and
names it in the failure.
"""

from __future__ import annotations

import re
import shutil

import cluster as cluster_mod
import pytest
from conftest import nothing_left, servers_of, user_processes, wait_until
from playwright.sync_api import sync_playwright  # the test extra; a missing one fails, not skips
from test_image_choice import images_hub  # noqa: F401 - a fixture
from test_spawn import NODE2

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture
def browser():
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (or run .ci/setup)")
    with sync_playwright() as pw:
        # --no-sandbox: the tests run as root, where Chromium's sandbox refuses to start.
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


def log_in(hub, page, user):
    page.goto(f"{hub.url}/hub/login")
    page.fill("#username_input", user)
    page.fill("#password_input", hub.password)
    page.click("#login_submit")
    page.wait_for_url(re.compile(r"/hub/(home|spawn)"))


def in_a_page(browser, hub, user, tmp_path, steps):
    """steps(page) in a new page; on failure a screenshot, named in the failure. The user's
    server is stopped afterwards."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(60_000)
    try:
        steps(page)
    except Exception as e:
        shot = tmp_path / "browser-failure.png"
        page.screenshot(path=str(shot), full_page=True)
        raise AssertionError(f"{e}\nat {page.url}; screenshot: {shot}") from e
    finally:
        if hub.server_model(user) is not None:
            hub.stop_server(user)


def start_and_stop(hub, page, user, node):
    log_in(hub, page, user)
    page.goto(f"{hub.url}/hub/spawn/{user}")
    choice = page.locator(f'#rss-host option[value="{node}"]').inner_text()
    assert "GiB free" in choice and "server" in choice, f"no node status in the form: {choice!r}"

    # A bind the spawner refuses: the form comes back with the reason, as a sentence.
    page.select_option("#rss-host", node)
    page.fill("#rss-binds", "data/project")
    page.click("form button[type=submit]")
    error = page.locator(".spawn-error-msg").inner_text()
    assert error == (
        "Error: Cannot start your server: bind 'data/project': the source 'data/project' "
        "is not an absolute path"
    ), error

    page.select_option("#rss-host", node)
    page.fill("#rss-binds", "/var/tmp:/mnt:ro")
    page.click("form button[type=submit]")

    # The spawn page lists each step as it comes.
    log = page.locator("#progress-log")
    log.locator(".progress-log-event", has_text=f"connecting to {node}").wait_for(state="attached")
    log.locator(".progress-log-event", has_text="starting the container").wait_for(state="attached")

    page.wait_for_url(re.compile(rf"/user/{user}/(lab|tree)"), timeout=120_000)
    page.wait_for_function("document.title.includes('JupyterLab')", timeout=90_000)
    status = page.request.get(f"{hub.url}/user/{user}/api/status")
    assert status.ok, status.text()

    server = servers_of(node, user)
    assert len(server) == 1, user_processes(node, user)
    mounts = cluster_mod.node_run(node, ["cat", f"/proc/{server[0]['pid']}/mounts"]).stdout
    assert " /mnt " in mounts, "the bind typed in the form reached the container"

    # The stop button works once home.js, loaded after the page, has bound it.
    page.goto(f"{hub.url}/hub/home", wait_until="networkidle")
    page.click("#stop")
    page.locator("#start", has_text="Start My Server").wait_for(state="visible", timeout=90_000)
    assert wait_until(lambda: nothing_left(node, user)), user_processes(node, user)


def test_a_user_starts_jupyterlab_on_a_chosen_node_and_stops_it(hub, browser, tmp_path):
    user, node = "rss-carol", NODE2
    in_a_page(browser, hub, user, tmp_path, lambda page: start_and_stop(hub, page, user, node))


def test_a_user_picks_an_image_in_the_form_and_reaches_jupyterlab(images_hub, browser, cluster, tmp_path):  # noqa: F811
    user, node = "rss-carol", NODE2  # in group ml: offered all three images

    def pick_and_start(page):
        log_in(images_hub, page, user)
        page.goto(f"{images_hub.url}/hub/spawn/{user}")
        offered = page.locator("#rss-images .form-check")
        assert offered.count() == 3
        older = offered.nth(1).inner_text()
        assert "Jupyter, older" in older and "starts with a warning" in older, older
        assert page.is_checked("#rss-images input[value=jupyter]"), "the first image is the default"

        page.check("#rss-images input[value=jupyter-older]")
        page.select_option("#rss-host", node)
        page.click("form button[type=submit]")
        log = page.locator("#progress-log")
        step = log.locator(".progress-log-event", has_text=f"starting image jupyter-older on {node}")
        step.wait_for(state="attached")
        page.wait_for_url(re.compile(rf"/user/{user}/(lab|tree)"), timeout=120_000)
        page.wait_for_function("document.title.includes('JupyterLab')", timeout=90_000)
        (server,) = servers_of(node, user)
        assert f"{cluster_mod.CONFIG.image_venvs['jupyter-minor']}/bin/" in server["args"]

    in_a_page(browser, images_hub, user, tmp_path, pick_and_start)
    assert wait_until(lambda: nothing_left(node, user)), user_processes(node, user)
