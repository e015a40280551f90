"""Mutation testing of the ranking core and the mmdet adapters with mutmut (``make mutation``).

Not part of CI: about 1.5 hours on the 2-core machine (``ranking/`` ~75 min, the ``models/``
sample ~11 min; see ``results/mutation.md``).

What it does, per package (``ranking``: ``rambo_mmdet/ranking/``; ``models``:
``rambo_mmdet/models/``):

1. Copies a snapshot of the working tree (the files git tracks plus untracked files it does not
   ignore, under ``rambo_mmdet/``, ``tests/``, ``configs/``, ``tools/``, ``README.md``,
   ``setup.py``) into a fresh temporary directory. mutmut 3 mutates a copy of the sources of its
   own (``mutants/``) and switches mutants at run time through trampolines; it still writes its
   state next to the sources, so it never runs in the live tree, which other people use while it
   runs. Subprocesses that tests start import the mutated copy too (``PYTHONPATH``).
2. Writes mutmut's configuration there (``pyproject.toml``, ``[tool.mutmut]``: the files to mutate
   and the tests of the package, below) and runs ``mutmut run`` with one worker, one torch
   thread (``OMP_NUM_THREADS=1``) and ``nice 19``. mutmut first runs the selected tests once to
   record which tests call which function; each mutant then runs only the tests that called its
   function (``pytest -x -q``, fastest tests first: a hook appended to the copy's
   ``tests/conftest.py`` sorts them by the stats run's durations), in a process forked from
   mutmut's (which has imported torch, mmdet and the tests already).
3. Reads the verdicts (``mutants/**/*.meta``) and the diff of each surviving mutant (mutmut's
   own reader, as ``mutmut show`` prints it), looks up why it survives in ``tools/mutation_survivors.toml`` (an
   equivalent mutant, with the reason; entries are matched on the file, the function and the
   changed line, not on mutant numbers or line numbers) and writes ``results/mutation.json`` and
   ``results/mutation.md`` into the live tree.

Usage::

    .venv/bin/python tools/mutation.py                   # both packages (make mutation)
    .venv/bin/python tools/mutation.py --models-sample all   # every mutant of models/ too
    .venv/bin/python tools/mutation.py --packages ranking
    .venv/bin/python tools/mutation.py --packages ranking --workdir /tmp/mut --keep
    # rerun chosen mutants in a kept workdir (after editing tests: the snapshot's tests are
    # refreshed from the live tree first)
    .venv/bin/python tools/mutation.py --packages ranking --workdir /tmp/mut --reuse \\
        --mutants 'rambo_mmdet.ranking.counting.x_contains__mutmut_*'
    # rewrite results/ from kept copies without running anything
    .venv/bin/python tools/mutation.py --packages ranking models --workdir /tmp/mut --collect-only

The test selection of each package is listed in :data:`PACKAGES` with the reasons for what it
leaves out (slow end-to-end trainings; they exercise the same code through heavier paths).
"""
import argparse
import ast
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = None

ROOT = Path(__file__).resolve().parents[1]
SNAPSHOT_ROOTS = ('rambo_mmdet', 'tests', 'configs', 'tools', 'README.md', 'setup.py')
SURVIVORS_FILE = ROOT / 'tools' / 'mutation_survivors.toml'

#: Per package: the files mutmut mutates and the tests that judge the mutants (pytest arguments).
PACKAGES = {
    'ranking': dict(
        only_mutate=['rambo_mmdet/ranking/*'],
        tests=[
            'tests/test_ranking.py',        # oracles: loops, argsort, sklearn (both strategies)
            'tests/test_properties.py',     # hypothesis vs the loop oracles, ties everywhere
            'tests/test_ranking_units.py',  # the helpers' contracts, collectives on threads
            'tests/test_losses.py',         # RaMBOAPLoss / RaMBORecallLoss: memory, exclusions
            'tests/test_modes.py',          # balanced gradient
        ],
        note='all of rambo_mmdet/ranking/',
    ),
    'models': dict(
        only_mutate=['rambo_mmdet/models/*'],
        tests=[
            'tests/test_losses.py',
            'tests/test_modes.py',
            'tests/test_heads.py',
            'tests/test_robustness.py',
            'tests/test_hooks.py',
            # end-to-end trainings of mmdet detectors (25-30 s each): the same loss and head code
            # as the unit tests above, too slow to repeat for every mutant
            '--deselect', 'tests/test_robustness.py::test_faster_rcnn_bf16_amp_step_on_cpu',
            '--deselect',
            'tests/test_robustness.py::test_same_seed_same_data_bitwise_identical_losses',
            '--deselect', 'tests/test_robustness.py::test_process_memory_does_not_grow',
            '--deselect', 'tests/test_hooks.py::test_tiny_faster_rcnn_logs_the_box_head_stats',
        ],
        note='rambo_mmdet/models/ (losses, dense-head mixin, RoI box-head patch), a sample of '
             'its mutants; the slow end-to-end detector trainings of test_robustness.py / '
             'test_hooks.py are left out of the test selection',
        # mmdet's heads make these tests slower: by default only the mutants whose number ends
        # in one of these digits run (a 1-in-5 sample spread over the functions); 'all': every one
        sample='05',
    ),
}

