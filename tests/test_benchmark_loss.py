"""Smoke test of tools/benchmark_loss.py: the quick run completes and writes a complete report.

Fails when the benchmark breaks: a crash or an error row, a missing (method, regime) row, or the
argsort reference no longer computing RaMBO's loss (and gradient) on tie-free data, the
same for the core's fused ``detection_ap_loss``.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / 'tools' / 'benchmark_loss.py'
METHODS = ('rambo', 'rambo-core', 'rambo+memory', 'reference', 'focal', 'aploss')
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
    for method in ('rambo', 'rambo-core', 'reference'):
        assert rows[('trained', method)]['loss'] == pytest.approx(0.0, abs=1e-6)
    assert [s['regime'] for s in report['summary']] == list(REGIMES)
    assert {t['method'] for t in report['targets']} == {'rambo', 'rambo-core'}
    assert len(report['targets']) == 8 and 'targets:' in stdout


def test_reference_computes_rambos_loss(quick_report):
    report, _ = quick_report
    check = report['check']
    assert check['size'] == 'quick' and set(check['regimes']) == set(REGIMES)
    for regime, row in check['regimes'].items():
        assert row['rambo_loss'] == pytest.approx(row['reference_loss'], rel=1e-6, abs=1e-7), regime
        assert 0.0 < row['rambo_loss'] < 1.0, regime  # a non-trivial ranking
        assert row['loss_equal'] and row['grad_equal'], (regime, row)
        assert row['grad_max_abs'] > 0 and row['grad_max_abs_diff'] <= 1e-5 * row['grad_max_abs']
        assert row.get('core_equal', True), (regime, row)
        assert row['fused_equal'], (regime, row)  # the core's detection_ap_loss


def test_aploss_over_budget_is_skipped_not_run(tmp_path):
    report, _ = _run(tmp_path, '--methods', 'rambo,aploss', '--regimes', 'init',
                     '--aploss-budget', '10')
    rows = {r['method']: r for r in report['rows']}
    assert rows['rambo']['status'] == 'ok'
    assert rows['aploss']['status'] == 'skipped'
    assert 'O(P*N)' in rows['aploss']['reason']
