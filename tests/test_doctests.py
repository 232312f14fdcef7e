"""Every module's docstring examples, each module imported once under its one name, ``hf_sparse_attack.*``.

The repository's folders ``tasks/`` and ``evaluation/`` are the packages ``hf_sparse_attack.tasks`` and
``hf_sparse_attack.evaluation`` (see ``pyproject.toml``); nothing may import them as top-level ``tasks`` or
``evaluation``, which would load a second copy of every module (and of every class, breaking ``isinstance``).
"""

import doctest
import importlib
import pkgutil
import sys

import pytest
import torch

import hf_sparse_attack

ROOTS = ("hf_sparse_attack", "hf_sparse_attack.tasks", "hf_sparse_attack.evaluation")


def module_names() -> list[str]:
    names = set(ROOTS)
    for root in ROOTS:
        package = importlib.import_module(root)
        names.update(info.name for info in pkgutil.walk_packages(package.__path__, root + "."))
    return sorted(names)


MODULES = module_names()


def test_every_module_is_imported_once_under_the_one_root():
    for name in MODULES:
        importlib.import_module(name)
    assert not [name for name in sys.modules if name.split(".")[0] in ("tasks", "evaluation")]
    files = {}
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if path and name.startswith("hf_sparse_attack"):
            files.setdefault(path, []).append(name)
    assert not {path: names for path, names in files.items() if len(names) > 1}
    assert hf_sparse_attack.__file__.endswith("hf_sparse_attack/__init__.py")


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    torch.set_num_threads(1)
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    report = []
    for test in finder.find(module, name):
        runner.run(test, out=report.append)
    assert runner.failures == 0, "".join(report)
