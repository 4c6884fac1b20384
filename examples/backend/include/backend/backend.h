// A small deep-learning backend: one function per dependency of the release, so each
// variant's test program exercises everything it links.
#pragma once
#include <cstddef>
#include <string>
#include <vector>

namespace backend {

// C = A (m x k) * B (k x n) with BLAS sgemm (OpenBLAS).
std::vector<float> gemm(const std::vector<float>& a, const std::vector<float>& b, int m, int k, int n);

// Encode a grey image as JPEG and decode it back (libjpeg-turbo).
std::vector<unsigned char> jpeg_encode(const std::vector<unsigned char>& grey, int width, int height);
std::vector<unsigned char> jpeg_decode(const std::vector<unsigned char>& jpeg, int* width, int* height);

// Bilinear resize of a grey image (OpenCV imgproc).
std::vector<unsigned char> resize(const std::vector<unsigned char>& grey, int width, int height,
                                  int new_width, int new_height);

// Serialize a tensor description and parse it back (protobuf); returns the element count.
long tensor_roundtrip(const std::vector<long>& shape, const std::string& name);

// ReLU with a oneDNN eltwise primitive (the mkl variant); false if built without oneDNN.
bool relu(std::vector<float>& data);

// y = a*x + y on the GPU (the CUDA variants); "" on success, else why it could not run.
std::string saxpy(float a, const std::vector<float>& x, std::vector<float>& y);

// The variant this library was built as (e.g. "mkl").
const char* device();

}  // namespace backend