STATUS_ORDER = ('killed', 'timeout', 'survived', 'no tests', 'suspicious', 'segfault', 'skipped',
                'not checked')


def log(message):
    print(f'[mutation] {message}', flush=True)


def snapshot_files(ref=None):
    """Relative paths of the snapshot: tracked and untracked-not-ignored files that exist."""
    if ref:
        out = subprocess.run(['git', 'ls-tree', '-r', '--name-only', ref], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout.split('\n')
    else:
        out = subprocess.run(
            ['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'],
            cwd=ROOT, check=True, capture_output=True, text=True).stdout.split('\0')
    files = []
    for name in out:
        if not name or not any(name == r or name.startswith(r + '/') for r in SNAPSHOT_ROOTS):
            continue
        if ref or (ROOT / name).is_file():
            files.append(name)
    return sorted(files)


def copy_snapshot(dest, ref=None, only=None):
    """Copy the snapshot into ``dest`` (``only``: a path prefix, e.g. 'tests/')."""
    for name in snapshot_files(ref):
        if only and not name.startswith(only):
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if ref:
            data = subprocess.run(['git', 'show', f'{ref}:{name}'], cwd=ROOT, check=True,
                                  capture_output=True).stdout
            target.write_bytes(data)
        else:
            shutil.copy2(ROOT / name, target)


ORDERING_HOOK = """

# --- appended by tools/mutation.py, in its temporary copy only ---------------------------------
def pytest_collection_modifyitems(session, config, items):
    \"\"\"Fastest tests first (durations of mutmut's stats run): with ``-x`` a mutant dies at
    its first failing test, so cheap unit tests get the first chance. Stable, outcome-neutral.\"\"\"
    import json
    import pathlib
    stats = pathlib.Path('mutmut-stats.json')  # pytest runs in mutants/
    if stats.exists():
        durations = json.loads(stats.read_text()).get('duration_by_test', {})
        items.sort(key=lambda item: durations.get(item.nodeid, 0.0))
"""


def install_ordering_hook(workdir):
    with open(workdir / 'tests' / 'conftest.py', 'a') as f:
        f.write(ORDERING_HOOK)


def toml_list(values):
    return '[' + ', '.join(json.dumps(v) for v in values) + ']'


def write_config(workdir, package):
    spec = PACKAGES[package]
    (workdir / 'pyproject.toml').write_text(
        '# written by tools/mutation.py for this temporary copy only\n'
        '[tool.mutmut]\n'
        'source_paths = ["rambo_mmdet"]\n'
        f'only_mutate = {toml_list(spec["only_mutate"])}\n'
        f'pytest_add_cli_args_test_selection = {toml_list(spec["tests"])}\n'
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-W", "ignore"]\n'
        'also_copy = ["README.md", "configs", "tools", "setup.py"]\n'
        # fork (not forkserver): forking from the process that ran the stats is ~7x faster here,
        # and safe with torch on one thread (no OpenMP pool to inherit)
        'process_isolation = "fork"\n'
        'use_git_change_detection = false\n'
        # a mutant whose tests run past (their time + 10 s) x 5 is stopped and counted a timeout
        # (mutmut's default, x 15 + 1 s, let a few slow mutants take a quarter of an hour)
        'timeout_multiplier = 5.0\n'
        'timeout_constant = 10.0\n')


def sample_patterns(package):
    digits = PACKAGES[package].get('sample')
    if not digits or digits == 'all':
        return []
    prefix = PACKAGES[package]['only_mutate'][0].rstrip('*').rstrip('/').replace('/', '.')
    return [f'{prefix}.*__mutmut_*{d}' for d in digits]


def sample_note(package):
    digits = PACKAGES[package].get('sample')
    if not digits or digits == 'all':
        return 'all'
    return (f'those whose number (counted per function) ends in {" or ".join(digits)}: a '
            f'1-in-{10 / len(digits):g} sample')


def mutmut_executable():
    exe = Path(sys.executable).parent / 'mutmut'
    if not exe.exists():
        sys.exit('tools/mutation.py: mutmut is not installed in this environment '
                 '(make env installs the pin of requirements/stack.txt)')
    return str(exe)


def mutmut_version():
    from importlib.metadata import version
    return version('mutmut')


def child_env(workdir):
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', OPENBLAS_NUM_THREADS='1',
               PYTHONHASHSEED='0', PYTHONWARNINGS='ignore',
               # subprocesses started by tests import the mutated copy, not the live tree
               PYTHONPATH=str(workdir / 'mutants'))
    env.pop('MUTANT_UNDER_TEST', None)
    return env


