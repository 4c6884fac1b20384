// A C interface over the backend, so any language (Python's ctypes, Java's JNI) can call it
// without sharing a C++ runtime with it. Each function reports through its return value.
#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "backend/backend.h"
#include "backend/c_api.h"

extern "C" {

const char* bk_device(void) { return backend::device(); }

int bk_gemm(const float* a, const float* b, float* c, int m, int k, int n) {
    std::vector<float> va(a, a + m * k), vb(b, b + k * n);
    std::vector<float> vc = backend::gemm(va, vb, m, k, n);
    std::memcpy(c, vc.data(), vc.size() * sizeof(float));
    return 0;
}

int bk_jpeg_roundtrip(int width, int height) {
    std::vector<unsigned char> grey(static_cast<size_t>(width) * height);
    for (size_t i = 0; i < grey.size(); ++i) grey[i] = static_cast<unsigned char>((i % width) * 8);
    int w = 0, h = 0;
    std::vector<unsigned char> back = backend::jpeg_decode(backend::jpeg_encode(grey, width, height), &w, &h);
    if (w != width || h != height) return -1;
    int worst = 0;
    for (size_t i = 0; i < grey.size(); ++i) worst = std::max(worst, std::abs(int(back[i]) - int(grey[i])));
    return worst;
}

int bk_resize(const unsigned char* grey, int width, int height, unsigned char* out, int new_width,
              int new_height) {
    std::vector<unsigned char> in(grey, grey + width * height);
    std::vector<unsigned char> small = backend::resize(in, width, height, new_width, new_height);
    if (small.size() != static_cast<size_t>(new_width) * new_height) return -1;
    std::memcpy(out, small.data(), small.size());
    return 0;
}

long bk_tensor_roundtrip(const long* shape, int ndim, const char* name) {
    return backend::tensor_roundtrip(std::vector<long>(shape, shape + ndim), name);
}

int bk_relu(float* data, int n) {
    std::vector<float> v(data, data + n);
    if (!backend::relu(v)) return 0;
    std::memcpy(data, v.data(), n * sizeof(float));
    return 1;
}

const char* bk_saxpy(float a, const float* x, float* y, int n) {
    static thread_local std::string why;
    std::vector<float> vx(x, x + n), vy(y, y + n);
    why = backend::saxpy(a, vx, vy);
    if (why.empty()) std::memcpy(y, vy.data(), n * sizeof(float));
    return why.c_str();
}

}  // extern "C"
