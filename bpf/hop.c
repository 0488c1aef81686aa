//go:build ignore
// SPDX-License-Identifier: (GPL-2.0-only OR MIT)
/*
 * Ambit's sockmap shortcut for the plaintext hop between an enrolled pod's
 * application and the node proxy, both ends inside the pod's network
 * namespace:
 *
 *   outbound  the application's captured connection to 127.0.0.1:15001
 *             (or [::1]:15001) and the socket the proxy accepted for it;
 *   delivery  the proxy's delivery socket (IP_TRANSPARENT, mark 0x4d0)
 *             and the socket the application accepted for it.
 *
 * Bytes the application sends are moved straight into the proxy socket's
 * receive queue (sk_msg, bpf_msg_redirect_hash with BPF_F_INGRESS) instead
 * of going through the pod's loopback TCP. Only this direction: the
 * proxy reads with read(2), while an application may read with splice(2),
 * which never sees bytes moved this way.
 *
 * Attached:
 *   ambit_hop_pod    sockops on each enrolled pod's cgroup: puts the
 *                    application's end into ambit_hop_apps
 *   ambit_hop_proxy  sockops on the node proxy's own cgroup: puts the
 *                    proxy's end into ambit_hop_proxies
 *   ambit_hop_msg    sk_msg on ambit_hop_apps
 *
 * The application's bytes must reach the proxy in order and the proxy
 * must be able to hold the application back, so a socket uses the
 * shortcut only while it has never sent a byte through TCP, and only
 * while the proxy has read all but AMBIT_HOP_BACKLOG of what the
 * shortcut moved; otherwise the send takes TCP (behind the moved bytes,
 * which the kernel hands to the reader first) and the socket stays on TCP.
 * See docs/design/capture.md ("The sockmap shortcut").
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "include/ambit.h"

#ifndef AF_INET
#define AF_INET 2
#endif

/* One 32-bit load from a context field (see capture.c). */
#define CTX32(field) (*(volatile __u32 *)&(field))

char LICENSE[] SEC("license") = "Dual MIT/GPL";

/* Keep the shared types in BTF so bpf2go can export them. */
const enum ambit_hop *unused_ambit_hop __attribute__((unused));
const enum ambit_hop_stat *unused_ambit_hop_stat __attribute__((unused));

/* The kernel's TCP socket, only the fields read here; CO-RE relocates
 * them against the running kernel's BTF when the program is loaded. */
struct tcp_sock {
	__u32 write_seq;  /* the next byte the application queues */
	__u32 snd_nxt;    /* the next byte TCP sends */
	__u64 bytes_sent; /* bytes TCP has sent, retransmissions included */
} __attribute__((preserve_access_index));

/* Applications' ends of hops; ambit_hop_msg runs on their sends. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, AMBIT_MAX_INFLIGHT);
	__type(key, struct ambit_hop_key);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ambit_hop_apps SEC(".maps");

/* The node proxy's ends: targets only, no program runs on their sends. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, AMBIT_MAX_INFLIGHT);
	__type(key, struct ambit_hop_key);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ambit_hop_proxies SEC(".maps");

/* What the node proxy has read from its end of a hop, by its end's key:
 * zeroed when the socket joins the shortcut, then written by the proxy
 * as it reads (redirect.Hop). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, AMBIT_MAX_INFLIGHT);
	__type(key, struct ambit_hop_key);
	__type(value, struct ambit_hop_bytes);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ambit_hop_read SEC(".maps");

/* What an application's socket has moved through the shortcut. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct ambit_hop_bytes);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ambit_hop_sent SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, AMBIT_HOP_NSTATS);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ambit_hop_stats SEC(".maps");

static __always_inline void count(__u32 stat, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&ambit_hop_stats, &stat);
	if (v)
		*v += n;
}

/* The addresses of a socket as (family, IPv4, IPv6 words) from a context;
 * IPv4 is stored IPv4-mapped, as struct ambit_addr says. */
