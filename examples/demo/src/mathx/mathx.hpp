#pragma once
#include <cstddef>
#include <vector>

namespace mathx {
// C = A (m x k) * B (k x n), row-major.
std::vector<float> gemm(const std::vector<float>& a, const std::vector<float>& b,
                        std::size_t m, std::size_t k, std::size_t n);
float sum(const std::vector<float>& v);
}  // namespace mathx
