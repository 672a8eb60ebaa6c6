"""The shape docs/architecture.md describes: layers without cycles, imports at the top of modules, one home for
each record file name, a method that joins the tables, the suites and the demo from its own entry, table columns
declared by the record, and docs that name every hook the engine calls."""

import ast
import configparser
import os
import pkgutil

import pytest

import datafree
from conftest import REPO

PACKAGE = os.path.join(REPO, "datafree")


def _modules():
    for d, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                yield os.path.join(d, f)


def test_no_module_is_in_an_import_cycle():
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("datafree")
    cycles = [
        (a, b)
        for a in sorted(graph.modules)
        for b in graph.find_modules_directly_imported_by(a)
        if graph.chain_exists(importer=b, imported=a)
    ]
    assert cycles == []


def test_every_top_level_module_has_a_layer():
    """A new module cannot slip past the layers contract: .importlinter places every one of them."""
    config = configparser.ConfigParser()
    config.read(os.path.join(REPO, ".importlinter"))
    layers = config["importlinter:contract:layers"]["layers"]
    placed = {name.strip() for line in layers.split("\n") for name in line.replace(":", "|").split("|") if name.strip()}
    modules = {f"datafree.{m.name}" for m in pkgutil.iter_modules(datafree.__path__)} - {"datafree.baselines"}
    assert modules - placed == set() and placed - modules == set()


def test_imports_of_the_package_sit_at_the_top_of_modules_except_the_cli_commands():
    inside = []
    for path in _modules():
        for fn in ast.walk(ast.parse(open(path).read())):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                inside += [
                    (os.path.relpath(path, REPO), n.lineno)
                    for n in ast.walk(fn)
                    if isinstance(n, ast.ImportFrom) and n.level > 0
                ]
    # the CLI imports a command's module when that command runs, so `--help` and a bad argument stay fast
    assert [p for p, _ in inside if p != os.path.join("datafree", "cli.py")] == []


def test_record_file_names_are_written_once():
    """summary.json, metrics.jsonl, ... are names in datafree/results.py; elsewhere only in sentences."""
    from datafree import results

    names = {getattr(results, k) for k in dir(results) if k.isupper() and isinstance(getattr(results, k), str)}
    names = {n for n in names if "." in n and n != results.TMP_SUFFIX}
    assert {"summary.json", "metrics.jsonl", "checkpoint.pt", "config.yaml", "fingerprint.json"} <= names
    found = []
    for path in _modules():
        if path.endswith(os.path.join("datafree", "results.py")):
            continue
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.Constant) and node.value in names:
                found.append((os.path.relpath(path, REPO), node.lineno, node.value))
    assert found == []


def test_a_method_joins_the_tables_suites_and_demo_from_its_entry_alone(tmp_path, monkeypatch):
    from datafree.methods import demo_layer, methods_of_suite, register_method
    from datafree.registry import METHODS
    from datafree.report import order_methods
    from datafree.suites import expand, load_suite

    register_method(
        "mymethod",
        {
            "extends": "dafl",
            "about": "a new method",
            "order": 55,  # between dafl (50) and zskt (60)
            "suites": ["demo", "mnist"],
            "demo": {"epochs": 3, "synth.ngf": 8},
        },
    )
    try:
        assert "mymethod" in methods_of_suite("demo") and "mymethod" in methods_of_suite("mnist")
        assert demo_layer("mymethod") == {**demo_layer("dafl"), "epochs": 3, "synth.ngf": 8}
        monkeypatch.chdir(REPO)
        (cell,) = [c for c in expand(load_suite("demo")) if c.method == "mymethod"]
        assert cell.overrides["epochs"] == 3 and cell.overrides["synth"]["ngf"] == 8
        assert any(c.method == "mymethod" for c in expand(load_suite("mnist")))
        assert order_methods(["zskt", "mymethod", "dafl", "scratch"]) == ["scratch", "dafl", "mymethod", "zskt"]
    finally:
        METHODS.unregister("mymethod")


def test_the_tables_columns_are_the_records_declarations():
    import pandas as pd

    from datafree.report import runs_table, stability_table
    from datafree.results import table_columns

    row = {
        "dataset": "digits",
        "method": "dafl",
        "pair": "lenet5->lenet5_half",
        "seed": 0,
        "status": "finished",
        "last_acc": 90.0,
        "best_acc": 91.0,
        "mean_acc": 80.0,
        "var_acc": 4.0,
        "total_hours": 0.01,
        "gpu_hours": 0.0,
    }
    df = pd.DataFrame([row])
    stab = stability_table(df).splitlines()[0]
    want = ["dataset", "pair", "method", "seeds"] + [
        c.cpu_header if c.kind == "hours" else c.header for _, c in table_columns("stability")
    ]
    assert [h.strip() for h in stab.strip("|").split("|")] == want
    runs = runs_table(df).splitlines()[0]
    assert [h.strip() for h in runs.strip("|").split("|")][5:] == [c.header for _, c in table_columns("runs")]


def test_the_docs_name_every_hook_the_engine_calls():
    """Every method or attribute of a Synthesizer, Distiller or Hook that the engine uses is declared on the base
    class and named in docs/adding_a_method.md or docs/architecture.md."""
    from datafree.distill.base import Distiller
    from datafree.engine.hooks import Hook
    from datafree.synthesis.base import Synthesizer

    engine = "".join(open(p).read() for p in _modules() if os.sep + "engine" + os.sep in p)
    docs = "".join(open(os.path.join(REPO, "docs", f)).read() for f in ("adding_a_method.md", "architecture.md"))
    used, missing = [], []
    for cls in (Synthesizer, Distiller, Hook):
        for name in vars(cls):
            shortcut = name in ("teacher", "student", "device", "spec", "normalizer")  # the Context's, not hooks
            if not name.startswith("_") and not shortcut and f".{name}" in engine:
                used.append(name)
                if f"`{name}" not in docs:
                    missing.append(f"{cls.__name__}.{name}")
    assert {"synthesize", "sample", "loss", "predict", "prepare_optimizer", "on_evaluation"} <= set(used)
    assert missing == []
