"""Summarise results/quality_atss/calibration/atss_rambo_s*.json (tools/calibrate.py --fit none
--score-thr 0.05 on the RaMBO ATSS checkpoints, configs/fashion/atss_r18_fashion_rambo.py) into
scoring.md: the same weights scored
- 'class-probability map' (shipped): p x sigmoid(centerness), p = sigmoid(a * logit + b) with
  the loss's map learned in training on the ranked rows ('calibrated@0');
- 'raw product': sigmoid(logit) x sigmoid(centerness) ('uncalibrated@0'), the order any monotone
  map of the final scores keeps;
and the class-probability map at mmdet's score_thr 0.05 ('calibrated@0.05'). Test split."""
import json, statistics
from pathlib import Path
D = Path(__file__).resolve().parents[1] / 'calibration'
rows, deltas = [], []
for s in (0, 1, 2):
    runs = json.loads((D / f'atss_rambo_s{s}.json').read_text())['runs']
    for name, key in (('raw product', 'uncalibrated@0'), ('class-probability map', 'calibrated@0'),
                      ('class-probability map, score_thr 0.05', 'calibrated@0.05')):
        r = runs[key]
        rows.append(f"| {s} | {name} | {100 * r['mAP']:.2f} | {100 * r['AP50']:.2f} | "
                    f"{100 * r['AP75']:.2f} | {r['ece']:.4f} |")
    deltas.append((100 * (runs['calibrated@0']['mAP'] - runs['uncalibrated@0']['mAP']),
                   100 * (runs['calibrated@0']['AP50'] - runs['uncalibrated@0']['AP50'])))
mean = lambda i: statistics.mean(d[i] for d in deltas)
sd = lambda i: statistics.stdev(d[i] for d in deltas)
md = ['# ATSS twin: scoring p x centerness with an AP-trained logit', '', __doc__.split('\n', 1)[1], '',
      '| seed | scores | mAP | AP50 | AP75 | ECE |', '|---|---|---|---|---|---|'] + rows + ['',
      f'class-probability map - raw product, paired by seed: mAP {mean(0):+.2f} ± {sd(0):.2f}, '
      f'AP50 {mean(1):+.2f} ± {sd(1):.2f} (seeds '
      + ', '.join(f'{a:+.2f} / {b:+.2f}' for a, b in deltas) + ')', '']
(D / 'scoring.md').write_text('\n'.join(md))
print('\n'.join(md))
