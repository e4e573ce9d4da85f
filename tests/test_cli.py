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
    assert cmd.module == 'diffvqa.evaluate'
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
