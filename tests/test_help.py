"""`python train.py --help`: parsed before torch and Lightning are imported (checked in a subprocess through
sys.modules, not by the clock), grouped, with a task's recipe defaults when --model is given; the lists it
writes out so as not to import them (precisions, data sources, poolings, mechanisms) equal the real ones."""
import os
import subprocess
import sys
import typing
from pathlib import Path

from training.cli import main
from training.flags import DATA_SOURCES, GROUPS, PRECISIONS, attention_names, build_parser, help_requested
from training.recipes import POOLS, RECIPES

ROOT = Path(__file__).resolve().parents[1]


def help_in_subprocess(*argv):
    """train.py run as __main__ with --help; prints the help, then the heavy modules that were imported."""
    code = ("import runpy, sys\n"
            f"sys.argv = ['train.py', *{list(argv)!r}]\n"
            "try:\n"
            f"    runpy.run_path({str(ROOT / 'train.py')!r}, run_name='__main__')\n"
            "except SystemExit as e:\n"
            "    assert e.code in (0, None), e.code\n"
            "print('IMPORTED', sorted(m for m in ('torch', 'lightning', 'numpy', 'models', 'datamodules') "
            "if m in sys.modules))\n")
    env = {**os.environ, "COLUMNS": "250"}  # argparse wraps at the terminal's width: one line per help text
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_help_imports_neither_torch_nor_lightning():
    out = help_in_subprocess("--help")
    assert out.rstrip().endswith("IMPORTED []")
    for group in GROUPS:
        assert f"\n{group}:\n" in out, group
    assert "--max-steps" in out and "--attention-opt" in out and "--verbose" in out


def test_help_with_a_model_shows_its_recipe_and_only_its_flags():
    vit = help_in_subprocess("--model", "vit", "--help")
    assert vit.rstrip().endswith("IMPORTED []")
    assert "[vit: 256]" in vit and "[vit: 200]" in vit  # --dim, --max-epochs of the ViT recipe
    assert "--vocab-size" not in vit and "--mask" not in vit  # IMDB's and inpainting's own flags
    imdb = help_in_subprocess("--model=imdb", "-h")
    assert "--vocab-size" in imdb and "[imdb: 16000]" in imdb
    lra = help_in_subprocess("--model", "lra-text", "--help")
    assert "recipe (small)" in lra and "[lra-text: 4096]" in lra  # the default named recipe's sequence length


def test_help_through_main_and_what_counts_as_asking(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    assert main(["--model", "wikitext", "--help"]) == 0
    assert "[wikitext: 256]" in capsys.readouterr().out
    assert help_requested(["-h"]) and help_requested(["--model", "vit", "--help"])
    assert not help_requested(["--generate", "x", "--", "--help"])  # after --, a value


def test_written_out_lists_equal_the_real_ones():
    from lightning.fabric.connector import _PRECISION_INPUT_STR

    from datamodules.common import DATA_SOURCES as REAL_SOURCES
    from models.attention import list_attentions
    from models.lra import POOLS as REAL_POOLS
    from training.tasks import get_task, list_tasks

    assert set(PRECISIONS) == set(typing.get_args(_PRECISION_INPUT_STR))
    assert DATA_SOURCES == REAL_SOURCES
    assert POOLS == REAL_POOLS
    assert attention_names() == list_attentions()
    assert list_tasks() == sorted(RECIPES) and all(get_task(n).spec is RECIPES[n] for n in RECIPES)


def test_parser_groups_every_flag():
    p = build_parser()
    titled = {a.dest for g in p._action_groups if g.title in GROUPS for a in g._group_actions}
    flags = {a.dest for a in p._actions if a.dest != "help"}
    assert flags == titled, flags - titled