def run_mutmut(workdir, mutants=()):
    # mutants/ must exist before the interpreter starts: a PYTHONPATH entry that is missing at
    # start-up is cached as "no importer" and never searched, and the live tree (the editable
    # install) would be imported instead of the mutants
    (workdir / 'mutants').mkdir(exist_ok=True)
    cmd = [mutmut_executable(), 'run', '--max-children', '1', *mutants]
    log(f'{" ".join(cmd)}  (in {workdir})')
    start = time.time()
    with open(workdir / 'mutmut-run.log', 'ab') as out:
        proc = subprocess.run(cmd, cwd=workdir, env=child_env(workdir), stdout=out,
                              stderr=subprocess.STDOUT)
    runs_file = workdir / 'runs.json'
    runs = json.loads(runs_file.read_text()) if runs_file.exists() else []
    runs.append(dict(started=time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(start)),
                     seconds=round(time.time() - start, 1), mutants=list(mutants),
                     exit_code=proc.returncode))
    runs_file.write_text(json.dumps(runs, indent=1) + '\n')
    if proc.returncode != 0:
        tail = (workdir / 'mutmut-run.log').read_text(errors='replace')[-6000:]
        sys.exit(f'tools/mutation.py: mutmut run failed (exit {proc.returncode}) in {workdir}; '
                 f'end of mutmut-run.log:\n{tail}')


def load_verdicts(workdir, package):
    """``{mutant_name: (source_path, status)}`` of the mutated files of ``package``."""
    from mutmut.stats import status_by_exit_code
    verdicts = {}
    for meta in sorted((workdir / 'mutants').rglob('*.py.meta')):
        source = meta.relative_to(workdir / 'mutants').as_posix()[:-len('.meta')]
        if not any(fnmatch.fnmatch(source, p) for p in PACKAGES[package]['only_mutate']):
            continue
        data = json.loads(meta.read_text())
        for name, code in data['exit_code_by_key'].items():
            verdicts[name] = (source, status_by_exit_code[code])
    return verdicts


def mutant_diffs(workdir, names_and_sources):
    """``{name: diff}`` from mutmut's own reader (in this process, cwd = the copy)."""
    from mutmut.configuration import reset_config
    from mutmut.mutation.diff_apply import get_diff_for_mutant
    cwd = os.getcwd()
    os.chdir(workdir)
    reset_config()
    try:
        return {name: '\n'.join(l for l in get_diff_for_mutant(name, path=source).splitlines()
                                if not l.startswith('# '))
                for name, source in names_and_sources}
    finally:
        os.chdir(cwd)
        reset_config()


_NAME = re.compile(r'^(?P<module>.*)\.(?:x_(?P<func>\w+?)|xǁ(?P<cls>\w+)ǁ(?P<meth>\w+?))'
                   r'__mutmut_(?P<num>\d+)$')


def function_of(name):
    """``'Class.method'`` or ``'function'`` of a mutant name."""
    match = _NAME.match(name)
    if not match:
        return name
    return f'{match["cls"]}.{match["meth"]}' if match['cls'] else match['func']


def changed_lines(diff):
    removed = [l[1:] for l in diff.splitlines() if l.startswith('-') and not l.startswith('---')]
    added = [l[1:] for l in diff.splitlines() if l.startswith('+') and not l.startswith('+++')]
    return removed, added


