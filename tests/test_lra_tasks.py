"""The LRA tasks through train.py: the issue's "done" case (a user with no network and no set-up trains
ListOps and Pathfinder on generated data; Text and Image on the IMDB and CIFAR-10 copies, when present),
Path-X's full 16,384 tokens with a linear-time mechanism, and the two recipes. The every-mechanism
fast-dev-run matrix over all tasks is in test_train_cli.py."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from training.cli import main
from training.config import build_parser, resolve_config

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--dim", "16", "--depth", "1", "--heads", "2", "--batch-size", "2", "--fast-dev-run", "--accelerator", "cpu",
        "--no-progress-bar"]

pytestmark = pytest.mark.usefixtures("training_isolated")  # caches in tmp, process state restored (conftest)


def test_a_new_user_trains_generated_pathfinder_with_no_flags(tmp_path):
    """`python train.py --model lra-pathfinder --attention linformer` offline, with no data flags: the generated
    source, as the summary line says (images are made on the fly, so nothing large is generated first)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    p = subprocess.run([sys.executable, str(ROOT / "train.py"), "--model", "lra-pathfinder", "--attention", "linformer",
                        *TINY], cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "lra-pathfinder-linformer-generated: test/acc" in p.stdout


def test_listops_auto_is_the_generator(tmp_path, capsys):
    code = main(["--model", "lra-listops", "--attention", "linformer", *TINY, "--logdir", str(tmp_path)])
    assert code == 0 and "lra-listops-linformer-generated: test/acc" in capsys.readouterr().out


@pytest.mark.parametrize("model, folder", [("lra-text", "imdb"), ("lra-image", "cifar10-jpg")])
def test_text_and_image_on_the_real_copies(model, folder, shared_data, tmp_path, capsys):
    code = main(["--model", model, "--attention", "linear", "--data-dir", str(shared_data / folder), *TINY,
                 "--logdir", str(tmp_path)])
    assert code == 0 and f"{model}-linear-local: test/acc" in capsys.readouterr().out


def test_pathx_runs_its_16k_tokens_with_a_linear_time_mechanism(tmp_path, capsys):
    code = main(["--model", "lra-pathx", "--attention", "linear", "--data-source", "synthetic", *TINY,
                 "--logdir", str(tmp_path)])
    assert code == 0 and "lra-pathx-linear-synthetic: test/acc" in capsys.readouterr().out


def resolved(*argv):
    return resolve_config(build_parser().parse_args(list(argv)))


def test_recipes_select_their_settings():
    small, paper = resolved("--model", "lra-listops"), resolved("--model", "lra-listops", "--recipe", "paper")
    assert small["recipe"] == "small" and (small["dim"], small["depth"], small["pool"]) == (64, 2, "mean")
    assert paper["recipe"] == "paper" and (paper["dim"], paper["depth"], paper["heads"], paper["pool"]) == (512, 4, 8, "cls")
    assert paper["lr_schedule"] == "rsqrt" and paper["lr"] == 0.05
    assert resolved("--model", "lra-listops", "--recipe", "paper", "--dim", "128")["dim"] == 128  # flags still win
    assert resolved("--model", "lra-pathx")["resolution"] == 128 and resolved("--model", "lra-pathfinder")["resolution"] == 32


def test_a_resumed_run_keeps_its_recipe(tmp_path):
    saved = resolved("--model", "lra-text", "--recipe", "paper")
    again = resolve_config(build_parser().parse_args(["--model", "lra-text"]), saved)
    assert again["recipe"] == "paper" and again["seq_len"] == 1000
