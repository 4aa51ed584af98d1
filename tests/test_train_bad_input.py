"""Bad input to train.py: a table of cases, each ending with exit code 2, one line on stderr that starts with
`train.py: error:` and names the flag (or the setting and its file), the value and what is expected, no
traceback, nothing on stdout, and no log folder created. The cases cover every class the issue lists:
non-finite and out-of-range numbers, wrong types in flags and YAML, files that are not configs or
checkpoints, checkpoints of another model, attention or network, unusable log folders, devices, sizes that
cannot be built, and settings Lightning itself would refuse only once the data is loaded.

Cases run in-process through `training.runner.main` (the same function `python train.py` calls); a few run
as real `python train.py` subprocesses side by side, to check what a user sees on the terminal.
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from models.attention import get_attention, list_attentions
from training.cli import main
from training.runner import run
from training.tasks import list_tasks

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "train.py"
TINY_LM = ["--model", "wikitext", "--attention", "softmax", "--seq-len", "16", "--dim", "32", "--depth", "1",
           "--heads", "2", "--batch-size", "4", "--limit-train-batches", "2", "--limit-val-batches", "1",
           "--max-epochs", "1", "--data-source", "synthetic", "--accelerator", "cpu", "--no-progress-bar", "--no-test"]

pytestmark = pytest.mark.usefixtures("training_isolated")  # caches in tmp, process state restored (conftest)


@pytest.fixture(scope="module")
def lm_checkpoint(tmp_path_factory):
    """A real last.ckpt of a tiny wikitext/softmax run, for the checkpoint cases."""
    from conftest import isolated_training_state

    logdir = tmp_path_factory.mktemp("ckpt_run")
    with isolated_training_state(tmp_path_factory):
        run([*TINY_LM, "--logdir", str(logdir)])
    return next(logdir.rglob("last.ckpt"))


def cases(tmp: Path, ckpt: str):
    """name -> (argv, regexes the one-line message must match); files go under `tmp`."""
    files = {
        "lr.yaml": 'model: vit\nlr: "fast"\n', "epochs.yaml": 'model: vit\nmax_epochs: "3"\n',
        "det.yaml": 'model: vit\ndeterministic: "no"\n', "list.yaml": "- model\n- vit\n",
        "opts.yaml": "model: vit\nattention_options: 3\n", "betas.yaml": "model: vit\nbetas: [0.9]\n",
        "model.yaml": "model: 5\n", "unknown.yaml": "model: vit\nlearning_rate: 0.1\n", "text.txt": "not a checkpoint\n",
    }
    if tmp.is_dir():
        for name, text in files.items():
            (tmp / name).write_text(text)
        (tmp / "binary.yaml").write_bytes(bytes(range(256)) * 4)
    causal = [n for n in list_attentions() if get_attention(n).supports_causal]
    vit = ["--model", "vit"]
    return {
        # numbers: non-finite, out of range
        "lr nan": ([*vit, "--lr", "nan"], [r"--lr must be a finite number > 0, got nan"]),
        "lr negative": ([*vit, "--lr", "-1"], [r"--lr must be a finite number > 0, got -1"]),
        "lr inf": ([*vit, "--lr", "inf"], [r"--lr must be a finite number > 0, got inf"]),
        "dropout 1.5": ([*vit, "--dropout", "1.5"], [r"--dropout must be a number in \[0, 1\), got 1.5"]),
        "drop-path negative": ([*vit, "--drop-path", "-0.1"], [r"--drop-path must be a number in \[0, 1\), got -0.1"]),
        "label smoothing 2": ([*vit, "--label-smoothing", "2"], [r"--label-smoothing must be a number in \[0, 1\), got 2"]),
        "weight decay negative": ([*vit, "--weight-decay", "-0.1"], [r"--weight-decay must be .* >= 0, got -0.1"]),
        "warmup negative": ([*vit, "--warmup", "-0.5"], [r"--warmup must be a finite number >= 0, got -0.5"]),
        "clip negative": ([*vit, "--gradient-clip-val", "-1"], [r"--gradient-clip-val must be .* >= 0, got -1"]),
        "max-steps -5": ([*vit, "--max-steps", "-5"], [r"--max-steps must be a positive integer \(or -1 for no limit\), got -5"]),
        "max-steps 0": ([*vit, "--max-steps", "0"], [r"--max-steps must be a positive integer .*got 0"]),
        "max-epochs -1 alone": ([*vit, "--max-epochs", "-1"], [r"--max-epochs -1 \(no epoch limit\) needs --max-steps"]),
        "max-epochs 0": ([*vit, "--max-epochs", "0"], [r"--max-epochs must be a positive integer .*got 0"]),
        "limit-train -1": ([*vit, "--limit-train-batches", "-1"], [r"--limit-train-batches must be an integer >= 1 \(a count\) or a number in \(0, 1\] \(a fraction\), got -1"]),
        "limit-train 1.5": ([*vit, "--limit-train-batches", "1.5"], [r"--limit-train-batches must be .*got 1.5"]),
        "limit-val -2": ([*vit, "--limit-val-batches", "-2"], [r"--limit-val-batches must be an integer >= 0 .*got -2"]),
        "fast-dev-run -3": ([*vit, "--fast-dev-run", "-3"], [r"--fast-dev-run must be a number of batches >= 0, got -3"]),
        "accumulate 0": ([*vit, "--accumulate-grad-batches", "0"], [r"--accumulate-grad-batches must be a positive integer, got 0"]),
        "val-check 0": ([*vit, "--val-check-interval", "0"], [r"--val-check-interval must be an integer >= 1 .*got 0"]),
        "val-check beyond the epoch": ([*vit, "--limit-train-batches", "2", "--val-check-interval", "1000"],
                                       [r"--val-check-interval 1000 is more than the 2 training batches of an epoch"]),
        "log-every 0": ([*vit, "--log-every-n-steps", "0"], [r"--log-every-n-steps must be a positive integer, got 0"]),
        "seed -5": ([*vit, "--seed", "-5"], [r"--seed must be an integer in \[0, 4294967295\], got -5"]),
        "seed 2^32": ([*vit, "--seed", "4294967296"], [r"--seed must be .*got 4294967296"]),
        "batch size 0": ([*vit, "--batch-size", "0"], [r"--batch-size must be a positive integer, got 0"]),
        "workers -1": ([*vit, "--num-workers", "-1"], [r"--num-workers must be a non-negative integer, got -1"]),
        "dim 0": ([*vit, "--dim", "0"], [r"--dim must be a positive integer, got 0"]),
        "mlp ratio 0": ([*vit, "--mlp-ratio", "0"], [r"--mlp-ratio must be a finite number > 0, got 0"]),
        "hole fraction 2": (["--model", "inpaint-transformer", "--hole-fraction", "2"],
                            [r"--hole-fraction must be a number in \(0, 1\), got 2.0"]),
        # types and names on the command line
        "lr not a number": ([*vit, "--lr", "abc"], [r"argument --lr: invalid float value: 'abc' \(expected a number\)"]),
        "batch size 1.5": ([*vit, "--batch-size", "1.5"], [r"argument --batch-size: invalid int value: '1.5' \(expected an integer\)"]),
        "unknown flag": ([*vit, "--learning-rate", "0.1"], [r"unrecognized arguments: --learning-rate 0.1"]),
        "devices abc": ([*vit, "--devices", "abc"], [r"--devices must be 'auto', a device count .*got 'abc'"]),
        "devices 0": ([*vit, "--devices", "0"], [r"--devices must be .*got '0'"]),
        "precision 7": ([*vit, "--precision", "7"], [r"--precision must be one of .*32-true.*got '7'"]),
        "accelerator unknown": ([*vit, "--accelerator", "abacus"], [r"--accelerator must be one of auto, gpu, .*cpu.*got 'abacus'"]),
        "accelerator not installed": ([*vit, "--accelerator", "tpu"], [r"invalid trainer setting: .*torch_xla"]),
        "strategy unknown": ([*vit, "--strategy", "nonsense"], [r"invalid trainer setting: .*strategy='nonsense'"]),
        "profiler unknown": ([*vit, "--profiler", "fancy"], [r"--profiler must be one of simple, advanced, pytorch \(or null\), got 'fancy'"]),
        "data source unknown": ([*vit, "--data-source", "web"], [r"--data-source must be one of auto, generated, hub, local, synthetic, got 'web'"]),
        "unknown model": (["--model", "transformer-xl"], [r"unknown model 'transformer-xl'", r"choose one of: " + ", ".join(list_tasks())]),
        "unknown attention": ([*vit, "--attention", "flash"], [r"unknown attention 'flash'", r"known: " + ", ".join(list_attentions())]),
        "causal-incapable": (["--model", "wikitext", "--attention", "linformer"],
                             [r"--model wikitext is a causal language model", "linformer"] + [rf"\b{n}\b" for n in causal]),
        "attention-opt without =": ([*vit, "--attention", "performer", "--attention-opt", "features"],
                                    [r"--attention-opt 'features' is not KEY=VALUE"]),
        "attention-opt unknown key": ([*vit, "--attention", "performer", "--attention-opt", "feature=64"],
                                      [r"has no option 'feature'", r"its options are: .*features"]),
        "attention-opt bad value": ([*vit, "--attention", "performer", "--attention-opt", "features=-3"],
                                    [r"features must be a positive integer, got -3"]),
        "heads not dividing dim": ([*vit, "--dim", "32", "--heads", "3"], [r"heads must divide dim, got dim=32 and heads=3"]),
        "cnn with attention": (["--model", "inpaint-cnn", "--attention", "softmax"], [r"--model inpaint-cnn has no attention layer"]),
        "unknown mask": (["--model", "inpaint-cnn", "--mask", "circle"], [r"mask must be one of .*center.*got 'circle'"]),
        "unknown tokenizer": (["--model", "imdb", "--tokenizer", "chars"], [r"tokenizer must be one of bpe, byte"]),
        "another task's flag": ([*vit, "--mask", "boxes"], [r"--mask does not apply to --model vit"]),
        "unknown recipe": (["--model", "lra-text", "--recipe", "huge"], [r"--recipe must be one of small, paper for --model lra-text, got 'huge'"]),
        "recipe of a one-recipe task": ([*vit, "--recipe", "paper"], [r"--recipe does not apply to --model vit, which has one recipe"]),
        "unknown pooling": (["--model", "lra-text", "--pool", "max"], [r"--pool must be one of cls, mean, got 'max'"]),
        "unknown schedule": ([*vit, "--lr-schedule", "exp"], [r"--lr-schedule must be one of cosine, linear, rsqrt, got 'exp'"]),
        "unknown augment": ([*vit, "--augment", "heavy"], [r"augment must be one of .*strong.*got 'heavy'"]),
        # sizes that cannot be built
        "patch size 5": ([*vit, "--patch-size", "5"], [r"--model vit: image_size 32 is not a multiple of patch_size 5"]),
        "seq-len beyond the data": (["--model", "wikitext", "--seq-len", "1000000000"],
                                    [r"fewer than one block of seq_len \+ 1 = 1,000,000,001", r"lower seq_len"]),
        "dim beyond memory": ([*vit, "--dim", "4000000", "--heads", "1"],
                              [r"--attention softmax at --dim 4000000 does not fit in this machine's memory; lower --dim"]),
        # config files
        "missing config": (["--config", str(tmp / "nowhere.yaml")], [r"config file .*nowhere.yaml does not exist"]),
        "config unknown key": (["--config", str(tmp / "unknown.yaml")], [r"unknown setting\(s\) learning_rate", r"known settings: .*\blr\b"]),
        "yaml lr a string": (["--config", str(tmp / "lr.yaml")], [r"lr in .*lr.yaml must be a finite number > 0, got 'fast' \(a str\)"]),
        "yaml epochs a string": (["--config", str(tmp / "epochs.yaml")], [r"max_epochs in .*epochs.yaml must be a positive integer .*got '3' \(a str\)"]),
        "yaml quoted no": (["--config", str(tmp / "det.yaml")], [r"deterministic in .*det.yaml must be True or False, got 'no'"]),
        "yaml a list": (["--config", str(tmp / "list.yaml")], [r"config file .*list.yaml must hold a mapping of settings .*found list"]),
        "yaml options not a mapping": (["--config", str(tmp / "opts.yaml")], [r"attention_options in .*opts.yaml must be a mapping"]),
        "yaml betas": (["--config", str(tmp / "betas.yaml")], [r"betas in .*betas.yaml must be two numbers in \[0, 1\)"]),
        "yaml model a number": (["--config", str(tmp / "model.yaml")], [r"model in .*model.yaml must be a task name .*got 5"]),
        "binary config": (["--config", str(tmp / "binary.yaml")], [r"config file .*binary.yaml is not a text file"]),
        # checkpoints
        "missing checkpoint": ([*vit, "--ckpt-path", str(tmp / "gone.ckpt")], [r"checkpoint .*gone.ckpt does not exist"]),
        "checkpoint a folder": ([*vit, "--ckpt-path", str(tmp)], [r"checkpoint .* does not exist; pass a .ckpt file or 'last'"]),
        "checkpoint not a checkpoint": ([*vit, "--ckpt-path", str(tmp / "text.txt")], [r"checkpoint .*text.txt could not be read"]),
        "resume without a run": ([*vit, "--ckpt-path", "last"], [r"--ckpt-path last: no vit-", "train without --ckpt-path first"]),
        "checkpoint of another model": ([*vit, "--ckpt-path", ckpt],
                                        [r"checkpoint .*last.ckpt is a wikitext run with attention 'softmax', but --model vit was asked for"]),
        "checkpoint of another attention": (["--model", "wikitext", "--attention", "linear", "--ckpt-path", ckpt],
                                            [r"is a wikitext run with attention 'softmax', but --attention linear was asked for"]),
        "checkpoint of another width": (["--model", "wikitext", "--ckpt-path", ckpt, "--dim", "64"],
                                        [r"holds weights of another network shape .*dim 32 -> 64"]),
        "generate without a checkpoint": (["--model", "wikitext", "--generate", "The"], [r"--generate needs --ckpt-path"]),
        "generate temperature -1": (["--model", "wikitext", "--ckpt-path", ckpt, "--generate", "w1", "--temperature", "-1"],
                                    [r"--temperature must be a finite number >= 0 \(0 = greedy\), got -1"]),
        "generate top-k -1": (["--model", "wikitext", "--ckpt-path", ckpt, "--generate", "w1", "--top-k", "-1"],
                              [r"--top-k must be an integer >= 0, got -1"]),
        # log folders
        "logdir a file": ([*vit, "--logdir", str(tmp / "text.txt")], [r"--logdir .*text.txt is a file; pass a folder"]),
        "logdir under a file": ([*vit, "--logdir", str(tmp / "text.txt" / "runs")], [r"text.txt is a file, so the folder cannot be created"]),
        "logdir not writable": ([*vit, "--logdir", "/proc/attention-suite/runs"], [r"--logdir /proc/attention-suite/runs cannot be written"]),
        # studies
        "study seeds 0": ([*vit, "--attention", "softmax,linear", "--seeds", "0"], [r"--seeds must be >= 1, got 0"]),
    }


NAMES = list(cases(Path("/nonexistent-folder"), "x.ckpt"))


def test_the_table_is_large_enough():
    assert len(NAMES) >= 60


def check_usage_error(code, err, patterns, logdir):
    assert code == 2
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1, err
    assert lines[0].startswith("train.py: error: "), err
    assert "Traceback" not in err
    for pattern in patterns:
        assert re.search(pattern, lines[0]), (pattern, lines[0])
    assert not Path(logdir).exists(), "a rejected run must not create its log folder"


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_in_process(name, tmp_path, capsys, lm_checkpoint):
    argv, patterns = cases(tmp_path, str(lm_checkpoint))[name]
    logdir = tmp_path / "logs"
    extra = [] if "--logdir" in argv else ["--logdir", str(logdir)]
    code = main([*argv, *extra, "--data-source", "synthetic"] if "--data-source" not in argv else [*argv, *extra])
    out, err = capsys.readouterr()
    check_usage_error(code, err, patterns, logdir)
    assert out == ""


def test_a_full_disk_is_refused_before_anything_is_written(tmp_path, capsys, monkeypatch):
    free = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: free._replace(free=2**20))  # 1 MiB left
    logdir = tmp_path / "logs"
    code = main([*TINY_LM, "--logdir", str(logdir)])
    err = capsys.readouterr().err
    check_usage_error(code, err, [r"--logdir .* has 1 MiB free but this run's checkpoints need about \d+ MiB"], logdir)


def test_bad_input_from_the_command_line(tmp_path, lm_checkpoint):
    """What a user sees: `python train.py ...` exits 2 with one line on stderr (run side by side)."""
    table = cases(tmp_path, str(lm_checkpoint))
    procs = {}
    for name in ("unknown model", "causal-incapable", "lr nan", "binary config", "checkpoint of another model"):
        argv, patterns = table[name]
        logdir = tmp_path / name.replace(" ", "-")
        procs[name] = (patterns, logdir, subprocess.Popen(
            [sys.executable, str(TRAIN), *argv, "--logdir", str(logdir), "--data-source", "synthetic"],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ)))
    for patterns, logdir, p in procs.values():
        out, err = p.communicate(timeout=600)  # a hang guard, not a timing claim
        check_usage_error(p.returncode, err, patterns, logdir)
        assert out == ""