def locate(source_file, function, diff):
    """Line number in ``source_file`` of the first line the mutant changes."""
    tree = ast.parse(source_file.read_text())
    parts = function.split('.')
    node = None
    body = tree.body
    for part in parts:
        node = next((n for n in body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                       ast.ClassDef)) and n.name == part), None)
        if node is None:
            return None
        body = node.body
    removed, _ = changed_lines(diff)
    if not removed:
        return node.lineno
    lines = source_file.read_text().splitlines()
    start = min([node.lineno] + [d.lineno for d in node.decorator_list])
    wanted = removed[0].strip()
    hits = [i + 1 for i in range(start - 1, node.end_lineno) if lines[i].strip() == wanted]
    if len(hits) == 1:
        return hits[0]
    # the same line more than once in the function: use the diff's hunk offset from the def line
    hunk = re.search(r'^@@ -(\d+)', diff, re.M)
    if hunk and hits:
        diff_lines = diff.splitlines()
        first = next(i for i, l in enumerate(diff_lines) if l.startswith('@@'))
        rel, line_no = int(hunk.group(1)), None
        for l in diff_lines[first + 1:]:
            if l.startswith('-'):
                line_no = rel
                break
            if not l.startswith('+'):
                rel += 1
        defline = next(i for i in range(start, node.end_lineno + 1)
                       if lines[i - 1].lstrip().startswith(('def ', 'async def ')))
        # rel counts from the first line of the function's code as mutmut prints it: the
        # decorators, then the def line
        guess = start + (line_no - 1) if line_no else defline
        return min(hits, key=lambda h: abs(h - guess))
    return hits[0] if hits else node.lineno


def load_reasons():
    if not SURVIVORS_FILE.exists():
        return []
    if tomllib is None:
        sys.exit('tools/mutation.py needs Python >= 3.11 (tomllib) to read '
                 f'{SURVIVORS_FILE.relative_to(ROOT)}')
    return tomllib.loads(SURVIVORS_FILE.read_text())['survivor']


def norm(text):
    return re.sub(r'\s+', ' ', text.strip())


def reason_for(reasons, source, function, diff):
    """The entry of tools/mutation_survivors.toml for this mutant, or None."""
    removed, added = changed_lines(diff)
    removed, added = norm(' '.join(removed)), norm(' '.join(added))
    for entry in reasons:
        if entry['file'] == source and entry['function'] == function \
                and norm(entry['original']) == removed and norm(entry['mutant']) == added:
            return entry
    return None


def collect(workdir, package, reasons):
    verdicts = load_verdicts(workdir, package)
    counts = Counter(status for _, status in verdicts.values())
    by_file = {}
    for name, (source, status) in verdicts.items():
        by_file.setdefault(source, Counter())[status] += 1
    survivors = []
    shown = sorted((n, v[0]) for n, v in verdicts.items() if v[1] not in ('killed', 'not checked'))
    diffs = mutant_diffs(workdir, shown)
    for name, (source, status) in sorted(verdicts.items()):
        if status in ('killed', 'not checked'):
            continue
        function = function_of(name)
        diff = diffs[name]
        entry = reason_for(reasons, source, function, diff)
        removed, added = changed_lines(diff)
        survivors.append(dict(
            mutant=name, status=status, file=source, function=function,
            line=locate(workdir / source, function, diff),
            original=norm(' '.join(removed)), mutated=norm(' '.join(added)), diff=diff,
            classification=entry['kind'] if entry else 'unclassified',
            reason=entry['reason'] if entry else
            ('Not classified: no test kills it yet, and tools/mutation_survivors.toml gives no '
             'reason why it would be equivalent.')))
    checked = sum(1 for _, status in verdicts.values() if status != 'not checked')
    runs_file = workdir / 'runs.json'
    runs = json.loads(runs_file.read_text()) if runs_file.exists() else []
    killed = counts['killed']
    equivalent = sum(1 for s in survivors if s['classification'] == 'equivalent')
    spec = PACKAGES[package]
    return dict(
        scope=spec['note'],
        tests=[t for i, t in enumerate(spec['tests'])
               if t.startswith('tests/') and not (i and spec['tests'][i - 1] == '--deselect')],
        deselected=[t for i, t in enumerate(spec['tests'])
                    if i and spec['tests'][i - 1] == '--deselect'],
        generated=len(verdicts),
        mutants=checked,
        sample=None if checked == len(verdicts) else
        f'{checked} of the {len(verdicts)} mutants were run ('
        + (sample_note(package) if sample_patterns(package) else 'the run did not finish') + ')',
        counts={k: counts[k] for k in STATUS_ORDER if counts[k]},
        killed=killed,
        killed_fraction=round(killed / checked, 4) if checked else None,
        detected_fraction=round((killed + counts['timeout']) / checked, 4) if checked else None,
        equivalent=equivalent,
        killed_fraction_of_non_equivalent=round(killed / (checked - equivalent), 4)
        if checked - equivalent else None,
        by_file={f: dict(mutants=sum(v for k, v in c.items() if k != 'not checked'),
                         killed=c['killed'],
                         killed_fraction=round(c['killed'] / max(1, sum(
                             v for k, v in c.items() if k != 'not checked')), 4))
                 for f, c in sorted(by_file.items())},
        # wall time of the mutmut runs that decided these verdicts (more than one when a kept
        # copy was resumed, or its survivors re-run after tests were added)
        duration_s=round(sum(r['seconds'] for r in runs), 1),
        runs=runs,
        survivors=survivors,
    ), verdicts


