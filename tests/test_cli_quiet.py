"""TensorFlow's native start-up noise is dropped from the command line's stderr; nothing else is."""
import subprocess
import sys

from keras_reid.cli.quiet import StderrFilter

NOISE = [
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
    b"I0000 00:00:1795965586.598928    1401 cudart_stub.cc:31] Could not find cuda drivers on your "
    b"machine, GPU will not be used.\n",
    b"E0000 00:00:1795965605.055911    1401 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA "
    b"error: Failed call to cuInit: UNKNOWN ERROR (303)\n",
    b"To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with the "
    b"appropriate compiler flags.\n",
    b"E0000 00:00:1796057654.952810    4652 meta_optimizer.cc:967] remapper failed: INVALID_ARGUMENT: "
    b"Mutation::Apply error: fanout 'unet_generator_1/up0_skip_1/concat' exist for missing node "
    b"'unet_generator_1/down0_conv_1/BiasAdd'.\n",
]


def test_filter_drops_noise_and_keeps_everything_else_byte_for_byte():
    keep = [b"error: datasets.market.root: /x does not exist\n", b"E0000 is not a TF line\n",
            b"E0000 00:00:1796057654.9 4652 meta_optimizer.cc:967] remapper failed: INVALID_ARGUMENT: "
            b"MutableGraphView::MutableGraphView error: node 'x' has self cycle fanin 'x'.\n",
            b"synthesising:  12%|##   | 80/718\r", b"synthesising:  13%|##   | 90/718\r", b"done\n"]
    stream = b"".join(NOISE[:2] + keep[:2] + NOISE[2:] + keep[2:])
    f = StderrFilter()
    out = b"".join(f.feed(stream[i:i + 7]) for i in range(0, len(stream), 7)) + f.flush()
    assert out == b"".join(keep)


def test_a_progress_bar_passes_without_waiting_for_a_newline():
    f = StderrFilter()
    assert f.feed(b"335/335 - 0s\r") == b"335/335 - 0s\r"
    assert f.feed(b"I0000 00:00:1.2 ") == b""          # could still be noise: held back
    assert f.flush() == b"I0000 00:00:1.2 "


def test_the_console_script_path_filters_descriptor_2_of_the_process():
    code = ("import os, sys\nfrom keras_reid.cli.quiet import filter_native_stderr\n"
            "filter_native_stderr()\n"
            + "".join(f"os.write(2, {line!r})\n" for line in NOISE)
            + "os.write(2, b'kept\\n')\nsys.stderr.write('python\\n')\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True)
    assert res.stderr == b"kept\npython\n"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True,
                         env={**__import__("os").environ, "KERAS_REID_TF_LOGS": "1"})
    assert res.stderr.startswith(NOISE[0])
