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
