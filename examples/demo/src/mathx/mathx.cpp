#include "mathx.hpp"

namespace mathx {
std::vector<float> gemm(const std::vector<float>& a, const std::vector<float>& b,
                        std::size_t m, std::size_t k, std::size_t n) {
    std::vector<float> c(m * n, 0.0f);
    for (std::size_t i = 0; i < m; ++i)
        for (std::size_t p = 0; p < k; ++p)
            for (std::size_t j = 0; j < n; ++j)
                c[i * n + j] += a[i * k + p] * b[p * n + j];
    return c;
}

float sum(const std::vector<float>& v) {
    float s = 0.0f;
    for (float x : v) s += x;
    return s;
}
}  // namespace mathx
