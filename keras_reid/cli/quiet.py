"""Keep TensorFlow's native start-up noise out of the command line's output.

TensorFlow's C++ side writes lines such as ``Could not find cuda drivers on your machine`` and
``failed call to cuInit`` straight to file descriptor 2 before Python's logging exists, so
``TF_CPP_MIN_LOG_LEVEL`` cannot silence them. On a CPU machine they look like errors and are
not. :func:`filter_native_stderr` puts a pipe in front of descriptor 2 and drops only those
known lines; everything else (progress bars included, without waiting for a newline) passes
through unchanged. ``KERAS_REID_TF_LOGS=1`` turns the filter off.
"""
from __future__ import annotations

import atexit
import os
import re
import sys
import threading

NOISE = re.compile(
    rb"^(?:WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rb"|[IWE]\d{4} [\d:.]+\s+\d+ (?:cudart_stub|cuda_platform|cuda_executor|cuda_diagnostics|"
    rb"cpu_feature_guard|cuda_dnn|cuda_fft|cuda_blas|port)\.cc:\d+\] .*"
    rb"|E\d{4} [\d:.]+\s+\d+ meta_optimizer\.cc:\d+\] remapper failed: INVALID_ARGUMENT: "
    rb"Mutation::Apply error: fanout '[^']*' exist for missing node '[^']*'\."
    rb"|To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler flags\."
    rb"|INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.)"
    rb"\r?\n$")
"""Lines dropped: absl's pre-initialisation banner, TensorFlow's CUDA/CPU-feature start-up notes,
the TFLite interpreter's XNNPACK notice (``keras-reid export --format tflite``) and Grappler's
"remapper failed ... fanout ... exist for missing node" (a known TensorFlow bug when a fused
Conv2D + BiasAdd + activation's BiasAdd has another consumer, e.g. pix2pix's U-Net skips and
LeakyReLU gradients: the remapper skips that graph, which then runs as written; every other
Grappler error is kept)."""

_PREFIXES = (b"WARNING: All log messages", b"I0", b"W0", b"E0", b"I1", b"W1", b"E1",
             b"To enable the following", b"INFO: Created TensorFlow Lite")


def _may_be_noise(partial: bytes) -> bool:
    """Whether an unfinished line could still turn out to be a dropped one."""
    return any(p.startswith(partial[:len(p)]) for p in _PREFIXES)


class StderrFilter:
    """Splits the byte stream of descriptor 2 into lines, drops the noise, forwards the rest.
    ``feed(chunk)`` returns the bytes to forward now; ``flush()`` whatever is held back."""

    def __init__(self) -> None:
        self.buf = b""
        self.passthrough = False

    def feed(self, chunk: bytes) -> bytes:
        """Bytes of ``chunk`` (and earlier held bytes) that are not noise and can be written."""
        self.buf += chunk
        out = []
        while self.buf:
            nl = self.buf.find(b"\n")
            if self.passthrough:   # a line already forwarded in part ends at \n or \r (progress bars)
                ends = [i for i in (nl, self.buf.find(b"\r")) if i >= 0]
                nl = min(ends) if ends else -1
                if nl < 0:
                    out.append(self.buf)
                    self.buf = b""
                    break
                out.append(self.buf[:nl + 1])
                self.buf = self.buf[nl + 1:]
                self.passthrough = False
                continue
            if nl < 0:
                if not _may_be_noise(self.buf):
                    cr = self.buf.rfind(b"\r")
                    if 0 <= cr < len(self.buf) - 1:   # a finished progress update, then more
                        out.append(self.buf[:cr + 1])
                        self.buf = self.buf[cr + 1:]
                        continue
                    out.append(self.buf)
                    self.passthrough = cr < 0       # a line ending in \r is finished
                    self.buf = b""
                break
            line, self.buf = self.buf[:nl + 1], self.buf[nl + 1:]
            if not NOISE.match(line):
                out.append(line)
        return b"".join(out)

    def flush(self) -> bytes:
        """What is still held back (an unfinished line)."""
        rest, self.buf = self.buf, b""
        return rest


def filter_native_stderr() -> None:
    """Route descriptor 2 through :class:`StderrFilter` for the rest of the process (no-op when
    ``KERAS_REID_TF_LOGS`` is set or stderr is not a real descriptor)."""
    if os.environ.get("KERAS_REID_TF_LOGS"):
        return
    try:
        sys.stderr.flush()
        real = os.dup(2)
    except (OSError, ValueError):
        return
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    filt = StderrFilter()

    def pump() -> None:
        while True:
            try:
                chunk = os.read(read_end, 65536)
            except OSError:
                break
            if not chunk:
                break
            data = filt.feed(chunk)
            if data:
                os.write(real, data)
        rest = filt.flush()
        if rest:
            os.write(real, rest)

    thread = threading.Thread(target=pump, name="keras-reid-stderr", daemon=True)
    thread.start()

    def restore() -> None:
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(real, 2)          # closes this process's last handle on the pipe's write end
        thread.join(timeout=2.0)

    atexit.register(restore)
