package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/ambit-mesh/ambit/internal/redirect"
)

// nodeAddresses lists the addresses of the node's interfaces (the node
// proxy runs on the host network), loopback and IPv6 link-local aside, as
// single-address prefixes. The kubelet's probes to a pod come from one of
// them: whichever the node's route to the pod picks as its source (the
// bridge's address with a bridge CNI, the node's address with routed ones).
func nodeAddresses() ([]netip.Prefix, error) {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("list the node's addresses: %w", err)
	}
	var out []netip.Prefix
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		if ip.IsLoopback() || ip.IsLinkLocalUnicast() || ip.IsMulticast() {
			continue
		}
		p := netip.PrefixFrom(ip, ip.BitLen())
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	return out, nil
}

// followNodeAddresses keeps the inbound exclusions at static plus the
// node's addresses (last: those in force now) while ctx lasts: a bridge
// CNI, for one, makes its bridge (and the address probes come from) only
// with the node's first pod.
func followNodeAddresses(ctx context.Context, capture redirect.Capture, static, last []netip.Prefix, log *slog.Logger) {
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now, err := nodeAddresses()
		if err != nil {
			log.Warn("cannot list the node's addresses; keeping the last list", "err", err)
			continue
		}
		if slices.Equal(now, last) {
			continue
		}
		if err := capture.SetInboundSourceExclusions(append(slices.Clone(static), now...)); err != nil {
			log.Error("cannot update the node's addresses in the inbound exclusions", "err", err)
			continue
		}
		log.Info("node addresses excluded from inbound capture", "addresses", fmt.Sprint(now))
		last = now
	}
}
