package authz

import (
	"github.com/ambit-mesh/ambit/internal/policy"
)

// FromL4 converts the configuration's model (meshconfig.Config.Policies,
// what the control API carries). A rule with HTTP attributes carries its
// "to" entries whole (policy.Rule.To), and they are checked here. A rule
// flagged L7 without them (a model from an older controller, which kept
// only the flag and merged the ports of all "to" entries) fails closed as
// at L4: a DENY matches, an ALLOW does not. Rules without HTTP attributes
// mean exactly what they mean at L4.
func FromL4(p policy.Policy) Policy {
	out := Policy{Namespace: p.Namespace, Name: p.Name, Selector: p.Selector, ExternalBackends: p.ExternalBackends, Action: p.Action, DryRun: p.DryRun, CaseInsensitivePaths: p.CaseInsensitivePaths}
	for _, r := range p.Rules {
		rule := Rule{From: r.From}
		switch {
		case r.L7 && len(r.To) > 0:
			for _, t := range r.To {
				rule.To = append(rule.To, Target{Ports: t.Ports, Methods: t.Methods, Paths: t.Paths, Hosts: t.Hosts, Headers: t.Headers})
			}
		case r.L7:
			rule.UnknownL7 = true
			fallthrough
		default:
			if len(r.Ports) > 0 {
				rule.To = []Target{{Ports: r.Ports}}
			}
		}
		out.Rules = append(out.Rules, rule)
	}
	return out
}

// FromL4All is FromL4 for each policy.
func FromL4All(ps []policy.Policy) []Policy {
	out := make([]Policy, 0, len(ps))
	for _, p := range ps {
		out = append(out, FromL4(p))
	}
	return out
}
