"Shared pytest set-up: offline hub, markers for slow and GPU-only tests."
import os

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
os.environ.setdefault('MPLBACKEND', 'Agg')

import pytest


def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: heavy test, run with DIFFVQA_SLOW=1')
    config.addinivalue_line('markers', 'cuda: needs a CUDA GPU')


def pytest_collection_modifyitems(config, items):
    slow = os.environ.get('DIFFVQA_SLOW') == '1'
    try:
        import torch
        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    for item in items:
        if 'slow' in item.keywords and not slow:
            item.add_marker(pytest.mark.skip(reason='slow: set DIFFVQA_SLOW=1'))
        if 'cuda' in item.keywords and not cuda:
            item.add_marker(pytest.mark.skip(reason='needs a CUDA GPU'))
