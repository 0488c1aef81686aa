//go:build ignore
// SPDX-License-Identifier: (GPL-2.0-only OR MIT)
/*
 * Ambit traffic capture. Attached per enrolled pod:
 *   cgroup/connect4, cgroup/connect6  on the pod's cgroup
 *   sockops                           on the pod's cgroup
 *   tcx/ingress                       on each of the pod's interfaces
 * See ARCHITECTURE.md ("Capture") for why capture lives inside the pod.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "include/ambit.h"

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif
#define SOCK_STREAM 1

/* One 32-bit load from a context field. The verifier checks context access
 * by offset and size, so loads must be neither merged nor moved into
 * pointer arithmetic by the compiler. */
#define CTX32(field) (*(volatile __u32 *)&(field))

char LICENSE[] SEC("license") = "Dual MIT/GPL";

/* Keep the shared types in BTF so bpf2go can export them. */
const enum ambit_port *unused_ambit_port __attribute__((unused));
const enum ambit_limit *unused_ambit_limit __attribute__((unused));

/* Connections rewritten at connect time, waiting for their source port:
 * socket cookie -> original destination. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, AMBIT_MAX_INFLIGHT);
	__type(key, __u64);
	__type(value, struct ambit_origin);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ambit_pending SEC(".maps");

/* Established redirected connections: client address -> original
 * destination. The proxy reads and deletes the entry when it accepts. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, AMBIT_MAX_INFLIGHT);
	__type(key, struct ambit_origin_key);
	__type(value, struct ambit_origin);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ambit_origins SEC(".maps");

/* Ports that bypass capture in both directions. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, AMBIT_MAX_EXCLUSIONS);
	__type(key, __u16);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ambit_excl_ports SEC(".maps");

/* Outbound destinations that bypass capture. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, AMBIT_MAX_EXCLUSIONS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct ambit_lpm_key);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ambit_excl_dst SEC(".maps");

/* Inbound sources that bypass capture (the node, for kubelet probes). */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, AMBIT_MAX_EXCLUSIONS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct ambit_lpm_key);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ambit_excl_src SEC(".maps");

/* Enrolled pods by netns cookie (written by Go, read by Go). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, AMBIT_MAX_PODS);
	__type(key, __u64);
	__type(value, struct ambit_pod);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ambit_pods SEC(".maps");

static __always_inline void addr_from_v4(struct ambit_addr *a, __u32 ip4)
{
	a->a[0] = 0;
	a->a[1] = 0;
	a->a[2] = bpf_htonl(0x0000ffff);
	a->a[3] = ip4;
}

static __always_inline int addr_is_v4mapped(const struct ambit_addr *a)
{
	return a->a[0] == 0 && a->a[1] == 0 && a->a[2] == bpf_htonl(0x0000ffff);
}

/* Destinations that are never captured: the pod's own loopback and the
 * unspecified address (both mean "this pod"). */
static __always_inline int addr_is_local(const struct ambit_addr *a)
{
	if (addr_is_v4mapped(a)) {
		__u32 h = bpf_ntohl(a->a[3]);
		return (h >> 24) == 127 || h == 0;
	}
	if (a->a[0] == 0 && a->a[1] == 0 && a->a[2] == 0)
		return a->a[3] == 0 || a->a[3] == bpf_htonl(1);
	return 0;
}

static __always_inline int port_excluded(__u16 port)
{
	return bpf_map_lookup_elem(&ambit_excl_ports, &port) != NULL;
}

static __always_inline int cidr_excluded(void *trie, const struct ambit_addr *a)
{
	struct ambit_lpm_key k = { .prefixlen = 128, .addr = *a };
	return bpf_map_lookup_elem(trie, &k) != NULL;
}

/* Decide whether a connect to dst:port is captured and, if so, record it.
 * Returns 1 when the caller must rewrite the destination. */
static __always_inline int capture_connect(struct bpf_sock_addr *ctx,
					   const struct ambit_addr *dst,
					   __u16 port, __u16 family)
{
	if (ctx->type != SOCK_STREAM)
		return 0;
	if (ctx->protocol != IPPROTO_TCP && ctx->protocol != 0)
		return 0;
	if (addr_is_local(dst))
		return 0;
	if (port_excluded(port))
		return 0;
	if (cidr_excluded(&ambit_excl_dst, dst))
		return 0;

	struct ambit_origin o = {
		.addr = *dst,
		.port = port,
		.family = family,
		.cgroup_id = bpf_get_current_cgroup_id(),
	};
	__u64 cookie = bpf_get_socket_cookie(ctx);
	/* No record, no redirect: a connection the proxy could not place
	 * must not reach it. The map is LRU, so this only fails on ENOMEM. */
	if (bpf_map_update_elem(&ambit_pending, &cookie, &o, BPF_ANY))
		return 0;
	return 1;
}

SEC("cgroup/connect4")
int ambit_connect4(struct bpf_sock_addr *ctx)
{
	struct ambit_addr dst;
	addr_from_v4(&dst, ctx->user_ip4);
	__u16 port = bpf_ntohs((__u16)ctx->user_port);

	if (capture_connect(ctx, &dst, port, AF_INET)) {
		ctx->user_ip4 = bpf_htonl(0x7f000001); /* 127.0.0.1 */
		ctx->user_port = bpf_htons(AMBIT_PORT_OUTBOUND);
	}
	return 1;
}

