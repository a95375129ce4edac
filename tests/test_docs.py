"""The docs cannot rot: links and anchors resolve, and what they list matches the code.

README.md and docs/*.md are parsed as CommonMark (with GitHub's tables) by markdown-it-py; anchors follow
GitHub's slug rules. The settings tables, the alert table, the rotation steps and the 80-column sample
are each checked against what the code does today.
"""

from __future__ import annotations

import re
from collections import Counter
from datetime import UTC, datetime
from io import StringIO
from itertools import pairwise
from pathlib import Path

import pytest
import yaml
from markdown_it import MarkdownIt
from markdown_it.token import Token
from pydantic import SecretStr
from rich.console import Console
from rich.table import Table

from service.ops.cli.event_views import print_events
from service.ops.cli.status import tables
from service.settings import OperatorSettings, Settings
from service.store.stats import Snapshot
from service.store.summary import EventState, EventSummary
from tests.compose.run import readme_handler_command
from tests.processes import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKDOWN = MarkdownIt("commonmark").enable("table")
ROW = re.compile(r"^\| `(OA_[A-Z_]+|REDIS_URL)` \| `?([^`|]*)`? \|", re.MULTILINE)


def _tokens(path: Path) -> list[Token]:
    return MARKDOWN.parse(path.read_text(encoding="utf-8"))


def _inline(tokens: list[Token]) -> list[Token]:
    return [child for token in tokens if token.type == "inline" for child in token.children or []]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation but `-` and `_` dropped, each space a `-`."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every `#anchor` GitHub gives the headings of `path` (a repeated one gets `-1`, `-2`, ...)."""
    tokens = _tokens(path)
    seen: Counter[str] = Counter()
    found = set()
    for opening, inline in pairwise(tokens):
        if opening.type != "heading_open":
            continue
        text = "".join(c.content for c in inline.children or [] if c.type in {"text", "code_inline"})
        base = slug(text)
        found.add(base if not seen[base] else f"{base}-{seen[base]}")
        seen[base] += 1
    return found


def links(path: Path) -> list[str]:
    """The targets of every link and image in `path`, code blocks and code spans excluded."""
    children = _inline(_tokens(path))
    return [
        str(c.attrs.get("href") or c.attrs.get("src")) for c in children if c.type in {"link_open", "image"}
    ]


def broken_links(path: Path) -> list[str]:
    """The relative links of `path` whose file does not exist, or whose `#anchor` is not a heading there."""
    broken = []
    for target in links(path):
        if re.match(r"[a-z]+:", target):  # https:, mailto: (not followed: no network in tests)
            continue
        file_part, _, fragment = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        if not resolved.exists():
            broken.append(f"{target} (no such file)")
        elif fragment and (resolved.suffix != ".md" or fragment not in anchors(resolved)):
            broken.append(f"{target} (no such heading)")
    return broken


def test_every_relative_link_and_anchor_in_the_docs_resolves() -> None:
    """Each relative link in README.md and docs/*.md names a file that exists, and a heading there if any."""
    assert len(PAGES) >= 8
    found = {str(path.relative_to(ROOT)): links(path) for path in PAGES}
    assert sum(map(len, found.values())) > 50, "the links were not found: the parser is broken"
    assert sum("#" in t for targets in found.values() for t in targets) > 20, "no anchors were found"
    broken = {page: bad for page in PAGES if (bad := broken_links(page))}
    assert not broken, broken


def test_the_link_check_finds_a_missing_file_and_a_missing_heading(tmp_path: Path) -> None:
    """The checker is not blind: a link to a missing file, and one to a missing heading, are reported."""
    (tmp_path / "other.md").write_text("# Other\n\n## Twice\n\n## Twice\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page: `one`\n\n[a](other.md#twice-1) [b](other.md#nope) [c](gone.md) [d](#page-one) [e](#x)\n"
        "`[not a link](gone.md)`\n\n```\n[nor this](gone.md)\n```\n",
        encoding="utf-8",
    )
    assert broken_links(page) == [
        "other.md#nope (no such heading)",
        "gone.md (no such file)",
        "#x (no such heading)",
    ]


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("Dead letters: `dlq`", "dead-letters-dlq"),
        ("The HTTP server: limits and deadlines", "the-http-server-limits-and-deadlines"),
        ("A handler added later: backfill", "a-handler-added-later-backfill"),
        ("OA_WEBHOOK_SECRET & co.", "oa_webhook_secret--co"),
    ],
)
def test_anchors_follow_githubs_slug_rules(heading: str, anchor: str) -> None:
    """Lowercase, punctuation dropped but `-` and `_`, every space a hyphen (two in a row stay two)."""
    assert slug(heading) == anchor


def _env_name(field: str) -> str:
    return "REDIS_URL" if field == "redis_url" else f"OA_{field.upper()}"


def _settings_rows() -> list[tuple[str, str]]:
    text = (ROOT / "docs" / "settings.md").read_text(encoding="utf-8")
    return [(m.group(1), m.group(2).strip()) for m in ROW.finditer(text)]


def test_every_setting_is_in_the_settings_page_once_with_its_default() -> None:
    """Each field of Settings (and OperatorSettings) has one row named as its variable, with its default."""
    rows = _settings_rows()
    assert len(rows) >= 30, "the rows were not found: the pattern is broken"
    counts = Counter(name for name, _ in rows)
    assert [name for name, n in counts.items() if n > 1] == []
    table = dict(rows)
    fields = Settings.model_fields | OperatorSettings.model_fields
    for field, info in fields.items():
        name = _env_name(field)
        assert name in table, f"{name} is missing from docs/settings.md"
        default = info.default
        if isinstance(default, SecretStr):
            default = default.get_secret_value()
        if field == "webhook_secret":
            assert table[name] == "(required)"
        elif default is None:
            assert table[name] == "(unset)", name
        elif isinstance(default, bool | str):
            assert table[name].lower() == str(default).lower(), name
        else:
            assert float(table[name]) == float(default), name