static __always_inline void set_addr(struct ambit_addr *a, __u32 family, __u32 ip4,
				     __u32 w0, __u32 w1, __u32 w2, __u32 w3)
{
	if (family == AF_INET) {
		a->a[0] = 0;
		a->a[1] = 0;
		a->a[2] = bpf_htonl(0x0000ffff);
		a->a[3] = ip4;
	} else {
		a->a[0] = w0;
		a->a[1] = w1;
		a->a[2] = w2;
		a->a[3] = w3;
	}
}

static __always_inline int addr_is_loopback(const struct ambit_addr *a)
{
	if (a->a[0] || a->a[1])
		return 0;
	if (a->a[2] == bpf_htonl(0x0000ffff))
		return (bpf_ntohl(a->a[3]) >> 24) == 127;
	return a->a[2] == 0 && a->a[3] == bpf_htonl(1);
}

/* The key of the socket a sock_ops context is about. The context's fields
 * are read unconditionally, one 32-bit load each (see CTX32). */
static __always_inline void sockops_key(struct bpf_sock_ops *skops, struct ambit_hop_key *k)
{
	__u32 family = CTX32(skops->family);
	__u32 l4 = CTX32(skops->local_ip4), r4 = CTX32(skops->remote_ip4);
	__u32 l0 = CTX32(skops->local_ip6[0]), l1 = CTX32(skops->local_ip6[1]);
	__u32 l2 = CTX32(skops->local_ip6[2]), l3 = CTX32(skops->local_ip6[3]);
	__u32 r0 = CTX32(skops->remote_ip6[0]), r1 = CTX32(skops->remote_ip6[1]);
	__u32 r2 = CTX32(skops->remote_ip6[2]), r3 = CTX32(skops->remote_ip6[3]);
	__u32 lport = CTX32(skops->local_port), rport = CTX32(skops->remote_port);

	k->netns_cookie = bpf_get_netns_cookie(skops);
	set_addr(&k->local, family, l4, l0, l1, l2, l3);
	set_addr(&k->remote, family, r4, r0, r1, r2, r3);
	k->local_port = (__u16)lport;
	k->remote_port = (__u16)bpf_ntohl(rport);
}

static __always_inline int delivery_marked(struct bpf_sock_ops *skops)
{
	struct bpf_sock *sk = skops->sk;
	return sk && (sk->mark & AMBIT_DELIVERY_MASK) == AMBIT_DELIVERY_MARK;
}

/* On each enrolled pod's cgroup, beside capture's sockops. */
SEC("sockops")
int ambit_hop_pod(struct bpf_sock_ops *skops)
{
	__u32 op = CTX32(skops->op);
	struct ambit_hop_key k = {};

	if (op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB &&
	    op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB && op != BPF_SOCK_OPS_RTT_CB)
		return 1;
	sockops_key(skops, &k);

	if (op == BPF_SOCK_OPS_RTT_CB) {
		/* TCP acknowledged data the application sent: it left the
		 * shortcut for good, so it gives the socket back to plain TCP
		 * (no sk_msg on its sends any more). */
		if (bpf_map_delete_elem(&ambit_hop_apps, &k) == 0) {
			bpf_sock_ops_cb_flags_set(skops, CTX32(skops->bpf_sock_ops_cb_flags) &
							     ~BPF_SOCK_OPS_RTT_CB_FLAG);
			count(AMBIT_HOP_RELEASED, 1);
		}
		return 1;
	}
	if (op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB) {
		/* A captured connect, rewritten to the proxy's listener. */
		if (k.remote_port != AMBIT_PORT_OUTBOUND || !addr_is_loopback(&k.remote))
			return 1;
	} else if (!delivery_marked(skops)) {
		return 1; /* not the proxy delivering */
	}
	if (bpf_sock_hash_update(skops, &ambit_hop_apps, &k, BPF_ANY)) {
		count(AMBIT_HOP_INSERT_FAILED, 1);
		return 1;
	}
	bpf_sock_ops_cb_flags_set(skops, CTX32(skops->bpf_sock_ops_cb_flags) | BPF_SOCK_OPS_RTT_CB_FLAG);
	count(AMBIT_HOP_APP_SOCKETS, 1);
	return 1;
}

