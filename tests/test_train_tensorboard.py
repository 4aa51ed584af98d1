"""What a short train.py run writes to TensorBoard, read back with TensorBoard's own reader (EventAccumulator
over the version folder: the fit's and the test's event files).

Scalars: train/loss_step (every step with --log-every-n-steps 1), the task's epoch metrics for train / val /
test, the learning rate per parameter group (lr-AdamW/pg1, pg2: decayed and not decayed). Images:
val/attention_maps for a mechanism that has weights (a labelled figure, a panel per layer and head, one colour bar), none for one that
has not (linformer); val/inpainting for the inpainting tasks. Text: val/sample for the language model.
"""

import io

import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from training.runner import run

STEPS = 3
SMALL = ["--dim", "32", "--depth", "1", "--heads", "2"]
SHORT = ["--batch-size", "8", "--limit-train-batches", str(STEPS), "--limit-val-batches", "2", "--limit-test-batches", "2",
         "--max-epochs", "1", "--log-every-n-steps", "1", "--data-source", "synthetic", "--accelerator", "cpu",
         "--no-progress-bar"]
METRICS = {"vit": ["acc", "top5_acc"], "imdb": ["acc", "f1"], "wikitext": ["ppl", "bits_per_token"],
           "inpaint-cnn": ["psnr", "ssim"], "inpaint-transformer": ["psnr", "ssim"]}


pytestmark = pytest.mark.usefixtures("training_isolated")  # caches in tmp, process state restored (conftest)

def logged(tmp_path, model, *argv):
    """Run, then load every event file of the run's version folder."""
    r = run(["--model", model, *argv, *SHORT, "--logdir", str(tmp_path / "logs")])
    ea = EventAccumulator(r["log_dir"], size_guidance={"images": 0, "tensors": 0, "scalars": 0})
    ea.Reload()
    return r, ea


def check_scalars(ea, model):
    scalars = set(ea.Tags()["scalars"])
    expected = {"train/loss_step", "train/loss_epoch", "val/loss", "test/loss", "lr-AdamW/pg1", "lr-AdamW/pg2"}
    for stage in ("train", "val", "test"):
        expected |= {f"{stage}/{m}" for m in METRICS[model]}
    assert expected <= scalars, expected - scalars
    steps = [e.step for e in ea.Scalars("train/loss_step")]
    assert steps == list(range(STEPS))
    assert [e.step for e in ea.Scalars("lr-AdamW/pg1")] == list(range(STEPS))
    assert all(e.value > 0 for e in ea.Scalars("lr-AdamW/pg1"))
    assert len(ea.Scalars("val/loss")) == 1 and len(ea.Scalars("test/loss")) == 1  # no sanity-check values logged


def test_language_model_scalars_attention_maps_and_sample(tmp_path):
    n = 16
    r, ea = logged(tmp_path, "wikitext", "--attention", "softmax", "--seq-len", str(n), *SMALL)
    check_scalars(ea, "wikitext")
    tags = ea.Tags()
    assert tags["images"] == ["val/attention_maps"]
    (image,) = ea.Images("val/attention_maps")  # once: after the one validation epoch (not the sanity check)
    assert image.height >= 200 and image.width >= 200  # a labelled figure (1 layer x 2 heads, colour bar), not a strip
    assert image.encoded_image_string.startswith(b"\x89PNG")
    assert Image.open(io.BytesIO(image.encoded_image_string)).mode == "RGB"  # 3 channels
    assert image.step == STEPS
    assert "val/sample/text_summary" in tags["tensors"]
    (sample,) = ea.Tensors("val/sample/text_summary")
    text = sample.tensor_proto.string_val[0].decode()
    assert text.startswith("**The** ") and len(text.split()) > 10  # the prompt, then the sampled words


def test_classifier_without_attention_weights_logs_no_maps(tmp_path):
    """Linformer cannot give an n x n matrix: no attention_maps image, and the run does not fail."""
    r, ea = logged(tmp_path, "vit", "--attention", "linformer", "--image-size", "16", *SMALL)
    check_scalars(ea, "vit")
    assert ea.Tags()["images"] == []
    assert r["test"] and r["steps"] == STEPS


def test_classifier_with_weights_logs_maps(tmp_path):
    r, ea = logged(tmp_path, "imdb", "--attention", "nystromformer", "--tokenizer", "byte", "--seq-len", "16", *SMALL)
    check_scalars(ea, "imdb")
    assert ea.Tags()["images"] == ["val/attention_maps"]


def test_inpainting_images(tmp_path):
    r, ea = logged(tmp_path, "inpaint-transformer", "--attention", "local", "--image-size", "16", "--patch-size", "4", *SMALL)
    check_scalars(ea, "inpaint-transformer")
    assert sorted(ea.Tags()["images"]) == ["val/attention_maps", "val/inpainting"]
    (grid,) = ea.Images("val/inpainting")
    pad, size, shown = 2, 16, 8  # rows masked / predicted / target of the first 8 validation images
    assert (grid.height, grid.width) == (3 * (size + pad) + pad, shown * (size + pad) + pad)


def test_inpainting_cnn_has_no_attention_maps(tmp_path):
    r, ea = logged(tmp_path, "inpaint-cnn", "--image-size", "16", "--base-width", "8", "--levels", "2")
    check_scalars(ea, "inpaint-cnn")
    assert ea.Tags()["images"] == ["val/inpainting"]
