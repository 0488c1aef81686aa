package authz

import (
	crd "github.com/ambit-mesh/ambit/api/crd/v1alpha1"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
	"github.com/ambit-mesh/ambit/internal/policy"
)

// FromSpec builds the waypoint's policy from an AccessPolicy resource's
// spec, with every HTTP attribute of every "to" entry. It accepts and
// refuses exactly what meshconfig.AccessPolicyFromSpec does (same
// validation, same messages); method, path and host values are taken as
// written (a pattern that cannot match a request simply never matches).
func FromSpec(namespace, name string, spec crd.AccessPolicySpec) (Policy, error) {
	l4, err := meshconfig.AccessPolicyFromSpec(namespace, name, spec)
	if err != nil {
		return Policy{}, err
	}
	p := Policy{Namespace: namespace, Name: name, Selector: l4.Selector, Action: l4.Action, DryRun: l4.DryRun, CaseInsensitivePaths: l4.CaseInsensitivePaths}
	for i, r := range spec.Rules {
		rule := Rule{From: l4.Rules[i].From}
		for j, t := range r.To {
			tg := Target{Methods: t.Methods, Paths: t.Paths, Hosts: t.Hosts}
			for _, port := range t.Ports {
				tg.Ports = append(tg.Ports, uint16(port)) // 1-65535, checked above
			}
			if l4.Rules[i].L7 {
				tg.Headers = l4.Rules[i].To[j].Headers // read and checked above
			}
			rule.To = append(rule.To, tg)
		}
		p.Rules = append(p.Rules, rule)
	}
	return p, nil
}

// FromL4 converts the configuration's model (meshconfig.Config.Policies,
// what the control API carries). A rule with HTTP attributes carries its
// "to" entries whole (policy.Rule.To), and they are checked here. A rule
// flagged L7 without them (a model from an older controller, which kept
// only the flag and merged the ports of all "to" entries) fails closed as
// at L4: a DENY matches, an ALLOW does not. Rules without HTTP attributes
// mean exactly what they mean at L4.
func FromL4(p policy.Policy) Policy {
	out := Policy{Namespace: p.Namespace, Name: p.Name, Selector: p.Selector, Action: p.Action, DryRun: p.DryRun, CaseInsensitivePaths: p.CaseInsensitivePaths}
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
