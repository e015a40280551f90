"""Smoke test of tools/benchmark_loss.py: the quick run completes and writes a complete report.

Fails when the benchmark breaks: a crash or an error row, a missing (method, regime) row, a
missing stage breakdown, the argsort reference no longer computing the paper's loss (and
gradient) on tie-free data (the core's ``detection_ap_loss`` and ``RaMBOAPLoss(mode='paper')``),
or the shipped ``RaMBOAPLoss`` no longer equal to its core rebuild.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / 'tools' / 'benchmark_loss.py'
METHODS = ('rambo', 'rambo-paper', 'rambo+memory', 'reference', 'focal', 'aploss')
STAGED = ('rambo', 'rambo-paper', 'rambo+memory')
REGIMES = ('init', 'trained')


def _run(out_dir, *extra):
    proc = subprocess.run([sys.executable, str(SCRIPT), '--quick', '--out-dir', str(out_dir),
                           *extra], cwd=REPO_ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f'exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}'
    reports = sorted(Path(out_dir).glob('*-quick.json'))
    assert len(reports) == 1, f'expected one *-quick.json in {out_dir}, got {reports}'
    assert reports[0].with_suffix('.md').is_file()
    return json.loads(reports[0].read_text()), proc.stdout


@pytest.fixture(scope='module')
def quick_report(tmp_path_factory):
    return _run(tmp_path_factory.mktemp('benchmark_loss'))


def test_every_method_and_regime_is_measured(quick_report):
    report, stdout = quick_report
    rows = {(r['regime'], r['method']): r for r in report['rows']}
    assert set(rows) == {(g, m) for g in REGIMES for m in METHODS}
    for key, row in rows.items():
        assert row['size'] == 'quick' and row['status'] == 'ok', (key, row)
        assert row['ms'] > 0 and row['repeats'] >= 1, (key, row)
        assert row['peak_mb'] is None or row['peak_mb'] >= 0, (key, row)
        assert row['loss'] == row['loss'], (key, row)  # not NaN
    # the trained regime ranks every positive first: AP = 1 for the ranking losses
    for method in ('rambo-paper', 'reference'):
        assert rows[('trained', method)]['loss'] == pytest.approx(0.0, abs=1e-6)
    # the quick size has 37 % positives (RoI-like), so the shipped loss ('auto') adds its sigmoid
    # cross-entropy term there: > 0, and lower than at init
    assert 0 < rows[('trained', 'rambo')]['loss'] < rows[('init', 'rambo')]['loss']
    # the shipped loss (balanced gradient, margin 0.15) and the paper's differ in value at init
    assert rows[('init', 'rambo')]['loss'] != rows[('init', 'rambo-paper')]['loss']
    assert rows[('init', 'rambo-paper')]['loss'] == pytest.approx(rows[('init', 'reference')]['loss'],
                                                                 abs=1e-6)
    assert [s['regime'] for s in report['summary']] == list(REGIMES)
    # speed goals are evaluated at the large sizes only; the audit (any size) is one here
    assert [t for t in report['targets'] if 'audit' not in t['name']] == [] \
        and 'targets:' in stdout


def test_stage_breakdown_adds_up(quick_report):
    report, stdout = quick_report
    for row in report['rows']:
        if row['method'] not in STAGED:
            assert row.get('stages') is None, row
            continue
        stages = row['stages']
        assert set(stages) == {'select', 'filter', 'place', 'backward', 'memory', 'other',
                               'total'}, stages
        parts = sum(v for k, v in stages.items() if k != 'total')
        assert parts == pytest.approx(stages['total'], rel=0.05, abs=0.05), stages
        # the ranker's stages ran and took time; the memory only where there is one
        assert stages['select'] > 0 and stages['backward'] > 0 and stages['place'] > 0, stages
        assert (stages['memory'] > 0) == (row['method'] == 'rambo+memory'), stages
    assert 'where the time goes' in stdout


def test_goals_are_evaluated_at_the_large_sizes():
    sys.path.insert(0, str(REPO_ROOT / 'tools'))
    import benchmark_loss as bl
    summary = [dict(size='5M', regime='init', rambo_over_focal=0.9, peak_over_focal=1.2,
                    reference_over_paper=None, rambo_backward_sync_ops=0),
               dict(size='10M', regime='trained', rambo_over_focal=0.3, peak_over_focal=0.5,
                    reference_over_paper=80.0, rambo_backward_sync_ops=2),
               dict(size='1M', regime='init', rambo_over_focal=9.0, peak_over_focal=9.0,
                    reference_over_paper=1.0)]
    got = {t['name']: t['status'] for t in bl.evaluate_targets(summary)}
    sync = 'rambo backward synchronising operators (audit, GPU path) == 0'
    assert got == {'5M init: rambo/focal <= 1x': 'PASS',
                   '5M init: rambo peak <= focal peak': 'MISS',
                   '10M trained: rambo/focal <= 0.25x': 'MISS',
                   '10M trained: rambo peak <= focal peak': 'PASS',
                   '10M trained: reference/rambo-paper >= 50x': 'PASS',
                   f'5M init: {sync}': 'PASS', f'10M trained: {sync}': 'MISS',
                   f'1M init: {sync}': 'n/a'}


def test_quick_run_audits_the_backward_for_host_syncs(quick_report):
    """Every ranking row carries the audit of one call; the shipped loss's backward has no
    synchronising operator, its forward has some (which the audit must see)."""
    report, _ = quick_report
    audited = [r for r in report['rows'] if r['method'] in ('rambo', 'rambo-paper')
               and r['status'] == 'ok']
    assert audited
    for row in audited:
        assert row['sync_ops']['forward'] > 0, row['method']
        if row['method'] == 'rambo':
            assert row['sync_ops']['backward'] == 0, row['sync_ops']['backward_ops']
    assert [t['status'] for t in report['targets'] if 'audit' in t['name']] \
        == ['PASS'] * len(REGIMES)


def test_reference_computes_rambos_loss(quick_report):
    report, _ = quick_report
    check = report['check']
    assert check['size'] == 'quick' and set(check['regimes']) == set(REGIMES)
    for regime, row in check['regimes'].items():
        assert row['rambo_loss'] == pytest.approx(row['reference_loss'], rel=1e-6, abs=1e-7), regime
        assert 0.0 < row['rambo_loss'] < 1.0, regime  # a non-trivial ranking
        assert row['loss_equal'] and row['grad_equal'], (regime, row)
        assert row['grad_max_abs'] > 0 and row['grad_max_abs_diff'] <= 1e-5 * row['grad_max_abs']
        assert row['core_equal'] and row['module_equal'], (regime, row)


def test_aploss_over_budget_is_skipped_not_run(tmp_path):
    report, _ = _run(tmp_path, '--methods', 'rambo,aploss', '--regimes', 'init',
                     '--aploss-budget', '10')
    rows = {r['method']: r for r in report['rows']}
    assert rows['rambo']['status'] == 'ok'
    assert rows['aploss']['status'] == 'skipped'
    assert 'O(P*N)' in rows['aploss']['reason']


def test_core_rebuild_equals_the_shipped_loss_on_a_dense_batch():
    """The benchmark's check above compares the shipped loss with its core rebuild on a RoI-like
    batch (37 % positives: the paper's gradient); on a dense batch (0.5 % positives) the
    balanced gradient and its settings (gain, error-driven shares, margin) decide, so the rebuild
    must equal the shipped loss there too, in value and gradient."""
    import importlib.util
    spec = importlib.util.spec_from_file_location('benchmark_loss', SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    import torch

    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(4000, 5, generator=gen)
    labels = torch.full((4000, ), 5)
    labels[:20] = torch.arange(20) % 5
    weights = (torch.rand(4000, generator=gen) > 0.1).float()
    weights[:20] = 1.0
    shipped = bench.shipped_dense_loss().train()
    results = []
    for fn in (shipped, bench.shipped_core_loss):
        x = scores.clone().requires_grad_()
        loss = fn(x, labels, weights)
        loss.backward()
        results.append((loss.detach(), x.grad))
    assert results[0][1].abs().sum() > 0
    torch.testing.assert_close(results[1][0], results[0][0])
    torch.testing.assert_close(results[1][1], results[0][1])


BLOCK_OPENMMLAB = '''
import runpy, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('mmdet', 'mmcv', 'mmengine'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
sys.argv = [sys.argv[1]] + sys.argv[2:]
runpy.run_path(sys.argv[0], run_name='__main__')
'''


def test_runs_with_torch_alone(tmp_path):
    """The GPU box has torch but no mmcv / mmdet / mmengine: the benchmark must run there
    (the shipped loss rebuilt from the core, the plain-torch focal loss), audit included."""
    proc = subprocess.run([sys.executable, '-c', BLOCK_OPENMMLAB, str(SCRIPT), '--quick',
                           '--out-dir', str(tmp_path), '--methods', 'rambo,rambo-paper,focal'],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f'exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}'
    report = json.loads(next(tmp_path.glob('*-quick.json')).read_text())
    assert report['meta']['mmdet'] is None
    rows = {(r['regime'], r['method']): r for r in report['rows']}
    assert all(r['status'] == 'ok' for r in rows.values()), rows
    assert 'core' in rows[('init', 'rambo')]['impl']
    assert rows[('init', 'rambo')]['sync_ops']['backward'] == 0
