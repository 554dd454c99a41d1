// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * An experiment, not part of meshd's fast path: does handing bytes from one local TCP socket
 * straight to its local peer (sockops + sk_msg + a sockhash) make traffic through meshd's
 * userspace proxy faster on this kernel? tests/bench/sockmap_bench.ts measures it.
 *
 * - sockops: every TCP socket of the cgroup that becomes established (either end) goes into
 *   accel_socks, keyed by its own 4-tuple.
 * - sk_msg (attached to accel_socks): a send looks up the peer's key, the same 4-tuple seen
 *   from the other end. When the peer is a socket in the map, the bytes go onto its receive
 *   queue (BPF_F_INGRESS) without the TCP/IP stack or loopback; otherwise they go out as usual.
 *
 * Both programs fail open: a socket that cannot be added, or a peer that is not in the map,
 * leaves the traffic on the normal path.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define AF_INET 2
#define AF_INET6 10

/* One end of a connection as that end sees it. Ports in host byte order. */
struct accel_key {
	__u32 family;
	__u32 local_ip[4];
	__u32 remote_ip[4];
	__u32 local_port;
	__u32 remote_port;
};

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 65536);
	__type(key, struct accel_key);
	__type(value, __u64);
} accel_socks SEC(".maps");

/* Counters, per CPU: see ACCEL_* below. The benchmark reads them to show the path ran. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} accel_stats SEC(".maps");

enum {
	ACCEL_ADDED = 0, /* sockets put in accel_socks */
	ACCEL_ADD_FAILED = 1, /* sockets the kernel would not add */
	ACCEL_REDIRECTED = 2, /* sends handed straight to the peer socket */
	ACCEL_PASSED = 3, /* sends with no local peer in the map: the normal path */
};

static __always_inline void count(__u32 what)
{
	__u64 *n = bpf_map_lookup_elem(&accel_stats, &what);

	if (n)
		*n += 1;
}

/*
 * The remote port field holds the port in network byte order; kernels since 4.19 shift it
 * into the upper 16 bits of the word on little-endian machines, older ones did not. Both
 * programs read it through this, so their keys agree either way.
 */
static __always_inline __u32 remote_port(__u32 field)
{
	__u16 net = field > 0xffff ? field >> 16 : field;

	return bpf_ntohs(net);
}

SEC("sockops")
int accel_sockops(struct bpf_sock_ops *ops)
{
	struct accel_key key = {};
	long rc;

	if (ops->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB &&
	    ops->op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB)
		return 1;
	key.family = ops->family;
	if (key.family == AF_INET) {
		key.local_ip[0] = ops->local_ip4;
		key.remote_ip[0] = ops->remote_ip4;
	} else if (key.family == AF_INET6) {
		key.local_ip[0] = ops->local_ip6[0];
		key.local_ip[1] = ops->local_ip6[1];
		key.local_ip[2] = ops->local_ip6[2];
		key.local_ip[3] = ops->local_ip6[3];
		key.remote_ip[0] = ops->remote_ip6[0];
		key.remote_ip[1] = ops->remote_ip6[1];
		key.remote_ip[2] = ops->remote_ip6[2];
		key.remote_ip[3] = ops->remote_ip6[3];
	} else {
		return 1;
	}
	key.local_port = ops->local_port;
	key.remote_port = remote_port(ops->remote_port);
	rc = bpf_sock_hash_update(ops, &accel_socks, &key, BPF_ANY);
	count(rc == 0 ? ACCEL_ADDED : ACCEL_ADD_FAILED);
	return 1;
}

SEC("sk_msg")
int accel_msg(struct sk_msg_md *msg)
{
	struct accel_key peer = {};

	peer.family = msg->family;
	if (peer.family == AF_INET) {
		peer.local_ip[0] = msg->remote_ip4;
		peer.remote_ip[0] = msg->local_ip4;
	} else if (peer.family == AF_INET6) {
		peer.local_ip[0] = msg->remote_ip6[0];
		peer.local_ip[1] = msg->remote_ip6[1];
		peer.local_ip[2] = msg->remote_ip6[2];
		peer.local_ip[3] = msg->remote_ip6[3];
		peer.remote_ip[0] = msg->local_ip6[0];
		peer.remote_ip[1] = msg->local_ip6[1];
		peer.remote_ip[2] = msg->local_ip6[2];
		peer.remote_ip[3] = msg->local_ip6[3];
	} else {
		return SK_PASS;
	}
	peer.local_port = remote_port(msg->remote_port);
	peer.remote_port = msg->local_port;
	/* SK_PASS with the redirect set when the peer is in the map; SK_DROP (and no redirect)
	 * when it is not, and then the send goes on as usual. */
	if (bpf_msg_redirect_hash(msg, &accel_socks, &peer, BPF_F_INGRESS) == SK_PASS) {
		count(ACCEL_REDIRECTED);
		return SK_PASS;
	}
	count(ACCEL_PASSED);
	return SK_PASS;
}
