"""What the top-ranked detections of each class are, at IoU 0.5: a breakdown of AP50's errors.

For every class, its detections over the whole split are taken in descending score order and
matched greedily (as COCO does at IoU 0.5) to that class's ground-truth boxes. Each detection is

* ``correct``: IoU >= 0.5 with a same-class box not matched yet;
* ``duplicate``: IoU >= 0.5 with a same-class box, all of them matched already;
* ``wrong_class``: otherwise IoU >= 0.5 with a box of another class;
* ``localisation``: otherwise IoU in [0.1, 0.5) with a same-class box;
* ``background``: anything else.

Reported: the composition of each class's top-K detections (K = the class's number of
ground-truth boxes, where AP50 is decided), summed over classes and divided by the total K; the
counts over all detections; and the mean per-class recall over all detections. Input: mmdet's
``tools/test.py --out results.pkl`` and the split's COCO annotation file.

Example::

    python tools/test.py CONFIG CKPT --out ce.pkl
    python tools/detection_errors.py data/fashion_det/annotations/instances_test.json ce.pkl \\
        rambo.pkl --json errors.json
"""
import argparse
import json
import os.path as osp
import pickle
import sys
from typing import Dict, List

import numpy as np

KINDS = ('correct', 'duplicate', 'wrong_class', 'localisation', 'background')


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one ``[4]`` box (x1, y1, x2, y2) with ``[n, 4]`` boxes."""
    x1, y1 = np.maximum(box[0], boxes[:, 0]), np.maximum(box[1], boxes[:, 1])
    x2, y2 = np.minimum(box[2], boxes[:, 2]), np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-12)


def breakdown(ground_truth: Dict[int, tuple], detections: List[tuple],
              num_classes: int) -> Dict:
    """``ground_truth``: image id -> (boxes [n, 4], labels [n]); ``detections``: (image id,
    box [4], score, label). Returns the report described in the module docstring."""
    top = dict.fromkeys(KINDS, 0)
    total = dict.fromkeys(KINDS, 0)
    recalls, num_gt_all = [], 0
    for cls in range(num_classes):
        own = sorted((d for d in detections if d[3] == cls), key=lambda d: -d[2])
        num_gt = sum(int((labels == cls).sum()) for _, labels in ground_truth.values())
        num_gt_all += num_gt
        matched = {img: np.zeros(len(labels), bool) for img, (_, labels) in ground_truth.items()}
        for rank, (img, box, _, _) in enumerate(own):
            boxes, labels = ground_truth.get(img, (np.zeros((0, 4)), np.zeros(0, int)))
            iou = box_iou(np.asarray(box, float), boxes) if len(labels) else np.zeros(0)
            same = labels == cls
            kind = 'background'
            if same.any() and iou[same].max() >= 0.5:
                free = np.where(same & (iou >= 0.5) & ~matched[img])[0]
                if len(free):
                    matched[img][free[iou[free].argmax()]] = True
                    kind = 'correct'
                else:
                    kind = 'duplicate'
            elif (~same).any() and iou[~same].max() >= 0.5:
                kind = 'wrong_class'
            elif same.any() and iou[same].max() >= 0.1:
                kind = 'localisation'
            total[kind] += 1
            if rank < num_gt:
                top[kind] += 1
        if num_gt:
            found = sum(int(m[labels == cls].sum())
                        for m, (_, labels) in zip(matched.values(), ground_truth.values()))
            recalls.append(found / num_gt)
    return dict(top_k_fraction={k: v / max(num_gt_all, 1) for k, v in top.items()},
                counts=total, mean_recall=float(np.mean(recalls)) if recalls else 0.0,
                ground_truth_boxes=num_gt_all, detections=len(detections))


def load_coco(ann_file: str):
    """(image id -> (boxes, labels), number of classes) with labels in the order of sorted
    category ids (mmdet's label order); crowd boxes left out."""
    with open(ann_file) as f:
        coco = json.load(f)
    cat_ids = sorted(c['id'] for c in coco['categories'])
    index = {cat: i for i, cat in enumerate(cat_ids)}
    boxes = {img['id']: ([], []) for img in coco['images']}
    for ann in coco['annotations']:
        if ann.get('iscrowd', 0):
            continue
        x, y, w, h = ann['bbox']
        boxes[ann['image_id']][0].append([x, y, x + w, y + h])
        boxes[ann['image_id']][1].append(index[ann['category_id']])
    return {img: (np.asarray(b, float).reshape(-1, 4), np.asarray(l, int))
            for img, (b, l) in boxes.items()}, len(cat_ids)


def load_detections(pkl: str) -> List[tuple]:
    """(image id, box, score, label) of every detection in an mmdet ``--out`` pickle."""
    with open(pkl, 'rb') as f:
        results = pickle.load(f)
    out = []
    for result in results:
        pred = result['pred_instances']
        for box, score, label in zip(pred['bboxes'].tolist(), pred['scores'].tolist(),
                                     pred['labels'].tolist()):
            out.append((result['img_id'], box, score, int(label)))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('ann_file', help='COCO annotation file of the split')
    parser.add_argument('results', nargs='+', help='mmdet tools/test.py --out pickles')
    parser.add_argument('--json', default=None, help='write the reports here')
    args = parser.parse_args(argv)
    ground_truth, num_classes = load_coco(args.ann_file)
    reports = {}
    for path in args.results:
        report = breakdown(ground_truth, load_detections(path), num_classes)
        reports[path] = report
        top = ', '.join(f'{k} {100 * v:.1f} %' for k, v in report['top_k_fraction'].items())
        print(f'{osp.basename(path)}: top-K: {top}; recall {100 * report["mean_recall"]:.1f} %')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(reports, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
