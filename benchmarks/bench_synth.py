"""Speed of the synthetic benchmark: one-time film cache, pairs/s after it, and `diffvqa synth --n-pairs 2000` in all.

Prints figures, asserts nothing. The machine is shared (2 cores, other jobs running), so wall-clock numbers are
upper bounds; user CPU time is printed beside them.
Usage: python benchmarks/bench_synth.py [--size 256] [--n-pairs 2000] [--warm-pairs 500] [--workers 2]
"""
import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _synth(out: Path, n: int, size: int, workers: int, cache: Path) -> tuple[float, float, str]:
    args = ['--out', str(out), '--n-pairs', str(n), '--size', str(size), '--workers', str(workers),
            '--cache-dir', str(cache), '--overwrite']
    exe = shutil.which('diffvqa', path=str(Path(sys.executable).parent))
    wired = exe and subprocess.run([exe, 'synth', '--help'], capture_output=True).returncode == 0
    cmd = [exe, 'synth', *args] if wired else [sys.executable, '-c',
           'import sys, argparse; from diffvqa.synth import add_synth_args, run_synth; p = argparse.ArgumentParser(); '
           'add_synth_args(p); sys.exit(run_synth(p.parse_args(sys.argv[1:])))', *args]
    c0, t0 = _cpu(), time.time()
    res = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {'PYTHONWARNINGS': 'ignore'})
    if res.returncode: raise SystemExit(res.stderr)
    return time.time() - t0, _cpu() - c0, res.stdout.strip().splitlines()[-1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument('--size', type=int, default=256)
    ap.add_argument('--n-pairs', type=int, default=2000)
    ap.add_argument('--warm-pairs', type=int, default=500)
    ap.add_argument('--workers', type=int, default=2)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print(f'load average before: {os.getloadavg()}', flush=True)
        wall, cpu, line = _synth(tmp / 'full', a.n_pairs, a.size, a.workers, tmp / 'cache')
        print(f'cold: synth --n-pairs {a.n_pairs} --size {a.size} --workers {a.workers} (cache built from scratch): '
              f'{wall:.1f} s wall, {cpu:.1f} s CPU\n  {line}', flush=True)
        wall, cpu, line = _synth(tmp / 'warm', a.warm_pairs, a.size, a.workers, tmp / 'cache')
        print(f'warm: {a.warm_pairs} pairs at {a.size} px with the cache: {wall:.1f} s wall (incl. ~5 s start-up), '
              f'{cpu:.1f} s CPU -> {a.warm_pairs / wall:.1f} pairs/s end to end\n  {line}', flush=True)
        print(f'load average after: {os.getloadavg()}')


if __name__ == '__main__':
    main()
