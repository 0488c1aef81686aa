package tunnel

import (
	"net/netip"
	"testing"
)

// FuzzParseForwarded: the Forwarded header is the peer's, so anything may
// arrive; parsing never panics, and an address it returns is a valid one
// that reads back the same. `go test` replays the seeds; `make fuzz`
// explores.
func FuzzParseForwarded(f *testing.F) {
	for _, s := range []string{
		`for="10.244.1.2:40000"`, `for=10.244.1.2`, `for="[fd00::1]:80"`, `For="[fd00::1]"`,
		`proto=https;for="10.0.0.1", for=10.0.0.2`, `for=`, `for="`, `;;;=`, `for=unknown`, `for="_hidden"`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, h string) {
		ap, ok := parseForwarded(h)
		if !ok {
			if ap.IsValid() {
				t.Fatalf("%q: not ok but returned %v", h, ap)
			}
			return
		}
		if !ap.Addr().IsValid() {
			t.Fatalf("%q: ok with an invalid address", h)
		}
		back, err := netip.ParseAddrPort(ap.String())
		if err != nil || back != ap {
			t.Fatalf("%q: %v does not read back (%v, %v)", h, ap, back, err)
		}
	})
}
