"""tools/results_table.py: the Markdown results table from a synthetic quality.json, printed and
written between the README markers (never elsewhere; a clear error without the markers)."""
import importlib.util
import json
import os.path as osp
import subprocess
import sys

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SCRIPT = osp.join(ROOT, 'tools', 'results_table.py')
_spec = importlib.util.spec_from_file_location('results_table', SCRIPT)
results_table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(results_table)


def _metric(values):
    import statistics
    return dict(mean=statistics.fmean(values),
                sd=statistics.stdev(values) if len(values) > 1 else None, n=len(values),
                values=values)


def _run(det, arm, seed, config, extra=()):
    return dict(name=f'{det}_{arm}_s{seed}', detector=det, arm=arm, seed=seed, config=config,
                work_dir=f'work_dirs/quality/{det}_{arm}_s{seed}', settings=dict(iters=300),
                cfg_options=['train_cfg.max_iters=300', *extra], status='ok')


QUALITY = dict(
    settings=dict(iters=300, snapshot='abc123'),
    summary=dict(arms=[
        dict(detector='faster_rcnn', arm='ce',
             config='configs/fashion/faster_rcnn_r18_fashion_ce.py', seeds=[0, 1],
             mAP=_metric([8.0, 9.0]), AP50=_metric([18.0, 20.0]),
             AP75=_metric([5.0, 6.0]), **{'VOC mAP': _metric([18.5, 19.5])},
             iter_time_s=dict(mean=0.45, sd=0.05)),
        dict(detector='faster_rcnn', arm='rambo_sigmoid',
             config='configs/fashion/faster_rcnn_r18_fashion_rambo.py', seeds=[0],
             mAP=_metric([7.25]), AP50=_metric([16.0]), AP75=_metric([4.0]),
             **{'VOC mAP': _metric([17.0])}, iter_time_s=dict(mean=0.5, sd=None)),
    ], deltas=[], time_ratios=[], goals=[]),
    runs=[_run('faster_rcnn', 'ce', 1, 'configs/fashion/faster_rcnn_r18_fashion_ce.py'),
          _run('faster_rcnn', 'ce', 0, 'configs/fashion/faster_rcnn_r18_fashion_ce.py'),
          _run('faster_rcnn', 'rambo_sigmoid', 0,
               'configs/fashion/faster_rcnn_r18_fashion_rambo.py',
               ['model.roi_head.bbox_head.loss_cls.score_activation=sigmoid']),
          dict(_run('faster_rcnn', 'ce', 2, 'x.py'), status='failed')])

ROWS = [
    '| Faster R-CNN | cross-entropy | 300 it | 8.5 ± 0.7 (n=2) | 19.0 ± 1.4 (n=2) | '
    '0.450 ± 0.050 | '
    '[faster_rcnn_r18_fashion_ce.py](configs/fashion/faster_rcnn_r18_fashion_ce.py) | '
    's0: `work_dirs/quality/faster_rcnn_ce_s0`<br>s1: `work_dirs/quality/faster_rcnn_ce_s1` |',
    '| Faster R-CNN | RaMBO AP (sigmoid scores) | 300 it | 7.2 (n=1) | 16.0 (n=1) | 0.500 | '
    '[faster_rcnn_r18_fashion_rambo.py](configs/fashion/faster_rcnn_r18_fashion_rambo.py) + '
    '`score_activation=sigmoid` | s0: `work_dirs/quality/faster_rcnn_rambo_sigmoid_s0` |',
]


@pytest.fixture
def quality_json(tmp_path):
    path = tmp_path / 'quality.json'
    path.write_text(json.dumps(QUALITY))
    return path


def test_table_printed_to_stdout(quality_json):
    proc = subprocess.run([sys.executable, SCRIPT, str(quality_json)], capture_output=True,
                          text=True, check=True)
    lines = proc.stdout.splitlines()
    header = lines.index('| Detector | Loss | Schedule | mAP | AP50 | Iter time (s) | Config | '
                         'Work dirs (logs) |')
    assert lines[header + 1] == '|---|---|---|---|---|---|---|---|'
    assert lines[header + 2:] == ROWS
    assert 'abc123' in lines[0] and 'tools/results_table.py' in lines[0]


