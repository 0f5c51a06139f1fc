"""The pages in Chromium against a real standalone system: log in, watch a run go from running to
success without a reload, read a failing job's coloured log, retry, play a manual job, see both
workers, and hostile names and escape sequences stay text."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

LIVE = """
stages: [build, test, deploy]
build:
  stage: build
  script:
    - printf 'section_start:%s:deps[collapsed=true]\\r\\033[0KInstalling dependencies\\n' "$(date +%s)"
    - echo "pip install -r requirements.txt"
    - printf 'section_end:%s:deps\\r\\033[0K\\n' "$(date +%s)"
    - until [ -e GATE ]; do sleep 0.1; done
    - printf '\\033[32mbuild ok\\033[0m\\n'
lint:
  stage: test
  needs: []
  script: echo lint ok
unit:
  stage: test
  needs: [build]
  script:
    - echo unit ok
    - printf '<testsuite name="unit" tests="3"><testcase name="a"/><testcase name="b"/>' > report.xml
    - printf '<testcase name="c"><skipped/></testcase></testsuite>' >> report.xml
  artifacts:
    paths: [report.xml]
    reports:
      junit: report.xml
integration:
  stage: test
  needs: [build]
  script: echo integration ok
deploy:
  stage: deploy
  when: manual
  script: echo deploying
"""

FLAKY = """
stages: [build, test]
compile:
  stage: build
  script: echo compiled
tests:
  stage: test
  script:
    - echo "collected 3 items"
    - |
      if [ ! -e MARKER ]; then
        touch MARKER
        printf '\\033[1;31mERROR: test_login failed: expected 200, got 500\\033[0m\\n'
        exit 1
      fi
    - printf '\\033[32m3 passed\\033[0m\\n'
"""

HOSTILE_SCRIPT = "<script>alert(1)</script>"
HOSTILE_IMG = '"><img src=x onerror=alert(2)>'
HOSTILE = f"""
"{HOSTILE_SCRIPT}":
  script:
    - printf '\\033]8;;http://evil.example/\\033\\\\click me\\033]8;;\\033\\\\ plain\\n'
    - printf 'abc\\033[2J\\033[1;1Hdef\\033[5Aghi\\n'
'{HOSTILE_IMG}':
  script: echo fine
