#pragma once
#include <string>

// One call through every dependency: gemm (mathx), blur + checksum (imgproc, zlite),
// a string helper (strutil). Returns a report line.
std::string backend_run();
const char* backend_device();
