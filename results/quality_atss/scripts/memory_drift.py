"""What holds the logits' level in the centerness heads: the RaMBO arm (AdamW, 4500-iteration
schedule, seed 0) with the shipped score memory (tau 7), without it, without it but with a
focal term (focal_weight 0.25), and with a smaller one (memory_max_rows 512 per batch: the
positive rows, then the negative rows with the highest score). Mean logit over the positives / negatives of each logged call,
gradient norm, validation mAP; test metrics of the runs that finished.
Usage (repository root): python results/quality_atss/scripts/memory_drift.py
Reads the work dirs below; writes results/quality_atss/memory_drift.{json,md,png}."""
import glob, json, os.path as osp, re
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt

RUNS = {  # (detector, arm): work dir of seed 0
    ('atss', 'tau 7 (shipped)'): 'work_dirs/pilot_atss_bal/atss_rambo_s0',
    ('atss', 'memory 0'): 'work_dirs/pilot_atss_mem0/atss_rambo_s0',
    ('atss', 'memory 0 + focal 0.25'): 'work_dirs/pilot_atss_mem0_focal025/atss_rambo_s0',
    ('atss', 'tau 7, 512 rows per batch'): 'work_dirs/pilot_atss_mem7_rows512/atss_rambo_s0',
    ('fcos', 'tau 7 (shipped)'): 'work_dirs/pilot_fcos_bal/fcos_rambo_s0',
    ('fcos', 'memory 0'): 'work_dirs/pilot_fcos_mem0/fcos_rambo_s0',
    ('fcos', 'memory 0 + focal 0.25'): 'work_dirs/pilot_fcos_mem0_focal025/fcos_rambo_s0',
    ('fcos', 'tau 7, 512 rows per batch'): 'work_dirs/pilot_fcos_mem7_rows512/fcos_rambo_s0',
}
KEYS = ('grad_norm', 'bbox_head/pos_mean', 'bbox_head/neg_mean')


def read(wd):
    path = sorted(glob.glob(osp.join(wd, '*', 'vis_data', 'scalars.json')))[0]
    rows = [json.loads(line) for line in open(path)]
    train = [{k: r[k] for k in ('step',) + KEYS if k in r} for r in rows if 'loss' in r]
    val = [(r['step'], 100 * r['coco/bbox_mAP']) for r in rows if 'coco/bbox_mAP' in r]
    test = None
    if osp.isfile(osp.join(wd, 'test.log')):
        line = [l for l in open(osp.join(wd, 'test.log')) if 'coco/bbox_mAP:' in l][-1]
        test = {k: 100 * float(re.search(re.escape(k) + r': ([0-9.]+)', line).group(1))
                for k in ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/bbox_mAP_75')}
    return dict(work_dir=wd, train=train, val=val, test=test)


out = {f'{d}/{a}': read(wd) for (d, a), wd in RUNS.items()}
at = lambda run, step, key: next((r[key] for r in run['train'] if r['step'] == step), None)
md = ['# Centerness heads: what holds the logits\' level (RaMBO arm, seed 0)', '',
      ' '.join(__doc__.split('\n')[:5]), '',
      '| run | pos / neg mean logit at 200 | at 1000 | grad norm at 1000 | val mAP at 1125 | test mAP / AP50 / AP75 |',
      '|---|---|---|---|---|---|']
for name, run in out.items():
    f = lambda v: '-' if v is None else f'{v:.4g}'
    val = next((m for s, m in run['val'] if s == 1125), None)
    test = run['test']
    md.append(f'| {name} | {f(at(run, 200, KEYS[1]))} / {f(at(run, 200, KEYS[2]))} | '
              f'{f(at(run, 1000, KEYS[1]))} / {f(at(run, 1000, KEYS[2]))} | '
              f'{f(at(run, 1000, KEYS[0]))} | {f(val)} | '
              + (f'stopped at {run["train"][-1]["step"]}' if test is None else ' / '.join(f'{v:.1f}' for v in test.values()))
              + ' |')
open('results/quality_atss/memory_drift.md', 'w').write('\n'.join(md) + '\n')
json.dump(out, open('results/quality_atss/memory_drift.json', 'w'), indent=1)
fig, axes = plt.subplots(1, 2, figsize=(11, 4))
for ax, det in zip(axes, ('atss', 'fcos')):
    for (name, run), color in zip([(n, r) for n, r in out.items() if n.startswith(det)],
                                  ('tab:green', 'tab:red', 'tab:blue', 'tab:orange')):
        steps = [r['step'] for r in run['train'] if r['step'] <= 1200]
        for key, style in ((KEYS[1], '-'), (KEYS[2], '--')):
            ax.plot(steps, [r[key] for r in run['train'] if r['step'] <= 1200], style,
                    color=color, label=name.split('/')[1] if style == '-' else None)
    ax.set_yscale('symlog', linthresh=10)
    ax.set_title(f'{det}: mean logit of positives (-) and negatives (--)')
    ax.set_xlabel('iteration')
    ax.legend(fontsize=7)
fig.tight_layout()
fig.savefig('results/quality_atss/memory_drift.png', dpi=100)
print('\n'.join(md))
