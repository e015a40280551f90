"""tools/benchmark_quality.py: ``--rambo-cfg-options`` reach the RaMBO arms only (e.g. the SGD
recipe's box-head loss), are recorded with the runs, and a report assembled from runs of several
invocations names the runs whose cfg-options differ from its header's."""
import argparse
import importlib.util
import os.path as osp

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    'benchmark_quality', osp.join(ROOT, 'tools', 'benchmark_quality.py'))
bq = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bq)

SOFTMAX = 'model.roi_head.bbox_head.loss_cls.cross_entropy=softmax'
SGD = 'optim_wrapper.optimizer.type=SGD'


def test_rambo_cfg_options_reach_the_rambo_arms_only(tmp_path, monkeypatch):
    args = bq.parse_args(['--work-root', str(tmp_path), '--data-root', str(tmp_path / 'data'),
                          '--cfg-options', SGD, '--rambo-cfg-options', SOFTMAX])
    assert args.cfg_options == [SGD] and args.rambo_cfg_options == [SOFTMAX]
    assert bq.parse_args([]).rambo_cfg_options is None
    settings = dict(cfg_options=[SGD], rambo_cfg_options=[SOFTMAX])  # as main() records them
    assert bq.arm_cfg_options(settings, 'rambo') == [SGD, SOFTMAX]
    assert bq.arm_cfg_options(settings, 'rambo_paper') == [SGD, SOFTMAX]
    assert bq.arm_cfg_options(settings, 'ce') == [SGD]
    assert bq.arm_cfg_options(settings, 'focal') == [SGD]
    assert bq.arm_cfg_options(dict(cfg_options=[SGD], rambo_cfg_options=None), 'rambo') == [SGD]
    args.warm_start = None  # set by main()
    commands = []
    monkeypatch.setattr(bq, '_run', lambda cmd, log_file, env: commands.append(cmd) or 1)
    for arm in ('ce', 'rambo'):
        rec = bq.run_one(args, 'faster_rcnn', arm, 0, {}, settings)
        assert rec['status'] == 'failed' and rec['settings'] == settings
        options = commands[-1][commands[-1].index('--cfg-options') + 1:]
        assert options == rec['cfg_options'] and SGD in options
        assert (SOFTMAX in options) == (arm == 'rambo')
        if arm == 'rambo':  # after the shared ones: they win over --cfg-options
            assert options.index(SOFTMAX) > options.index(SGD)


def _record(tmp_path, arm, cfg_options, rambo_cfg_options=None):
    settings = dict(data_root='data', iters=1, cfg_options=cfg_options)
    if rambo_cfg_options is not None:
        settings['rambo_cfg_options'] = rambo_cfg_options
    name = f'faster_rcnn_{arm}_s0'
    return dict(name=name, detector='faster_rcnn', arm=arm, seed=0, config='x.py', status='ok',
                work_dir=str(tmp_path / name), iter_time_median_s=0.3, settings=settings,
                test={label: 10.0 for _, label in bq.METRICS})


def _header_lines(tmp_path, runs, settings):
    summary = bq.summarize(argparse.Namespace(detectors=['faster_rcnn']), runs)
    path = tmp_path / 'quality.md'
    bq.write_markdown(argparse.Namespace(iters=1, cfg_options=[]), runs, summary, str(path),
                      settings)
    return path.read_text().split('## ')[0]


def test_report_names_the_runs_trained_with_other_cfg_options(tmp_path):
    # one invocation with --rambo-cfg-options: the header says so, no run is singled out
    runs = [_record(tmp_path, 'ce', [SGD], [SOFTMAX]), _record(tmp_path, 'rambo', [SGD], [SOFTMAX])]
    header = _header_lines(tmp_path, runs, runs[0]['settings'])
    assert f'cfg-options: `{SGD}`; RaMBO arms only: `{SOFTMAX}`.' in header
    assert 'other cfg-options' not in header
    # assembled (--report-only) from a stock run and a RaMBO run trained with --cfg-options
    # SGD SOFTMAX: the header is the first run's, the RaMBO run is named with what it added
    runs = [_record(tmp_path, 'ce', [SGD]), _record(tmp_path, 'rambo', [SGD, SOFTMAX])]
    header = _header_lines(tmp_path, runs, runs[0]['settings'])
    assert f'cfg-options: `{SGD}`.' in header
    assert f'Runs trained with other cfg-options: faster_rcnn_rambo_s0 plus `{SOFTMAX}`.' in header
    # and one without an option of the header
    runs = [_record(tmp_path, 'ce', [SGD]), _record(tmp_path, 'rambo', [])]
    header = _header_lines(tmp_path, runs, runs[0]['settings'])
    assert f'faster_rcnn_rambo_s0 without `{SGD}`' in header
