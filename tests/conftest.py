"""Shared pytest fixtures of the rambo_mmdet test suite.

Run the suite with ``make test`` (= ``.venv/bin/python -m pytest -q tests``).
"""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def tmp_workdir(tmp_path, monkeypatch):
    """A fresh temporary directory that is also the current working directory."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def run_python(tmp_path):
    """Run a Python snippet in a fresh interpreter (this venv's), cwd ``tmp_path``.

    Use it for behaviour that depends on process-wide state (``sys.modules``, import order,
    registries). Returns the ``subprocess.CompletedProcess``; ``check=True`` (default) fails the
    test with the child's output when it exits non-zero.
    """

    def run(code, *, check=True, timeout=180, env=None):
        full_env = dict(os.environ)
        full_env.setdefault('PYTHONWARNINGS', 'ignore')
        if env:
            full_env.update(env)
        proc = subprocess.run([sys.executable, '-c', textwrap.dedent(code)], cwd=tmp_path,
                              env=full_env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            pytest.fail(f'child python exited {proc.returncode}\n--- stdout ---\n{proc.stdout}'
                        f'\n--- stderr ---\n{proc.stderr}')
        return proc

    return run


@pytest.fixture
def solver_paths(monkeypatch):
    """Record the strategy each ranking problem ran: a list of ``_Solver.dense`` flags (True:
    dense, False: sparse), one per problem solved, in order."""
    from rambo_mmdet.ranking import blackbox

    paths = []
    original = blackbox._Solver.forward

    def forward(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        paths.append(bool(self.dense))
        return result

    monkeypatch.setattr(blackbox._Solver, 'forward', forward)
    return paths


@pytest.fixture
def ranker_vs_argsort():
    """``compare(scores, positive, upstream, lambda_val)``: the ranks of the positives of
    ``scores`` (``[n, G]``, ``positive`` a bool mask) and the gradient that the upstream gradient
    ``upstream`` (``[P]``, on those ranks) gives the scores, by ``rank_positives`` and by the
    ``argsort(argsort)`` reference ranker: ``(rank, grad, reference_rank, reference_grad)``."""
    from rambo_mmdet.ranking import ArgsortBlackboxRanks, PositiveSet, rank_positives

    def compare(scores, positive, upstream, lambda_val):
        positives = PositiveSet.from_mask(positive)
        x = scores.clone().requires_grad_()
        rank, _ = rank_positives(x, positives, lambda_val)
        (rank * upstream).sum().backward()
        y = scores.clone().requires_grad_()
        reference = ArgsortBlackboxRanks.apply(y, lambda_val).reshape(-1)[positives.flat_index]
        (reference * upstream).sum().backward()
        return rank.detach(), x.grad, reference.detach(), y.grad

    return compare
