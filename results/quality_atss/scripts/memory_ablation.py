"""Score memory (tau batches) in the centerness heads' loss: test metrics of RaMBO runs that
differ only in memory_batches, same seeds, data, schedule (4500 iterations), with the focal twin.
Usage (repository root): python results/quality_atss/scripts/memory_ablation.py atss|fcos
Reads work_dirs/<det>/..._s<seed>.test.log; writes results/quality_<det>/memory_ablation.{json,md}."""
import json, re, statistics, sys
from pathlib import Path
det = sys.argv[1]
W = Path('work_dirs') / det
if det == 'atss':   # shipped arm: memory 0 or 7, see the README; the other arm: the ablation
    arms = {'focal': 'atss_focal_s{}', 'memory 0': 'memory0/atss_rambo_s{}', 'memory 7': 'atss_rambo_s{}'}
else:
    arms = {'focal': 'fcos_focal_s{}', 'memory 0': 'memory0/fcos_rambo_s{}', 'memory 7': 'fcos_rambo_s{}'}
KEYS = ['coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/bbox_mAP_75']
def test(path):
    text = (W / (path + '.test.log')).read_text()
    line = [l for l in text.splitlines() if 'Iter(test)' in l and 'coco/bbox_mAP:' in l][-1]
    return {k: 100 * float(re.search(re.escape(k) + r': ([0-9.]+)', line).group(1)) for k in KEYS}
out = {arm: {s: test(p.format(s)) for s in (0, 1, 2)} for arm, p in arms.items()}
fmt = lambda v: f'{statistics.mean(v):.1f} ± {statistics.stdev(v):.1f}'
md = [f'# {det.upper()}: score memory in the RaMBO loss (test split, seeds 0-2)', '', ' '.join(__doc__.split('\n')[:2]), '',
      '| arm | mAP | AP50 | AP75 | mAP per seed |', '|---|---|---|---|---|']
for arm, runs in out.items():
    md.append(f'| {arm} | ' + ' | '.join(fmt([runs[s][k] for s in runs]) for k in KEYS)
              + ' | ' + ' / '.join(f'{runs[s][KEYS[0]]:.1f}' for s in runs) + ' |')
for arm in ('memory 0', 'memory 7'):
    d = [out[arm][s][KEYS[0]] - out['focal'][s][KEYS[0]] for s in (0, 1, 2)]
    d50 = [out[arm][s][KEYS[1]] - out['focal'][s][KEYS[1]] for s in (0, 1, 2)]
    md.append(f'\n{arm} - focal, paired: mAP {statistics.mean(d):+.1f} ± {statistics.stdev(d):.1f}, '
              f'AP50 {statistics.mean(d50):+.1f} ± {statistics.stdev(d50):.1f}')
Path(f'results/quality_{det}').mkdir(parents=True, exist_ok=True)
Path(f'results/quality_{det}/memory_ablation.json').write_text(json.dumps(out, indent=1))
Path(f'results/quality_{det}/memory_ablation.md').write_text('\n'.join(md) + '\n')
print('\n'.join(md))
