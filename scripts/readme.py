#!/usr/bin/env python3
"""Write README.md from nbs/index.ipynb without quarto (markdown cells verbatim, code cells fenced).

With --check, exit 1 if README.md differs from what would be written. Users with quarto can run `nbdev-readme`.
"""
import json, sys
from pathlib import Path

root = Path(__file__).resolve().parent.parent

def render() -> str:
    nb = json.loads((root/'nbs'/'index.ipynb').read_text())
    parts = []
    for c in nb['cells']:
        src = ''.join(c['source']).strip()
        if not src or src.startswith('#| hide'): continue
        if c['cell_type'] == 'markdown': parts.append(src)
        else:
            lines = [l for l in src.splitlines() if not l.startswith('#|')]
            parts.append('```python\n' + '\n'.join(lines) + '\n```')
    return '<!-- generated from nbs/index.ipynb by scripts/readme.py: edit the notebook, not this file -->\n\n' + '\n\n'.join(parts) + '\n'

if __name__ == '__main__':
    text, readme = render(), root/'README.md'
    if '--check' in sys.argv:
        if not readme.exists() or readme.read_text() != text:
            print('README.md is out of date with nbs/index.ipynb: run `python scripts/readme.py`'); sys.exit(1)
    else:
        readme.write_text(text)
