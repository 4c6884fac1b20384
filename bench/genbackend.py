"""Generate a C++ backend library of realistic size, to measure the developer's inner loop with.

    .venv/bin/python bench/genbackend.py DIR [--units 300] [--groups 10]

DIR gets a CMake project (CMakeLists.txt, include/gb/*.h, src/op_NNN.cpp, src/registry.cpp)
for a shared library `gb` with one operator per translation unit. The translation units
share headers the way a deep-learning backend's do:
  include/gb/core.h         included by every unit (tensor type, dispatch templates)
  include/gb/group_K.h      included by the units i with i % groups == K (10% of them with the
                            default 10 groups): the header to edit for a "one header" rebuild
Each unit instantiates standard containers and algorithms (vector, unordered_map, string,
functional, algorithm) over a few types, so one costs about what a real operator's file does
to compile (~1 s at -O2 with clang on this machine), and calls the C libraries it links
(zlite's checksum, strutil's upper-casing) the way an operator calls its dependencies.
The output is a pure function of the arguments: the same tree every time.
"""

from __future__ import annotations

import argparse
from pathlib import Path

CMAKE = """\
cmake_minimum_required(VERSION 3.16)
project(gb CXX C)
set(CMAKE_CXX_STANDARD 17)
set(CMAKE_CXX_STANDARD_REQUIRED ON)
file(GLOB GB_SOURCES CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/src/*.cpp)
add_library(gb ${GB_SOURCES})
target_include_directories(gb PUBLIC $<BUILD_INTERFACE:${CMAKE_CURRENT_SOURCE_DIR}/include>
                                     $<INSTALL_INTERFACE:include>)
find_path(ZLITE_INCLUDE zlite.h REQUIRED)
find_library(ZLITE_LIB zlite REQUIRED)
find_path(STRUTIL_INCLUDE strutil.h REQUIRED)
find_library(STRUTIL_LIB strutil REQUIRED)
target_include_directories(gb PRIVATE ${ZLITE_INCLUDE} ${STRUTIL_INCLUDE})
target_link_libraries(gb PRIVATE ${ZLITE_LIB} ${STRUTIL_LIB})
install(TARGETS gb LIBRARY DESTINATION lib ARCHIVE DESTINATION lib)
install(DIRECTORY include/gb DESTINATION include)
"""

CORE = """\
#pragma once
#include <algorithm>
#include <cstdint>
#include <functional>
#include <memory>
#include <numeric>
#include <string>
#include <unordered_map>
#include <vector>

namespace gb {

struct Tensor {
  std::vector<float> data;
  std::vector<int64_t> shape;
  std::string name;
  size_t size() const { return data.size(); }
};

template <typename T>
struct Stats {
  T sum{}, min{}, max{};
  template <typename It>
  static Stats of(It first, It last) {
    Stats s;
    if (first == last) return s;
    s.min = s.max = *first;
    for (It i = first; i != last; ++i) {
      s.sum += *i;
      s.min = std::min(s.min, static_cast<T>(*i));
      s.max = std::max(s.max, static_cast<T>(*i));
    }
    return s;
  }
};

using Kernel = std::function<Tensor(const std::vector<Tensor>&)>;

struct Registry {
  std::unordered_map<std::string, Kernel> kernels;
  static Registry& get();
  void add(const std::string& name, Kernel k) { kernels.emplace(name, std::move(k)); }
};

}  // namespace gb
"""

GROUP = """\
#pragma once
#include "gb/core.h"

namespace gb {{

// Shared by the operators of group {k}: a reduction and a layout transform.
template <typename T>
inline T group{k}_reduce(const std::vector<T>& v) {{
  return std::accumulate(v.begin(), v.end(), T{{}}, [](T a, T b) {{ return a + b * T({scale}); }});
}}

inline std::vector<int64_t> group{k}_strides(const std::vector<int64_t>& shape) {{
  std::vector<int64_t> s(shape.size(), 1);
  for (size_t i = shape.size(); i-- > 1;) s[i - 1] = s[i] * shape[i];
  return s;
}}

}}  // namespace gb
"""

