#include "backend/backend.h"
#include "tensor.pb.h"

namespace backend {

long tensor_roundtrip(const std::vector<long>& shape, const std::string& name) {
    proto::Tensor t;
    t.set_name(name);
    long count = 1;
    for (long d : shape) {
        t.add_shape(d);
        count *= d;
    }
    for (long i = 0; i < count; ++i) t.add_data(static_cast<float>(i));
    std::string wire;
    t.SerializeToString(&wire);
    proto::Tensor back;
    if (!back.ParseFromString(wire) || back.name() != name) return -1;
    return back.data_size();
}

}  // namespace backend
