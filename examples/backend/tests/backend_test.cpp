// One test program per variant: exercises every dependency the variant links and
// prints one line per check; exits non-zero on the first wrong answer.
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "backend/backend.h"

static int failures = 0;
static void check(bool ok, const char* what) {
    std::printf("%-8s %s\n", ok ? "ok" : "FAILED", what);
    if (!ok) ++failures;
}

int main() {
    std::printf("backend variant: %s\n", backend::device());
    std::vector<float> a = {1, 2, 3, 4, 5, 6}, b = {7, 8, 9, 10, 11, 12};
    std::vector<float> c = backend::gemm(a, b, 2, 3, 2);
    check(c == std::vector<float>({58, 64, 139, 154}), "BLAS sgemm 2x3 * 3x2");

    const int w = 32, h = 16;
    std::vector<unsigned char> grey(w * h);
    for (int i = 0; i < w * h; ++i) grey[i] = static_cast<unsigned char>((i % w) * 8);
    int dw = 0, dh = 0;
    std::vector<unsigned char> decoded = backend::jpeg_decode(backend::jpeg_encode(grey, w, h), &dw, &dh);
    int worst = 0;
    for (int i = 0; i < w * h; ++i) worst = std::max(worst, std::abs(int(decoded[i]) - int(grey[i])));
    check(dw == w && dh == h && worst < 16, "JPEG encode + decode 32x16");

    std::vector<unsigned char> small = backend::resize(decoded, w, h, w / 2, h / 2);
    check(small.size() == size_t(w / 2 * h / 2), "OpenCV resize to 16x8");

    check(backend::tensor_roundtrip({2, 3, 4}, "weights") == 24, "protobuf Tensor round trip");

    std::vector<float> act = {-1.0f, 0.5f, -2.0f, 3.0f};
    if (backend::relu(act))
        check(act == std::vector<float>({0.0f, 0.5f, 0.0f, 3.0f}), "oneDNN ReLU");
    else
        std::printf("%-8s oneDNN ReLU (not in this variant)\n", "-");

    std::vector<float> x = {1, 2, 3}, y = {10, 20, 30};
    std::string why = backend::saxpy(2.0f, x, y);
    if (why.empty())
        check(y == std::vector<float>({12, 24, 36}), "CUDA saxpy");
    else
        std::printf("%-8s CUDA saxpy (%s)\n", "-", why.c_str());

    std::printf("%s\n", failures ? "FAILED" : "all checks passed");
    return failures ? 1 : 0;
}
