#include "backend.h"

#include <cstdio>
#include <vector>

#include "demo_version.h"
#include "mathx.hpp"
extern "C" {
#include "imgproc.h"
#include "strutil.h"
}

const char* backend_device() { return BACKEND_DEVICE_NAME; }

std::string backend_run() {
    std::vector<float> a(16), b(16);
    for (int i = 0; i < 16; ++i) { a[i] = float(i); b[i] = float(i % 4); }
#ifdef BACKEND_FAST
    // The "fast" device: one 4x4x4 product in a single call.
    std::vector<float> c = mathx::gemm(a, b, 4, 4, 4);
#else
    // The "cpu" device: the same product one row at a time.
    std::vector<float> c;
    for (int r = 0; r < 4; ++r) {
        std::vector<float> row(a.begin() + 4 * r, a.begin() + 4 * r + 4);
        std::vector<float> part = mathx::gemm(row, b, 1, 4, 4);
        c.insert(c.end(), part.begin(), part.end());
    }
#endif
    unsigned char pixels[8] = {0, 50, 100, 150, 200, 250, 100, 0}, blurred[8];
    unsigned checksum = imgproc_blur_row(pixels, blurred, sizeof pixels);
    char device[16];
    strutil_upper(backend_device(), device, sizeof device);
    char line[160];
    std::snprintf(line, sizeof line, "backend %s device=%s gemm_sum=%.0f blur_adler32=%08x",
                  DEMO_VERSION, device, mathx::sum(c), checksum);
    return line;
}