"""


def shot(page, screenshots, name: str) -> None:
    page.screenshot(path=str(screenshots / f"{name}.png"), full_page=False)


def job_card(page, name: str):
    return page.locator(f".job[data-job={json.dumps(name)}]")


def test_a_run_goes_from_running_to_success_live_and_a_manual_job_plays(page, farm, screenshots, tmp_path):
    gate = tmp_path / "gate"
    repo = farm.repo("webshop", LIVE.replace("GATE", str(gate)), "Checkout: retry the payment once")
    run_id = farm.trigger(repo, "Checkout: retry the payment once")
    page.goto(f"/runs/{run_id}")
    page.evaluate("window.__sameDocument = true")
    page.locator(".job[data-job=build].st-running").wait_for()
    page.locator(".runhead .badge.st-running").wait_for()
    assert page.locator("svg.edges path[data-from=build][data-to=unit]").count() == 1  # needs edges drawn
    gate.touch()
    page.locator(".runhead .badge.st-success").wait_for()
    assert page.evaluate("window.__sameDocument") is True  # followed live: no reload happened
    for name in ("build", "lint", "unit", "integration"):
        assert "st-success" in job_card(page, name).get_attribute("class"), name
    assert "st-manual" in job_card(page, "deploy").get_attribute("class")
    assert page.locator(".job[data-job=build] .jobmeta.muted").inner_text().startswith("⚙ local-")
    assert job_card(page, "unit").locator(".tests").inner_text() == "tests: 2/3 passed, 1 skipped"
    shot(page, screenshots, "run")

    job_card(page, "deploy").locator("button.play").click()
    page.locator(".job[data-job=deploy].st-success").wait_for()
    assert farm.api(f"/runs/{run_id}")["jobs"][-1]["status"] == "success"

    # the build's log: the collapsed section folds, line anchors, the colour of the last line
    page.click(".job[data-job=build] a.jobname")
    page.locator("#log[data-ended=success]").wait_for()
    page.locator(".ln .tx .fg2", has_text="build ok").wait_for()
    section = page.locator(".sec[data-section=deps]")
    assert "closed" in section.get_attribute("class") and not section.locator(".sec-body").is_visible()
    section.locator(".sec-head").click()
    assert section.locator(".sec-body", has_text="pip install").is_visible()
    assert not page.locator("#L1 .ts").is_visible()
    page.check("#show-ts")  # timestamps on (they are in each line's title too)
    assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3}", page.locator("#L1 .ts").inner_text())
    page.goto(page.url + "#L2")
    assert page.locator("#L2 a.n").get_attribute("href") == "#L2"

    # the unit job's artifacts: listed with links that download them
    page.goto(f"/runs/{run_id}")
    job_card(page, "unit").locator("a.jobname").click()
    page.locator("#artifacts summary").click()
    link = page.locator("#artifact-files a", has_text="report.xml")
    link.wait_for()
    with page.expect_download() as download:
        link.click()
    assert "<testsuite" in Path(download.value.path()).read_text()


def test_a_failing_log_is_coloured_and_retry_shows_attempt_2(page, farm, screenshots, tmp_path):
    repo = farm.repo("payments", FLAKY.replace("MARKER", str(tmp_path / "failed-once")), "Make the login test strict")
    run_id = farm.trigger(repo, "Make the login test strict")
    page.goto(f"/runs/{run_id}")
    page.locator(".runhead .badge.st-failed").wait_for()
    card = job_card(page, "tests")
    assert "script failure" in card.locator(".reason").inner_text()

    card.locator("a.jobname").click()
    page.wait_for_url(re.compile(r"/runs/\w+/jobs/tests$"))
    error = page.locator(".ln .tx span.fg1.b", has_text="ERROR: test_login failed")
    error.wait_for()
    assert error.evaluate("e => getComputedStyle(e).color") == "rgb(255, 107, 107)"  # red, bold
    page.locator("#log[data-ended=failed]").wait_for()
    shot(page, screenshots, "log")

    page.click("#back-to-run")
    page.click("#retry")  # confirm() is accepted by the fixture
    card.locator(".attempt", has_text="attempt 2").wait_for()
    page.locator(".runhead .badge.st-success").wait_for()
    card.locator("a.jobname").click()
    assert page.locator(".attempts a.here").inner_text() == "2"
    page.locator(".ln .tx .fg2", has_text="3 passed").wait_for()
    page.click(".attempts a:text-is('1')")
    page.locator(".ln .tx", has_text="ERROR: test_login failed").wait_for()
    assert page.locator(".ln .tx", has_text="3 passed").count() == 0


def test_hostile_names_and_escape_sequences_render_as_text(page, farm, screenshots):
    repo = farm.repo("hostile", HOSTILE, f'Merge "{HOSTILE_IMG}" {HOSTILE_SCRIPT}')
    run_id = farm.trigger(repo, f'Merge "{HOSTILE_IMG}" {HOSTILE_SCRIPT}')
    page.goto(f"/runs/{run_id}")
    page.locator(".runhead .badge.st-success").wait_for()
    names = page.locator(".job a.jobname").all_inner_texts()
    assert sorted(names) == sorted([HOSTILE_SCRIPT, HOSTILE_IMG])
    assert HOSTILE_SCRIPT in page.locator(".runhead h1").inner_text()
    assert page.locator("main img").count() == 0 and page.locator("main script").count() == 0
    job_card(page, HOSTILE_SCRIPT).locator("a.jobname").click()
    page.locator("#log[data-ended=success]").wait_for()
    texts = page.locator(".ln .tx").all_inner_texts()
    assert "click me plain" in texts and "abcdefghi" in texts, texts  # OSC-8 and cursor movement dropped
    assert page.locator(".log a:not(.n)").count() == 0  # no link came out of the log
    assert page.locator("h1 .jobname").inner_text() == HOSTILE_SCRIPT
    page.goto("/")
    assert page.locator(f"tr[data-run='{run_id}'] .title").inner_text() == f'Merge "{HOSTILE_IMG}" {HOSTILE_SCRIPT}'
    assert page.locator("main img").count() == 0


def test_the_runs_page_filters_and_shows_new_runs_live(page, farm, screenshots, browser):
    repo = farm.repo("docs-site", "build:\n  script: echo built\n", "Fix the broken links in the guide")
    page.goto("/")
    page.evaluate("window.__sameDocument = true")
    run_id = farm.trigger(repo, "Fix the broken links in the guide")
    row = page.locator(f"tr[data-run='{run_id}']")
    row.wait_for()
    page.locator(f"tr[data-run='{run_id}'] .badge.st-success").wait_for()
    assert page.evaluate("window.__sameDocument") is True
    assert "Fix the broken links in the guide" in row.inner_text() and "team/docs-site" in row.inner_text()
    page.fill("input[name=repo]", "team/docs-site")
    page.click(".filters button[type=submit]")
    page.wait_for_url(re.compile(r"repo=team%2Fdocs-site"))
    repos = page.locator("tbody#runs-rows tr td:nth-child(3)").all_inner_texts()
    assert repos and set(repos) == {"team/docs-site"}

    fresh = browser.new_context(viewport={"width": 1400, "height": 860}, base_url=farm.url)
    try:
        login = fresh.new_page()
        login.goto("/")
        login.wait_for_url(re.compile(r"/login\?next="))
        shot(login, screenshots, "login")
        login.fill("#token", "not-a-token")
        login.click("button[type=submit]")
        assert "not valid" in login.locator("#login-error").inner_text()
    finally:
        fresh.close()


def test_the_farm_page_shows_both_workers_and_what_they_run_and_a_run_is_canceled(page, farm, screenshots,
                                                                                   tmp_path):
    gate = tmp_path / "gate"
    repo = farm.repo("firmware", f"flash:\n  script: until [ -e {gate} ]; do sleep 0.1; done\n", "Flash the board")
    run_id = farm.trigger(repo, "Flash the board")
    broken = farm.repo("style", "lint:\n  script: exit 1\n", "Reformat everything")
    failed = farm.trigger(broken, "Reformat everything")
    page.goto("/")  # the runs page with one of each: running, failed, and the earlier ones
    page.locator(f"tr[data-run='{failed}'] .badge.st-failed").wait_for()
    page.locator(f"tr[data-run='{run_id}'] .badge.st-running").wait_for()
    shot(page, screenshots, "runs")
    page.goto("/workers")
    rows = page.locator("tr[data-worker]")
    rows.first.wait_for()
    names = sorted(rows.evaluate_all("rows => rows.map(r => r.dataset.worker)"))
    assert [name.split("@")[0] for name in names] == ["local-1", "local-2"]
    assert page.locator("tr[data-worker] .badge", has_text="online").count() == 2
    running = page.locator(f"tr[data-worker] a[href='/runs/{run_id}/jobs/flash']")
    running.wait_for()  # the running job shows up live, linked to its log
    # the queue table (GET /api/v1/queues): the job queue both workers serve, with the gated job running
    # (the table reloads every 3 s: wait for the row rather than read the first rendering)
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function("""() => [...document.querySelectorAll('#queues-table tr[data-queue]')]
            .some(r => r.cells[5].textContent === '1' && r.cells[6].textContent === '2')""", timeout=30_000)
    except PlaywrightTimeout:
        cells = page.locator("#queues-table tr[data-queue]").evaluate_all(
            "rows => rows.map(r => [...r.cells].map(c => c.textContent))")
        pytest.fail(f"no queue row shows the gated job running on both workers: {cells}")
    shot(page, screenshots, "workers")
    # cancel it from its page (the button asks first; the fixture accepts), and the farm frees up
    page.goto(f"/runs/{run_id}")
    assert page.locator("#cancel").get_attribute("data-confirm").startswith("Cancel this run?")
    page.click("#cancel")
    page.locator(".runhead .badge.st-canceled").wait_for()
    assert page.locator("#cancel").count() == 0 and not gate.exists()
    page.goto("/workers")
    page.locator("tr[data-worker]").first.wait_for()
    running.wait_for(state="detached")


ANSI_CASES = [
    ("\x1b[31mred\x1b[0m plain", [["red", ["fg1"]], [" plain", []]]),
    ("\x1b[1;92mbright\x1b[22m thin", [["bright", ["b", "fg10"]], [" thin", ["fg10"]]]),
    ("\x1b[4munder\x1b[24m\x1b[3mit\x1b[23m", [["under", ["u"]], ["it", ["i"]]]),
    ("\x1b[44;97mbox\x1b[49;39m", [["box", ["fg15", "bg4"]]]),
    ("a\x1b[2Kb\x1b[1Ac\x1b[?25ld", [["abcd", []]]),
    ("progress 10%\rprogress 100%", [["progress 100%", []]]),
    ("\x1b]8;;http://evil.example/\x07link\x1b]8;;\x07 \x1b]0;title\x1b\\", [["link ", []]]),
    ("bell\x07\x1b(Bback\x08", [["bellback", []]]),
]


def test_the_ansi_renderer_keeps_sgr_and_drops_every_other_sequence(page):
    page.goto("/workers")  # any page: load the renderer into it
    page.add_script_tag(url="/ui/static/ansi.js")
    for text, expected in ANSI_CASES:
        got = page.evaluate("t => CiqAnsi.parse(t).map(p => [p.text, CiqAnsi.classes(p.state)])", text)
        merged = []
        for part, classes in got:  # adjacent parts of one style are one run of text
            if merged and merged[-1][1] == classes:
                merged[-1][0] += part
            else:
                merged.append([part, classes])
        assert merged == expected, text
    colours = page.evaluate("""() => [CiqAnsi.parse('\\x1b[38;5;196mx')[0].state.fg,
                                      CiqAnsi.parse('\\x1b[48;2;1;2;3mx')[0].state.bg,
                                      CiqAnsi.parse('\\x1b[38;5;244mx')[0].state.fg]""")
    assert colours == ["rgb(255,0,0)", "rgb(1,2,3)", "rgb(128,128,128)"]
    carried = page.evaluate("() => { const s = CiqAnsi.newState(); CiqAnsi.parse('\\x1b[33mA', s); "
                            "return CiqAnsi.classes(CiqAnsi.parse('B', s)[0].state); }")
    assert carried == ["fg3"]  # a colour goes on to the next line, as in a terminal
    html = page.evaluate("""() => { const d = document.createElement('div');
                                    d.append(CiqAnsi.render('\\x1b[31m<img src=x onerror=alert(3)>'));
                                    return d.innerHTML; }""")
    assert html == '<span class="fg1">&lt;img src=x onerror=alert(3)&gt;</span>'
