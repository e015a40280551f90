"""Markdown results table (mmdet model-zoo style) from ``tools/benchmark_quality.py``'s JSON.

Reads ``results/quality/quality.json``, ``results/quality_long/quality.json``,
``results/quality_atss/quality.json``, ``results/quality_fcos/quality.json`` and the SGD runs'
(or the files given; ``summary.arms``: one entry per detector and loss arm,
metrics in points as ``{mean, sd, n, values}`` over seeds; ``runs``: one record per run, with its
work dir) and prints one row per arm: detector, loss, schedule (training iterations), COCO mAP and
AP50 as mean ± sample sd (n seeds), iteration time, config and the runs' work dirs (training log
and ``vis_data/scalars.json`` inside). The table is generated, never typed by hand::

    python tools/results_table.py                                # print the table
    python tools/results_table.py --readme README.md             # replace it in the README

With ``--readme`` the text between the lines ``<!-- results-table:start -->`` and
``<!-- results-table:end -->`` is replaced (the markers stay); the file must hold each marker
exactly once, start before end.
"""
import argparse
import json
import os
import sys

START = '<!-- results-table:start -->'
END = '<!-- results-table:end -->'

DETECTORS = {'faster_rcnn': 'Faster R-CNN', 'retinanet': 'RetinaNet', 'atss': 'ATSS',
             'fcos': 'FCOS'}
LOSSES = {
    'ce': 'cross-entropy',
    'focal': 'focal',
    'rambo': 'RaMBO AP',
    'rambo_sigmoid': 'RaMBO AP (sigmoid scores)',
    'rambo_paper': "RaMBO AP (mode='paper')",
    'rambo_paper_margin0': "RaMBO AP (mode='paper', margin 0)",
}


#: the benchmark's outputs: the 1500-iteration A/B of both twins, the 4500-iteration RetinaNet,
#: the 4500-iteration ATSS and FCOS (make benchmark-quality-atss / -fcos), then all four with SGD
#: (make benchmark-quality-sgd)
DEFAULT_SOURCES = (os.path.join('results', 'quality', 'quality.json'),
                   os.path.join('results', 'quality_long', 'quality.json'),
                   os.path.join('results', 'quality_atss', 'quality.json'),
                   os.path.join('results', 'quality_fcos', 'quality.json'),
                   os.path.join('results', 'quality_sgd', 'faster_rcnn', 'quality.json'),
                   os.path.join('results', 'quality_sgd', 'retinanet', 'quality.json'),
                   os.path.join('results', 'quality_sgd', 'atss', 'quality.json'),
                   os.path.join('results', 'quality_sgd', 'fcos', 'quality.json'))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('json', nargs='*', default=list(DEFAULT_SOURCES),
                   help='quality.json files of tools/benchmark_quality.py, rows in this order '
                   '(default: %(default)s; a missing default file is left out)')
    p.add_argument('--readme', default=None,
                   help=f'replace the text between {START} and {END} in this file')
    return p.parse_args(argv)


def _metric(entry):
    """``mean ± sd (n=seeds)`` of a ``{mean, sd, n}`` dict, in points; ``-`` when missing."""
    if not entry or entry.get('mean') is None:
        return '-'
    text = f'{entry["mean"]:.1f}'
    if entry.get('sd') is not None:
        text += f' ± {entry["sd"]:.1f}'
    n = entry.get('n')
    return text + (f' (n={n})' if n else '')


def _seconds(entry):
    if not entry or entry.get('mean') is None:
        return '-'
    text = f'{entry["mean"]:.3f}'
    return text + (f' ± {entry["sd"]:.3f}' if entry.get('sd') is not None else '')


def _arm_runs(data, detector, arm):
    """The finished runs of an arm, in seed order."""
    runs = [r for r in data.get('runs', []) if r.get('detector') == detector
            and r.get('arm') == arm and r.get('status', 'ok') == 'ok']
    return sorted(runs, key=lambda r: r.get('seed', 0))


def _schedule(data, runs):
    iters = sorted({(r.get('settings') or {}).get('iters') for r in runs} - {None}) \
        or [data.get('settings', {}).get('iters')]
    text = ' / '.join(f'{i} it' for i in iters if i is not None) or '-'
    optimiser = _optimiser(runs)
    if optimiser:
        text += f', {optimiser}'
    if data.get('settings', {}).get('load_from'):
        text += ' (warm start)'
    return text


def _optimiser(runs):
    """The optimiser the runs set on the command line (``optim_wrapper.optimizer.type`` and
    ``.lr`` cfg-options, plus a bias lr multiplier), e.g. ``'SGD lr 0.01'`` or
    ``'SGD lr 0.01, bias lr x2.0'``; ``''`` when they keep the config's."""
    found = set()
    for r in runs:
        opts = dict(o.split('=', 1) for o in r.get('cfg_options', [])
                    if o.startswith('optim_wrapper.') and '=' in o)
        kind = opts.get('optim_wrapper.optimizer.type')
        if kind:
            lr = opts.get('optim_wrapper.optimizer.lr')
            bias_mult = opts.get('optim_wrapper.paramwise_cfg.bias_lr_mult')
            found.add(kind + (f' lr {lr}' if lr else '')
                      + (f', bias lr x{bias_mult}' if bias_mult else ''))
    return ' / '.join(sorted(found))


