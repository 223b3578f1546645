"""The README's example runs as written, and the type stubs hold (mypy --strict, stubtest)."""

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGE = os.path.dirname(HERE)
REPO = os.path.dirname(PACKAGE)
EXAMPLES = os.path.join(PACKAGE, "examples")


def run(*command):
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO)


def test_readme_shows_the_quickstart_example_verbatim():
    with open(os.path.join(EXAMPLES, "quickstart.py")) as file:
        example = file.read()
    with open(os.path.join(REPO, "README.md")) as file:
        readme = file.read()
    assert "```python\n" + example + "```" in readme


def test_quickstart_example_runs_and_prints_the_records():
    result = run(sys.executable, os.path.join(EXAMPLES, "quickstart.py"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"0 {i} b'user-1' b'hello {i}' [('lang', b'en')]" for i in range(3)
    ]


def test_typed_example_runs():
    result = run(sys.executable, os.path.join(EXAMPLES, "typed_usage.py"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_mypy_strict_accepts_the_examples_and_the_package():
    result = run(sys.executable, "-m", "mypy", "--strict", "--no-incremental",
                 os.path.join(PACKAGE, "python", "spate"), EXAMPLES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_stubtest_finds_the_stubs_match_the_native_module():
    result = run(sys.executable, "-m", "mypy.stubtest", "spate")
    assert result.returncode == 0, result.stdout + result.stderr
