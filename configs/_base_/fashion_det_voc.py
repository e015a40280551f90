# FashionDet, VOC2007 layout: datasets, dataloaders and evaluators (no model settings); the
# settings shared with the COCO layout (classes, pipelines, dataloaders) are in
# fashion_det_common.py.
# Make the data first (about 25 s):   python tools/make_fashion_det.py   # -> data/fashion_det/
# Train on train.txt, validate on val.txt, test on test.txt (trainval.txt also exists).
#
# dataset_type is XMLDataset, the parent of VOCDataset: it reads these files exactly as
# VOCDataset does (same XML parsing, same minus-one box convention), but VOCDataset tags any
# sub_data_root containing 'VOC2007' as Pascal VOC2007, after which VOCMetric prints the 20
# Pascal class names in its per-class table and warns that VOC2007 should use '11points'.
# Switch to 'VOCDataset' if you prefer; the numbers are the same.
_base_ = ['./fashion_det_common.py']

dataset_type = 'XMLDataset'

train_dataloader = dict(dataset=dict(type=dataset_type,
                                     ann_file='VOC2007/ImageSets/Main/train.txt',
                                     data_prefix=dict(sub_data_root='VOC2007/')))
val_dataloader = dict(dataset=dict(type=dataset_type,
                                   ann_file='VOC2007/ImageSets/Main/val.txt',
                                   data_prefix=dict(sub_data_root='VOC2007/')))
test_dataloader = dict(dataset=dict(type=dataset_type,
                                    ann_file='VOC2007/ImageSets/Main/test.txt',
                                    data_prefix=dict(sub_data_root='VOC2007/')))

val_evaluator = {{_base_.voc_metric}}
test_evaluator = val_evaluator