def _config(entry, runs):
    config = entry.get('config')
    if not config:
        return '-'
    cell = f'[{os.path.basename(config)}]({config})'
    # loss options of an extra arm (same config, cfg-options on the loss)
    options = sorted({o.rpartition('loss_cls.')[2] for r in runs
                      for o in r.get('cfg_options', []) if 'loss_cls.' in o})
    if options:
        cell += ' + ' + ', '.join(f'`{o}`' for o in options)
    return cell


#: the checkout this script belongs to: work dirs under it are shown relative to it
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _shown_path(path):
    """``path`` relative to the checkout when it lies inside it (runs trained with an absolute
    work root, e.g. from a frozen copy of the code, show like the others)."""
    if os.path.isabs(path):
        relative = os.path.relpath(path, REPO_ROOT)
        if not relative.startswith('..'):
            return relative
    return path


def _logs(runs):
    cells = []
    for r in runs:
        path = r.get('log') or r.get('work_dir')
        if path:
            path = _shown_path(path)
            cells.append(f's{r.get("seed", "?")}: `{path}`')
    return '<br>'.join(cells) or '-'


def make_table(data, source='results/quality/quality.json'):
    """The Markdown table (with a caption line) of a quality.json dict."""
    return make_combined_table([(data, source)])


def make_combined_table(sources):
    """One Markdown table (with a caption line) of several ``(quality.json dict, path)``, their
    rows in the given order (e.g. the 1500-iteration benchmark, then the longer RetinaNet
    schedule)."""
    names = []
    for data, source in sources:
        snapshot = data.get('settings', {}).get('snapshot')
        names.append(f'`{source}`' + (f' (code snapshot `{snapshot}`)' if snapshot else ''))
    caption = ('Generated by `tools/results_table.py` from ' + ' and '.join(names)
               + '. Optimiser: the configs\' (AdamW) unless the schedule names another. '
               'COCO mAP and AP50 on the test split in points: mean ± sample sd over seeds '
               '(n = number of seeds); iteration time: per-run median of the logged window means '
               '(s, data loading included), mean ± sd over seeds.')
    lines = [caption, '',
             '| Detector | Loss | Schedule | mAP | AP50 | Iter time (s) | Config | Work dirs '
             '(logs) |',
             '|---|---|---|---|---|---|---|---|']
    rows = 0
    for data, _ in sources:
        for entry in data.get('summary', {}).get('arms', []):
            detector, arm = entry.get('detector', '?'), entry.get('arm', '?')
            runs = _arm_runs(data, detector, arm)
            lines.append('| ' + ' | '.join([
                DETECTORS.get(detector, detector), LOSSES.get(arm, arm), _schedule(data, runs),
                _metric(entry.get('mAP')), _metric(entry.get('AP50')),
                _seconds(entry.get('iter_time_s')), _config(entry, runs), _logs(runs)]) + ' |')
            rows += 1
    if not rows:
        lines.append('| - | - | - | - | - | - | - | - |')
    return '\n'.join(lines) + '\n'


def replace_between_markers(text, table, path='the file'):
    """``text`` with the part between the start and end marker lines replaced by ``table``."""
    for marker in (START, END):
        count = text.count(marker)
        if count != 1:
            raise ValueError(f'{path}: found the marker {marker} {count} times, need exactly one '
                             f'of each ({START} ... {END}) around the results table')
    start, end = text.index(START), text.index(END)
    if end < start:
        raise ValueError(f'{path}: {END} comes before {START}')
    head = text[:start + len(START)]
    return head + '\n' + table + text[end:]


def main(argv=None):
    args = parse_args(argv)
    paths = args.json
    if paths == list(DEFAULT_SOURCES):
        paths = [p for p in paths if os.path.isfile(p)] or paths[:1]
    sources = []
    for path in paths:
        with open(path) as f:
            sources.append((json.load(f), path))
    table = make_combined_table(sources)
    if args.readme is None:
        sys.stdout.write(table)
        return 0
    with open(args.readme) as f:
        text = f.read()
    try:
        new = replace_between_markers(text, table, args.readme)
    except ValueError as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    tmp = args.readme + '.tmp'
    with open(tmp, 'w') as f:
        f.write(new)
    os.replace(tmp, args.readme)
    rows = sum(len(data.get('summary', {}).get('arms', [])) for data, _ in sources)
    print(f'{args.readme}: results table updated ({rows} rows)', file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main())
