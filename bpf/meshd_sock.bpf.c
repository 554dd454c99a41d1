// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * meshd's socket-level load balancer: cgroup hooks that send a connect (TCP, connected UDP)
 * or a sendmsg (unconnected UDP) aimed at a mesh service address straight to one of its
 * backends, chosen in O(1) from a dense array (TCP at random per connect, UDP by socket, so
 * one socket's datagrams stay on one backend); and that show the service address again to
 * getpeername and recvmsg. Services that need meshd's L7 proxy have one backend: this node's
 * meshd listener for that port.
 *
 * Every hook fails open: when it cannot decide (no entry, an empty array, a slot missing
 * while meshd rewrites it, maps no meshd has renewed within its grace period) the socket call
 * goes on unchanged, to the address the application gave, which the userspace path serves.
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "meshd.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct meshd_svc4_key);
	__type(value, struct meshd_svc);
} meshd_svc4_v2 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct meshd_svc6_key);
	__type(value, struct meshd_svc);
} meshd_svc6_v2 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	/* Both halves of every port's array: about 250,000 IPv4 backends in force. The kernel
	 * sizes a hash's buckets by max_entries, so this is most of the maps' memory. */
	__uint(max_entries, 524288);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct meshd_be_key);
	__type(value, struct meshd_be4);
} meshd_be4_v2 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 131072);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct meshd_be_key);
	__type(value, struct meshd_be6);
} meshd_be6_v2 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct meshd_rnat4_key);
	__type(value, struct meshd_rnat4);
} meshd_rnat4_v2 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct meshd_rnat6_key);
	__type(value, struct meshd_rnat6);
} meshd_rnat6_v2 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct meshd_meta);
} meshd_meta_v2 SEC(".maps");

/* The socket's protocol as a service key holds it: TCP or UDP, 0 for anything else. */
static __always_inline __u8 sock_proto(struct bpf_sock_addr *ctx)
{
	if (ctx->protocol == IPPROTO_TCP)
		return IPPROTO_TCP;
	if (ctx->protocol == IPPROTO_UDP)
		return IPPROTO_UDP;
	return 0;
}

/*
 * A 64-bit mix (the finalizer of MurmurHash3) of a socket cookie and the service it sends to:
 * cookies are handed out in sequence, and the mix spreads neighbours over the backends.
 */
static __always_inline __u64 mix64(__u64 h)
{
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdULL;
	h ^= h >> 33;
	h *= 0xc4ceb9fe1a85ec53ULL;
	h ^= h >> 33;
	return h;
}

/*
 * The slot of a backend from the half in force, or -1. TCP draws one at random per connect.
 * UDP chooses by the socket (as Cilium does): an unconnected socket's sendmsg runs this for
 * every datagram, and a random draw would scatter one socket's datagrams, so one QUIC or DTLS
 * session, over several backends. A hash of the socket cookie and the service keeps each socket
 * on one backend for as long as the service's backend array is unchanged; different sockets
 * still spread over all of them.
 */
static __always_inline int pick_slot(struct bpf_sock_addr *ctx, const struct meshd_svc *svc,
				     __u8 proto, __u64 service)
{
	__u32 count = svc->count;
	__u32 index;

	if (count == 0 || count > MESHD_MAX_BACKENDS || svc->half > 1)
		return -1;
	if (proto == IPPROTO_UDP)
		index = (__u32)(mix64(bpf_get_socket_cookie(ctx) ^ service) % count);
	else
		index = bpf_get_prandom_u32() % count;
	return (int)(svc->half * MESHD_MAX_BACKENDS + index);
}

/*
 * False once the maps have gone unrenewed past meshd_meta_v2.expires: meshd has been gone so long
 * (uninstalled, or stuck) that its backends may be stale, and a ClusterIP may have been given
 * to another Service. Sockets then go where the application sent them.
 */
static __always_inline int maps_fresh(void)
{
	__u32 zero = 0;
	struct meshd_meta *meta = bpf_map_lookup_elem(&meshd_meta_v2, &zero);

	if (!meta)
		return 0;
	return meta->expires == 0 || bpf_ktime_get_boot_ns() <= meta->expires;
}

/*
 * Picks an IPv4 backend for a connect or sendmsg to addr:port and remembers the service for
 * the replies; NULL leaves the socket alone.
 */
