"""Every ```python block of README.md and docs/*.md runs, so an example that stops working fails CI.

Blocks are found generically (fenced with ``` or ~~~, language python/py/python3, indented
inside list items too), so sections added later are tested without touching this file. Each
block is one test, named after its section and first line. The blocks of one `##` section
(its `###` subsections included) run in order in one shared namespace and one temporary
working directory, as a reader runs them in one session: a later block may use what an
earlier one defined. Running one block alone runs the earlier blocks of its section first.

A block that mentions MNIST (other than in the package name) gets $TINYGRAD_MNIST_DATA set
to the test copy (the `mnist_dir` fixture); any other block gets it too when that copy is at
hand without a download, so `train(...)` without a data dir also reads it. Matplotlib draws
with Agg. A missing `dot` binary or TensorFlow skips the block locally and fails it in CI, as
everywhere else in the suite. A failing block also fails the later blocks of its section,
which build on it (their message names the block that failed).
"""
from __future__ import annotations

import os
import re
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import DEFAULT_MNIST, ROOT, require

README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\n]*)$")
PYTHON = {"python", "py", "python3"}


@dataclass
class Block:
    doc: str          # the Markdown file, relative to the checkout ("README.md", "docs/engine.md")
    section: str      # the `##` heading it sits under ("" before the first one)
    index: int        # its position among the python blocks of that section
    line: int         # 1-based README line of its first code line
    code: str         # dedented source, exactly as a reader would paste it

    @property
    def test_id(self) -> str:
        first = next((s.strip() for s in self.code.splitlines() if s.strip()), "")
        where = "" if self.doc == "README.md" else _slug(Path(self.doc).stem) + "-"
        return f"{where}{_slug(self.section) or 'top'}-{self.index + 1}-{_slug(first)[:40]}"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def python_blocks(markdown: str, doc: str = "README.md") -> list[Block]:
    """The python code blocks of a Markdown text, in order, with the `##` section of each."""
    blocks: list[Block] = []
    section, per_section = "", {}
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            if lines[i].startswith("## "):
                section = lines[i][3:].strip()
            i += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        words = opening["info"].split()
        body, j = [], i + 1
        while j < len(lines) and not re.match(rf"^[ \t]*{fence[0]}{{{len(fence)},}}[ \t]*$", lines[j]):
            body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j].lstrip())
            j += 1
        if words and words[0].lower() in PYTHON:
            index = per_section.get(section, 0)
            per_section[section] = index + 1
            blocks.append(Block(doc, section, index, i + 2, "\n".join(body) + "\n"))
        i = j + 1
    return blocks


def needs_mnist(code: str) -> bool:
    return "mnist" in code.lower().replace("tinygrad_mnist", "").replace("tinygrad-mnist", "")


def run_block(block: Block, namespace: dict[str, Any], filename: str) -> None:
    """Execute one block; README line numbers in tracebacks point at the README itself."""
    from tinygrad_mnist.graph import GraphvizNotFound
    source = "\n" * (block.line - 1) + block.code
    try:
        exec(compile(source, filename, "exec"), namespace)
    except GraphvizNotFound:
        require(False, "the graphviz `dot` binary (apt-get install graphviz)")
    except ModuleNotFoundError as e:
        if e.name != "tensorflow":
            raise
        require(False, "TensorFlow (pip install tensorflow-cpu)")
    finally:
        import matplotlib.pyplot as plt
        plt.close("all")


@dataclass
class Session:
    """What a reader of one section has done so far: the shared namespace, the cwd, the
    blocks run (and whether one of them failed)."""
    cwd: Path
    namespace: dict[str, Any] = field(default_factory=lambda: {"__name__": "__readme__"})
    done: int = 0
    failed: str | None = None


BLOCKS = [block for path in DOCS for block in
          python_blocks(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))]


@pytest.fixture(scope="module")
def sessions() -> dict[str, Session]:
    return {}


def test_readme_has_python_blocks():
    in_readme = [b for b in BLOCKS if b.doc == "README.md"]
    assert len(in_readme) >= 2, f"found only {len(in_readme)} python blocks in README.md"
    assert any(b.doc == "docs/engine.md" for b in BLOCKS)  # the reference's examples run too


@pytest.mark.parametrize("block", BLOCKS, ids=[b.test_id for b in BLOCKS])
def test_readme_block_runs(block: Block, sessions: dict[str, Session], tmp_path_factory,
                           request, monkeypatch):
    session = sessions.setdefault(f"{block.doc}#{block.section}",
                                  Session(tmp_path_factory.mktemp("readme")))
    monkeypatch.chdir(session.cwd)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    section_blocks = [b for b in BLOCKS if (b.doc, b.section) == (block.doc, block.section)]
    if any(needs_mnist(b.code) for b in section_blocks[:block.index + 1]):
        monkeypatch.setenv("TINYGRAD_MNIST_DATA", str(request.getfixturevalue("mnist_dir")))
    elif "TINYGRAD_MNIST_DATA" not in os.environ and (DEFAULT_MNIST / "train-images-idx3-ubyte.gz").exists():
        monkeypatch.setenv("TINYGRAD_MNIST_DATA", str(DEFAULT_MNIST))  # e.g. train() without a data dir
    run_in_section(block, section_blocks, session, str(ROOT / block.doc))


