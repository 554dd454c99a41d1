#!/usr/bin/env bash
# Removes the test images' archives that no build needs any more:
#
#   tests/testenv/image/prune.sh IMAGES_DIR KEEP.tar...
#
# KEEP are this build's archives; they are touched, to say they are in use. Another checkout of
# the repo shares IMAGES_DIR and keys its archives by its own paths and source, and a test that
# listed them imports them minutes later: any other archive goes only once no build has named
# it for two hours.
set -euo pipefail
dir=$1
shift
touch "$@"
find "$dir" -maxdepth 1 -name '*.tar' -mmin +120 | while read -r f; do
  keep=0
  for k in "$@"; do [ "$f" = "$k" ] && keep=1; done
  [ "$keep" -eq 1 ] || rm -f "$f" "$f.sizes"
done
