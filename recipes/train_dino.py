"""Pretrain DINO (Caron et al., 2021) with the transformers Trainer or a raw Accelerate loop (training.engine).

    python recipes/train_dino.py --config recipes/dino_fashion_mnist_demo.yaml
    accelerate launch --config_file accelerate_configs/multi_gpu.yaml recipes/train_dino.py \\
        --config recipes/dino.yaml data.data_dir=/path/to/images --output_dir outputs/run1

Every key of the YAML file can be overridden as section.key=value (or --key value for a key only one
section has, e.g. --max_steps 100); --help lists them all. Checkpoints go to <output_dir>/checkpoint-<step>;
--resume auto continues from the latest (SIGTERM/SIGINT and training.max_time_seconds save one and stop).
The output directory receives the hf_ssl model (AutoModelForPreTraining / AutoModel), the teacher backbone
as a plain transformers model in backbone/, the image processor, the resolved recipe.yaml and a model card.
"""

import logging
import sys

import transformers
from transformers import set_seed

from hf_ssl import DinoForPretraining
from hf_ssl.data import MultiCropTransform, with_multicrop
from hf_ssl.evaluation import KnnEvaluator, subsample
from hf_ssl.models import build_image_processor
from hf_ssl.training import ConfigError, build_dino_trainer
from hf_ssl.training.checkpointing import CheckpointSaveError
from hf_ssl.training.cli import parse_command_line
from hf_ssl.training.dino_step import NonFiniteLossError
from hf_ssl.training.outputs import RunOutputError, save_run_outputs

logger = logging.getLogger("train_dino")


def main():
    recipe, resume = parse_command_line(description=__doc__)
    training_args = recipe.training
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO if training_args.should_log else logging.WARNING)
    transformers.utils.logging.set_verbosity_warning()
    set_seed(training_args.seed)

    # 1. data: decode + random resized crops on the CPU, per example, in DataLoader workers
    train_dataset, knn_splits = recipe.load_datasets()
    train_dataset = with_multicrop(train_dataset, MultiCropTransform(recipe.augmentation, recipe.data.skip_bad_images), seed=training_args.seed)

    # 2. model: student and teacher, or continue from a pretrained hf_ssl model
    model = recipe.build_model()
    image_processor = build_image_processor(
        model.config.backbone_config.model_type, recipe.evaluation_image_size, recipe.augmentation.mean, recipe.augmentation.std
    )

    # 3. k-NN on the labelled split, then the trainer
    results, evaluator, evaluation = {}, None, recipe.evaluation
    if knn_splits is not None:
        evaluator = KnnEvaluator(
            subsample(knn_splits[0], evaluation.knn_max_train_samples),
            subsample(knn_splits[1], evaluation.knn_max_eval_samples),
            image_processor,
            k=evaluation.knn_k,
            temperature=evaluation.knn_temperature,
            batch_size=evaluation.batch_size,
        )
    trainer = build_dino_trainer(  # DinoTrainer, or DinoAccelerateTrainer with training.engine=accelerate
        model=model, args=training_args, multicrop_config=recipe.augmentation, train_dataset=train_dataset,
        knn_evaluator=evaluator, knn_eval_steps=evaluation.knn_eval_steps, knn_at_end=evaluation.knn_at_end,
    )
    if evaluator is not None and evaluation.knn_at_start and trainer.is_world_process_zero():
        results["random_init"] = evaluator(model.teacher.backbone, device=training_args.device)
        logger.info("k-NN of the randomly initialised model: %s", results["random_init"])

    # 4. train, then save: the model first, then the backbone for plain transformers, processor, recipe, card
    trainer.train(resume_from_checkpoint=resume)
    output_dir = training_args.output_dir
    if trainer.run_control.stop_reason is not None and trainer.is_world_process_zero():
        print(f"Training {trainer.run_control.describe_stop()} at step {trainer.state.global_step}; "
              f"continue with --resume auto (checkpoints in {output_dir})")
    if trainer.last_knn_metrics:
        results["trained"] = trainer.last_knn_metrics

    def export_backbone(path):  # from the saved model: whole weights even when training sharded them (FSDP)
        DinoForPretraining.from_pretrained(output_dir).export_backbone(path, image_processor=image_processor)

    save_run_outputs(
        trainer, output_dir, image_processor=image_processor, recipe=recipe, knn_results=results,
        only_missing=trainer.finished_before_start, dataset=recipe.data.dataset, export_backbone=export_backbone,
    )
    if trainer.is_world_process_zero():
        for name, metrics in results.items():
            print(f"k-NN top-1 ({name.replace('_', ' ')}): {metrics['knn_top1']:.2f}%")
        print(f"Saved to {output_dir} (backbone for plain transformers in {output_dir}/backbone)")

    # 5. share (every process: the Trainer gathers sharded weights), then report a k-NN evaluation that failed
    if training_args.push_to_hub:
        try:
            trainer.push_to_hub(dataset=recipe.data.dataset)
        except Exception as error:
            raise RunOutputError("push", output_dir, error, trainer.state.global_step) from error
    if trainer.knn_error is not None and trainer.is_world_process_zero():
        raise RunOutputError("knn", output_dir, RuntimeError(trainer.knn_error), trainer.state.global_step)


if __name__ == "__main__":
    try:
        main()
    except ConfigError as error:  # a bad recipe, override, resume path or dataset: say what to fix, no traceback
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except (NonFiniteLossError, CheckpointSaveError, RunOutputError) as error:  # the message says what is saved where
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
