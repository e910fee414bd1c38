"""The package's import structure, read statically (ast) from the source files.

* No import cycle between localattn modules (every ``import`` statement counts, function-level
  ones included: a lazy import cycle is still a cycle of design).
* The torch-only core (``ops/``, ``layers/``) imports nothing from the OpenMMLab stack, the
  backbones, the converters, the registry or the analysis tools; ``converters/`` and the
  checkpoint module import no backbone and no OpenMMLab package at module level.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / 'projects' / 'localattn'
OPENMMLAB = ('mmcv', 'mmengine', 'mmdet', 'mmseg', 'mmpretrain')


def module_name(path: Path) -> str:
    parts = ('localattn', ) + path.relative_to(PACKAGE).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


MODULES: Dict[str, Path] = {module_name(p): p for p in sorted(PACKAGE.rglob('*.py'))}


def imports(name: str, top_level_only: bool = False) -> Set[str]:
    """Absolute names ``name`` imports (``from X import a`` gives ``X`` and ``X.a`` when that is a
    module of the package)."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == '__init__.py' else name.rpartition('.')[0]
    nodes = tree.body if top_level_only else ast.walk(tree)
    found: Set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split('.')
                base = base[:len(base) - node.level + 1]
                target = '.'.join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            found.add(target)
            found.update(f'{target}.{alias.name}' for alias in node.names
                         if f'{target}.{alias.name}' in MODULES)
    return found


def internal_graph() -> Dict[str, List[str]]:
    return {name: sorted(m for m in imports(name) if m in MODULES and m != name) for name in MODULES}


def find_cycle(graph: Dict[str, List[str]]) -> List[str]:
    """One cycle of ``graph`` as a path ``[a, b, ..., a]``, or ``[]``."""
    state: Dict[str, int] = {}  # 1: on the DFS stack, 2: done
    stack: List[str] = []

    def visit(node: str) -> List[str]:
        state[node] = 1
        stack.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return []

    for node in graph:
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return []


def test_the_walk_sees_the_package():
    assert {'localattn.ops.na.functional', 'localattn.layers.neighborhood_attention',
            'localattn.backbones.base', 'localattn.checkpoint'} <= set(MODULES)
    assert 'localattn.layers' in internal_graph()['localattn.backbones.nat']
    assert find_cycle({'a': ['b'], 'b': ['c'], 'c': ['a']}) == ['a', 'b', 'c', 'a']


def test_no_import_cycle():
    cycle = find_cycle(internal_graph())
    assert not cycle, ' -> '.join(cycle)


@pytest.mark.parametrize('layer', ['localattn.ops', 'localattn.layers'])
def test_core_imports_only_the_core(layer):
    forbidden = ('localattn.backbones', 'localattn.converters', 'localattn.registry',
                 'localattn.analysis', 'localattn.checkpoint', 'localattn.cli', 'localattn.deploy')
    for name in MODULES:
        if name == layer or name.startswith(layer + '.'):
            bad = sorted(m for m in imports(name) if m.split('.')[0] in OPENMMLAB or m.startswith(forbidden))
            assert not bad, f'{name} imports {bad}'


@pytest.mark.parametrize('prefix', ['localattn.converters', 'localattn.checkpoint'])
def test_checkpoint_code_needs_no_backbone(prefix):
    for name in MODULES:
        if name == prefix or name.startswith(prefix + '.'):
            bad = sorted(m for m in imports(name) if m.startswith('localattn.backbones'))
            bad += sorted(m for m in imports(name, top_level_only=True) if m.split('.')[0] in OPENMMLAB)
            assert not bad, f'{name} imports {bad}'
