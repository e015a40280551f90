"""tools/detection_errors.py: each kind of detection on a hand-made case, the top-K window, and
the reading of mmdet's --out pickles and COCO files."""
import json
import os.path as osp
import pickle
import sys

import numpy as np
import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, osp.join(ROOT, 'tools'))
from detection_errors import breakdown, load_coco, load_detections, main  # noqa: E402

#: image 1: class 0 at (0, 0, 10, 10), class 1 at (20, 20, 30, 30); image 2: class 0 far away
GT = {1: (np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float), np.array([0, 1])),
      2: (np.array([[50, 50, 60, 60]], float), np.array([0]))}
DETECTIONS = [  # (image, box, score, label), class 0 in score order, then class 1
    (1, [0, 0, 10, 10], 0.9, 0),     # correct
    (1, [0, 0, 10, 9], 0.8, 0),      # duplicate of the matched box
    (1, [20, 20, 30, 30], 0.7, 0),   # on the class-1 garment: wrong class
    (2, [50, 50, 56, 56], 0.6, 0),   # IoU 0.36 with its garment: localisation
    (2, [90, 90, 99, 99], 0.5, 0),   # background
    (1, [0, 0, 10, 10], 0.4, 1),     # class 1 on the class-0 garment: wrong class
]


def test_each_kind_and_the_top_k_window():
    report = breakdown(GT, DETECTIONS, num_classes=2)
    assert report['counts'] == dict(correct=1, duplicate=1, wrong_class=2, localisation=1,
                                    background=1)
    # top-K: class 0 has 2 boxes (its 2 best: correct, duplicate), class 1 one (wrong class)
    assert report['ground_truth_boxes'] == 3 and report['detections'] == 6
    assert report['top_k_fraction'] == pytest.approx(dict(
        correct=1 / 3, duplicate=1 / 3, wrong_class=1 / 3, localisation=0, background=0))
    # recall: class 0 found 1 of 2 (the localisation miss), class 1 none
    assert report['mean_recall'] == pytest.approx(0.25)


def test_greedy_matching_takes_the_best_free_box():
    gt = {1: (np.array([[0, 0, 10, 10], [0, 0, 10, 12]], float), np.array([0, 0]))}
    dets = [(1, [0, 0, 10, 10], 0.9, 0), (1, [0, 0, 10, 10], 0.8, 0)]
    report = breakdown(gt, dets, num_classes=1)
    assert report['counts']['correct'] == 2 and report['mean_recall'] == 1.0


def test_reads_coco_and_mmdet_pickles(tmp_path, capsys):
    coco = dict(images=[dict(id=1), dict(id=2)],
                categories=[dict(id=7, name='b'), dict(id=3, name='a')],
                annotations=[dict(id=1, image_id=1, category_id=3, bbox=[0, 0, 10, 10],
                                  iscrowd=0),
                             dict(id=2, image_id=1, category_id=7, bbox=[20, 20, 10, 10],
                                  iscrowd=0),
                             dict(id=3, image_id=2, category_id=3, bbox=[50, 50, 10, 10],
                                  iscrowd=0),
                             dict(id=4, image_id=2, category_id=7, bbox=[0, 0, 5, 5],
                                  iscrowd=1)])
    ann = tmp_path / 'ann.json'
    ann.write_text(json.dumps(coco))
    ground_truth, num_classes = load_coco(str(ann))
    assert num_classes == 2
    for img in GT:  # sorted category ids: 3 -> label 0, 7 -> label 1; the crowd box left out
        assert np.array_equal(ground_truth[img][0], GT[img][0])
        assert np.array_equal(ground_truth[img][1], GT[img][1])
    results = []
    for img in (1, 2):
        mine = [d for d in DETECTIONS if d[0] == img]
        results.append(dict(img_id=img, pred_instances=dict(
            bboxes=torch.tensor([d[1] for d in mine], dtype=torch.float32),
            scores=torch.tensor([d[2] for d in mine]),
            labels=torch.tensor([d[3] for d in mine]))))
    pkl = tmp_path / 'results.pkl'
    pkl.write_bytes(pickle.dumps(results))
    assert sorted(load_detections(str(pkl)), key=lambda d: -d[2]) == [
        (d[0], [float(v) for v in d[1]], pytest.approx(d[2]), d[3]) for d in DETECTIONS]
    out = tmp_path / 'report.json'
    assert main([str(ann), str(pkl), '--json', str(out)]) == 0
    report = json.loads(out.read_text())[str(pkl)]
    assert report['counts'] == breakdown(GT, DETECTIONS, 2)['counts']
    assert 'correct 33.3 %' in capsys.readouterr().out


def test_an_image_without_ground_truth_gives_background():
    report = breakdown(GT, [(3, [0, 0, 10, 10], 0.9, 0)], num_classes=2)
    assert report['counts']['background'] == 1 and report['mean_recall'] == 0.0
