#!/usr/bin/env bash
# Issue 17's clean-machine proof: README's first command on a fresh Debian 12 with Rust.
#
# It makes that machine as a chroot (debootstrap --variant=minbase bookworm), with what a Debian
# machine "with Rust" has: rustup's toolchain of this machine bind-mounted read-only at the same
# paths (/root/.rustup, /root/.cargo/bin; the crates come fresh from crates.io into the chroot's
# own /root/.cargo/registry), build-essential, ca-certificates and git (and this machine's local CA
# certificates, for a network whose egress inspects TLS) — and none of the packages
# README's command installs (it checks that they are missing). It clones this repository, reads
# README's command from the clone, and runs it there:
#   - the part before `./target/release/trellis up` (apt-get, cargo build --release) in the chroot
#     on this machine's network;
#   - `./target/release/trellis up` in the chroot inside a throwaway network namespace
#     (fresh-<random>), because `up` must never run in this machine's own namespace; that
#     namespace is the fresh machine's "host".
# Then, as README tells a user: kubectl get nodes,pods -A with the printed kubeconfig, curl of every
# web pod's address from the "host", trellis status, trellis down, and a check that nothing is
# left (namespaces, links, routes, processes, state); then up, status and down a second time.
# It prints what it does with the time of each step, and `dpkg -l` before and after README's
# command goes to $FRESH_OUT.
#
# Not run by CI: it downloads a Debian (~100 MB) and the crates and builds the workspace in
# release (65 minutes on the shared 2-core machine at load 8–15). Run as root, from a clone:
#   tools/fresh-machine-proof.sh
# Environment: FRESH_ROOT (the chroot, default /work/fresh/root; must not exist unless
# FRESH_REUSE=1), FRESH_OUT (logs, default the chroot's parent), FRESH_MIRROR (Debian mirror),
# FRESH_FIGURES (release figures after the proof, e.g. "--nodes 3;--nodes 10;--mode routed": for
# each flag set, up's time, every process's RSS, down's time, the load average, one run each),
# FRESH_REUSE=1 (keep an existing chroot and its build: update the clone to this HEAD and run the
# command again — for re-running after a fix; the dpkg "before" list is then not a fresh one).
# Cleanup (a trap, also on failure): `trellis down` if a cluster is up, the throwaway namespace,
# every mount under the chroot. The chroot itself is left (delete it with rm -rf).
set -euo pipefail

