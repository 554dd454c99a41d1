#!/usr/bin/env bash
# One real test node: containerd and the kubelet, run by tests/testenv/real_nodes.ts as
#
#   nsenter --net=<node netns> unshare --mount --propagation private bash node.sh NODE_DIR
#
# so everything below happens in the node's network namespace and in a mount namespace of its
# own: what the node writes to /var/lib, /var/log and /run, the sysctls the kubelet sets, and
# the cgroup v2 root it sees are the node's alone, and the host is left as it was.
#
# NODE_DIR holds env (the variables below), containerd.toml, kubelet.yaml, kubelet.kubeconfig
# and resolv.conf. This script records containerd's and the kubelet's PIDs in NODE_DIR/pids,
# stops both on SIGTERM, and exits when either exits.
set -euo pipefail
dir=$1
# shellcheck source=/dev/null
source "$dir/env" # CONTAINERD_BIN KUBE_NODE_BIN RUNC_BIN NODE_NAME NODE_IP CGROUP_V1 CGROUP_V2

# This node's processes (and the containers' shims) go to its own cgroups first, so the harness
# finds every one of them by cgroup, even after a crash.
for c in $CGROUP_V1; do echo $$ >"$c/daemons/cgroup.procs"; done
echo $$ >"$CGROUP_V2/daemons/cgroup.procs"

# Cut off from the host's mounts (unshare --propagation private), this namespace's own become
# shared among themselves, as on a systemd node: the kubelet's HostToContainer and
# Bidirectional volume mounts need that, and nothing propagates back to the host.
mount --make-rshared /
mkdir -p "$dir/var-lib" "$dir/var-log" "$dir/sysctl" "$dir/sys"
mount --bind "$dir/var-lib" /var/lib
mount --bind "$dir/var-log" /var/log
mount -t tmpfs -o mode=755 meshd-node-run /run
# The kernel settings the kubelet writes at start (container_manager_linux.go): the node
# writes private copies, and the host's values stay.
for s in kernel/panic kernel/panic_on_oops vm/overcommit_memory vm/panic_on_oom \
  kernel/keys/root_maxkeys kernel/keys/root_maxbytes; do
  f="$dir/sysctl/${s//\//.}"
  cat "/proc/sys/$s" >"$f"
  mount --bind "$f" "/proc/sys/$s"
done
# /sys/class/net as this network namespace sees it (the CNI plugins and cAdvisor read it).
mount -t sysfs meshd-node-sys "$dir/sys"
mount --bind "$dir/sys/class/net" /sys/class/net
mount --bind "$dir/sys/devices/virtual/net" /sys/devices/virtual/net
umount -l "$dir/sys"
# cgroup v2 (empty on hybrid hosts): the node's scratch cgroup stands for the root, so nothing
# here can attach to the host's.
cg2_mount=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/self/mounts)
[ -n "$cg2_mount" ] && mount --bind "$CGROUP_V2" "$cg2_mount"
# The kubelet's iptables canary chains would go to the host's tables: no iptables here.
for t in iptables ip6tables iptables-legacy ip6tables-legacy iptables-nft ip6tables-nft; do
  p=$(command -v "$t" || true)
  [ -n "$p" ] && mount --bind /bin/false "$(readlink -f "$p")"
done
export PATH="$RUNC_BIN:$CONTAINERD_BIN:$PATH"

pids=()
stop() {
  local p
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
}
trap stop TERM INT

"$CONTAINERD_BIN/containerd" --config "$dir/containerd.toml" >"$dir/containerd.log" 2>&1 &
pids+=($!)
echo "$!" >>"$dir/pids"
for _ in $(seq 1 300); do
  [ -S "$dir/containerd.sock" ] && break
  kill -0 "${pids[0]}" 2>/dev/null || { echo "containerd exited" >&2; exit 1; }
  sleep 0.1
done

"$KUBE_NODE_BIN/kubelet" --config="$dir/kubelet.yaml" --kubeconfig="$dir/kubelet.kubeconfig" \
  --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" --v=1 >"$dir/kubelet.log" 2>&1 &
pids+=($!)
echo "$!" >>"$dir/pids"

set +e
wait -n "${pids[@]}"
rc=$?
stop
wait
exit "$rc"
