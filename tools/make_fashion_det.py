#!/usr/bin/env python
"""Generate the FashionDet demo detection dataset (COCO + VOC2007 layouts).

    python tools/make_fashion_det.py                  # data/fashion_det, 2000/300/500 images
    python tools/make_fashion_det.py --small --out /tmp/fd   # 16/8/8 images, for tests
    python tools/make_fashion_det.py --force          # rebuild even when up to date
    python tools/make_fashion_det.py --check          # only validate an existing output

Same arguments -> byte-identical annotation files. A second run with the same arguments only
reports that the output is up to date. The generator lives in rambo_mmdet/data/fashion_det.py.
"""
import argparse
import importlib.util
import os.path as osp
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def _load_generator():
    """rambo_mmdet.data.fashion_det, loaded from its file when the checkout has it.

    Importing it as a submodule would first run rambo_mmdet/__init__.py, which imports mmdet and
    torch (seconds); the generator needs neither, and an up-to-date check should be instant.
    """
    path = osp.join(ROOT, 'rambo_mmdet', 'data', 'fashion_det.py')
    if not osp.isfile(path):
        from rambo_mmdet.data import fashion_det
        return fashion_det
    name = '_rambo_mmdet_fashion_det'
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses and worker processes look it up by name
        spec.loader.exec_module(module)
    return sys.modules[name]


_gen = _load_generator()
DEFAULT_OUT, FASHION_MNIST_ENV, PRESETS = _gen.DEFAULT_OUT, _gen.FASHION_MNIST_ENV, _gen.PRESETS
FashionDetConfig, FashionDetValidationError = _gen.FashionDetConfig, _gen.FashionDetValidationError
build_fashion_det, validate_fashion_det = _gen.build_fashion_det, _gen.validate_fashion_det


def parse_args(argv=None):
    defaults = FashionDetConfig()
    p = argparse.ArgumentParser(
        description='Build the FashionDet detection dataset from Fashion-MNIST items.')
    p.add_argument('--out', default=DEFAULT_OUT, help='output root (default: %(default)s)')
    p.add_argument('--small', action='store_true',
                   help=f'small preset for tests: {"/".join(map(str, PRESETS["small"]))} images')
    p.add_argument('--num-train', type=int, help=f'train images (preset: {defaults.num_train})')
    p.add_argument('--num-val', type=int, help=f'val images (preset: {defaults.num_val})')
    p.add_argument('--num-test', type=int, help=f'test images (preset: {defaults.num_test})')
    p.add_argument('--img-size', type=int, nargs='+', metavar=('W', 'H'),
                   default=[defaults.img_width, defaults.img_height],
                   help='canvas size: one value (square) or width height (default: 256 256)')
    p.add_argument('--min-objects', type=int, default=defaults.min_objects,
                   help='fewest items drawn per image (default: %(default)s)')
    p.add_argument('--max-objects', type=int, default=defaults.max_objects,
                   help='most items drawn per image (default: %(default)s)')
    p.add_argument('--min-size', type=int, default=defaults.min_size,
                   help='smallest longest side of an item, pixels (default: %(default)s)')
    p.add_argument('--max-size', type=int, default=defaults.max_size,
                   help='largest longest side of an item, pixels (default: %(default)s)')
    p.add_argument('--max-iou', type=float, default=defaults.max_iou,
                   help='largest IoU allowed between two boxes of an image (default: %(default)s)')
    p.add_argument('--min-visible', type=float, default=defaults.min_visible,
                   help='fraction of an item mask that must stay visible under later items '
                   '(default: %(default)s)')
    p.add_argument('--mask-threshold', type=float, default=defaults.mask_threshold,
                   help='alpha above which a pixel belongs to the tight box (default: %(default)s)')
    p.add_argument('--jpeg-quality', type=int, default=defaults.jpeg_quality,
                   help='default: %(default)s')
    p.add_argument('--seed', type=int, default=defaults.seed, help='default: %(default)s')
    p.add_argument('--workers', type=int, default=None,
                   help='worker processes (default: min(2, cpus)); never changes the output')
    p.add_argument('--fashion-mnist-dir', default=None,
                   help='directory with the Fashion-MNIST IDX files (default: $'
                   f'{FASHION_MNIST_ENV}, else found via `dpkg -L dataset-fashion-mnist`)')
    p.add_argument('--force', action='store_true', help='rebuild even if up to date')
    p.add_argument('--check', action='store_true',
                   help='only validate an existing output (against its meta.json)')
    p.add_argument('--quiet', action='store_true', help='no progress bar')
    args = p.parse_args(argv)
    if len(args.img_size) not in (1, 2):
        p.error('--img-size takes one or two values')
    return args


def config_from_args(args) -> FashionDetConfig:
    width, height = (args.img_size * 2)[:2]
    return FashionDetConfig.preset(
        'small' if args.small else 'default', num_train=args.num_train, num_val=args.num_val,
        num_test=args.num_test, img_width=width, img_height=height,
        min_objects=args.min_objects, max_objects=args.max_objects, min_size=args.min_size,
        max_size=args.max_size, max_iou=args.max_iou, min_visible=args.min_visible,
        mask_threshold=args.mask_threshold, jpeg_quality=args.jpeg_quality, seed=args.seed)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.check:
            found = validate_fashion_det(args.out)
            print(f'fashion_det: {args.out} is valid: ' +
                  ', '.join(f'{s} {c["images"]} images / {c["objects"]} objects'
                            for s, c in found.items()))
            return 0
        try:
            cfg = config_from_args(args)
        except ValueError as exc:
            print(f'fashion_det: error: {exc}', file=sys.stderr)
            return 2
        build_fashion_det(args.out, cfg, fashion_mnist_dir=args.fashion_mnist_dir,
                          workers=args.workers, force=args.force, progress=not args.quiet)
    except FileNotFoundError as exc:
        print(f'fashion_det: error: {exc}', file=sys.stderr)
        return 2
    except FashionDetValidationError as exc:
        print(f'fashion_det: VALIDATION FAILED: {exc}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
