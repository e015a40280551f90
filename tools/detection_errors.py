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
import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout

from rambo_mmdet.calibration import box_iou, match_detections  # noqa: E402

KINDS = ('correct', 'duplicate', 'wrong_class', 'localisation', 'background')


def detection_kinds(ground_truth: Dict[int, tuple], detections: List[tuple]) -> List[str]:
    """The kind (:data:`KINDS`) of each detection, in the order given: matched per image with
    :func:`rambo_mmdet.calibration.match_detections` (the rule of the calibration's ECE)."""
    by_image: Dict[int, List[int]] = {}
    for i, detection in enumerate(detections):
        by_image.setdefault(detection[0], []).append(i)
    kinds = [''] * len(detections)
    for img, members in by_image.items():
        boxes = torch.tensor([detections[i][1] for i in members],
                             dtype=torch.float64).reshape(-1, 4)
        scores = torch.tensor([detections[i][2] for i in members], dtype=torch.float64)
        labels = torch.tensor([detections[i][3] for i in members])
        gt_boxes, gt_labels = ground_truth.get(img, (np.zeros((0, 4)), np.zeros(0, int)))
        gt_boxes = torch.as_tensor(gt_boxes, dtype=torch.float64).reshape(-1, 4)
        gt_labels = torch.as_tensor(gt_labels, dtype=torch.long)
        correct = match_detections(boxes, labels, scores, gt_boxes, gt_labels)
        iou = box_iou(boxes, gt_boxes)
        same = labels[:, None] == gt_labels[None, :]
        # best IoU with a box of the detection's own class / of another class (-1: none)
        own = other = torch.full((len(members), ), -1.0, dtype=torch.float64)
        if iou.numel():
            unset = torch.full_like(iou, -1.0)
            own = torch.where(same, iou, unset).max(1).values
            other = torch.where(same, unset, iou).max(1).values
        for j, i in enumerate(members):
            kinds[i] = ('correct' if correct[j] else 'duplicate' if own[j] >= 0.5
                        else 'wrong_class' if other[j] >= 0.5
                        else 'localisation' if own[j] >= 0.1 else 'background')
    return kinds


def breakdown(ground_truth: Dict[int, tuple], detections: List[tuple],
              num_classes: int) -> Dict:
    """``ground_truth``: image id -> (boxes [n, 4], labels [n]); ``detections``: (image id,
    box [4], score, label). Returns the report described in the module docstring."""
    kinds = detection_kinds(ground_truth, detections)
    top = dict.fromkeys(KINDS, 0)
    total = dict.fromkeys(KINDS, 0)
    recalls, num_gt_all = [], 0
    for cls in range(num_classes):
        # the class's detections by descending score (ties: the earlier one first)
        own = sorted((i for i, d in enumerate(detections) if d[3] == cls),
                     key=lambda i: -detections[i][2])
        num_gt = sum(int((labels == cls).sum()) for _, labels in ground_truth.values())
        num_gt_all += num_gt
        for rank, i in enumerate(own):
            total[kinds[i]] += 1
            if rank < num_gt:
                top[kinds[i]] += 1
        if num_gt:  # each correct detection took a different ground-truth box
            recalls.append(sum(kinds[i] == 'correct' for i in own) / num_gt)
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
