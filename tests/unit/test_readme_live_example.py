"""The README's "Make your own model live" example is the test app (tests/liveapp), line for line,
and stays under 40 lines of user code."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _section() -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Make your own model live")
    return readme[start:readme.index("\n## ", start + 1)]


def _blocks() -> dict[str, str]:
    """{"models.py": code, ...} from the section's code blocks, by their first-line comment."""
    blocks = {}
    for code in re.findall(r"```(?:python|html)\n(.*?)```", _section(), flags=re.S):
        first, _, rest = code.partition("\n")
        name = first.lstrip("#<!- ").split()[0].split("/")[-1]
        blocks[name] = rest
    return blocks


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_each_python_file_of_the_example_is_the_test_apps_file():
    blocks = _blocks()
    found = {name: _lines(blocks[name]) for name in ("models.py", "live.py", "admin.py")}
    expected = {name: _lines((ROOT / "tests" / "liveapp" / name).read_text()) for name in found}
    assert found == expected


def test_the_example_page_is_the_test_apps_page_for_order_12():
    from tests.liveapp.views import PAGE

    page = _lines(_blocks()["order.html"])
    served = [line for line in _lines(PAGE.format(pk=12)) if not line.startswith(("<!doctype", "<title"))]
    assert page == served


def test_the_whole_example_is_under_40_lines_of_user_code():
    total = sum(len(_lines(code)) for code in _blocks().values())
    assert total < 40
