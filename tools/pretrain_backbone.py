#!/usr/bin/env python
r"""Classification-pretrain the FashionDet detectors' backbone (half-width ResNet-18).

    python tools/pretrain_backbone.py                 # -> data/pretrained/resnet18_half_fashion.pth
    python tools/pretrain_backbone.py --force         # redo even when up to date
    python tools/pretrain_backbone.py --steps 3 --batch-size 8 --train-images 32 \
        --eval-images 20 --out /tmp/tiny.pth      # smoke run

Trains the backbone of configs/fashion/faster_rcnn_r18_fashion_ce.py (+ global pooling and a
linear 10-class layer) to classify Fashion-MNIST garments pasted on FashionDet textures (items
from Fashion-MNIST train; held-out accuracy on items from t10k[0:5000]; t10k[5000:10000], the
FashionDet test split's items, is never used). Writes {'state_dict', 'meta'} loadable by the
backbone's init_cfg=dict(type='Pretrained', checkpoint=...) and a JSON report next to it. A run
whose output exists with the same recipe only reports it. About 6-7 minutes on one CPU thread.
The logic lives in rambo_mmdet/pretrain.py.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout


RECIPE_HELP = dict(
    steps='optimizer steps', batch_size='images per step', img_size='canvas side, px',
    min_size='smallest garment side, px', max_size='largest garment side, px',
    train_images='training images rendered once, then augmented',
    eval_images='held-out images for the accuracy',
    curriculum_steps='first steps over which easy views ramp linearly to the real images',
    bg_start='background texture strength at step 0 (1 = real images)',
    zoom_context='view side / garment side at step 0 (0 = no zoom curriculum)',
    zero_init_residual="mmdet ResNet's zero init of each block's last BN (0/1)",
    optimizer='adamw or sgd (momentum 0.9, Nesterov)', lr='peak learning rate',
    weight_decay='weight decay (not on norms and biases)', warmup_steps='linear warm-up steps',
    label_smoothing='cross-entropy label smoothing', max_shift='random shift, px',
    seed='seed of images and training')


def _flag(text):
    if text.lower() in ('1', 'true', 'yes'):
        return True
    if text.lower() in ('0', 'false', 'no'):
        return False
    raise argparse.ArgumentTypeError(f'expected 0/1 or true/false, got {text!r}')


def parse_args(argv=None):
    from rambo_mmdet.pretrain import DEFAULT_CONFIG, DEFAULT_OUT, PretrainRecipe, field_names
    d = PretrainRecipe()
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0].strip(),
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog='\n\n'.join(__doc__.split('\n\n')[1:]))
    p.add_argument('--out', default=DEFAULT_OUT, help='checkpoint path (default: %(default)s)')
    p.add_argument('--config', default=DEFAULT_CONFIG,
                   help='detector config whose model.backbone and data_preprocessor '
                   'normalisation are used (default: %(default)s)')
    p.add_argument('--force', action='store_true', help='train even when the output is current')
    p.add_argument('--fashion-mnist-dir', default=None,
                   help='directory with the Fashion-MNIST IDX files (default: found as '
                   'tools/make_fashion_det.py does)')
    p.add_argument('--threads', type=int, default=1,
                   help='torch threads (default: %(default)s; the result depends on it)')
    p.add_argument('--log-every', type=int, default=50, help='steps between progress lines')
    p.add_argument('--quiet', action='store_true', help='only the final line')
    recipe = p.add_argument_group('recipe (defaults: the shipped recipe)')
    for name in field_names():  # every recipe field is an option
        default = getattr(d, name)
        kind = _flag if isinstance(default, bool) else type(default)
        recipe.add_argument('--' + name.replace('_', '-'), type=kind, default=None,
                            help=f'{RECIPE_HELP.get(name, name)} (default: {default})')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from rambo_mmdet.pretrain import field_names, pretrain, recipe_from_args
    recipe = recipe_from_args(**{name: getattr(args, name) for name in field_names()})
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, flush=True))
    report = pretrain(args.out, recipe, config=args.config,
                      fashion_mnist_dir=args.fashion_mnist_dir, force=args.force,
                      threads=args.threads, log=log, log_every=max(args.log_every, 1))
    state = 'up to date' if report['skipped'] else 'written'
    print(f'pretrain_backbone: {args.out} {state}: held-out accuracy '
          f'{100 * report["accuracy"]:.1f}%, {report["seconds"] / 60:.1f} min', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
