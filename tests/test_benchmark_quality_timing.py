"""tools/benchmark_quality.py: the iteration-time ratio of twins that trained side by side (their
trainings started within SIDE_BY_SIDE_S of each other) is reported apart from the ratio over all
pairs; the time goal is judged on it, and not judged without one (the ratio of all pairs is
then shown only)."""
import argparse
import importlib.util
import os.path as osp

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    'benchmark_quality', osp.join(ROOT, 'tools', 'benchmark_quality.py'))
bq = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bq)


def _run(tmp_path, arm, seed, started, iter_time):
    work_dir = tmp_path / f'retinanet_{arm}_s{seed}'
    (work_dir / started).mkdir(parents=True)  # mmengine's timestamp folder of the training
    (work_dir / 'test' / '20991231_235959').mkdir(parents=True)  # later runs (tests) not counted
    return dict(name=work_dir.name, detector='retinanet', arm=arm, seed=seed, config='x.py',
                status='ok', work_dir=str(work_dir), iter_time_median_s=iter_time,
                test={label: 10.0 for _, label in bq.METRICS})


def test_side_by_side_ratio_is_reported_apart_and_used_for_the_goal(tmp_path):
    runs = [  # seed 0: a week apart (different load); seeds 1, 2: started together
        _run(tmp_path, 'focal', 0, '20261120_100000', 0.4),
        _run(tmp_path, 'rambo', 0, '20261127_100000', 0.8),
        _run(tmp_path, 'focal', 1, '20261201_100000', 0.50),
        _run(tmp_path, 'rambo', 1, '20261201_100030', 0.51),
        _run(tmp_path, 'focal', 2, '20261201_110000', 0.40),
        _run(tmp_path, 'rambo', 2, '20261201_110100', 0.42),
    ]
    assert bq.side_by_side(runs[2], runs[3]) and not bq.side_by_side(runs[0], runs[1])
    assert bq.train_start(runs[1]).isoformat() == '2026-11-27T10:00:00'
    summary = bq.summarize(argparse.Namespace(detectors=['retinanet']), runs)
    delta = summary['deltas'][0]
    assert delta['time_ratio']['n'] == 3
    together = delta['time_ratio_side_by_side']
    assert together['seeds'] == [1, 2] and together['n'] == 2
    assert together['mean'] == pytest.approx((0.51 / 0.50 + 0.42 / 0.40) / 2)
    goal = next(g for g in summary['goals'] if 'iteration time' in g['goal'])
    assert 'side by side, seeds 1,2' in goal['goal']
    assert goal['value'] == pytest.approx(together['mean']) and goal['met'] is True


@pytest.mark.parametrize('rambo_time', [0.8, 0.2])
def test_without_side_by_side_pairs_the_goal_shows_all_pairs_unjudged(tmp_path, rambo_time):
    runs = [_run(tmp_path, 'focal', 0, '20261120_100000', 0.4),
            _run(tmp_path, 'rambo', 0, '20261127_100000', rambo_time)]
    summary = bq.summarize(argparse.Namespace(detectors=['retinanet']), runs)
    goal = next(g for g in summary['goals'] if 'iteration time' in g['goal'])
    assert '(all pairs)' in goal['goal'] and goal['value'] == pytest.approx(rambo_time / 0.4)
    # runs a week apart saw different loads: neither a pass (0.5) nor a failure (2.0)
    assert goal['met'] is None and 'no twins trained side by side' in goal['not_judged']
    path = tmp_path / 'quality.md'
    bq.write_markdown(argparse.Namespace(iters=1, cfg_options=[]), runs, summary, str(path),
                      dict(data_root='data'))
    row = next(line for line in path.read_text().splitlines() if 'iteration time' in line)
    assert row.endswith('| n/a (no twins trained side by side: the runs saw different machine '
                        'loads) |'), row


def test_the_map_goal_is_not_judged_when_neither_arm_learned(tmp_path):
    runs = [_run(tmp_path, 'focal', 0, '20261201_100000', 0.4),
            _run(tmp_path, 'rambo', 0, '20261201_100030', 0.4)]
    for run in runs:  # both arms below the learning floor
        run['test'] = {label: bq.NO_LEARNING_MAP / 2 for _, label in bq.METRICS}
    summary = bq.summarize(argparse.Namespace(detectors=['retinanet']), runs)
    goal = next(g for g in summary['goals'] if 'mAP' in g['goal'])
    assert goal['met'] is None
    path = tmp_path / 'quality.md'
    bq.write_markdown(argparse.Namespace(iters=1, cfg_options=[]), runs, summary, str(path),
                      dict(data_root='data'))
    row = next(line for line in path.read_text().splitlines() if 'RaMBO - focal mAP' in line)
    assert row.endswith(f'| n/a (neither arm learned: mAP < {bq.NO_LEARNING_MAP}) |'), row
