"""Summarise the FCOS pilot (work_dirs/pilot_fcos) into results/pilot_fcos/{fcos_pilot.json,.md,_curves.png}."""
import json, re, statistics, sys
from pathlib import Path
ROOT = Path('/work/main'); WD = ROOT / 'work_dirs' / 'pilot_fcos'; OUT = ROOT / 'results' / 'pilot_fcos'
METRICS = ['coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/bbox_mAP_75', 'pascal_voc/mAP']
def metrics(line):
    return {k: float(re.search(re.escape(k) + r': ([0-9.]+)', line).group(1)) * 100 for k in METRICS}
runs = {}
for arm in ('focal', 'rambo'):
    for seed in range(3):
        test = WD / f'fcos_{arm}_s{seed}.test.log'
        train = WD / f'fcos_{arm}_s{seed}.train.log'
        if not test.exists() or 'done' not in test.read_text():
            continue
        lines = [l for l in test.read_text().splitlines() if 'Iter(test)' in l and 'coco/bbox_mAP:' in l]
        curve, it = [], None
        for l in train.read_text().splitlines():
            m = re.search(r'Iter\(train\) \[\s*(\d+)/', l)
            if m: it = int(m.group(1))
            if 'Iter(val)' in l and 'coco/bbox_mAP:' in l:
                curve.append(dict(iteration=it, **metrics(l)))
        wall = re.search(r'train_wall_s (\d+)', train.read_text())
        runs[(arm, seed)] = dict(arm=arm, seed=seed, test=metrics(lines[-1]), val_curve=curve,
                                 train_wall_s=int(wall.group(1)) if wall else None)
seeds = sorted({s for (_, s) in runs if ('focal', s) in runs and ('rambo', s) in runs})
def ms(v): return (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else float('nan'))
summary = {}
for arm in ('focal', 'rambo'):
    summary[arm] = {k: ms([runs[(arm, s)]['test'][k] for s in seeds]) for k in METRICS}
summary['delta'] = {k: ms([runs[('rambo', s)]['test'][k] - runs[('focal', s)]['test'][k] for s in seeds]) for k in METRICS}
doc = dict(description='FCOS R18-FPN FashionDet twins, 4500 iterations (the RetinaNet twins\' schedule, AdamW), '
           'stock FCOSHead; focal arm: mmdet FocalLoss; rambo arm: loss_cls=dict(type="RaMBOAPLoss", use_sigmoid=True) '
           '(all defaults). Test split, 500 images. Pilot configs: results/pilot_fcos/configs/.',
           seeds=seeds, runs=[runs[k] for k in sorted(runs)], summary=summary)
OUT.mkdir(parents=True, exist_ok=True)
(OUT / 'fcos_pilot.json').write_text(json.dumps(doc, indent=1))
f = lambda m: f'{m[0]:.1f} ± {m[1]:.1f}' if m[1] == m[1] else f'{m[0]:.1f}'
md = ['# FCOS pilot: FocalLoss vs RaMBOAPLoss (defaults) in the stock FCOSHead', '', doc['description'], '',
      f'Seeds: {seeds}. Mean ± sd over seeds; delta = paired RaMBO - focal per seed.', '',
      '| arm | mAP | AP50 | AP75 | VOC mAP |', '|---|---|---|---|---|']
for arm in ('focal', 'rambo', 'delta'):
    md.append(f'| {arm} | ' + ' | '.join(f(summary[arm][k]) for k in METRICS) + ' |')
md += ['', '| run | mAP | AP50 | AP75 | VOC mAP | train s |', '|---|---|---|---|---|---|']
for k in sorted(runs):
    r = runs[k]
    md.append(f"| {r['arm']} s{r['seed']} | " + ' | '.join(f"{r['test'][m]:.1f}" for m in METRICS) + f" | {r['train_wall_s']} |")
md += ['', 'Validation curves: fcos_pilot_curves.png (mAP and AP50 on the val split every 1125 iterations).']
(OUT / 'fcos_pilot.md').write_text('\n'.join(md) + '\n')
import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt
fig, axes = plt.subplots(1, 2, figsize=(10, 4))
for (arm, seed), r in sorted(runs.items()):
    its = [c['iteration'] for c in r['val_curve']]
    for ax, key in zip(axes, ['coco/bbox_mAP', 'coco/bbox_mAP_50']):
        ax.plot(its, [c[key] for c in r['val_curve']], ('-' if arm == 'rambo' else '--'),
                color=['C0', 'C1', 'C2'][seed], label=f'{arm} s{seed}')
for ax, key in zip(axes, ['val mAP', 'val AP50']):
    ax.set_title(f'FCOS twins: {key}'); ax.set_xlabel('iteration'); ax.grid(alpha=0.3)
axes[0].legend(fontsize=8)
fig.tight_layout(); fig.savefig(OUT / 'fcos_pilot_curves.png', dpi=100)
print('\n'.join(md))