def run_in_section(block: Block, section_blocks: list[Block], session: Session, filename: str) -> None:
    """Run `block` in its section's session, after the earlier blocks not run yet (when it is
    run alone, e.g. with -k); fail if one of those failed, or if it raises itself."""
    for earlier in section_blocks[session.done:block.index]:
        if session.failed is None:
            try:
                run_block(earlier, session.namespace, filename)
            except Exception as e:
                session.failed = f"line {earlier.line}: {type(e).__name__}: {e}"
        session.done = earlier.index + 1
    if session.failed is not None:
        pytest.fail(f"an earlier block of section {block.section!r} failed ({session.failed}), "
                    "and this one builds on it", pytrace=False)
    session.done = block.index + 1
    try:
        run_block(block, session.namespace, filename)
    except Exception as e:
        session.failed = f"line {block.line}: {type(e).__name__}: {e}"
        error = e
    else:
        return
    pytest.fail(f"block of section {block.section!r} at line {block.line} of {Path(filename).name} "
                "raised:\n" + readme_traceback(error, filename), pytrace=False)


def readme_traceback(e: BaseException, filename: str) -> str:
    """The traceback from the README line down: what a reader needs, not pytest's page of it."""
    tb = e.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != filename:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(e), e, tb))


# The extraction and the runner themselves, on a small Markdown text.

SAMPLE = """\
# title
```python
a = 1
```
## First
text
```bash
echo not python
```
- a list item:

  ```py
  b = a_missing_name
  ```
### a subsection
~~~python3
c = 3
~~~
## Second
````python
d = "```"
````
"""


def test_blocks_are_found_with_their_section_line_and_dedented_code():
    blocks = python_blocks(SAMPLE)
    assert {b.doc for b in blocks} == {"README.md"}
    assert [(b.section, b.index, b.line, b.code) for b in blocks] == [
        ("", 0, 3, "a = 1\n"),
        ("First", 0, 13, "b = a_missing_name\n"),
        ("First", 1, 17, "c = 3\n"),
        ("Second", 0, 21, 'd = "```"\n'),
    ]
    assert [b.test_id for b in blocks] == ["top-1-a-1", "first-1-b-a-missing-name", "first-2-c-3",
                                           "second-1-d"]


def test_a_raising_block_fails_and_points_at_its_readme_line(tmp_path):
    block = python_blocks(SAMPLE)[1]
    with pytest.raises(NameError, match="a_missing_name") as info:
        run_block(block, {}, str(tmp_path / "SAMPLE.md"))
    assert info.traceback[-1].lineno + 1 == 13  # pytest counts lines from 0


def test_blocks_of_a_section_share_one_namespace():
    first, second = python_blocks("## S\n```python\nx = 2\n```\n```python\nassert x * 3 == 6\n```\n")
    namespace: dict[str, Any] = {}
    run_block(first, namespace, "S.md")
    run_block(second, namespace, "S.md")
    with pytest.raises(NameError):
        run_block(second, {}, "S.md")


def test_only_real_mnist_use_asks_for_the_data():
    assert needs_mnist("from tinygrad_mnist.data import load_mnist")
    assert not needs_mnist("from tinygrad_mnist import Tensor  # tinygrad-mnist")


def test_a_failing_block_fails_itself_and_the_blocks_after_it(tmp_path):
    md = "## S\n```python\nx = 1\n```\n```python\ny = x / 0\n```\n```python\nz = y\n```\n"
    first, broken, after = python_blocks(md)
    session = Session(tmp_path)
    run_in_section(first, [first, broken, after], session, "S.md")
    assert session.namespace["x"] == 1
    with pytest.raises(pytest.fail.Exception, match=r"(?s)line 6 of S.md raised.*ZeroDivisionError"):
        run_in_section(broken, [first, broken, after], session, "S.md")
    with pytest.raises(pytest.fail.Exception, match="an earlier block .* failed .line 6: ZeroDivision"):
        run_in_section(after, [first, broken, after], session, "S.md")


def test_a_block_run_alone_runs_the_earlier_blocks_of_its_section_first(tmp_path):
    first, second = python_blocks("## S\n```python\nx = 2\n```\n```python\ny = x * 3\n```\n")
    session = Session(tmp_path)
    run_in_section(second, [first, second], session, "S.md")
    assert session.namespace["y"] == 6 and session.done == 2
