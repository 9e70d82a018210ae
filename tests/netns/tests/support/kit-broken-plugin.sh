#!/bin/sh
# A CNI plugin that breaks the conformance kit's rules on purpose, to prove the kit notices.
# It runs the plugin `real-plugin` beside it (a link the test makes) and spoils one thing,
# chosen by the name it is called by (another link to this file): kit-broken-<mode>.
#   faithful  nothing: the control, which must pass as the real plugin does
#   leak      ADD also makes a veth pair on the host that DEL leaves behind
#   code      every error object with code 4 (bad environment) says 7 instead
#   result    ADD's result claims cniVersion 0.4.0 whatever the config asked for
#   code999   code 999 becomes 998: bridge's listed deviations change nature
#   gc-noop   GC does nothing and succeeds
#   gc-all    GC is told no attachment is valid (the listed one's id is changed)
set -u
real=${0%/*}/real-plugin
mode=${0##*kit-broken-}
command=${CNI_COMMAND:-}
conf=$(cat)
case "$mode" in
gc-noop) [ "$command" = GC ] && exit 0 ;;
gc-all) [ "$command" = GC ] && conf=$(printf '%s' "$conf" | sed 's/"kit-gc-keep"/"kit-gc-nobody"/g') ;;
esac
out=$(printf '%s' "$conf" | "$real")
status=$?
case "$mode" in
faithful | gc-noop | gc-all) ;;
leak)
    if [ "$command" = ADD ] && [ "$status" -eq 0 ]; then
        id=$(printf '%s' "${CNI_CONTAINERID:-}" | cksum | cut -c1-8)
        ip link add "kl$id" type veth peer name "kp$id" 2>/dev/null || true
    fi
    ;;
code) out=$(printf '%s' "$out" | sed 's/"code": *4\([^0-9]\)/"code": 7\1/') ;;
result)
    if [ "$command" = ADD ] && [ "$status" -eq 0 ]; then
        out=$(printf '%s' "$out" | sed 's/"cniVersion": *"[^"]*"/"cniVersion": "0.4.0"/')
    fi
    ;;
code999) out=$(printf '%s' "$out" | sed 's/"code": *999/"code": 998/') ;;
*)
    echo "kit-broken-plugin: unknown mode $mode" >&2
    exit 99
    ;;
esac
printf '%s\n' "$out"
exit "$status"
