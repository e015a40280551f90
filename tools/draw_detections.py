"""Draw a detector's boxes next to the ground truth on a few test images (one PNG).

Each row is one image: the ground truth on the left, the detector's boxes on the right (class
name and score on each box). Boxes are the model's test-time output (its test_cfg: NMS,
max_per_img) above ``--score-thr``, at most ``--max-boxes`` per image, highest scores first.

Example::

    python tools/draw_detections.py configs/fashion/faster_rcnn_r18_fashion_rambo.py \\
        work_dirs/demo_faster_rcnn_rambo/iter_1000.pth --out detections.png
"""
import argparse
import os.path as osp
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('config')
    p.add_argument('checkpoint')
    p.add_argument('--out', required=True, help='PNG to write')
    p.add_argument('--num-images', type=int, default=4)
    p.add_argument('--score-thr', type=float, default=0.3,
                   help="boxes below this score are not drawn (mmdet's visualiser default 0.3)")
    p.add_argument('--max-boxes', type=int, default=20, help='at most this many boxes per image')
    p.add_argument('--split', default='test', choices=['val', 'test'])
    p.add_argument('--device', default='cpu')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    sys.path.insert(0, ROOT)
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import mmcv
    from mmdet.apis import inference_detector, init_detector
    from mmdet.registry import DATASETS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    import rambo_mmdet  # noqa: F401  (registration, checkpoint loading under torch >= 2.6)

    register_all_modules()
    cfg = Config.fromfile(args.config)
    cfg.model.backbone.init_cfg = None  # the checkpoint has every weight
    model = init_detector(cfg, args.checkpoint, device=args.device)
    dataset_cfg = cfg[f'{args.split}_dataloader'].dataset
    dataset = DATASETS.build(dataset_cfg)
    classes = dataset.metainfo['classes']

    count = min(args.num_images, len(dataset))
    fig, axes = plt.subplots(count, 2, figsize=(8, 4 * count), squeeze=False)
    for row in range(count):
        info = dataset.get_data_info(row)
        image = mmcv.imread(info['img_path'], channel_order='rgb')
        result = inference_detector(model, info['img_path']).pred_instances
        keep = (result.scores >= args.score_thr).nonzero().squeeze(1)[:args.max_boxes]
        gt = [(inst['bbox'], classes[inst['bbox_label']], None) for inst in info['instances']]
        pred = [(result.bboxes[i].tolist(), classes[int(result.labels[i])],
                 float(result.scores[i])) for i in keep.tolist()]
        for ax, boxes, title in ((axes[row, 0], gt, f'ground truth ({len(gt)})'),
                                 (axes[row, 1], pred, f'detections, score >= {args.score_thr} '
                                  f'({len(pred)})')):
            ax.imshow(image)
            ax.set_title(title, fontsize=9)
            ax.axis('off')
            for (x1, y1, x2, y2), name, score in boxes:
                color = 'lime' if score is None else 'orange'
                ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False,
                                           edgecolor=color, linewidth=1.5))
                label = name if score is None else f'{name} {score:.2f}'
                ax.text(x1, y1, label, fontsize=7, color='black', va='bottom',
                        bbox=dict(facecolor=color, alpha=0.7, pad=1, edgecolor='none'))
    fig.suptitle(f'{osp.basename(args.config)}  {osp.basename(args.checkpoint)}', fontsize=9)
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(f'wrote {args.out} ({count} images)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