def test_the_settings_page_lists_no_setting_that_does_not_exist() -> None:
    """No row names a variable that the code does not read."""
    known = {_env_name(field) for field in Settings.model_fields | OperatorSettings.model_fields}
    assert {name for name, _ in _settings_rows()} <= known


def test_the_alert_table_has_a_row_for_each_rule_and_no_other() -> None:
    """docs/operations.md's alert table names exactly the alerts of deploy/monitoring/alerts.yml."""
    rules = yaml.safe_load((ROOT / "deploy" / "monitoring" / "alerts.yml").read_text(encoding="utf-8"))
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    assert "OAWebhooksEventsHeld" in alerts
    page = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    section = page[page.index("## Alerts") : page.index("## Health checks")]
    rows = re.findall(r"^\| `(OAWebhooks\w+)` \|", section, re.MULTILINE)
    assert sorted(rows) == sorted(alerts)


def test_the_readme_is_short_and_gives_the_two_commands() -> None:
    """README.md has at most 200 lines, and its first shell block is `make run` and `make test`."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 200
    first = next(t for t in _tokens(ROOT / "README.md") if t.type == "fence" and t.info == "sh")
    assert [line.split()[:2] for line in first.content.splitlines()] == [["make", "run"], ["make", "test"]]


def test_compose_test_finds_the_readmes_rebuild_command() -> None:
    """`make compose-test` reads the rebuild command from README's "Add a handler"; it is still there."""
    assert readme_handler_command() == ["docker", "compose", "up", "-d", "--build", "--wait"]


def test_docs_pages_named_in_code_and_config_exist() -> None:
    """A comment, message or config that points to docs/<page>.md points to a page that exists."""
    sources = [
        *(
            p
            for top in ("service", "workers", "tests", "deploy", "benchmarks")
            for p in (ROOT / top).rglob("*")
        ),
        ROOT / "docker-compose.yml",
        ROOT / "Makefile",
        ROOT / "pyproject.toml",
        ROOT / ".env.example",
    ]
    texts = [
        p.read_text(encoding="utf-8")
        for p in sources
        if p.suffix in {".py", ".yml", ".toml", ""} and p.is_file()
    ]
    named = {m for text in texts for m in re.findall(r"docs/[\w-]+\.md", text)}
    assert named, "no docs page is named anywhere: the pattern is broken"
    assert sorted(n for n in named if not (ROOT / n).is_file()) == []


PATH_IN_COMMENT = re.compile(r"\b((?:[\w.-]+/)+[\w.-]+\.(?:md|py|yml|yaml|toml|lua|json))\b")


def test_paths_named_in_pyproject_comments_exist() -> None:
    """Every file a comment in pyproject.toml points to is in the repository."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    comments = [line.partition("#")[2] for line in text.splitlines() if "#" in line]
    named = {m.group(1) for comment in comments for m in PATH_IN_COMMENT.finditer(comment)}
    assert named, "no path found: the pattern is broken"
    missing = sorted(path for path in named if not (ROOT / path).exists())
    assert not missing, f"pyproject.toml names files that do not exist: {missing}"


def _section(page: str, heading: str) -> str:
    text = (ROOT / "docs" / page).read_text(encoding="utf-8")
    start = text.index(f"\n{heading}\n")
    end = text.find("\n#", start + len(heading) + 2)
    return text[start : end if end != -1 else len(text)]


def test_rotation_steps_name_secrets_as_status_prints_them() -> None:
    """The rotation steps watch the labels that `oa-webhooks status` prints for the two secrets."""
    snapshot = Snapshot(
        now_s=0,
        ready=0,
        scheduled=0,
        in_progress=0,
        dead=0,
        oldest_ready_age_s=0,
        counters={"secret:0": 3, "secret:1": 5},
        recent={},
        workers=[],
        last_received_s=None,
    )
    secrets_table = tables(snapshot, Console(width=80)).renderables[-1]
    assert isinstance(secrets_table, Table)
    labels = list(secrets_table.columns[0].cells)
    assert len(labels) == 2
    section = _section("security.md", "## Rotating the secret without downtime")
    watch_step = next(line for line in section.splitlines() if line.startswith("3. "))
    for label in labels:
        assert f"`{label}`" in watch_step, f"step 3 does not watch {label}, as status prints it"


def test_the_80_column_events_list_in_the_guide_is_what_the_command_prints() -> None:
    """docs/operations.md's captured `events list` is, line for line, what 80 columns get for its rows."""
    section = _section("operations.md", "### List")
    sample = section[section.index("$ oa-webhooks events list\n") :].split("```")[0].splitlines()[1:]
    rows = [line.split() for line in sample[2:] if line.startswith("evt_")]
    assert len(rows) >= 5
    events = [
        EventSummary(
            id=event_id,
            type=event_type,
            state=EventState(state),
            received_ms=int(
                datetime.fromisoformat(f"{day}T{clock}+00:00").astimezone(UTC).timestamp() * 1000
            ),
            seq=0,
            lead_id=lead,
            invoice_id="987" if event_type not in {"lead.created", "lead.sold"} else None,
            attempts=1,
            handlers={"workers.handlers.leads.log_lead_event": state},
            replays=0,
        )
        for event_id, event_type, state, day, clock, lead in rows
    ]
    out = StringIO()
    console = Console(file=out, width=80, force_terminal=True, color_system=None)
    print_events(console, events)
    printed = [line.rstrip() for line in out.getvalue().splitlines()]
    assert sample[: len(printed)] == printed
    assert all(len(line) <= 80 for line in sample)
