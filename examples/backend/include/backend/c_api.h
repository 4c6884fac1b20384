// The backend's C interface (see src/c_api.cpp): plain types only, callable through any FFI.
#pragma once
#ifdef __cplusplus
extern "C" {
#endif

const char* bk_device(void);
// C = A (m x k) * B (k x n), row major; 0 on success.
int bk_gemm(const float* a, const float* b, float* c, int m, int k, int n);
// Encode a synthetic grey image as JPEG and decode it: the largest pixel error, or -1.
int bk_jpeg_roundtrip(int width, int height);
// Bilinear resize (OpenCV); 0 on success.
int bk_resize(const unsigned char* grey, int width, int height, unsigned char* out, int new_width,
              int new_height);
// Serialize a tensor description with protobuf and parse it back: its element count, or -1.
long bk_tensor_roundtrip(const long* shape, int ndim, const char* name);
// ReLU in place with oneDNN: 1 if done, 0 if this variant has no oneDNN.
int bk_relu(float* data, int n);
// y = a*x + y on the GPU: "" if done, else why not (no device, built without CUDA).
const char* bk_saxpy(float a, const float* x, float* y, int n);

#ifdef __cplusplus
}
#endif