REPO=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
BRANCH=$(git -C "$REPO" rev-parse --abbrev-ref HEAD)
ROOT=${FRESH_ROOT:-/work/fresh/root}
OUT=${FRESH_OUT:-$(dirname "$ROOT")}
MIRROR=${FRESH_MIRROR:-http://deb.debian.org/debian}
REUSE=${FRESH_REUSE:-0}
NS=fresh-$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
STATE=/var/lib/trellis/up   # README's default --state-dir, inside the chroot
NAME=trup                   # README's default --name
PATH_IN=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

T0=$(date +%s.%N)
exec 3>&1   # what the proof says goes here even while a step's output goes to a log
say() { printf '[%8.1fs] %s\n' "$(echo "$(date +%s.%N) - $T0" | bc)" "$*" >&3; }
die() { say "FAILED: $*"; exit 1; }
# Runs a command in the chroot (this machine's network namespace).
in_root() { chroot "$ROOT" /usr/bin/env -i HOME=/root PATH=$PATH_IN TERM=dumb \
    DEBIAN_FRONTEND=noninteractive bash -c "$1"; }
# Runs a command in the chroot inside the throwaway namespace, the fresh machine's "host".
in_host() { nsenter --net="/run/netns/$NS" chroot "$ROOT" /usr/bin/env -i HOME=/root \
    PATH=$PATH_IN TERM=dumb bash -c "$1"; }
# Times one command: prints its output and "<what>: N s".
timed() {
    local what=$1 t rc=0
    shift
    t=$(date +%s.%N)
    "$@" || rc=$?
    say "$what: $(echo "$(date +%s.%N) - $t" | bc | xargs printf '%.2f') s (exit $rc)"
    return $rc
}

[ "$(id -u)" = 0 ] || { echo "run as root (debootstrap, chroot, mounts, namespaces)" >&2; exit 1; }
for tool in debootstrap nsenter chroot findmnt bc ip; do
    command -v $tool >/dev/null || { echo "missing $tool (apt-get install debootstrap util-linux bc iproute2)" >&2; exit 1; }
done
[ -d /root/.rustup ] && [ -x /root/.cargo/bin/cargo ] \
    || { echo "this machine's Rust (rustup in /root/.rustup, /root/.cargo/bin) is missing" >&2; exit 1; }

cleanup() {
    local rc=$?
    set +e
    if [ -e "/run/netns/$NS" ]; then
        if [ -e "$ROOT$STATE/$NAME/state.json" ] || ls "$ROOT/run/netns/$NAME-"* >/dev/null 2>&1; then
            say "cleanup: trellis down"
            timeout 120 nsenter --net="/run/netns/$NS" chroot "$ROOT" /src/target/release/trellis down
        fi
        ip netns del "$NS"
    fi
    # Processes a failed `down` left: every one whose root is the chroot, by PID.
    for p in /proc/[0-9]*; do
        [ "$(readlink "$p/root" 2>/dev/null)" = "$ROOT" ] && kill -9 "${p#/proc/}" 2>/dev/null
    done
    # Namespaces a failed `up` left in the chroot's /run/netns are bind mounts: unmounted below.
    findmnt -rn -o TARGET | grep -E "^$ROOT(/|$)" | sort -r | while read -r m; do
        umount "$m" 2>/dev/null || umount -l "$m"
    done
    if findmnt -rn -o TARGET | grep -qE "^$ROOT(/|$)"; then say "cleanup: mounts left under $ROOT"; rc=1; fi
    say "cleanup done (chroot left at $ROOT: $(du -sh "$ROOT" 2>/dev/null | cut -f1))"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$OUT"
if [ "$REUSE" = 1 ] && [ -x "$ROOT/src/target/release/trellis" ]; then
    say "reusing the chroot $ROOT and its build (FRESH_REUSE=1)"
else
    [ ! -e "$ROOT" ] || die "$ROOT exists: remove it (rm -rf) or set FRESH_REUSE=1"
    timed "debootstrap --variant=minbase bookworm" \
        debootstrap --variant=minbase bookworm "$ROOT" "$MIRROR" >"$OUT/debootstrap.log" 2>&1 \
        || die "debootstrap (see $OUT/debootstrap.log)"
fi

# What a machine has mounted. Its / is a mount point: the kubelet's process runtime makes / private
# (MS_REC) in each container's mount namespace, which fails with EINVAL on a plain directory.
mount --bind "$ROOT" "$ROOT"
mount -t proc proc "$ROOT/proc"
mount --rbind /sys "$ROOT/sys" && mount --make-rslave "$ROOT/sys"   # sysfs and the cgroup hierarchies
mount --rbind /dev "$ROOT/dev" && mount --make-rslave "$ROOT/dev"   # with /dev/pts and /dev/shm
mount -t tmpfs -o mode=755 tmpfs "$ROOT/run"                       # ip netns: /run/netns
# Rust "installed" as rustup installs it, read-only: the toolchain is this machine's.
mkdir -p "$ROOT/root/.rustup" "$ROOT/root/.cargo/bin"
for d in /root/.rustup /root/.cargo/bin; do
    mount --bind "$d" "$ROOT$d" && mount -o remount,bind,ro "$ROOT$d"
done
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
# apt runs in this machine's network namespace: no package may start a daemon there.
printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d" && chmod 755 "$ROOT/usr/sbin/policy-rc.d"
say "mounted proc, sys (with cgroups), dev, run (tmpfs), Rust read-only: $(in_root 'rustc --version')"

README_PKGS="iproute2 iptables ipset busybox-static"
if [ "$REUSE" != 1 ] || [ ! -d "$ROOT/src" ]; then
    timed "the machine 'with Rust': apt-get install build-essential ca-certificates git" \
        in_root 'apt-get update -q && apt-get install -y -q build-essential ca-certificates git' \
        >"$OUT/prepare.log" 2>&1 || die "preparing (see $OUT/prepare.log)"
    # A machine on this network trusts what this one trusts (a TLS-inspecting egress has its own
    # CA here): this machine's local CA certificates, if any, as a fresh machine's admin adds them.
    if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
        cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/"
        in_root 'update-ca-certificates' >>"$OUT/prepare.log" 2>&1 || die "update-ca-certificates"
        say "this machine's local CA certificates added: $(cd /usr/local/share/ca-certificates && ls *.crt | tr '\n' ' ')"
    fi
    timed "git clone $REPO ($BRANCH)" git clone -q --branch "$BRANCH" "$REPO" "$ROOT/src"
else
    git -C "$ROOT/src" fetch -q "$REPO" "$BRANCH" && git -C "$ROOT/src" checkout -q --detach FETCH_HEAD
    say "clone updated to $BRANCH"
fi
say "the clone is at $(git -C "$ROOT/src" log -1 --format='%h %s' | cut -c1-100)"

# README's command, exactly as the clone's README has it.
CMD=$(grep -m1 -E '^    apt-get update && .*trellis up$' "$ROOT/src/README.md" | sed 's/^    //') \
    || die "README's first command (apt-get update && … && ./target/release/trellis up) not found"
UP_PART='./target/release/trellis up'
case "$CMD" in *" && $UP_PART") ;; *) die "README's command does not end with $UP_PART: $CMD" ;; esac
BUILD_PART=${CMD% && "$UP_PART"}
say "README's command: $CMD"
# Every package of every `apt-get install -y` in it (the kubectl one is conditional).
for p in $(echo "$BUILD_PART" | grep -o 'apt-get install -y [^&;}|]*' | sed 's/^apt-get install -y //'); do
    case " $README_PKGS " in *" $p "*) ;; *) README_PKGS="$README_PKGS $p" ;; esac