def write_results(report):
    out = ROOT / 'results'
    out.mkdir(exist_ok=True)
    (out / 'mutation.json').write_text(json.dumps(report, indent=2, ensure_ascii=False) + '\n')
    md = [
        '# Mutation testing',
        '',
        f'Generated by `tools/mutation.py` (`make mutation`, not part of CI) with '
        f'{report["tool"]} {report["version"]} on {report["date"]}: '
        f'{report["duration_s"] / 60:.0f} min of mutmut runs on {report["machine"]} '
        f'(one worker, one torch thread, nice 19; {report["load"]}).',
        '',
        'Each mutant runs the tests of its package\'s selection that call the mutated function '
        '(`pytest -x -q`). *killed*: a test failed; *survived*: every test passed; *timeout*: '
        'the tests ran past (their normal time + 10 s) x 5 and were stopped (counted as detected, '
        'not as killed). `killed_fraction` = killed / mutants run; the equivalent mutants (no '
        'behaviour differs, see each) stay in its denominator.',
        '',
    ] + ([report['note'], ''] if report.get('note') else []) + [
        '| package | scope | mutants run | killed | survived | timeout | not killed: equivalent '
        '/ unclassified | killed fraction | killed / non-equivalent |',
        '|---|---|---|---|---|---|---|---|---|',
    ]
    for package, p in report['packages'].items():
        run = f'{p["mutants"]}' + (f' of {p["generated"]}' if p['sample'] else '')
        unclassified = sum(1 for s in p['survivors'] if s['classification'] == 'unclassified')
        md.append(f'| `{package}` | {p["scope"]} | {run} | {p["killed"]} | '
                  f'{p["counts"].get("survived", 0)} | {p["counts"].get("timeout", 0)} | '
                  f'{p["equivalent"]} / {unclassified} | '
                  f'{100 * p["killed_fraction"]:.1f} % | '
                  f'{100 * p["killed_fraction_of_non_equivalent"]:.1f} % |')
    for package, p in report['packages'].items():
        md += ['', f'## `{package}`', '', f'Duration {p["duration_s"] / 60:.0f} min. '
               + (p['sample'] + '. ' if p['sample'] else '')
               + 'Counts: ' + ', '.join(f'{k} {v}' for k, v in p['counts'].items()) + '.', '',
               'Tests: ' + ', '.join(f'`{t}`' for t in p['tests']) + '.']
        if p['deselected']:
            md += ['Left out (slow end-to-end trainings): '
                   + ', '.join(f'`{t}`' for t in p['deselected']) + '.']
        md += ['', '| file | mutants run | killed | killed fraction |', '|---|---|---|---|']
        for f, c in p['by_file'].items():
            md.append(f'| `{f}` | {c["mutants"]} | {c["killed"]} | '
                      f'{100 * c["killed_fraction"]:.1f} % |')
        md += ['', f'### Mutants of `{package}` not killed ({len(p["survivors"])})', '']
        if not p['survivors']:
            md.append('None.')
        for s in p['survivors']:
            md += [f'- `{s["file"]}:{s["line"]}` in `{s["function"]}`: {s["status"]}, '
                   f'**{s["classification"]}** (`{s["mutant"]}`)', '',
                   '  ```diff', f'  - {s["original"]}', f'  + {s["mutated"]}', '  ```', '',
                   '  ' + s['reason'].strip().replace('\n', '\n  '), '']
    (out / 'mutation.md').write_text('\n'.join(md).rstrip() + '\n')


