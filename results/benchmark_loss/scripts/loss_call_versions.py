"""Time one RaMBOAPLoss call (forward + backward, training mode) of two code versions, alternately
in fresh processes, one thread: the centerness-head loss (`rambo_centerness_head_loss`: mode
'auto' declared dense, so the balanced gradient; calibration on the ranked rows every call) at the
ATSS twin's batch (2152 x 10 logits near the prior, 70 positives) with tau 7 and 0, and the RoI
box-head loss (`rambo_box_head_loss`: tau 7, sampled rows) at a 2-image batch (1024 x 10, 256
positives). Per case: 10 warm-up calls (the memory fills), then 5 x 50 timed calls; the minimum
of the 5 per-call means. Usage (repository root):
    python results/benchmark_loss/scripts/loss_call_versions.py BEFORE_ROOT AFTER_ROOT OUT_STEM \
        [BEFORE_LABEL AFTER_LABEL]
(each ROOT a checkout holding rambo_mmdet/); writes OUT_STEM.json and OUT_STEM.md."""
import json, os, subprocess, sys

CHILD = r'''
import sys, time, json, resource
sys.path.insert(0, sys.argv[1])
import torch
from rambo_mmdet.models.losses.rambo_ap_loss import RaMBOAPLoss
torch.manual_seed(0); torch.set_num_threads(1)
case = sys.argv[2]
n, C, P, tau, sampled, shift = dict(
    centerness_tau7=(2152, 10, 70, 7, False, -4.0), centerness_tau0=(2152, 10, 70, 0, False, -4.0),
    box_head_tau7=(1024, 10, 256, 7, True, -2.0))[case]
def batch():
    s = (torch.randn(n, C) * 2 + shift).requires_grad_()
    l = torch.full((n,), C); i = torch.randperm(n)[:P]; l[i] = torch.randint(0, C, (P,))
    return s, l, torch.ones(n)
data = [batch() for _ in range(60)]
kw = dict(calibration_source='ranked_rows') if not sampled else {}
loss = RaMBOAPLoss(use_sigmoid=True, memory_batches=tau, **kw).train()
loss.sampled_rows = sampled
for s, l, w in data[:10]:
    loss(s, l, w).backward()
means = []
for _ in range(5):
    t = time.perf_counter()
    for s, l, w in data[10:]:
        loss(s, l, w).backward()
    means.append((time.perf_counter() - t) / 50 * 1e3)
print(json.dumps(means))
'''


def main():
    before, after, stem = sys.argv[1:4]
    labels = sys.argv[4:6] if len(sys.argv) > 5 else [before, after]
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
    cases = ('centerness_tau7', 'centerness_tau0', 'box_head_tau7')
    times = {case: {'before': [], 'after': []} for case in cases}
    for _ in range(3):  # alternate the versions, three rounds
        for case in cases:
            for name, root in (('before', before), ('after', after)):
                out = subprocess.run([sys.executable, '-c', CHILD, os.path.abspath(root), case],
                                     env=env, capture_output=True, text=True, check=True)
                times[case][name].append(min(json.loads(out.stdout.strip().splitlines()[-1])))
    summary = {case: dict(before_ms=min(t['before']), after_ms=min(t['after']),
                          ratio=min(t['after']) / min(t['before']), rounds=t)
               for case, t in times.items()}
    json.dump(dict(description=__doc__.split('Usage')[0].strip(), before=labels[0],
                   after=labels[1],
                   cases=summary), open(stem + '.json', 'w'), indent=1)
    lines = ['# One loss call, two code versions alternately', '', __doc__.split('Usage')[0].strip(),
             '', f'before: {labels[0]}; after: {labels[1]}', '',
             '| case | before (ms) | after (ms) | after / before | rounds before | rounds after |',
             '|---|---|---|---|---|---|']
    for case, s in summary.items():
        lines.append(f"| {case} | {s['before_ms']:.2f} | {s['after_ms']:.2f} | {s['ratio']:.2f} | "
                     + ' '.join(f'{x:.2f}' for x in s['rounds']['before']) + ' | '
                     + ' '.join(f'{x:.2f}' for x in s['rounds']['after']) + ' |')
    open(stem + '.md', 'w').write('\n'.join(lines) + '\n')
    print('\n'.join(lines))


if __name__ == '__main__':
    main()
