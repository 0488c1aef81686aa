package redirect

import (
	"net/netip"
	"strings"
	"testing"
)

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{"ok", Config{PinPath: "/sys/fs/bpf/ambit", ExcludePorts: []uint16{22}}, ""},
		{"no pin path", Config{}, "pinPath is empty"},
		{"port zero", Config{PinPath: "/x", ExcludePorts: []uint16{0}}, "contains 0"},
		{"own port", Config{PinPath: "/x", ExcludePorts: []uint16{15008}}, "proxy's own port"},
		{"bad cidr", Config{PinPath: "/x", ExcludeCIDRs: []netip.Prefix{{}}}, "invalid CIDR"},
		{"too many", Config{PinPath: "/x", ExcludePorts: make([]uint16, MaxExclusions+1)}, "at most"},
	} {
		err := tc.cfg.Validate()
		if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("%s: Validate() = %v, want error containing %q", tc.name, err, tc.wantErr)
		}
	}
}

func TestPodValidate(t *testing.T) {
	ok := Pod{Namespace: "demo", Name: "web", CgroupPath: "/sys/fs/cgroup/x", NetNSPath: "/run/netns/x", IPs: []netip.Addr{netip.MustParseAddr("10.0.0.1")}}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	if ok.Key() != "demo/web" {
		t.Errorf("Key() = %q", ok.Key())
	}
	for name, mutate := range map[string]func(*Pod){
		"no name":       func(p *Pod) { p.Name = "" },
		"slash in name": func(p *Pod) { p.Name = "a/b" },
		"no cgroup":     func(p *Pod) { p.CgroupPath = "" },
		"no netns":      func(p *Pod) { p.NetNSPath = "" },
		"no IPs":        func(p *Pod) { p.IPs = nil },
	} {
		p := ok
		mutate(&p)
		if p.Validate() == nil {
			t.Errorf("%s: Validate() accepted %+v", name, p)
		}
	}
}
