"""Summarise results/pilot_fcos/calibration/*.json (tools/calibrate.py on the pilot's RaMBO
checkpoints) into scoring.md: how the FCOS head should combine an AP-trained class logit with
its centerness. Same weights per seed, test split.
- 'class-probability map' (the stock FCOSHead's path, = RaMBOFCOSHead): p = sigmoid(a*logit+b)
  with the loss's map learned in training on the ranked rows, score p x centerness
  (fcos_rambo_s*_stock_head.json, --fit none);
- 'raw product': sigmoid(logit) x centerness (the 'uncalibrated@0' row);
- 'final-score map': a monotone map of the raw product fitted on training detections
  (fcos_rambo_s*.json, --fit train with calibration_source='detections' on the final scores, a
  first design of RaMBOFCOSHead at commit 79812da, dropped for this result; the heads now refuse
  that source): the raw product's order, calibrated."""
import json, statistics
from pathlib import Path
D = Path(__file__).resolve().parents[1] / 'calibration'
rows, deltas = [], []
for s in (0, 1, 2):
    final = json.loads((D / f'fcos_rambo_s{s}.json').read_text())['runs']
    stock = json.loads((D / f'fcos_rambo_s{s}_stock_head.json').read_text())['runs']
    cases = [('raw product', final['uncalibrated@0']), ('final-score map', final['calibrated@0']),
             ('final-score map, score_thr 0.05', final['calibrated@0.05']),
             ('class-probability map', stock['calibrated@0']),
             ('class-probability map, score_thr 0.05', stock['calibrated@0.05'])]
    for name, r in cases:
        rows.append(f"| {s} | {name} | {100 * r['mAP']:.2f} | {100 * r['AP50']:.2f} | {r['ece']:.4f} |")
    deltas.append((100 * (stock['calibrated@0']['mAP'] - final['uncalibrated@0']['mAP']),
                   100 * (stock['calibrated@0']['AP50'] - final['uncalibrated@0']['AP50'])))
md = ['# FCOS pilot: scoring p x centerness with an AP-trained logit', '', __doc__.split('\n', 1)[1], '',
      '| seed | scores | mAP | AP50 | ECE |', '|---|---|---|---|---|'] + rows + ['',
      'class-probability map - raw product, paired by seed: mAP '
      f"{statistics.mean(d[0] for d in deltas):+.2f} ± {statistics.stdev(d[0] for d in deltas):.2f}, AP50 "
      f"{statistics.mean(d[1] for d in deltas):+.2f} ± {statistics.stdev(d[1] for d in deltas):.2f} "
      f"(seeds {', '.join(f'{d[0]:+.2f} / {d[1]:+.2f}' for d in deltas)})", '']
(D / 'scoring.md').write_text('\n'.join(md))
print('\n'.join(md))
