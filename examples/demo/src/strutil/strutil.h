#ifndef STRUTIL_H
#define STRUTIL_H
#include <stddef.h>
/* Upper-case `s` into `out` (at most n-1 chars); returns the length written. */
size_t strutil_upper(const char *s, char *out, size_t n);
#endif