def machine():
    try:
        model = next(l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo')
                     if l.startswith('model name'))
    except (OSError, StopIteration):
        model = 'unknown CPU'
    return f'{model}, {os.cpu_count()} cores'


def load_note(before=None):
    """The 1-minute load average (at the start, and at the end when ``before`` is given)."""
    try:
        now = os.getloadavg()[0]
    except OSError:
        return before or 'load unknown'
    return f'load average {now:.1f} at the start' if before is None else \
        f'{before}, {now:.1f} at the end'


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--packages', nargs='+', choices=sorted(PACKAGES),
                        default=['ranking', 'models'])
    parser.add_argument('--workdir', type=Path,
                        help='directory of the copies (default: a fresh temporary one)')
    parser.add_argument('--keep', action='store_true', help='keep the copies afterwards')
    parser.add_argument('--reuse', action='store_true',
                        help='reuse the copy in --workdir (refreshing its tests/ from the live '
                             'tree): mutmut reruns what is not yet decided, or --mutants')
    parser.add_argument('--mutants', nargs='+', default=[],
                        help='mutant names (globs) to (re)run; with --reuse')
    parser.add_argument('--ref', help='snapshot a git commit instead of the working tree')
    parser.add_argument('--models-sample', default=PACKAGES['models']['sample'],
                        help="models/: run the mutants whose number ends in one of these digits "
                             "(default %(default)s: 1 in 5), or 'all'")
    parser.add_argument('--collect-only', action='store_true',
                        help='run nothing: report the verdicts already in --workdir')
    parser.add_argument('--note',
                        help='a paragraph for results/mutation.md (e.g. how the run went)')
    parser.add_argument('--no-results', action='store_true',
                        help='do not write results/mutation.{json,md}')
    args = parser.parse_args()
    if (args.reuse or args.collect_only) and not args.workdir:
        parser.error('--reuse and --collect-only need --workdir')

    PACKAGES['models']['sample'] = args.models_sample
    os.nice(max(0, 19 - os.nice(0)))
    start = time.time()
    base = args.workdir or Path(tempfile.mkdtemp(prefix='rambo_mutation_'))
    base.mkdir(parents=True, exist_ok=True)
    reasons = load_reasons()
    report = dict(tool='mutmut', version=mutmut_version(), date=time.strftime('%Y-%m-%d'),
                  machine=machine(), load=load_note(), packages={})
    try:
        for package in args.packages:
            workdir = base / package
            if args.collect_only:
                if not (workdir / 'mutants').is_dir():
                    sys.exit(f'tools/mutation.py: no mutmut run in {workdir}')
            else:
                if args.reuse and (workdir / 'mutants').is_dir():
                    log(f'{package}: reusing {workdir} (tests/ refreshed from the live tree)')
                    shutil.rmtree(workdir / 'tests')
                    copy_snapshot(workdir, args.ref, only='tests/')
                else:
                    if workdir.exists():
                        shutil.rmtree(workdir)
                    workdir.mkdir(parents=True)
                    copy_snapshot(workdir, args.ref)
                install_ordering_hook(workdir)
                write_config(workdir, package)
                run_mutmut(workdir, args.mutants or sample_patterns(package))
            result, _ = collect(workdir, package, reasons)
            report['packages'][package] = result
            log(f'{package}: {result["mutants"]} mutants, {result["counts"]}, killed fraction '
                f'{result["killed_fraction"]}, {result["duration_s"]:.0f} s')
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(base, ignore_errors=True)
    report['duration_s'] = round(sum(p['duration_s'] for p in report['packages'].values()), 1)
    report['load'] = load_note(report['load']) if not args.collect_only else \
        'load not recorded: verdicts collected from earlier runs'
    if args.note:
        report['note'] = args.note
    unclassified = [s for p in report['packages'].values() for s in p['survivors']
                    if s['classification'] == 'unclassified']
    if not args.no_results:
        write_results(report)
        log('wrote results/mutation.json and results/mutation.md')
    log(f'done in {report["duration_s"] / 60:.1f} min; {len(unclassified)} unclassified '
        f'survivor(s)')
    for s in unclassified:
        log(f'  unclassified: {s["file"]}:{s["line"]} {s["function"]}: {s["original"]!r} -> '
            f'{s["mutated"]!r}  ({s["mutant"]})')


if __name__ == '__main__':
    main()
