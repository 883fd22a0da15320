#!/bin/sh
# packages.sh: prints the Debian packages of some sections of
# deploy/debian-packages.txt, one per line, so the image installs from the
# same list as ./dev (which installs every section).
#
#   packages.sh FILE SECTION...      e.g. packages.sh debian-packages.txt runtime
#
# A section starts at a comment line `# [name] ...` and runs to the next
# such line; a section name may appear several times. Of an entry with
# alternatives, `a|b`, only the first is printed. Exits 1 when a named
# section has no package (a typo must not give an image without libraries),
# 2 on usage errors. POSIX sh and awk only: it runs in debian:12-slim.
set -eu

if [ "$#" -lt 2 ]; then
    echo "usage: packages.sh FILE SECTION..." >&2
    exit 2
fi
file=$1
shift
[ -r "$file" ] || {
    echo "packages.sh: cannot read $file" >&2
    exit 2
}

status=0
for section in "$@"; do
    packages=$(awk -v want="$section" '
        /^#[ \t]*\[[A-Za-z0-9_-]+\]/ {
            match($0, /\[[A-Za-z0-9_-]+\]/)
            current = substr($0, RSTART + 1, RLENGTH - 2)
            next
        }
        {
            sub(/#.*/, "")
            if (current == want)
                for (i = 1; i <= NF; i++) {
                    sub(/[|].*/, "", $i)    # alternatives a|b: the first
                    print $i
                }
        }' "$file")
    if [ -z "$packages" ]; then
        echo "packages.sh: no packages in section [$section] of $file" >&2
        status=1
    else
        printf '%s\n' "$packages"
    fi
done
exit "$status"
