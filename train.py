"""Train a task model with a chosen attention mechanism.

    python train.py --model vit --attention linformer                       # CIFAR-10, the default recipe
    python train.py --model imdb --attention performer --attention-opt features=128
    python train.py --model wikitext --attention linear --max-epochs 5
    python train.py --model wikitext --attention linear --ckpt-path last --generate "The history of"
    python train.py --config experiment.yaml --lr 3e-4                      # flags override the file

Runs land in lightning_logs/<model>-<attention>-<data source>/version_N/. `python train.py --help` lists
every flag; the machinery is in training/ (config, runner) and the recipes in models/tasks/registry.py.
"""
import sys

from training import main

if __name__ == "__main__":
    sys.exit(main())
