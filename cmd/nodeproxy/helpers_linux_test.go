package main

import (
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/ambit-mesh/ambit/internal/cgroup2"
	"github.com/ambit-mesh/ambit/internal/netnsx"
)

func cgroup2Dir(t *testing.T) string {
	dir, err := cgroup2.Mount()
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// newNetns makes a named network namespace holding a veth pair of its own
// (capture attaches inbound to every non-loopback interface of a pod).
func newNetns(t *testing.T) string {
	name := "ambt-np-" + strings.ReplaceAll(t.Name(), "/", "-")
	err := netnsx.Create(name, func() error {
		return netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth1"})
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { netnsx.Delete(name) })
	return netnsx.Path(name)
}