done
in_root 'dpkg -l' >"$OUT/dpkg-before.txt"
if [ "$REUSE" != 1 ]; then
    for p in $README_PKGS; do
        ! in_root "dpkg-query -W -f='\${Status}' $p 2>/dev/null | grep -q 'ok installed'" \
            || die "$p is installed before README's command: the machine is not fresh"
    done
    say "before the command, none of these is installed: $README_PKGS"
    in_root 'command -v kubectl curl' && die "kubectl or curl is there before the command" || true
fi

timed "README's command, part 1 (in the chroot, this machine's network): $BUILD_PART" \
    in_root "cd /src && $BUILD_PART" >"$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; die "README's command (see $OUT/build.log)"; }
grep -E '^ *(Finished|Compiling trellis )' "$OUT/build.log" | tail -2 || true
in_root 'dpkg -l' >"$OUT/dpkg-after.txt"
say "packages the command installed: $(diff <(awk '/^ii/{print $2}' "$OUT/dpkg-before.txt") <(awk '/^ii/{print $2}' "$OUT/dpkg-after.txt") | sed -n 's/^> //p' | tr '\n' ' ')"

ip netns add "$NS"
ip -n "$NS" link set lo up
say "throwaway namespace $NS (the fresh machine's host for trellis up)"

# One round: up, what README tells a user to do, status, down, nothing left.
round() {
    local n=$1
    timed "round $n: README's command, part 2 (in $NS): $UP_PART" \
        in_host "cd /src && $UP_PART" >"$OUT/up-$n.log" 2>&1 || { cat "$OUT/up-$n.log"; die "trellis up (round $n)"; }
    grep -E '^\[' "$OUT/up-$n.log"
    local kc
    kc=$(grep -oE '/[^ ]*admin\.kubeconfig' "$OUT/up-$n.log" | head -1)
    [ -n "$kc" ] || die "up printed no kubeconfig path"
    say "round $n: kubeconfig printed by up: $kc"
    if in_host 'command -v kubectl' >/dev/null; then
        in_host "kubectl --kubeconfig $kc get nodes,pods -A -o wide" || die "kubectl get nodes,pods -A"
    else
        die "no kubectl on the machine after README's command"
    fi
    local ips ok=0 ip
    ips=$(in_host "kubectl --kubeconfig $kc -n demo get pods -o jsonpath='{.items[*].status.podIP}'")
    [ -n "$ips" ] || die "no demo pod addresses"
    for ip in $ips; do
        if in_host "curl -sS --max-time 5 http://$ip/" >"$OUT/curl.txt" 2>&1; then
            ok=$((ok + 1)); say "round $n: curl http://$ip/ from $NS: $(head -c 80 "$OUT/curl.txt" | tr '\n' ' ')"
        else
            say "round $n: curl http://$ip/ failed: $(cat "$OUT/curl.txt")"
        fi
    done
    [ "$ok" -gt 0 ] && [ "$ok" = "$(echo $ips | wc -w)" ] || die "the demo did not answer on every web pod"
    in_host '/src/target/release/trellis status' || die "trellis status"
    timed "round $n: trellis down" in_host '/src/target/release/trellis down' || die "trellis down"
    nothing_left "round $n"
}