static __always_inline struct meshd_be4 *pick4(struct bpf_sock_addr *ctx, __be32 addr,
					       __be16 port)
{
	struct meshd_svc4_key key = {};
	struct meshd_be_key bkey = {};
	struct meshd_rnat4_key rkey = {};
	struct meshd_rnat4 orig = {};
	struct meshd_svc *svc;
	struct meshd_be4 *be;
	int slot;

	key.proto = sock_proto(ctx);
	if (!key.proto || !maps_fresh())
		return NULL;
	key.addr = addr;
	key.port = port;
	svc = bpf_map_lookup_elem(&meshd_svc4_v2, &key);
	if (!svc)
		return NULL;
	slot = pick_slot(ctx, svc, key.proto, ((__u64)addr << 16) | port);
	if (slot < 0)
		return NULL;
	bkey.id = svc->id;
	bkey.slot = (__u32)slot;
	be = bpf_map_lookup_elem(&meshd_be4_v2, &bkey);
	if (!be)
		return NULL;
	rkey.cookie = bpf_get_socket_cookie(ctx);
	rkey.addr = be->addr;
	rkey.port = be->port;
	orig.addr = addr;
	orig.port = port;
	/* Without the entry, getpeername would show the backend: still a working socket. */
	bpf_map_update_elem(&meshd_rnat4_v2, &rkey, &orig, BPF_ANY);
	return be;
}

/* Sends an IPv4 connect or sendmsg to a backend. */
static __always_inline void balance4(struct bpf_sock_addr *ctx)
{
	struct meshd_be4 *be = pick4(ctx, ctx->user_ip4, (__be16)ctx->user_port);

	if (!be)
		return;
	ctx->user_ip4 = be->addr;
	ctx->user_port = (__u32)be->port;
}

/* The reverse entry of an IPv4 socket, or of an IPv6 one talking to an IPv4-mapped address. */
static __always_inline struct meshd_rnat4 *rnat4_of(struct bpf_sock_addr *ctx, __be32 addr)
{
	struct meshd_rnat4_key rkey = {};

	rkey.cookie = bpf_get_socket_cookie(ctx);
	rkey.addr = addr;
	rkey.port = (__be16)ctx->user_port;
	return bpf_map_lookup_elem(&meshd_rnat4_v2, &rkey);
}

/* Shows the service address in place of the backend this socket was sent to. */
static __always_inline void reverse4(struct bpf_sock_addr *ctx)
{
	struct meshd_rnat4 *orig = rnat4_of(ctx, ctx->user_ip4);

	if (!orig)
		return;
	ctx->user_ip4 = orig->addr;
	ctx->user_port = (__u32)orig->port;
}

/*
 * An IPv6 socket may reach an IPv4 address as ::ffff:a.b.c.d (a dual-stack socket, as Java
 * opens by default): such an address is looked up among the IPv4 services, and its backend
 * written back in the same form.
 */
static __always_inline int v4_mapped(struct bpf_sock_addr *ctx)
{
	return ctx->user_ip6[0] == 0 && ctx->user_ip6[1] == 0 &&
	       ctx->user_ip6[2] == bpf_htonl(0x0000ffff);
}

static __always_inline void copy6(__be32 *dst, const __u32 *src)
{
	dst[0] = src[0];
	dst[1] = src[1];
	dst[2] = src[2];
	dst[3] = src[3];
}

/* Writes an IPv6 address and port into the context. */
static __always_inline void set6(struct bpf_sock_addr *ctx, const __u32 *addr, __u16 port)
{
	ctx->user_ip6[0] = addr[0];
	ctx->user_ip6[1] = addr[1];
	ctx->user_ip6[2] = addr[2];
	ctx->user_ip6[3] = addr[3];
	ctx->user_port = (__u32)port;
}

/* An IPv4 address in its IPv4-mapped IPv6 form. */
static __always_inline void mapped(__u32 *dst, __be32 addr)
{
	dst[0] = 0;
	dst[1] = 0;
	dst[2] = bpf_htonl(0x0000ffff);
	dst[3] = addr;
}

