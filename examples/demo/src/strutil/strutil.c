#include "strutil.h"
#include <ctype.h>

size_t strutil_upper(const char *s, char *out, size_t n) {
    size_t i = 0;
    if (n == 0) return 0;
    for (; s[i] && i + 1 < n; i++) out[i] = (char)toupper((unsigned char)s[i]);
    out[i] = '\0';
    return i;
}
