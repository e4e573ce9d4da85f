"The house rules of issue 12, checked on the package as exported: chapters in dependency order, units a reader can hold."
import ast
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _chapters() -> dict[str, int]:
    "module name -> chapter number, from each nbs/api notebook's default_exp."
    out = {}
    for p in sorted((ROOT/'nbs'/'api').glob('*.ipynb')):
        for c in json.loads(p.read_text())['cells']:
            m = re.match(r'#\|\s*default_exp\s+(\S+)', ''.join(c['source']))
            if m: out[m.group(1)] = int(re.match(r'\d+', p.name).group())
    return out


def _imports(path: Path) -> set[str]:
    "diffvqa modules a file imports, at the top or inside functions."
    mods = set()
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.ImportFrom) and n.module:
            if n.level == 1: mods.add(n.module.split('.')[0])
            elif n.module.startswith('diffvqa.'): mods.add(n.module.split('.')[1])
        elif isinstance(n, ast.Import):
            mods |= {a.name.split('.')[1] for a in n.names if a.name.startswith('diffvqa.')}
    return mods


def test_chapter_numbers_are_unique_and_cover_every_module():
    ch = _chapters()
    assert len(set(ch.values())) == len(ch), 'two chapters share a number'
    exported = {p.stem for p in (ROOT/'diffvqa').glob('*.py')} - {'__init__', '_modidx'}
    assert exported == set(ch), exported ^ set(ch)


def test_no_module_imports_a_later_chapter():
    ch = _chapters()
    bad = [(m, dep) for m in ch for dep in _imports(ROOT/'diffvqa'/f'{m}.py') if dep in ch and ch[dep] > ch[m]]
    assert not bad, f'modules importing a later chapter: {bad}'


def test_no_function_over_80_lines():
    long = []
    for p in (ROOT/'diffvqa').glob('*.py'):
        for n in ast.walk(ast.parse(p.read_text())):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 80:
                long.append(f'{p.name}:{n.name} ({n.end_lineno - n.lineno + 1} lines)')
    assert not long, long