static __always_inline void balance6(struct bpf_sock_addr *ctx)
{
	struct meshd_svc6_key key = {};
	struct meshd_be_key bkey = {};
	struct meshd_rnat6_key rkey = {};
	struct meshd_rnat6 orig = {};
	struct meshd_svc *svc;
	struct meshd_be6 *be;
	__u32 addr[4];
	int slot;

	/* One place writes the context below: clang would otherwise merge the two branches'
	 * stores through a moved context pointer, which the verifier refuses. */
	if (v4_mapped(ctx)) {
		struct meshd_be4 *be4 = pick4(ctx, ctx->user_ip6[3], (__be16)ctx->user_port);

		if (!be4)
			return;
		mapped(addr, be4->addr);
		set6(ctx, addr, be4->port);
		return;
	}
	key.proto = sock_proto(ctx);
	if (!key.proto || !maps_fresh())
		return;
	/* The context's address words are read one by one: the verifier wants 4-byte loads. */
	key.addr[0] = ctx->user_ip6[0];
	key.addr[1] = ctx->user_ip6[1];
	key.addr[2] = ctx->user_ip6[2];
	key.addr[3] = ctx->user_ip6[3];
	key.port = (__be16)ctx->user_port;
	svc = bpf_map_lookup_elem(&meshd_svc6_v2, &key);
	if (!svc)
		return;
	slot = pick_slot(ctx, svc, key.proto,
			 ((__u64)(key.addr[0] ^ key.addr[1] ^ key.addr[2] ^ key.addr[3]) << 16) |
				 key.port);
	if (slot < 0)
		return;
	bkey.id = svc->id;
	bkey.slot = (__u32)slot;
	be = bpf_map_lookup_elem(&meshd_be6_v2, &bkey);
	if (!be)
		return;
	rkey.cookie = bpf_get_socket_cookie(ctx);
	copy6(rkey.addr, be->addr);
	rkey.port = be->port;
	copy6(orig.addr, key.addr);
	orig.port = key.port;
	bpf_map_update_elem(&meshd_rnat6_v2, &rkey, &orig, BPF_ANY);
	copy6(addr, be->addr);
	set6(ctx, addr, be->port);
}

static __always_inline void reverse6(struct bpf_sock_addr *ctx)
{
	struct meshd_rnat6_key rkey = {};
	struct meshd_rnat6 *orig;
	__u32 addr[4];
	__u16 port;

	if (v4_mapped(ctx)) {
		struct meshd_rnat4 *orig4 = rnat4_of(ctx, ctx->user_ip6[3]);

		if (!orig4)
			return;
		mapped(addr, orig4->addr);
		port = orig4->port;
	} else {
		rkey.cookie = bpf_get_socket_cookie(ctx);
		rkey.addr[0] = ctx->user_ip6[0];
		rkey.addr[1] = ctx->user_ip6[1];
		rkey.addr[2] = ctx->user_ip6[2];
		rkey.addr[3] = ctx->user_ip6[3];
		rkey.port = (__be16)ctx->user_port;
		orig = bpf_map_lookup_elem(&meshd_rnat6_v2, &rkey);
		if (!orig)
			return;
		copy6(addr, orig->addr);
		port = orig->port;
	}
	set6(ctx, addr, port);
}

SEC("cgroup/connect4")
int meshd_connect4(struct bpf_sock_addr *ctx)
{
	balance4(ctx);
	return 1;
}

SEC("cgroup/sendmsg4")
int meshd_sendmsg4(struct bpf_sock_addr *ctx)
{
	balance4(ctx);
	return 1;
}

SEC("cgroup/recvmsg4")
int meshd_recvmsg4(struct bpf_sock_addr *ctx)
{
	reverse4(ctx);
	return 1;
}

SEC("cgroup/getpeername4")
int meshd_peer4(struct bpf_sock_addr *ctx)
{
	reverse4(ctx);
	return 1;
}

SEC("cgroup/connect6")
int meshd_connect6(struct bpf_sock_addr *ctx)
{
	balance6(ctx);
	return 1;
}

SEC("cgroup/sendmsg6")
int meshd_sendmsg6(struct bpf_sock_addr *ctx)
{
	balance6(ctx);
	return 1;
}

SEC("cgroup/recvmsg6")
int meshd_recvmsg6(struct bpf_sock_addr *ctx)
{
	reverse6(ctx);
	return 1;
}

SEC("cgroup/getpeername6")
int meshd_peer6(struct bpf_sock_addr *ctx)
{
	reverse6(ctx);
	return 1;
}
