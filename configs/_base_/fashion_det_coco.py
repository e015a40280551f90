# FashionDet, COCO layout: datasets, dataloaders and evaluators (no model settings); the settings
# shared with the VOC layout (classes, pipelines, dataloaders) are in fashion_det_common.py.
# Make the data first (about 25 s):   python tools/make_fashion_det.py   # -> data/fashion_det/
#
# A config that moves the data must override data_root in the three datasets AND the evaluators'
# ann_file (they are strings built from data_root when this file is read).
_base_ = ['./fashion_det_common.py']

dataset_type = 'CocoDataset'

train_dataloader = dict(dataset=dict(type=dataset_type,
                                     ann_file='annotations/instances_train.json',
                                     data_prefix=dict(img='images/train/')))
val_dataloader = dict(dataset=dict(type=dataset_type,
                                   ann_file='annotations/instances_val.json',
                                   data_prefix=dict(img='images/val/')))
test_dataloader = dict(dataset=dict(type=dataset_type,
                                    ann_file='annotations/instances_test.json',
                                    data_prefix=dict(img='images/test/')))

# _base_.x: a variable of the base files (mmengine runs this file with `_base_` bound to them)
val_evaluator = dict(
    type='CocoMetric',
    ann_file=_base_.data_root + 'annotations/instances_val.json',  # noqa: F821
    metric='bbox',
    format_only=False,
    backend_args=_base_.backend_args)  # noqa: F821
test_evaluator = dict(val_evaluator,
                      ann_file=_base_.data_root + 'annotations/instances_test.json')  # noqa: F821
