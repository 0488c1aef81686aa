package meshconfig

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strings"
)

// Error is a problem in the configuration, with the file and line of the
// resource when it came from a file (File is empty otherwise).
type Error struct {
	File string
	Line int
	Msg  string
}

func (e *Error) Error() string {
	if e.File == "" {
		return e.Msg
	}
	if e.Line > 0 {
		return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
	}
	return fmt.Sprintf("%s: %s", e.File, e.Msg)
}

func fmtPos(file string, line int) string {
	if line > 0 {
		return fmt.Sprintf("%s:%d", file, line)
	}
	return file
}

// ParsePrefix reads a CIDR, or a single IP as a host prefix, masked.
func ParsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return p, errors.New("not a CIDR such as 10.0.0.0/8")
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, errors.New("not an IP or CIDR")
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// CheckMeta checks a resource's name and namespace, saying what is missing
// or wrong.
func CheckMeta(kind, name, namespace string) error {
	if name == "" {
		return fmt.Errorf("%s has no metadata.name", kind)
	}
	if namespace == "" {
		return fmt.Errorf("%s %s has no metadata.namespace", kind, name)
	}
	if err := checkDNSLabel(namespace); err != nil {
		return fmt.Errorf("%s %s: namespace %q: %v", kind, name, namespace, err)
	}
	return nil
}

// CheckName checks a resource name that must be a DNS label.
func CheckName(s string) error { return checkDNSLabel(s) }

var dnsLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)

func checkDNSLabel(s string) error {
	if s == "" {
		return errors.New("empty; give it a name")
	}
	if len(s) > 63 || !dnsLabel.MatchString(s) {
		return errors.New("must be a DNS label (lower case letters, digits and '-', at most 63 characters)")
	}
	return nil
}
