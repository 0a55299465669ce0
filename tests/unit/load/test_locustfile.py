"""load/locustfile.py: the mixed scenario for Locust keeps the runner's mix.

Locust is an optional extra (`pip install -e ".[locust]"`), not installed in CI, and importing
it monkey-patches the standard library with gevent: so the file is always checked at the AST
level here, and, where Locust is installed, also imported in a subprocess of its own.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
from collections import Counter

from load.machine import REPO_ROOT
from load.scenarios import MIXED_PATTERN

LOCUSTFILE = REPO_ROOT / "load" / "locustfile.py"
RUNNER_MIX = {
    "availability": MIXED_PATTERN.count("availability"),
    "listing": MIXED_PATTERN.count("listing"),
    "profile": MIXED_PATTERN.count("profile"),
    "booking": MIXED_PATTERN.count("booking"),
    "cancel": MIXED_PATTERN.count("cancel"),
}


def _task_weights(tree: ast.Module) -> dict[str, int]:
    weights = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef):
            continue
        for decorator in node.decorator_list:
            if (
                isinstance(decorator, ast.Call)
                and isinstance(decorator.func, ast.Name)
                and decorator.func.id == "task"
            ):
                (weight,) = decorator.args
                assert isinstance(weight, ast.Constant)
                assert isinstance(weight.value, int)
                weights[node.name] = weight.value
    return weights


def test_the_locustfile_has_the_runners_mix_and_imports_where_locust_is() -> None:
    tree = ast.parse(LOCUSTFILE.read_text(), filename=str(LOCUSTFILE))
    assert _task_weights(tree) == RUNNER_MIX
    reads = sum(RUNNER_MIX[k] for k in ("availability", "listing", "profile"))
    assert (reads, RUNNER_MIX["booking"], RUNNER_MIX["cancel"]) == (16, 3, 1)  # 80/15/5 %
    source = LOCUSTFILE.read_text()
    assert '"127.0.0.1"' in source  # it refuses any other host
    if importlib.util.find_spec("locust") is not None:
        _check_import()


def _check_import() -> None:
    """Where Locust is installed: the file imports, and Locust sees the same task weights."""
    probe = (
        "import json, load.locustfile as m; "
        "print(json.dumps(dict(__import__('collections').Counter("
        "t.__name__ for t in m.MixedUser.tasks))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert Counter(json.loads(done.stdout.strip().splitlines()[-1])) == Counter(RUNNER_MIX)
