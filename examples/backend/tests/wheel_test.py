"""Test one variant's artifact as a user gets it: run with the wheel installed in a fresh
venv and no LD_LIBRARY_PATH, load the library and call each function through its C API.

    python wheel_test.py DEVICE      (cpu, mkl or cu130; exits non-zero on a wrong answer)
"""

import ctypes
import os
import sys

import mxbackend

device = sys.argv[1]
assert "LD_LIBRARY_PATH" not in os.environ
lib = mxbackend.load()
failures = []


def check(ok, what):
    print(f"{'ok' if ok else 'FAILED':8} {what}")
    if not ok:
        failures.append(what)


lib.bk_device.restype = ctypes.c_char_p
check(lib.bk_device().decode() == device, f"variant is {device}")

Floats = ctypes.c_float * 6
c = (ctypes.c_float * 4)()
lib.bk_gemm(Floats(1, 2, 3, 4, 5, 6), Floats(7, 8, 9, 10, 11, 12), c, 2, 3, 2)
check(list(c) == [58, 64, 139, 154], "BLAS sgemm 2x3 * 3x2")

worst = lib.bk_jpeg_roundtrip(32, 16)
check(0 <= worst < 16, f"JPEG encode + decode 32x16 (largest error {worst})")

grey = (ctypes.c_ubyte * (32 * 16))(*[(i % 32) * 8 for i in range(32 * 16)])
small = (ctypes.c_ubyte * (16 * 8))()
# A 2x bilinear downscale of the gradient 0, 8, 16, ... averages neighbours: 4, 20, 36, ...
check(lib.bk_resize(grey, 32, 16, small, 16, 8) == 0 and list(small[:16]) == [4 + 16 * i for i in range(16)],
      "OpenCV resize to 16x8")

lib.bk_tensor_roundtrip.restype = ctypes.c_long
check(lib.bk_tensor_roundtrip((ctypes.c_long * 3)(2, 3, 4), 3, b"weights") == 24, "protobuf Tensor round trip")

act = (ctypes.c_float * 4)(-1.0, 0.5, -2.0, 3.0)
if lib.bk_relu(act, 4):
    check(list(act) == [0.0, 0.5, 0.0, 3.0], "oneDNN ReLU")
else:
    check(device != "mkl", "oneDNN ReLU (not in this variant)")

lib.bk_saxpy.restype = ctypes.c_char_p
lib.bk_saxpy.argtypes = [ctypes.c_float, ctypes.POINTER(ctypes.c_float), ctypes.POINTER(ctypes.c_float), ctypes.c_int]
x, y = (ctypes.c_float * 3)(1, 2, 3), (ctypes.c_float * 3)(10, 20, 30)
why = lib.bk_saxpy(2.0, x, y, 3).decode()
if why:
    print(f"{'-':8} CUDA saxpy ({why})")
    check(device != "cu130" or "device" in why, "a CUDA variant without a GPU says so")
else:
    check(list(y) == [12, 24, 36], "CUDA saxpy")

print("FAILED: " + ", ".join(failures) if failures else "all checks passed")
sys.exit(1 if failures else 0)
