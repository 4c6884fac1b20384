#ifndef ZLITE_H
#define ZLITE_H
#include <stddef.h>
#include <stdint.h>
/* Adler-32 checksum of a buffer. */
uint32_t zlite_adler32(const unsigned char *data, size_t len);
#endif
