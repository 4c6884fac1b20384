#include <cblas.h>

#include "backend/backend.h"

namespace backend {

std::vector<float> gemm(const std::vector<float>& a, const std::vector<float>& b, int m, int k, int n) {
    std::vector<float> c(static_cast<size_t>(m) * n, 0.0f);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, k, 1.0f, a.data(), k, b.data(), n, 0.0f,
                c.data(), n);
    return c;
}

const char* device() { return BACKEND_DEVICE_NAME; }

}  // namespace backend
