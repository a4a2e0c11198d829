"""The rooms keep their doors: no module reaches into another's private helpers, and each
"where is X?" of the code ends at one definition."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIRST_PARTY = ("cmkd_cli", "data_prep")


def _modules() -> dict[str, ast.Module]:
    out = {}
    for package in FIRST_PARTY:
        for path in sorted((REPO / package).rglob("*.py")):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = ast.parse(path.read_text(), str(path))
    return out


MODULES = _modules()


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_no_module_imports_a_private_helper_of_another():
    bad = []
    for module, tree in MODULES.items():
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or node.level or not node.module:
                continue
            if not node.module.startswith(FIRST_PARTY) or node.module == module:
                continue
            parts = node.module.split(".")
            owner = ".".join(parts[: next((i for i, p in enumerate(parts) if _private(p)), 99)])
            if any(_private(p) for p in parts) and not (module + ".").startswith(owner + "."):
                bad.append(f"{module} imports the private module {node.module}")
            bad += [
                f"{module} imports {node.module}.{a.name}" for a in node.names if _private(a.name)
            ]
    assert bad == []


def _definitions() -> dict[str, list[str]]:
    found = defaultdict(list)
    for module, tree in MODULES.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.ClassDef):
                found[node.name].append(module)
    return found


@pytest.mark.parametrize(
    ("name", "home"),
    [
        # C2KD's selection maths (issue 15 item 1)
        ("select_samples", "cmkd_cli.losses.c2kd"),
        ("filtered_kl", "cmkd_cli.losses.c2kd"),
        ("filtered_dist", "cmkd_cli.losses.c2kd"),
        ("gradcos_score", "cmkd_cli.losses.c2kd"),
        ("group_mean", "cmkd_cli.losses.c2kd"),
        # the analyses of `cmkd analyze` and their plots (item 3)
        ("kept_series", "cmkd_cli.metrics.training"),
        ("cost_rows", "cmkd_cli.metrics.training"),
        ("krc_values", "cmkd_cli.metrics.similarity"),
        ("cka_matrix", "cmkd_cli.metrics.similarity"),
        ("extract", "cmkd_cli.metrics.features"),
        ("plot_kept", "cmkd_cli.metrics.plots"),
        ("plot_embeddings", "cmkd_cli.metrics.plots"),
        # plug-in discovery (item 5), run directories and names that were written twice (item 6)
        ("discover", "cmkd_cli.registry"),
        ("run_root", "cmkd_cli.runs"),
        ("run_dirs", "cmkd_cli.runs"),
        ("feature_source", "cmkd_cli.methods._feature_common"),
        ("minilm_path", "cmkd_cli.hf_local"),
        ("configure", "cmkd_cli.console"),
        # one way to load a student (item 4; the shipping issue's loader)
        ("read_student", "cmkd_cli.student.package"),
        ("build_student_model", "cmkd_cli.student.package"),
        ("student_package", "cmkd_cli.student.package"),
    ],
)
def test_where_is_it_ends_at_one_definition(name: str, home: str):
    assert _definitions()[name] == [home]


def test_the_old_student_loaders_are_gone():
    """evaluate.load_student and checkpoint.load_student_weights loaded a student their own
    way; `cmkd_cli.student.package` is the one loader now."""
    assert [n for n in ("load_student", "load_student_weights") if _definitions().get(n)] == []


def _sources(pattern: str) -> list[str]:
    rx = re.compile(pattern)
    return [
        f"{path.relative_to(REPO)}:{n}"
        for package in FIRST_PARTY
        for path in sorted((REPO / package).rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if rx.search(line)
    ]


def test_no_hidden_process_state_and_one_spelling_of_each_layout():
    assert _sources(r"environ\[.HF_HUB_OFFLINE|environ\[.TRANSFORMERS_OFFLINE") == []
    assert _sources(r"console\.OPTIONS|^OPTIONS =") == []
    assert _files(r"\.output\.root\b") == {"cmkd_cli/runs.py"}
    assert _files(r"seed-\{") == {"cmkd_cli/runs.py"}
    assert _sources(r'batch\["x"\]') == []  # a method reads batch[self.input_key]


def _files(pattern: str) -> set[str]:
    return {where.rsplit(":", 1)[0] for where in _sources(pattern)}


def test_each_registry_names_its_own_kind():
    kinds = _sources(r"= Registry\(")
    labels = [re.search(r'Registry\("(\w+)"', line).group(1) for line in _lines(kinds)]
    assert sorted(labels) == ["dataset", "method", "model", "reader", "task"]


def _lines(where: list[str]) -> list[str]:
    out = []
    for w in where:
        path, n = w.rsplit(":", 1)
        out.append((REPO / path).read_text().splitlines()[int(n) - 1])
    return out


def test_an_import_inside_a_function_says_why():
    """Imports go at the top unless a measured start-up cost or a cycle asks otherwise, which
    a comment on the line (or the line above) names. native.py's checks import what they
    check on purpose (its docstring says why)."""
    silent = []
    for module, tree in MODULES.items():
        if module == "cmkd_cli.native":
            continue
        path = REPO / (module.replace(".", "/") + ".py")
        if not path.is_file():
            path = REPO / module.replace(".", "/") / "__init__.py"
        lines = path.read_text().splitlines()
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    here = lines[node.lineno - 1] + lines[node.lineno - 2]
                    if "#" not in here:
                        silent.append(f"{module}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert silent == []
