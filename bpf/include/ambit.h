/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/* Types and constants shared by Ambit's eBPF programs and its Go code.
 * bpf2go exports every type named here to Go (see internal/redirect/gen.go),
 * so neither side keeps a hand-written copy of the other. */
#pragma once

#include <linux/types.h>

/* Ports of the node proxy's listeners in every enrolled pod. */
enum ambit_port {
	AMBIT_PORT_OUTBOUND = 15001,
	AMBIT_PORT_INBOUND = 15006,
	AMBIT_PORT_TUNNEL = 15008,
};

/* Sizes of the maps. */
enum ambit_limit {
	AMBIT_MAX_EXCLUSIONS = 256,
	AMBIT_MAX_PODS = 1024,
	AMBIT_MAX_POD_IPS = 4,
	AMBIT_MAX_INFLIGHT = 65536,
	AMBIT_POD_KEY_LEN = 128,
	AMBIT_PATH_LEN = 256,
};

/* An IPv4 or IPv6 address; IPv4 is stored IPv4-mapped (::ffff:a.b.c.d), so
 * one key shape serves both families. Network byte order. */
struct ambit_addr {
	__u32 a[4];
};

/* The client end of a redirected connection, as the proxy sees the peer of
 * the connection it accepted on the pod's outbound listener. */
struct ambit_origin_key {
	__u64 netns_cookie;
	struct ambit_addr addr;
	__u16 port; /* host byte order */
	__u16 _pad0;
	__u32 _pad1;
};

/* Where the application was going, and who asked. */
struct ambit_origin {
	struct ambit_addr addr;
	__u16 port;   /* host byte order */
	__u16 family; /* AF_INET or AF_INET6 of the original destination */
	__u32 _pad0;
	__u64 cgroup_id;
};

/* Key of the LPM tries holding excluded CIDRs (prefixlen counts the 96 bits
 * of the IPv4-mapped prefix for IPv4 CIDRs). */
struct ambit_lpm_key {
	__u32 prefixlen;
	struct ambit_addr addr;
};

/* Registry of enrolled pods, keyed by the netns cookie of the pod's network
 * namespace. It lives in a pinned map so a restarted proxy finds it. */
struct ambit_pod {
	char key[AMBIT_POD_KEY_LEN]; /* "<namespace>/<name>" */
	char cgroup[AMBIT_PATH_LEN];
	char netns[AMBIT_PATH_LEN];
	struct ambit_addr ips[AMBIT_MAX_POD_IPS];
	__u32 ip_count;
	__u32 _pad0;
};

/* The sockmap shortcut for the plaintext hop between an enrolled pod's
 * socket and the node proxy's socket in the pod (bpf/hop.c). */
enum ambit_hop {
	/* The mark (under the mask) of the node proxy's delivery sockets
	 * (internal/transparent Mark, Mask); the application's accepted
	 * socket inherits it (net.ipv4.tcp_fwmark_accept). */
	AMBIT_DELIVERY_MARK = 0x4d0,
	AMBIT_DELIVERY_MASK = 0xfff,
	/* Bytes an application may have moved into the proxy's socket that
	 * the proxy has not read yet; past it the socket goes back to TCP,
	 * whose window holds the application back. */
	AMBIT_HOP_BACKLOG = 4 << 20,
};

/* One socket of a plaintext hop, as its own end sees it: the key of the
 * sockets' maps. The peer's key swaps local and remote. */
struct ambit_hop_key {
	__u64 netns_cookie;
	struct ambit_addr local;
	struct ambit_addr remote;
	__u16 local_port;  /* host byte order */
	__u16 remote_port; /* host byte order */
	__u32 _pad0;
};

/* A byte count: what the node proxy has read from its socket of a hop
 * (written by the proxy), or what an application's socket has moved
 * through the shortcut (socket storage). */
struct ambit_hop_bytes {
	__u64 bytes;
};

/* Counters of the shortcut, indexes of the per-CPU ambit_hop_stats. */
enum ambit_hop_stat {
	AMBIT_HOP_APP_SOCKETS,      /* application sockets put on the shortcut */
	AMBIT_HOP_PROXY_SOCKETS,    /* node proxy sockets put on the shortcut */
	AMBIT_HOP_INSERT_FAILED,    /* sockets the kernel refused (map full) */
	AMBIT_HOP_MESSAGES,         /* sends moved by the shortcut */
	AMBIT_HOP_BYTES,            /* bytes moved by the shortcut */
	AMBIT_HOP_NO_PEER,          /* sends that found no proxy socket (TCP) */
	AMBIT_HOP_BACKLOG_FULL,     /* sends past AMBIT_HOP_BACKLOG (TCP) */
	AMBIT_HOP_TCP_SENDS,        /* sends on a socket that used TCP before */
	AMBIT_HOP_RELEASED,         /* application sockets taken off after TCP */
	AMBIT_HOP_NSTATS,
};