def test_readme_between_markers_replaced_and_rest_kept(quality_json, tmp_path):
    readme = tmp_path / 'README.md'
    before, after = '# Title\n\nIntro.\n\n', '\n## Next\n\nText.\n'
    readme.write_text(before + results_table.START + '\nold table\n' + results_table.END + after)
    for _ in range(2):  # idempotent
        assert results_table.main([str(quality_json), '--readme', str(readme)]) == 0
        text = readme.read_text()
        assert text.startswith(before + results_table.START + '\n')
        assert text.endswith(results_table.END + after)
        assert 'old table' not in text
        assert all(row in text.splitlines() for row in ROWS)
        assert text.count(results_table.START) == 1 and text.count(results_table.END) == 1


@pytest.mark.parametrize('content', [
    '# No markers\n',
    results_table.START + '\nonly the start\n',
    results_table.END + '\n' + results_table.START + '\n',  # wrong order
])
def test_missing_markers_are_a_clear_error_and_the_file_is_untouched(quality_json, tmp_path,
                                                                      content):
    readme = tmp_path / 'README.md'
    readme.write_text(content)
    proc = subprocess.run([sys.executable, SCRIPT, str(quality_json), '--readme', str(readme)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert 'error:' in proc.stderr and 'results-table' in proc.stderr
    assert readme.read_text() == content


def test_absolute_work_dirs_inside_the_checkout_are_shown_relative():
    inside = osp.join(ROOT, 'work_dirs', 'quality', 'retinanet_rambo_s3')
    assert results_table._shown_path(inside) == 'work_dirs/quality/retinanet_rambo_s3'
    assert results_table._shown_path('/elsewhere/run') == '/elsewhere/run'  # outside: as given
    assert results_table._shown_path('work_dirs/x') == 'work_dirs/x'
    runs = [dict(seed=3, work_dir=inside)]
    assert results_table._logs(runs) == 's3: `work_dirs/quality/retinanet_rambo_s3`'


def _table_after(first, second, data):
    """Write ``data`` to ``second``, print the table of ``first`` then ``second``; its lines and
    its rows (the lines after the header separator)."""
    second.write_text(json.dumps(data))
    proc = subprocess.run([sys.executable, SCRIPT, str(first), str(second)],
                          capture_output=True, text=True, check=True)
    lines = proc.stdout.splitlines()
    return lines, lines[lines.index('|---|---|---|---|---|---|---|---|') + 1:]


def test_several_sources_give_one_table_rows_in_order(quality_json, tmp_path):
    # a second benchmark output (e.g. the longer RetinaNet schedule): its rows follow the first's
    longer = json.loads(json.dumps(QUALITY))
    longer['settings'] = dict(iters=4500)
    longer['summary']['arms'] = longer['summary']['arms'][:1]
    for run in longer['runs']:
        run['settings'] = dict(iters=4500)
    second = tmp_path / 'long.json'
    lines, rows = _table_after(quality_json, second, longer)
    assert rows[:2] == ROWS
    assert rows[2] == ROWS[0].replace('| 300 it |', '| 4500 it |')
    assert len(rows) == 3
    assert f'`{quality_json}` (code snapshot `abc123`) and `{second}`' in lines[0]


def test_an_optimiser_set_on_the_command_line_is_named_in_the_schedule(quality_json, tmp_path):
    sgd = json.loads(json.dumps(QUALITY))
    for run in sgd['runs']:
        run['cfg_options'] += ['optim_wrapper.optimizer.type=SGD',
                               'optim_wrapper.optimizer.lr=0.02',
                               'optim_wrapper.optimizer.momentum=0.9']
    lines, rows = _table_after(quality_json, tmp_path / 'sgd.json', sgd)
    assert rows[:2] == ROWS  # the config's optimiser: not named
    assert rows[2:] == [row.replace('| 300 it |', '| 300 it, SGD lr 0.02 |') for row in ROWS]


def test_a_bias_lr_multiplier_set_on_the_command_line_is_named_with_the_optimiser(quality_json,
                                                                                  tmp_path):
    # mmdet's FCOS recipe: biases at twice the lr (make benchmark-quality-sgd's FCOS twins)
    sgd = json.loads(json.dumps(QUALITY))
    for run in sgd['runs']:
        run['cfg_options'] += ['optim_wrapper.optimizer.type=SGD',
                               'optim_wrapper.optimizer.lr=0.01',
                               'optim_wrapper.paramwise_cfg.bias_lr_mult=2.0',
                               'optim_wrapper.paramwise_cfg.bias_decay_mult=0.0']
    lines, rows = _table_after(quality_json, tmp_path / 'sgd.json', sgd)
    assert rows[2:] == [row.replace('| 300 it |', '| 300 it, SGD lr 0.01, bias lr x2.0 |')
                        for row in ROWS]
