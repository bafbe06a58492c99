#!/bin/bash
# Builds the Debian packages (lodevd, liblodev1, liblodev-dev) from this tree into OUTDIR.
#
#   scripts/build-debs.sh OUTDIR
#
# dpkg-buildpackage writes its results next to the tree it builds and leaves build
# files inside it, so this builds a copy of the tree (the files git knows of, changes
# included, or the whole tree outside a git checkout) in a temporary directory, and
# moves the .deb, .changes and .buildinfo files to OUTDIR. The build dependencies
# are those of debian/control: "apt-get build-dep ./" installs them. DEB_BUILD_OPTIONS
# is passed on (nocheck skips the unit tests).
set -euo pipefail

if [ $# -ne 1 ] || [ "${1#-}" != "$1" ]; then
        echo "usage: $0 OUTDIR" >&2
        exit 2
fi
src=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$1"
out=$(cd "$1" && pwd)

work=$(mktemp -d "${TMPDIR:-/tmp}/lodevd-debs.XXXXXX")
trap 'rm -rf "$work"' EXIT
tree="$work/lodevd"
mkdir "$tree"

if git -C "$src" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        # Tracked and new files, not what .gitignore names (build directories); a file
        # deleted in the work tree is left out.
        git -C "$src" ls-files -z --cached --others --exclude-standard |
                (cd "$src" && while IFS= read -r -d '' f; do
                        [ -e "$f" ] || [ -L "$f" ] && printf '%s\0' "$f"
                done) |
                tar -C "$src" --null --files-from=- -cf - | tar -C "$tree" -xf -
else
        tar -C "$src" --exclude='./build' --exclude='./build-*' --exclude='./.git' -cf - . |
                tar -C "$tree" -xf -
fi

# Its output goes to stderr: stdout is the list of what was made, for scripts.
(cd "$tree" && dpkg-buildpackage -us -uc -b) >&2

shopt -s nullglob
results=("$work"/*.deb "$work"/*.changes "$work"/*.buildinfo)
if [ ${#results[@]} -eq 0 ]; then
        echo "build-debs: dpkg-buildpackage made no package" >&2
        exit 1
fi
mv -f "${results[@]}" "$out"/
for f in "${results[@]}"; do
        echo "$out/$(basename "$f")"
done
