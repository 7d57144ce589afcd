"""The ``hf-ssl`` command.

    hf-ssl pretrain --config recipes/simclr_fashion_mnist_demo.yaml [section.key=value ...] [--resume auto]
    hf-ssl methods                          # the registered methods
    hf-ssl knn --model outputs/run --dataset fashion_mnist
    hf-ssl linear-probe --model outputs/run --dataset fashion_mnist
    hf-ssl push outputs/run --repo_id org/name [--private] [--backbone_only] [--token TOKEN]
    hf-ssl finetune --config recipes/finetune_fashion_mnist.yaml [section.key=value ...] [--resume auto|hub]

``pretrain`` runs any recipe (its ``method:`` key picks the method) on the engine its ``training.engine`` names;
under several processes: ``accelerate launch --config_file ... -m hf_ssl.commands.cli pretrain --config ...``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

COMMANDS = {
    "pretrain": "pretrain any registered method from a recipe (--config FILE; --help lists its keys)",
    "methods": "list the registered methods",
    "knn": "weighted k-NN accuracy of a trained model's frozen features",
    "linear-probe": "linear-probe accuracy of a trained model's frozen features",
    "finetune": "fine-tune a pretrained backbone for image classification (--config FILE; --help lists its keys)",
    "push": "upload a finished run's output directory (or its backbone alone) to the Hub; retries a failed push",
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        usage = (
            "usage: hf-ssl {"
            + ",".join(COMMANDS)
            + "} ...\n\n"
            + "\n".join(f"  {name:<14}{text}" for name, text in COMMANDS.items())
        )
        known = not argv or argv[0] in ("-h", "--help")
        print(
            usage if known else f"error: unknown command {argv[0]!r}\n{usage}",
            file=sys.stdout if known else sys.stderr,
        )
        return 0 if known else 2
    command, rest = argv[0], argv[1:]
    if command == "pretrain":
        from hf_ssl.commands.pretrain import main as pretrain

        return pretrain(rest, prog="hf-ssl pretrain")
    if command == "methods":
        from hf_ssl.training.methods import get_method, registered_methods

        for name in registered_methods():
            print(f"{name:<10}{get_method(name).summary}")
        return 0
    if command == "finetune":
        from hf_ssl.finetuning.run import main as finetune

        return finetune(rest, prog="hf-ssl finetune")
    if command == "push":
        from hf_ssl.training.sharing.hub import main as push

        return push(rest)
    if command == "linear-probe":
        from hf_ssl.evaluation.linear_probe import main as linear_probe

        linear_probe(rest, prog="hf-ssl linear-probe")
        return 0
    from hf_ssl.evaluation.knn import main as knn

    knn(rest, prog="hf-ssl knn")
    return 0


if __name__ == "__main__":
    sys.exit(main())