/* On the node proxy's own cgroup. Both ends of a hop are established
 * before the application can send: the proxy's accepted socket when the
 * application's ACK arrives, ahead of its data; the delivery socket before
 * the application's socket exists. */
SEC("sockops")
int ambit_hop_proxy(struct bpf_sock_ops *skops)
{
	__u32 op = CTX32(skops->op);
	struct ambit_hop_key k = {};
	struct ambit_hop_bytes zero = {};

	if (op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB && op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB)
		return 1;
	sockops_key(skops, &k);
	if (op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB) {
		/* Accepted on a pod's outbound listener. */
		if (k.local_port != AMBIT_PORT_OUTBOUND || !addr_is_loopback(&k.local))
			return 1;
	} else if (!delivery_marked(skops)) {
		return 1;
	}
	/* A fresh count first: a key is reused by a later connection. */
	if (bpf_map_update_elem(&ambit_hop_read, &k, &zero, BPF_ANY) ||
	    bpf_sock_hash_update(skops, &ambit_hop_proxies, &k, BPF_ANY)) {
		count(AMBIT_HOP_INSERT_FAILED, 1);
		return 1;
	}
	count(AMBIT_HOP_PROXY_SOCKETS, 1);
	return 1;
}

/* Every send of an application's socket on the shortcut. */
SEC("sk_msg")
int ambit_hop_msg(struct sk_msg_md *msg)
{
	__u32 family = CTX32(msg->family);
	__u32 l4 = CTX32(msg->local_ip4), r4 = CTX32(msg->remote_ip4);
	__u32 l0 = CTX32(msg->local_ip6[0]), l1 = CTX32(msg->local_ip6[1]);
	__u32 l2 = CTX32(msg->local_ip6[2]), l3 = CTX32(msg->local_ip6[3]);
	__u32 r0 = CTX32(msg->remote_ip6[0]), r1 = CTX32(msg->remote_ip6[1]);
	__u32 r2 = CTX32(msg->remote_ip6[2]), r3 = CTX32(msg->remote_ip6[3]);
	__u32 lport = CTX32(msg->local_port), rport = CTX32(msg->remote_port);
	__u32 size = CTX32(msg->size);
	struct bpf_sock *sk = msg->sk;
	struct ambit_hop_key peer = {};
	struct ambit_hop_bytes *sent, *read;
	struct tcp_sock *tp;
	__u64 backlog;

	if (!sk)
		return SK_PASS;
	tp = bpf_skc_to_tcp_sock(sk);
	if (!tp)
		return SK_PASS;
	/* A byte already sent or queued through TCP may not have been read
	 * yet, and the reader takes the shortcut's bytes first. */
	if (tp->bytes_sent || tp->write_seq != tp->snd_nxt) {
		count(AMBIT_HOP_TCP_SENDS, 1);
		return SK_PASS;
	}
	sent = bpf_sk_storage_get(&ambit_hop_sent, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!sent)
		return SK_PASS;

	/* The proxy's end, as the proxy sees it. */
	peer.netns_cookie = bpf_get_netns_cookie(msg);
	set_addr(&peer.local, family, r4, r0, r1, r2, r3);
	set_addr(&peer.remote, family, l4, l0, l1, l2, l3);
	peer.local_port = (__u16)bpf_ntohl(rport);
	peer.remote_port = (__u16)lport;

	read = bpf_map_lookup_elem(&ambit_hop_read, &peer);
	backlog = sent->bytes;
	if (read)
		backlog = sent->bytes > read->bytes ? sent->bytes - read->bytes : 0;
	if (backlog + size > AMBIT_HOP_BACKLOG) {
		count(AMBIT_HOP_BACKLOG_FULL, 1);
		return SK_PASS;
	}
	if (bpf_msg_redirect_hash(msg, &ambit_hop_proxies, &peer, BPF_F_INGRESS) != SK_PASS) {
		count(AMBIT_HOP_NO_PEER, 1);
		return SK_PASS;
	}
	sent->bytes += size;
	count(AMBIT_HOP_MESSAGES, 1);
	count(AMBIT_HOP_BYTES, size);
	return SK_PASS;
}
