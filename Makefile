# rambo_mmdet: entry points. Everything runs in the project environment built by
# tools/setup_env.sh (default .venv at the repo root; RAMBO_VENV=/path overrides it).
#
#   make demo               build the env if needed, then run the demo (tools/demo.sh)
#   make test               build the env if needed, then: $(VENV)/bin/python -m pytest -q tests
#   make env                build / refresh the env only (idempotent: seconds when up to date)
#   make pretrained         classification-pretrain the FashionDet backbone
#                           (tools/pretrain_backbone.py -> data/pretrained/resnet18_half_fashion.pth;
#                           ~6.5 min once, seconds when up to date)
#   make benchmark-loss     $(VENV)/bin/python tools/benchmark_loss.py --scale (100k to 100M
#                           scores; -> results/benchmark_loss/<device>.{json,md}; ~10 min)
#   make benchmark-quality  tools/benchmark_quality.py, 2 runs at a time: the Faster R-CNN twins at
#                           1500 iterations (-> results/quality/) and the RetinaNet twins at 4500
#                           (-> results/quality_long/; at 1500 focal stays below AP50 40), 3 seeds
#                           each, then the README's results table (~4 h on 2 cores)
#   make benchmark-quality-atss  the ATSS twins (stock ATSSHead + focal vs RaMBOATSSHead + the
#                           shipped dense-head loss), the RetinaNet twins' 4500-iteration schedule,
#                           seeds 0-2 (-> results/quality_atss/; ~50 min on 2 cores)
#   make benchmark-quality-fcos  the same for FCOS (stock FCOSHead + focal vs RaMBOFCOSHead)
#                           (-> results/quality_fcos/; ~50 min on 2 cores)
#   make benchmark-quality-sgd  the same twins with SGD (momentum 0.9, weight decay 1e-4; lr 0.02
#                           Faster R-CNN, 0.01 RetinaNet / ATSS / FCOS, FCOS's biases at 2x lr
#                           without decay: mmdet's COCO values, which the shipped COCO / VOC
#                           configs inherit; the RaMBO Faster R-CNN with the SGD box-head loss
#                           of those configs), seeds 0-2 of every twin
#                           (-> results/quality_sgd/; ~3.5 h on 2 cores)
#   make mutation           mutation testing (mutmut, tools/mutation.py) of rambo_mmdet/ranking/
#                           (every mutant) and rambo_mmdet/models/ (a 1-in-5 sample), on a
#                           temporary copy of the tree -> results/mutation.{json,md}; NOT in CI:
#                           ~1.5 h on the 2-core machine (ranking ~75 min, models sample ~12 min)
#   make clean-env          delete the env
#
# `make test` fails exactly when pytest exits non-zero, including exit 5 ("no tests collected");
# make then prints pytest's status ("make: *** [Makefile:..: test] Error 5") and exits 2.

VENV := $(if $(RAMBO_VENV),$(RAMBO_VENV),.venv)
PYTHON := $(VENV)/bin/python

.PHONY: env test demo pretrained benchmark-loss benchmark-quality benchmark-quality-atss \
	benchmark-quality-fcos benchmark-quality-sgd mutation clean-env

env:
	bash tools/setup_env.sh

test: env
	$(PYTHON) -m pytest -q tests

demo: env
	@if [ -f tools/demo.sh ]; then \
		bash tools/demo.sh; \
	else \
		echo "make demo: the demo is not yet available (tools/demo.sh does not exist yet)"; \
	fi

pretrained: env
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PYTHON) tools/pretrain_backbone.py

benchmark-loss:
	$(PYTHON) tools/benchmark_loss.py --scale

benchmark-quality:
	$(PYTHON) tools/benchmark_quality.py --detectors faster_rcnn --jobs 2
	$(PYTHON) tools/benchmark_quality.py --detectors retinanet --iters 4500 \
		--work-root work_dirs/quality_long --out-dir results/quality_long --extra-arms --jobs 2
	$(PYTHON) tools/results_table.py --readme README.md

benchmark-quality-atss:
	$(PYTHON) tools/benchmark_quality.py --detectors atss --iters 4500 \
		--work-root work_dirs/atss --out-dir results/quality_atss --extra-arms --jobs 2
	$(PYTHON) tools/results_table.py --readme README.md

benchmark-quality-fcos:
	$(PYTHON) tools/benchmark_quality.py --detectors fcos --iters 4500 \
		--work-root work_dirs/fcos --out-dir results/quality_fcos --extra-arms --jobs 2
	$(PYTHON) tools/results_table.py --readme README.md

SGD := optim_wrapper.optimizer.type=SGD optim_wrapper.optimizer.momentum=0.9 \
	optim_wrapper.optimizer.weight_decay=0.0001
# mmdet's FCOS recipe (fcos_r50-caffe_fpn_gn-head_1x_coco.py): biases at twice the lr, no decay
FCOS_BIAS := optim_wrapper.paramwise_cfg.bias_lr_mult=2.0 \
	optim_wrapper.paramwise_cfg.bias_decay_mult=0.0

benchmark-quality-sgd:
	$(PYTHON) tools/benchmark_quality.py --detectors faster_rcnn --seeds 0 1 2 --extra-arms --jobs 2 \
		--work-root work_dirs/quality_sgd --out-dir results/quality_sgd/faster_rcnn \
		--cfg-options $(SGD) optim_wrapper.optimizer.lr=0.02 \
		--rambo-cfg-options model.roi_head.bbox_head.loss_cls.cross_entropy=softmax
	$(PYTHON) tools/benchmark_quality.py --detectors retinanet --seeds 0 1 2 --iters 4500 --extra-arms \
		--jobs 2 --work-root work_dirs/quality_sgd --out-dir results/quality_sgd/retinanet \
		--cfg-options $(SGD) optim_wrapper.optimizer.lr=0.01
	$(PYTHON) tools/benchmark_quality.py --detectors atss --seeds 0 1 2 --iters 4500 --extra-arms \
		--jobs 2 --work-root work_dirs/quality_sgd_atss --out-dir results/quality_sgd/atss \
		--cfg-options $(SGD) optim_wrapper.optimizer.lr=0.01
	$(PYTHON) tools/benchmark_quality.py --detectors fcos --seeds 0 1 2 --iters 4500 --extra-arms \
		--jobs 2 --work-root work_dirs/quality_sgd_fcos --out-dir results/quality_sgd/fcos \
		--cfg-options $(SGD) optim_wrapper.optimizer.lr=0.01 $(FCOS_BIAS)
	$(PYTHON) tools/results_table.py --readme README.md

mutation: env
	$(PYTHON) tools/mutation.py

clean-env:
	rm -rf -- "$(VENV)"
