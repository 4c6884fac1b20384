#ifndef IMGPROC_H
#define IMGPROC_H
#include <stddef.h>
#include <stdint.h>
/* Blur a row of pixels with the generated kernel; returns the Adler-32 of the result. */
uint32_t imgproc_blur_row(const unsigned char *in, unsigned char *out, size_t len);
#endif