UNIT = """\
#include "gb/core.h"
#include "gb/group_{k}.h"
#include <map>
#include <set>

extern "C" {{
#include "strutil.h"
#include "zlite.h"
}}

namespace gb {{
namespace {{

struct Op{i}State {{
  std::map<std::string, std::vector<double>> params;
  std::set<int64_t> dims;
}};

template <typename T>
std::vector<T> op{i}_transform(const std::vector<T>& in) {{
  std::vector<T> out(in.size());
  std::transform(in.begin(), in.end(), out.begin(), [](T x) {{ return x * T({i} % 7 + 1) - T(1); }});
  std::stable_sort(out.begin(), out.end());
  auto last = std::unique(out.begin(), out.end());
  out.erase(last, out.end());
  return out;
}}

std::string op{i}_describe(const Tensor& t) {{
  std::string s = "op{i}(" + t.name + ")[";
  for (auto d : t.shape) s += std::to_string(d) + ",";
  return s + "]";
}}

}}  // namespace

Tensor op{i}(const std::vector<Tensor>& inputs) {{
  Op{i}State state;
  Tensor out;
  for (const auto& t : inputs) {{
    auto tr = op{i}_transform(t.data);
    auto st = Stats<float>::of(tr.begin(), tr.end());
    std::vector<double> dd(tr.begin(), tr.end());
    state.params[op{i}_describe(t)] = dd;
    for (auto s : group{k}_strides(t.shape)) state.dims.insert(s);
    out.data.push_back(st.sum + group{k}_reduce(tr) + static_cast<float>(dd.size()));
  }}
  out.shape = {{static_cast<int64_t>(out.data.size())}};
  char upper[32];
  strutil_upper(op{i}_describe(out).c_str(), upper, sizeof upper);
  out.name = std::string(upper) + ":" + std::to_string(state.dims.size());
  unsigned char bytes[4] = {{1, 2, 3, static_cast<unsigned char>({i} & 0xff)}};
  out.data.push_back(static_cast<float>(zlite_adler32(bytes, sizeof bytes) % 1000u));
  return out;
}}

}}  // namespace gb
"""

REGISTRY_HEAD = """\
#include "gb/core.h"

namespace gb {
"""


def generate(out: Path, units: int = 300, groups: int = 10) -> None:
    (out / "include" / "gb").mkdir(parents=True, exist_ok=True)
    (out / "src").mkdir(parents=True, exist_ok=True)
    (out / "CMakeLists.txt").write_text(CMAKE)
    (out / "include" / "gb" / "core.h").write_text(CORE)
    for k in range(groups):
        (out / "include" / "gb" / f"group_{k}.h").write_text(GROUP.format(k=k, scale=k + 1))
    for i in range(units):
        (out / "src" / f"op_{i:03d}.cpp").write_text(UNIT.format(i=i, k=i % groups))
    decls = "".join(f"Tensor op{i}(const std::vector<Tensor>&);\n" for i in range(units))
    adds = "".join(f'  r.add("op{i}", op{i});\n' for i in range(units))
    (out / "src" / "registry.cpp").write_text(
        REGISTRY_HEAD + decls + "\nRegistry& Registry::get() {\n  static Registry r = [] {\n    Registry r;\n"
        + adds + "    return r;\n  }();\n  return r;\n}\n\n}  // namespace gb\n"
        + 'extern "C" int gb_kernel_count(void) { return static_cast<int>(gb::Registry::get().kernels.size()); }\n')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--units", type=int, default=300)
    parser.add_argument("--groups", type=int, default=10)
    args = parser.parse_args()
    generate(args.dir, args.units, args.groups)
    print(f"{args.dir}: {args.units} operators, {args.groups} group headers")


if __name__ == "__main__":
    main()
