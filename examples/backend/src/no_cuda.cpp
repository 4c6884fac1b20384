#include "backend/backend.h"

namespace backend {
std::string saxpy(float, const std::vector<float>&, std::vector<float>&) { return "built without CUDA"; }
}  // namespace backend
