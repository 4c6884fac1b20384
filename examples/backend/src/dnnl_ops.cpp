#include <dnnl.hpp>

#include "backend/backend.h"

namespace backend {

bool relu(std::vector<float>& data) {
    using namespace dnnl;
    engine eng(engine::kind::cpu, 0);
    stream s(eng);
    memory::desc md({static_cast<memory::dim>(data.size())}, memory::data_type::f32, memory::format_tag::a);
    memory mem(md, eng, data.data());
    auto pd = eltwise_forward::primitive_desc(eng, prop_kind::forward_inference, algorithm::eltwise_relu, md, md,
                                              0.0f, 0.0f);
    eltwise_forward(pd).execute(s, {{DNNL_ARG_SRC, mem}, {DNNL_ARG_DST, mem}});
    s.wait();
    return true;
}

}  // namespace backend
