# Shared by every config of configs/fashion/ (mmdet's default_runtime + the FashionDet data base):
# FashionDet (COCO layout), evaluators, a short iteration-based CPU schedule, hooks. Model settings
# live in the detector configs.
#
# Schedule: IterBasedTrainLoop, linear warm-up, then a step LR (x0.1 at 75% and 90% of the
# iterations). A run with another length should move the milestones with it, e.g.
#   --cfg-options train_cfg.max_iters=N param_scheduler.1.end=N \
#                 param_scheduler.1.milestones="[0.75N,0.9N]"
# (tools/benchmark_quality.py does this itself.)
#
# Evaluation: CocoMetric and VOCMetric side by side on the same CocoDataset predictions.
# VOCMetric only needs the data samples' gt_instances / ignored_instances (which the test
# pipeline's LoadAnnotations + PackDetInputs provide for a CocoDataset too) and the class names, so
# no VOC-layout dataset is needed: keys 'coco/bbox_mAP', 'coco/bbox_mAP_50', ... and
# 'pascal_voc/mAP' (AP at IoU 0.5, area under the interpolated PR curve, 'area' mode).
# A config that moves the data must override data_root in the three datasets AND the evaluators'
# ann_file (val_evaluator.0.ann_file, test_evaluator.0.ann_file).
_base_ = ['mmdet::_base_/default_runtime.py', '../_base_/fashion_det_coco.py']

custom_imports = dict(imports=['rambo_mmdet'], allow_failed_imports=False)

# 160x160 instead of the native 256x256: about 2.5x fewer pixels, for CPU speed (the garments
# become ~7..75 px; the detectors' anchors are set for that). The pipelines are the base's
# (../_base_/fashion_det_common.py) with this scale in their Resize step. (`_base_` is bound to the
# base files' variables while mmengine runs this file.)
img_scale = (160, 160)
train_pipeline = [dict(step, scale=img_scale) if step['type'] == 'Resize' else step
                  for step in _base_.train_pipeline]  # noqa: F821
test_pipeline = [dict(step, scale=img_scale) if step['type'] == 'Resize' else step
                 for step in _base_.test_pipeline]  # noqa: F821

train_dataloader = dict(
    batch_size=4,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(batch_size=8, num_workers=1, persistent_workers=True,
                      dataset=dict(pipeline=test_pipeline))
test_dataloader = dict(batch_size=8, num_workers=1, persistent_workers=True,
                       dataset=dict(pipeline=test_pipeline))

# the base's CocoMetric (on the split's annotation file) and VOCMetric side by side
val_evaluator = [_base_.val_evaluator, _base_.voc_metric]  # noqa: F821
test_evaluator = [_base_.test_evaluator, _base_.voc_metric]  # noqa: F821

max_iters = 800
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters,
                 val_interval=400)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=100),
    dict(type='MultiStepLR', by_epoch=False, begin=0, end=max_iters,
         milestones=[int(0.75 * max_iters), int(0.9 * max_iters)], gamma=0.1),
]

# AdamW lr 2e-3, weight decay 0.05: on this budget it learned faster than SGD (measured from
# scratch, before the backbone was pretrained; Faster R-CNN CE, 300 iterations: val AP50 0.7 with
# SGD lr 0.02 momentum 0.9, 1.7 with AdamW 1e-3, 1.9 with AdamW 2e-3). Gradient clipping guards
# the randomly initialised heads.
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=0.002, weight_decay=0.05),
    clip_grad=dict(max_norm=35, norm_type=2))
auto_scale_lr = dict(enable=False, base_batch_size=4)

default_hooks = dict(
    # log_metric_by_epoch=False: validation metrics are logged at their iteration (else at
    # "epoch" 0 in an iteration-based run)
    logger=dict(type='LoggerHook', interval=20, log_metric_by_epoch=False),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=400, max_keep_ckpts=2,
                    save_last=True))
log_processor = dict(type='LogProcessor', window_size=20, by_epoch=False)