# Nothing left after down: namespaces, the host's links and routes, processes, state, mounts.
nothing_left() {
    local left=""
    ls "$ROOT/run/netns/" | grep -q . && left="$left namespaces: $(ls "$ROOT/run/netns" | tr '\n' ' ');"
    [ "$(ip -n "$NS" -o link | wc -l)" = 1 ] || left="$left links: $(ip -n "$NS" -o link | awk '{print $2}' | tr '\n' ' ');"
    [ -z "$(ip -n "$NS" route; ip -n "$NS" -6 route | grep -v '^fe80\|^::1\|^multicast')" ] \
        || left="$left routes: $(ip -n "$NS" route | tr '\n' ';');"
    local p
    for p in /proc/[0-9]*; do
        [ "$(readlink "$p/root" 2>/dev/null)" = "$ROOT" ] && left="$left process ${p#/proc/} ($(tr '\0' ' ' <"$p/cmdline" | cut -c1-60));"
    done
    [ -z "$(ls -A "$ROOT$STATE" 2>/dev/null)" ] || left="$left state: $(ls -A "$ROOT$STATE" | tr '\n' ' ');"
    # (/run/netns itself stays a mount point, as `ip netns add` leaves it; a namespace under it is not)
    findmnt -rn -o TARGET | grep -E "^$ROOT/(run/netns/|var/lib/trellis)" >/dev/null \
        && left="$left mounts: $(findmnt -rn -o TARGET | grep -E "^$ROOT/(run/netns/|var/lib/trellis)" | tr '\n' ' ');"
    [ -z "$left" ] || die "$1: down left:$left"
    say "$1: nothing left (namespaces, links, routes, processes, state, mounts)"
}

# RSS (VmRSS) of every process running in the chroot (the cluster's daemons and pods), by
# command, and the total.
rss() {
    local p
    for p in /proc/[0-9]*; do
        [ "$(readlink "$p/root" 2>/dev/null)" = "$ROOT" ] || continue
        awk -v cmd="$(tr '\0' ' ' <"$p/cmdline" | awk '{n=$1; sub(".*/","",n); print n, $2}')" \
            '/^VmRSS:/ {print $2, cmd}' "$p/status" 2>/dev/null
    done | awk '{kb[$2" "$3]+=$1; n[$2" "$3]++; t+=$1; c++}
        END {for (k in kb) printf "    %-32s %3d × %7.1f MiB = %7.1f MiB\n", k, n[k], kb[k]/n[k]/1024, kb[k]/1024;
             printf "    total: %.1f MiB in %d processes\n", t/1024, c}' | sort
}

# One figure: up with these flags until every node is Ready and the demo answers (up waits for
# both), the RSS of every process, down, nothing left.
figure() {
    say "figure: trellis up $*; load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
    timed "figure: trellis up $*" in_host "cd /src && ./target/release/trellis up $*" >"$OUT/figure.log" 2>&1 \
        || { cat "$OUT/figure.log"; die "trellis up $*"; }
    say "figure: up $*: $(grep -m1 -oE 'is up in [0-9.]+s.*' "$OUT/figure.log"); load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
    grep -E '^\[' "$OUT/figure.log"
    say "figure: RSS of every process of the cluster (up $*):"
    rss >&3
    timed "figure: trellis down (after up $*)" in_host '/src/target/release/trellis down' >"$OUT/figure-down.log" 2>&1 \
        || { cat "$OUT/figure-down.log"; die "trellis down"; }
    nothing_left "figure: up $*"
}

round 1
round 2
say "proof complete: README's command works on a fresh Debian 12 with Rust, and up works twice in a row"

# FRESH_FIGURES="--nodes 3;--nodes 10;--mode routed;--mode overlay" (flag sets separated by ';'):
# release figures from this build, one run each.
if [ -n "${FRESH_FIGURES:-}" ]; then
    IFS=';' read -ra sets <<<"$FRESH_FIGURES"
    for f in "${sets[@]}"; do
        # shellcheck disable=SC2086
        figure $f
    done
fi
