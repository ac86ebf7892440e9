#!/bin/sh
# Build the reference second stage into a gzip'd cpio initramfs:
#
#   [KERNEL_VERSION=6.1.0-57-amd64] build-initramfs.sh OUTPUT [MODULE ...]
#
# Needs busybox-static (/bin/busybox, statically linked) and, for drivers the
# kernel has as modules, /lib/modules/KERNEL_VERSION (default: the newest
# there). MODULEs default to the QEMU lab's: e1000 and virtio_net (its NICs),
# virtio_pci and virtio_blk (its disk); their dependencies are added first.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
output=$1
shift
version=${KERNEL_VERSION:-$(ls /lib/modules 2>/dev/null | sort -V | tail -n 1)}
modules=${*:-e1000 virtio_pci virtio_net virtio_blk}
busybox=${BUSYBOX:-/bin/busybox}
[ -x "$busybox" ] || { echo "no $busybox: install busybox-static" >&2; exit 1; }
if ldd "$busybox" >/dev/null 2>&1; then
    echo "$busybox is dynamically linked: install busybox-static" >&2; exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/bin" "$work/sbin" "$work/etc" "$work/proc" "$work/sys" "$work/dev" \
         "$work/lib/modules" "$work/usr/bin" "$work/usr/sbin"
cp "$busybox" "$work/bin/busybox"
for applet in $("$busybox" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$work/bin/$applet"
done
cp "$here/init" "$work/init"
cp "$here/udhcpc.script" "$work/etc/udhcpc.script"
chmod 755 "$work/init" "$work/etc/udhcpc.script"
: > "$work/etc/modules"

if [ -n "$version" ] && [ -f "/lib/modules/$version/modules.dep" ]; then
    dep="/lib/modules/$version/modules.dep"
    seen=" "
    add() {
        # add MODULE_PATH (relative to /lib/modules/VERSION): its dependencies first.
        case "$seen" in *" $1 "*) return ;; esac
        seen="$seen$1 "
        for needed in $(grep "^$1:" "$dep" | cut -d: -f2); do add "$needed"; done
        name=$(basename "$1")
        cp "/lib/modules/$version/$1" "$work/lib/modules/$name"
        echo "$name" >> "$work/etc/modules"
    }
    for module in $modules; do
        path=$(grep -E "/$module\.ko(\.[a-z]+)?:" "$dep" | head -n 1 | cut -d: -f1)
        if [ -z "$path" ]; then
            echo "module $module is not in $dep (built in, or another name?)" >&2
            continue
        fi
        add "$path"
    done
fi

(cd "$work" && find . | cpio -o -H newc --quiet) | gzip -9 > "$output"
echo "$output: busybox second stage, modules: $(tr '\n' ' ' < "$work/etc/modules")"
