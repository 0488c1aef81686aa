// Command coredns is CoreDNS (github.com/coredns/coredns) at the version the
// Gateway API conformance suite's base manifests name
// (registry.k8s.io/coredns/coredns:v1.12.2), with only the plugins their
// Corefile uses (forward, log, errors, whoami): the DNS backend of the
// suite's UDPRoute tests, which must be running for the GATEWAY profiles'
// set-up. Plugins register themselves in init; the directive order stays
// CoreDNS's own.
package main

import (
	_ "github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/whoami"
)

func main() { coremain.Run() }
