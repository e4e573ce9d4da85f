"The `diffvqa` entry point and the config round trip, through the installed console script."
import json
import shutil
import subprocess
import sys

import pytest

from diffvqa import __version__
from diffvqa.cli import COMMANDS, main
from diffvqa.core import ExperimentConfig, config_from_json, config_to_json, get_preset

EXE = shutil.which('diffvqa') or f'{sys.executable} -m diffvqa.cli'


def run(*args):
    return subprocess.run([sys.executable, '-c', 'import sys; from diffvqa.cli import main; sys.exit(main())', *args],
                          capture_output=True, text=True, timeout=300)


def test_console_script_installed():
    assert shutil.which('diffvqa'), 'the diffvqa console script is not on PATH'
    r = subprocess.run(['diffvqa', '--version'], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == f'diffvqa {__version__}'


def test_help_lists_every_command():
    r = run('--help')
    assert r.returncode == 0
    for c in COMMANDS:
        assert c.name in r.stdout


@pytest.mark.parametrize('cmd', [c.name for c in COMMANDS])
def test_each_command_has_help(cmd):
    r = run(cmd, '--help')
    assert r.returncode == 0, r.stderr
    assert f'diffvqa {cmd}' in r.stdout


def test_unknown_command_fails():
    r = run('fly')
    assert r.returncode != 0 and 'invalid choice' in r.stderr


def test_missing_required_flag_fails_cleanly():
    r = run(COMMANDS[0].name)
    assert r.returncode == 2 and 'required' in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr  # one line naming the flags, no usage block


def test_bad_choice_is_one_line():
    r = run('evaluate', '--run', 'r', '--data', 'd', '--split', 'nonsense')
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: diffvqa evaluate: argument --split: invalid choice: 'nonsense' (choose from 'train', 'val', 'test') "
        "('diffvqa evaluate --help' lists the flags)"], r.stderr


@pytest.mark.parametrize('name', ['paper', 'tiny'])
def test_config_json_round_trip(name, tmp_path):
    cfg = get_preset(name)
    (tmp_path / 'c.json').write_text(config_to_json(cfg))
    back = config_from_json((tmp_path / 'c.json').read_text())
    assert back == cfg and isinstance(back, ExperimentConfig)
    assert json.loads(config_to_json(back)) == json.loads(config_to_json(cfg))


def test_unknown_preset_is_one_line():
    from diffvqa.core import DiffVQAError
    with pytest.raises(DiffVQAError, match='--preset'):
        get_preset('huge')


def test_score_command_is_registered():
    from diffvqa.cli import build_parser
    cmd = {c.name: c for c in COMMANDS}['score']
    assert cmd.module == 'diffvqa.score'
    a = build_parser('score').parse_args(['--predictions', 'p.csv'])
    assert (a.predictions, a.questions, a.split, a.question_types, a.allow_missing, a.out) == ('p.csv', None, None, None, False, None)
    r = run('score')
    assert r.returncode == 2 and '--predictions' in r.stderr


def test_evaluate_controls_are_on_by_default():
    from diffvqa.cli import build_parser
    a = build_parser('evaluate').parse_args(['--run', 'r', '--data', 'd'])
    assert (a.image_control, a.question_only) == (True, True)
    a = build_parser('evaluate').parse_args(['--run', 'r', '--data', 'd', '--no-image-control', '--no-question-only'])
    assert (a.image_control, a.question_only) == (False, False)


def test_no_library_warnings_in_command_output():
    "The commands' own output carries no library warning (torch.jit's deprecation at import is the one we silence)."
    import subprocess, sys
    for cmd in (['--help'], ['train', '--help'], ['pretrain', '--help'], ['evaluate', '--help'], ['predict', '--help']):
        r = subprocess.run([sys.executable, '-m', 'diffvqa.cli', *cmd], capture_output=True, text=True, timeout=300,
                           env={**__import__('os').environ, 'PYTHONWARNINGS': 'default'})
        assert r.returncode == 0 and r.stderr == '', (cmd, r.stderr[-500:])


def test_transformers_pin_and_cache_keyword():
    "The pinned transformers range holds the installed version, and generation uses that version's cache keyword."
    import re, tomllib
    from pathlib import Path
    import transformers
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version
    deps = tomllib.loads((Path(__file__).parents[1]/'pyproject.toml').read_text())['project']['dependencies']
    spec = SpecifierSet(next(d for d in deps if re.match(r'transformers\b', d))[len('transformers'):])
    v = Version(transformers.__version__)
    assert v in spec and spec.contains('5.39') and not spec.contains('6.0'), (v, spec)
    from diffvqa.core import get_preset
    from diffvqa.model import DiffVQA
    from diffvqa.tokenizer import train_bpe_tokenizer
    model = DiffVQA.from_preset(get_preset('tiny'), tokenizer=train_bpe_tokenizer(['yes', 'no'] * 20, vocab_size=270))
    assert model._cache_kw == ('cache' if v >= Version('5.24') else 'past_key_values')


def test_train_help_shows_every_train_config_field():
    "Each TrainConfig field is a `diffvqa train` flag, with the field's comment in its help (issue 12)."
    import dataclasses
    from diffvqa.cli import build_parser
    from diffvqa.core import TrainConfig
    p = build_parser('train')
    flags = {a.dest: a for a in p._actions}
    for f in dataclasses.fields(TrainConfig):
        assert f.name in flags, f'--{f.name.replace("_", "-")} missing from diffvqa train'
        assert 'field default' in flags[f.name].help
    r = run('train', '--help')
    assert r.returncode == 0
    for f in dataclasses.fields(TrainConfig): assert '--' + f.name.replace('_', '-') in r.stdout, f.name


def test_quiet_import_warnings_covers_the_heavy_imports():
    "After `quiet_import_warnings`, importing everything the commands and the ablation study load prints nothing."
    import subprocess, sys
    code = ('from diffvqa.core import quiet_import_warnings; quiet_import_warnings(); '
            'import diffvqa.train, diffvqa.pretrain, diffvqa.evaluate, diffvqa.ablation, diffvqa.saliency')
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300,
                       env={**__import__('os').environ, 'PYTHONWARNINGS': 'default'})
    assert r.returncode == 0 and r.stderr == '', r.stderr[-500:]
    bare = subprocess.run([sys.executable, '-c', code.split('; ', 2)[2]], capture_output=True, text=True, timeout=300,
                          env={**__import__('os').environ, 'PYTHONWARNINGS': 'default'})
    assert 'jit' in bare.stderr   # the check can fail: without the call, the import does warn (remove this line once fastai stops)
