#!/bin/sh
# Turn "name value" lines into a C table; '#' lines are comments and do not
# reach the output (so editing them shows early cutoff: table reruns, nothing after it).
set -e
echo "/* generated from table.txt */"
echo "static const int demo_table[] = {"
grep -v '^#' "$1" | while read -r name value; do
  [ -n "$name" ] && echo "  $value, /* $name */"
done
echo "};"
echo "#define DEMO_TABLE_SIZE (sizeof demo_table / sizeof demo_table[0])"
