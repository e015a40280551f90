"""Check that RaMBOAPLoss does not grow process memory over a long run.

Runs ``--iters`` training iterations of a linear classifier (``--features`` -> ``--classes``) on
fresh random RoI-head-sized batches (``--rows`` x ``--classes`` logits, 25% foreground, like the
Faster R-CNN RoI sampler) through RaMBOAPLoss (score memory τ = ``--tau``) and an SGD step, and
reads the resident set size (RSS) of the process along the way. The memory fills up during the
first τ iterations, so growth is measured from the end of a warm-up (``--warmup`` iterations) to
the end of the run::

    python tools/check_memory_growth.py                      # 1,000 iterations, 1024 x 80, τ = 7
    python tools/check_memory_growth.py --iters 200 --max-growth-mb 20   # exit 1 above 20 MB

Prints RSS at start (after the warm-up), middle and end, and the growth; writes the numbers, an
RSS sample every ``--every`` iterations, the timing and the loss values (as float hex: two runs
with the same seed give the same values bit for bit) to ``--out`` (JSON, default
``results/memory_growth.json``). CPU only (the loss's device memory is not measured here).
"""
import argparse
import gc
import hashlib
import json
import os
import os.path as osp
import platform
import sys
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout

import torch  # noqa: E402


def rss_mb() -> float:
    """Resident set size of this process in MiB (Linux ``/proc``; elsewhere the peak RSS)."""
    try:
        with open('/proc/self/statm') as f:
            return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20
    except OSError:
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / (2**20 if sys.platform == 'darwin' else 2**10)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--iters', type=int, default=1000)
    parser.add_argument('--warmup', type=int, default=50,
                        help='iterations before the start measurement (the memory fills in τ)')
    parser.add_argument('--rows', type=int, default=1024, help='RoIs per batch')
    parser.add_argument('--classes', type=int, default=80)
    parser.add_argument('--features', type=int, default=256)
    parser.add_argument('--tau', type=int, default=7, help='memory_batches')
    parser.add_argument('--every', type=int, default=50, help='RSS sample period (iterations)')
    parser.add_argument('--threads', type=int, default=0, help='torch threads (0: default)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--out', default='results/memory_growth.json',
                        help='JSON output ("" for none)')
    parser.add_argument('--max-growth-mb', type=float, default=None,
                        help='exit with status 1 when the growth exceeds this')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.warmup >= args.iters:
        raise SystemExit('--warmup must be smaller than --iters')
    if args.threads:
        torch.set_num_threads(args.threads)
    import rambo_mmdet  # noqa: F401  (registers RaMBOAPLoss)
    from mmdet.registry import MODELS

    torch.manual_seed(args.seed)
    model = torch.nn.Linear(args.features, args.classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = MODELS.build(dict(type='RaMBOAPLoss', memory_batches=args.tau))
    gen = torch.Generator().manual_seed(args.seed)

    middle = args.warmup + (args.iters - args.warmup) // 2
    marks, samples, losses = {}, [], []
    start_time = time.perf_counter()
    loop_start = None
    for it in range(1, args.iters + 1):
        features = torch.randn(args.rows, args.features, generator=gen)
        labels = torch.randint(0, args.classes, (args.rows, ), generator=gen)
        labels[torch.rand(args.rows, generator=gen) > 0.25] = args.classes  # background
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(features), labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach().item())
        del features, labels, loss
        if it in (args.warmup, middle, args.iters) or it % args.every == 0:
            gc.collect()
            rss = rss_mb()
            samples.append([it, round(rss, 2)])
            if it == args.warmup:
                marks['start'], loop_start = rss, time.perf_counter()
            elif it == middle:
                marks['middle'] = rss
            elif it == args.iters:
                marks['end'] = rss
    loop_time = time.perf_counter() - loop_start

    growth = marks['end'] - marks['start']
    result = dict(
        iters=args.iters, warmup=args.warmup, rows=args.rows, classes=args.classes,
        tau=args.tau, memory_batches_stored=len(loss_fn.memory),
        rss_mb=dict(start=round(marks['start'], 2), middle=round(marks['middle'], 2),
                    end=round(marks['end'], 2)),
        growth_mb=round(growth, 2),
        growth_after_middle_mb=round(marks['end'] - marks['middle'], 2),
        ms_per_iter=round(1000 * loop_time / (args.iters - args.warmup), 2),
        total_s=round(time.perf_counter() - start_time, 2),
        final_loss=losses[-1], samples=samples,
        # bitwise fingerprints of the run (same seed and data -> same values; tests compare them)
        losses_hex=[value.hex() for value in losses],
        weights_sha256=hashlib.sha256(model.weight.detach().numpy().tobytes()).hexdigest(),
        torch=torch.__version__, threads=torch.get_num_threads(), python=platform.python_version(),
        machine=platform.machine())
    print(f'RaMBOAPLoss {args.rows} x {args.classes}, tau={args.tau}, {args.iters} iterations '
          f'({result["ms_per_iter"]} ms/iter, {torch.get_num_threads()} threads)')
    print(f'RSS start (after {args.warmup} warm-up iterations): {marks["start"]:.1f} MiB')
    print(f'RSS middle (iteration {middle}): {marks["middle"]:.1f} MiB')
    print(f'RSS end (iteration {args.iters}): {marks["end"]:.1f} MiB')
    print(f'growth start -> end: {growth:+.2f} MiB (middle -> end: '
          f'{result["growth_after_middle_mb"]:+.2f} MiB)')
    if args.out:
        os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w') as f:
            json.dump(result, f, indent=1)
        print(f'wrote {args.out}')
    if args.max_growth_mb is not None and growth > args.max_growth_mb:
        print(f'FAIL: growth {growth:.2f} MiB > {args.max_growth_mb} MiB', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
