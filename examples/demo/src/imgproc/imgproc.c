#include "imgproc.h"
#include "table.h"
#include "zlite.h"

uint32_t imgproc_blur_row(const unsigned char *in, unsigned char *out, size_t len) {
    const int half = (int)(DEMO_TABLE_SIZE / 2);
    int norm = 0;
    for (size_t t = 0; t < DEMO_TABLE_SIZE; t++) norm += demo_table[t];
    for (size_t i = 0; i < len; i++) {
        int acc = 0;
        for (int t = -half; t <= half; t++) {
            long j = (long)i + t;
            if (j < 0) j = 0;
            if (j >= (long)len) j = (long)len - 1;
            acc += demo_table[t + half] * in[j];
        }
        out[i] = (unsigned char)(acc / norm);
    }
    return zlite_adler32(out, len);
}