SEC("cgroup/connect6")
int ambit_connect6(struct bpf_sock_addr *ctx)
{
	struct ambit_addr dst;
	dst.a[0] = ctx->user_ip6[0];
	dst.a[1] = ctx->user_ip6[1];
	dst.a[2] = ctx->user_ip6[2];
	dst.a[3] = ctx->user_ip6[3];
	__u16 port = bpf_ntohs((__u16)ctx->user_port);
	int mapped = addr_is_v4mapped(&dst);

	if (capture_connect(ctx, &dst, port, mapped ? AF_INET : AF_INET6)) {
		if (mapped) {
			/* A dual-stack socket dialing IPv4: ::ffff:127.0.0.1 */
			ctx->user_ip6[0] = 0;
			ctx->user_ip6[1] = 0;
			ctx->user_ip6[2] = bpf_htonl(0x0000ffff);
			ctx->user_ip6[3] = bpf_htonl(0x7f000001);
		} else {
			ctx->user_ip6[0] = 0;
			ctx->user_ip6[1] = 0;
			ctx->user_ip6[2] = 0;
			ctx->user_ip6[3] = bpf_htonl(1); /* ::1 */
		}
		ctx->user_port = bpf_htons(AMBIT_PORT_OUTBOUND);
	}
	return 1;
}

/* Once a redirected connection is established its source port is known:
 * move the record from the socket cookie to the client address the proxy
 * will see. This runs before the final ACK leaves, so before the proxy can
 * accept the connection. */
SEC("sockops")
int ambit_sockops(struct bpf_sock_ops *skops)
{
	if (skops->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB)
		return 1;

	__u64 cookie = bpf_get_socket_cookie(skops);
	struct ambit_origin *o = bpf_map_lookup_elem(&ambit_pending, &cookie);
	if (!o)
		return 1;

	/* One unconditional 32-bit read per context field (see CTX32). */
	__u32 family = CTX32(skops->family);
	__u32 ip4 = CTX32(skops->local_ip4);
	__u32 a0 = CTX32(skops->local_ip6[0]), a1 = CTX32(skops->local_ip6[1]);
	__u32 a2 = CTX32(skops->local_ip6[2]), a3 = CTX32(skops->local_ip6[3]);

	struct ambit_origin_key k = {};
	k.netns_cookie = bpf_get_netns_cookie(skops);
	k.addr.a[0] = a0;
	k.addr.a[1] = a1;
	k.addr.a[2] = a2;
	k.addr.a[3] = a3;
	if (family == AF_INET)
		addr_from_v4(&k.addr, ip4);
	k.port = (__u16)skops->local_port;

	bpf_map_update_elem(&ambit_origins, &k, o, BPF_ANY);
	bpf_map_delete_elem(&ambit_pending, &cookie);
	return 1;
}

/* Inbound: a TCP SYN arriving on one of the pod's interfaces from outside
 * the mesh is handed to the proxy's inbound listener (port 15006, opened by
 * the proxy inside the pod's network namespace). The accepted connection
 * keeps the original destination as its local address and the original
 * source as its peer. With no listener the SYN is dropped: no proxy, no
 * plaintext bypass. Only SYNs are steered; the rest of the flow follows the
 * established socket the kernel created. */
SEC("tc")
int ambit_inbound(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct bpf_sock_tuple tuple = {};
	struct ambit_addr src;
	struct tcphdr *th;
	__u32 tuple_len;

	if ((void *)(eth + 1) > end)
		return TC_ACT_OK;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > end || ip->protocol != IPPROTO_TCP)
			return TC_ACT_OK;
		if (ip->frag_off & bpf_htons(0x1fff)) /* not the first fragment */
			return TC_ACT_OK;
		th = (void *)ip + ip->ihl * 4;
		if ((void *)(th + 1) > end)
			return TC_ACT_OK;
		addr_from_v4(&src, ip->saddr);
		tuple.ipv4.saddr = ip->saddr;
		tuple.ipv4.daddr = ip->daddr;
		tuple.ipv4.sport = th->source;
		tuple.ipv4.dport = bpf_htons(AMBIT_PORT_INBOUND);
		tuple_len = sizeof(tuple.ipv4);
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > end || ip6->nexthdr != IPPROTO_TCP)
			return TC_ACT_OK;
		th = (void *)(ip6 + 1);
		if ((void *)(th + 1) > end)
			return TC_ACT_OK;
		__builtin_memcpy(&src, &ip6->saddr, sizeof(src));
		__builtin_memcpy(tuple.ipv6.saddr, &ip6->saddr, sizeof(tuple.ipv6.saddr));
		__builtin_memcpy(tuple.ipv6.daddr, &ip6->daddr, sizeof(tuple.ipv6.daddr));
		tuple.ipv6.sport = th->source;
		tuple.ipv6.dport = bpf_htons(AMBIT_PORT_INBOUND);
		tuple_len = sizeof(tuple.ipv6);
	} else {
		return TC_ACT_OK;
	}

	if (!th->syn || th->ack)
		return TC_ACT_OK;
	__u16 dport = bpf_ntohs(th->dest);
	if (dport == AMBIT_PORT_TUNNEL)
		return TC_ACT_OK;
	/* The capture listeners are the proxy's business only. */
	if (dport == AMBIT_PORT_OUTBOUND || dport == AMBIT_PORT_INBOUND)
		return TC_ACT_SHOT;
	if (port_excluded(dport))
		return TC_ACT_OK;
	if (cidr_excluded(&ambit_excl_src, &src))
		return TC_ACT_OK;

	struct bpf_sock *sk = bpf_skc_lookup_tcp(skb, &tuple, tuple_len, BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return TC_ACT_SHOT; /* fail closed */
	if (sk->state != BPF_TCP_LISTEN) {
		bpf_sk_release(sk);
		return TC_ACT_SHOT;
	}
	long err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	return err ? TC_ACT_SHOT : TC_ACT_OK;
}
