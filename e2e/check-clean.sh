#!/usr/bin/env bash
# Fails, naming each, if anything a node adds to the machine is still there: the bridge,
# its nftables tables, mounts or state under /run and /var/lib, the kubepods cgroups, or
# a process of the node. e2e/down.sh must leave none; the test command checks with this.
set -uo pipefail
home=${KUBESENTIMENT_HOME:-$HOME/.cache/kubesentiment}
left=()
ip link show ks0 >/dev/null 2>&1 && left+=("the bridge ks0")
grep -q ' /\(var/lib\|run\)/kubesentiment-e2e' /proc/self/mountinfo && left+=("mounts under /var/lib or /run/kubesentiment-e2e")
for d in /var/lib/kubesentiment-e2e /run/kubesentiment-e2e; do [ -e "$d" ] && left+=("$d"); done
compgen -G '/sys/fs/cgroup/*/kubepods' >/dev/null && left+=("kubepods cgroups")
for exe in /proc/[0-9]*/exe; do
  target=$(readlink "$exe" 2>/dev/null) || continue
  case "$target" in
    "$home"/node/*|"$home"/controlplane/*) left+=("process ${exe#/proc/} ($target)") ;;
  esac
done
for nft in "$home"/node/*/bin/nft; do
  [ -x "$nft" ] || continue
  tables=$("$nft" list tables 2>/dev/null | grep -E 'kube-proxy|kubesentiment-node|cni' || true)
  [ -n "$tables" ] && left+=("nftables: $tables")
  break
done
# KUBESENTIMENT_IP_FORWARD_WAS: the value before the node came up, when known.
forward=$(cat /proc/sys/net/ipv4/ip_forward)
[ -n "${KUBESENTIMENT_IP_FORWARD_WAS:-}" ] && [ "$forward" != "$KUBESENTIMENT_IP_FORWARD_WAS" ] && \
  left+=("net.ipv4.ip_forward is $forward, was $KUBESENTIMENT_IP_FORWARD_WAS")
if [ ${#left[@]} -gt 0 ]; then
  printf 'check-clean: left behind: %s\n' "${left[@]}" >&2
  exit 1
fi
echo "check-clean: nothing of the node is left" >&2
