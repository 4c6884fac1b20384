#include <cstdio>
#include <cstring>
#include <string>

#include "backend.h"

int main() {
    std::string report = backend_run();
    std::printf("%s\n", report.c_str());
    // 4x4 gemm of 0..15 by (i % 4) columns: every variant must agree.
    if (report.find("gemm_sum=720") == std::string::npos) {
        std::fprintf(stderr, "unexpected gemm result: %s\n", report.c_str());
        return 1;
    }
    std::printf("ok\n");
    return 0;
}
