"""Pretrain DINO (Caron et al., 2021) with the transformers Trainer or a raw Accelerate loop (training.engine).

    python recipes/train_dino.py --config recipes/dino_fashion_mnist_demo.yaml
    accelerate launch --config_file accelerate_configs/multi_gpu.yaml recipes/train_dino.py \
        --config recipes/dino.yaml data.data_dir=/path/to/images training.output_dir=outputs/run1

Every key of the YAML file can be overridden as section.key=value. Checkpoints go to
<output_dir>/checkpoint-<step>; --resume auto continues from the latest (SIGTERM/SIGINT and
training.max_time_seconds save one and stop). The output directory receives
the hf_ssl model (AutoModelForPreTraining / AutoModel), the teacher backbone as a plain transformers
model in backbone/, the image processor, the resolved recipe.yaml and a model card.
"""

import argparse
import json
import logging
import sys

import transformers
from transformers import set_seed

from hf_ssl import DinoForPretraining
from hf_ssl.data import MultiCropTransform, with_multicrop
from hf_ssl.evaluation import KnnEvaluator, subsample
from hf_ssl.models import build_image_processor
from hf_ssl.training import ConfigError, DinoRecipe, build_dino_trainer

logger = logging.getLogger("train_dino")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="Recipe YAML file.")
    parser.add_argument("--resume", default=None, help="Checkpoint folder to resume from, or 'auto' for the latest in the output dir.")
    args, overrides = parser.parse_known_args()
    recipe = DinoRecipe.from_yaml(args.config, overrides)
    training_args = recipe.training
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO if training_args.should_log else logging.WARNING)
    transformers.utils.logging.set_verbosity_warning()
    set_seed(training_args.seed)

    # 1. data: decode + random resized crops on the CPU, per example, in DataLoader workers
    train_dataset, knn_splits = recipe.load_datasets()
    train_dataset = with_multicrop(train_dataset, MultiCropTransform(recipe.augmentation, recipe.data.skip_bad_images), seed=training_args.seed)

    # 2. model: student and teacher, or continue from a pretrained hf_ssl checkpoint
    pretrained = recipe.model.get("pretrained_model_name_or_path")
    model = DinoForPretraining.from_pretrained(pretrained) if pretrained else DinoForPretraining(recipe.build_model_config())
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

    # 4. train, save (hf_ssl model + plain transformers backbone + processor + recipe)
    trainer.train(resume_from_checkpoint=args.resume)
    if trainer.run_control.stop_reason is not None and trainer.is_world_process_zero():
        print(f"Training {trainer.run_control.describe_stop()} at step {trainer.state.global_step}; "
              f"continue with --resume auto (checkpoints in {training_args.output_dir})")
    if trainer.last_knn_metrics:
        results["trained"] = trainer.last_knn_metrics
    trainer.save_model()
    if trainer.is_world_process_zero():
        image_processor.save_pretrained(training_args.output_dir)
        # from the saved model: whole weights even when training sharded them (FSDP)
        saved = DinoForPretraining.from_pretrained(training_args.output_dir)
        saved.export_backbone(f"{training_args.output_dir}/backbone", image_processor=image_processor)
        recipe.save(training_args.output_dir)
        trainer.create_model_card(dataset=recipe.data.dataset)
        with open(f"{training_args.output_dir}/knn_results.json", "w") as handle:
            json.dump(results, handle, indent=2)
        for name, metrics in results.items():
            print(f"k-NN top-1 ({name.replace('_', ' ')}): {metrics['knn_top1']:.2f}%")
        print(f"Saved to {training_args.output_dir} (backbone for plain transformers in {training_args.output_dir}/backbone)")

    # 5. share
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset=recipe.data.dataset)


if __name__ == "__main__":
    try:
        main()
    except ConfigError as error:  # a bad recipe, override or resume path: say what to fix, no traceback
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
