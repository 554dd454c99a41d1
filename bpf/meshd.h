/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Every struct shared between meshd's BPF programs and meshd itself. Plain structs and
 * constants only. Fixed-width types, byte order in the type, explicit padding; the
 * TypeScript mirror is src/datapath/layout.ts, and a test checks each size and offset
 * against the BTF of the built object.
 *
 * Every map's name ends in _v<MESHD_LAYOUT_VERSION> (meshd_svc4_v2), and so does its pin: a
 * changed layout bumps the version and with it every name, so no meshd ever opens a map of
 * another layout by name (an older one would read a longer value into a shorter buffer).
 * Layouts 1 and 2 were pinned without the suffix; a meshd of layout 2 under the new names
 * copies such layout-2 maps into its own and removes them (src/datapath/ebpf_loader.ts).
 */
#ifndef MESHD_H
#define MESHD_H

#include <linux/types.h>

/*
 * The layout of every map below: the suffix of their names, and kept in meshd_meta_v2 so a
 * restarted meshd can check it again.
 */
#define MESHD_LAYOUT_VERSION 2

/*
 * Backends of one service port are a dense array of at most this many slots, held twice
 * (two halves): meshd writes the next array into the half not in force, then switches the
 * service entry to it in one map update.
 */
#define MESHD_MAX_BACKENDS 4096

/* meshd_svc.flags: the backends are this node's meshd listener, not the service's pods. */
#define MESHD_SVC_REDIRECT 1

/* Key of meshd_svc4: an IPv4 mesh service address as applications dial it. */
struct meshd_svc4_key {
	__be32 addr;  /* service address, network order */
	__be16 port;  /* service port, network order */
	__u8 proto;   /* IPPROTO_TCP (6) or IPPROTO_UDP (17) */
	__u8 pad;     /* zero */
};

/* Key of meshd_svc6: an IPv6 mesh service address. */
struct meshd_svc6_key {
	__be32 addr[4]; /* service address, network order */
	__be16 port;    /* service port, network order */
	__u8 proto;     /* IPPROTO_TCP (6) or IPPROTO_UDP (17) */
	__u8 pad;       /* zero */
};

/* Value of meshd_svc4 and meshd_svc6: which backend array is in force. */
struct meshd_svc {
	__u32 id;    /* the service port's slot: the id in its backend keys */
	__u32 half;  /* 0 or 1: the half of the backend array in force */
	__u32 count; /* backends in that half; 0 lets the connect through unchanged */
	__u32 flags; /* MESHD_SVC_* */
};

/* Key of meshd_be4 and meshd_be6: one slot of a backend array. */
struct meshd_be_key {
	__u32 id;   /* meshd_svc.id */
	__u32 slot; /* half * MESHD_MAX_BACKENDS + index */
};

/* Value of meshd_be4: an IPv4 backend. */
struct meshd_be4 {
	__be32 addr; /* backend address, network order */
	__be16 port; /* backend port, network order */
	__u16 pad;   /* zero */
};

/* Value of meshd_be6: an IPv6 backend. */
struct meshd_be6 {
	__be32 addr[4]; /* backend address, network order */
	__be16 port;    /* backend port, network order */
	__u16 pad;      /* zero */
};

/*
 * Key of meshd_rnat4: a socket and the backend it was sent to, so getpeername and recvmsg
 * can show the service address the application dialled instead.
 */
struct meshd_rnat4_key {
	__u64 cookie; /* bpf_get_socket_cookie() of the socket */
	__be32 addr;  /* backend address, network order */
	__be16 port;  /* backend port, network order */
	__u16 pad;    /* zero */
};

/* Key of meshd_rnat6. */
struct meshd_rnat6_key {
	__u64 cookie;   /* bpf_get_socket_cookie() of the socket */
	__be32 addr[4]; /* backend address, network order */
	__be16 port;    /* backend port, network order */
	__u16 pad;      /* zero */
	__u32 pad2;     /* zero; the struct is 8-byte aligned */
};

/* Value of meshd_rnat4: the service address dialled. */
struct meshd_rnat4 {
	__be32 addr; /* service address, network order */
	__be16 port; /* service port, network order */
	__u16 pad;   /* zero */
};

/* Value of meshd_rnat6. */
struct meshd_rnat6 {
	__be32 addr[4]; /* service address, network order */
	__be16 port;    /* service port, network order */
	__u16 pad;      /* zero */
};

/* The one value of meshd_meta_v2 (key 0): who wrote the maps. */
struct meshd_meta {
	__u32 layout;  /* MESHD_LAYOUT_VERSION of the meshd that created the maps */
	__u32 pad;     /* zero */
	__u64 version; /* the MeshConfig version last written into the maps */
	__u64 cgroup;  /* inode number of the cgroup the pinned links attach to */
	__u64 expires; /* CLOCK_BOOTTIME ns; after it the hooks send no socket anywhere (0: never) */
};

#endif /* MESHD_H */
